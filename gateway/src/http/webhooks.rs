//! `/v1/webhooks` (admin): endpoints the platform runs to hear of the
//! programme's events, their delivery log, and replays.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Admin, ApiError, ApiJson, AppState};
use crate::webhooks::{
    Delivery, Dispatcher, EVENT_KINDS, Endpoint, EventKind, TargetError, WebhookError, check_target,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_endpoint, list_endpoints))
        .routes(routes!(remove_endpoint))
        .routes(routes!(deliveries))
        .routes(routes!(replay))
}

/// The most events one replay may queue.
const MOST_REPLAYED: usize = 10_000;

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEndpoint {
    /// Where to POST: an http(s) URL whose host is on the public internet
    /// (loopback and private networks are refused unless the sidecar runs
    /// with --webhook-allow-private).
    #[schema(max_length = 2000)]
    url: String,
    /// The event kinds it receives (at least one): affiliate.enrolled,
    /// referral.created, commission.created, commission.reversed,
    /// payout.paid, payout.failed, fraud.case_opened, fraud.case_decided,
    /// trade.busted, device.registered, device.replaced, device.revoked.
    events: Vec<String>,
}

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct EndpointView {
    /// `wh_…`.
    pub endpoint_id: String,
    /// Where events go.
    pub url: String,
    /// The kinds it receives.
    pub events: Vec<String>,
    /// When it was added, Unix ms.
    pub created_at_ms: u64,
    /// The journal position it has had every event up to.
    pub cursor: u64,
    /// The event it is retrying, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<RetryingView>,
    /// Replays waiting to be sent.
    pub replays_queued: usize,
}

/// An event being retried.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct RetryingView {
    /// The event.
    pub event_id: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next is due, Unix ms.
    pub next_at_ms: u64,
}

fn endpoint_view(endpoint: &Endpoint) -> EndpointView {
    EndpointView {
        endpoint_id: endpoint.endpoint_id.clone(),
        url: endpoint.url.clone(),
        events: endpoint.kinds.clone(),
        created_at_ms: endpoint.created_at_ms,
        cursor: endpoint.cursor,
        retrying: endpoint.retrying.map(|r| RetryingView {
            event_id: crate::webhooks::event_id(r.seq),
            attempts: r.attempts,
            next_at_ms: r.next_at_ms,
        }),
        replays_queued: endpoint.replays.len(),
    }
}

/// A new endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct CreatedEndpoint {
    /// The endpoint.
    pub endpoint: EndpointView,
    /// `whsec_` and 64 hex digits: the HMAC-SHA256 key of its
    /// `Eagate-Signature` header (the hex digits decoded are the key's 32
    /// bytes). Shown once; kept sealed.
    pub secret: String,
}

fn dispatcher(state: &AppState) -> Result<&Dispatcher, ApiError> {
    state
        .affiliates
        .webhooks
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("webhooks are not running in this process".into()))
}

/// Runs store work (it reads the journal and fsyncs) on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WebhookError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(store_error)
}

fn store_error(error: WebhookError) -> ApiError {
    match error {
        WebhookError::UnknownEndpoint(_) => ApiError::NotFound(error.to_string()),
        WebhookError::TooMany => ApiError::Conflict(error.to_string()),
        other => {
            tracing::error!(error = %other, "the webhook store failed");
            ApiError::Unavailable("the webhook store failed; try again".into())
        }
    }
}

