//! One supervised MQTT 5 connection: the task that owns rumqttc's [`EventLoop`],
//! reconnects with backoff, drops whatever was in flight when the connection
//! goes, logs an outage's first failure and its recovery, and says through a
//! watch whether the connection is up. `serve`'s pool connections
//! (`publish::mqtt`) and the connection that waits for replies
//! ([`crate::replies`]) each run one; what the packets mean is their
//! [`Handler`]'s.
//!
//! **Sessions are numbered.** Each CONNACK starts a new [`Epoch`]. A caller that
//! finds the connection suspect asks for *its* epoch to be dropped
//! ([`Session::reconnect`]): many callers with one suspicion cost one reconnect,
//! and none drops the fresh connection another caller's request already made.
//!
//! **Nothing outlives its session.** Every connection starts clean. When one
//! goes, rumqttc's unsent requests, its retransmissions and its undelivered
//! events are discarded ([`InFlight`]), under the handler's own lock if it
//! wants, so nothing meant for a broken session is written to the next one in a
//! newer request's place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::ConnAck;
use rumqttc::v5::{Event, EventLoop, Incoming, MqttOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The keep-alive of every connection: rumqttc pings the broker this often,
/// busy or not, and the broker drops a client silent for 1.5 times as long.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a connection attempt (TCP, TLS, WebSocket and CONNACK) may take, in seconds.
const CONNECTION_TIMEOUT_SECS: u64 = 5;
/// The first pause after a failure; it doubles with each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The options every connection to a broker starts from: a clean start,
/// [`KEEP_ALIVE`], a 5 s connection timeout and TCP_NODELAY.
pub fn options(client_id: String, host: String, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_clean_start(true);
    options.set_connection_timeout(CONNECTION_TIMEOUT_SECS);
    // Small packets each way (a publish and its PUBACK, a SUBSCRIBE and its SUBACK):
    // Nagle's algorithm would hold one behind another's delayed ACK, 40 ms.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECTION_TIMEOUT_SECS);
    options.set_network_options(network);
    options
}

/// Which session of a connection: a new one with each CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

/// What a connection's log lines say, so each kind of connection keeps its own wording.
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    /// At each CONNACK.
    pub up: &'static str,
    /// When a connection that was up drops.
    pub lost: &'static str,
    /// At the first failure of an outage when the connection was not up; `None` logs nothing.
    pub cannot_connect: Option<&'static str>,
}

/// What one kind of connection does with its events; called by the supervisor, one call at a time.
pub trait Handler: Send + 'static {
    /// The connection's log lines.
    const LINES: Lines;

    /// The broker accepted the connection: session `epoch`, with nothing of the last one.
    fn on_connected(&mut self, epoch: Epoch, connack: &ConnAck);

    /// Any other event of the connection, incoming or outgoing.
    fn on_event(&mut self, event: Event);

    /// The connection is gone (it failed, or a drop was asked for), and with it
    /// everything in flight: `in_flight` discards what rumqttc still holds when
    /// the handler says so, or when it is dropped.
    fn on_lost(&mut self, in_flight: InFlight<'_>);
}

/// What rumqttc holds for a session that is gone: requests not yet written,
/// publishes awaiting acknowledgement, events not yet handed out. Discarded
/// once, by [`InFlight::discard`] or when dropped.
pub struct InFlight<'a> {
    eventloop: Option<&'a mut EventLoop>,
}

impl InFlight<'_> {
    /// Discards it all now: call it under the lock that keeps new requests out.
    pub fn discard(mut self) {
        self.discard_once();
    }

    fn discard_once(&mut self) {
        if let Some(eventloop) = self.eventloop.take() {
            // clean() drops the network and moves the session's unacknowledged packets
            // and the channel's unread requests into `pending`, for a resume we never do.
            eventloop.clean();
            eventloop.pending.clear();
            eventloop.state.events.clear();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.discard_once();
    }
}

/// A handle on a supervised connection; clones share it.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    /// The session that is up, if any.
    link: watch::Sender<Option<Epoch>>,
    /// The newest session a caller asked to drop.
    drop_asked: watch::Sender<Option<Epoch>>,
    /// When the broker last sent anything (a PINGRESP included): a live
    /// connection hears from it at least every keep-alive.
    last_heard: Mutex<Instant>,
    /// The keep-alive in force, in seconds: ours, or the broker's Server Keep
    /// Alive when its CONNACK names one (rumqttc adopts it); 0 for none.
    keep_alive: AtomicU64,
}

