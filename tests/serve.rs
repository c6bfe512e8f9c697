//! `serve` as users run it: the built binary, in front of Debian's mosquitto
//! (started here on a free loopback port) or its embedded broker, with a real
//! MQTT 5 subscriber checking what arrives.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{request, Wire};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");
fn bin() -> String {
    std::env::var("MHP_SERVE_BINARY").unwrap_or_else(|_| BIN.to_owned())
}
const USER0: (&str, &str) = ("authorization", "Basic dXNlcjA6c2VjcmV0MA==");

use common::{free_port, Proc};

async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not listen on {port}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mhp-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's mosquitto on a free loopback port, anonymous, no persistence.
async fn mosquitto(name: &str) -> (Proc, u16) {
    mosquitto_with(name, "").await
}

/// [`mosquitto`] with more lines of mosquitto.conf (a limit it announces in CONNACK).
async fn mosquitto_with(name: &str, conf_lines: &str) -> (Proc, u16) {
    let port = free_port();
    let conf = temp_dir(name).join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{conf_lines}"))
        .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (scripts/test installs it)");
    wait_for_port(port, "mosquitto").await;
    (Proc(child), port)
}

/// `serve` on free ports with `args`; returns once a publish succeeds (the broker is connected).
struct Serve {
    proc: Proc,
    url: String,
    /// The MQTT port subscribers use: the external broker's or the embedded one's.
    mqtt_port: u16,
    /// Where its standard output and error go.
    log: std::path::PathBuf,
}

async fn serve(mqtt_port: Option<u16>, args: &[&str]) -> Serve {
    serve_with_env(mqtt_port, args, &[]).await
}

/// As [`serve`], with `env` added to its environment.
async fn serve_with_env(mqtt_port: Option<u16>, args: &[&str], env: &[(&str, &str)]) -> Serve {
    let http = free_port();
    let embedded = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut command = Command::new(bin());
    command.args(["serve", "--listen", &listen]).args(args).envs(env.iter().copied());
    let broker_port = match mqtt_port {
        Some(port) => {
            command.args(["--mqtt", &format!("mqtt://127.0.0.1:{port}")]);
            port
        }
        None => {
            command.args(["--broker-listen", &format!("127.0.0.1:{embedded}")]);
            embedded
        }
    };
    let (stdout, stderr, log) = common::child_logs_at("serve");
    let child = command.stdout(stdout).stderr(stderr).spawn().unwrap();
    let serve = Serve { proc: Proc(child), url: format!("http://{listen}"), mqtt_port: broker_port, log };
    wait_for_port(http, "serve").await;
    for _ in 0..200 {
        if post(&serve.url, "/topics/ready", &[USER0], b"").await.status() == 200 {
            return serve;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("serve never connected to its broker");
}

async fn post(url: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
    request(url, "POST", path, headers, body).await
}

/// A real MQTT 5 subscriber on `filter`; returns once the broker acknowledged the subscription.
async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
    subscribe(port, filter, false).await
}

/// A subscriber whose session outlives its connection (and the broker's restart, with persistence on).
async fn persistent_subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
    subscribe(port, filter, true).await
}

async fn subscribe(port: u16, filter: &str, durable: bool) -> mpsc::UnboundedReceiver<Publish> {
    let mut options = MqttOptions::new(format!("sub-{}", free_port()), "127.0.0.1", port);
    if durable {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(600));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    subscribed_client(options, filter, move |message, _| tx.send(message).is_ok()).await;
    rx
}

/// A real MQTT 5 client with `options`, subscribed to `filter`, handing each
/// message it receives to `on_message` with the client, until that says
/// `false`. Returns once the broker acknowledged the subscription.
async fn subscribed_client(
    mut options: MqttOptions,
    filter: &str,
    mut on_message: impl FnMut(Publish, &AsyncClient) -> bool + Send + 'static,
) {
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(message))) => {
                    if !on_message(message, &client) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), ready_rx).await.expect("SUBACK").unwrap();
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a message at the subscriber").unwrap()
}

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

/// Sends `bytes` on a fresh connection and reads until the server closes it (at most 10 s).
async fn raw(url: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The last answer in `wire`: its status and its JSON error code (the body must be that JSON).
fn last_json_error(wire: &str) -> (u16, String) {
    let mut rest = wire;
    let (mut head, mut body) = ("", "");
    while !rest.is_empty() {
        let (h, after) = rest.split_once("\r\n\r\n").unwrap_or_else(|| panic!("a complete head: {rest:?}"));
        let length: usize = h
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .expect("every answer has a content-length");
        (head, body, rest) = (h, &after[..length], &after[length..]);
    }
    let status = head[9..12].parse().unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    (status, json["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_json_declared_or_chunked() {
    let serve = serve(None, &[]).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    let response = post(&serve.url, "/topics/big", &[USER0], &big).await;
    assert_eq!(response.status(), 413);
    // A 10 MB declared length is answered at once, from the header alone.
    let host = serve.url.trim_start_matches("http://").to_owned();
    let head = |framing: &str| {
        format!("POST /topics/big HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\n{framing}\r\n\r\n", USER0.1)
    };
    let answer = raw(&serve.url, head("content-length: 10485760").as_bytes()).await;
    assert_eq!(last_json_error(&answer), (413, "payload_too_large".into()), "{answer}");
    // Chunked, the body is cut at the limit: under a 1000-byte limit, the third 400-byte chunk passes it.
    let dir = temp_dir("chunked");
    let config = write_config(&dir, "[limits]\nmax_payload_bytes = 1000\n");
    let small = serve_with_config(&config).await;
    let host = small.url.trim_start_matches("http://").to_owned();
    let mut chunked =
        format!("POST /topics/home HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", 400).as_bytes());
        chunked.extend_from_slice(&[b'y'; 400]);
        chunked.extend_from_slice(b"\r\n");
    }
    let answer = raw(&small.url, &chunked).await;
    assert_eq!(last_json_error(&answer), (413, "payload_too_large".into()), "{answer}");
    // Within the limit, the same chunked framing publishes.
    let mut fits = format!(
        "POST /topics/home HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n",
        USER0.1
    )
    .into_bytes();
    fits.extend_from_slice(b"190\r\n");
    fits.extend_from_slice(&[b'y'; 400]);
    fits.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw(&small.url, &fits).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

async fn serve_with_config(config: &std::path::Path) -> Serve {
    serve(None, &["--config", config.to_str().unwrap()]).await
}

#[tokio::test]
async fn the_embedded_broker_s_payload_limit_is_413_and_does_not_drop_the_shared_connection() {
    // GIVEN a config that allows 4 MiB, more than the embedded broker's 1 MiB.
    let dir = temp_dir("embedded-limit");
    let config = write_config(&dir, "[limits]\nmax_payload_bytes = 4194304\n");
    let serve = serve_with_config(&config).await;
    let mib = 1024 * 1024;
    // A full 1 MiB payload with a long topic and properties is taken (the broker sent PUBACK).
    let long_topic =
        format!("/topics/home/{}?UserProp.1.Key=k&UserProp.1.Value={}", "t".repeat(4000), "v".repeat(4000));
    assert_eq!(post(&serve.url, &long_topic, &[USER0], &vec![b'x'; mib]).await.status(), 200);
    // One byte more is 413, answered here rather than by the broker dropping the connection...
    let head = format!(
        "POST /topics/home HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: {}\r\n\r\n",
        USER0.1,
        mib + 1
    );
    let over = raw(&serve.url, head.as_bytes()).await;
    assert_eq!(last_json_error(&over), (413, "payload_too_large".into()), "{over}");
    // ...so the next caller is served at once, not 503 while serve reconnects.
    assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"next").await.status(), 200);
}

