//! What the stores behind a request have in common: the config, the
//! `Idempotency-Key` records and the shared quotas each answer through a
//! boxed future, and fail with a [`StoreError`] that keeps its cause.

#[cfg(feature = "serve")]
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use crate::cause::Cause;

/// A store could not answer; the request gets 503, never 401. It says what
/// its cause says, and keeps the cause's own chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(Cause);

impl StoreError {
    /// A failure of a store, for `cause`.
    pub fn new(cause: impl Into<Cause>) -> StoreError {
        StoreError(cause.into())
    }

    /// A store's call failed with `error`.
    pub fn of(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError(Cause::new(error))
    }
}

/// What a store's calls return: a boxed future, so that the service holds any
/// store as a trait object.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;
