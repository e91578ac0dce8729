//! The admin console: pages rendered on the server for an admin on call,
//! who would rather look than read JSON. Signed in with an admin token
//! exchanged for a session cookie (`session`); every form carries the
//! session's CSRF token; every action is a POST behind a confirmation page
//! where it cannot be undone. The pages call the same core operations as
//! the `/v1` API, so they validate and record alike.
//!
//! So far: devices (status, last seen, last report, channels; rename,
//! new secret, revoke), signals (publish, executions across devices), the
//! affiliates with what each is owed, and the fraud review queue. Payout
//! batches, the audit log, health and the affiliates' own portal follow.

mod health;
mod pages;
mod session;

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;

use session::{ConsoleSessions, Credential, Role, SignedIn};

/// What the console keeps: its sessions, and samples of the gateway's
/// counters for the health page's rates.
#[derive(Debug, Default)]
pub struct Console {
    sessions: ConsoleSessions,
    health: health::Samples,
}

impl Console {
    /// Samples the gateway's counters `every` so long until `core` shuts
    /// down, so the health page's per-minute rates cover the last minute
    /// whenever it is opened, not only once it has been open a while. The
    /// sidecar runs it every [`HEALTH_SAMPLE_EVERY`].
    pub async fn keep_health_samples(
        self: std::sync::Arc<Self>,
        core: std::sync::Arc<crate::core::Core>,
        every: std::time::Duration,
    ) {
        let mut stopping = core.shutdown.subscribe();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.health.sample(core.metrics.snapshot());
                }
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// How often the sidecar samples the counters for the health page: a
/// dozen samples a minute cost nothing and give a rate a few seconds after
/// start.
pub const HEALTH_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

use super::tokens::{self, Scope};
use super::{ApiError, AppState, ChannelPath, DeviceView, check_text, devices, signals};
use crate::signals::SignalDraft;

/// The console's routes, outside the bearer-token layer: the cookie is
/// their credential.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        // Signed in: the session's home; otherwise the sign-in form.
        .route("/console", get(sign_in_page))
        .route("/console/style.css", get(style))
        .route("/console/copy.js", get(copy_script))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/devices", get(device_list))
        .route("/console/devices/{device_id}", get(device_page))
        .route("/console/devices/{device_id}/rename", post(rename))
        .route(
            "/console/devices/{device_id}/revoke",
            get(revoke_page).post(revoke),
        )
        .route(
            "/console/devices/{device_id}/rotate-secret",
            get(rotate_page).post(rotate),
        )
        .route("/console/signals", get(signals_page).post(publish))
        .route("/console/signals/find", get(find_signal))
        .route("/console/signals/{signal_id}", get(executions_page))
        .route("/console/affiliates", get(affiliates_page))
        .route("/console/fraud", get(fraud_page))
        .route("/console/fraud/{case_id}", post(decide))
        .route("/console/portal/{affiliate_id}", get(portal))
        .route(
            "/console/portal/{affiliate_id}/commissions.csv",
            get(commissions_csv),
        )
        .route(
            "/console/portal/{affiliate_id}/payouts.csv",
            get(payouts_csv),
        )
        .route("/console/health", get(health_page))
        .route(
            "/console/affiliates/{affiliate_id}/sign-in-link",
            post(issue_link),
        )
        .route(
            "/console/sign-in/link/{secret}",
            get(link_page).post(use_link),
        )
        .route("/console/payouts", get(payouts_page))
        .route("/console/audit", get(audit_page))
}

/// A page as the browser gets it: never cached (they show secrets and
/// live state), never framed, no script but the console's own.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::STYLE,
    )
        .into_response()
}

async fn copy_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::COPY_SCRIPT,
    )
        .into_response()
}

