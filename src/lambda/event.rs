//! Lambda HTTP events in, Lambda HTTP responses out.
//!
//! We decode the four event shapes ourselves rather than through
//! `lambda_http::Request`, because its conversion loses what the contract
//! needs: it rebuilds the URI through `Url::parse` (so decoding `uri().path()`
//! of an HTTP API event decodes twice), percent-decodes an ALB query string
//! before splitting it (so `%26` in a value splits the pair), and has no field
//! for a REST API's `requestContext.identity.clientCert`. One parse of one
//! small struct reads every shape, and each source's path keeps its encoding:
//!
//! | source | path | query | client certificate |
//! |---|---|---|---|
//! | HTTP API (2.0) | `rawPath`, already decoded | `rawQueryString`, encoded | `requestContext.authentication.clientCert` |
//! | HTTP API (1.0, `"version": "1.0"`) | `path`, already decoded | `multiValueQueryStringParameters`, decoded | `requestContext.identity.clientCert` (or `authentication.clientCert`) |
//! | function URL (2.0, `*.lambda-url.*`) | `rawPath`, encoded | `rawQueryString`, encoded | — |
//! | REST API (1.0) | `path`, encoded, no stage | `multiValueQueryStringParameters`, decoded | `requestContext.identity.clientCert` |
//! | ALB | `path`, encoded | `(multiValue)QueryStringParameters`, encoded | — |

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use serde::{Deserialize, Serialize};

use crate::contract::query::{decode_component, decode_query};
use crate::contract::{ApiError, ClientCertificate, ErrorCode, HttpRequest, Refusal, RequestPath};

/// Which service sent the event; the response must take its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// API Gateway HTTP API, payload format 2.0.
    HttpApi,
    /// API Gateway HTTP API, payload format 1.0 (chosen per integration): the
    /// REST API's field names, but its `path` is already decoded, as `rawPath` is.
    HttpApiV1,
    /// A Lambda function URL (payload format 2.0, path not decoded).
    FunctionUrl,
    /// API Gateway REST API, payload format 1.0.
    RestApi,
    /// Application Load Balancer; `multi_value` when the target group uses multi-value headers.
    Alb {
        /// Answer with `multiValueHeaders`.
        multi_value: bool,
    },
}

/// The union of the fields we read from any of the four shapes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    version: Option<String>,
    raw_path: Option<String>,
    raw_query_string: Option<String>,
    http_method: Option<String>,
    path: Option<String>,
    query_string_parameters: Option<HashMap<String, String>>,
    multi_value_query_string_parameters: Option<HashMap<String, Vec<String>>>,
    headers: Option<HashMap<String, String>>,
    multi_value_headers: Option<HashMap<String, Vec<String>>>,
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
    request_context: Option<Context>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Context {
    http: Option<HttpContext>,
    domain_name: Option<String>,
    stage: Option<String>,
    authentication: Option<Authentication>,
    identity: Option<Identity>,
    elb: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpContext {
    method: Option<String>,
    source_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authentication {
    client_cert: Option<ClientCert>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    source_ip: Option<String>,
    client_cert: Option<ClientCert>,
}

#[derive(Debug, Default, Deserialize)]
struct ClientCert {
    #[serde(rename = "subjectDN")]
    subject_dn: Option<String>,
}

/// Why an event is not an HTTP request we can answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object of the expected field types.
    #[error("the event is not valid JSON of an HTTP event: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but from none of API Gateway, ALB or a function URL.
    #[error("the event is not from API Gateway, an ALB or a function URL")]
    NotHttp,
}

/// Decodes a raw event: what the fuzz target and the tests drive.
pub fn decode(bytes: &[u8], base_path: Option<&str>) -> Result<(Result<HttpRequest, ApiError>, Origin), DecodeError> {
    let event: Event = serde_json::from_slice(bytes)?;
    let (request, origin) = decode_event(event, base_path)?;
    Ok((request.map_err(|refused| refused.error), origin))
}

/// Turns an event into the contract's request. The outer error means the event
/// is no HTTP request at all; the inner one is a 400 to answer in the event's
/// shape, with the request's headers for that answer.
pub fn decode_event(
    mut event: Event,
    base_path: Option<&str>,
) -> Result<(Result<HttpRequest, Refusal>, Origin), DecodeError> {
    let context = event.request_context.take().unwrap_or_default();
    let origin = origin(&event, &context)?;
    let method = match origin {
        Origin::HttpApi | Origin::FunctionUrl => context.http.as_ref().and_then(|h| h.method.clone()),
        _ => event.http_method.clone(),
    }
    .ok_or(DecodeError::NotHttp)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| DecodeError::NotHttp)?;
    // From here on a failure is the client's (a bad query, a body that is not the base64 it
    // claims): answered as a 400 in the event's own response shape, not as an invocation error.
    Ok((request(method, event, context, origin, base_path), origin))
}

