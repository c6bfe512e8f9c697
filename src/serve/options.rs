//! `serve`'s options: its command line, grouped as docs/serve.md lists them.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Everything `serve` is told on its command line.
#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// Address of the HTTP(S) listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a client has to send a request's line and headers; then its connection is closed.
    #[arg(
        long = "header-read-timeout",
        value_name = "SECONDS",
        default_value = "10",
        value_parser = seconds
    )]
    pub header_read_timeout: Duration,
    /// Address of the admin listener, off by default: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Where the users and rules come from.
    #[command(flatten)]
    pub config: ConfigOptions,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerOptions,
    /// HTTPS.
    #[command(flatten)]
    pub tls: TlsOptions,
    /// Redis or Valkey shared by a fleet of instances, redis://[:PASSWORD@]HOST:PORT[/DB]
    /// (no TLS: a private network or a tunnel): Idempotency-Key records and the [limits] quotas live there.
    /// Without it both are this process's own.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_name = "URL")]
    pub redis: Option<String>,
}

/// Where the users and rules come from.
#[derive(Debug, Clone, Args)]
pub struct ConfigOptions {
    /// TOML config of users and rules; without it (or --config-table) a demo config runs (user0 / secret0).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The DynamoDB config table to read users and rules from, through the Lambda function's
    /// caches (AWS region, credentials and endpoint from the usual AWS environment); not with --config.
    // Not a clap conflict: clap would count an empty CONFIG_TABLE, which means none, as on Lambda.
    #[arg(long, env = "CONFIG_TABLE", value_name = "NAME")]
    pub config_table: Option<String>,
}

/// The MQTT broker: one of the caller's, or the embedded one.
#[derive(Debug, Clone, Args)]
pub struct BrokerOptions {
    /// The MQTT 5 broker, mqtt://HOST:PORT or mqtts://HOST:PORT; without it a broker is embedded.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// CA certificate (PEM) to trust for mqtts:// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    /// User name for the broker connection.
    #[arg(long = "mqtt-username", value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// Password for the broker connection (better: the MQTT_PASSWORD variable, out of `ps`).
    #[arg(long, env = "MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Connections to the broker (default: enough to keep 64 publishes per core in
    /// flight within the Receive Maximum the broker announces). A topic's messages
    /// always share one connection, so their order is kept.
    #[arg(long)]
    pub mqtt_connections: Option<NonZeroUsize>,
    /// Address of the embedded broker (used without --mqtt).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker_listen: SocketAddr,
}

/// HTTPS, and client certificates.
#[derive(Debug, Clone, Args)]
pub struct TlsOptions {
    /// Server certificate chain (PEM): serve HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) for client certificates; a verified certificate's CN becomes the client_id.
    #[arg(long = "client-ca", value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

/// A whole number of seconds, at least 1.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a whole number of seconds of at least 1")),
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
    }
}
