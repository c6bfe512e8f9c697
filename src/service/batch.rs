//! The `PublishBatch` operation (`POST /messages`), from the ACL on: its body,
//! each message's own checks and ACL, the quota for all its messages at once,
//! then the messages, concurrently except where they share a topic, each
//! answered as a single publish of it would have been.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tracing::warn;

use super::answer::{keys_down, publish_refused, Answered, BatchAnswer, Outcome};
use super::authorize::{Authorized, Wanted};
use super::exchange::Exchange;
use super::publish::{outcome_of, DEFAULT_MESSAGE_ID_PROPERTY};
use super::{Service, UNAVAILABLE_RETRY_AFTER};
use crate::acl::Action;
use crate::auth::Principal;
use crate::cause::Chain;
use crate::config::RuleSet;
use crate::contract::batch::{BatchHead, BatchLimits, BatchMessage};
use crate::contract::{ApiError, Body, ErrorCode, IdempotencyKey, MessageId};
use crate::idempotency::{Begin, Claim, Outcome as KeyOutcome, Pending};
use crate::publish::{Message, PublishError, Publisher};

/// Topics published to at once; messages to one topic go one after another.
const CONCURRENT_TOPICS: usize = 16;

/// A batch's messages stop being sent this long before the answer is due, so
/// that those not sent are answered as not published rather than cut off.
const SEND_MARGIN: Duration = Duration::from_millis(100);

/// A message the ACL let through, and the id it goes out under.
struct Ready {
    index: usize,
    id: MessageId,
    message: BatchMessage,
}

