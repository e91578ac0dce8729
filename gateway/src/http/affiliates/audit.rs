//! The affiliate ledger's audit trail for admins: every change to money and
//! every fraud decision, with who made it, why, and its chain hash.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use eagate_affiliates::{Fact, Programme, Referrer};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::{Admin, ApiError, AppState};

/// One audit trail entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// Its position: pass the last as `after`.
    pub seq: u64,
    /// What changed: the fact's name (`commission_earned`, `payout_made`,
    /// `adjustment_entered`, `case_decided`, …).
    pub kind: String,
    /// The affiliate it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// Who: `token:` and the token's id, `visitor:` and an address,
    /// `system`, or `unrecorded` (written before the trail began).
    pub by: String,
    /// Why, if said.
    pub why: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// The chain hash after it.
    pub hash: String,
    /// The fact itself, tagged by `fact`.
    #[schema(value_type = Object)]
    pub fact: Fact,
}

/// A page of the audit trail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub items: Vec<AuditEntryView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

/// Which entries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// The previous page's next_after.
    after: Option<u64>,
    /// 1 to 1000 entries (default 100).
    limit: Option<usize>,
    /// Only entries about this affiliate.
    affiliate_id: Option<String>,
    /// Only entries of this kind (a fact's name).
    kind: Option<String>,
}

fn affiliate_of(programme: &Programme, fact: &Fact) -> Option<String> {
    match fact {
        Fact::AffiliateEnrolled { affiliate_id, .. }
        | Fact::AffiliateTokenReplaced { affiliate_id, .. }
        | Fact::AffiliateAddressSeen { affiliate_id, .. }
        | Fact::SignInLinkIssued { affiliate_id, .. }
        | Fact::TradeFilled { affiliate_id, .. }
        | Fact::TradeReversalReported { affiliate_id, .. }
        | Fact::TierSet { affiliate_id, .. }
        | Fact::CommissionEarned { affiliate_id, .. }
        | Fact::ClawbackEntered { affiliate_id, .. }
        | Fact::PayoutMade { affiliate_id, .. }
        | Fact::PayoutPending { affiliate_id, .. }
        | Fact::PayoutAccountSet { affiliate_id, .. }
        | Fact::AdjustmentEntered { affiliate_id, .. } => Some(affiliate_id.clone()),
        Fact::Referred {
            referrer: Referrer::Affiliate { affiliate_id },
            ..
        }
        | Fact::CaseOpened {
            referrer: Referrer::Affiliate { affiliate_id },
            ..
        } => Some(affiliate_id.clone()),
        Fact::PayoutSubmitted { payout_id, .. }
        | Fact::PayoutNeedsReconciliation { payout_id, .. }
        | Fact::PayoutPaid { payout_id, .. }
        | Fact::PayoutFailed { payout_id, .. } => programme
            .payout(payout_id)
            .map(|p| p.affiliate_id.to_owned()),
        Fact::TradeBusted { device_id, seq, .. } => programme
            .counted_fill(device_id, *seq)
            .map(|fill| fill.affiliate_id.clone()),
        Fact::CommissionReversed { entry_id, .. } => programme
            .entry_by_id(*entry_id)
            .map(|e| e.affiliate_id.clone()),
        Fact::CaseDecided { case_id, .. } => programme
            .cases()
            .iter()
            .find(|c| c.case_id == *case_id)
            .and_then(|c| match &c.referrer {
                Referrer::Affiliate { affiliate_id } => Some(affiliate_id.clone()),
                Referrer::Customer { .. } => None,
            }),
        _ => None,
    }
}

fn kind_of(fact: &Fact) -> String {
    serde_json::to_value(fact)
        .ok()
        .and_then(|v| v.get("fact").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/audit",
    summary = "The affiliate ledger's audit trail, oldest first: every change with who made it, why, when and its chain hash (admin). Filter by affiliate_id or kind.",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries.", body = AuditPage),
        (status = 422, description = "Invalid paging."),
        Admin,
    )
)]
pub(super) async fn audit(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    audit_entries(
        &state,
        query.after.unwrap_or(0),
        limit,
        query.affiliate_id.as_deref(),
        query.kind.as_deref(),
    )
    .map(Json)
}

/// Up to `limit` entries of the audit trail after `after`, oldest first,
/// of one affiliate and one kind if given.
pub(in crate::http) fn audit_entries(
    state: &AppState,
    mut after: u64,
    limit: usize,
    affiliate: Option<&str>,
    kind_wanted: Option<&str>,
) -> Result<AuditPage, ApiError> {
    let ledger = &state.affiliates.ledger;
    let mut items = Vec::new();
    let mut more = false;
    'scan: loop {
        let chunk = ledger
            .audit_after(after, 1_000)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let Some(last) = chunk.last().map(|e| e.seq) else {
            break;
        };
        let programme = ledger.read();
        for entry in chunk {
            let affiliate_id = affiliate_of(&programme, &entry.fact);
            let kind = kind_of(&entry.fact);
            if affiliate.is_some_and(|wanted| affiliate_id.as_deref() != Some(wanted))
                || kind_wanted.is_some_and(|wanted| wanted != kind)
            {
                continue;
            }
            if items.len() == limit {
                more = true;
                break 'scan;
            }
            items.push(AuditEntryView {
                seq: entry.seq,
                kind,
                affiliate_id,
                by: entry.by,
                why: entry.why,
                at_ms: entry.fact.at_ms(),
                hash: entry.hash,
                fact: entry.fact,
            });
        }
        after = last;
    }
    let next_after = more.then(|| items.last().map(|e| e.seq)).flatten();
    Ok(AuditPage { items, next_after })
}
