//! Any MQTT 5 broker, through a pool of long-lived `rumqttc` connections that
//! pipeline publishes: a request waits for its own PUBACK (QoS 1) or its own
//! write (QoS 0), never for another request's.
//!
//! **The pool.** A broker lets each connection have only its Receive Maximum of
//! QoS 1 publishes awaiting PUBACK (mosquitto: 20), so one connection would
//! queue every concurrent request behind those few. The pool holds enough
//! connections to keep [`IN_FLIGHT_PER_CORE`] publishes per core in flight,
//! from the Receive Maximum the first connection's CONNACK announces
//! ([`pool_size`]), or as many as `serve --mqtt-connections` says. All messages
//! of one topic go on one connection (a hash of the topic picks it): MQTT keeps
//! order per connection, so a topic's messages arrive in the order they were
//! accepted. Each connection reconnects on its own; a request gets 503 only if
//! its topic's connection is down.
//!
//! **What the broker announced** in CONNACK is respected before anything is
//! sent: a publish whose packet would exceed the Maximum Packet Size is 413 (the
//! broker would drop the connection, and every request on it, for it); QoS
//! above the Maximum QoS and `retain` when Retain Available is 0 are 400s (the
//! contract checks them through [`MqttPublisher::limits`]). rumqttc itself keeps
//! within the Receive Maximum; topic aliases are never used, so the Topic Alias
//! Maximum has nothing to bound.
//!
//! **One connection.** rumqttc reports each publish it writes as
//! `Outgoing::Publish(pkid)`, in the order requests entered its channel, and
//! each PUBACK with that pkid. So a request queues its waiter and sends its
//! publish under one lock (the channel's order is the queue's order); the event
//! loop moves the front waiter to the pkid it was written with, and the PUBACK
//! resolves it. When the connection drops, every waiter fails (503) and
//! whatever rumqttc still holds for the broken session is dropped, so nothing
//! sent before the drop can later be mistaken for a newer request's publish.
//! The connection is re-established with backoff ([`crate::session`] supervises
//! it); meanwhile its requests get 503 at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{Outgoing, Transport};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Message, PublishError, Publisher};
use crate::contract::{BackendLimits, Qos, TopicLimits};
use crate::metrics;
use crate::session::{self, Epoch, Handler, InFlight, Lines, Session};

/// What any MQTT 5 broker accepts (MQTT 5 §1.5.4, §2.2.2: 65 535-byte names, 256 MB packets).
pub const MQTT_LIMITS: BackendLimits = BackendLimits {
    topic: TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false },
    max_payload_bytes: 256 * 1024 * 1024,
    max_qos: Qos::AtLeastOnce,
    retain_available: true,
};

/// How long a request waits for its PUBACK before answering 503.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes queued towards one connection at most; beyond, 503.
const CHANNEL_CAPACITY: usize = 4096;
/// QoS 1 publishes awaiting their PUBACK at most on one connection (the broker's
/// Receive Maximum, when lower, wins: mosquitto announces 20, EMQX 32). rumqttc
/// keeps a ~250-byte slot per possible packet id up to this number, in each
/// connection of the pool: its default, 65 535, would cost 16 MB a connection
/// for slots no broker lets us fill. A broker that allows more gets more
/// connections instead ([`pool_size`]).
pub const MAX_INFLIGHT: u16 = 128;
/// Publishes in flight the default pool carries per core (64 per core keeps two
/// cores busy in front of mosquitto: BENCHMARKS.md).
pub const IN_FLIGHT_PER_CORE: usize = 64;
/// Connections of a default pool at most, whatever the broker's Receive Maximum.
pub const MAX_POOL: usize = 64;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS client config for `mqtts://`, `None` for plain TCP.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// User name and password for the broker connection.
    pub credentials: Option<(String, String)>,
    /// The MQTT client id of the connections, each suffixed with `-N`.
    pub client_id: String,
    /// Largest payload the broker takes when it announces no Maximum Packet Size
    /// (the embedded broker's limit, which rumqttd does not announce).
    pub max_payload_bytes: usize,
    /// Connections of the pool; `None` sizes it from the broker's Receive Maximum.
    pub connections: Option<NonZeroUsize>,
}

