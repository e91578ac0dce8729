//! Customer referral credits: email verifications (one of the gates to a
//! credit), a customer's own referral code, and their credit ledger.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::{day_of, format_instant};
use eagate_affiliates::programme::{
    CreditEntry, CreditKind, CreditSpendError, CreditStatus, CustomerCodeError,
};
use eagate_affiliates::{Currency, WriteError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::pages::{PageQuery, csv_response, date_bound, json_name, page_limit, wants_csv};
use super::{Recorded, new_code, parse_occurred_at, recorded, write};
use crate::api_schema;
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

/// A user who verified their email.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailVerification {
    /// The platform user.
    #[schema(min_length = 1, max_length = 128)]
    user_id: String,
    /// When the user verified it, as the platform recorded it (RFC 3339, such as
    /// `2026-11-29T16:15:54Z`): every rule that depends on time uses it. At
    /// most 5 minutes ahead of the gateway's clock, and no older than the
    /// programme's event age limit.
    #[schema(format = DateTime, example = "2026-11-29T16:15:54Z")]
    occurred_at: String,
}

/// A platform user named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct CustomerPath {
    /// The platform's user id.
    user_id: String,
}

#[utoipa::path(
    post,
    path = "/email-verifications",
    summary = "A user verified their email (platform or admin token); may release referral credits.",
    request_body = EmailVerification,
    responses(
        (status = 201, description = "Recorded.", body = Recorded),
        (status = 200, description = "Already verified.", body = Recorded),
        (status = 422, description = "A verification too old or in the future, or invalid input."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn verify_email(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<EmailVerification>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    let occurred_at_ms = parse_occurred_at(&new.occurred_at)?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.verify_email(&new.user_id, occurred_at_ms, now),
        |e| ApiError::Unprocessable(e.to_string()),
    )
    .await?;
    Ok(recorded(decided))
}

/// A customer's referral code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = CustomerCode)]
pub struct CustomerCodeView {
    /// The customer.
    pub user_id: String,
    /// The code, as people type it.
    pub code: String,
    /// The referral link.
    pub link: String,
}

#[utoipa::path(
    post,
    path = "/customers/{user_id}/referral-code",
    summary = "A customer's referral code for referral credits; a customer keeps the code they have (platform or admin token).",
    params(CustomerPath),
    responses(
        (status = 201, description = "Issued.", body = CustomerCodeView),
        (status = 200, description = "The code the customer already has.", body = CustomerCodeView),
        (status = 422, description = "Invalid user id."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn customer_code(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(CustomerPath { user_id }): Path<CustomerPath>,
) -> Result<(StatusCode, Json<CustomerCodeView>), ApiError> {
    check_text("user_id", &user_id, 128)?;
    let mut attempts = 0;
    let decided = loop {
        attempts += 1;
        let code = new_code()?;
        let now = state.affiliates.now_ms();
        let written = state
            .affiliates
            .ledger
            .write_by(&super::caller_because(""), |p| {
                p.issue_customer_code(&user_id, code, now)
            })
            .await;
        match written {
            Ok(decided) => break decided,
            Err(WriteError::Refused(CustomerCodeError::Collision)) if attempts < 8 => continue,
            Err(WriteError::Refused(e)) => return Err(ApiError::Internal(e.to_string())),
            Err(WriteError::Journal(e)) => return Err(e.into()),
        }
    };
    let code = state
        .affiliates
        .ledger
        .read()
        .customer_code(&user_id)
        .ok_or_else(|| ApiError::Internal("a customer code vanished".into()))?;
    let status = if decided.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(CustomerCodeView {
            user_id,
            code: code.to_string(),
            link: state.affiliates.link(&code),
        }),
    ))
}

/// A credit ledger line as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreditView {
    /// The ledger entry.
    pub credit_id: u64,
    /// Signed: grants positive, reversals and spends negative.
    pub amount_minor: i64,
    /// `referred_a_customer` or `was_referred` (grants), `reversal`, or
    /// `spend`.
    #[schema(value_type = api_schema::CreditKind)]
    pub reason: CreditKind,
    /// Grants: `pending` (in the holding period), `available` or
    /// `reversed`, now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CreditStatusView>,
    /// Grants and reversals: the referred customer whose spend earned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_user_id: Option<String>,
    /// Grants: when it stops being pending, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at_ms: Option<u64>,
    /// Reversals: the grant taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_credit: Option<u64>,
    /// Reversals: the refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Spends: the platform's spend id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_id: Option<String>,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// Where a grant stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreditStatusView {
    /// In the holding period: a refund may still reverse it.
    Pending,
    /// Spendable.
    Available,
    /// Taken back by a refund.
    Reversed,
}

impl From<CreditStatus> for CreditStatusView {
    fn from(status: CreditStatus) -> Self {
        match status {
            CreditStatus::Pending => Self::Pending,
            CreditStatus::Available => Self::Available,
            CreditStatus::Reversed => Self::Reversed,
        }
    }
}

fn credit_view(entry: &CreditEntry, now: u64) -> CreditView {
    let grant = entry.is_grant();
    let (refund_id, spend_id) = match entry.kind {
        CreditKind::Reversal => (entry.reference.clone(), None),
        CreditKind::Spend => (None, entry.reference.clone()),
        _ => (None, None),
    };
    CreditView {
        credit_id: entry.credit_id,
        amount_minor: entry.amount_minor,
        reason: entry.kind,
        status: entry.status(now).map(Into::into),
        referred_user_id: (!entry.referred_user_id.is_empty())
            .then(|| entry.referred_user_id.clone()),
        available_at_ms: grant.then_some(entry.available_at_ms),
        of_credit: entry.of_credit,
        refund_id,
        spend_id,
        at_ms: entry.at_ms,
    }
}

