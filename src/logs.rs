//! Where log lines go: JSON lines on Lambda, plain text on stderr elsewhere,
//! and for `serve` through a thread of their own.
//!
//! `serve` writes a line per request. Written in place, that line costs its
//! request a `write(2)` under the stderr lock, which all worker threads contend
//! for: about a sixth of the throughput at 64 connections (BENCHMARKS.md). With
//! [`Output::Background`] a worker hands the formatted line to tracing-appender's
//! non-blocking writer and goes back to its requests; its thread writes the lines
//! to stderr through a buffer flushed each time it has emptied the queue, so a
//! burst of lines costs one write. The writer is lossless: lines keep their
//! order, and nothing is dropped; when the queue is full (stderr slower than the
//! requests), a worker waits, as it would on a blocking write.
//!
//! On Lambda the per-request line is also a CloudWatch Embedded Metric Format
//! document (`Emf`): CloudWatch Logs turns it into request counts and
//! latencies by status and error code, with no API call and no permission.

use std::fmt;
use std::io;
#[cfg(feature = "serve")]
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

#[cfg(feature = "serve")]
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// How log lines reach their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// JSON lines on stdout, written in place (Lambda: CloudWatch parses them, and
    /// an invocation's lines must be out before the next `next` call); the
    /// per-request line carries the request's metrics (CloudWatch Embedded Metric Format).
    LambdaJson,
    /// Plain text on stderr, written in place (the short-lived commands).
    Text,
    /// Plain text on stderr, written by a thread of its own (`serve`).
    #[cfg(feature = "serve")]
    Background,
}

/// Keeps the background writer running; dropping it writes what is left, so
/// it must live until the process is done logging (the end of `main`).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    /// The background writer's own guard, held for its `Drop`; none for output written in place.
    #[cfg(feature = "serve")]
    _background: Option<WorkerGuard>,
}

impl Guard {
    /// The guard of output written in place: nothing to flush.
    fn in_place() -> Guard {
        Guard {
            #[cfg(feature = "serve")]
            _background: None,
        }
    }
}

/// Installs the global subscriber. The level comes from `AWS_LAMBDA_LOG_LEVEL`
/// (Lambda's advanced logging controls) or `RUST_LOG`, else `info` with the
/// embedded broker's per-connection lines held back to warnings; `lambda_runtime`'s
/// own lines stop at `debug` whatever they say ([`runtime_cap`]).
pub fn init(output: Output) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info,rumqttd=warn".into());
    let cap = runtime_cap(Layer::<Registry>::max_level_hint(&filter).unwrap_or(LevelFilter::TRACE));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    use std::io::IsTerminal;
    let ansi = io::stderr().is_terminal();
    match output {
        Output::LambdaJson => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .with_target(false)
                .with_current_span(false)
                .with_span_list(true)
                .without_time();
            let namespace = metrics_namespace(std::env::var("METRICS_NAMESPACE").ok());
            builder.json().event_format(Emf { inner: json, namespace }).finish().with(cap).init();
            Guard::in_place()
        }
        Output::Text => {
            builder.with_writer(io::stderr).with_ansi(ansi).finish().with(cap).init();
            Guard::in_place()
        }
        #[cfg(feature = "serve")]
        Output::Background => {
            let (writer, guard) = background(io::stderr());
            builder.with_writer(writer).with_ansi(ansi).finish().with(cap).init();
            Guard { _background: Some(guard) }
        }
    }
}

/// `lambda_runtime`'s lines stop at `debug`: at `trace` it logs each event whole, a request's
/// Authorization header included. A filter beside the user's (`most`: the most it allows), so
/// that no directive of theirs lifts the cap.
fn runtime_cap(most: LevelFilter) -> Targets {
    Targets::new().with_default(most).with_target("lambda_runtime", most.min(LevelFilter::DEBUG))
}

/// The CloudWatch namespace of the request metrics, from `METRICS_NAMESPACE`:
/// unset, `mqtt-http-publish`; set but empty, no metrics.
fn metrics_namespace(variable: Option<String>) -> Option<String> {
    match variable {
        None => Some(DEFAULT_METRICS_NAMESPACE.to_owned()),
        Some(namespace) if namespace.is_empty() => None,
        Some(namespace) => Some(namespace),
    }
}

