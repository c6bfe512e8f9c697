//! Every status and error code of the contract, through the service with
//! the in-process fakes: what a request earns, and that only a 200 publishes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::Service;
use crate::config::source::ConfigStore;
use crate::contract::query::decode_query;
use crate::contract::{BackendLimits, ClientCertificate, ErrorCode, HttpRequest, Qos, RequestPath};
use crate::fakes::{FakePublisher, FakeStore};
use crate::publish::iot::IOT_LIMITS;
use crate::publish::PublishError;

/// user0 / secret0 (bcrypt at its lowest cost: the unit tests stay fast) may publish
/// under `home/`, except `home/secret`; each user has one message a second.
fn config() -> String {
    let hash = bcrypt::hash("secret0", 4).unwrap();
    format!(
        r#"
    [[users]]
    username = "user0"
    password_hash = "{hash}"

    [[rules]]
    priority = 10
    effect = "deny"
    topics = ["home/secret"]

    [[rules]]
    priority = 20
    effect = "allow"
    topics = ["home/#"]

    [limits]
    max_payload_bytes = 64
    user_messages_per_second = 1.0
"#
    )
}
const USER0: &str = "Basic dXNlcjA6c2VjcmV0MA==";

struct Case {
    path: &'static str,
    query: &'static str,
    authorization: Option<&'static str>,
    certificate: Option<Option<&'static str>>,
    method: Method,
    body: &'static [u8],
    /// Headers besides Authorization.
    headers: &'static [(&'static str, &'static str)],
}

const POST: Case = Case {
    path: "/topics/home/kitchen",
    query: "",
    authorization: Some(USER0),
    certificate: None,
    method: Method::POST,
    body: b"21.5",
    headers: &[],
};

impl Case {
    fn request(&self) -> HttpRequest {
        let mut headers = HeaderMap::new();
        if let Some(value) = self.authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        for (name, value) in self.headers {
            headers.append(*name, HeaderValue::from_static(value));
        }
        HttpRequest {
            method: self.method.clone(),
            path: RequestPath::Encoded(self.path.into()),
            query: decode_query(self.query).unwrap(),
            headers,
            body: Bytes::from_static(self.body),
            source_ip: None,
            client_certificate: self.certificate.map(|cn| ClientCertificate { common_name: cn.map(str::to_owned) }),
        }
    }
}

fn fake_service() -> (Service<FakePublisher>, FakePublisher, Arc<FakeStore>) {
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&config()));
    (Service::with_store(publisher.clone(), Arc::clone(&store) as Arc<dyn ConfigStore>), publisher, store)
}

/// The status and the JSON body's `error` (empty for a 200).
async fn answer(service: &Service<FakePublisher>, request: HttpRequest) -> (u16, String) {
    let response = service.handle(request).await;
    let status = response.status().as_u16();
    if status == 200 {
        assert!(response.headers().contains_key("x-message-id"));
        return (status, String::new());
    }
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_error_code_of_the_contract_is_reached_and_only_a_200_publishes() {
    let mut reached = requests_each_earn_their_code().await;
    reached.extend(quotas_and_limits_of_the_broker().await);
    reached.extend(what_the_backend_says().await);
    reached.extend(idempotency_keys().await);
    reached.extend(waiting_for_replies().await);
    reached.extend(stores_down_and_undecodable_events().await);
    // Only the serve connection layer answers the rest (tested in serve::parse_errors).
    let everything: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    let connection_layer = BTreeSet::from(["malformed_request".to_owned(), "headers_too_large".to_owned()]);
    assert_eq!(&everything - &connection_layer, reached, "every code the service answers with is reached here");
}

/// One request per code, each on a service of its own: only the 200 publishes.
async fn requests_each_earn_their_code() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    let requests: Vec<(Case, u16, &str)> = vec![
        (POST, 200, ""),
        (Case { path: "/home", ..POST }, 400, "invalid_path"),
        (Case { path: "/topics/home%2B", ..POST }, 400, "invalid_topic"),
        (Case { query: "qos=2", ..POST }, 400, "invalid_qos"),
        (Case { query: "retained=maybe", ..POST }, 400, "invalid_retained"),
        (Case { query: "client_id=a%20b", ..POST }, 400, "invalid_client_id"),
        (Case { query: "qos=1&QoS=0", ..POST }, 400, "conflicting_parameter"),
        (Case { query: "UserProp.1.Key=a", ..POST }, 400, "invalid_user_property"),
        (Case { query: "PayloadFormatIndicator=2", ..POST }, 400, "invalid_payload_format_indicator"),
        (Case { query: "ContentType=text%09plain", ..POST }, 400, "invalid_content_type"),
        (Case { headers: &[("origin", "https://elsewhere.example")], ..POST }, 403, "origin_not_allowed"),
        (Case { query: "MessageExpiryInterval=-1", ..POST }, 400, "invalid_message_expiry_interval"),
        (Case { query: "ResponseTopic=a/%2B", ..POST }, 400, "invalid_response_topic"),
        (Case { headers: &[("x-amz-mqtt5-correlation-data", "!!")], ..POST }, 400, "invalid_correlation_data"),
        (Case { query: "PayloadFormatIndicator=1", body: b"\xff", ..POST }, 400, "invalid_payload"),
        (Case { authorization: None, ..POST }, 401, "missing_credentials"),
        (Case { authorization: Some("Basic xx"), ..POST }, 401, "invalid_authorization_header"),
        (Case { authorization: Some("Bearer x"), ..POST }, 401, "unsupported_authorization_scheme"),
        (Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST }, 401, "authentication_failed"),
        (Case { authorization: None, certificate: Some(None), ..POST }, 401, "certificate_without_common_name"),
        (
            Case { authorization: None, certificate: Some(Some("device-7")), query: "client_id=device-8", ..POST },
            401,
            "client_id_mismatch",
        ),
        (Case { path: "/topics/home/secret", ..POST }, 401, "not_authorized"),
        (Case { path: "/topics/garden", ..POST }, 401, "not_authorized"),
        (Case { method: Method::GET, ..POST }, 405, "method_not_allowed"),
        (Case { body: &[b'x'; 65], ..POST }, 413, "payload_too_large"),
    ];
    let mut published = 0;
    for (case, status, code) in requests {
        // A service each: the per-user quota (one a second) must not decide these.
        let (service, publisher, _) = fake_service();
        let path = case.path;
        assert_eq!(answer(&service, case.request()).await, (status, code.to_owned()), "{path}");
        published += usize::from(status == 200);
        assert_eq!(publisher.sent().len(), usize::from(status == 200), "{code}: only a 200 publishes");
        if status != 200 {
            reached.insert(code.to_owned());
        }
    }
    assert_eq!(published, 1);
    reached
}

