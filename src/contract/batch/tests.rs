use super::*;
use crate::contract::TopicLimits;
use http::HeaderMap;

const BACKEND: BackendLimits = BackendLimits {
    topic: TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true },
    max_payload_bytes: 131_072,
    max_qos: Qos::AtLeastOnce,
    retain_available: true,
};

const LIMITS: BatchLimits = BatchLimits { max_messages: 3, max_bytes: 4096, max_payload_bytes: 8 };

fn request(query: &str) -> HttpRequest<()> {
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded(MESSAGES_PATH.into()),
        query: query::decode_query(query).unwrap(),
        headers: HeaderMap::new(),
        body: (),
        source_ip: None,
        client_certificate: None,
    }
}

fn head(query: &str) -> BatchHead {
    parse_batch(&request(query), None, BACKEND, LIMITS.max_bytes).unwrap()
}

fn codes(results: &[Result<BatchMessage, ApiError>]) -> Vec<&'static str> {
    results.iter().map(|r| r.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok")).collect()
}

#[test]
fn the_example_s_two_messages_parse_with_their_defaults_and_properties() {
    let body = br#"[{"topic": "home/t1", "payload": "21.5"},
        {"topic": "home/t2", "payload": "AAEC", "payload_encoding": "base64", "qos": 0, "retained": true,
         "properties": {"ContentType": "application/octet-stream", "ResponseTopic": "r/1", "CorrelationData": "AQI=",
                        "MessageExpiryInterval": 60, "PayloadFormatIndicator": 0,
                        "UserProperties": [{"key": "unit", "value": "C"}]}}]"#;
    let messages = head("").with_body(body, BACKEND, LIMITS).unwrap();
    let first = messages[0].as_ref().unwrap();
    assert_eq!(
        (first.topic.as_str(), first.qos, first.retain, &first.payload[..]),
        ("home/t1", Qos::AtLeastOnce, false, &b"21.5"[..])
    );
    let second = messages[1].as_ref().unwrap();
    assert_eq!((second.qos, second.retain, &second.payload[..]), (Qos::AtMostOnce, true, &[0u8, 1, 2][..]));
    let p = &second.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(p.response_topic.as_deref(), Some("r/1"));
    assert_eq!(p.correlation_data.as_deref(), Some(&[1u8, 2][..]));
    assert_eq!((p.message_expiry_interval, p.payload_format_indicator), (Some(60), Some(0)));
    assert_eq!(p.user_properties, vec![("unit".to_owned(), "C".to_owned())]);
}

#[test]
fn the_query_s_qos_and_retained_are_each_message_s_default() {
    let body = br#"[{"topic": "a", "payload": "x"}, {"topic": "b", "payload": "y", "qos": 1, "retained": false}]"#;
    let messages = head("qos=0&retained=true").with_body(body, BACKEND, LIMITS).unwrap();
    let got: Vec<_> = messages.iter().map(|m| m.as_ref().map(|m| (m.qos, m.retain)).unwrap()).collect();
    assert_eq!(got, vec![(Qos::AtMostOnce, true), (Qos::AtLeastOnce, false)]);
}

#[test]
fn an_invalid_message_is_refused_alone_with_a_single_publish_s_code() {
    let body = br#"[{"topic": "ok", "payload": "x"}, {"topic": "a/#", "payload": "x"},
                    {"topic": "big", "payload": "123456789"}]"#;
    let messages = head("").with_body(body, BACKEND, LIMITS).unwrap();
    assert_eq!(codes(&messages), vec!["ok", "invalid_topic", "payload_too_large"]);
    let body =
        br#"[{"topic": "q", "payload": "x", "qos": 2}, {"topic": "b", "payload": "%%", "payload_encoding": "base64"},
                    {"topic": "c", "payload": "x", "properties": {"PayloadFormatIndicator": 3}}]"#;
    let messages = head("").with_body(body, BACKEND, LIMITS).unwrap();
    assert_eq!(codes(&messages), vec!["invalid_qos", "invalid_payload", "invalid_payload_format_indicator"]);
}

#[test]
fn an_unknown_field_refuses_the_whole_batch_naming_the_field_and_the_index() {
    let body = br#"[{"topic": "a", "payload": "x"}, {"topic": "a", "payload": "x", "qoss": 0}]"#;
    let error = head("").with_body(body, BACKEND, LIMITS).unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidBody);
    let message = error.message();
    assert!(message.contains("[1]") && message.contains("qoss"), "{message}");
    let body = br#"[{"topic": "a", "payload": "x", "properties": {"ContentTyp": "a"}}]"#;
    let message = head("").with_body(body, BACKEND, LIMITS).unwrap_err().message();
    assert!(message.contains("[0]") && message.contains("ContentTyp"), "{message}");
}

#[test]
fn malformed_json_an_empty_array_and_too_many_messages_refuse_the_whole_batch() {
    let refused = |body: &[u8]| head("").with_body(body, BACKEND, LIMITS).unwrap_err().code().as_str();
    assert_eq!(refused(b"[{\"topic\": \"a\", \"payload\": \"x\"}"), "invalid_body");
    assert_eq!(refused(b"[] []"), "invalid_body");
    assert_eq!(refused(b"{}"), "invalid_body");
    assert_eq!(refused(b"[]"), "invalid_body");
    let four = br#"[{"topic":"a","payload":""},{"topic":"a","payload":""},{"topic":"a","payload":""},{"topic":"a","payload":""}]"#;
    assert_eq!(refused(four), "payload_too_large");
    let long = format!(r#"[{{"topic": "a", "payload": "{}"}}]"#, "x".repeat(LIMITS.max_bytes));
    assert_eq!(refused(long.as_bytes()), "payload_too_large");
}

#[test]
fn what_describes_one_message_is_refused_in_the_query_and_the_headers() {
    for query in ["ResponseTimeout=5", "contentType=a", "UserProp.1.Key=k&UserProp.1.Value=v", "messageExpiry=3"] {
        let error = parse_batch(&request(query), None, BACKEND, LIMITS.max_bytes).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidQuery, "{query}");
    }
    let mut with_header = request("");
    with_header.headers.insert("x-amz-mqtt5-correlation-data", "AQI=".parse().unwrap());
    assert_eq!(parse_batch(&with_header, None, BACKEND, 10).unwrap_err().code(), ErrorCode::InvalidQuery);
    let mut xml = request("");
    xml.headers.insert(http::header::CONTENT_TYPE, "application/xml".parse().unwrap());
    assert_eq!(parse_batch(&xml, None, BACKEND, 10).unwrap_err().code(), ErrorCode::InvalidBody);
    let declared = parse_batch(&request(""), Some(11), BACKEND, 10).unwrap_err();
    assert_eq!(declared.code(), ErrorCode::PayloadTooLarge);
}

#[test]
fn the_trace_context_follows_each_message_s_own_user_properties() {
    let mut traced = request("");
    traced.headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    let head = parse_batch(&traced, None, BACKEND, LIMITS.max_bytes).unwrap();
    let body = br#"[{"topic": "a", "payload": "x", "properties": {"UserProperties": [{"key": "k", "value": "v"}]}}]"#;
    let messages = head.with_body(body, BACKEND, LIMITS).unwrap();
    let names: Vec<_> =
        messages[0].as_ref().unwrap().properties.user_properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec!["k", "traceparent"]);
}
