//! The one code path every entry point runs: parse, authenticate, authorize,
//! publish, answer. The Lambda function and `serve` differ only in how they
//! turn their input into an [`HttpRequest`] and the answer back.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use tracing::{field, info, info_span, warn, Instrument, Span};

use crate::acl::{Access, Effect};
use crate::auth::Authenticator;
use crate::config::source::{ConfigStore, FileStore};
use crate::config::{Policy, RuleSet, StoreError};
use crate::contract::{parse_request, ApiError, ErrorCode, HttpRequest, MessageId};
use crate::publish::{Message, PublishError, Publisher};
use crate::quota::Quotas;

/// `Retry-After` seconds when the backend throttles.
const THROTTLED_RETRY_AFTER: u32 = 1;
/// `Retry-After` seconds when the backend or the config store is unavailable.
const UNAVAILABLE_RETRY_AFTER: u32 = 5;

/// The config's payload limit, capped by the backend's.
fn payload_limit(rules: &RuleSet, backend: usize) -> usize {
    rules.limits.max_payload_bytes.min(backend)
}

/// The publish service, shared by every request of a process.
pub struct Service<P> {
    publisher: P,
    /// Users, rules and limits: a file in memory or the table behind its caches.
    config: Arc<dyn ConfigStore>,
    authenticator: Authenticator,
    quotas: Quotas,
}

impl<P: Publisher> Service<P> {
    /// A service publishing through `publisher` under a file's `policy`.
    pub fn new(publisher: P, policy: Policy) -> Service<P> {
        Service::with_store(publisher, Arc::new(FileStore::new(policy)))
    }

    /// A service publishing through `publisher` with its config from `config`.
    pub fn with_store(publisher: P, config: Arc<dyn ConfigStore>) -> Service<P> {
        Service { publisher, config, authenticator: Authenticator::default(), quotas: Quotas::default() }
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
        // The request's log lines carry the topic, once parsed, and the step it is at.
        let span = info_span!("request", topic = field::Empty, step = field::Empty);
        let work = self.publish(&request, message_id).instrument(span.clone());
        let result = match answer_by {
            None => work.await,
            Some(answer_by) => tokio::time::timeout_at(answer_by, work).await.unwrap_or_else(|_| {
                span.in_scope(|| {
                    warn!(
                        message_id = %message_id,
                        "the invocation's time is running out; answering 503 before the runtime ends it"
                    )
                });
                Err(ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER })
            }),
        };
        let error = result.as_ref().err().map(|e| e.code().as_str());
        let response = match result {
            Ok(()) => Response::builder()
                .status(StatusCode::OK)
                .header("X-Message-Id", message_id.to_string())
                .header(header::CONTENT_LENGTH, "0")
                .body(Bytes::new())
                .expect("static headers are valid"),
            Err(error) => error.into_response(),
        };
        span.in_scope(|| {
            info!(
                status = response.status().as_u16(),
                message_id = %message_id,
                error = error.unwrap_or(""),
                latency_us = started.elapsed().as_micros() as u64,
                "request"
            )
        });
        response
    }

    /// Parses, authenticates, authorizes, admits and publishes: the steps are
    /// recorded in the current span, for the log line of a request cut short.
    async fn publish(&self, request: &HttpRequest, message_id: MessageId) -> Result<(), ApiError> {
        let span = Span::current();
        let store_down = |error: StoreError| {
            warn!(message_id = %message_id, %error, "the config store is unavailable");
            ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
        };
        span.record("step", "reading the rules");
        let rules = self.config.rules().await.map_err(store_down)?;
        let limits = self.publisher.limits();
        let max_payload = payload_limit(&rules, limits.max_payload_bytes);
        let parsed = parse_request(request, limits, max_payload)?;
        span.record("topic", parsed.topic.as_str());

        span.record("step", "authenticating");
        let identity = self
            .authenticator
            .authenticate(request, &parsed.options, message_id, |name| async move {
                self.config.user(&name).await.map_err(store_down)
            })
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
        };
        if rules.acl.decide(&access) == Effect::Deny {
            return Err(ApiError::Unauthorized {
                code: ErrorCode::NotAuthorized,
                message: "the ACL does not allow this client to publish to this topic",
            });
        }

        let quota_user = identity.username.as_deref().or(identity.certificate.then_some(identity.client_id.as_str()));
        self.quotas
            .admit(&rules.limits, quota_user)
            .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;

        span.record("step", "publishing");
        let message = Message {
            topic: parsed.topic,
            qos: parsed.options.qos,
            retain: parsed.options.retain,
            payload: parsed.payload,
            properties: parsed.options.properties,
        };
        self.publisher.publish(message).await.map_err(|error| {
            let status = match &error {
                PublishError::Rejected(_) => ApiError::bad_request(
                    ErrorCode::RejectedByBroker,
                    "the message broker rejected the message as invalid",
                ),
                PublishError::TooLarge => ApiError::PayloadTooLarge { max: max_payload },
                PublishError::Throttled(_) => ApiError::TooManyRequests { retry_after: THROTTLED_RETRY_AFTER },
                PublishError::Unavailable(_) => ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER },
                PublishError::Failed(_) => ApiError::Internal,
            };
            warn!(message_id = %message_id, client_id = %identity.client_id, error = %error, "publish failed");
            status
        })
    }
}
