//! The `[limits]` quotas: a rate limiter for the whole instance and one state
//! per username or certificate CN, by governor's GCRA (a token bucket without
//! a timer). Over quota is 429 with `Retry-After`.
//!
//! Each process keeps its own limiters: on Lambda that is per container, so
//! the instance quota there is API Gateway's stage throttling (template.yaml).
//!
//! A config reload can change the limits. A limiter is built for the quota in
//! force and rebuilt, starting full, when a request sees another quota.
//!
//! Memory: governor's `retain_recent` drops a user's state once it is back to
//! full (one message's period later), when it is the state a user never seen
//! gets, so the map holds only the users active within about one burst's refill
//! time. A drop scans the whole map, so it runs only when the map has doubled
//! since the last one (looked at every `PRUNE_CHECK_EVERY` admits): each scan is
//! paid for by the new users that grew the map, not by every request.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use parking_lot::RwLock;

use crate::config::Limits;
use crate::metrics::Refusal;
use crate::store::StoreFuture;

#[cfg(feature = "serve")]
pub mod redis;

/// Admits to a user limiter between two looks at its size.
const PRUNE_CHECK_EVERY: u64 = 256;

/// User states held before any are dropped: below this, a scan costs more than it saves.
const PRUNE_FLOOR: usize = 4096;

/// The instance limiter.
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A keyed limiter (per user, per source address): a `HashMap` behind a mutex, named
/// rather than governor's default alias, whose store and clock change with its features.
type Keyed<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter and the quota it was built for; none while that quota is off.
type Slot<T> = RwLock<Option<(Quota, Arc<T>)>>;

/// The quotas of one process. The clock is governor's monotonic one; tests give a fake.
#[derive(Debug)]
pub struct Quotas<C: Clock = MonotonicClock> {
    clock: C,
    instance: Slot<Direct<C>>,
    users: Slot<Users<String, C>>,
    password_checks: Slot<Users<IpAddr, C>>,
}

impl Default for Quotas<MonotonicClock> {
    fn default() -> Self {
        Quotas::with_clock(MonotonicClock)
    }
}

/// A keyed limiter and when to next drop its keys back to full.
#[derive(Debug)]
struct Users<K: Hash + Eq + Clone, C: Clock> {
    limiter: Keyed<K, C>,
    /// Counts admits, to look at the map's size every `PRUNE_CHECK_EVERY`.
    admits: AtomicU64,
    /// The size at which the next look drops the users back to full.
    prune_at: AtomicUsize,
}

/// The quota of `rate` messages a second with `burst`, if set. The burst defaults to one
/// second's worth, rounded down (at least 1). A rate so fast that one message takes
/// under a nanosecond counts as one a nanosecond; one so slow that a full burst would
/// take over a century to come back is held to that (governor counts time in `u64`
/// nanoseconds).
fn quota(rate: Option<f64>, burst: Option<u32>) -> Option<Quota> {
    let rate = rate?;
    let burst = burst.unwrap_or(rate.clamp(1.0, f64::from(u32::MAX)) as u32);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let longest = u64::MAX / 4 / u64::from(burst.get());
    let period = (1e9 / rate).clamp(1.0, longest as f64) as u64;
    Quota::with_period(Duration::from_nanos(period)).map(|q| q.allow_burst(burst))
}

/// The GCRA parameters of a quota: each message's period and the burst. The
/// same quota [`Quotas`] enforces in one process; [`SharedQuotas`] across a fleet.
pub fn gcra(rate: Option<f64>, burst: Option<u32>) -> Option<(Duration, u32)> {
    quota(rate, burst).map(|q| (q.replenish_interval(), q.burst_size().get()))
}

/// A message over a quota: which quota, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the {quota:?} quota; retry after {retry_after} s")]
pub struct QuotaRefusal {
    /// The quota that refused.
    pub quota: Refusal,
    /// Seconds to wait, at least 1: the answer's `Retry-After`.
    pub retry_after: u32,
}

/// The instance and user quotas of `[limits]` enforced across every process
/// that shares the store (`serve --redis`: [`redis`]). An `Err` is the
/// store failing: the caller falls back to its own [`Quotas`].
pub trait SharedQuotas: Send + Sync {
    /// Admits one message for `user` under `limits`, or says which quota refuses it.
    fn admit<'a>(
        &'a self,
        limits: &'a Limits,
        user: Option<&'a str>,
        messages: NonZeroU32,
    ) -> StoreFuture<'a, Result<(), QuotaRefusal>>;
}

