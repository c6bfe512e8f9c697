//! The IoT backend failing in ways moto cannot: a loopback server of the suite
//! answers the Publish call with chosen statuses and `x-amzn-ErrorType`
//! values, or never answers. Each maps as docs/aws.md says, and only a real
//! success answers 200.
//!
//! The last test mixes every fault under concurrent requests and checks that
//! nothing was lost: the payloads answered 200 are exactly the payloads the
//! backend answered with success. A 5xx never claims the message was not
//! delivered (a backend may accept a publish and lose its answer, as AWS IoT
//! may when a call times out): the caller retries, and MQTT's at-least-once
//! allows the duplicate. A 200 always claims it was delivered.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{example_service, iot_publisher, moto_url, read_message, unique_app_name, write_response};
use mqtt_http_publish::lambda;
use mqtt_http_publish::publish::iot::IotSettings;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpListener;

/// How the fault server answers every request.
#[derive(Clone)]
enum Answer {
    Status { status: u16, error_type: Option<&'static str>, body: &'static str },
    Hang,
}

/// Starts the fault server; returns its URL and a count of requests it received.
async fn fault_server(answer: Answer) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (answer, seen) = (answer.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(_request)) = read_message(&mut reader).await {
                    seen.fetch_add(1, Ordering::SeqCst);
                    match &answer {
                        Answer::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Answer::Status { status, error_type, body } => {
                            let mut headers = vec![("content-type", "application/json")];
                            if let Some(t) = error_type {
                                headers.push(("x-amzn-ErrorType", t));
                            }
                            headers.push(("x-amzn-RequestId", "fault-server"));
                            if write_response(&mut write, *status, &headers, body.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (url, count)
}

/// Small timeouts so the hang case ends quickly; the defaults are tested for their bound below.
fn quick() -> IotSettings {
    IotSettings {
        connect_timeout: Duration::from_millis(500),
        attempt_timeout: Duration::from_millis(400),
        total_timeout: Duration::from_millis(1_000),
        ..IotSettings::default()
    }
}

async fn publish_example_1(endpoint: &str) -> Value {
    moto_url(); // the AWS variables must be set, even though this endpoint is not moto
    let app = unique_app_name("fault");
    let service = example_service(iot_publisher(endpoint, &app, quick()).await);
    let event = serde_json::from_str(include_str!("../events/example-1-basic-auth.json")).unwrap();
    serde_json::to_value(lambda::handle(&service, event, None).await.unwrap()).unwrap()
}

fn error_code(response: &Value) -> String {
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

async fn answer_for(status: u16, error_type: Option<&'static str>, body: &'static str) -> Value {
    let (url, count) = fault_server(Answer::Status { status, error_type, body }).await;
    let response = publish_example_1(&url).await;
    assert!(count.load(Ordering::SeqCst) >= 1, "the publisher must have called the backend");
    response
}

#[tokio::test]
async fn throttling_exception_is_429_with_retry_after() {
    let r = answer_for(429, Some("ThrottlingException"), r#"{"message":"Rate exceeded"}"#).await;
    assert_eq!(r["statusCode"], 429);
    assert_eq!(r["headers"]["retry-after"], "1");
    assert_eq!(error_code(&r), "too_many_requests");
}

#[tokio::test]
async fn invalid_request_exception_is_400() {
    let r = answer_for(400, Some("InvalidRequestException"), r#"{"message":"bad topic"}"#).await;
    assert_eq!((r["statusCode"].as_u64(), error_code(&r).as_str()), (Some(400), "rejected_by_broker"));
}

#[tokio::test]
async fn a_bare_503_is_503_with_retry_after() {
    let r = answer_for(503, None, "").await;
    assert_eq!(r["statusCode"], 503);
    assert_eq!(r["headers"]["retry-after"], "5");
}

#[tokio::test]
async fn a_bare_500_is_500_without_internals() {
    let r = answer_for(500, None, "stack trace: secret internals").await;
    assert_eq!(r["statusCode"], 500);
    let body = r["body"].as_str().unwrap();
    assert!(!body.contains("secret") && !body.contains("500 X"), "{body}");
    assert_eq!(error_code(&r), "internal_error");
}

#[tokio::test]
async fn internal_failure_exception_is_a_backend_fault_503_with_retry_after() {
    // IoT's own 500, which the SDK has already retried: worth a retry later, not our bug.
    let r = answer_for(500, Some("InternalFailureException"), r#"{"message":"internal failure"}"#).await;
    assert_eq!(r["statusCode"], 503);
    assert_eq!(r["headers"]["retry-after"], "5");
    assert_eq!(error_code(&r), "service_unavailable");
}

#[tokio::test]
async fn our_own_missing_permission_is_500_not_the_callers_fault() {
    let r = answer_for(403, Some("UnauthorizedException"), r#"{"message":"not authorized"}"#).await;
    assert_eq!(r["statusCode"], 500);
}

#[tokio::test]
async fn request_entity_too_large_without_a_modelled_variant_is_413() {
    let r = answer_for(413, Some("RequestEntityTooLargeException"), r#"{"message":"too big"}"#).await;
    assert_eq!(r["statusCode"], 413);
}

#[tokio::test]
async fn an_unmodelled_error_is_mapped_by_its_raw_status() {
    assert_eq!(answer_for(429, None, "").await["statusCode"], 429);
    assert_eq!(answer_for(400, None, "").await["statusCode"], 400);
    assert_eq!(answer_for(504, None, "").await["statusCode"], 503);
    assert_eq!(answer_for(418, None, "").await["statusCode"], 500);
}

#[tokio::test]
async fn a_hanging_backend_is_503_within_the_timeout() {
    let (url, _) = fault_server(Answer::Hang).await;
    let started = Instant::now();
    let r = publish_example_1(&url).await;
    assert_eq!(r["statusCode"], 503);
    assert_eq!(r["headers"]["retry-after"], "5");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the total timeout: {:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_backend_is_503() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let r = publish_example_1(&format!("http://127.0.0.1:{port}")).await;
    assert_eq!(r["statusCode"], 503);
}

#[test]
fn default_timeouts_answer_well_inside_api_gateways_29_seconds() {
    let s = IotSettings::default();
    assert!(s.total_timeout <= Duration::from_secs(10));
    assert!(s.attempt_timeout * s.max_attempts <= s.total_timeout + s.attempt_timeout);
}

/// What the mixed backend does with one message, named by the payload's first word,
/// so the test knows each message's fate before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// Success at once.
    Accept,
    /// ThrottlingException on every attempt.
    Throttle,
    /// InternalFailureException on every attempt.
    Fail,
    /// No answer, ever, and not accepted: the client must time out.
    Hang,
    /// ThrottlingException on the first attempt, success on the SDK's retry.
    ThrottleThenAccept,
    /// Accepted, then the answer is lost (the backend hangs): delivered, yet the client sees a timeout.
    AcceptThenHang,
}

const FATES: [Fate; 6] =
    [Fate::Accept, Fate::Throttle, Fate::Fail, Fate::Hang, Fate::ThrottleThenAccept, Fate::AcceptThenHang];

impl Fate {
    fn of(payload: &str) -> Fate {
        let name = payload.split('-').next().unwrap_or_default();
        *FATES.iter().find(|f| format!("{f:?}") == name).unwrap_or_else(|| panic!("no fate in {payload:?}"))
    }

    /// The one answer the caller may get, as docs/aws.md maps the backend's.
    fn expected_status(self) -> u64 {
        match self {
            Fate::Accept | Fate::ThrottleThenAccept => 200,
            Fate::Throttle => 429,
            Fate::Fail | Fate::Hang | Fate::AcceptThenHang => 503,
        }
    }
}

/// What the mixed backend did, by payload.
#[derive(Default)]
struct Ledger {
    /// Attempts received.
    attempts: HashMap<String, u32>,
    /// Answered with success: the backend accepted it and said so.
    acknowledged: BTreeSet<String>,
    /// Accepted, answer lost.
    accepted_unanswered: BTreeSet<String>,
}

/// A backend in IoT's wire format that treats each publish as its payload's [`Fate`] says.
async fn mixed_fault_server() -> (String, Arc<Mutex<Ledger>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let book = Arc::clone(&ledger);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let book = Arc::clone(&book);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(request)) = read_message(&mut reader).await {
                    let payload = String::from_utf8(request.body).unwrap();
                    let fate = Fate::of(&payload);
                    let attempt = {
                        let mut book = book.lock().unwrap();
                        let attempt = book.attempts.entry(payload.clone()).or_default();
                        *attempt += 1;
                        *attempt
                    };
                    let throttled = (429, "ThrottlingException", r#"{"message":"Rate exceeded"}"#);
                    let failed = (500, "InternalFailureException", r#"{"message":"internal failure"}"#);
                    let (status, error_type, body) = match (fate, attempt) {
                        (Fate::Accept, _) | (Fate::ThrottleThenAccept, 2..) => {
                            // Booked before the answer is written: once the client can read a
                            // success, the ledger already holds it.
                            book.lock().unwrap().acknowledged.insert(payload);
                            (200, "", "{}")
                        }
                        (Fate::Throttle, _) | (Fate::ThrottleThenAccept, _) => throttled,
                        (Fate::Fail, _) => failed,
                        (Fate::Hang, _) => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        (Fate::AcceptThenHang, _) => {
                            book.lock().unwrap().accepted_unanswered.insert(payload);
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let mut headers = vec![("content-type", "application/json"), ("x-amzn-RequestId", "fault-server")];
                    if !error_type.is_empty() {
                        headers.push(("x-amzn-ErrorType", error_type));
                    }
                    if write_response(&mut write, status, &headers, body.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, ledger)
}

/// Example 1 with `payload` as its body.
fn event_with_body(payload: &str) -> lambda::Event {
    let mut event: Value = serde_json::from_str(include_str!("../events/example-1-basic-auth.json")).unwrap();
    event["body"] = Value::String(payload.to_owned());
    event["isBase64Encoded"] = Value::Bool(false);
    event["headers"]["content-length"] = Value::String(payload.len().to_string());
    serde_json::from_value(event).unwrap()
}

#[tokio::test]
async fn under_concurrent_mixed_faults_the_200s_are_exactly_the_publishes_the_backend_acknowledged() {
    // GIVEN a backend that accepts, throttles, fails and hangs by message, and timeouts
    // generous enough that a prompt answer is never mistaken for a hang on a busy machine
    moto_url();
    let (url, ledger) = mixed_fault_server().await;
    let settings = IotSettings {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(1_500),
        total_timeout: Duration::from_secs(4),
        ..IotSettings::default()
    };
    assert_eq!(settings.max_attempts, 2, "ThrottleThenAccept relies on the one retry the defaults allow");
    let service = Arc::new(example_service(iot_publisher(&url, &unique_app_name("mixed"), settings).await));

    // WHEN eight messages of each fate are published at once
    let payloads: Vec<String> = FATES.iter().flat_map(|f| (0..8).map(move |i| format!("{f:?}-{i}"))).collect();
    let mut requests = tokio::task::JoinSet::new();
    for payload in payloads.clone() {
        let service = Arc::clone(&service);
        requests.spawn(async move {
            let response = lambda::handle(&service, event_with_body(&payload), None).await.unwrap();
            (payload, serde_json::to_value(response).unwrap()["statusCode"].as_u64().unwrap())
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(answer) = requests.join_next().await {
        let (payload, status) = answer.unwrap();
        answers.insert(payload, status);
    }

    // THEN each caller got the answer its backend outcome maps to
    let wrong: Vec<_> = answers.iter().filter(|(p, s)| Fate::of(p).expected_status() != **s).collect();
    assert!(wrong.is_empty(), "answers that do not match the backend's outcome: {wrong:?}");
    let ledger = ledger.lock().unwrap();
    assert!(payloads.iter().all(|p| ledger.attempts.contains_key(p)), "every message reached the backend");
    let retried = |p: &String| Fate::of(p) == Fate::ThrottleThenAccept && ledger.attempts[p] == 2;
    assert_eq!(payloads.iter().filter(|p| retried(p)).count(), 8, "each throttled first attempt was retried once");
    // AND the 200s are exactly the backend's acknowledged publishes: no 200 without one,
    // no acknowledged publish answered otherwise
    let ok: BTreeSet<String> = answers.iter().filter(|(_, s)| **s == 200).map(|(p, _)| p.clone()).collect();
    assert_eq!(ok, ledger.acknowledged);
    assert_eq!(ok.len(), 16, "Accept and ThrottleThenAccept, eight each");
    // AND the only messages delivered without a 200 are those whose answer was lost:
    // they were answered 503, which promises nothing either way
    let delivered_without_200: BTreeSet<&String> = ledger.accepted_unanswered.difference(&ok).collect();
    assert!(delivered_without_200.iter().all(|p| Fate::of(p) == Fate::AcceptThenHang && answers[*p] == 503));
    assert_eq!(delivered_without_200.len(), 8);
    // AND a hang that never accepted left nothing accepted
    assert!(!ledger.acknowledged.iter().chain(&ledger.accepted_unanswered).any(|p| Fate::of(p) == Fate::Hang));
}

/// A backend that, until `answer` is set, holds its first Publish unanswered and
/// every later one too, or answers them with `meanwhile` (status, `x-amzn-ErrorType`);
/// once set, it answers 200. It keeps every request it received.
async fn switch_server(
    meanwhile: Option<(u16, &'static str)>,
) -> (String, Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Vec<common::Wire>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (answering, kept) = (Arc::clone(&answer), Arc::clone(&received));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (answering, kept) = (Arc::clone(&answering), Arc::clone(&kept));
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(request)) = read_message(&mut reader).await {
                    let first = {
                        let mut kept = kept.lock().unwrap();
                        kept.push(request);
                        kept.len() == 1
                    };
                    let (status, error_type) = match (answering.load(Ordering::SeqCst), meanwhile) {
                        (true, _) => (200, None),
                        (false, Some((status, error_type))) if !first => (status, Some(error_type)),
                        (false, _) => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let mut headers = vec![("content-type", "application/json"), ("x-amzn-RequestId", "switch-server")];
                    headers.extend(error_type.map(|t| ("x-amzn-ErrorType", t)));
                    if write_response(&mut write, status, &headers, b"{}").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, answer, received)
}

#[tokio::test]
async fn a_backend_timeout_then_a_retry_with_the_key_publishes_twice_under_one_message_id() {
    moto_url();
    let (url, answer, received) = switch_server(None).await;
    let service = example_service(iot_publisher(&url, &unique_app_name("unknown-outcome"), quick()).await);
    let event = || {
        let mut event: Value = serde_json::from_str(include_str!("../events/idempotency-key.json")).unwrap();
        event["requestContext"]["requestId"] = Value::String(unique_app_name("request"));
        serde_json::from_value::<lambda::Event>(event).unwrap()
    };

    // The backend takes the Publish and never answers: the outcome is unknown.
    let first = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!((first["statusCode"].as_u64(), error_code(&first).as_str()), (Some(503), "service_unavailable"));
    let id = first["headers"]["x-message-id"].as_str().expect("the id the message may carry").to_owned();
    let body: Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("may have been published"), "{body}");
    assert!(!received.lock().unwrap().is_empty(), "the Publish reached the backend");

    // The retry publishes again, under the same id, and says so.
    answer.store(true, Ordering::SeqCst);
    let retry = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(retry["statusCode"], 200, "{retry}");
    assert_eq!(retry["headers"]["x-message-id"], id.as_str());
    assert_eq!(retry["headers"]["idempotent-replayed"], "unknown-outcome");

    // Every Publish the backend saw, the timed-out attempts and the retry, carries the one id.
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 2, "{received:#?}");
    let carried: BTreeSet<String> = received
        .iter()
        .map(|r| String::from_utf8(common::base64_decode(&r.headers["x-amz-mqtt5-user-properties"])).unwrap())
        .collect();
    assert_eq!(carried, BTreeSet::from([format!(r#"[{{"message-id":"{id}"}}]"#)]));

    // Once delivered, the key answers from its record.
    let third = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(
        (third["statusCode"].as_u64(), third["headers"]["idempotent-replayed"].as_str()),
        (Some(200), Some("true"))
    );
    assert_eq!(third["headers"]["x-message-id"], id.as_str());
}

#[tokio::test]
async fn a_refusal_after_an_attempt_that_timed_out_is_an_unknown_outcome_not_a_release() {
    moto_url();
    // The SDK's first attempt times out; its second is refused as unavailable.
    let (url, answer, received) = switch_server(Some((503, "ServiceUnavailableException"))).await;
    let service = example_service(iot_publisher(&url, &unique_app_name("second-attempt"), quick()).await);
    let event = || {
        let mut event: Value = serde_json::from_str(include_str!("../events/idempotency-key.json")).unwrap();
        event["requestContext"]["requestId"] = Value::String(unique_app_name("request"));
        serde_json::from_value::<lambda::Event>(event).unwrap()
    };
    let first = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(first["statusCode"], 503, "{first}");
    assert_eq!(received.lock().unwrap().len(), 2, "two attempts: one that timed out, one refused");
    let id = first["headers"]["x-message-id"].as_str().expect("the first attempt may have published").to_owned();
    answer.store(true, Ordering::SeqCst);
    let retry = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(
        (retry["statusCode"].as_u64(), retry["headers"]["x-message-id"].as_str()),
        (Some(200), Some(id.as_str()))
    );
    assert_eq!(retry["headers"]["idempotent-replayed"], "unknown-outcome");
}

#[tokio::test]
async fn a_503_on_the_only_attempt_releases_the_key() {
    moto_url();
    let (url, count) = fault_server(Answer::Status {
        status: 503,
        error_type: Some("ServiceUnavailableException"),
        body: r#"{"message":"unavailable"}"#,
    })
    .await;
    let settings = IotSettings { max_attempts: 1, ..quick() };
    let service = example_service(iot_publisher(&url, &unique_app_name("released"), settings).await);
    let event = || serde_json::from_str::<lambda::Event>(include_str!("../events/idempotency-key.json")).unwrap();
    let first = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(first["statusCode"], 503);
    assert!(first["headers"]["x-message-id"].is_null(), "never sent: no id to name: {first}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let second = serde_json::to_value(lambda::handle(&service, event(), None).await.unwrap()).unwrap();
    assert_eq!(second["statusCode"], 503);
    assert_eq!(count.load(Ordering::SeqCst), 2, "the key was released: the retry tried the backend again, afresh");
    assert!(second["headers"]["idempotent-replayed"].is_null(), "{second}");
}