/// The request metrics' CloudWatch namespace when `METRICS_NAMESPACE` is unset.
pub const DEFAULT_METRICS_NAMESPACE: &str = "mqtt-http-publish";

/// The JSON formatter, with the per-request line made a CloudWatch Embedded
/// Metric Format document: its members added at the line's root, as
/// docs/aws.md ("Metrics") lists them. Every other line is unchanged.
struct Emf<F> {
    /// The JSON formatter that writes every line.
    inner: F,
    /// The metrics' namespace; `None` writes the request line without metrics.
    namespace: Option<String>,
}

impl<S, N, F> FormatEvent<S, N> for Emf<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut request = RequestFields::default();
        event.record(&mut request);
        let (Some(namespace), Some(status), Some(latency_us)) = (&self.namespace, request.status, request.latency_us)
        else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let Some(object) = line.trim_end().strip_suffix('}') else {
            return writer.write_str(&line);
        };
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let error = request.error.filter(|code| !code.is_empty());
        let dimensions = match error {
            None => serde_json::json!([["status"]]),
            Some(_) => serde_json::json!([["status"], ["error"]]),
        };
        let mut metrics = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": dimensions,
                    "Metrics": [
                        {"Name": "Requests", "Unit": "Count"},
                        {"Name": "Latency", "Unit": "Milliseconds"},
                        {"Name": "Messages", "Unit": "Count"},
                    ],
                }],
            },
            "status": status.to_string(),
            "Requests": 1,
            "Latency": latency_us as f64 / 1000.0,
            "Messages": request.published.unwrap_or(0),
        });
        if let Some(error) = error {
            metrics["error"] = error.into();
        }
        // `{...}` of the JSON formatter, then the members above, in one object.
        let members = metrics.to_string();
        writeln!(writer, "{object},{}", &members[1..])
    }
}

/// The request line's fields that EMF needs, read off the event.
#[derive(Default)]
struct RequestFields {
    /// The HTTP status: the `status` dimension.
    status: Option<u64>,
    /// The `Latency` metric, in microseconds.
    latency_us: Option<u64>,
    /// The error code, empty for a 200: the `error` dimension.
    error: Option<String>,
    /// The messages the request published: the `Messages` metric.
    published: Option<u64>,
}

