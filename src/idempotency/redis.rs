//! `Idempotency-Key` records in a fleet's Redis (`serve --redis`): a record is
//! `STATE|fingerprint|message id|lease until (ms)|owner` under the claim's id,
//! expiring with its retention. A claim and an outcome are one Lua script
//! each, so the read and the write of a record cannot interleave with another
//! instance's. Unreachable, a request with a key is 503: a key that cannot be
//! checked promises nothing.

use super::{Begin, Claim, KeyStore, Outcome, State};
use crate::store::redis::{unexpected, Redis};
use crate::store::StoreFuture;

/// A key's claim (`idempotency::decide`, in Redis).
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

/// The records of a fleet, in its Redis.
pub struct RedisKeys {
    redis: Redis,
    begin: redis::Script,
    finish: redis::Script,
}

impl RedisKeys {
    /// Records in `redis`.
    pub fn new(redis: Redis) -> RedisKeys {
        RedisKeys { redis, begin: redis::Script::new(BEGIN), finish: redis::Script::new(FINISH) }
    }
}

impl KeyStore for RedisKeys {
    fn begin<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, Begin> {
        Box::pin(async move {
            let mut invocation = self.begin.key(&claim.id);
            invocation
                .arg(&claim.fingerprint)
                .arg(claim.message_id.to_string())
                .arg(claim.lease.as_millis() as u64)
                .arg(claim.keep_for(State::InFlight).as_millis() as u64)
                .arg(claim.owner.to_string());
            let answer: Vec<String> = self.redis.call(invocation).await?;
            let id = || answer.get(1).and_then(|id| id.parse().ok()).ok_or_else(|| unexpected(&answer));
            Ok(match answer.first().map(String::as_str) {
                Some("fresh") => Begin::Fresh,
                Some("done") => Begin::Done(id()?),
                Some("unknown") => Begin::UnknownOutcome(id()?),
                Some("inflight") => Begin::InFlight,
                Some("reused") => Begin::Reused,
                _ => return Err(unexpected(&answer)),
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
            let _: i64 = self.redis.call(invocation).await?;
            Ok(())
        })
    }
}
