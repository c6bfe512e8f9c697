//! Stage: who is calling. Basic against the config's password hashes (each
//! slow hash admitted by the caller's source address's budget), or a client
//! certificate; the answer is an [`Identity`] or a 401.

use super::answer::store_down;
use super::exchange::Exchange;
use super::Service;
use crate::auth::Identity;
use crate::config::RuleSet;
use crate::contract::{ApiError, ClientId, HttpRequest};
use crate::metrics::{self, Refusal};
use crate::publish::Publisher;

impl<P: Publisher> Service<P> {
    /// The caller's identity; `asked` is the `client_id` the request asks for.
    /// A config store that fails is 503, never 401.
    pub(super) async fn authenticate(
        &self,
        request: &HttpRequest<()>,
        asked: Option<&ClientId>,
        rules: &RuleSet,
        exchange: &Exchange,
    ) -> Result<Identity, ApiError> {
        exchange.step("authenticating");
        let message_id = exchange.message_id;
        let lookup = |name: String| async move { self.config.user(&name).await.map_err(store_down(message_id)) };
        let admit_hash = || {
            self.quotas.admit_password_check(&rules.limits, request.source_ip).map_err(|retry_after| {
                metrics::refused(Refusal::PasswordChecks);
                ApiError::TooManyLoginAttempts { retry_after }
            })
        };
        self.authenticator.authenticate(request, asked, message_id, lookup, admit_hash).await
    }
}
