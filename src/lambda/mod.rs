//! The AWS Lambda entry point: decode the event, run the service, encode the answer.

pub mod event;

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};

use crate::publish::Publisher;
use crate::service::Service;

pub use self::event::{decode, decode_event, encode, DecodeError, Event, LambdaResponse, Origin};

/// Answers one event. A 400 found while decoding is answered like any other.
pub async fn handle<P: Publisher>(
    service: &Service<P>,
    event: Event,
    base_path: Option<&str>,
) -> Result<LambdaResponse, DecodeError> {
    let (request, origin) = decode_event(event, base_path)?;
    let response = match request {
        Ok(request) => service.handle(request).await,
        Err(error) => error.into_response(),
    };
    Ok(encode(origin, response))
}

/// Serves invocations from the Lambda Runtime API until the process ends.
/// `BASE_PATH` names a custom domain's base path mapping to remove from paths.
pub async fn run<P: Publisher>(service: Arc<Service<P>>) -> Result<(), lambda_runtime::Error> {
    let base_path: Arc<Option<String>> = Arc::new(std::env::var("BASE_PATH").ok().filter(|p| !p.is_empty()));
    lambda_runtime::run(service_fn(move |invocation: LambdaEvent<Event>| {
        let service = Arc::clone(&service);
        let base_path = Arc::clone(&base_path);
        async move {
            handle(&service, invocation.payload, base_path.as_deref())
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
