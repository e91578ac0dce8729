//! Signals, as the platform (or an admin) sends and follows them:
//! publishing to a channel, safe to retry with an Idempotency-Key, and what
//! became of a signal on every device that should have it.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use eagate_protocol::{Signal, SignalId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiJson, AppState, ChannelPath, PlatformOrAdmin};
use crate::api_schema;
use crate::reports::{ReportKind, StoredReport};
use crate::signals::SignalDraft;

/// The `/v1` signal routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish_signal))
        .routes(routes!(signal_executions))
}

/// The header that makes a publish safe to retry, as sent; checked in the
/// handler, after the channel and the body.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
struct IdempotencyKey {
    /// Makes the publish safe to retry: a second publish with the same key
    /// on this channel stores nothing and answers 200 with the first
    /// signal.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 128
    )]
    sent: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let sent = parts.headers.get("idempotency-key").cloned();
        Ok(Self { sent })
    }
}

impl IdempotencyKey {
    /// The key, if one was sent, or 422 for one no key can be.
    fn parse(self) -> Result<Option<String>, ApiError> {
        let Some(value) = self.sent else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty() && key.len() <= 128)
            .ok_or_else(|| {
                ApiError::Unprocessable(
                    "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
                )
            })?;
        Ok(Some(key.to_owned()))
    }
}

#[utoipa::path(
    post,
    path = "/channels/{channel}/signals",
    summary = "Publish a signal to a channel (admin or platform token).",
    params(ChannelPath, IdempotencyKey),
    request_body = SignalDraft,
    responses(
        (status = 201, description = "Published, with its position and id.", body = api_schema::Signal),
        (status = 200, description = "Already published with this Idempotency-Key; the same signal.", body = api_schema::Signal),
        (status = 409, description = "The Idempotency-Key already published a different signal."),
        (status = 413, description = "Body too large."),
        (status = 422, description = "Invalid signal."),
        PlatformOrAdmin,
    )
)]
async fn publish_signal(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(channel): Path<ChannelPath>,
    key: IdempotencyKey,
    ApiJson(draft): ApiJson<SignalDraft>,
) -> Result<(StatusCode, Json<Signal>), ApiError> {
    let channel = channel.parse()?;
    let key = key.parse()?;
    let appended = state.core.publish(&channel, draft, key).await?;
    // A replay answers like the original, with 200 instead of 201.
    let status = if appended.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(appended.signal)))
}

/// What happened to one signal on every device that should have it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Executions {
    /// The signal.
    #[schema(value_type = api_schema::SignalId)]
    pub signal_id: SignalId,
    /// Its channel.
    pub channel: String,
    /// Its position in the channel.
    pub position: u64,
    /// One entry per subscribed or reporting device.
    pub devices: Vec<DeviceExecution>,
}

/// One device's handling of a signal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceExecution {
    /// The device.
    pub device_id: String,
    /// `pending` (not sent yet), `delivered` (sent, nothing reported yet),
    /// `received`, `filled`, `rejected`, or `reversed` (every fill undone).
    pub status: ExecutionStatus,
    /// Every report, in sequence order.
    pub reports: Vec<StoredReport>,
}

/// How far a device got with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    /// Not yet sent to the device (it is offline, or behind).
    Pending,
    /// Sent to the device, which has not reported on it yet.
    Delivered,
    /// Received, not (yet) filled or rejected.
    Received,
    /// Filled, at least partly.
    Filled,
    /// Rejected.
    Rejected,
    /// Filled, and then every fill reversed (the device reported the
    /// broker undid the deals).
    Reversed,
}

impl ExecutionStatus {
    /// How far a device got, from its reports about the signal (None for
    /// none): the furthest of received, filled and rejected; reversed once
    /// every fill's ticket is named by a later reversal.
    fn of_reports(reports: &[StoredReport]) -> Option<Self> {
        let reversed = |fill: &StoredReport| {
            reports.iter().any(|r| {
                r.kind == ReportKind::Reversed && r.seq > fill.seq && r.ticket == fill.ticket
            })
        };
        let mut fills = reports.iter().filter(|r| r.kind == ReportKind::Filled);
        let furthest = reports
            .iter()
            .filter_map(|r| match r.kind {
                ReportKind::Received => Some(Self::Received),
                ReportKind::Filled => Some(Self::Filled),
                ReportKind::Rejected => Some(Self::Rejected),
                ReportKind::Reversed => None,
            })
            .max();
        match furthest {
            Some(Self::Filled) if fills.all(reversed) => Some(Self::Reversed),
            other => other,
        }
    }
}

/// A signal named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct SignalPath {
    /// 32 hex digits.
    signal_id: String,
}

#[utoipa::path(
    get,
    path = "/signals/{signal_id}/executions",
    summary = "What happened to a signal on every device (admin or platform token).",
    params(SignalPath),
    responses(
        (status = 200, description = "Per device: pending, delivered, received, filled, rejected or reversed.", body = Executions),
        (status = 404, description = "No such signal."),
        (status = 422, description = "Malformed signal id."),
        PlatformOrAdmin,
    )
)]
async fn signal_executions(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(SignalPath { signal_id }): Path<SignalPath>,
) -> Result<Json<Executions>, ApiError> {
    executions_of(&state, &signal_id).await.map(Json)
}

/// What happened to the signal `signal_id` (32 hex digits) on every device
/// that should have it.
pub(super) async fn executions_of(
    state: &AppState,
    signal_id: &str,
) -> Result<Executions, ApiError> {
    let signal_id: SignalId = signal_id
        .parse()
        .map_err(|e| ApiError::Unprocessable(format!("signal id: {e}")))?;
    let core = &state.core;
    let (channel, position) = core
        .signals
        .locate(signal_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no signal {signal_id}")))?;
    let mut devices: BTreeMap<String, Vec<StoredReport>> = core
        .registry
        .list(None)
        .await?
        .into_iter()
        .filter(|record| record.channels.iter().any(|c| c == channel.as_str()))
        .map(|record| (record.device_id, Vec::new()))
        .collect();
    for report in core.reports.for_signal(signal_id).await? {
        devices
            .entry(report.device_id.clone())
            .or_default()
            .push(report);
    }
    let mut executions = Vec::with_capacity(devices.len());
    for (device_id, reports) in devices {
        let status = match ExecutionStatus::of_reports(&reports) {
            Some(status) => status,
            None => match core.positions.delivered(&device_id, &channel).await? {
                Some(delivered) if delivered >= position => ExecutionStatus::Delivered,
                _ => ExecutionStatus::Pending,
            },
        };
        executions.push(DeviceExecution {
            status,
            device_id,
            reports,
        });
    }
    Ok(Executions {
        signal_id,
        channel: channel.to_string(),
        position,
        devices: executions,
    })
}
