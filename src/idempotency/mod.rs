//! Retries without duplicates: what a request's `Idempotency-Key` records, and
//! where (docs/api.md "Retries without duplicates").
//!
//! A key's record moves through three states. The first request with a key
//! writes it *in flight* (with its message id, its own id as the record's
//! owner, and a lease), publishes, then writes the outcome: *done* when the
//! broker accepted the message, *unknown* when the answer never came (a
//! timeout, a connection lost mid-publish), or deletes the record when the
//! message certainly was not delivered (a 4xx, a 429, a 503 before anything was
//! sent), so a retry starts afresh. A retry that took over an unknown outcome
//! and then did not publish puts *unknown* back instead: the first attempt's
//! message may still be out there under that id. An outcome is written only
//! over the writer's own in-flight record (or none), never over another's.
//!
//! A later request with the same key and the same fingerprint then gets, by
//! the record's state: *done*, the first answer again without a publish; *in
//! flight*, 409; *unknown* (or in flight past its lease: its process died or
//! lost its store), a new publish with the first message id, answered as an
//! unknown outcome. A different fingerprint is 422, whatever the state.
//!
//! Every store makes the read and the write of [`KeyStore::begin`] one atomic
//! step, so two concurrent first requests cannot both publish: a moka entry's
//! compute in memory ([`memory`]), a Lua script in Redis ([`redis`]), a
//! conditional write in DynamoDB ([`dynamo`]). The three pass one conformance
//! suite (tests/key_stores.rs).

pub mod dynamo;
pub mod memory;
#[cfg(feature = "serve")]
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tracing::warn;

pub use self::memory::MemoryKeys;
use crate::cause::Chain;
use crate::contract::{IdempotencyKey, MessageId};
use crate::store::StoreFuture;

/// Every record's partition key starts so (`idem#{identity}#{key}`).
pub const PARTITION_PREFIX: &str = "idem#";

/// How long an in-flight record holds its key before a retry may take it over
/// as an unknown outcome: longer than any publish waits for its broker (serve's
/// PUBACK timeout, the IoT client's total timeout, API Gateway's 29 s).
pub const IN_FLIGHT_LEASE: Duration = Duration::from_secs(60);

/// One request's claim on its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `idem#{identity}#{key}`: the identity's `#` and `%` percent-encoded, so
    /// no two identities' keys share a record.
    pub id: String,
    /// The request's fingerprint, in hex.
    pub fingerprint: String,
    /// The id this request publishes under: its own if it is the first, the
    /// first request's when it takes over an unknown outcome.
    pub message_id: MessageId,
    /// This request's own id, unique to it: whose in-flight record it is.
    pub owner: MessageId,
    /// How long the record is kept after its last write.
    pub retention: Duration,
    /// How long an in-flight record holds the key ([`IN_FLIGHT_LEASE`]).
    pub lease: Duration,
}

/// What a key's scope escapes: `#` separates it from the key, `%` escapes.
const SCOPE_ESCAPED: &AsciiSet = &CONTROLS.add(b'#').add(b'%');

impl Claim {
    /// The claim of `scope` (`user:NAME` or `cn:NAME`) on `key`.
    pub fn new(scope: &str, key: &IdempotencyKey, message_id: MessageId, retention: Duration) -> Claim {
        let id = format!("{PARTITION_PREFIX}{}#{}", utf8_percent_encode(scope, SCOPE_ESCAPED), key.key);
        let fingerprint = hex::encode(key.fingerprint);
        Claim { id, fingerprint, message_id, owner: message_id, retention, lease: IN_FLIGHT_LEASE }
    }

    /// The claim with an in-flight lease of `lease` instead of [`IN_FLIGHT_LEASE`].
    pub fn with_lease(self, lease: Duration) -> Claim {
        Claim { lease, ..self }
    }

    /// The claim publishing under `first`, the id of an unknown outcome it took over.
    pub fn taking_over(self, first: MessageId) -> Claim {
        Claim { message_id: first, ..self }
    }

    /// How long a record in `state` is kept: the retention, and an in-flight
    /// record at least twice its lease, so that its owner's death leaves an
    /// unknown outcome behind rather than nothing.
    pub fn keep_for(&self, state: State) -> Duration {
        match state {
            State::InFlight => self.retention.max(self.lease * 2),
            State::Done | State::Unknown => self.retention,
        }
    }
}

/// What a key's record says about a request that claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// No record: this request is the first; it publishes under its own id.
    Fresh,
    /// The first request's outcome is unknown: this one publishes again, under
    /// the first one's id.
    UnknownOutcome(MessageId),
    /// The first request published this id: answer it again, publish nothing.
    Done(MessageId),
    /// The first request is still in flight.
    InFlight,
    /// The key was first used for a different request.
    Reused,
}

/// How a claiming request's publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The broker accepted the message (a 200).
    Delivered,
    /// Certainly not delivered: the key is released.
    NotDelivered,
    /// Sent, but no answer came: a retry publishes again under the same id.
    Unknown,
}

