//! The built binary as Lambda runs it: a Runtime API emulator of the suite's
//! own hands it events (`GET .../invocation/next`) and collects its answers
//! (`POST .../invocation/{id}/response`); the function publishes to moto.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{moto_url, read_message, recorded, start_recording, unique_app_name, write_response};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// What the emulator saw: each invocation's answer, by request id, and errors.
#[derive(Default)]
struct Emulator {
    pending: Vec<(String, Vec<u8>)>,
    responses: Vec<(String, Value)>,
    errors: Vec<(String, Value)>,
    /// When each invocation was handed out and when its answer came, by request id.
    handed_at: Vec<(String, Instant)>,
    answered_at: Vec<(String, Instant)>,
}

/// Hands out `events`, each with Lambda's 30 s of time.
async fn start_emulator(events: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Emulator>>) {
    start_emulator_with_time(events, Duration::from_secs(30)).await
}

/// Hands out `events`, each with a deadline `time` after it is handed out.
async fn start_emulator_with_time(events: Vec<(String, Vec<u8>)>, time: Duration) -> (String, Arc<Mutex<Emulator>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(Emulator { pending: events.into_iter().rev().collect(), ..Emulator::default() }));
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(request)) = read_message(&mut reader).await {
                    let path = request.path().to_owned();
                    if path.ends_with("/invocation/next") {
                        let next = state.lock().await.pending.pop();
                        let Some((id, event)) = next else {
                            // No more events: hold the call, as Lambda does while idle.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        };
                        state.lock().await.handed_at.push((id.clone(), Instant::now()));
                        let deadline = (std::time::SystemTime::now() + time)
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis()
                            .to_string();
                        let headers = [
                            ("content-type", "application/json"),
                            ("lambda-runtime-aws-request-id", id.as_str()),
                            ("lambda-runtime-deadline-ms", deadline.as_str()),
                            (
                                "lambda-runtime-invoked-function-arn",
                                "arn:aws:lambda:us-east-1:123456789012:function:mqtt-http-publish",
                            ),
                            (
                                "lambda-runtime-trace-id",
                                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
                            ),
                        ];
                        write_response(&mut write, 200, &headers, &event).await.unwrap();
                    } else {
                        let id = path.split('/').nth(4).unwrap_or_default().to_owned();
                        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                        let mut s = state.lock().await;
                        s.answered_at.push((id.clone(), Instant::now()));
                        if path.ends_with("/response") {
                            s.responses.push((id, body));
                        } else {
                            s.errors.push((id, body));
                        }
                        drop(s);
                        write_response(
                            &mut write,
                            202,
                            &[("content-type", "application/json")],
                            b"{\"status\":\"OK\"}",
                        )
                        .await
                        .unwrap();
                    }
                }
            });
        }
    });
    (address, state)
}

/// The built binary as Lambda starts it, on `runtime_api`, with `env` on top.
fn spawn_function(runtime_api: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    function_command(runtime_api, env).spawn().unwrap()
}

/// The command [`spawn_function`] runs, to change before it is spawned.
fn function_command(runtime_api: &str, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-http-publish"));
    command
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "mqtt-http-publish")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env_remove("IOT_DATA_ENDPOINT")
        // Should a test name no IoT endpoint, the lookup of the account's stays on loopback.
        .env("AWS_ENDPOINT_URL_IOT", "http://127.0.0.1:9")
        .env_remove("CONFIG_FILE")
        .env_remove("CONFIG_TABLE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Everything a stopped function printed, also left in the suite's log directory.
async fn logs_of(child: &mut tokio::process::Child) -> String {
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).await.unwrap();
    child.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    common::keep_log("lambda-runtime", logs.as_bytes());
    logs
}

