//! Every answer other than 200, and the one place errors become statuses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// The realm every 401 names in `WWW-Authenticate`.
pub const REALM_HEADER: &str = "Basic realm=\"mqtt\"";

/// Why a request did not publish. Client mistakes carry a snake_case code and a
/// sentence for the caller; server faults carry nothing the caller may see:
/// their cause is logged where they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request cannot be processed as sent.
    BadRequest {
        /// Machine-readable reason, e.g. `invalid_qos`.
        code: &'static str,
        /// What is wrong, naming the parameter and value where it helps.
        message: String,
    },
    /// 401: no valid credentials, or the ACL denies the publish.
    Unauthorized {
        /// Machine-readable reason, e.g. `authentication_failed`.
        code: &'static str,
        /// A sentence that never says which of user or password was wrong.
        message: &'static str,
    },
    /// 405: any method but POST.
    MethodNotAllowed,
    /// 413: the payload exceeds the limit.
    PayloadTooLarge {
        /// The limit in bytes.
        max: usize,
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
    /// 500: a fault on our side; the cause was logged.
    Internal,
    /// 503: the backend is unreachable or timed out; the cause was logged.
    Unavailable {
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
}

impl ApiError {
    /// A 400 with its code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code, message: message.into() }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unauthorized { code, .. } => code,
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Internal => "internal_error",
            ApiError::Unavailable { .. } => "service_unavailable",
        }
    }

    /// The `message` field of the JSON body.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::Unauthorized { message, .. } => (*message).to_owned(),
            ApiError::MethodNotAllowed => "only POST is supported; publish with POST /topics/{topic}".into(),
            ApiError::PayloadTooLarge { max } => {
                format!("the payload exceeds the limit of {max} bytes")
            }
            ApiError::HeadersTooLarge { max } => {
                format!("the request line and headers exceed the limit of {max} bytes or 100 headers")
            }
            ApiError::TooManyRequests { retry_after } => {
                format!("too many messages in a short time; retry after {retry_after} s")
            }
            ApiError::Internal => "the server failed to publish the message".into(),
            ApiError::Unavailable { retry_after } => {
                format!("the message broker is unavailable; retry after {retry_after} s")
            }
        }
    }

    /// The full HTTP answer: status, headers the status calls for, and the JSON body.
    pub fn into_response(self) -> Response<Bytes> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body { error: self.code(), message: &self.message() })
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
            ApiError::TooManyRequests { retry_after } | ApiError::Unavailable { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
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
        let response = ApiError::bad_request("invalid_qos", "qos must be 0 or 1, not \"7\"").into_response();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(&response),
            serde_json::json!({"error": "invalid_qos", "message": "qos must be 0 or 1, not \"7\""})
        );
    }

    #[test]
    fn statuses_carry_the_headers_http_requires() {
        let r = ApiError::Unauthorized { code: "authentication_failed", message: "x" }.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"mqtt\"");
        let r = ApiError::MethodNotAllowed.into_response();
        assert_eq!((r.status().as_u16(), &r.headers()[header::ALLOW]), (405, &HeaderValue::from_static("POST")));
        let r = ApiError::TooManyRequests { retry_after: 1 }.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::Unavailable { retry_after: 5 }.into_response();
        assert_eq!((r.status().as_u16(), &r.headers()[header::RETRY_AFTER]), (503, &HeaderValue::from(5)));
    }

    #[test]
    fn a_server_fault_says_nothing_internal() {
        let r = ApiError::Internal.into_response();
        assert_eq!(r.status(), 500);
        assert_eq!(body_json(&r)["message"], "the server failed to publish the message");
    }
}
