//! What an attacker could learn from the answers and the logs: an unknown user
//! and a wrong password are answered with the same bytes, through the Lambda
//! handler and through `serve`; and the service's most verbose logs hold no
//! password and no Authorization value. (The timing half of docs/api.md's "Same answer
//! for unknown user and wrong password" is `cargo bench --bench auth_timing`.)
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{example_service, iot_publisher, moto_url, start_recording, unique_app_name};
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{HttpRequest, RequestPath};
use mqtt_http_publish::lambda;
use mqtt_http_publish::publish::iot::IotSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// user0 with its password (secret0), a wrong password (secret1), and an unknown user (user9).
const RIGHT: &str = "Basic dXNlcjA6c2VjcmV0MA==";
const WRONG_PASSWORD: &str = "Basic dXNlcjA6c2VjcmV0MQ==";
const UNKNOWN_USER: &str = "Basic dXNlcjk6c2VjcmV0MA==";

async fn lambda_answer(file: &str) -> Vec<u8> {
    let moto = moto_url();
    let service = example_service(iot_publisher(&moto, &unique_app_name("same-bytes"), IotSettings::default()).await);
    let text = std::fs::read(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let response = lambda::handle(&service, serde_json::from_slice(&text).unwrap(), None).await.unwrap();
    serde_json::to_vec(&response).unwrap()
}

#[tokio::test]
async fn the_lambda_handler_answers_unknown_user_and_wrong_password_with_the_same_bytes() {
    let unknown = lambda_answer("error-401-unknown-user.json").await;
    let wrong = lambda_answer("error-401-wrong-password.json").await;
    assert_eq!(String::from_utf8_lossy(&unknown), String::from_utf8_lossy(&wrong));
    let value: serde_json::Value = serde_json::from_slice(&wrong).unwrap();
    assert_eq!(value["statusCode"], 401, "{value}");
    assert!(value["body"].as_str().unwrap().contains("authentication_failed"), "{value}");
}

use common::{free_port, Proc};

/// One HTTP/1.1 exchange on a fresh connection; the answer's raw bytes.
async fn raw_exchange(http: u16, authorization: &str) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http)).await.unwrap();
    let request = format!(
        "POST /topics/home?qos=1&client_id=curl-x HTTP/1.1\r\nhost: 127.0.0.1:{http}\r\n\
         authorization: {authorization}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("an answer").unwrap();
    raw
}

/// The answer without its `date` header line, the one line that may differ between two answers.
fn without_date(raw: &[u8]) -> String {
    let text = String::from_utf8(raw.to_vec()).expect("an ASCII head and a JSON body");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let head: Vec<&str> = head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("date:")).collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[tokio::test]
async fn serve_answers_unknown_user_and_wrong_password_with_the_same_bytes_date_aside() {
    let (http, broker) = (free_port(), free_port());
    let (stdout, stderr) = common::child_logs("serve-same-bytes");
    let _serve = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-http-publish"))
            .args(["serve", "--listen", &format!("127.0.0.1:{http}")])
            .args(["--broker-listen", &format!("127.0.0.1:{broker}")])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let mut ready = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", http)).await.is_ok()
            && raw_exchange(http, RIGHT).await.starts_with(b"HTTP/1.1 200")
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "serve did not publish with the demo config");

    let unknown = raw_exchange(http, UNKNOWN_USER).await;
    let wrong = raw_exchange(http, WRONG_PASSWORD).await;
    assert!(wrong.starts_with(b"HTTP/1.1 401 "), "{}", String::from_utf8_lossy(&wrong));
    assert_eq!(without_date(&unknown), without_date(&wrong));
    let text = without_date(&wrong);
    assert!(text.contains("authentication_failed") && text.to_ascii_lowercase().contains("www-authenticate"), "{text}");
}

/// A `Write` into a buffer shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn request(authorization: &str) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(authorization).unwrap());
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/home".into()),
        query: decode_query("qos=1&client_id=curl-x").unwrap(),
        headers,
        body: Bytes::from_static(b"hello"),
        source_ip: Some("203.0.113.7".parse().unwrap()),
        client_certificate: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_a_right_and_a_wrong_password_hold_neither_the_password_nor_the_header() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Every target at TRACE, from every thread (the slow hash runs on the blocking pool).
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");

    let moto = moto_url();
    start_recording(&moto).await;
    let service = example_service(iot_publisher(&moto, &unique_app_name("trace"), IotSettings::default()).await);
    assert_eq!(service.handle(request(RIGHT)).await.status(), 200);
    assert_eq!(service.handle(request(WRONG_PASSWORD)).await.status(), 401);
    assert_eq!(service.handle(request(UNKNOWN_USER)).await.status(), 401);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    common::keep_log("trace-in-process", logs.as_bytes());
    assert!(logs.contains("TRACE") && logs.contains("request"), "TRACE logging was on:\n{logs}");
    for secret in ["secret0", "secret1", "dXNlcjA6c2VjcmV0MA", "dXNlcjA6c2VjcmV0MQ", "dXNlcjk6c2VjcmV0MA"] {
        assert!(!logs.contains(secret), "a log line carries {secret:?}:\n{logs}");
    }
}
