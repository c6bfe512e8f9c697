//! The `Idempotency-Key` request header (the IETF httpapi Idempotency-Key
//! draft, docs/api.md "Retries without duplicates"): its form, and the
//! fingerprint of the request it names.

use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::query::Properties;
use super::{ApiError, ClientId, ErrorCode, Qos, Topic};

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// The longest key.
pub const MAX_KEY_BYTES: usize = 255;

/// A request's key and the fingerprint of what it asks to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client chose it (1 to 255 printable ASCII characters).
    pub key: String,
    /// SHA-256 of the method, topic, every parameter that changes the message
    /// (QoS, retain, the MQTT 5 properties in whichever spelling) and the body.
    pub fingerprint: [u8; 32],
}

/// The request's key, if it has one. A key is 1 to 255 printable ASCII
/// characters (space to `~`). The draft writes it as a structured-field string
/// (`"8e03978e-..."`); a value in double quotes is taken without them (`\"`
/// and `\\` unescaped), so `key` and `"key"` are the same key.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let invalid = |why: &str| {
        Err(ApiError::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            format!(
                "the Idempotency-Key header {why}; send one key of 1 to {MAX_KEY_BYTES} printable ASCII characters"
            ),
        ))
    };
    if values.next().is_some() {
        return invalid("is given more than once");
    }
    let raw = value.as_bytes();
    let key = match raw {
        [b'"', inner @ .., b'"'] => match unquote(inner) {
            Some(key) => key,
            None => return invalid("is a quoted string with a stray quote or backslash"),
        },
        _ => raw.to_vec(),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return invalid(&format!("is {} characters long", key.len()));
    }
    if !key.iter().all(|b| (b' '..=b'~').contains(b)) {
        return invalid("holds a character that is not printable ASCII");
    }
    Ok(Some(String::from_utf8(key).expect("printable ASCII is UTF-8")))
}

/// A structured-field string's inside: `\"` and `\\` are the only escapes, and
/// no other quote or backslash may appear.
fn unquote(inner: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return None,
            },
            b'"' => return None,
            _ => out.push(b),
        }
    }
    Some(out)
}

/// How a request that waits for its reply names where the reply comes: the
/// message it publishes carries that response topic, so it is part of what
/// the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waits<'a> {
    /// It names its own `ResponseTopic`, or leaves the client id of the
    /// default topic to the server (which, for a retry, makes the first request's).
    Unnamed,
    /// The default response topic of the `client_id` it gave.
    DefaultTopicOf(&'a ClientId),
}

/// The fingerprint of a batch (`POST /messages`): the query's defaults and
/// the body's bytes, length-prefixed. Not the trace context, which a retry carries anew.
pub fn batch_fingerprint(qos: Qos, retain: bool, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for field in [&b"POST /messages"[..], &[qos.level(), u8::from(retain)], body] {
        hash.update((field.len() as u64).to_be_bytes());
        hash.update(field);
    }
    hash.finalize().into()
}

