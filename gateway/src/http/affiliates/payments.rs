//! The platform's money events: subscription payments and their refunds,
//! each idempotent by its id.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eagate_affiliates::programme::{PaymentError, RefundError};
use eagate_affiliates::{Currency, PaymentEvent, RefundEvent};
use serde::Deserialize;

use super::{Recorded, recorded, write};
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

fn parse_currency(text: &str) -> Result<Currency, ApiError> {
    text.parse()
        .map_err(|e: eagate_affiliates::money::BadCurrency| ApiError::Unprocessable(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPayment {
    payment_id: String,
    user_id: String,
    amount_minor: i64,
    currency: String,
    billing_period: u32,
}

pub(super) async fn pay(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewPayment>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("payment_id", &new.payment_id, 128)?;
    check_text("user_id", &new.user_id, 128)?;
    let payment = PaymentEvent {
        currency: parse_currency(&new.currency)?,
        payment_id: new.payment_id,
        user_id: new.user_id,
        amount_minor: new.amount_minor,
        billing_period: new.billing_period,
    };
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.pay(&payment, now),
        |e| match e {
            PaymentError::IdReused(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRefund {
    refund_id: String,
    payment_id: String,
    amount_minor: i64,
    currency: String,
}

pub(super) async fn refund(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewRefund>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("refund_id", &new.refund_id, 128)?;
    check_text("payment_id", &new.payment_id, 128)?;
    let refund = RefundEvent {
        currency: parse_currency(&new.currency)?,
        refund_id: new.refund_id,
        payment_id: new.payment_id,
        amount_minor: new.amount_minor,
    };
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.refund(&refund, now),
        |e| match e {
            RefundError::IdReused(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}