fn event(file: &str) -> Vec<u8> {
    std::fs::read(format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[tokio::test]
async fn the_binary_serves_events_from_the_runtime_api_and_publishes_to_moto() {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("runtime");
    let events = vec![
        ("req-1".to_owned(), event("example-1-basic-auth.json")),
        ("req-2".to_owned(), event("error-401-wrong-password.json")),
        ("req-3".to_owned(), br#"{"Records": []}"#.to_vec()),
        ("req-4".to_owned(), event("rest-api-stage-encoded-slash.json")),
    ];
    let (runtime_api, state) = start_emulator(events).await;

    // The SDK's own endpoint resolution, which AWS_ENDPOINT_URL_IOT_DATA_PLANE selects (docs/aws.md, "On AWS Lambda").
    let mut child = spawn_function(
        &runtime_api,
        &[
            ("CONFIG_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")),
            ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &moto),
            ("AWS_SDK_UA_APP_ID", &app),
        ],
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = state.lock().await;
        if s.responses.len() + s.errors.len() == 4 {
            break;
        }
        drop(s);
        assert!(tokio::time::Instant::now() < deadline, "the function did not answer four invocations in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let logs = logs_of(&mut child).await;

    let s = state.lock().await;
    let answer = |id: &str| s.responses.iter().find(|(i, _)| i == id).map(|(_, v)| v.clone()).expect(id);
    assert_eq!(answer("req-1")["statusCode"], 200);
    assert_eq!(answer("req-2")["statusCode"], 401);
    assert_eq!(answer("req-4")["statusCode"], 200);
    assert_eq!(s.errors.len(), 1, "an event that is no HTTP request is an invocation error");
    assert_eq!(s.errors[0].0, "req-3");

    let sent = recorded(&moto, &app).await;
    let topics: Vec<String> = sent.iter().map(|r| r.topic()).collect();
    assert_eq!(topics, ["home", "home/kitchen"], "one publish per 200, in order");

    assert!(logs.lines().any(|l| l.starts_with('{') && l.contains("\"message_id\"")), "JSON logs:\n{logs}");
    assert!(logs.contains("req-1"), "log lines carry the Lambda request id:\n{logs}");
    for secret in ["secret0", "secret1", "dXNlcjA6c2VjcmV0MA==", "dXNlcjA6c2VjcmV0MQ==", "$argon2id$"] {
        assert!(!logs.contains(secret), "a log line carries {secret:?}:\n{logs}");
    }
}

#[tokio::test]
async fn at_trace_level_no_line_carries_the_request_s_credentials() {
    // GIVEN two requests with Basic credentials: example 1's (user0:secret0, a 200) and one
    // with a password used nowhere else (user0:trace-level-pw, a 401)
    let moto = moto_url();
    let app = unique_app_name("trace");
    let mut other: Value = serde_json::from_slice(&event("example-1-basic-auth.json")).unwrap();
    other["headers"]["authorization"] = "Basic dXNlcjA6dHJhY2UtbGV2ZWwtcHc=".into();
    let secrets = [
        "secret0",
        "dXNlcjA6c2VjcmV0MA==",
        "Basic dXNlcjA6c2VjcmV0MA==",
        "trace-level-pw",
        "dXNlcjA6dHJhY2UtbGV2ZWwtcHc=",
        "Basic dXNlcjA6dHJhY2UtbGV2ZWwtcHc=",
    ];
    // Lambda's advanced logging controls, RUST_LOG, and RUST_LOG naming the very module
    // that logs each event whole at TRACE (lambda_runtime's api_response layer).
    let levels = [
        ("AWS_LAMBDA_LOG_LEVEL", "TRACE"),
        ("RUST_LOG", "trace"),
        ("RUST_LOG", "trace,lambda_runtime::layers::api_response=trace"),
    ];
    for (variable, level) in levels {
        // WHEN the function serves them with that level
        let events = vec![
            ("trace-200".to_owned(), event("example-1-basic-auth.json")),
            ("trace-401".to_owned(), serde_json::to_vec(&other).unwrap()),
        ];
        let (runtime_api, state) = start_emulator(events).await;
        let mut command = function_command(
            &runtime_api,
            &[
                ("CONFIG_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")),
                ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &moto),
                ("AWS_SDK_UA_APP_ID", &app),
            ],
        );
        command.env_remove("AWS_LAMBDA_LOG_LEVEL").env_remove("RUST_LOG").env(variable, level);
        let mut child = command.spawn().unwrap();
        // Read as it comes: at TRACE the output outgrows a pipe's buffer, and the function would block.
        let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            stdout.read_to_string(&mut text).await.map(|_| text)
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            stderr.read_to_string(&mut text).await.map(|_| text)
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while state.lock().await.responses.len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{variable}={level}: the function did not answer twice");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().await.unwrap();
        let logs = stdout.await.unwrap().unwrap() + &stderr.await.unwrap().unwrap();
        common::keep_log("lambda-runtime-trace", logs.as_bytes());

        // THEN both were served, at that level, and no line carries their credentials
        let s = state.lock().await;
        let status = |id: &str| s.responses.iter().find(|(i, _)| i == id).map(|(_, r)| r["statusCode"].clone());
        assert_eq!((status("trace-200"), status("trace-401")), (Some(200.into()), Some(401.into())), "{logs}");
        let levels: Vec<String> = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|line| line["level"].as_str().map(str::to_owned))
            .collect();
        for wanted in ["TRACE", "DEBUG"] {
            assert!(levels.iter().any(|l| l == wanted), "{variable}={level}: no {wanted} line, so nothing was tested");
        }
        for secret in secrets {
            let line = logs.lines().find(|line| line.contains(secret));
            assert!(line.is_none(), "{variable}={level}: a log line carries {secret:?}:\n{}", line.unwrap_or_default());
        }
    }
}

