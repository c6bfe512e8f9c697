//! Serves the config to requests: from a file held in memory, or from the
//! DynamoDB table through caches.
//!
//! Table caching (README, "The config table"):
//! - a user is fetched with one `GetItem` on first use and kept for the TTL,
//!   found or not (negative entries spare the table a miss per request);
//! - the rules and limits are read whole and re-read after the TTL;
//! - requests that need the same entry while it is being fetched wait for
//!   that one fetch instead of starting their own;
//! - when the table fails, the last good copy keeps serving for up to
//!   `stale_max` (logged); with no copy, the request gets 503, never 401;
//! - after a failure the table is not asked again for [`RETRY_AFTER_FAILURE`],
//!   so an outage costs requests nothing but the stale copy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::table::{StoreError, TableStore};
use super::{validate_user, Policy, RuleSet};
use crate::auth::StoredHash;

/// How long after a failed fetch the table is left alone.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Users kept in memory before the cache starts over.
const USER_CACHE_CAPACITY: usize = 100_000;

/// Where the config comes from.
pub enum ConfigSource {
    /// A validated file, replaced whole on reload.
    File(RwLock<Arc<Policy>>),
    /// The DynamoDB table, through caches.
    Table(TableSource),
}

impl ConfigSource {
    /// A file's config.
    pub fn file(policy: Policy) -> ConfigSource {
        ConfigSource::File(RwLock::new(Arc::new(policy)))
    }

    /// The rules and limits in force.
    pub async fn rules(&self) -> Result<Arc<RuleSet>, StoreError> {
        match self {
            ConfigSource::File(policy) => Ok(Arc::clone(&read(policy).rules)),
            ConfigSource::Table(table) => table.rules().await,
        }
    }

    /// One user's password hash; `Ok(None)` when there is no such user.
    pub async fn user(&self, username: &str) -> Result<Option<StoredHash>, StoreError> {
        match self {
            ConfigSource::File(policy) => Ok(read(policy).users.get(username).cloned()),
            ConfigSource::Table(table) => table.user(username).await,
        }
    }

    /// Replaces a file's config (reload); requests in flight finish under the old one.
    pub fn replace(&self, new: Policy) {
        if let ConfigSource::File(policy) = self {
            *policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
    }
}

fn read(policy: &RwLock<Arc<Policy>>) -> Arc<Policy> {
    Arc::clone(&policy.read().unwrap_or_else(|e| e.into_inner()))
}

/// Timing of the table's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long an entry is served without asking the table (`CONFIG_CACHE_TTL_SECONDS`, default 30).
    pub ttl: Duration,
    /// How long the last good copy outlives a failing table (`CONFIG_STALE_MAX_SECONDS`, default 900).
    pub stale_max: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { ttl: Duration::from_secs(30), stale_max: Duration::from_secs(900) }
    }
}

impl CacheSettings {
    /// Defaults, overridden by `CONFIG_CACHE_TTL_SECONDS` and `CONFIG_STALE_MAX_SECONDS`.
    pub fn from_env() -> CacheSettings {
        let seconds =
            |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
        let defaults = CacheSettings::default();
        CacheSettings {
            ttl: seconds("CONFIG_CACHE_TTL_SECONDS").unwrap_or(defaults.ttl),
            stale_max: seconds("CONFIG_STALE_MAX_SECONDS").unwrap_or(defaults.stale_max),
        }
    }
}

/// The table behind its caches.
pub struct TableSource {
    store: TableStore,
    settings: CacheSettings,
    rules: Slot<Arc<RuleSet>>,
    users: Mutex<HashMap<String, Arc<Slot<Option<StoredHash>>>>>,
}

impl TableSource {
    /// Caches over `store`. Nothing is fetched until first use (or [`TableSource::prefetch`]).
    pub fn new(store: TableStore, settings: CacheSettings) -> TableSource {
        TableSource { store, settings, rules: Slot::default(), users: Mutex::new(HashMap::new()) }
    }

    /// Starts reading the rules, so the first request finds them loaded or in flight.
    pub async fn prefetch(&self) {
        if let Err(error) = self.rules().await {
            warn!(%error, "prefetching the rules failed; the first request will try again");
        }
    }

