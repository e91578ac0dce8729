//! The platform's money events: subscription payments and their refunds,
//! each idempotent by its id.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eagate_affiliates::programme::{PaymentError, RefundError};
use eagate_affiliates::{Currency, PaymentEvent, RefundEvent};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Recorded, parse_occurred_at, recorded, write};
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

fn parse_currency(text: &str) -> Result<Currency, ApiError> {
    text.parse()
        .map_err(|e: eagate_affiliates::money::BadCurrency| ApiError::Unprocessable(e.to_string()))
}

/// A subscription payment, as the platform took it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPayment {
    /// The platform's id of the payment; the same id again changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    payment_id: String,
    /// The paying user.
    #[schema(min_length = 1, max_length = 128)]
    user_id: String,
    /// How much, in minor units (pence) of `currency`.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_minor: i64,
    /// ISO 4217; the programme's currency.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Which billing period of the subscription, 1 for the first: kept for
    /// display only. The commission's month is decided from the customer's
    /// own payment dates (`occurred_at`).
    #[schema(minimum = 1)]
    billing_period: u32,
    /// When the payment was taken, as the platform recorded it (RFC 3339, such as
    /// `2026-11-29T16:15:54Z`): every rule that depends on time uses it. At
    /// most 5 minutes ahead of the gateway's clock, and no older than the
    /// programme's event age limit.
    #[schema(format = DateTime, example = "2026-11-29T16:15:54Z")]
    occurred_at: String,
}

#[utoipa::path(
    post,
    path = "/payments",
    summary = "A subscription payment (platform or admin token); idempotent on payment_id.",
    request_body = NewPayment,
    responses(
        (status = 201, description = "Recorded, with any commission or credit it earned.", body = Recorded),
        (status = 200, description = "Already recorded.", body = Recorded),
        (status = 409, description = "payment_id was recorded with other details."),
        (status = 422, description = "Invalid amount, currency or period, or a payment too old or in the future."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn pay(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewPayment>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("payment_id", &new.payment_id, 128)?;
    check_text("user_id", &new.user_id, 128)?;
    let occurred_at_ms = parse_occurred_at(&new.occurred_at)?;
    let payment = PaymentEvent {
        currency: parse_currency(&new.currency)?,
        payment_id: new.payment_id,
        user_id: new.user_id,
        amount_minor: new.amount_minor,
        billing_period: new.billing_period,
        occurred_at_ms,
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

/// A full or partial refund of a payment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRefund {
    /// The platform's id of the refund; the same id again changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    refund_id: String,
    /// The payment refunded.
    #[schema(min_length = 1, max_length = 128)]
    payment_id: String,
    /// How much, in minor units of `currency`; at most what is left of the
    /// payment.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_minor: i64,
    /// ISO 4217; the payment's currency.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// When the refund was made, as the platform recorded it (RFC 3339, such as
    /// `2026-11-29T16:15:54Z`): every rule that depends on time uses it. At
    /// most 5 minutes ahead of the gateway's clock, and no older than the
    /// programme's event age limit.
    #[schema(format = DateTime, example = "2026-11-29T16:15:54Z")]
    occurred_at: String,
}

#[utoipa::path(
    post,
    path = "/refunds",
    summary = "A full or partial refund (platform or admin token); idempotent on refund_id. Claws back the matching commission.",
    request_body = NewRefund,
    responses(
        (status = 201, description = "Recorded, with the reversals or clawbacks it caused.", body = Recorded),
        (status = 200, description = "Already recorded.", body = Recorded),
        (status = 409, description = "refund_id was recorded with other details."),
        (status = 422, description = "Unknown payment, more than is left to refund, a refund too old, in the future or before its payment, or invalid input."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn refund(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewRefund>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("refund_id", &new.refund_id, 128)?;
    check_text("payment_id", &new.payment_id, 128)?;
    let occurred_at_ms = parse_occurred_at(&new.occurred_at)?;
    let refund = RefundEvent {
        currency: parse_currency(&new.currency)?,
        refund_id: new.refund_id,
        payment_id: new.payment_id,
        amount_minor: new.amount_minor,
        occurred_at_ms,
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
