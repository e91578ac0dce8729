//! Wall-clock time for the IO layer; the sans-IO parts take `now` as an
//! argument instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where a component reads the time: the wall clock ([`unix_ms`]), or a
/// test's.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// Now, as Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
