//! The one code path every entry point runs. A request is routed to an
//! [`Operation`], and every operation passes through the same stages, each a
//! function whose output is a type, in the order that protects the server:
//!
//! 1. the rules, then the route (a browser's preflight, a page's origin, the
//!    operation's own parse of the request line and headers) → [`Operation`];
//! 2. authenticate → [`crate::auth::Identity`];
//! 3. authorize: the ACL, for every topic the operation touches → `Authorized`;
//! 4. the operation's own checks, then its body, read only now;
//! 5. claim the `Idempotency-Key` → `Claimed`, holding a guard that settles
//!    the key's record at one place, or releases it when dropped;
//! 6. admit: the quotas;
//! 7. execute, then answer: one response, one log line.
//!
//! Identity and the ACL are decided from the request line and headers: a
//! caller who may not publish never makes the server read a byte of its body.
//! The Lambda function and `serve` differ only in how they turn their input
//! into an [`HttpRequest`] and the answer back.

mod admit;
mod answer;
mod authenticate;
mod authorize;
mod batch;
mod claim;
mod exchange;
mod publish;
mod replies;
mod route;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response};

use self::answer::Answered;
use self::exchange::Exchange;
use self::replies::WaitSlots;
pub use self::route::Operation;
use crate::auth::Authenticator;
use crate::config::source::{ConfigStore, FileStore};
use crate::config::{Policy, RuleSet};
use crate::contract::query::MAX_RESPONSE_TIMEOUT;
use crate::contract::{ApiError, Body, HttpRequest, Refusal};
use crate::idempotency::{KeyStore, MemoryKeys};
use crate::publish::Publisher;
use crate::quota::{Quotas, SharedQuotas};
use crate::replies::Replies;

pub use self::publish::DEFAULT_MESSAGE_ID_PROPERTY;
pub use self::replies::DEFAULT_REPLY_TOPIC_ROOT;

/// `Retry-After` seconds when the backend throttles.
const THROTTLED_RETRY_AFTER: u32 = 1;
/// `Retry-After` seconds when the backend or the config store is unavailable.
const UNAVAILABLE_RETRY_AFTER: u32 = 5;

/// The publish service, shared by every request of a process.
pub struct Service<P> {
    publisher: P,
    /// Users, rules and limits: a file in memory or the table behind its caches.
    config: Arc<dyn ConfigStore>,
    authenticator: Authenticator,
    quotas: Quotas,
    /// The quotas a fleet shares (`serve --redis`); `quotas` when it fails.
    shared_quotas: Option<Arc<dyn SharedQuotas>>,
    /// Where `Idempotency-Key` records live.
    keys: Arc<dyn KeyStore>,
    /// How long a 429 `too_many_login_attempts` is held before it is sent.
    login_refusal_delay: Duration,
    /// Whether the log line carries `X-Amzn-Trace-Id`'s root (on Lambda, where
    /// API Gateway sets it; a client of `serve` could write anything there).
    read_amzn_trace_id: bool,
    /// The connection that waits for replies; without one, `ResponseTimeout` is 503.
    replies: Option<Arc<Replies>>,
    /// Requests waiting for replies now (bounded by `[limits] max_waiting`).
    waiting: WaitSlots,
    /// The longest `ResponseTimeout` this entry point allows.
    max_response_timeout: u32,
}

impl<P: Publisher> Service<P> {
    /// A service publishing through `publisher` under a file's `policy`.
    pub fn new(publisher: P, policy: Policy) -> Service<P> {
        Service::with_store(publisher, Arc::new(FileStore::new(policy)))
    }

    /// A service publishing through `publisher` with its config from `config`.
    pub fn with_store(publisher: P, config: Arc<dyn ConfigStore>) -> Service<P> {
        Service {
            publisher,
            config,
            authenticator: Authenticator::default(),
            quotas: Quotas::default(),
            shared_quotas: None,
            keys: Arc::new(MemoryKeys::default()),
            login_refusal_delay: Duration::ZERO,
            read_amzn_trace_id: false,
            replies: None,
            waiting: WaitSlots::default(),
            max_response_timeout: MAX_RESPONSE_TIMEOUT,
        }
    }

    /// Waits for replies (`ResponseTimeout`) over `replies`, for at most
    /// `max_seconds` (and, with a deadline, no longer than it leaves).
    pub fn with_replies(mut self, replies: Arc<Replies>, max_seconds: u32) -> Service<P> {
        self.replies = Some(replies);
        self.max_response_timeout = max_seconds.min(MAX_RESPONSE_TIMEOUT);
        self
    }

    /// Requests waiting for a reply now.
    pub fn waiting(&self) -> usize {
        self.waiting.count()
    }

    /// Logs the X-Ray trace id of the `X-Amzn-Trace-Id` header that API Gateway
    /// adds (the Lambda function).
    pub fn with_amzn_trace_id(mut self) -> Service<P> {
        self.read_amzn_trace_id = true;
        self
    }

