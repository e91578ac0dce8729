//! The affiliate programme's routes: enrolment, referral links and clicks,
//! signups, the platform's payment and refund events, payouts, stats,
//! commission and credit ledgers (JSON pages or CSV).
//!
//! Who may do what: the platform backend's token (and admin) writes events;
//! an affiliate's own token reads only that affiliate; admin reads all.
//!
//! This file holds the route table, the extractors that say who is calling
//! and the way every write goes through the ledger; the handlers sit beside
//! it by the same concerns as the programme's core.

mod adjustments;
mod attribution;
mod audit;
mod commissions;
mod credits;
mod enrolment;
mod fraud;
mod lists;
mod pages;
mod payments;
mod payouts;
mod stats;
mod trades;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use eagate_affiliates::{Decided, Fact, ReferralCode, WriteError};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::response::Response as DocumentedResponse;
use utoipa::{IntoParams, IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, Caller, refusals};
use crate::http::tokens::{self, Scope};
pub(in crate::http) use audit::audit_entries;
pub use audit::{AuditEntryView, AuditPage};
pub(in crate::http) use commissions::commissions as commission_ledger;
pub(in crate::http) use enrolment::affiliate_view;
pub use fraud::{CaseView, Cases};
pub(in crate::http) use fraud::{case_list, decide_case};
pub(in crate::http) use lists::affiliate_rows;
pub(in crate::http) use lists::payouts_of as payout_ledger;
pub(in crate::http) use payouts::all_batches;
pub(in crate::http) use stats::stats_of;

// The answers keep the paths they had when this was one file.
pub use commissions::{Commissions, EntryKindView, EntryStatusView, EntryView};
pub use credits::{CreditStatusView, CreditView, Credits, CustomerCodeView};
pub use enrolment::{AffiliateView, AffiliateWithToken, CodeOwnerKind, CodeOwnerView};
pub use lists::{AffiliateList, AffiliateRow, OwedStatus, PayoutHistory, PayoutRow};
pub use payouts::{BatchView, Batches, PayoutRun, PayoutView};
pub use stats::{PeriodView, StatsGranularity, StatsView};

/// The `/v1` routes of the programme (behind bearer authentication).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enrolment::enrol, lists::affiliates))
        .routes(routes!(enrolment::affiliate))
        .routes(routes!(enrolment::replace_token))
        .routes(routes!(stats::stats))
        .routes(routes!(commissions::commissions))
        .routes(routes!(payouts::pay_out, lists::payouts_of))
        .routes(routes!(lists::payouts))
        .routes(routes!(payouts::run_batch, payouts::batches))
        .routes(routes!(payouts::batch))
        .routes(routes!(payouts::settle))
        .routes(routes!(payouts::set_payout_account))
        .routes(routes!(fraud::cases))
        .routes(routes!(fraud::decide))
        .routes(routes!(audit::audit))
        .routes(routes!(adjustments::adjust))
        .routes(routes!(trades::bust))
        .routes(routes!(enrolment::code_owner))
        .routes(routes!(attribution::refer))
        .routes(routes!(payments::pay))
        .routes(routes!(payments::refund))
        .routes(routes!(credits::verify_email))
        .routes(routes!(credits::customer_code))
        .routes(routes!(credits::credits))
        .routes(routes!(credits::spend_credit))
}

/// The public click route, `GET /r/{code}`.
pub(super) fn click_route() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(enrolment::click))
}

/// Refuses (503) every affiliate route while the ledger's memory may be
/// ahead of its disk: nothing not durable is ever shown or built on.
pub(super) async fn ledger_durable(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    state.affiliates.ledger.healthy_or_recover().await?;
    Ok(next.run(request).await)
}

// ---- who is calling ------------------------------------------------------

/// A caller that may read an affiliate's data: admin (any affiliate) or the
/// affiliate itself.
pub(in crate::http) enum AffiliateReader {
    Admin,
    Own(String),
}

impl<S: Send + Sync> FromRequestParts<S> for AffiliateReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            None => Err(ApiError::Unauthorized),
            Some(Caller::Token(Scope::Admin)) => Ok(Self::Admin),
            Some(Caller::Affiliate(id)) => Ok(Self::Own(id.clone())),
            Some(Caller::Token(_)) => Err(ApiError::Forbidden),
        }
    }
}

impl IntoResponses for AffiliateReader {
    fn responses() -> BTreeMap<String, RefOr<DocumentedResponse>> {
        refusals()
    }
}

impl AffiliateReader {
    fn may_read(&self, affiliate_id: &str) -> Result<(), ApiError> {
        match self {
            Self::Own(own) if own != affiliate_id => Err(ApiError::Forbidden),
            _ => Ok(()),
        }
    }
}

