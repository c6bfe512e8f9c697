//! Browsers: the CORS answers `[cors]` allows (docs/api.md, "Browsers").
//!
//! A preflight (`OPTIONS /topics/...` with `Origin` and
//! `Access-Control-Request-Method: POST`) from an allowed origin is 204 with what
//! the page may send, and needs no credentials; every other `OPTIONS` stays 405.
//! Every answer to an allowed origin names it in `Access-Control-Allow-Origin`
//! and exposes `X-Message-Id`, `Retry-After` and the reply's property headers. Credentials travel in the
//! `Authorization` header, never cookies: `Access-Control-Allow-Credentials` is
//! never sent.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, HOST, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use std::collections::HashSet;

use super::{HttpRequest, RequestPath};

/// The origins whose pages may call the API: a config's `[cors]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// `None` when any origin is allowed (`"*"`), else the exact origins.
    origins: Option<HashSet<String>>,
    /// Seconds a preflight's answer may be cached.
    pub max_age_seconds: u32,
}

/// An allowed origin that no browser sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[cors]: allowed_origins holds {0:?}, which is not \"*\" or an origin like \"https://app.example.com\" or \"http://127.0.0.1:9090\" (scheme, host and port only, lower case, no path, no default port)")]
pub struct NotAnOrigin(pub String);

impl Cors {
    /// The origins of `allowed`: each `"*"` (any) or `scheme://host[:port]`, nothing more.
    pub fn new<'a>(allowed: impl IntoIterator<Item = &'a str>, max_age_seconds: u32) -> Result<Cors, NotAnOrigin> {
        let mut origins = HashSet::new();
        let mut any = false;
        for origin in allowed {
            if origin == "*" {
                any = true;
            } else if is_origin(origin) {
                origins.insert(origin.to_owned());
            } else {
                return Err(NotAnOrigin(origin.to_owned()));
            }
        }
        Ok(Cors { origins: (!any).then_some(origins), max_age_seconds })
    }

    /// `any origin`, or how many origins are allowed (for `config check`).
    pub fn summary(&self) -> String {
        self.origins.as_ref().map_or("any origin".into(), |o| format!("{} origin(s)", o.len()))
    }

    /// Whether a page from `origin` (a request's `Origin` header) may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.as_ref().is_none_or(|origins| origins.contains(origin))
    }
}

/// `scheme://host[:port]` as a browser serializes an origin: lower case, no
/// trailing slash, no path, no user info, and no port that is the scheme's
/// default (a browser leaves it out, so such an entry would match nothing).
fn is_origin(origin: &str) -> bool {
    let Ok(uri) = origin.parse::<http::Uri>() else { return false };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        && uri.path() == "/"
        && uri.query().is_none()
        && !origin.ends_with('/')
        && !origin.bytes().any(|b| b.is_ascii_uppercase())
        && !origin.ends_with(match uri.scheme_str() {
            Some("https") => ":443",
            _ => ":80",
        })
}

/// The request headers a page may send: credentials, the body's type, trace
/// context, an idempotency key and AWS IoT's property headers.
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, traceparent, tracestate, Idempotency-Key, \
     x-amz-mqtt5-user-properties, x-amz-mqtt5-correlation-data, x-amz-mqtt5-payload-format-indicator";
/// The answer headers a page may read.
pub const EXPOSE_HEADERS: &str =
    "X-Message-Id, Retry-After, Idempotent-Replayed, x-amz-mqtt5-user-properties, x-amz-mqtt5-payload-format-indicator";

/// The request's `Origin` header, if `cors` allows it.
pub fn allowed_origin<'a>(cors: Option<&Cors>, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
    let origin = origin?;
    cors?.allows(origin.to_str().ok()?).then_some(origin)
}

/// Whether a request comes from a page on another origin that `[cors]` does not
/// allow (with no `[cors]`, none is): the service refuses it, 403
/// `origin_not_allowed`, before it authenticates or publishes anything.
///
/// Without this, the browser's blocking of the *answer* would come too late: a
/// page may send a "simple" cross-origin POST (a form; no preflight) and the
/// browser adds credentials on its own, a client certificate or Basic
/// credentials it cached after a 401. The check is the one Go's
/// `CrossOriginProtection` and the Fetch Metadata guidance make:
/// `Sec-Fetch-Site` when the browser sends it (`same-origin` and `none`, a
/// person's own navigation, pass), else the `Origin`'s host against `Host`.
/// A request with neither header comes from no browser, and passes.
pub fn refused_cross_origin(cors: Option<&Cors>, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else { return false };
    if allowed_origin(cors, Some(origin)).is_some() {
        return false;
    }
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        return !(site == "same-origin" || site == "none");
    }
    !same_host(origin, headers.get(HOST))
}

/// The `Sec-Fetch-Site` header: where the request comes from, as the browser saw it.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Whether `origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_host(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    host.eq_ignore_ascii_case(authority)
        || host.strip_suffix(default_port).is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// The 204 for a preflight from an allowed origin; `None` for any other
