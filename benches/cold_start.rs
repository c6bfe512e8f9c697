//! Lambda cold start and warm invocations of the release binary, driven through
//! a Runtime API emulator of this bench's own. Prints figures; asserts nothing.
//!
//!     MOTO_SERVER=~/.cache/mqtt-http-publish/venv-moto-5.2.5/bin/moto_server cargo bench --bench cold_start
//!
//! `MHP_BINARY=path` measures another build of the function instead, e.g. the
//! Lambda-only `bootstrap` that `sam build` leaves in `.aws-sam/build/PublishFunction/`.
//!
//! Init: spawn → the function's first `GET /2018-06-01/runtime/invocation/next`,
//! median of 20 (CONFIG_FILE, and CONFIG_TABLE, which reads nothing before the
//! first event). Warm: 200 invocations of example 1 of Tencent Cloud MQTT's
//! HTTP publish documentation,
//! publishing to moto on loopback: `next` handed out → response posted.
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads one HTTP request's line, headers and body.
fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if stream.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((line, body))
}

fn respond(stream: &mut TcpStream, headers: &str, body: &[u8]) {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{headers}\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
}

fn spawn(api: &str, env: &[(&str, &str)]) -> Kill {
    let binary = std::env::var("MHP_BINARY").unwrap_or_else(|_| BIN.to_owned());
    Kill(
        Command::new(binary)
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Without IOT_DATA_ENDPOINT the function looks its endpoint up during init
            // (in the background): that lookup stays on loopback too.
            .env("AWS_ENDPOINT_URL_IOT", "http://127.0.0.1:9")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn init_time(env: &[(&str, &str)]) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let _child = spawn(&api, env);
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream);
    let (line, _) = read_request(&mut reader).unwrap();
    let elapsed = started.elapsed();
    assert!(line.contains("/invocation/next"), "{line}");
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn main() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    for (label, env) in [
        ("CONFIG_FILE", vec![("CONFIG_FILE", config)]),
        ("CONFIG_TABLE", vec![("CONFIG_TABLE", "bench-table"), ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")]),
    ] {
        let samples: Vec<Duration> = (0..20).map(|_| init_time(&env)).collect();
        println!(
            "cold_start: init with {label}: median {:.2} ms (min {:.2}, max {:.2}) over 20 runs",
            median(samples.clone()).as_secs_f64() * 1e3,
            samples.iter().min().unwrap().as_secs_f64() * 1e3,
            samples.iter().max().unwrap().as_secs_f64() * 1e3
        );
    }

    let Ok(server) = std::env::var("MOTO_SERVER") else {
        println!("cold_start: set MOTO_SERVER for the warm invocations");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _moto = Kill(
        Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let moto = format!("http://127.0.0.1:{port}");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let child = spawn(&api, &[("CONFIG_FILE", config), ("IOT_DATA_ENDPOINT", &moto)]);
    let event = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/events/example-1-basic-auth.json")).unwrap();
    let (mut durations, mut served) = (Vec::new(), 0);
    let mut handed_out = Instant::now();
    let invocations = 1000;
    'connections: while served < invocations {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some((line, body)) = read_request(&mut reader) {
            if line.contains("/invocation/next") {
                if served == invocations {
                    break 'connections;
                }
                let headers = format!(
                    "lambda-runtime-aws-request-id: r{served}\r\nlambda-runtime-deadline-ms: 99999999999999\r\n\
                     lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n"
                );
                handed_out = Instant::now();
                respond(&mut writer, &headers, &event);
            } else {
                durations.push(handed_out.elapsed());
                assert!(
                    String::from_utf8_lossy(&body).contains("\"statusCode\":200"),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
                served += 1;
                respond(&mut writer, "", b"{}");
            }
        }
    }
    // The first invocation verifies the password (argon2id); the others find it cached.
    println!(
        "cold_start: warm invocation (publish to moto on loopback): first {:.2} ms, median of the rest {:.2} ms, over {invocations}",
        durations[0].as_secs_f64() * 1e3,
        median(durations[1..].to_vec()).as_secs_f64() * 1e3
    );
    println!("cold_start: peak RSS over {invocations} invocations: {} KiB", rss_kib(child.0.id(), "VmHWM:"));
}
