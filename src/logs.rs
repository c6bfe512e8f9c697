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

use std::io;
#[cfg(feature = "serve")]
use std::io::Write;

#[cfg(feature = "serve")]
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// How log lines reach their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// JSON lines on stdout, written in place (Lambda: CloudWatch parses them, and
    /// an invocation's lines must be out before the next `next` call).
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
/// embedded broker's per-connection lines held back to warnings.
pub fn init(output: Output) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info,rumqttd=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    use std::io::IsTerminal;
    let ansi = io::stderr().is_terminal();
    match output {
        Output::LambdaJson => {
            builder.json().with_current_span(false).with_span_list(true).without_time().init();
            Guard::in_place()
        }
        Output::Text => {
            builder.with_writer(io::stderr).with_ansi(ansi).init();
            Guard::in_place()
        }
        #[cfg(feature = "serve")]
        Output::Background => {
            let (writer, guard) = background(io::stderr());
            builder.with_writer(writer).with_ansi(ansi).init();
            Guard { _background: Some(guard) }
        }
    }
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

#[cfg(all(test, feature = "serve"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// An `io::Write` the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

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

    #[test]
    fn dropping_the_guard_writes_what_is_pending() {
        let out = Captured::default();
        let (writer, guard) = background(out.clone());
        writer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"last words\n");
    }
}
