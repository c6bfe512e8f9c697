//! One conformance suite for the three `Idempotency-Key` stores, each the real
//! thing: `serve`'s memory, a fleet's Redis (Debian's redis-server) and the
//! Lambda function's config table (moto's DynamoDB). The same sequence of
//! claims, replays, 409s, 422s, releases, unknown outcomes, takeovers, lease
//! expiries and races runs against each; a store passes only if it answers
//! every step as docs/api.md "Retries without duplicates" says.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use mqtt_http_publish::contract::{IdempotencyKey, MessageId};
use mqtt_http_publish::idempotency::dynamo::DynamoKeys;
use mqtt_http_publish::idempotency::redis::RedisKeys;
use mqtt_http_publish::idempotency::{Begin, Claim, KeyStore, MemoryKeys, Outcome, Pending};
use mqtt_http_publish::store::redis::Redis;

/// The lease of the suite's in-flight records: short, so that its expiry is seen in a test.
const LEASE: Duration = Duration::from_millis(400);

/// The keys of one run of the suite: unique, so that runs sharing a store never meet.
struct Keys {
    store: Arc<dyn KeyStore>,
    run: String,
}

impl Keys {
    fn new(store: Arc<dyn KeyStore>) -> Keys {
        Keys { store, run: MessageId::next().to_string() }
    }

    /// A new request's claim on `key`, for a request whose fingerprint is `fingerprint`.
    fn claim(&self, key: &str, fingerprint: u8) -> Claim {
        let key = IdempotencyKey { key: format!("{}-{key}", self.run), fingerprint: [fingerprint; 32] };
        Claim::new("user:alice", &key, MessageId::next(), Duration::from_secs(60)).with_lease(LEASE)
    }

    async fn begin(&self, claim: &Claim) -> Begin {
        self.store.begin(claim).await.expect("the store answers")
    }

    async fn finish(&self, claim: &Claim, outcome: Outcome) {
        self.store.finish(claim, outcome).await.expect("the store answers");
    }
}

/// The whole sequence, against `store`.
async fn conforms(store: Arc<dyn KeyStore>) {
    let keys = Keys::new(store);
    claims_and_replays(&keys).await;
    releases(&keys).await;
    unknown_outcomes_and_takeovers(&keys).await;
    lease_expiry(&keys).await;
    guards(&keys).await;
    races(&keys).await;
}

/// The first claim publishes; the same request again is 409 while it is in
/// flight and the first answer once it is done; another request under the key is 422 throughout.
async fn claims_and_replays(keys: &Keys) {
    let first = keys.claim("k", 1);
    assert_eq!(keys.begin(&first).await, Begin::Fresh);
    assert_eq!(keys.begin(&keys.claim("k", 1)).await, Begin::InFlight, "409 while in flight");
    assert_eq!(keys.begin(&keys.claim("k", 2)).await, Begin::Reused, "422 while in flight");
    keys.finish(&first, Outcome::Delivered).await;
    for _ in 0..2 {
        assert_eq!(keys.begin(&keys.claim("k", 1)).await, Begin::Done(first.message_id), "the first answer");
    }
    assert_eq!(keys.begin(&keys.claim("k", 2)).await, Begin::Reused, "422 once done");
}

/// A publish that certainly did not go out releases its key for whatever comes next.
async fn releases(keys: &Keys) {
    let released = keys.claim("r", 1);
    assert_eq!(keys.begin(&released).await, Begin::Fresh);
    keys.finish(&released, Outcome::NotDelivered).await;
    let next = keys.claim("r", 2);
    assert_eq!(keys.begin(&next).await, Begin::Fresh, "a released key is free, whatever comes");
    keys.finish(&next, Outcome::Delivered).await;
    keys.finish(&released, Outcome::NotDelivered).await;
    assert_eq!(keys.begin(&keys.claim("r", 2)).await, Begin::Done(next.message_id), "a late release changes nothing");
}

