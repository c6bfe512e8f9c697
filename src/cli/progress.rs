//! How the long config commands show their progress on stderr, so that stdout
//! keeps only their result (`config pull`'s TOML, `push`'s change lines).

use parking_lot::Mutex;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::table::Progress;

/// Items between two plain lines.
const LINE_EVERY: u64 = 1000;

/// Progress on stderr: a bar on a terminal; elsewhere (a pipe, a CI log) a plain
/// line every [`LINE_EVERY`] items and one when a step ends.
#[derive(Debug)]
pub enum StderrProgress {
    /// Redrawn in place.
    Bar(Mutex<Option<ProgressBar>>),
    /// Appended lines.
    Lines(Mutex<Step>),
}

/// The step a plain-line reporter is in.
#[derive(Debug)]
pub struct Step {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
}

impl StderrProgress {
    /// A bar when stderr is a terminal, lines when it is not.
    pub fn new() -> StderrProgress {
        if std::io::stderr().is_terminal() {
            StderrProgress::Bar(Mutex::new(None))
        } else {
            StderrProgress::Lines(Mutex::new(Step {
                what: String::new(),
                total: None,
                done: 0,
                started: Instant::now(),
            }))
        }
    }
}

impl Step {
    fn line(&self) -> String {
        let items = |n: u64| if n == 1 { "item" } else { "items" };
        match self.total {
            Some(total) => format!("{}: {} of {total} {}", self.what, self.done, items(total)),
            None => format!("{}: {} {}", self.what, self.done, items(self.done)),
        }
    }
}

impl Progress for StderrProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        match self {
            StderrProgress::Bar(bar) => {
                let new = match total {
                    Some(total) => ProgressBar::new(total).with_style(
                        ProgressStyle::with_template("{msg}: [{bar:30}] {pos}/{len} items, {elapsed}, {eta} left")
                            .expect("a valid template")
                            .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{msg}: {spinner} {pos} items, {elapsed}")
                            .expect("a valid template"),
                    ),
                };
                new.set_message(what.to_owned());
                new.enable_steady_tick(Duration::from_millis(100));
                *bar.lock() = Some(new);
            }
            StderrProgress::Lines(step) => {
                *step.lock() = Step { what: what.to_owned(), total, done: 0, started: Instant::now() };
            }
        }
    }

    fn advance(&self, count: u64) {
        match self {
            StderrProgress::Bar(bar) => {
                if let Some(bar) = &*bar.lock() {
                    bar.inc(count);
                }
            }
            StderrProgress::Lines(step) => {
                let mut step = step.lock();
                let before = step.done;
                step.done += count;
                if step.done / LINE_EVERY > before / LINE_EVERY && Some(step.done) != step.total {
                    let _ = writeln!(std::io::stderr(), "{}", step.line());
                }
            }
        }
    }

    fn finish(&self) {
        match self {
            StderrProgress::Bar(bar) => {
                if let Some(bar) = bar.lock().take() {
                    bar.set_style(
                        ProgressStyle::with_template("{msg}: {pos} items, done in {elapsed}")
                            .expect("a valid template"),
                    );
                    bar.finish();
                }
            }
            StderrProgress::Lines(step) => {
                let step = step.lock();
                let _ = writeln!(
                    std::io::stderr(),
                    "{}, done in {:.1} s",
                    step.line(),
                    step.started.elapsed().as_secs_f64()
                );
            }
        }
    }
}
