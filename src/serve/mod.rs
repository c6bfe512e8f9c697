//! `mqtt-http-publish serve`: the publish API as a server of its own, in front
//! of any MQTT 5 broker (`--mqtt`) or the broker it embeds. It runs the same
//! [`Service`] as the Lambda function; only the edges differ.

pub mod admin;
pub mod broker;
pub mod http;
pub mod parse_errors;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::config::source::{CacheSettings, CachedTable, ConfigStore, FileStore};
use crate::config::table::TableStore;
use crate::config::{ConfigError, Policy};
use crate::contract::query::MAX_RESPONSE_TIMEOUT;
use crate::publish::mqtt::{BrokerSettings, MqttPublisher, MQTT_LIMITS};
use crate::replies::Replies;
use crate::service::Service;

/// Everything `serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The HTTP(S) listen address.
    pub listen: SocketAddr,
    /// The TOML config; `None` (and no table) runs the demo config.
    pub config: Option<PathBuf>,
    /// The DynamoDB config table, read through the Lambda function's caches; excludes `config`.
    pub config_table: Option<String>,
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`; `None` embeds a broker.
    pub mqtt: Option<String>,
    /// CA file to trust for `mqtts://` (else the system's roots).
    pub mqtt_ca: Option<PathBuf>,
    /// User name for the broker connection.
    pub mqtt_username: Option<String>,
    /// Password for the broker connection.
    pub mqtt_password: Option<String>,
    /// Where the embedded broker listens.
    pub broker_listen: SocketAddr,
    /// Server certificate chain (PEM) for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Time a client has to send a request's line and headers before its connection is closed.
    pub header_read_timeout: Duration,
    /// Connections to the broker; `None` sizes the pool from its Receive Maximum.
    pub mqtt_connections: Option<NonZeroUsize>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    /// The Redis a fleet shares (idempotency keys, quotas); none: this process's own.
    pub redis: Option<String>,
}

/// The demo config: `user0` / `secret0` may publish to any topic not starting
/// with `$` (`#` does not match those) or under `replies/` (devices answer
/// there), and so may a device with a verified certificate; both may wait for
/// replies on their default response topics; the try-it page of
/// `--admin-listen 127.0.0.1:9090` may call it.
pub const DEMO_CONFIG: &str = r##"
[[users]]
username = "user0"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$eRi/JmbC+0iM7lbk0iybwA$cok3Q+hd+USrvOXevP6umE7RRRhr6FtVu5mWX6zfDNk"

# Replies come from devices, on the broker: a caller of the API may not forge one.
[[rules]]
priority = 0
effect = "deny"
topics = ["replies/#"]

[[rules]]
priority = 1
effect = "allow"
topics = ["#"]

# Waiting for a reply (ResponseTimeout) on the default response topic.
[[rules]]
priority = 2
effect = "allow"
topics = ["replies/${client_id}/#"]
actions = ["subscribe"]