#[tokio::test]
async fn oversized_headers_are_431_with_json() {
    let serve = serve(None, &[]).await;
    let huge = "x".repeat(20 * 1024);
    let response = post(&serve.url, "/topics/a", &[USER0, ("x-padding", &huge)], b"").await;
    assert_eq!(response.status(), 431);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(json["error"], "headers_too_large");
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(response.headers["content-length"], response.body.len().to_string());
    // Too many headers (hyper reads at most 100) is the same answer.
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(&serve.url, format!("POST /topics/a HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(last_json_error(&answer), (431, "headers_too_large".into()), "{answer}");
}

#[tokio::test]
async fn malformed_http_is_400_with_json_even_after_a_good_request_on_the_connection() {
    let serve = serve(None, &[]).await;
    for garbage in ["GARBAGE\r\n\r\n", "POST /topics/a HTTP/9.9\r\n\r\n", "POST /topics/a HTTP/1.1\r\nno colon\r\n\r\n"]
    {
        let answer = raw(&serve.url, garbage.as_bytes()).await;
        assert_eq!(last_json_error(&answer), (400, "malformed_request".into()), "{garbage:?}: {answer}");
    }
    // Keep-alive: the first request is answered by the service, the second by the parser.
    let answer = raw(
        &serve.url,
        format!(
            "POST /topics/a HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: 2\r\n\r\nhi\
             POST /topics/a HTTP/1.1\r\nbad header\r\n\r\n",
            USER0.1
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert_eq!(last_json_error(&answer), (400, "malformed_request".into()), "{answer}");
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_cut_off_at_the_header_read_timeout() {
    let serve = serve(None, &["--header-read-timeout", "1"]).await;
    let started = std::time::Instant::now();
    let answer = raw(&serve.url, b"POST /topics/a HTTP/1.1\r\nhost: x\r\nx-half-a-hea").await;
    let elapsed = started.elapsed();
    assert_eq!(answer, "", "closed without an answer");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    // A client that keeps to the timeout is served as usual.
    assert_eq!(post(&serve.url, "/topics/a", &[USER0], b"").await.status(), 200);
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "{}\n[[rules]]\npriority = 1\neffect = \"allow\"\ntopics = [\"ready\", \"home/#\"]\n{extra}",
        include_str!("../config/example.toml").split("[[rules]]").next().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after() {
    let dir = temp_dir("quota");
    let config = write_config(&dir, "[limits]\nuser_messages_per_second = 0.2\nuser_burst = 3\n");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    // The readiness publish took one token; two more fit in the burst.
    for _ in 0..2 {
        assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"").await.status(), 200);
    }
    let response = post(&serve.url, "/topics/home", &[USER0], b"").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers["retry-after"], "5");
}

#[tokio::test]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let dir = temp_dir("reload");
    let config = write_config(&dir, "");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    let pid = serve.proc.0.id().to_string();
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 401);

    write_config(&dir, "[[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"office\"]\n");
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if post(&serve.url, "/topics/office", &[USER0], b"").await.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "SIGHUP did not load the new rule");

    std::fs::write(&config, "this is not toml [").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 200, "the old config stays");
}

