//! Requests as AWS IoT's clients send them: boto3's bytes, W3C trace context,
//! and text a broker would drop the connection for.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::common;
use crate::common::Wire;
use crate::support::{base64_of, drain, mosquitto, next, post, serve, subscriber, USER0};

/// Sends `bytes` as they are and reads one whole answer (the connection may stay open).
async fn exchange(url: &str, bytes: &[u8]) -> Wire {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            raw.extend_from_slice(&chunk[..n]);
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let wire = common::parse_head(std::str::from_utf8(&raw[..split + 4]).unwrap());
                let length: usize = wire.headers.get("content-length").map_or(0, |l| l.parse().unwrap());
                if n == 0 || raw.len() >= split + 4 + length {
                    return Wire { body: raw[split + 4..].to_vec(), ..wire };
                }
            }
            assert!(n > 0, "the connection closed before a whole answer");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer")
}

/// The exact bytes boto3's `iot-data` client sends for `publish()` with every
/// MQTT 5 argument (captured once by scripts/capture-boto3-publish, with the
/// demo's Basic credentials in place of a signature).
const BOTO3_PUBLISH: &[u8] = include_bytes!("../fixtures/boto3-iot-data-publish.http");

#[tokio::test]
async fn the_bytes_boto3_sends_publish_the_message_aws_iot_would() {
    let (_broker, port) = mosquitto("boto3").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let answer = exchange(&serve.url, BOTO3_PUBLISH).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.headers["x-message-id"].len(), 32);
    let p = next(&mut rx).await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"home/kitchen"[..], &br#"{"temperature": 21.5}"#[..]));
    assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    let props = p.properties.expect("MQTT 5 properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("home/kitchen/replies"));
    assert!(props.message_expiry_interval.is_some_and(|e| (3590..=3600).contains(&e)), "{props:?}");
    assert_eq!(props.correlation_data.as_deref(), Some(&b"req-0001"[..]));
    assert_eq!(props.payload_format_indicator, Some(1));
    let pairs = [("deviceName", "alpha"), ("deviceCnt", "45"), ("deviceName", "beta")];
    assert_eq!(props.user_properties, pairs.map(|(k, v)| (k.to_owned(), v.to_owned())));
}

#[tokio::test]
async fn a_traceparent_travels_after_the_request_s_user_properties_and_its_trace_id_is_logged() {
    let (_broker, port) = mosquitto("trace").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // A tab around a member is the W3C's optional whitespace, and no MQTT text:
    // mosquitto would drop the connection for it, and the next request's with it.
    let state = "rojo=00f067aa0ba902b7,\tcongo=t61rcWkgMzE";
    let headers = [USER0, ("traceparent", traceparent), ("tracestate", state)];
    let answer = post(&serve.url, "/topics/home/traced?UserProp.1.Key=k&UserProp.1.Value=v", &headers, b"x").await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let props = next(&mut rx).await.properties.expect("MQTT 5 properties");
    let forwarded = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let expected = [("k", "v"), ("traceparent", traceparent), ("tracestate", forwarded)];
    assert_eq!(props.user_properties, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));

    let invalid = [USER0, ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01")];
    assert_eq!(post(&serve.url, "/topics/home/untraced", &invalid, b"x").await.status(), 200, "no error");
    assert!(next(&mut rx).await.properties.is_none_or(|p| p.user_properties.is_empty()), "nor forwarded");

    let id = &answer.headers["x-message-id"];
    let log = std::fs::read_to_string(&serve.log).unwrap();
    let line = log.lines().find(|l| l.contains(id.as_str()) && l.contains("status=200")).expect("the request's line");
    assert!(line.contains(r#"trace_id="0af7651916cd43dd8448eb211c80319c""#), "{line}");
}

#[tokio::test]
async fn text_a_broker_would_drop_the_connection_for_is_400_and_the_messages_beside_it_are_published() {
    // One connection to mosquitto, which drops a connection on any of these
    // characters: every message in flight on it would go with it.
    let (_broker, port) = mosquitto("mqtt-text").await;
    let serve = serve(Some(port), &["--mqtt-connections", "1"]).await;
    let mut rx = subscriber(port, "home/#").await;
    let nel = base64_of("[{\"k\":\"\u{85}\"}]");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers, &str); 6] = [
        ("/topics/home/t?UserProp.1.Key=k&UserProp.1.Value=%00", &[], "invalid_user_property"),
        ("/topics/home/t?UserProp.1.Key=k&UserProp.1.Value=a%09b", &[], "invalid_user_property"),
        ("/topics/home/t", &[("x-amz-mqtt5-user-properties", &nel)], "invalid_user_property"),
        ("/topics/home/t?ContentType=%EF%BF%BF", &[], "invalid_content_type"),
        ("/topics/home/t?ResponseTopic=r%7F", &[], "invalid_response_topic"),
        ("/topics/home/t%01", &[], "invalid_topic"),
    ];
    let mut published = 0;
    for (path, extra, code) in cases {
        let headers: Vec<(&str, &str)> = [USER0].into_iter().chain(extra.iter().copied()).collect();
        let beside: Vec<_> = (0..8)
            .map(|_| {
                let url = serve.url.clone();
                tokio::spawn(async move { post(&url, "/topics/home/good", &[USER0], b"x").await.status() })
            })
            .collect();
        let bad = post(&serve.url, path, &headers, b"x").await;
        let (status, body) = (bad.status(), String::from_utf8_lossy(&bad.body).into_owned());
        assert_eq!(status, 400, "{path}: {bad:?}");
        assert!(body.contains(&format!("\"error\":\"{code}\"")) && body.contains("U+"), "{path}: {body}");
        let mut statuses = Vec::new();
        for task in beside {
            statuses.push(task.await.unwrap());
        }
        statuses.push(post(&serve.url, "/topics/home/good", &[USER0], b"x").await.status());
        assert!(statuses.iter().all(|&s| s == 200), "{path}: the messages beside it and after it: {statuses:?}");
        published += statuses.len();
    }
    let arrived = drain(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(arrived.len(), published, "every 200 arrived, and nothing else");
    assert!(arrived.iter().all(|m| m.topic == "home/good"));
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(log.matches("connected to the MQTT broker").count(), 1, "one connection, never dropped:\n{log}");
}
