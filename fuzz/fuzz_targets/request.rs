//! The request parser: the input is a plain HTTP/1 request as text (request
//! line, headers, a blank line, the body), so the seed corpus reads like what
//! `curl` sends. Every request is parsed as `serve` and the REST API receive
//! it (path still encoded) and as the HTTP API does (path already decoded),
//! against AWS IoT's and an MQTT broker's limits.
//!
//! What a fuzzer would hardly spell by chance, the target adds: AWS IoT's
//! `x-amz-mqtt5-*` property headers, W3C `traceparent` and `tracestate`,
//! `Idempotency-Key`, `messageExpiry` and `ResponseTimeout`, each well-formed (base64 of a JSON user property array in
//! either spelling, a traceparent near the W3C grammar) or arbitrary. The
//! input's last bytes choose them, read backwards ([`Tail`]), and the request
//! is parsed as written and again with them. Those bytes are mostly the body's,
//! so mutating them explores the additions without breaking the request line.
//!
//! Beyond "no panic": a refusal is a 4xx with a JSON body, never a 5xx; an
//! accepted request respects every limit it was parsed against; and an accepted
//! topic, encoded again, parses back to itself. Of the new inputs: a trace
//! context never changes whether or why a request is refused, and travels,
//! after every other user property, only from a single valid `traceparent`; the
//! header's user properties come before the query's; an accepted property
//! header or `messageExpiry` means what it says; a refusal over one names it;
//! an accepted `Idempotency-Key` is the one header sent, 1 to 255 printable
//! ASCII characters, and neither it nor the trace context changes the fingerprint.
#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::contract::basic::parse_basic;
use mqtt_http_publish::contract::headers::{CORRELATION_DATA, PAYLOAD_FORMAT_INDICATOR, USER_PROPERTIES};
use mqtt_http_publish::contract::idempotency::HEADER as IDEMPOTENCY_KEY;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::trace::{TRACEPARENT, TRACESTATE};
use mqtt_http_publish::contract::{
    parse_request, parse_topic, ApiError, BackendLimits, ClientId, ErrorCode, HttpRequest, PublishRequest, RequestPath,
    Topic, TraceContext,
};
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use mqtt_http_publish::publish::mqtt::MQTT_LIMITS;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// A payload limit small enough for the fuzzer's inputs to cross it.
const SMALL_PAYLOAD_LIMIT: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((method, target, headers, body)) = split_request(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    };
    let query = match decode_query(query) {
        Ok(query) => query,
        Err(error) => return check_refusal(error),
    };
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let _ = parse_basic(value);
    }
    let dressed = Additions::read(&mut Tail(data.iter())).dress(&headers, &query);
    for (headers, query, header_user_properties) in std::iter::once((headers, query, None)).chain(dressed) {
        for limits in [IOT_LIMITS, MQTT_LIMITS] {
            for path in [RequestPath::Encoded(path.to_owned()), RequestPath::Decoded(path.to_owned())] {
                let request = HttpRequest {
                    method: method.clone(),
                    path,
                    query: query.clone(),
                    headers: headers.clone(),
                    body: body.clone(),
                    source_ip: None,
                    client_certificate: None,
                };
                for max_payload in [limits.max_payload_bytes, SMALL_PAYLOAD_LIMIT] {
                    let outcome = parse_request(&request, limits, max_payload);
                    check_trace_context(&request, &outcome, limits, max_payload);
                    check_header_user_properties(&request, &outcome, limits, max_payload, &header_user_properties);
                    check_idempotency_key(&request, &outcome, limits, max_payload);
                    match outcome {
                        Ok(parsed) => {
                            check_accepted(&request, &parsed, limits, max_payload);
                            check_property_spellings(&request, &parsed);
                        }
                        Err(error) => check_refusal(error),
                    }
                }
            }
        }
    }
});

/// Reads the input from its end backwards, one choice per byte; past its
/// start every byte is 0, and a choice of 0 adds nothing.
struct Tail<'a>(std::slice::Iter<'a, u8>);