/// Where records live.
pub trait KeyStore: Send + Sync {
    /// Reads the claim's record and, in the same atomic step, writes what
    /// [`decide`] says.
    fn begin<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, Begin>;

    /// Records the outcome of the publish `begin` allowed.
    fn finish<'a>(&'a self, claim: &'a Claim, outcome: Outcome) -> StoreFuture<'a, ()>;
}

/// A record's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A request is publishing.
    InFlight,
    /// Published: the broker accepted it.
    Done,
    /// Published, outcome unknown.
    Unknown,
}

impl State {
    /// The state's one-letter name in a stored record.
    pub fn letter(self) -> &'static str {
        match self {
            State::InFlight => "I",
            State::Done => "D",
            State::Unknown => "U",
        }
    }

    /// The state a stored letter names.
    pub fn from_letter(letter: &str) -> Option<State> {
        match letter {
            "I" => Some(State::InFlight),
            "D" => Some(State::Done),
            "U" => Some(State::Unknown),
            _ => None,
        }
    }
}

/// A key's record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the first request is.
    pub state: State,
    /// The first request's fingerprint, hex.
    pub fingerprint: String,
    /// The first request's message id.
    pub message_id: MessageId,
    /// The id of the request that wrote the record.
    pub owner: MessageId,
    /// Unix milliseconds until which an in-flight record holds its key.
    pub lease_until_ms: u64,
}

/// What recording an outcome does to a key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Leave it: it is another request's record now (or there is none to release).
    Keep,
    /// Delete it: this request's own first claim, released.
    Delete,
    /// Write this record.
    Write(Record),
}