/// Why a request gets no page of the console.
enum Refusal {
    /// No live session: a page goes to the sign-in form.
    NotSignedIn,
    /// An affiliate's session on an admin's page, or on another
    /// affiliate's: 403.
    NotYours(SignedIn),
    /// A form without the session's CSRF token (from another site, an
    /// expired sign-in, a page kept open across a sign-out): 403.
    Forged(Option<SignedIn>),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::NotSignedIn => Redirect::to("/console/sign-in").into_response(),
            Self::NotYours(session) => page(
                StatusCode::FORBIDDEN,
                pages::refused(
                    Some(&session),
                    "Not yours to see",
                    "This page is for the programme's admins, or for another affiliate.",
                ),
            ),
            Self::Forged(session) => page(
                StatusCode::FORBIDDEN,
                pages::refused(
                    session.as_ref(),
                    "Refused",
                    "This form did not come from a page of this console session (it may have \
                     expired, or been signed out): open the page again and retry.",
                ),
            ),
        }
    }
}

/// The session the request's cookie names, if it is live and its
/// credential still holds: a token removed from the gateway, an
/// affiliate's token replaced, ends the sessions it started.
fn live_session(state: &AppState, headers: &HeaderMap) -> Option<SignedIn> {
    let session = state.console.sessions.of(headers)?;
    let holds = match (&session.role, &session.credential) {
        (Role::Admin, Credential::Token(hash)) => {
            state.tokens.scope_of_hash(hash) == Some(Scope::Admin)
        }
        (Role::Affiliate(id), Credential::Token(hash)) => state
            .affiliates
            .ledger
            .read()
            .affiliate_of_token(hash)
            .is_some_and(|affiliate| affiliate.affiliate_id == *id),
        (Role::Affiliate(id), Credential::Link) => {
            state.affiliates.ledger.read().affiliate(id).is_some()
        }
        (Role::Admin, Credential::Link) => false,
    };
    if !holds {
        state.console.sessions.end(headers);
    }
    holds.then_some(session)
}

/// The affiliate ledger, if what it shows is durable: after a failed
/// flush the ledger refuses to be read until it recovers, as the API's
/// affiliate routes do, so no page shows a change its writer was told
/// failed.
async fn ledger_ready(state: &AppState, session: &SignedIn) -> Result<(), Response> {
    state
        .affiliates
        .ledger
        .healthy_or_recover()
        .await
        .map_err(|e| failed(session, &ApiError::from(e)))
}

/// The signed-in admin of a page.
fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<SignedIn, Refusal> {
    let session = live_session(state, headers).ok_or(Refusal::NotSignedIn)?;
    match session.role {
        Role::Admin => Ok(session),
        Role::Affiliate(_) => Err(Refusal::NotYours(session)),
    }
}

/// The signed-in admin of a page, as an extractor: without one the
/// request gets its refusal (the sign-in form, or 403) and the handler
/// never runs.
struct AdminPage(SignedIn);

impl FromRequestParts<AppState> for AdminPage {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        signed_in(state, &parts.headers).map(Self)
    }
}

/// [`AdminPage`] of a page showing the affiliate ledger, once the ledger
/// is durable ([`ledger_ready`]).
struct LedgerPage(SignedIn);

impl FromRequestParts<AppState> for LedgerPage {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = signed_in(state, &parts.headers).map_err(IntoResponse::into_response)?;
        ledger_ready(state, &session).await?;
        Ok(Self(session))
    }
}

/// The signed-in admin or affiliate of a form post, if the form carries
/// the session's CSRF token.
fn any_signed_in_form(
    state: &AppState,
    headers: &HeaderMap,
    form: &Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<SignedIn, Refusal> {
    let session = live_session(state, headers);
    let carried = form
        .as_ref()
        .ok()
        .and_then(|Form(fields)| fields.get("csrf"));
    match (session, carried) {
        (Some(session), Some(csrf)) if session::same_secret(csrf, &session.csrf) => Ok(session),
        (session, _) => Err(Refusal::Forged(session)),
    }
}

/// The signed-in admin of a form post, if the form carries the session's
/// CSRF token.
fn signed_in_form(
    state: &AppState,
    headers: &HeaderMap,
    form: &Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<SignedIn, Refusal> {
    let session = any_signed_in_form(state, headers, form)?;
    match session.role {
        Role::Admin => Ok(session),
        Role::Affiliate(_) => Err(Refusal::NotYours(session)),
    }
}

/// A field of a form whose CSRF token was checked.
fn field<'a>(
    form: &'a Result<Form<HashMap<String, String>>, FormRejection>,
    name: &str,
) -> Option<&'a str> {
    form.as_ref()
        .ok()
        .and_then(|Form(fields)| fields.get(name))
        .map(String::as_str)
}