/// Seconds for `Retry-After`: rounded up, at least 1.
fn retry_after<P: governor::clock::Reference>(not_until: &NotUntil<P>, now: P) -> u32 {
    let seconds = not_until.wait_time_from(now).as_secs_f64().ceil();
    seconds.clamp(1.0, f64::from(u32::MAX)) as u32
}

impl<C: Clock + Clone> Quotas<C> {
    /// Quotas that read the time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        Quotas { clock, instance: RwLock::new(None), users: RwLock::new(None), password_checks: RwLock::new(None) }
    }

    /// Admits one message for `user` (a username or CN) under `limits`, or
    /// says which quota refuses it.
    pub fn admit(&self, limits: &Limits, user: Option<&str>) -> Result<(), QuotaRefusal> {
        self.admit_n(limits, user, NonZeroU32::MIN)
    }

    /// Spends `messages` of the instance's quota and of `user`'s, all or none
    /// of each; a batch larger than a quota's burst is refused by the caller first.
    pub fn admit_n(&self, limits: &Limits, user: Option<&str>, messages: NonZeroU32) -> Result<(), QuotaRefusal> {
        let instance_quota = quota(limits.messages_per_second, limits.burst);
        if let Some(instance) =
            limiter_for(&self.instance, instance_quota, |q| RateLimiter::direct_with_clock(q, self.clock.clone()))
        {
            let refused = |retry_after| QuotaRefusal { quota: Refusal::Instance, retry_after };
            match instance.check_n(messages) {
                Ok(Ok(())) => {}
                Ok(Err(n)) => return Err(refused(retry_after(&n, self.clock.now()))),
                Err(_) => return Err(refused(u32::MAX)),
            }
        }
        let user_quota = quota(limits.user_messages_per_second, limits.user_burst);
        let users = limiter_for(&self.users, user_quota, |q| Users::new(q, self.clock.clone()));
        match (users, user) {
            (Some(users), Some(user)) => users
                .admit(user.to_owned(), messages, &self.clock)
                .map_err(|retry_after| QuotaRefusal { quota: Refusal::User, retry_after }),
            _ => Ok(()),
        }
    }

    /// Admits one slow password hash for a login from `source` under `limits`
    /// (`password_checks_per_second` per address), or returns the seconds to
    /// wait. Asked before the hash, so a guessing flood is refused at the cost
    /// of a map lookup, not of a hash. A verified password is cached, so the
    /// checks an address spends are, after its first login, its failures.
    pub fn admit_password_check(&self, limits: &Limits, source: Option<IpAddr>) -> Result<(), u32> {
        let quota = quota(limits.password_checks_per_second, limits.password_check_burst);
        match (limiter_for(&self.password_checks, quota, |q| Users::new(q, self.clock.clone())), source) {
            (Some(sources), Some(source)) => sources.admit(budget_key(source), NonZeroU32::MIN, &self.clock),
            _ => Ok(()),
        }
    }

    /// How many users' states are held (tests watch it stay bounded).
    #[cfg(test)]
    fn users_held(&self) -> usize {
        self.users.read().as_ref().map_or(0, |(_, u)| u.limiter.len())
    }
}

/// The limiter in `slot` if it was built for `quota`; else one built now by
/// `build`, replacing it (or none, and the slot emptied, if the quota is off).
fn limiter_for<T>(slot: &Slot<T>, quota: Option<Quota>, build: impl FnOnce(Quota) -> T) -> Option<Arc<T>> {
    let built_for = |current: &Option<(Quota, Arc<T>)>| current.as_ref().map(|(q, _)| *q);
    let current = slot.read();
    if built_for(&current) == quota {
        return current.as_ref().map(|(_, limiter)| Arc::clone(limiter));
    }
    drop(current);
    let mut current = slot.write();
    if built_for(&current) != quota {
        *current = quota.map(|q| (q, Arc::new(build(q))));
    }
    current.as_ref().map(|(_, limiter)| Arc::clone(limiter))
}

