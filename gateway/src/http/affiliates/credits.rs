//! Customer referral credits: email verifications (one of the gates to a
//! credit), a customer's own referral code, and their credit ledger.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::{day_of, format_instant};
use eagate_affiliates::programme::CustomerCodeError;
use eagate_affiliates::{CreditReason, Currency, WriteError};
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
    #[schema(max_length = 128)]
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
            .write(|p| p.issue_customer_code(&user_id, code, now))
            .await;
        match written {
            Ok(decided) => break decided,
            Err(WriteError::Refused(CustomerCodeError::Collision)) if attempts < 8 => continue,
            Err(WriteError::Refused(e)) => return Err(ApiError::Internal(e.to_string())),
            Err(WriteError::Journal(e)) => return Err(ApiError::Internal(e.to_string())),
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
    /// How much.
    pub amount_minor: i64,
    /// `referred_a_customer` or `was_referred`.
    #[schema(value_type = api_schema::CreditReason)]
    pub reason: CreditReason,
    /// The referred customer whose spend earned it.
    pub referred_user_id: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A customer's credit balance and a page of its history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credits {
    /// The customer.
    pub user_id: String,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Every credit ever granted, summed.
    pub balance_minor: i64,
    /// Oldest first.
    pub items: Vec<CreditView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// Which of a customer's credits to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CreditFilter {
    /// Credits have no status; asking for one is refused, not ignored.
    #[param(ignore)]
    status: Option<String>,
    /// Only credits for this reason.
    #[param(value_type = Option<api_schema::CreditReason>, inline)]
    kind: Option<CreditReason>,
}

#[utoipa::path(
    get,
    path = "/customers/{user_id}/credits",
    summary = "A customer's credit balance and credit ledger, paginated, as JSON or CSV (platform or admin token).",
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
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let balance_minor =
        eagate_affiliates::money::sum(programme.credits_of(&user_id).map(|c| c.amount_minor))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    if filter.status.is_some() {
        return Err(ApiError::Unprocessable(
            "credits have no status: filter them by kind, from or to".to_owned(),
        ));
    }
    let reason = filter.kind;
    let from = date_bound("from", page.from.as_deref())?;
    let to = date_bound("to", page.to.as_deref())?;
    let mut matching = programme
        .credits_of(&user_id)
        .filter(|c| c.credit_id > after)
        .filter(|c| reason.is_none_or(|r| c.reason == r))
        .filter(|c| from.is_none_or(|d| day_of(c.at_ms) >= d))
        .filter(|c| to.is_none_or(|d| day_of(c.at_ms) <= d));
    let items: Vec<_> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let rows = items
            .iter()
            .map(|c| {
                vec![
                    c.credit_id.to_string(),
                    format_instant(c.at_ms),
                    user_id.clone(),
                    json_name(c.reason),
                    c.referred_user_id.clone(),
                    c.amount_minor.to_string(),
                    currency.format_major(c.amount_minor),
                    currency.to_string(),
                ]
            })
            .collect();
        return Ok(csv_response(
            "credits.csv",
            "credit_id,at,user_id,reason,referred_user_id,amount_minor,amount,currency",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|c| c.credit_id)).flatten();
    let items = items
        .into_iter()
        .map(|c| CreditView {
            credit_id: c.credit_id,
            amount_minor: c.amount_minor,
            reason: c.reason,
            referred_user_id: c.referred_user_id.clone(),
            at_ms: c.at_ms,
        })
        .collect();
    Ok(Json(Credits {
        user_id: user_id.clone(),
        currency,
        balance_minor,
        items,
        next_after,
    })
    .into_response())
}
