//! An affiliate's commission ledger, as the affiliate (or admin) reads it:
//! commissions and clawbacks with where each stands now, filtered, paged or
//! as CSV.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::{day_of, format_instant};
use eagate_affiliates::{CommissionKind, Currency, Entry, EntryKind, EntryStatus, Programme};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::pages::{PageQuery, csv_response, date_bound, json_name, page_limit, wants_csv};
use super::{AffiliatePath, AffiliateReader};
use crate::http::{ApiError, AppState};

/// What a ledger line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKindView {
    /// Commission on a subscription payment.
    Subscription,
    /// The bonus for a referred user's first trade.
    FirstTradeBonus,
    /// A share of the platform's fee for one fill of a referred customer.
    Trade,
    /// A paid commission taken back after a refund.
    Clawback,
    /// An admin's correction, either sign.
    Adjustment,
}

/// Where a ledger line's money stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatusView {
    /// In the holding period.
    Pending,
    /// Due at the next payout (clawbacks: to be netted against it).
    Payable,
    /// Settled by a payout.
    Paid,
    /// Entirely taken back before it was paid.
    Reversed,
    /// Held by an open fraud case: not payable until an admin decides.
    Held,
    /// In a payout that has not arrived yet: nothing else can pay it.
    Paying,
}

impl From<EntryStatus> for EntryStatusView {
    fn from(status: EntryStatus) -> Self {
        match status {
            EntryStatus::Pending => Self::Pending,
            EntryStatus::Payable => Self::Payable,
            EntryStatus::Paid => Self::Paid,
            EntryStatus::Reversed => Self::Reversed,
            EntryStatus::Held => Self::Held,
            EntryStatus::Paying => Self::Paying,
        }
    }
}

/// A ledger line as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    /// The entry.
    pub entry_id: u64,
    /// `subscription`, `first_trade_bonus`, `trade`, `clawback` or
    /// `adjustment`.
    pub kind: EntryKindView,
    /// Subscriptions: the billing period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_period: Option<u32>,
    /// Trade commissions: the affiliate's tier for the fill's month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    /// Trade commissions: the fill it is a share of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<FillView>,
    /// Commissions: the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u32>,
    /// Commissions: the amount the rate was applied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_minor: Option<i64>,
    /// Positive for commissions, negative for clawbacks.
    pub amount_minor: i64,
    /// How much of a commission was reversed before payout.
    pub reversed_minor: i64,
    /// `pending`, `payable`, `paid` or `reversed`, now.
    pub status: EntryStatusView,
    /// The referred user: the platform's id for an admin; for the
    /// affiliate itself a stable pseudonym (`cu_…`), the same for the same
    /// customer on every row and every read. Empty for adjustments.
    pub user_id: String,
    /// The payment it comes from (empty for adjustments; for trade
    /// commissions `fill:<device>:<seq>`).
    pub payment_id: String,
    /// Clawbacks: the commission clawed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_entry: Option<u64>,
    /// Clawbacks: the refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// When it was made, Unix ms.
    pub created_at_ms: u64,
    /// When it was earned, Unix ms: the payment's `occurred_at` (for a
    /// clawback, its commission's). Stats count it on this day.
    pub earned_at_ms: u64,
    /// When it stops being pending, Unix ms.
    pub payable_at_ms: u64,
    /// The payout that settled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    /// When that payout was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<u64>,
    /// Adjustments: the admin's id for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment_id: Option<String>,
    /// Adjustments: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The fill a trade commission is a share of: its identity, what was
/// traded, and the platform's fee for it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FillView {
    /// The device that reported it.
    pub device_id: String,
    /// Its report sequence.
    pub seq: u64,
    /// The signal it filled.
    pub signal_id: String,
    /// The terminal's ticket, if reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<u64>,
    /// What was traded.
    pub symbol: String,
    /// Lots, as a decimal (`0.10000000`).
    pub volume: String,
    /// The platform's fee for it, in minor units: the commission's base.
    pub fee_minor: i64,
    /// Busted by an admin: its commission is reversed or clawed back.
    pub busted: bool,
}

fn fill_view(programme: &Programme, reference: &str) -> Option<FillView> {
    let (device_id, seq, fill) = programme.counted_fill_of(reference)?;
    Some(FillView {
        device_id: device_id.to_owned(),
        seq,
        signal_id: fill.signal_id.clone(),
        ticket: fill.ticket,
        symbol: fill.symbol.clone(),
        volume: format!(
            "{}.{:08}",
            fill.volume_e8 / 100_000_000,
            fill.volume_e8 % 100_000_000
        ),
        fee_minor: fill.fee_minor,
        busted: fill.busted,
    })
}

fn entry_view(programme: &Programme, entry: &Entry, now: u64) -> EntryView {
    let mut tier = None;
    let (kind, billing_period, rate_bps, base_minor, of_entry, refund_id) = match &entry.kind {
        EntryKind::Commission {
            kind,
            rate_bps,
            base_minor,
        } => {
            let (name, period) = match kind {
                CommissionKind::Subscription { billing_period } => {
                    (EntryKindView::Subscription, Some(*billing_period))
                }
                CommissionKind::FirstTradeBonus => (EntryKindView::FirstTradeBonus, None),
                CommissionKind::Trade { tier: of_fill } => {
                    tier = Some(*of_fill);
                    (EntryKindView::Trade, None)
                }
            };
            (name, period, Some(*rate_bps), Some(*base_minor), None, None)
        }
        EntryKind::Clawback {
            of_entry,
            refund_id,
        } => (
            EntryKindView::Clawback,
            None,
            None,
            None,
            Some(*of_entry),
            Some(refund_id.clone()),
        ),
        EntryKind::Adjustment { .. } => (EntryKindView::Adjustment, None, None, None, None, None),
    };
    let (adjustment_id, reason) = match &entry.kind {
        EntryKind::Adjustment {
            adjustment_id,
            reason,
        } => (Some(adjustment_id.clone()), Some(reason.clone())),
        _ => (None, None),
    };
    EntryView {
        entry_id: entry.entry_id,
        kind,
        billing_period,
        tier,
        fill: tier.and_then(|_| fill_view(programme, &entry.payment_id)),
        rate_bps,
        base_minor,
        amount_minor: entry.amount_minor,
        reversed_minor: entry.reversed_minor,
        status: entry.status(now).into(),
        user_id: entry.user_id.clone(),
        payment_id: entry.payment_id.clone(),
        of_entry,
        refund_id,
        created_at_ms: entry.created_at_ms,
        earned_at_ms: entry.earned_at_ms,
        payable_at_ms: entry.payable_at_ms,
        payout_id: entry.payout_id.clone(),
        paid_at_ms: entry.paid_at_ms,
        adjustment_id,
        reason,
    }
}

