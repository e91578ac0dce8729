//! Which devices are connected anywhere in a deployment of several
//! processes: each gateway vouches, for a limited time and renewed while
//! the session lives, that it holds a device's session. The store trait
//! (the Redis backend is `crate::store::redis`); one process alone needs
//! none, its own live sessions are the whole truth.

use std::future::Future;
use std::pin::Pin;

/// How long a gateway's word that a device is connected lasts unless it is
/// renewed: a gateway that dies stops renewing, and its devices show offline
/// this long after.
pub const PRESENCE_TTL_MS: u64 = 30_000;

/// Why the presence store failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis failed.
    #[error("presence store: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A boxed future, so stores can be used as `dyn PresenceStore`.
pub type PresenceFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, PresenceError>> + Send + 'a>>;

/// Where the gateways of a deployment say which devices they hold.
pub trait PresenceStore: Send + Sync + std::fmt::Debug {
    /// Records that `device_id` is connected to the gateway `instance` (or
    /// no longer is), and that it was seen at `now_ms`.
    fn mark<'a>(
        &'a self,
        device_id: &'a str,
        instance: &'a str,
        connected: bool,
        now_ms: u64,
    ) -> PresenceFuture<'a, ()>;

    /// Renews the word of `instance` for each of `devices` that it still
    /// holds; never brings back a word a session's end removed.
    fn renew<'a>(
        &'a self,
        devices: &'a [String],
        instance: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, ()>;

    /// How many gateways hold a live session of `device_id`, and when it
    /// was last seen.
    fn presence<'a>(
        &'a self,
        device_id: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, (usize, Option<u64>)>;

    /// How many gateways other than `instance` hold a live session of
    /// `device_id`.
    fn elsewhere<'a>(
        &'a self,
        device_id: &'a str,
        instance: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, usize>;
}
