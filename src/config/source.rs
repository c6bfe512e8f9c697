//! Serves the config to requests through the [`ConfigStore`] trait, as the
//! publisher is served through its own: [`FileStore`] holds a file in memory
//! and reloads it; [`CachedTable`] reads the DynamoDB table through caches.
//!
//! Table caching (docs/configuration.md, "The config table"):
//! - a user is fetched with one `GetItem` on first use and kept, found or not
//!   (negative entries spare the table a miss per request);
//! - the rules and limits are read whole;
//! - an entry older than the TTL is still served, at once, while one task
//!   fetches it again in the background: no request waits on the table for an
//!   entry it already holds, and no lock is held across a network call;
//! - requests that need an entry nobody holds share one fetch;
//! - when the table fails, the last good copy keeps serving for up to
//!   `stale_max` (logged); with no copy, the request gets 503, never 401;
//! - after a failure the table is not asked again for [`RETRY_AFTER_FAILURE`],
//!   so an outage costs requests nothing but the stale copy.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use parking_lot::{Mutex, RwLock};
use tracing::{error, warn};

use super::table::TableStore;
use super::{validate_user, ConfigError, Policy, RuleSet};
use crate::auth::StoredHash;
use crate::cause::Chain;
use crate::store::{StoreError, StoreFuture};

/// How long after a failed fetch the table is left alone.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Users kept in memory before the least recently used go.
const USER_CACHE_CAPACITY: u64 = 100_000;

/// Where requests read the users, rules and limits.
pub trait ConfigStore: Send + Sync {
    /// The rules and limits in force.
    fn rules(&self) -> StoreFuture<'_, Arc<RuleSet>>;

    /// One user's password hash; `Ok(None)` when there is no such user.
    fn user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<StoredHash>>;

    /// Loads what the first request will need, so it finds it loaded or in
    /// flight. A failure is logged; the first request tries again.
    fn prefetch(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// A validated config file, held in memory and replaced whole on reload.
pub struct FileStore {
    /// The file to read again on reload; `None` for a config with no file (the demo).
    path: Option<PathBuf>,
    policy: RwLock<Arc<Policy>>,
}

impl FileStore {
    /// Reads and validates the file at `path`.
    pub fn load(path: PathBuf) -> Result<FileStore, ConfigError> {
        let policy = Policy::load(&path)?;
        Ok(FileStore { path: Some(path), policy: RwLock::new(Arc::new(policy)) })
    }

    /// A config that has no file.
    pub fn new(policy: Policy) -> FileStore {
        FileStore { path: None, policy: RwLock::new(Arc::new(policy)) }
    }

    /// The file reloads read, if there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Reads the file again and, if it is valid, serves it from now on; requests in
    /// flight finish under the old one. A refused file leaves the old one in force.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        let policy = Policy::load(path)?;
        *self.policy.write() = Arc::new(policy);
        Ok(())
    }

    fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read())
    }
}

/// Why [`FileStore::reload`] kept the config it had.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config came from no file (the demo config).
    #[error("the config has no file to reload")]
    NoFile,
    /// The file is refused; the message names the entry.
    #[error(transparent)]
    Refused(#[from] ConfigError),
}

impl ConfigStore for FileStore {
    fn rules(&self) -> StoreFuture<'_, Arc<RuleSet>> {
        let rules = Arc::clone(&self.policy().rules);
        Box::pin(async move { Ok(rules) })
    }

    fn user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<StoredHash>> {
        let user = self.policy().users.get(username).cloned();
        Box::pin(async move { Ok(user) })
    }
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

    /// How long an entry may be served at all: fresh for the TTL, then stale while
    /// refreshed or while the table fails, up to `stale_max` after it was fetched.
    fn servable(&self) -> Duration {
        self.ttl.max(self.stale_max)
    }
}

/// The table behind its caches.
pub struct CachedTable {
    store: TableStore,
    /// The rules and the users in one cache: one instance of moka's code in the binary.
    entries: Refreshing<Key, Entry>,
}

/// What the table's cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Rules,
    User(String),
}

#[derive(Clone)]
enum Entry {
    Rules(Arc<RuleSet>),
    User(Option<StoredHash>),
}

impl CachedTable {
    /// Caches over `store`. Nothing is fetched until first use (or [`ConfigStore::prefetch`]).
    pub fn new(store: TableStore, settings: CacheSettings) -> CachedTable {
        CachedTable { store, entries: Refreshing::new("config", settings, USER_CACHE_CAPACITY + 1) }
    }