impl Visit for RequestFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "status" => self.status = Some(value),
            "latency_us" => self.latency_us = Some(value),
            "published" => self.published = Some(value),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "error" {
            self.error = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// Lines queued for the writer thread beyond which a logging thread waits.
#[cfg(feature = "serve")]
const QUEUED_LINES_LIMIT: usize = 8192;

/// Bytes the writer thread gathers before a write, unless the queue empties first.
#[cfg(feature = "serve")]
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A lossless non-blocking [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) over `out`, and the guard that flushes it.
///
/// tracing-subscriber hands the writer one whole line per `write`, and the thread
/// writes each whole, in the order they were queued. Dropping the guard writes
/// what is queued: tracing-appender waits up to 100 ms to queue its stop and 1 s
/// for the thread to finish, which the bounded queue leaves ample time for
/// unless `out` itself is stuck.
#[cfg(feature = "serve")]
pub fn background(out: impl Write + Send + 'static) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES_LIMIT)
        .thread_name("log-writer")
        .finish(io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[cfg(feature = "serve")]
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// An `io::Write` the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        /// What was written, as JSON lines.
        fn json_lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
        }
    }

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The Lambda's lines, as `init(Output::LambdaJson)` formats them with `namespace`, for
    /// a request line (a 401 in its span), then a warning.
    fn lambda_lines(namespace: Option<&str>) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let json = tracing_subscriber::fmt::format().json().with_target(false).with_span_list(true).without_time();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(Emf { inner: json.with_current_span(false), namespace: namespace.map(str::to_owned) })
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("request", topic = "home/kitchen").entered();
            tracing::info!(
                status = 401u16,
                message_id = "0123456789ABCDEF0123456789ABCDEF",
                error = "authentication_failed",
                latency_us = 1_250u64,
                "request"
            );
            tracing::warn!(error = "boom", "the config store is unavailable");
        });
        out.json_lines()
    }

    #[test]
    fn the_request_line_carries_its_metrics_at_its_root_and_keeps_its_fields() {
        let lines = lambda_lines(Some("my-namespace"));
        let line = &lines[0];
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "my-namespace");
        assert_eq!(directive["Dimensions"], serde_json::json!([["status"], ["error"]]));
        assert_eq!((&line["status"], &line["error"]), (&"401".into(), &"authentication_failed".into()));
        assert_eq!((&line["Requests"], &line["Latency"]), (&1.into(), &1.25.into()));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let timestamp = line["_aws"]["Timestamp"].as_u64().expect("an integer of milliseconds");
        assert!(now - timestamp < 60_000, "{timestamp} is not milliseconds since the epoch, now");
        // What the line said before, where it said it.
        assert_eq!(line["fields"]["status"], 401);
        assert_eq!(line["fields"]["message_id"], "0123456789ABCDEF0123456789ABCDEF");
        assert_eq!(line["spans"][0]["topic"], "home/kitchen");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn other_lines_and_an_empty_namespace_carry_no_metrics() {
        let lines = lambda_lines(Some("mqtt-http-publish"));
        assert_eq!(lines[1]["fields"]["error"], "boom");
        assert!(lines[1].get("_aws").is_none(), "{}", lines[1]);
        let lines = lambda_lines(None);
        assert!(lines[0].get("_aws").is_none() && lines[0].get("Requests").is_none(), "{}", lines[0]);
        assert_eq!(lines[0]["fields"]["status"], 401);
        assert_eq!(metrics_namespace(None).as_deref(), Some(DEFAULT_METRICS_NAMESPACE));
        assert_eq!(metrics_namespace(Some(String::new())), None);
        assert_eq!(metrics_namespace(Some("team/mqtt".into())).as_deref(), Some("team/mqtt"));
    }

    #[test]
    fn lambda_runtime_s_lines_stop_at_debug_whatever_the_filter_allows() {
        let out = Captured::default();
        let writer = out.clone();
        let filter = tracing_subscriber::EnvFilter::new("trace,lambda_runtime::layers::api_response=trace");
        let cap = runtime_cap(Layer::<Registry>::max_level_hint(&filter).unwrap());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .with(cap);
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "lambda_runtime::layers::api_response", body = "the-whole-event", "raw event");
            tracing::debug!(target: "lambda_runtime::runtime", "runtime debug line");
            tracing::trace!(target: "mqtt_http_publish::service", "own trace line");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("raw event") && !text.contains("the-whole-event"), "{text}");
        assert!(text.contains("runtime debug line") && text.contains("own trace line"), "{text}");
        // Under a quieter filter the cap lets through nothing it would not, and hints no more.
        let quiet = runtime_cap(LevelFilter::INFO);
        assert!(!quiet.would_enable("mqtt_http_publish", &tracing::Level::DEBUG));
        assert!(!quiet.would_enable("lambda_runtime::runtime", &tracing::Level::DEBUG));
        assert_eq!(Layer::<Registry>::max_level_hint(&quiet), Some(LevelFilter::INFO));
    }

    #[cfg(feature = "serve")]
    #[test]
    fn every_line_from_every_thread_is_written_whole_and_in_each_threads_order() {
        let out = Captured::default();
        let (writer, guard) = background(out.clone());
        std::thread::scope(|scope| {
            for t in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for i in 0..5_000 {
                        // More lines than QUEUED_LINES_LIMIT make writers wait too.
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(100));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut words = line.split(' ');
            assert_eq!(words.next(), Some("thread"));
            let t: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(words.next(), Some("line"));
            let i: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            assert_eq!(words.next().unwrap().len(), 100, "a line was cut");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
    }

    #[cfg(feature = "serve")]
    #[test]
    fn dropping_the_guard_writes_what_is_pending() {
        let out = Captured::default();
        let (writer, guard) = background(out.clone());
        writer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"last words\n");
    }
}