/// Whose budget a source address spends: an IPv4 address its own (an IPv4-mapped
/// IPv6 address too), an IPv6 address its /64, the block one subscriber or host
/// is given: one budget per address there would give a guesser 2^64 of them.
fn budget_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

impl<K: Hash + Eq + Clone, C: Clock> Users<K, C> {
    fn new(quota: Quota, clock: C) -> Self {
        Users {
            limiter: RateLimiter::hashmap_with_clock(quota, clock),
            admits: AtomicU64::new(0),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
        }
    }

    fn admit(&self, key: K, n: NonZeroU32, clock: &C) -> Result<(), u32> {
        let outcome = match self.limiter.check_key_n(&key, n) {
            Ok(outcome) => outcome,
            Err(_) => return Err(u32::MAX),
        };
        if self.admits.fetch_add(1, Ordering::Relaxed) % PRUNE_CHECK_EVERY == PRUNE_CHECK_EVERY - 1 {
            self.prune_if_doubled();
        }
        outcome.map_err(|n| retry_after(&n, clock.now()))
    }

    /// Drops the users back to full once the map has reached `prune_at`, then
    /// sets the next mark at twice what is left (at least `PRUNE_FLOOR`).
    fn prune_if_doubled(&self) {
        let before = self.limiter.len();
        if before < self.prune_at.load(Ordering::Relaxed) {
            return;
        }
        self.limiter.retain_recent();
        let kept = self.limiter.len();
        if kept < before / 4 {
            self.limiter.shrink_to_fit();
        }
        self.prune_at.store(kept.saturating_mul(2).max(PRUNE_FLOOR), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A refusal by `quota`, with `Retry-After: retry_after`.
    fn refused(quota: Refusal, retry_after: u32) -> Result<(), QuotaRefusal> {
        Err(QuotaRefusal { quota, retry_after })
    }

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
    fn each_source_address_has_a_budget_of_password_checks_on_by_default() {
        let q = Quotas::default();
        let l = Limits { password_checks_per_second: Some(0.5), password_check_burst: Some(3), ..Limits::default() };
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        assert!((0..3).all(|_| q.admit_password_check(&l, Some(a)).is_ok()));
        assert_eq!(q.admit_password_check(&l, Some(a)), Err(2), "one check every 2 s");
        assert!(q.admit_password_check(&l, Some(b)).is_ok(), "another address has its own budget");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(q.admit_password_check(&l, Some(mapped)).is_err(), "an IPv4-mapped address is the IPv4 one");
        let b_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let b_other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!((0..2).all(|_| q.admit_password_check(&l, Some(b_same_64)).is_ok()), "b's /64 had 2 left");
        assert!(q.admit_password_check(&l, Some(b)).is_err(), "one budget for the whole /64");
        assert!(q.admit_password_check(&l, Some(b_other_64)).is_ok(), "another /64, another budget");
        assert!(q.admit_password_check(&l, None).is_ok(), "no source address, no budget to keep");
        let d = Limits::default();
        assert_eq!(d.password_checks_per_second, Some(crate::config::DEFAULT_PASSWORD_CHECKS_PER_SECOND));
        let burst = crate::config::DEFAULT_PASSWORD_CHECK_BURST;
        assert!((0..burst).all(|_| q.admit_password_check(&d, Some(b)).is_ok()));
        assert!(q.admit_password_check(&d, Some(b)).is_err(), "the default budget is a burst of {burst}");
    }

    #[test]
    fn no_limits_admit_everything() {
        let q = Quotas::default();
        assert!((0..10_000).all(|_| q.admit(&Limits::default(), Some("u")).is_ok()));
        assert_eq!(q.users_held(), 0);
    }

    #[test]
    fn the_instance_quota_allows_its_burst_then_asks_to_wait() {
        let q = Quotas::default();
        let l = limits(Some(0.5), Some(3), None, None);
        assert!((0..3).all(|_| q.admit(&l, None).is_ok()));
        assert_eq!(q.admit(&l, None), refused(Refusal::Instance, 2), "one message every 2 s");
    }

    #[test]
    fn each_user_has_a_quota_of_its_own() {
        let q = Quotas::default();
        let l = limits(None, None, Some(1.0), Some(2));
        assert!(q.admit(&l, Some("a")).is_ok() && q.admit(&l, Some("a")).is_ok());
        assert_eq!(q.admit(&l, Some("a")), refused(Refusal::User, 1));
        assert!(q.admit(&l, Some("b")).is_ok(), "another user is not held back");
        assert!(q.admit(&l, None).is_ok(), "no user, no user quota");
    }

    #[test]
    fn the_burst_defaults_to_one_seconds_worth_and_at_least_one() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(clock.clone());
        let l = limits(Some(5.0), None, None, None);
        assert!((0..5).all(|_| q.admit(&l, None).is_ok()));
        assert_eq!(q.admit(&l, None), refused(Refusal::Instance, 1));
        let l = limits(Some(0.25), None, None, None);
        assert!(q.admit(&l, None).is_ok());
        assert_eq!(q.admit(&l, None), refused(Refusal::Instance, 4), "one message every 4 s, a burst of 1");
    }

    #[test]
    fn messages_come_back_with_time() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(clock.clone());
        let l = limits(Some(10.0), Some(1), Some(0.5), Some(1));
        assert!(q.admit(&l, None).is_ok());
        assert!(q.admit(&l, None).is_err());
        clock.advance(Duration::from_millis(150));
        assert!(q.admit(&l, Some("u")).is_ok());
        clock.advance(Duration::from_millis(150));
        assert_eq!(q.admit(&l, Some("u")), refused(Refusal::User, 2), "the user's quota is one message every 2 s");
        clock.advance(Duration::from_millis(1_900));
        assert!(q.admit(&l, Some("u")).is_ok());
    }

