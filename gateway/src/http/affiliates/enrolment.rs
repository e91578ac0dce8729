//! Enrolment and links: an affiliate joins (and gets its code, link and
//! API token, shown once), reads itself, gets a new token; who owns a code;
//! and the public click route that records a followed link and lands the
//! visitor with the code and click id.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use eagate_affiliates::programme::EnrolError;
use eagate_affiliates::{CodeOwner, Currency, ReferralCode, WriteError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AffiliatePath, AffiliateReader, Visitor, new_code, parse_code, random_hex, write};
use crate::http::tokens;
use crate::http::{Admin, ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

/// A platform user who becomes an affiliate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAffiliate {
    /// The platform user.
    #[schema(min_length = 1, max_length = 128)]
    user_id: String,
    /// SHA-256 of their normalised email, as 64 lower-case hex digits: a
    /// signup with the same hash on their code is a self-referral.
    #[serde(default)]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    email_sha256: Option<String>,
    /// The IP address they enrolled from: a signup from it on their code is
    /// a self-referral.
    #[serde(default)]
    source_address: Option<String>,
}

/// An affiliate as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Affiliate)]
pub struct AffiliateView {
    /// `af_…`.
    pub affiliate_id: String,
    /// The platform user.
    pub user_id: String,
    /// The referral code, as people type it: `K7QM2-XR4HD`.
    #[schema(examples("K7QM2-XR4HD"))]
    pub code: String,
    /// The referral link to share.
    pub link: String,
    /// The programme's currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// When they joined, Unix ms.
    pub enrolled_at_ms: u64,
}

pub(in crate::http) fn affiliate_view(
    state: &AppState,
    affiliate_id: &str,
) -> Result<AffiliateView, ApiError> {
    let programme = state.affiliates.ledger.read();
    let affiliate = programme
        .affiliate(affiliate_id)
        .ok_or_else(|| ApiError::NotFound(format!("no affiliate {affiliate_id}")))?;
    Ok(AffiliateView {
        affiliate_id: affiliate.affiliate_id.clone(),
        user_id: affiliate.user_id.clone(),
        code: affiliate.code.to_string(),
        link: state.affiliates.link(&affiliate.code),
        currency: programme.config().currency,
        enrolled_at_ms: affiliate.enrolled_at_ms,
    })
}

/// An affiliate with its API token: the one answer that shows the token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AffiliateWithToken {
    /// The affiliate.
    pub affiliate: AffiliateView,
    /// `eaf_…`: reads this affiliate's stats and commissions; shown once.
    pub token: String,
}

fn new_token() -> Result<(String, String), ApiError> {
    let token = format!("eaf_{}", random_hex(32)?);
    let hash = tokens::token_sha256(&token);
    Ok((token, hash))
}