/// The largest reply payload the reply connection takes (with room for its
/// topic and properties): a broker drops a larger one rather than send it.
pub const MAX_REPLY_PAYLOAD: usize = 16 * 1024 * 1024;

/// The connection that waits for replies (`ResponseTimeout`) to the same
/// broker: client id `{client_id}-replies`, the same credentials and TLS.
pub fn replies_connect(settings: &BrokerSettings) -> crate::replies::Connect {
    let settings = settings.clone();
    Box::new(move || {
        let max_packet = settings.max_payload_bytes.min(MAX_REPLY_PAYLOAD) + 64 * 1024;
        let mut options = broker_options(&settings, format!("{}-replies", settings.client_id));
        // As `replies::options` says: the broker drops a larger reply rather than send it.
        options.set_max_packet_size(Some(u32::try_from(max_packet).unwrap_or(u32::MAX)));
        Box::pin(async move { Ok(options) })
    })
}

/// The options of the pool's connection `index`.
fn connection_options(settings: &BrokerSettings, index: usize) -> MqttOptions {
    let mut options = broker_options(settings, format!("{}-{index}", settings.client_id));
    options.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    options
}

/// The options of a connection to the broker of `settings` as `client_id`:
/// [`session::options`] with the broker's credentials and TLS.
fn broker_options(settings: &BrokerSettings, client_id: String) -> MqttOptions {
    let mut options = session::options(client_id, settings.host.clone(), settings.port);
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &settings.tls {
        options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls))));
    }
    options
}

/// The default pool: enough connections to carry [`IN_FLIGHT_PER_CORE`] publishes
/// per core within each connection's `receive_maximum` (and [`MAX_INFLIGHT`]); at
/// least one per core, at most [`MAX_POOL`].
pub fn pool_size(receive_maximum: u16, cores: usize) -> usize {
    let per_connection = receive_maximum.clamp(1, MAX_INFLIGHT);
    let wanted = (IN_FLIGHT_PER_CORE * cores).div_ceil(usize::from(per_connection));
    wanted.clamp(cores.clamp(1, MAX_POOL), MAX_POOL)
}

/// What the broker announced in its latest CONNACK (MQTT 5 §3.2.2.3) on any
/// connection of the pool; absent properties mean MQTT's defaults (QoS 2, retain
/// available). The Maximum Packet Size is each connection's own ([`Connection`]):
/// rumqttc enforces the one its connection was given.
struct Announced {
    max_qos: AtomicU8,
    retain_available: AtomicBool,
    receive_maximum: AtomicU16,
}

impl Default for Announced {
    fn default() -> Announced {
        Announced {
            max_qos: AtomicU8::new(2),
            retain_available: AtomicBool::new(true),
            receive_maximum: AtomicU16::new(u16::MAX),
        }
    }
}

impl Announced {
    fn update(&self, properties: Option<&ConnAckProperties>) {
        let p = properties;
        let store = Ordering::Relaxed;
        self.max_qos.store(p.and_then(|p| p.max_qos).unwrap_or(2), store);
        self.retain_available.store(p.and_then(|p| p.retain_available).is_none_or(|r| r != 0), store);
        self.receive_maximum.store(p.and_then(|p| p.receive_max).unwrap_or(u16::MAX), store);
    }

    fn max_qos(&self) -> Qos {
        Qos::from_level(self.max_qos.load(Ordering::Relaxed)).unwrap_or(Qos::AtMostOnce)
    }
}

type Waiter = oneshot::Sender<Result<(), PublishError>>;

/// Waiters by where their publish is.
#[derive(Default)]
struct Correlation {
    /// Whether `publish` may send: cleared under this lock with what the lost
    /// session held, so no request slips in between.
    connected: bool,
    /// Sent into rumqttc's channel, not yet written: in channel order.
    queued: VecDeque<Waiter>,
    /// Written with QoS 1, waiting for the PUBACK of this pkid.
    inflight: HashMap<u16, Waiter>,
}

