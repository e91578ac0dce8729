//! Manual adjustments: an admin corrects an affiliate's balance with a
//! signed ledger line and a reason, instead of editing history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use eagate_affiliates::programme::AdjustmentError;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{AffiliatePath, Recorded, recorded, write_because};
use crate::http::{Admin, ApiError, ApiJson, AppState, check_text};

/// A correction of an affiliate's balance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAdjustment {
    /// The admin's id for it; the same id again changes nothing.
    #[schema(min_length = 1, max_length = 128)]
    adjustment_id: String,
    /// Signed minor units of the programme's currency: positive is owed to
    /// the affiliate, negative by them. Not zero.
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
    amount_minor: i64,
    /// Why, for the audit trail (not empty, at most 500 bytes).
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/affiliates/{affiliate_id}/adjustments",
    summary = "Add a signed adjustment to an affiliate's balance, with a reason (admin); payable at once, netted at the next payout. Idempotent on adjustment_id.",
    params(AffiliatePath),
    request_body = NewAdjustment,
    responses(
        (status = 201, description = "Recorded as a ledger line.", body = Recorded),
        (status = 200, description = "This adjustment was already recorded.", body = Recorded),
        (status = 404, description = "No such affiliate."),
        (status = 409, description = "adjustment_id was recorded with other details."),
        (status = 422, description = "A zero or out-of-range amount, an empty reason, or invalid input."),
        Admin,
    )
)]
pub(super) async fn adjust(
    State(state): State<AppState>,
    _: Admin,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    ApiJson(new): ApiJson<NewAdjustment>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("adjustment_id", &new.adjustment_id, 128)?;
    check_text("reason", &new.reason, 500)?;
    let now = state.affiliates.now_ms();
    let decided = write_because(
        &state,
        &new.reason,
        |p| {
            p.adjust(
                &affiliate_id,
                &new.adjustment_id,
                new.amount_minor,
                &new.reason,
                now,
            )
        },
        |e| match e {
            AdjustmentError::UnknownAffiliate(_) => ApiError::NotFound(e.to_string()),
            AdjustmentError::IdReused(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    if !decided.facts.is_empty() {
        tracing::info!(affiliate = %affiliate_id, adjustment = %new.adjustment_id, amount_minor = new.amount_minor, "adjustment recorded");
    }
    Ok(recorded(decided))
}
