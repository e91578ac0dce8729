//! Payouts: batches run by hand or daily (manual provider: exported as CSV
//! and confirmed by an admin; Stripe: sent and reconciled by the run), an
//! admin's word on a payout, where an affiliate is paid, and the older
//! one-off payout recorded as paid at once.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::format_instant;
use eagate_affiliates::programme::{
    PayoutAccountError, PayoutError, PayoutOutcome, PayoutRecord, SettleError,
};
use eagate_affiliates::{Currency, Fact, Programme};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::pages::{PageQuery, csv_response, wants_csv};
use super::{AffiliatePath, Recorded, caller_because, recorded, write, write_because};
use crate::http::{Admin, ApiError, ApiJson, AppState, check_text};
use crate::payouts::{RunError, Trigger};

/// A payout to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPayout {
    /// The payout's id; the same id again changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    payout_id: String,
}

#[utoipa::path(
    post,
    path = "/affiliates/{affiliate_id}/payouts",
    summary = "Record a payout of every payable entry, clawbacks netted (admin). The same payout_id again changes nothing.",
    params(AffiliatePath),
    request_body = NewPayout,
    responses(
        (status = 201, description = "Paid; the PayoutMade fact holds the net amount.", body = Recorded),
        (status = 200, description = "This payout was already recorded.", body = Recorded),
        (status = 404, description = "No such affiliate."),
        (status = 409, description = "Nothing payable, a payable balance below the payout minimum, or the payout id belongs to another affiliate."),
        (status = 422, description = "Invalid input."),
        Admin,
    )
)]
pub(super) async fn pay_out(
    State(state): State<AppState>,
    _: Admin,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    ApiJson(new): ApiJson<NewPayout>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("payout_id", &new.payout_id, 128)?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.pay_out(&affiliate_id, &new.payout_id, now),
        |e| match e {
            PayoutError::UnknownAffiliate(_) => ApiError::NotFound(e.to_string()),
            PayoutError::ReservedId => ApiError::Unprocessable(e.to_string()),
            other => ApiError::Conflict(other.to_string()),
        },
    )
    .await?;
    if let Some(Fact::PayoutMade { amount_minor, .. }) = decided.facts.first() {
        tracing::info!(affiliate = %affiliate_id, payout = %new.payout_id, amount_minor, "payout recorded");
    }
    Ok(recorded(decided))
}

/// A payout in a batch or the history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PayoutView {
    /// Its id: also the idempotency key and transfer group sent to Stripe.
    pub payout_id: String,
    /// Who is paid.
    pub affiliate_id: String,
    /// The net amount, minor units.
    pub amount_minor: i64,
    /// The same, in major units (text).
    pub amount: String,
    /// pending, submitted, needs_reconciliation, paid or failed.
    pub state: String,
    /// The account paid into (Stripe: acct_…).
    pub destination: Option<String>,
    /// The provider's reference once paid (Stripe: tr_…).
    pub reference: Option<String>,
    /// Why it failed, or what left it to reconcile.
    pub detail: Option<String>,
    /// When it was paid or failed, Unix ms.
    pub settled_at_ms: Option<u64>,
}

impl PayoutView {
    fn of(p: &PayoutRecord<'_>, currency: Currency) -> Self {
        Self {
            payout_id: p.payout_id.to_owned(),
            affiliate_id: p.affiliate_id.to_owned(),
            amount_minor: p.amount_minor,
            amount: currency.format_major(p.amount_minor),
            state: p.state.as_str().to_owned(),
            destination: p.destination.map(str::to_owned),
            reference: p.reference.map(str::to_owned),
            detail: p.detail.map(str::to_owned),
            settled_at_ms: p.settled_at_ms,
        }
    }
}

/// A payout batch and its payouts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    /// pb_<n>.
    pub batch_id: String,
    /// manual or stripe.
    pub provider: String,
    /// The UTC day of a daily batch (YYYY-MM-DD); absent for one run by hand.
    pub scheduled_for: Option<String>,
    /// When it opened, Unix ms.
    pub opened_at_ms: u64,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// The sum of its payouts, minor units.
    pub total_minor: i64,
    /// Its payouts.
    pub payouts: Vec<PayoutView>,
}

