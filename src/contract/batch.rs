//! `POST /messages`: many messages in one request, each answered on its own
//! (docs/api.md "Many messages in one request").
//!
//! The request line and headers say who publishes and the defaults of every
//! message ([`parse_batch`]); the body, read only once the caller is known,
//! is a JSON array of messages ([`BatchHead::with_body`]). A body that is not
//! such an array, or names a field no message has, refuses the whole request:
//! a typo must never publish something unintended. A message that is well
//! formed but not valid (a bad topic, QoS 2, too large) is refused alone.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use super::query::{self, check_mqtt_text};
use super::{headers, idempotency, ApiError, BackendLimits, ClientId, ErrorCode, HttpRequest, IdempotencyKey};
use super::{Properties, Qos};
use super::{RequestPath, Topic, TraceContext};

/// The path of a batch.
pub const MESSAGES_PATH: &str = "/messages";

/// Messages one batch may hold, unless `[limits] max_batch_messages` says otherwise.
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 100;

/// Bytes of JSON one batch may hold, unless `[limits] max_batch_bytes` says otherwise.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Whether `path` is the batch's.
pub fn is_batch_path(path: &RequestPath) -> bool {
    match path {
        RequestPath::Encoded(p) | RequestPath::Decoded(p) => p == MESSAGES_PATH,
    }
}

/// The bounds of a batch, from `[limits]` and the backend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Messages in one batch.
    pub max_messages: usize,
    /// Bytes of its JSON body.
    pub max_bytes: usize,
    /// Bytes of each message's decoded payload.
    pub max_payload_bytes: usize,
}

/// A batch as its request line and headers give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHead {
    /// Each message's QoS unless it names its own.
    pub qos: Qos,
    /// Each message's retain flag unless it names its own.
    pub retain: bool,
    /// The one client id of the whole request.
    pub client_id: Option<ClientId>,
    /// The caller's `username`; a Basic header's name takes precedence.
    pub username: Option<String>,
    /// The `Idempotency-Key`, covering the whole batch.
    pub key: Option<String>,
    /// The W3C trace context, forwarded with every message.
    trace: Option<TraceContext>,
}

/// One message of a batch, valid: ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMessage {
    /// Where to publish.
    pub topic: Topic,
    /// Its QoS.
    pub qos: Qos,
    /// Whether as the topic's retained message.
    pub retain: bool,
    /// The decoded payload.
    pub payload: Bytes,
    /// Its MQTT 5 properties, the trace context last.
    pub properties: Properties,
}

/// Reads a batch's request line and headers: the query's defaults, the
/// request's identity hints and key. Properties and `ResponseTimeout` belong
/// in each message and are refused here.
pub fn parse_batch<B>(
    request: &HttpRequest<B>,
    declared_len: Option<u64>,
    backend: BackendLimits,
    max_bytes: usize,
) -> Result<BatchHead, ApiError> {
    if request.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let options = query::parse_options(&request.query, backend.max_qos, backend.topic)?;
    if let Some(name) = per_message_parameter(&request.query) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("{name} describes one message: give it in each message of the batch, not in the query"),
        ));
    }
    let mut from_headers = Properties::default();
    headers::merge(&request.headers, &mut from_headers)?;
    if from_headers != Properties::default() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "the x-amz-mqtt5-* headers describe one message: give them as each message's properties",
        ));
    }
    check_content_type(request)?;
    if declared_len.is_some_and(|len| len > max_bytes as u64) {
        return Err(ApiError::BatchTooLarge { max_bytes });
    }
    Ok(BatchHead {
        qos: options.qos,
        retain: options.retain,
        client_id: options.client_id,
        username: options.username,
        key: idempotency::key_of(&request.headers)?,
        trace: TraceContext::from_headers(&request.headers),
    })
}

/// The first query parameter that belongs in a message, as the caller spelled it.
fn per_message_parameter(pairs: &[(String, String)]) -> Option<&str> {
    const PER_MESSAGE: [&str; 8] = [
        "responsetimeout",
        "responsetopic",
        "correlationdata",
        "contenttype",
        "payloadformatindicator",
        "messageexpiryinterval",
        "messageexpiry",
        query::USER_PROPERTY_PREFIX,
    ];
    pairs.iter().map(|(name, _)| name.as_str()).find(|name| {
        let lower = name.to_ascii_lowercase();
        PER_MESSAGE.iter().any(|p| lower == *p || (p.ends_with('.') && lower.starts_with(p)))
    })
}

/// A batch is JSON: `application/json` (any parameters), or no `Content-Type`.
fn check_content_type<B>(request: &HttpRequest<B>) -> Result<(), ApiError> {
    let Some(value) = request.headers.get(http::header::CONTENT_TYPE) else { return Ok(()) };
    let essence = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::bad_request(
        ErrorCode::InvalidBody,
        "a batch is a JSON array: send it as Content-Type: application/json",
    ))
}

/// A message as the JSON gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    topic: String,
    payload: String,
    #[serde(default)]
    payload_encoding: Encoding,
    qos: Option<u8>,
    retained: Option<bool>,
    #[serde(default)]
    properties: WireProperties,
}

/// How a message's `payload` string holds its bytes.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    /// The UTF-8 string's bytes.
    #[default]
    Plain,
    /// Base64 of the bytes.
    Base64,
}

