//! Any MQTT 5 broker, through one long-lived `rumqttc` connection that
//! pipelines publishes: a request waits for its own PUBACK (QoS 1) or its own
//! write (QoS 0), never for another request's.
//!
//! rumqttc reports each publish it writes as `Outgoing::Publish(pkid)`, in the
//! order requests entered its channel, and each PUBACK with that pkid. So a
//! request queues its waiter and sends its publish under one lock (the
//! channel's order is the queue's order); the event loop moves the front
//! waiter to the pkid it was written with, and the PUBACK resolves it.
//!
//! When the connection drops, every waiter fails (503) and whatever rumqttc
//! still holds for the broken session is dropped, so nothing sent before the
//! drop can later be mistaken for a newer request's publish. The connection is
//! re-established with backoff; meanwhile requests get 503 at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, Incoming, MqttOptions};
use rumqttc::{Outgoing, Transport};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Message, PublishError, Publisher};
use crate::contract::{BackendLimits, Qos, TopicLimits};

/// What any MQTT 5 broker accepts (MQTT 5 §1.5.4, §2.2.2: 65 535-byte names, 256 MB packets).
pub const MQTT_LIMITS: BackendLimits = BackendLimits {
    topic: TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false },
    max_payload_bytes: 256 * 1024 * 1024,
    max_qos: Qos::AtLeastOnce,
};

/// How long a request waits for its PUBACK before answering 503.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes queued towards the connection at most; beyond, 503.
const CHANNEL_CAPACITY: usize = 4096;
/// QoS 1 publishes awaiting their PUBACK at most (the broker's Receive Maximum,
/// when lower, wins: mosquitto announces 20, EMQX 32). rumqttc keeps a slot per
/// possible packet id up to this number: its default, 65 535, costs 13 MB of RSS
/// for slots no broker lets us fill.
const MAX_INFLIGHT: u16 = 1024;

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
    /// The MQTT client id of the connection.
    pub client_id: String,
    /// Largest payload the broker takes: a bigger one is 413 here, not a packet
    /// that makes the broker drop the connection every request shares.
    pub max_payload_bytes: usize,
}

type Waiter = oneshot::Sender<Result<(), PublishError>>;

/// Waiters by where their publish is.
#[derive(Default)]
struct Correlation {
    connected: bool,
    /// Sent into rumqttc's channel, not yet written: in channel order.
    queued: VecDeque<Waiter>,
    /// Written with QoS 1, waiting for the PUBACK of this pkid.
    inflight: HashMap<u16, Waiter>,
}

impl Correlation {
    fn fail_all(&mut self, reason: &str) {
        let error = || Err(PublishError::Unavailable(reason.to_owned()));
        for waiter in self.queued.drain(..) {
            let _ = waiter.send(error());
        }
        for (_, waiter) in self.inflight.drain() {
            let _ = waiter.send(error());
        }
    }
}

/// Publishes to an MQTT 5 broker over one pipelined connection.
#[derive(Clone)]
pub struct MqttPublisher {
    client: AsyncClient,
    correlation: Arc<Mutex<Correlation>>,
    /// [`MQTT_LIMITS`], with the broker's own payload limit.
    limits: BackendLimits,
}

impl MqttPublisher {
    /// Starts the connection task; returns at once (requests get 503 until connected).
    pub fn connect(settings: BrokerSettings) -> MqttPublisher {
        let limits = BackendLimits {
            max_payload_bytes: settings.max_payload_bytes.min(MQTT_LIMITS.max_payload_bytes),
            ..MQTT_LIMITS
        };
        let mut options = MqttOptions::new(settings.client_id, settings.host, settings.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_start(true);
        options.set_connection_timeout(5);
        options.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
        if let Some((user, password)) = settings.credentials {
            options.set_credentials(user, password);
        }
        if let Some(tls) = settings.tls {
            options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        }
        let (client, eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
        let correlation = Arc::new(Mutex::new(Correlation::default()));
        tokio::spawn(drive(eventloop, Arc::clone(&correlation)));
        MqttPublisher { client, correlation, limits }
    }
}

impl MqttPublisher {
    /// Waits until the first connection is up, or `patience` has passed; says which.
    /// `serve` waits before it listens, so the first request after the "serving"
    /// line does not meet a 503 only because the connection is a moment old.
    pub async fn wait_connected(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if self.correlation.lock().unwrap_or_else(|e| e.into_inner()).connected {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Publisher for MqttPublisher {
    fn limits(&self) -> BackendLimits {
        self.limits
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
        let (tx, rx) = oneshot::channel();
        {
            let mut correlation = self.correlation.lock().unwrap_or_else(|e| e.into_inner());
            if !correlation.connected {
                return Err(PublishError::Unavailable("not connected to the broker".into()));
            }
            self.client
                .try_publish_with_properties(message.topic.as_str(), qos, message.retain, message.payload, properties)
                .map_err(|e| PublishError::Unavailable(format!("the publish queue is full: {e}")))?;
            correlation.queued.push_back(tx);
        }
        match tokio::time::timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Unavailable("the connection task ended".into())),
            Err(_) => Err(PublishError::Unavailable("no PUBACK within the timeout".into())),
        }
    }
}

/// Runs the connection: resolves waiters from events, reconnects with backoff.
async fn drive(mut eventloop: EventLoop, correlation: Arc<Mutex<Correlation>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                let mut c = correlation.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Event::Incoming(Incoming::ConnAck(_)) => {
                        c.connected = true;
                        backoff = Duration::from_millis(100);
                        info!(broker = %eventloop.options.broker_address().0, "connected to the MQTT broker");
                    }
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
            Err(error) => {
                {
                    let mut c = correlation.lock().unwrap_or_else(|e| e.into_inner());
                    if c.connected {
                        warn!(%error, "lost the MQTT broker connection; reconnecting");
                    }
                    c.connected = false;
                    // Drop what rumqttc kept of the broken session, including requests that
                    // entered its channel after it failed: their waiters fail below, so none
                    // of them may be written later in a new request's place.
                    eventloop.clean();
                    eventloop.pending.clear();
                    c.fail_all("the broker connection dropped");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
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
        other => Err(PublishError::Failed(format!("the broker refused the publish: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
