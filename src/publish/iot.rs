//! AWS IoT Core's data-plane `Publish`, through `aws-sdk-iotdataplane`.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;
use aws_sdk_iotdataplane::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_iotdataplane::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_iotdataplane::error::{BoxError, SdkError};
use aws_sdk_iotdataplane::operation::publish::PublishError as SdkPublishError;
use aws_sdk_iotdataplane::primitives::Blob;
use aws_sdk_iotdataplane::types::PayloadFormatIndicator;
use aws_sdk_iotdataplane::Client;
use base64::Engine;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::{Message, PublishError, Publisher};
use crate::cause::{Cause, Chain};
use crate::contract::{BackendLimits, Qos, TopicLimits};

/// AWS IoT Core's message limits (AWS IoT Core endpoints and quotas).
pub const IOT_LIMITS: BackendLimits = BackendLimits {
    topic: TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true },
    max_payload_bytes: 128 * 1024,
    max_qos: Qos::AtLeastOnce,
    // AWS IoT Core keeps retained messages (one per topic).
    retain_available: true,
};

/// Where the IoT client sends its publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IotEndpoint {
    /// A host (`xxx-ats.iot.eu-west-1.amazonaws.com`) or a URL (`IOT_DATA_ENDPOINT`).
    Given(String),
    /// The SDK's own resolution (`AWS_ENDPOINT_URL_IOT_DATA_PLANE`, `AWS_ENDPOINT_URL`).
    Sdk,
    /// The account's endpoint, asked of AWS IoT's `DescribeEndpoint` once per
    /// process ([`crate::aws::describe_iot_data_endpoint`]); `control_plane`
    /// overrides where that call goes (`AWS_ENDPOINT_URL_IOT`).
    Discover {
        /// The IoT control plane's URL, if not the Region's.
        control_plane: Option<String>,
    },
}

/// How the IoT client is reached and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IotSettings {
    /// Where publishes go.
    pub endpoint: IotEndpoint,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time for one attempt, response included.
    pub attempt_timeout: Duration,
    /// Time for the whole call, retries included: well inside API Gateway's 29 s.
    pub total_timeout: Duration,
    /// Attempts in all (1 means no retry).
    pub max_attempts: u32,
}

impl Default for IotSettings {
    fn default() -> Self {
        IotSettings {
            endpoint: IotEndpoint::Sdk,
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(4),
            total_timeout: Duration::from_secs(9),
            max_attempts: 2,
        }
    }
}

/// The bound of one `DescribeEndpoint` call.
const DESCRIBE_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(4);

impl IotSettings {
    /// Defaults, with the endpoint and `PUBLISH_TIMEOUT_MS` (the total) from the environment:
    /// `IOT_DATA_ENDPOINT` if set; else the SDK's when `AWS_ENDPOINT_URL_IOT_DATA_PLANE`
    /// or `AWS_ENDPOINT_URL` names one; else the account's, found by `DescribeEndpoint`.
    pub fn from_env() -> IotSettings {
        IotSettings::from_vars(|name| std::env::var(name).ok())
    }

    /// [`IotSettings::from_env`] with the variables read through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> IotSettings {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let endpoint = match var("IOT_DATA_ENDPOINT") {
            Some(endpoint) => IotEndpoint::Given(endpoint),
            None if var("AWS_ENDPOINT_URL_IOT_DATA_PLANE").is_some() || var("AWS_ENDPOINT_URL").is_some() => {
                IotEndpoint::Sdk
            }
            None => IotEndpoint::Discover { control_plane: var("AWS_ENDPOINT_URL_IOT") },
        };
        let mut settings = IotSettings { endpoint, ..IotSettings::default() };
        if let Some(ms) = var("PUBLISH_TIMEOUT_MS").and_then(|v| v.parse::<u64>().ok()) {
            settings.total_timeout = Duration::from_millis(ms.max(1));
            settings.attempt_timeout = settings.attempt_timeout.min(settings.total_timeout);
        }
        settings
    }
}

