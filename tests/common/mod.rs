//! What the integration tests share: a small HTTP/1.1 reader and writer for the
//! suite's own loopback servers (the fault server, the Runtime API emulator), a
//! client for moto's recorder, the service built as production builds it, and
//! the log directory where every run of the binary leaves what it printed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use mqtt_http_publish::aws::sdk_config;
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::publish::iot::{IotEndpoint, IotPublisher, IotSettings};
use mqtt_http_publish::service::Service;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where the suite keeps what the binary printed, so that `scripts/check-logs`
/// can look for secrets in all of it once the suite has run: `MHP_TEST_LOG_DIR`
/// (scripts/test sets it), else a directory under the system's temp dir.
pub fn log_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("MHP_TEST_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("mqtt-http-publish-test-logs"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create the log directory {}: {e}", dir.display()));
    dir
}

/// A new file in [`log_dir`] named after `name`, unique to this process and call.
fn new_log_file(name: &str) -> std::fs::File {
    new_log_file_at(name).0
}

/// [`new_log_file`], and where it is.
fn new_log_file_at(name: &str) -> (std::fs::File, std::path::PathBuf) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file = format!("{name}.{}.{}.log", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let path = log_dir().join(file);
    (std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())), path)
}

/// Standard output and error for a child process of the binary, both kept in one
/// log file named after `name` (use them instead of `Stdio::null()`).
pub fn child_logs(name: &str) -> (std::process::Stdio, std::process::Stdio) {
    let (stdout, stderr, _) = child_logs_at(name);
    (stdout, stderr)
}

/// [`child_logs`], and the log file's path, for a test that reads what the child logged.
pub fn child_logs_at(name: &str) -> (std::process::Stdio, std::process::Stdio, std::path::PathBuf) {
    let (file, path) = new_log_file_at(name);
    let copy = file.try_clone().expect("a log file handle can be cloned");
    (copy.into(), file.into(), path)
}

/// Keeps output a test read itself (through pipes, to assert on it) in the log directory too.
pub fn keep_log(name: &str, output: &[u8]) {
    use std::io::Write;
    new_log_file(name).write_all(output).expect("write a log file");
}

/// One HTTP request or response as read off the wire.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    /// `POST /path` for a request, `HTTP/1.1 200 OK` for a response.
    pub start_line: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Wire {
    pub fn status(&self) -> u16 {
        self.start_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    pub fn path(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }
}

/// Parses a start line and headers.
pub fn parse_head(head: &str) -> Wire {
    let mut lines = head.lines();
    let mut wire = Wire { start_line: lines.next().unwrap_or_default().to_owned(), ..Wire::default() };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            wire.headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    wire
}

/// Reads one message with a Content-Length body (or none); `None` at end of stream.
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(reader: &mut BufReader<R>) -> std::io::Result<Option<Wire>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line.trim_end().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let mut wire = parse_head(&head);
    let length: usize = wire.headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    wire.body = vec![0; length];
    reader.read_exact(&mut wire.body).await?;
    Ok(Some(wire))
}

/// Writes a response and keeps the connection usable.
pub async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await
}

/// One HTTP/1.0 call (the server closes after answering).
pub async fn call(url: &str, method: &str, path: &str, body: &[u8]) -> Wire {
    request(url, method, path, &[], body).await
}

/// One HTTP/1.0 call with extra headers.
pub async fn request(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).await.unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    let mut head = format!("{method} {path} HTTP/1.0\r\nhost: {host}\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response") + 4;
    let mut wire = parse_head(std::str::from_utf8(&raw[..split]).expect("ASCII headers"));
    wire.body = raw[split..].to_vec();
    wire
}

/// The moto server `scripts/test` started. Tests never skip without it: they fail and say why.
pub fn moto_url() -> String {
    for var in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"] {
        assert!(std::env::var_os(var).is_some(), "{var} is not set: run the suite with scripts/test");
    }
    std::env::var("MOTO_URL").expect("MOTO_URL is not set: run the suite with scripts/test, which starts moto")
}