/// What `claim`'s outcome does to `stored`. Only the claim's own in-flight
/// record (or none) is written over. A release deletes the record when it was
/// the claim's own first claim; when it was a takeover of an unknown outcome
/// (its message id is the first request's, not the claim's own), the unknown
/// outcome is put back: the first attempt's message may be out there.
pub fn settle(stored: Option<&Record>, claim: &Claim, outcome: Outcome) -> Settle {
    if stored.is_some_and(|record| record.state != State::InFlight || record.owner != claim.owner) {
        return Settle::Keep;
    }
    let message_id = stored.map_or(claim.message_id, |record| record.message_id);
    let state = match outcome {
        Outcome::Delivered => State::Done,
        Outcome::Unknown => State::Unknown,
        Outcome::NotDelivered => match stored {
            None => return Settle::Keep,
            Some(record) if record.message_id == claim.owner => return Settle::Delete,
            Some(_) => State::Unknown,
        },
    };
    Settle::Write(Record {
        state,
        fingerprint: claim.fingerprint.clone(),
        message_id,
        owner: claim.owner,
        lease_until_ms: 0,
    })
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What a claim on a key whose record is `stored` gets at `now_ms`, and the
/// record to write in the same step (`None`: leave it as it is).
pub fn decide(stored: Option<&Record>, claim: &Claim, now_ms: u64) -> (Begin, Option<Record>) {
    let in_flight = |message_id| Record {
        state: State::InFlight,
        fingerprint: claim.fingerprint.clone(),
        message_id,
        owner: claim.owner,
        lease_until_ms: now_ms + claim.lease.as_millis() as u64,
    };
    match stored {
        None => (Begin::Fresh, Some(in_flight(claim.message_id))),
        Some(record) if record.fingerprint != claim.fingerprint => (Begin::Reused, None),
        Some(record) if record.state == State::Done => (Begin::Done(record.message_id), None),
        Some(record) if record.state == State::InFlight && record.lease_until_ms > now_ms => (Begin::InFlight, None),
        Some(record) => (Begin::UnknownOutcome(record.message_id), Some(in_flight(record.message_id))),
    }
}

/// A claim whose outcome is still to be recorded. Dropped unfinished (its
/// request cut short by a deadline, or by a client that hung up), it records
/// its outcome from a task of its own: unknown once the publish was under way,
/// else not delivered.
pub struct Pending {
    store: Arc<dyn KeyStore>,
    claim: Option<Claim>,
    publishing: bool,
}

impl Pending {
    /// A claim `begin` let through.
    pub fn new(store: Arc<dyn KeyStore>, claim: Claim) -> Pending {
        Pending { store, claim: Some(claim), publishing: false }
    }

    /// Drops the claim without recording anything: `begin` said it was not this request's.
    pub fn forget(mut self) {
        self.claim = None;
    }

    /// The publish is under way: from here, an interruption leaves its outcome unknown.
    pub fn publishing(&mut self) {
        self.publishing = true;
    }

    /// Records `outcome`. A store that fails is logged: the record then stays
    /// in flight until its lease ends, and a retry after that publishes again
    /// under the same message id.
    pub async fn finish(mut self, outcome: Outcome) {
        if let Some(claim) = self.claim.take() {
            record(&*self.store, &claim, outcome).await;
        }
    }

    /// The outcome an interruption leaves.
    pub fn interrupted(&self) -> Outcome {
        if self.publishing {
            Outcome::Unknown
        } else {
            Outcome::NotDelivered
        }
    }
}

/// How long recording an outcome may take before it is given up (logged).
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

async fn record(store: &dyn KeyStore, claim: &Claim, outcome: Outcome) {
    match tokio::time::timeout(FINISH_TIMEOUT, store.finish(claim, outcome)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            warn!(message_id = %claim.message_id, ?outcome, error = %Chain(&error), "cannot record an Idempotency-Key's outcome")
        }
        Err(_) => warn!(message_id = %claim.message_id, ?outcome, "recording an Idempotency-Key's outcome timed out"),
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else { return };
        let outcome = self.interrupted();
        let store = Arc::clone(&self.store);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { record(&*store, &claim, outcome).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(fingerprint: u8, message_id: MessageId) -> Claim {
        let key = IdempotencyKey { key: "k".into(), fingerprint: [fingerprint; 32] };
        Claim::new("user:alice", &key, message_id, Duration::from_secs(60))
    }

    #[test]
    fn identities_never_share_a_record() {
        let key = |k: &str| IdempotencyKey { key: k.into(), fingerprint: [0; 32] };
        let id = MessageId::next();
        let a = Claim::new("user:a#b", &key("c"), id, Duration::ZERO);
        let b = Claim::new("user:a", &key("b#c"), id, Duration::ZERO);
        assert_eq!(a.id, "idem#user:a%23b#c");
        assert_eq!(b.id, "idem#user:a#b#c");
        assert_ne!(Claim::new("user:a%23b", &key("c"), id, Duration::ZERO).id, a.id);
    }

    #[test]
    fn decide_follows_the_record_s_state() {
        let first = MessageId::next();
        let c = claim(1, MessageId::next());
        let stored = |state, lease_until_ms| Record {
            state,
            fingerprint: c.fingerprint.clone(),
            message_id: first,
            owner: first,
            lease_until_ms,
        };
        let (begin, write) = decide(None, &c, 1_000);
        assert_eq!(begin, Begin::Fresh);
        assert_eq!(write.unwrap().lease_until_ms, 1_000 + 60_000);
        assert_eq!(decide(Some(&stored(State::Done, 0)), &c, 1_000), (Begin::Done(first), None));
        assert_eq!(decide(Some(&stored(State::InFlight, 1_001)), &c, 1_000), (Begin::InFlight, None));
        for lapsed in [stored(State::InFlight, 1_000), stored(State::Unknown, 0)] {
            let (begin, write) = decide(Some(&lapsed), &c, 1_000);
            assert_eq!(begin, Begin::UnknownOutcome(first));
            let write = write.unwrap();
            assert_eq!((write.state, write.message_id), (State::InFlight, first));
        }
        let other = claim(2, MessageId::next());
        for state in [State::Done, State::InFlight, State::Unknown] {
            assert_eq!(decide(Some(&stored(state, u64::MAX)), &other, 1_000), (Begin::Reused, None));
        }
    }

    #[test]
    fn an_outcome_is_written_only_over_the_claim_s_own_record_and_a_takeover_is_never_released() {
        let first = claim(1, MessageId::next());
        let in_flight = |owner: &Claim| Record {
            state: State::InFlight,
            fingerprint: owner.fingerprint.clone(),
            message_id: owner.message_id,
            owner: owner.owner,
            lease_until_ms: 1,
        };
        let own = in_flight(&first);
        assert!(matches!(settle(Some(&own), &first, Outcome::Delivered), Settle::Write(r) if r.state == State::Done));
        assert_eq!(settle(Some(&own), &first, Outcome::NotDelivered), Settle::Delete);
        assert_eq!(settle(None, &first, Outcome::NotDelivered), Settle::Keep);
        // Another request's record, or one already settled: left alone.
        let other = claim(1, MessageId::next());
        for stored in [in_flight(&other), Record { state: State::Done, ..own.clone() }] {
            for outcome in [Outcome::Delivered, Outcome::Unknown, Outcome::NotDelivered] {
                assert_eq!(settle(Some(&stored), &first, outcome), Settle::Keep, "{stored:?} {outcome:?}");
            }
        }
        // A takeover of an unknown outcome that did not publish puts the unknown outcome back.
        let retry = claim(1, MessageId::next()).taking_over(first.message_id);
        let taken = in_flight(&retry);
        match settle(Some(&taken), &retry, Outcome::NotDelivered) {
            Settle::Write(record) => assert_eq!((record.state, record.message_id), (State::Unknown, first.message_id)),
            other => panic!("{other:?}"),
        }
        // So does a claim cut short mid-claim, whose store had made it a takeover.
        let cut_short = Claim { message_id: retry.owner, ..retry.clone() };
        assert!(
            matches!(settle(Some(&taken), &cut_short, Outcome::NotDelivered), Settle::Write(r) if r.state == State::Unknown)
        );
    }
}
