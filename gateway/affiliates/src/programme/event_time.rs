//! When the platform's events happened. The platform says (`occurred_at`),
//! and every rule that depends on time uses that, not the moment the event
//! reached the gateway: a payment retried a day late still counts on the
//! day it was taken. What it may say is bounded: not ahead of the gateway's
//! clock by more than [`EVENT_CLOCK_SKEW_MS`], and not older than the
//! programme's [`max_event_age_ms`](crate::ProgrammeConfig::max_event_age_ms)
//! (refunds excepted: see [`check_not_ahead`]).

use super::Programme;
use crate::calendar::format_instant;
use crate::config::{DAY_MS, EVENT_CLOCK_SKEW_MS};

/// Why an event's `occurred_at` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTimeError {
    /// Later than the gateway's clock allows.
    #[error(
        "occurred_at {occurred_at} is {ahead_s} s ahead of the gateway's clock; at most {allowed_s} s of clock difference is accepted"
    )]
    InTheFuture {
        /// The event's time, RFC 3339.
        occurred_at: String,
        /// How far ahead, in seconds.
        ahead_s: u64,
        /// The skew accepted, in seconds.
        allowed_s: u64,
    },
    /// Older than the programme takes events.
    #[error(
        "occurred_at {occurred_at} is {age_days} days ago; events older than {limit_days} days are refused; an admin corrects what they would have changed with an adjustment"
    )]
    TooOld {
        /// The event's time, RFC 3339.
        occurred_at: String,
        /// Its age in whole days.
        age_days: u64,
        /// The limit in days.
        limit_days: u64,
    },
}

impl Programme {
    /// Checks that an event said to have happened at `occurred_at_ms` may be
    /// taken at `now_ms`: not from the future, and not older than the
    /// programme takes events.
    pub(super) fn check_occurred(
        &self,
        occurred_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), EventTimeError> {
        check_not_ahead(occurred_at_ms, now_ms)?;
        let limit = self.config.event_age_limit_ms();
        let age = now_ms.saturating_sub(occurred_at_ms);
        if age > limit {
            return Err(EventTimeError::TooOld {
                occurred_at: format_instant(occurred_at_ms),
                age_days: age / DAY_MS,
                limit_days: limit / DAY_MS,
            });
        }
        Ok(())
    }
}

/// Checks that an event said to have happened at `occurred_at_ms` is not
/// from the future, as seen at `now_ms`. (Refunds are taken at any age: a
/// late one cannot move a commission's month, and refusing it would leave
/// the affiliate paid on money the customer got back.)
pub(super) fn check_not_ahead(occurred_at_ms: u64, now_ms: u64) -> Result<(), EventTimeError> {
    if occurred_at_ms > now_ms.saturating_add(EVENT_CLOCK_SKEW_MS) {
        return Err(EventTimeError::InTheFuture {
            occurred_at: format_instant(occurred_at_ms),
            ahead_s: (occurred_at_ms - now_ms) / 1_000,
            allowed_s: EVENT_CLOCK_SKEW_MS / 1_000,
        });
    }
    Ok(())
}
