//! An affiliate's stats, per day or per month over a bounded range.

use axum::Json;
use axum::extract::{Path, Query, State};
use eagate_affiliates::calendar::{self, day_of};
use eagate_affiliates::{Currency, Granularity};
use serde::{Deserialize, Serialize};

use super::AffiliateReader;
use super::pages::date_bound;
use crate::http::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    granularity: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// One period of an affiliate's stats. Earnings are of the commissions
/// earned in the period, by where they stand now.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeriodView {
    /// `YYYY-MM` or `YYYY-MM-DD`; `total` for the whole range.
    pub period: String,
    /// Referral links followed.
    pub clicks: u64,
    /// Signups attributed.
    pub signups: u64,
    /// Referred users' first payments.
    pub conversions: u64,
    /// Conversions per signup, in basis points (2500 = 25%).
    pub conversion_rate_bps: u32,
    /// Commissions earned.
    pub earned_minor: i64,
    /// Still in the holding period.
    pub pending_minor: i64,
    /// Due at the next payout, net of clawbacks.
    pub payable_minor: i64,
    /// Paid out.
    pub paid_minor: i64,
    /// Taken back by refunds.
    pub reversed_minor: i64,
}

/// An affiliate's stats.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsView {
    /// The affiliate.
    pub affiliate_id: String,
    /// The programme's currency.
    pub currency: Currency,
    /// `day` or `month`.
    pub granularity: String,
    /// First day of the range.
    pub from: String,
    /// Last day of the range.
    pub to: String,
    /// The whole range.
    pub totals: PeriodView,
    /// Each period in the range, oldest first.
    pub periods: Vec<PeriodView>,
}

fn period_view(period: String, stats: &eagate_affiliates::programme::PeriodStats) -> PeriodView {
    PeriodView {
        period,
        clicks: stats.clicks,
        signups: stats.signups,
        conversions: stats.conversions,
        conversion_rate_bps: stats.conversion_rate_bps,
        earned_minor: stats.earnings.earned,
        pending_minor: stats.earnings.pending,
        payable_minor: stats.earnings.payable,
        paid_minor: stats.earnings.paid,
        reversed_minor: stats.earnings.reversed,
    }
}

pub(super) async fn stats(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(affiliate_id): Path<String>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    reader.may_read(&affiliate_id)?;
    let Query(query) = query?;
    let (granularity, max_days) = match query.granularity.as_deref() {
        None | Some("month") => (Granularity::Month, 3_660),
        Some("day") => (Granularity::Day, 366),
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "granularity must be day or month, not {other:?}"
            )));
        }
    };
    let now = state.affiliates.now_ms();
    let to = date_bound("to", query.to.as_deref())?.unwrap_or(day_of(now));
    let from = date_bound("from", query.from.as_deref())?.unwrap_or(match granularity {
        Granularity::Day => to - 29,
        Granularity::Month => calendar::month_start(to - 334),
    });
    if from > to {
        return Err(ApiError::Unprocessable(
            "from must not be after to".to_owned(),
        ));
    }
    if to - from >= max_days {
        return Err(ApiError::Unprocessable(format!(
            "at most {max_days} days per request at this granularity"
        )));
    }
    let programme = state.affiliates.ledger.read();
    let stats = programme
        .stats(&affiliate_id, granularity, from, to, now)
        .ok_or_else(|| ApiError::NotFound(format!("no affiliate {affiliate_id}")))?;
    Ok(Json(StatsView {
        affiliate_id,
        currency: stats.currency,
        granularity: match granularity {
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
        .to_owned(),
        from: calendar::format_date(from),
        to: calendar::format_date(to),
        totals: period_view("total".to_owned(), &stats.totals),
        periods: stats
            .periods
            .iter()
            .map(|(period, s)| period_view(period.clone(), s))
            .collect(),
    }))
}
