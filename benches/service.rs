//! The cost of one request inside the service, with no network: parse, Basic
//! auth (from the warm credential cache), ACL, quota, message, answer. The
//! publisher accepts at once. Prints figures; asserts nothing.
//!
//!     cargo bench --bench service

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
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic dXNlcjA6c2VjcmV0MA=="));
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
        let mut samples: Vec<Duration> = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let request = request();
            let started = Instant::now();
            let response = service.handle(request).await;
            samples.push(started.elapsed());
            assert_eq!(response.status(), 200);
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!(
            "service: per request, no network: median {:.2} us, p99 {:.2} us over {}",
            at(0.5),
            at(0.99),
            samples.len()
        );
    });
}