/// Which of the four shapes the event has.
fn origin(event: &Event, context: &Context) -> Result<Origin, DecodeError> {
    Ok(if context.elb.is_some() {
        Origin::Alb { multi_value: event.multi_value_headers.is_some() }
    } else if event.version.as_deref() == Some("1.0") {
        // A REST API event has no `version`; an HTTP API's 1.0 payload says "1.0".
        Origin::HttpApiV1
    } else if event.version.as_deref() == Some("2.0") || context.http.is_some() {
        if context.domain_name.as_deref().is_some_and(|d| d.contains(".lambda-url.")) {
            Origin::FunctionUrl
        } else {
            Origin::HttpApi
        }
    } else if event.http_method.is_some() {
        Origin::RestApi
    } else {
        return Err(DecodeError::NotHttp);
    })
}

/// The contract's request from an event of a known origin, or the 400 it earns
/// and the request's headers.
#[allow(
    clippy::result_large_err,
    reason = "the request is larger than its refusal: boxing the refusal would not shrink the result"
)]
fn request(
    method: Method,
    mut event: Event,
    context: Context,
    origin: Origin,
    base_path: Option<&str>,
) -> Result<HttpRequest, Refusal> {
    let headers = header_map(event.multi_value_headers.take(), event.headers.take());
    match request_parts(&mut event, origin) {
        Ok((query, body)) => {
            let path = request_path(event, &context, origin, base_path);
            let source_ip = source_ip(origin, &context, &headers);
            let client_certificate = client_certificate(origin, context);
            Ok(HttpRequest { method, path, query, headers, body, source_ip, client_certificate })
        }
        Err(error) => Err(Refusal { error, headers }),
    }
}

/// The path, without the stage and the base path.
fn request_path(event: Event, context: &Context, origin: Origin, base_path: Option<&str>) -> RequestPath {
    let raw_path = match origin {
        Origin::HttpApi | Origin::FunctionUrl => event.raw_path,
        _ => event.path,
    }
    .unwrap_or_default();
    let stage = context.stage.as_deref().filter(|s| *s != "$default");
    let path = strip_prefixes(&raw_path, stage, base_path).to_owned();
    match origin {
        Origin::HttpApi | Origin::HttpApiV1 => RequestPath::Decoded(path),
        _ => RequestPath::Encoded(path),
    }
}

/// The query's pairs and the body, or the 400 either earns.
fn request_parts(event: &mut Event, origin: Origin) -> Result<(Vec<(String, String)>, Bytes), ApiError> {
    let query = match origin {
        Origin::HttpApi | Origin::FunctionUrl => decode_query(event.raw_query_string.as_deref().unwrap_or(""))?,
        Origin::RestApi | Origin::HttpApiV1 => {
            flatten(event.multi_value_query_string_parameters.take(), event.query_string_parameters.take())
        }
        Origin::Alb { .. } => {
            flatten(event.multi_value_query_string_parameters.take(), event.query_string_parameters.take())
                .into_iter()
                .map(|(k, v)| Ok((decode_component(&k)?, decode_component(&v)?)))
                .collect::<Result<_, ApiError>>()?
        }
    };
    let body = match event.body.take() {
        None => Bytes::new(),
        Some(text) if event.is_base64_encoded => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|_| ApiError::bad_request(ErrorCode::InvalidBody, "the body is marked base64 but is not"))?,
        ),
        Some(text) => Bytes::from(text),
    };
    Ok((query, body))
}

/// The caller's address as the event's origin reports it.
fn source_ip(origin: Origin, context: &Context, headers: &HeaderMap) -> Option<IpAddr> {
    match origin {
        Origin::HttpApi | Origin::FunctionUrl => context.http.as_ref().and_then(|h| h.source_ip.as_deref()),
        Origin::RestApi | Origin::HttpApiV1 => context.identity.as_ref().and_then(|i| i.source_ip.as_deref()),
        // The ALB appends the address it saw to X-Forwarded-For: the last entry is the one to trust.
        Origin::Alb { .. } => headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim),
    }
    .and_then(|ip| ip.parse::<IpAddr>().ok())
}

/// The client certificate API Gateway verified (mutual TLS), if any.
fn client_certificate(origin: Origin, context: Context) -> Option<ClientCertificate> {
    let cert = match origin {
        Origin::HttpApi => context.authentication.and_then(|a| a.client_cert),
        Origin::RestApi => context.identity.and_then(|i| i.client_cert),
        Origin::HttpApiV1 => {
            context.identity.and_then(|i| i.client_cert).or(context.authentication.and_then(|a| a.client_cert))
        }
        _ => None,
    };
    cert.map(|c| ClientCertificate { common_name: c.subject_dn.as_deref().and_then(common_name) })
}

/// Removes a named stage (`/prod`) and then a configured base path (`/mqtt`), each only when it is a whole segment.
fn strip_prefixes<'a>(path: &'a str, stage: Option<&str>, base_path: Option<&str>) -> &'a str {
    let strip = |p: &'a str, prefix: Option<&str>| -> &'a str {
        let Some(prefix) = prefix.map(|s| s.trim_matches('/')).filter(|s| !s.is_empty()) else {
            return p;
        };
        match p.strip_prefix('/').and_then(|rest| rest.strip_prefix(prefix)) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => p,
        }
    };
    strip(strip(path, stage), base_path)
}

