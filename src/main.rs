//! The `mqtt-http-publish` binary: picks the entry point and hands over.
// The commands print their answer; everything else goes through the log writer.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use mqtt_http_publish::cli::{self, Cli, Command, ConfigCommand};
use mqtt_http_publish::lambda::function::{self, Environment};
use mqtt_http_publish::logs::{self, Output};

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
            print_or_fail(cli::manage_blocking(command, std::io::stdin().lock()))
        }
        #[cfg(feature = "serve")]
        Command::Serve(options) => {
            let _logs = logs::init(Output::Background);
            exit_logged(mqtt_http_publish::serve::run_blocking(options).map_err(anyhow::Error::from))
        }
        Command::Lambda => {
            let _logs = logs::init(Output::LambdaJson);
            exit_logged(function::run(&Environment::from_env()))
        }
        Command::Invoke { event } => {
            let _logs = logs::init(Output::Text);
            print_or_fail(function::invoke_blocking(&event, &Environment::from_env()))
        }
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

fn exit_logged(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