impl Session {
    /// Starts supervising `eventloop`'s connection with `handler`, for the
    /// process's life; returns at once.
    pub fn start<H: Handler>(eventloop: EventLoop, handler: H) -> Session {
        let shared = Arc::new(Shared {
            link: watch::channel(None).0,
            drop_asked: watch::channel(None).0,
            last_heard: Mutex::new(Instant::now()),
            keep_alive: AtomicU64::new(KEEP_ALIVE.as_secs()),
        });
        tokio::spawn(supervise(eventloop, handler, Arc::clone(&shared)));
        Session { shared }
    }

    /// Whether the connection is up now.
    pub fn is_up(&self) -> bool {
        self.shared.link.borrow().is_some()
    }

    /// The session that is up now, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        *self.shared.link.borrow()
    }

    /// Waits until a session newer than `newer_than` is up (any session for
    /// `None`), or `until` passes; returns it, or `None` at `until`.
    pub async fn wait_up(&self, newer_than: Option<Epoch>, until: Instant) -> Option<Epoch> {
        let mut link = self.shared.link.subscribe();
        // `None` orders before every session, so this holds only for a newer one that is up.
        let up = tokio::time::timeout_at(until, link.wait_for(|up| *up > newer_than)).await;
        match up {
            Ok(Ok(up)) => *up,
            _ => None,
        }
    }

    /// How long nothing has been heard from the broker.
    pub fn idle(&self) -> Duration {
        self.shared.last_heard.lock().elapsed()
    }

    /// The keep-alive in force on the latest session; `None` when the broker turned it off.
    pub fn keep_alive(&self) -> Option<Duration> {
        let seconds = self.shared.keep_alive.load(Ordering::Relaxed);
        (seconds > 0).then(|| Duration::from_secs(seconds))
    }

    /// Asks for session `epoch` to be dropped and a new one made at once: what
    /// was in flight on it fails. Whether this call was the first to ask (a
    /// later one, or one for a session already gone, changes nothing).
    pub fn reconnect(&self, epoch: Epoch) -> bool {
        let first = self.shared.drop_asked.send_if_modified(|asked| {
            let newer = *asked < Some(epoch);
            if newer {
                *asked = Some(epoch);
            }
            newer
        });
        first && self.epoch() == Some(epoch)
    }
}

impl Shared {
    fn heard(&self) {
        *self.last_heard.lock() = Instant::now();
    }
}

