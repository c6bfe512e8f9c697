//! `X-Message-Id`: 32 upper-case hex digits, unique and ordered by time.
//!
//! Layout (128 bits): 48 bits of Unix milliseconds, 16 bits of a per-process
//! sequence, 64 random bits drawn once per process. Within a process ids
//! strictly increase; across processes (Lambda containers, `serve` replicas)
//! they sort by millisecond and never collide short of a 64-bit coincidence.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// One message's identifier, also the request id in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

/// `milliseconds << 16 | sequence` of the last id handed out by this process.
static LAST: AtomicU64 = AtomicU64::new(0);

fn process_node() -> u64 {
    static NODE: OnceLock<u64> = OnceLock::new();
    *NODE.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without OS randomness, time and pid still separate most processes.
        if getrandom::getrandom(&mut bytes).is_err() {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            bytes = ((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
        }
        u64::from_be_bytes(bytes)
    })
}

impl MessageId {
    /// A new id, greater than every id this process made before.
    pub fn next() -> MessageId {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let floor = (now_ms & 0xFFFF_FFFF_FFFF) << 16;
        // A sequence overflow carries into the millisecond field: ids stay unique
        // and ordered, running at most a few milliseconds ahead under a burst.
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(floor.max(last + 1)))
            .expect("the update closure always returns Some");
        let high = floor.max(prev + 1);
        MessageId((u128::from(high) << 64) | u128::from(process_node()))
    }
}

impl std::str::FromStr for MessageId {
    type Err = ();

    /// An id as [`fmt::Display`] writes it (a stored idempotency record's).
    fn from_str(text: &str) -> Result<MessageId, ()> {
        if text.len() != 32 {
            return Err(());
        }
        u128::from_str_radix(text, 16).map(MessageId).map_err(|_| ())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_upper_case_hex_digits() {
        let id = MessageId::next().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)), "{id}");
    }

    #[test]
    fn an_id_reads_back_from_its_text() {
        let id = MessageId::next();
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert!("12".parse::<MessageId>().is_err());
        assert!("G".repeat(32).parse::<MessageId>().is_err());
    }

    #[test]
    fn ids_strictly_increase_across_threads() {
        let per_thread: Vec<Vec<MessageId>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..50_000).map(|_| MessageId::next()).collect())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids from one thread must increase");
        }
        let mut all: Vec<_> = per_thread.concat();
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), total, "ids must be unique");
    }

    #[test]
    fn the_leading_digits_are_the_current_time() {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let id = MessageId::next();
        let id_ms = (id.0 >> 80) as u64;
        assert!(id_ms >= now_ms && id_ms < now_ms + 1_000, "{id_ms} vs {now_ms}");
    }
}
