//! `serve`'s records without `--redis`: in this process's memory, in a moka
//! cache whose entry compute makes a claim's read and write one step.

use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;

use super::{decide, now_ms, settle, Begin, Claim, KeyStore, Outcome, Record, Settle};
use crate::store::StoreFuture;

/// Keys `serve` keeps in memory (without `--redis`); beyond, the least
/// recently used is forgotten, and a retry of it publishes again.
pub const MEMORY_CAPACITY: u64 = 100_000;

/// A record in memory, with when it goes.
#[derive(Debug, Clone)]
struct Kept {
    record: Record,
    expires_at: Instant,
}

/// Each entry goes at its own `expires_at`.
struct KeptExpiry;

impl moka::Expiry<String, Kept> for KeptExpiry {
    fn expire_after_create(&self, _: &String, kept: &Kept, now: Instant) -> Option<Duration> {
        Some(kept.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(&self, _: &String, kept: &Kept, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(kept.expires_at.saturating_duration_since(now))
    }
}

/// `serve`'s records without `--redis`: in this process, at most
/// [`MEMORY_CAPACITY`] keys, the least recently used forgotten first, each for
/// its retention after its last write.
pub struct MemoryKeys {
    records: Cache<String, Kept>,
}

impl Default for MemoryKeys {
    fn default() -> Self {
        MemoryKeys::with_capacity(MEMORY_CAPACITY)
    }
}

impl MemoryKeys {
    /// A store of at most `capacity` keys.
    pub fn with_capacity(capacity: u64) -> MemoryKeys {
        MemoryKeys {
            records: Cache::builder()
                .max_capacity(capacity)
                // Plain LRU: TinyLFU's admission could refuse a new key's record,
                // and a refused record is a key that guards nothing.
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(KeptExpiry)
                .build(),
        }
    }
}

impl KeyStore for MemoryKeys {
    fn begin<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, Begin> {
        Box::pin(async move {
            let mut begin = Begin::InFlight;
            self.records
                .entry_by_ref(&claim.id)
                .and_compute_with(|entry| {
                    let (decided, write) = decide(entry.as_ref().map(|e| &e.value().record), claim, now_ms());
                    begin = decided;
                    let op = match write {
                        Some(record) => {
                            let expires_at = Instant::now() + claim.keep_for(record.state);
                            Op::Put(Kept { record, expires_at })
                        }
                        None => Op::Nop,
                    };
                    std::future::ready(op)
                })
                .await;
            Ok(begin)
        })
    }

    fn finish<'a>(&'a self, claim: &'a Claim, outcome: Outcome) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.records
                .entry_by_ref(&claim.id)
                .and_compute_with(|entry| {
                    let op = match settle(entry.as_ref().map(|e| &e.value().record), claim, outcome) {
                        Settle::Keep => Op::Nop,
                        Settle::Delete => Op::Remove,
                        Settle::Write(record) => {
                            let expires_at = Instant::now() + claim.keep_for(record.state);
                            Op::Put(Kept { record, expires_at })
                        }
                    };
                    std::future::ready(op)
                })
                .await;
            Ok(())
        })
    }
}

/// A store that is down: every claim is refused (for tests of that path).
#[cfg(test)]
pub struct DownKeys;

#[cfg(test)]
impl KeyStore for DownKeys {
    fn begin<'a>(&'a self, _: &'a Claim) -> StoreFuture<'a, Begin> {
        Box::pin(async { Err(crate::store::StoreError::new("the key store is down")) })
    }

    fn finish<'a>(&'a self, _: &'a Claim, _: Outcome) -> StoreFuture<'a, ()> {
        Box::pin(async { Err(crate::store::StoreError::new("the key store is down")) })
    }
}