impl Correlation {
    /// Fails every waiter: the connection went with their publishes handed to
    /// it. Written or still in rumqttc's queue (which it may yet send after a
    /// reconnect), each may be delivered: their outcome is unknown.
    fn fail_all(&mut self, reason: &str) {
        let error = || Err(PublishError::Unknown(reason.into()));
        for waiter in self.queued.drain(..) {
            let _ = waiter.send(error());
        }
        for (_, waiter) in self.inflight.drain() {
            let _ = waiter.send(error());
        }
    }
}

/// The largest packet MQTT can frame at all: its Remaining Length tops out at
/// 268 435 455 (§1.5.5), plus the fixed header's 1 + 4 bytes.
const MQTT_MAX_PACKET: u32 = 268_435_460;

/// One broker connection of the pool.
struct Connection {
    client: AsyncClient,
    correlation: Arc<Mutex<Correlation>>,
    /// The Maximum Packet Size of this connection's CONNACK (MQTT's own limit if none).
    max_packet_size: Arc<AtomicU32>,
    session: Session,
}

impl Connection {
    /// Starts the connection's session; returns at once.
    fn start(settings: &BrokerSettings, index: usize, announced: &Arc<Announced>) -> Connection {
        let (client, eventloop) = AsyncClient::new(connection_options(settings, index), CHANNEL_CAPACITY);
        let correlation = Arc::new(Mutex::new(Correlation::default()));
        let max_packet_size = Arc::new(AtomicU32::new(MQTT_MAX_PACKET));
        let handler = PoolHandler {
            correlation: Arc::clone(&correlation),
            announced: Arc::clone(announced),
            max_packet_size: Arc::clone(&max_packet_size),
            connected_before: false,
        };
        let session = Session::start(eventloop, handler);
        Connection { client, correlation, max_packet_size, session }
    }

    fn is_up(&self) -> bool {
        self.session.is_up()
    }
}

/// Publishes to an MQTT 5 broker over a pool of pipelined connections.
#[derive(Clone)]
pub struct MqttPublisher {
    pool: Arc<Pool>,
}

struct Pool {
    connections: Vec<Connection>,
    announced: Arc<Announced>,
    /// [`MQTT_LIMITS`], with the payload limit of the settings.
    limits: BackendLimits,
}

impl MqttPublisher {
    /// Starts the pool. Sizing it from the broker's Receive Maximum needs the
    /// first CONNACK, awaited up to `patience`; then every connection is given
    /// the rest of `patience` to come up. Requests on a connection that is not
    /// up get 503 until it is.
    pub async fn connect(settings: BrokerSettings, patience: Duration) -> MqttPublisher {
        let deadline = tokio::time::Instant::now() + patience;
        let limits = BackendLimits {
            max_payload_bytes: settings.max_payload_bytes.min(MQTT_LIMITS.max_payload_bytes),
            ..MQTT_LIMITS
        };
        let announced = Arc::new(Announced::default());
        let first = Connection::start(&settings, 0, &announced);
        let size = match settings.connections {
            Some(n) => n.get(),
            None => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                if first.session.wait_up(None, deadline).await.is_none() {
                    warn!("the broker has not answered yet: sizing the connection pool by the cores alone");
                }
                pool_size(announced.receive_maximum.load(Ordering::Relaxed), cores)
            }
        };
        let mut connections = vec![first];
        connections.extend((1..size).map(|index| Connection::start(&settings, index, &announced)));
        metrics::broker_pool_size(size);
        let publisher = MqttPublisher { pool: Arc::new(Pool { connections, announced, limits }) };
        let mut all_up = true;
        for connection in &publisher.pool.connections {
            all_up &= connection.session.wait_up(None, deadline).await.is_some();
        }
        if !all_up {
            warn!(
                up = publisher.connections_up(),
                of = size,
                "not every broker connection is up yet: their topics get 503 until they are"
            );
        }
        info!(connections = size, "broker connection pool started");
        publisher
    }

    /// Connections of the pool that are up now.
    pub fn connections_up(&self) -> usize {
        self.pool.connections.iter().filter(|c| c.is_up()).count()
    }

    /// The connection that carries every message of `topic`.
    fn connection_for(&self, topic: &str) -> &Connection {
        let connections = &self.pool.connections;
        // SipHash with fixed keys: a topic maps to the same connection for the process's life.
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        &connections[(hasher.finish() % connections.len() as u64) as usize]
    }
}

