//! `mqtt-http-publish serve`: the publish API as a server of its own, in front
//! of any MQTT 5 broker (`--mqtt`) or the broker it embeds. It runs the same
//! [`Service`] as the Lambda function; only the edges differ.

pub mod broker;
pub mod http;
pub mod parse_errors;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::config::Policy;
use crate::publish::mqtt::{BrokerSettings, MqttPublisher, MQTT_LIMITS};
use crate::service::Service;

/// Everything `serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The HTTP(S) listen address.
    pub listen: SocketAddr,
    /// The TOML config; `None` runs the demo config.
    pub config: Option<PathBuf>,
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
}

/// The demo config: `user0` / `secret0` may publish to any topic not starting
/// with `$` (`#` does not match those), and so may a device with a verified certificate.
pub const DEMO_CONFIG: &str = r##"
[[users]]
username = "user0"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$eRi/JmbC+0iM7lbk0iybwA$cok3Q+hd+USrvOXevP6umE7RRRhr6FtVu5mWX6zfDNk"

[[rules]]
priority = 1
effect = "allow"
topics = ["#"]
"##;

/// Splits `mqtt://host:port` / `mqtts://host:port` (IPv6 in brackets) into host, port and TLS.
pub fn parse_broker_url(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!("--mqtt {url:?}: use mqtt://HOST:PORT or mqtts://HOST:PORT"));
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("--mqtt {url:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("--mqtt {url:?}: {p:?} is not a port"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("--mqtt {url:?}: no host"));
    }
    Ok((host.to_owned(), port, tls))
}

fn connection_client_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    format!("mqtt-http-publish-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// How long `serve` waits for its broker connection before it listens anyway.
const BROKER_PATIENCE: Duration = Duration::from_secs(5);

/// Runs the server until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: ServeOptions) -> Result<(), String> {
    let policy = match &options.config {
        Some(path) => Policy::load(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            warn!("NO --config GIVEN: running the DEMO config. user0 / secret0 (and any client certificate the --client-ca trusts) may publish to every topic not starting with '$'. Do not expose this server.");
            Policy::from_toml(DEMO_CONFIG).expect("the demo config is valid")
        }
    };

    let broker = match &options.mqtt {
        Some(url) => {
            let (host, port, use_tls) = parse_broker_url(url)?;
            let tls = if use_tls { Some(tls::client_config(options.mqtt_ca.as_deref())?) } else { None };
            BrokerSettings {
                host,
                port,
                tls,
                credentials: options
                    .mqtt_username
                    .clone()
                    .map(|u| (u, options.mqtt_password.clone().unwrap_or_default())),
                client_id: connection_client_id(),
                max_payload_bytes: MQTT_LIMITS.max_payload_bytes,
            }
        }
        None => {
            broker::start(options.broker_listen)?;
            info!(listen = %options.broker_listen, "embedded MQTT 5 broker started");
            BrokerSettings {
                host: options.broker_listen.ip().to_string(),
                port: options.broker_listen.port(),
                tls: None,
                credentials: None,
                client_id: connection_client_id(),
                max_payload_bytes: broker::EMBEDDED_MAX_PAYLOAD,
            }
        }
    };

    let acceptor = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsAcceptor::from(tls::server_config(cert, key, options.client_ca.as_deref())?))
        }
        (None, None) if options.client_ca.is_some() => return Err("--client-ca needs --tls-cert and --tls-key".into()),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };

    let publisher = MqttPublisher::connect(broker);
    if !publisher.wait_connected(BROKER_PATIENCE).await {
        warn!("not connected to the MQTT broker yet: answering 503 until the connection is up");
    }
    let service = Arc::new(Service::new(publisher, policy));
    let listener =
        TcpListener::bind(options.listen).await.map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        scheme = if acceptor.is_some() { "https" } else { "http" },
        "serving the publish API"
    );

    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let reload_service = Arc::clone(&service);
    let config_path = options.config.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match &config_path {
                None => warn!("SIGHUP: the demo config has no file to reload"),
                Some(path) => match Policy::load(path) {
                    Ok(policy) => {
                        reload_service.config().replace(policy);
                        info!(config = %path.display(), "SIGHUP: config reloaded");
                    }
                    Err(e) => {
                        error!(config = %path.display(), error = %e, "SIGHUP: the new config is refused; keeping the old one")
                    }
                },
            }
        }
    });

    http::serve(listener, acceptor, service, options.header_read_timeout, shutdown_signal()).await;
    info!("stopped");
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
        assert_eq!(parse_broker_url("mqtt://localhost"), Ok(("localhost".into(), 1883, false)));
        assert_eq!(parse_broker_url("mqtts://broker.example:8884"), Ok(("broker.example".into(), 8884, true)));
        assert_eq!(parse_broker_url("mqtts://[::1]"), Ok(("::1".into(), 8883, true)));
        assert_eq!(parse_broker_url("mqtt://127.0.0.1:1884/"), Ok(("127.0.0.1".into(), 1884, false)));
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