    /// Whether the rules have been read (and are not yet too old to serve).
    pub fn has_rules(&self) -> bool {
        self.entries.entries.contains_key(&Key::Rules)
    }
}

impl ConfigStore for CachedTable {
    fn rules(&self) -> StoreFuture<'_, Arc<RuleSet>> {
        let store = self.store.clone();
        Box::pin(async move {
            match self
                .entries
                .get(Key::Rules, move || async move { fetch_rules(store).await.map(Entry::Rules) })
                .await?
            {
                Entry::Rules(rules) => Ok(rules),
                Entry::User(_) => unreachable!("the rules' key holds the rules"),
            }
        })
    }

    fn user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<StoredHash>> {
        let (store, name) = (self.store.clone(), username.to_owned());
        Box::pin(async move {
            let fetch = move || async move { fetch_user(store, name).await.map(Entry::User) };
            match self.entries.get(Key::User(username.to_owned()), fetch).await? {
                Entry::User(user) => Ok(user),
                Entry::Rules(_) => unreachable!("a user's key holds a user"),
            }
        })
    }

    fn prefetch(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {
            if let Err(error) = self.rules().await {
                warn!(error = %Chain(&error), "prefetching the rules failed; the first request will try again");
            }
        })
    }
}

async fn fetch_rules(store: TableStore) -> Result<Arc<RuleSet>, StoreError> {
    RuleSet::from_config(store.rules().await?).map(Arc::new).map_err(|e| {
        error!(error = %e, "the table's rules are refused; keeping the last good copy");
        StoreError::new(format!("invalid rules in the table: {e}"))
    })
}

async fn fetch_user(store: TableStore, username: String) -> Result<Option<StoredHash>, StoreError> {
    Ok(store.user(&username).await?.and_then(|entry| match validate_user(&entry) {
        Ok(hash) => Some(hash),
        Err(e) => {
            error!(error = %e, "a user item in the table is refused; the user cannot authenticate");
            None
        }
    }))
}

/// A value and when it was fetched.
#[derive(Clone)]
struct Fetched<V> {
    value: V,
    at: Instant,
}

/// A cache whose entries are refreshed in the background once older than the TTL.
struct Refreshing<K, V> {
    /// For log lines: what the entries are.
    what: &'static str,
    settings: CacheSettings,
    /// moka evicts an entry once it is too old to serve even while the table fails.
    entries: Cache<K, Fetched<V>>,
    /// Keys being refreshed in the background: one task each.
    refreshing: Arc<Mutex<HashSet<K>>>,
    /// When a fetch last failed.
    failed_at: Arc<Mutex<Option<Instant>>>,
}