#[tokio::test]
async fn sigterm_stops_accepting_and_exits_0() {
    let mut serve = serve(None, &[]).await;
    Command::new("kill").args(["-TERM", &serve.proc.0.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || serve.proc.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn the_product_page_examples_work_over_tls_with_and_without_a_client_certificate() {
    let dir = temp_dir("tls");
    let certs = dir.join("certs");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-certs"))
        .args([certs.to_str().unwrap(), "curl001"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let http = free_port();
    let embedded = free_port();
    let (stdout, stderr) = common::child_logs("serve-tls");
    let _proc = Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--broker-listen",
                &format!("127.0.0.1:{embedded}"),
            ])
            .args(["--tls-cert", &c("server.crt"), "--tls-key", &c("server.key"), "--client-ca", &c("CA.crt")])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_port(http, "serve").await;
    let base = format!("https://localhost:{http}");
    let data = r#"{ "message": "Hello, world" }"#;
    let example_2 = |base: &str| {
        curl(&[
            "-k",
            "-X",
            "POST",
            "-H",
            "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
            "--data",
            data,
            &format!("{base}/topics/home?qos=1&client_id=curl-x&retained=true&username=sample-user"),
        ])
    };
    let mut status = 0;
    for _ in 0..100 {
        status = example_2(&base).0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "example 2: Basic over TLS, no client certificate");
    let (status, _) = curl(&[
        "--tlsv1.2",
        "--cacert",
        &c("CA.crt"),
        "--cert",
        &c("client.chain.crt"),
        "--key",
        &c("client.pkcs8.key"),
        "-X",
        "POST",
        "--data",
        data,
        &format!("{base}/topics/home?qos=1"),
    ]);
    assert_eq!(status, 200, "example 3: the client certificate alone");
    let (status, body) = curl(&[
        "--cacert",
        &c("CA.crt"),
        "--cert",
        &c("client.chain.crt"),
        "--key",
        &c("client.pkcs8.key"),
        "-X",
        "POST",
        "--data",
        data,
        &format!("{base}/topics/home?client_id=other"),
    ]);
    assert_eq!((status, body.contains("client_id_mismatch")), (401, true), "{body}");
}

#[tokio::test]
async fn with_the_broker_stopped_mid_load_every_answer_is_200_or_503_and_every_200_arrives() {
    let port = free_port();
    let dir = temp_dir("midload");
    // mosquitto started as root drops to its own user, which must be able to write its database here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let conf = dir.join("mosquitto.conf");
    // No queue limit: with mosquitto's default (1000 per client) the subscriber, offline while
    // the broker restarts, could lose acknowledged messages at the broker, and this test would
    // blame serve for them.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             persistence true\npersistence_location {}/\n",
            dir.display()
        ),
    )
    .unwrap();
    let start_broker = || async {
        let child = Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "mosquitto").await;
        child
    };
    let mut broker = start_broker().await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = persistent_subscriber(port, "load/#").await;

    let started = tokio::time::Instant::now();
    let load = Duration::from_millis(4000);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let url = serve.url.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while started.elapsed() < load {
                    let payload = format!("m-{worker}-{i}");
                    let at = started.elapsed();
                    let status =
                        post(&url, &format!("/topics/load/{worker}"), &[USER0], payload.as_bytes()).await.status();
                    answers.push((payload, status, at));
                    i += 1;
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A clean stop: mosquitto saves its sessions, the subscriber's queue included.
    Command::new("kill").args(["-TERM", &broker.id().to_string()]).status().unwrap();
    broker.wait().unwrap();
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _broker = Proc(start_broker().await);
    let restarted_at = started.elapsed();

    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let odd: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200 && *s != 503).collect();
    assert!(odd.is_empty(), "only 200 or 503 while the broker comes and goes: {odd:?}");
    let ok: std::collections::BTreeSet<&str> =
        answers.iter().filter(|(_, s, _)| *s == 200).map(|(p, _, _)| p.as_str()).collect();
    assert!(answers.iter().any(|(_, s, at)| *s == 503 && *at >= stopped_at), "the outage was seen");
    assert!(
        answers.iter().any(|(_, s, at)| *s == 200 && *at > restarted_at),
        "service resumed after the broker returned"
    );

    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok.iter().all(|p| seen.contains(*p)) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            seen.insert(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    let missing: Vec<_> = ok.iter().filter(|p| !seen.contains(**p)).collect();
    // A 503'd message may have arrived too (its PUBACK lost with the connection): a 5xx
    // promises nothing either way. What was never sent cannot arrive.
    let sent: std::collections::BTreeSet<&str> = answers.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(seen.iter().all(|p| sent.contains(p.as_str())), "the subscriber saw messages nobody sent");
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never arrived: {:?}",
        missing.len(),
        ok.len(),
        &missing[..missing.len().min(10)]
    );
}