/// The address and user agent of a visitor. Behind a proxy on the same
/// machine, the address the proxy saw (the last `X-Forwarded-For` entry).
pub(super) struct Visitor {
    address: String,
    user_agent: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let address = source_address(&parts.headers, &parts.extensions);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= 256).then_some(c)
            })
            .collect();
        Ok(Self {
            address,
            user_agent,
        })
    }
}

// ---- helpers -------------------------------------------------------------

/// The address a request came from. Behind a proxy on the same machine,
/// the address the proxy saw (the last `X-Forwarded-For` entry).
pub(in crate::http) fn source_address(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> String {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    match (peer, forwarded) {
        (Some(peer), Some(forwarded)) if peer.is_loopback() => forwarded.to_string(),
        (Some(peer), _) => peer.to_string(),
        (None, _) => "unknown".to_owned(),
    }
}

/// Records the address an affiliate's own token called from, the first
/// time it is seen (for the self-referral check). A failure to record is
/// logged, not the caller's problem.
pub(in crate::http) async fn note_affiliate_address(
    state: &AppState,
    affiliate_id: &str,
    address: &str,
    actor: &eagate_affiliates::Actor,
) {
    if address == "unknown" {
        return;
    }
    let now = state.affiliates.now_ms();
    let seen = |p: &eagate_affiliates::Programme| {
        Ok::<_, std::convert::Infallible>(p.affiliate_address_seen(affiliate_id, address, now))
    };
    // Almost always known: decide under the read lock first.
    if seen(&state.affiliates.ledger.read()).is_ok_and(|d| d.facts.is_empty()) {
        return;
    }
    if let Err(e) = state.affiliates.ledger.write_by(actor, seen).await {
        tracing::warn!(error = %e, "recording an affiliate's address failed");
    }
}

fn parse_code(text: &str) -> Result<ReferralCode, ApiError> {
    text.parse()
        .map_err(|e: eagate_affiliates::code::BadCode| ApiError::Unprocessable(e.to_string()))
}

/// A SHA-256 given as 64 lower-case hex digits.
fn check_sha256(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "{field} must be a SHA-256 as 64 lower-case hex digits"
        )))
    }
}

/// An event's `occurred_at`: when it happened, as the platform says.
fn parse_occurred_at(text: &str) -> Result<u64, ApiError> {
    eagate_affiliates::calendar::parse_instant(text).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "occurred_at {text:?} is not an RFC 3339 time such as 2026-11-29T16:15:54Z"
        ))
    })
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut random = vec![0u8; bytes];
    getrandom::fill(&mut random)
        .map_err(|e| ApiError::Internal(format!("random source failed: {e}")))?;
    Ok(tokens::hex(&random))
}

fn new_code() -> Result<ReferralCode, ApiError> {
    ReferralCode::generate().map_err(|e| ApiError::Internal(format!("random source failed: {e}")))
}

/// Writes through the ledger, mapping the operation's refusal with `refused`.
async fn write<E>(
    state: &AppState,
    decide: impl FnOnce(&eagate_affiliates::Programme) -> Result<Decided, E>,
    refused: impl FnOnce(E) -> ApiError,
) -> Result<Decided, ApiError> {
    write_because(state, "", decide, refused).await
}

/// The caller of the request being handled, as the audit trail records
/// them, with `why`.
fn caller_because(why: &str) -> eagate_affiliates::Actor {
    eagate_affiliates::Actor {
        by: super::caller_id(),
        why: why.to_owned(),
    }
}

/// [`write`], recording `why` in the audit trail beside the caller's id.
async fn write_because<E>(
    state: &AppState,
    why: &str,
    decide: impl FnOnce(&eagate_affiliates::Programme) -> Result<Decided, E>,
    refused: impl FnOnce(E) -> ApiError,
) -> Result<Decided, ApiError> {
    state
        .affiliates
        .ledger
        .write_by(&caller_because(why), decide)
        .await
        .map_err(|e| match e {
            WriteError::Refused(e) => refused(e),
            WriteError::Journal(e) => e.into(),
        })
}

/// What a write recorded: the facts it added, or none for a retry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Recorded {
    /// true when this request repeats one already recorded: nothing changed.
    pub replayed: bool,
    /// The facts recorded, in order, each an object tagged by `fact`
    /// (payment_received, commission_earned, commission_reversed,
    /// clawback_entered, payout_made, credit_granted, referred, …).
    #[schema(value_type = Vec<Object>)]
    pub facts: Vec<Fact>,
}

/// An affiliate named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(in crate::http) struct AffiliatePath {
    /// The affiliate's id (af_…).
    pub(in crate::http) affiliate_id: String,
}

fn recorded(decided: Decided) -> (StatusCode, Json<Recorded>) {
    let status = if decided.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (
        status,
        Json(Recorded {
            replayed: decided.replayed,
            facts: decided.facts,
        }),
    )
}
