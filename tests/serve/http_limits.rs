//! Requests over a limit, or malformed: 413, 431, 400 and 429 with JSON, and a
//! client that stalls in its headers.

use std::time::Duration;

use crate::support::{last_json_error, post, raw, serve, serve_with_config, temp_dir, write_config, USER0};

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_json_declared_or_chunked() {
    let serve = serve(None, &[]).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    let response = post(&serve.url, "/topics/big", &[USER0], &big).await;
    assert_eq!(response.status(), 413);
    // A 10 MB declared length is answered at once, from the header alone.
    let host = serve.url.trim_start_matches("http://").to_owned();
    let head = |framing: &str| {
        format!("POST /topics/big HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\n{framing}\r\n\r\n", USER0.1)
    };
    let answer = raw(&serve.url, head("content-length: 10485760").as_bytes()).await;
    assert_eq!(last_json_error(&answer), (413, "payload_too_large".into()), "{answer}");
    // Chunked, the body is cut at the limit: under a 1000-byte limit, the third 400-byte chunk passes it.
    let dir = temp_dir("chunked");
    let config = write_config(&dir, "[limits]\nmax_payload_bytes = 1000\n");
    let small = serve_with_config(&config).await;
    let host = small.url.trim_start_matches("http://").to_owned();
    // The body is read only for a caller who may publish: this one may.
    let mut chunked = format!(
        "POST /topics/home HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        USER0.1
    )
    .into_bytes();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", 400).as_bytes());
        chunked.extend_from_slice(&[b'y'; 400]);
        chunked.extend_from_slice(b"\r\n");
    }
    let answer = raw(&small.url, &chunked).await;
    assert_eq!(last_json_error(&answer), (413, "payload_too_large".into()), "{answer}");
    // Within the limit, the same chunked framing publishes.
    let mut fits = format!(
        "POST /topics/home HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n",
        USER0.1
    )
    .into_bytes();
    fits.extend_from_slice(b"190\r\n");
    fits.extend_from_slice(&[b'y'; 400]);
    fits.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw(&small.url, &fits).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn the_embedded_broker_s_payload_limit_is_413_and_does_not_drop_the_shared_connection() {
    // GIVEN a config that allows 4 MiB, more than the embedded broker's 1 MiB.
    let dir = temp_dir("embedded-limit");
    let config = write_config(&dir, "[limits]\nmax_payload_bytes = 4194304\n");
    let serve = serve_with_config(&config).await;
    let mib = 1024 * 1024;
    // A full 1 MiB payload with a long topic and properties is taken (the broker sent PUBACK).
    let long_topic =
        format!("/topics/home/{}?UserProp.1.Key=k&UserProp.1.Value={}", "t".repeat(4000), "v".repeat(4000));
    assert_eq!(post(&serve.url, &long_topic, &[USER0], &vec![b'x'; mib]).await.status(), 200);
    // One byte more is 413, answered here rather than by the broker dropping the connection...
    let head = format!(
        "POST /topics/home HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: {}\r\n\r\n",
        USER0.1,
        mib + 1
    );
    let over = raw(&serve.url, head.as_bytes()).await;
    assert_eq!(last_json_error(&over), (413, "payload_too_large".into()), "{over}");
    // ...so the next caller is served at once, not 503 while serve reconnects.
    assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"next").await.status(), 200);
}

#[tokio::test]
async fn oversized_headers_are_431_with_json() {
    let serve = serve(None, &[]).await;
    let huge = "x".repeat(20 * 1024);
    let response = post(&serve.url, "/topics/a", &[USER0, ("x-padding", &huge)], b"").await;
    assert_eq!(response.status(), 431);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(json["error"], "headers_too_large");
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(response.headers["content-length"], response.body.len().to_string());
    // Too many headers (hyper reads at most 100) is the same answer.
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(&serve.url, format!("POST /topics/a HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(last_json_error(&answer), (431, "headers_too_large".into()), "{answer}");
}

#[tokio::test]
async fn malformed_http_is_400_with_json_even_after_a_good_request_on_the_connection() {
    let serve = serve(None, &[]).await;
    for garbage in ["GARBAGE\r\n\r\n", "POST /topics/a HTTP/9.9\r\n\r\n", "POST /topics/a HTTP/1.1\r\nno colon\r\n\r\n"]
    {
        let answer = raw(&serve.url, garbage.as_bytes()).await;
        assert_eq!(last_json_error(&answer), (400, "malformed_request".into()), "{garbage:?}: {answer}");
    }
    // Keep-alive: the first request is answered by the service, the second by the parser.
    let answer = raw(
        &serve.url,
        format!(
            "POST /topics/a HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-length: 2\r\n\r\nhi\
             POST /topics/a HTTP/1.1\r\nbad header\r\n\r\n",
            USER0.1
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert_eq!(last_json_error(&answer), (400, "malformed_request".into()), "{answer}");
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_cut_off_at_the_header_read_timeout() {
    let serve = serve(None, &["--header-read-timeout", "1"]).await;
    let started = std::time::Instant::now();
    let answer = raw(&serve.url, b"POST /topics/a HTTP/1.1\r\nhost: x\r\nx-half-a-hea").await;
    let elapsed = started.elapsed();
    assert_eq!(answer, "", "closed without an answer");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    // A client that keeps to the timeout is served as usual.
    assert_eq!(post(&serve.url, "/topics/a", &[USER0], b"").await.status(), 200);
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after() {
    let dir = temp_dir("quota");
    let config = write_config(&dir, "[limits]\nuser_messages_per_second = 0.2\nuser_burst = 3\n");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    // The readiness publish took one token; two more fit in the burst.
    for _ in 0..2 {
        assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"").await.status(), 200);
    }
    let response = post(&serve.url, "/topics/home", &[USER0], b"").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers["retry-after"], "5");
}

#[tokio::test]
async fn a_caller_who_may_not_publish_is_answered_before_a_byte_of_its_body_is_sent() {
    // GIVEN requests that declare a body of 100 000 bytes, and send none of it
    let serve = serve(None, &[]).await;
    let host = serve.url.trim_start_matches("http://").to_owned();
    let head = |path: &str, authorization: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: {host}\r\n{authorization}content-length: 100000\r\n\r\n")
    };
    let wrong = "authorization: Basic dXNlcjA6d3Jvbmc=\r\n";
    let user0 = format!("authorization: {}\r\n", USER0.1);
    for (request, expected) in [
        (head("/topics/home", ""), "missing_credentials"),
        (head("/topics/home", wrong), "authentication_failed"),
        (head("/topics/replies/x", &user0), "not_authorized"),
    ] {
        // WHEN the server is left waiting for the body THEN it answers 401 at once, and closes
        let started = std::time::Instant::now();
        let answer = raw(&serve.url, request.as_bytes()).await;
        assert_eq!(last_json_error(&answer), (401, expected.into()), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "{expected} took {:?}", started.elapsed());
    }
}
