//! Customer referral credits: email verifications (one of the gates to a
//! credit), a customer's own referral code, and their credit ledger.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eagate_affiliates::calendar::{day_of, format_instant};
use eagate_affiliates::money::format_major;
use eagate_affiliates::programme::CustomerCodeError;
use eagate_affiliates::{CreditReason, Currency, WriteError};
use serde::{Deserialize, Serialize};

use super::pages::{PageQuery, csv_response, date_bound, page_limit, wants_csv};
use super::{Recorded, new_code, recorded, write};
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailVerification {
    user_id: String,
}

pub(super) async fn verify_email(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<EmailVerification>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| Ok::<_, std::convert::Infallible>(p.verify_email(&new.user_id, now)),
        |never| match never {},
    )
    .await?;
    Ok(recorded(decided))
}

/// A customer's referral code.
#[derive(Debug, Serialize, Deserialize)]
pub struct CustomerCodeView {
    /// The customer.
    pub user_id: String,
    /// The code, as people type it.
    pub code: String,
    /// The referral link.
    pub link: String,
}

pub(super) async fn customer_code(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(user_id): Path<String>,
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
#[derive(Debug, Serialize, Deserialize)]
pub struct CreditView {
    /// The ledger entry.
    pub credit_id: u64,
    /// How much.
    pub amount_minor: i64,
    /// `referred_a_customer` or `was_referred`.
    pub reason: CreditReason,
    /// The referred customer whose spend earned it.
    pub referred_user_id: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A customer's credit balance and a page of its history.
#[derive(Debug, Serialize, Deserialize)]
pub struct Credits {
    /// The customer.
    pub user_id: String,
    /// The programme's currency.
    pub currency: Currency,
    /// Every credit ever granted, summed.
    pub balance_minor: i64,
    /// Oldest first.
    pub items: Vec<CreditView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

pub(super) async fn credits(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let csv = wants_csv(&query, &headers)?;
    let limit = page_limit(&query, csv)?;
    let after = query.after.unwrap_or(0);
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let balance_minor = programme.credits_of(&user_id).map(|c| c.amount_minor).sum();
    if query.status.is_some() {
        return Err(ApiError::Unprocessable(
            "credits have no status: filter them by kind, from or to".to_owned(),
        ));
    }
    let reason = match query.kind.as_deref() {
        None => None,
        Some("referred_a_customer") => Some(CreditReason::ReferredACustomer),
        Some("was_referred") => Some(CreditReason::WasReferred),
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "kind must be referred_a_customer or was_referred, not {other:?}"
            )));
        }
    };
    let from = date_bound("from", query.from.as_deref())?;
    let to = date_bound("to", query.to.as_deref())?;
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
                    reason_name(c.reason).to_owned(),
                    c.referred_user_id.clone(),
                    c.amount_minor.to_string(),
                    format_major(c.amount_minor),
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

fn reason_name(reason: CreditReason) -> &'static str {
    match reason {
        CreditReason::ReferredACustomer => "referred_a_customer",
        CreditReason::WasReferred => "was_referred",
    }
}
