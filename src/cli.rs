//! The command line: how users call the binary, and the small commands that
//! need no server (`passwd`, `config check`).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::auth::hash_argon2id;
use crate::config::Policy;

/// Publish MQTT messages with an HTTP POST.
///
/// With AWS_LAMBDA_RUNTIME_API set (as on AWS Lambda), runs as the Lambda function.
#[derive(Debug, Parser)]
#[command(name = "mqtt-http-publish", version)]
pub struct Cli {
    /// What to do; none runs the Lambda function when AWS_LAMBDA_RUNTIME_API is set.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a password on standard input and print its argon2id hash for the config.
    Passwd,
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run as the AWS Lambda function (the default when AWS_LAMBDA_RUNTIME_API is set).
    Lambda,
    /// Run one Lambda event file through the function and print its response, as
    /// Lambda would return it. Reads the same environment as the function.
    Invoke {
        /// An event JSON file, e.g. events/example-1-basic-auth.json.
        event: PathBuf,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a TOML config and print a summary; exit 1 naming the bad entry.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// `passwd`: the first line of `input`, without its line ending, hashed.
pub fn passwd(input: impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    input.take(64 * 1024).read_line(&mut line).map_err(|e| format!("cannot read standard input: {e}"))?;
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        return Err("no password on standard input (try: echo -n 'secret0' | mqtt-http-publish passwd)".into());
    }
    Ok(hash_argon2id(password.as_bytes()))
}

/// `config check`: a one-paragraph summary, or the reason the file is refused.
pub fn config_check(file: &Path) -> Result<String, String> {
    let policy = Policy::load(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let limits = policy.limits;
    let quota = |rate: Option<f64>, burst: Option<u32>| match rate {
        Some(r) => format!("{r}/s (burst {})", burst.map_or("default".into(), |b| b.to_string())),
        None => "none".into(),
    };
    Ok(format!(
        "{}: ok\n  users: {}\n  rules: {} ({} allow, {} deny)\n  max payload: {} bytes\n  instance quota: {}\n  per-user quota: {}",
        file.display(),
        policy.users.len(),
        policy.acl.rules().len(),
        policy.acl.rules().iter().filter(|r| r.effect == crate::acl::Effect::Allow).count(),
        policy.acl.rules().iter().filter(|r| r.effect == crate::acl::Effect::Deny).count(),
        limits.max_payload_bytes,
        quota(limits.messages_per_second, limits.burst),
        quota(limits.user_messages_per_second, limits.user_burst),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoredHash;

    #[test]
    fn passwd_hashes_the_first_line_without_its_ending() {
        let hash = passwd(&b"secret0\r\nignored\n"[..]).unwrap();
        assert!(StoredHash::parse(&hash).unwrap().verify(b"secret0"));
        assert!(passwd(&b"\n"[..]).is_err());
        assert!(StoredHash::parse(&passwd(&b"no newline"[..]).unwrap()).unwrap().verify(b"no newline"));
    }
}