/// A page of an affiliate's ledger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Commissions {
    /// The affiliate.
    pub affiliate_id: String,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Oldest first.
    pub items: Vec<EntryView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// Which of an affiliate's entries to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::http) struct EntryFilter {
    /// Only entries whose money stands so now.
    #[param(inline)]
    status: Option<EntryStatusView>,
    /// Only entries of this kind.
    #[param(inline)]
    kind: Option<EntryKindView>,
}

#[utoipa::path(
    get,
    path = "/affiliates/{affiliate_id}/commissions",
    summary = "The affiliate's ledger: commissions and clawbacks, paginated and filterable, as JSON or CSV (admin, or the affiliate's own token).",
    params(AffiliatePath, PageQuery, EntryFilter),
    responses(
        (status = 200, description = "A page of entries, or every matching entry as CSV.", content(
            (Commissions = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, description = "No such affiliate."),
        (status = 422, description = "Invalid filter."),
        AffiliateReader,
    )
)]
pub(in crate::http) async fn commissions(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<EntryFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    reader.may_read(&affiliate_id)?;
    let (Query(page), Query(filter)) = (page?, filter?);
    let csv = wants_csv(&page, &headers);
    let limit = page_limit(&page, csv)?;
    let from = date_bound("from", page.from.as_deref())?;
    let to = date_bound("to", page.to.as_deref())?;
    let after = page.after.unwrap_or(0);
    let now = state.affiliates.now_ms();
    let programme = state.affiliates.ledger.read();
    if programme.affiliate(&affiliate_id).is_none() {
        return Err(ApiError::NotFound(format!("no affiliate {affiliate_id}")));
    }
    let currency = programme.config().currency;
    let mut matching = programme
        .entries_of(&affiliate_id)
        .filter(|e| e.entry_id > after)
        .filter(|e| {
            filter
                .status
                .is_none_or(|s| EntryStatusView::from(e.status(now)) == s)
        })
        .filter(|e| from.is_none_or(|d| day_of(e.created_at_ms) >= d))
        .filter(|e| to.is_none_or(|d| day_of(e.created_at_ms) <= d))
        .map(|e| {
            let mut view = entry_view(&programme, e, now);
            // An affiliate sees a pseudonym for each customer; admins the
            // platform's id.
            if let AffiliateReader::Own(_) = reader
                && !view.user_id.is_empty()
            {
                view.user_id = state
                    .affiliates
                    .ledger
                    .customer_pseudonym(&affiliate_id, &view.user_id);
            }
            view
        })
        .filter(|v| filter.kind.is_none_or(|k| v.kind == k));
    let items: Vec<EntryView> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let rows = items
            .into_iter()
            .map(|v| {
                vec![
                    v.entry_id.to_string(),
                    format_instant(v.created_at_ms),
                    json_name(v.kind),
                    opt(v.billing_period.map(|p| p.to_string())),
                    v.user_id,
                    v.payment_id,
                    opt(v.rate_bps.map(|r| r.to_string())),
                    opt(v.base_minor.map(|b| b.to_string())),
                    v.amount_minor.to_string(),
                    currency.format_major(v.amount_minor),
                    v.reversed_minor.to_string(),
                    json_name(v.status),
                    format_instant(v.payable_at_ms),
                    opt(v.payout_id),
                    opt(v.paid_at_ms.map(format_instant)),
                    opt(v.of_entry.map(|e| e.to_string())),
                    opt(v.refund_id),
                    currency.to_string(),
                    format_instant(v.earned_at_ms),
                    opt(v.adjustment_id),
                    opt(v.reason),
                    opt(v.tier.map(|t| t.to_string())),
                    opt(v.fill.as_ref().map(|f| f.device_id.clone())),
                    opt(v.fill.as_ref().map(|f| f.seq.to_string())),
                    opt(v.fill.as_ref().map(|f| f.signal_id.clone())),
                    opt(v
                        .fill
                        .as_ref()
                        .and_then(|f| f.ticket)
                        .map(|t| t.to_string())),
                    opt(v.fill.as_ref().map(|f| f.symbol.clone())),
                    opt(v.fill.as_ref().map(|f| f.volume.clone())),
                ]
            })
            .collect();
        return Ok(csv_response(
            "commissions.csv",
            "entry_id,created_at,kind,billing_period,user_id,payment_id,rate_bps,base_minor,amount_minor,amount,reversed_minor,status,payable_at,payout_id,paid_at,of_entry,refund_id,currency,earned_at,adjustment_id,reason,tier,device_id,seq,signal_id,ticket,symbol,volume",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|v| v.entry_id)).flatten();
    Ok(Json(Commissions {
        affiliate_id: affiliate_id.clone(),
        currency,
        items,
        next_after,
    })
    .into_response())
}
