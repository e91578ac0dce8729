//! Devices, as admins manage them: registration (the secret shown once),
//! listing and reading with online status, renaming, revocation, a new
//! secret, and channel subscriptions.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Admin, ApiError, ApiJson, AppState, ChannelPath, check_text};
use crate::core::Core;
use crate::registry::DeviceRecord;

/// The `/v1` device routes.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_device, list_devices))
        .routes(routes!(get_device, rename_device))
        .routes(routes!(revoke_device))
        .routes(routes!(rotate_secret))
        .routes(routes!(subscribe, unsubscribe))
}

/// A device as the API shows it: never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Device)]
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

pub(super) async fn view(core: &Core, record: DeviceRecord) -> Result<DeviceView, ApiError> {
    let last_report_seq = core.reports.confirmed_up_to(&record.device_id).await?;
    Ok(view_with(core, record, last_report_seq).await)
}

/// The view of a device whose watermark was read already.
async fn view_with(core: &Core, record: DeviceRecord, last_report_seq: u64) -> DeviceView {
    let presence = core.presence_of(&record.device_id).await;
    DeviceView {
        online: presence.sessions > 0,
        last_seen_ms: (presence.last_seen_ms > 0).then_some(presence.last_seen_ms),
        last_report_seq,
        device_id: record.device_id,
        account_id: record.account_id,
        name: record.name,
        created_at_ms: record.created_at_ms,
        revoked_at_ms: record.revoked_at_ms,
        channels: record.channels,
    }
}

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDevice {
    /// The platform user it belongs to.
    #[schema(min_length = 1, max_length = 128)]
    account_id: String,
    /// Its name, unique within the account.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

/// A device's new name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Rename {
    /// Unique within the account.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

/// A device with its secret: the one answer that shows the secret.
#[derive(Debug, Serialize, ToSchema)]
struct DeviceWithSecret {
    device: DeviceView,
    /// `egs_…`, shown this once; store it in the EA's inputs now.
    secret: String,
}

/// A device named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct DevicePath {
    /// The device's id (dv_…).
    device_id: String,
}

#[utoipa::path(
    post,
    path = "/devices",
    summary = "Register a device; the answer shows its secret, once.",
    request_body = NewDevice,
    responses(
        (status = 201, description = "Registered.", body = DeviceWithSecret),
        (status = 409, description = "The account already has a device with this name."),
        (status = 413, description = "Body too large."),
        (status = 422, description = "Invalid input."),
        Admin,
    )
)]
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
    state.affiliates.devices_changed();
    let secret = secret.to_text().to_string();
    Ok((
        StatusCode::CREATED,
        Json(DeviceWithSecret {
            device: view(core, record).await?,
            secret,
        }),
    ))
}

/// Which devices to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this account's devices.
    account_id: Option<String>,
    /// The next_after of the previous page.
    after: Option<String>,
    /// 1 to 1000 per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    /// In id (so registration) order.
    pub items: Vec<DeviceView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<String>,
}

/// The most devices one page holds.
const MAX_DEVICE_PAGE: usize = 1_000;

#[utoipa::path(
    get,
    path = "/devices",
    summary = "List devices, optionally of one account, a page at a time (after, limit).",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of devices.", body = DevicePage),
        (status = 422, description = "Invalid query."),
        Admin,
    )
)]
async fn list_devices(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DevicePage>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_DEVICE_PAGE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and {MAX_DEVICE_PAGE}, not {limit}"
        )));
    }
    page_of(
        &state,
        query.account_id.as_deref(),
        query.after.as_deref(),
        limit,
    )
    .await
    .map(Json)
}

