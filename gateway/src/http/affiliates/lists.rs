//! The lists an affiliate manager works from on payday: every affiliate
//! with what they are owed, and the payouts made, overall or for one
//! affiliate. Pages of JSON or CSV.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::{day_of, format_instant};
use eagate_affiliates::{Balances, Currency};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::pages::{PageQuery, csv_response, date_bound, json_name, page_limit, wants_csv};
use super::{AffiliatePath, AffiliateReader};
use crate::http::{Admin, ApiError, AppState};

/// Where an affiliate's money stands now, as the list filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OwedStatus {
    /// A positive payable balance.
    Owed,
    /// Clawbacks or adjustments exceed what is payable: owed by them.
    Negative,
    /// Nothing payable, something in the holding period, held, or in a
    /// payout not yet arrived.
    Pending,
    /// Nothing payable or pending.
    Settled,
}

impl OwedStatus {
    fn of(balances: &Balances) -> Self {
        if balances.payable > 0 {
            Self::Owed
        } else if balances.payable < 0 {
            Self::Negative
        } else if balances.pending > 0 || balances.held > 0 || balances.paying > 0 {
            Self::Pending
        } else {
            Self::Settled
        }
    }
}

/// An affiliate and what they are owed now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AffiliateRow {
    /// Its place in enrolment order: pass the last as `after`.
    pub seq: u64,
    /// The affiliate.
    pub affiliate_id: String,
    /// The platform user.
    pub user_id: String,
    /// Their referral code.
    pub code: String,
    /// When they enrolled, Unix ms.
    pub enrolled_at_ms: u64,
    /// `owed`, `negative`, `pending` or `settled`, now.
    pub status: OwedStatus,
    /// Every commission and adjustment.
    pub earned_minor: i64,
    /// In the holding period.
    pub pending_minor: i64,
    /// Held by open fraud cases.
    pub held_minor: i64,
    /// Due at the next payout; negative when they owe.
    pub payable_minor: i64,
    /// In payouts not yet arrived (pending, submitted, to reconcile).
    pub paying_minor: i64,
    /// Paid out.
    pub paid_minor: i64,
    /// Taken back by refunds.
    pub reversed_minor: i64,
    /// When they were last paid, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_paid_at_ms: Option<u64>,
    /// Fraud cases about their referrals still open.
    pub open_cases: usize,
}

/// A page of affiliates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AffiliateList {
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// In enrolment order.
    pub items: Vec<AffiliateRow>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// Which affiliates to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AffiliateFilter {
    /// Only affiliates whose money stands so now.
    #[param(inline)]
    status: Option<OwedStatus>,
    /// Only affiliates with at least this payable balance (minor units).
    min_payable_minor: Option<i64>,
    /// true: only affiliates with an open fraud case; false: only those
    /// without.
    open_case: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/affiliates",
    summary = "Every affiliate with what they are owed now (earned, pending, held, payable, paid, reversed), filtered by status, payable balance or open fraud case, in enrolment order; JSON pages or CSV (admin). `from`/`to` filter by enrolment day.",
    params(PageQuery, AffiliateFilter),
    responses(
        (status = 200, description = "A page of affiliates, or every matching one as CSV.", content(
            (AffiliateList = "application/json"),
            (String = "text/csv"),
        )),
        (status = 422, description = "Invalid paging or filter."),
        Admin,
    )
)]
pub(super) async fn affiliates(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<AffiliateFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (Query(page), Query(filter)) = (page?, filter?);
    let csv = wants_csv(&page, &headers);
    let limit = page_limit(&page, csv)?;
    let from = date_bound("from", page.from.as_deref())?;
    let to = date_bound("to", page.to.as_deref())?;
    let after = page.after.unwrap_or(0);
    let (currency, rows, more) = affiliate_rows(&state, after, limit, |row| {
        let day = day_of(row.enrolled_at_ms);
        !(from.is_some_and(|d| day < d)
            || to.is_some_and(|d| day > d)
            || filter.status.is_some_and(|s| s != row.status)
            || filter
                .min_payable_minor
                .is_some_and(|m| row.payable_minor < m)
            || filter
                .open_case
                .is_some_and(|wanted| wanted != (row.open_cases > 0)))
    })?;
    if csv {
        let rows = rows
            .into_iter()
            .map(|r| {
                vec![
                    r.seq.to_string(),
                    r.affiliate_id,
                    r.user_id,
                    r.code,
                    format_instant(r.enrolled_at_ms),
                    json_name(r.status),
                    r.earned_minor.to_string(),
                    r.pending_minor.to_string(),
                    r.held_minor.to_string(),
                    r.payable_minor.to_string(),
                    currency.format_major(r.payable_minor),
                    r.paying_minor.to_string(),
                    r.paid_minor.to_string(),
                    r.reversed_minor.to_string(),
                    r.last_paid_at_ms.map(format_instant).unwrap_or_default(),
                    currency.to_string(),
                    r.open_cases.to_string(),
                ]
            })
            .collect();
        return Ok(csv_response(
            "affiliates.csv",
            "seq,affiliate_id,user_id,code,enrolled_at,status,earned_minor,pending_minor,held_minor,payable_minor,payable,paying_minor,paid_minor,reversed_minor,last_paid_at,currency,open_cases",
            rows,
        ));
    }
    let next_after = more.then(|| rows.last().map(|r| r.seq)).flatten();
    Ok(Json(AffiliateList {
        currency,
        items: rows,
        next_after,
    })
    .into_response())
}