/// request, which the contract answers as usual (an `OPTIONS`: 405).
pub fn preflight<B>(cors: Option<&Cors>, request: &HttpRequest<B>) -> Option<Response<Bytes>> {
    if request.method != Method::OPTIONS || !is_topics_path(&request.path) {
        return None;
    }
    let asks_post = request.headers.get(ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|m| m == "POST");
    let origin = allowed_origin(cors, request.headers.get(ORIGIN)).filter(|_| asks_post)?;
    let max_age = cors.map_or(0, |c| c.max_age_seconds);
    let mut response = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(ACCESS_CONTROL_ALLOW_ORIGIN, origin)
        .header(ACCESS_CONTROL_ALLOW_METHODS, "POST")
        .header(ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
        .header(ACCESS_CONTROL_MAX_AGE, max_age)
        .header(CONTENT_LENGTH, "0")
        .body(Bytes::new())
        .expect("the headers are valid");
    response.headers_mut().append(VARY, HeaderValue::from_static("Origin"));
    Some(response)
}

/// Adds the CORS headers to an answer: with `[cors]`, `Vary: Origin` always (the
/// answer depends on it); for an allowed origin, that origin and the headers
/// the page may read.
pub fn decorate<B>(cors: Option<&Cors>, origin: Option<&HeaderValue>, response: &mut Response<B>) {
    if cors.is_none() || response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }
}

/// `/topics/...`, encoded or not, and `/messages`: the only paths a preflight is answered on.
fn is_topics_path(path: &RequestPath) -> bool {
    let (RequestPath::Encoded(p) | RequestPath::Decoded(p)) = path;
    p.starts_with("/topics/") || p == super::batch::MESSAGES_PATH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors::new(origins.iter().copied(), 300).unwrap()
    }

    fn options(path: &str, headers: &[(&'static str, &'static str)]) -> HttpRequest {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        HttpRequest {
            method: Method::OPTIONS,
            path: RequestPath::Encoded(path.into()),
            query: Vec::new(),
            headers: map,
            body: Bytes::new(),
            source_ip: None,
            client_certificate: None,
        }
    }

    const PAGE: &str = "http://127.0.0.1:9090";

    #[test]
    fn a_preflight_from_an_allowed_origin_is_204_with_what_the_page_may_send() {
        let c = cors(&[PAGE]);
        let r = options("/topics/home", &[("origin", PAGE), ("access-control-request-method", "POST")]);
        let response = preflight(Some(&c), &r).expect("a 204");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let h = response.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "300");
        assert_eq!(h[VARY], "Origin");
        assert!(h[ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("x-amz-mqtt5-user-properties"));
        assert!(!h.contains_key("access-control-allow-credentials"));
    }

    #[test]
    fn every_other_options_is_left_to_the_contract() {
        let (c, any) = (cors(&[PAGE]), cors(&["*"]));
        let post = ("access-control-request-method", "POST");
        for (cors, request) in [
            (None, options("/topics/home", &[("origin", PAGE), post])),
            (Some(&c), options("/topics/home", &[("origin", "http://localhost:9090"), post])),
            (Some(&c), options("/topics/home", &[("origin", PAGE), ("access-control-request-method", "PUT")])),
            (Some(&c), options("/topics/home", &[("origin", PAGE)])),
            (Some(&c), options("/topics/home", &[post])),
            (Some(&c), options("/other", &[("origin", PAGE), post])),
        ] {
            assert!(preflight(cors, &request).is_none(), "{:?}", request.headers);
        }
        let anywhere = options("/topics/home", &[("origin", "https://anywhere.example"), post]);
        assert_eq!(
            preflight(Some(&any), &anywhere).unwrap().headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://anywhere.example"
        );
    }

    #[test]
    fn answers_to_allowed_origins_name_them_and_expose_the_message_id() {
        let c = cors(&[PAGE]);
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, HeaderValue::from_static(PAGE));
        let mut response = Response::new(());
        decorate(Some(&c), allowed_origin(Some(&c), headers.get(ORIGIN)), &mut response);
        assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], PAGE);
        assert_eq!(response.headers()[ACCESS_CONTROL_EXPOSE_HEADERS], EXPOSE_HEADERS);
        headers.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        let mut response = Response::new(());
        decorate(Some(&c), allowed_origin(Some(&c), headers.get(ORIGIN)), &mut response);
        assert!(!response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(response.headers()[VARY], "Origin");
        let mut response = Response::new(());
        decorate(None, None, &mut response);
        assert!(response.headers().is_empty(), "without [cors], nothing");
    }

    #[test]
    fn a_page_on_another_origin_is_refused_unless_allowed_and_other_callers_pass() {
        let c = cors(&[PAGE]);
        let refused = |cors: Option<&Cors>, pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            refused_cross_origin(cors, &headers)
        };
        let api = ("host", "api.example:8080");
        assert!(!refused(Some(&c), &[api]), "no Origin: no browser");
        assert!(!refused(Some(&c), &[("origin", PAGE), api]), "an allowed page");
        assert!(refused(Some(&c), &[("origin", "https://evil.example"), api]));
        assert!(refused(None, &[("origin", "https://evil.example"), api]), "without [cors] no page is allowed");
        assert!(refused(Some(&c), &[("origin", "null"), api]), "a sandboxed page or a file");
        assert!(refused(Some(&c), &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site"), api]));
        assert!(refused(Some(&c), &[("origin", "http://other.example"), ("sec-fetch-site", "same-site"), api]));
        assert!(!refused(None, &[("origin", "http://api.example:8080"), ("sec-fetch-site", "same-origin"), api]));
        assert!(!refused(None, &[("origin", "http://api.example:8080"), api]), "the API's own origin, no metadata");
        assert!(!refused(None, &[("origin", "https://api.example"), ("host", "API.example:443")]), "default port");
        assert!(refused(None, &[("origin", "https://api.example"), ("host", "api.example:8443")]));
        assert!(refused(None, &[("origin", "http://api.example:8080")]), "no Host to compare");
        assert!(!refused(Some(&cors(&["*"])), &[("origin", "null"), api]), "\"*\" allows every page");
    }
}