#[utoipa::path(
    post,
    path = "/webhooks",
    summary = "Add a webhook endpoint for some event kinds (admin): it receives every such event from now on, signed with a secret shown once.",
    request_body = NewEndpoint,
    responses(
        (status = 201, description = "Added; the secret is shown this once.", body = CreatedEndpoint),
        (status = 409, description = "There are 32 endpoints already."),
        (status = 422, description = "Not an http(s) URL on a public address, or an unknown or missing event kind."),
        Admin,
    )
)]
async fn add_endpoint(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(new): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, Json<CreatedEndpoint>), ApiError> {
    let dispatcher = dispatcher(&state)?;
    let mut kinds = Vec::new();
    for name in &new.events {
        let kind = EventKind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EVENT_KINDS.iter().map(|k| k.as_str()).collect();
            ApiError::Unprocessable(format!(
                "unknown event kind {name:?}: one of {}",
                known.join(", ")
            ))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err(ApiError::Unprocessable(
            "events must name at least one event kind".into(),
        ));
    }
    let (url, allow_private) = (new.url.clone(), dispatcher.webhooks.allow_private);
    tokio::task::spawn_blocking(move || check_target(&url, allow_private))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e: TargetError| ApiError::Unprocessable(e.to_string()))?;
    let now = state.affiliates.now_ms();
    let (dispatcher, key, url) = (
        dispatcher.clone(),
        state.core.master_key.clone(),
        new.url.clone(),
    );
    let (endpoint, secret) = blocking(move || {
        let head = dispatcher.head()?;
        dispatcher.webhooks.add(&key, &url, &kinds, head, now)
    })
    .await?;
    // Not the URL: receivers sometimes carry a token in it.
    tracing::info!(endpoint = %endpoint.endpoint_id, "webhook endpoint added");
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint {
            endpoint: endpoint_view(&endpoint),
            secret: secret.to_string(),
        }),
    ))
}

/// Every endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct EndpointList {
    /// By id.
    pub items: Vec<EndpointView>,
}

#[utoipa::path(
    get,
    path = "/webhooks",
    summary = "Every webhook endpoint, with the event it is retrying and replays queued (admin).",
    responses((status = 200, description = "The endpoints.", body = EndpointList), Admin)
)]
async fn list_endpoints(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<EndpointList>, ApiError> {
    let endpoints = dispatcher(&state)?
        .webhooks
        .endpoints()
        .map_err(store_error)?;
    Ok(Json(EndpointList {
        items: endpoints.iter().map(endpoint_view).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(super) struct EndpointPath {
    /// The endpoint, `wh_…`.
    endpoint_id: String,
}

#[utoipa::path(
    delete,
    path = "/webhooks/{endpoint_id}",
    summary = "Remove a webhook endpoint (admin): nothing more is sent to it; its delivery log stays.",
    params(EndpointPath),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such endpoint."),
        Admin,
    )
)]
async fn remove_endpoint(
    State(state): State<AppState>,
    _: Admin,
    Path(EndpointPath { endpoint_id }): Path<EndpointPath>,
) -> Result<StatusCode, ApiError> {
    let (webhooks, id) = (dispatcher(&state)?.webhooks.clone(), endpoint_id.clone());
    blocking(move || webhooks.remove(&id)).await?;
    tracing::info!(endpoint = %endpoint_id, "webhook endpoint removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Which part of the log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// The previous page's next_after.
    after: Option<u64>,
    /// 1 to 1000 lines (default 100).
    limit: Option<usize>,
}

/// A page of an endpoint's delivery log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct DeliveryPage {
    /// Oldest first.
    pub items: Vec<Delivery>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/webhooks/{endpoint_id}/deliveries",
    summary = "An endpoint's delivery log, oldest first: every attempt with its answer (admin).",
    params(EndpointPath, LogQuery),
    responses(
        (status = 200, description = "A page of attempts.", body = DeliveryPage),
        (status = 404, description = "No such endpoint."),
        (status = 422, description = "Invalid paging."),
        Admin,
    )
)]
async fn deliveries(
    State(state): State<AppState>,
    _: Admin,
    Path(EndpointPath { endpoint_id }): Path<EndpointPath>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let webhooks = &dispatcher(&state)?.webhooks;
    // The log outlives its endpoint only for reading by id; an unknown id
    // with no log is 404.
    let mut lines = webhooks
        .deliveries(&endpoint_id, query.after.unwrap_or(0), limit + 1)
        .map_err(store_error)?;
    if lines.is_empty() && webhooks.endpoint(&endpoint_id).is_err() {
        return Err(ApiError::NotFound(format!(
            "no webhook endpoint {endpoint_id}"
        )));
    }
    let more = lines.len() > limit;
    lines.truncate(limit);
    let next_after = more.then(|| lines.last().map(|(at, _)| *at)).flatten();
    Ok(Json(DeliveryPage {
        items: lines.into_iter().map(|(_, delivery)| delivery).collect(),
        next_after,
    }))
}

/// What to send again: one event, or every event since a time.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Replay {
    /// One event, `evt_…`.
    #[serde(default)]
    event_id: Option<String>,
    /// Every event the endpoint receives made at or after this instant
    /// (RFC 3339, `2026-11-30T09:00:00Z`), at most 10 000.
    #[serde(default)]
    since: Option<String>,
}