#[utoipa::path(
    post,
    path = "/affiliates",
    summary = "A platform user becomes an affiliate: a referral code, a link, and an API token shown once (platform or admin token).",
    request_body = NewAffiliate,
    responses(
        (status = 201, description = "Enrolled; the answer shows the affiliate's token, once.", body = AffiliateWithToken),
        (status = 409, description = "The user already is an affiliate."),
        (status = 413, description = "Body too large."),
        (status = 422, description = "Invalid input."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn enrol(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewAffiliate>,
) -> Result<(StatusCode, Json<AffiliateWithToken>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    if let Some(hash) = &new.email_sha256 {
        super::check_sha256("email_sha256", hash)?;
    }
    let source_address = new
        .source_address
        .as_deref()
        .map(|text| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| ip.to_string())
                .map_err(|_| {
                    ApiError::Unprocessable(format!("source_address {text:?} is not an IP address"))
                })
        })
        .transpose()?;
    let identity = eagate_affiliates::programme::AffiliateIdentity {
        email_sha256: new.email_sha256.clone(),
        source_address,
    };
    let (token, token_hash) = new_token()?;
    let caller = super::caller_because("");
    // A fresh code and id collide with an existing one about never; if they
    // do, draw again. A journal failure is not retried here: the request
    // fails, and the platform's retry finds the user enrolled or not.
    let mut attempts = 0;
    let affiliate_id = loop {
        attempts += 1;
        let affiliate_id = format!("af_{}", random_hex(8)?);
        let code = new_code()?;
        let now = state.affiliates.now_ms();
        let written = state
            .affiliates
            .ledger
            .write_by(&caller, |p| {
                p.enrol_affiliate(
                    &new.user_id,
                    &affiliate_id,
                    code,
                    &token_hash,
                    &identity,
                    now,
                )
            })
            .await;
        match written {
            Ok(_) => break affiliate_id,
            Err(WriteError::Refused(EnrolError::Collision)) if attempts < 8 => continue,
            Err(WriteError::Refused(e @ EnrolError::AlreadyAffiliate { .. })) => {
                return Err(ApiError::Conflict(e.to_string()));
            }
            Err(WriteError::Refused(e)) => return Err(ApiError::Internal(e.to_string())),
            Err(WriteError::Journal(e)) => return Err(e.into()),
        }
    };
    tracing::info!(affiliate = %affiliate_id, user = %new.user_id, "affiliate enrolled");
    Ok((
        StatusCode::CREATED,
        Json(AffiliateWithToken {
            affiliate: affiliate_view(&state, &affiliate_id)?,
            token,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/affiliates/{affiliate_id}",
    summary = "An affiliate: code and link (admin, or the affiliate's own token).",
    params(AffiliatePath),
    responses(
        (status = 200, description = "The affiliate.", body = AffiliateView),
        (status = 404, description = "No such affiliate."),
        AffiliateReader,
    )
)]
pub(super) async fn affiliate(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
) -> Result<Json<AffiliateView>, ApiError> {
    reader.may_read(&affiliate_id)?;
    Ok(Json(affiliate_view(&state, &affiliate_id)?))
}

#[utoipa::path(
    post,
    path = "/affiliates/{affiliate_id}/token",
    summary = "Replace an affiliate's API token; the old one stops working, the new one is shown once (admin).",
    params(AffiliatePath),
    responses(
        (status = 200, description = "Replaced.", body = AffiliateWithToken),
        (status = 404, description = "No such affiliate."),
        Admin,
    )
)]
pub(super) async fn replace_token(
    State(state): State<AppState>,
    _: Admin,
    Path(AffiliatePath { affiliate_id }): Path<AffiliatePath>,
) -> Result<Json<AffiliateWithToken>, ApiError> {
    let (token, token_hash) = new_token()?;
    let now = state.affiliates.now_ms();
    write(
        &state,
        |p| {
            p.replace_token(&affiliate_id, &token_hash, now)
                .ok_or_else(|| format!("no affiliate {affiliate_id}"))
        },
        ApiError::NotFound,
    )
    .await?;
    tracing::info!(affiliate = %affiliate_id, "affiliate token replaced");
    Ok(Json(AffiliateWithToken {
        affiliate: affiliate_view(&state, &affiliate_id)?,
        token,
    }))
}

/// Who owns a referral code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = CodeOwner)]
pub struct CodeOwnerView {
    /// The code, as people type it.
    pub code: String,
    /// `affiliate` (commission) or `customer` (referral credit).
    pub kind: CodeOwnerKind,
    /// The affiliate, for affiliate codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// The customer, for customer codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// What a referral code earns its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeOwnerKind {
    /// An affiliate's code: commissions.
    Affiliate,
    /// A customer's code: referral credits.
    Customer,
}

/// A referral code named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct CodePath {
    /// A referral code, as in the link: 10 of Crockford's base 32 (no U;
    /// O reads as 0, I and L as 1); case, spaces and hyphens do not matter.
    #[param(pattern = "^[ -]*([0-9A-TV-Za-tv-z][ -]*){10}$")]
    code: String,
}

