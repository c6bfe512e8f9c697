//! Waiting for replies (`ResponseTimeout`): one MQTT 5 connection, opened on
//! first need, that subscribes to the response topics requests wait on and
//! hands each request the first message on its topic whose correlation data is
//! its own. The same code runs on both entry points; only the connection
//! differs: `serve` connects to its broker like its publishers do, the Lambda
//! function to AWS IoT over a SigV4-signed WebSocket ([`sigv4`]).
//!
//! **One subscription per topic.** Requests waiting on the same response topic
//! share its subscription, counted by the waiters it holds: the first subscribes
//! (and every joiner waits for that SUBACK), the last to leave unsubscribes. A
//! leaver's UNSUBSCRIBE and a newcomer's SUBSCRIBE on one connection are taken
//! by the broker in order, so the newcomer's SUBACK comes after the broker is
//! subscribed again; a SUBACK is credited only to the subscription that sent it.
//!
//! **Never a wrong reply.** A message is a reply only if it arrives on a topic
//! with waiters, is not a retained message (subscriptions ask for none), and
//! carries a waiter's correlation data byte for byte; anything else is dropped.
//! When the connection drops, every subscription is gone with it (a clean
//! start): each waiter gets [`WaitError::Lost`] at once, never a reply from a
//! later session.
//!
//! **A connection that died unnoticed.** A Lambda container is frozen between
//! invocations, and the broker drops a client it has not heard from for 1.5 ×
//! the keep-alive without the client knowing. So a wait first checks when the
//! broker was last heard from: after longer than a live connection is ever
//! silent, the connection is made anew before subscribing. A subscription that
//! is lost, or not confirmed in time, is tried once more on a new connection
//! when the request's deadline leaves room for it.

pub mod sigv4;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch, OnceCell};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cause::Cause;
use crate::session::{self, Epoch, Handler, InFlight, Lines, Session};

/// How long a waiter waits for the connection to come up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a waiter waits for its subscription's SUBACK, by default.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Silent for longer than the keep-alive in force and this, the connection is made anew
/// before a subscription. A live connection hears a PINGRESP every keep-alive plus a
/// round trip; a broker drops a client silent for 1.5 × keep-alive: longer silence
/// means a frozen process (a Lambda container thawed) and a connection already dropped.
const IDLE_MARGIN: Duration = Duration::from_secs(5);
/// Subscribes and unsubscribes queued towards the connection at most.
const CHANNEL_CAPACITY: usize = 4096;

/// A reply, as the device sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The payload, byte for byte.
    pub payload: Bytes,
    /// Its MQTT 5 Content Type, if any.
    pub content_type: Option<String>,
    /// Its user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Its Payload Format Indicator, if set.
    pub payload_format_indicator: Option<u8>,
}

