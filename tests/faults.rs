//! The IoT backend failing in ways moto cannot: a loopback server of the suite
//! answers the Publish call with chosen statuses and `x-amzn-ErrorType`
//! values, or never answers. Each maps as SPEC §4 says, and only a real
//! success answers 200.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