/// Publishes through AWS IoT Core. Built once per process; cheap to share (clones
/// share one client, and one endpoint lookup).
#[derive(Debug, Clone)]
pub struct IotPublisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The client's config, without an endpoint while it is still to be found.
    config: aws_sdk_iotdataplane::Config,
    /// The client, once its endpoint is known.
    client: OnceCell<Client>,
    /// What finds the endpoint: the SDK config and the control plane's URL.
    discovery: Option<(SdkConfig, Option<String>)>,
    /// The endpoint's host, once known (given, or found); the SDK's own
    /// resolution (`AWS_ENDPOINT_URL_IOT_DATA_PLANE`) does not say it.
    host: std::sync::OnceLock<String>,
}

impl IotPublisher {
    /// A publisher on `sdk_config`, bounded and pointed as `settings` say. Makes no network call.
    pub fn new(sdk_config: &SdkConfig, settings: &IotSettings) -> IotPublisher {
        let mut config = aws_sdk_iotdataplane::config::Builder::from(sdk_config)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.total_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(1)),
            );
        let mut discovery = None;
        match &settings.endpoint {
            IotEndpoint::Given(endpoint) => config = config.endpoint_url(endpoint_url(endpoint)),
            IotEndpoint::Sdk => {}
            IotEndpoint::Discover { control_plane } => discovery = Some((sdk_config.clone(), control_plane.clone())),
        }
        let config = config.build();
        let client = match discovery {
            None => OnceCell::new_with(Some(Client::from_conf(config.clone()))),
            Some(_) => OnceCell::new(),
        };
        let host = std::sync::OnceLock::new();
        if let IotEndpoint::Given(endpoint) = &settings.endpoint {
            let _ = host.set(host_of(endpoint).to_owned());
        }
        IotPublisher { inner: Arc::new(Inner { config, client, discovery, host }) }
    }

    /// The client, finding the account's endpoint first if that is still to do.
    /// Concurrent callers share one lookup; a failed one is tried again by the next caller.
    pub async fn client(&self) -> Result<&Client, PublishError> {
        let inner = &self.inner;
        inner
            .client
            .get_or_try_init(|| async {
                let (sdk, control_plane) = inner.discovery.as_ref().expect("a client without one is set at start");
                let host = crate::aws::describe_iot_data_endpoint(sdk, control_plane.as_deref(), DESCRIBE_ENDPOINT_TIMEOUT)
                    .await
                    .map_err(|e| {
                        warn!(error = %Chain(&e), "cannot find the account's AWS IoT data endpoint; set IOT_DATA_ENDPOINT to skip the lookup");
                        PublishError::Unavailable(Cause::new(e))
                    })?;
                info!(endpoint = %host, "found the account's AWS IoT data endpoint");
                let _ = inner.host.set(host.clone());
                Ok(Client::from_conf(inner.config.to_builder().endpoint_url(endpoint_url(&host)).build()))
            })
            .await
    }
}

impl IotPublisher {
    /// The data endpoint's host (`xxx-ats.iot.REGION.amazonaws.com`), which
    /// also serves MQTT over WebSocket: found first if that is still to do.
    /// `None` when the SDK resolves the endpoint itself.
    pub async fn endpoint_host(&self) -> Result<Option<String>, PublishError> {
        if self.inner.discovery.is_some() {
            self.client().await?;
        }
        Ok(self.inner.host.get().cloned())
    }
}

/// The host of an endpoint given as a host or a URL.
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// A host becomes an `https://` URL; a URL stays as given.
fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    }
}

impl Publisher for IotPublisher {
    fn limits(&self) -> BackendLimits {
        IOT_LIMITS
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        let p = message.properties;
        let user_properties =
            (!p.user_properties.is_empty()).then(|| crate::contract::headers::user_properties_json(&p.user_properties));
        let attempts = Attempts::default();
        let result = self
            .client()
            .await?
            .publish()
            .topic(message.topic.as_str())
            .qos(i32::from(message.qos.level()))
            .retain(message.retain)
            .payload(Blob::new(message.payload))
            .set_user_properties(user_properties)
            .set_payload_format_indicator(p.payload_format_indicator.map(|i| match i {
                1 => PayloadFormatIndicator::Utf8Data,
                _ => PayloadFormatIndicator::UnspecifiedBytes,
            }))
            .set_content_type(p.content_type)
            .set_response_topic(p.response_topic)
            // The SDK sends this header as given; the API wants it base64-encoded.
            .set_correlation_data(p.correlation_data.map(|d| base64::engine::general_purpose::STANDARD.encode(d)))
            .set_message_expiry(p.message_expiry_interval.map(i64::from))
            .customize()
            .interceptor(attempts.clone())
            .send()
            .await;
        result.map(drop).map_err(|error| match classify(error) {
            // The SDK's last attempt was refused, but an earlier one may have
            // reached AWS IoT: the message may be published.
            PublishError::Unavailable(last) | PublishError::Throttled(last) if attempts.earlier_may_have_arrived() => {
                PublishError::Unknown(Cause::new(AfterAnUnknownAttempt(last)))
            }
            other => other,
        })
    }
}

