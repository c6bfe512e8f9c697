//! The function as Lambda runs it: its service, built once from the
//! function's environment with no network call, then the Runtime API's
//! invocations; and `invoke`, which runs one event file through the same service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::open::{Config, ConfigSource, EntryPoint, OpenError};
use crate::idempotency::dynamo::DynamoKeys;
use crate::publish::iot::{IotPublisher, IotSettings};
use crate::replies::sigv4::{IotMqtt, Signer, MAX_LAMBDA_RESPONSE_TIMEOUT};
use crate::replies::{Connect, ConnectError, Replies};
use crate::service::Service;

/// What the function reads of its environment to build its service.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `CONFIG_TABLE`: the DynamoDB config table (empty is none).
    pub config_table: Option<String>,
    /// `CONFIG_FILE`: a TOML config packaged with the function.
    pub config_file: Option<PathBuf>,
    /// `AWS_LAMBDA_FUNCTION_NAME`: the start of the reply connection's client id.
    pub function_name: Option<String>,
    /// `IOT_MQTT_URL`: where the reply connection goes instead of the account's endpoint.
    pub iot_mqtt_url: Option<String>,
}

impl Environment {
    /// The process's environment.
    pub fn from_env() -> Environment {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Environment {
            config_table: var("CONFIG_TABLE"),
            config_file: var("CONFIG_FILE").map(PathBuf::from),
            function_name: var("AWS_LAMBDA_FUNCTION_NAME"),
            iot_mqtt_url: var("IOT_MQTT_URL"),
        }
    }
}

/// The service as the function runs it: the config of `CONFIG_TABLE` or
/// `CONFIG_FILE`, the IoT publisher of `IOT_DATA_ENDPOINT` (else the account's
/// endpoint, looked up on first use), and the connection that waits for replies.
/// With the table, `Idempotency-Key` records live in it, shared by every
/// container; with a file, in each container's memory.
pub async fn service(environment: &Environment) -> Result<Service<IotPublisher>, OpenError> {
    let sdk = crate::aws::sdk_config().await;
    let (table, file) = (environment.config_table.clone(), environment.config_file.clone());
    let config = ConfigSource::choose(EntryPoint::Lambda, table, file)?.open(Some(&sdk)).await?;
    let publisher = IotPublisher::new(&sdk, &IotSettings::from_env());
    let replies = Arc::new(Replies::new(reply_connection(&sdk, publisher.clone(), environment)));
    let service = Service::with_store(publisher, config.store())
        .with_amzn_trace_id()
        .with_replies(replies, MAX_LAMBDA_RESPONSE_TIMEOUT);
    Ok(match config {
        Config::Table { table, .. } => {
            service.with_key_store(Arc::new(DynamoKeys::new(table.client().clone(), table.table())))
        }
        Config::File(_) => service,
    })
}

/// The connection that waits for replies on Lambda: MQTT 5 over a WebSocket to
/// the account's AWS IoT endpoint (`IOT_MQTT_URL` overrides it), signed with the
/// function's role, under a client id unique to this container.
fn reply_connection(sdk: &aws_config::SdkConfig, publisher: IotPublisher, environment: &Environment) -> Connect {
    let sdk = sdk.clone();
    let client_id = IotMqtt::client_id(environment.function_name.as_deref());
    let url = environment.iot_mqtt_url.clone();
    Box::new(move || {
        let (sdk, publisher, client_id, url) = (sdk.clone(), publisher.clone(), client_id.clone(), url.clone());
        Box::pin(async move {
            let url = match url {
                Some(url) => url,
                None => match publisher
                    .endpoint_host()
                    .await
                    .map_err(|e| ConnectError::lookup("the AWS IoT endpoint", e))?
                {
                    Some(host) => format!("wss://{host}/mqtt"),
                    None => {
                        return Err("the AWS IoT endpoint is not known: set IOT_DATA_ENDPOINT or IOT_MQTT_URL".into())
                    }
                },
            };
            let signer = match (sdk.credentials_provider(), sdk.region()) {
                (Some(credentials), Some(region)) => Some(Signer { credentials, region: region.to_string() }),
                _ => None,
            };
            Ok(IotMqtt { url, client_id, signer, max_packet: IotMqtt::MAX_PACKET }.options())
        })
    })
}

/// [`start`] on a runtime of its own (the function serves one invocation at a
/// time: one thread), until the process ends.
#[inline(never)]
pub fn run(environment: &Environment) -> anyhow::Result<()> {
    current_thread().block_on(start(environment))
}

/// [`invoke`] on a runtime of its own.
#[inline(never)]
pub fn invoke_blocking(event: &Path, environment: &Environment) -> anyhow::Result<String> {
    current_thread().block_on(invoke(event, environment))
}

/// A runtime for one caller at a time.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Serves the Runtime API's invocations with the service of `environment`
/// until the process ends. The table's rules and the IoT endpoint are looked
/// up in the background from the start, without holding up init: the first
/// request finds them done or joins them in flight.
pub async fn start(environment: &Environment) -> anyhow::Result<()> {
    let service = Arc::new(service(environment).await.context("the config is refused")?);
    let prefetch = Arc::clone(&service);
    tokio::spawn(async move {
        // A failed lookup is logged; the first publish tries again.
        let (_, _lookup) = tokio::join!(prefetch.config().prefetch(), prefetch.publisher().client());
    });
    super::run(service).await.map_err(|e| anyhow::anyhow!(e)).context("the Lambda runtime stopped")
}

/// `invoke`: one event file through the service of `environment`; the response as Lambda would return it.
pub async fn invoke(event: &Path, environment: &Environment) -> anyhow::Result<String> {
    let text = std::fs::read(event).with_context(|| format!("cannot read {}", event.display()))?;
    let event = serde_json::from_slice(&text).with_context(|| event.display().to_string())?;
    let service = service(environment).await.context("the config is refused")?;
    let response = super::handle(&service, event, None).await?;
    Ok(serde_json::to_string_pretty(&response).expect("a response serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::HttpRequest;

    fn post(topic: &str, authorization: &'static str) -> HttpRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static(authorization));
        HttpRequest {
            method: http::Method::POST,
            path: crate::contract::RequestPath::Encoded(format!("/topics/{topic}")),
            query: Vec::new(),
            headers,
            body: bytes::Bytes::from_static(b"on"),
            source_ip: None,
            client_certificate: None,
        }
    }

    #[tokio::test]
    async fn the_function_s_service_reads_the_config_its_environment_names() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let environment = Environment { config_file: Some(file), ..Environment::default() };
        let service = service(&environment).await.unwrap();
        // user0's password verifies against the file's hash, and its ACL denies home/admin/.
        let denied = service.handle(post("home/admin/door", "Basic dXNlcjA6c2VjcmV0MA==")).await;
        assert_eq!(denied.status(), 401);
        assert!(std::str::from_utf8(denied.body()).unwrap().contains("not_authorized"));
        let wrong = service.handle(post("home/admin/door", "Basic dXNlcjA6d3Jvbmc=")).await;
        assert!(std::str::from_utf8(wrong.body()).unwrap().contains("authentication_failed"));
        let error = super::service(&Environment::default()).await.err().expect("no config named");
        assert!(error.to_string().contains("neither CONFIG_TABLE nor CONFIG_FILE is set"), "{error}");
    }
}
