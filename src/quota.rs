//! The `[limits]` quotas: token buckets for the whole instance and for each
//! username or certificate CN. Over quota is 429 with `Retry-After`.
//!
//! Each process keeps its own buckets: on Lambda that is per container, so
//! the instance quota there is API Gateway's stage throttling (template.yaml).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Limits;

/// Buckets kept for distinct users before idle ones are forgotten.
const MAX_USER_BUCKETS: usize = 100_000;

/// A token bucket: `rate` tokens a second, at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, updated: now }
    }

    /// Takes one token, or says how many seconds until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), f64> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / rate)
        }
    }
}

/// The quotas of one process.
#[derive(Debug, Default)]
pub struct Quotas {
    instance: Mutex<Option<Bucket>>,
    users: Mutex<HashMap<String, Bucket>>,
}

/// `(rate, burst)` of a quota, if set; the burst defaults to one second's worth (at least 1).
fn quota(rate: Option<f64>, burst: Option<u32>) -> Option<(f64, f64)> {
    rate.map(|r| (r, burst.map_or(r.max(1.0), f64::from)))
}

impl Quotas {
    /// Admits one message for `user` (a username or CN) under `limits`, or
    /// returns the seconds to wait (at least 1) for `Retry-After`.
    pub fn admit(&self, limits: &Limits, user: Option<&str>) -> Result<(), u32> {
        let now = Instant::now();
        let retry = |seconds: f64| seconds.ceil().max(1.0) as u32;
        if let Some((rate, burst)) = quota(limits.messages_per_second, limits.burst) {
            let mut bucket = self.instance.lock().unwrap_or_else(|e| e.into_inner());
            bucket.get_or_insert_with(|| Bucket::full(burst, now)).take(rate, burst, now).map_err(retry)?;
        }
        if let (Some((rate, burst)), Some(user)) = (quota(limits.user_messages_per_second, limits.user_burst), user) {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if users.len() >= MAX_USER_BUCKETS && !users.contains_key(user) {
                // A full bucket is what a forgotten user would get anyway.
                users.retain(|_, b| b.tokens < burst - 1.0);
            }
            users
                .entry(user.to_owned())
                .or_insert_with(|| Bucket::full(burst, now))
                .take(rate, burst, now)
                .map_err(retry)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: Option<f64>, burst: Option<u32>, user_rate: Option<f64>, user_burst: Option<u32>) -> Limits {
        Limits {
            messages_per_second: rate,
            burst,
            user_messages_per_second: user_rate,
            user_burst,
            ..Limits::default()
        }
    }

    #[test]
    fn no_limits_admit_everything() {
        let q = Quotas::default();
        assert!((0..10_000).all(|_| q.admit(&Limits::default(), Some("u")).is_ok()));
    }

    #[test]
    fn the_instance_bucket_allows_its_burst_then_asks_to_wait() {
        let q = Quotas::default();
        let l = limits(Some(0.5), Some(3), None, None);
        assert!((0..3).all(|_| q.admit(&l, None).is_ok()));
        assert_eq!(q.admit(&l, None), Err(2), "one token every 2 s");
    }

    #[test]
    fn each_user_has_a_bucket_of_its_own() {
        let q = Quotas::default();
        let l = limits(None, None, Some(1.0), Some(2));
        assert!(q.admit(&l, Some("a")).is_ok() && q.admit(&l, Some("a")).is_ok());
        assert_eq!(q.admit(&l, Some("a")), Err(1));
        assert!(q.admit(&l, Some("b")).is_ok(), "another user is not held back");
    }

    #[test]
    fn tokens_come_back_with_time() {
        let mut b = Bucket::full(1.0, Instant::now());
        let t0 = Instant::now();
        assert!(b.take(10.0, 1.0, t0).is_ok());
        assert!(b.take(10.0, 1.0, t0).is_err());
        assert!(b.take(10.0, 1.0, t0 + std::time::Duration::from_millis(150)).is_ok());
    }
}
