//! How many referral-link clicks one source address may make per minute.
//! A flood from a few addresses is answered with 429 before it reaches the
//! ledger, so it costs neither a journal write nor memory beyond one
//! counter per address seen this minute.

use std::collections::HashMap;
use std::sync::Mutex;

/// Clicks per address per UTC minute (a fixed window: simple, and its
/// memory is cleared every minute).
#[derive(Debug)]
pub struct ClickLimit {
    per_minute: u32,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    minute: u64,
    counts: HashMap<String, u32>,
}

impl ClickLimit {
    /// At most `per_minute` clicks from one address per minute.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts a click from `address` at `now_ms`: `Ok` if it is within the
    /// limit, else how many seconds until the next minute lets it in.
    pub fn admit(&self, address: &str, now_ms: u64) -> Result<(), u64> {
        let minute = now_ms / 60_000;
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.minute != minute {
            window.minute = minute;
            window.counts.clear();
        }
        let count = window.counts.entry(address.to_owned()).or_default();
        if *count >= self.per_minute {
            return Err(60 - (now_ms / 1_000) % 60);
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_minute_waits_for_the_next_and_others_go_on() {
        let limit = ClickLimit::new(3);
        let start = 1_790_000_080_000; // 40 s into a minute
        for _ in 0..3 {
            assert_eq!(limit.admit("198.51.100.7", start), Ok(()));
        }
        assert_eq!(limit.admit("198.51.100.7", start + 1_000), Err(19));
        assert_eq!(limit.admit("203.0.113.9", start + 1_000), Ok(()));
        assert_eq!(limit.admit("198.51.100.7", start + 20_000), Ok(()));
        assert_eq!(limit.window.lock().unwrap().counts.len(), 1);
    }
}
