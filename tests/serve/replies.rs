//! Publish and wait for the reply (ResponseTimeout).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use tokio::sync::mpsc;

use crate::common::free_port;
use crate::support::{
    mosquitto, mosquitto_with, next, peak_rss_kib, post, rss_kib, serve, subscribed_client, subscriber, sys_count,
    temp_dir, write_config, Serve, USER0,
};

/// How a simulated device answers one command.
struct Answer {
    /// Waited before answering.
    delay: Duration,
    payload: Vec<u8>,
    content_type: Option<&'static str>,
    user_properties: Vec<(String, String)>,
    payload_format_indicator: Option<u8>,
    /// Answers with this correlation data instead of the command's.
    correlation: Option<Vec<u8>>,
}

impl Answer {
    fn payload(payload: &[u8]) -> Answer {
        Answer {
            delay: Duration::ZERO,
            payload: payload.to_vec(),
            content_type: None,
            user_properties: Vec::new(),
            payload_format_indicator: None,
            correlation: None,
        }
    }
}

/// A device on the broker at `port`: a real MQTT 5 client subscribed to
/// `filter` that answers each command on its Response Topic, with its
/// Correlation Data, as `answer` says (several answers: in turn). Returns once subscribed.
async fn device(port: u16, filter: &str, answer: impl Fn(&Publish) -> Vec<Answer> + Send + 'static) {
    let options = MqttOptions::new(format!("device-{}", free_port()), "127.0.0.1", port);
    subscribed_client(options, filter, move |command, client| {
        let props = command.properties.clone().unwrap_or_default();
        let Some(topic) = props.response_topic.clone() else { return true };
        let answers = answer(&command);
        let client = client.clone();
        tokio::spawn(async move {
            for a in answers {
                tokio::time::sleep(a.delay).await;
                let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    correlation_data: a.correlation.map(bytes::Bytes::from).or_else(|| props.correlation_data.clone()),
                    content_type: a.content_type.map(str::to_owned),
                    user_properties: a.user_properties,
                    payload_format_indicator: a.payload_format_indicator,
                    ..Default::default()
                };
                client
                    .publish_with_properties(topic.clone(), QoS::AtLeastOnce, false, a.payload, properties)
                    .await
                    .unwrap();
            }
        });
        true
    })
    .await;
}

/// user0 may publish on `cmd/#` and wait on `replies/${client_id}/#` and `shared/replies`.
fn replies_config(name: &str, extra: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    write_config(
        &dir,
        &format!(
            "[[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"cmd/#\"]\n\
             [[rules]]\npriority = 3\neffect = \"allow\"\ntopics = [\"replies/${{client_id}}/#\", \"shared/replies\"]\n\
             actions = [\"subscribe\"]\n{extra}"
        ),
    )
}

fn decode_user_properties(header: &str) -> Vec<(String, String)> {
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD.decode(header).unwrap();
    let array: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&json).unwrap();
    array.into_iter().flat_map(|o| o.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_owned()))).collect()
}

async fn the_device_s_reply_arrives_byte_for_byte(serve: &Serve) {
    // GIVEN a device that answers a binary payload with a content type, user properties and a format indicator
    let mut commands = subscriber(serve.mqtt_port, "cmd/#").await;
    device(serve.mqtt_port, "cmd/#", |_| {
        vec![Answer {
            content_type: Some("application/cbor"),
            user_properties: vec![("status".into(), "ok".into()), ("status".into(), "again".into())],
            payload_format_indicator: Some(0),
            ..Answer::payload(b"\x00\xffreply\r\n")
        }]
    })
    .await;
    // WHEN a command waits for its reply
    let response = post(&serve.url, "/topics/cmd/lamp?ResponseTimeout=5&client_id=lamp-app", &[USER0], b"on").await;
    // THEN the HTTP answer is the reply
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.body, b"\x00\xffreply\r\n");
    assert_eq!(response.headers["content-type"], "application/cbor");
    assert_eq!(
        decode_user_properties(&response.headers["x-amz-mqtt5-user-properties"]),
        [("status".to_owned(), "ok".to_owned()), ("status".to_owned(), "again".to_owned())]
    );
    assert_eq!(response.headers["x-amz-mqtt5-payload-format-indicator"], "UNSPECIFIED_BYTES");
    // AND the command carried the default response topic and the message id as correlation data
    let id = &response.headers["x-message-id"];
    let command = next(&mut commands).await;
    let props = command.properties.unwrap();
    assert_eq!(props.response_topic.unwrap(), format!("replies/lamp-app/{id}"));
    assert_eq!(props.correlation_data.as_deref(), Some(id.as_bytes()));
}

