//! Every `events/*.json` through the real handler, publishing with the real
//! IoT client to moto on loopback; what the SDK sent is read back from moto's
//! recorder and checked byte for byte.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use common::{example_service, iot_publisher, moto_url, recorded, start_recording, unique_app_name, Recorded};
use mqtt_http_publish::lambda;
use mqtt_http_publish::publish::iot::IotSettings;
use serde_json::Value;

const HELLO: &[u8] = br#"{ "message": "Hello, world" }"#;

/// Runs one event file; returns the Lambda response and what reached moto.
async fn run(file: &str) -> (Value, Vec<Recorded>) {
    run_changed(file, |_| {}).await
}

/// Like [`run`], with the event changed by `change` first.
async fn run_changed(file: &str, change: impl FnOnce(&mut Value)) -> (Value, Vec<Recorded>) {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name(file.trim_end_matches(".json"));
    let service = example_service(iot_publisher(&moto, &app, IotSettings::default()).await);
    let text = std::fs::read(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut event: Value = serde_json::from_slice(&text).unwrap();
    change(&mut event);
    let event = serde_json::from_value(event).unwrap();
    let response = lambda::handle(&service, event, None).await.expect("an HTTP event");
    (serde_json::to_value(response).unwrap(), recorded(&moto, &app).await)
}

/// The one publish moto received, after checking the 200 that announced it.
fn published(response: &Value, sent: Vec<Recorded>) -> Recorded {
    assert_eq!(response["statusCode"], 200, "{response}");
    let id = response["headers"]["x-message-id"].as_str().expect("X-Message-Id");
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)), "{id}");
    assert_eq!(response["headers"]["content-length"], "0");
    assert_eq!(response["body"], "");
    assert_eq!(sent.len(), 1, "exactly one Publish call: {sent:?}");
    let call = sent.into_iter().next().unwrap();
    assert_eq!(call.method, "POST");
    call
}

/// Checks a refusal: status, error code, and that nothing was published.
fn refused(response: &Value, sent: &[Recorded], status: u16, code: &str) {
    assert_eq!(response["statusCode"], status, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(response["headers"]["content-type"], "application/json");
    assert!(sent.is_empty(), "a refused request must not publish: {sent:?}");
    if status == 401 {
        assert_eq!(response["headers"]["www-authenticate"], "Basic realm=\"mqtt\"");
    }
}

fn header<'a>(call: &'a Recorded, name: &str) -> Option<&'a str> {
    call.headers.get(name).map(String::as_str)
}

#[tokio::test]
async fn example_1_basic_auth_publishes_qos_1_not_retained() {
    let (response, sent) = run("example-1-basic-auth.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home");
    assert_eq!(call.query("qos").as_deref(), Some("1"));
    assert_eq!(call.query("retain").as_deref(), Some("false"));
    assert_eq!(call.body, HELLO, "the base64 body arrives decoded");
    assert_eq!(header(&call, "x-amz-mqtt5-user-properties"), None);
}

#[tokio::test]
async fn example_2_explicit_username_is_ignored_for_the_basic_user_and_retains() {
    let (response, sent) = run("example-2-basic-auth-username.json").await;
    let call = published(&response, sent);
    assert_eq!((call.topic().as_str(), call.query("retain").as_deref()), ("home", Some("true")));
    assert_eq!(call.body, HELLO);
}

#[tokio::test]
async fn example_3_client_certificate_authenticates_with_its_cn() {
    let (response, sent) = run("example-3-client-certificate.json").await;
    let call = published(&response, sent);
    assert_eq!((call.topic().as_str(), call.query("qos").as_deref()), ("home", Some("1")));
    assert_eq!(call.body, HELLO);
}

#[tokio::test]
async fn rest_api_event_with_a_stage_and_encoded_slash_splits_levels() {
    let (response, sent) = run("rest-api-stage-encoded-slash.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/kitchen");
    assert_eq!(call.query("qos").as_deref(), Some("0"));
}