impl Tail<'_> {
    fn byte(&mut self) -> u8 {
        self.0.next_back().copied().unwrap_or(0)
    }

    fn coin(&mut self) -> bool {
        self.byte() & 1 == 0
    }

    /// A number below `n` (at most 256).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1)).map(|_| self.byte()).collect()
    }

    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }

    /// Any bytes a header value may hold, or none when they are not one.
    fn raw_value(&mut self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(&self.bytes(48)).ok()
    }

    fn base64(&mut self, bytes: &[u8]) -> HeaderValue {
        let text = if self.coin() { STANDARD.encode(bytes) } else { STANDARD_NO_PAD.encode(bytes) };
        HeaderValue::from_str(&text).expect("base64 is a header value")
    }
}

/// Key/value pairs: user properties, or decoded query parameters.
type Pairs = Vec<(String, String)>;

/// The headers and query parameters the target adds to a request.
struct Additions {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Decoded, appended after the request's own.
    query: Pairs,
    /// What the user properties header carries, when the target built it well-formed.
    user_properties: Option<Pairs>,
}

impl Additions {
    fn read(tail: &mut Tail) -> Additions {
        let (mut headers, mut query, mut user_properties) = (Vec::new(), Vec::new(), None);
        let mut add = |name: &'static str, value: Option<HeaderValue>| {
            if let Some(value) = value {
                headers.push((HeaderName::from_static(name), value));
            }
        };
        match tail.below(4) {
            0 => {}
            1 | 2 => {
                let pairs: Pairs = (0..tail.below(4)).map(|_| (tail.text(8), tail.text(8))).collect();
                let array = serde_json::Value::Array(
                    pairs
                        .iter()
                        .map(|(k, v)| serde_json::Value::Object([(k.clone(), v.clone().into())].into_iter().collect()))
                        .collect(),
                )
                .to_string();
                // boto3 and the AWS CLI send the array as a JSON string.
                let json = if tail.coin() { array } else { serde_json::Value::String(array).to_string() };
                add(USER_PROPERTIES, Some(tail.base64(json.as_bytes())));
                user_properties = Some(pairs);
            }
            _ => {
                let value = if tail.coin() {
                    tail.raw_value()
                } else {
                    let bytes = tail.bytes(32);
                    Some(tail.base64(&bytes))
                };
                add(USER_PROPERTIES, value);
            }
        }
        match tail.below(3) {
            0 => {}
            1 => {
                let bytes = tail.bytes(16);
                add(CORRELATION_DATA, Some(tail.base64(&bytes)));
            }
            _ => add(CORRELATION_DATA, tail.raw_value()),
        }
        match tail.below(4) {
            0 => {}
            1 => add(PAYLOAD_FORMAT_INDICATOR, Some(HeaderValue::from_static("UTF8_DATA"))),
            2 => add(PAYLOAD_FORMAT_INDICATOR, Some(HeaderValue::from_static("UNSPECIFIED_BYTES"))),
            _ => add(PAYLOAD_FORMAT_INDICATOR, tail.raw_value()),
        }
        for _ in 0..[0, 1, 1, 1, 2][tail.below(5)] {
            let value =
                if tail.below(4) == 0 { tail.raw_value() } else { HeaderValue::from_str(&traceparent(tail)).ok() };
            add(TRACEPARENT, value);
        }
        for _ in 0..tail.below(3) {
            let value = if tail.below(3) == 0 {
                tail.raw_value()
            } else {
                let members = (0..tail.below(40)).map(|i| format!("k{i}=v{}", "x".repeat(tail.below(20))));
                HeaderValue::from_str(&members.collect::<Vec<_>>().join(",")).ok()
            };
            add(TRACESTATE, value);
        }
        for _ in 0..[0, 1, 1, 2][tail.below(4)] {
            let value = match tail.below(3) {
                0 => tail.raw_value(),
                1 => HeaderValue::from_str(&format!("\"{}\"", tail.text(16).replace(['"', '\\'], ""))).ok(),
                _ => HeaderValue::from_str(&"k".repeat(tail.below(256) + tail.below(2))).ok(),
            };
            add(IDEMPOTENCY_KEY, value);
        }
        let expiry = tail.below(4);
        if expiry > 0 {
            let name = ["messageExpiry", "MESSAGEEXPIRY", "messageexpiry"][tail.below(3)];
            let value = if expiry == 3 {
                tail.text(12)
            } else {
                u32::from_le_bytes([tail.byte(), tail.byte(), tail.byte(), tail.byte()]).to_string()
            };
            if expiry == 2 {
                // Both spellings, the same value or not.
                let other = if tail.coin() { value.clone() } else { tail.byte().to_string() };
                query.push(("MessageExpiryInterval".to_owned(), other));
            }
            query.push((name.to_owned(), value));
        }
        match tail.below(4) {
            0 => {}
            1 => query.push(("ResponseTimeout".to_owned(), (tail.below(64) + 1).to_string())),
            2 => query.push(("responsetimeout".to_owned(), u32::from(tail.byte()).saturating_sub(100).to_string())),
            _ => query.push(("ResponseTimeout".to_owned(), tail.text(6))),
        }
        Additions { headers, query, user_properties }
    }

    /// The request's headers and query with these added, and what the user
    /// properties header carries if known; none when nothing is added.
    fn dress(self, headers: &HeaderMap, query: &[(String, String)]) -> Option<(HeaderMap, Pairs, Option<Pairs>)> {
        if self.headers.is_empty() && self.query.is_empty() {
            return None;
        }
        let mut headers = headers.clone();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        Some((headers, [query, &self.query].concat(), self.user_properties))
    }
}

