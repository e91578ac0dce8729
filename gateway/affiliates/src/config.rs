//! The programme's rules: currency, commission schedule, holding period,
//! attribution window and referral-credit rules.

use crate::money::{Bps, Currency, Minor};
use crate::trade_fees::{FeeRule, TierBasis, TradeTier, default_tiers};

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// How far ahead of the gateway's clock an event's `occurred_at` may be:
/// the platform's and the gateway's clocks differ a little, but an event
/// cannot have happened in the future.
pub const EVENT_CLOCK_SKEW_MS: u64 = 5 * 60 * 1_000;

/// The most [`ProgrammeConfig::max_event_age_ms`] may be, in days. A
/// payment's commission month is decided by UTC day, and the shortest first
/// month is 28 days (from a first payment in February). A payment at most
/// 26 days and a clock skew late falls at most 27 calendar days before one
/// already rated, so it can never move that payment out of its first month
/// (nor into it: the month's end only moves earlier as the first payment
/// does).
pub const LONGEST_EVENT_AGE_DAYS: u64 = 26;

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
    /// Repeated clicks on one link from one address within this long count
    /// once, and get the first click's id (default 1 hour).
    pub click_dedupe_ms: u64,
    /// Most signups from one source address within
    /// [`ProgrammeConfig::shared_address_window_ms`]; the referrals after
    /// them are held for review (default 3).
    pub shared_address_limit: u32,
    /// The window of the shared-address check (default 24 hours).
    pub shared_address_window_ms: u64,
    /// How close a customer's bought and sold volume of one symbol on one
    /// UTC day must be to count as wash trading, in basis points of the
    /// larger (default 1000: within 10%).
    pub wash_trade_tolerance_bps: u32,
    /// The smallest payout: a payable balance below it waits for more
    /// (default GBP 100.00, in the programme's minor units).
    pub payout_minimum: Minor,
    /// How old an event's `occurred_at` may be when it arrives (default and
    /// at most [`LONGEST_EVENT_AGE_DAYS`]); older events are refused.
    pub max_event_age_ms: u64,
    /// The platform's fee for a fill, by symbol group: the first rule that
    /// matches. Empty (the default): fills earn no per-trade commission.
    pub trade_fees: Vec<FeeRule>,
    /// The per-trade commission's tiers, lowest first (default 0.5%, 1%,
    /// 1.5%, 2% of the fee from 0, 10, 25, 50 active traders).
    pub trade_tiers: Vec<TradeTier>,
    /// What sets an affiliate's tier for a month (default: active referred
    /// traders in the month before).
    pub tier_basis: TierBasis,
}

impl ProgrammeConfig {
    /// How long a click is kept for attribution: its window, plus how late
    /// the signup may be reported and the clocks' difference.
    pub fn click_retention_ms(&self) -> u64 {
        self.attribution_window_ms
            .saturating_add(self.event_age_limit_ms())
            .saturating_add(EVENT_CLOCK_SKEW_MS)
    }

    /// How old an event may be when it arrives: the configured age, never
    /// past [`LONGEST_EVENT_AGE_DAYS`] (which keeps the commission month
    /// stable), however the library is configured.
    pub fn event_age_limit_ms(&self) -> u64 {
        self.max_event_age_ms.min(LONGEST_EVENT_AGE_DAYS * DAY_MS)
    }
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
            click_dedupe_ms: 60 * 60 * 1_000,
            shared_address_limit: 3,
            shared_address_window_ms: DAY_MS,
            wash_trade_tolerance_bps: 1_000,
            payout_minimum: 10_000,
            max_event_age_ms: LONGEST_EVENT_AGE_DAYS * DAY_MS,
            trade_fees: Vec::new(),
            trade_tiers: default_tiers(),
            tier_basis: TierBasis::ActiveTraders,
        }
    }
}