impl Publisher for MqttPublisher {
    fn limits(&self) -> BackendLimits {
        let announced = &self.pool.announced;
        let base = self.pool.limits;
        // The Maximum Packet Size is not folded into `max_payload_bytes`: the packet
        // holds the topic and properties too, so `publish` checks it exactly and
        // names the largest payload this message could carry.
        BackendLimits {
            max_qos: base.max_qos.min(announced.max_qos()),
            retain_available: announced.retain_available.load(Ordering::Relaxed),
            ..base
        }
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        let p = message.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        };
        let qos = match message.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            // Beyond this publisher's max_qos, which the contract enforces; refused, never downgraded.
            Qos::ExactlyOnce => return Err(PublishError::Rejected("QoS 2 is not supported by this publisher".into())),
        };
        let topic = message.topic.as_str();
        // The packet as it will be written (a pkid set: QoS 1 carries one), measured
        // against the broker's Maximum Packet Size before anything is sent.
        let mut packet = Publish::new(topic, qos, message.payload, Some(properties));
        packet.retain = message.retain;
        packet.pkid = 1;
        let size = packet.size();
        let connection = self.connection_for(topic);
        let max_packet = connection.max_packet_size.load(Ordering::Relaxed) as usize;
        if size > max_packet {
            let overhead = size - packet.payload.len();
            return Err(PublishError::TooLarge { max_payload: Some(max_packet.saturating_sub(overhead)) });
        }
        let Publish { payload, properties, .. } = packet;
        let (tx, rx) = oneshot::channel();
        {
            let mut correlation = connection.correlation.lock();
            if !correlation.connected {
                return Err(PublishError::Unavailable("not connected to the broker".into()));
            }
            connection
                .client
                .try_publish_with_properties(topic, qos, message.retain, payload, properties.unwrap_or_default())
                .map_err(|e| PublishError::Unavailable(format!("the publish queue is full: {e}").into()))?;
            correlation.queued.push_back(tx);
        }
        let _in_flight = metrics::publish_started();
        match tokio::time::timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Unknown("the connection task ended".into())),
            Err(_) => Err(PublishError::Unknown("no PUBACK within the timeout".into())),
        }
    }
}

/// A pool connection's side of its session: the limits its CONNACK announces,
/// its waiters resolved by PUBACKs, its metrics.
struct PoolHandler {
    correlation: Arc<Mutex<Correlation>>,
    announced: Arc<Announced>,
    max_packet_size: Arc<AtomicU32>,
    /// Whether the connection was up before: its next CONNACK is a reconnect.
    connected_before: bool,
}

impl PoolHandler {
    fn lock(&self) -> MutexGuard<'_, Correlation> {
        self.correlation.lock()
    }
}

impl Handler for PoolHandler {
    const LINES: Lines = Lines {
        up: "connected to the MQTT broker",
        lost: "lost the MQTT broker connection; reconnecting",
        // `connect` says when the pool is not up in time; each retry is not worth a line.
        cannot_connect: None,
    };

    fn on_connected(&mut self, _: Epoch, connack: &ConnAck) {
        self.announced.update(connack.properties.as_ref());
        let limit = connack.properties.as_ref().and_then(|p| p.max_packet_size);
        self.max_packet_size.store(limit.unwrap_or(MQTT_MAX_PACKET).min(MQTT_MAX_PACKET), Ordering::Relaxed);
        self.lock().connected = true;
        metrics::broker_connection(true);
        if self.connected_before {
            metrics::broker_reconnect();
        }
        self.connected_before = true;
    }

    fn on_event(&mut self, event: Event) {
        let mut c = self.lock();
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(waiter) = c.queued.pop_front() {
                    if pkid == 0 {
                        let _ = waiter.send(Ok(()));
                    } else {
                        c.inflight.insert(pkid, waiter);
                    }
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(waiter) = c.inflight.remove(&ack.pkid) {
                    let _ = waiter.send(classify(ack.reason));
                }
            }
            _ => {}
        }
    }

    fn on_lost(&mut self, in_flight: InFlight<'_>) {
        let mut c = self.lock();
        if c.connected {
            metrics::broker_connection(false);
        }
        c.connected = false;
        // Under the lock that `publish` sends under: requests that entered rumqttc's
        // channel after the failure are discarded too, and their waiters fail below,
        // so none of them may be written later in a new request's place.
        in_flight.discard();
        c.fail_all("the broker connection dropped");
    }
}

