//! Payouts: admin pays an affiliate everything payable, clawbacks netted.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use eagate_affiliates::Fact;
use eagate_affiliates::programme::PayoutError;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{AffiliatePath, Recorded, recorded, write};
use crate::http::{Admin, ApiError, ApiJson, AppState, check_text};

/// A payout to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPayout {
    /// The payout's id; the same id again changes nothing.
    #[schema(max_length = 128)]
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
            other => ApiError::Conflict(other.to_string()),
        },
    )
    .await?;
    if let Some(Fact::PayoutMade { amount_minor, .. }) = decided.facts.first() {
        tracing::info!(affiliate = %affiliate_id, payout = %new.payout_id, amount_minor, "payout recorded");
    }
    Ok(recorded(decided))
}