/// An operation's error as a page.
fn failed(session: &SignedIn, error: &ApiError) -> Response {
    if let ApiError::Internal(detail) = error {
        tracing::error!(%detail, "console request failed");
    }
    let (status, _, title) = error.classify();
    page(
        status,
        pages::refused(Some(session), title, &error.to_string()),
    )
}

/// Where a session starts: an admin at the devices, an affiliate at its
/// own portal.
fn home(role: &Role) -> String {
    match role {
        Role::Admin => "/console/devices".to_owned(),
        Role::Affiliate(affiliate_id) => format!("/console/portal/{affiliate_id}"),
    }
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = live_session(&state, &headers) {
        return Redirect::to(&home(&session.role)).into_response();
    }
    page(StatusCode::OK, pages::sign_in(None))
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    form: Result<Form<SignIn>, FormRejection>,
) -> Response {
    if !session::same_site(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            pages::sign_in(Some("Sign in from this console's own page.")),
        );
    }
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let token = token.trim();
    let hash = tokens::token_sha256(token);
    // The token's id (the start of its hash), never the token.
    let actor = format!("token:{}", &hash[..12]);
    let role = if state.tokens.scope_of(token) == Some(Scope::Admin) {
        Role::Admin
    } else if let Some(affiliate_id) = state
        .affiliates
        .ledger
        .read()
        .affiliate_of_token(&hash)
        .map(|a| a.affiliate_id.clone())
    {
        Role::Affiliate(affiliate_id)
    } else {
        return page(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(Some(
                "That is not an admin token of this gateway, nor an affiliate's.",
            )),
        );
    };
    start_session(
        &state,
        &headers,
        &extensions,
        actor,
        role,
        Credential::Token(hash),
    )
    .await
}

/// Starts a session for `actor` in `role`: the cookie, and the way to its
/// home page.
async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    actor: String,
    role: Role,
    credential: Credential,
) -> Response {
    // A sign-in replaces the browser's session: the old one ends here.
    state.console.sessions.end(headers);
    if let Role::Affiliate(affiliate_id) = &role {
        // Where an affiliate signs in from is evidence for the
        // self-referral check, as where its token calls the API from.
        let address = super::affiliates::source_address(headers, extensions);
        let noted_by = eagate_affiliates::Actor {
            by: actor.clone(),
            why: "an address the affiliate signed in to the console from".to_owned(),
        };
        super::affiliates::note_affiliate_address(state, affiliate_id, &address, &noted_by).await;
    }
    tracing::info!(%actor, "console sign-in");
    let destination = home(&role);
    let Some(id) = state.console.sessions.start(actor, role, credential) else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::sign_in(Some(
                "Too many sessions are open right now: try again later.",
            )),
        );
    };
    let mut response = Redirect::to(&destination).into_response();
    let (name, value) = session::set_cookie(&id, headers);
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
    response
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    if let Err(refusal) = any_signed_in_form(&state, &headers, &form) {
        return refusal.into_response();
    }
    state.console.sessions.end(&headers);
    let mut response = Redirect::to("/console/sign-in").into_response();
    let (name, value) = session::clear_cookie();
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
    response
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
}

/// Devices per page of the list.
const DEVICES_PER_PAGE: usize = 50;

async fn device_list(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Query(query): Query<ListQuery>,
) -> Response {
    match devices::page_of(&state, None, query.after.as_deref(), DEVICES_PER_PAGE).await {
        Ok(devices) => page(
            StatusCode::OK,
            pages::devices(&session, &devices.items, devices.next_after.as_deref()),
        ),
        Err(error) => failed(&session, &error),
    }
}

#[derive(Deserialize)]
struct DevicePath {
    device_id: String,
}

