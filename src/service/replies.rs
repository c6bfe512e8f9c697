//! Waiting for the reply (`ResponseTimeout`): the response topic and
//! correlation data of a command, the caller's right to receive there, a
//! bounded place among the waiters, the subscription made before the
//! publish, and the wait itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::authorize::{Authorized, Wanted};
use super::exchange::Exchange;
use super::{Service, THROTTLED_RETRY_AFTER, UNAVAILABLE_RETRY_AFTER};
use crate::acl::Action;
use crate::auth::{default_client_id, ClientIdFrom};
use crate::cause::Chain;
use crate::config::RuleSet;
use crate::contract::{ApiError, ErrorCode, MessageId, Properties, PublishOptions, Qos, Topic};
use crate::metrics::{self, Refusal};
use crate::publish::Publisher;
use crate::replies::{Reply, WaitError, Waiting};

/// The prefix of the response topic a waiting request gets unless it names its
/// own: `replies/{client_id}/{message id}`.
pub const DEFAULT_REPLY_TOPIC_ROOT: &str = "replies";

/// A wait cut by the invocation's deadline ends this much before it, so its
/// 504 is the answer rather than the deadline's 503.
const REPLY_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The requests of a process waiting for replies now.
#[derive(Default)]
pub(super) struct WaitSlots(Arc<AtomicUsize>);

/// One request's place among those waiting for replies; counted until dropped.
pub(super) struct WaitSlot(Arc<AtomicUsize>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WaitSlots {
    /// Requests waiting now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// A place, or 503 when `max` requests wait already.
    fn take(&self, max: usize) -> Result<WaitSlot, ApiError> {
        let before = self.0.fetch_add(1, Ordering::Relaxed);
        let slot = WaitSlot(Arc::clone(&self.0));
        if before >= max {
            metrics::refused(Refusal::Waiting);
            return Err(ApiError::TooManyWaiting { retry_after: THROTTLED_RETRY_AFTER });
        }
        Ok(slot)
    }
}

/// What a publish that waits for its reply holds until it is answered.
pub(super) struct Wait {
    /// Its `ResponseTimeout`.
    pub seconds: u32,
    _slot: WaitSlot,
}

/// Where a command's reply comes, and how it is known.
pub(super) struct ReplyRoute {
    /// The response topic the command carries.
    pub topic: Topic,
    /// The correlation data the command carries and its reply repeats.
    pub correlation: Bytes,
}

impl<P: Publisher> Service<P> {
    /// A publish's checks for waiting, before its body is read: the wait's
    /// bound on this entry point, the ACL for receiving on the response topic,
    /// and a place among the waiters. `None` for a publish that does not wait.
    pub(super) fn prepare_wait(
        &self,
        options: &PublishOptions,
        authorized: &Authorized,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Option<Wait>, ApiError> {
        let Some(seconds) = options.response_timeout else { return Ok(None) };
        let allowed = self.response_timeout_allowed(exchange.answer_by);
        if seconds > allowed {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidResponseTimeout,
                format!("ResponseTimeout may be at most {allowed} s here, not {seconds}"),
            ));
        }
        self.reply_route(&options.properties, authorized, rules, exchange.message_id)?;
        Ok(Some(Wait { seconds, _slot: self.waiting.take(rules.limits.max_waiting)? }))
    }

    /// The longest `ResponseTimeout` a request may ask for now: this entry
    /// point's bound, and no more whole seconds than its deadline leaves.
    fn response_timeout_allowed(&self, answer_by: Option<tokio::time::Instant>) -> u32 {
        let left = answer_by.map_or(u64::MAX, |by| by.saturating_duration_since(tokio::time::Instant::now()).as_secs());
        u32::try_from(left).unwrap_or(u32::MAX).min(self.max_response_timeout)
    }

    /// Where the reply to the message published as `id` comes: its own
    /// `ResponseTopic`, else `replies/{client_id}/{id}` (the client id made
    /// from `id` for a caller that gave none), if the caller may receive there.
    /// Asked again once a retry's claim gives it the first request's id.
    pub(super) fn reply_route(
        &self,
        properties: &Properties,
        authorized: &Authorized,
        rules: &RuleSet,
        id: MessageId,
    ) -> Result<ReplyRoute, ApiError> {
        let identity = &authorized.identity;
        let client_id = match identity.client_id_from {
            ClientIdFrom::Server => default_client_id(id),
            ClientIdFrom::Certificate | ClientIdFrom::Request => identity.client_id.clone(),
        };
        let name = match &properties.response_topic {
            Some(topic) => topic.clone(),
            None => format!("{DEFAULT_REPLY_TOPIC_ROOT}/{client_id}/{id}"),
        };
        let topic = Topic::parse(name.into_bytes(), self.publisher.limits().topic).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidResponseTopic, format!("the response topic is not valid here: {e}"))
        })?;
        authorized.also_as(
            rules,
            &Wanted {
                action: Action::Subscribe,
                topic: &topic,
                qos: Qos::AtLeastOnce,
                retain: false,
                denied: "the ACL does not allow this client to receive replies on the response topic",
            },
            client_id.as_str(),
        )?;
        let correlation = properties.correlation_data.clone().unwrap_or_else(|| Bytes::from(id.to_string()));
        Ok(ReplyRoute { topic, correlation })
    }

    /// Subscribes to the response topic; 503 if the broker cannot be reached.
    pub(super) async fn subscribe(&self, route: &ReplyRoute, exchange: &Exchange) -> Result<Waiting, ApiError> {
        let message_id = exchange.message_id;
        let Some(replies) = &self.replies else {
            warn!(message_id = %message_id, "ResponseTimeout asked of a service without a reply connection");
            return Err(ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER });
        };
        let (topic, correlation) = (route.topic.as_str(), route.correlation.clone());
        replies.wait_for_by(topic, correlation, exchange.answer_by).await.map_err(|error| {
            warn!(message_id = %message_id, error = %Chain(&error), "cannot subscribe to the response topic");
            match error {
                WaitError::Refused(_) => ApiError::Internal,
                WaitError::Unavailable(_) | WaitError::Lost => {
                    ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
                }
            }
        })
    }

    /// Waits `seconds` for the reply (never past the deadline): 504 if none
    /// comes, 502 if it is over `max_payload`, 503 if its connection dropped.
    pub(super) async fn await_reply(
        &self,
        waiting: &mut Waiting,
        seconds: u32,
        exchange: &Exchange,
        max_payload: usize,
    ) -> Result<Reply, ApiError> {
        exchange.step("waiting for the reply");
        let mut until = tokio::time::Instant::now() + Duration::from_secs(seconds.into());
        if let Some(by) = exchange.answer_by {
            until = until.min(by.checked_sub(REPLY_DEADLINE_MARGIN).unwrap_or(by));
        }
        match tokio::time::timeout_at(until, waiting.reply()).await {
            Ok(Ok(reply)) if reply.payload.len() > max_payload => {
                Err(ApiError::ReplyTooLarge { max: max_payload, size: reply.payload.len() })
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ApiError::ReplyLost { retry_after: UNAVAILABLE_RETRY_AFTER }),
            Err(_) => Err(ApiError::ReplyTimeout { seconds }),
        }
    }
}