/// Up to `limit` affiliates after the `after`-th (in enrolment order) that
/// `keep` keeps, each with what they are owed now; whether more follow.
pub(in crate::http) fn affiliate_rows(
    state: &AppState,
    after: u64,
    limit: usize,
    keep: impl Fn(&AffiliateRow) -> bool,
) -> Result<(Currency, Vec<AffiliateRow>, bool), ApiError> {
    let now = state.affiliates.now_ms();
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let mut last_paid = std::collections::HashMap::new();
    for payout in programme.payouts() {
        if let Some(paid_at) = payout.settled_at_ms
            && payout.state == eagate_affiliates::programme::PayoutState::Paid
        {
            last_paid.insert(payout.affiliate_id, paid_at);
        }
    }
    let mut open_cases: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for case in programme.cases().iter().filter(|c| c.decision.is_none()) {
        if let eagate_affiliates::Referrer::Affiliate { affiliate_id } = &case.referrer {
            *open_cases.entry(affiliate_id.as_str()).or_default() += 1;
        }
    }
    let mut rows = Vec::new();
    let mut more = false;
    for (seq, affiliate_id) in (1u64..).zip(programme.affiliate_ids()) {
        if seq <= after {
            continue;
        }
        let Some(affiliate) = programme.affiliate(affiliate_id) else {
            continue;
        };
        let balances = programme
            .balances(affiliate_id, now)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .unwrap_or_default();
        let row = AffiliateRow {
            seq,
            affiliate_id: affiliate_id.to_owned(),
            user_id: affiliate.user_id.clone(),
            code: affiliate.code.to_string(),
            enrolled_at_ms: affiliate.enrolled_at_ms,
            status: OwedStatus::of(&balances),
            earned_minor: balances.earned,
            pending_minor: balances.pending,
            held_minor: balances.held,
            payable_minor: balances.payable,
            paying_minor: balances.paying,
            paid_minor: balances.paid,
            reversed_minor: balances.reversed,
            last_paid_at_ms: last_paid.get(affiliate_id).copied(),
            open_cases: open_cases.get(affiliate_id).copied().unwrap_or(0),
        };
        if !keep(&row) {
            continue;
        }
        if rows.len() == limit {
            more = true;
            break;
        }
        rows.push(row);
    }
    Ok((currency, rows, more))
}