#[tokio::test]
async fn rest_api_client_certificate_is_read_from_the_identity() {
    let (response, sent) = run("rest-api-client-certificate.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "devices/curl001/temperature", "allowed by devices/${{client_id}}/# for the CN");
    assert_eq!(call.body, br#"{"celsius": 21.5}"#);
}

#[tokio::test]
async fn alb_event_decodes_path_and_each_query_value_once() {
    let (response, sent) = run("alb.json").await;
    assert!(response.get("statusDescription").is_some(), "an ALB needs statusDescription");
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/hall way");
    let props = header(&call, "x-amz-mqtt5-user-properties").map(common::base64_decode).unwrap();
    assert_eq!(String::from_utf8(props).unwrap(), r#"[{"a&b":"c=d"}]"#, "%26 inside a value must not split it");
}

#[tokio::test]
async fn function_url_event_decodes_its_encoded_raw_path() {
    let (response, sent) = run("function-url.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/café");
    assert_eq!(call.query("qos").as_deref(), Some("0"));
}

#[tokio::test]
async fn http_api_raw_path_is_not_decoded_a_second_time() {
    let (response, sent) = run("http-api-no-double-decoding.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/%41", "the client sent %2541; API Gateway decoded it once");
    assert_eq!(call.body, b"once");
}

#[tokio::test]
async fn http_api_payload_1_0_path_is_decoded_once_not_read_as_a_rest_api_path() {
    let (response, sent) = run("http-api-v1-no-double-decoding.json").await;
    assert!(response.get("statusDescription").is_none(), "answered in API Gateway's shape, not an ALB's");
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/%41", "the client sent %2541; API Gateway decoded it once, and so only once");
    assert_eq!(call.body, b"once");
    let props = header(&call, "x-amz-mqtt5-user-properties").map(common::base64_decode).unwrap();
    assert_eq!(String::from_utf8(props).unwrap(), r#"[{"note":"a&b c"}]"#, "its query values arrive decoded");
}

#[tokio::test]
async fn http_api_named_stage_is_removed_from_the_path() {
    let (response, sent) = run("http-api-named-stage.json").await;
    assert_eq!(published(&response, sent).topic(), "home");
}

#[tokio::test]
async fn every_mqtt5_property_reaches_aws_iot() {
    let (response, sent) = run("mqtt5-properties.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/sensor");
    assert_eq!((call.query("qos").as_deref(), call.query("retain").as_deref()), (Some("1"), Some("true")));
    assert_eq!(call.query("responseTopic").as_deref(), Some("sample/response/topic"));
    assert_eq!(call.query("contentType").as_deref(), Some("application/json"));
    assert_eq!(call.query("messageExpiry").as_deref(), Some("3600"));
    assert_eq!(header(&call, "x-amz-mqtt5-payload-format-indicator"), Some("UTF8_DATA"));
    assert_eq!(header(&call, "x-amz-mqtt5-correlation-data"), Some("U04wMDAx"), "base64 of SN0001");
    let props =
        String::from_utf8(common::base64_decode(header(&call, "x-amz-mqtt5-user-properties").unwrap())).unwrap();
    assert_eq!(props, r#"[{"sampleKey":"sampleValue"},{"sampleKey":"second"},{"unit":"°C / h"}]"#);
    assert_eq!(call.body, br#"{"temperature": 21.5}"#);
}

#[tokio::test]
async fn a_request_as_boto3_sends_it_reaches_aws_iot_as_the_same_publish() {
    // tests/fixtures/boto3-iot-data-publish.http, as API Gateway's REST API delivers it
    let (response, sent) = run("aws-iot-publish-boto3.json").await;
    let call = published(&response, sent);
    assert_eq!(call.topic(), "home/kitchen");
    assert_eq!((call.query("qos").as_deref(), call.query("retain").as_deref()), (Some("1"), Some("false")));
    assert_eq!(call.query("contentType").as_deref(), Some("application/json"));
    assert_eq!(call.query("responseTopic").as_deref(), Some("home/kitchen/replies"));
    assert_eq!(call.query("messageExpiry").as_deref(), Some("3600"));
    assert_eq!(header(&call, "x-amz-mqtt5-payload-format-indicator"), Some("UTF8_DATA"));
    assert_eq!(header(&call, "x-amz-mqtt5-correlation-data"), Some("cmVxLTAwMDE="), "the bytes boto3 sent");
    // boto3 sent the array as a JSON string (it encodes its string argument once more); AWS IoT
    // reads both as the same three pairs, in order.
    let props =
        String::from_utf8(common::base64_decode(header(&call, "x-amz-mqtt5-user-properties").unwrap())).unwrap();
    assert_eq!(props, r#"[{"deviceName":"alpha"},{"deviceCnt":"45"},{"deviceName":"beta"}]"#);
    assert_eq!(call.body, br#"{"temperature": 21.5}"#);
}

#[tokio::test]
async fn a_traceparent_travels_to_aws_iot_after_the_request_s_user_properties() {
    let (response, sent) = run("traceparent.json").await;
    let call = published(&response, sent);
    let props =
        String::from_utf8(common::base64_decode(header(&call, "x-amz-mqtt5-user-properties").unwrap())).unwrap();
    assert_eq!(
        props,
        r#"[{"unit":"C"},{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},{"tracestate":"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}]"#
    );
    assert_eq!(call.body, b"21.5");
}

#[tokio::test]
async fn a_browser_s_preflight_from_an_allowed_origin_is_204_without_credentials() {
    let (response, sent) = run("cors-preflight.json").await;
    assert_eq!(response["statusCode"], 204, "{response}");
    let headers = &response["headers"];
    assert_eq!(headers["access-control-allow-origin"], "http://localhost:9090");
    assert_eq!(headers["access-control-allow-methods"], "POST");
    assert_eq!(headers["vary"], "Origin");
    assert!(headers.get("access-control-allow-credentials").is_none(), "{response}");
    assert!(sent.is_empty(), "a preflight publishes nothing");
}

#[tokio::test]
async fn a_page_on_another_origin_is_refused_with_403_before_its_credentials_are_read() {
    let (response, sent) = run("error-403-origin-not-allowed.json").await;
    refused(&response, &sent, 403, "origin_not_allowed");
    assert!(response["headers"].get("access-control-allow-origin").is_none(), "{response}");
}

#[tokio::test]
async fn an_event_that_does_not_decode_is_400_with_cors_headers_for_an_allowed_page() {
    let (response, sent) = run_changed("cors-preflight.json", |event| {
        event["requestContext"]["http"]["method"] = "POST".into();
        event["rawQueryString"] = "qos=1&x=%ff".into();
        event["headers"]["authorization"] = "Basic dXNlcjA6c2VjcmV0MA==".into();
    })
    .await;
    refused(&response, &sent, 400, "invalid_query");
    assert_eq!(response["headers"]["access-control-allow-origin"], "http://localhost:9090", "{response}");
    assert!(response["headers"]["access-control-expose-headers"].as_str().unwrap().contains("X-Message-Id"));
}

#[tokio::test]
async fn a_binary_payload_arrives_byte_for_byte() {
    let (response, sent) = run("binary-payload.json").await;
    assert_eq!(published(&response, sent).body, [0, 1, 2, 0xfe, 0xff, 0x80, 0x0a, 0x0d]);
}

#[tokio::test]
async fn an_empty_retained_payload_is_published_to_clear_the_retained_message() {
    let (response, sent) = run("empty-payload-clears-retained.json").await;
    let call = published(&response, sent);
    assert_eq!((call.body.len(), call.query("retain").as_deref()), (0, Some("true")));
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_with_the_message_id_and_a_retry_replays_the_answer() {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("idempotency-key");
    let service = example_service(iot_publisher(&moto, &app, IotSettings::default()).await);
    let text = std::fs::read(format!("{}/events/{}", env!("CARGO_MANIFEST_DIR"), "idempotency-key.json")).unwrap();
    let event = || serde_json::from_slice(&text).unwrap();
    let first = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    let call = published(&first, recorded(&moto, &app).await);
    let id = first["headers"]["x-message-id"].as_str().unwrap();
    let properties = common::base64_decode(header(&call, "x-amz-mqtt5-user-properties").unwrap());
    assert_eq!(String::from_utf8(properties).unwrap(), format!(r#"[{{"message-id":"{id}"}}]"#));
    assert_eq!(call.body, HELLO);
    let retry = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!((retry["statusCode"].as_u64(), retry["headers"]["x-message-id"].as_str()), (Some(200), Some(id)));
    assert_eq!(retry["headers"]["idempotent-replayed"], "true");
    assert_eq!(recorded(&moto, &app).await.len(), 1, "the retry published nothing");
}

macro_rules! refusal {
    ($name:ident, $file:literal, $status:literal, $code:literal) => {
        #[tokio::test]
        async fn $name() {
            let (response, sent) = run($file).await;
            refused(&response, &sent, $status, $code);
        }
    };
}

refusal!(wrong_path_is_400, "error-400-wrong-path.json", 400, "invalid_path");
refusal!(illegal_topic_is_400, "error-400-illegal-topic.json", 400, "invalid_topic");
refusal!(qos_2_is_rejected_for_aws_iot, "error-400-illegal-qos.json", 400, "invalid_qos");
refusal!(illegal_retained_is_400, "error-400-illegal-retained.json", 400, "invalid_retained");
refusal!(invalid_client_id_is_400, "error-400-invalid-client-id.json", 400, "invalid_client_id");
refusal!(retained_and_retain_disagreeing_is_400, "error-400-conflicting-retain.json", 400, "conflicting_parameter");
refusal!(
    user_property_without_value_is_400,
    "error-400-user-property-without-value.json",
    400,
    "invalid_user_property"
);
refusal!(non_utf8_payload_declared_utf8_is_400, "error-400-payload-not-utf8.json", 400, "invalid_payload");
refusal!(no_credentials_is_401, "error-401-no-credentials.json", 401, "missing_credentials");
refusal!(malformed_authorization_is_401, "error-401-malformed-authorization.json", 401, "invalid_authorization_header");
refusal!(wrong_password_is_401, "error-401-wrong-password.json", 401, "authentication_failed");
refusal!(unknown_user_is_401, "error-401-unknown-user.json", 401, "authentication_failed");
refusal!(topic_outside_the_acl_is_401, "error-401-acl-denied.json", 401, "not_authorized");
refusal!(deny_rule_before_allow_rule_is_401, "error-401-acl-deny-rule.json", 401, "not_authorized");
refusal!(client_id_other_than_the_cn_is_401, "error-401-client-id-mismatch.json", 401, "client_id_mismatch");
refusal!(payload_over_128_kib_is_413, "error-413-payload-too-large.json", 413, "payload_too_large");

#[tokio::test]
async fn get_is_405_with_allow_post() {
    let (response, sent) = run("error-405-get.json").await;
    refused(&response, &sent, 405, "method_not_allowed");
    assert_eq!(response["headers"]["allow"], "POST");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_answers_are_identical() {
    let (unknown, _) = run("error-401-unknown-user.json").await;
    let (wrong, _) = run("error-401-wrong-password.json").await;
    assert_eq!(unknown, wrong);
}

#[tokio::test]
async fn every_event_file_is_covered_by_a_test() {
    let source = include_str!("events.rs");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/events")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(source.contains(&format!("\"{name}\"")), "events/{name} has no test");
        }
    }
}

#[tokio::test]
async fn a_request_that_waits_publishes_nothing_when_no_reply_can_be_waited_for() {
    // The full path, with the reply over a WebSocket, is tests/lambda_runtime.rs's
    // a_request_that_waits_gets_the_device_s_reply_over_a_signed_websocket (same file).
    // Here the service has no reply connection: the command is not sent, since its
    // reply could not be received.
    let (response, sent) = run("response-timeout.json").await;
    refused(&response, &sent, 503, "service_unavailable");
    assert!(response["headers"].get("x-message-id").is_none(), "nothing was published");
}

#[tokio::test]
async fn a_batch_publishes_its_allowed_messages_to_aws_iot_and_answers_each() {
    // The event's four messages, then QoS 2 and one over AWS IoT's 128 KiB.
    let (response, sent) = run_changed("batch.json", |event| {
        let mut messages: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
        let array = messages.as_array_mut().unwrap();
        array.push(serde_json::json!({"topic": "home/q2", "payload": "x", "qos": 2}));
        array.push(serde_json::json!({"topic": "home/big", "payload": "x".repeat(128 * 1024 + 1)}));
        event["body"] = messages.to_string().into();
        event["headers"]["content-length"] = event["body"].as_str().unwrap().len().to_string().into();
    })
    .await;
    assert_eq!(response["statusCode"], 207, "{response}");
    assert_eq!(response["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    let entries: Vec<(u64, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["status"].as_u64().unwrap(), e["error"].as_str().unwrap_or("")))
        .collect();
    let expected = [(200, ""), (200, ""), (401, "not_authorized"), (400, "invalid_topic"), (400, "invalid_qos")];
    assert_eq!(entries, [&expected[..], &[(413, "payload_too_large")]].concat());
    let mut topics: Vec<String> = sent.iter().map(Recorded::topic).collect();
    topics.sort();
    assert_eq!(topics, vec!["home/t1", "home/t2"], "only the 200s reach AWS IoT: {sent:?}");
    let binary = sent.iter().find(|call| call.topic() == "home/t2").unwrap();
    assert_eq!(binary.body, [0u8, 1, 2]);
    assert_eq!((binary.query("qos").as_deref(), binary.query("retain").as_deref()), (Some("0"), Some("true")));
    assert_eq!(binary.query("contentType").as_deref(), Some("application/octet-stream"));
}
