//! What a fleet of `serve` instances shares in Redis or Valkey (`serve --redis
//! URL`): the `Idempotency-Key` records, and the `[limits]` quotas of the
//! instance and of each user. docs/serve.md "A fleet behind a load balancer".
//!
//! Each operation is one Lua script, so one round trip, atomic in the server:
//! the read and the write of a key's record cannot interleave with another
//! instance's, nor a quota's check and update. Time is the Redis server's own
//! (`TIME`), so the instances' clocks need not agree. A single server (or a
//! primary with replicas), not Redis Cluster: a quota's two keys are read
//! together.
//!
//! Unreachable: a request with a key is 503 (a key that cannot be checked
//! cannot promise anything); the quotas fall back to each process's own, and
//! Redis is tried again for them a second later. The outage's start and end
//! are logged once each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tracing::{info, warn};

use crate::config::source::StoreFuture;
use crate::config::{Limits, StoreError};
use crate::idempotency::{Begin, Claim, KeyStore, Outcome, State, IN_FLIGHT_LEASE};
use crate::metrics::Refusal;
use crate::quota::{gcra, SharedQuotas};

/// Longest wait for one Redis call, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the quotas skip Redis after a failure, using each process's own.
const QUOTA_RETRY: Duration = Duration::from_secs(1);

/// A key's claim: the record is `STATE|fingerprint|message id|lease until (ms)|owner`.
/// ARGV: fingerprint, message id, lease ms, in-flight retention ms, owner.
const BEGIN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function in_flight(id)
  return 'I|' .. ARGV[1] .. '|' .. id .. '|' .. string.format('%d', now + tonumber(ARGV[3])) .. '|' .. ARGV[5]
end
local stored = redis.call('GET', KEYS[1])
if not stored then
  redis.call('SET', KEYS[1], in_flight(ARGV[2]), 'PX', ARGV[4])
  return {'fresh'}
end
local state, fingerprint, id, lease_until = string.match(stored, '^(%u)|(%x+)|(%x+)|(%d+)|%x+$')
if fingerprint ~= ARGV[1] then return {'reused'} end
if state == 'D' then return {'done', id} end
if state == 'I' and tonumber(lease_until) > now then return {'inflight'} end
redis.call('SET', KEYS[1], in_flight(id), 'PX', ARGV[4])
return {'unknown', id}
";

/// A claim's outcome (`idempotency::settle`, in Redis): written only over the
/// claim's own in-flight record (or none). ARGV: D (done), U (unknown) or R
/// (release), owner, fingerprint, message id, retention ms. A release deletes
/// the claim's own first claim, and puts back the unknown outcome it took over.
const FINISH: &str = r"
local stored = redis.call('GET', KEYS[1])
local id = ARGV[4]
if stored then
  local state, stored_id, owner = string.match(stored, '^(%u)|%x+|(%x+)|%d+|(%x+)$')
  if state ~= 'I' or owner ~= ARGV[2] then return 0 end
  id = stored_id
end
local outcome = ARGV[1]
if outcome == 'R' then
  if not stored then return 0 end
  if id == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  outcome = 'U'
end
redis.call('SET', KEYS[1], outcome .. '|' .. ARGV[3] .. '|' .. id .. '|0|' .. ARGV[2], 'PX', ARGV[5])
return 1
";

/// GCRA for the instance quota (KEYS[1]) and a user's (KEYS[2]): ARGV holds
/// each one's period in microseconds and burst (a burst of 0: that quota is
/// off). Both are checked before either is spent; the answer is
/// `{0, 0}` admitted, else `{1 or 2, microseconds to wait}`.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function check(key, period, burst)
  if burst == 0 then return nil end
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + period
  local allowed_at = next_tat - period * burst
  if allowed_at > now then return {false, allowed_at - now} end
  return {true, next_tat}