/// mosquitto with TLS (the demo server certificate), a password file and an ACL
/// that lets serve's connection write only under `allowed/`.
async fn strict_mosquitto(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let certs = dir.join("certs");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-certs"))
        .arg(certs.to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let passwd = dir.join("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c", passwd.to_str().unwrap(), "svc", "svc-pw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user svc\ntopic write allowed/#\n").unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for file in [&passwd, &acl] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    for file in ["server.key", "server.crt", "CA.crt"] {
        std::fs::set_permissions(certs.join(file), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let conf = dir.join("mosquitto.conf");
    let c = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             cafile {}\ncertfile {}\nkeyfile {}\npersistence false\n",
            passwd.display(),
            acl.display(),
            c("CA.crt"),
            c("server.crt"),
            c("server.key")
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "mosquitto").await;
    (Proc(child), port)
}

#[tokio::test]
async fn over_mqtts_with_credentials_a_broker_refusal_maps_from_its_puback_reason_code() {
    let dir = temp_dir("strict");
    let (_broker, port) = strict_mosquitto(&dir).await;
    let ca = dir.join("certs/CA.crt");
    let http = free_port();
    let (stdout, stderr) = common::child_logs("serve-mqtts");
    let _serve = Proc(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{http}")])
            .args(["--mqtt", &format!("mqtts://127.0.0.1:{port}"), "--mqtt-ca", ca.to_str().unwrap()])
            .args(["--mqtt-username", "svc"])
            .env("MQTT_PASSWORD", "svc-pw")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_port(http, "serve").await;
    let url = format!("http://127.0.0.1:{http}");
    let mut status = 0;
    for _ in 0..200 {
        status = post(&url, "/topics/allowed/x", &[USER0], b"ok").await.status();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "TLS to the broker with its CA, and the broker credentials, work");
    let refused = post(&url, "/topics/forbidden/x", &[USER0], b"no").await;
    assert_eq!(refused.status(), 500, "PUBACK 0x87 (not authorized) is our connection's fault: {refused:?}");
    assert!(!String::from_utf8_lossy(&refused.body).contains("0x87"), "no internals in the body");
}

/// The `N` of "the payload exceeds the limit of N bytes".
fn limit_in(message: &str) -> usize {
    let after = message.split("limit of ").nth(1).unwrap_or_else(|| panic!("no limit in {message:?}"));
    after.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_broker_s_maximum_packet_size_is_413_before_sending_and_the_others_are_served() {
    // GIVEN mosquitto announcing a Maximum Packet Size of 2000 bytes in its CONNACK
    let (_broker, port) = mosquitto_with("max-packet", "max_packet_size 2000\n").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    // WHEN one client sends 5000 bytes while others send small messages
    let big = post(&serve.url, "/topics/home/big", &[USER0], &[b'x'; 5000]);
    let small = post(&serve.url, "/topics/home/small", &[USER0], b"alongside");
    let (big, small) = tokio::join!(big, small);
    // THEN the big one is 413 with JSON naming the exact payload that would fit, and nothing is sent
    assert_eq!(big.status(), 413, "{big:?}");
    let body: serde_json::Value = serde_json::from_slice(&big.body).unwrap();
    assert_eq!(body["error"], "payload_too_large");
    let fits = limit_in(body["message"].as_str().unwrap());
    assert!((1900..2000).contains(&fits), "{body}");
    // AND everyone else is served, on a connection the broker never dropped
    assert_eq!(small.status(), 200);
    for i in 0..5 {
        assert_eq!(
            post(&serve.url, "/topics/home/small", &[USER0], format!("after {i}").as_bytes()).await.status(),
            200
        );
    }
    let arrived: Vec<_> = next_n(&mut rx, 6).await;
    assert!(arrived.iter().all(|p| &p.topic[..] == b"home/small"), "the big one never reached the broker");
    // AND the limit is exact: the largest payload fits, one byte more does not
    assert_eq!(post(&serve.url, "/topics/home/big", &[USER0], &vec![b'x'; fits]).await.status(), 200);
    assert_eq!(next(&mut rx).await.payload.len(), fits);
    assert_eq!(post(&serve.url, "/topics/home/big", &[USER0], &vec![b'x'; fits + 1]).await.status(), 413);
    // AND what counts is the whole packet: a long topic leaves less room for the payload
    let long_topic = format!("home/{}", "t".repeat(1000));
    let long = format!("/topics/{long_topic}");
    let response = post(&serve.url, &long, &[USER0], &vec![b'x'; fits]).await;
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(limit_in(body["message"].as_str().unwrap()), fits - (long_topic.len() - "home/big".len()));
}

async fn next_n(rx: &mut mpsc::UnboundedReceiver<Publish>, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next(rx).await);
    }
    got
}

#[tokio::test]
async fn the_broker_s_maximum_qos_0_refuses_qos_1_and_makes_0_the_default() {
    let (_broker, port) = mosquitto_with("max-qos", "max_qos 0\n").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let response = post(&serve.url, "/topics/home/a?qos=1", &[USER0], b"one").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "invalid_qos");
    assert!(body["message"].as_str().unwrap().contains("Maximum QoS"), "{body}");
    // Without qos, the default is the most the broker takes.
    assert_eq!(post(&serve.url, "/topics/home/a", &[USER0], b"zero").await.status(), 200);
    let p = next(&mut rx).await;
    assert_eq!((&p.payload[..], p.qos), (&b"zero"[..], QoS::AtMostOnce));
}

#[tokio::test]
async fn a_broker_without_retain_refuses_a_retained_publish_with_400_and_keeps_the_connection() {
    let (_broker, port) = mosquitto_with("no-retain", "retain_available false\n").await;
    let serve = serve(Some(port), &[]).await;
    let response = post(&serve.url, "/topics/home/a?retained=true", &[USER0], b"kept?").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "retain_not_supported");
    for _ in 0..3 {
        assert_eq!(post(&serve.url, "/topics/home/a", &[USER0], b"plain").await.status(), 200);
    }
}

/// Clients mosquitto counts as connected, from its `$SYS` tree (published every second
/// here, when it changes): the first count that is `expected`, else the last within 5 s.
async fn clients_connected(port: u16, expected: u64) -> u64 {
    sys_count(port, "$SYS/broker/clients/connected", expected).await
}

/// Waits (up to 5 s) until the count mosquitto publishes on the `$SYS` topic `topic`
/// (every `sys_interval`) is `expected`; returns the last count read.
async fn sys_count(port: u16, topic: &str, expected: u64) -> u64 {
    let mut rx = subscriber(port, topic).await;
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        count = String::from_utf8_lossy(&p.payload).parse().unwrap();
        if count == expected {
            break;
        }
    }
    count
}

