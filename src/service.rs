//! The one code path every entry point runs: parse, authenticate, authorize,
//! publish, answer. The Lambda function and `serve` differ only in how they
//! turn their input into an [`HttpRequest`] and the answer back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tracing::{field, info, info_span, warn, Instrument, Span};

use crate::acl::{Access, Action, Effect};
use crate::auth::{Authenticator, Identity};
use crate::config::source::{ConfigStore, FileStore};
use crate::config::{Policy, RuleSet, StoreError};
use crate::contract::headers::{payload_format_indicator_header, user_properties_header};
use crate::contract::query::MAX_RESPONSE_TIMEOUT;
use crate::contract::{
    cors, parse_request, ApiError, ErrorCode, HttpRequest, IdempotencyKey, MessageId, Topic, TraceContext,
};
use crate::idempotency::{Begin, Claim, KeyStore, MemoryKeys, Outcome, Pending};
use crate::publish::{Message, PublishError, Publisher};
use crate::quota::{Quotas, SharedQuotas};
use crate::replies::{Replies, Reply, WaitError};

/// `Retry-After` seconds when the backend throttles.
const THROTTLED_RETRY_AFTER: u32 = 1;
/// `Retry-After` seconds when the backend or the config store is unavailable.
const UNAVAILABLE_RETRY_AFTER: u32 = 5;
/// A wait cut by the invocation's deadline ends this much before it, so its
/// 504 is the answer rather than the deadline's 503.
const REPLY_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The response topic of a waiting request: its own `ResponseTopic`, else
/// `replies/{client_id}/{message id}`.
fn response_topic(
    properties: &crate::contract::Properties,
    client_id: &str,
    message_id: MessageId,
    limits: crate::contract::TopicLimits,
) -> Result<Topic, ApiError> {
    let name = match &properties.response_topic {
        Some(topic) => topic.clone(),
        None => format!("{DEFAULT_REPLY_TOPIC_ROOT}/{client_id}/{message_id}"),
    };
    Topic::parse(name.into_bytes(), limits).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidResponseTopic, format!("the response topic is not valid here: {e}"))
    })
}

/// The correlation data of a waiting request: its own, else the message id's 32 characters.
fn correlation_of(properties: &crate::contract::Properties, message_id: MessageId) -> Bytes {
    properties.correlation_data.clone().unwrap_or_else(|| Bytes::from(message_id.to_string()))
}

/// The config's payload limit, capped by the backend's.
fn payload_limit(rules: &RuleSet, backend: usize) -> usize {
    rules.limits.max_payload_bytes.min(backend)
}

/// Logs a request's one line in its `span`: status, message id, error code, latency.
/// On Lambda this line is also the request's CloudWatch metrics, read off its
/// numeric `status` and `latency_us` and its `error` (src/logs.rs).
fn log_answer(span: &Span, status: StatusCode, message_id: MessageId, error: Option<&'static str>, started: Instant) {
    crate::metrics::request(status.as_u16(), error, started.elapsed());
    span.in_scope(|| {
        info!(
            status = status.as_u16(),
            message_id = %message_id,
            error = error.unwrap_or(""),
            latency_us = started.elapsed().as_micros() as u64,
            "request"
        )
    });
}

/// The span of a request's log lines; its fields are filled in as they become known.
fn request_span() -> Span {
    info_span!(
        "request",
        topic = field::Empty,
        step = field::Empty,
        trace_id = field::Empty,
        xray_trace_id = field::Empty
    )
}

/// What a request answers when the config store is unavailable; the cause is logged.
fn store_down(message_id: MessageId) -> impl Fn(StoreError) -> ApiError + Copy {
    move |error| {
        warn!(message_id = %message_id, %error, "the config store is unavailable");
        ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
    }
}

/// What a request with an `Idempotency-Key` answers when the key store is
/// unavailable (a key that cannot be checked promises nothing); the cause is logged.
fn keys_down(message_id: MessageId) -> impl Fn(StoreError) -> ApiError + Copy {
    move |error| {
        warn!(message_id = %message_id, error = %error.0, "the idempotency key store is unavailable");
        ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
    }
}

/// The user property that carries the message id when a request has an
/// `Idempotency-Key` and `[publish] message_id_property` names none.
pub const DEFAULT_MESSAGE_ID_PROPERTY: &str = "message-id";

/// The `Idempotent-Replayed` header of an answer to a retry.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A publish that succeeded, or the first answer to a key replayed.
struct Published {
    /// The answer's `X-Message-Id`: this request's, or the first request's with its key.
    message_id: MessageId,
    /// `Idempotent-Replayed`: `true` (answered from the record, nothing
    /// published) or `unknown-outcome` (published again under the first id).
    replayed: Option<&'static str>,
    /// The device's reply, for a request that waited for one.
    reply: Option<Reply>,
}

/// What claiming a request's `Idempotency-Key` decided.
enum Claimed {
    /// Publish under `as_id` (the first request's, taking over an unknown
    /// outcome); `pending` writes the outcome.
    Publish {
        /// The message id to publish under.
        as_id: MessageId,
        /// `Idempotent-Replayed` of the answer.
        replayed: Option<&'static str>,
        /// The claim, finished with the publish's outcome.
        pending: Pending,
    },
    /// Published already, under this id: its first answer again.
    Answered(MessageId),
    /// Published already, under this id, by a request that waits: wait for the reply again.
    WaitAgain(MessageId),
}

/// The answer to a publish the backend did not take.
fn answer_to(error: &PublishError, max_payload: usize) -> ApiError {
    match error {
        PublishError::Rejected(_) => {
            ApiError::bad_request(ErrorCode::RejectedByBroker, "the message broker rejected the message as invalid")
        }
        PublishError::TooLarge { max_payload: max } => {
            ApiError::PayloadTooLarge { max: max.map_or(max_payload, |m| m.min(max_payload)) }
        }
        PublishError::Throttled(_) => ApiError::TooManyRequests { retry_after: THROTTLED_RETRY_AFTER },
        PublishError::Unavailable(_) => ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER },
        PublishError::Unknown(_) => ApiError::UnknownOutcome { retry_after: UNAVAILABLE_RETRY_AFTER },
        PublishError::Failed(_) => ApiError::Internal,
    }
}

/// Where a waiting request's reply comes, and how it is known: the response
/// topic and the correlation data the command carries.
fn reply_route(
    properties: &crate::contract::Properties,
    client_id: &str,
    message_id: MessageId,
    limits: crate::contract::TopicLimits,
) -> Result<(Topic, Bytes), ApiError> {
    Ok((response_topic(properties, client_id, message_id, limits)?, correlation_of(properties, message_id)))
}

/// The prefix of the response topic a waiting request gets unless it names its
/// own: `replies/{client_id}/{message id}`.
pub const DEFAULT_REPLY_TOPIC_ROOT: &str = "replies";