fn batch_view(programme: &Programme, batch_id: &str) -> Option<BatchView> {
    let batch = programme.batch(batch_id)?;
    let currency = programme.config().currency;
    let payouts: Vec<PayoutView> = batch
        .payout_ids
        .iter()
        .filter_map(|id| programme.payout(id))
        .map(|p| PayoutView::of(&p, currency))
        .collect();
    Some(BatchView {
        batch_id: batch.batch_id.to_owned(),
        provider: batch.provider.as_str().to_owned(),
        scheduled_for: batch
            .scheduled_day
            .map(eagate_affiliates::calendar::format_date),
        opened_at_ms: batch.at_ms,
        currency,
        // Each payout is within the ledger's limit, and so is their sum:
        // they are disjoint parts of what the ledger holds.
        total_minor: payouts
            .iter()
            .fold(0i64, |sum, p| sum.saturating_add(p.amount_minor)),
        payouts,
    })
}

/// What a payout run did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PayoutRun {
    /// The batch it opened.
    pub batch: Option<BatchView>,
    /// Stripe payouts an earlier run left that this one settled or
    /// reconciled.
    pub resumed: Vec<String>,
    /// Stripe payouts an earlier run left that this one could not take
    /// further (no secret key, say): the log says why.
    pub stuck: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/payout-batches",
    summary = "Run payouts now (admin; `eagate payouts run`): finish what an earlier run left, then open a batch paying every affiliate whose payable balance reaches the minimum and who has no open fraud case.",
    responses(
        (status = 201, description = "The batch, with its payouts (manual: pending until confirmed; stripe: as Stripe answered).", body = PayoutRun),
        (status = 409, description = "Another payout run is in progress."),
        (status = 502, description = "The run stopped: Stripe payouts wait and cannot be sent (no secret key), or the Redis lease failed."),
        Admin,
    )
)]
pub(super) async fn run_batch(
    State(state): State<AppState>,
    _: Admin,
) -> Result<(StatusCode, Json<PayoutRun>), ApiError> {
    let actor = caller_because("payout run by hand");
    let report = state
        .affiliates
        .run_payouts(Trigger::ByHand, &actor)
        .await
        .map_err(|e| match e {
            RunError::Busy | RunError::Settle(_) => ApiError::Conflict(e.to_string()),
            RunError::Journal(e) => ApiError::Internal(e.to_string()),
            RunError::Total(e) => ApiError::Conflict(e.to_string()),
            other => ApiError::BadGateway(other.to_string()),
        })?;
    let programme = state.affiliates.ledger.read();
    Ok((
        StatusCode::CREATED,
        Json(PayoutRun {
            batch: report
                .batch_id
                .as_deref()
                .and_then(|id| batch_view(&programme, id)),
            resumed: report.resumed,
            stuck: report.stuck,
        }),
    ))
}

/// A page of batches.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Batches {
    /// Oldest first.
    pub items: Vec<BatchView>,
}

#[utoipa::path(
    get,
    path = "/payout-batches",
    summary = "Every payout batch with its payouts, oldest first (admin).",
    responses(
        (status = 200, description = "The batches.", body = Batches),
        Admin,
    )
)]
pub(super) async fn batches(State(state): State<AppState>, _: Admin) -> Json<Batches> {
    Json(all_batches(&state))
}

/// Every payout batch with its payouts, oldest first.
pub(in crate::http) fn all_batches(state: &AppState) -> Batches {
    let programme = state.affiliates.ledger.read();
    let items = programme
        .batches()
        .filter_map(|b| batch_view(&programme, b.batch_id))
        .collect();
    Batches { items }
}

/// A batch named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct BatchPath {
    /// The batch's id (pb_…).
    batch_id: String,
}