impl<P: Publisher> Service<P> {
    /// Publishes every valid message the ACL allows of the batch `head` and its `body` make.
    pub(super) async fn publish_batch(
        &self,
        head: BatchHead,
        authorized: Authorized,
        body: Box<dyn Body>,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Answered, ApiError> {
        let limits = self.batch_limits(rules);
        let body = body.read(limits.max_bytes).await.map_err(|error| match error {
            ApiError::PayloadTooLarge { .. } => ApiError::BatchTooLarge { max_bytes: limits.max_bytes },
            error => error,
        })?;
        let checked = head.with_body(&body, self.publisher.limits(), limits)?;
        let key = head.idempotency(&body);
        drop(body);
        let id_property = rules.message_id_property.as_deref();
        let mut results: Vec<Option<Outcome>> = Vec::with_capacity(checked.len());
        let mut ready = Vec::with_capacity(checked.len());
        for (index, message) in checked.into_iter().enumerate() {
            match message.and_then(|m| allowed(m, &authorized, rules, id_property)) {
                Ok(message) => {
                    ready.push(Ready { index, id: MessageId::next(), message });
                    results.push(None);
                }
                Err(error) => results.push(Some(Err((error, None)))),
            }
        }
        exchange.record_messages(results.len());
        let principal = &authorized.identity.principal;
        let (key, mut guard) = match key {
            None => (None, None),
            Some(key) => self.claim_batch(key, principal, rules, exchange).await?,
        };
        // A replay spends no quota, as a single publish's does not.
        let count = NonZeroU32::new(ready.len() as u32).filter(|_| !key.as_ref().is_some_and(|k| k.replay));
        if let Some(count) = count {
            self.admit_n(&rules.limits, principal, count).await?;
        }
        exchange.step("publishing");
        if let Some(guard) = guard.as_mut() {
            guard.publishing();
        }
        let sending = Sending { id_property, key: key.as_ref(), cutoff: None, max_payload: self.max_payload(rules) };
        for (index, outcome) in self.send_all(ready, sending, exchange).await {
            results[index] = Some(outcome);
        }
        if let Some(guard) = guard {
            guard.finish(KeyOutcome::Delivered).await;
        }
        let results = results.into_iter().map(|r| r.expect("every message sent has its outcome")).collect();
        Ok(Answered::Batch(BatchAnswer { results }))
    }

    /// The bounds of a batch under `rules` and the backend's.
    fn batch_limits(&self, rules: &RuleSet) -> BatchLimits {
        BatchLimits {
            max_messages: rules.limits.max_batch_messages,
            max_bytes: rules.limits.max_batch_bytes,
            max_payload_bytes: self.max_payload(rules),
        }
    }

    /// Sends the messages, those to one topic in order, and each one's outcome by its index.
    async fn send_all(&self, ready: Vec<Ready>, sending: Sending<'_>, exchange: &Exchange) -> Vec<(usize, Outcome)> {
        let mut by_topic: Vec<Vec<Ready>> = Vec::new();
        for message in ready {
            match by_topic.iter_mut().find(|group| group[0].message.topic == message.message.topic) {
                Some(group) => group.push(message),
                None => by_topic.push(vec![message]),
            }
        }
        let cutoff = exchange.answer_by.map(|by| by.checked_sub(SEND_MARGIN).unwrap_or(by));
        let sending = &Sending { cutoff, ..sending };
        let sent = stream::iter(by_topic)
            .map(|group| async move {
                let mut outcomes = Vec::with_capacity(group.len());
                for ready in group {
                    outcomes.push((ready.index, self.send_entry(ready, sending).await));
                }
                outcomes
            })
            .buffer_unordered(CONCURRENT_TOPICS);
        sent.collect::<Vec<_>>().await.into_iter().flatten().collect()
    }

    /// Sends one message, under the batch's key if it has one: a message the
    /// first request with the key published is answered with its id again,
    /// one whose outcome was unknown is sent again under its first id.
    async fn send_entry(&self, ready: Ready, sending: &Sending<'_>) -> Outcome {
        let Ready { index, id, message } = ready;
        let Some(key) = sending.key else {
            let sent = self.send_one(id, message, sending).await;
            return entry_outcome(id, sent, sending.max_payload);
        };
        let entry = IdempotencyKey { key: format!("{}#{index}", key.base.key), fingerprint: key.base.fingerprint };
        let claim = Claim::new(&key.scope, &entry, id, key.retention);
        let guard = Pending::new(Arc::clone(&self.keys), claim.clone());
        let begun = match self.keys.begin(&claim).await {
            Ok(begun) => begun,
            Err(error) => {
                guard.forget();
                warn!(message_id = %id, error = %Chain(&error), "the idempotency key store is unavailable");
                return Err((ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }, None));
            }
        };
        let (id, mut guard) = match begun {
            Begin::Fresh if key.replay => {
                guard.finish(KeyOutcome::NotDelivered).await;
                return Err((ApiError::NotPublishedBefore, None));
            }
            Begin::Fresh => (id, guard),
            settled => {
                guard.forget();
                match settled {
                    Begin::UnknownOutcome(first) => {
                        (first, Pending::new(Arc::clone(&self.keys), claim.taking_over(first)))
                    }
                    Begin::Done(first) => return Ok(first),
                    Begin::InFlight => return Err((ApiError::RequestInProgress, None)),
                    Begin::Reused | Begin::Fresh => return Err((ApiError::IdempotencyKeyReused, None)),
                }
            }
        };
        guard.publishing();
        let sent = self.send_one(id, message, sending).await;
        guard
            .finish(match &sent {
                Send::Answered(result) => outcome_of(result),
                Send::TooLate => KeyOutcome::NotDelivered,
                Send::Unconfirmed => KeyOutcome::Unknown,
            })
            .await;
        entry_outcome(id, sent, sending.max_payload)
    }

    /// Sends one message under `id`, unless the time to answer is too near.
    async fn send_one(&self, id: MessageId, message: BatchMessage, sending: &Sending<'_>) -> Send {
        if sending.cutoff.is_some_and(|cutoff| tokio::time::Instant::now() >= cutoff) {
            return Send::TooLate;
        }
        let BatchMessage { topic, qos, retain, payload, mut properties } = message;
        if let Some(name) = sending.id_property {
            properties.user_properties.push((name.to_owned(), id.to_string()));
        }
        let publish = self.publisher.publish(Message { topic, qos, retain, payload, properties });
        let result = match sending.cutoff {
            None => publish.await,
            Some(cutoff) => match tokio::time::timeout_at(cutoff, publish).await {
                Ok(result) => result,
                Err(_) => return Send::Unconfirmed,
            },
        };
        if let Err(error) = &result {
            warn!(message_id = %id, error = %Chain(error), "publish of a batch's message failed");
        }
        Send::Answered(result)
    }

