//! The request parser: the input is a plain HTTP/1 request as text (request
//! line, headers, a blank line, the body), so the seed corpus reads like what
//! `curl` sends. Every request is parsed as `serve` and the REST API receive
//! it (path still encoded) and as the HTTP API does (path already decoded),
//! against AWS IoT's and an MQTT broker's limits.
//!
//! Beyond "no panic": a refusal is a 4xx with a JSON body, never a 5xx; an
//! accepted request respects every limit it was parsed against; and an accepted
//! topic, encoded again, parses back to itself.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::contract::basic::parse_basic;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{
    parse_request, parse_topic, BackendLimits, ClientId, HttpRequest, RequestPath, Topic,
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
                match parse_request(&request, limits, max_payload) {
                    Ok(parsed) => check_accepted(&request, &parsed, limits, max_payload),
                    Err(error) => check_refusal(error),
                }
            }
        }
    }
});

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

fn check_accepted(
    request: &HttpRequest,
    parsed: &mqtt_http_publish::contract::PublishRequest,
    limits: BackendLimits,
    max_payload: usize,
) {
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
    let encoded = format!("/topics/{}", utf8_percent_encode(parsed.topic.as_str(), NON_ALPHANUMERIC));
    let again = parse_topic(&RequestPath::Encoded(encoded), limits.topic).expect("an accepted topic parses again");
    assert_eq!(again, parsed.topic, "encoding a topic and decoding it once gives it back");
}

fn check_refusal(error: mqtt_http_publish::contract::ApiError) {
    let response = error.into_response();
    assert!(response.status().is_client_error(), "a malformed request is the client's error: {response:?}");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("the error body is JSON");
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
}