#[utoipa::path(
    get,
    path = "/payout-batches/{batch_id}",
    summary = "One batch (admin): JSON, or with format=csv (or Accept: text/csv) the sheet to pay a manual batch from.",
    params(BatchPath, PageQuery),
    responses(
        (status = 200, description = "The batch.", content(
            (BatchView = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, description = "No such batch."),
        (status = 422, description = "Invalid query."),
        Admin,
    )
)]
pub(super) async fn batch(
    State(state): State<AppState>,
    _: Admin,
    Path(BatchPath { batch_id }): Path<BatchPath>,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let csv = wants_csv(&page?.0, &headers);
    let programme = state.affiliates.ledger.read();
    let view = batch_view(&programme, &batch_id)
        .ok_or_else(|| ApiError::NotFound(format!("no payout batch {batch_id}")))?;
    if !csv {
        return Ok(Json(view).into_response());
    }
    let currency = view.currency;
    let rows = view
        .payouts
        .into_iter()
        .map(|p| {
            let user = programme
                .affiliate(&p.affiliate_id)
                .map(|a| a.user_id.clone())
                .unwrap_or_default();
            vec![
                view.batch_id.clone(),
                p.payout_id,
                p.affiliate_id,
                user,
                p.amount_minor.to_string(),
                p.amount,
                currency.to_string(),
                p.state,
                p.destination.unwrap_or_default(),
                p.reference.unwrap_or_default(),
                p.settled_at_ms.map(format_instant).unwrap_or_default(),
            ]
        })
        .collect();
    Ok(csv_response(
        &format!("{batch_id}.csv"),
        "batch_id,payout_id,affiliate_id,user_id,amount_minor,amount,currency,state,destination,reference,settled_at",
        rows,
    ))
}

/// What happened to a payout, in an admin's words.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum PayoutOutcomeBody {
    /// Paid: the provider's reference (bank reference, transfer id).
    Paid {
        /// 1 to 128 characters.
        reference: String,
    },
    /// Not paid: its commissions are payable again.
    Failed {
        /// Why, 1 to 500 characters.
        reason: String,
    },
}

/// A payout named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PayoutPath {
    /// The payout's id.
    payout_id: String,
}

#[utoipa::path(
    post,
    path = "/payouts/{payout_id}/outcome",
    summary = "Confirm a manual payout paid (with the provider's reference) or failed (its money back to payable), or settle one left to reconcile (admin). The same outcome again changes nothing.",
    params(PayoutPath),
    request_body = PayoutOutcomeBody,
    responses(
        (status = 201, description = "Recorded.", body = Recorded),
        (status = 200, description = "This outcome was already recorded.", body = Recorded),
        (status = 404, description = "No such payout."),
        (status = 409, description = "Already settled otherwise, or a Stripe payout still in the run's hands."),
        (status = 422, description = "Invalid input."),
        Admin,
    )
)]
pub(super) async fn settle(
    State(state): State<AppState>,
    _: Admin,
    Path(PayoutPath { payout_id }): Path<PayoutPath>,
    ApiJson(body): ApiJson<PayoutOutcomeBody>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let (outcome, why) = match body {
        PayoutOutcomeBody::Paid { reference } => {
            check_text("reference", &reference, 128)?;
            (PayoutOutcome::Paid { reference }, "confirmed paid")
        }
        PayoutOutcomeBody::Failed { reason } => {
            check_text("reason", &reason, 500)?;
            let why = "marked failed";
            (PayoutOutcome::Failed { reason }, why)
        }
    };
    let now = state.affiliates.now_ms();
    let decided = write_because(
        &state,
        why,
        |p| p.settle_by_hand(&payout_id, outcome, now),
        |e| match e {
            SettleError::UnknownPayout(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Conflict(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}

/// Where an affiliate is paid.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PayoutAccount {
    /// Their Stripe connected account, acct_….
    stripe_account: String,
}

#[utoipa::path(
    put,
    path = "/affiliates/{affiliate_id}/payout-account",
    summary = "Set the Stripe connected account an affiliate is paid into (admin).",
    params(AffiliatePath),
    request_body = PayoutAccount,
    responses(
        (status = 201, description = "Set.", body = Recorded),
        (status = 200, description = "Already this account.", body = Recorded),
        (status = 404, description = "No such affiliate."),
        (status = 422, description = "Not a connected account id."),
        Admin,
    )
)]
pub(super) async fn set_payout_account(
    State(state): State<AppState>,
    _: Admin,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    ApiJson(body): ApiJson<PayoutAccount>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.set_payout_account(&affiliate_id, &body.stripe_account, now),
        |e| match e {
            PayoutAccountError::UnknownAffiliate(_) => ApiError::NotFound(e.to_string()),
            PayoutAccountError::InvalidAccount => ApiError::Unprocessable(e.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}
