//! Every answer other than 200, and the one place errors become statuses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// The realm every 401 names in `WWW-Authenticate`.
pub const REALM_HEADER: &str = "Basic realm=\"mqtt\"";

/// `Retry-After` seconds of a 409 `request_in_progress`.
pub const IN_PROGRESS_RETRY_AFTER: u32 = 1;

/// Declares [`ErrorCode`] from one table: variant, status, code.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $status:literal $code:literal,)*) => {
        /// Every `error` code the API can answer with, each with its status.
        /// `openapi.yaml` documents exactly these (tests/openapi.rs).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The `error` field of the JSON body.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status a response with this code has.
            pub fn status(self) -> StatusCode {
                let status = match self {
                    $(ErrorCode::$variant => $status,)*
                };
                StatusCode::from_u16(status).expect("the table holds valid statuses")
            }
        }
    };
}

error_codes! {
    /// The path is not `/topics/{topic}`.
    InvalidPath = 400 "invalid_path",
    /// The topic is empty, too long, too deep, or holds a wildcard, a control character or a noncharacter.
    InvalidTopic = 400 "invalid_topic",
    /// The query string does not decode.
    InvalidQuery = 400 "invalid_query",
    /// `qos` is not one the backend takes.
    InvalidQos = 400 "invalid_qos",
    /// `retained` is not `true` or `false`.
    InvalidRetained = 400 "invalid_retained",
    /// `client_id` (or a certificate's CN) is not a valid client id.
    InvalidClientId = 400 "invalid_client_id",
    /// One parameter given twice, or under two names, with different values.
    ConflictingParameter = 400 "conflicting_parameter",
    /// A `UserProp.N.Key`/`Value` pair is incomplete or malformed.
    InvalidUserProperty = 400 "invalid_user_property",
    /// `PayloadFormatIndicator` is not 0 or 1.
    InvalidPayloadFormatIndicator = 400 "invalid_payload_format_indicator",
    /// `MessageExpiryInterval` is not a number of seconds the broker takes.
    InvalidMessageExpiryInterval = 400 "invalid_message_expiry_interval",
    /// The `x-amz-mqtt5-correlation-data` header is not base64.
    InvalidCorrelationData = 400 "invalid_correlation_data",
    /// `ContentType` holds a control character or a noncharacter.
    InvalidContentType = 400 "invalid_content_type",
    /// `ResponseTopic` is not a valid topic name.
    InvalidResponseTopic = 400 "invalid_response_topic",
    /// The payload is not what its format indicator says.
    InvalidPayload = 400 "invalid_payload",
    /// `ResponseTimeout` is not a whole number of seconds this deployment can wait.
    InvalidResponseTimeout = 400 "invalid_response_timeout",
    /// The body could not be read or decoded.
    InvalidBody = 400 "invalid_body",
    /// `retained=true`, but the broker takes no retained messages.
    RetainNotSupported = 400 "retain_not_supported",
    /// The broker refused the message as invalid.
    RejectedByBroker = 400 "rejected_by_broker",
    /// The request is not valid HTTP (`serve`).
    MalformedRequest = 400 "malformed_request",
    /// The `Idempotency-Key` header is not 1 to 255 printable ASCII characters, or is repeated.
    InvalidIdempotencyKey = 400 "invalid_idempotency_key",
    /// Neither a Basic header nor a client certificate.
    MissingCredentials = 401 "missing_credentials",
    /// The Authorization header is not `Basic base64(user:password)`.
    InvalidAuthorizationHeader = 401 "invalid_authorization_header",
    /// An Authorization scheme other than Basic.
    UnsupportedAuthorizationScheme = 401 "unsupported_authorization_scheme",
    /// The user name or password is wrong (never saying which).
    AuthenticationFailed = 401 "authentication_failed",
    /// The client certificate has no Common Name.
    CertificateWithoutCommonName = 401 "certificate_without_common_name",
    /// `client_id` differs from the client certificate's CN.
    ClientIdMismatch = 401 "client_id_mismatch",
    /// The ACL denies this publish.
    NotAuthorized = 401 "not_authorized",
    /// A page on another origin that `[cors]` does not allow.
    OriginNotAllowed = 403 "origin_not_allowed",
    /// Any method but POST.
    MethodNotAllowed = 405 "method_not_allowed",
    /// A request with the same `Idempotency-Key` is still in flight.
    RequestInProgress = 409 "request_in_progress",
    /// The payload exceeds the limit.
    PayloadTooLarge = 413 "payload_too_large",
    /// The `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused = 422 "idempotency_key_reused",
    /// Over a quota, ours or the backend's.
    TooManyRequests = 429 "too_many_requests",
    /// Too many password checks from this source address: refused before any hash is computed.
    TooManyLoginAttempts = 429 "too_many_login_attempts",
    /// The request line and headers exceed what `serve` reads.
    HeadersTooLarge = 431 "headers_too_large",
    /// A fault on our side.
    InternalError = 500 "internal_error",
    /// The reply is larger than `max_payload_bytes`.
    ReplyTooLarge = 502 "reply_too_large",
    /// The backend or the config store is unavailable, or time ran out.
    ServiceUnavailable = 503 "service_unavailable",
    /// `[limits] max_waiting` requests already wait for replies in this process.
    TooManyWaiting = 503 "too_many_waiting",
    /// The command was published, but no reply came within `ResponseTimeout`.
    ReplyTimeout = 504 "reply_timeout",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a request did not publish. Client mistakes carry a snake_case code and a
/// sentence for the caller; server faults carry nothing the caller may see:
/// their cause is logged where they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request cannot be processed as sent.
    BadRequest {
        /// Machine-readable reason, e.g. [`ErrorCode::InvalidQos`]; a 400 code.
        code: ErrorCode,
        /// What is wrong, naming the parameter and value where it helps.
        message: String,
    },
    /// 401: no valid credentials, or the ACL denies the publish.
    Unauthorized {
        /// Machine-readable reason, e.g. [`ErrorCode::AuthenticationFailed`]; a 401 code.
        code: ErrorCode,
        /// A sentence that never says which of user or password was wrong.
        message: &'static str,
    },
    /// 403: a page on another origin that `[cors]` does not allow; nothing
    /// was authenticated or published.
    OriginNotAllowed,
    /// 405: any method but POST.
    MethodNotAllowed,
    /// 413: the payload exceeds the limit.
    PayloadTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// 413: a batch's JSON body exceeds the limit.
    BatchTooLarge {
        /// The limit in bytes.
        max_bytes: usize,
    },
    /// 413: a batch holds more messages than the limit.
    TooManyMessages {
        /// The limit.
        max: usize,
        /// The batch's count.
        count: usize,
    },
    /// 431: the request line and headers exceed what the server reads (`serve`).
    HeadersTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// 429: over a quota, ours or the backend's.
    TooManyRequests {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 429: the source address has cost too many slow password hashes (failed
    /// logins, in practice); refused before computing another.
    TooManyLoginAttempts {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 409: the first request with this `Idempotency-Key` is still in flight.
    RequestInProgress,
    /// 422: this `Idempotency-Key` was first used for a different request.
    IdempotencyKeyReused,
    /// 500: a fault on our side; the cause was logged.
    Internal,
    /// 503: the backend is unreachable or timed out; the cause was logged.
    Unavailable {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 503: the message was sent, but the backend's answer never came: it may
    /// have been published (under the answer's `X-Message-Id`).
    UnknownOutcome {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 503: a batch's message not sent: the time to answer ran out first.
    NotSent {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 503: a batch's retry: the first request with its key did not publish this message.
    NotPublishedBefore,
    /// 503: `max_waiting` requests already wait for replies.
    TooManyWaiting {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 503: the command was published, then the connection that waited for
    /// its reply dropped: no reply can be matched to it any more.
    ReplyLost {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// 504: the command was published; no reply came in `seconds`.
    ReplyTimeout {
        /// The `ResponseTimeout` waited.
        seconds: u32,
    },
    /// 502: the reply's payload is over the limit of `max` bytes.
    ReplyTooLarge {
        /// The limit in bytes.
        max: usize,
        /// The reply's size.
        size: usize,
    },
}

impl ApiError {
    /// A 400 with its code and message.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        debug_assert_eq!(code.status(), StatusCode::BAD_REQUEST, "{code} is not a 400 code");
        ApiError::BadRequest { code, message: message.into() }
    }

    /// A 401 with its code and message.
    pub fn unauthorized(code: ErrorCode, message: &'static str) -> ApiError {
        debug_assert_eq!(code.status(), StatusCode::UNAUTHORIZED, "{code} is not a 401 code");
        ApiError::Unauthorized { code, message }
    }

    /// The HTTP status this error answers with: its code's.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unauthorized { code, .. } => *code,
            ApiError::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::BatchTooLarge { .. } | ApiError::TooManyMessages { .. } => ErrorCode::PayloadTooLarge,
            ApiError::HeadersTooLarge { .. } => ErrorCode::HeadersTooLarge,
            ApiError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            ApiError::TooManyLoginAttempts { .. } => ErrorCode::TooManyLoginAttempts,
            ApiError::RequestInProgress => ErrorCode::RequestInProgress,
            ApiError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            ApiError::Internal => ErrorCode::InternalError,
            ApiError::Unavailable { .. }
            | ApiError::UnknownOutcome { .. }
            | ApiError::ReplyLost { .. }
            | ApiError::NotPublishedBefore
            | ApiError::NotSent { .. } => ErrorCode::ServiceUnavailable,
            ApiError::TooManyWaiting { .. } => ErrorCode::TooManyWaiting,
            ApiError::ReplyTimeout { .. } => ErrorCode::ReplyTimeout,
            ApiError::ReplyTooLarge { .. } => ErrorCode::ReplyTooLarge,
        }
    }

    /// The `message` field of the JSON body.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::Unauthorized { message, .. } => (*message).to_owned(),
            ApiError::OriginNotAllowed => "this request comes from a web page on another origin, which the server's [cors] allowed_origins does not list; nothing was published".into(),
            ApiError::MethodNotAllowed => "only POST is supported; publish with POST /topics/{topic}".into(),
            ApiError::PayloadTooLarge { max } => {
                format!("the payload exceeds the limit of {max} bytes")
            }
            ApiError::BatchTooLarge { max_bytes } => {
                format!("the batch exceeds the limit of {max_bytes} bytes; nothing was published")
            }
            ApiError::TooManyMessages { max, count } => {
                format!("the batch holds {count} messages, over the limit of {max}; nothing was published")
            }
            ApiError::HeadersTooLarge { max } => {
                format!("the request line and headers exceed the limit of {max} bytes or 100 headers")
            }
            ApiError::TooManyRequests { retry_after } => {
                format!("too many messages in a short time; retry after {retry_after} s")
            }
            ApiError::TooManyLoginAttempts { retry_after } => format!(
                "too many logins that needed a password check from this address (failed ones, mostly); retry after {retry_after} s"
            ),
            ApiError::RequestInProgress => format!(
                "a request with this Idempotency-Key is still being published; retry after {IN_PROGRESS_RETRY_AFTER} s for its answer"
            ),
            ApiError::IdempotencyKeyReused => "this Idempotency-Key was first used for a different request (topic, message parameters or body); send a new key for a new message".into(),
            ApiError::Internal => "the server failed to publish the message".into(),
            ApiError::Unavailable { retry_after } => {
                format!("the message broker is unavailable; retry after {retry_after} s")
            }
            ApiError::UnknownOutcome { retry_after } => format!(
                "the message broker did not confirm the message in time: it may have been published, under this answer's X-Message-Id; retry after {retry_after} s with the same Idempotency-Key to publish it again under that id"
            ),
            ApiError::NotSent { retry_after } => format!(
                "the time to answer ran out before this message was sent: it was not published; retry after {retry_after} s"
            ),
            ApiError::NotPublishedBefore => "the first request with this Idempotency-Key did not publish this message, and a retry publishes nothing new: send it again under a new key".into(),
            ApiError::TooManyWaiting { retry_after } => format!(
                "too many requests are waiting for replies on this server; nothing was published; retry after {retry_after} s"
            ),
            ApiError::ReplyLost { retry_after } => format!(
                "the command was published (under this answer's X-Message-Id), but the connection waiting for its reply dropped; retry after {retry_after} s"
            ),
            ApiError::ReplyTimeout { seconds } => format!(
                "the command was published (under this answer's X-Message-Id), but no reply came within {seconds} s"
            ),
            ApiError::ReplyTooLarge { max, size } => format!(
                "the command was published (under this answer's X-Message-Id); its reply of {size} bytes exceeds the limit of {max} bytes"
            ),
        }
    }

    /// Whether this error comes after the message was handed to the broker: its
    /// answer carries the `X-Message-Id` the message was (or may have been) published under.
    pub fn after_publish(&self) -> bool {
        matches!(
            self,
            ApiError::UnknownOutcome { .. }
                | ApiError::ReplyLost { .. }
                | ApiError::ReplyTimeout { .. }
                | ApiError::ReplyTooLarge { .. }
        )
    }

    /// The full HTTP answer: status, headers the status calls for, and the JSON body.
    pub fn into_response(self) -> Response<Bytes> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body { error: self.code().as_str(), message: &self.message() })
            .expect("serializing two strings cannot fail");
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .expect("static status and header are valid");
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM_HEADER));
            }
            ApiError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            ApiError::TooManyRequests { retry_after }
            | ApiError::TooManyLoginAttempts { retry_after }
            | ApiError::Unavailable { retry_after }
            | ApiError::UnknownOutcome { retry_after }
            | ApiError::TooManyWaiting { retry_after }
            | ApiError::NotSent { retry_after }
            | ApiError::ReplyLost { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::RequestInProgress | ApiError::NotPublishedBefore => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(IN_PROGRESS_RETRY_AFTER));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(response: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn every_error_has_a_json_body_naming_the_problem() {
        let response = ApiError::bad_request(ErrorCode::InvalidQos, "qos must be 0 or 1, not \"7\"").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(&response),
            serde_json::json!({"error": "invalid_qos", "message": "qos must be 0 or 1, not \"7\""})
        );
    }

    #[test]
    fn statuses_carry_the_headers_http_requires() {
        let r = ApiError::unauthorized(ErrorCode::AuthenticationFailed, "x").into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"mqtt\"");
        let r = ApiError::MethodNotAllowed.into_response();
        assert_eq!((r.status().as_u16(), &r.headers()[header::ALLOW]), (405, &HeaderValue::from_static("POST")));
        let r = ApiError::TooManyRequests { retry_after: 1 }.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::Unavailable { retry_after: 5 }.into_response();
        assert_eq!((r.status().as_u16(), &r.headers()[header::RETRY_AFTER]), (503, &HeaderValue::from(5)));
    }

    #[test]
    fn every_code_is_snake_case_and_unique() {
        let codes: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        assert!(codes.iter().all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{codes:?}");
    }

    #[test]
    fn a_server_fault_says_nothing_internal() {
        let r = ApiError::Internal.into_response();
        assert_eq!(r.status(), 500);
        assert_eq!(body_json(&r)["message"], "the server failed to publish the message");
    }
}
