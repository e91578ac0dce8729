//! The programme's rules: currency, commission schedule, holding period,
//! attribution window and referral-credit rules.

use crate::money::{Bps, Currency, Minor};

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// The programme's rules. Changing them affects only what is decided after
/// the change: every fact keeps the rate, amount and dates it was decided
/// with, so a restart never recomputes history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammeConfig {
    /// The one currency payments, commissions and credits are in.
    pub currency: Currency,
    /// Commission on a billing period 1 payment (default 30%).
    pub first_month_rate: Bps,
    /// Commission on every later period's payment (default 15%).
    pub later_months_rate: Bps,
    /// One-off bonus on the first payment when the referred user first
    /// trades (default 5%).
    pub first_trade_bonus_rate: Bps,
    /// How long a commission stays pending before it may be paid: the
    /// platform's refund window (default 30 days).
    pub holding_period_ms: u64,
    /// How long after a click a signup from it still counts (default 30 days).
    pub attribution_window_ms: u64,
    /// What a customer referred by a customer must have spent, net of
    /// refunds, before either gets credit (default GBP 50.00).
    pub credit_threshold: Minor,
    /// Credit for the referring customer (default GBP 10.00).
    pub referrer_credit: Minor,
    /// Credit for the referred customer (default GBP 10.00).
    pub referred_credit: Minor,
    /// Most customers one customer may refer per UTC day (default 10).
    pub daily_referral_limit: u32,
}

impl Default for ProgrammeConfig {
    fn default() -> Self {
        Self {
            currency: Currency::GBP,
            first_month_rate: Bps(3_000),
            later_months_rate: Bps(1_500),
            first_trade_bonus_rate: Bps(500),
            holding_period_ms: 30 * DAY_MS,
            attribution_window_ms: 30 * DAY_MS,
            credit_threshold: 5_000,
            referrer_credit: 1_000,
            referred_credit: 1_000,
            daily_referral_limit: 10,
        }
    }
}
