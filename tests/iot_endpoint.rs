//! The account's AWS IoT data endpoint, found with `DescribeEndpoint` when none
//! is configured: against moto's IoT control plane (the real call, signed), and
//! against a loopback control plane of the suite's own that fails once, to show
//! that a failed lookup is a 503 and that the next request looks again.

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

/// A control plane of the suite's own: the first lookup gets IoT's 500, the
/// next ones `answer` as the endpoint's address.
async fn flaky_control_plane(answer: String) -> (String, Arc<AtomicUsize>) {
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
                    let (status, headers, body) = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        let failure = r#"{"message":"Internal failure"}"#.to_owned();
                        (500, vec![("x-amzn-ErrorType", "InternalFailureException")], failure)
                    } else {
                        (200, vec![], serde_json::json!({ "endpointAddress": answer }).to_string())
                    };
                    let mut headers = headers;
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

#[tokio::test]
async fn a_publisher_without_an_endpoint_looks_it_up_once_and_a_failed_lookup_is_503_and_tried_again() {
    // GIVEN no endpoint configured, and a control plane that fails once, then names moto
    // (with its scheme: moto speaks plain HTTP, where AWS's endpoints are hosts on HTTPS)
    let moto = moto_url();
    start_recording(&moto).await;
    let (control_plane, lookups) = flaky_control_plane(moto.clone()).await;
    let app = unique_app_name("discovered-endpoint");
    let settings = IotSettings {
        endpoint: IotEndpoint::Discover { control_plane: Some(control_plane) },
        ..IotSettings::default()
    };
    let service = example_service(IotPublisher::new(&sdk_for(&app).await, &settings));

    // WHEN the first request meets the failed lookup
    let first = publish(&service).await;
    // THEN it is a 503 to retry, and nothing was published
    assert_eq!(first["statusCode"], 503, "{first}");
    assert_eq!(first["headers"]["retry-after"], "5");
    assert!(recorded(&moto, &app).await.is_empty());

    // WHEN two more requests come
    let second = publish(&service).await;
    let third = publish(&service).await;
    // THEN the second looked again and both published to the endpoint found, with one lookup between them
    assert_eq!((second["statusCode"].as_u64(), third["statusCode"].as_u64()), (Some(200), Some(200)));
    assert_eq!(lookups.load(Ordering::SeqCst), 2, "the failed lookup and the one that found it; none after");
    let topics: Vec<String> = recorded(&moto, &app).await.iter().map(|r| r.topic()).collect();
    assert_eq!(topics, ["home", "home"]);
}

#[test]
fn the_environment_picks_the_endpoint_as_the_readme_says() {
    // One test owns these variables: the suite's other tests never read them from the environment.
    let clear = || {
        for name in ["IOT_DATA_ENDPOINT", "AWS_ENDPOINT_URL_IOT_DATA_PLANE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT"]
        {
            std::env::remove_var(name);
        }
    };
    clear();
    assert_eq!(IotSettings::from_env().endpoint, IotEndpoint::Discover { control_plane: None });
    std::env::set_var("AWS_ENDPOINT_URL_IOT", "http://127.0.0.1:9");
    assert_eq!(
        IotSettings::from_env().endpoint,
        IotEndpoint::Discover { control_plane: Some("http://127.0.0.1:9".into()) }
    );
    std::env::set_var("AWS_ENDPOINT_URL_IOT_DATA_PLANE", "http://127.0.0.1:9");
    assert_eq!(IotSettings::from_env().endpoint, IotEndpoint::Sdk);
    std::env::set_var("IOT_DATA_ENDPOINT", "abc-ats.iot.eu-west-1.amazonaws.com");
    assert_eq!(IotSettings::from_env().endpoint, IotEndpoint::Given("abc-ats.iot.eu-west-1.amazonaws.com".into()));
    clear();
}
