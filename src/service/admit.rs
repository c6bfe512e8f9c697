//! Stage: the quotas of `[limits]`, the fleet's when shared and reachable,
//! else this process's own. Over a quota is 429 with `Retry-After`.

use super::Service;
use crate::auth::Principal;
use crate::config::Limits;
use crate::contract::ApiError;
use crate::metrics;
use crate::publish::Publisher;

/// A request the quotas let through: one message spent.
pub(super) struct Admitted;

impl<P: Publisher> Service<P> {
    /// Spends one message of the instance's quota and of `principal`'s.
    pub(super) async fn admit(&self, limits: &Limits, principal: &Principal) -> Result<Admitted, ApiError> {
        let user = Some(principal.quota_key());
        let shared = match &self.shared_quotas {
            Some(shared) => shared.admit(limits, user).await.ok(),
            None => None,
        };
        match shared.unwrap_or_else(|| self.quotas.admit(limits, user)) {
            Ok(()) => Ok(Admitted),
            Err(refusal) => {
                metrics::refused(refusal.quota);
                Err(ApiError::TooManyRequests { retry_after: refusal.retry_after })
            }
        }
    }
}