/// The quotas, a broker without retain, and the budget of password checks.
async fn quotas_and_limits_of_the_broker() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    // Over the user's quota: 429 with Retry-After, nothing published.
    let (service, publisher, _) = fake_service();
    assert_eq!(answer(&service, POST.request()).await.0, 200);
    let response = service.handle(POST.request()).await;
    assert_eq!((response.status().as_u16(), &response.headers()[header::RETRY_AFTER]), (429, &"1".parse().unwrap()));
    assert_eq!(publisher.sent().len(), 1);
    reached.insert("too_many_requests".into());

    // A retained message the broker cannot keep (its CONNACK said Retain Available = 0).
    let publisher = FakePublisher::with_limits(BackendLimits { retain_available: false, ..IOT_LIMITS });
    let service = Service::with_store(publisher.clone(), FakeStore::new(&config()) as Arc<dyn ConfigStore>);
    let retained = Case { query: "retained=true", ..POST };
    assert_eq!(answer(&service, retained.request()).await, (400, "retain_not_supported".to_owned()));
    assert_eq!(answer(&service, POST.request()).await.0, 200, "without retain it publishes");
    reached.insert("retain_not_supported".into());

    // Password checks from one address beyond its budget: 429 before the hash.
    let budget = "password_checks_per_second = 0.01\npassword_check_burst = 1\n";
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&(config() + budget)));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    let from = |case: Case, ip: &str| HttpRequest { source_ip: Some(ip.parse().unwrap()), ..case.request() };
    let wrong = || Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST };
    assert_eq!(answer(&service, from(wrong(), "192.0.2.1")).await.1, "authentication_failed");
    let response = service.handle(from(wrong(), "192.0.2.1")).await;
    assert_eq!((response.status().as_u16(), &response.headers()[header::RETRY_AFTER]), (429, &"100".parse().unwrap()));
    assert_eq!(answer(&service, from(POST, "192.0.2.1")).await.1, "too_many_login_attempts", "uncached: refused too");
    assert_eq!(answer(&service, from(POST, "192.0.2.2")).await.0, 200, "another address is not refused");
    // The verified password is cached: no check needed, so it passes authentication
    // (and meets the user's one-a-second quota, which the 200 above spent).
    assert_eq!(answer(&service, from(POST, "192.0.2.1")).await.1, "too_many_requests");
    reached.insert("too_many_login_attempts".into());
    reached
}

/// What the backend answers, mapped to the contract.
async fn what_the_backend_says() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    // What the backend says, mapped.
    for (failure, status, code) in [
        (PublishError::Rejected("bad".into()), 400, "rejected_by_broker"),
        (PublishError::TooLarge { max_payload: Some(10) }, 413, "payload_too_large"),
        (PublishError::Throttled("slow down".into()), 429, "too_many_requests"),
        (PublishError::Unavailable("gone".into()), 503, "service_unavailable"),
        (PublishError::Unknown("no PUBACK".into()), 503, "service_unavailable"),
        (PublishError::Failed("AccessDenied".into()), 500, "internal_error"),
    ] {
        let (service, publisher, _) = fake_service();
        publisher.fail_with(failure);
        assert_eq!(answer(&service, POST.request()).await, (status, code.to_owned()));
        reached.insert(code.to_owned());
    }
    reached
}

