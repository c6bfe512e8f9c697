//! What waiting for the reply (`ResponseTimeout`) adds to the device's own
//! reply time. Debian's mosquitto on loopback (started here), a device that
//! answers every command at once, and three round trips measured one after
//! another:
//!
//! - **MQTT alone**: a plain MQTT 5 client publishes a command with a response
//!   topic it is already subscribed to, and waits for the reply: the device's
//!   reply time as an MQTT client sees it (two broker hops each way);
//! - **a publish**: the service's request without `ResponseTimeout` (publish, PUBACK);
//! - **a waiting request**: the same request with `ResponseTimeout`: subscribe
//!   (SUBACK), publish (PUBACK), the reply, unsubscribe.
//!
//! mosquitto runs with `set_tcp_nodelay true`, and the MQTT clients here set
//! TCP_NODELAY too: with Nagle's algorithm on either side, a command and its
//! reply (small packets in both directions) wait on delayed ACKs, 40 ms a hop,
//! and every figure below is about 88 ms whoever waits.
//!
//! The service runs in process (no HTTP): the figures are what the wait adds,
//! not the HTTP server's cost, which BENCHMARKS.md's load figures give. Prints
//! medians and 99th percentiles; asserts nothing but that each request was
//! answered as it should.
//!
//!     cargo bench --bench replies
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{HttpRequest, RequestPath};
use mqtt_http_publish::publish::mqtt::{replies_connect, BrokerSettings, MqttPublisher};
use mqtt_http_publish::replies::Replies;
use mqtt_http_publish::service::Service;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming, MqttOptions};
use tokio::sync::mpsc;

const ROUNDS: usize = 2000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Debian's mosquitto on a free loopback port; killed when dropped.
struct Mosquitto(Child, u16);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto, with `set_tcp_nodelay true` when `nodelay` (Debian's default is false).
fn mosquitto(nodelay: bool) -> Mosquitto {
    let port = free_port();
    let conf = std::env::temp_dir().join(format!("mhp-bench-replies-{}-{port}.conf", std::process::id()));
    let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
    if nodelay {
        text.push_str("set_tcp_nodelay true\n");
    }
    std::fs::write(&conf, text).unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (scripts/test installs it)");
    let broker = Mosquitto(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return broker;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("mosquitto did not listen on {port}");
}

/// An MQTT 5 client, connected and subscribed to `filter`; publishes come out of the channel.
async fn client(
    port: u16,
    id: &str,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let (client, eventloop) = AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(drive(eventloop, tx, ready_tx));
    ready_rx.await.unwrap();
    (client, rx)
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<rumqttc::v5::mqttbytes::v5::Publish>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    while let Ok(event) = eventloop.poll().await {
        match event {
            Event::Incoming(Incoming::SubAck(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let _ = tx.send(p);
            }
            _ => {}
        }
    }
}

/// The device: answers each command on its response topic with its correlation data, at once.
async fn device(port: u16) {
    let (client, mut commands) = client(port, &format!("bench-device-{port}"), "cmd/#").await;
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            let props = command.properties.unwrap_or_default();
            let Some(topic) = props.response_topic else { continue };
            let reply = PublishProperties { correlation_data: props.correlation_data, ..Default::default() };
            client.publish_with_properties(topic, QoS::AtLeastOnce, false, "ok", reply).await.unwrap();
        }
    });
}

fn request(query: &str) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic dXNlcjA6c2VjcmV0MA=="));
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/cmd/lamp".into()),
        query: decode_query(query).unwrap(),
        headers,
        body: Bytes::from_static(b"on"),
        source_ip: Some("127.0.0.1".parse().unwrap()),
        client_certificate: None,
    }
}

fn report(what: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!("replies: {what:<44} median {:>7.1} µs, p99 {:>7.1} µs", micros(median), micros(p99));
    median
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(measure(mosquitto(true), ROUNDS, "set_tcp_nodelay true"));
    // Debian's default: Nagle's algorithm on the broker's side. Fewer rounds: each may wait 40 ms.
    runtime.block_on(measure(mosquitto(false), ROUNDS / 20, "Debian's default, Nagle on"));
}

async fn measure(broker: Mosquitto, rounds: usize, label: &str) {
    let port = broker.1;
    {
        device(port).await;

        // MQTT alone: the requester is subscribed to its response topic once.
        let (requester, mut replies) = client(port, &format!("bench-requester-{port}"), "bench/replies").await;
        let mut direct = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let correlation = Bytes::from(i.to_string());
            let props = PublishProperties {
                response_topic: Some("bench/replies".into()),
                correlation_data: Some(correlation.clone()),
                ..Default::default()
            };
            let started = Instant::now();
            requester.publish_with_properties("cmd/direct", QoS::AtLeastOnce, false, "on", props).await.unwrap();
            loop {
                let reply = replies.recv().await.unwrap();
                if reply.properties.and_then(|p| p.correlation_data) == Some(correlation.clone()) {
                    break;
                }
            }
            direct.push(started.elapsed());
        }

        // The service, with the example config (user0 may publish under home/ only): a rule for cmd/.
        let config = format!(
            "{}\n[[rules]]\npriority = 50\neffect = \"allow\"\ntopics = [\"cmd/#\"]\n",
            include_str!("../config/example.toml")
        );
        let settings = BrokerSettings {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            credentials: None,
            client_id: format!("bench-serve-{port}"),
            max_payload_bytes: 1024 * 1024,
            connections: None,
        };
        let replies_connection = Arc::new(Replies::new(replies_connect(&settings)));
        let publisher = MqttPublisher::connect(settings, Duration::from_secs(5)).await;
        let service = Service::new(publisher, Policy::from_toml(&config).unwrap()).with_replies(replies_connection, 60);
        // The first login verifies argon2id once; the cache answers every later request.
        assert_eq!(service.handle(request("client_id=bench")).await.status(), 200);
        assert_eq!(service.handle(request("client_id=bench&ResponseTimeout=5")).await.status(), 200);

        let mut published = Vec::with_capacity(rounds);
        let mut waited = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let answer = service.handle(request("client_id=bench")).await;
            published.push(started.elapsed());
            assert_eq!(answer.status(), 200);
            let started = Instant::now();
            let answer = service.handle(request("client_id=bench&ResponseTimeout=5")).await;
            waited.push(started.elapsed());
            assert_eq!((answer.status().as_u16(), &answer.body()[..]), (200, &b"ok"[..]));
        }
        println!("replies: {rounds} round trips each, one at a time, mosquitto on loopback ({label})");
        let direct = report("MQTT alone: command and reply", direct);
        report("a publish (no ResponseTimeout)", published);
        let waited = report("a waiting request: subscribe, publish, reply", waited);
        println!(
            "replies: the wait adds {:.1} µs (median) to the device's reply time as MQTT sees it",
            micros(waited.saturating_sub(direct))
        );
    }
    drop(broker);
}
