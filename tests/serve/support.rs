//! What the modules share: mosquitto and `serve` started on free ports, a
//! client that posts, real MQTT 5 subscribers, and the config files they use.

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::sync::mpsc;

use crate::common;
pub(crate) use crate::common::wait_for_port;
use crate::common::{free_port, request, Proc, Wire};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");
fn bin() -> String {
    std::env::var("MHP_SERVE_BINARY").unwrap_or_else(|_| BIN.to_owned())
}
pub(crate) const USER0: (&str, &str) = ("authorization", "Basic dXNlcjA6c2VjcmV0MA==");

pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mhp-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's mosquitto on a free loopback port, anonymous, no persistence.
pub(crate) async fn mosquitto(name: &str) -> (Proc, u16) {
    mosquitto_with(name, "").await
}

/// [`mosquitto`] with more lines of mosquitto.conf (a limit it announces in CONNACK).
pub(crate) async fn mosquitto_with(name: &str, conf_lines: &str) -> (Proc, u16) {
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
pub(crate) struct Serve {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    /// The MQTT port subscribers use: the external broker's or the embedded one's.
    pub(crate) mqtt_port: u16,
    /// Where its standard output and error go.
    pub(crate) log: std::path::PathBuf,
}

pub(crate) async fn serve(mqtt_port: Option<u16>, args: &[&str]) -> Serve {
    serve_with_env(mqtt_port, args, &[]).await
}

/// As [`serve`], with `env` added to its environment.
pub(crate) async fn serve_with_env(mqtt_port: Option<u16>, args: &[&str], env: &[(&str, &str)]) -> Serve {
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

pub(crate) async fn post(url: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
    request(url, "POST", path, headers, body).await
}

/// A real MQTT 5 subscriber on `filter`; returns once the broker acknowledged the subscription.
pub(crate) async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
    subscribe(port, filter, false).await
}

/// A subscriber whose session outlives its connection (and the broker's restart, with persistence on).
pub(crate) async fn persistent_subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
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
pub(crate) async fn subscribed_client(
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

pub(crate) async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a message at the subscriber").unwrap()
}

/// Sends `bytes` on a fresh connection and reads until the server closes it (at most 10 s).
pub(crate) async fn raw(url: &str, bytes: &[u8]) -> String {
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
pub(crate) fn last_json_error(wire: &str) -> (u16, String) {
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

pub(crate) async fn serve_with_config(config: &std::path::Path) -> Serve {
    serve(None, &["--config", config.to_str().unwrap()]).await
}

pub(crate) fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "{}\n[[rules]]\npriority = 1\neffect = \"allow\"\ntopics = [\"ready\", \"home/#\"]\n{extra}",
        include_str!("../../config/example.toml").split("[[rules]]").next().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (up to 5 s) until the count mosquitto publishes on the `$SYS` topic `topic`
/// (every `sys_interval`) is `expected`; returns the last count read.
pub(crate) async fn sys_count(port: u16, topic: &str, expected: u64) -> u64 {
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

/// VmHWM of a process, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub(crate) fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Every message that arrives within `quiet` of the last one.
pub(crate) async fn drain(rx: &mut mpsc::UnboundedReceiver<Publish>, quiet: Duration) -> Vec<Publish> {
    let mut all = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, rx.recv()).await {
        all.push(message);
    }
    all
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A persistent mosquitto on a free loopback port that a test stops and starts
/// again. No queue limit: with mosquitto's default (1000 per client) a
/// subscriber offline while the broker restarts could lose acknowledged
/// messages at the broker, and the test would blame serve for them.
pub(crate) struct RestartableBroker {
    pub(crate) port: u16,
    conf: std::path::PathBuf,
}

impl RestartableBroker {
    pub(crate) fn new(name: &str) -> RestartableBroker {
        let port = free_port();
        let dir = temp_dir(name);
        // mosquitto started as root drops to its own user, which must be able to write its database here.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let conf = dir.join("mosquitto.conf");
        let settings = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             persistence true\npersistence_location {}/\n",
            dir.display()
        );
        std::fs::write(&conf, settings).unwrap();
        RestartableBroker { port, conf }
    }

    /// Starts it; returns once its port is open.
    pub(crate) async fn start(&self) -> std::process::Child {
        let child = Command::new("mosquitto")
            .args(["-c", self.conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(self.port, "mosquitto").await;
        child
    }

    /// A clean stop: mosquitto saves its sessions, the subscribers' queues included.
    pub(crate) fn stop(mut child: std::process::Child) {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        child.wait().unwrap();
    }
}

/// The payloads `rx` receives until every one of `expected` has come, or `within` has passed.
pub(crate) async fn payloads_until(
    rx: &mut mpsc::UnboundedReceiver<Publish>,
    expected: &std::collections::BTreeSet<&str>,
    within: Duration,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while !expected.iter().all(|p| seen.contains(*p)) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            seen.insert(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    seen
}
