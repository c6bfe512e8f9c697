//! The connection that waits for replies against Debian's mosquitto (started
//! here on a free loopback port) through a relay of the test's own that can
//! freeze its connections: a frozen one forwards nothing more and stays open,
//! which is what a connection the broker dropped while the process was frozen
//! (a Lambda container between invocations) looks like from the client.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{free_port, Proc};
use mqtt_http_publish::replies::{self, Connect, Replies, WaitError};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Debian's mosquitto on a free loopback port, anonymous, no persistence.
async fn mosquitto(name: &str) -> (Proc, u16) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mhp-reply-connection-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (scripts/test installs it)");
    // Killed when dropped, the panic below included.
    let child = Proc(child);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("mosquitto did not listen on {port}");
}

/// A loopback relay to `upstream` whose connections so far can be frozen;
/// those it accepts later relay as usual.
struct Relay {
    port: u16,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections numbered below this forward nothing more.
    frozen_below: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, frozen_below) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, frozen) = (Arc::clone(&accepted), Arc::clone(&frozen_below));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let index = count.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, index, Arc::clone(&frozen)));
                tokio::spawn(pump(server_read, client_write, index, Arc::clone(&frozen)));
            }
        });
        Relay { port, accepted, frozen_below }
    }

    /// Freezes every connection accepted so far.
    fn freeze(&self) {
        self.frozen_below.store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until `from` ends; once connection `index` is frozen,
/// drops what it reads and keeps both ends open.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    index: usize,
    frozen_below: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buffer).await.unwrap_or(0);
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if index < frozen_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The reply connection through `relay`, as `serve` builds it.
fn connect_through(relay: &Relay, client_id: &str) -> Connect {
    let (port, client_id) = (relay.port, client_id.to_owned());
    Box::new(move || {
        let options = replies::options(client_id.clone(), "127.0.0.1".into(), port, 1024 * 1024);
        Box::pin(async move { Ok(options) })
    })
}

/// A device answering on `topic` with `correlation`, straight to mosquitto.
async fn reply(broker: u16, topic: &str, correlation: &[u8], payload: &str) {
    let (device, mut eventloop) = AsyncClient::new(MqttOptions::new("device", "127.0.0.1", broker), 8);
    let properties =
        PublishProperties { correlation_data: Some(Bytes::copy_from_slice(correlation)), ..Default::default() };
    device.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_owned(), properties).await.unwrap();
    let acknowledged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    });
    acknowledged.await.expect("mosquitto acknowledges the reply");
}

/// `reply`'s payload, as the wait on `topic` received it.
async fn received(waiting: &mut replies::Waiting) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), waiting.reply()).await.expect("a reply in time").unwrap().payload
}

#[tokio::test]
async fn after_a_silence_longer_than_the_idle_limit_a_wait_reconnects_first_and_gets_its_reply() {
    // GIVEN the reply connection up through the relay, used twice within the idle limit
    let (_mosquitto, broker) = mosquitto("idle").await;
    let relay = Relay::start(broker).await;
    let suback_timeout = Duration::from_secs(3);
    let replies = Replies::new(connect_through(&relay, "mhp-idle-replies"))
        .with_idle_limit(Duration::from_millis(1000))
        .with_suback_timeout(suback_timeout);
    drop(replies.wait_for("replies/idle/1", Bytes::from_static(b"one")).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(replies.wait_for("replies/idle/2", Bytes::from_static(b"two")).await.unwrap());
    assert_eq!(relay.connections(), 1, "a connection heard from within the limit is kept");

    // WHEN the broker's side goes silent without closing, for longer than the idle limit
    relay.freeze();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let started = Instant::now();
    let mut waiting = replies.wait_for("replies/idle/3", Bytes::from_static(b"three")).await.unwrap();

    // THEN the wait made a new connection before subscribing, and met no SUBACK timeout
    assert_eq!(relay.connections(), 2);
    assert!(started.elapsed() < suback_timeout, "subscribed in {:?}", started.elapsed());
    // AND the device's reply arrives on it
    reply(broker, "replies/idle/3", b"three", "lamp is off").await;
    assert_eq!(received(&mut waiting).await, "lamp is off");
}

#[tokio::test]
async fn a_subscription_not_confirmed_in_time_is_tried_once_more_on_a_new_connection() {
    // GIVEN the reply connection up through the relay, and a deadline that leaves time
    let (_mosquitto, broker) = mosquitto("retry").await;
    let relay = Relay::start(broker).await;
    let suback_timeout = Duration::from_millis(800);
    let replies = Replies::new(connect_through(&relay, "mhp-retry-replies")).with_suback_timeout(suback_timeout);
    drop(replies.wait_for("replies/retry/1", Bytes::from_static(b"one")).await.unwrap());

    // WHEN the connection goes silent just before the next subscription
    relay.freeze();
    let started = Instant::now();
    let answer_by = started + Duration::from_secs(10);
    let mut waiting =
        replies.wait_for_by("replies/retry/2", Bytes::from_static(b"two"), Some(answer_by)).await.unwrap();

    // THEN the first SUBACK wait timed out, and the second, on a new connection, was answered
    let took = started.elapsed();
    assert!(took >= suback_timeout && took < suback_timeout * 4, "subscribed in {took:?}");
    assert_eq!(relay.connections(), 2);
    reply(broker, "replies/retry/2", b"two", "done").await;
    assert_eq!(received(&mut waiting).await, "done");
}

#[tokio::test]
async fn without_time_for_a_second_suback_wait_a_timeout_is_unavailable_and_nothing_is_retried() {
    // GIVEN the reply connection up through the relay, gone silent
    let (_mosquitto, broker) = mosquitto("no-time").await;
    let relay = Relay::start(broker).await;
    let suback_timeout = Duration::from_millis(800);
    let replies = Replies::new(connect_through(&relay, "mhp-no-time-replies")).with_suback_timeout(suback_timeout);
    drop(replies.wait_for("replies/no-time/1", Bytes::from_static(b"one")).await.unwrap());
    relay.freeze();

    // WHEN a wait's deadline leaves less than two SUBACK waits
    let started = Instant::now();
    let answer_by = started + suback_timeout + suback_timeout / 2;
    let outcome = replies.wait_for_by("replies/no-time/2", Bytes::from_static(b"two"), Some(answer_by)).await;

    // THEN it gives up after one, on the one connection
    assert!(matches!(outcome, Err(WaitError::Unavailable(_))), "{:?}", outcome.err());
    let took = started.elapsed();
    assert!(took >= suback_timeout && took < answer_by - started, "gave up after {took:?}");
    assert_eq!(relay.connections(), 1);
}

#[tokio::test]
async fn a_subscription_waits_no_later_than_the_deadline() {
    // GIVEN the reply connection up through the relay, gone silent
    let (_mosquitto, broker) = mosquitto("deadline").await;
    let relay = Relay::start(broker).await;
    let replies = Replies::new(connect_through(&relay, "mhp-deadline-replies"));
    drop(replies.wait_for("replies/deadline/1", Bytes::from_static(b"one")).await.unwrap());
    relay.freeze();

    // WHEN a wait's deadline comes before the SUBACK timeout (5 s)
    let started = Instant::now();
    let outcome = replies
        .wait_for_by("replies/deadline/2", Bytes::from_static(b"two"), Some(started + Duration::from_millis(500)))
        .await;

    // THEN it is unavailable at the deadline
    assert!(matches!(outcome, Err(WaitError::Unavailable(_))), "{:?}", outcome.err());
    assert!(started.elapsed() < Duration::from_secs(2), "gave up after {:?}", started.elapsed());
}