/// `Idempotency-Key`: malformed, reused for another request, asked while in flight.
async fn idempotency_keys() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    // Idempotency-Key: malformed; used for another request; asked while the first is in flight.
    let (service, _, _) = fake_service();
    let mut request = POST.request();
    request.headers.insert("idempotency-key", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
    assert_eq!(answer(&service, request).await, (400, "invalid_idempotency_key".to_owned()));
    let keyed = Case { headers: &[("idempotency-key", "k1")], ..POST };
    assert_eq!(answer(&service, keyed.request()).await.0, 200);
    let other_body = Case { body: b"22.0", ..keyed };
    assert_eq!(answer(&service, other_body.request()).await, (422, "idempotency_key_reused".to_owned()));
    let (service, publisher, _) = fake_service(); // the user's quota, spent above, is one a second
    publisher.hang();
    let service = Arc::new(service);
    let in_flight = Case { headers: &[("idempotency-key", "k2")], ..POST };
    let first = tokio::spawn({
        let (service, request) = (Arc::clone(&service), in_flight.request());
        async move { service.handle(request).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = service.handle(in_flight.request()).await;
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(answer(&service, in_flight.request()).await, (409, "request_in_progress".to_owned()));
    first.abort();
    assert!(publisher.sent().is_empty());
    reached.extend(["invalid_idempotency_key", "idempotency_key_reused", "request_in_progress"].map(String::from));
    reached
}

/// `ResponseTimeout`: what refuses a wait before anything is published.
async fn waiting_for_replies() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    // ResponseTimeout: out of range, beyond what the deadline leaves, on a topic the
    // caller may not receive on, beyond max_waiting, and without a reply connection.
    let (service, publisher, _) = fake_service();
    let waits = |query| Case { query, ..POST };
    assert_eq!(answer(&service, waits("ResponseTimeout=61").request()).await, (400, "invalid_response_timeout".into()));
    let soon = Some(tokio::time::Instant::now() + Duration::from_secs(3));
    let response = service.handle_by(waits("ResponseTimeout=5").request(), soon).await;
    assert_eq!(response.status(), 400, "a Lambda deadline 3 s away allows 2 s");
    assert!(std::str::from_utf8(response.body()).unwrap().contains("at most 2 s"));
    assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (401, "not_authorized".into()));
    assert!(publisher.sent().is_empty());
    let receive = "\n[[rules]]\npriority = 30\neffect = \"allow\"\ntopics = [\"replies/${client_id}/#\"]\nactions = [\"subscribe\"]\n";
    let full = config().replace("[limits]", &format!("{receive}\n[limits]\nmax_waiting = 0"));
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&full));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (503, "too_many_waiting".into()));
    let (publisher, store) =
        (FakePublisher::new(), FakeStore::new(&config().replace("[limits]", &format!("{receive}\n[limits]"))));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (503, "service_unavailable".into()));
    assert_eq!(service.waiting(), 0, "a refused wait leaves its place");
    assert!(publisher.sent().is_empty(), "nothing is published without a subscription for its reply");
    reached.extend(["invalid_response_timeout", "too_many_waiting"].map(String::from));
    // Only a broker's reply (or its absence) answers these: tests/serve/replies.rs.
    reached.extend(["reply_timeout", "reply_too_large"].map(String::from));
    reached
}

/// A batch over its limit, the config store down, and events an entry point cannot decode.
async fn stores_down_and_undecodable_events() -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    // A batch over its limit of messages: 413 for the whole request, nothing published.
    let publisher = FakePublisher::new();
    let many = Case {
        path: "/messages",
        body: br#"[{"topic":"home/a","payload":"x"},{"topic":"home/a","payload":"x"}]"#,
        ..POST
    };
    let full = config().replace("[limits]", "[limits]\nmax_batch_messages = 1");
    let service = Service::with_store(publisher.clone(), FakeStore::new(&full) as Arc<dyn ConfigStore>);
    assert_eq!(answer(&service, many.request()).await, (413, "payload_too_large".to_owned()));
    assert!(publisher.sent().is_empty());

    // The config store down: 503, never 401.
    let (service, publisher, store) = fake_service();
    store.set_down(true);
    assert_eq!(answer(&service, POST.request()).await, (503, "service_unavailable".to_owned()));
    assert!(publisher.sent().is_empty());

    // invalid_query and invalid_body come from decoding what an entry point received.
    let event = |query: &str, body: &str| {
        serde_json::from_value(serde_json::json!({
            "version": "2.0", "rawPath": "/topics/home", "rawQueryString": query,
            "headers": {"authorization": USER0}, "body": body, "isBase64Encoded": true,
            "requestContext": {"http": {"method": "POST", "sourceIp": "203.0.113.7"}, "stage": "$default"}
        }))
        .unwrap()
    };
    let (service, publisher, _) = fake_service();
    for (query, body, code) in [("a=%ff", "MjEuNQ==", "invalid_query"), ("", "not base64!", "invalid_body")] {
        let response = crate::lambda::handle(&service, event(query, body), None).await.unwrap();
        let response = serde_json::to_value(response).unwrap();
        assert_eq!(response["statusCode"], 400);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(response["body"].as_str().unwrap()).unwrap()["error"],
            code
        );
        reached.insert(code.to_owned());
    }
    assert!(publisher.sent().is_empty());
    reached
}

