//! Stage: the quotas of `[limits]`, the fleet's when shared and reachable,
//! else this process's own. Over a quota is 429 with `Retry-After`.

use std::num::NonZeroU32;

use super::Service;
use crate::auth::Principal;
use crate::config::Limits;
use crate::contract::ApiError;
use crate::metrics;
use crate::publish::Publisher;
use crate::quota::gcra;

/// A request the quotas let through: one message spent.
pub(super) struct Admitted;

impl<P: Publisher> Service<P> {
    /// Spends one message of the instance's quota and of `principal`'s.
    pub(super) async fn admit(&self, limits: &Limits, principal: &Principal) -> Result<Admitted, ApiError> {
        self.admit_n(limits, principal, NonZeroU32::MIN).await
    }

    /// Spends `messages` of each quota, all or none: a batch is admitted
    /// whole or refused whole. One larger than a quota's burst could never be
    /// admitted, so it is 413, not 429.
    pub(super) async fn admit_n(
        &self,
        limits: &Limits,
        principal: &Principal,
        messages: NonZeroU32,
    ) -> Result<Admitted, ApiError> {
        let bursts =
            [gcra(limits.messages_per_second, limits.burst), gcra(limits.user_messages_per_second, limits.user_burst)];
        if let Some(burst) = bursts.into_iter().flatten().map(|(_, burst)| burst).min() {
            if messages.get() > burst {
                return Err(ApiError::TooManyMessages { max: burst as usize, count: messages.get() as usize });
            }
        }
        let user = Some(principal.quota_key());
        let shared = match &self.shared_quotas {
            Some(shared) => shared.admit(limits, user, messages).await.ok(),
            None => None,
        };
        match shared.unwrap_or_else(|| self.quotas.admit_n(limits, user, messages)) {
            Ok(()) => Ok(Admitted),
            Err(refusal) => {
                metrics::refused(refusal.quota);
                Err(ApiError::TooManyRequests { retry_after: refusal.retry_after })
            }
        }
    }
}