/// A page about one device for the signed-in admin, `render`ed from how
/// the device is now.
async fn about_device(
    state: &AppState,
    session: &SignedIn,
    device_id: &str,
    render: impl FnOnce(&SignedIn, &DeviceView) -> Markup,
) -> Response {
    match devices::current(state, device_id).await {
        Ok(device) => page(StatusCode::OK, render(session, &device)),
        Err(error) => failed(session, &error),
    }
}

async fn device_page(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Response {
    about_device(&state, &session, &device_id, |session, device| {
        pages::device(session, device, None)
    })
    .await
}

async fn rename(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(DevicePath { device_id }): Path<DevicePath>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let name = field(&form, "name").unwrap_or_default();
    let renamed = match check_text("name", name, 64) {
        Ok(()) => state
            .core
            .registry
            .rename(&device_id, name)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    match renamed {
        Ok(_) => Redirect::to(&format!("/console/devices/{device_id}")).into_response(),
        // The same page, with what was wrong, for another try.
        Err(error @ (ApiError::Conflict(_) | ApiError::Unprocessable(_))) => {
            match devices::current(&state, &device_id).await {
                Ok(device) => page(
                    error.classify().0,
                    pages::device(&session, &device, Some(&error.to_string())),
                ),
                Err(other) => failed(&session, &other),
            }
        }
        Err(error) => failed(&session, &error),
    }
}

async fn revoke_page(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Response {
    about_device(&state, &session, &device_id, |session, device| {
        pages::confirm(
            session,
            device,
            "revoke",
            &format!("Revoke {}?", device.name),
            "Its session ends at once and it can never connect again; reports it has not \
             sent yet stay on its machine. This cannot be undone: a replacement needs a new \
             registration.",
            &format!("Revoke {}", device.name),
            true,
        )
    })
    .await
}

async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(DevicePath { device_id }): Path<DevicePath>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    match state.core.revoke(&device_id).await {
        Ok(_) => {
            tracing::info!(device = %device_id, actor = %session.actor, "device revoked from the console");
            state.affiliates.devices_changed();
            Redirect::to(&format!("/console/devices/{device_id}")).into_response()
        }
        Err(error) => failed(&session, &ApiError::from(error)),
    }
}

async fn rotate_page(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(DevicePath { device_id }): Path<DevicePath>,
) -> Response {
    about_device(&state, &session, &device_id, |session, device| {
        pages::confirm(
            session,
            device,
            "rotate-secret",
            &format!("Give {} a new secret?", device.name),
            "Its current secret stops working at once and its session ends: the EA needs \
             the new secret in its inputs before it can connect again. The new secret is \
             shown once, on the next page.",
            "Give it a new secret",
            false,
        )
    })
    .await
}

async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(DevicePath { device_id }): Path<DevicePath>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let rotated = match state.core.rotate_secret(&device_id).await {
        Ok((record, secret)) => devices::view(&state.core, record)
            .await
            .map(|device| (device, secret)),
        Err(error) => Err(ApiError::from(error)),
    };
    match rotated {
        Ok((device, secret)) => {
            tracing::info!(device = %device_id, actor = %session.actor, "device secret rotated from the console");
            state.affiliates.devices_changed();
            page(
                StatusCode::OK,
                pages::new_secret(&session, &device, &secret.to_text().to_string()),
            )
        }
        Err(error) => failed(&session, &error),
    }
}

async fn signals_page(AdminPage(session): AdminPage) -> Response {
    page(
        StatusCode::OK,
        pages::signals(
            &session,
            &pages::Draft::default(),
            &session::random_text(),
            None,
        ),
    )
}

/// The form's fields as the API's signal: the same JSON the API reads,
/// through the same types, so the same input is refused for the same
/// reason. Empty optional fields are absent.
fn draft_of(fields: &HashMap<String, String>) -> Result<SignalDraft, ApiError> {
    let mut draft = serde_json::Map::new();
    for name in [
        "symbol",
        "action",
        "order_type",
        "volume",
        "price",
        "stop_loss",
        "take_profit",
        "comment",
        "reference",
    ] {
        if let Some(value) = fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            draft.insert(name.to_owned(), serde_json::Value::from(value));
        }
    }
    if let Some(magic) = fields
        .get("magic")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        let magic: u64 = magic.parse().map_err(|_| {
            ApiError::Unprocessable(format!("magic must be a whole number, not {magic:?}"))
        })?;
        draft.insert("magic".to_owned(), magic.into());
    }
    // Named by the field it is about, as the API's own message is.
    serde_path_to_error::deserialize(serde_json::Value::Object(draft)).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Unprocessable(match path.as_str() {
            "." => e.inner().to_string(),
            _ => format!("{path}: {}", e.inner()),
        })
    })
}