/// Why no reply can be waited for, or none came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// Not connected, the connection dropped, or no SUBACK in time: no reply
    /// can arrive on this connection for now.
    #[error("the connection that waits for replies is unavailable")]
    Unavailable(#[source] Cause),
    /// The connection dropped while the request waited: its subscription is gone.
    #[error("the connection that waits for replies dropped")]
    Lost,
    /// The broker refused the subscription (our own permissions: a server fault).
    #[error("the broker refused the subscription")]
    Refused(#[source] Cause),
}

/// Why the connection's options cannot be built: where to connect is not
/// known, or could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Looking up where to connect failed.
    #[error("cannot look up {what}")]
    Lookup {
        /// What was looked up.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Said in words: nothing to connect to, or a cause already made text.
    #[error("{0}")]
    Other(String),
}

impl ConnectError {
    /// Looking up `what` failed with `source`.
    pub fn lookup(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ConnectError {
        ConnectError::Lookup { what: what.into(), source: source.into() }
    }
}

impl From<String> for ConnectError {
    fn from(reason: String) -> ConnectError {
        ConnectError::Other(reason)
    }
}

impl From<&str> for ConnectError {
    fn from(reason: &str) -> ConnectError {
        ConnectError::Other(reason.to_owned())
    }
}

/// Builds the connection's options when it is opened for the first time:
/// may look up an endpoint first.
pub type Connect =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<MqttOptions, ConnectError>> + Send>> + Send + Sync>;

/// The connection that waits for replies, shared by every request of a process.
pub struct Replies {
    inner: Arc<Inner>,
    /// How long a subscription waits for its SUBACK before it is tried again.
    suback_timeout: Duration,
    /// How long the connection may have been silent before a subscription;
    /// `None`: the session's keep-alive and [`IDLE_MARGIN`].
    idle_limit: Option<Duration>,
}

struct Inner {
    /// The connection's options, built on first need.
    connect: Connect,
    /// The connection, once its session runs.
    link: OnceCell<Link>,
    state: Mutex<State>,
}

/// The connection: its client, and the session that supervises it.
struct Link {
    client: AsyncClient,
    session: Session,
}

/// Subscriptions and their waiters.
#[derive(Default)]
struct State {
    /// The session that is up, if any: what a subscription is made on.
    session: Option<Epoch>,
    topics: HashMap<String, Subscription>,
    /// Subscribes handed to rumqttc, not yet written: (topic, token), in channel order.
    queued: VecDeque<(String, u64)>,
    /// Written subscribes awaiting their SUBACK, in the order written: (packet id,
    /// topic, token). Packet ids repeat: rumqttc counts them up to the broker's
    /// Receive Maximum (mosquitto: 20) and starts again, without holding back a
    /// SUBSCRIBE whose id is still awaiting its SUBACK. A broker answers a
    /// connection's SUBSCRIBEs in order, so a SUBACK is the oldest's with its id.
    subacks: VecDeque<(u16, String, u64)>,
    /// The next waiter id and subscription token: unique for the process's life.
    next_id: u64,
}

/// One response topic's subscription.
struct Subscription {
    /// Which SUBSCRIBE this subscription sent: only its SUBACK counts.
    token: u64,
    ready: watch::Sender<Ready>,
    waiters: Vec<Waiter>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ready {
    Pending,
    Active,
    Failed(WaitError),
}

struct Waiter {
    id: u64,
    correlation: Bytes,
    reply: oneshot::Sender<Result<Reply, WaitError>>,
}

/// One request's wait: its reply arrives through [`Waiting::reply`]; dropping it
/// leaves the subscription (unsubscribing it if it was the last waiter).
pub struct Waiting {
    inner: Arc<Inner>,
    topic: String,
    id: u64,
    reply: oneshot::Receiver<Result<Reply, WaitError>>,
    /// What [`Waiting::is_lost`] took from the channel, for [`Waiting::reply`].
    taken: Option<Result<Reply, WaitError>>,
}

impl Waiting {
    /// The reply, once it arrives, or why none will.
    pub async fn reply(&mut self) -> Result<Reply, WaitError> {
        if let Some(taken) = self.taken.take() {
            return taken;
        }
        (&mut self.reply).await.unwrap_or(Err(WaitError::Lost))
    }
}

impl Waiting {
    /// Whether the subscription is already gone with its connection: a command
    /// published now could not be answered.
    pub fn is_lost(&mut self) -> bool {
        if self.taken.is_none() {
            match self.reply.try_recv() {
                Ok(result) => self.taken = Some(result),
                Err(oneshot::error::TryRecvError::Closed) => self.taken = Some(Err(WaitError::Lost)),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        matches!(self.taken, Some(Err(_)))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(Link { client, .. }) = self.inner.link.get() else { return };
        let mut state = self.inner.lock();
        if let Some(subscription) = state.topics.get_mut(&self.topic) {
            let before = subscription.waiters.len();
            subscription.waiters.retain(|w| w.id != self.id);
            if before != subscription.waiters.len() && subscription.waiters.is_empty() {
                state.topics.remove(&self.topic);
                unsubscribe(client, &self.topic);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

impl Replies {
    /// Replies over the connection `connect` describes, opened on first need
    /// and re-opened (with backoff) whenever it drops.
    pub fn new(connect: Connect) -> Replies {
        let inner = Inner { connect, link: OnceCell::new(), state: Mutex::new(State::default()) };
        Replies { inner: Arc::new(inner), suback_timeout: SUBACK_TIMEOUT, idle_limit: None }
    }

    /// The same, with a SUBACK awaited for `timeout` (5 s by default) before
    /// the subscription is tried once more on a new connection.
    pub fn with_suback_timeout(mut self, timeout: Duration) -> Replies {
        self.suback_timeout = timeout;
        self
    }

    /// The same, with the connection made anew before a subscription when the
    /// broker has been silent for longer than `limit` (by default the
    /// keep-alive in force plus 5 s: 35 s unless the broker asks for another).
    pub fn with_idle_limit(mut self, limit: Duration) -> Replies {
        self.idle_limit = Some(limit);
        self
    }

    /// [`Replies::wait_for_by`] with no deadline.
    pub async fn wait_for(&self, topic: &str, correlation: Bytes) -> Result<Waiting, WaitError> {
        self.wait_for_by(topic, correlation, None).await
    }

    /// Subscribes to `topic` (or joins its subscription) and returns once the
    /// broker confirmed it: a reply published from then on reaches the wait.
    /// Waits no later than `answer_by`. A connection silent for too long is
    /// made anew first; a subscription lost with its connection, or not
    /// confirmed in time, is tried once more on a new one if `answer_by` leaves
    /// time for another full SUBACK wait.
    pub async fn wait_for_by(
        &self,
        topic: &str,
        correlation: Bytes,
        answer_by: Option<Instant>,
    ) -> Result<Waiting, WaitError> {
        let link = self.link().await?;
        // The session the last attempt found wanting: the next one waits for a newer.
        let mut stale = None;
        let mut refreshed = false;
        let mut retried = false;
        loop {
            let until = within(CONNECT_TIMEOUT, answer_by);
            let Some(epoch) = link.session.wait_up(stale, until).await else {
                return Err(WaitError::Unavailable("not connected to the broker".into()));
            };
            let idle = link.session.idle();
            let limit = self.idle_limit.or_else(|| link.session.keep_alive().map(|k| k + IDLE_MARGIN));
            if !refreshed && limit.is_some_and(|limit| idle > limit) {
                if link.session.reconnect(epoch) {
                    info!(?idle, "the broker was silent for longer than a live connection ever is: making the connection that waits for replies anew before subscribing");
                }
                (stale, refreshed) = (Some(epoch), true);
                continue;
            }
            let (waiting, mut ready, joined) = self.join(&link.client, topic, correlation.clone())?;
            let confirmed = tokio::time::timeout_at(
                within(self.suback_timeout, answer_by),
                ready.wait_for(|r| *r != Ready::Pending),
            )
            .await
            .map(|ready| ready.map(|ready| ready.clone()));
            let timed_out = match confirmed {
                Ok(Ok(Ready::Active)) => return Ok(waiting),
                Ok(Ok(Ready::Failed(WaitError::Lost)) | Err(_)) => false,
                Ok(Ok(Ready::Failed(error))) => return Err(error),
                Ok(Ok(Ready::Pending)) => unreachable!("waited until it was not pending"),
                Err(_) => true,
            };
            drop(waiting);
            let time_left = answer_by.map_or(Duration::MAX, |by| by.saturating_duration_since(Instant::now()));
            if retried || time_left < self.suback_timeout {
                return Err(WaitError::Unavailable(
                    if timed_out {
                        "the broker did not confirm the subscription"
                    } else {
                        "the connection dropped while subscribing"
                    }
                    .into(),
                ));
            }
            if timed_out && link.session.reconnect(joined) {
                warn!(timeout = ?self.suback_timeout, "no SUBACK in time: making the connection that waits for replies anew and subscribing once more");
            }
            (stale, retried) = (Some(joined), true);
        }
    }

    /// The connection, its session started on first need.
    async fn link(&self) -> Result<&Link, WaitError> {
        self.inner
            .link
            .get_or_try_init(|| async {
                let options =
                    (self.inner.connect)().await.map_err(|error| WaitError::Unavailable(Cause::new(error)))?;
                let (client, eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
                let handler = ReplyHandler { inner: Arc::clone(&self.inner), client: client.clone() };
                Ok(Link { client, session: Session::start(eventloop, handler) })
            })
            .await
    }

    /// Adds a waiter to `topic`'s subscription, subscribing if it has none;
    /// says which session the subscription is on.
    fn join(
        &self,
        client: &AsyncClient,
        topic: &str,
        correlation: Bytes,
    ) -> Result<(Waiting, watch::Receiver<Ready>, Epoch), WaitError> {
        let mut state = self.inner.lock();
        let Some(epoch) = state.session else {
            return Err(WaitError::Unavailable("not connected to the broker".into()));
        };
        let id = state.next_id;
        state.next_id += 1;
        if !state.topics.contains_key(topic) {
            // Retained messages are never replies: a stale one must not answer.
            let filter = Filter {
                path: topic.to_owned(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            };
            client
                .try_subscribe_many([filter])
                .map_err(|e| WaitError::Unavailable(format!("the subscription queue is full: {e}").into()))?;
            state.queued.push_back((topic.to_owned(), id));
            let (ready, _) = watch::channel(Ready::Pending);
            state.topics.insert(topic.to_owned(), Subscription { token: id, ready, waiters: Vec::new() });
        }
        let subscription = state.topics.get_mut(topic).expect("inserted above");
        let (tx, rx) = oneshot::channel();
        subscription.waiters.push(Waiter { id, correlation, reply: tx });
        let ready = subscription.ready.subscribe();
        let waiting = Waiting { inner: Arc::clone(&self.inner), topic: topic.to_owned(), id, reply: rx, taken: None };
        Ok((waiting, ready, epoch))
    }
}

/// `after` from now, but no later than `answer_by`.
fn within(after: Duration, answer_by: Option<Instant>) -> Instant {
    let at = Instant::now() + after;
    answer_by.map_or(at, |by| at.min(by))
}

/// The connection's side of its session: credits SUBACKs, routes replies,
/// fails every wait when the session goes.
struct ReplyHandler {
    inner: Arc<Inner>,
    client: AsyncClient,
}

impl Handler for ReplyHandler {
    const LINES: Lines = Lines {
        up: "the connection that waits for replies is up",
        lost: "lost the connection that waits for replies; reconnecting",
        cannot_connect: Some("cannot connect to wait for replies; retrying"),
    };

    fn on_connected(&mut self, epoch: Epoch, _: &ConnAck) {
        self.inner.lock().session = Some(epoch);
    }

    fn on_event(&mut self, event: Event) {
        let mut state = self.inner.lock();
        match event {
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some((topic, token)) = state.queued.pop_front() {
                    state.subacks.push_back((pkid, topic, token));
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                let oldest = state.subacks.iter().position(|(pkid, _, _)| *pkid == ack.pkid);
                if let Some((_, topic, token)) = oldest.and_then(|i| state.subacks.remove(i)) {
                    if let Some(subscription) = state.topics.get(&topic).filter(|s| s.token == token) {
                        subscription.ready.send_replace(match ack.return_codes.first() {
                            Some(SubscribeReasonCode::Success(_)) => Ready::Active,
                            other => Ready::Failed(WaitError::Refused(format!("SUBACK {other:?}").into())),
                        });
                    }
                }
            }
            Event::Incoming(Incoming::Publish(publish)) => route(&mut state, &self.client, publish),
            _ => {}
        }
    }

    fn on_lost(&mut self, in_flight: InFlight<'_>) {
        let mut state = self.inner.lock();
        state.session = None;
        // A clean start: the subscriptions are gone with the session,
        // and nothing queued for it may be written to the next one.
        in_flight.discard();
        state.queued.clear();
        state.subacks.clear();
        for (_, subscription) in state.topics.drain() {
            subscription.ready.send_replace(Ready::Failed(WaitError::Lost));
            for waiter in subscription.waiters {
                let _ = waiter.reply.send(Err(WaitError::Lost));
            }
        }
    }
}

/// Hands `publish` to the first waiter on its topic with its correlation data;
/// drops it if there is none, or if it is a retained message.
fn route(state: &mut State, client: &AsyncClient, publish: Publish) {
    if publish.retain {
        return;
    }
    let Ok(topic) = std::str::from_utf8(&publish.topic) else { return };
    let Some(subscription) = state.topics.get_mut(topic) else { return };
    let Some(properties) = publish.properties else { return };
    let Some(correlation) = properties.correlation_data.as_ref() else { return };
    let Some(index) = subscription.waiters.iter().position(|w| w.correlation == correlation) else { return };
    let waiter = subscription.waiters.remove(index);
    let _ = waiter.reply.send(Ok(Reply {
        payload: publish.payload,
        content_type: properties.content_type,
        user_properties: properties.user_properties,
        payload_format_indicator: properties.payload_format_indicator,
    }));
    if subscription.waiters.is_empty() {
        state.topics.remove(topic);
        unsubscribe(client, topic);
    }
}

/// Unsubscribes from a topic no request waits on any more. Refused (the
/// client's request queue is full), the broker keeps sending the topic's
/// messages until the connection is re-made; they match no waiter and are dropped.
fn unsubscribe(client: &AsyncClient, topic: &str) {
    if let Err(error) = client.try_unsubscribe(topic.to_owned()) {
        warn!(%error, "could not unsubscribe from a response topic; its messages are dropped until the reply connection is re-made");
    }
}

/// Options for a connection that waits for replies: [`session::options`] and a
/// Maximum Packet Size of `max_packet` so a broker drops (rather than sends)
/// anything larger, which would otherwise cost the connection.
pub fn options(client_id: String, broker: String, port: u16, max_packet: u32) -> MqttOptions {
    let mut options = session::options(client_id, broker, port);
    options.set_max_packet_size(Some(max_packet));
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_lookup_keeps_its_cause() {
        let error = ConnectError::lookup("the AWS IoT endpoint", std::io::Error::other("no route to DescribeEndpoint"));
        assert_eq!(
            crate::cause::Chain(&error).to_string(),
            "cannot look up the AWS IoT endpoint: no route to DescribeEndpoint"
        );
        let source = std::error::Error::source(&error).expect("the cause");
        assert!(source.downcast_ref::<std::io::Error>().is_some(), "{source:?}");
    }

    /// A [`Connect`] written as the Lambda's entry point writes one: reasons as
    /// `String`s through `?`, and `&str`s through `.into()`.
    fn connect_failing_with(lookup: Result<Option<String>, String>) -> Connect {
        Box::new(move || {
            let lookup = lookup.clone();
            Box::pin(async move {
                let host = match lookup? {
                    Some(host) => host,
                    None => return Err("the AWS IoT endpoint is not known".into()),
                };
                Ok(options("test".into(), host, 1883, 1024))
            })
        })
    }

    #[tokio::test]
    async fn a_connection_that_cannot_be_described_makes_the_wait_unavailable_with_the_reason() {
        for (lookup, reason) in [
            (Err("DescribeEndpoint failed".to_owned()), "DescribeEndpoint failed"),
            (Ok(None), "the AWS IoT endpoint is not known"),
        ] {
            let replies = Replies::new(connect_failing_with(lookup));
            let error = replies.wait_for("replies/x", Bytes::from_static(b"id")).await.err();
            assert_eq!(error, Some(WaitError::Unavailable(reason.into())));
        }
    }
}
