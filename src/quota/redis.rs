//! The instance and user quotas of `[limits]` shared by a fleet, in its Redis
//! (`serve --redis`): one GCRA per quota, checked and spent in one Lua script.
//! Unreachable, each process enforces its own quotas, and Redis is tried
//! again for them a second later.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{gcra, QuotaRefusal, SharedQuotas};
use crate::config::Limits;
use crate::metrics::Refusal;
use crate::store::redis::{unexpected, Redis};
use crate::store::{StoreError, StoreFuture};

/// How long the quotas skip Redis after a failure, using each process's own.
const QUOTA_RETRY: Duration = Duration::from_secs(1);

/// GCRA for the instance quota (KEYS[1]) and a user's (KEYS[2]): ARGV holds
/// each one's period in microseconds and burst (a burst of 0: that quota is
/// off), then ARGV[5] the messages to spend. Both are checked before either is spent; the answer is
/// `{0, 0}` admitted, else `{1 or 2, microseconds to wait}`.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[5])
local function check(key, period, burst)
  if burst == 0 then return nil end
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + period * cost
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

/// The quotas a fleet shares.
pub struct RedisQuotas {
    redis: Redis,
    admit: redis::Script,
    /// Instant (ms after `epoch`) before which the quotas do not try Redis.
    skip_until_ms: AtomicU64,
    epoch: Instant,
}

impl RedisQuotas {
    /// Quotas kept in `redis`.
    pub fn new(redis: Redis) -> RedisQuotas {
        RedisQuotas { redis, admit: redis::Script::new(ADMIT), skip_until_ms: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A quota's period in microseconds (at least 1) and burst; `(0, 0)` when off.
fn gcra_args(rate: Option<f64>, burst: Option<u32>) -> (u64, u32) {
    gcra(rate, burst).map_or((0, 0), |(period, burst)| ((period.as_micros() as u64).max(1), burst))
}

impl SharedQuotas for RedisQuotas {
    fn admit<'a>(
        &'a self,
        limits: &'a Limits,
        user: Option<&'a str>,
        messages: NonZeroU32,
    ) -> StoreFuture<'a, Result<(), QuotaRefusal>> {
        Box::pin(async move {
            let (instance_period, instance_burst) = gcra_args(limits.messages_per_second, limits.burst);
            let (user_period, user_burst) = match user {
                Some(_) => gcra_args(limits.user_messages_per_second, limits.user_burst),
                None => (0, 0),
            };
            if instance_burst == 0 && user_burst == 0 {
                return Ok(Ok(()));
            }
            if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
                return Err(StoreError::new("Redis was unreachable a moment ago"));
            }
            let mut invocation = self.admit.key("mhp:quota:instance");
            invocation
                .key(format!("mhp:quota:user:{}", user.unwrap_or("")))
                .arg(instance_period)
                .arg(instance_burst)
                .arg(user_period)
                .arg(user_burst)
                .arg(messages.get());
            let answer: Vec<i64> = match self.redis.call(invocation).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.skip_until_ms.store(self.now_ms() + QUOTA_RETRY.as_millis() as u64, Ordering::Relaxed);
                    return Err(error);
                }
            };
            let wait = |micros: i64| (micros.max(0) as u64).div_ceil(1_000_000).clamp(1, u64::from(u32::MAX)) as u32;
            Ok(match answer.as_slice() {
                [0, _] => Ok(()),
                [1, micros] => Err(QuotaRefusal { quota: Refusal::Instance, retry_after: wait(*micros) }),
                [2, micros] => Err(QuotaRefusal { quota: Refusal::User, retry_after: wait(*micros) }),
                _ => return Err(unexpected(&answer)),
            })
        })
    }
}
