//! An affiliate's stats: clicks, signups, conversions, first trades and
//! earnings per day or month, read from the state's per-day counters and
//! the ledger.

use std::collections::BTreeMap;

use super::{Balances, Programme};
use crate::calendar::{self, day_of};
use crate::money::{Currency, TotalOutOfRange};

impl Programme {
    /// An affiliate's stats over `[from_day, to_day]`, by day or by month,
    /// at `now`. Earnings are by the period the commission was earned in:
    /// of what was earned then, how much is pending, payable, paid or
    /// reversed now.
    pub fn stats(
        &self,
        affiliate_id: &str,
        granularity: Granularity,
        from_day: i64,
        to_day: i64,
        now_ms: u64,
    ) -> Result<Option<Stats>, TotalOutOfRange> {
        let Some(affiliate) = self.affiliates.get(affiliate_id) else {
            return Ok(None);
        };
        let period_of = |day: i64| match granularity {
            Granularity::Day => day,
            Granularity::Month => calendar::month_start(day),
        };
        let mut periods: BTreeMap<i64, PeriodStats> = BTreeMap::new();
        let mut day = period_of(from_day);
        while day <= to_day {
            periods.insert(day, PeriodStats::default());
            day = match granularity {
                Granularity::Day => day + 1,
                Granularity::Month => calendar::month_start(day + 31),
            };
        }
        let mut totals = PeriodStats::default();
        let in_range = |day: i64| (from_day..=to_day).contains(&day);
        type Count = fn(&mut PeriodStats, u64);
        let counters: [(&BTreeMap<i64, u64>, Count); 4] = [
            (&affiliate.clicks_by_day, |s, n| s.clicks += n),
            (&affiliate.signups_by_day, |s, n| s.signups += n),
            (&affiliate.conversions_by_day, |s, n| s.conversions += n),
            (&affiliate.first_trades_by_day, |s, n| s.first_trades += n),
        ];
        for (by_day, count) in counters {
            for (&day, &n) in by_day.range(from_day..=to_day) {
                if let Some(stats) = periods.get_mut(&period_of(day)) {
                    count(stats, n);
                }
                count(&mut totals, n);
            }
        }
        for entry in self.entries_of(affiliate_id) {
            let day = day_of(entry.earned_at_ms);
            if !in_range(day) {
                continue;
            }
            if let Some(stats) = periods.get_mut(&period_of(day)) {
                stats.earnings.add(entry, now_ms)?;
            }
            totals.earnings.add(entry, now_ms)?;
        }
        let label = |day: i64| match granularity {
            Granularity::Day => calendar::format_date(day),
            Granularity::Month => calendar::format_date(day)[..7].to_owned(),
        };
        Ok(Some(Stats {
            currency: self.config.currency,
            totals: totals.with_rate(),
            periods: periods
                .into_iter()
                .map(|(day, stats)| (label(day), stats.with_rate()))
                .collect(),
        }))
    }
}

/// How stats are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// By UTC day.
    Day,
    /// By UTC calendar month.
    Month,
}

/// An affiliate's activity and earnings in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodStats {
    /// Referral links followed.
    pub clicks: u64,
    /// Signups attributed.
    pub signups: u64,
    /// Referred users' first payments.
    pub conversions: u64,
    /// `conversions / signups` in basis points, rounded down (0 without
    /// signups).
    pub conversion_rate_bps: u32,
    /// Referred users' first fills (reported by their devices).
    pub first_trades: u64,
    /// Commissions earned in the period, by where they stand now.
    pub earnings: Balances,
}

impl PeriodStats {
    fn with_rate(mut self) -> Self {
        self.conversion_rate_bps = self
            .conversions
            .saturating_mul(10_000)
            .checked_div(self.signups)
            .map_or(0, |rate| rate.min(u64::from(u32::MAX)) as u32);
        self
    }
}

/// An affiliate's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The programme's currency.
    pub currency: Currency,
    /// The whole range.
    pub totals: PeriodStats,
    /// Each period (`YYYY-MM-DD` or `YYYY-MM`), in order.
    pub periods: Vec<(String, PeriodStats)>,
}
