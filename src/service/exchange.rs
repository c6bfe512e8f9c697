//! One request's own record, from its arrival to its answer: its message id,
//! its log span, its deadline, and what its answer needs to know of how far
//! it got (the rules it was decided under, the id a message went out under).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use tracing::{field, info, info_span, warn, Instrument, Span};

use super::UNAVAILABLE_RETRY_AFTER;
use crate::config::RuleSet;
use crate::contract::{ApiError, MessageId, Topic, TraceContext};

/// One request, as the service goes through it.
pub(super) struct Exchange {
    /// The request's id: its message's, and its log line's.
    pub message_id: MessageId,
    started: Instant,
    /// The span of the request's log lines; its fields are filled in as they become known.
    span: Span,
    /// When the answer is due (the Lambda invocation's deadline, less a reserve).
    pub answer_by: Option<tokio::time::Instant>,
    /// The rules the request was decided under, once read: the answer's CORS headers follow them.
    rules: OnceLock<Arc<RuleSet>>,
    /// The id a message was handed to the backend under, once it was.
    sent_as: OnceLock<MessageId>,
}

impl Exchange {
    /// A request with `headers` arriving now; the log line carries the trace
    /// ids they hold (`X-Amzn-Trace-Id`'s only where `amzn_trace_id` trusts it).
    pub fn new(headers: &HeaderMap, amzn_trace_id: bool, answer_by: Option<tokio::time::Instant>) -> Exchange {
        let span = info_span!(
            "request",
            topic = field::Empty,
            messages = field::Empty,
            step = field::Empty,
            trace_id = field::Empty,
            xray_trace_id = field::Empty
        );
        if let Some(trace_id) = TraceContext::trace_id_of(headers) {
            span.record("trace_id", trace_id);
        }
        if let Some(root) = amzn_trace_id.then(|| xray_trace_id(headers)).flatten() {
            span.record("xray_trace_id", root);
        }
        Exchange {
            message_id: MessageId::next(),
            started: Instant::now(),
            span,
            answer_by,
            rules: OnceLock::new(),
            sent_as: OnceLock::new(),
        }
    }

    /// Records the step the request is at, for the log line of a request cut short.
    pub fn step(&self, step: &'static str) {
        self.span.record("step", step);
    }

    /// Records the topic the request is about.
    pub fn record_topic(&self, topic: &Topic) {
        self.span.record("topic", topic.as_str());
    }

    /// Records how many messages the request holds (a batch).
    pub fn record_messages(&self, count: usize) {
        self.span.record("messages", count);
    }

    /// The request is decided under `rules`.
    pub fn decided_under(&self, rules: Arc<RuleSet>) {
        let _ = self.rules.set(rules);
    }

    /// The rules the request was decided under, if they were read.
    pub fn rules(&self) -> Option<&RuleSet> {
        self.rules.get().map(|rules| &**rules)
    }

    /// A message is handed to the backend under `id`: from here on, a failure
    /// may leave it delivered.
    pub fn sending_as(&self, id: MessageId) {
        let _ = self.sent_as.set(id);
    }

    /// The id a message went to the backend under, if one did.
    pub fn sent_as(&self) -> Option<MessageId> {
        self.sent_as.get().copied()
    }

    /// Runs `work` in the request's span, cut off at the answer's deadline:
    /// then 503, saying the outcome is unknown once a message was handed over.
    pub async fn within_deadline<T>(&self, work: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        let work = work.instrument(self.span.clone());
        let Some(answer_by) = self.answer_by else { return work.await };
        match tokio::time::timeout_at(answer_by, work).await {
            Ok(result) => result,
            Err(_) => {
                self.span.in_scope(|| {
                    warn!(
                        message_id = %self.message_id,
                        "the invocation's time is running out; answering 503 before the runtime ends it"
                    )
                });
                let retry_after = UNAVAILABLE_RETRY_AFTER;
                Err(match self.sent_as() {
                    Some(_) => ApiError::UnknownOutcome { retry_after },
                    None => ApiError::Unavailable { retry_after },
                })
            }
        }
    }

    /// Logs the request's one line in its span: status, message id, error
    /// code, the messages it published, latency. On Lambda this line is also
    /// the request's CloudWatch metrics, read off its numeric `status`,
    /// `published` and `latency_us` and its `error`.
    pub fn log(&self, status: u16, message_id: MessageId, error: Option<&'static str>, published: u64) {
        crate::metrics::request(status, error, self.started.elapsed());
        crate::metrics::published(published);
        self.span.in_scope(|| {
            info!(
                status,
                message_id = %message_id,
                error = error.unwrap_or(""),
                published,
                latency_us = self.started.elapsed().as_micros() as u64,
                "request"
            )
        });
    }

    /// The request's `Origin`, if the rules it was decided under allow it.
    pub fn allowed_origin<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        crate::contract::cors::allowed_origin(self.rules().and_then(|rules| rules.cors.as_ref()), origin)
    }
}

/// The X-Ray trace id (`Root=1-...`) of the `X-Amzn-Trace-Id` header that API
/// Gateway and ALB add, for the log line only.
fn xray_trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-amzn-trace-id")?.to_str().ok()?;
    let root = value.split(';').find_map(|part| part.trim().strip_prefix("Root="))?;
    (root.len() <= 64 && root.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(root)
}