[cors]
allowed_origins = ["http://127.0.0.1:9090", "http://localhost:9090"]
"##;

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file is refused; the message names the entry.
    #[error("{}: {source}", path.display())]
    Config {
        /// The file given with `--config`.
        path: PathBuf,
        /// What is wrong with it.
        source: ConfigError,
    },
    /// `--mqtt` is not a broker URL.
    #[error("--mqtt {url:?}: {reason}")]
    BrokerUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Options that do not go together.
    #[error("{0}")]
    Options(&'static str),
    /// `--redis` is not a Redis URL.
    #[error(transparent)]
    Redis(#[from] crate::store::redis::RedisUrlError),
    /// A certificate, key or CA file.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// An address to listen on is taken or not ours.
    #[error("{what} cannot listen on {address}: {source}{}", advice(what, source))]
    Listen {
        /// The server or the embedded broker.
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The process cannot receive SIGHUP.
    #[error("cannot watch for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// What to do when the embedded broker's port is taken: most often by the
/// mosquitto a Debian or Homebrew package started on 1883.
fn advice(what: &str, error: &std::io::Error) -> &'static str {
    if what == "the embedded broker" && error.kind() == std::io::ErrorKind::AddrInUse {
        "\n  a broker is probably running there already (Debian's and Homebrew's mosquitto start one on 1883):\n  \
         publish to it with --mqtt mqtt://127.0.0.1:1883, or move the embedded one with --broker-listen 127.0.0.1:1884"
    } else {
        ""
    }
}

/// Splits `mqtt://host:port` / `mqtts://host:port` (IPv6 in brackets) into host, port and TLS.
pub fn parse_broker_url(url: &str) -> Result<(String, u16, bool), ServeError> {
    let bad = |reason: String| ServeError::BrokerUrl { url: url.to_owned(), reason };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(bad("use mqtt://HOST:PORT or mqtts://HOST:PORT".into()));
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['".into()))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad(format!("{p:?} is not a port")))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    Ok((host.to_owned(), port, tls))
}

fn connection_client_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    format!("mqtt-http-publish-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// How long a 429 `too_many_login_attempts` is held (see [`Service::with_login_refusal_delay`]).
const LOGIN_REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// How long `serve` waits for its broker connection before it listens anyway.
const BROKER_PATIENCE: Duration = Duration::from_secs(5);

/// Runs the server until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: ServeOptions) -> Result<(), ServeError> {
    let config = load_config(&options).await?;
    let broker = broker_settings(&options)?;
    let redis = options.redis.as_deref().map(crate::store::redis::Redis::new).transpose()?;
    let acceptor = tls_acceptor(&options)?;

    let admin = match options.admin_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|source| ServeError::Listen {
            what: "the admin listener",
            address,
            source,
        })?),
        None => None,
    };
    let replies = Arc::new(Replies::new(crate::publish::mqtt::replies_connect(&broker)));
    let publisher = MqttPublisher::connect(broker, BROKER_PATIENCE).await;
    let listener = TcpListener::bind(options.listen).await.map_err(|source| ServeError::Listen {
        what: "the server",
        address: options.listen,
        source,
    })?;
    let api_address = listener.local_addr().unwrap_or(options.listen);
    if let Some(admin_listener) = admin {
        info!(
            listen = %admin_listener.local_addr().unwrap_or(options.admin_listen.unwrap_or(options.listen)),
            "serving the try-it page, /metrics, /healthz and /readyz"
        );
        let table = match &config {
            Config::Table { store, .. } => Some(Arc::clone(store)),
            Config::File(_) => None,
        };
        let page = admin::TryPage::new(api_address.port(), acceptor.is_some());
        tokio::spawn(admin::serve(admin_listener, Arc::new(Ready { publisher: publisher.clone(), table }), page));
    }
    let mut service = Service::with_store(publisher, config.store())
        .with_login_refusal_delay(LOGIN_REFUSAL_DELAY)
        .with_replies(replies, MAX_RESPONSE_TIMEOUT);
    if let Some(redis) = redis {
        info!("idempotency keys and the [limits] quotas are shared through Redis");
        service = service
            .with_key_store(Arc::new(crate::idempotency::redis::RedisKeys::new(redis.clone())))
            .with_shared_quotas(Arc::new(crate::quota::redis::RedisQuotas::new(redis)));
    }
    let service = Arc::new(service);
    info!(
        listen = %api_address,
        scheme = if acceptor.is_some() { "https" } else { "http" },
        "serving the publish API"
    );
    reload_on_hangup(config)?;
    http::serve(listener, acceptor, service, options.header_read_timeout, shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

/// `/readyz`'s answer: a broker connection is up, and the config is loaded (a
/// file is, before the server listens; a table once its rules have been read).
struct Ready {
    publisher: MqttPublisher,
    table: Option<Arc<CachedTable>>,
}

impl admin::Readiness for Ready {
    fn not_ready(&self) -> Option<&'static str> {
        if self.publisher.connections_up() == 0 {
            return Some("no broker connection is up");
        }
        if self.table.as_ref().is_some_and(|table| !table.has_rules()) {
            return Some("the rules have not been read from the config table");
        }
        None
    }
}

/// Where `serve` reads users and rules.
enum Config {
    /// `--config`, or the demo config: in memory, reloaded on SIGHUP.
    File(Arc<FileStore>),
    /// `--config-table`: the table behind the caches the Lambda function uses, so
    /// that every instance of a fleet serves the same config.
    Table {
        /// The caches over the table.
        store: Arc<CachedTable>,
        /// The table's name, for log lines.
        name: String,
    },
}

impl Config {
    /// The store requests read.
    fn store(&self) -> Arc<dyn ConfigStore> {
        match self {
            Config::File(file) => Arc::clone(file) as Arc<dyn ConfigStore>,
            Config::Table { store, .. } => Arc::clone(store) as Arc<dyn ConfigStore>,
        }
    }
}

/// The `--config` file, the `--config-table` table (its rules read in the background
/// from now on, as the Lambda function does), or the demo config (said loudly).
async fn load_config(options: &ServeOptions) -> Result<Config, ServeError> {
    match (&options.config, &options.config_table) {
        (Some(_), Some(_)) => Err(ServeError::Options(
            "--config and --config-table (or CONFIG_TABLE) exclude each other: give a file or a table",
        )),
        (Some(path), None) => FileStore::load(path.clone())
            .map(|file| Config::File(Arc::new(file)))
            .map_err(|source| ServeError::Config { path: path.clone(), source }),
        (None, Some(name)) => {
            // Region, credentials and endpoints (AWS_ENDPOINT_URL_DYNAMODB) as for the Lambda function.
            let sdk = crate::aws::sdk_config().await;
            if sdk.region().is_none() {
                return Err(ServeError::Options("--config-table needs an AWS region: set AWS_REGION"));
            }
            let settings = CacheSettings::from_env();
            let store = Arc::new(CachedTable::new(TableStore::new(&sdk, name), settings));
            let prefetch = Arc::clone(&store);
            tokio::spawn(async move { prefetch.prefetch().await });
            info!(table = %name, ttl_seconds = settings.ttl.as_secs(), "reading users and rules from the config table");
            Ok(Config::Table { store, name: name.clone() })
        }
        (None, None) => {
            warn!("NO --config GIVEN: running the DEMO config. user0 / secret0 (and any client certificate the --client-ca trusts) may publish to every topic not starting with '$' or under replies/. Do not expose this server.");
            let demo = Policy::from_toml(DEMO_CONFIG).expect("the demo config is valid");
            Ok(Config::File(Arc::new(FileStore::new(demo))))
        }
    }
}

/// The broker of `--mqtt`, or the embedded one, started here.
fn broker_settings(options: &ServeOptions) -> Result<BrokerSettings, ServeError> {
    let Some(url) = &options.mqtt else {
        broker::start(options.broker_listen).map_err(|source| ServeError::Listen {
            what: "the embedded broker",
            address: options.broker_listen,
            source,
        })?;
        info!(listen = %options.broker_listen, "embedded MQTT 5 broker started");
        return Ok(BrokerSettings {
            host: options.broker_listen.ip().to_string(),
            port: options.broker_listen.port(),
            tls: None,
            credentials: None,
            client_id: connection_client_id(),
            max_payload_bytes: broker::EMBEDDED_MAX_PAYLOAD,
            connections: options.mqtt_connections,
        });
    };
    let (host, port, use_tls) = parse_broker_url(url)?;
    Ok(BrokerSettings {
        host,
        port,
        tls: if use_tls { Some(tls::client_config(options.mqtt_ca.as_deref())?) } else { None },
        credentials: options.mqtt_username.clone().map(|u| (u, options.mqtt_password.clone().unwrap_or_default())),
        client_id: connection_client_id(),
        max_payload_bytes: MQTT_LIMITS.max_payload_bytes,
        connections: options.mqtt_connections,
    })
}

/// The HTTPS acceptor of `--tls-cert`/`--tls-key` (and `--client-ca`), if given.
fn tls_acceptor(options: &ServeOptions) -> Result<Option<TlsAcceptor>, ServeError> {
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            Ok(Some(TlsAcceptor::from(tls::server_config(cert, key, options.client_ca.as_deref())?)))
        }
        (None, None) if options.client_ca.is_some() => {
            Err(ServeError::Options("--client-ca needs --tls-cert and --tls-key"))
        }
        (None, None) => Ok(None),
        _ => Err(ServeError::Options("--tls-cert and --tls-key go together")),
    }
}