/// The fingerprint of a publish: the method (always POST once parsed), the
/// topic, QoS, retain, the MQTT 5 properties the request asked for (not the
/// trace context, which a retry carries anew) and the body's SHA-256. Each
/// field is length-prefixed, so no two requests share an encoding.
///
/// `waits` is how a request with `ResponseTimeout` names its response topic:
/// a retry that waits otherwise, or not at all, is another request. Not the seconds waited.
pub fn fingerprint(
    topic: &Topic,
    qos: Qos,
    retain: bool,
    properties: &Properties,
    body: &Bytes,
    waits: Option<Waits<'_>>,
) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(b"POST");
    field(topic.as_str().as_bytes());
    field(&[qos.level(), u8::from(retain)]);
    let optional = |present: bool| [u8::from(present)];
    field(&optional(properties.payload_format_indicator.is_some()));
    field(&[properties.payload_format_indicator.unwrap_or(0)]);
    field(&optional(properties.message_expiry_interval.is_some()));
    field(&properties.message_expiry_interval.unwrap_or(0).to_be_bytes());
    for text in [&properties.content_type, &properties.response_topic] {
        field(&optional(text.is_some()));
        field(text.as_deref().unwrap_or("").as_bytes());
    }
    field(&optional(properties.correlation_data.is_some()));
    field(properties.correlation_data.as_deref().unwrap_or(b""));
    field(&(properties.user_properties.len() as u64).to_be_bytes());
    for (key, value) in &properties.user_properties {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(&Sha256::digest(body));
    // Last, and only when waiting: the fingerprints of requests that do not wait stay as they were.
    if let Some(waits) = waits {
        field(b"ResponseTimeout");
        field(match waits {
            Waits::Unnamed => b"",
            Waits::DefaultTopicOf(client_id) => client_id.as_str().as_bytes(),
        });
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::contract::TopicLimits;

    fn key(values: &[&[u8]]) -> Result<Option<String>, &'static str> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        key_of(&headers).map_err(|e| e.code().as_str())
    }

    #[test]
    fn a_key_is_one_to_255_printable_ascii_characters_quoted_or_not() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[b"order-17"]), Ok(Some("order-17".into())));
        assert_eq!(key(&[b"\"order-17\""]), Ok(Some("order-17".into())), "the draft's sf-string form");
        assert_eq!(key(&[br#""a\"b\\c""#]), Ok(Some(r#"a"b\c"#.into())));
        assert_eq!(key(&[b"a b~"]), Ok(Some("a b~".into())));
        assert_eq!(key(&[&[b'k'; 255]]), Ok(Some("k".repeat(255))));
        for bad in [&b""[..], b"\"\"", &[b'k'; 256], b"caf\xc3\xa9", b"tab\there", br#""a"b""#, br#""a\b""#] {
            assert_eq!(key(&[bad]), Err("invalid_idempotency_key"), "{bad:?}");
        }
        assert_eq!(key(&[b"a", b"a"]), Err("invalid_idempotency_key"), "given twice");
    }

    #[test]
    fn the_fingerprint_changes_with_every_part_of_the_message_and_nothing_else() {
        let limits = TopicLimits { max_bytes: 256, max_slashes: None, basic_ingest: false };
        let topic = Topic::parse(b"a/b".to_vec(), limits).unwrap();
        let base = Properties::default();
        let body = Bytes::from_static(b"on");
        let print =
            |topic: &Topic, qos, retain, p: &Properties, body: &Bytes| fingerprint(topic, qos, retain, p, body, None);
        let first = print(&topic, Qos::AtLeastOnce, false, &base, &body);
        assert_eq!(first, print(&topic, Qos::AtLeastOnce, false, &base, &body.clone()));
        let other_topic = Topic::parse(b"a/c".to_vec(), limits).unwrap();
        let mut changed = vec![
            print(&other_topic, Qos::AtLeastOnce, false, &base, &body),
            print(&topic, Qos::AtMostOnce, false, &base, &body),
            print(&topic, Qos::AtLeastOnce, true, &base, &body),
            print(&topic, Qos::AtLeastOnce, false, &base, &Bytes::from_static(b"off")),
        ];
        let variants: [fn(&mut Properties); 7] = [
            |p| p.payload_format_indicator = Some(0),
            |p| p.message_expiry_interval = Some(0),
            |p| p.content_type = Some(String::new()),
            |p| p.response_topic = Some("r".into()),
            |p| p.correlation_data = Some(Bytes::new()),
            |p| p.user_properties = vec![("a".into(), "b".into())],
            |p| p.user_properties = vec![("ab".into(), String::new())],
        ];
        for change in variants {
            let mut p = base.clone();
            change(&mut p);
            changed.push(print(&topic, Qos::AtLeastOnce, false, &p, &body));
        }
        let app = ClientId::parse("app").unwrap();
        changed.push(fingerprint(&topic, Qos::AtLeastOnce, false, &base, &body, Some(Waits::Unnamed)));
        changed.push(fingerprint(&topic, Qos::AtLeastOnce, false, &base, &body, Some(Waits::DefaultTopicOf(&app))));
        changed.push(first);
        let distinct: std::collections::HashSet<_> = changed.iter().collect();
        assert_eq!(distinct.len(), changed.len(), "every change makes another fingerprint");
    }
}