/// A traceparent near the W3C grammar: each field right, or wrong in one way
/// (version `ff`, all zeros, upper case, something after version 00's flags).
fn traceparent(tail: &mut Tail) -> String {
    let version = ["00", "00", "01", "cc", "ff", "0"][tail.below(6)];
    let trace_id = hex_field(tail, 32);
    let parent_id = hex_field(tail, 16);
    let flags = hex_field(tail, 2);
    let rest = ["", "", "", "-", "-more", "x"][tail.below(6)];
    format!("{version}-{trace_id}-{parent_id}-{flags}{rest}")
}

/// `len` hex digits from one byte: all zeros, upper case, or lower case.
fn hex_field(tail: &mut Tail, len: usize) -> String {
    let b = tail.byte();
    let pair = match b % 8 {
        0 => "00".to_owned(),
        1 => format!("{b:02X}"),
        _ => format!("{b:02x}"),
    };
    pair.repeat(len / 2)
}

/// W3C Trace Context's `traceparent`: `version-traceid-parentid-flags` in
/// lower-case hex; version `ff` and all-zero ids are invalid; version `00`
/// ends after the flags, a later version may go on after a `-`.
fn reference_traceparent(value: &str) -> bool {
    let lower_hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    let not_zero = |s: &str| s.chars().any(|c| c != '0');
    let mut fields = value.splitn(5, '-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let more = fields.next().is_some();
    value.chars().all(|c| ('!'..='~').contains(&c))
        && lower_hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && lower_hex(trace_id, 32)
        && not_zero(trace_id)
        && lower_hex(parent_id, 16)
        && not_zero(parent_id)
        && lower_hex(flags, 2)
}

fn without(request: &HttpRequest, names: &[&str]) -> HttpRequest {
    let mut request = request.clone();
    for name in names {
        request.headers.remove(*name);
    }
    request
}

/// A trace context only ever appends its user properties: the request parsed
/// without it is refused for the same reason, or accepted with all else equal.
/// They come from a single valid `traceparent`, and a `tracestate` travels
/// within the W3C's bounds with the members the headers sent.
fn check_trace_context(
    request: &HttpRequest,
    outcome: &Result<PublishRequest, ApiError>,
    limits: BackendLimits,
    max_payload: usize,
) {
    let untraced = parse_request(&without(request, &[TRACEPARENT, TRACESTATE]), limits, max_payload);
    let trace = TraceContext::from_headers(&request.headers);
    let mut traceparents = request.headers.get_all(TRACEPARENT).iter();
    let single_valid = match (traceparents.next(), traceparents.next()) {
        (Some(value), None) => value.to_str().is_ok_and(reference_traceparent),
        _ => false,
    };
    assert_eq!(trace.is_some(), single_valid, "{:?}", request.headers.get_all(TRACEPARENT));
    if let Some(state) = trace.as_ref().and_then(|t| t.tracestate.as_deref()) {
        let members =
            |s: &str| s.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect::<Vec<_>>();
        let sent: Vec<String> = request
            .headers
            .get_all(TRACESTATE)
            .iter()
            .flat_map(|v| members(v.to_str().expect("forwarded, so ASCII")))
            .collect();
        assert_eq!(members(state), sent, "a tracestate travels with the members sent");
        assert!((1..=32).contains(&sent.len()) && state.len() <= 512, "{state:?}");
        assert!(state.bytes().all(|b| (b' '..=b'~').contains(&b)), "{state:?}");
    }
    match (outcome, untraced) {
        (Ok(parsed), Ok(mut expected)) => {
            expected.options.properties.user_properties.extend(trace.iter().flat_map(TraceContext::user_properties));
            assert_eq!(parsed, &expected, "a trace context adds its user properties last and changes nothing else");
        }
        (Err(error), Err(expected)) => assert_eq!(error, &expected, "a trace context never changes why"),
        (outcome, untraced) => panic!("a trace context changed the answer: {outcome:?}, without it {untraced:?}"),
    }
}

/// An `Idempotency-Key` is taken only alone and well-formed, refused naming
/// itself otherwise, and is no part of the fingerprint: the same request under
/// another key has the same one.
fn check_idempotency_key(
    request: &HttpRequest,
    outcome: &Result<PublishRequest, ApiError>,
    limits: BackendLimits,
    max_payload: usize,
) {
    let sent: Vec<&HeaderValue> = request.headers.get_all(IDEMPOTENCY_KEY).iter().collect();
    match outcome {
        Ok(parsed) => {
            assert_eq!(parsed.idempotency.is_some(), sent.len() == 1, "{sent:?}");
            if let Some(key) = &parsed.idempotency {
                assert!((1..=255).contains(&key.key.len()), "{key:?}");
                assert!(key.key.bytes().all(|b| (b' '..=b'~').contains(&b)), "{key:?}");
                let mut other = request.clone();
                other.headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("another-key"));
                let again = parse_request(&other, limits, max_payload).expect("the same request with a valid key");
                assert_eq!(again.idempotency.map(|k| k.fingerprint), Some(key.fingerprint));
            }
        }
        Err(error) if error.code() == ErrorCode::InvalidIdempotencyKey => {
            assert!(!sent.is_empty(), "refused over a key it did not send");
        }
        Err(_) => {}
    }
}

