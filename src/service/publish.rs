//! The `Publish` operation (`POST /topics/{topic}`), from the ACL on: its own
//! checks, its body, the key's claim, the quota, then the message, sent under
//! the id the claim decided, and with `ResponseTimeout` the device's reply.

use tracing::warn;

use super::answer::{publish_refused, Answered, Published, Replayed};
use super::authorize::Authorized;
use super::claim::Claimed;
use super::exchange::Exchange;
use super::replies::Wait;
use super::{Service, UNAVAILABLE_RETRY_AFTER};
use crate::cause::Chain;
use crate::config::RuleSet;
use crate::contract::{ApiError, Body, ErrorCode, MessageId, PublishHead, PublishRequest};
use crate::idempotency::{Outcome, Pending};
use crate::publish::{Message, PublishError, Publisher};
use crate::replies::{Reply, Waiting};

/// The user property that carries the message id when a request has an
/// `Idempotency-Key` and `[publish] message_id_property` names none.
pub const DEFAULT_MESSAGE_ID_PROPERTY: &str = "message-id";

/// A message ready to go out.
struct Outgoing {
    /// The request, whole.
    request: PublishRequest,
    /// The id its claim decided.
    message_id: MessageId,
    /// The user property that carries the id, if one does.
    id_property: Option<String>,
    /// The key's claim, settled with the publish's outcome.
    guard: Option<Pending>,
}

impl<P: Publisher> Service<P> {
    /// Publishes the message `head` and its `body` make, for a caller the ACL let through.
    pub(super) async fn publish(
        &self,
        head: PublishHead,
        authorized: Authorized,
        body: Box<dyn Body>,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Answered, ApiError> {
        let wait = self.prepare_wait(&head.options, &authorized, rules, exchange)?;
        let id_property = id_property(rules, &head)?;
        let max_payload = self.max_payload(rules);
        let request = head.with_body(body.read(max_payload).await?, max_payload)?;
        let principal = &authorized.identity.principal;
        let key = request.idempotency.as_ref();
        let (message_id, replayed, guard) =
            match self.claim(key, principal, rules.idempotency_retention, wait.is_some(), exchange).await? {
                Claimed::Answered(first) => return Ok(published(first, Replayed::Yes, None)),
                Claimed::WaitAgain(first) => {
                    return self.wait_again(first, &request, wait, &authorized, rules, exchange).await
                }
                Claimed::Publish { message_id, replayed, guard } => (message_id, replayed, guard),
            };
        self.admit(&rules.limits, principal).await?;
        let outgoing = Outgoing { request, message_id, id_property, guard };
        let reply = self.send(outgoing, wait, &authorized, rules, exchange).await?;
        Ok(published(message_id, replayed, reply))
    }

    /// A retry of a request that was published and waited: waits for the reply
    /// to `first` again, publishing nothing. That holds a subscription and a
    /// place among the waiters, so it spends the quota like a request.
    async fn wait_again(
        &self,
        first: MessageId,
        request: &PublishRequest,
        wait: Option<Wait>,
        authorized: &Authorized,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Answered, ApiError> {
        let wait = wait.expect("only a waiting request waits again");
        self.admit(&rules.limits, &authorized.identity.principal).await?;
        let route = self.reply_route(&request.options.properties, authorized, rules, first)?;
        let mut waiting = self.subscribe(&route, exchange).await?;
        exchange.sending_as(first);
        let reply = self.await_reply(&mut waiting, wait.seconds, exchange, self.max_payload(rules)).await?;
        Ok(published(first, Replayed::Yes, Some(reply)))
    }

    /// Sends the message, subscribed first to its response topic if it waits,
    /// and settles its key with the outcome; then waits for the reply.
    async fn send(
        &self,
        outgoing: Outgoing,
        wait: Option<Wait>,
        authorized: &Authorized,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Option<Reply>, ApiError> {
        let Outgoing { request, message_id, id_property, mut guard } = outgoing;
        let PublishRequest { topic, options, payload, .. } = request;
        let mut properties = options.properties;
        // Subscribed before the publish, so that a fast reply cannot be missed.
        let mut waiting = match &wait {
            None => None,
            Some(_) => {
                exchange.step("subscribing to the response topic");
                let route = self.reply_route(&properties, authorized, rules, message_id)?;
                let waiting = self.subscribe(&route, exchange).await?;
                properties.response_topic = Some(route.topic.as_str().to_owned());
                properties.correlation_data = Some(route.correlation);
                Some(waiting)
            }
        };
        exchange.step("publishing");
        if let Some(name) = id_property {
            properties.user_properties.push((name, message_id.to_string()));
        }
        let message = Message { topic, qos: options.qos, retain: options.retain, payload, properties };
        // A subscription gone with its connection: the command could not be answered.
        if waiting.as_mut().is_some_and(Waiting::is_lost) {
            return Err(ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER });
        }
        if let Some(guard) = guard.as_mut() {
            guard.publishing();
        }
        exchange.sending_as(message_id);
        let result = self.publisher.publish(message).await;
        if let Some(guard) = guard {
            guard.finish(outcome_of(&result)).await;
        }
        let max_payload = self.max_payload(rules);
        if let Err(error) = result {
            let client_id = &authorized.identity.client_id;
            warn!(message_id = %message_id, client_id = %client_id, error = %Chain(&error), "publish failed");
            return Err(publish_refused(&error, max_payload));
        }
        match (waiting, wait) {
            (Some(mut waiting), Some(wait)) => {
                self.await_reply(&mut waiting, wait.seconds, exchange, max_payload).await.map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The user property that carries the message id, if one does: the config's,
/// or for a request with a key the default. A request may not set it itself,
/// or a subscriber dropping duplicates could be made to drop a real message.
fn id_property(rules: &RuleSet, head: &PublishHead) -> Result<Option<String>, ApiError> {
    let name = match (&rules.message_id_property, &head.key) {
        (Some(name), _) => name.as_str(),
        (None, Some(_)) => DEFAULT_MESSAGE_ID_PROPERTY,
        (None, None) => return Ok(None),
    };
    if head.options.properties.user_properties.iter().any(|(key, _)| key == name) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidUserProperty,
            format!("the user property {name:?} carries the message id, set by the server; use another name"),
        ));
    }
    Ok(Some(name.to_owned()))
}

/// How a publish's result leaves its key. Released only on a refusal that
/// says the message was not taken: the broker's 4xx, its throttling, or an
/// unavailable backend before sending. A server fault (a bare 500) says nothing
/// either way, so it counts as unknown, with an answer that never came.
pub(super) fn outcome_of(result: &Result<(), PublishError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(PublishError::Unknown(_) | PublishError::Failed(_)) => Outcome::Unknown,
        Err(
            PublishError::Rejected(_)
            | PublishError::TooLarge { .. }
            | PublishError::Throttled(_)
            | PublishError::Unavailable(_),
        ) => Outcome::NotDelivered,
    }
}

/// The answer of a publish, or of a replay of one.
fn published(message_id: MessageId, replayed: Replayed, reply: Option<Reply>) -> Answered {
    Answered::Published(Published { message_id, replayed, reply })
}
