//! What operators watch: the process's counters, gauges and histograms, which
//! `serve --admin-listen` exposes at `/metrics` (docs/serve.md lists them).
//!
//! One registry for the process, recorded into from wherever the event happens
//! (a request answered, a hash computed, a broker connection lost). Labels are
//! only ever from small closed sets (a status, an error code, a kind of refusal),
//! never a topic, a user or a client id: a label per topic would grow the
//! registry without bound. The Lambda records too (atomic adds, nothing read
//! them); its figures reach CloudWatch through its log lines instead.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    /// The error code of the answer's body, `ok` for a 200.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Why a request was refused before its publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance's quota (`[limits] messages_per_second`).
    Instance,
    /// A user's quota (`user_messages_per_second`).
    User,
    /// Too many slow password checks from the source address.
    PasswordChecks,
    /// `[limits] max_waiting` requests already wait for replies.
    Waiting,
}

/// Declares the process's metrics from one table: each one's field, type,
/// how it is made, and the name and help it is registered under.
macro_rules! metrics {
    ($($field:ident: $kind:ty = $make:expr, $name:literal, $help:literal;)*) => {
        struct Metrics {
            registry: Registry,
            $($field: $kind,)*
        }

        fn registered() -> Metrics {
            let mut registry = Registry::with_prefix("mqtt_http_publish");
            $(
                let $field: $kind = $make;
                registry.register($name, $help, $field.clone());
            )*
            Metrics { registry, $($field,)* }
        }
    };
}

metrics! {
    requests: Family<RequestLabels, Counter> = Family::default(), "requests", "Requests answered, by status and error code";
    messages_published: Counter = Counter::default(), "messages_published", "Messages the broker accepted (a batch counts each of its messages)";
    request_seconds: Histogram = latency(), "request_duration_seconds", "Time from a request's arrival to its answer";
    publish_seconds: Histogram = latency(), "publish_duration_seconds", "Time from a publish's start to the broker's acceptance (PUBACK at QoS 1)";
    publishes_in_flight: Gauge = Gauge::default(), "publishes_in_flight", "Publishes awaiting the broker";
    broker_connections: Gauge = Gauge::default(), "broker_connections", "Connections of the broker pool";
    broker_connections_up: Gauge = Gauge::default(), "broker_connections_up", "Connections of the broker pool that are up";
    broker_reconnects: Counter = Counter::default(), "broker_reconnects", "Broker connections lost and re-established";
    credential_cache_hits: Counter = Counter::default(), "credential_cache_hits", "Basic credentials verified from the cache";
    credential_cache_misses: Counter = Counter::default(), "credential_cache_misses", "Basic credentials not in the cache";
    password_hashes: Counter = Counter::default(), "password_hashes", "Slow password hashes computed";
    password_hash_seconds: Histogram = latency(), "password_hash_duration_seconds", "Time of one slow password hash";
    refusals: Family<KindLabels, Counter> = Family::default(), "refusals", "Requests refused with 429 before their publish, by kind: instance, user, password_checks";
    config_reloads: Family<KindLabels, Counter> = Family::default(), "config_reloads", "Config reloads, by result: ok, failed";
}

/// Latency buckets from 100 µs to ~3.3 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(registered);

/// A request answered with `status`; `code` is its error code, `None` for a 200.
pub fn request(status: u16, code: Option<&'static str>, elapsed: Duration) {
    let m = &*METRICS;
    m.requests.get_or_create(&RequestLabels { status, code: code.unwrap_or("ok") }).inc();
    m.request_seconds.observe(elapsed.as_secs_f64());
}

/// `count` messages of one request were published (the broker accepted them).
pub fn published(count: u64) {
    METRICS.messages_published.inc_by(count);
}

/// A request the connection layer answered itself (malformed HTTP, oversized
/// headers): counted, with no latency to observe (it never became a request).
pub fn refused_by_connection(status: u16, code: &'static str) {
    METRICS.requests.get_or_create(&RequestLabels { status, code }).inc();
}

/// A publish handed to the broker, until the guard is dropped (answered or abandoned).
pub fn publish_started() -> InFlight {
    METRICS.publishes_in_flight.inc();
    InFlight { started: std::time::Instant::now() }
}

/// One publish awaiting the broker; dropping it records its duration.
pub struct InFlight {
    started: std::time::Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.publishes_in_flight.dec();
        METRICS.publish_seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The broker pool has `n` connections.
pub fn broker_pool_size(n: usize) {
    METRICS.broker_connections.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// A broker connection came up (`true`) or went down (`false`).
pub fn broker_connection(up: bool) {
    if up {
        METRICS.broker_connections_up.inc();
    } else {
        METRICS.broker_connections_up.dec();
    }
}

/// A broker connection came back after it was lost.
pub fn broker_reconnect() {
    METRICS.broker_reconnects.inc();
}

/// Basic credentials found in the cache (`true`) or not.
pub fn credential_cache(hit: bool) {
    if hit {
        METRICS.credential_cache_hits.inc();
    } else {
        METRICS.credential_cache_misses.inc();
    }
}

/// A slow password hash took `elapsed`.
pub fn password_hash(elapsed: Duration) {
    METRICS.password_hashes.inc();
    METRICS.password_hash_seconds.observe(elapsed.as_secs_f64());
}

/// A request refused with 429 before its publish.
pub fn refused(why: Refusal) {
    let kind = match why {
        Refusal::Instance => "instance",
        Refusal::User => "user",
        Refusal::PasswordChecks => "password_checks",
        Refusal::Waiting => "waiting",
    };
    METRICS.refusals.get_or_create(&KindLabels { kind }).inc();
}

/// A config reload (SIGHUP) that took effect (`true`) or was refused.
pub fn config_reload(ok: bool) {
    METRICS.config_reloads.get_or_create(&KindLabels { kind: if ok { "ok" } else { "failed" } }).inc();
}

/// Everything, in the OpenMetrics text format Prometheus scrapes.
pub fn encode() -> String {
    let mut text = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &METRICS.registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_encode_with_their_labels() {
        request(413, Some("payload_too_large"), Duration::from_millis(2));
        refused(Refusal::PasswordChecks);
        let text = encode();
        assert!(text.contains(r#"mqtt_http_publish_requests_total{status="413",code="payload_too_large"} "#), "{text}");
        assert!(text.contains(r#"mqtt_http_publish_refusals_total{kind="password_checks"} "#), "{text}");
        assert!(text.contains("mqtt_http_publish_request_duration_seconds_bucket"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
