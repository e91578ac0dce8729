//! The HTTP sidecar for admins and the platform backend: devices, signals,
//! executions, health. `router(state)` builds the service without binding a
//! socket, so tests drive it with `oneshot`.

pub mod affiliates;
mod openapi;
mod problem;
pub mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use eagate_protocol::{ChannelName, Signal, SignalId};
use serde::{Deserialize, Serialize};

pub use problem::ApiError;
use tokens::{Scope, TokenStore};

use crate::core::Core;
use crate::registry::DeviceRecord;
use crate::reports::{ReportKind, StoredReport};
use crate::signals::SignalDraft;

/// The largest request body accepted; every valid request is far smaller.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The device path's state: registry, logs, stores, live sessions.
    pub core: Arc<Core>,
    /// Accepted bearer tokens.
    pub tokens: Arc<TokenStore>,
    /// The affiliate programme.
    pub affiliates: crate::affiliates::AffiliateDesk,
}

/// The sidecar's routes.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/devices", post(register_device).get(list_devices))
        .route("/devices/{device_id}", get(get_device).patch(rename_device))
        .route("/devices/{device_id}/revoke", post(revoke_device))
        .route("/devices/{device_id}/rotate-secret", post(rotate_secret))
        .route(
            "/devices/{device_id}/subscriptions/{channel}",
            put(subscribe).delete(unsubscribe),
        )
        .route("/channels/{channel}/signals", post(publish_signal))
        .route("/signals/{signal_id}/executions", get(signal_executions))
        .merge(affiliates::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .merge(affiliates::click_route())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Who the request's bearer token belongs to; every `/v1` request has one.
#[derive(Debug, Clone)]
enum Caller {
    /// An admin or platform token.
    Token(Scope),
    /// An affiliate's own token: reads that affiliate's data only.
    Affiliate(String),
}

fn caller_scope(parts: &Parts, allowed: &[Scope]) -> Result<(), ApiError> {
    match parts.extensions.get::<Caller>() {
        None => Err(ApiError::Unauthorized),
        Some(Caller::Token(scope)) if allowed.contains(scope) => Ok(()),
        Some(_) => Err(ApiError::Forbidden),
    }
}

/// A caller with an admin token. As an extractor it runs before the body is
/// read, so a wrong scope is 403 whatever the body holds.
struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        caller_scope(parts, &[Scope::Admin]).map(|()| Self)
    }
}

/// A caller with an admin or platform token: publishes signals, reads
/// executions, writes the platform's affiliate events.
struct PlatformOrAdmin;

impl<S: Send + Sync> FromRequestParts<S> for PlatformOrAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        caller_scope(parts, &[Scope::Admin, Scope::Platform]).map(|()| Self)
    }
}

async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let caller = match state.tokens.scope_of(token) {
        Some(scope) => Caller::Token(scope),
        None => {
            // Affiliate tokens are kept (hashed) in the programme's ledger.
            let hash = tokens::token_sha256(token);
            let programme = state.affiliates.ledger.read();
            let affiliate = programme
                .affiliate_of_token(&hash)
                .ok_or(ApiError::Unauthorized)?;
            Caller::Affiliate(affiliate.affiliate_id.clone())
        }
    };
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// `Json` whose rejections are problem details (422 with serde's message).
struct ApiJson<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// A device as the API shows it: never its secret.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceView {
    /// The gateway-issued id.
    pub device_id: String,
    /// The platform user it belongs to.
    pub account_id: String,
    /// Its name, unique within the account.
    pub name: String,
    /// Registration time, Unix ms.
    pub created_at_ms: u64,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<u64>,
    /// Subscribed channels.
    pub channels: Vec<String>,
    /// Whether it has a live session now.
    pub online: bool,
    /// When it last connected or disconnected (since the gateway started).
    pub last_seen_ms: Option<u64>,
    /// Its highest report sequence stored with no gap below it.
    pub last_report_seq: u64,
}