/// Multi-value pairs when present (they hold every repeat), else the single-value map.
fn flatten(
    multi: Option<HashMap<String, Vec<String>>>,
    single: Option<HashMap<String, String>>,
) -> Vec<(String, String)> {
    match multi.filter(|m| !m.is_empty()) {
        Some(multi) => multi.into_iter().flat_map(|(k, vs)| vs.into_iter().map(move |v| (k.clone(), v))).collect(),
        None => single.unwrap_or_default().into_iter().collect(),
    }
}

fn header_map(multi: Option<HashMap<String, Vec<String>>>, single: Option<HashMap<String, String>>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in flatten(multi, single) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// The first `CN` of an RFC 4514 / RFC 2253 distinguished name, unescaped.
/// API Gateway writes the subject as `CN=device-7,O=Example,C=US`.
pub fn common_name(dn: &str) -> Option<String> {
    let mut attributes = Vec::new();
    let mut current = String::new();
    let mut chars = dn.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' | '+' | ';' => attributes.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    attributes.push(current);
    attributes.iter().find_map(|attribute| {
        let (kind, value) = attribute.split_once('=')?;
        let kind = kind.trim();
        (kind.eq_ignore_ascii_case("CN") || kind == "2.5.4.3").then(|| unescape_dn_value(value.trim()))?
    })
}

fn unescape_dn_value(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let raw = value.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) => {
                    bytes.push(byte);
                    i += 3;
                }
                None => {
                    bytes.push(raw[i + 1]);
                    i += 2;
                }
            }
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// A response in the shape the event's origin expects.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LambdaResponse {
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_description: Option<String>,
    /// Sorted by name, so that two equal answers are equal bytes (a `HashMap`'s
    /// order differs from one map to the next: docs/api.md wants an unknown user's
    /// answer identical to a wrong password's).
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_value_headers: Option<BTreeMap<String, Vec<String>>>,
    body: String,
    is_base64_encoded: bool,
}

/// Encodes the service's answer for `origin`.
pub fn encode(origin: Origin, response: Response<Bytes>) -> LambdaResponse {
    let (parts, body) = response.into_parts();
    let (body, is_base64_encoded) = match String::from_utf8(body.to_vec()) {
        Ok(text) => (text, false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&body), true),
    };
    let pairs = parts.headers.iter().filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())));
    let status = parts.status;
    let (headers, multi_value_headers) = match origin {
        Origin::Alb { multi_value: true } => (None, Some(pairs.map(|(n, v)| (n, vec![v])).collect())),
        _ => (Some(pairs.collect()), None),
    };
    LambdaResponse {
        status_code: status.as_u16(),
        status_description: matches!(origin, Origin::Alb { .. })
            .then(|| format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))),
        headers,
        multi_value_headers,
        body,
        is_base64_encoded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_are_read_from_either_order_and_unescaped() {
        assert_eq!(common_name("CN=device-7,O=Example,C=US").as_deref(), Some("device-7"));
        assert_eq!(common_name("C=US,O=Example Corp,CN=curl001").as_deref(), Some("curl001"));
        assert_eq!(common_name("cn = spaced , o=x").as_deref(), Some("spaced"));
        assert_eq!(common_name(r"O=a\,b,CN=dev\2B1").as_deref(), Some("dev+1"));
        assert_eq!(common_name("O=Example,C=US"), None);
        assert_eq!(common_name("2.5.4.3=oid-form").as_deref(), Some("oid-form"));
    }

    #[test]
    fn stages_and_base_paths_are_removed_only_as_whole_segments() {
        assert_eq!(strip_prefixes("/prod/topics/a", Some("prod"), None), "/topics/a");
        assert_eq!(strip_prefixes("/production/topics/a", Some("prod"), None), "/production/topics/a");
        assert_eq!(strip_prefixes("/topics/a", Some("prod"), None), "/topics/a");
        assert_eq!(strip_prefixes("/mqtt/topics/a", None, Some("/mqtt/")), "/topics/a");
        assert_eq!(strip_prefixes("/prod/mqtt/topics/a", Some("prod"), Some("mqtt")), "/topics/a");
    }

    #[test]
    fn equal_answers_encode_to_equal_bytes_with_headers_in_name_order() {
        let answer = || {
            let mut response = Response::new(Bytes::from_static(b"{}"));
            for name in ["x-e", "www-authenticate", "content-type", "x-a", "retry-after", "x-m"] {
                response.headers_mut().insert(name, http::HeaderValue::from_static("v"));
            }
            serde_json::to_string(&encode(Origin::HttpApi, response)).unwrap()
        };
        let first = answer();
        assert_eq!(first, answer());
        let names: Vec<&str> =
            first.match_indices("\":\"v\"").map(|(at, _)| first[..at].rsplit('"').next().unwrap()).collect();
        assert_eq!(names, ["content-type", "retry-after", "www-authenticate", "x-a", "x-e", "x-m"]);
    }

    #[test]
    fn an_event_of_another_service_is_not_http() {
        assert!(matches!(decode(br#"{"Records": []}"#, None), Err(DecodeError::NotHttp)));
        assert!(matches!(decode(b"[1]", None), Err(DecodeError::Json(_))));
    }
}
