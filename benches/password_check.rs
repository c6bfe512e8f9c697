//! One argon2id password check as the service makes it (`StoredHash::verify` on
//! `config/example.toml`'s hash: m=19456 KiB, t=2, p=1, what `passwd` writes).
//! Prints figures; asserts nothing. Run it under a CPU quota to see what a
//! Lambda memory size makes of it (docs/aws.md, "A user's first request in a container"):
//!
//!     cargo bench --bench password_check --no-run     # build outside the quota
//!     ( echo $BASHPID > /sys/fs/cgroup/cpu/lambda128/tasks; cargo bench --bench password_check )
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use mqtt_http_publish::auth::StoredHash;
use mqtt_http_publish::config::DEMO_PASSWORD_HASH;

fn main() {
    let hash = StoredHash::parse(DEMO_PASSWORD_HASH).expect("the demo hash parses");
    let mut samples: Vec<Duration> = (0..7)
        .map(|_| {
            let started = Instant::now();
            assert!(hash.verify(b"secret0"));
            started.elapsed()
        })
        .collect();
    let first = samples[0];
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "password_check: argon2id m=19456 t=2 p=1: first {:.0} ms; median of 7 {:.0} ms (min {:.0}, max {:.0})",
        ms(first),
        ms(samples[3]),
        ms(samples[0]),
        ms(samples[6])
    );
}