async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    let empty = HashMap::new();
    let fields = form.as_ref().map_or(&empty, |Form(fields)| fields);
    // A key this console made (64 hex digits), or a new one: a form
    // that lost or mangled its key publishes once, unguarded.
    let form_key = fields
        .get("form_key")
        .filter(|key| key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        .cloned()
        .unwrap_or_else(session::random_text);
    let channel = ChannelPath {
        channel: fields
            .get("channel")
            .map(|c| c.trim().to_owned())
            .unwrap_or_default(),
    };
    let published = match (channel.parse(), draft_of(fields)) {
        (Ok(channel), Ok(draft)) => state
            .core
            .publish(&channel, draft, Some(format!("console:{form_key}")))
            .await
            .map_err(ApiError::from),
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    match published {
        Ok(appended) => {
            let id = appended.signal.signal_id;
            tracing::info!(signal = %id, actor = %session.actor, "signal published from the console");
            Redirect::to(&format!("/console/signals/{id}")).into_response()
        }
        // The form again, as it was filled in, with what was wrong. After
        // a conflict (this form's key published another signal: Back, an
        // edit, a resubmit) it gets a new key, or it would conflict for
        // ever.
        Err(error @ (ApiError::Unprocessable(_) | ApiError::Conflict(_))) => {
            let draft = pages::Draft {
                field: fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            };
            let form_key = match error {
                ApiError::Conflict(_) => session::random_text(),
                _ => form_key,
            };
            page(
                error.classify().0,
                pages::signals(&session, &draft, &form_key, Some(&error.to_string())),
            )
        }
        Err(error) => failed(&session, &error),
    }
}

#[derive(Deserialize)]
struct FindQuery {
    signal_id: String,
}

async fn find_signal(Query(FindQuery { signal_id }): Query<FindQuery>) -> Response {
    let id: String = signal_id
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    Redirect::to(&format!("/console/signals/{id}")).into_response()
}

#[derive(Deserialize)]
struct SignalPath {
    signal_id: String,
}

async fn executions_page(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(SignalPath { signal_id }): Path<SignalPath>,
) -> Response {
    match signals::executions_of(&state, &signal_id).await {
        Ok(executions) => page(StatusCode::OK, pages::executions(&session, &executions)),
        Err(error) => failed(&session, &error),
    }
}

#[derive(Deserialize)]
struct AfterQuery {
    after: Option<u64>,
}

/// Affiliates per page of the list.
const AFFILIATES_PER_PAGE: usize = 50;

async fn affiliates_page(
    State(state): State<AppState>,
    LedgerPage(session): LedgerPage,
    Query(AfterQuery { after }): Query<AfterQuery>,
) -> Response {
    match super::affiliates::affiliate_rows(&state, after.unwrap_or(0), AFFILIATES_PER_PAGE, |_| {
        true
    }) {
        Ok((currency, rows, more)) => {
            let next_after = more.then(|| rows.last().map(|r| r.seq)).flatten();
            page(
                StatusCode::OK,
                pages::affiliates(&session, currency, &rows, next_after),
            )
        }
        Err(error) => failed(&session, &error),
    }
}

#[derive(Deserialize)]
struct CaseQuery {
    status: Option<String>,
    affiliate_id: Option<String>,
}

async fn fraud_page(
    State(state): State<AppState>,
    LedgerPage(session): LedgerPage,
    Query(query): Query<CaseQuery>,
) -> Response {
    let open = query.status.as_deref() != Some("decided");
    let cases = super::affiliates::case_list(&state, open, query.affiliate_id.as_deref());
    page(StatusCode::OK, pages::fraud(&session, open, &cases))
}

#[derive(Deserialize)]
struct CasePath {
    case_id: String,
}

async fn decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(CasePath { case_id }): Path<CasePath>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = ledger_ready(&state, &session).await {
        return refused;
    }
    let decision = match field(&form, "decision") {
        Some("cleared") => eagate_affiliates::CaseDecision::Cleared,
        Some("confirmed") => eagate_affiliates::CaseDecision::Confirmed,
        other => {
            return failed(
                &session,
                &ApiError::Unprocessable(format!(
                    "the decision is cleared or confirmed, not {:?}",
                    other.unwrap_or_default()
                )),
            );
        }
    };
    let reason = field(&form, "reason").unwrap_or_default().trim();
    // Recorded in the audit trail as the signed-in admin's, as through the
    // API with the same token.
    let decided = super::as_caller(
        session.actor.clone(),
        super::affiliates::decide_case(&state, &case_id, decision, reason),
    )
    .await;
    match decided {
        Ok(_) => Redirect::to("/console/fraud?status=decided").into_response(),
        Err(error) => failed(&session, &error),
    }
}

