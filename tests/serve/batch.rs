//! `POST /messages` through the built binary: a mixed batch answered entry by
//! entry, only the 200s at a real subscriber, and one topic's messages in order.

use std::time::Duration;

use crate::support::{drain, mosquitto, payloads_until, post, serve, subscriber, RestartableBroker, Serve, USER0};

const JSON: (&str, &str) = ("content-type", "application/json");

/// Each entry's (status, error) of a batch's answer.
fn entries(body: &[u8]) -> Vec<(u64, String)> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"))
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e["index"], i as u64, "{e}");
            (e["status"].as_u64().unwrap(), e["error"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

async fn a_mixed_batch_is_answered_entry_by_entry(serve: &Serve) {
    let mut rx = subscriber(serve.mqtt_port, "b/#").await;
    let too_large = "x".repeat(131_073);
    let body = format!(
        r#"[{{"topic": "b/ok", "payload": "1"}}, {{"topic": "replies/x", "payload": "forged"}},
            {{"topic": "b/+", "payload": "3"}}, {{"topic": "b/ok", "payload": "4", "qos": 2}},
            {{"topic": "b/big", "payload": "{too_large}"}},
            {{"topic": "b/bin", "payload": "AAEC", "payload_encoding": "base64", "qos": 0,
              "properties": {{"ContentType": "application/octet-stream", "UserProperties": [{{"key": "unit", "value": "C"}}]}}}}]"#
    );
    let response = post(&serve.url, "/messages", &[USER0, JSON], body.as_bytes()).await;
    assert_eq!(response.status(), 207, "{response:?}");
    let expected = [
        (200, ""),
        (401, "not_authorized"),
        (400, "invalid_topic"),
        (400, "invalid_qos"),
        (413, "payload_too_large"),
        (200, ""),
    ];
    assert_eq!(entries(&response.body), expected.map(|(s, e)| (s, e.to_owned())).to_vec());
    let arrived = drain(&mut rx, Duration::from_millis(500)).await;
    let topics: Vec<_> = arrived.iter().map(|p| String::from_utf8_lossy(&p.topic).into_owned()).collect();
    assert_eq!(topics.len(), 2, "only the two 200s arrive: {topics:?}");
    let binary = arrived.iter().find(|p| &p.topic[..] == b"b/bin").expect("the base64 message");
    assert_eq!(&binary.payload[..], &[0u8, 1, 2]);
    let props = binary.properties.as_ref().unwrap();
    assert_eq!(props.content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(props.user_properties, [("unit".to_owned(), "C".to_owned())]);
}

#[tokio::test]
async fn a_mixed_batch_through_mosquitto_publishes_only_its_200s() {
    let (_broker, port) = mosquitto("batch-mixed").await;
    a_mixed_batch_is_answered_entry_by_entry(&serve(Some(port), &[]).await).await;
}

#[tokio::test]
async fn a_mixed_batch_through_the_embedded_broker_publishes_only_its_200s() {
    a_mixed_batch_is_answered_entry_by_entry(&serve(None, &[]).await).await;
}

#[tokio::test]
async fn a_hundred_messages_on_eight_topics_arrive_each_topic_in_order() {
    let (_broker, port) = mosquitto("batch-order").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "order/#").await;
    let messages: Vec<String> =
        (0..100).map(|i| format!(r#"{{"topic": "order/{}", "payload": "{i}"}}"#, i % 8)).collect();
    let body = format!("[{}]", messages.join(","));
    let response = post(&serve.url, "/messages", &[USER0, JSON], body.as_bytes()).await;
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(entries(&response.body).iter().all(|(status, _)| *status == 200));
    let arrived = drain(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(arrived.len(), 100);
    for topic in 0..8 {
        let name = format!("order/{topic}");
        let got: Vec<u32> = arrived
            .iter()
            .filter(|p| p.topic == name.as_bytes())
            .map(|p| std::str::from_utf8(&p.payload).unwrap().parse().unwrap())
            .collect();
        let sent: Vec<u32> = (0..100).filter(|i| i % 8 == topic).collect();
        assert_eq!(got, sent, "{name} in the batch's order");
    }
}

#[tokio::test]
async fn whole_batch_problems_publish_nothing() {
    let (_broker, port) = mosquitto("batch-whole").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "w/#").await;
    let one = br#"[{"topic": "w/a", "payload": "1"}]"#;
    let wrong = ("authorization", "Basic dXNlcjA6d3Jvbmc=");
    for (headers, body, status, code) in [
        (&[wrong, JSON][..], &one[..], 401, "authentication_failed"),
        (&[USER0, JSON][..], &b"[]"[..], 400, "invalid_body"),
        (&[USER0, JSON][..], &br#"[{"topic": "w/a", "payload": "1"}"#[..], 400, "invalid_body"),
        (&[USER0, JSON][..], &br#"[{"topic": "w/a", "payload": "1", "retain": true}]"#[..], 400, "invalid_body"),
        (&[USER0, ("content-type", "text/plain")][..], &one[..], 400, "invalid_body"),
    ] {
        let response = post(&serve.url, "/messages", headers, body).await;
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!((response.status(), json["error"].as_str().unwrap()), (status, code), "{json}");
    }
    let response = post(&serve.url, "/messages?ResponseTimeout=5", &[USER0, JSON], one).await;
    assert_eq!(response.status(), 400, "{response:?}");
    let big = format!("[{}]", vec![r#"{"topic": "w/a", "payload": ""}"#; 101].join(","));
    let response = post(&serve.url, "/messages", &[USER0, JSON], big.as_bytes()).await;
    assert_eq!(response.status(), 413, "over max_batch_messages: {response:?}");
    assert!(drain(&mut rx, Duration::from_millis(300)).await.is_empty(), "nothing was published");
}

#[tokio::test]
async fn with_the_broker_stopped_mid_batch_no_entry_claims_200_for_a_message_that_never_arrives() {
    let mosquitto = RestartableBroker::new("batch-midload");
    let port = mosquitto.port;
    let broker = mosquitto.start().await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = crate::support::persistent_subscriber(port, "mid/#").await;
    let started = tokio::time::Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let url = serve.url.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                let mut batch = 0;
                while started.elapsed() < Duration::from_millis(3500) {
                    let payloads: Vec<String> = (0..20).map(|i| format!("b-{worker}-{batch}-{i}")).collect();
                    let body: Vec<String> = payloads
                        .iter()
                        .enumerate()
                        .map(|(i, p)| format!(r#"{{"topic": "mid/{worker}/{}", "payload": "{p}"}}"#, i % 4))
                        .collect();
                    let response =
                        post(&url, "/messages", &[USER0, JSON], format!("[{}]", body.join(",")).as_bytes()).await;
                    match response.status() {
                        200 | 207 => answered.extend(payloads.into_iter().zip(entries(&response.body))),
                        status => {
                            answered.extend(payloads.into_iter().map(|p| (p, (u64::from(status), String::new()))))
                        }
                    }
                    batch += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    RestartableBroker::stop(broker);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _broker = crate::common::Proc(mosquitto.start().await);
    let mut answered = Vec::new();
    for worker in workers {
        answered.extend(worker.await.unwrap());
    }
    let odd: Vec<_> = answered.iter().filter(|(_, (s, _))| *s != 200 && *s != 503).collect();
    assert!(odd.is_empty(), "each message 200 or 503 while the broker comes and goes: {:?}", &odd[..odd.len().min(5)]);
    assert!(answered.iter().any(|(_, (s, _))| *s == 503), "the outage was seen");
    let ok: std::collections::BTreeSet<&str> =
        answered.iter().filter(|(_, (s, _))| *s == 200).map(|(p, _)| p.as_str()).collect();
    let seen = payloads_until(&mut rx, &ok, Duration::from_secs(15)).await;
    let missing: Vec<_> = ok.iter().filter(|p| !seen.contains(**p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} entries answered 200 never arrived: {:?}",
        missing.len(),
        ok.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test]
async fn a_retried_batch_with_its_key_publishes_nothing_twice_through_serve() {
    let (_broker, port) = mosquitto("batch-key").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "k/#").await;
    let body = br#"[{"topic": "k/a", "payload": "1"}, {"topic": "replies/x", "payload": "2"}, {"topic": "k/b", "payload": "3"}]"#;
    let key = ("idempotency-key", "batch-7");
    let first = post(&serve.url, "/messages", &[USER0, JSON, key], body).await;
    let retry = post(&serve.url, "/messages", &[USER0, JSON, key], body).await;
    assert_eq!((first.status(), retry.status()), (207, 207), "{retry:?}");
    let ids = |body: &[u8]| -> Vec<serde_json::Value> {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        json["results"].as_array().unwrap().iter().map(|e| e["message_id"].clone()).collect()
    };
    assert_eq!(ids(&first.body), ids(&retry.body), "the same message ids");
    assert_eq!(drain(&mut rx, Duration::from_millis(500)).await.len(), 2, "each allowed message once");
    let other = post(&serve.url, "/messages", &[USER0, JSON, key], br#"[{"topic": "k/a", "payload": "9"}]"#).await;
    assert_eq!(other.status(), 422);
}