/// An unknown outcome is taken over by the next request, under the first id; a
/// takeover that does not publish puts the unknown outcome back; a late outcome
/// of a claim that no longer owns the record changes nothing.
async fn unknown_outcomes_and_takeovers(keys: &Keys) {
    let unknown = keys.claim("u", 3);
    assert_eq!(keys.begin(&unknown).await, Begin::Fresh);
    keys.finish(&unknown, Outcome::Unknown).await;
    let retry = keys.claim("u", 3);
    assert_eq!(keys.begin(&retry).await, Begin::UnknownOutcome(unknown.message_id));
    assert_eq!(keys.begin(&keys.claim("u", 3)).await, Begin::InFlight, "the takeover holds the key");
    let retry = retry.taking_over(unknown.message_id);
    keys.finish(&retry, Outcome::NotDelivered).await;
    let again = keys.claim("u", 3);
    assert_eq!(keys.begin(&again).await, Begin::UnknownOutcome(unknown.message_id), "the unknown outcome is back");
    keys.finish(&retry, Outcome::Delivered).await;
    assert_eq!(keys.begin(&keys.claim("u", 3)).await, Begin::InFlight, "a late outcome of the old owner: nothing");
    keys.finish(&again.taking_over(unknown.message_id), Outcome::Delivered).await;
    assert_eq!(keys.begin(&keys.claim("u", 3)).await, Begin::Done(unknown.message_id), "published under the first id");
}

/// An in-flight record whose lease ran out (its process died) is an unknown
/// outcome; its owner's late outcome no longer counts.
async fn lease_expiry(keys: &Keys) {
    let lost = keys.claim("l", 4);
    assert_eq!(keys.begin(&lost).await, Begin::Fresh);
    assert_eq!(keys.begin(&keys.claim("l", 4)).await, Begin::InFlight);
    tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
    let takeover = keys.claim("l", 4);
    assert_eq!(keys.begin(&takeover).await, Begin::UnknownOutcome(lost.message_id), "taken over once the lease ended");
    keys.finish(&lost, Outcome::Delivered).await;
    assert_eq!(keys.begin(&keys.claim("l", 4)).await, Begin::InFlight, "the dead owner's outcome does not count");
    keys.finish(&takeover.taking_over(lost.message_id), Outcome::Delivered).await;
    assert_eq!(keys.begin(&keys.claim("l", 4)).await, Begin::Done(lost.message_id));
}

/// A claim's guard dropped before its publish releases the key; dropped
/// mid-publish, it leaves the outcome unknown.
async fn guards(keys: &Keys) {
    let cut_short = keys.claim("g1", 5);
    assert_eq!(keys.begin(&cut_short).await, Begin::Fresh);
    drop(Pending::new(Arc::clone(&keys.store), cut_short));
    let mid_publish = keys.claim("g2", 5);
    assert_eq!(keys.begin(&mid_publish).await, Begin::Fresh);
    let mut pending = Pending::new(Arc::clone(&keys.store), mid_publish.clone());
    pending.publishing();
    drop(pending);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(keys.begin(&keys.claim("g1", 6)).await, Begin::Fresh, "released");
    assert_eq!(keys.begin(&keys.claim("g2", 5)).await, Begin::UnknownOutcome(mid_publish.message_id));
}

/// Thirty-two first claims on one key at once: exactly one publishes.
async fn races(keys: &Keys) {
    let claims: Vec<_> = (0..32).map(|_| keys.claim("race", 7)).collect();
    let tasks: Vec<_> = claims
        .into_iter()
        .map(|claim| {
            let store = Arc::clone(&keys.store);
            tokio::spawn(async move { store.begin(&claim).await.expect("the store answers") })
        })
        .collect();
    let mut fresh = 0;
    for task in tasks {
        match task.await.unwrap() {
            Begin::Fresh => fresh += 1,
            other => assert_eq!(other, Begin::InFlight),
        }
    }
    assert_eq!(fresh, 1, "one first claim publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_conforms() {
    conforms(Arc::new(MemoryKeys::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_store_conforms() {
    let (_redis, port) = common::redis_server_on(None).await;
    let redis = Redis::new(&format!("redis://127.0.0.1:{port}")).unwrap();
    conforms(Arc::new(RedisKeys::new(redis))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dynamodb_store_conforms() {
    let moto = common::moto_url();
    let table = format!("keys-{}", MessageId::next());
    common::create_config_table(&moto, &table).await;
    let client = aws_sdk_dynamodb::Client::new(&common::sdk_config_for(&moto).await);
    conforms(Arc::new(DynamoKeys::new(client, &table))).await;
}