#[tokio::test]
async fn the_pool_is_sized_from_the_receive_maximum_and_keeps_within_it_on_one_topic() {
    // GIVEN mosquitto letting each connection have 5 publishes awaiting PUBACK
    let (_broker, port) = mosquitto_with("receive-max", "max_inflight_messages 5\nsys_interval 1\n").await;
    let serve = serve(Some(port), &[]).await;
    // THEN the pool has enough connections for 64 publishes per core in flight
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let expected = mqtt_http_publish::publish::mqtt::pool_size(5, cores) as u64;
    assert!(expected > 1);
    assert_eq!(clients_connected(port, expected + 1).await, expected + 1, "the pool and the $SYS subscriber");
    // AND 100 concurrent publishes to one topic (one connection) stay within its 5:
    // exceeding them, mosquitto would drop the connection and answers would be 503
    let mut rx = subscriber(port, "home/one").await;
    let requests = (0..100).map(|i| {
        let url = serve.url.clone();
        tokio::spawn(async move { post(&url, "/topics/home/one", &[USER0], format!("{i}").as_bytes()).await.status() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(next_n(&mut rx, 100).await.len(), 100);
}

#[tokio::test]
async fn each_topic_keeps_its_order_across_a_pool_of_connections() {
    // GIVEN a pool of 8 connections and 16 topics, each published to by one client in
    // sequence at QoS 0 (a 200 once written, so nothing but the connection orders them)
    let (_broker, port) = mosquitto("order").await;
    let serve = serve(Some(port), &["--mqtt-connections", "8"]).await;
    let mut rx = subscriber(port, "order/#").await;
    const TOPICS: usize = 16;
    const EACH: usize = 150;
    let clients = (0..TOPICS).map(|t| {
        let url = serve.url.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let path = format!("/topics/order/{t}?qos=0");
                assert_eq!(post(&url, &path, &[USER0], i.to_string().as_bytes()).await.status(), 200);
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    // THEN every topic's messages arrive in the order they were sent
    let mut last = vec![None::<usize>; TOPICS];
    for p in next_n(&mut rx, TOPICS * EACH).await {
        let topic: usize = std::str::from_utf8(&p.topic[6..]).unwrap().parse().unwrap();
        let n: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        assert_eq!(n, last[topic].map_or(0, |l| l + 1), "order/{topic}: {n} after {:?}", last[topic]);
        last[topic] = Some(n);
    }
}

async fn get(url: &str, path: &str) -> Wire {
    request(url, "GET", path, &[], b"").await
}

/// The value of the sample `name` (with its labels) in `/metrics`, 0 if absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_that_move_health_and_readiness() {
    let (broker, port) = mosquitto("admin").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = temp_dir("admin");
    let config = write_config(&dir, "[limits]\npassword_checks_per_second = 0.01\npassword_check_burst = 3\n");
    let serve = serve(Some(port), &["--admin-listen", &admin, "--config", config.to_str().unwrap()]).await;
    let admin = format!("http://{admin}");
    assert_eq!(get(&admin, "/healthz").await.status(), 200);
    assert_eq!(get(&admin, "/readyz").await.status(), 200);
    let not_found = get(&admin, "/topics/x").await;
    assert_eq!(not_found.status(), 404);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&not_found.body).unwrap()["error"], "not_found");

    let before = get(&admin, "/metrics").await;
    assert_eq!(before.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let before = String::from_utf8(before.body).unwrap();
    let ok = r#"mqtt_http_publish_requests_total{status="200",code="ok"}"#;
    let wrong = r#"mqtt_http_publish_requests_total{status="401",code="authentication_failed"}"#;
    let refused = r#"mqtt_http_publish_requests_total{status="429",code="too_many_login_attempts"}"#;
    let hits = "mqtt_http_publish_credential_cache_hits_total";
    let hashes = "mqtt_http_publish_password_hashes_total";
    // WHEN three requests publish, and one source sends four wrong passwords
    for _ in 0..3 {
        assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"m").await.status(), 200);
    }
    let bad = ("authorization", "Basic dXNlcjA6d3Jvbmc=");
    let answers: Vec<u16> = statuses_in_turn(&serve.url, bad, 4).await;
    // THEN the source's budget of three checks (one spent on the readiness probe's
    // first login) passes two to the hash and refuses the rest before it
    assert_eq!(answers, [401, 401, 429, 429]);
    // AND answers given before the service are counted too: malformed HTTP, a body over the limit
    assert_eq!(last_json_error(&raw(&serve.url, b"GARBAGE\r\n\r\n").await).0, 400);
    let head = b"POST /topics/home HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n";
    assert_eq!(last_json_error(&raw(&serve.url, head).await).0, 413);
    let malformed = r#"mqtt_http_publish_requests_total{status="400",code="malformed_request"}"#;
    let too_large = r#"mqtt_http_publish_requests_total{status="413",code="payload_too_large"}"#;
    let after = String::from_utf8(get(&admin, "/metrics").await.body).unwrap();
    assert_eq!(sample(&after, malformed) - sample(&before, malformed), 1.0, "{after}");
    assert_eq!(sample(&after, too_large) - sample(&before, too_large), 1.0, "{after}");
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    assert_eq!(sample(&after, wrong) - sample(&before, wrong), 2.0);
    assert_eq!(sample(&after, refused) - sample(&before, refused), 2.0);
    assert_eq!(sample(&after, hits) - sample(&before, hits), 3.0, "user0 was verified by the readiness probe");
    assert_eq!(sample(&after, hashes) - sample(&before, hashes), 2.0, "no hash for the refused");
    assert_eq!(sample(&after, r#"mqtt_http_publish_refusals_total{kind="password_checks"}"#), 2.0);
    assert!(sample(&after, "mqtt_http_publish_publish_duration_seconds_count") >= 3.0, "{after}");
    assert_eq!(sample(&after, "mqtt_http_publish_publishes_in_flight"), 0.0);
    let pool = sample(&after, "mqtt_http_publish_broker_connections");
    assert!(pool >= 1.0);
    assert_eq!(sample(&after, "mqtt_http_publish_broker_connections_up"), pool);
    // No label carries a topic or a user.
    assert!(!after.contains("home") && !after.contains("user0"), "{after}");

    // WHEN the broker goes away, THEN readiness says so (and liveness does not change)
    drop(broker);
    let mut ready = 200;
    for _ in 0..100 {
        ready = get(&admin, "/readyz").await.status();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503);
    assert_eq!(get(&admin, "/healthz").await.status(), 200);
    let down = String::from_utf8(get(&admin, "/metrics").await.body).unwrap();
    assert_eq!(sample(&down, "mqtt_http_publish_broker_connections_up"), 0.0, "{down}");
}

/// The statuses of `n` requests with `authorization`, one after another.
async fn statuses_in_turn(url: &str, authorization: (&str, &str), n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(post(url, "/topics/home", &[authorization], b"m").await.status());
    }
    statuses
}

/// VmHWM of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_flood_of_password_checks_does_not_grow_the_process_beyond_the_hashes_running() {
    // GIVEN a budget large enough that 96 wrong passwords (argon2id, 19 MiB each) are all hashed
    let dir = temp_dir("hash-memory");
    let config = write_config(&dir, "[limits]\npassword_checks_per_second = 1000\npassword_check_burst = 1000\n");
    let serve = serve_with_config(&config).await;
    // Its steady state: code pages and the heap after the first login's hash was freed.
    let steady = rss_kib(serve.proc.0.id());
    let flood = (0..32).map(|c| {
        let url = serve.url.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                let auth = format!("Basic {}", base64_of(&format!("user0:wrong-{c}-{i}")));
                assert_eq!(post(&url, "/topics/home", &[("authorization", &auth)], b"").await.status(), 401);
            }
        })
    });
    for client in flood.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    // THEN the process peaked at the hashes running at once (one per core) and its steady state,
    // not at a 19 MiB buffer kept by each thread that ever ran one
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let peak = peak_rss_kib(serve.proc.0.id());
    assert!(
        peak < steady + cores * 20 * 1024 + 4 * 1024,
        "VmHWM {peak} KiB after 96 argon2id checks, from {steady} KiB steady"
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn a_taken_broker_port_says_how_to_use_the_broker_already_there() {
    let (_broker, port) = mosquitto("taken").await;
    let output = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--broker-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(stderr.contains("--mqtt mqtt://127.0.0.1:1883") && stderr.contains("--broker-listen"), "{stderr}");
}

/// Writes `config` into `table` on moto, whole.
async fn push_to_table(moto: &str, table: &str, config: &std::path::Path) {
    use mqtt_http_publish::config::table::{config_items, TableStore};
    let text = std::fs::read_to_string(config).unwrap();
    let items = config_items(&mqtt_http_publish::config::parse_toml(&text).unwrap());
    let store = TableStore::new(&common::sdk_config_for(moto).await, table);
    store.write(items.into_values().collect(), Vec::new()).await.unwrap();
}

#[tokio::test]
async fn with_config_table_serve_authorizes_from_the_table_and_sees_its_changes_after_the_ttl() {
    // GIVEN a config table on moto where user0 may publish under home/, and mosquitto
    let moto = common::moto_url();
    let table = format!("{}-serve", common::unique_app_name("serve-table"));
    common::create_config_table(&moto, &table).await;
    let dir = temp_dir("table");
    push_to_table(&moto, &table, &write_config(&dir, "")).await;
    let (_broker, port) = mosquitto("table").await;

    // WHEN serve reads that table, DynamoDB's endpoint and the TTL from the usual variables
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", moto.as_str()), ("CONFIG_CACHE_TTL_SECONDS", "1")];
    let serve = serve_with_env(Some(port), &["--config-table", &table], &env).await;
    let mut rx = subscriber(serve.mqtt_port, "home/#").await;

    // THEN the table's user publishes, and the message arrives
    let response = post(&serve.url, "/topics/home/hall", &[USER0], b"from the table").await;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(&next(&mut rx).await.payload[..], b"from the table");
    // a wrong password, and a topic outside the table's rules, are 401
    let wrong = ("authorization", "Basic dXNlcjA6d3Jvbmc=");
    assert_eq!(post(&serve.url, "/topics/home/hall", &[wrong], b"no").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 401);

    // and a rule added to the table (by another instance's operator) is in force after the TTL;
    // a SIGHUP meanwhile changes nothing and stops nothing
    push_to_table(
        &moto,
        &table,
        &write_config(&dir, "[[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"office\"]\n"),
    )
    .await;
    Command::new("kill").args(["-HUP", &serve.proc.0.id().to_string()]).status().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post(&serve.url, "/topics/office", &[USER0], b"").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the table's new rule was never used");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn config_and_config_table_exclude_each_other_and_an_empty_config_table_is_none() {
    let dir = temp_dir("exclusive");
    let config = write_config(&dir, "");
    let config = config.to_str().unwrap();
    // Both, given as options or one of them from the environment: refused, saying why, before listening.
    for (args, env) in [(&["--config", config, "--config-table", "t"][..], ""), (&["--config", config][..], "t")] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--broker-listen", &format!("127.0.0.1:{}", free_port())])
            .args(args)
            .env("CONFIG_TABLE", env)
            .output()
            .unwrap();
        common::keep_log("serve-config-conflict", &out.stderr);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("--config and --config-table (or CONFIG_TABLE) exclude each other"), "{stderr}");
    }
    // An empty CONFIG_TABLE is no table, as on Lambda: the file is served.
    let serve = serve_with_env(None, &["--config", config], &[("CONFIG_TABLE", "")]).await;
    assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"").await.status(), 200);
}

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
const BOTO3_PUBLISH: &[u8] = include_bytes!("fixtures/boto3-iot-data-publish.http");

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