    /// Holds each 429 `too_many_login_attempts` for `delay` before answering
    /// (`serve`'s tarpit: docs/serve.md). Not on Lambda, where the wait would be billed.
    pub fn with_login_refusal_delay(mut self, delay: Duration) -> Service<P> {
        self.login_refusal_delay = delay;
        self
    }

    /// Keeps `Idempotency-Key` records in `keys` (in this process's memory by default).
    pub fn with_key_store(mut self, keys: Arc<dyn KeyStore>) -> Service<P> {
        self.keys = keys;
        self
    }

    /// Enforces the instance and user quotas through `quotas`, shared by a
    /// fleet; this process's own when it fails.
    pub fn with_shared_quotas(mut self, quotas: Arc<dyn SharedQuotas>) -> Service<P> {
        self.shared_quotas = Some(quotas);
        self
    }

    /// The publisher (to look up its endpoint before the first request).
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// Where the config comes from (to prefetch it).
    pub fn config(&self) -> &dyn ConfigStore {
        &*self.config
    }

    /// Answers one request. Logs one line: status, topic, message id, latency.
    pub async fn handle<B: Body>(&self, request: HttpRequest<B>) -> Response<Bytes> {
        self.answer(Ok(request), None).await
    }

    /// Answers one request by `answer_by` at the latest (see [`Service::answer`]).
    pub async fn handle_by<B: Body>(
        &self,
        request: HttpRequest<B>,
        answer_by: Option<tokio::time::Instant>,
    ) -> Response<Bytes> {
        self.answer(Ok(request), answer_by).await
    }

    /// Answers what an entry point received: a request, or its refusal of one
    /// it could not decode, which earns the same log line, metrics and CORS
    /// headers as any other answer. By `answer_by` at the latest: whatever the
    /// request waits on then (the table, a hash, the broker) is abandoned and
    /// the answer is 503 with `Retry-After`; a publish abandoned in flight may
    /// still have been delivered, and a 503 never claims it was not.
    pub async fn answer<B: Body>(
        &self,
        received: Result<HttpRequest<B>, Refusal>,
        answer_by: Option<tokio::time::Instant>,
    ) -> Response<Bytes> {
        let received = received.map(|request| {
            let (request, body) = request.split();
            (request, Box::new(body) as Box<dyn Body>)
        });
        self.answer_received(received, answer_by).await
    }

    /// [`Service::answer`] with the body boxed: one copy of the stages, whatever the entry point.
    async fn answer_received(
        &self,
        received: Result<(HttpRequest<()>, Box<dyn Body>), Refusal>,
        answer_by: Option<tokio::time::Instant>,
    ) -> Response<Bytes> {
        let headers = match &received {
            Ok((request, _)) => &request.headers,
            Err(refusal) => &refusal.headers,
        };
        let exchange = Exchange::new(headers, self.read_amzn_trace_id, answer_by);
        let origin = headers.get(header::ORIGIN).cloned();
        let outcome = match received {
            // Boxed once: the stages' future is large, and every layer above would copy it.
            Ok((request, body)) => exchange.within_deadline(Box::pin(self.run(request, body, &exchange))).await,
            Err(refusal) => {
                if let Ok(rules) = self.config.rules().await {
                    exchange.decided_under(rules);
                }
                Err(refusal.error)
            }
        };
        let refused_login = matches!(outcome, Err(ApiError::TooManyLoginAttempts { .. }));
        let response = exchange.respond(outcome, origin.as_ref());
        if refused_login && !self.login_refusal_delay.is_zero() {
            tokio::time::sleep(self.login_refusal_delay).await;
        }
        response
    }

    /// The stages, in order; the operation's own part runs from the ACL on.
    async fn run(
        &self,
        request: HttpRequest<()>,
        body: Box<dyn Body>,
        exchange: &Exchange,
    ) -> Result<Answered, ApiError> {
        let rules = self.rules(exchange).await?;
        let operation = match self.route(&request, body.declared_len(), &rules)? {
            route::Routed::Preflight(response) => return Ok(Answered::Preflight(response)),
            route::Routed::To(operation) => operation,
        };
        if let Some(topic) = operation.topic() {
            exchange.record_topic(topic);
        }
        let identity = self.authenticate(&request, operation.client_id(), &rules, exchange).await?;
        let authorized = self.authorize(&rules, identity, request.source_ip, operation.wanted())?;
        drop(request);
        match operation {
            Operation::Publish(head) => self.publish(head, authorized, body, &rules, exchange).await,
            Operation::PublishBatch(head) => self.publish_batch(head, authorized, body, &rules, exchange).await,
        }
    }

    /// The rules in force, read once per request; 503 when the config store is unavailable.
    async fn rules(&self, exchange: &Exchange) -> Result<Arc<RuleSet>, ApiError> {
        exchange.step("reading the rules");
        let rules = self.config.rules().await.map_err(answer::store_down(exchange.message_id))?;
        exchange.decided_under(Arc::clone(&rules));
        Ok(rules)
    }

    /// The payload limit in force under `rules`: the config's, capped by the backend's.
    fn max_payload(&self, rules: &RuleSet) -> usize {
        rules.limits.max_payload_bytes.min(self.publisher.limits().max_payload_bytes)
    }
}
