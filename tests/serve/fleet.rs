//! A fleet behind a load balancer: two `serve` processes sharing one Redis
//! (`--redis`).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;

use crate::common::redis_server_on;
use crate::support::{drain, mosquitto, post, serve, subscriber, temp_dir, write_config, USER0};

fn user_property(message: &Publish, name: &str) -> Option<String> {
    let properties = message.properties.as_ref()?;
    properties.user_properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn the_same_idempotency_key_sent_to_two_instances_at_once_publishes_once() {
    let (_broker, port) = mosquitto("fleet-keys").await;
    let (_redis, redis_port) = redis_server_on(None).await;
    let redis = format!("redis://127.0.0.1:{redis_port}");
    let config = write_config(&temp_dir("fleet-keys"), "");
    let args = ["--config", config.to_str().unwrap(), "--redis", &redis];
    let (a, b) = (serve(Some(port), &args).await, serve(Some(port), &args).await);
    let mut rx = subscriber(port, "home/#").await;

    // Each key sent to both instances at the same moment: one publish per key.
    const KEYS: usize = 25;
    let mut answers = Vec::new();
    for k in 0..KEYS {
        let key = format!("order-{k}");
        let path = format!("/topics/home/orders?UserProp.1.Key=order&UserProp.1.Value={k}");
        let headers = [USER0, ("idempotency-key", key.as_str())];
        let (first, second) =
            tokio::join!(post(&a.url, &path, &headers, b"ship it"), post(&b.url, &path, &headers, b"ship it"));
        answers.push((k, first, second));
    }
    let arrived = drain(&mut rx, Duration::from_millis(1500)).await;
    assert_eq!(arrived.len(), KEYS, "one message per key: {arrived:#?}");
    for (k, first, second) in &answers {
        let message = arrived.iter().find(|m| user_property(m, "order") == Some(k.to_string())).expect("arrived");
        let id = user_property(message, "message-id").expect("a keyed message carries its id");
        for answer in [first, second] {
            match answer.status() {
                200 => assert_eq!(answer.headers["x-message-id"], id, "key {k}: every 200 names the one message"),
                409 => assert_eq!(answer.headers["retry-after"], "1"),
                other => panic!("key {k}: {other} {answer:?}"),
            }
        }
        assert!(first.status() == 200 || second.status() == 200, "key {k}: one of the two published");
        // A retry later, at either instance: the first answer again, nothing published.
        let key = format!("order-{k}");
        let path = format!("/topics/home/orders?UserProp.1.Key=order&UserProp.1.Value={k}");
        let replay = post(&a.url, &path, &[USER0, ("idempotency-key", key.as_str())], b"ship it").await;
        assert_eq!((replay.status(), replay.headers["idempotent-replayed"].as_str()), (200, "true"));
        assert_eq!(replay.headers["x-message-id"], id);
        // The same key for another body: 422 from either instance.
        let reused = post(&b.url, &path, &[USER0, ("idempotency-key", key.as_str())], b"cancel it").await;
        assert_eq!(reused.status(), 422, "{reused:?}");
    }
    let later = drain(&mut rx, Duration::from_millis(1000)).await;
    assert!(later.is_empty(), "a replay or a refused reuse published: {later:#?}");
}

#[tokio::test]
async fn a_quota_shared_through_redis_admits_about_n_a_second_across_two_instances_not_2n() {
    let (_broker, port) = mosquitto("fleet-quota").await;
    let (_redis, redis_port) = redis_server_on(None).await;
    let redis = format!("redis://127.0.0.1:{redis_port}");
    const RATE: f64 = 20.0;
    const BURST: f64 = 5.0;
    let config =
        write_config(&temp_dir("fleet-quota"), &format!("[limits]\nmessages_per_second = {RATE}\nburst = {BURST}\n"));
    let args = ["--config", config.to_str().unwrap(), "--redis", &redis];
    let (a, b) = (serve(Some(port), &args).await, serve(Some(port), &args).await);

    // Four clients, two on each instance, as fast as they are answered, for three seconds.
    let window = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let clients: Vec<_> = [&a.url, &a.url, &b.url, &b.url]
        .into_iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut admitted = 0u32;
                while started.elapsed() < window {
                    match post(&url, "/topics/home/quota", &[USER0], b"").await.status() {
                        200 => admitted += 1,
                        429 => {}
                        other => panic!("{other}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for client in clients {
        admitted += client.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let fleet = BURST + RATE * seconds;
    eprintln!(
        "admitted {admitted} in {seconds:.2} s; the fleet's quota allows {fleet:.0}, two processes' own {:.0}",
        2.0 * fleet
    );
    assert!(f64::from(admitted) <= fleet * 1.1 + 2.0, "admitted {admitted}: more than the fleet's {fleet:.0}");
    assert!(f64::from(admitted) >= RATE * seconds * 0.8, "admitted {admitted}: far under the fleet's {fleet:.0}");
}

#[tokio::test]
async fn with_redis_down_keyed_requests_are_503_the_quota_is_each_process_s_and_both_recover() {
    let (_broker, port) = mosquitto("fleet-down").await;
    let (redis, redis_port) = redis_server_on(None).await;
    let url = format!("redis://127.0.0.1:{redis_port}");
    let config = write_config(&temp_dir("fleet-down"), "[limits]\nmessages_per_second = 0.5\nburst = 4\n");
    let serve = serve(Some(port), &["--config", config.to_str().unwrap(), "--redis", &url]).await;
    let keyed = |key: &'static str| [USER0, ("idempotency-key", key)];
    assert_eq!(post(&serve.url, "/topics/home/a", &keyed("before"), b"").await.status(), 200);

    drop(redis);
    let refused = post(&serve.url, "/topics/home/a", &keyed("during"), b"").await;
    assert_eq!((refused.status(), refused.headers["retry-after"].as_str()), (503, "5"), "{refused:?}");
    // Without a key: served, under this process's own quota (a full burst of 4), not unlimited.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post(&serve.url, "/topics/home/a", &[USER0], b"").await.status());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "the local quota holds while Redis is away");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(log.matches("Redis is unreachable").count(), 1, "logged once per outage: {log}");

    let (_redis, _) = redis_server_on(Some(redis_port)).await;
    let mut back = Vec::new();
    for _ in 0..40 {
        // 429 until the shared quota (one message every two seconds) has a token; a 429 releases the key.
        back.push(post(&serve.url, "/topics/home/a", &keyed("after"), b"").await.status());
        if back.last() != Some(&429) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(back.last(), Some(&200), "keys work again once Redis is back: {back:?}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(log.contains("Redis answers again"), "{log}");
}
