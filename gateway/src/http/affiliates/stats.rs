//! An affiliate's stats, per day or per month over a bounded range.

use axum::Json;
use axum::extract::{Path, Query, State};
use eagate_affiliates::calendar::{self, day_of};
use eagate_affiliates::{Currency, Granularity};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::pages::date_bound;
use super::{AffiliatePath, AffiliateReader};
use crate::http::{ApiError, AppState};

/// The range and grouping of stats.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    /// Per day or per month.
    #[param(inline)]
    granularity: Option<StatsGranularity>,
    /// First UTC day, YYYY-MM-DD (default: 30 days or 12 months back).
    #[param(format = Date)]
    from: Option<String>,
    /// Last UTC day, YYYY-MM-DD (default: today).
    #[param(format = Date)]
    to: Option<String>,
}

/// How stats are grouped into periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(default = StatsGranularity::default)]
pub enum StatsGranularity {
    /// By UTC day, at most 366 per request.
    Day,
    /// By UTC calendar month, at most about ten years per request.
    #[default]
    Month,
}

/// One period of an affiliate's stats. Earnings are of the commissions
/// earned in the period, by where they stand now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeriodView {
    /// `YYYY-MM` or `YYYY-MM-DD`; `total` for the whole range.
    pub period: String,
    /// Referral links followed.
    pub clicks: u64,
    /// Signups attributed.
    pub signups: u64,
    /// Referred users' first payments.
    pub conversions: u64,
    /// Conversions per signup, in basis points (2500 = 25%), rounded down.
    pub conversion_rate_bps: u32,
    /// Referred users' first fills, reported by their devices.
    pub first_trades: u64,
    /// Commissions earned, in minor units (pence) of the programme's
    /// currency, like every `_minor` amount.
    pub earned_minor: i64,
    /// Still in the holding period.
    pub pending_minor: i64,
    /// Held by open fraud cases: never payable until an admin decides.
    pub held_minor: i64,
    /// Due at the next payout, net of clawbacks.
    pub payable_minor: i64,
    /// In payouts not yet arrived.
    pub paying_minor: i64,
    /// Paid out.
    pub paid_minor: i64,
    /// Taken back by refunds.
    pub reversed_minor: i64,
}

/// An affiliate's stats.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AffiliateStats)]
pub struct StatsView {
    /// The affiliate.
    pub affiliate_id: String,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// `day` or `month`.
    pub granularity: StatsGranularity,
    /// First day of the range.
    pub from: String,
    /// Last day of the range.
    pub to: String,
    /// The whole range.
    pub totals: PeriodView,
    /// Each period in the range, oldest first.
    pub periods: Vec<PeriodView>,
    /// The per-trade commission tier this month, and what the next needs.
    pub trade_tier: TierView,
}

/// An affiliate's per-trade commission tier this calendar month (UTC).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierView {
    /// This month, `YYYY-MM`.
    pub month: String,
    /// What sets tiers: `active-traders` (referred customers with a fill)
    /// or `volume-lots` (their whole lots), in the month before.
    pub basis: String,
    /// The tier, 1 for the lowest.
    pub tier: u8,
    /// Its share of the platform's fee per fill, in basis points.
    pub rate_bps: u32,
    /// Last month's measure, which set it.
    pub last_month: u64,
    /// Whether this month's first referred fill fixed it already; until
    /// then a late fill of last month may still change it.
    pub fixed: bool,
    /// This month's measure so far: it sets next month's tier.
    pub this_month: u64,
    /// The next tier up, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextTierView>,
}

/// The tier above, and what reaching it next month takes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NextTierView {
    /// Its number.
    pub tier: u8,
    /// Its rate, in basis points.
    pub rate_bps: u32,
    /// The measure this month must reach.
    pub from: u64,
    /// How much more than this month's measure so far.
    pub needs: u64,
}

fn period_view(period: String, stats: &eagate_affiliates::programme::PeriodStats) -> PeriodView {
    PeriodView {
        period,
        clicks: stats.clicks,
        signups: stats.signups,
        conversions: stats.conversions,
        conversion_rate_bps: stats.conversion_rate_bps,
        first_trades: stats.first_trades,
        earned_minor: stats.earnings.earned,
        pending_minor: stats.earnings.pending,
        held_minor: stats.earnings.held,
        payable_minor: stats.earnings.payable,
        paying_minor: stats.earnings.paying,
        paid_minor: stats.earnings.paid,
        reversed_minor: stats.earnings.reversed,
    }
}

#[utoipa::path(
    get,
    path = "/affiliates/{affiliate_id}/stats",
    summary = "Clicks, signups, conversions, conversion rate, first trades and earnings (pending, held, payable, paid, reversed), in total and per period (admin, or the affiliate's own token).",
    params(AffiliatePath, StatsQuery),
    responses(
        (status = 200, description = "Stats; money in minor units of the programme's currency.", body = StatsView),
        (status = 404, description = "No such affiliate."),
        (status = 422, description = "Invalid range or granularity."),
        AffiliateReader,
    )
)]
pub(super) async fn stats(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    reader.may_read(&affiliate_id)?;
    let Query(query) = query?;
    let from = date_bound("from", query.from.as_deref())?;
    let to = date_bound("to", query.to.as_deref())?;
    stats_of(
        &state,
        affiliate_id,
        query.granularity.unwrap_or_default(),
        from,
        to,
    )
    .map(Json)
}

/// The stats of `affiliate_id` per day or month from `from` to `to` (UTC
/// day numbers; by default 30 days or 12 months up to today).
pub(in crate::http) fn stats_of(
    state: &AppState,
    affiliate_id: String,
    shown: StatsGranularity,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<StatsView, ApiError> {
    let (granularity, max_days) = match shown {
        StatsGranularity::Month => (Granularity::Month, 3_660),
        StatsGranularity::Day => (Granularity::Day, 366),
    };
    let now = state.affiliates.now_ms();
    let to = to.unwrap_or(day_of(now));
    let from = from.unwrap_or(match granularity {
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
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no affiliate {affiliate_id}")))?;
    let tier = programme
        .tier_status(&affiliate_id, day_of(now))
        .ok_or_else(|| ApiError::NotFound(format!("no affiliate {affiliate_id}")))?;
    let trade_tier = TierView {
        month: eagate_affiliates::programme::month_text(tier.month),
        basis: tier.basis.to_string(),
        tier: tier.tier,
        rate_bps: tier.rate.0,
        last_month: tier.measured,
        fixed: tier.fixed,
        this_month: tier.this_month,
        next: tier.next.map(|(tier_no, rate, from)| NextTierView {
            tier: tier_no,
            rate_bps: rate.0,
            from,
            needs: from.saturating_sub(tier.this_month),
        }),
    };
    Ok(StatsView {
        affiliate_id,
        currency: stats.currency,
        granularity: shown,
        from: calendar::format_date(from),
        to: calendar::format_date(to),
        totals: period_view("total".to_owned(), &stats.totals),
        periods: stats
            .periods
            .iter()
            .map(|(period, s)| period_view(period.clone(), s))
            .collect(),
        trade_tier,
    })
}