/// PUBACK reason codes (MQTT 5 §3.4.2.1) as publish outcomes.
fn classify(reason: PubAckReason) -> Result<(), PublishError> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::NotAuthorized => {
            Err(PublishError::Failed("the broker did not authorize our connection to publish (PUBACK 0x87)".into()))
        }
        PubAckReason::QuotaExceeded => {
            Err(PublishError::Throttled("the broker's quota is exceeded (PUBACK 0x97)".into()))
        }
        PubAckReason::TopicNameInvalid => {
            Err(PublishError::Rejected("the broker refused the topic name (PUBACK 0x90)".into()))
        }
        PubAckReason::PayloadFormatInvalid => {
            Err(PublishError::Rejected("the broker refused the payload format (PUBACK 0x99)".into()))
        }
        other => Err(PublishError::Failed(format!("the broker refused the publish: {other:?}").into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_carries_64_publishes_per_core_within_the_receive_maximum() {
        assert_eq!(pool_size(20, 2), 7, "mosquitto's 20: 128 in flight need 7 connections");
        assert_eq!(pool_size(32, 2), 4, "EMQX's 32");
        assert_eq!(pool_size(u16::MAX, 2), 2, "at least one connection per core");
        assert_eq!(pool_size(u16::MAX, 1), 1);
        assert_eq!(
            pool_size(u16::MAX, 4),
            4,
            "a broker allowing more than MAX_INFLIGHT: 256 / 128 = 2, one per core wins"
        );
        assert_eq!(pool_size(u16::MAX, 16), 16);
        assert_eq!(pool_size(1, 4), MAX_POOL, "never more than MAX_POOL");
        assert_eq!(pool_size(0, 2), MAX_POOL, "a Receive Maximum of 0 (a protocol error) is taken as 1");
    }

    fn settings(port: u16) -> BrokerSettings {
        BrokerSettings {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            credentials: Some(("user".into(), "secret".into())),
            client_id: "mhp".into(),
            max_payload_bytes: 1024 * 1024,
            connections: None,
        }
    }

    #[tokio::test]
    async fn the_pool_s_connections_and_the_reply_connection_share_credentials_and_set_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = settings(listener.local_addr().unwrap().port());
        let pool = connection_options(&settings, 3);
        let login = |options: &MqttOptions| options.credentials().map(|l| (l.username, l.password));
        let expected = Some(("user".to_owned(), "secret".to_owned()));
        assert_eq!((pool.client_id(), login(&pool)), ("mhp-3".to_owned(), expected.clone()));
        assert_eq!((pool.keep_alive(), pool.clean_start()), (session::KEEP_ALIVE, true));
        assert!(crate::session::tests::client_socket_nodelay(pool, &listener).await, "a pool connection");
        let replies = replies_connect(&settings)().await.unwrap();
        assert_eq!((replies.client_id(), login(&replies)), ("mhp-replies".to_owned(), expected));
        assert_eq!(replies.max_packet_size(), Some(1024 * 1024 + 64 * 1024));
        assert!(crate::session::tests::client_socket_nodelay(replies, &listener).await, "the reply connection");
    }

    #[test]
    fn puback_reason_codes_map_to_outcomes() {
        assert_eq!(classify(PubAckReason::Success), Ok(()));
        assert_eq!(classify(PubAckReason::NoMatchingSubscribers), Ok(()));
        assert!(matches!(classify(PubAckReason::NotAuthorized), Err(PublishError::Failed(_))));
        assert!(matches!(classify(PubAckReason::QuotaExceeded), Err(PublishError::Throttled(_))));
        assert!(matches!(classify(PubAckReason::TopicNameInvalid), Err(PublishError::Rejected(_))));
        assert!(matches!(classify(PubAckReason::PayloadFormatInvalid), Err(PublishError::Rejected(_))));
        assert!(matches!(classify(PubAckReason::UnspecifiedError), Err(PublishError::Failed(_))));
    }
}
