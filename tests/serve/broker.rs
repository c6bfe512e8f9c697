//! The broker behind `serve`: stopped mid-load, refusing over MQTTS, the limits
//! it announces in CONNACK, the connection pool, and a broker port already taken.

use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

use crate::common;
use crate::common::{free_port, Proc};
use crate::support::{
    mosquitto, mosquitto_with, next, payloads_until, persistent_subscriber, post, serve, subscriber, sys_count,
    temp_dir, wait_for_port, RestartableBroker, BIN, USER0,
};

#[tokio::test]
async fn with_the_broker_stopped_mid_load_every_answer_is_200_or_503_and_every_200_arrives() {
    let mosquitto = RestartableBroker::new("midload");
    let port = mosquitto.port;
    let broker = mosquitto.start().await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = persistent_subscriber(port, "load/#").await;

    let started = tokio::time::Instant::now();
    let load = Duration::from_millis(4000);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let url = serve.url.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while started.elapsed() < load {
                    let payload = format!("m-{worker}-{i}");
                    let at = started.elapsed();
                    let status =
                        post(&url, &format!("/topics/load/{worker}"), &[USER0], payload.as_bytes()).await.status();
                    answers.push((payload, status, at));
                    i += 1;
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    RestartableBroker::stop(broker);
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _broker = Proc(mosquitto.start().await);
    let restarted_at = started.elapsed();

    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let odd: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200 && *s != 503).collect();
    assert!(odd.is_empty(), "only 200 or 503 while the broker comes and goes: {odd:?}");
    let ok: std::collections::BTreeSet<&str> =
        answers.iter().filter(|(_, s, _)| *s == 200).map(|(p, _, _)| p.as_str()).collect();
    assert!(answers.iter().any(|(_, s, at)| *s == 503 && *at >= stopped_at), "the outage was seen");
    assert!(
        answers.iter().any(|(_, s, at)| *s == 200 && *at > restarted_at),
        "service resumed after the broker returned"
    );

    let seen = payloads_until(&mut rx, &ok, Duration::from_secs(15)).await;
    let missing: Vec<_> = ok.iter().filter(|p| !seen.contains(**p)).collect();
    // A 503'd message may have arrived too (its PUBACK lost with the connection): a 5xx
    // promises nothing either way. What was never sent cannot arrive.
    let sent: std::collections::BTreeSet<&str> = answers.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(seen.iter().all(|p| sent.contains(p.as_str())), "the subscriber saw messages nobody sent");
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never arrived: {:?}",
        missing.len(),
        ok.len(),
        &missing[..missing.len().min(10)]
    );
}

