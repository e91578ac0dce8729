//! The HTTP sidecar for admins and the platform backend: devices, signals,
//! executions, the affiliate programme, health. `router(state)` builds the
//! service without binding a socket, so tests drive it with `oneshot`.
//!
//! This file holds the route table, the shared state, the bearer-token
//! layer and the extractors that say who is calling and read bodies; the
//! handlers sit beside it by concern. Every route is registered from its
//! handler's `#[utoipa::path]`, so the OpenAPI document served at
//! `/openapi.json` lists exactly the routes there are.

pub mod affiliates;
pub mod connections;
mod console;
mod devices;
mod health;
mod openapi;
mod problem;
mod signals;
pub mod tokens;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Json, Router};
use eagate_protocol::ChannelName;
use serde::Deserialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::response::Response as DocumentedResponse;
use utoipa::{IntoParams, IntoResponses, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use console::{Console, HEALTH_SAMPLE_EVERY};
pub use devices::{DevicePage, DeviceView};
pub use problem::ApiError;
pub use signals::{DeviceExecution, ExecutionStatus, Executions};
use tokens::{Scope, TokenStore};

use crate::core::Core;

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
    /// The console: who is signed in, and samples for its health page.
    pub console: Arc<Console>,
}

/// The sidecar's routes, and the document that describes them.
pub fn router(state: AppState) -> Router {
    let v1 = OpenApiRouter::new()
        .merge(devices::routes())
        .merge(signals::routes())
        .merge(webhooks::routes())
        .merge(
            affiliates::routes().route_layer(middleware::from_fn_with_state(
                state.clone(),
                affiliates::ledger_durable,
            )),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let (routes, document) = OpenApiRouter::with_openapi(openapi::Sidecar::openapi())
        .nest("/v1", v1)
        .merge(
            affiliates::click_route().route_layer(middleware::from_fn_with_state(
                state.clone(),
                affiliates::ledger_durable,
            )),
        )
        .merge(health::routes())
        .routes(routes!(openapi::openapi_document))
        .split_for_parts();
    openapi::serve(document);
    routes
        .merge(console::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(problem::problems_only))
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

/// What a route behind the bearer-token layer refuses with, whichever of
/// the callers below it wants: the operations list these by naming their
/// caller among their responses.
fn refusals() -> BTreeMap<String, RefOr<DocumentedResponse>> {
    BTreeMap::from([
        (
            "401".to_owned(),
            DocumentedResponse::new("No valid bearer token.").into(),
        ),
        (
            "403".to_owned(),
            DocumentedResponse::new("The token's scope does not allow this.").into(),
        ),
    ])
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

impl IntoResponses for Admin {
    fn responses() -> BTreeMap<String, RefOr<DocumentedResponse>> {
        refusals()
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

impl IntoResponses for PlatformOrAdmin {
    fn responses() -> BTreeMap<String, RefOr<DocumentedResponse>> {
        refusals()
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
        // The scheme is case-insensitive (RFC 9110): `bearer` too.
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::Unauthorized)?;
    // Who did it, for the record: the token's id (the start of its hash),
    // never the token.
    let hash = tokens::token_sha256(token);
    let actor = format!("token:{}", &hash[..12]);
    let caller = match state.tokens.scope_of(token) {
        Some(scope) => Caller::Token(scope),
        None => {
            // Affiliate tokens are kept (hashed) in the programme's ledger.
            let programme = state.affiliates.ledger.read();
            let affiliate = programme
                .affiliate_of_token(&hash)
                .ok_or(ApiError::Unauthorized)?;
            Caller::Affiliate(affiliate.affiliate_id.clone())
        }
    };
    if let Caller::Affiliate(affiliate_id) = &caller {
        let address = affiliates::source_address(request.headers(), request.extensions());
        let actor = eagate_affiliates::Actor {
            by: actor.clone(),
            why: "an address the affiliate called from".to_owned(),
        };
        affiliates::note_affiliate_address(&state, affiliate_id, &address, &actor).await;
    }
    request.extensions_mut().insert(caller);
    Ok(CALLER_ID.scope(actor, next.run(request)).await)
}

tokio::task_local! {
    /// The authenticated caller's id while its request is handled: what
    /// the affiliate ledger's audit trail records as who made a change.
    static CALLER_ID: String;
}

/// Runs `work` as the request of `actor` (`token:…`): what the audit trail
/// records for a console action, whose caller is the session's, not a
/// bearer token's.
pub(crate) async fn as_caller<F: std::future::Future>(actor: String, work: F) -> F::Output {
    CALLER_ID.scope(actor, work).await
}

/// The id of the caller whose request is being handled (`token:…`), or
/// `unauthenticated` outside an authenticated request.
pub(crate) fn caller_id() -> String {
    CALLER_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unauthenticated".to_owned())
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
    // Bidirectional overrides and isolates make text read otherwise than
    // it is stored ("London" shown for "nodnoL").
    if value
        .chars()
        .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(ApiError::Unprocessable(format!(
            "{field} must not contain bidirectional override or isolate characters"
        )));
    }
    Ok(())
}

/// A signal channel named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ChannelPath {
    /// 1 to 64 of A-Z a-z 0-9 . _ -
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    channel: String,
}

impl ChannelPath {
    /// The channel, or 422 for a name no channel can have.
    fn parse(&self) -> Result<ChannelName, ApiError> {
        let name = &self.channel;
        ChannelName::new(name)
            .map_err(|e| ApiError::Unprocessable(format!("channel name {name:?} {e}")))
    }
}