/// The last attempt was refused after an earlier one that may have arrived.
#[derive(Debug, thiserror::Error)]
#[error("an earlier attempt's outcome is unknown, and the last one failed")]
struct AfterAnUnknownAttempt(#[source] Cause);

/// Whether each of one publish's attempts may have reached AWS IoT: one that
/// got no answer (a timeout, a connection lost mid-call; not a refused
/// connection) or a 5xx other than 503. The SDK retries those, and an answer
/// to the last attempt says nothing of the earlier ones.
#[derive(Debug, Clone, Default)]
struct Attempts(Arc<parking_lot::Mutex<Vec<bool>>>);

impl Attempts {
    fn earlier_may_have_arrived(&self) -> bool {
        let attempts = self.0.lock();
        attempts.split_last().is_some_and(|(_, earlier)| earlier.iter().any(|&may| may))
    }
}

impl Intercept for Attempts {
    fn name(&self) -> &'static str {
        "Attempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let may_have_arrived = match (context.response(), context.output_or_error()) {
            (Some(response), _) => response.status().as_u16() >= 500 && response.status().as_u16() != 503,
            (None, Some(Err(error))) => !refused(error),
            (None, _) => true,
        };
        self.0.lock().push(may_have_arrived);
        Ok(())
    }
}

/// Maps the SDK's error as docs/aws.md's "Errors from AWS IoT" says. The SDK picks a modelled variant from
/// `x-amzn-ErrorType`; a response without it arrives unhandled, and is then
/// classified by its error code if any, else its raw HTTP status.
fn classify(err: SdkError<SdkPublishError>) -> PublishError {
    let kind: fn(Cause) -> PublishError = match &err {
        // A connection refused never sent the request.
        SdkError::DispatchFailure(_) if refused(&err) => PublishError::Unavailable,
        // A timeout, or a connection lost mid-exchange: the request may have arrived.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => PublishError::Unknown,
        SdkError::ServiceError(service) => match service.err() {
            SdkPublishError::InvalidRequestException(_) => PublishError::Rejected,
            SdkPublishError::ThrottlingException(_) => PublishError::Throttled,
            // IoT's own 500, already retried by the SDK (a transient server error):
            // a backend fault worth a retry later, not ours; whether it published is unknown.
            SdkPublishError::InternalFailureException(_) => PublishError::Unknown,
            SdkPublishError::UnauthorizedException(_) | SdkPublishError::MethodNotAllowedException(_) => {
                PublishError::Failed
            }
            other => match (other.meta().code(), service.raw().status().as_u16()) {
                (Some("RequestEntityTooLargeException"), _) | (_, 413) => {
                    return PublishError::TooLarge { max_payload: None }
                }
                (Some("ServiceUnavailableException"), _) | (_, 503) => PublishError::Unavailable,
                (_, 504) => PublishError::Unknown,
                (Some("ThrottlingException"), _) | (_, 429) => PublishError::Throttled,
                (Some("InvalidRequestException"), _) | (_, 400) => PublishError::Rejected,
                _ => PublishError::Failed,
            },
        },
        _ => PublishError::Failed,
    };
    kind(Cause::new(err))
}

/// Whether `err` is a connection the endpoint refused: an error of the
/// connect, so the request was never sent. Any other dispatch failure may have
/// happened after the request left, and is classified as of unknown outcome.
fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable) {
                return true;
            }
        }
        cause = error.source();
    }
    false
}