/// A customer's credit balance and a page of its history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    /// The customer.
    pub user_id: String,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// `pending_minor + available_minor`: what the ledger's lines add up to.
    pub balance_minor: i64,
    /// Granted and still in the holding period: a refund may reverse it,
    /// and it cannot be spent yet.
    pub pending_minor: i64,
    /// What may be spent now. Never below zero.
    pub available_minor: i64,
    /// Oldest first.
    pub items: Vec<CreditView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// Which of a customer's credit lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CreditFilter {
    /// Grants' standing is shown per line; filtering by it is refused, not
    /// ignored.
    #[param(ignore)]
    status: Option<String>,
    /// Only lines of this kind.
    #[param(value_type = Option<api_schema::CreditKind>, inline)]
    kind: Option<CreditKind>,
}

#[utoipa::path(
    get,
    path = "/customers/{user_id}/credits",
    summary = "A customer's credit balance (pending and available) and credit ledger (grants, reversals, spends), paginated, as JSON or CSV (platform or admin token).",
    params(CustomerPath, PageQuery, CreditFilter),
    responses(
        (status = 200, description = "Balance and a page of entries, or every entry as CSV.", content(
            (Credits = "application/json"),
            (String = "text/csv"),
        )),
        (status = 422, description = "Invalid paging or filter."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn credits(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(CustomerPath { user_id }): Path<CustomerPath>,
    headers: HeaderMap,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<CreditFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (Query(page), Query(filter)) = (page?, filter?);
    let csv = wants_csv(&page, &headers);
    let limit = page_limit(&page, csv)?;
    let after = page.after.unwrap_or(0);
    if filter.status.is_some() {
        return Err(ApiError::Unprocessable(
            "credit lines are filtered by kind, from or to; each grant shows its status".to_owned(),
        ));
    }
    let now = state.affiliates.now_ms();
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let balance = programme
        .credit_balance(&user_id, now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let balance_minor = eagate_affiliates::money::total(balance.pending, balance.available)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let kind = filter.kind;
    let from = date_bound("from", page.from.as_deref())?;
    let to = date_bound("to", page.to.as_deref())?;
    let mut matching = programme
        .credits_of(&user_id)
        .filter(|c| c.credit_id > after)
        .filter(|c| kind.is_none_or(|k| c.kind == k))
        .filter(|c| from.is_none_or(|d| day_of(c.at_ms) >= d))
        .filter(|c| to.is_none_or(|d| day_of(c.at_ms) <= d))
        .map(|c| credit_view(c, now));
    let items: Vec<CreditView> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let rows = items
            .into_iter()
            .map(|c| {
                vec![
                    c.credit_id.to_string(),
                    format_instant(c.at_ms),
                    user_id.clone(),
                    json_name(c.reason),
                    opt(c.referred_user_id),
                    c.amount_minor.to_string(),
                    currency.format_major(c.amount_minor),
                    currency.to_string(),
                    opt(c.status.map(json_name)),
                    opt(c.available_at_ms.map(format_instant)),
                    opt(c.of_credit.map(|id| id.to_string())),
                    opt(c.refund_id),
                    opt(c.spend_id),
                ]
            })
            .collect();
        return Ok(csv_response(
            "credits.csv",
            "credit_id,at,user_id,reason,referred_user_id,amount_minor,amount,currency,status,available_at,of_credit,refund_id,spend_id",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|c| c.credit_id)).flatten();
    Ok(Json(Credits {
        user_id: user_id.clone(),
        currency,
        balance_minor,
        pending_minor: balance.pending,
        available_minor: balance.available,
        items,
        next_after,
    })
    .into_response())
}

/// Credit a customer spends on the platform.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCreditSpend {
    /// The platform's id for the spend; the same id again changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    spend_id: String,
    /// How much, in minor units of `currency`: at most the available
    /// balance.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_minor: i64,
    /// ISO 4217; the programme's currency.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
}

#[utoipa::path(
    post,
    path = "/customers/{user_id}/credit-spends",
    summary = "A customer spends available credit (platform or admin token); idempotent on spend_id. Pending credit cannot be spent, and a balance never goes below zero.",
    params(CustomerPath),
    request_body = NewCreditSpend,
    responses(
        (status = 201, description = "Spent: a line of the credit ledger.", body = Recorded),
        (status = 200, description = "This spend was already recorded.", body = Recorded),
        (status = 409, description = "More than the available balance, or spend_id recorded with other details."),
        (status = 422, description = "Invalid amount or currency."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn spend_credit(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(CustomerPath { user_id }): Path<CustomerPath>,
    ApiJson(new): ApiJson<NewCreditSpend>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("user_id", &user_id, 128)?;
    check_text("spend_id", &new.spend_id, 128)?;
    let currency: Currency =
        new.currency
            .parse()
            .map_err(|e: eagate_affiliates::money::BadCurrency| {
                ApiError::Unprocessable(e.to_string())
            })?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.spend_credit(&user_id, &new.spend_id, new.amount_minor, currency, now),
        |e| match e {
            CreditSpendError::Insufficient { .. } | CreditSpendError::IdReused(_) => {
                ApiError::Conflict(e.to_string())
            }
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}
