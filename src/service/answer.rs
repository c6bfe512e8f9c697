//! The answer: what a request earned, as one HTTP response with its CORS
//! headers, and its one log line. Errors become statuses in
//! [`ApiError::into_response`]; here they get the message id they concern.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tracing::warn;

use super::exchange::Exchange;
use super::{THROTTLED_RETRY_AFTER, UNAVAILABLE_RETRY_AFTER};
use crate::cause::Chain;
use crate::contract::cors;
use crate::contract::headers::{payload_format_indicator_header, user_properties_header};
use crate::contract::{ApiError, MessageId};
use crate::publish::PublishError;
use crate::replies::Reply;
use crate::store::StoreError;

/// What a request that went through earns.
pub(super) enum Answered {
    /// A browser's preflight from an allowed origin: 204.
    Preflight(Response<Bytes>),
    /// A publish, or a replay of one: 200.
    Published(Published),
    /// A batch: 200 when every message was published, else 207.
    Batch(BatchAnswer),
}

/// A publish that succeeded, or the first answer to a key replayed.
pub(super) struct Published {
    /// The answer's `X-Message-Id`: this request's, or the first request's with its key.
    pub message_id: MessageId,
    /// The answer's `Idempotent-Replayed`.
    pub replayed: Replayed,
    /// The device's reply, for a request that waited for one.
    pub reply: Option<Reply>,
}

/// One message of a batch's outcome: the id it was published under, or its refusal
/// with the id it may have been published under.
pub(super) type Outcome = Result<MessageId, (ApiError, Option<MessageId>)>;

/// What a batch earned: one outcome per message, in the request's order.
pub(super) struct BatchAnswer {
    /// Each message's outcome.
    pub results: Vec<Outcome>,
}

/// Whether an answer repeats an earlier request's, the `Idempotent-Replayed` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replayed {
    /// This request's own answer.
    No,
    /// The first answer again: nothing was published.
    Yes,
    /// The first request's outcome was unknown: published again under its id.
    UnknownOutcome,
}

impl Replayed {
    /// The header's value, if the answer has one.
    fn header(self) -> Option<&'static str> {
        match self {
            Replayed::No => None,
            Replayed::Yes => Some("true"),
            Replayed::UnknownOutcome => Some("unknown-outcome"),
        }
    }
}

/// The `Idempotent-Replayed` header of an answer to a retry.
const REPLAYED_HEADER: &str = "idempotent-replayed";

impl Exchange {
    /// The response to `outcome`, with the CORS headers the request's `origin`
    /// earns under the rules it was decided under; logs the request's line.
    pub fn respond(&self, outcome: Result<Answered, ApiError>, origin: Option<&HeaderValue>) -> Response<Bytes> {
        let error = outcome.as_ref().err().map(|e| e.code().as_str());
        let published = match &outcome {
            Ok(Answered::Published(published)) => u64::from(published.replayed != Replayed::Yes),
            Ok(Answered::Batch(batch)) => batch.results.iter().filter(|r| r.is_ok()).count() as u64,
            Ok(Answered::Preflight(_)) | Err(_) => 0,
        };
        let (mut response, answered_id) = match outcome {
            Ok(Answered::Preflight(preflight)) => (preflight, self.message_id),
            Ok(Answered::Published(published)) => (ok(&published), published.message_id),
            Ok(Answered::Batch(batch)) => (batch_response(&batch), self.message_id),
            Err(error) => self.refusal(error),
        };
        let cors = self.rules().and_then(|rules| rules.cors.as_ref());
        cors::decorate(cors, self.allowed_origin(origin), &mut response);
        self.log(response.status().as_u16(), answered_id, error, published);
        response
    }

    /// An error's response, with the `X-Message-Id` of a message that may have been published.
    fn refusal(&self, error: ApiError) -> (Response<Bytes>, MessageId) {
        let after_publish = error.after_publish();
        let mut response = error.into_response();
        match self.sent_as().filter(|_| after_publish) {
            Some(id) => {
                let value = HeaderValue::from_str(&id.to_string()).expect("hex digits are a header value");
                response.headers_mut().insert("x-message-id", value);
                (response, id)
            }
            None => (response, self.message_id),
        }
    }
}

