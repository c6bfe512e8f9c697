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
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AWS_LAMBDA_LOG_LEVEL")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .init();
    let Some(config_file) = std::env::var_os("CONFIG_FILE") else {
        tracing::error!("CONFIG_FILE is not set: name the TOML config of users and rules");
        return ExitCode::FAILURE;
    };
    let policy = match Policy::load(config_file.as_ref()) {
        Ok(policy) => policy,
        Err(error) => {
            tracing::error!(%error, "the config is refused");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        let settings = IotSettings::from_env();
        let publisher = IotPublisher::new(&load_sdk_config(&settings).await, &settings);
        mqtt_http_publish::lambda::run(Arc::new(Service::new(publisher, policy))).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}
