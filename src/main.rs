//! The `mqtt-http-publish` binary: picks the entry point and hands over.
// The Lambda handler future nests the SDK's deep futures; its layout needs more than the default depth.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mqtt_http_publish::cli::{self, Cli, Command, ConfigCommand};
use mqtt_http_publish::config::source::{CacheSettings, CachedTable, ConfigStore, FileStore};
use mqtt_http_publish::config::table::TableStore;
use mqtt_http_publish::idempotency::dynamo::DynamoKeys;
use mqtt_http_publish::idempotency::KeyStore;
use mqtt_http_publish::logs::{self, Output};
use mqtt_http_publish::publish::iot::{IotPublisher, IotSettings};
use mqtt_http_publish::replies::sigv4::{IotMqtt, Signer};
use mqtt_http_publish::replies::Replies;
use mqtt_http_publish::service::Service;

fn main() -> ExitCode {
    mqtt_http_publish::auth::memory::bound_allocator_retention();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            eprintln!("mqtt-http-publish: no command given; see --help");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Passwd => print_or_fail(cli::passwd(std::io::stdin().lock())),
        Command::Config(ConfigCommand::Check { file }) => print_or_fail(cli::config_check(&file)),
        command @ (Command::Config(_) | Command::User(_)) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            print_or_fail(runtime.block_on(cli::manage(command, std::io::stdin().lock())))
        }
        #[cfg(feature = "serve")]
        Command::Serve(args) => {
            let _logs = logs::init(Output::Background);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
            exit_logged(runtime.block_on(mqtt_http_publish::serve::run(args.into())).map_err(anyhow::Error::from))
        }
        Command::Lambda => run_lambda(),
        Command::Invoke { event } => invoke(&event),
    }
}

fn print_or_fail(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            // `{:#}`: each context, then its cause, on one line.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The Lambda function: JSON logs, config from `CONFIG_FILE`, IoT client built once.
fn run_lambda() -> ExitCode {
    let _logs = logs::init(Output::LambdaJson);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let service = Arc::new(build_service().await?);
        // Start reading the table's rules and finding the IoT endpoint now, without
        // holding up init: the first request finds them done or joins them in flight.
        let prefetch = Arc::clone(&service);
        tokio::spawn(async move {
            // A failed lookup is logged; the first publish tries again.
            let (_, _lookup) = tokio::join!(prefetch.config().prefetch(), prefetch.publisher().client());
        });
        mqtt_http_publish::lambda::run(service)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("the Lambda runtime stopped")
    });
    exit_logged(result)
}

/// `invoke`: one event through the same service the function runs.
fn invoke(event: &std::path::Path) -> ExitCode {
    let _logs = logs::init(Output::Text);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let text = std::fs::read(event).with_context(|| format!("cannot read {}", event.display()))?;
        let event = serde_json::from_slice(&text).with_context(|| event.display().to_string())?;
        let service = build_service().await?;
        let response = mqtt_http_publish::lambda::handle(&service, event, None).await?;
        println!("{}", serde_json::to_string_pretty(&response).expect("a response serializes"));
        Ok(())
    });
    exit_logged(result)
}

/// The service as the function runs it: the config of `CONFIG_TABLE` or
/// `CONFIG_FILE`, the IoT publisher of `IOT_DATA_ENDPOINT` (else the account's
/// endpoint, looked up on first use). No network call happens here.
async fn build_service() -> anyhow::Result<Service<IotPublisher>> {
    let sdk = mqtt_http_publish::aws::sdk_config().await;
    // With the table, Idempotency-Key records live in it, shared by every
    // container; with a file, in each container's memory.
    let (store, keys): (Arc<dyn ConfigStore>, Option<Arc<dyn KeyStore>>) =
        match (std::env::var("CONFIG_TABLE").ok().filter(|t| !t.is_empty()), std::env::var_os("CONFIG_FILE")) {
            (Some(table), _) => {
                let table = TableStore::new(&sdk, &table);
                let keys = Arc::new(DynamoKeys::new(table.client().clone(), table.table()));
                (Arc::new(CachedTable::new(table, CacheSettings::from_env())), Some(keys))
            }
            (None, Some(file)) => (Arc::new(FileStore::load(file.into()).context("the config is refused")?), None),
            (None, None) => {
                anyhow::bail!("neither CONFIG_TABLE nor CONFIG_FILE is set: name the config of users and rules")
            }
        };
    let publisher = IotPublisher::new(&sdk, &IotSettings::from_env());
    let replies = Arc::new(Replies::new(iot_replies(&sdk, publisher.clone())));
    let service = Service::with_store(publisher, store)
        .with_amzn_trace_id()
        .with_replies(replies, mqtt_http_publish::replies::sigv4::MAX_LAMBDA_RESPONSE_TIMEOUT);
    Ok(match keys {
        Some(keys) => service.with_key_store(keys),
        None => service,
    })
}

/// The connection that waits for replies on Lambda: MQTT 5 over a WebSocket to
/// the account's AWS IoT endpoint (`IOT_MQTT_URL` overrides it), signed with the
/// function's role, under a client id unique to this container.
fn iot_replies(sdk: &aws_config::SdkConfig, publisher: IotPublisher) -> mqtt_http_publish::replies::Connect {
    let sdk = sdk.clone();
    let client_id = IotMqtt::client_id(std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok().as_deref());
    Box::new(move || {
        let (sdk, publisher, client_id) = (sdk.clone(), publisher.clone(), client_id.clone());
        Box::pin(async move {
            let url = match std::env::var("IOT_MQTT_URL").ok().filter(|u| !u.is_empty()) {
                Some(url) => url,
                None => match publisher.endpoint_host().await.map_err(|e| e.to_string())? {
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

fn exit_logged(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