#[tokio::test]
async fn a_refused_login_is_held_for_the_delay_and_nothing_else_is() {
    let budget = "password_checks_per_second = 0.01\npassword_check_burst = 1\n";
    let delay = Duration::from_millis(300);
    let service =
        Service::with_store(FakePublisher::new(), FakeStore::new(&(config() + budget)) as Arc<dyn ConfigStore>)
            .with_login_refusal_delay(delay);
    let from = |case: Case| HttpRequest { source_ip: Some("192.0.2.1".parse().unwrap()), ..case.request() };
    let wrong = || Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST };
    let timed = |request| async {
        let started = Instant::now();
        let answer = answer(&service, request).await;
        (answer.1, started.elapsed())
    };
    let (code, took) = timed(from(wrong())).await;
    assert!(code == "authentication_failed" && took < delay, "{code} in {took:?}");
    let (code, took) = timed(from(wrong())).await;
    assert!(code == "too_many_login_attempts" && took >= delay, "{code} in {took:?}");
    let (code, took) = timed(from(Case { authorization: None, ..POST })).await;
    assert!(code == "missing_credentials" && took < delay, "{code} in {took:?}");
}

#[tokio::test]
async fn a_200_publishes_the_message_as_asked() {
    let (service, publisher, _) = fake_service();
    let case =
        Case { query: "qos=0&retained=true&ContentType=text%2Fplain&UserProp.1.Key=k&UserProp.1.Value=v", ..POST };
    assert_eq!(answer(&service, case.request()).await.0, 200);
    let sent = publisher.sent();
    let message = &sent[0];
    assert_eq!((message.topic.as_str(), message.qos, message.retain), ("home/kitchen", Qos::AtMostOnce, true));
    assert_eq!(message.payload, Bytes::from_static(b"21.5"));
    assert_eq!(message.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(message.properties.user_properties, [("k".to_owned(), "v".to_owned())]);
}

#[tokio::test]
async fn aws_iot_headers_and_trace_context_become_user_properties_in_order() {
    let (service, publisher, _) = fake_service();
    // base64 of [{"deviceName":"alpha"},{"deviceCnt":"45"}]
    let case = Case {
        query: "messageExpiry=60&contentType=application%2Fjson&UserProp.1.Key=k&UserProp.1.Value=v",
        headers: &[
            ("x-amz-mqtt5-user-properties", "W3siZGV2aWNlTmFtZSI6ImFscGhhIn0seyJkZXZpY2VDbnQiOiI0NSJ9XQ=="),
            ("x-amz-mqtt5-correlation-data", "cmVxLTE="),
            ("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        ..POST
    };
    assert_eq!(answer(&service, case.request()).await.0, 200);
    let p = publisher.sent()[0].properties.clone();
    let props: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        props,
        [
            ("deviceName", "alpha"),
            ("deviceCnt", "45"),
            ("k", "v"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]
    );
    assert_eq!(p.correlation_data.as_deref(), Some(&b"req-1"[..]));
    assert_eq!((p.payload_format_indicator, p.message_expiry_interval), (Some(1), Some(60)));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    let broken_trace = Case { headers: &[("traceparent", "00-zz-00f067aa0ba902b7-01")], ..POST };
    let (service, publisher, _) = fake_service();
    assert_eq!(answer(&service, broken_trace.request()).await.0, 200, "an invalid traceparent is no error");
    assert!(publisher.sent()[0].properties.user_properties.is_empty(), "and is not forwarded");
}

#[tokio::test]
async fn publish_message_id_property_carries_the_answer_s_message_id_last() {
    let config = format!("{}\n[publish]\nmessage_id_property = \"message-id\"\n", config());
    let publisher = FakePublisher::new();
    let service = Service::with_store(publisher.clone(), FakeStore::new(&config) as Arc<dyn ConfigStore>);
    let case = Case {
        query: "UserProp.1.Key=k&UserProp.1.Value=v",
        headers: &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        ..POST
    };
    let response = service.handle(case.request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-message-id"].to_str().unwrap().to_owned();
    let props = publisher.sent()[0].properties.user_properties.clone();
    let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["k", "traceparent", "message-id"]);
    assert_eq!(props[2].1, id, "the id the caller was answered with");
    let (service, publisher, _) = fake_service();
    assert_eq!(answer(&service, POST.request()).await.0, 200);
    assert!(publisher.sent()[0].properties.user_properties.is_empty(), "not without [publish]");
}

#[tokio::test]
async fn cors_preflights_and_answers_follow_the_config() {
    const PAGE: &str = "http://127.0.0.1:9090";
    let with_cors = format!("{}\n[cors]\nallowed_origins = [\"{PAGE}\"]\nmax_age_seconds = 60\n", config());
    let publisher = FakePublisher::new();
    let service = Service::with_store(publisher.clone(), FakeStore::new(&with_cors) as Arc<dyn ConfigStore>);
    let preflight = Case {
        method: Method::OPTIONS,
        authorization: None,
        headers: &[("origin", PAGE), ("access-control-request-method", "POST")],
        ..POST
    };
    let response = service.handle(preflight.request()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "no credentials needed");
    assert_eq!(response.headers()["access-control-max-age"], "60");
    let elsewhere = Case {
        method: Method::OPTIONS,
        authorization: None,
        headers: &[("origin", "http://localhost:9090"), ("access-control-request-method", "POST")],
        ..POST
    };
    assert_eq!(service.handle(elsewhere.request()).await.status(), StatusCode::METHOD_NOT_ALLOWED);
    for (case, status) in [
        (Case { headers: &[("origin", PAGE)], ..POST }, StatusCode::OK),
        (Case { headers: &[("origin", PAGE)], authorization: None, ..POST }, StatusCode::UNAUTHORIZED),
    ] {
        let response = service.handle(case.request()).await;
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["access-control-allow-origin"], PAGE, "{status}");
        assert_eq!(
            response.headers()["access-control-expose-headers"],
            "X-Message-Id, Retry-After, Idempotent-Replayed, x-amz-mqtt5-user-properties, x-amz-mqtt5-payload-format-indicator"
        );
        assert!(!response.headers().contains_key("access-control-allow-credentials"));
    }
    assert_eq!(publisher.sent().len(), 1, "only the 200 published");
    let (service, ..) = fake_service();
    assert_eq!(service.handle(preflight.request()).await.status(), StatusCode::METHOD_NOT_ALLOWED, "no [cors]");
}

/// The answer's status, `X-Message-Id` and `Idempotent-Replayed`.
async fn keyed_answer(service: &Service<FakePublisher>, case: &Case) -> (u16, String, String) {
    let response = service.handle(case.request()).await;
    let header = |name: &str| response.headers().get(name).map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), header("x-message-id"), header("idempotent-replayed"))
}

