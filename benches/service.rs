//! The cost of one request inside the service, with no network: parse, Basic
//! auth (from the warm credential cache), ACL, quota, message, answer. The
//! publisher accepts at once. Prints figures; asserts nothing. Two requests
//! side by side: Tencent's example, and one that also carries AWS IoT's
//! property headers, W3C trace context and a browser's `Origin` (with `[cors]`).
//!
//!     cargo bench --bench service
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{BackendLimits, HttpRequest, RequestPath};
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use mqtt_http_publish::publish::{Message, PublishError, Publisher};
use mqtt_http_publish::service::Service;

/// Accepts every message at once: what is left is the service's own work.
struct Accept;

impl Publisher for Accept {
    fn limits(&self) -> BackendLimits {
        IOT_LIMITS
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        std::hint::black_box(message);
        Ok(())
    }
}

fn request() -> HttpRequest {
    request_with(&[])
}

/// AWS IoT's user properties, correlation data and payload format, trace context, an allowed origin.
const EVERY_HEADER: &[(&str, &str)] = &[
    ("x-amz-mqtt5-user-properties", "W3siZGV2aWNlTmFtZSI6ImFscGhhIn0seyJkZXZpY2VDbnQiOiI0NSJ9XQ=="),
    ("x-amz-mqtt5-correlation-data", "cmVxLTAwMDE="),
    ("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", "congo=t61rcWkgMzE"),
    ("origin", "http://127.0.0.1:9090"),
];

fn request_with(extra: &[(&'static str, &'static str)]) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic dXNlcjA6c2VjcmV0MA=="));
    for (name, value) in extra {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/home".into()),
        query: decode_query("qos=1&client_id=curl-x&retained=false").unwrap(),
        headers,
        body: Bytes::from_static(br#"{ "message": "Hello, world" }"#),
        source_ip: Some("203.0.113.7".parse().unwrap()),
        client_certificate: None,
    }
}

fn main() {
    let policy = Policy::from_toml(include_str!("../config/example.toml")).unwrap();
    let service = Service::new(Accept, policy);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        assert_eq!(service.handle(request()).await.status(), 200, "the first request warms the credential cache");
        for (name, extra) in
            [("Tencent's example", &[][..]), ("with AWS IoT's headers, traceparent, Origin", EVERY_HEADER)]
        {
            let mut samples: Vec<Duration> = Vec::with_capacity(100_000);
            for _ in 0..100_000 {
                let request = request_with(extra);
                let started = Instant::now();
                let response = service.handle(request).await;
                samples.push(started.elapsed());
                assert_eq!(response.status(), 200);
            }
            samples.sort();
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            println!(
                "service: per request, no network, {name}: median {:.2} us, p99 {:.2} us over {}",
                at(0.5),
                at(0.99),
                samples.len()
            );
        }
    });
}