impl<K, V> Refreshing<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(what: &'static str, settings: CacheSettings, capacity: u64) -> Self {
        Refreshing {
            what,
            settings,
            entries: Cache::builder().max_capacity(capacity).time_to_live(settings.servable()).build(),
            refreshing: Arc::default(),
            failed_at: Arc::default(),
        }
    }

    /// The entry for `key`: at once if held (refreshed in the background when past
    /// the TTL), else fetched (one fetch for every request that asks meanwhile).
    async fn get<F, Fut>(&self, key: K, fetch: F) -> Result<V, StoreError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, StoreError>> + Send + 'static,
    {
        if let Some(held) = self.entries.get(&key).await {
            if held.at.elapsed() >= self.settings.ttl {
                self.refresh_in_background(key, fetch);
            }
            return Ok(held.value);
        }
        if self.failed_recently() {
            return Err(StoreError::new(format!("the config table failed recently ({})", self.what)));
        }
        let fetched =
            // Boxed: moka's loading code is built once, not once per kind of fetch.
            self.entries.try_get_with(key, Box::pin(async { Ok(Fetched { value: fetch().await?, at: Instant::now() }) })
                as Pin<Box<dyn Future<Output = Result<Fetched<V>, StoreError>> + Send + '_>>);
        fetched.await.map(|f| f.value).map_err(|error: Arc<StoreError>| {
            self.mark_failed();
            StoreError::clone(&error)
        })
    }

    fn refresh_in_background<F, Fut>(&self, key: K, fetch: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, StoreError>> + Send + 'static,
    {
        if self.failed_recently() || !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        let (entries, refreshing, failed_at, what) =
            (self.entries.clone(), Arc::clone(&self.refreshing), Arc::clone(&self.failed_at), self.what);
        tokio::spawn(async move {
            match fetch().await {
                Ok(value) => entries.insert(key.clone(), Fetched { value, at: Instant::now() }).await,
                Err(error) => {
                    *failed_at.lock() = Some(Instant::now());
                    warn!(error = %Chain(&error), what, "the config table failed; serving the last good copy");
                }
            }
            refreshing.lock().remove(&key);
        });
    }

    fn failed_recently(&self) -> bool {
        self.failed_at.lock().is_some_and(|t: Instant| t.elapsed() < RETRY_AFTER_FAILURE)
    }

    fn mark_failed(&self) {
        *self.failed_at.lock() = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const QUICK: CacheSettings = CacheSettings { ttl: Duration::from_millis(50), stale_max: Duration::from_secs(60) };

    fn counting(fetches: &Arc<AtomicUsize>, value: u32, delay: Duration) -> impl FnOnce() -> StoreFutureStatic<u32> {
        let fetches = Arc::clone(fetches);
        move || {
            Box::pin(async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok(value)
            })
        }
    }

    type StoreFutureStatic<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

    fn failing() -> impl FnOnce() -> StoreFutureStatic<u32> {
        || Box::pin(async { Err(StoreError::new("down")) })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch() {
        let cache = Arc::new(Refreshing::<(), u32>::new("t", QUICK, 1));
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, fetch) = (Arc::clone(&cache), counting(&fetches, 7, Duration::from_millis(20)));
                tokio::spawn(async move { cache.get((), fetch).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_entry_past_the_ttl_is_served_at_once_while_one_task_refreshes_it() {
        let cache = Refreshing::<(), u32>::new("t", QUICK, 1);
        let fetches = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get((), counting(&fetches, 1, Duration::ZERO)).await, Ok(1));
        assert_eq!(cache.get((), || async { panic!("fresh: no fetch") }).await, Ok(1));
        tokio::time::sleep(QUICK.ttl).await;
        // WHEN the table takes a whole second to answer
        let started = Instant::now();
        for _ in 0..5 {
            assert_eq!(cache.get((), counting(&fetches, 2, Duration::from_secs(1))).await, Ok(1), "the held copy");
        }
        // THEN nobody waited for it, and one refresh went out
        assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
        settle().await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "one fetch at first, one refresh");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(cache.get((), || async { panic!("refreshed: no fetch") }).await, Ok(2));
    }

    #[tokio::test]
    async fn a_failure_serves_the_last_good_copy_and_nothing_without_one() {
        let cache = Refreshing::<(), u32>::new("t", QUICK, 1);
        assert!(cache.get((), failing()).await.is_err(), "no copy: an error");
        assert!(
            cache.get((), || async { panic!("no fetch right after a failure") }).await.is_err(),
            "the table is left alone after a failure"
        );
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        assert_eq!(cache.get((), || async { Ok(1) }).await, Ok(1));
        tokio::time::sleep(QUICK.ttl).await;
        assert_eq!(cache.get((), failing()).await, Ok(1), "stale copy while the store is down");
        settle().await;
        assert_eq!(cache.get((), failing()).await, Ok(1), "and still after the refresh failed");
    }

    #[tokio::test]
    async fn a_copy_older_than_stale_max_is_not_served() {
        let settings = CacheSettings { ttl: Duration::from_millis(20), stale_max: Duration::from_millis(100) };
        let cache = Refreshing::<(), u32>::new("t", settings, 1);
        assert_eq!(cache.get((), || async { Ok(1) }).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        assert!(cache.get((), failing()).await.is_err(), "too old to serve: the request waits and fails");
    }

    #[tokio::test]
    async fn a_file_store_reloads_its_file_and_keeps_the_old_config_when_the_new_one_is_refused() {
        let path = std::env::temp_dir().join(format!("mhp-reload-{}.toml", std::process::id()));
        let example = include_str!("../../config/example.toml");
        std::fs::write(&path, example).unwrap();
        let store = FileStore::load(path.clone()).unwrap();
        assert!(store.user("user0").await.unwrap().is_some());
        std::fs::write(&path, "[[users]]\nusername = \"other\"\npassword_hash = \"$2b$04$invalid\"\n").unwrap();
        assert!(matches!(store.reload(), Err(ReloadError::Refused(_))));
        assert!(store.user("user0").await.unwrap().is_some(), "the old config stays");
        std::fs::write(&path, example.replace("user0", "user9")).unwrap();
        store.reload().unwrap();
        assert!(store.user("user0").await.unwrap().is_none() && store.user("user9").await.unwrap().is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(FileStore::new(Policy::from_toml(example).unwrap()).reload(), Err(ReloadError::NoFile)));
    }
}
