//! The HTTP contract (docs/api.md): what a request must look like, and what
//! each answer is. Entry points (the Lambda event decoder, `serve`) turn their
//! input into an [`HttpRequest`]; [`parse_publish`] reads a publish from its
//! request line and headers, [`PublishHead::with_body`] completes it once the
//! body is read ([`parse_request`] does both), or the 4xx says why not.

pub mod basic;
pub mod batch;
pub mod body;
pub mod cors;
pub mod error;
pub mod headers;
pub mod idempotency;
pub mod message_id;
pub mod query;
pub mod topic;
pub mod trace;
pub mod values;

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method};
use percent_encoding::percent_decode;

pub use self::body::Body;
pub use self::error::{ApiError, ErrorCode};
pub use self::idempotency::{IdempotencyKey, Waits};
pub use self::message_id::MessageId;
pub use self::query::{Properties, PublishOptions};
pub use self::topic::{Topic, TopicLimits};
pub use self::trace::TraceContext;
pub use self::values::{ClientId, Qos};

/// The path as the entry point received it: the contract decodes it exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPath {
    /// As the client sent it (`%2F`, `%25` still encoded): REST APIs, ALB, function URLs, `serve`.
    Encoded(String),
    /// Already percent-decoded by the carrier: API Gateway HTTP API's `rawPath`.
    Decoded(String),
}

/// A client certificate that a TLS terminator (API Gateway, `serve`) verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's Common Name, if the subject has one.
    pub common_name: Option<String>,
}

/// The parts of an HTTP request the service reads, whatever carried it. The
/// body is a [`Body`] the service reads only once the request may go ahead.
#[derive(Debug, Clone)]
pub struct HttpRequest<B = Bytes> {
    /// The HTTP method; only POST publishes.
    pub method: Method,
    /// The path after any stage or base path was removed.
    pub path: RequestPath,
    /// Decoded query pairs in the order sent.
    pub query: Vec<(String, String)>,
    /// Request headers; `Authorization` is the one the service reads.
    pub headers: HeaderMap,
    /// The body: the MQTT payload, already undone from any transport encoding.
    pub body: B,
    /// The caller's address, for `source_ips` rules.
    pub source_ip: Option<IpAddr>,
    /// A verified client certificate, when mutual TLS is on.
    pub client_certificate: Option<ClientCertificate>,
}

impl<B> HttpRequest<B> {
    /// The request line and headers, and apart from them the body.
    pub fn split(self) -> (HttpRequest<()>, B) {
        let HttpRequest { method, path, query, headers, body, source_ip, client_certificate } = self;
        (HttpRequest { method, path, query, headers, body: (), source_ip, client_certificate }, body)
    }
}

/// A request its entry point refused before it became an [`HttpRequest`] (a
/// query that does not decode, a Lambda body that is not its base64), with its
/// headers: its answer still carries the CORS headers, and its log line the trace ids.
#[derive(Debug)]
pub struct Refusal {
    /// Why the request is refused.
    pub error: ApiError,
    /// The request's headers.
    pub headers: HeaderMap,
}

/// What the backend accepts; the contract enforces it before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendLimits {
    /// Topic name limits.
    pub topic: TopicLimits,
    /// Largest payload in bytes.
    pub max_payload_bytes: usize,
    /// Highest QoS the backend delivers.
    pub max_qos: Qos,
    /// Whether the backend keeps retained messages (an MQTT 5 broker says so in
    /// CONNACK's Retain Available); a retained publish it cannot take is a 400.
    pub retain_available: bool,
}

/// A request that passed every check of the contract that needs no config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Where to publish.
    pub topic: Topic,
    /// QoS, retain, identity hints and MQTT 5 properties.
    pub options: PublishOptions,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// The `Idempotency-Key` and the request's fingerprint, if it has a key.
    pub idempotency: Option<IdempotencyKey>,
}

/// A publish as its request line and headers give it: every check that needs
/// no body has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHead {
    /// Where to publish.
    pub topic: Topic,
    /// QoS, retain, identity hints and MQTT 5 properties (the trace context not yet among them).
    pub options: PublishOptions,
    /// The `Idempotency-Key`, if the request has one.
    pub key: Option<String>,
    /// The W3C trace context, forwarded after the request's own user properties.
    trace: Option<TraceContext>,
}

/// The only path prefix the API serves.
const TOPICS_PREFIX: &[u8] = b"/topics/";

/// [`parse_publish`] and [`PublishHead::with_body`] at once, for a body in memory.
pub fn parse_request(
    request: &HttpRequest,
    limits: BackendLimits,
    max_payload_bytes: usize,
) -> Result<PublishRequest, ApiError> {
    let declared = Some(request.body.len() as u64);
    parse_publish(request, declared, limits, max_payload_bytes)?.with_body(request.body.clone(), max_payload_bytes)
}

/// Checks method, path, query, the property headers and the body's declared
/// length (`max_payload_bytes` is the smaller of the config's limit and the
/// backend's): everything that needs no body.
pub fn parse_publish<B>(
    request: &HttpRequest<B>,
    declared_len: Option<u64>,
    limits: BackendLimits,
    max_payload_bytes: usize,
) -> Result<PublishHead, ApiError> {
    if request.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let topic = parse_topic(&request.path, limits.topic)?;
    let mut options = query::parse_options(&request.query, limits.max_qos, limits.topic)?;
    headers::merge(&request.headers, &mut options.properties)?;
    let key = idempotency::key_of(&request.headers)?;
    let trace = TraceContext::from_headers(&request.headers);
    if options.retain && !limits.retain_available {
        return Err(ApiError::bad_request(
            ErrorCode::RetainNotSupported,
            "the message broker does not take retained messages (its CONNACK says Retain Available = 0); publish with retained=false",
        ));
    }
    if declared_len.is_some_and(|len| len > max_payload_bytes as u64) {
        return Err(ApiError::PayloadTooLarge { max: max_payload_bytes });
    }
    Ok(PublishHead { topic, options, key, trace })
}