#[tokio::test]
async fn a_waiting_request_is_answered_with_the_device_s_reply_through_mosquitto() {
    let (_mosquitto, port) = mosquitto("reply").await;
    let config = replies_config("reply-mosquitto", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    the_device_s_reply_arrives_byte_for_byte(&serve).await;
}

#[tokio::test]
async fn a_waiting_request_is_answered_with_the_device_s_reply_through_the_embedded_broker() {
    let config = replies_config("reply-embedded", "");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    the_device_s_reply_arrives_byte_for_byte(&serve).await;
}

#[tokio::test]
async fn a_reply_without_a_content_type_is_octet_stream() {
    let (_mosquitto, port) = mosquitto("reply-plain").await;
    let config = replies_config("reply-plain", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    device(port, "cmd/#", |_| vec![Answer::payload(b"done")]).await;
    let response = post(&serve.url, "/topics/cmd/lamp?ResponseTimeout=5", &[USER0], b"on").await;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.headers["content-type"], "application/octet-stream");
    assert!(!response.headers.contains_key("x-amz-mqtt5-user-properties"));
    assert!(!response.headers.contains_key("x-amz-mqtt5-payload-format-indicator"));
}

#[tokio::test]
async fn two_requests_waiting_on_one_response_topic_each_get_the_reply_with_their_correlation_data() {
    // GIVEN a device that first answers with a stranger's correlation data, then each command
    // after a delay that makes the first command's reply come last
    let (_mosquitto, port) = mosquitto("reply-shared").await;
    let config = replies_config("reply-shared", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    device(port, "cmd/#", |command| {
        let body = command.payload.to_vec();
        let delay = Duration::from_millis(if body == b"a" { 900 } else { 300 });
        vec![
            Answer { correlation: Some(b"someone-else".to_vec()), ..Answer::payload(b"not yours") },
            Answer { delay, ..Answer::payload(&[b"reply to ", &body[..]].concat()) },
        ]
    })
    .await;
    // WHEN two requests wait on the same response topic with their own correlation data
    let ask = |body: &'static [u8], correlation: &'static str| {
        let url = serve.url.clone();
        tokio::spawn(async move {
            let path =
                format!("/topics/cmd/x?ResponseTimeout=5&ResponseTopic=shared%2Freplies&CorrelationData={correlation}");
            post(&url, &path, &[USER0], body).await
        })
    };
    let (a, b) = (ask(b"a", "req-a"), ask(b"b", "req-b"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    // THEN each gets its own reply, and the stranger's is given to neither
    assert_eq!((a.status(), &a.body[..]), (200, &b"reply to a"[..]), "{a:?}");
    assert_eq!((b.status(), &b.body[..]), (200, &b"reply to b"[..]), "{b:?}");
}

/// A loopback relay to `upstream` that delivers every chunk `delay` after it was
/// read, each way, in order: a broker across a network.
async fn distant(upstream: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn carry(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((at, chunk)) = rx.recv().await {
                tokio::time::sleep_until(at + delay).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 || tx.send((tokio::time::Instant::now(), buffer[..n].to_vec())).is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(carry(client_read, server_write, delay));
            tokio::spawn(carry(server_read, client_write, delay));
        }
    });
    port
}

#[tokio::test]
async fn forty_requests_waiting_at_once_on_a_distant_broker_each_get_their_own_reply() {
    // GIVEN mosquitto's defaults 20 ms away: its Receive Maximum of 20 caps rumqttc's packet
    // ids, so forty SUBSCRIBEs in flight share them, and each SUBACK must still reach the
    // subscription that sent it
    let (_mosquitto, port) = mosquitto("reply-40").await;
    let relay = distant(port, Duration::from_millis(20)).await;
    let config = replies_config("reply-40", "");
    let mut serve = serve(Some(relay), &["--config", config.to_str().unwrap()]).await;
    serve.mqtt_port = port;
    device(port, "cmd/#", |command| {
        let body = command.payload.to_vec();
        vec![Answer { delay: Duration::from_millis(300), ..Answer::payload(&[b"reply to ", &body[..]].concat()) }]
    })
    .await;
    let waiters: Vec<_> = (0..40)
        .map(|i| {
            let url = serve.url.clone();
            tokio::spawn(async move {
                let response =
                    post(&url, &format!("/topics/cmd/{i}?ResponseTimeout=10"), &[USER0], i.to_string().as_bytes())
                        .await;
                (i, response)
            })
        })
        .collect();
    for waiter in waiters {
        let (i, response) = waiter.await.unwrap();
        assert_eq!(response.status(), 200, "{i}: {response:?}");
        assert_eq!(response.body, format!("reply to {i}").as_bytes());
    }
}

#[tokio::test]
async fn a_late_reply_after_504_is_dropped_and_the_subscriptions_are_left_behind() {
    // GIVEN a device that answers the first command after 2.5 s and the others at once
    let (_mosquitto, port) = mosquitto_with("reply-late", "sys_interval 1\n").await;
    let config = replies_config("reply-late", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    device(port, "cmd/#", |command| {
        let late = &command.payload[..] == b"first";
        vec![Answer { delay: Duration::from_millis(if late { 2500 } else { 0 }), ..Answer::payload(b"reply") }]
    })
    .await;
    // WHEN the first waits 1 s: 504, with the id it was published under
    let first = post(&serve.url, "/topics/cmd/a?ResponseTimeout=1&client_id=app", &[USER0], b"first").await;
    assert_eq!(first.status(), 504, "{first:?}");
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["error"], "reply_timeout");
    assert!(body["message"].as_str().unwrap().contains("published"), "{body}");
    assert_eq!(first.headers["x-message-id"].len(), 32);
    // AND requests waiting on the same client's topics meanwhile get their own replies, never the late one
    let mut later = Vec::new();
    for i in 0..4 {
        later.push(post(&serve.url, "/topics/cmd/b?ResponseTimeout=5&client_id=app", &[USER0], b"next").await);
        tokio::time::sleep(Duration::from_millis(400 * i)).await;
    }
    for response in &later {
        assert_eq!((response.status(), &response.body[..]), (200, &b"reply"[..]));
    }
    // THEN once nobody waits, the server holds no subscription: the device's and the counter's remain
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = sys_count(port, "$SYS/broker/subscriptions/count", 2).await;
    assert_eq!(count, 2, "the device's subscription and this probe's, no response topic");
}

#[tokio::test]
async fn a_response_topic_the_acl_does_not_allow_to_receive_on_is_401_before_anything_is_published() {
    let (_mosquitto, port) = mosquitto("reply-acl").await;
    let config = replies_config("reply-acl", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let mut commands = subscriber(port, "cmd/#").await;
    for path in [
        "/topics/cmd/a?ResponseTimeout=2&ResponseTopic=cmd%2Fb",
        "/topics/cmd/a?ResponseTimeout=2&ResponseTopic=replies%2Fsomeone-else%2F1&client_id=app",
    ] {
        let response = post(&serve.url, path, &[USER0], b"x").await;
        assert_eq!(response.status(), 401, "{path}: {response:?}");
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"], "not_authorized");
        assert!(body["message"].as_str().unwrap().contains("receive"), "{body}");
    }
    // Allowed to publish there, the same requests without ResponseTimeout go through.
    assert_eq!(post(&serve.url, "/topics/cmd/a?ResponseTopic=cmd%2Fb", &[USER0], b"y").await.status(), 200);
    assert_eq!(&next(&mut commands).await.payload[..], b"y", "the refused commands were never published");
}

#[tokio::test]
async fn beyond_max_waiting_a_request_is_503_with_retry_after_and_publishes_nothing() {
    let (_mosquitto, port) = mosquitto("reply-max").await;
    let config = replies_config("reply-max", "[limits]\nmax_waiting = 2\n");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let mut commands = subscriber(port, "cmd/#").await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let url = serve.url.clone();
            tokio::spawn(async move { post(&url, "/topics/cmd/w?ResponseTimeout=2", &[USER0], b"wait").await })
        })
        .collect();
    next(&mut commands).await;
    next(&mut commands).await;
    let refused = post(&serve.url, "/topics/cmd/w?ResponseTimeout=2", &[USER0], b"third").await;
    assert_eq!(refused.status(), 503, "{refused:?}");
    assert!(refused.headers.contains_key("retry-after"));
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"], "too_many_waiting");
    // Requests that do not wait are not counted.
    assert_eq!(post(&serve.url, "/topics/cmd/w", &[USER0], b"no wait").await.status(), 200);
    assert_eq!(&next(&mut commands).await.payload[..], b"no wait", "the refused one was not published");
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().status(), 504);
    }
    // Once they are answered, there is room again.
    device(port, "cmd/#", |_| vec![Answer::payload(b"ok")]).await;
    assert_eq!(post(&serve.url, "/topics/cmd/w?ResponseTimeout=2", &[USER0], b"again").await.status(), 200);
}

