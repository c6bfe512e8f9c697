//! docs/api.md, "Same answer for unknown user and wrong password": the same answer, in
//! the same time. Both take the slow path, never the credential cache (only a
//! verified password is cached): a wrong password costs one argon2id of the
//! user's hash, an unknown user one argon2id of the dummy hash, which has the
//! parameters `passwd` uses (the example config's user0 was hashed by it). The
//! two kinds of request alternate, so that drift in the machine's speed falls on
//! both alike. Prints the medians and their ratio (target: within 10 %); asserts
//! only that the answers are the 401s they should be.
//!
//!     cargo bench --bench auth_timing [-- SAMPLES]     (default 150 of each)
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

/// Never reached: both requests are refused before the publish.
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

/// user0 (in the example config) with a wrong password, and user9 (not in it).
const WRONG_PASSWORD: &str = "Basic dXNlcjA6c2VjcmV0MQ==";
const UNKNOWN_USER: &str = "Basic dXNlcjk6c2VjcmV0MQ==";

fn request(authorization: &'static str) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static(authorization));
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/home".into()),
        query: decode_query("qos=1&client_id=curl-x&retained=false").unwrap(),
        headers,
        body: Bytes::from_static(br#"{ "message": "Hello, world" }"#),
        // No address: what is timed is the hashes, not the per-address budget of
        // password checks, which would answer 429 after its burst.
        source_ip: None,
        client_certificate: None,
    }
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// One refused request: how long it took, and the body of the 401.
async fn answer(service: &Service<Accept>, authorization: &'static str) -> (Duration, Bytes) {
    let started = Instant::now();
    let response = service.handle(request(authorization)).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 401);
    (elapsed, response.into_body())
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(150);
    let policy = Policy::from_toml(include_str!("../config/example.toml")).unwrap();
    let service = Service::new(Accept, policy);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let answer = |authorization| answer(&service, authorization);
        // A warm-up of each, and the check that the two bodies are the same.
        let (_, unknown_body) = answer(UNKNOWN_USER).await;
        let (_, wrong_body) = answer(WRONG_PASSWORD).await;
        assert_eq!(unknown_body, wrong_body, "the two answers differ");

        let (mut unknown, mut wrong) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count * 2 {
            // Alternate which goes first, so neither always follows the other.
            let first_unknown = (i / 2) % 2 == 0;
            let kind = if (i % 2 == 0) == first_unknown { UNKNOWN_USER } else { WRONG_PASSWORD };
            let (elapsed, _) = answer(kind).await;
            if kind == UNKNOWN_USER {
                unknown.push(elapsed)
            } else {
                wrong.push(elapsed)
            }
        }
        let (u, w) = (median_ms(&mut unknown), median_ms(&mut wrong));
        let ratio = u / w;
        println!(
            "auth timing: unknown user median {u:.2} ms, wrong password median {w:.2} ms, ratio {ratio:.3} \
             ({:+.1} %, target within 10 %) over {count} of each",
            (ratio - 1.0) * 100.0
        );
    });
}
