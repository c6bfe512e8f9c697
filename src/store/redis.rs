//! The Redis (or Valkey) a fleet of `serve` instances shares (`serve --redis
//! URL`): one connection, each call bounded in time, an outage logged once at
//! its start and once at its end. What lives there is its users' business:
//! `Idempotency-Key` records (`idempotency::redis`) and the quotas
//! (`quota::redis`). docs/serve.md "A fleet behind a load balancer".
//!
//! Each operation is one Lua script, so one round trip, atomic in the server.
//! Time is the Redis server's own (`TIME`), so the instances' clocks need not
//! agree. A single server (or a primary with replicas), not Redis Cluster: a
//! quota's two keys are read together.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, FromRedisValue, ScriptInvocation};
use tracing::{info, warn};

use super::StoreError;

/// Longest wait for one Redis call, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// A fleet's Redis: clones share the connection and the outage's state.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    /// Whether the outage in course was logged.
    down: Arc<AtomicBool>,
}

/// The URL named no Redis this client can speak to.
#[derive(Debug, thiserror::Error)]
#[error("--redis {url}: not a Redis URL this build can use")]
pub struct RedisUrlError {
    /// The URL, its password removed.
    url: String,
    #[source]
    cause: redis::RedisError,
}

/// Redis did not answer a call, or answered something else than asked.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The call failed.
    #[error("Redis failed")]
    Failed(#[source] redis::RedisError),
    /// No answer within [`CALL_TIMEOUT`].
    #[error("Redis did not answer within {} ms", CALL_TIMEOUT.as_millis())]
    Timeout,
    /// An answer no script of ours gives.
    #[error("Redis answered {0}")]
    Unexpected(String),
}

impl Redis {
    /// A client of the Redis at `url` (`redis://HOST:PORT/DB`, `redis+unix:///PATH`;
    /// not `rediss://`: this build has no TLS to Redis). Connects on first use,
    /// so `serve` starts while Redis is down.
    pub fn new(url: &str) -> Result<Redis, RedisUrlError> {
        let refused = |cause| RedisUrlError { url: redact(url), cause };
        let client = Client::open(url).map_err(refused)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(refused)?;
        Ok(Redis { connection, down: Arc::default() })
    }

    /// Runs one script call, bounded by [`CALL_TIMEOUT`]; logs the outage's first failure and its end.
    pub async fn call<T: FromRedisValue>(&self, invocation: ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let result = match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisError::Failed(error)),
            Err(_) => Err(RedisError::Timeout),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => info!("Redis answers again"),
            Err(error) if !self.down.swap(true, Ordering::Relaxed) => warn!(
                error = %crate::cause::Chain(error),
                "Redis is unreachable: requests with an Idempotency-Key get 503 and the quotas are each process's own until it is back"
            ),
            _ => {}
        }
        result.map_err(StoreError::of)
    }
}

/// An answer of Redis that no script of ours gives.
pub fn unexpected(answer: &impl std::fmt::Debug) -> StoreError {
    StoreError::of(RedisError::Unexpected(format!("{answer:?}")))
}

/// `url` without its password (user info, and a query, which may carry `pass=`), for messages.
fn redact(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(before, _)| before);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_s_password_never_reaches_a_message() {
        for (url, redacted) in [
            ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
            ("redis://app:hunter2@cache", "redis://***@cache"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("redis+unix:///run/redis.sock?pass=hunter2", "redis+unix:///run/redis.sock"),
        ] {
            assert_eq!(redact(url), redacted);
        }
        let error = Redis::new("redis://:hunter2@[").err().expect("not a URL");
        assert!(!crate::cause::Chain(&error).to_string().contains("hunter2"), "{error}");
    }
}