#[derive(Deserialize)]
struct AffiliatePath {
    affiliate_id: String,
}

/// An affiliate's own page (an admin may open any): the referral link and
/// code, totals, earnings per day and per month as charts, and the
/// numbers behind them.
#[derive(Deserialize)]
struct PortalQuery {
    /// `month` for the charts per month; per day otherwise.
    by: Option<String>,
}

async fn portal(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    Query(PortalQuery { by }): Query<PortalQuery>,
) -> Response {
    let session = match portal_reader(&state, &headers, &affiliate_id) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = ledger_ready(&state, &session).await {
        return refused;
    }
    let ledgers = async {
        let commissions: super::affiliates::Commissions =
            ledger_json(&state, &session, &affiliate_id, Ledger::Commissions).await?;
        let payouts: super::affiliates::PayoutHistory =
            ledger_json(&state, &session, &affiliate_id, Ledger::Payouts).await?;
        Ok::<_, ApiError>((commissions, payouts))
    };
    let (commissions, payouts) = match ledgers.await {
        Ok(ledgers) => ledgers,
        Err(error) => return failed(&session, &error),
    };
    let shown = super::affiliates::affiliate_view(&state, &affiliate_id).and_then(|affiliate| {
        let days = super::affiliates::stats_of(
            &state,
            affiliate_id.clone(),
            super::affiliates::StatsGranularity::Day,
            None,
            None,
        )?;
        let months = super::affiliates::stats_of(
            &state,
            affiliate_id.clone(),
            super::affiliates::StatsGranularity::Month,
            None,
            None,
        )?;
        // The affiliate is a customer of the platform too: the referral
        // credits its own referrals of friends earned it.
        let credits = state
            .affiliates
            .ledger
            .read()
            .credit_balance(&affiliate.user_id, state.affiliates.now_ms())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((affiliate, days, months, credits))
    });
    match shown {
        Ok((affiliate, days, months, credits)) => page(
            StatusCode::OK,
            pages::portal(
                &session,
                &affiliate,
                if by.as_deref() == Some("month") {
                    &months
                } else {
                    &days
                },
                &months,
                &commissions,
                &payouts,
                &credits,
            ),
        ),
        Err(error) => failed(&session, &error),
    }
}

async fn health_page(State(state): State<AppState>, AdminPage(session): AdminPage) -> Response {
    let health = state.console.health.sample(state.core.metrics.snapshot());
    // The store answers, promptly, or says why not (as /readyz).
    let store = match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        state.core.registry.get("readyz-probe"),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 1 s".to_owned()),
    };
    page(StatusCode::OK, pages::health(&session, &health, &store))
}

async fn payouts_page(State(state): State<AppState>, LedgerPage(session): LedgerPage) -> Response {
    page(
        StatusCode::OK,
        pages::payouts(&session, &super::affiliates::all_batches(&state)),
    )
}

/// Audit entries per page.
const AUDIT_PER_PAGE: usize = 100;