/// A page of `limit` devices (of `account_id`, if given) after `after`.
pub(super) async fn page_of(
    state: &AppState,
    account_id: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<DevicePage, ApiError> {
    // One more than asked: whether there is a next page.
    let mut records = state
        .core
        .registry
        .list_page(account_id, after, limit + 1)
        .await?;
    let more = records.len() > limit;
    records.truncate(limit);
    // One read of every watermark (one flush, or one round trip), not one
    // per device: an admin lists thousands.
    let ids: Vec<&str> = records.iter().map(|r| r.device_id.as_str()).collect();
    let watermarks = state.core.reports.confirmed_up_to_each(&ids).await?;
    let mut views = Vec::with_capacity(records.len());
    for (record, last_report_seq) in records.into_iter().zip(watermarks) {
        views.push(view_with(&state.core, record, last_report_seq).await);
    }
    let next_after = more
        .then(|| views.last().map(|v: &DeviceView| v.device_id.clone()))
        .flatten();
    Ok(DevicePage {
        items: views,
        next_after,
    })
}

/// The device as it is now, or 404.
pub(super) async fn current(state: &AppState, device_id: &str) -> Result<DeviceView, ApiError> {
    let record = state
        .core
        .registry
        .get(device_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {device_id}")))?;
    view(&state.core, record).await
}

#[utoipa::path(
    get,
    path = "/devices/{device_id}",
    summary = "One device, with online status and last seen.",
    params(DevicePath),
    responses(
        (status = 200, description = "The device.", body = DeviceView),
        (status = 404, description = "No such device."),
        Admin,
    )
)]
async fn get_device(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Result<Json<DeviceView>, ApiError> {
    current(&state, &device_id).await.map(Json)
}

#[utoipa::path(
    patch,
    path = "/devices/{device_id}",
    summary = "Rename a device.",
    params(DevicePath),
    request_body = Rename,
    responses(
        (status = 200, description = "Renamed.", body = DeviceView),
        (status = 404, description = "No such device."),
        (status = 409, description = "The account already has a device with this name."),
        (status = 422, description = "Invalid input."),
        Admin,
    )
)]
async fn rename_device(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
    ApiJson(rename): ApiJson<Rename>,
) -> Result<Json<DeviceView>, ApiError> {
    check_text("name", &rename.name, 64)?;
    let record = state.core.registry.rename(&device_id, &rename.name).await?;
    Ok(Json(view(&state.core, record).await?))
}

#[utoipa::path(
    post,
    path = "/devices/{device_id}/revoke",
    summary = "Revoke a device; its live sessions end at once.",
    params(DevicePath),
    responses(
        (status = 200, description = "Revoked.", body = DeviceView),
        (status = 404, description = "No such device."),
        Admin,
    )
)]
async fn revoke_device(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Result<Json<DeviceView>, ApiError> {
    let record = state.core.revoke(&device_id).await?;
    tracing::info!(device = %device_id, "device revoked");
    state.affiliates.devices_changed();
    Ok(Json(view(&state.core, record).await?))
}

#[utoipa::path(
    post,
    path = "/devices/{device_id}/rotate-secret",
    summary = "Give a device a new secret, shown once.",
    params(DevicePath),
    responses(
        (status = 200, description = "Rotated.", body = DeviceWithSecret),
        (status = 404, description = "No such device."),
        Admin,
    )
)]
async fn rotate_secret(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Result<Json<DeviceWithSecret>, ApiError> {
    let core = &state.core;
    let (record, secret) = core.rotate_secret(&device_id).await?;
    tracing::info!(device = %device_id, "device secret rotated");
    state.affiliates.devices_changed();
    let secret = secret.to_text().to_string();
    Ok(Json(DeviceWithSecret {
        device: view(core, record).await?,
        secret,
    }))
}

#[utoipa::path(
    put,
    path = "/devices/{device_id}/subscriptions/{channel}",
    summary = "Subscribe a device to a channel, from now on.",
    params(DevicePath, ChannelPath),
    responses(
        (status = 200, description = "Subscribed.", body = DeviceView),
        (status = 404, description = "No such device."),
        (status = 422, description = "Invalid channel name, or already 16 channels."),
        Admin,
    )
)]
async fn subscribe(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
    Path(channel): Path<ChannelPath>,
) -> Result<Json<DeviceView>, ApiError> {
    let channel = channel.parse()?;
    state.core.subscribe(&device_id, &channel).await?;
    current(&state, &device_id).await.map(Json)
}

#[utoipa::path(
    delete,
    path = "/devices/{device_id}/subscriptions/{channel}",
    summary = "Unsubscribe a device from a channel.",
    params(DevicePath, ChannelPath),
    responses(
        (status = 200, description = "Unsubscribed.", body = DeviceView),
        (status = 404, description = "No such device."),
        (status = 422, description = "Invalid channel name."),
        Admin,
    )
)]
async fn unsubscribe(
    State(state): State<AppState>,
    _: Admin,
    Path(DevicePath { device_id }): Path<DevicePath>,
    Path(channel): Path<ChannelPath>,
) -> Result<Json<DeviceView>, ApiError> {
    let channel = channel.parse()?;
    state.core.unsubscribe(&device_id, &channel).await?;
    current(&state, &device_id).await.map(Json)
}