#[tokio::test]
async fn a_retry_with_the_same_key_answers_the_first_answer_and_publishes_nothing() {
    let (service, publisher, _) = fake_service();
    let keyed = Case { headers: &[("idempotency-key", "order-17")], ..POST };
    let (status, first_id, replayed) = keyed_answer(&service, &keyed).await;
    assert_eq!((status, replayed.as_str()), (200, ""));
    let sent = publisher.sent();
    assert_eq!(
        sent[0].properties.user_properties,
        vec![("message-id".to_owned(), first_id.clone())],
        "a keyed message carries its id"
    );
    // Within the user's one-a-second quota: a replay spends none.
    for _ in 0..3 {
        assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id.clone(), "true".into()));
    }
    // The trace context is no part of the fingerprint; the same key under another user is another key.
    let traced = Case { headers: &[("idempotency-key", "order-17"), ("traceparent", TRACEPARENT)], ..keyed };
    assert_eq!(keyed_answer(&service, &traced).await, (200, first_id.clone(), "true".into()));
    assert_eq!(publisher.sent().len(), 1);
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_key_never_skips_authentication_or_the_acl_and_refusals_release_it() {
    let (service, publisher, _) = fake_service();
    let headers: &'static [(&str, &str)] = &[("idempotency-key", "k")];
    let wrong = Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), headers, ..POST };
    assert_eq!(keyed_answer(&service, &wrong).await.0, 401);
    let denied = Case { path: "/topics/home/secret", headers, ..POST };
    assert_eq!(keyed_answer(&service, &denied).await.0, 401);
    // A 4xx from the broker, a 503 before anything was sent, a 429: the key stays free.
    for (failure, status) in
        [(PublishError::Rejected("no".into()), 400), (PublishError::Unavailable("down".into()), 503)]
    {
        publisher.fail_with(failure);
        assert_eq!(keyed_answer(&service, &Case { headers, ..POST }).await.0, status);
        tokio::time::sleep(Duration::from_millis(1100)).await; // the user's quota: one a second
    }
    publisher.recover();
    let (status, first_id, _) = keyed_answer(&service, &Case { headers, ..POST }).await;
    assert_eq!(status, 200, "the key was never held");
    let quota_refused = Case { headers: &[("idempotency-key", "k3")], ..POST };
    assert_eq!(keyed_answer(&service, &quota_refused).await.0, 429, "the user's quota is spent");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, id, replayed) = keyed_answer(&service, &quota_refused).await;
    assert_eq!((status, replayed.as_str()), (200, ""), "the 429 released the key");
    assert_ne!(id, first_id);
    assert_eq!(publisher.sent().len(), 2);
}

