//! Authentication nonces seen, with expiry, so a captured authentication
//! cannot be replayed, not even across a gateway restart: the store trait
//! (backends in `store::sled` and `store::redis`).

use std::future::Future;
use std::pin::Pin;

use eagate_protocol::{DeviceId, Nonce};

/// Why the nonce store failed.
#[derive(Debug, thiserror::Error)]
pub enum NonceStoreError {
    /// sled failed.
    #[error("nonce store: {0}")]
    Sled(#[from] sled::Error),
    /// Redis failed.
    #[error("nonce store: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A boxed future, so stores can be used as `dyn NonceStore`.
pub type NonceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, NonceStoreError>> + Send + 'a>>;

/// The (device, nonce) pairs seen within their lifetime.
pub trait NonceStore: Send + Sync + std::fmt::Debug {
    /// Records (device, nonce) for `ttl_ms`. Returns `false`, recording
    /// nothing, if the pair was already seen and has not expired. Atomic: of
    /// two concurrent claims of one pair exactly one wins. Durable by the
    /// time the device's session begins (`ReportStore::begin_session`, on
    /// the same store), not necessarily when this returns.
    fn claim<'a>(
        &'a self,
        device_id: &'a DeviceId,
        nonce: &'a Nonce,
        now_ms: u64,
        ttl_ms: u64,
    ) -> NonceFuture<'a, bool>;
}