    async fn rules(&self) -> Result<Arc<RuleSet>, StoreError> {
        self.rules
            .get(self.settings, "rules", || async {
                let (rules, limits) = self.store.rules().await?;
                RuleSet::new(rules, limits).map(Arc::new).map_err(|e| {
                    error!(error = %e, "the table's rules are refused; keeping the last good copy");
                    StoreError(format!("invalid rules in the table: {e}"))
                })
            })
            .await
    }

    async fn user(&self, username: &str) -> Result<Option<StoredHash>, StoreError> {
        let slot = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if users.len() >= USER_CACHE_CAPACITY && !users.contains_key(username) {
                users.clear();
            }
            Arc::clone(users.entry(username.to_owned()).or_default())
        };
        slot.get(self.settings, "user", || async {
            Ok(self.store.user(username).await?.and_then(|entry| match validate_user(&entry) {
                Ok(hash) => Some(hash),
                Err(e) => {
                    error!(error = %e, "a user item in the table is refused; the user cannot authenticate");
                    None
                }
            }))
        })
        .await
    }
}

/// One cached value, fetched by one caller at a time.
struct Slot<T> {
    state: tokio::sync::Mutex<SlotState<T>>,
}

struct SlotState<T> {
    /// The last good value and when it was fetched.
    value: Option<(T, Instant)>,
    /// When the last fetch failed, if the last fetch failed.
    failed_at: Option<Instant>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { state: tokio::sync::Mutex::new(SlotState { value: None, failed_at: None }) }
    }
}

impl<T: Clone> Slot<T> {
    /// The value if fresh; else one fetch (others wait for it); else the stale value if young enough.
    async fn get<F, Fut>(&self, settings: CacheSettings, what: &str, fetch: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut state = self.state.lock().await;
        if let Some((value, fetched)) = &state.value {
            if fetched.elapsed() < settings.ttl {
                return Ok(value.clone());
            }
        }
        let stale = |state: &SlotState<T>| {
            state.value.as_ref().filter(|(_, fetched)| fetched.elapsed() < settings.stale_max).map(|(v, _)| v.clone())
        };
        if state.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE) {
            return stale(&state).ok_or_else(|| StoreError(format!("the config table failed recently ({what})")));
        }
        match fetch().await {
            Ok(value) => {
                state.value = Some((value.clone(), Instant::now()));
                state.failed_at = None;
                Ok(value)
            }
            Err(error) => {
                state.failed_at = Some(Instant::now());
                match stale(&state) {
                    Some(value) => {
                        warn!(%error, what, "the config table failed; serving the last good copy");
                        Ok(value)
                    }
                    None => Err(error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const QUICK: CacheSettings = CacheSettings { ttl: Duration::from_millis(50), stale_max: Duration::from_secs(60) };

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch() {
        let slot = Arc::new(Slot::<u32>::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (slot, fetches) = (Arc::clone(&slot), Arc::clone(&fetches));
                tokio::spawn(async move {
                    slot.get(QUICK, "t", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(7)
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_serves_the_last_good_copy_and_nothing_without_one() {
        let slot = Slot::<u32>::default();
        let fail = || async { Err::<u32, _>(StoreError("down".into())) };
        assert!(slot.get(QUICK, "t", fail).await.is_err(), "no copy: an error");
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        assert_eq!(slot.get(QUICK, "t", || async { Ok(1) }).await, Ok(1));
        tokio::time::sleep(QUICK.ttl).await;
        assert_eq!(slot.get(QUICK, "t", fail).await, Ok(1), "stale copy while the store is down");
        let expired = CacheSettings { stale_max: Duration::ZERO, ..QUICK };
        assert!(slot.get(expired, "t", || async { panic!("no fetch right after a failure") }).await.is_err());
    }

    #[tokio::test]
    async fn a_fresh_value_is_served_without_fetching_and_refetched_after_the_ttl() {
        let slot = Slot::<u32>::default();
        assert_eq!(slot.get(QUICK, "t", || async { Ok(1) }).await, Ok(1));
        assert_eq!(slot.get(QUICK, "t", || async { panic!("fresh: no fetch") }).await, Ok(1));
        tokio::time::sleep(QUICK.ttl).await;
        assert_eq!(slot.get(QUICK, "t", || async { Ok(2) }).await, Ok(2));
    }
}
