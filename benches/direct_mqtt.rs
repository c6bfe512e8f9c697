//! The ceiling for `serve`: a direct MQTT 5 client publishing the same message
//! (256 bytes, QoS 1) with 64 publishes in flight through the same broker.
//! Prints the rate of acknowledged publishes; asserts nothing. `load/run` starts
//! the broker and passes its address:
//!
//!     cargo bench --bench direct_mqtt -- 127.0.0.1:1883 10
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let address = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (host, port) = address.rsplit_once(':').expect("HOST:PORT");
    let port: u16 = port.parse().expect("a port");
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async move {
        let mut options = MqttOptions::new("direct-bench", host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_outgoing_inflight_upper_limit(64);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let payload = vec![b'x'; 256];
        let run = Duration::from_secs(seconds);
        let publisher = tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < run {
                client.publish("bench/direct", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
            }
        });
        let mut acked = 0u64;
        let mut started = None;
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Incoming::ConnAck(_)) => started = Some(Instant::now()),
                Event::Incoming(Incoming::PubAck(_)) => acked += 1,
                _ => {}
            }
            if started.is_some_and(|s| s.elapsed() >= run) {
                break;
            }
        }
        publisher.abort();
        let elapsed = started.map_or(run, |s| s.elapsed()).as_secs_f64();
        println!(
            "direct_mqtt: {:.0} acknowledged QoS 1 publishes/s ({acked} in {elapsed:.1} s, 64 in flight)",
            acked as f64 / elapsed
        );
    });
}
