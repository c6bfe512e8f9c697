//! The edge towards the message broker: what a publish carries, and how a
//! backend may fail. Adapters know no HTTP status; the service maps
//! [`PublishError`] to one.

pub mod iot;
#[cfg(feature = "serve")]
pub mod mqtt;

use std::future::Future;

use bytes::Bytes;

use crate::cause::Cause;
use crate::contract::{BackendLimits, Properties, Qos, Topic};

/// One message to publish, as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where.
    pub topic: Topic,
    /// At most the backend's `max_qos`.
    pub qos: Qos,
    /// Replace the topic's retained message.
    pub retain: bool,
    /// The payload, byte for byte.
    pub payload: Bytes,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// How a backend refused or failed a publish; each keeps the backend's own answer as its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The backend judged the request invalid (a caller mistake the contract missed).
    #[error("the backend rejected the request")]
    Rejected(#[source] Cause),
    /// The payload is over the backend's limit: `max_payload` bytes for this
    /// message when the backend says (the rest of its packet counts too).
    #[error("the backend refused the payload as too large")]
    TooLarge {
        /// The largest payload this message could carry, when known.
        max_payload: Option<usize>,
    },
    /// The backend throttled us.
    #[error("the backend throttled the publish")]
    Throttled(#[source] Cause),
    /// Unreachable, or said it is unavailable, before the message left: not
    /// delivered, worth a retry later.
    #[error("the backend is unavailable")]
    Unavailable(#[source] Cause),
    /// The message was sent but its outcome never came back (a timeout, a
    /// connection lost before the acknowledgement): it may have been delivered.
    #[error("the backend's answer never came")]
    Unknown(#[source] Cause),
    /// Anything else, our own permissions included: a server fault.
    #[error("the backend failed")]
    Failed(#[source] Cause),
}

/// A message broker we can publish to.
pub trait Publisher: Send + Sync + 'static {
    /// What the backend accepts; checked before any publish.
    fn limits(&self) -> BackendLimits;

    /// Publishes, returning only once the backend accepted the message.
    fn publish(&self, message: Message) -> impl Future<Output = Result<(), PublishError>> + Send;
}