end
local instance = check(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if instance and not instance[1] then return {1, instance[2]} end
local user = check(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if user and not user[1] then return {2, user[2]} end
for i, spent in ipairs({instance or false, user or false}) do
  if spent then
    redis.call('SET', KEYS[i], string.format('%d', spent[2]), 'PX', math.ceil((spent[2] - now) / 1000) + 1)
  end
end
return {0, 0}
";

/// The fleet's shared state in one Redis.
pub struct Shared {
    connection: ConnectionManager,
    begin: Script,
    finish: Script,
    admit: Script,
    /// Instant (ms after `epoch`) before which the quotas do not try Redis.
    quota_skip_until_ms: AtomicU64,
    epoch: Instant,
    /// Whether the outage in course was logged.
    down: AtomicBool,
}

/// The URL named no Redis this client can speak to.
#[derive(Debug, thiserror::Error)]
#[error("--redis {url}: {reason}")]
pub struct RedisUrlError {
    url: String,
    reason: String,
}

impl Shared {
    /// A client of the Redis at `url` (`redis://HOST:PORT/DB`, `redis+unix:///PATH`;
    /// not `rediss://`: this build has no TLS to Redis). Connects on first use,
    /// so `serve` starts while Redis is down.
    pub fn new(url: &str) -> Result<Shared, RedisUrlError> {
        let refused = |e: redis::RedisError| RedisUrlError { url: redact(url), reason: e.to_string() };
        let client = Client::open(url).map_err(refused)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(refused)?;
        Ok(Shared {
            connection,
            begin: Script::new(BEGIN),
            finish: Script::new(FINISH),
            admit: Script::new(ADMIT),
            quota_skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
        })
    }

    /// Runs one call, bounded by [`CALL_TIMEOUT`]; logs the outage's first failure and its end.
    async fn call<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let result = match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError(format!("Redis: {error}"))),
            Err(_) => Err(StoreError(format!("Redis did not answer within {} ms", CALL_TIMEOUT.as_millis()))),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => info!("Redis answers again"),
            Err(error) if !self.down.swap(true, Ordering::Relaxed) => warn!(
                %error,
                "Redis is unreachable: requests with an Idempotency-Key get 503 and the quotas are each process's own until it is back"
            ),
            _ => {}
        }
        result
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// `url` without its password (user info, and a query, which may carry `pass=`), for messages.
fn redact(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(before, _)| before);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl KeyStore for Shared {
    fn begin<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, Begin> {
        Box::pin(async move {
            let mut invocation = self.begin.key(&claim.id);
            invocation
                .arg(&claim.fingerprint)
                .arg(claim.message_id.to_string())
                .arg(IN_FLIGHT_LEASE.as_millis() as u64)
                .arg(claim.keep_for(State::InFlight).as_millis() as u64)
                .arg(claim.owner.to_string());
            let answer: Vec<String> = self.call(invocation).await?;
            let id = || {
                answer
                    .get(1)
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| StoreError(format!("Redis answered {answer:?}")))
            };
            Ok(match answer.first().map(String::as_str) {
                Some("fresh") => Begin::Fresh,
                Some("done") => Begin::Done(id()?),
                Some("unknown") => Begin::UnknownOutcome(id()?),
                Some("inflight") => Begin::InFlight,
                Some("reused") => Begin::Reused,
                _ => return Err(StoreError(format!("Redis answered {answer:?}"))),
            })
        })
    }

    fn finish<'a>(&'a self, claim: &'a Claim, outcome: Outcome) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let action = match outcome {
                Outcome::Delivered => "D",
                Outcome::Unknown => "U",
                Outcome::NotDelivered => "R",
            };
            let mut invocation = self.finish.key(&claim.id);
            invocation
                .arg(action)
                .arg(claim.owner.to_string())
                .arg(&claim.fingerprint)
                .arg(claim.message_id.to_string())
                .arg(claim.retention.as_millis() as u64);
            let _: i64 = self.call(invocation).await?;
            Ok(())
        })
    }
}

/// A quota's period in microseconds (at least 1) and burst; `(0, 0)` when off.
fn gcra_args(rate: Option<f64>, burst: Option<u32>) -> (u64, u32) {
    gcra(rate, burst).map_or((0, 0), |(period, burst)| ((period.as_micros() as u64).max(1), burst))
}

impl SharedQuotas for Shared {
    fn admit<'a>(&'a self, limits: &'a Limits, user: Option<&'a str>) -> StoreFuture<'a, Result<(), (Refusal, u32)>> {
        Box::pin(async move {
            let (instance_period, instance_burst) = gcra_args(limits.messages_per_second, limits.burst);
            let (user_period, user_burst) = match user {
                Some(_) => gcra_args(limits.user_messages_per_second, limits.user_burst),
                None => (0, 0),
            };
            if instance_burst == 0 && user_burst == 0 {
                return Ok(Ok(()));
            }
            if self.now_ms() < self.quota_skip_until_ms.load(Ordering::Relaxed) {
                return Err(StoreError("Redis was unreachable a moment ago".into()));
            }
            let mut invocation = self.admit.key("mhp:quota:instance");
            invocation
                .key(format!("mhp:quota:user:{}", user.unwrap_or("")))
                .arg(instance_period)
                .arg(instance_burst)
                .arg(user_period)
                .arg(user_burst);
            let answer: Vec<i64> = match self.call(invocation).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.quota_skip_until_ms.store(self.now_ms() + QUOTA_RETRY.as_millis() as u64, Ordering::Relaxed);
                    return Err(error);
                }
            };
            let wait = |micros: i64| (micros.max(0) as u64).div_ceil(1_000_000).clamp(1, u64::from(u32::MAX)) as u32;
            Ok(match answer.as_slice() {
                [0, _] => Ok(()),
                [1, micros] => Err((Refusal::Instance, wait(*micros))),
                [2, micros] => Err((Refusal::User, wait(*micros))),
                _ => return Err(StoreError(format!("Redis answered {answer:?}"))),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_s_password_never_reaches_a_message() {
        assert_eq!(redact("redis://:hunter2@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(redact("redis://app:hunter2@cache"), "redis://***@cache");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact("redis+unix:///run/redis.sock?pass=hunter2"), "redis+unix:///run/redis.sock");
        let error = Shared::new("redis://:hunter2@[").err().expect("not a URL");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
