//! The `PublishBatch` operation (`POST /messages`), from the ACL on: its body,
//! each message's own checks and ACL, the quota for all its messages at once,
//! then the messages, concurrently except where they share a topic, each
//! answered as a single publish of it would have been.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tracing::warn;

use super::answer::{publish_refused, Answered};
use super::authorize::{Authorized, Wanted};
use super::exchange::Exchange;
use super::publish::DEFAULT_MESSAGE_ID_PROPERTY;
use super::{Service, UNAVAILABLE_RETRY_AFTER};
use crate::acl::Action;
use crate::cause::Chain;
use crate::config::RuleSet;
use crate::contract::batch::{BatchHead, BatchLimits, BatchMessage};
use crate::contract::{ApiError, Body, ErrorCode, MessageId};
use crate::publish::{Message, Publisher};

/// Topics published to at once; messages to one topic go one after another.
const CONCURRENT_TOPICS: usize = 16;

/// A batch's messages stop being sent this long before the answer is due, so
/// that those not sent are answered as not published rather than cut off.
const SEND_MARGIN: Duration = Duration::from_millis(100);

/// One message's outcome: the id it was published under, or its refusal
/// with the id it may have been published under.
pub(super) type Outcome = Result<MessageId, (ApiError, Option<MessageId>)>;

/// What a batch earned: one outcome per message, in the request's order.
pub(super) struct BatchAnswer {
    /// Each message's outcome.
    pub results: Vec<Outcome>,
}

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
        if head.key.is_some() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidIdempotencyKey,
                "an Idempotency-Key on a batch is not supported yet; publish the batch without one",
            ));
        }
        let limits = self.batch_limits(rules);
        let body = body.read(limits.max_bytes).await.map_err(|error| match error {
            ApiError::PayloadTooLarge { .. } => ApiError::BatchTooLarge { max_bytes: limits.max_bytes },
            error => error,
        })?;
        let checked = head.with_body(&body, self.publisher.limits(), limits)?;
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
        if let Some(count) = NonZeroU32::new(ready.len() as u32) {
            self.admit_n(&rules.limits, &authorized.identity.principal, count).await?;
        }
        exchange.step("publishing");
        for (index, outcome) in self.send_all(ready, id_property, rules, exchange).await {
            results[index] = Some(outcome);
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
    async fn send_all(
        &self,
        ready: Vec<Ready>,
        id_property: Option<&str>,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Vec<(usize, Outcome)> {
        let mut by_topic: Vec<Vec<Ready>> = Vec::new();
        for message in ready {
            match by_topic.iter_mut().find(|group| group[0].message.topic == message.message.topic) {
                Some(group) => group.push(message),
                None => by_topic.push(vec![message]),
            }
        }
        let cutoff = exchange.answer_by.map(|by| by.checked_sub(SEND_MARGIN).unwrap_or(by));
        let max_payload = self.max_payload(rules);
        let sent = stream::iter(by_topic)
            .map(|group| async move {
                let mut outcomes = Vec::with_capacity(group.len());
                for Ready { index, id, message } in group {
                    outcomes.push((index, self.send_one(id, message, id_property, cutoff, max_payload).await));
                }
                outcomes
            })
            .buffer_unordered(CONCURRENT_TOPICS);
        sent.collect::<Vec<_>>().await.into_iter().flatten().collect()
    }

    /// Sends one message under `id`, unless the time to answer is too near.
    async fn send_one(
        &self,
        id: MessageId,
        message: BatchMessage,
        id_property: Option<&str>,
        cutoff: Option<tokio::time::Instant>,
        max_payload: usize,
    ) -> Outcome {
        let not_sent = ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER };
        if cutoff.is_some_and(|cutoff| tokio::time::Instant::now() >= cutoff) {
            return Err((not_sent, None));
        }
        let BatchMessage { topic, qos, retain, payload, mut properties } = message;
        if let Some(name) = id_property {
            properties.user_properties.push((name.to_owned(), id.to_string()));
        }
        let publish = self.publisher.publish(Message { topic, qos, retain, payload, properties });
        let result = match cutoff {
            None => publish.await,
            Some(cutoff) => match tokio::time::timeout_at(cutoff, publish).await {
                Ok(result) => result,
                Err(_) => return Err((ApiError::UnknownOutcome { retry_after: UNAVAILABLE_RETRY_AFTER }, Some(id))),
            },
        };
        result.map(|()| id).map_err(|error| {
            warn!(message_id = %id, error = %Chain(&error), "publish of a batch's message failed");
            let refused = publish_refused(&error, max_payload);
            let maybe_sent = refused.after_publish().then_some(id);
            (refused, maybe_sent)
        })
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
