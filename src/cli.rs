//! The command line: how users call the binary, and the small commands that
//! need no server (`passwd`, `config check`).

mod progress;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::hash_argon2id;
use crate::config::manage::{import_mosquitto, new_user, Change, Home};
use crate::config::table::TableStore;
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
#[allow(clippy::large_enum_variant, reason = "one value per process, parsed once: its size costs nothing")]
pub enum Command {
    /// Read a password on standard input and print its argon2id hash for the config.
    Passwd,
    /// Check, push, pull and import configs, in a TOML file or the DynamoDB table.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Add, change or remove one user without editing a file by hand.
    #[command(subcommand)]
    User(UserCommand),
    /// Serve the publish API over HTTP(S), in front of an MQTT 5 broker or an embedded one.
    #[cfg(feature = "serve")]
    Serve(crate::serve::ServeOptions),
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
    /// Make the table (or file) equal to FILE; print what is added, changed and deleted.
    Push {
        /// The TOML file to push.
        #[arg(value_name = "FILE")]
        source: PathBuf,
        /// Where to push it.
        #[command(flatten)]
        target: Target,
        /// Print the changes without writing them.
        #[arg(long)]
        dry_run: bool,
        /// Let a table receive the demo user of config/example.toml (its password is public): for a throwaway test stack only.
        #[arg(long)]
        allow_demo_user: bool,
    },
    /// Print the table's (or file's) config as TOML.
    Pull {
        /// What to pull.
        #[command(flatten)]
        target: Target,
    },
    /// Turn a mosquitto_passwd file into users; print them as TOML, or add them to a table or file.
    ImportMosquitto {
        /// A file of `username:hash` lines written by mosquitto_passwd.
        password_file: PathBuf,
        /// Where to add them: a table or a file; neither prints them.
        #[command(flatten)]
        target: Target<false>,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user or change its password; the password is read on standard input.
    Set {
        /// The Basic user name.
        name: String,
        /// Where the user is kept.
        #[command(flatten)]
        target: Target,
    },
    /// Remove a user.
    Remove {
        /// The Basic user name.
        name: String,
        /// Where the user is kept.
        #[command(flatten)]
        target: Target,
    },
}

/// Where a command works: one of a table and a file, never both; for a
/// `Target<false>`, neither is allowed too.
#[derive(Debug, Args)]
#[group(required = REQUIRED, multiple = false)]
pub struct Target<const REQUIRED: bool = true> {
    /// The DynamoDB config table (CONFIG_TABLE on Lambda).
    #[arg(long)]
    pub table: Option<String>,
    /// A TOML config file, in place of a table.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

async fn home(table: Option<String>, file: Option<PathBuf>) -> Option<Home> {
    match (table, file) {
        (Some(table), _) => Some(Home::Table(
            TableStore::with_timeout(&crate::aws::sdk_config().await, &table, std::time::Duration::from_secs(60))
                .with_progress(Arc::new(progress::StderrProgress::new())),
        )),
        (None, Some(file)) => Some(Home::File(file)),
        (None, None) => None,
    }
}

fn lines(changes: &[Change], dry_run: bool) -> String {
    if changes.is_empty() {
        return "no changes".into();
    }
    let prefix = if dry_run { "would " } else { "" };
    changes.iter().map(|c| format!("{prefix}{c}")).collect::<Vec<_>>().join("\n")
}

/// [`manage`] on a runtime of its own.
#[inline(never)]
pub fn manage_blocking(command: Command, stdin: impl BufRead) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(manage(command, stdin))
}

/// `config push|pull|import-mosquitto` and `user set|remove`: the commands that change a config.
pub async fn manage(command: Command, stdin: impl BufRead) -> anyhow::Result<String> {
    match command {
        Command::Config(ConfigCommand::Push { source, target, dry_run, allow_demo_user }) => {
            let home = home(target.table, target.file).await.expect("clap requires a target");
            Ok(lines(&home.push(&source, dry_run, allow_demo_user).await?, dry_run))
        }
        Command::Config(ConfigCommand::Pull { target }) => {
            let home = home(target.table, target.file).await.expect("clap requires a target");
            Ok(home.pull().await?)
        }
        Command::Config(ConfigCommand::ImportMosquitto { password_file, target }) => {
            let text = std::fs::read_to_string(&password_file)
                .with_context(|| format!("cannot read {}", password_file.display()))?;
            let users = import_mosquitto(&text).with_context(|| password_file.display().to_string())?;
            match home(target.table, target.file).await {
                Some(home) => Ok(lines(&home.set_users(&users).await?, false)),
                None => {
                    let file = crate::config::ConfigFile { users, ..Default::default() };
                    let text = toml::to_string(&file)?;
                    // Only the [[users]] tables: the limits are the caller's to keep.
                    Ok(text.split("[limits]").next().unwrap_or_default().trim_end().to_owned())
                }
            }
        }
        Command::User(UserCommand::Set { name, target }) => {
            let password = read_password(stdin)?;
            let home = home(target.table, target.file).await.expect("clap requires a target");
            Ok(lines(&home.set_users(&[new_user(&name, &password)]).await?, false))
        }
        Command::User(UserCommand::Remove { name, target }) => {
            let home = home(target.table, target.file).await.expect("clap requires a target");
            Ok(home.remove_user(&name).await?.to_string())
        }
        other => anyhow::bail!("not a config command: {other:?}"),
    }
}

/// `passwd`: the first line of `input`, without its line ending, hashed.
pub fn passwd(input: impl BufRead) -> anyhow::Result<String> {
    Ok(hash_argon2id(read_password(input)?.as_bytes()))
}

/// The first line of `input` without its line ending; never empty.
fn read_password(input: impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input.take(64 * 1024).read_line(&mut line).context("cannot read standard input")?;
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        anyhow::bail!("no password on standard input (try: echo -n 'secret0' | mqtt-http-publish passwd)");
    }
    Ok(password.to_owned())
}