async fn audit_page(
    State(state): State<AppState>,
    LedgerPage(session): LedgerPage,
    Query(AfterQuery { after }): Query<AfterQuery>,
) -> Response {
    // The whole chain, recomputed on every view: a few milliseconds per
    // thousand entries, and the answer an admin opened the page for.
    let ledger = state.affiliates.ledger.clone();
    let verdict = tokio::task::spawn_blocking(move || ledger.verify())
        .await
        .map_err(|e| e.to_string())
        .and_then(|verified| verified.map_err(|e| e.to_string()));
    match super::affiliates::audit_entries(&state, after.unwrap_or(0), AUDIT_PER_PAGE, None, None) {
        Ok(entries) => page(StatusCode::OK, pages::audit(&session, &entries, &verdict)),
        Err(error) => failed(&session, &error),
    }
}

/// The signed-in admin, or the affiliate `affiliate_id` itself.
fn portal_reader(
    state: &AppState,
    headers: &HeaderMap,
    affiliate_id: &str,
) -> Result<SignedIn, Refusal> {
    let session = live_session(state, headers).ok_or(Refusal::NotSignedIn)?;
    match &session.role {
        Role::Affiliate(own) if own != affiliate_id => Err(Refusal::NotYours(session)),
        _ => Ok(session),
    }
}

/// An affiliate's ledgers the portal shows.
#[derive(Clone, Copy)]
enum Ledger {
    Commissions,
    Payouts,
}

/// The API's own answer for one of an affiliate's ledgers, with `query`
/// (`format=csv`, `limit=…`), read as the session's caller would read it
/// through the API: an affiliate sees pseudonyms for its customers.
async fn ledger_answer(
    state: &AppState,
    session: &SignedIn,
    affiliate_id: &str,
    ledger: Ledger,
    query: &str,
) -> Result<Response, ApiError> {
    let reader = match &session.role {
        Role::Admin => super::affiliates::AffiliateReader::Admin,
        Role::Affiliate(own) => super::affiliates::AffiliateReader::Own(own.clone()),
    };
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::Internal(format!("a ledger query: {query}")))?;
    let path = Path(super::affiliates::AffiliatePath {
        affiliate_id: affiliate_id.to_owned(),
    });
    match ledger {
        Ledger::Commissions => {
            super::affiliates::commission_ledger(
                State(state.clone()),
                reader,
                path,
                HeaderMap::new(),
                Query::try_from_uri(&uri),
                Query::try_from_uri(&uri),
            )
            .await
        }
        Ledger::Payouts => {
            super::affiliates::payout_ledger(
                State(state.clone()),
                reader,
                path,
                HeaderMap::new(),
                Query::try_from_uri(&uri),
            )
            .await
        }
    }
}

/// Every row of a ledger: the API's JSON pages (1,000 rows each), followed
/// to the last, as one.
async fn ledger_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    session: &SignedIn,
    affiliate_id: &str,
    ledger: Ledger,
) -> Result<T, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
    let mut whole: Option<serde_json::Value> = None;
    let mut after: Option<u64> = None;
    loop {
        let query = match after {
            Some(after) => format!("limit=1000&after={after}"),
            None => "limit=1000".to_owned(),
        };
        let answer = ledger_answer(state, session, affiliate_id, ledger, &query).await?;
        let bytes = axum::body::to_bytes(answer.into_body(), 16 * 1024 * 1024)
            .await
            .map_err(|e| internal(&e))?;
        let mut part: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| internal(&e))?;
        after = part["next_after"].as_u64();
        match whole.as_mut() {
            None => whole = Some(part),
            Some(whole) => {
                let items = part["items"]
                    .as_array_mut()
                    .map(std::mem::take)
                    .unwrap_or_default();
                if let Some(all) = whole["items"].as_array_mut() {
                    all.extend(items);
                }
            }
        }
        if after.is_none() {
            break;
        }
    }
    serde_json::from_value(whole.unwrap_or_default()).map_err(|e| internal(&e))
}

