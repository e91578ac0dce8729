//! Per-trade commissions from the admin's side: bust a fill (a trade the
//! broker cancelled, a fill reported in error), which reverses its
//! commission or claws it back once paid.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use eagate_affiliates::programme::BustError;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{Recorded, recorded, write_because};
use crate::http::{Admin, ApiError, ApiJson, AppState, check_text};

/// A fill by its identity: the reporting device and the report's sequence.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct FillPath {
    /// The device that reported the fill.
    device_id: String,
    /// The report's sequence number. Read as text: a path that is no
    /// sequence number names no fill (404), like any other unknown id.
    #[param(value_type = u64, minimum = 0)]
    seq: String,
}

/// Why a fill is busted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Bust {
    /// Why, for the audit trail (not empty, at most 500 bytes).
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/trades/{device_id}/{seq}/bust",
    summary = "Bust a fill counted for a per-trade commission (admin): its commission is reversed, or clawed back if paid, and it no longer counts toward tiers. Busting it again changes nothing.",
    params(FillPath),
    request_body = Bust,
    responses(
        (status = 201, description = "Busted.", body = Recorded),
        (status = 200, description = "The fill was busted already.", body = Recorded),
        (status = 404, description = "No fill with that identity was counted for a commission."),
        (status = 422, description = "An empty reason, or invalid input."),
        Admin,
    )
)]
pub(super) async fn bust(
    State(state): State<AppState>,
    _: Admin,
    Path(FillPath { device_id, seq }): Path<FillPath>,
    ApiJson(bust): ApiJson<Bust>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no counted fill {seq} of device {device_id}")))?;
    check_text("reason", &bust.reason, 500)?;
    let now = state.affiliates.now_ms();
    let decided = write_because(
        &state,
        &bust.reason,
        |p| p.bust_trade(&device_id, seq, &bust.reason, now),
        |e| match e {
            BustError::UnknownFill { .. } => ApiError::NotFound(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    if !decided.facts.is_empty() {
        tracing::info!(device = %device_id, seq, "fill busted");
    }
    Ok(recorded(decided))
}