/// The 200 of a publish: its message id, and the device's reply if it waited for one.
fn ok(published: &Published) -> Response<Bytes> {
    let mut ok = Response::builder().status(StatusCode::OK).header("X-Message-Id", published.message_id.to_string());
    if let Some(replayed) = published.replayed.header() {
        ok = ok.header(REPLAYED_HEADER, replayed);
    }
    let Some(reply) = &published.reply else {
        return ok.header(header::CONTENT_LENGTH, "0").body(Bytes::new()).expect("static headers are valid");
    };
    let content_type = reply
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    ok = ok.header(header::CONTENT_TYPE, content_type).header(header::CONTENT_LENGTH, reply.payload.len());
    if !reply.user_properties.is_empty() {
        ok = ok.header(crate::contract::headers::USER_PROPERTIES, user_properties_header(&reply.user_properties));
    }
    if let Some(indicator) = reply.payload_format_indicator {
        ok = ok.header(crate::contract::headers::PAYLOAD_FORMAT_INDICATOR, payload_format_indicator_header(indicator));
    }
    ok.body(reply.payload.clone()).expect("every header value is checked or static")
}

/// A batch's answer: 200 when every message was published, else 207 Multi-Status;
/// each entry as a single publish of its message would have answered.
fn batch_response(batch: &BatchAnswer) -> Response<Bytes> {
    #[derive(serde::Serialize)]
    struct Entry {
        index: usize,
        status: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct Results {
        results: Vec<Entry>,
    }
    let results: Vec<Entry> = batch
        .results
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(id) => Entry { index, status: 200, message_id: Some(id.to_string()), error: None, message: None },
            Err((error, id)) => Entry {
                index,
                status: error.status().as_u16(),
                message_id: id.map(|id| id.to_string()),
                error: Some(error.code().as_str()),
                message: Some(error.message()),
            },
        })
        .collect();
    let status = if batch.results.iter().all(Result::is_ok) { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    let body = serde_json::to_vec(&Results { results }).expect("the results serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Bytes::from(body))
        .expect("static headers are valid")
}

/// What a request answers when the config store is unavailable; the cause is logged.
pub(super) fn store_down(message_id: MessageId) -> impl Fn(StoreError) -> ApiError + Copy {
    move |error| {
        warn!(message_id = %message_id, error = %Chain(&error), "the config store is unavailable");
        ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
    }
}

/// What a request with an `Idempotency-Key` answers when the key store is
/// unavailable (a key that cannot be checked promises nothing); the cause is logged.
pub(super) fn keys_down(message_id: MessageId) -> impl Fn(StoreError) -> ApiError + Copy {
    move |error| {
        warn!(message_id = %message_id, error = %Chain(&error), "the idempotency key store is unavailable");
        ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER }
    }
}

/// The answer to a publish the backend did not take.
pub(super) fn publish_refused(error: &PublishError, max_payload: usize) -> ApiError {
    match error {
        PublishError::Rejected(_) => ApiError::bad_request(
            crate::contract::ErrorCode::RejectedByBroker,
            "the message broker rejected the message as invalid",
        ),
        PublishError::TooLarge { max_payload: max } => {
            ApiError::PayloadTooLarge { max: max.map_or(max_payload, |m| m.min(max_payload)) }
        }
        PublishError::Throttled(_) => ApiError::TooManyRequests { retry_after: THROTTLED_RETRY_AFTER },
        PublishError::Unavailable(_) => ApiError::Unavailable { retry_after: UNAVAILABLE_RETRY_AFTER },
        PublishError::Unknown(_) => ApiError::UnknownOutcome { retry_after: UNAVAILABLE_RETRY_AFTER },
        PublishError::Failed(_) => ApiError::Internal,
    }
}