/// A keyed request whose publish's outcome never came (`why`), and its answer.
async fn keyed_with_an_unknown_outcome(
    why: &'static str,
) -> (Service<FakePublisher>, FakePublisher, Case, (u16, String, String)) {
    let (service, publisher, _) = fake_service();
    let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
    publisher.fail_with(PublishError::Unknown(why.into()));
    let answer = keyed_answer(&service, &keyed).await;
    (service, publisher, keyed, answer)
}

#[tokio::test]
async fn an_unknown_outcome_republishes_under_the_first_id() {
    let (service, publisher, keyed, (status, first_id, _)) = keyed_with_an_unknown_outcome("no PUBACK in time").await;
    assert_eq!(status, 503);
    publisher.recover();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, id, replayed) = keyed_answer(&service, &keyed).await;
    assert_eq!((status, replayed.as_str()), (200, "unknown-outcome"));
    assert_eq!(id, first_id, "the retry publishes under the first request's id");
    assert_eq!(publisher.sent()[0].properties.user_properties, vec![("message-id".to_owned(), first_id.clone())]);
    assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id, "true".into()));
    assert_eq!(publisher.sent().len(), 1);
}

#[tokio::test]
async fn a_retry_of_an_unknown_outcome_that_cannot_publish_keeps_it_unknown_for_the_next() {
    let (service, publisher, keyed, (_, first_id, _)) =
        keyed_with_an_unknown_outcome("the connection went before PUBACK").await;
    // The retry takes the key over, and is refused before sending: quota, then a broker away.
    assert_eq!(keyed_answer(&service, &keyed).await.0, 429, "the user's one message a second was spent");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publisher.fail_with(PublishError::Unavailable("not connected to the broker".into()));
    assert_eq!(keyed_answer(&service, &keyed).await.0, 503);
    a_retry_publishes_again_under(&service, &publisher, &keyed, first_id).await;
}

/// Once the backend is back and the user's quota refilled, a retry with `keyed`'s
/// key publishes again under `first_id`, answered as an unknown outcome.
async fn a_retry_publishes_again_under(
    service: &Service<FakePublisher>,
    publisher: &FakePublisher,
    keyed: &Case,
    first_id: String,
) {
    publisher.recover();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(keyed_answer(service, keyed).await, (200, first_id.clone(), "unknown-outcome".into()));
    assert_eq!(publisher.sent()[0].properties.user_properties, vec![("message-id".to_owned(), first_id)]);
}

#[tokio::test]
async fn a_request_may_not_set_the_message_id_property_itself() {
    let (service, publisher, _) = fake_service();
    let forged =
        Case { query: "UserProp.1.Key=message-id&UserProp.1.Value=X", headers: &[("idempotency-key", "k")], ..POST };
    assert_eq!(answer(&service, forged.request()).await, (400, "invalid_user_property".to_owned()));
    let unkeyed = Case { query: "UserProp.1.Key=message-id&UserProp.1.Value=X", ..POST };
    assert_eq!(answer(&service, unkeyed.request()).await.0, 200, "without a key or the config, the name is free");
    assert_eq!(publisher.sent().len(), 1);
    let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(keyed_answer(&service, &keyed).await.2, "", "the 400 held no key");
}

#[tokio::test]
async fn a_deadline_mid_publish_leaves_the_key_s_outcome_unknown() {
    let (service, publisher, _) = fake_service();
    let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
    publisher.hang();
    let soon = tokio::time::Instant::now() + Duration::from_millis(100);
    let response = service.handle_by(keyed.request(), Some(soon)).await;
    assert_eq!(response.status(), 503);
    let first_id = response.headers()["x-message-id"].to_str().unwrap().to_owned();
    a_retry_publishes_again_under(&service, &publisher, &keyed, first_id).await;
}

#[tokio::test]
async fn a_key_store_that_is_down_refuses_keyed_requests_only() {
    let (service, publisher, _) = fake_service();
    let service = service.with_key_store(Arc::new(crate::idempotency::memory::DownKeys));
    let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
    assert_eq!(answer(&service, keyed.request()).await, (503, "service_unavailable".to_owned()));
    assert_eq!(answer(&service, POST.request()).await.0, 200, "a request without a key is unaffected");
    assert_eq!(publisher.sent().len(), 1);
}

