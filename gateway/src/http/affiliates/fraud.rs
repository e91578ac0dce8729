//! The fraud review queue: cases the checks opened, with their evidence,
//! and an admin's decision on each (cleared: held money released;
//! confirmed: unpaid commissions reversed, the referral blocked), recorded
//! with who decided and why.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use eagate_affiliates::programme::{Case, CaseError};
use eagate_affiliates::{CaseDecision, CaseKind, Referrer};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Recorded, recorded, write_because};
use crate::http::{Admin, ApiError, ApiJson, AppState, caller_id, check_text};

/// A fraud case as the queue shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CaseView {
    /// The case.
    pub case_id: u64,
    /// `self_referral` or `shared_address`.
    #[schema(value_type = String)]
    pub kind: CaseKind,
    /// The referred customer.
    pub user_id: String,
    /// The affiliate whose referral it is, if an affiliate's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// The customer whose referral it is, if a customer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referring_customer: Option<String>,
    /// What the check saw.
    pub evidence: String,
    /// The referral was refused (self-referral) rather than held.
    pub refused: bool,
    /// When it opened, Unix ms.
    pub opened_at_ms: u64,
    /// `open`, `cleared` or `confirmed`.
    pub status: String,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
}

fn case_view(case: &Case) -> CaseView {
    let (affiliate_id, referring_customer) = match &case.referrer {
        Referrer::Affiliate { affiliate_id } => (Some(affiliate_id.clone()), None),
        Referrer::Customer { user_id } => (None, Some(user_id.clone())),
    };
    let status = match case.decision.as_ref().map(|d| d.decision) {
        None => "open",
        Some(CaseDecision::Cleared) => "cleared",
        Some(CaseDecision::Confirmed) => "confirmed",
    };
    CaseView {
        case_id: case.case_id,
        kind: case.kind,
        user_id: case.user_id.clone(),
        affiliate_id,
        referring_customer,
        evidence: case.evidence.clone(),
        refused: case.refused,
        opened_at_ms: case.opened_at_ms,
        status: status.to_owned(),
        decided_by: case.decision.as_ref().map(|d| d.by.clone()),
        reason: case.decision.as_ref().map(|d| d.reason.clone()),
        decided_at_ms: case.decision.as_ref().map(|d| d.at_ms),
    }
}

/// Which cases to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CaseFilter {
    /// `open` (the default) or `decided`.
    status: Option<String>,
    /// Only cases about this affiliate's referrals.
    affiliate_id: Option<String>,
}

/// The review queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cases {
    /// Oldest first.
    pub items: Vec<CaseView>,
}

#[utoipa::path(
    get,
    path = "/fraud-cases",
    summary = "Fraud cases with their evidence, oldest first: open ones by default, or decided ones (admin).",
    params(CaseFilter),
    responses(
        (status = 200, description = "The cases.", body = Cases),
        (status = 422, description = "Invalid filter."),
        Admin,
    )
)]
pub(super) async fn cases(
    State(state): State<AppState>,
    _: Admin,
    filter: Result<Query<CaseFilter>, QueryRejection>,
) -> Result<Json<Cases>, ApiError> {
    let Query(filter) = filter?;
    let open = match filter.status.as_deref() {
        None | Some("open") => true,
        Some("decided") => false,
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "status is open or decided, not {other:?}"
            )));
        }
    };
    Ok(Json(Cases {
        items: case_list(&state, open, filter.affiliate_id.as_deref()),
    }))
}

/// The open (or decided) cases, oldest first, about one affiliate's
/// referrals or everyone's.
pub(in crate::http) fn case_list(
    state: &AppState,
    open: bool,
    affiliate: Option<&str>,
) -> Vec<CaseView> {
    let programme = state.affiliates.ledger.read();
    programme
        .cases()
        .iter()
        .filter(|c| c.decision.is_none() == open)
        .filter(|c| {
            affiliate.is_none_or(|wanted| {
                matches!(&c.referrer, Referrer::Affiliate { affiliate_id } if affiliate_id == wanted)
            })
        })
        .map(case_view)
        .collect()
}

/// A case named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct CasePath {
    /// The case. Read as text: a path that is no case number is no case
    /// (404), like any other unknown id, not a malformed request.
    #[param(value_type = u64, minimum = 0)]
    case_id: String,
}

/// An admin's decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDecision {
    /// `cleared` (held money released) or `confirmed` (unpaid commissions
    /// reversed, the referral blocked).
    #[schema(value_type = String)]
    decision: CaseDecision,
    /// Why, for the record (not empty, at most 500 bytes).
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/fraud-cases/{case_id}/decision",
    summary = "Clear or confirm a fraud case (admin), recorded with the admin token's id and the reason. The same decision again changes nothing.",
    params(CasePath),
    request_body = NewDecision,
    responses(
        (status = 201, description = "Decided, with the reversals it made.", body = Recorded),
        (status = 200, description = "Already decided so.", body = Recorded),
        (status = 404, description = "No such case."),
        (status = 409, description = "Already decided the other way."),
        (status = 422, description = "Invalid input."),
        Admin,
    )
)]
pub(super) async fn decide(
    State(state): State<AppState>,
    _: Admin,
    Path(CasePath { case_id }): Path<CasePath>,
    ApiJson(new): ApiJson<NewDecision>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    decide_case(&state, &case_id, new.decision, &new.reason)
        .await
        .map(recorded)
}

/// Records the caller's decision on case `case_id` (its number as text: no
/// number is no case) with `reason`; the same decision again changes
/// nothing, the other one is a conflict.
pub(in crate::http) async fn decide_case(
    state: &AppState,
    case_id: &str,
    decision: CaseDecision,
    reason: &str,
) -> Result<eagate_affiliates::Decided, ApiError> {
    let case_id: u64 = case_id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no fraud case {case_id}")))?;
    check_text("reason", reason, 500)?;
    let actor = caller_id();
    let now = state.affiliates.now_ms();
    let decided = write_because(
        state,
        reason,
        |p| p.decide_case(case_id, decision, &actor, reason, now),
        |e| match e {
            CaseError::UnknownCase(_) => ApiError::NotFound(e.to_string()),
            CaseError::AlreadyDecided { .. } => ApiError::Conflict(e.to_string()),
        },
    )
    .await?;
    if !decided.facts.is_empty() {
        tracing::info!(case = case_id, decision = ?decision, by = %actor, "fraud case decided");
    }
    Ok(decided)
}