async fn ledger_csv(
    state: AppState,
    headers: HeaderMap,
    affiliate_id: String,
    ledger: Ledger,
) -> Response {
    let session = match portal_reader(&state, &headers, &affiliate_id) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = ledger_ready(&state, &session).await {
        return refused;
    }
    match ledger_answer(&state, &session, &affiliate_id, ledger, "format=csv").await {
        Ok(mut csv) => {
            // Money and customers: not kept in a browser's cache.
            csv.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            csv
        }
        Err(error) => failed(&session, &error),
    }
}

async fn commissions_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
) -> Response {
    ledger_csv(state, headers, affiliate_id, Ledger::Commissions).await
}

async fn payouts_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
) -> Response {
    ledger_csv(state, headers, affiliate_id, Ledger::Payouts).await
}

/// An admin issues a one-time sign-in link for an affiliate (for one who
/// lost its token, or never kept it): shown once, usable once, for a day.
async fn issue_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let session = match signed_in_form(&state, &headers, &form) {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = ledger_ready(&state, &session).await {
        return refused;
    }
    let affiliate = match super::affiliates::affiliate_view(&state, &affiliate_id) {
        Ok(affiliate) => affiliate,
        Err(error) => return failed(&session, &error),
    };
    let Some(secret) = state.console.sessions.issue_link(&affiliate_id) else {
        return failed(
            &session,
            &ApiError::TooManyRequests("too many sign-in links are live; try again later".into()),
        );
    };
    // The audit trail records who let whom in; a link it could not record
    // is withdrawn before anyone sees it.
    let now = state.affiliates.now_ms();
    let expires_at_ms = now.saturating_add(session::LINK_LIFETIME.as_millis() as u64);
    let actor = eagate_affiliates::Actor {
        by: session.actor.clone(),
        why: "a one-time console sign-in link".to_owned(),
    };
    let recorded = state
        .affiliates
        .ledger
        .write_by(&actor, |programme| {
            Ok::<_, std::convert::Infallible>(programme.sign_in_link_issued(
                &affiliate_id,
                expires_at_ms,
                now,
            ))
        })
        .await;
    if let Err(error) = recorded {
        state.console.sessions.use_link(&secret);
        tracing::error!(%error, affiliate = %affiliate_id, "recording a console sign-in link failed; withdrawn");
        return failed(
            &session,
            &ApiError::Unavailable("the ledger could not record the link; try again".into()),
        );
    }
    tracing::info!(affiliate = %affiliate_id, actor = %session.actor, "console sign-in link issued");
    // The sidecar's public address as configured (the referral links'
    // base), not the request's Host header, which a proxy may rewrite.
    let link = format!(
        "{}/console/sign-in/link/{secret}",
        state.affiliates.link_base
    );
    page(
        StatusCode::OK,
        pages::sign_in_link(&session, &affiliate, &link),
    )
}

#[derive(Deserialize)]
struct LinkPath {
    secret: String,
}

/// What a spent or expired link says.
const LINK_SPENT: &str =
    "That sign-in link was used already, or has expired: ask the programme's admins for a new one.";

/// A link's page: a button, not a sign-in on the GET itself, so a mail
/// scanner that fetches links does not use it up.
async fn link_page(
    State(state): State<AppState>,
    Path(LinkPath { secret }): Path<LinkPath>,
) -> Response {
    if state.console.sessions.link_is_live(&secret) {
        page(StatusCode::OK, pages::use_link())
    } else {
        page(StatusCode::UNAUTHORIZED, pages::sign_in(Some(LINK_SPENT)))
    }
}

async fn use_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Path(LinkPath { secret }): Path<LinkPath>,
) -> Response {
    if !session::same_site(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            pages::sign_in(Some("Open the sign-in link itself, then press Sign in.")),
        );
    }
    match state.console.sessions.use_link(&secret) {
        Some(affiliate_id) => {
            let actor = format!("link:{}", &tokens::token_sha256(&secret)[..12]);
            start_session(
                &state,
                &headers,
                &extensions,
                actor,
                Role::Affiliate(affiliate_id),
                Credential::Link,
            )
            .await
        }
        None => page(StatusCode::UNAUTHORIZED, pages::sign_in(Some(LINK_SPENT))),
    }
}
