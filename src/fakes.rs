//! In-process stand-ins for the two edges, for the library's own tests: a
//! publisher that records what it is given (or fails as told) and a config
//! store that can be taken down. With them `cargo test --lib` drives the whole
//! decision path of [`crate::service::Service`] without moto or a broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::StoredHash;
use crate::config::source::ConfigStore;
use crate::config::{Policy, RuleSet};
use crate::contract::BackendLimits;
use crate::publish::iot::IOT_LIMITS;
use crate::publish::{Message, PublishError, Publisher};
use crate::store::{StoreError, StoreFuture};

/// A publisher that keeps every message it accepts; clones share the record.
#[derive(Clone)]
pub struct FakePublisher {
    limits: BackendLimits,
    sent: Arc<Mutex<Vec<Message>>>,
    /// What the next publishes fail with, if anything.
    failure: Arc<Mutex<Option<PublishError>>>,
    /// Publishes never finish (a backend that hangs).
    hang: Arc<AtomicBool>,
}

impl FakePublisher {
    /// A publisher with AWS IoT Core's limits that accepts everything.
    pub fn new() -> FakePublisher {
        FakePublisher { limits: IOT_LIMITS, sent: Arc::default(), failure: Arc::default(), hang: Arc::default() }
    }

    /// From now on, every publish fails with `error`.
    pub fn with_limits(limits: BackendLimits) -> FakePublisher {
        FakePublisher { limits, ..FakePublisher::new() }
    }

    /// Fails every publish from now on with `error`.
    pub fn fail_with(&self, error: PublishError) {
        *self.failure.lock().unwrap() = Some(error);
    }

    /// From now on, publishes never finish.
    pub fn hang(&self) {
        self.hang.store(true, Ordering::SeqCst);
    }

    /// Accepts publishes again: no failure, no hang.
    pub fn recover(&self) {
        *self.failure.lock().unwrap() = None;
        self.hang.store(false, Ordering::SeqCst);
    }

    /// The messages accepted so far.
    pub fn sent(&self) -> Vec<Message> {
        self.sent.lock().unwrap().clone()
    }
}

impl Publisher for FakePublisher {
    fn limits(&self) -> BackendLimits {
        self.limits
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if let Some(error) = self.failure.lock().unwrap().clone() {
            return Err(error);
        }
        self.sent.lock().unwrap().push(message);
        Ok(())
    }
}

/// A config held in memory that answers like a table that is down when told to.
pub struct FakeStore {
    policy: Policy,
    down: AtomicBool,
}

impl FakeStore {
    /// A store serving `toml`, which must be a valid config.
    pub fn new(toml: &str) -> Arc<FakeStore> {
        Arc::new(FakeStore { policy: Policy::from_toml(toml).expect("a valid config"), down: AtomicBool::new(false) })
    }

    /// Makes every read fail (`true`) or succeed again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(StoreError::new("the fake store is down")),
            false => Ok(()),
        }
    }
}

impl ConfigStore for FakeStore {
    fn rules(&self) -> StoreFuture<'_, Arc<RuleSet>> {
        Box::pin(async move { self.check().map(|()| Arc::clone(&self.policy.rules)) })
    }

    fn user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<StoredHash>> {
        Box::pin(async move { self.check().map(|()| self.policy.users.get(username).cloned()) })
    }
}