    #[test]
    fn a_changed_quota_takes_effect_at_once_and_starts_full() {
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(clock.clone());
        let tight = limits(Some(1.0), Some(1), Some(1.0), Some(1));
        assert!(q.admit(&tight, Some("u")).is_ok());
        assert!(q.admit(&tight, Some("u")).is_err());
        let loose = limits(Some(1.0), Some(3), Some(1.0), Some(3));
        assert!((0..3).all(|_| q.admit(&loose, Some("u")).is_ok()));
        assert!(q.admit(&loose, Some("u")).is_err());
        assert!(q.admit(&limits(None, None, None, None), Some("u")).is_ok(), "quotas removed");
        assert_eq!(q.users_held(), 0, "the user states go with their quota");
    }

    #[test]
    fn absurd_rates_neither_panic_nor_admit_without_end() {
        let q = Quotas::default();
        let fast = limits(Some(1e300), Some(2), Some(f64::MAX), None);
        assert!(q.admit(&fast, Some("u")).is_ok());
        let slow = limits(Some(1e-300), Some(u32::MAX), None, None);
        assert!(q.admit(&slow, None).is_ok());
        let slow = limits(Some(1e-300), Some(1), None, None);
        assert!(q.admit(&slow, None).is_ok());
        assert!(q.admit(&slow, None).is_err_and(|refusal| refusal.retry_after > 1));
    }

    #[test]
    fn two_hundred_thousand_users_are_held_only_while_their_quota_is_not_full() {
        // GIVEN a per-user quota of 1 message a second with a burst of 2,
        let clock = FakeRelativeClock::default();
        let q = Quotas::with_clock(clock.clone());
        let l = limits(None, None, Some(1.0), Some(2));
        let mut most_held = 0;
        for i in 0..200_000 {
            // WHEN 200 000 users each drain their quota, a thousand users a second,
            let user = format!("user-{i}");
            assert!(q.admit(&l, Some(&user)).is_ok() && q.admit(&l, Some(&user)).is_ok());
            assert_eq!(q.admit(&l, Some(&user)), refused(Refusal::User, 1));
            if i % 1_000 == 999 {
                clock.advance(Duration::from_secs(1));
            }
            most_held = most_held.max(q.users_held());
        }
        // THEN only the users of the last few seconds are held, never all of them:
        // a drained user is dropped once its quota is full again (3 s here).
        assert!(most_held < 10_000, "{most_held} user states held at once");
        // AND a user dropped starts full, as one never seen does.
        assert!(q.admit(&l, Some("user-0")).is_ok() && q.admit(&l, Some("user-0")).is_ok());
        assert_eq!(q.admit(&l, Some("user-0")), refused(Refusal::User, 1));
    }
}
