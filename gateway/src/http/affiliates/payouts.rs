//! Payouts: admin pays an affiliate everything payable, clawbacks netted.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use eagate_affiliates::Fact;
use eagate_affiliates::programme::PayoutError;
use serde::Deserialize;

use super::{Recorded, recorded, write};
use crate::http::{Admin, ApiError, ApiJson, AppState, check_text};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPayout {
    payout_id: String,
}

pub(super) async fn pay_out(
    State(state): State<AppState>,
    _: Admin,
    Path(affiliate_id): Path<String>,
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