    /// Claims a batch's key: a first request (or one taking over an unknown
    /// outcome) holds the guard; a retry of a batch that was answered replays it.
    async fn claim_batch(
        &self,
        key: IdempotencyKey,
        principal: &Principal,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<(Option<BatchKey>, Option<Pending>), ApiError> {
        exchange.step("claiming the idempotency key");
        let scope = principal.key_scope();
        let retention = rules.idempotency_retention;
        let claim = Claim::new(&scope, &key, exchange.message_id, retention);
        let guard = Pending::new(Arc::clone(&self.keys), claim.clone());
        let begun = self.keys.begin(&claim).await.map_err(keys_down(exchange.message_id))?;
        let (replay, guard) = match begun {
            Begin::Fresh => (false, Some(guard)),
            settled => {
                guard.forget();
                match settled {
                    Begin::UnknownOutcome(first) => {
                        (false, Some(Pending::new(Arc::clone(&self.keys), claim.taking_over(first))))
                    }
                    Begin::Done(_) => (true, None),
                    Begin::InFlight => return Err(ApiError::RequestInProgress),
                    Begin::Reused | Begin::Fresh => return Err(ApiError::IdempotencyKeyReused),
                }
            }
        };
        Ok((Some(BatchKey { base: key, scope, retention, replay }), guard))
    }
}

/// How a batch's messages are sent.
#[derive(Clone, Copy)]
struct Sending<'a> {
    /// The user property that carries each message's id, if one does.
    id_property: Option<&'a str>,
    /// The batch's key, if it has one.
    key: Option<&'a BatchKey>,
    /// When no more messages are sent (the answer's deadline, less a margin).
    cutoff: Option<tokio::time::Instant>,
    /// The payload limit in force, for a broker's 413.
    max_payload: usize,
}

/// A batch's `Idempotency-Key`, claimed: each message's own record is the
/// key with its index (`KEY#3`), so a retry knows what became of each.
struct BatchKey {
    base: IdempotencyKey,
    scope: String,
    retention: Duration,
    /// The batch was answered before: publish only what was unknown.
    replay: bool,
}

/// How one message's send ended.
enum Send {
    /// The backend's answer.
    Answered(Result<(), PublishError>),
    /// Not sent: too near the answer's deadline.
    TooLate,
    /// Sent, and the deadline came before the backend's answer.
    Unconfirmed,
}

/// The entry a message's send earns.
fn entry_outcome(id: MessageId, sent: Send, max_payload: usize) -> Outcome {
    match sent {
        Send::Answered(Ok(())) => Ok(id),
        Send::Answered(Err(error)) => {
            let refused = publish_refused(&error, max_payload);
            let maybe_sent = refused.after_publish().then_some(id);
            Err((refused, maybe_sent))
        }
        Send::TooLate => Err((ApiError::NotSent { retry_after: UNAVAILABLE_RETRY_AFTER }, None)),
        Send::Unconfirmed => Err((ApiError::UnknownOutcome { retry_after: UNAVAILABLE_RETRY_AFTER }, Some(id))),
    }
}

/// The message, if the ACL lets the caller publish it and it does not set
/// the user property that carries the message id.
fn allowed(
    message: BatchMessage,
    authorized: &Authorized,
    rules: &RuleSet,
    id_property: Option<&str>,
) -> Result<BatchMessage, ApiError> {
    authorized.also(
        rules,
        &Wanted {
            action: Action::Publish,
            topic: &message.topic,
            qos: message.qos,
            retain: message.retain,
            denied: "the ACL does not allow this client to publish to this topic",
        },
    )?;
    let name = id_property.unwrap_or(DEFAULT_MESSAGE_ID_PROPERTY);
    if id_property.is_some() && message.properties.user_properties.iter().any(|(key, _)| key == name) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidUserProperty,
            format!("the user property {name:?} carries the message id, set by the server; use another name"),
        ));
    }
    Ok(message)
}