#[tokio::test]
async fn a_broker_restart_while_requests_wait_answers_them_503_never_a_wrong_reply() {
    // GIVEN requests waiting for replies that will not come before the broker stops
    let (mut mosquitto, port) = mosquitto("reply-restart").await;
    let config = replies_config("reply-restart", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let mut commands = subscriber(port, "cmd/#").await;
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let url = serve.url.clone();
            tokio::spawn(async move { post(&url, "/topics/cmd/r?ResponseTimeout=20", &[USER0], b"wait").await })
        })
        .collect();
    for _ in 0..3 {
        next(&mut commands).await;
    }
    // WHEN the broker stops
    let started = std::time::Instant::now();
    mosquitto.0.kill().unwrap();
    // THEN each is answered 503 at once, with the id its command was published under
    for waiter in waiters {
        let response = waiter.await.unwrap();
        assert_eq!(response.status(), 503, "{response:?}");
        assert_eq!(response.headers["x-message-id"].len(), 32);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert!(body["message"].as_str().unwrap().contains("published"), "{body}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "answered when the connection dropped, not at the timeout");
}

/// What waiting for a reply may cost per request, beyond its HTTP connection
/// (measured: 11 to 12 KiB, most of it the request's task, parsed request and
/// publish, which any request in flight costs; the subscription and the waiter
/// are a few hundred bytes).
const WAITER_BUDGET_KIB: u64 = 16;

#[tokio::test]
async fn a_thousand_requests_wait_at_once_and_cost_little_beyond_their_connections() {
    // GIVEN a device that answers once 1 000 commands have arrived, and a user whose hash
    // is cheap (the 19 MiB of an argon2id check would be measured, not the waiters)
    let (_mosquitto, port) = mosquitto_with("reply-1000", "max_queued_messages 0\nmax_inflight_messages 0\n").await;
    let hash = bcrypt::hash("secret1", 4).unwrap();
    let config =
        replies_config("reply-1000", &format!("[[users]]\nusername = \"user1\"\npassword_hash = \"{hash}\"\n"));
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let pid = serve.proc.0.id();
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&arrived);
    device(port, "cmd/#", move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        vec![Answer { delay: Duration::from_millis(1500), ..Answer::payload(b"ok") }]
    })
    .await;
    let user1 = ("authorization", "Basic dXNlcjE6c2VjcmV0MQ==");
    assert_eq!(post(&serve.url, "/topics/cmd/warm?ResponseTimeout=5", &[user1], b"").await.status(), 200);
    // AND what 1 000 idle HTTP connections cost the process (hyper's buffers, the tasks)
    let host = serve.url.trim_start_matches("http://").to_owned();
    let before = rss_kib(pid);
    let mut idle = Vec::new();
    for i in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(&host).await.unwrap());
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connections = rss_kib(pid).saturating_sub(before);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // WHEN 1 000 requests wait at once (connections opened 100 at a time, as the backlog takes them)
    let mut waiters = Vec::new();
    for i in 0..1000 {
        let url = serve.url.clone();
        waiters.push(tokio::spawn(async move {
            post(&url, &format!("/topics/cmd/{i}?ResponseTimeout=30"), &[user1], b"x").await.status()
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for waiter in waiters {
        *statuses.entry(waiter.await.unwrap()).or_insert(0) += 1;
    }
    // THEN every one gets its reply
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 1000)]));
    assert!(arrived.load(std::sync::atomic::Ordering::SeqCst) >= 1001);
    // AND waiting added at most WAITER_BUDGET_KIB a request to what the connections cost
    let peak = peak_rss_kib(pid);
    let waiting = peak.saturating_sub(before + connections);
    eprintln!(
        "serve: {before} KiB before, 1 000 idle connections +{connections} KiB, 1 000 waiting requests peak {peak} KiB: +{waiting} KiB beyond the connections"
    );
    assert!(waiting <= 1000 * WAITER_BUDGET_KIB, "{waiting} KiB for 1 000 waiters beyond their connections");
}