/// Reloads the config file on each SIGHUP; a refused file leaves the old one in force.
/// A table needs no reload: its entries are fetched again once their TTL has passed.
fn reload_on_hangup(config: Config) -> Result<(), ServeError> {
    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let config = match &config {
                Config::File(file) => file,
                Config::Table { name, .. } => {
                    info!(
                        table = %name,
                        "SIGHUP: nothing to reload; the config table's entries are read again once their TTL \
                         (CONFIG_CACHE_TTL_SECONDS) has passed"
                    );
                    continue;
                }
            };
            let Some(path) = config.path() else {
                warn!("SIGHUP: the demo config has no file to reload");
                continue;
            };
            let result = config.reload();
            crate::metrics::config_reload(result.is_ok());
            match result {
                Ok(()) => info!(config = %path.display(), "SIGHUP: config reloaded"),
                Err(e) => error!(
                    config = %path.display(),
                    error = %e,
                    "SIGHUP: the new config is refused; keeping the old one"
                ),
            }
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(parse_broker_url("mqtt://localhost").ok(), Some(("localhost".into(), 1883, false)));
        assert_eq!(parse_broker_url("mqtts://broker.example:8884").ok(), Some(("broker.example".into(), 8884, true)));
        assert_eq!(parse_broker_url("mqtts://[::1]").ok(), Some(("::1".into(), 8883, true)));
        assert_eq!(parse_broker_url("mqtt://127.0.0.1:1884/").ok(), Some(("127.0.0.1".into(), 1884, false)));
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://:1883").is_err());
        assert!(parse_broker_url("mqtt://h:port").is_err());
    }

    #[test]
    fn the_demo_config_allows_user0_everywhere_but_dollar_topics() {
        let policy = Policy::from_toml(DEMO_CONFIG).unwrap();
        assert!(policy.users["user0"].verify(b"secret0"));
        assert!(DEMO_CONFIG.contains(crate::config::DEMO_PASSWORD_HASH), "config push must know it as the demo's");
    }
}