/// A payout, in whatever state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PayoutRow {
    /// Its place in the order payouts were made: pass the last as `after`.
    pub seq: u64,
    /// Its id.
    pub payout_id: String,
    /// Who was paid.
    pub affiliate_id: String,
    /// The net amount paid (clawbacks and adjustments netted).
    pub amount_minor: i64,
    /// How many ledger lines it settles.
    pub entries: usize,
    /// When it was made, Unix ms (a batch's: when the batch opened).
    pub paid_at_ms: u64,
    /// pending, submitted, needs_reconciliation, paid or failed.
    pub state: String,
    /// The batch it was made in; absent for one recorded by hand.
    pub batch_id: Option<String>,
    /// The provider's reference, once paid.
    pub reference: Option<String>,
    /// When it was paid or failed, Unix ms.
    pub settled_at_ms: Option<u64>,
}

/// A page of payouts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PayoutHistory {
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Oldest first.
    pub items: Vec<PayoutRow>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/payouts",
    summary = "Every payout made, oldest first; JSON pages or CSV (admin). `from`/`to` filter by the payout's day.",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of payouts, or every matching one as CSV.", content(
            (PayoutHistory = "application/json"),
            (String = "text/csv"),
        )),
        (status = 422, description = "Invalid paging."),
        Admin,
    )
)]
pub(super) async fn payouts(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    payout_history(&state, &headers, page?.0, None)
}

#[utoipa::path(
    get,
    path = "/affiliates/{affiliate_id}/payouts",
    summary = "An affiliate's payouts, oldest first; JSON pages or CSV (admin, or the affiliate's own token).",
    params(AffiliatePath, PageQuery),
    responses(
        (status = 200, description = "A page of payouts, or every matching one as CSV.", content(
            (PayoutHistory = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, description = "No such affiliate."),
        (status = 422, description = "Invalid paging."),
        AffiliateReader,
    )
)]
pub(in crate::http) async fn payouts_of(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    reader.may_read(&affiliate_id)?;
    if state
        .affiliates
        .ledger
        .read()
        .affiliate(&affiliate_id)
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no affiliate {affiliate_id}")));
    }
    payout_history(&state, &headers, page?.0, Some(&affiliate_id))
}

fn payout_history(
    state: &AppState,
    headers: &HeaderMap,
    page: PageQuery,
    affiliate: Option<&str>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(&page, headers);
    let limit = page_limit(&page, csv)?;
    let from = date_bound("from", page.from.as_deref())?;
    let to = date_bound("to", page.to.as_deref())?;
    let after = page.after.unwrap_or(0);
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let mut matching = programme
        .payouts()
        .filter(|p| p.seq > after)
        .filter(|p| affiliate.is_none_or(|a| p.affiliate_id == a))
        .filter(|p| from.is_none_or(|d| day_of(p.at_ms) >= d))
        .filter(|p| to.is_none_or(|d| day_of(p.at_ms) <= d))
        .map(|p| PayoutRow {
            seq: p.seq,
            payout_id: p.payout_id.to_owned(),
            affiliate_id: p.affiliate_id.to_owned(),
            amount_minor: p.amount_minor,
            entries: p.entries,
            paid_at_ms: p.at_ms,
            state: p.state.as_str().to_owned(),
            batch_id: p.batch_id.map(str::to_owned),
            reference: p.reference.map(str::to_owned),
            settled_at_ms: p.settled_at_ms,
        });
    let items: Vec<PayoutRow> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let rows = items
            .into_iter()
            .map(|p| {
                vec![
                    p.seq.to_string(),
                    p.payout_id,
                    p.affiliate_id,
                    p.amount_minor.to_string(),
                    currency.format_major(p.amount_minor),
                    currency.to_string(),
                    p.entries.to_string(),
                    format_instant(p.paid_at_ms),
                    p.state,
                    p.batch_id.unwrap_or_default(),
                    p.reference.unwrap_or_default(),
                    p.settled_at_ms.map(format_instant).unwrap_or_default(),
                ]
            })
            .collect();
        return Ok(csv_response(
            "payouts.csv",
            "seq,payout_id,affiliate_id,amount_minor,amount,currency,entries,paid_at,state,batch_id,reference,settled_at",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|p| p.seq)).flatten();
    Ok(Json(PayoutHistory {
        currency,
        items,
        next_after,
    })
    .into_response())
}