/// What a replay queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct Replayed {
    /// Events queued, in journal order, sent after any event being retried.
    pub queued: usize,
}

#[utoipa::path(
    post,
    path = "/webhooks/{endpoint_id}/replay",
    summary = "Send one event, or every event since a time, to an endpoint again (admin); each keeps its id.",
    params(EndpointPath),
    request_body = Replay,
    responses(
        (status = 202, description = "Queued.", body = Replayed),
        (status = 404, description = "No such endpoint, or no such event of a kind it receives."),
        (status = 409, description = "The event has not been sent to the endpoint yet."),
        (status = 422, description = "Neither or both of event_id and since, an invalid time, or more than 10 000 events."),
        Admin,
    )
)]
async fn replay(
    State(state): State<AppState>,
    _: Admin,
    Path(EndpointPath { endpoint_id }): Path<EndpointPath>,
    ApiJson(replay): ApiJson<Replay>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let dispatcher = dispatcher(&state)?.clone();
    let since_ms = match (&replay.event_id, &replay.since) {
        (Some(_), None) => None,
        (None, Some(since)) => Some(
            eagate_affiliates::calendar::parse_instant(since).ok_or_else(|| {
                ApiError::Unprocessable(format!("since must be an RFC 3339 instant, not {since:?}"))
            })?,
        ),
        _ => {
            return Err(ApiError::Unprocessable(
                "give either event_id or since".into(),
            ));
        }
    };
    let (id, event_id) = (endpoint_id.clone(), replay.event_id.clone());
    let found = blocking(move || {
        let endpoint = dispatcher.webhooks.endpoint(&id)?;
        let events = match (event_id, since_ms) {
            (Some(event_id), _) => dispatcher
                .wanted_event(&endpoint, &event_id)?
                .map(|seq| vec![seq]),
            (None, Some(since_ms)) => {
                dispatcher.events_since(&endpoint, since_ms, MOST_REPLAYED)?
            }
            (None, None) => Some(Vec::new()),
        };
        Ok((dispatcher, endpoint, events))
    })
    .await?;
    let (dispatcher, endpoint, events) = found;
    let events = match (events, &replay.event_id) {
        (Some(events), _) => events,
        (None, Some(event_id)) => {
            return Err(ApiError::NotFound(format!(
                "no event {event_id} of a kind endpoint {endpoint_id} receives"
            )));
        }
        (None, None) => {
            return Err(ApiError::Unprocessable(format!(
                "more than {MOST_REPLAYED} events since then: replay a later time first"
            )));
        }
    };
    // Only what the endpoint has had (or given up on): a later event is
    // still to come in order, and the one being retried is under way.
    let retrying = endpoint.retrying.map(|r| r.seq);
    let events: Vec<u64> = events
        .into_iter()
        .filter(|seq| *seq <= endpoint.cursor && Some(*seq) != retrying)
        .collect();
    if replay.event_id.is_some() && events.is_empty() {
        return Err(ApiError::Conflict(
            "that event has not been delivered to this endpoint yet: it is on its way".into(),
        ));
    }
    let queued = events.len();
    if endpoint.replays.len() + queued > MOST_REPLAYED {
        return Err(ApiError::Unprocessable(format!(
            "{} replays are queued already; at most {MOST_REPLAYED}",
            endpoint.replays.len()
        )));
    }
    let id = endpoint_id.clone();
    blocking(move || {
        dispatcher
            .webhooks
            .update(&id, |e| e.replays.extend(&events))
    })
    .await?;
    tracing::info!(endpoint = %endpoint_id, queued, "webhook replay queued");
    Ok((StatusCode::ACCEPTED, Json(Replayed { queued })))
}
