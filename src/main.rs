//! The `mqtt-http-publish` binary: picks the entry point and hands over.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mqtt_http_publish::cli::{self, Cli, Command, ConfigCommand};
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::publish::iot::{load_sdk_config, IotPublisher, IotSettings};
use mqtt_http_publish::service::Service;

fn main() -> ExitCode {
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
        Command::Lambda => run_lambda(),
        Command::Invoke { event } => invoke(&event),
    }
}

fn print_or_fail(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The Lambda function: JSON logs, config from `CONFIG_FILE`, IoT client built once.
fn run_lambda() -> ExitCode {
    init_logs(true);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let service = build_service().await?;
        mqtt_http_publish::lambda::run(Arc::new(service)).await.map_err(|e| format!("the Lambda runtime stopped: {e}"))
    });
    exit_logged(result)
}

/// `invoke`: one event through the same service the function runs.
fn invoke(event: &std::path::Path) -> ExitCode {
    init_logs(false);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let text = std::fs::read(event).map_err(|e| format!("cannot read {}: {e}", event.display()))?;
        let event = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", event.display()))?;
        let service = build_service().await?;
        let response = mqtt_http_publish::lambda::handle(&service, event, None).await.map_err(|e| e.to_string())?;
        println!("{}", serde_json::to_string_pretty(&response).expect("a response serializes"));
        Ok(())
    });
    exit_logged(result)
}

/// The service as the function runs it: the config of `CONFIG_FILE`, the IoT
/// publisher of `IOT_DATA_ENDPOINT` (else the SDK's endpoint resolution).
async fn build_service() -> Result<Service<IotPublisher>, String> {
    let config_file =
        std::env::var_os("CONFIG_FILE").ok_or("CONFIG_FILE is not set: name the TOML config of users and rules")?;
    let policy = Policy::load(config_file.as_ref()).map_err(|e| format!("the config is refused: {e}"))?;
    let settings = IotSettings::from_env();
    let publisher = IotPublisher::new(&load_sdk_config(&settings).await, &settings);
    Ok(Service::new(publisher, policy))
}

/// JSON lines on Lambda (CloudWatch parses them), plain text to stderr elsewhere.
fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if json {
        builder.json().with_current_span(true).with_span_list(false).without_time().init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
}

fn exit_logged(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
