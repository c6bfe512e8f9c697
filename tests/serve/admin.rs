//! The admin listener's metrics, health and readiness, and a flood of password
//! checks.

use std::time::Duration;

use crate::common::{free_port, request, Wire};
use crate::support::{
    base64_of, last_json_error, mosquitto, peak_rss_kib, post, raw, rss_kib, serve, serve_with_config, temp_dir,
    write_config, USER0,
};

async fn get(url: &str, path: &str) -> Wire {
    request(url, "GET", path, &[], b"").await
}

/// The value of the sample `name` (with its labels) in `/metrics`, 0 if absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_that_move_health_and_readiness() {
    let (broker, port) = mosquitto("admin").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = temp_dir("admin");
    let config = write_config(&dir, "[limits]\npassword_checks_per_second = 0.01\npassword_check_burst = 3\n");
    let serve = serve(Some(port), &["--admin-listen", &admin, "--config", config.to_str().unwrap()]).await;
    let admin = format!("http://{admin}");
    assert_eq!(get(&admin, "/healthz").await.status(), 200);
    assert_eq!(get(&admin, "/readyz").await.status(), 200);
    let not_found = get(&admin, "/topics/x").await;
    assert_eq!(not_found.status(), 404);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&not_found.body).unwrap()["error"], "not_found");

    let before = get(&admin, "/metrics").await;
    assert_eq!(before.headers["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let before = String::from_utf8(before.body).unwrap();
    let ok = r#"mqtt_http_publish_requests_total{status="200",code="ok"}"#;
    let wrong = r#"mqtt_http_publish_requests_total{status="401",code="authentication_failed"}"#;
    let refused = r#"mqtt_http_publish_requests_total{status="429",code="too_many_login_attempts"}"#;
    let hits = "mqtt_http_publish_credential_cache_hits_total";
    let hashes = "mqtt_http_publish_password_hashes_total";
    // WHEN three requests publish, and one source sends four wrong passwords
    for _ in 0..3 {
        assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"m").await.status(), 200);
    }
    let bad = ("authorization", "Basic dXNlcjA6d3Jvbmc=");
    let answers: Vec<u16> = statuses_in_turn(&serve.url, bad, 4).await;
    // THEN the source's budget of three checks (one spent on the readiness probe's
    // first login) passes two to the hash and refuses the rest before it
    assert_eq!(answers, [401, 401, 429, 429]);
    // AND answers given before the service are counted too: malformed HTTP, a body over the limit
    assert_eq!(last_json_error(&raw(&serve.url, b"GARBAGE\r\n\r\n").await).0, 400);
    let head = b"POST /topics/home HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n";
    assert_eq!(last_json_error(&raw(&serve.url, head).await).0, 413);
    let malformed = r#"mqtt_http_publish_requests_total{status="400",code="malformed_request"}"#;
    let too_large = r#"mqtt_http_publish_requests_total{status="413",code="payload_too_large"}"#;
    let after = String::from_utf8(get(&admin, "/metrics").await.body).unwrap();
    assert_eq!(sample(&after, malformed) - sample(&before, malformed), 1.0, "{after}");
    assert_eq!(sample(&after, too_large) - sample(&before, too_large), 1.0, "{after}");
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    let messages = "mqtt_http_publish_messages_published_total";
    assert_eq!(sample(&after, messages) - sample(&before, messages), 3.0, "{after}");
    assert_eq!(sample(&after, wrong) - sample(&before, wrong), 2.0);
    assert_eq!(sample(&after, refused) - sample(&before, refused), 2.0);
    assert_eq!(sample(&after, hits) - sample(&before, hits), 3.0, "user0 was verified by the readiness probe");
    assert_eq!(sample(&after, hashes) - sample(&before, hashes), 2.0, "no hash for the refused");
    assert_eq!(sample(&after, r#"mqtt_http_publish_refusals_total{kind="password_checks"}"#), 2.0);
    assert!(sample(&after, "mqtt_http_publish_publish_duration_seconds_count") >= 3.0, "{after}");
    assert_eq!(sample(&after, "mqtt_http_publish_publishes_in_flight"), 0.0);
    let pool = sample(&after, "mqtt_http_publish_broker_connections");
    assert!(pool >= 1.0);
    assert_eq!(sample(&after, "mqtt_http_publish_broker_connections_up"), pool);
    // No label carries a topic or a user.
    assert!(!after.contains("home") && !after.contains("user0"), "{after}");

    // WHEN the broker goes away, THEN readiness says so (and liveness does not change)
    drop(broker);
    let mut ready = 200;
    for _ in 0..100 {
        ready = get(&admin, "/readyz").await.status();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503);
    assert_eq!(get(&admin, "/healthz").await.status(), 200);
    let down = String::from_utf8(get(&admin, "/metrics").await.body).unwrap();
    assert_eq!(sample(&down, "mqtt_http_publish_broker_connections_up"), 0.0, "{down}");
}

/// The statuses of `n` requests with `authorization`, one after another.
async fn statuses_in_turn(url: &str, authorization: (&str, &str), n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(post(url, "/topics/home", &[authorization], b"m").await.status());
    }
    statuses
}

#[tokio::test]
async fn a_flood_of_password_checks_does_not_grow_the_process_beyond_the_hashes_running() {
    // GIVEN a budget large enough that 96 wrong passwords (argon2id, 19 MiB each) are all hashed
    let dir = temp_dir("hash-memory");
    let config = write_config(&dir, "[limits]\npassword_checks_per_second = 1000\npassword_check_burst = 1000\n");
    let serve = serve_with_config(&config).await;
    // Its steady state: code pages and the heap after the first login's hash was freed.
    let steady = rss_kib(serve.proc.0.id());
    let flood = (0..32).map(|c| {
        let url = serve.url.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                let auth = format!("Basic {}", base64_of(&format!("user0:wrong-{c}-{i}")));
                assert_eq!(post(&url, "/topics/home", &[("authorization", &auth)], b"").await.status(), 401);
            }
        })
    });
    for client in flood.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    // THEN the process peaked at the hashes running at once (one per core) and its steady state,
    // not at a 19 MiB buffer kept by each thread that ever ran one
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let peak = peak_rss_kib(serve.proc.0.id());
    assert!(
        peak < steady + cores * 20 * 1024 + 4 * 1024,
        "VmHWM {peak} KiB after 96 argon2id checks, from {steady} KiB steady"
    );
}