/// A name no other test uses, to find this test's requests in moto's shared recording.
pub fn unique_app_name(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("t{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), test.replace('_', "-"))
}

/// The production publisher, pointed at `endpoint`, tagged with `app` in its User-Agent.
pub async fn iot_publisher(endpoint: &str, app: &str, settings: IotSettings) -> IotPublisher {
    let settings = IotSettings { endpoint: IotEndpoint::Given(endpoint.to_owned()), ..settings };
    let sdk = sdk_config().await.into_builder().app_name(aws_config::AppName::new(app.to_owned()).unwrap()).build();
    IotPublisher::new(&sdk, &settings)
}

/// The service with the example config, as the Lambda function builds it.
pub fn example_service(publisher: IotPublisher) -> Service<IotPublisher> {
    let policy = Policy::from_toml(include_str!("../../config/example.toml")).expect("the example config loads");
    Service::new(publisher, policy)
}

/// A request the SDK sent to moto, as its recorder kept it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent, still encoded.
    pub path_and_query: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The decoded value of a query parameter.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.path_and_query.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8().unwrap().into_owned())
        })
    }

    /// The decoded topic of a Publish call.
    pub fn topic(&self) -> String {
        let path = self.path_and_query.split('?').next().unwrap();
        let encoded = path.strip_prefix("/topics/").expect("an IoT Publish path");
        percent_encoding::percent_decode_str(encoded).decode_utf8().unwrap().into_owned()
    }
}

/// Turns moto's recorder on (idempotent).
pub async fn start_recording(moto: &str) {
    let r = call(moto, "POST", "/moto-api/recorder/start-recording", b"").await;
    assert_eq!(r.status(), 200, "moto's recorder did not start");
}

/// Every request moto recorded whose User-Agent carries `app`.
pub async fn recorded(moto: &str, app: &str) -> Vec<Recorded> {
    let r = call(moto, "GET", "/moto-api/recorder/download-recording", b"").await;
    assert_eq!(r.status(), 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        // moto appends other tests' entries while we read: a last line may be half written.
        // Ours are whole (moto records a request before answering it, and we were answered).
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|entry| {
            let headers: HashMap<String, String> = entry["headers"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let ua = format!("{} {}", headers.get("user-agent")?, headers.get("x-amz-user-agent").map_or("", |s| s));
            if !ua.contains(&format!("app/{app}")) {
                return None;
            }
            let url = entry["url"].as_str()?;
            let path_and_query = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
            let body = match (entry["body"].as_str(), entry["body_encoded"].as_bool()) {
                (Some(b), Some(true)) => base64_decode(b),
                (Some(b), _) => b.as_bytes().to_vec(),
                _ => Vec::new(),
            };
            Some(Recorded { method: entry["method"].as_str()?.to_owned(), path_and_query, headers, body })
        })
        .collect()
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).expect("valid base64")
}

/// An SDK config whose every client talks to `endpoint` (moto).
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    sdk_config().await.into_builder().endpoint_url(endpoint).build()
}

/// Creates a config table as template.yaml declares it: string keys pk (hash) and sk (range).
pub async fn create_config_table(endpoint: &str, name: &str) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let client = aws_sdk_dynamodb::Client::new(&sdk_config_for(endpoint).await);
    let attribute = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {name}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(&e)));
}

/// A moto server of the test's own, for cases that stop and restart it.
pub struct OwnMoto {
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnMoto {
    /// Starts `MOTO_SERVER` (exported by scripts/test) on a free loopback port.
    pub async fn start() -> OwnMoto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut moto = OwnMoto { url: format!("http://127.0.0.1:{port}"), port, child: None };
        moto.restart().await;
        moto
    }

    /// Starts it again on the same port (empty, as a restarted moto is).
    pub async fn restart(&mut self) {
        let server = std::env::var("MOTO_SERVER").expect("MOTO_SERVER is not set: run the suite with scripts/test");
        let child = std::process::Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("moto did not start on port {}", self.port);
    }

    /// Stops it; connections are refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process killed when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on the loopback `port`; panics naming `what` after 5 s.
pub async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{what} did not listen on {port}");
}

/// Debian's redis-server on loopback `port` (a free one if `None`), keeping nothing on disk.
pub async fn redis_server_on(port: Option<u16>) -> (Proc, u16) {
    let port = port.unwrap_or_else(free_port);
    let (stdout, stderr) = child_logs("redis-server");
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("redis-server (scripts/test installs it)");
    wait_for_port(port, "redis-server").await;
    (Proc(child), port)
}
