//! The account's AWS IoT data endpoint, found with `DescribeEndpoint` when none
//! is configured: against moto's IoT control plane (the real call, signed), and
//! against a loopback control plane of the suite's own that throttles, fails or
//! refuses, to show what is tried again when, and that a failed lookup is a 503.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{example_service, moto_url, read_message, recorded, start_recording, unique_app_name, write_response};
use mqtt_http_publish::aws::{describe_iot_data_endpoint, sdk_config};
use mqtt_http_publish::lambda;
use mqtt_http_publish::publish::iot::{IotEndpoint, IotPublisher, IotSettings};
use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpListener;

async fn sdk_for(app: &str) -> aws_config::SdkConfig {
    sdk_config().await.into_builder().app_name(aws_config::AppName::new(app.to_owned()).unwrap()).build()
}

#[tokio::test]
async fn the_accounts_data_endpoint_is_asked_of_describe_endpoint_signed_for_iot() {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("describe-endpoint");
    let host = describe_iot_data_endpoint(&sdk_for(&app).await, Some(&moto), Duration::from_secs(4)).await.unwrap();
    let (prefix, rest) = host.split_once('.').unwrap();
    assert!(prefix.ends_with("-ats") && prefix.len() > 4, "the ATS endpoint of an account: {host}");
    assert_eq!(rest, "iot.us-east-1.amazonaws.com", "in the SDK config's Region: {host}");

    let sent = recorded(&moto, &app).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path_and_query.as_str()),
        ("GET", "/endpoint?endpointType=iot%3AData-ATS")
    );
    let authorization = &sent[0].headers["authorization"];
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=testing/")
            && authorization.contains("/us-east-1/iot/aws4_request"),
        "signed with SigV4 for the IoT control plane: {authorization}"
    );
}

/// A control plane of the suite's own: the first `failures` lookups get `status`
/// with `error_type` in AWS's wire format, the next ones `answer` as the endpoint's address.
async fn flaky_control_plane(
    failures: usize,
    status: u16,
    error_type: &'static str,
    answer: String,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (seen, answer) = (Arc::clone(&seen), answer.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Ok(Some(request)) = read_message(&mut reader).await {
                    assert_eq!(request.start_line, "GET /endpoint?endpointType=iot%3AData-ATS HTTP/1.1");
                    let (status, mut headers, body) = if seen.fetch_add(1, Ordering::SeqCst) < failures {
                        (status, vec![("x-amzn-ErrorType", error_type)], r#"{"message":"no"}"#.to_owned())
                    } else {
                        (200, vec![], serde_json::json!({ "endpointAddress": answer }).to_string())
                    };
                    headers.push(("content-type", "application/json"));
                    if write_response(&mut write, status, &headers, body.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, count)
}

async fn publish(service: &mqtt_http_publish::service::Service<IotPublisher>) -> Value {
    let event = serde_json::from_str(include_str!("../events/example-1-basic-auth.json")).unwrap();
    serde_json::to_value(lambda::handle(service, event, None).await.unwrap()).unwrap()
}

/// Three requests through a publisher whose endpoint `control_plane` names; their statuses,
/// the lookups the control plane saw, and the topics moto received.
async fn three_requests(control_plane: String, lookups: &AtomicUsize) -> (Vec<u64>, Vec<usize>, Vec<String>) {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("discovered-endpoint");
    let settings = IotSettings {
        endpoint: IotEndpoint::Discover { control_plane: Some(control_plane) },
        ..IotSettings::default()
    };
    let service = example_service(IotPublisher::new(&sdk_for(&app).await, &settings));
    let (mut statuses, mut seen) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let answer = publish(&service).await;
        if answer["statusCode"] == 503 {
            assert_eq!(answer["headers"]["retry-after"], "5", "{answer}");
        }
        statuses.push(answer["statusCode"].as_u64().unwrap());
        seen.push(lookups.load(Ordering::SeqCst));
    }
    (statuses, seen, recorded(&moto, &app).await.iter().map(|r| r.topic()).collect())
}

#[tokio::test]
async fn a_failed_lookup_is_tried_once_more_then_503_and_the_next_request_looks_again() {
    // GIVEN no endpoint configured, and a control plane that fails twice (IoT's 500), then
    // names moto (with its scheme: moto speaks plain HTTP, where AWS's endpoints are hosts on HTTPS)
    let (control_plane, lookups) = flaky_control_plane(2, 500, "InternalFailureException", moto_url()).await;
    let (statuses, seen, topics) = three_requests(control_plane, &lookups).await;
    // THEN the first request tried twice and got 503, publishing nothing; the second looked
    // again and published; the third used the endpoint found
    assert_eq!(statuses, [503, 200, 200]);
    assert_eq!(seen, [2, 3, 3]);
    assert_eq!(topics, ["home", "home"]);
}

#[tokio::test]
async fn a_throttled_lookup_is_tried_again_within_the_same_request() {
    let (control_plane, lookups) = flaky_control_plane(1, 429, "ThrottlingException", moto_url()).await;
    let (statuses, seen, topics) = three_requests(control_plane, &lookups).await;
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(seen, [2, 2, 2], "one throttled lookup, one that found it, none after");
    assert_eq!(topics, ["home", "home", "home"]);
}

#[tokio::test]
async fn a_refused_lookup_is_not_tried_again_within_the_request() {
    // Our own missing permission will not change in 300 ms: 503 at once, the next request looks again.
    let (control_plane, lookups) = flaky_control_plane(1, 403, "AccessDeniedException", moto_url()).await;
    let (statuses, seen, _) = three_requests(control_plane, &lookups).await;
    assert_eq!(statuses, [503, 200, 200]);
    assert_eq!(seen, [1, 2, 2]);
}

#[test]
fn the_environment_picks_the_endpoint_as_the_readme_says() {
    let settings = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        IotSettings::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).endpoint
    };
    assert_eq!(settings(&[]), IotEndpoint::Discover { control_plane: None });
    let local = "http://127.0.0.1:9";
    assert_eq!(
        settings(&[("AWS_ENDPOINT_URL_IOT", local)]),
        IotEndpoint::Discover { control_plane: Some(local.into()) }
    );
    assert_eq!(
        settings(&[("AWS_ENDPOINT_URL_IOT", local), ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", local)]),
        IotEndpoint::Sdk
    );
    assert_eq!(settings(&[("AWS_ENDPOINT_URL", local)]), IotEndpoint::Sdk);
    let given = "abc-ats.iot.eu-west-1.amazonaws.com";
    assert_eq!(
        settings(&[("AWS_ENDPOINT_URL", local), ("IOT_DATA_ENDPOINT", given)]),
        IotEndpoint::Given(given.into())
    );
    assert_eq!(settings(&[("IOT_DATA_ENDPOINT", "")]), IotEndpoint::Discover { control_plane: None }, "empty is unset");
}