/// Runs the connection: hands events to `handler`, drops the session when it
/// fails or a caller asks, and reconnects (with backoff after a failure, at
/// once when asked).
async fn supervise<H: Handler>(mut eventloop: EventLoop, mut handler: H, shared: Arc<Shared>) {
    let mut backoff = FIRST_BACKOFF;
    let mut sessions = 0u64;
    let mut drop_asked = shared.drop_asked.subscribe();
    // Whether this outage was logged: its first failure is, and then nothing until it ends.
    let mut reported = false;
    loop {
        let current = *shared.link.borrow();
        let polled = match current {
            // A poll is cancelled only for a drop of this very session, whose
            // half-written packet goes with the network it was written to.
            Some(epoch) => tokio::select! {
                biased;
                _ = drop_asked.wait_for(|asked| *asked >= Some(epoch)) => None,
                polled = eventloop.poll() => Some(polled),
            },
            None => Some(eventloop.poll().await),
        };
        match polled {
            Some(Ok(Event::Incoming(Incoming::ConnAck(connack)))) => {
                shared.heard();
                shared.keep_alive.store(eventloop.options.keep_alive().as_secs(), Ordering::Relaxed);
                sessions += 1;
                handler.on_connected(Epoch(sessions), &connack);
                shared.link.send_replace(Some(Epoch(sessions)));
                backoff = FIRST_BACKOFF;
                reported = false;
                info!(
                    broker = %eventloop.options.broker_address().0,
                    client_id = %eventloop.options.client_id(),
                    "{}", H::LINES.up
                );
            }
            Some(Ok(event)) => {
                if matches!(event, Event::Incoming(_)) {
                    shared.heard();
                }
                handler.on_event(event);
            }
            Some(Err(error)) => {
                let client_id = eventloop.options.client_id();
                if current.is_some() {
                    warn!(%error, %client_id, "{}", H::LINES.lost);
                } else if let (false, Some(line)) = (reported, H::LINES.cannot_connect) {
                    warn!(%error, %client_id, "{line}");
                }
                reported = true;
                handler.on_lost(InFlight { eventloop: Some(&mut eventloop) });
                shared.link.send_replace(None);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            None => {
                handler.on_lost(InFlight { eventloop: Some(&mut eventloop) });
                shared.link.send_replace(None);
                // A failure of the new connection is this outage's first.
                reported = false;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The supervisor against a broker of the test's own on loopback: it reads
    //! each CONNECT, answers CONNACK, and then does only what the test says.

    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::AsyncClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// CONNACK, MQTT 5: session not present, success, no properties.
    const CONNACK: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];
    /// The same with Session Present: rumqttc would resend what it kept for the session.
    const CONNACK_SESSION_PRESENT: [u8; 5] = [0x20, 0x03, 0x01, 0x00, 0x00];
    /// A QoS 0 PUBLISH of `x` on `t`, no properties.
    const PUBLISH: [u8; 7] = [0x30, 0x05, 0x00, 0x01, b't', 0x00, b'x'];

    /// Connects with `options` to `listener`; whether the client's socket has TCP_NODELAY.
    pub(crate) async fn client_socket_nodelay(options: MqttOptions, listener: &TcpListener) -> bool {
        let (_client, mut eventloop) = AsyncClient::new(options, 1);
        let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let (_server, client) = listener.accept().await.unwrap();
        let nodelay = nodelay_of_local_port(client.port()).expect("the client's socket is this process's");
        task.abort();
        nodelay
    }

    /// Whether this process's IPv4 TCP socket bound to local `port` has TCP_NODELAY:
    /// rumqttc's options cannot say, the socket can, and only libc can ask it.
    #[allow(unsafe_code, reason = "getsockname and getsockopt on this process's descriptors, in a test")]
    fn nodelay_of_local_port(port: u16) -> Option<bool> {
        (0..4096).find_map(|fd| {
            let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: `address` and `length` describe a sockaddr_in the call may fill; a
            // descriptor that is not a socket only makes it fail.
            let named = unsafe { libc::getsockname(fd, (&raw mut address).cast(), &mut length) } == 0;
            if !named || i32::from(address.sin_family) != libc::AF_INET || u16::from_be(address.sin_port) != port {
                return None;
            }
            let mut value: libc::c_int = 0;
            let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `value` and `length` describe the c_int TCP_NODELAY is read into.
            let read = unsafe {
                libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut value).cast(), &mut length)
            };
            (read == 0).then_some(value != 0)
        })
    }

    /// What the handler was told, in order.
    #[derive(Debug, PartialEq)]
    enum Call {
        Connected(Epoch),
        Event(Box<Event>),
        Lost,
    }

    struct Recorder(mpsc::UnboundedSender<Call>);

    impl Handler for Recorder {
        const LINES: Lines = Lines { up: "up", lost: "lost", cannot_connect: Some("cannot connect") };

        fn on_connected(&mut self, epoch: Epoch, _: &ConnAck) {
            let _ = self.0.send(Call::Connected(epoch));
        }

        fn on_event(&mut self, event: Event) {
            let _ = self.0.send(Call::Event(Box::new(event)));
        }

        fn on_lost(&mut self, in_flight: InFlight<'_>) {
            in_flight.discard();
            let _ = self.0.send(Call::Lost);
        }
    }

    /// Reads one MQTT packet: its fixed header's first byte and the rest.
    async fn read_packet(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let kind = stream.read_u8().await?;
        let (mut length, mut shift) = (0usize, 0);
        loop {
            let byte = stream.read_u8().await?;
            length |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let mut rest = vec![0; length];
        stream.read_exact(&mut rest).await?;
        Ok((kind, rest))
    }

    /// A broker that accepts every connection with a CONNACK and hands it to the test.
    async fn broker() -> (u16, mpsc::UnboundedReceiver<TcpStream>) {
        broker_answering(CONNACK).await
    }

    /// [`broker`], answering each CONNECT with `connack`.
    async fn broker_answering(connack: [u8; 5]) -> (u16, mpsc::UnboundedReceiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (kind, _) = read_packet(&mut stream).await.unwrap();
                assert_eq!(kind >> 4, 1, "a CONNECT first");
                stream.write_all(&connack).await.unwrap();
                let _ = tx.send(stream);
            }
        });
        (port, rx)
    }

    fn start(port: u16) -> (AsyncClient, Session, mpsc::UnboundedReceiver<Call>) {
        let (client, eventloop) = AsyncClient::new(options("session-test".into(), "127.0.0.1".into(), port), 16);
        let (tx, calls) = mpsc::unbounded_channel();
        (client, Session::start(eventloop, Recorder(tx)), calls)
    }

    /// A session up on a broker of the test's own, its first session's `Connected` call seen.
    async fn connected() -> (AsyncClient, Session, mpsc::UnboundedReceiver<Call>, Accepted, Epoch) {
        let (port, accepted) = broker().await;
        let (client, session, mut calls) = start(port);
        let epoch = session.wait_up(None, soon()).await.expect("up");
        assert_eq!(next_call(&mut calls).await, Call::Connected(epoch));
        (client, session, calls, accepted, epoch)
    }

    /// The connections a test broker accepted.
    type Accepted = mpsc::UnboundedReceiver<TcpStream>;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// The next call that is not an outgoing event (pings and writes are not the test's).
    async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), calls.recv()).await.unwrap().unwrap() {
                Call::Event(event) if matches!(*event, Event::Outgoing(_)) => {}
                call => return call,
            }
        }
    }

    #[tokio::test]
    async fn every_connection_sets_tcp_nodelay_a_clean_start_and_the_keep_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let built = options("id".into(), "127.0.0.1".into(), listener.local_addr().unwrap().port());
        assert_eq!((built.keep_alive(), built.clean_start()), (KEEP_ALIVE, true));
        assert_eq!(built.connection_timeout(), CONNECTION_TIMEOUT_SECS);
        assert!(client_socket_nodelay(built, &listener).await);
    }

    #[tokio::test]
    async fn a_session_is_up_after_its_connack_and_numbered() {
        let (_client, session, _calls, mut accepted, epoch) = connected().await;
        assert!(session.is_up());
        assert_eq!(session.epoch(), Some(epoch));
        let _server = accepted.recv().await.unwrap();
        assert_eq!(session.wait_up(Some(epoch), Instant::now() + Duration::from_millis(200)).await, None);
    }

    #[tokio::test]
    async fn a_connection_the_broker_closes_is_lost_then_made_anew() {
        let (_client, session, mut calls, mut accepted, first) = connected().await;
        drop(accepted.recv().await.unwrap());
        assert_eq!(next_call(&mut calls).await, Call::Lost);
        let second = session.wait_up(Some(first), soon()).await.expect("up again");
        assert!(second > first);
        assert_eq!(next_call(&mut calls).await, Call::Connected(second));
    }

    #[tokio::test]
    async fn a_reconnect_asked_for_drops_that_session_once_and_at_once() {
        // GIVEN a session up on a connection that has gone silent (a dead link)
        let (port, mut accepted) = broker().await;
        let (_client, session, mut calls) = start(port);
        let first = session.wait_up(None, soon()).await.expect("up");
        let mut old = accepted.recv().await.unwrap();
        // WHEN two callers ask for it to be dropped
        assert!(session.reconnect(first), "the first to ask");
        assert!(!session.reconnect(first), "asked already");
        // THEN its socket is closed, the handler told, and a new session is up
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(_))), "the old socket was closed: {closed:?}");
        assert_eq!(next_call(&mut calls).await, Call::Connected(first));
        assert_eq!(next_call(&mut calls).await, Call::Lost);
        let second = session.wait_up(Some(first), soon()).await.expect("made anew");
        assert_eq!(next_call(&mut calls).await, Call::Connected(second));
        // AND a late request for the old session leaves the new one alone
        assert!(!session.reconnect(first));
        let mut new = accepted.recv().await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), new.read(&mut byte)).await;
        assert!(read.is_err(), "the new connection stays open: {read:?}");
        assert_eq!(session.epoch(), Some(second));
    }

    #[tokio::test]
    async fn nothing_in_flight_on_a_dropped_session_is_written_to_the_next() {
        // GIVEN a QoS 1 publish written on a session whose broker never acknowledges it,
        // and says the session is present when the client comes back
        let (port, mut accepted) = broker_answering(CONNACK_SESSION_PRESENT).await;
        let (client, session, _calls) = start(port);
        let first = session.wait_up(None, soon()).await.expect("up");
        let mut old = accepted.recv().await.unwrap();
        client.publish("t", QoS::AtLeastOnce, false, "old").await.unwrap();
        let (kind, _) = read_packet(&mut old).await.unwrap();
        assert_eq!(kind >> 4, 3, "the PUBLISH was written");
        // WHEN the session is dropped and made anew
        session.reconnect(first);
        session.wait_up(Some(first), soon()).await.expect("made anew");
        let mut new = accepted.recv().await.unwrap();
        // THEN the new connection gets only what is sent after it is up
        client.publish("t", QoS::AtMostOnce, false, "new").await.unwrap();
        let (kind, rest) = read_packet(&mut new).await.unwrap();
        assert_eq!((kind >> 4, rest.ends_with(b"new")), (3, true), "not the old publish: {rest:?}");
    }

    #[tokio::test]
    async fn idle_counts_from_the_last_packet_heard() {
        let (port, mut accepted) = broker().await;
        let (_client, session, mut calls) = start(port);
        session.wait_up(None, soon()).await.expect("up");
        let mut server = accepted.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(session.idle() >= Duration::from_millis(300), "{:?}", session.idle());
        server.write_all(&PUBLISH).await.unwrap();
        loop {
            if let Call::Event(event) = next_call(&mut calls).await {
                if let Event::Incoming(Incoming::Publish(_)) = *event {
                    break;
                }
            }
        }
        assert!(session.idle() < Duration::from_millis(300), "{:?}", session.idle());
    }
}