#[utoipa::path(
    get,
    path = "/referral-codes/{code}",
    summary = "Who owns a referral code, for the signup form (platform or admin token).",
    params(CodePath),
    responses(
        (status = 200, description = "The owner.", body = CodeOwnerView),
        (status = 404, description = "No one has this code."),
        (status = 422, description = "Not a referral code."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn code_owner(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(CodePath { code }): Path<CodePath>,
) -> Result<Json<CodeOwnerView>, ApiError> {
    let code = parse_code(&code)?;
    let programme = state.affiliates.ledger.read();
    let owner = programme
        .code_owner(&code)
        .ok_or_else(|| ApiError::NotFound(format!("referral code {code} is not known")))?;
    let (kind, affiliate_id, user_id) = match owner {
        CodeOwner::Affiliate(id) => (CodeOwnerKind::Affiliate, Some(id.clone()), None),
        CodeOwner::Customer(user) => (CodeOwnerKind::Customer, None, Some(user.clone())),
    };
    Ok(Json(CodeOwnerView {
        code: code.to_string(),
        kind,
        affiliate_id,
        user_id,
    }))
}

// ---- clicks and signups --------------------------------------------------

/// The landing page with `params` set in its query: any of them already
/// there replaced, not repeated, and a `#fragment` kept at the end.
fn landing_with(landing: &str, params: &[(&str, &str)]) -> String {
    let (before_fragment, fragment) = match landing.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (landing, None),
    };
    let (path, query) = before_fragment
        .split_once('?')
        .unwrap_or((before_fragment, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            !params.iter().any(|(ours, _)| *ours == name)
        })
        .map(str::to_owned)
        .collect();
    pairs.extend(params.iter().map(|(name, value)| format!("{name}={value}")));
    let mut url = format!("{path}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    url
}

#[utoipa::path(
    get,
    path = "/r/{code}",
    summary = "A referral link: records the click (time, source address, user agent) and redirects to the landing page with ref=<code>&click=<click id>. An unknown code redirects without them.",
    params(CodePath),
    security(),
    responses(
        (status = 303, description = "To the landing page.", headers(("Location" = String, description = "The landing page, with ref and click when the code is known."))),
        (status = 429, description = "Too many clicks from this address this minute; Retry-After says when to come back."),
        (status = 500, description = "The click could not be recorded."),
    )
)]
pub(super) async fn click(
    State(state): State<AppState>,
    method: axum::http::Method,
    Path(CodePath { code }): Path<CodePath>,
    visitor: Visitor,
) -> Result<Response, ApiError> {
    let desk = &state.affiliates;
    let now = desk.now_ms();
    if let Err(retry_after_s) = desk.click_limit.admit(&visitor.address, now) {
        return Err(ApiError::RateLimited { retry_after_s });
    }
    let landing = &desk.landing_page;
    let to_landing = |click_id: &str, code: ReferralCode| {
        Redirect::to(&landing_with(
            landing,
            &[("ref", code.as_str()), ("click", click_id)],
        ))
        .into_response()
    };
    // A mistyped or unknown code still lands the visitor, without a code:
    // a broken link must not lose them.
    let Ok(code) = code.parse::<ReferralCode>() else {
        return Ok(Redirect::to(landing).into_response());
    };
    // A link checker's HEAD is no visit: answered, not counted.
    if method == axum::http::Method::HEAD {
        return Ok(Redirect::to(&landing_with(landing, &[("ref", code.as_str())])).into_response());
    }
    // The same visitor again within the dedupe interval: counted once, the
    // first click's id again, and nothing written.
    let recent = |desk: &crate::affiliates::AffiliateDesk| {
        desk.ledger
            .read()
            .recent_click(&visitor.address, code, now)
            .map(str::to_owned)
    };
    if let Some(click_id) = recent(desk) {
        return Ok(to_landing(&click_id, code));
    }
    let click_id = format!("ck_{}", random_hex(12)?);
    let visitor_actor = eagate_affiliates::Actor {
        by: format!("visitor:{}", visitor.address),
        why: String::new(),
    };
    let written = desk
        .ledger
        .write_by(&visitor_actor, |p| {
            p.click(code, &click_id, &visitor.address, &visitor.user_agent, now)
                .ok_or(())
        })
        .await;
    match written {
        // Another request from this visitor counted it first.
        Ok(decided) if decided.replayed => match recent(desk) {
            Some(first) => Ok(to_landing(&first, code)),
            None => Ok(Redirect::to(landing).into_response()),
        },
        Ok(_) => Ok(to_landing(&click_id, code)),
        Err(WriteError::Refused(())) => Ok(Redirect::to(landing).into_response()),
        Err(WriteError::Journal(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::landing_with;

    #[test]
    fn ref_and_click_go_into_the_query_before_a_fragment_and_replace_their_own() {
        let set = [("ref", "K7QM2XR4HD"), ("click", "ck_1")];
        assert_eq!(
            landing_with("https://p.example/signup", &set),
            "https://p.example/signup?ref=K7QM2XR4HD&click=ck_1"
        );
        assert_eq!(
            landing_with("https://p.example/signup?lang=en#plans", &set),
            "https://p.example/signup?lang=en&ref=K7QM2XR4HD&click=ck_1#plans"
        );
        assert_eq!(
            landing_with("https://p.example/s?ref=OLD&utm=x&click=old", &set),
            "https://p.example/s?utm=x&ref=K7QM2XR4HD&click=ck_1"
        );
        assert_eq!(
            landing_with("https://p.example/#/signup", &set[..1]),
            "https://p.example/?ref=K7QM2XR4HD#/signup"
        );
    }
}