#[tokio::test]
async fn an_answer_due_before_the_backend_answers_is_503() {
    let (service, publisher, _) = fake_service();
    publisher.hang();
    let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
    let response = service.handle_by(POST.request(), Some(soon)).await;
    assert_eq!(response.status().as_u16(), 503, "{response:?}");
    assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    assert!(publisher.sent().is_empty());
}

/// A batch's JSON answer: its status and each entry's (index, status, error).
async fn batch(service: &Service<FakePublisher>, body: &'static [u8]) -> (u16, Vec<(u64, u64, String)>) {
    let response = service.handle(Case { path: "/messages", body, ..POST }.request()).await;
    let status = response.status().as_u16();
    let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    let entries = json["results"].as_array().unwrap_or_else(|| panic!("{json}"));
    let entries = entries
        .iter()
        .map(|e| {
            let error = e["error"].as_str().unwrap_or("").to_owned();
            assert_eq!(e["message_id"].is_string(), error.is_empty() || e["status"] == 503, "{e}");
            (e["index"].as_u64().unwrap(), e["status"].as_u64().unwrap(), error)
        })
        .collect();
    (status, entries)
}

#[tokio::test]
async fn a_batch_answers_each_message_as_a_single_publish_would_and_publishes_only_the_200s() {
    let unlimited = config().replace("user_messages_per_second = 1.0", "");
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&unlimited));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    let body = br#"[{"topic": "home/a", "payload": "1"}, {"topic": "home/secret", "payload": "2"},
        {"topic": "home/+", "payload": "3"}, {"topic": "home/a", "payload": "4", "qos": 2},
        {"topic": "home/b", "payload": "AAEC", "payload_encoding": "base64"},
        {"topic": "home/a", "payload": "0123456789012345678901234567890123456789012345678901234567890123456789"},
        {"topic": "home/a", "payload": "7"}]"#;
    let (status, entries) = batch(&service, body).await;
    assert_eq!(status, 207);
    let expected = [
        (0, 200, ""),
        (1, 401, "not_authorized"),
        (2, 400, "invalid_topic"),
        (3, 400, "invalid_qos"),
        (4, 200, ""),
        (5, 413, "payload_too_large"),
        (6, 200, ""),
    ];
    assert_eq!(entries, expected.map(|(i, s, e)| (i, s, e.to_owned())).to_vec());
    let sent: Vec<(String, Vec<u8>)> =
        publisher.sent().iter().map(|m| (m.topic.as_str().to_owned(), m.payload.to_vec())).collect();
    let home_a: Vec<_> = sent.iter().filter(|(t, _)| t == "home/a").map(|(_, p)| p.clone()).collect();
    assert_eq!(home_a, vec![b"1".to_vec(), b"7".to_vec()], "one topic's messages in order");
    assert!(sent.contains(&("home/b".to_owned(), vec![0, 1, 2])));
    assert_eq!(sent.len(), 3, "only the 200s were published");

    let (status, entries) = batch(&service, br#"[{"topic": "home/a", "payload": "1"}]"#).await;
    assert_eq!((status, entries), (200, vec![(0, 200, String::new())]));
    publisher.fail_with(PublishError::Unknown("no PUBACK".into()));
    let (status, entries) = batch(&service, br#"[{"topic": "home/a", "payload": "1"}]"#).await;
    assert_eq!((status, entries), (207, vec![(0, 503, "service_unavailable".to_owned())]));
}

#[tokio::test]
async fn a_batch_the_quota_cannot_admit_whole_is_refused_whole() {
    let (service, publisher, _) = fake_service();
    let two = br#"[{"topic": "home/a", "payload": "1"}, {"topic": "home/b", "payload": "2"}]"#;
    let response = service.handle(Case { path: "/messages", body: two, ..POST }.request()).await;
    assert_eq!(response.status(), 413, "two messages are over a burst of one: never admitted");
    let one = br#"[{"topic": "home/a", "payload": "1"}]"#;
    assert_eq!(batch(&service, one).await.0, 200);
    let response = service.handle(Case { path: "/messages", body: one, ..POST }.request()).await;
    assert_eq!((response.status().as_u16(), response.headers().contains_key(header::RETRY_AFTER)), (429, true));
    assert_eq!(publisher.sent().len(), 1);
}

/// A batch with `Idempotency-Key: key`: its status and each entry's (status, message id).
async fn keyed_batch(
    service: &Service<FakePublisher>,
    key: &'static str,
    body: &'static [u8],
) -> (u16, Vec<(u64, String)>) {
    let mut request = Case { path: "/messages", body, ..POST }.request();
    request.headers.insert("idempotency-key", HeaderValue::from_static(key));
    let response = service.handle(request).await;
    let status = response.status().as_u16();
    let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    let Some(entries) = json["results"].as_array() else { return (status, vec![(0, json["error"].to_string())]) };
    let entries = entries
        .iter()
        .map(|e| (e["status"].as_u64().unwrap(), e["message_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    (status, entries)
}

#[tokio::test]
async fn a_batch_s_retry_with_its_key_answers_the_first_results_and_publishes_nothing_twice() {
    let unlimited = config().replace("user_messages_per_second = 1.0", "");
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&unlimited));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    let body = br#"[{"topic": "home/a", "payload": "1"}, {"topic": "home/secret", "payload": "2"},
                    {"topic": "home/b", "payload": "3"}]"#;
    let (status, first) = keyed_batch(&service, "batch-1", body).await;
    assert_eq!(status, 207);
    assert_eq!(first.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![200, 401, 200]);
    assert_eq!(publisher.sent().len(), 2);
    let (status, retry) = keyed_batch(&service, "batch-1", body).await;
    assert_eq!((status, &retry), (207, &first), "the same answers, the same message ids");
    assert_eq!(publisher.sent().len(), 2, "nothing published again");
    let other = br#"[{"topic": "home/a", "payload": "other"}]"#;
    assert_eq!(keyed_batch(&service, "batch-1", other).await.0, 422, "another batch under the key");

    // Unknown outcome: a retry publishes that message again, under its first id.
    publisher.fail_with(PublishError::Unknown("no PUBACK".into()));
    let one = br#"[{"topic": "home/c", "payload": "4"}]"#;
    let (status, lost) = keyed_batch(&service, "batch-2", one).await;
    assert_eq!((status, lost[0].0), (207, 503));
    assert!(!lost[0].1.is_empty(), "the id it may have been published under");
    publisher.recover();
    let (status, again) = keyed_batch(&service, "batch-2", one).await;
    assert_eq!((status, &again), (200, &vec![(200, lost[0].1.clone())]));
    assert_eq!(publisher.sent().len(), 3);

    // Certainly not published the first time: a retry publishes nothing new.
    publisher.fail_with(PublishError::Throttled("slow down".into()));
    let (status, throttled) = keyed_batch(&service, "batch-3", one).await;
    assert_eq!((status, throttled[0].0), (207, 429));
    publisher.recover();
    let (status, retry) = keyed_batch(&service, "batch-3", one).await;
    assert_eq!((status, retry[0].0), (207, 503));
    assert_eq!(publisher.sent().len(), 3);
}

#[tokio::test]
async fn a_batch_cut_by_its_deadline_answers_what_was_not_sent_as_not_published() {
    let unlimited = config().replace("user_messages_per_second = 1.0", "");
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&unlimited));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    publisher.hang();
    let body = br#"[{"topic": "home/a", "payload": "1"}, {"topic": "home/a", "payload": "2"}]"#;
    let by = tokio::time::Instant::now() + Duration::from_millis(600);
    let response = service.handle_by(Case { path: "/messages", body, ..POST }.request(), Some(by)).await;
    assert!(tokio::time::Instant::now() < by, "answered before the deadline");
    assert_eq!(response.status(), 207);
    let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    let entries = json["results"].as_array().unwrap();
    assert_eq!((entries[0]["status"].as_u64(), entries[1]["status"].as_u64()), (Some(503), Some(503)));
    assert!(entries[0]["message_id"].is_string(), "sent, unconfirmed: it may have been published");
    assert!(entries[1]["message_id"].is_null(), "never sent: {}", entries[1]);
    assert!(entries[1]["message"].as_str().unwrap().contains("not published"), "{}", entries[1]);
}

#[tokio::test]
async fn each_message_of_a_batch_carries_its_own_id_when_message_id_property_is_on() {
    let config =
        config().replace("user_messages_per_second = 1.0", "") + "\n[publish]\nmessage_id_property = \"mid\"\n";
    let (publisher, store) = (FakePublisher::new(), FakeStore::new(&config));
    let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
    let body = br#"[{"topic": "home/a", "payload": "1"}, {"topic": "home/b", "payload": "2"},
                    {"topic": "home/c", "payload": "3", "properties": {"UserProperties": [{"key": "mid", "value": "x"}]}}]"#;
    let response = service.handle(Case { path: "/messages", body, ..POST }.request()).await;
    let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    let entries = json["results"].as_array().unwrap();
    assert_eq!(entries[2]["error"], "invalid_user_property", "the server sets that property: {json}");
    for message in publisher.sent() {
        let index = usize::from(message.topic.as_str() == "home/b");
        let carried: Vec<&str> =
            message.properties.user_properties.iter().filter(|(k, _)| k == "mid").map(|(_, v)| v.as_str()).collect();
        assert_eq!(carried, vec![entries[index]["message_id"].as_str().unwrap()], "{json}");
    }
    assert_eq!(publisher.sent().len(), 2);
}