/// A message's properties, in the spelling of AWS IoT's and MQTT 5's names.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct WireProperties {
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    #[serde(default)]
    user_properties: Vec<WireUserProperty>,
}

/// One user property.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUserProperty {
    key: String,
    value: String,
}

impl BatchHead {
    /// The batch's `Idempotency-Key` with its fingerprint: the query's
    /// defaults and the body, byte for byte (a retry sends the same bytes).
    pub fn idempotency(&self, body: &[u8]) -> Option<IdempotencyKey> {
        let key = self.key.clone()?;
        let fingerprint = idempotency::batch_fingerprint(self.qos, self.retain, body);
        Some(IdempotencyKey { key, fingerprint })
    }

    /// The batch's messages from its `body`, in order, each valid or the
    /// refusal a single publish of it would have earned. The whole request is
    /// refused when the body is not a non-empty JSON array of messages, names
    /// a field no message has, or is over `limits`.
    pub fn with_body(
        &self,
        body: &[u8],
        backend: BackendLimits,
        limits: BatchLimits,
    ) -> Result<Vec<Result<BatchMessage, ApiError>>, ApiError> {
        if body.len() > limits.max_bytes {
            return Err(ApiError::BatchTooLarge { max_bytes: limits.max_bytes });
        }
        let mut json = serde_json::Deserializer::from_slice(body);
        let wire: Vec<WireMessage> = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let at = e.path().to_string();
            let at = if at == "." { String::new() } else { format!(" (at message{at})") };
            invalid_body(format!("the batch is not a JSON array of messages{at}: {}", e.inner()))
        })?;
        json.end().map_err(|e| invalid_body(format!("the batch is not a JSON array of messages: {e}")))?;
        if wire.is_empty() {
            return Err(invalid_body("the batch holds no message".into()));
        }
        if wire.len() > limits.max_messages {
            return Err(ApiError::TooManyMessages { max: limits.max_messages, count: wire.len() });
        }
        Ok(wire.into_iter().map(|message| self.message(message, backend, limits.max_payload_bytes)).collect())
    }

    /// One message, checked as a single publish of it would be.
    fn message(&self, wire: WireMessage, backend: BackendLimits, max_payload: usize) -> Result<BatchMessage, ApiError> {
        let topic = Topic::parse(wire.topic.into_bytes(), backend.topic)
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidTopic, e.to_string()))?;
        let qos = match wire.qos {
            None => self.qos,
            Some(n) => query::parse_qos(&n.to_string(), backend.max_qos)?,
        };
        let retain = wire.retained.unwrap_or(self.retain);
        if retain && !backend.retain_available {
            return Err(ApiError::bad_request(
                ErrorCode::RetainNotSupported,
                "the message broker does not take retained messages (its CONNACK says Retain Available = 0)",
            ));
        }
        let payload = match wire.payload_encoding {
            Encoding::Plain => Bytes::from(wire.payload.into_bytes()),
            Encoding::Base64 => BASE64.decode(&wire.payload).map(Bytes::from).map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::InvalidPayload,
                    "payload_encoding is base64, but the payload is not base64",
                )
            })?,
        };
        if payload.len() > max_payload {
            return Err(ApiError::PayloadTooLarge { max: max_payload });
        }
        let mut properties = properties(wire.properties, backend)?;
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPayload,
                "PayloadFormatIndicator=1 declares a UTF-8 payload, but the payload is not valid UTF-8",
            ));
        }
        if let Some(trace) = &self.trace {
            properties.user_properties.extend(trace.user_properties());
        }
        Ok(BatchMessage { topic, qos, retain, payload, properties })
    }
}

fn invalid_body(message: String) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidBody, message)
}

/// A message's properties, checked as the query's are.
fn properties(wire: WireProperties, backend: BackendLimits) -> Result<Properties, ApiError> {
    let payload_format_indicator = match wire.payload_format_indicator {
        None | Some(0) => wire.payload_format_indicator,
        Some(1) => Some(1),
        Some(other) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPayloadFormatIndicator,
                format!("PayloadFormatIndicator must be 0 or 1, not {other}"),
            ))
        }
    };
    let correlation_data = wire
        .correlation_data
        .map(|data| {
            BASE64.decode(data).map(Bytes::from).map_err(|_| {
                ApiError::bad_request(ErrorCode::InvalidCorrelationData, "CorrelationData must be base64 of its bytes")
            })
        })
        .transpose()?;
    let mut user_properties = Vec::with_capacity(wire.user_properties.len());
    for (n, WireUserProperty { key, value }) in wire.user_properties.into_iter().enumerate() {
        check_mqtt_text(&key, || format!("UserProperties[{n}].key"), ErrorCode::InvalidUserProperty)?;
        check_mqtt_text(&value, || format!("UserProperties[{n}].value"), ErrorCode::InvalidUserProperty)?;
        user_properties.push((key, value));
    }
    Ok(Properties {
        payload_format_indicator,
        message_expiry_interval: wire.message_expiry_interval,
        content_type: wire.content_type.map(|v| query::parse_content_type(&v)).transpose()?,
        response_topic: wire.response_topic.map(|v| query::parse_response_topic(&v, backend.topic)).transpose()?,
        correlation_data,
        user_properties,
    })
}

#[cfg(test)]
mod tests;
