//! A request's body, read only once the request may go ahead: a caller who
//! may not publish never makes the server buffer a byte of it.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::ApiError;

/// What reading a body returns.
pub type BodyFuture = Pin<Box<dyn Future<Output = Result<Bytes, ApiError>> + Send>>;

/// A request's body, in memory (a Lambda event) or still on its connection (`serve`).
pub trait Body: Send + 'static {
    /// Its length as its sender declared it (`Content-Length`), or as known.
    fn declared_len(&self) -> Option<u64>;

    /// The whole body: 413 past `limit` bytes, 400 `invalid_body` when it cannot be read.
    fn read(self: Box<Self>, limit: usize) -> BodyFuture;
}

impl Body for Bytes {
    fn declared_len(&self) -> Option<u64> {
        Some(self.len() as u64)
    }

    fn read(self: Box<Self>, limit: usize) -> BodyFuture {
        let body = *self;
        let read = if body.len() > limit { Err(ApiError::PayloadTooLarge { max: limit }) } else { Ok(body) };
        Box::pin(std::future::ready(read))
    }
}