/// One request's place among those waiting for replies; counted until dropped.
struct WaitSlot(Arc<AtomicUsize>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer to a request whose device replied: the reply's payload, its
/// content type and properties, and our message id.
fn reply_response(published: &Published, reply: Reply) -> Response<Bytes> {
    let content_type = reply
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut ok = Response::builder()
        .status(StatusCode::OK)
        .header("X-Message-Id", published.message_id.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, reply.payload.len());
    if !reply.user_properties.is_empty() {
        ok = ok.header(crate::contract::headers::USER_PROPERTIES, user_properties_header(&reply.user_properties));
    }
    if let Some(indicator) = reply.payload_format_indicator {
        ok = ok.header(crate::contract::headers::PAYLOAD_FORMAT_INDICATOR, payload_format_indicator_header(indicator));
    }
    if let Some(replayed) = published.replayed {
        ok = ok.header(REPLAYED_HEADER, replayed);
    }
    ok.body(reply.payload).expect("every header value is checked or static")
}

/// How a publish's result leaves its key. Released only on a refusal that
/// says the message was not taken: the broker's 4xx, its throttling, or an
/// unavailable backend before sending. A server fault (a bare 500) says nothing
/// either way, so it counts as unknown, with an answer that never came.
fn outcome_of(result: &Result<(), PublishError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(PublishError::Unknown(_) | PublishError::Failed(_)) => Outcome::Unknown,
        Err(PublishError::Rejected(_) | PublishError::TooLarge { .. } | PublishError::Throttled(_)) => {
            Outcome::NotDelivered
        }
        Err(PublishError::Unavailable(_)) => Outcome::NotDelivered,
    }
}

