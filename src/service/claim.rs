//! Stage: claim the request's `Idempotency-Key` (docs/api.md "Retries without
//! duplicates"), once the credentials and the ACL let it through and before
//! the quota, which a replay does not spend. A claim that lets the request
//! publish holds a [`Pending`] guard: settled with the publish's outcome at
//! one place, or, dropped unsettled, releasing the key (or leaving the
//! outcome unknown once the publish was under way).

use std::sync::Arc;
use std::time::Duration;

use super::answer::{keys_down, Replayed};
use super::exchange::Exchange;
use super::Service;
use crate::auth::Principal;
use crate::contract::{ApiError, IdempotencyKey, MessageId};
use crate::idempotency::{Begin, Claim, Pending};
use crate::publish::Publisher;

/// What claiming a request's key decided.
pub(super) enum Claimed {
    /// Publish under `message_id`: the request's own, or the first request's
    /// when this one takes over its unknown outcome.
    Publish {
        /// The message id to publish under.
        message_id: MessageId,
        /// The answer's `Idempotent-Replayed`.
        replayed: Replayed,
        /// The claim, settled with the publish's outcome; none without a key.
        guard: Option<Pending>,
    },
    /// Published already, under this id: its first answer again.
    Answered(MessageId),
    /// Published already, under this id, by a request that waits: wait for the reply again.
    WaitAgain(MessageId),
}

impl<P: Publisher> Service<P> {
    /// Claims `key` for `principal`; a request that `waits` for its reply,
    /// published already, waits again. Without a key, the request publishes under its own id.
    pub(super) async fn claim(
        &self,
        key: Option<&IdempotencyKey>,
        principal: &Principal,
        retention: Duration,
        waits: bool,
        exchange: &Exchange,
    ) -> Result<Claimed, ApiError> {
        let message_id = exchange.message_id;
        let Some(key) = key else {
            return Ok(Claimed::Publish { message_id, replayed: Replayed::No, guard: None });
        };
        exchange.step("claiming the idempotency key");
        let claim = Claim::new(&principal.key_scope(), key, message_id, retention);
        // Held from before the store is asked: a request cut short mid-claim
        // (a deadline, a client gone), or a store that took the claim and lost
        // only its answer, leaves the key released, not held for a lease.
        let guard = Pending::new(Arc::clone(&self.keys), claim.clone());
        let begun = self.keys.begin(&claim).await.map_err(keys_down(message_id))?;
        if begun == Begin::Fresh {
            return Ok(Claimed::Publish { message_id, replayed: Replayed::No, guard: Some(guard) });
        }
        guard.forget();
        match begun {
            Begin::Fresh => unreachable!("answered above"),
            Begin::UnknownOutcome(first) => Ok(Claimed::Publish {
                message_id: first,
                replayed: Replayed::UnknownOutcome,
                guard: Some(Pending::new(Arc::clone(&self.keys), claim.taking_over(first))),
            }),
            Begin::Done(first) if waits => Ok(Claimed::WaitAgain(first)),
            Begin::Done(first) => Ok(Claimed::Answered(first)),
            Begin::InFlight => Err(ApiError::RequestInProgress),
            Begin::Reused => Err(ApiError::IdempotencyKeyReused),
        }
    }
}