/// `config check`: a one-paragraph summary, or the reason the file is refused.
pub fn config_check(file: &Path) -> anyhow::Result<String> {
    let policy = Policy::load(file).with_context(|| file.display().to_string())?;
    let limits = policy.rules.limits;
    let quota = |rate: Option<f64>, burst: Option<u32>| match rate {
        Some(r) => format!("{r}/s (burst {})", burst.map_or("default".into(), |b| b.to_string())),
        None => "none".into(),
    };
    Ok(format!(
        "{}: ok\n  users: {}\n  rules: {} ({} allow, {} deny)\n  max payload: {} bytes\n  instance quota: {}\n  per-user quota: {}\n  browsers (cors): {}\n  message id property: {}\n  idempotency keys kept: {} s",
        file.display(),
        policy.users.len(),
        policy.rules.acl.rules().len(),
        policy.rules.acl.rules().iter().filter(|r| r.effect == crate::acl::Effect::Allow).count(),
        policy.rules.acl.rules().iter().filter(|r| r.effect == crate::acl::Effect::Deny).count(),
        limits.max_payload_bytes,
        quota(limits.messages_per_second, limits.burst),
        quota(limits.user_messages_per_second, limits.user_burst),
        policy.rules.cors.as_ref().map_or("none".into(), |c| c.summary()),
        policy.rules.message_id_property.as_deref().map_or("none".into(), |p| format!("{p:?}")),
        policy.rules.idempotency_retention.as_secs(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoredHash;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn passwd_hashes_the_first_line_without_its_ending() {
        let hash = passwd(&b"secret0\r\nignored\n"[..]).unwrap();
        assert!(StoredHash::parse(&hash).unwrap().verify(b"secret0"));
        assert!(passwd(&b"\n"[..]).is_err());
        assert!(StoredHash::parse(&passwd(&b"no newline"[..]).unwrap()).unwrap().verify(b"no newline"));
    }
}
