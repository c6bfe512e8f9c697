//! The AWS Lambda entry point: decode the event, run the service, encode the
//! answer ([`event`]); the function built from its environment ([`function`]).

pub mod event;
pub mod function;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, LambdaEvent};

use crate::publish::Publisher;
use crate::service::Service;

pub use self::event::{decode, decode_event, encode, DecodeError, Event, LambdaResponse, Origin};

/// Time kept back from the invocation's deadline to encode the answer and hand
/// it to the Runtime API: the function answers 503 this long before Lambda
/// would end it, so a caller never meets API Gateway's own 5xx for a timeout.
pub const DEADLINE_RESERVE: Duration = Duration::from_millis(500);

/// Answers one event. A 400 found while decoding is answered (and logged) like any other.
pub async fn handle<P: Publisher>(
    service: &Service<P>,
    event: Event,
    base_path: Option<&str>,
) -> Result<LambdaResponse, DecodeError> {
    handle_by(service, event, base_path, None).await
}

/// Answers one event by `answer_by` at the latest (see [`Service::handle_by`]).
pub async fn handle_by<P: Publisher>(
    service: &Service<P>,
    event: Event,
    base_path: Option<&str>,
    answer_by: Option<tokio::time::Instant>,
) -> Result<LambdaResponse, DecodeError> {
    let (request, origin) = decode_event(event, base_path)?;
    Ok(encode(origin, service.answer(request, answer_by).await))
}

/// When to answer an invocation whose deadline the Runtime API gave as
/// milliseconds since the Unix epoch: [`DEADLINE_RESERVE`] before it.
pub fn answer_by(deadline_ms: u64) -> tokio::time::Instant {
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::Instant::now() + left.saturating_sub(DEADLINE_RESERVE)
}

/// Serves invocations from the Lambda Runtime API until the process ends.
/// `BASE_PATH` names a custom domain's base path mapping to remove from paths.
/// Each invocation is answered by its deadline less [`DEADLINE_RESERVE`].
pub async fn run<P: Publisher>(service: Arc<Service<P>>) -> Result<(), lambda_runtime::Error> {
    let base_path: Arc<Option<String>> = Arc::new(std::env::var("BASE_PATH").ok().filter(|p| !p.is_empty()));
    lambda_runtime::run(service_fn(move |invocation: LambdaEvent<Event>| {
        let service = Arc::clone(&service);
        let base_path = Arc::clone(&base_path);
        async move {
            let answer_by = answer_by(invocation.context.deadline);
            handle_by(&service, invocation.payload, base_path.as_deref(), Some(answer_by))
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_due_the_reserve_before_the_deadline_and_never_in_the_past_of_now() {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let left = answer_by(now_ms + 10_000) - tokio::time::Instant::now();
        assert!(left <= Duration::from_millis(9_500) && left > Duration::from_millis(9_000), "{left:?}");
        let past = answer_by(now_ms.saturating_sub(5_000));
        assert!(past <= tokio::time::Instant::now(), "a deadline already gone: answer at once");
    }
}