#[tokio::test]
async fn the_binary_reads_users_and_rules_from_config_table() {
    let moto = moto_url();
    start_recording(&moto).await;
    let table = format!("{}-runtime-table", unique_app_name("table"));
    common::create_config_table(&moto, &table).await;
    let items = mqtt_http_publish::config::table::config_items(
        &mqtt_http_publish::config::parse_toml(include_str!("../config/example.toml")).unwrap(),
    );
    let store = mqtt_http_publish::config::table::TableStore::new(&common::sdk_config_for(&moto).await, &table);
    store.write(items.into_values().collect(), Vec::new()).await.unwrap();

    let app = unique_app_name("runtime-table");
    let events = vec![
        ("t-1".to_owned(), event("example-1-basic-auth.json")),
        ("t-2".to_owned(), event("error-401-wrong-password.json")),
        ("t-3".to_owned(), event("error-401-acl-deny-rule.json")),
    ];
    let (runtime_api, state) = start_emulator(events).await;
    let mut child = spawn_function(
        &runtime_api,
        &[
            ("CONFIG_TABLE", &table),
            ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &moto),
            ("AWS_ENDPOINT_URL_DYNAMODB", &moto),
            ("AWS_SDK_UA_APP_ID", &app),
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state.lock().await.responses.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the function did not answer three invocations in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    logs_of(&mut child).await;
    let s = state.lock().await;
    let statuses: Vec<u64> = s.responses.iter().map(|(_, r)| r["statusCode"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 401, 401]);
    let published: Vec<String> = recorded(&moto, &app)
        .await
        .iter()
        .filter(|r| r.path_and_query.starts_with("/topics/"))
        .map(|r| r.topic())
        .collect();
    assert_eq!(published, ["home"]);
}

/// A loopback proxy that holds each request for `delay`, then passes it on to
/// `upstream` and its answer back: a table that is slow but within its bound.
async fn slow_proxy(upstream: &str, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(request)) = read_message(&mut reader).await {
                    tokio::time::sleep(delay).await;
                    let mut head = format!("{}\r\n", request.start_line);
                    for (name, value) in &request.headers {
                        if name != "connection" {
                            head.push_str(&format!("{name}: {value}\r\n"));
                        }
                    }
                    head.push_str("connection: close\r\n\r\n");
                    let mut up = TcpStream::connect(&upstream).await.unwrap();
                    up.write_all(head.as_bytes()).await.unwrap();
                    up.write_all(&request.body).await.unwrap();
                    let Ok(Some(answer)) = read_message(&mut BufReader::new(up)).await else { return };
                    let headers: Vec<(&str, &str)> = answer
                        .headers
                        .iter()
                        .filter(|(n, _)| !matches!(n.as_str(), "content-length" | "connection" | "transfer-encoding"))
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    if write_response(&mut write, answer.status(), &headers, &answer.body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// A loopback server that reads requests and never answers.
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            held.push(stream);
        }
    });
    url
}