/// The header's user properties come before the query's: an accepted
/// request's are the header's (those the target built, when it built them),
/// then what the request has without the header.
fn check_header_user_properties(
    request: &HttpRequest,
    outcome: &Result<PublishRequest, ApiError>,
    limits: BackendLimits,
    max_payload: usize,
    built: &Option<Pairs>,
) {
    let Ok(parsed) = outcome else { return };
    if !request.headers.contains_key(USER_PROPERTIES) {
        return;
    }
    let rest = parse_request(&without(request, &[USER_PROPERTIES]), limits, max_payload)
        .expect("without its user properties header, an accepted request is still accepted")
        .options
        .properties
        .user_properties;
    let all = &parsed.options.properties.user_properties;
    assert!(all.ends_with(&rest), "the header's user properties come first: {all:?}, without the header {rest:?}");
    if let Some(built) = built {
        assert_eq!(&all[..all.len() - rest.len()], built.as_slice(), "the header's user properties, in order");
    }
}

/// An accepted property header or `messageExpiry` means what it says.
fn check_property_spellings(request: &HttpRequest, parsed: &PublishRequest) {
    let properties = &parsed.options.properties;
    // A header sent twice, or its values joined with "," (as API Gateway's HTTP
    // API hands them on), is accepted only when every value is the same one.
    let value = |name: &str| {
        let mut parts = request
            .headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().expect("an accepted header is ASCII").split(','))
            .map(|p| p.trim_matches([' ', '\t']));
        let first = parts.next()?;
        assert!(parts.all(|p| p == first), "{name}: different values were accepted");
        Some(first)
    };
    if let Some(value) = value(PAYLOAD_FORMAT_INDICATOR) {
        let indicator = ["UNSPECIFIED_BYTES", "UTF8_DATA"].iter().position(|name| *name == value);
        assert!(indicator.is_some(), "{PAYLOAD_FORMAT_INDICATOR}: {value:?} was accepted");
        assert_eq!(properties.payload_format_indicator.map(usize::from), indicator);
    }
    if let Some(value) = value(CORRELATION_DATA) {
        let data = properties.correlation_data.as_ref().expect("accepted correlation data is set");
        assert_eq!(STANDARD_NO_PAD.encode(data), value.trim_end_matches('='), "encoding undoes the decoding");
    }
    for (name, value) in &request.query {
        if ["messageExpiry", "MessageExpiryInterval"].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            assert_eq!(properties.message_expiry_interval, value.parse().ok(), "{name}={value:?}");
        }
        if name.eq_ignore_ascii_case("ResponseTimeout") {
            let seconds = parsed.options.response_timeout.expect("an accepted ResponseTimeout is read");
            assert!((1..=60).contains(&seconds), "{value:?}");
            assert!(value.bytes().all(|b| b.is_ascii_digit()), "only digits are a ResponseTimeout: {value:?}");
            assert_eq!(value.parse::<u32>(), Ok(seconds), "{value:?}");
        }
    }
}