/// The X-Ray trace id (`Root=1-...`) of the `X-Amzn-Trace-Id` header that API
/// Gateway and ALB add, for the log line only.
fn xray_trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-amzn-trace-id")?.to_str().ok()?;
    let root = value.split(';').find_map(|part| part.trim().strip_prefix("Root="))?;
    (root.len() <= 64 && root.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(root)
}

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
    waiting: Arc<AtomicUsize>,
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
            waiting: Arc::new(AtomicUsize::new(0)),
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
        self.waiting.load(Ordering::Relaxed)
    }

    /// Logs the X-Ray trace id of the `X-Amzn-Trace-Id` header that API Gateway
    /// adds (the Lambda function).
    pub fn with_amzn_trace_id(mut self) -> Service<P> {
        self.read_amzn_trace_id = true;
        self
    }

    /// Holds each 429 `too_many_login_attempts` for `delay` before answering
    /// (`serve`: a tarpit). Refused at once, a guesser on keep-alive connections
    /// would send the next guess at once too, and its flood of cheap refusals
    /// would take the cores from everyone else; held, each of its connections
    /// makes one guess per `delay`. The request's body is dropped first, so a
    /// held refusal costs a timer and the connection, nothing more. Not on
    /// Lambda, where the wait would be billed time.
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

    /// The payload limit in force: the config's and the backend's, whichever is
    /// smaller (the backend's alone while the config store is unavailable).
    pub async fn max_payload_bytes(&self) -> usize {
        let backend = self.publisher.limits().max_payload_bytes;
        self.config.rules().await.map_or(backend, |rules| payload_limit(&rules, backend))
    }

    /// Answers one request. Logs one line: status, topic, message id, latency.
    pub async fn handle(&self, request: HttpRequest) -> Response<Bytes> {
        self.handle_by(request, None).await
    }

    /// Answers one request by `answer_by` at the latest: whatever the request
    /// is waiting on then (the table, a hash, the broker) is abandoned and the
    /// answer is 503 with `Retry-After`. A publish abandoned in flight may still
    /// have been delivered; a 503 never claims it was not. Each call keeps its
    /// own bound too, so every call is bounded by its own limit or the time left,
    /// whichever is shorter.
    pub async fn handle_by(&self, request: HttpRequest, answer_by: Option<tokio::time::Instant>) -> Response<Bytes> {
        let started = Instant::now();
        let message_id = MessageId::next();
        let span = self.request_span(&request.headers);
        let mut rules_read = None;
        // The id a message was handed to the backend under, once it was.
        let mut sent_as = None;
        let work = async {
            Span::current().record("step", "reading the rules");
            let rules = self.config.rules().await.map_err(store_down(message_id))?;
            rules_read = Some(Arc::clone(&rules));
            if let Some(preflight) = cors::preflight(rules.cors.as_ref(), &request) {
                return Ok(Err(preflight));
            }
            if request.method == Method::POST && cors::refused_cross_origin(rules.cors.as_ref(), &request.headers) {
                return Err(ApiError::OriginNotAllowed);
            }
            self.publish(&request, &rules, message_id, answer_by, &mut sent_as).await.map(Ok)
        }
        .instrument(span.clone());
        let result = match answer_by {
            None => work.await,
            Some(answer_by) => {
                let timed = tokio::time::timeout_at(answer_by, work).await;
                timed.unwrap_or_else(|_| {
                    span.in_scope(|| {
                        warn!(
                            message_id = %message_id,
                            "the invocation's time is running out; answering 503 before the runtime ends it"
                        )
                    });
                    Err(match sent_as {
                        Some(_) => ApiError::UnknownOutcome { retry_after: UNAVAILABLE_RETRY_AFTER },
                        None => ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER },
                    })
                })
            }
        };
        let error = result.as_ref().err().map(|e| e.code().as_str());
        let refused_login = matches!(result, Err(ApiError::TooManyLoginAttempts { .. }));
        let mut answered_id = message_id;
        let mut response = match result {
            Ok(Err(preflight)) => preflight,
            Ok(Ok(mut published)) => {
                answered_id = published.message_id;
                if let Some(reply) = published.reply.take() {
                    reply_response(&published, reply)
                } else {
                    let mut ok = Response::builder()
                        .status(StatusCode::OK)
                        .header("X-Message-Id", published.message_id.to_string())
                        .header(header::CONTENT_LENGTH, "0");
                    if let Some(replayed) = published.replayed {
                        ok = ok.header(REPLAYED_HEADER, replayed);
                    }
                    ok.body(Bytes::new()).expect("static headers are valid")
                }
            }
            Err(error) => {
                let unknown = error.after_publish();
                let mut response = error.into_response();
                // A message that may have been published: the id it would carry.
                if let (true, Some(id)) = (unknown, sent_as) {
                    answered_id = id;
                    let value = HeaderValue::from_str(&id.to_string()).expect("hex digits are a header value");
                    response.headers_mut().insert("x-message-id", value);
                }
                response
            }
        };
        let cors = rules_read.as_ref().and_then(|rules| rules.cors.as_ref());
        cors::decorate(cors, cors::allowed_origin(cors, request.headers.get(header::ORIGIN)), &mut response);
        log_answer(&span, response.status(), answered_id, error, started);
        if refused_login && !self.login_refusal_delay.is_zero() {
            drop(request);
            tokio::time::sleep(self.login_refusal_delay).await;
        }
        response
    }

    /// Answers with `error` a request its entry point could not decode (a Lambda
    /// event whose query or body does not decode; for `serve`, a body over the
    /// limit or a query that does not decode), with the log line of
    /// [`Service::handle_by`]: every request has its line, its trace ids and its
    /// metrics. Its `Origin` earns the answer its CORS headers, so a page can
    /// read why it was refused.
    pub async fn refuse(&self, error: ApiError, headers: &HeaderMap) -> Response<Bytes> {
        let started = Instant::now();
        let code = error.code().as_str();
        let mut response = error.into_response();
        if let Ok(rules) = self.config.rules().await {
            let cors = rules.cors.as_ref();
            cors::decorate(cors, cors::allowed_origin(cors, headers.get(header::ORIGIN)), &mut response);
        }
        log_answer(&self.request_span(headers), response.status(), MessageId::next(), Some(code), started);
        response
    }

    /// The span of a request's log lines, with the trace ids it came with; the
    /// topic, once parsed, and the step it is at are recorded as they come.
    fn request_span(&self, headers: &HeaderMap) -> Span {
        let span = request_span();
        if let Some(trace_id) = TraceContext::trace_id_of(headers) {
            span.record("trace_id", trace_id);
        }
        if self.read_amzn_trace_id {
            if let Some(root) = xray_trace_id(headers) {
                span.record("xray_trace_id", root);
            }
        }
        span
    }

    /// Parses, authenticates, authorizes, claims the `Idempotency-Key`, admits
    /// and publishes under `rules`: the steps are recorded in the current span,
    /// for the log line of a request cut short.
    async fn publish(
        &self,
        request: &HttpRequest,
        rules: &RuleSet,
        message_id: MessageId,
        answer_by: Option<tokio::time::Instant>,
        sent_as: &mut Option<MessageId>,
    ) -> Result<Published, ApiError> {
        let span = Span::current();
        let store_down = store_down(message_id);
        let limits = self.publisher.limits();
        let max_payload = payload_limit(rules, limits.max_payload_bytes);
        let parsed = parse_request(request, limits, max_payload)?;
        span.record("topic", parsed.topic.as_str());

        span.record("step", "authenticating");
        let identity = self
            .authenticator
            .authenticate(
                request,
                &parsed.options,
                message_id,
                |name| async move { self.config.user(&name).await.map_err(store_down) },
                || {
                    self.quotas.admit_password_check(&rules.limits, request.source_ip).map_err(|retry_after| {
                        crate::metrics::refused(crate::metrics::Refusal::PasswordChecks);
                        ApiError::TooManyLoginAttempts { retry_after }
                    })
                },
            )
            .await?;
        let access = Access {
            topic: &parsed.topic,
            username: identity.username.as_deref(),
            client_id: identity.client_id.as_str(),
            source_ip: request.source_ip,
            qos: parsed.options.qos.level(),
            retain: parsed.options.retain,
            basic: identity.basic,
            certificate: identity.certificate,
            action: Action::Publish,
        };
        if rules.acl.decide(&access) == Effect::Deny {
            return Err(ApiError::Unauthorized {
                code: ErrorCode::NotAuthorized,
                message: "the ACL does not allow this client to publish to this topic",
            });
        }

        // The client id of the default response topic: for a caller that gave none,
        // the one made from the id the request is answered under, which for a
        // retry with an Idempotency-Key is the first request's.
        let defaulted = parsed.options.client_id.is_none() && !identity.certificate;
        let reply_client_id = |id: MessageId| {
            if defaulted {
                crate::auth::default_client_id(id).as_str().to_owned()
            } else {
                identity.client_id.as_str().to_owned()
            }
        };

        // Where the reply to the message published as `id` comes, if the caller
        // may receive there: checked again after a retry's key claim, which may
        // publish (or wait) under the first request's id, and so on its topic.
        let receivable_route = |properties: &crate::contract::Properties, id: MessageId| {
            let client_id = reply_client_id(id);
            let (topic, correlation) = reply_route(properties, &client_id, id, limits.topic)?;
            let receive = Access {
                topic: &topic,
                client_id: &client_id,
                qos: 1,
                retain: false,
                action: Action::Subscribe,
                ..access
            };
            if rules.acl.decide(&receive) == Effect::Deny {
                return Err(ApiError::Unauthorized {
                    code: ErrorCode::NotAuthorized,
                    message: "the ACL does not allow this client to receive replies on the response topic",
                });
            }
            Ok((topic, correlation))
        };

        // A request that waits for its reply: the caller must be allowed to
        // receive on the response topic, and a place among the waiters.
        let wait = match parsed.options.response_timeout {
            None => None,
            Some(seconds) => {
                let allowed = self.response_timeout_allowed(answer_by);
                if seconds > allowed {
                    return Err(ApiError::bad_request(
                        ErrorCode::InvalidResponseTimeout,
                        format!("ResponseTimeout may be at most {allowed} s here, not {seconds}"),
                    ));
                }
                receivable_route(&parsed.options.properties, message_id)?;
                Some((seconds, self.take_wait_slot(&rules.limits)?))
            }
        };

        let quota_user = identity.username.as_deref().or(identity.certificate.then_some(identity.client_id.as_str()));

        // The message id property is the server's: a request may not forge it,
        // or a subscriber dropping duplicates could be made to drop a real message.
        let id_property = match (&rules.message_id_property, &parsed.idempotency) {
            (Some(name), _) => Some(name.as_str()),
            (None, Some(_)) => Some(DEFAULT_MESSAGE_ID_PROPERTY),
            (None, None) => None,
        };
        if let Some(name) = id_property {
            if parsed.options.properties.user_properties.iter().any(|(key, _)| key == name) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidUserProperty,
                    format!("the user property {name:?} carries the message id, set by the server; use another name"),
                ));
            }
        }

        // The key is claimed only now, once the credentials and the ACL let the
        // request through, and before the quota, which a replay does not spend.
        let mut message_id = message_id;
        let mut replayed = None;
        let mut pending = None;
        if let Some(key) = &parsed.idempotency {
            span.record("step", "claiming the idempotency key");
            match self.claim_key(key, &identity, message_id, rules.idempotency_retention, wait.is_some()).await? {
                Claimed::Publish { as_id, replayed: how, pending: claimed } => {
                    (message_id, replayed, pending) = (as_id, how, Some(claimed));
                }
                Claimed::Answered(first) => {
                    return Ok(Published { message_id: first, replayed: Some("true"), reply: None });
                }
                Claimed::WaitAgain(first) => {
                    // Published already: wait for its reply again, publishing nothing.
                    // That holds a subscription and a place among the waiters, so it
                    // spends the quota like a request.
                    if let Err((quota, retry_after)) = self.admit(&rules.limits, quota_user).await {
                        crate::metrics::refused(quota);
                        return Err(ApiError::TooManyRequests { retry_after });
                    }
                    let (seconds, _slot) = wait.expect("only a waiting request waits again");
                    let (topic, correlation) = receivable_route(&parsed.options.properties, first)?;
                    let mut waiting = self.subscribe(&topic, correlation, first).await?;
                    *sent_as = Some(first);
                    let reply = self.await_reply(&mut waiting, seconds, answer_by, max_payload).await?;
                    return Ok(Published { message_id: first, replayed: Some("true"), reply: Some(reply) });
                }
            }
        }

        if let Err((quota, retry_after)) = self.admit(&rules.limits, quota_user).await {
            crate::metrics::refused(quota);
            if let Some(pending) = pending {
                pending.finish(Outcome::NotDelivered).await;
            }
            return Err(ApiError::TooManyRequests { retry_after });
        }

        // Subscribed before the publish, so that a fast reply cannot be missed.
        let mut waiting = None;
        let mut properties = parsed.options.properties;
        if let Some((seconds, slot)) = wait {
            span.record("step", "subscribing to the response topic");
            let (topic, correlation) = match receivable_route(&properties, message_id) {
                Ok(route) => route,
                Err(error) => {
                    if let Some(pending) = pending {
                        pending.finish(Outcome::NotDelivered).await;
                    }
                    return Err(error);
                }
            };
            match self.subscribe(&topic, correlation.clone(), message_id).await {
                Ok(subscribed) => waiting = Some((subscribed, seconds, slot)),
                Err(error) => {
                    if let Some(pending) = pending {
                        pending.finish(Outcome::NotDelivered).await;
                    }
                    return Err(error);
                }
            }
            properties.response_topic = Some(topic.as_str().to_owned());
            properties.correlation_data = Some(correlation);
        }

        span.record("step", "publishing");
        if let Some(name) = id_property {
            properties.user_properties.push((name.to_owned(), message_id.to_string()));
        }
        let message = Message {
            topic: parsed.topic,
            qos: parsed.options.qos,
            retain: parsed.options.retain,
            payload: parsed.payload,
            properties,
        };
        // A subscription already gone with its connection: the command would go
        // out with no way to receive its reply.
        if let Some((subscribed, _, _)) = waiting.as_mut() {
            if subscribed.is_lost() {
                if let Some(pending) = pending {
                    pending.finish(Outcome::NotDelivered).await;
                }
                return Err(ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER });
            }
        }
        if let Some(pending) = pending.as_mut() {
            pending.publishing();
        }
        *sent_as = Some(message_id);
        let result = self.publisher.publish(message).await;
        if let Some(pending) = pending {
            pending.finish(outcome_of(&result)).await;
        }
        if let (Ok(()), Some((mut subscribed, seconds, _slot))) = (&result, waiting) {
            span.record("step", "waiting for the reply");
            let reply = self.await_reply(&mut subscribed, seconds, answer_by, max_payload).await?;
            return Ok(Published { message_id, replayed, reply: Some(reply) });
        }
        result.map(|()| Published { message_id, replayed, reply: None }).map_err(|error| {
            warn!(message_id = %message_id, client_id = %identity.client_id, error = %error, "publish failed");
            answer_to(&error, max_payload)
        })
    }

    /// Claims a request's `Idempotency-Key` for `message_id` under the caller's
    /// identity. A request that `waits` for its reply, published already, waits again.
    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        identity: &Identity,
        message_id: MessageId,
        retention: Duration,
        waits: bool,
    ) -> Result<Claimed, ApiError> {
        // The verified user name, else the certificate's CN (its client id).
        let identity_name = match &identity.username {
            Some(name) => format!("user:{name}"),
            None => format!("cn:{}", identity.client_id.as_str()),
        };
        let claim = Claim::new(&identity_name, key, message_id, retention);
        // Held from before the store is asked: a request cut short mid-claim
        // (a deadline, a client gone), or a store that took the claim and lost
        // only its answer, leaves the key released, not held for a lease.
        let guard = Pending::new(Arc::clone(&self.keys), claim.clone());
        let begun = self.keys.begin(&claim).await.map_err(keys_down(message_id))?;
        if matches!(begun, Begin::Fresh) {
            return Ok(Claimed::Publish { as_id: message_id, replayed: None, pending: guard });
        }
        guard.forget();
        match begun {
            Begin::Fresh => unreachable!("answered above"),
            Begin::UnknownOutcome(first) => Ok(Claimed::Publish {
                as_id: first,
                replayed: Some("unknown-outcome"),
                pending: Pending::new(Arc::clone(&self.keys), claim.taking_over(first)),
            }),
            Begin::Done(first) if waits => Ok(Claimed::WaitAgain(first)),
            Begin::Done(first) => Ok(Claimed::Answered(first)),
            Begin::InFlight => Err(ApiError::RequestInProgress),
            Begin::Reused => Err(ApiError::IdempotencyKeyReused),
        }
    }

    /// The longest `ResponseTimeout` a request may ask for now: this entry
    /// point's bound, and no more whole seconds than its deadline leaves.
    fn response_timeout_allowed(&self, answer_by: Option<tokio::time::Instant>) -> u32 {
        let left = answer_by.map_or(u64::MAX, |by| by.saturating_duration_since(tokio::time::Instant::now()).as_secs());
        u32::try_from(left).unwrap_or(u32::MAX).min(self.max_response_timeout)
    }

    /// A place among the requests waiting for replies, or 503 when `max_waiting` wait already.
    fn take_wait_slot(&self, limits: &crate::config::Limits) -> Result<WaitSlot, ApiError> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let slot = WaitSlot(Arc::clone(&self.waiting));
        if before >= limits.max_waiting {
            crate::metrics::refused(crate::metrics::Refusal::Waiting);
            return Err(ApiError::TooManyWaiting { retry_after: THROTTLED_RETRY_AFTER });
        }
        Ok(slot)
    }

    /// Subscribes to the response topic; 503 if the broker cannot be reached.
    async fn subscribe(
        &self,
        topic: &Topic,
        correlation: Bytes,
        message_id: MessageId,
    ) -> Result<crate::replies::Waiting, ApiError> {
        let Some(replies) = &self.replies else {
            warn!(message_id = %message_id, "ResponseTimeout asked of a service without a reply connection");
            return Err(ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER });
        };
        replies.wait_for(topic.as_str(), correlation).await.map_err(|error| {
            warn!(message_id = %message_id, %error, "cannot subscribe to the response topic");
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
    async fn await_reply(
        &self,
        waiting: &mut crate::replies::Waiting,
        seconds: u32,
        answer_by: Option<tokio::time::Instant>,
        max_payload: usize,
    ) -> Result<Reply, ApiError> {
        let mut until = tokio::time::Instant::now() + Duration::from_secs(seconds.into());
        if let Some(by) = answer_by {
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

    /// The instance and user quotas: the fleet's when shared and reachable,
    /// else this process's.
    async fn admit(
        &self,
        limits: &crate::config::Limits,
        user: Option<&str>,
    ) -> Result<(), (crate::metrics::Refusal, u32)> {
        if let Some(shared) = &self.shared_quotas {
            if let Ok(admitted) = shared.admit(limits, user).await {
                return admitted;
            }
        }
        self.quotas.admit(limits, user)
    }
}

#[cfg(test)]
mod tests {
    //! Every status and error code of the contract, through the service with
    //! the in-process fakes: what a request earns, and that only a 200 publishes.

    use std::collections::BTreeSet;

    use http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::contract::query::decode_query;
    use crate::contract::{BackendLimits, ClientCertificate, Qos, RequestPath};
    use crate::fakes::{FakePublisher, FakeStore};
    use crate::publish::iot::IOT_LIMITS;

    /// user0 / secret0 (bcrypt at its lowest cost: the unit tests stay fast) may publish
    /// under `home/`, except `home/secret`; each user has one message a second.
    fn config() -> String {
        let hash = bcrypt::hash("secret0", 4).unwrap();
        format!(
            r#"
        [[users]]
        username = "user0"
        password_hash = "{hash}"

        [[rules]]
        priority = 10
        effect = "deny"
        topics = ["home/secret"]

        [[rules]]
        priority = 20
        effect = "allow"
        topics = ["home/#"]

        [limits]
        max_payload_bytes = 64
        user_messages_per_second = 1.0
    "#
        )
    }
    const USER0: &str = "Basic dXNlcjA6c2VjcmV0MA==";

    struct Case {
        path: &'static str,
        query: &'static str,
        authorization: Option<&'static str>,
        certificate: Option<Option<&'static str>>,
        method: Method,
        body: &'static [u8],
        /// Headers besides Authorization.
        headers: &'static [(&'static str, &'static str)],
    }

    const POST: Case = Case {
        path: "/topics/home/kitchen",
        query: "",
        authorization: Some(USER0),
        certificate: None,
        method: Method::POST,
        body: b"21.5",
        headers: &[],
    };

    impl Case {
        fn request(&self) -> HttpRequest {
            let mut headers = HeaderMap::new();
            if let Some(value) = self.authorization {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            }
            for (name, value) in self.headers {
                headers.append(*name, HeaderValue::from_static(value));
            }
            HttpRequest {
                method: self.method.clone(),
                path: RequestPath::Encoded(self.path.into()),
                query: decode_query(self.query).unwrap(),
                headers,
                body: Bytes::from_static(self.body),
                source_ip: None,
                client_certificate: self.certificate.map(|cn| ClientCertificate { common_name: cn.map(str::to_owned) }),
            }
        }
    }

    fn fake_service() -> (Service<FakePublisher>, FakePublisher, Arc<FakeStore>) {
        let (publisher, store) = (FakePublisher::new(), FakeStore::new(&config()));
        (Service::with_store(publisher.clone(), Arc::clone(&store) as Arc<dyn ConfigStore>), publisher, store)
    }

    /// The status and the JSON body's `error` (empty for a 200).
    async fn answer(service: &Service<FakePublisher>, request: HttpRequest) -> (u16, String) {
        let response = service.handle(request).await;
        let status = response.status().as_u16();
        if status == 200 {
            assert!(response.headers().contains_key("x-message-id"));
            return (status, String::new());
        }
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
        (status, body["error"].as_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn every_error_code_of_the_contract_is_reached_and_only_a_200_publishes() {
        let requests: Vec<(Case, u16, &str)> = vec![
            (POST, 200, ""),
            (Case { path: "/home", ..POST }, 400, "invalid_path"),
            (Case { path: "/topics/home%2B", ..POST }, 400, "invalid_topic"),
            (Case { query: "qos=2", ..POST }, 400, "invalid_qos"),
            (Case { query: "retained=maybe", ..POST }, 400, "invalid_retained"),
            (Case { query: "client_id=a%20b", ..POST }, 400, "invalid_client_id"),
            (Case { query: "qos=1&QoS=0", ..POST }, 400, "conflicting_parameter"),
            (Case { query: "UserProp.1.Key=a", ..POST }, 400, "invalid_user_property"),
            (Case { query: "PayloadFormatIndicator=2", ..POST }, 400, "invalid_payload_format_indicator"),
            (Case { query: "ContentType=text%09plain", ..POST }, 400, "invalid_content_type"),
            (Case { headers: &[("origin", "https://elsewhere.example")], ..POST }, 403, "origin_not_allowed"),
            (Case { query: "MessageExpiryInterval=-1", ..POST }, 400, "invalid_message_expiry_interval"),
            (Case { query: "ResponseTopic=a/%2B", ..POST }, 400, "invalid_response_topic"),
            (Case { headers: &[("x-amz-mqtt5-correlation-data", "!!")], ..POST }, 400, "invalid_correlation_data"),
            (Case { query: "PayloadFormatIndicator=1", body: b"\xff", ..POST }, 400, "invalid_payload"),
            (Case { authorization: None, ..POST }, 401, "missing_credentials"),
            (Case { authorization: Some("Basic xx"), ..POST }, 401, "invalid_authorization_header"),
            (Case { authorization: Some("Bearer x"), ..POST }, 401, "unsupported_authorization_scheme"),
            (Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST }, 401, "authentication_failed"),
            (Case { authorization: None, certificate: Some(None), ..POST }, 401, "certificate_without_common_name"),
            (
                Case { authorization: None, certificate: Some(Some("device-7")), query: "client_id=device-8", ..POST },
                401,
                "client_id_mismatch",
            ),
            (Case { path: "/topics/home/secret", ..POST }, 401, "not_authorized"),
            (Case { path: "/topics/garden", ..POST }, 401, "not_authorized"),
            (Case { method: Method::GET, ..POST }, 405, "method_not_allowed"),
            (Case { body: &[b'x'; 65], ..POST }, 413, "payload_too_large"),
        ];
        let mut reached = BTreeSet::new();
        let mut published = 0;
        for (case, status, code) in requests {
            // A service each: the per-user quota (one a second) must not decide these.
            let (service, publisher, _) = fake_service();
            let path = case.path;
            assert_eq!(answer(&service, case.request()).await, (status, code.to_owned()), "{path}");
            published += usize::from(status == 200);
            assert_eq!(publisher.sent().len(), usize::from(status == 200), "{code}: only a 200 publishes");
            if status != 200 {
                reached.insert(code.to_owned());
            }
        }
        assert_eq!(published, 1);

        // Over the user's quota: 429 with Retry-After, nothing published.
        let (service, publisher, _) = fake_service();
        assert_eq!(answer(&service, POST.request()).await.0, 200);
        let response = service.handle(POST.request()).await;
        assert_eq!(
            (response.status().as_u16(), &response.headers()[header::RETRY_AFTER]),
            (429, &"1".parse().unwrap())
        );
        assert_eq!(publisher.sent().len(), 1);
        reached.insert("too_many_requests".into());

        // A retained message the broker cannot keep (its CONNACK said Retain Available = 0).
        let publisher = FakePublisher::with_limits(BackendLimits { retain_available: false, ..IOT_LIMITS });
        let service = Service::with_store(publisher.clone(), FakeStore::new(&config()) as Arc<dyn ConfigStore>);
        let retained = Case { query: "retained=true", ..POST };
        assert_eq!(answer(&service, retained.request()).await, (400, "retain_not_supported".to_owned()));
        assert_eq!(answer(&service, POST.request()).await.0, 200, "without retain it publishes");
        reached.insert("retain_not_supported".into());

        // Password checks from one address beyond its budget: 429 before the hash.
        let budget = "password_checks_per_second = 0.01\npassword_check_burst = 1\n";
        let (publisher, store) = (FakePublisher::new(), FakeStore::new(&(config() + budget)));
        let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
        let from = |case: Case, ip: &str| HttpRequest { source_ip: Some(ip.parse().unwrap()), ..case.request() };
        let wrong = || Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST };
        assert_eq!(answer(&service, from(wrong(), "192.0.2.1")).await.1, "authentication_failed");
        let response = service.handle(from(wrong(), "192.0.2.1")).await;
        assert_eq!(
            (response.status().as_u16(), &response.headers()[header::RETRY_AFTER]),
            (429, &"100".parse().unwrap())
        );
        assert_eq!(
            answer(&service, from(POST, "192.0.2.1")).await.1,
            "too_many_login_attempts",
            "uncached: refused too"
        );
        assert_eq!(answer(&service, from(POST, "192.0.2.2")).await.0, 200, "another address is not refused");
        // The verified password is cached: no check needed, so it passes authentication
        // (and meets the user's one-a-second quota, which the 200 above spent).
        assert_eq!(answer(&service, from(POST, "192.0.2.1")).await.1, "too_many_requests");
        reached.insert("too_many_login_attempts".into());

        // What the backend says, mapped.
        for (failure, status, code) in [
            (PublishError::Rejected("bad".into()), 400, "rejected_by_broker"),
            (PublishError::TooLarge { max_payload: Some(10) }, 413, "payload_too_large"),
            (PublishError::Throttled("slow down".into()), 429, "too_many_requests"),
            (PublishError::Unavailable("gone".into()), 503, "service_unavailable"),
            (PublishError::Unknown("no PUBACK".into()), 503, "service_unavailable"),
            (PublishError::Failed("AccessDenied".into()), 500, "internal_error"),
        ] {
            let (service, publisher, _) = fake_service();
            publisher.fail_with(failure);
            assert_eq!(answer(&service, POST.request()).await, (status, code.to_owned()));
            reached.insert(code.to_owned());
        }

        // Idempotency-Key: malformed; used for another request; asked while the first is in flight.
        let (service, _, _) = fake_service();
        let mut request = POST.request();
        request.headers.insert("idempotency-key", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(answer(&service, request).await, (400, "invalid_idempotency_key".to_owned()));
        let keyed = Case { headers: &[("idempotency-key", "k1")], ..POST };
        assert_eq!(answer(&service, keyed.request()).await.0, 200);
        let other_body = Case { body: b"22.0", ..keyed };
        assert_eq!(answer(&service, other_body.request()).await, (422, "idempotency_key_reused".to_owned()));
        let (service, publisher, _) = fake_service(); // the user's quota, spent above, is one a second
        publisher.hang();
        let service = Arc::new(service);
        let in_flight = Case { headers: &[("idempotency-key", "k2")], ..POST };
        let first = tokio::spawn({
            let (service, request) = (Arc::clone(&service), in_flight.request());
            async move { service.handle(request).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = service.handle(in_flight.request()).await;
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(answer(&service, in_flight.request()).await, (409, "request_in_progress".to_owned()));
        first.abort();
        assert!(publisher.sent().is_empty());
        reached.extend(["invalid_idempotency_key", "idempotency_key_reused", "request_in_progress"].map(String::from));

        // ResponseTimeout: out of range, beyond what the deadline leaves, on a topic the
        // caller may not receive on, beyond max_waiting, and without a reply connection.
        let (service, publisher, _) = fake_service();
        let waits = |query| Case { query, ..POST };
        assert_eq!(
            answer(&service, waits("ResponseTimeout=61").request()).await,
            (400, "invalid_response_timeout".into())
        );
        let soon = Some(tokio::time::Instant::now() + Duration::from_secs(3));
        let response = service.handle_by(waits("ResponseTimeout=5").request(), soon).await;
        assert_eq!(response.status(), 400, "a Lambda deadline 3 s away allows 2 s");
        assert!(std::str::from_utf8(response.body()).unwrap().contains("at most 2 s"));
        assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (401, "not_authorized".into()));
        assert!(publisher.sent().is_empty());
        let receive = "\n[[rules]]\npriority = 30\neffect = \"allow\"\ntopics = [\"replies/${client_id}/#\"]\nactions = [\"subscribe\"]\n";
        let full = config().replace("[limits]", &format!("{receive}\n[limits]\nmax_waiting = 0"));
        let (publisher, store) = (FakePublisher::new(), FakeStore::new(&full));
        let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
        assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (503, "too_many_waiting".into()));
        let (publisher, store) =
            (FakePublisher::new(), FakeStore::new(&config().replace("[limits]", &format!("{receive}\n[limits]"))));
        let service = Service::with_store(publisher.clone(), store as Arc<dyn ConfigStore>);
        assert_eq!(answer(&service, waits("ResponseTimeout=5").request()).await, (503, "service_unavailable".into()));
        assert_eq!(service.waiting(), 0, "a refused wait leaves its place");
        assert!(publisher.sent().is_empty(), "nothing is published without a subscription for its reply");
        reached.extend(["invalid_response_timeout", "too_many_waiting"].map(String::from));
        // Only a broker's reply (or its absence) answers these: tests/serve/replies.rs.
        reached.extend(["reply_timeout", "reply_too_large"].map(String::from));

        // The config store down: 503, never 401.
        let (service, publisher, store) = fake_service();
        store.set_down(true);
        assert_eq!(answer(&service, POST.request()).await, (503, "service_unavailable".to_owned()));
        assert!(publisher.sent().is_empty());

        // invalid_query and invalid_body come from decoding what an entry point received.
        let event = |query: &str, body: &str| {
            serde_json::from_value(serde_json::json!({
                "version": "2.0", "rawPath": "/topics/home", "rawQueryString": query,
                "headers": {"authorization": USER0}, "body": body, "isBase64Encoded": true,
                "requestContext": {"http": {"method": "POST", "sourceIp": "203.0.113.7"}, "stage": "$default"}
            }))
            .unwrap()
        };
        let (service, publisher, _) = fake_service();
        for (query, body, code) in [("a=%ff", "MjEuNQ==", "invalid_query"), ("", "not base64!", "invalid_body")] {
            let response = crate::lambda::handle(&service, event(query, body), None).await.unwrap();
            let response = serde_json::to_value(response).unwrap();
            assert_eq!(response["statusCode"], 400);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(response["body"].as_str().unwrap()).unwrap()["error"],
                code
            );
            reached.insert(code.to_owned());
        }
        assert!(publisher.sent().is_empty());

        // Only the serve connection layer answers the rest (tested in serve::parse_errors).
        let everything: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        let connection_layer = BTreeSet::from(["malformed_request".to_owned(), "headers_too_large".to_owned()]);
        assert_eq!(&everything - &connection_layer, reached, "every code the service answers with is reached here");
    }

    #[tokio::test]
    async fn a_refused_login_is_held_for_the_delay_and_nothing_else_is() {
        let budget = "password_checks_per_second = 0.01\npassword_check_burst = 1\n";
        let delay = Duration::from_millis(300);
        let service =
            Service::with_store(FakePublisher::new(), FakeStore::new(&(config() + budget)) as Arc<dyn ConfigStore>)
                .with_login_refusal_delay(delay);
        let from = |case: Case| HttpRequest { source_ip: Some("192.0.2.1".parse().unwrap()), ..case.request() };
        let wrong = || Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), ..POST };
        let timed = |request| async {
            let started = Instant::now();
            let answer = answer(&service, request).await;
            (answer.1, started.elapsed())
        };
        let (code, took) = timed(from(wrong())).await;
        assert!(code == "authentication_failed" && took < delay, "{code} in {took:?}");
        let (code, took) = timed(from(wrong())).await;
        assert!(code == "too_many_login_attempts" && took >= delay, "{code} in {took:?}");
        let (code, took) = timed(from(Case { authorization: None, ..POST })).await;
        assert!(code == "missing_credentials" && took < delay, "{code} in {took:?}");
    }

    #[tokio::test]
    async fn a_200_publishes_the_message_as_asked() {
        let (service, publisher, _) = fake_service();
        let case =
            Case { query: "qos=0&retained=true&ContentType=text%2Fplain&UserProp.1.Key=k&UserProp.1.Value=v", ..POST };
        assert_eq!(answer(&service, case.request()).await.0, 200);
        let sent = publisher.sent();
        let message = &sent[0];
        assert_eq!((message.topic.as_str(), message.qos, message.retain), ("home/kitchen", Qos::AtMostOnce, true));
        assert_eq!(message.payload, Bytes::from_static(b"21.5"));
        assert_eq!(message.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(message.properties.user_properties, [("k".to_owned(), "v".to_owned())]);
    }

    #[tokio::test]
    async fn aws_iot_headers_and_trace_context_become_user_properties_in_order() {
        let (service, publisher, _) = fake_service();
        // base64 of [{"deviceName":"alpha"},{"deviceCnt":"45"}]
        let case = Case {
            query: "messageExpiry=60&contentType=application%2Fjson&UserProp.1.Key=k&UserProp.1.Value=v",
            headers: &[
                ("x-amz-mqtt5-user-properties", "W3siZGV2aWNlTmFtZSI6ImFscGhhIn0seyJkZXZpY2VDbnQiOiI0NSJ9XQ=="),
                ("x-amz-mqtt5-correlation-data", "cmVxLTE="),
                ("x-amz-mqtt5-payload-format-indicator", "UTF8_DATA"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
            ..POST
        };
        assert_eq!(answer(&service, case.request()).await.0, 200);
        let p = publisher.sent()[0].properties.clone();
        let props: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            props,
            [
                ("deviceName", "alpha"),
                ("deviceCnt", "45"),
                ("k", "v"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ]
        );
        assert_eq!(p.correlation_data.as_deref(), Some(&b"req-1"[..]));
        assert_eq!((p.payload_format_indicator, p.message_expiry_interval), (Some(1), Some(60)));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        let broken_trace = Case { headers: &[("traceparent", "00-zz-00f067aa0ba902b7-01")], ..POST };
        let (service, publisher, _) = fake_service();
        assert_eq!(answer(&service, broken_trace.request()).await.0, 200, "an invalid traceparent is no error");
        assert!(publisher.sent()[0].properties.user_properties.is_empty(), "and is not forwarded");
    }

    #[tokio::test]
    async fn publish_message_id_property_carries_the_answer_s_message_id_last() {
        let config = format!("{}\n[publish]\nmessage_id_property = \"message-id\"\n", config());
        let publisher = FakePublisher::new();
        let service = Service::with_store(publisher.clone(), FakeStore::new(&config) as Arc<dyn ConfigStore>);
        let case = Case {
            query: "UserProp.1.Key=k&UserProp.1.Value=v",
            headers: &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            ..POST
        };
        let response = service.handle(case.request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.headers()["x-message-id"].to_str().unwrap().to_owned();
        let props = publisher.sent()[0].properties.user_properties.clone();
        let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["k", "traceparent", "message-id"]);
        assert_eq!(props[2].1, id, "the id the caller was answered with");
        let (service, publisher, _) = fake_service();
        assert_eq!(answer(&service, POST.request()).await.0, 200);
        assert!(publisher.sent()[0].properties.user_properties.is_empty(), "not without [publish]");
    }

    #[tokio::test]
    async fn cors_preflights_and_answers_follow_the_config() {
        const PAGE: &str = "http://127.0.0.1:9090";
        let with_cors = format!("{}\n[cors]\nallowed_origins = [\"{PAGE}\"]\nmax_age_seconds = 60\n", config());
        let publisher = FakePublisher::new();
        let service = Service::with_store(publisher.clone(), FakeStore::new(&with_cors) as Arc<dyn ConfigStore>);
        let preflight = Case {
            method: Method::OPTIONS,
            authorization: None,
            headers: &[("origin", PAGE), ("access-control-request-method", "POST")],
            ..POST
        };
        let response = service.handle(preflight.request()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "no credentials needed");
        assert_eq!(response.headers()["access-control-max-age"], "60");
        let elsewhere = Case {
            method: Method::OPTIONS,
            authorization: None,
            headers: &[("origin", "http://localhost:9090"), ("access-control-request-method", "POST")],
            ..POST
        };
        assert_eq!(service.handle(elsewhere.request()).await.status(), StatusCode::METHOD_NOT_ALLOWED);
        for (case, status) in [
            (Case { headers: &[("origin", PAGE)], ..POST }, StatusCode::OK),
            (Case { headers: &[("origin", PAGE)], authorization: None, ..POST }, StatusCode::UNAUTHORIZED),
        ] {
            let response = service.handle(case.request()).await;
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()["access-control-allow-origin"], PAGE, "{status}");
            assert_eq!(
                response.headers()["access-control-expose-headers"],
                "X-Message-Id, Retry-After, Idempotent-Replayed, x-amz-mqtt5-user-properties, x-amz-mqtt5-payload-format-indicator"
            );
            assert!(!response.headers().contains_key("access-control-allow-credentials"));
        }
        assert_eq!(publisher.sent().len(), 1, "only the 200 published");
        let (service, ..) = fake_service();
        assert_eq!(service.handle(preflight.request()).await.status(), StatusCode::METHOD_NOT_ALLOWED, "no [cors]");
    }

    /// The answer's status, `X-Message-Id` and `Idempotent-Replayed`.
    async fn keyed_answer(service: &Service<FakePublisher>, case: &Case) -> (u16, String, String) {
        let response = service.handle(case.request()).await;
        let header =
            |name: &str| response.headers().get(name).map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), header("x-message-id"), header("idempotent-replayed"))
    }

    #[tokio::test]
    async fn a_retry_with_the_same_key_answers_the_first_answer_and_publishes_nothing() {
        let (service, publisher, _) = fake_service();
        let keyed = Case { headers: &[("idempotency-key", "order-17")], ..POST };
        let (status, first_id, replayed) = keyed_answer(&service, &keyed).await;
        assert_eq!((status, replayed.as_str()), (200, ""));
        let sent = publisher.sent();
        assert_eq!(
            sent[0].properties.user_properties,
            vec![("message-id".to_owned(), first_id.clone())],
            "a keyed message carries its id"
        );
        // Within the user's one-a-second quota: a replay spends none.
        for _ in 0..3 {
            assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id.clone(), "true".into()));
        }
        // The trace context is no part of the fingerprint; the same key under another user is another key.
        let traced = Case { headers: &[("idempotency-key", "order-17"), ("traceparent", TRACEPARENT)], ..keyed };
        assert_eq!(keyed_answer(&service, &traced).await, (200, first_id.clone(), "true".into()));
        assert_eq!(publisher.sent().len(), 1);
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn a_key_never_skips_authentication_or_the_acl_and_refusals_release_it() {
        let (service, publisher, _) = fake_service();
        let headers: &'static [(&str, &str)] = &[("idempotency-key", "k")];
        let wrong = Case { authorization: Some("Basic dXNlcjA6d3Jvbmc="), headers, ..POST };
        assert_eq!(keyed_answer(&service, &wrong).await.0, 401);
        let denied = Case { path: "/topics/home/secret", headers, ..POST };
        assert_eq!(keyed_answer(&service, &denied).await.0, 401);
        // A 4xx from the broker, a 503 before anything was sent, a 429: the key stays free.
        for (failure, status) in
            [(PublishError::Rejected("no".into()), 400), (PublishError::Unavailable("down".into()), 503)]
        {
            publisher.fail_with(failure);
            assert_eq!(keyed_answer(&service, &Case { headers, ..POST }).await.0, status);
            tokio::time::sleep(Duration::from_millis(1100)).await; // the user's quota: one a second
        }
        publisher.recover();
        let (status, first_id, _) = keyed_answer(&service, &Case { headers, ..POST }).await;
        assert_eq!(status, 200, "the key was never held");
        let quota_refused = Case { headers: &[("idempotency-key", "k3")], ..POST };
        assert_eq!(keyed_answer(&service, &quota_refused).await.0, 429, "the user's quota is spent");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, id, replayed) = keyed_answer(&service, &quota_refused).await;
        assert_eq!((status, replayed.as_str()), (200, ""), "the 429 released the key");
        assert_ne!(id, first_id);
        assert_eq!(publisher.sent().len(), 2);
    }

    #[tokio::test]
    async fn an_unknown_outcome_republishes_under_the_first_id() {
        let (service, publisher, _) = fake_service();
        let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
        publisher.fail_with(PublishError::Unknown("no PUBACK within the timeout".into()));
        let (status, first_id, _) = keyed_answer(&service, &keyed).await;
        assert_eq!(status, 503);
        publisher.recover();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, id, replayed) = keyed_answer(&service, &keyed).await;
        assert_eq!((status, replayed.as_str()), (200, "unknown-outcome"));
        assert_eq!(id, first_id, "the retry publishes under the first request's id");
        assert_eq!(publisher.sent()[0].properties.user_properties, vec![("message-id".to_owned(), first_id.clone())]);
        assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id, "true".into()));
        assert_eq!(publisher.sent().len(), 1);
    }

    #[tokio::test]
    async fn a_retry_of_an_unknown_outcome_that_cannot_publish_keeps_it_unknown_for_the_next() {
        let (service, publisher, _) = fake_service();
        let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
        publisher.fail_with(PublishError::Unknown("the connection went before PUBACK".into()));
        let first_id = keyed_answer(&service, &keyed).await.1;
        // The retry takes the key over, and is refused before sending: quota, then a broker away.
        assert_eq!(keyed_answer(&service, &keyed).await.0, 429, "the user's one message a second was spent");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        publisher.fail_with(PublishError::Unavailable("not connected to the broker".into()));
        assert_eq!(keyed_answer(&service, &keyed).await.0, 503);
        publisher.recover();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id.clone(), "unknown-outcome".into()));
        assert_eq!(publisher.sent()[0].properties.user_properties, vec![("message-id".to_owned(), first_id)]);
    }

    #[tokio::test]
    async fn a_request_may_not_set_the_message_id_property_itself() {
        let (service, publisher, _) = fake_service();
        let forged = Case {
            query: "UserProp.1.Key=message-id&UserProp.1.Value=X",
            headers: &[("idempotency-key", "k")],
            ..POST
        };
        assert_eq!(answer(&service, forged.request()).await, (400, "invalid_user_property".to_owned()));
        let unkeyed = Case { query: "UserProp.1.Key=message-id&UserProp.1.Value=X", ..POST };
        assert_eq!(answer(&service, unkeyed.request()).await.0, 200, "without a key or the config, the name is free");
        assert_eq!(publisher.sent().len(), 1);
        let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(keyed_answer(&service, &keyed).await.2, "", "the 400 held no key");
    }

    #[tokio::test]
    async fn a_deadline_mid_publish_leaves_the_key_s_outcome_unknown() {
        let (service, publisher, _) = fake_service();
        let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
        publisher.hang();
        let soon = tokio::time::Instant::now() + Duration::from_millis(100);
        let response = service.handle_by(keyed.request(), Some(soon)).await;
        assert_eq!(response.status(), 503);
        let first_id = response.headers()["x-message-id"].to_str().unwrap().to_owned();
        publisher.recover();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(keyed_answer(&service, &keyed).await, (200, first_id.clone(), "unknown-outcome".into()));
        assert_eq!(publisher.sent()[0].properties.user_properties, vec![("message-id".to_owned(), first_id)]);
    }

    #[tokio::test]
    async fn a_key_store_that_is_down_refuses_keyed_requests_only() {
        let (service, publisher, _) = fake_service();
        let service = service.with_key_store(Arc::new(crate::idempotency::DownKeys));
        let keyed = Case { headers: &[("idempotency-key", "k")], ..POST };
        assert_eq!(answer(&service, keyed.request()).await, (503, "service_unavailable".to_owned()));
        assert_eq!(answer(&service, POST.request()).await.0, 200, "a request without a key is unaffected");
        assert_eq!(publisher.sent().len(), 1);
    }

    #[tokio::test]
    async fn an_answer_due_before_the_backend_answers_is_503() {
        let (service, publisher, _) = fake_service();
        publisher.hang();
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
        let response = service.handle_by(POST.request(), Some(soon)).await;
        assert_eq!(response.status().as_u16(), 503, "{response:?}");
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert!(publisher.sent().is_empty());
    }
}
