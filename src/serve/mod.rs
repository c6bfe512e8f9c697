//! `mqtt-http-publish serve`: the publish API as a server of its own, in front
//! of any MQTT 5 broker (`--mqtt`) or the broker it embeds. It runs the same
//! [`Service`] as the Lambda function; only the edges differ.

pub mod admin;
pub mod broker;
pub mod http;
pub mod options;
pub mod parse_errors;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

pub use self::options::ServeOptions;
use crate::config::open::{Config, ConfigSource, EntryPoint, OpenError};
use crate::config::source::CacheSettings;
use crate::config::source::{CachedTable, ConfigStore};
use crate::contract::query::MAX_RESPONSE_TIMEOUT;
use crate::idempotency::redis::RedisKeys;
use crate::publish::mqtt::{BrokerSettings, MqttPublisher, MQTT_LIMITS};
use crate::quota::redis::RedisQuotas;
use crate::replies::Replies;
use crate::service::Service;
use crate::store::redis::Redis;

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No config can be opened: a refused file, or options that exclude each other.
    #[error(transparent)]
    Config(#[from] OpenError),
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
pub fn parse_broker_url(text: &str) -> Result<(String, u16, bool), ServeError> {
    let bad = |reason: String| ServeError::BrokerUrl { url: text.to_owned(), reason };
    let url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
    let tls = match url.scheme() {
        "mqtts" => true,
        "mqtt" => false,
        _ => return Err(bad("use mqtt://HOST:PORT or mqtts://HOST:PORT".into())),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("give the broker's credentials with --mqtt-username and MQTT_PASSWORD, not in the URL".into()));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a broker URL is mqtt://HOST:PORT, with no path or query".into()));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(host) if !host.to_string().is_empty() => host.to_string(),
        _ => return Err(bad("no host".into())),
    };
    Ok((host, url.port().unwrap_or(if tls { 8883 } else { 1883 }), tls))
}

fn connection_client_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    format!("mqtt-http-publish-{}", hex::encode(bytes))
}

/// How long a 429 `too_many_login_attempts` is held (see [`Service::with_login_refusal_delay`]).
const LOGIN_REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// How long `serve` waits for its broker connection before it listens anyway.
const BROKER_PATIENCE: Duration = Duration::from_secs(5);

/// [`run`] on a multi-threaded runtime of its own.
#[inline(never)]
pub fn run_blocking(options: ServeOptions) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run(options))
}

/// Runs the server until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: ServeOptions) -> Result<(), ServeError> {
    let config = open_config(&options).await?;
    let broker = broker_settings(&options)?;
    let redis = options.redis.as_deref().filter(|url| !url.is_empty()).map(Redis::new).transpose()?;
    let acceptor = tls_acceptor(&options)?;
    let admin = match options.admin_listen {
        Some(address) => Some(listen("the admin listener", address).await?),
        None => None,
    };
    let replies = Arc::new(Replies::new(crate::publish::mqtt::replies_connect(&broker)));
    let publisher = MqttPublisher::connect(broker, BROKER_PATIENCE).await;
    let listener = listen("the server", options.listen).await?;
    let api_address = listener.local_addr().unwrap_or(options.listen);
    if let Some(admin_listener) = admin {
        info!(
            listen = %admin_listener.local_addr().unwrap_or(options.listen),
            "serving the try-it page, /metrics, /healthz and /readyz"
        );
        let table = match &config {
            Config::Table { cached, .. } => Some(Arc::clone(cached)),
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
            .with_key_store(Arc::new(RedisKeys::new(redis.clone())))
            .with_shared_quotas(Arc::new(RedisQuotas::new(redis)));
    }
    info!(listen = %api_address, scheme = if acceptor.is_some() { "https" } else { "http" }, "serving the publish API");
    reload_on_hangup(config)?;
    http::serve(listener, acceptor, Arc::new(service), options.header_read_timeout, shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

/// A listener on `address`, or the error naming `what` could not listen there.
async fn listen(what: &'static str, address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address).await.map_err(|source| ServeError::Listen { what, address, source })
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

/// The `--config` file, the `--config-table` table (its rules read in the background
/// from now on, as the Lambda function does), or the demo config (said loudly).
async fn open_config(options: &ServeOptions) -> Result<Config, ServeError> {
    let (table, file) = (options.config.config_table.clone(), options.config.config.clone());
    let source = ConfigSource::choose(EntryPoint::Serve, table, file)?;
    match &source {
        ConfigSource::Table(name) => info!(
            table = %name,
            ttl_seconds = CacheSettings::from_env().ttl.as_secs(),
            "reading users and rules from the config table"
        ),
        ConfigSource::Demo => warn!("NO --config GIVEN: running the DEMO config. user0 / secret0 (and any client certificate the --client-ca trusts) may publish to every topic not starting with '$' or under replies/. Do not expose this server."),
        ConfigSource::File(_) => {}
    }
    let config = source.open(None).await?;
    if let Config::Table { cached, .. } = &config {
        let prefetch = Arc::clone(cached);
        tokio::spawn(async move { prefetch.prefetch().await });
    }
    Ok(config)
}

/// The broker of `--mqtt`, or the embedded one, started here.
fn broker_settings(options: &ServeOptions) -> Result<BrokerSettings, ServeError> {
    let broker = &options.broker;
    let Some(url) = &broker.mqtt else {
        broker::start(broker.broker_listen).map_err(|source| ServeError::Listen {
            what: "the embedded broker",
            address: broker.broker_listen,
            source,
        })?;
        info!(listen = %broker.broker_listen, "embedded MQTT 5 broker started");
        return Ok(BrokerSettings {
            host: broker.broker_listen.ip().to_string(),
            port: broker.broker_listen.port(),
            tls: None,
            credentials: None,
            client_id: connection_client_id(),
            max_payload_bytes: broker::EMBEDDED_MAX_PAYLOAD,
            connections: broker.mqtt_connections,
        });
    };
    let (host, port, use_tls) = parse_broker_url(url)?;
    Ok(BrokerSettings {
        host,
        port,
        tls: if use_tls { Some(tls::client_config(broker.mqtt_ca.as_deref())?) } else { None },
        credentials: broker.mqtt_username.clone().map(|u| (u, broker.mqtt_password.clone().unwrap_or_default())),
        client_id: connection_client_id(),
        max_payload_bytes: MQTT_LIMITS.max_payload_bytes,
        connections: broker.mqtt_connections,
    })
}

/// The HTTPS acceptor of `--tls-cert`/`--tls-key` (and `--client-ca`), if given.
fn tls_acceptor(options: &ServeOptions) -> Result<Option<TlsAcceptor>, ServeError> {
    let tls = &options.tls;
    match (&tls.tls_cert, &tls.tls_key) {
        (Some(cert), Some(key)) => {
            Ok(Some(TlsAcceptor::from(tls::server_config(cert, key, tls.client_ca.as_deref())?)))
        }
        (None, None) if tls.client_ca.is_some() => {
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
                Config::Table { table, .. } => {
                    info!(
                        table = %table.table(),
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
    fn a_broker_url_holds_no_credentials_path_or_query() {
        for url in ["mqtt://user:pw@broker:1883", "mqtt://user@broker", "mqtt://broker/topic", "mqtt://broker?x=1"] {
            let error = parse_broker_url(url).unwrap_err().to_string();
            assert!(!error.contains("pw@") || url.contains("pw@"), "{error}");
            assert!(error.contains("mqtt-username") || error.contains("no path"), "{url}: {error}");
        }
    }
}