impl PublishHead {
    /// The publish with its body: the payload's checks, the key's fingerprint,
    /// and the trace context forwarded after the request's own user properties.
    pub fn with_body(self, body: Bytes, max_payload_bytes: usize) -> Result<PublishRequest, ApiError> {
        let PublishHead { topic, mut options, key, trace } = self;
        if body.len() > max_payload_bytes {
            return Err(ApiError::PayloadTooLarge { max: max_payload_bytes });
        }
        if options.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&body).is_err() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPayload,
                "PayloadFormatIndicator=1 declares a UTF-8 payload, but the body is not valid UTF-8",
            ));
        }
        // Fingerprinted before the trace context joins the properties: a retry carries its own.
        let idempotency = key.map(|key| IdempotencyKey {
            key,
            fingerprint: idempotency::fingerprint(
                &topic,
                options.qos,
                options.retain,
                &options.properties,
                &body,
                options.waits(),
            ),
        });
        if let Some(trace) = trace {
            options.properties.user_properties.extend(trace.user_properties());
        }
        Ok(PublishRequest { topic, options, payload: body, idempotency })
    }
}

/// `/topics/{topic}` → the topic, decoded exactly once: `%2F` and `/` both separate levels.
pub fn parse_topic(path: &RequestPath, limits: TopicLimits) -> Result<Topic, ApiError> {
    let decoded: Vec<u8> = match path {
        RequestPath::Encoded(raw) => percent_decode(raw.as_bytes()).collect(),
        RequestPath::Decoded(text) => text.as_bytes().to_vec(),
    };
    let Some(name) = decoded.strip_prefix(TOPICS_PREFIX) else {
        return Err(ApiError::bad_request(ErrorCode::InvalidPath, "the path must be /topics/{url-encoded-topic}"));
    };
    Topic::parse(name.to_vec(), limits).map_err(|e| ApiError::bad_request(ErrorCode::InvalidTopic, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BackendLimits = BackendLimits {
        topic: TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true },
        max_payload_bytes: 131_072,
        max_qos: Qos::AtLeastOnce,
        retain_available: true,
    };

    fn request(method: Method, path: RequestPath, body: &'static [u8]) -> HttpRequest {
        HttpRequest {
            method,
            path,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            source_ip: None,
            client_certificate: None,
        }
    }

    fn topic(path: RequestPath) -> Result<String, &'static str> {
        parse_topic(&path, LIMITS.topic).map(|t| t.as_str().to_owned()).map_err(|e| e.code().as_str())
    }

    #[test]
    fn encoded_paths_are_decoded_once() {
        assert_eq!(topic(RequestPath::Encoded("/topics/a%2Fb/c".into())), Ok("a/b/c".into()));
        assert_eq!(topic(RequestPath::Encoded("/topics/%2541".into())), Ok("%41".into()));
        assert_eq!(topic(RequestPath::Encoded("/topics/a%20b".into())), Ok("a b".into()));
        assert_eq!(topic(RequestPath::Encoded("/topics/caf%C3%A9".into())), Ok("café".into()));
    }

    #[test]
    fn decoded_paths_are_not_decoded_again() {
        assert_eq!(topic(RequestPath::Decoded("/topics/%41".into())), Ok("%41".into()));
        assert_eq!(topic(RequestPath::Decoded("/topics/a b".into())), Ok("a b".into()));
    }

    #[test]
    fn wrong_paths_and_topics_are_400() {
        for p in ["/", "/topics", "/topics/", "/topic/home", "/v1/topics/home", "/TOPICS/home"] {
            let want = if p == "/topics/" { "invalid_topic" } else { "invalid_path" };
            assert_eq!(topic(RequestPath::Encoded(p.into())), Err(want), "{p}");
        }
        assert_eq!(topic(RequestPath::Encoded("/topics/a%2B".into())), Err("invalid_topic"));
        assert_eq!(topic(RequestPath::Encoded("/topics/%23".into())), Err("invalid_topic"));
        assert_eq!(topic(RequestPath::Encoded("/topics/a%00".into())), Err("invalid_topic"));
        assert_eq!(topic(RequestPath::Encoded("/topics/%FF".into())), Err("invalid_topic"));
    }

    #[test]
    fn only_post_publishes() {
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let r = request(m, RequestPath::Encoded("/topics/home".into()), b"");
            assert_eq!(parse_request(&r, LIMITS, 10), Err(ApiError::MethodNotAllowed));
        }
    }

    #[test]
    fn payload_limit_and_utf8_declaration_are_enforced() {
        let r = request(Method::POST, RequestPath::Encoded("/topics/home".into()), b"12345");
        assert!(parse_request(&r, LIMITS, 5).is_ok());
        assert_eq!(parse_request(&r, LIMITS, 4), Err(ApiError::PayloadTooLarge { max: 4 }));
        let mut r = request(Method::POST, RequestPath::Encoded("/topics/home".into()), b"\xff\xfe");
        assert!(parse_request(&r, LIMITS, 10).is_ok(), "bytes are fine without the indicator");
        r.query = vec![("PayloadFormatIndicator".into(), "1".into())];
        assert_eq!(parse_request(&r, LIMITS, 10).unwrap_err().code(), "invalid_payload");
    }

    #[test]
    fn an_empty_body_is_a_message() {
        let r = request(Method::POST, RequestPath::Encoded("/topics/home".into()), b"");
        assert!(parse_request(&r, LIMITS, 10).unwrap().payload.is_empty());
    }
}
