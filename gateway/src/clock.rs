//! Wall-clock time for the IO layer; the sans-IO parts take `now` as an
//! argument instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
