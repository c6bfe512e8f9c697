//! The MQTT 5 broker `serve` embeds when no `--mqtt` is given: rumqttd,
//! listening on `--broker-listen`. `serve` publishes to it over loopback with
//! the same client it uses for any other broker, so there is one code path.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest payload `serve` publishes to the embedded broker (beyond it, 413).
pub const EMBEDDED_MAX_PAYLOAD: usize = 1024 * 1024;
/// Room in a packet besides the payload: the topic and the properties, which come
/// from the request line and headers (at most 16 KiB), and MQTT's framing.
const PACKET_OVERHEAD: usize = 64 * 1024;
/// rumqttd keeps recent messages in a commit log of segments in memory: with its
/// defaults (10 segments of 100 MB) a burst of load grows the process by hundreds
/// of MB. Four segments of 2 MB bound it to about 8 MB while holding any one payload.
const SEGMENT_BYTES: usize = 2 * EMBEDDED_MAX_PAYLOAD;
const SEGMENT_COUNT: usize = 4;

/// Starts the broker on its own threads; it runs until the process ends.
pub fn start(listen: SocketAddr) -> std::io::Result<()> {
    // rumqttd binds inside its own thread and only logs a failure there: check the address first.
    std::net::TcpListener::bind(listen)?;
    let server = ServerSettings {
        name: "v5".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            // rumqttd's limit is on the whole packet; a bigger one drops the connection.
            max_payload_size: EMBEDDED_MAX_PAYLOAD + PACKET_OVERHEAD,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v5: Some(HashMap::from([("v5".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new().name("embedded-broker".into()).spawn(move || {
        if let Err(error) = broker.start() {
            tracing::error!(%error, "the embedded MQTT broker stopped");
        }
    })?;
    Ok(())
}
