//! What reaches a subscriber: every MQTT 5 property, retained messages, both
//! QoS, the first request after start, and what the demo config refuses.

use std::process::Command;

use rumqttc::v5::mqttbytes::QoS;

use crate::common;
use crate::common::{free_port, request, Proc};
use crate::support::{
    mosquitto, next, post, serve, subscriber, temp_dir, wait_for_port, write_config, Serve, BIN, USER0,
};

const PROPERTIES: &str = "/topics/home/sensor?qos=1&client_id=curl-x&ResponseTopic=sample%2Fresponse%2Ftopic\
    &CorrelationData=SN0001&ContentType=application%2Fjson&PayloadFormatIndicator=1&MessageExpiryInterval=3600\
    &UserProp.2.Key=k&UserProp.2.Value=second&UserProp.1.Key=k&UserProp.1.Value=first";

async fn every_property_arrives(serve: &Serve) {
    let mut rx = subscriber(serve.mqtt_port, "home/#").await;
    let response = post(&serve.url, PROPERTIES, &[USER0], br#"{"t": 21.5}"#).await;
    assert_eq!(response.status(), 200, "{response:?}");
    let p = next(&mut rx).await;
    assert_eq!((&p.topic[..], &p.payload[..], p.qos), (&b"home/sensor"[..], &br#"{"t": 21.5}"#[..], QoS::AtLeastOnce));
    let props = p.properties.expect("MQTT 5 properties");
    assert_eq!(props.response_topic.as_deref(), Some("sample/response/topic"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"SN0001"[..]));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert!(props.message_expiry_interval.is_some_and(|e| (3590..=3600).contains(&e)), "{props:?}");
    assert_eq!(props.user_properties, [("k".to_owned(), "first".to_owned()), ("k".to_owned(), "second".to_owned())]);
}

#[tokio::test]
async fn every_mqtt5_property_reaches_a_mosquitto_subscriber() {
    let (_broker, port) = mosquitto("props").await;
    every_property_arrives(&serve(Some(port), &[]).await).await;
}

#[tokio::test]
async fn every_mqtt5_property_reaches_an_embedded_broker_subscriber() {
    every_property_arrives(&serve(None, &[]).await).await;
}

async fn retained_reaches_a_later_subscriber(serve: &Serve) {
    let response = post(&serve.url, "/topics/home/door?retained=true&qos=1", &[USER0], b"open").await;
    assert_eq!(response.status(), 200);
    let mut rx = subscriber(serve.mqtt_port, "home/door").await;
    let p = next(&mut rx).await;
    assert_eq!((&p.payload[..], p.retain), (&b"open"[..], true));
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_mosquitto_subscriber() {
    let (_broker, port) = mosquitto("retained").await;
    retained_reaches_a_later_subscriber(&serve(Some(port), &[]).await).await;
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_embedded_broker_subscriber() {
    retained_reaches_a_later_subscriber(&serve(None, &[]).await).await;
}

#[tokio::test]
async fn qos_0_and_qos_1_are_delivered_over_http_1_0() {
    let (_broker, port) = mosquitto("qos").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(serve.mqtt_port, "q/#").await;
    // common::request speaks HTTP/1.0.
    for qos in ["0", "1"] {
        let response = post(&serve.url, &format!("/topics/q/{qos}?qos={qos}"), &[USER0], qos.as_bytes()).await;
        assert!(response.start_line.starts_with("HTTP/1.0 200"), "{response:?}");
        let id = &response.headers["x-message-id"];
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        let p = next(&mut rx).await;
        assert_eq!(p.payload, qos.as_bytes());
        assert_eq!(p.qos, if qos == "0" { QoS::AtMostOnce } else { QoS::AtLeastOnce });
    }
}

#[tokio::test]
async fn the_first_request_after_the_port_opens_is_published_not_503() {
    // GIVEN serve with the embedded broker, started just now
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let (stdout, stderr) = common::child_logs("serve-first-request");
    let child = Command::new(BIN)
        .args(["serve", "--listen", &listen, "--broker-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let _serve = Proc(child);
    // WHEN the first request comes the moment the listener is up
    wait_for_port(http, "serve").await;
    let response = post(&format!("http://{listen}"), "/topics/first", &[USER0], b"hi").await;
    // THEN it is published: serve listens once its broker connection is up
    assert_eq!(response.status(), 200, "{response:?}");
}

#[tokio::test]
async fn the_demo_config_refuses_dollar_topics_and_strangers() {
    let serve = serve(None, &[]).await;
    assert_eq!(post(&serve.url, "/topics/%24SYS/x", &[USER0], b"").await.status(), 401);
    // Replies come from devices: a caller may wait on its own, and forge none.
    assert_eq!(post(&serve.url, "/topics/replies/http-1/1?CorrelationData=1", &[USER0], b"").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/x", &[], b"").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/x", &[("authorization", "Basic dXNlcjA6d3Jvbmc=")], b"").await.status(), 401);
    assert_eq!(request(&serve.url, "GET", "/topics/x", &[USER0], b"").await.status(), 405);
    assert_eq!(post(&serve.url, "/nope", &[USER0], b"").await.status(), 400);
}

#[tokio::test]
async fn publish_message_id_property_hands_the_subscriber_the_answer_s_message_id() {
    let (_broker, port) = mosquitto("message-id").await;
    let dir = temp_dir("message-id");
    let config = write_config(&dir, "[publish]\nmessage_id_property = \"message-id\"\n");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let mut rx = subscriber(port, "home/#").await;
    let answer = post(&serve.url, "/topics/home/dedup?UserProp.1.Key=k&UserProp.1.Value=v", &[USER0], b"x").await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let props = next(&mut rx).await.properties.expect("MQTT 5 properties");
    let id = answer.headers["x-message-id"].clone();
    assert_eq!(props.user_properties, [("k".to_owned(), "v".to_owned()), ("message-id".to_owned(), id)]);
}
