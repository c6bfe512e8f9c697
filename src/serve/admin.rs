//! `serve --admin-listen ADDR`: what operators and orchestrators ask of the
//! process, on a listener of its own (never the API's, so a load balancer
//! exposing the API exposes none of this):
//!
//! - `GET /metrics`: every metric of [`crate::metrics`], in the OpenMetrics text
//!   format Prometheus scrapes;
//! - `GET /healthz`: 200 while the process runs (a liveness probe);
//! - `GET /readyz`: 200 when a broker connection is up and the config is
//!   loaded, else 503 naming what is missing (a readiness probe);
//! - `GET /` (and its script, `/try.js`): a page to try the API from a browser.
//!   It calls the API on its own port, so it is another origin: it works when
//!   `[cors] allowed_origins` lists the origin the page is opened at.
//!
//! Anything else is 404 or 405, with a JSON body like the API's errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::warn;

/// What `/readyz` asks: whether the service can publish now.
pub trait Readiness: Send + Sync + 'static {
    /// `None` when ready, else what is missing.
    fn not_ready(&self) -> Option<&'static str>;
}

/// Time a scraper has to send its request's line and headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The try-it page's script, served at `/try.js`.
const TRY_JS: &str = include_str!("try/try.js");
/// The page's policy: its own script only, no inline script, no framing; it may
/// call any http(s) API (the one it publishes through is the user's to choose).
const TRY_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
     connect-src http: https:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The try-it page, with the API's port and scheme written into it.
#[derive(Clone)]
pub struct TryPage {
    html: Bytes,
}

impl TryPage {
    /// The page for an API listening on `port`, over TLS or not.
    pub fn new(port: u16, tls: bool) -> TryPage {
        let html = include_str!("try/index.html")
            .replace("{{API_PORT}}", &port.to_string())
            .replace("{{API_SCHEME}}", if tls { "https" } else { "http" });
        TryPage { html: Bytes::from(html) }
    }
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, readiness: Arc<dyn Readiness>, page: TryPage) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "the admin listener failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (readiness, page) = (Arc::clone(&readiness), page.clone());
        tokio::spawn(async move {
            let handler = service_fn(move |request: Request<Incoming>| {
                let answer = answer(request.method(), request.uri().path(), readiness.as_ref(), &page);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

fn answer(method: &Method, path: &str, readiness: &dyn Readiness, page: &TryPage) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/" | "/try.js") {
        return json(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin listener serves / (a page to try the API), /metrics, /healthz and /readyz",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET");
    }
    match path {
        "/metrics" => text(StatusCode::OK, crate::metrics::CONTENT_TYPE, crate::metrics::encode()),
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/" => static_file("text/html; charset=utf-8", page.html.clone()),
        "/try.js" => static_file("text/javascript; charset=utf-8", Bytes::from_static(TRY_JS.as_bytes())),
        _ => match readiness.not_ready() {
            None => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n".into()),
            Some(missing) => json(StatusCode::SERVICE_UNAVAILABLE, "not_ready", missing),
        },
    }
}

/// A file of the page, under its content security policy.
fn static_file(content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(TRY_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    text(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<&'static str>);

    impl Readiness for Fixed {
        fn not_ready(&self) -> Option<&'static str> {
            self.0
        }
    }

    fn get(method: Method, path: &str, ready: Option<&'static str>) -> Response<Full<Bytes>> {
        answer(&method, path, &Fixed(ready), &TryPage::new(8443, true))
    }

    #[test]
    fn readyz_says_what_is_missing_and_unknown_paths_are_json_404s() {
        assert_eq!(get(Method::GET, "/readyz", None).status(), StatusCode::OK);
        let down = get(Method::GET, "/readyz", Some("no broker connection is up"));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(Method::GET, "/healthz", Some("down")).status(), StatusCode::OK);
        assert_eq!(get(Method::GET, "/nope", None).status(), StatusCode::NOT_FOUND);
        assert_eq!(get(Method::POST, "/metrics", None).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn the_try_page_names_the_api_and_runs_only_its_own_script() {
        use http_body_util::BodyExt;
        let page = get(Method::GET, "/", None);
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], TRY_CSP);
        assert!(TRY_CSP.contains("script-src 'self';"), "no inline script may run");
        let html = page.into_body().collect().await.unwrap().to_bytes();
        let html = std::str::from_utf8(&html).unwrap();
        assert!(html.contains(r#"content="8443""#) && html.contains(r#"content="https""#));
        assert!(!html.contains("{{") && html.contains(r#"src="/try.js""#));
        let handlers = ["onclick=", "onsubmit=", "onload=", "oninput=", "javascript:"];
        assert!(!html.contains("<script>") && !handlers.iter().any(|h| html.contains(h)), "no inline script");
        let script = get(Method::GET, "/try.js", None);
        assert_eq!(script.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    }
}