#[tokio::test]
async fn a_post_from_a_page_on_another_origin_is_403_before_its_credentials_are_read() {
    let (_broker, port) = mosquitto("cross-origin").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let own = serve.url.clone();
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[USER0, ("origin", "https://evil.example")], 403),
        (&[USER0, ("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")], 403),
        (&[("origin", "null"), ("authorization", "Basic c3RyYW5nZXI6cHctb2YtYS1zdHJhbmdlcg==")], 403),
        (&[USER0], 200),
        (&[USER0, ("origin", &own)], 200),
        (&[USER0, ("origin", "http://localhost:1"), ("sec-fetch-site", "same-origin")], 200),
    ];
    for (headers, status) in cases {
        let answer = post(&serve.url, "/topics/home/csrf", headers, b"x").await;
        assert_eq!(answer.status(), status, "{headers:?}: {answer:?}");
        if status == 403 {
            assert!(String::from_utf8_lossy(&answer.body).contains("\"error\":\"origin_not_allowed\""), "{answer:?}");
            assert!(!answer.headers.contains_key("access-control-allow-origin"));
            assert!(!answer.headers.contains_key("www-authenticate"), "no credentials were asked for");
        }
    }
    assert_eq!(drain(&mut rx, Duration::from_millis(500)).await.len(), 3, "the three 200s, nothing else");
}

/// Debian's Chromium, headless, driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages ended by NUL, the browser reading
/// fd 3 and writing fd 4), so no port and no download are involved.
struct Chromium {
    _proc: Proc,
    to_browser: std::fs::File,
    from_browser: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    _profile: std::path::PathBuf,
}