#[tokio::test]
async fn a_reply_over_max_payload_bytes_is_502_with_the_message_id() {
    let (_mosquitto, port) = mosquitto("reply-large").await;
    let config = replies_config("reply-large", "[limits]\nmax_payload_bytes = 1024\n");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    device(port, "cmd/#", |command| {
        vec![Answer::payload(&vec![b'r'; if &command.payload[..] == b"big" { 1025 } else { 1024 }])]
    })
    .await;
    let response = post(&serve.url, "/topics/cmd/a?ResponseTimeout=5", &[USER0], b"big").await;
    assert_eq!(response.status(), 502, "{response:?}");
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "reply_too_large");
    assert!(body["message"].as_str().unwrap().contains("1025"), "{body}");
    assert_eq!(response.headers["x-message-id"].len(), 32);
    let response = post(&serve.url, "/topics/cmd/a?ResponseTimeout=5", &[USER0], b"fits").await;
    assert_eq!((response.status(), response.body.len()), (200, 1024), "a reply of exactly the limit is answered");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_waits_for_the_reply_again_and_publishes_nothing() {
    let (_mosquitto, port) = mosquitto("reply-key").await;
    let config = replies_config("reply-key", "");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap()]).await;
    let mut commands = subscriber(port, "cmd/#").await;
    // The device answers its first command only after 1.5 s, and every later one at once.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    device(port, "cmd/#", move |_| {
        let late = !answered.swap(true, std::sync::atomic::Ordering::SeqCst);
        vec![Answer { delay: Duration::from_millis(if late { 1500 } else { 0 }), ..Answer::payload(b"done") }]
    })
    .await;
    let key = ("idempotency-key", "reboot-7");
    // No client_id: the default response topic names the client id made from the message id,
    // which the retry must take from the first request.
    let first = post(&serve.url, "/topics/cmd/reboot?ResponseTimeout=1", &[USER0, key], b"now").await;
    assert_eq!(first.status(), 504, "{first:?}");
    next(&mut commands).await;
    // The retry is not published again: it waits on the first one's response topic, and the late reply answers it.
    let retry = post(&serve.url, "/topics/cmd/reboot?ResponseTimeout=5", &[USER0, key], b"now").await;
    assert_eq!((retry.status(), &retry.body[..]), (200, &b"done"[..]), "{retry:?}");
    assert_eq!(retry.headers["x-message-id"], first.headers["x-message-id"]);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), commands.recv()).await.is_err(),
        "the retry published nothing"
    );
}