async fn view(core: &Core, record: DeviceRecord) -> Result<DeviceView, ApiError> {
    let presence = core.presence_of(&record.device_id).await;
    let last_report_seq = core.reports.confirmed_up_to(&record.device_id).await?;
    Ok(DeviceView {
        online: presence.sessions > 0,
        last_seen_ms: (presence.last_seen_ms > 0).then_some(presence.last_seen_ms),
        last_report_seq,
        device_id: record.device_id,
        account_id: record.account_id,
        name: record.name,
        created_at_ms: record.created_at_ms,
        revoked_at_ms: record.revoked_at_ms,
        channels: record.channels,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    account_id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    name: String,
}

/// A device with its secret: the one answer that shows the secret.
#[derive(Debug, Serialize)]
struct DeviceWithSecret {
    device: DeviceView,
    /// `egs_…`, shown this once; store it in the EA's inputs now.
    secret: String,
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > max {
        return Err(ApiError::Unprocessable(format!(
            "{field} is {} bytes long, at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

async fn register_device(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(new): ApiJson<NewDevice>,
) -> Result<(StatusCode, Json<DeviceWithSecret>), ApiError> {
    check_text("account_id", &new.account_id, 128)?;
    check_text("name", &new.name, 64)?;
    let core = &state.core;
    let (record, secret) = core
        .registry
        .register(&core.master_key, &new.account_id, &new.name)
        .await?;
    tracing::info!(device = %record.device_id, account = %record.account_id, "device registered");
    let secret = secret.to_text().to_string();
    Ok((
        StatusCode::CREATED,
        Json(DeviceWithSecret {
            device: view(core, record).await?,
            secret,
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    account_id: Option<String>,
}

async fn list_devices(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let Query(query) = query?;
    let records = state
        .core
        .registry
        .list(query.account_id.as_deref())
        .await?;
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        views.push(view(&state.core, record).await?);
    }
    Ok(Json(views))
}

fn found(record: Option<DeviceRecord>, device_id: &str) -> Result<DeviceRecord, ApiError> {
    record.ok_or_else(|| ApiError::NotFound(format!("no device {device_id}")))
}

async fn get_device(
    State(state): State<AppState>,
    _: Admin,
    Path(device_id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let record = found(state.core.registry.get(&device_id).await?, &device_id)?;
    Ok(Json(view(&state.core, record).await?))
}

async fn rename_device(
    State(state): State<AppState>,
    _: Admin,
    Path(device_id): Path<String>,
    ApiJson(rename): ApiJson<Rename>,
) -> Result<Json<DeviceView>, ApiError> {
    check_text("name", &rename.name, 64)?;
    let record = state.core.registry.rename(&device_id, &rename.name).await?;
    Ok(Json(view(&state.core, record).await?))
}

async fn revoke_device(
    State(state): State<AppState>,
    _: Admin,
    Path(device_id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let record = state.core.revoke(&device_id).await?;
    tracing::info!(device = %device_id, "device revoked");
    Ok(Json(view(&state.core, record).await?))
}

async fn rotate_secret(
    State(state): State<AppState>,
    _: Admin,
    Path(device_id): Path<String>,
) -> Result<Json<DeviceWithSecret>, ApiError> {
    let core = &state.core;
    let (record, secret) = core.rotate_secret(&device_id).await?;
    tracing::info!(device = %device_id, "device secret rotated");
    let secret = secret.to_text().to_string();
    Ok(Json(DeviceWithSecret {
        device: view(core, record).await?,
        secret,
    }))
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::new(name)
        .map_err(|e| ApiError::Unprocessable(format!("channel name {name:?} {e}")))
}

async fn subscribe(
    State(state): State<AppState>,
    _: Admin,
    Path((device_id, name)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    let channel = channel(&name)?;
    state.core.subscribe(&device_id, &channel).await?;
    let record = found(state.core.registry.get(&device_id).await?, &device_id)?;
    Ok(Json(view(&state.core, record).await?))
}

async fn unsubscribe(
    State(state): State<AppState>,
    _: Admin,
    Path((device_id, name)): Path<(String, String)>,
) -> Result<Json<DeviceView>, ApiError> {
    let channel = channel(&name)?;
    state.core.unsubscribe(&device_id, &channel).await?;
    let record = found(state.core.registry.get(&device_id).await?, &device_id)?;
    Ok(Json(view(&state.core, record).await?))
}

/// The header that makes a publish safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn publish_signal(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(draft): ApiJson<SignalDraft>,
) -> Result<(StatusCode, Json<Signal>), ApiError> {
    let channel = channel(&name)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| !key.is_empty() && key.len() <= 128)
                .ok_or_else(|| {
                    ApiError::Unprocessable(
                        "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
                    )
                })?;
            Some(key.to_owned())
        }
    };
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
#[derive(Debug, Serialize, Deserialize)]
pub struct Executions {
    /// The signal.
    pub signal_id: SignalId,
    /// Its channel.
    pub channel: String,
    /// Its position in the channel.
    pub position: u64,
    /// One entry per subscribed or reporting device.
    pub devices: Vec<DeviceExecution>,
}

/// One device's handling of a signal.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceExecution {
    /// The device.
    pub device_id: String,
    /// `pending` (not sent yet), `delivered` (sent, nothing reported yet),
    /// `received`, `filled` or `rejected`.
    pub status: ExecutionStatus,
    /// Every report, in sequence order.
    pub reports: Vec<StoredReport>,
}

/// How far a device got with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
}

async fn signal_executions(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(signal_id): Path<String>,
) -> Result<Json<Executions>, ApiError> {
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
        let reported = reports
            .iter()
            .map(|r| match r.kind {
                ReportKind::Received => ExecutionStatus::Received,
                ReportKind::Filled => ExecutionStatus::Filled,
                ReportKind::Rejected => ExecutionStatus::Rejected,
            })
            .max();
        let status = match reported {
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
    let devices = executions;
    Ok(Json(Executions {
        signal_id,
        channel: channel.to_string(),
        position,
        devices,
    }))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.core.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    // Ready when the store answers.
    match state.core.registry.get("readyz-probe").await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => ApiError::Internal(format!("store not ready: {e}")).into_response(),
    }
}