impl Chromium {
    fn launch(name: &str) -> Chromium {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let ((browser_reads, we_write), (we_read, browser_writes)) = (pipe(), pipe());
        let profile = temp_dir(&format!("chromium-{name}"));
        let (stdout, stderr) = common::child_logs("chromium");
        let (r, w) = (browser_reads.into_raw_fd(), browser_writes.into_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run"])
            .args(["--no-default-browser-check", "--disable-extensions", "--disable-background-networking"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: dup2 and close are async-signal-safe; fds 3 and 4 are the protocol's.
        unsafe {
            command.pre_exec(move || {
                let (high_r, high_w) = (libc::dup(r), libc::dup(w));
                if high_r < 0 || high_w < 0 || libc::dup2(high_r, 3) < 0 || libc::dup2(high_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium (scripts/test installs it)");
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        let (tx, from_browser) = std::sync::mpsc::channel();
        let reader = std::fs::File::from(we_read);
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        Chromium { _proc: Proc(child), to_browser: we_write.into(), from_browser, next_id: 0, _profile: profile }
    }

    /// Sends one command (to a page's `session`, or to the browser) and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value, session: Option<&str>) -> serde_json::Value {
        use std::io::Write;
        self.next_id += 1;
        let mut message = serde_json::json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        loop {
            let answer = self.from_browser.recv_timeout(Duration::from_secs(20)).expect("chromium answers");
            if answer["id"] == self.next_id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab and returns the tab's session once the page has loaded.
    fn open(&mut self, url: &str) -> String {
        let target = self.call("Target.createTarget", serde_json::json!({ "url": url }), None)["targetId"].clone();
        let attached =
            self.call("Target.attachToTarget", serde_json::json!({ "targetId": target, "flatten": true }), None);
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        // Up to 15 s: a browser's first start on a fresh machine builds its profile.
        for _ in 0..600 {
            let state = self.evaluate(&session, "location.href + ' ' + document.readyState");
            if state == format!("{url} complete") {
                return session;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{url} did not load");
    }

    /// The value of a JavaScript expression in the page (awaited if a promise).
    fn evaluate(&mut self, session: &str, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params, Some(session));
        assert!(result["exceptionDetails"].is_null(), "{expression}: {result}");
        result["result"]["value"].clone()
    }
}

/// Fills in the try-it page as a person would, sends, and returns what the page shows.
const TRY_IT: &str = r#"(async () => {
    const set = (id, value) => { document.getElementById(id).value = value; };
    set("topic", "home/browser"); set("props", "from=chromium"); set("body", "hello from a page");
    set("username", "user0"); set("password", PASSWORD);
    document.getElementById("send").click();
    while (!["done", "failed"].includes(document.body.dataset.state)) await new Promise(r => setTimeout(r, 20));
    const text = id => document.getElementById(id).textContent;
    return { state: document.body.dataset.state, status: text("status"), id: text("message-id"), answer: text("answer") };
})()"#;

#[tokio::test]
async fn a_page_from_an_allowed_origin_publishes_from_a_real_browser_and_another_origin_is_blocked() {
    let (_broker, port) = mosquitto("browser").await;
    let admin = free_port();
    let dir = temp_dir("browser");
    let page = format!("http://127.0.0.1:{admin}");
    let config = write_config(&dir, &format!("[cors]\nallowed_origins = [\"{page}\"]\n"));
    let admin_listen = format!("127.0.0.1:{admin}");
    let serve = serve(Some(port), &["--admin-listen", &admin_listen, "--config", config.to_str().unwrap()]).await;
    let mut rx = subscriber(port, "home/#").await;

    let api = serve.url.clone();
    let shown = tokio::task::spawn_blocking(move || {
        let mut chromium = Chromium::launch("cors");
        let mut shows = Vec::new();
        for (url, password) in [
            (format!("{page}/"), "secret0"),
            (format!("{page}/"), "wrong"),
            (format!("http://localhost:{admin}/"), "secret0"),
        ] {
            let session = chromium.open(&url);
            shows.push(chromium.evaluate(&session, &TRY_IT.replace("PASSWORD", &format!("{password:?}"))));
        }
        // The other origin's page again, with a request the browser sends without a
        // preflight (a form's: no-cors, text/plain, credentials it would add itself).
        let session = chromium.open(&format!("http://localhost:{admin}/"));
        let simple = format!(
            "fetch('{api}/topics/home/forged', {{method: 'POST', mode: 'no-cors', credentials: 'include', \
             headers: {{'Content-Type': 'text/plain'}}, body: 'forged'}}).then(r => r.type)"
        );
        shows.push(chromium.evaluate(&session, &simple));
        shows
    })
    .await
    .unwrap();

    let (published, refused, blocked) = (&shown[0], &shown[1], &shown[2]);
    assert_eq!(published["state"], "done", "{published}");
    assert!(published["status"].as_str().unwrap().starts_with("200"), "{published}");
    let id = published["id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "the page read X-Message-Id: {published}");
    let message = next(&mut rx).await;
    assert_eq!((&message.topic[..], &message.payload[..]), (&b"home/browser"[..], &b"hello from a page"[..]));
    let props = message.properties.expect("MQTT 5 properties");
    assert_eq!(props.user_properties, [("from".to_owned(), "chromium".to_owned())]);

    assert!(refused["status"].as_str().unwrap().starts_with("401"), "{refused}");
    assert!(
        refused["answer"].as_str().unwrap().contains("authentication_failed"),
        "the page reads the error: {refused}"
    );

    assert_eq!(blocked["state"], "failed", "a page from another origin is blocked: {blocked}");
    assert!(blocked["status"].as_str().unwrap().contains("network error"), "{blocked}");
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(nothing.is_err(), "nothing more was published: {nothing:?}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("status=405") && l.contains("method_not_allowed")),
        "the preflight was refused"
    );
    assert_eq!(shown[3], "opaque", "the browser sent the simple request: {}", shown[3]);
    assert!(
        log.lines().any(|l| l.contains("status=403") && l.contains("origin_not_allowed")),
        "the simple request reached serve and was refused:\n{log}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(nothing.is_err(), "nothing was published: {nothing:?}");
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

// ---- A fleet behind a load balancer: two `serve` processes sharing one Redis (`--redis`) ----

/// Debian's redis-server on `port` (a free one if `None`), loopback only, nothing saved to disk.
async fn redis_server_on(port: Option<u16>) -> (Proc, u16) {
    let port = port.unwrap_or_else(free_port);
    let (stdout, stderr) = common::child_logs("redis-server");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("redis-server (scripts/test installs it)");
    wait_for_port(port, "redis-server").await;
    (Proc(child), port)
}

/// Every message that arrives within `quiet` of the last one.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Publish>, quiet: Duration) -> Vec<Publish> {
    let mut all = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, rx.recv()).await {
        all.push(message);
    }
    all
}

fn user_property(message: &Publish, name: &str) -> Option<String> {
    let properties = message.properties.as_ref()?;
    properties.user_properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn the_same_idempotency_key_sent_to_two_instances_at_once_publishes_once() {
    let (_broker, port) = mosquitto("fleet-keys").await;
    let (_redis, redis_port) = redis_server_on(None).await;
    let redis = format!("redis://127.0.0.1:{redis_port}");
    let config = write_config(&temp_dir("fleet-keys"), "");
    let args = ["--config", config.to_str().unwrap(), "--redis", &redis];
    let (a, b) = (serve(Some(port), &args).await, serve(Some(port), &args).await);
    let mut rx = subscriber(port, "home/#").await;

    // Each key sent to both instances at the same moment: one publish per key.
    const KEYS: usize = 25;
    let mut answers = Vec::new();
    for k in 0..KEYS {
        let key = format!("order-{k}");
        let path = format!("/topics/home/orders?UserProp.1.Key=order&UserProp.1.Value={k}");
        let headers = [USER0, ("idempotency-key", key.as_str())];
        let (first, second) =
            tokio::join!(post(&a.url, &path, &headers, b"ship it"), post(&b.url, &path, &headers, b"ship it"));
        answers.push((k, first, second));
    }
    let arrived = drain(&mut rx, Duration::from_millis(1500)).await;
    assert_eq!(arrived.len(), KEYS, "one message per key: {arrived:#?}");
    for (k, first, second) in &answers {
        let message = arrived.iter().find(|m| user_property(m, "order") == Some(k.to_string())).expect("arrived");
        let id = user_property(message, "message-id").expect("a keyed message carries its id");
        for answer in [first, second] {
            match answer.status() {
                200 => assert_eq!(answer.headers["x-message-id"], id, "key {k}: every 200 names the one message"),
                409 => assert_eq!(answer.headers["retry-after"], "1"),
                other => panic!("key {k}: {other} {answer:?}"),
            }
        }
        assert!(first.status() == 200 || second.status() == 200, "key {k}: one of the two published");
        // A retry later, at either instance: the first answer again, nothing published.
        let key = format!("order-{k}");
        let path = format!("/topics/home/orders?UserProp.1.Key=order&UserProp.1.Value={k}");
        let replay = post(&a.url, &path, &[USER0, ("idempotency-key", key.as_str())], b"ship it").await;
        assert_eq!((replay.status(), replay.headers["idempotent-replayed"].as_str()), (200, "true"));
        assert_eq!(replay.headers["x-message-id"], id);
        // The same key for another body: 422 from either instance.
        let reused = post(&b.url, &path, &[USER0, ("idempotency-key", key.as_str())], b"cancel it").await;
        assert_eq!(reused.status(), 422, "{reused:?}");
    }
    let later = drain(&mut rx, Duration::from_millis(1000)).await;
    assert!(later.is_empty(), "a replay or a refused reuse published: {later:#?}");
}

#[tokio::test]
async fn a_quota_shared_through_redis_admits_about_n_a_second_across_two_instances_not_2n() {
    let (_broker, port) = mosquitto("fleet-quota").await;
    let (_redis, redis_port) = redis_server_on(None).await;
    let redis = format!("redis://127.0.0.1:{redis_port}");
    const RATE: f64 = 20.0;
    const BURST: f64 = 5.0;
    let config =
        write_config(&temp_dir("fleet-quota"), &format!("[limits]\nmessages_per_second = {RATE}\nburst = {BURST}\n"));
    let args = ["--config", config.to_str().unwrap(), "--redis", &redis];
    let (a, b) = (serve(Some(port), &args).await, serve(Some(port), &args).await);

    // Four clients, two on each instance, as fast as they are answered, for three seconds.
    let window = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let clients: Vec<_> = [&a.url, &a.url, &b.url, &b.url]
        .into_iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut admitted = 0u32;
                while started.elapsed() < window {
                    match post(&url, "/topics/home/quota", &[USER0], b"").await.status() {
                        200 => admitted += 1,
                        429 => {}
                        other => panic!("{other}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for client in clients {
        admitted += client.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let fleet = BURST + RATE * seconds;
    eprintln!(
        "admitted {admitted} in {seconds:.2} s; the fleet's quota allows {fleet:.0}, two processes' own {:.0}",
        2.0 * fleet
    );
    assert!(f64::from(admitted) <= fleet * 1.1 + 2.0, "admitted {admitted}: more than the fleet's {fleet:.0}");
    assert!(f64::from(admitted) >= RATE * seconds * 0.8, "admitted {admitted}: far under the fleet's {fleet:.0}");
}

#[tokio::test]
async fn with_redis_down_keyed_requests_are_503_the_quota_is_each_process_s_and_both_recover() {
    let (_broker, port) = mosquitto("fleet-down").await;
    let (redis, redis_port) = redis_server_on(None).await;
    let url = format!("redis://127.0.0.1:{redis_port}");
    let config = write_config(&temp_dir("fleet-down"), "[limits]\nmessages_per_second = 0.5\nburst = 4\n");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap(), "--redis", &url]).await;
    let keyed = |key: &'static str| [USER0, ("idempotency-key", key)];
    assert_eq!(post(&serve.url, "/topics/home/a", &keyed("before"), b"").await.status(), 200);

    drop(redis);
    let refused = post(&serve.url, "/topics/home/a", &keyed("during"), b"").await;
    assert_eq!((refused.status(), refused.headers["retry-after"].as_str()), (503, "5"), "{refused:?}");
    // Without a key: served, under this process's own quota (a full burst of 4), not unlimited.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post(&serve.url, "/topics/home/a", &[USER0], b"").await.status());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "the local quota holds while Redis is away");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(log.matches("Redis is unreachable").count(), 1, "logged once per outage: {log}");

    let (_redis, _) = redis_server_on(Some(redis_port)).await;
    let mut back = Vec::new();
    for _ in 0..40 {
        // 429 until the shared quota (one message every two seconds) has a token; a 429 releases the key.
        back.push(post(&serve.url, "/topics/home/a", &keyed("after"), b"").await.status());
        if back.last() != Some(&429) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(back.last(), Some(&200), "keys work again once Redis is back: {back:?}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(log.contains("Redis answers again"), "{log}");
}

// ---------------------------------------------------------------------------
// Publish and wait for the reply (ResponseTimeout)
// ---------------------------------------------------------------------------

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

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
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