/// One invocation of example 1 with `time` to live, served by the function started with
/// `env`: its answer, how long after the event was handed out it came, and the logs.
async fn one_invocation(time: Duration, env: &[(&str, &str)]) -> (Value, Duration, String) {
    let (runtime_api, state) =
        start_emulator_with_time(vec![("one".to_owned(), event("example-1-basic-auth.json"))], time).await;
    let mut child = spawn_function(&runtime_api, env);
    let waited = tokio::time::Instant::now() + Duration::from_secs(20);
    while state.lock().await.answered_at.is_empty() {
        assert!(tokio::time::Instant::now() < waited, "the function never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let logs = logs_of(&mut child).await;
    let s = state.lock().await;
    assert!(s.errors.is_empty(), "an answer, not an invocation error: {:?}", s.errors);
    (s.responses[0].1.clone(), s.answered_at[0].1 - s.handed_at[0].1, logs)
}

#[tokio::test]
async fn a_slow_table_and_a_hanging_iot_in_one_invocation_get_the_functions_own_503_before_the_deadline() {
    // GIVEN the table behind a proxy that holds each call 1.2 s (the rules Query, then the
    // user's GetItem: each within its own 4 s bound), an IoT endpoint that never answers
    // (its own bound is 9 s), and an invocation with 4 s to live: 11 s of waiting in all
    let moto = moto_url();
    let table = format!("{}-deadline", unique_app_name("deadline"));
    common::create_config_table(&moto, &table).await;
    let items = mqtt_http_publish::config::table::config_items(
        &mqtt_http_publish::config::parse_toml(include_str!("../config/example.toml")).unwrap(),
    );
    let store = mqtt_http_publish::config::table::TableStore::new(&common::sdk_config_for(&moto).await, &table);
    store.write(items.into_values().collect(), Vec::new()).await.unwrap();
    let slow_table = slow_proxy(&moto, Duration::from_millis(1_200)).await;
    let hanging_iot = silent_server().await;
    let time = Duration::from_secs(4);

    // WHEN the function serves it
    let env = [
        ("CONFIG_TABLE", table.as_str()),
        ("AWS_ENDPOINT_URL_DYNAMODB", &slow_table),
        ("IOT_DATA_ENDPOINT", &hanging_iot),
    ];
    let (answer, took, logs) = one_invocation(time, &env).await;

    // THEN it answered 503 with Retry-After itself, before the deadline, and said why
    assert_eq!(answer["statusCode"], 503, "{answer}");
    assert_eq!(answer["headers"]["retry-after"], "5");
    assert!(took < time, "answered {took:?} after the event was handed out; the deadline was {time:?}");
    assert!(
        took >= time - Duration::from_millis(1_000),
        "it waited for the table and IoT as long as it could: {took:?}"
    );
    assert!(logs.contains("time is running out") && logs.contains("publishing"), "the log says why:\n{logs}");
}

#[tokio::test]
async fn a_hanging_table_and_a_hanging_iot_lookup_in_one_invocation_get_the_functions_own_503_in_time() {
    // GIVEN a table and an IoT control plane that never answer (the rules Query's own bound
    // is 4 s, the endpoint lookup's 4 s too), and an invocation with 3 s to live
    moto_url();
    let (table, iot) = (silent_server().await, silent_server().await);
    let time = Duration::from_secs(3);

    // WHEN the function serves it, with no IOT_DATA_ENDPOINT (so it looks the endpoint up)
    let env =
        [("CONFIG_TABLE", "hanging"), ("AWS_ENDPOINT_URL_DYNAMODB", table.as_str()), ("AWS_ENDPOINT_URL_IOT", &iot)];
    let (answer, took, logs) = one_invocation(time, &env).await;

    // THEN its own 503 came before the deadline, naming the step it was waiting on
    assert_eq!((answer["statusCode"].as_u64(), answer["headers"]["retry-after"].as_str()), (Some(503), Some("5")));
    assert!(took < time, "answered {took:?} after the event was handed out; the deadline was {time:?}");
    assert!(logs.contains("time is running out") && logs.contains("reading the rules"), "{logs}");
}

/// Holds `line` to AWS's "Specification: Embedded metric format" (CloudWatch user guide):
/// `_aws` holds exactly `Timestamp` (integer milliseconds since the epoch) and
/// `CloudWatchMetrics`; each directive exactly `Namespace` (1–255 characters),
/// `Dimensions` (at least one set of at most 9 keys) and `Metrics` (at most 100,
/// each a `Name` and a known `Unit`); every dimension key names a root member
/// with a non-empty string value, every metric name a root member with a number
/// (or an array of at most 100 numbers). Nested members do not count.
fn assert_emf(line: &Value) {
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    let keys = |object: &Value| -> Vec<String> {
        let mut keys: Vec<String> =
            object.as_object().unwrap_or_else(|| panic!("an object: {object}")).keys().cloned().collect();
        keys.sort();
        keys
    };
    let name = |value: &Value| -> String {
        let name = value.as_str().unwrap_or_else(|| panic!("a string: {value}"));
        assert!((1..=255).contains(&name.chars().count()), "1 to 255 characters: {name:?}");
        name.to_owned()
    };
    let root = line.as_object().unwrap_or_else(|| panic!("the line is a JSON object: {line}"));
    let metadata = &root["_aws"];
    assert_eq!(keys(metadata), ["CloudWatchMetrics", "Timestamp"], "{line}");
    let timestamp = metadata["Timestamp"].as_u64().unwrap_or_else(|| panic!("an integer Timestamp: {line}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now.abs_diff(timestamp) < 120_000, "Timestamp {timestamp} is not milliseconds since the epoch, now");
    let directives = metadata["CloudWatchMetrics"].as_array().unwrap_or_else(|| panic!("an array: {line}"));
    assert!(!directives.is_empty(), "{line}");
    for directive in directives {
        assert_eq!(keys(directive), ["Dimensions", "Metrics", "Namespace"], "{line}");
        name(&directive["Namespace"]);
        let sets = directive["Dimensions"].as_array().unwrap_or_else(|| panic!("an array: {line}"));
        assert!(!sets.is_empty(), "at least one dimension set: {line}");
        for set in sets {
            let set = set.as_array().unwrap_or_else(|| panic!("a dimension set is an array: {line}"));
            assert!(set.len() <= 9, "{line}");
            for key in set {
                let value = &root.get(&name(key)).unwrap_or_else(|| panic!("dimension {key} at the root: {line}"));
                assert!(value.as_str().is_some_and(|v| !v.is_empty()), "dimension {key} is a non-empty string: {line}");
            }
        }
        let metrics = directive["Metrics"].as_array().unwrap_or_else(|| panic!("an array: {line}"));
        assert!((1..=100).contains(&metrics.len()), "{line}");
        for metric in metrics {
            assert!(keys(metric).iter().all(|k| k == "Name" || k == "Unit"), "{line}");
            let metric_name = name(&metric["Name"]);
            let value = root.get(&metric_name).unwrap_or_else(|| panic!("metric {metric_name} at the root: {line}"));
            let numbers = value.as_array().map_or(vec![value], |values| values.iter().collect());
            assert!(numbers.len() <= 100 && numbers.iter().all(|n| n.is_number()), "metric {metric_name}: {line}");
            if let Some(unit) = metric.get("Unit") {
                assert!(UNITS.contains(&name(unit).as_str()), "unit {unit}: {line}");
            }
        }
    }
}

#[tokio::test]
async fn each_request_s_log_line_is_a_cloudwatch_embedded_metric_format_document() {
    // GIVEN the function, with a metrics namespace of its own, answering a 200, a 401, and a
    // 400 found while decoding the event (before the service sees a request)
    let moto = moto_url();
    let app = unique_app_name("emf");
    let mut bad_query: Value = serde_json::from_slice(&event("example-1-basic-auth.json")).unwrap();
    bad_query["rawQueryString"] = "qos=1&a=%ff".into();
    let events = vec![
        ("emf-200".to_owned(), event("example-1-basic-auth.json")),
        ("emf-401".to_owned(), event("error-401-wrong-password.json")),
        ("emf-400".to_owned(), serde_json::to_vec(&bad_query).unwrap()),
    ];
    let (runtime_api, state) = start_emulator(events).await;
    let mut child = spawn_function(
        &runtime_api,
        &[
            ("CONFIG_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")),
            ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &moto),
            ("AWS_SDK_UA_APP_ID", &app),
            ("METRICS_NAMESPACE", "mqtt-http-publish/test"),
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state.lock().await.responses.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the function did not answer three invocations in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let logs = logs_of(&mut child).await;

    // WHEN its request lines are read as CloudWatch Logs reads them: each line one JSON object
    let requests: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 3, "one request line per invocation:\n{logs}");
    let of = |id: &str| requests.iter().find(|l| l["spans"].to_string().contains(id)).unwrap_or_else(|| panic!("{id}"));

    // THEN each is a valid EMF document, counting the request and its latency by status (and error code)
    for line in &requests {
        assert_emf(line);
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "mqtt-http-publish/test");
        assert_eq!(
            directive["Metrics"],
            serde_json::json!([
                {"Name": "Requests", "Unit": "Count"},
                {"Name": "Latency", "Unit": "Milliseconds"},
                {"Name": "Messages", "Unit": "Count"}
            ])
        );
        assert_eq!(line["Requests"], 1);
        assert_eq!(line["Messages"], line["fields"]["published"], "{line}");
        let latency_ms = line["Latency"].as_f64().unwrap();
        let latency_us = line["fields"]["latency_us"].as_u64().unwrap();
        assert!((latency_ms - latency_us as f64 / 1000.0).abs() < 1e-9, "{line}");
    }
    let (ok, denied, malformed) = (of("emf-200"), of("emf-401"), of("emf-400"));
    assert_eq!((&ok["status"], ok.get("error")), (&Value::from("200"), None), "{ok}");
    assert_eq!(ok["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["status"]]));
    assert_eq!((&denied["status"], &denied["error"]), (&"401".into(), &"authentication_failed".into()), "{denied}");
    assert_eq!(denied["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["status"], ["error"]]));
    assert_eq!((&malformed["status"], &malformed["error"]), (&"400".into(), &"invalid_query".into()), "{malformed}");
    // The line keeps what it said before: other readers of the logs find it where it was.
    assert_eq!((&ok["fields"]["status"], &ok["spans"][1]["topic"]), (&200.into(), &"home".into()), "{ok}");
    assert!(ok["fields"]["message_id"].as_str().is_some_and(|id| id.len() == 32), "{ok}");
    // The X-Ray trace id API Gateway added (events/example-1-basic-auth.json) is in the line.
    assert_eq!(ok["spans"][1]["xray_trace_id"], "1-5e9f0c65-1de4d666d4dd26aced652b6c", "{ok}");
    // No other line carries metrics.
    let with_metrics = logs.lines().filter(|line| line.contains("\"_aws\"")).count();
    assert_eq!(with_metrics, 3, "{logs}");
}

/// Debian's mosquitto with a plain listener (the device's) and a WebSocket one
/// (the function's; mosquitto 2.0 serves no WebSocket listener alone). The
/// WebSocket listener needs room for a presigned URL's long request line.
async fn mosquitto_with_websockets() -> (common::Proc, u16, u16) {
    let (plain, websockets) = (common::free_port(), common::free_port());
    let dir = std::env::temp_dir().join(format!("mhp-lambda-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\npersistence false\nwebsockets_headers_size 8192\n\
             listener {plain} 127.0.0.1\nlistener {websockets} 127.0.0.1\nprotocol websockets\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (scripts/test installs it)");
    for port in [plain, websockets] {
        let mut up = false;
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(up, "mosquitto did not listen on {port}");
    }
    (common::Proc(child), plain, websockets)
}

/// A loopback relay to `upstream` that keeps the first line each connection sends
/// (a WebSocket handshake's request line: the presigned URL).
async fn recording_relay(upstream: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let mut first = Vec::new();
                let mut byte = [0u8; 1];
                while client.read_exact(&mut byte).await.is_ok() {
                    first.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                seen.lock().await.push(String::from_utf8_lossy(&first).trim_end().to_owned());
                server.write_all(&first).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (port, lines)
}

#[tokio::test]
async fn a_request_that_waits_gets_the_device_s_reply_over_a_signed_websocket() {
    // GIVEN the function publishing to moto and waiting for replies over a WebSocket to mosquitto
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("replies");
    let (_mosquitto, plain, websockets) = mosquitto_with_websockets().await;
    let (relay, handshakes) = recording_relay(websockets).await;
    let (runtime_api, state) = start_emulator(vec![("req-1".to_owned(), event("response-timeout.json"))]).await;
    let url = format!("ws://127.0.0.1:{relay}/mqtt");
    let mut child = spawn_function(
        &runtime_api,
        &[
            ("CONFIG_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")),
            ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &moto),
            ("AWS_SDK_UA_APP_ID", &app),
            ("IOT_MQTT_URL", &url),
            ("AWS_SESSION_TOKEN", "the-role-s-session-token"),
        ],
    );

    // WHEN the device (this test, reading what AWS IoT was asked to publish) answers the
    // command on its response topic with its correlation data
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let command = loop {
        if let Some(command) = recorded(&moto, &app).await.into_iter().find(|r| r.topic() == "home/lamp") {
            break command;
        }
        assert!(tokio::time::Instant::now() < deadline, "the command never reached moto");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let response_topic = command.query("responseTopic").expect("the command names its response topic");
    let correlation = common::base64_decode(&command.headers["x-amz-mqtt5-correlation-data"]);
    assert!(response_topic.starts_with("replies/curl-x/"), "{response_topic}");
    assert_eq!(correlation.len(), 32, "the message id's 32 characters");
    let mut options = rumqttc::v5::MqttOptions::new("device-lamp", "127.0.0.1", plain);
    options.set_keep_alive(Duration::from_secs(5));
    let (device, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 8);
    let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
        correlation_data: Some(correlation.clone().into()),
        content_type: Some("text/plain".into()),
        user_properties: vec![("lamp".into(), "off".into())],
        ..Default::default()
    };
    device
        .publish_with_properties(
            &response_topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "lamp is off",
            properties,
        )
        .await
        .unwrap();
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    // THEN the invocation's answer is the reply
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Some((_, answer)) = state.lock().await.responses.first().cloned() {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer to the waiting request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().await.unwrap();
    let logs = logs_of(&mut child).await;
    assert_eq!(answer["statusCode"], 200, "{answer}\n{logs}");
    assert_eq!(answer["body"], "lamp is off");
    assert_eq!(answer["headers"]["content-type"], "text/plain");
    assert_eq!(answer["headers"]["x-message-id"].as_str().unwrap().as_bytes(), &correlation[..]);
    let properties = common::base64_decode(answer["headers"]["x-amz-mqtt5-user-properties"].as_str().unwrap());
    assert_eq!(properties, br#"[{"lamp":"off"}]"#);
    // AND the function's WebSocket handshake was presigned for AWS IoT, the session token after the signature
    let handshakes = handshakes.lock().await;
    let line = handshakes.first().expect("a WebSocket handshake");
    assert!(line.starts_with("GET /mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="), "{line}");
    assert!(line.contains("%2Fus-east-1%2Fiotdevicegateway%2Faws4_request"), "{line}");
    assert!(line.ends_with("&X-Amz-Security-Token=the-role-s-session-token HTTP/1.1"), "{line}");
    assert!(!logs.contains("the-role-s-session-token"), "no secret in a log line:\n{logs}");
}
