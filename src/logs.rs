//! Where log lines go: JSON lines on Lambda, plain text on stderr elsewhere,
//! and for `serve` through a thread of their own.
//!
//! `serve` writes a line per request. Written in place, that line costs its
//! request a `write(2)` under the stderr lock, which all worker threads contend
//! for: about a sixth of the throughput at 64 connections (BENCHMARKS.md). With
//! [`Output::Background`] a worker appends the formatted line to a buffer and
//! goes back to its requests; one thread empties the buffer, a batch per write.
//! Lines keep their order, and nothing is dropped: when the buffer is full (stderr
//! slower than the requests), a worker waits, as it would on a blocking write.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing_subscriber::fmt::MakeWriter;

/// How log lines reach stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// JSON lines, written in place (Lambda: CloudWatch parses them, and an
    /// invocation's lines must be out before the next `next` call).
    LambdaJson,
    /// Plain text, written in place (the short-lived commands).
    Text,
    /// Plain text, written by a thread of its own (`serve`).
    Background,
}

/// Keeps the background writer running; dropping it writes what is left.
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard(Option<BackgroundStderr>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            writer.finish();
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
            Guard(None)
        }
        Output::Text => {
            builder.with_writer(io::stderr).with_ansi(ansi).init();
            Guard(None)
        }
        Output::Background => {
            let writer = BackgroundStderr::start(io::stderr());
            builder.with_writer(writer.clone()).with_ansi(ansi).init();
            Guard(Some(writer))
        }
    }
}

/// Bytes waiting for the writer thread beyond which a logging thread waits.
const BUFFER_LIMIT: usize = 1 << 20;

/// A [`MakeWriter`] whose lines a dedicated thread writes to an [`io::Write`].
#[derive(Clone)]
pub struct BackgroundStderr {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when lines arrive or the writer should finish.
    filled: Condvar,
    /// Signalled when the writer has taken the buffer.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    finishing: bool,
}

impl BackgroundStderr {
    /// Starts the writer thread over `out`.
    pub fn start(out: impl Write + Send + 'static) -> Self {
        let shared =
            Arc::new(Shared { state: Mutex::new(State::default()), filled: Condvar::new(), drained: Condvar::new() });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_batches(&shared, out)
            })
            .expect("a thread for the log writer");
        Self { shared, thread: Arc::new(Mutex::new(Some(thread))) }
    }

    /// Writes what is pending and stops the thread.
    pub fn finish(&self) {
        lock(&self.shared.state).finishing = true;
        self.shared.filled.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let finishing = {
            let mut state = lock(&shared.state);
            while state.pending.is_empty() && !state.finishing {
                state = shared.filled.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut batch, &mut state.pending);
            state.finishing
        };
        shared.drained.notify_all();
        // A failed write to stderr has nowhere to be reported; the lines are dropped.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if finishing && lock(&shared.state).pending.is_empty() {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves bytes, never a broken invariant.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One log line on its way to the buffer.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = lock(&self.0.state);
        while state.pending.len() >= BUFFER_LIMIT && !state.finishing {
            state = self.0.drained.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = state.pending.is_empty();
        state.pending.extend_from_slice(bytes);
        drop(state);
        if was_empty {
            self.0.filled.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BackgroundStderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `io::Write` the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_and_in_each_threads_order() {
        let out = Captured::default();
        let writer = BackgroundStderr::start(out.clone());
        std::thread::scope(|scope| {
            for t in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for i in 0..5_000 {
                        // Lines larger in total than BUFFER_LIMIT make writers wait too.
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(100));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        writer.finish();
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
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
    fn finishing_writes_what_is_pending() {
        let out = Captured::default();
        let writer = BackgroundStderr::start(out.clone());
        writer.make_writer().write_all(b"last words\n").unwrap();
        writer.finish();
        assert_eq!(lock(&out.0).as_slice(), b"last words\n");
    }
}