/// Request line, headers and body; `None` when the input is no request at all.
fn split_request(data: &[u8]) -> Option<(Method, &str, HeaderMap, Bytes)> {
    let head_end = find(data, b"\n\n").map(|i| (i, i + 2));
    let head_end =
        find(data, b"\r\n\r\n").map(|i| (i, i + 4)).filter(|c| head_end.is_none_or(|h| c.0 < h.0)).or(head_end);
    let (head, body) = match head_end {
        Some((end, body_start)) => (&data[..end], &data[body_start..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let mut request_line = lines.next()?.split(' ');
    let method = Method::from_bytes(request_line.next()?.as_bytes()).ok()?;
    let target = request_line.next()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value.trim())) {
            headers.append(name, value);
        }
    }
    Some((method, target, headers, Bytes::copy_from_slice(body)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn check_accepted(request: &HttpRequest, parsed: &PublishRequest, limits: BackendLimits, max_payload: usize) {
    assert_eq!(request.method, Method::POST);
    Topic::check(parsed.topic.as_str(), limits.topic).expect("an accepted topic is valid");
    assert!(parsed.options.qos <= limits.max_qos);
    assert_eq!(parsed.payload, request.body, "the payload is the body, unchanged");
    assert!(parsed.payload.len() <= max_payload);
    if parsed.options.properties.payload_format_indicator == Some(1) {
        assert!(std::str::from_utf8(&parsed.payload).is_ok());
    }
    if let Some(id) = &parsed.options.client_id {
        assert!(ClientId::parse(id.as_str()).as_ref() == Some(id), "{id:?}");
    }
    // No text a broker may take for a malformed packet (MQTT 5 §1.5.4) gets through.
    let mqtt_text = |text: &str| {
        !text.chars().any(|c| {
            c.is_control() || ('\u{fdd0}'..='\u{fdef}').contains(&c) || (c as u32 & 0xffff) >= 0xfffe
        })
    };
    let p = &parsed.options.properties;
    assert!(mqtt_text(parsed.topic.as_str()), "{:?}", parsed.topic);
    assert!(p.content_type.as_deref().is_none_or(mqtt_text), "{:?}", p.content_type);
    assert!(p.response_topic.as_deref().is_none_or(mqtt_text), "{:?}", p.response_topic);
    assert!(p.user_properties.iter().all(|(k, v)| mqtt_text(k) && mqtt_text(v)), "{:?}", p.user_properties);
    let encoded = format!("/topics/{}", utf8_percent_encode(parsed.topic.as_str(), NON_ALPHANUMERIC));
    let again = parse_topic(&RequestPath::Encoded(encoded), limits.topic).expect("an accepted topic parses again");
    assert_eq!(again, parsed.topic, "encoding a topic and decoding it once gives it back");
}

fn check_refusal(error: ApiError) {
    let named = match error.code() {
        ErrorCode::InvalidCorrelationData => vec![CORRELATION_DATA],
        ErrorCode::InvalidPayloadFormatIndicator => vec![PAYLOAD_FORMAT_INDICATOR, "PayloadFormatIndicator"],
        ErrorCode::InvalidUserProperty => vec![USER_PROPERTIES, "UserProp"],
        ErrorCode::InvalidResponseTimeout => vec!["ResponseTimeout"],
        _ => Vec::new(),
    };
    let message = error.message();
    assert!(named.is_empty() || named.iter().any(|n| message.contains(n)), "{message}");
    let response = error.into_response();
    assert!(response.status().is_client_error(), "a malformed request is the client's error: {response:?}");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("the error body is JSON");
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
}