/// mosquitto with TLS (the demo server certificate), a password file and an ACL
/// that lets serve's connection write only under `allowed/`.
async fn strict_mosquitto(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let certs = dir.join("certs");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-certs"))
        .arg(certs.to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let passwd = dir.join("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c", passwd.to_str().unwrap(), "svc", "svc-pw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user svc\ntopic write allowed/#\n").unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for file in [&passwd, &acl] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    for file in ["server.key", "server.crt", "CA.crt"] {
        std::fs::set_permissions(certs.join(file), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let conf = dir.join("mosquitto.conf");
    let c = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             cafile {}\ncertfile {}\nkeyfile {}\npersistence false\n",
            passwd.display(),
            acl.display(),
            c("CA.crt"),
            c("server.crt"),
            c("server.key")
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "mosquitto").await;
    (Proc(child), port)
}

#[tokio::test]
async fn over_mqtts_with_credentials_a_broker_refusal_maps_from_its_puback_reason_code() {
    let dir = temp_dir("strict");
    let (_broker, port) = strict_mosquitto(&dir).await;
    let ca = dir.join("certs/CA.crt");
    let http = free_port();
    let (stdout, stderr) = common::child_logs("serve-mqtts");
    let _serve = Proc(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{http}")])
            .args(["--mqtt", &format!("mqtts://127.0.0.1:{port}"), "--mqtt-ca", ca.to_str().unwrap()])
            .args(["--mqtt-username", "svc"])
            .env("MQTT_PASSWORD", "svc-pw")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_port(http, "serve").await;
    let url = format!("http://127.0.0.1:{http}");
    let mut status = 0;
    for _ in 0..200 {
        status = post(&url, "/topics/allowed/x", &[USER0], b"ok").await.status();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "TLS to the broker with its CA, and the broker credentials, work");
    let refused = post(&url, "/topics/forbidden/x", &[USER0], b"no").await;
    assert_eq!(refused.status(), 500, "PUBACK 0x87 (not authorized) is our connection's fault: {refused:?}");
    assert!(!String::from_utf8_lossy(&refused.body).contains("0x87"), "no internals in the body");
}

/// The `N` of "the payload exceeds the limit of N bytes".
fn limit_in(message: &str) -> usize {
    let after = message.split("limit of ").nth(1).unwrap_or_else(|| panic!("no limit in {message:?}"));
    after.split(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_broker_s_maximum_packet_size_is_413_before_sending_and_the_others_are_served() {
    // GIVEN mosquitto announcing a Maximum Packet Size of 2000 bytes in its CONNACK
    let (_broker, port) = mosquitto_with("max-packet", "max_packet_size 2000\n").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    // WHEN one client sends 5000 bytes while others send small messages
    let big = post(&serve.url, "/topics/home/big", &[USER0], &[b'x'; 5000]);
    let small = post(&serve.url, "/topics/home/small", &[USER0], b"alongside");
    let (big, small) = tokio::join!(big, small);
    // THEN the big one is 413 with JSON naming the exact payload that would fit, and nothing is sent
    assert_eq!(big.status(), 413, "{big:?}");
    let body: serde_json::Value = serde_json::from_slice(&big.body).unwrap();
    assert_eq!(body["error"], "payload_too_large");
    let fits = limit_in(body["message"].as_str().unwrap());
    assert!((1900..2000).contains(&fits), "{body}");
    // AND everyone else is served, on a connection the broker never dropped
    assert_eq!(small.status(), 200);
    for i in 0..5 {
        assert_eq!(
            post(&serve.url, "/topics/home/small", &[USER0], format!("after {i}").as_bytes()).await.status(),
            200
        );
    }
    let arrived: Vec<_> = next_n(&mut rx, 6).await;
    assert!(arrived.iter().all(|p| &p.topic[..] == b"home/small"), "the big one never reached the broker");
    // AND the limit is exact: the largest payload fits, one byte more does not
    assert_eq!(post(&serve.url, "/topics/home/big", &[USER0], &vec![b'x'; fits]).await.status(), 200);
    assert_eq!(next(&mut rx).await.payload.len(), fits);
    assert_eq!(post(&serve.url, "/topics/home/big", &[USER0], &vec![b'x'; fits + 1]).await.status(), 413);
    // AND what counts is the whole packet: a long topic leaves less room for the payload
    let long_topic = format!("home/{}", "t".repeat(1000));
    let long = format!("/topics/{long_topic}");
    let response = post(&serve.url, &long, &[USER0], &vec![b'x'; fits]).await;
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(limit_in(body["message"].as_str().unwrap()), fits - (long_topic.len() - "home/big".len()));
}

async fn next_n(rx: &mut mpsc::UnboundedReceiver<Publish>, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(next(rx).await);
    }
    got
}

#[tokio::test]
async fn the_broker_s_maximum_qos_0_refuses_qos_1_and_makes_0_the_default() {
    let (_broker, port) = mosquitto_with("max-qos", "max_qos 0\n").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let response = post(&serve.url, "/topics/home/a?qos=1", &[USER0], b"one").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "invalid_qos");
    assert!(body["message"].as_str().unwrap().contains("Maximum QoS"), "{body}");
    // Without qos, the default is the most the broker takes.
    assert_eq!(post(&serve.url, "/topics/home/a", &[USER0], b"zero").await.status(), 200);
    let p = next(&mut rx).await;
    assert_eq!((&p.payload[..], p.qos), (&b"zero"[..], QoS::AtMostOnce));
}

#[tokio::test]
async fn a_broker_without_retain_refuses_a_retained_publish_with_400_and_keeps_the_connection() {
    let (_broker, port) = mosquitto_with("no-retain", "retain_available false\n").await;
    let serve = serve(Some(port), &[]).await;
    let response = post(&serve.url, "/topics/home/a?retained=true", &[USER0], b"kept?").await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"], "retain_not_supported");
    for _ in 0..3 {
        assert_eq!(post(&serve.url, "/topics/home/a", &[USER0], b"plain").await.status(), 200);
    }
}

/// Clients mosquitto counts as connected, from its `$SYS` tree (published every second
/// here, when it changes): the first count that is `expected`, else the last within 5 s.
async fn clients_connected(port: u16, expected: u64) -> u64 {
    sys_count(port, "$SYS/broker/clients/connected", expected).await
}

#[tokio::test]
async fn the_pool_is_sized_from_the_receive_maximum_and_keeps_within_it_on_one_topic() {
    // GIVEN mosquitto letting each connection have 5 publishes awaiting PUBACK
    let (_broker, port) = mosquitto_with("receive-max", "max_inflight_messages 5\nsys_interval 1\n").await;
    let serve = serve(Some(port), &[]).await;
    // THEN the pool has enough connections for 64 publishes per core in flight
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let expected = mqtt_http_publish::publish::mqtt::pool_size(5, cores) as u64;
    assert!(expected > 1);
    assert_eq!(clients_connected(port, expected + 1).await, expected + 1, "the pool and the $SYS subscriber");
    // AND 100 concurrent publishes to one topic (one connection) stay within its 5:
    // exceeding them, mosquitto would drop the connection and answers would be 503
    let mut rx = subscriber(port, "home/one").await;
    let requests = (0..100).map(|i| {
        let url = serve.url.clone();
        tokio::spawn(async move { post(&url, "/topics/home/one", &[USER0], format!("{i}").as_bytes()).await.status() })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(next_n(&mut rx, 100).await.len(), 100);
}

#[tokio::test]
async fn each_topic_keeps_its_order_across_a_pool_of_connections() {
    // GIVEN a pool of 8 connections and 16 topics, each published to by one client in
    // sequence at QoS 0 (a 200 once written, so nothing but the connection orders them)
    let (_broker, port) = mosquitto("order").await;
    let serve = serve(Some(port), &["--mqtt-connections", "8"]).await;
    let mut rx = subscriber(port, "order/#").await;
    const TOPICS: usize = 16;
    const EACH: usize = 150;
    let clients = (0..TOPICS).map(|t| {
        let url = serve.url.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let path = format!("/topics/order/{t}?qos=0");
                assert_eq!(post(&url, &path, &[USER0], i.to_string().as_bytes()).await.status(), 200);
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    // THEN every topic's messages arrive in the order they were sent
    let mut last = vec![None::<usize>; TOPICS];
    for p in next_n(&mut rx, TOPICS * EACH).await {
        let topic: usize = std::str::from_utf8(&p.topic[6..]).unwrap().parse().unwrap();
        let n: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        assert_eq!(n, last[topic].map_or(0, |l| l + 1), "order/{topic}: {n} after {:?}", last[topic]);
        last[topic] = Some(n);
    }
}

#[tokio::test]
async fn a_taken_broker_port_says_how_to_use_the_broker_already_there() {
    let (_broker, port) = mosquitto("taken").await;
    let output = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--broker-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(stderr.contains("--mqtt mqtt://127.0.0.1:1883") && stderr.contains("--broker-listen"), "{stderr}");
}
