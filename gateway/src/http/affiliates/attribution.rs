//! Signups: the platform reports a new user who came with a referral code
//! (and the click id from the landing page); the programme attributes them
//! or says why not.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eagate_affiliates::Signup;
use eagate_affiliates::programme::ReferralError;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Recorded, check_sha256, parse_code, parse_occurred_at, recorded, write};
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

/// A signup that came with a referral code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewReferral {
    /// The new platform user.
    #[schema(min_length = 1, max_length = 128)]
    user_id: String,
    /// The referral code they signed up with.
    code: String,
    /// The click parameter the landing page received; its click must be
    /// within the attribution window.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    click_id: Option<String>,
    /// The signup's IP address.
    source_address: String,
    /// SHA-256 of the user's normalised email, as 64 lower-case hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    email_sha256: String,
    /// Whether the user has verified that email yet.
    email_verified: bool,
    /// When the user signed up, as the platform recorded it (RFC 3339, such as
    /// `2026-11-29T16:15:54Z`): every rule that depends on time uses it. At
    /// most 5 minutes ahead of the gateway's clock, and no older than the
    /// programme's event age limit.
    #[schema(format = DateTime, example = "2026-11-29T16:15:54Z")]
    occurred_at: String,
}

#[utoipa::path(
    post,
    path = "/referrals",
    summary = "A signup with a referral code (platform or admin token). The first valid referral of a user stands; the same one again changes nothing.",
    request_body = NewReferral,
    responses(
        (status = 201, description = "Attributed.", body = Recorded),
        (status = 200, description = "Already attributed to this code.", body = Recorded),
        (status = 409, description = "The user was already referred with another code."),
        (status = 422, description = "Unknown or expired code, self-referral (which opens a fraud case), a signup too old or in the future, or invalid input."),
        (status = 429, description = "The referring customer reached today's referral limit."),
        PlatformOrAdmin,
    )
)]
pub(super) async fn refer(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewReferral>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    let code = parse_code(&new.code)?;
    if let Some(click_id) = &new.click_id {
        check_text("click_id", click_id, 64)?;
    }
    let source: IpAddr = new.source_address.parse().map_err(|_| {
        ApiError::Unprocessable(format!(
            "source_address {:?} is not an IP address",
            new.source_address
        ))
    })?;
    check_sha256("email_sha256", &new.email_sha256)?;
    let occurred_at_ms = parse_occurred_at(&new.occurred_at)?;
    let signup = Signup {
        user_id: new.user_id,
        code,
        click_id: new.click_id,
        source_address: source.to_string(),
        email_sha256: new.email_sha256,
        email_verified: new.email_verified,
        occurred_at_ms,
    };
    let now = state.affiliates.now_ms();
    // A self-referral is refused, and the refusal is journaled as a fraud
    // case in the same write (once per customer and referrer while open).
    let mut refusal = None;
    let decided = write(
        &state,
        |p| match p.refer(&signup, now) {
            Err(ReferralError::SelfReferral {
                user_id,
                referrer,
                evidence,
            }) => {
                refusal = Some(format!(
                    "user {user_id} cannot be referred by themselves: {evidence}; a fraud case is open for review"
                ));
                Ok(p.self_referral_case(&signup, referrer, evidence, now))
            }
            other => other,
        },
        |e| match e {
            ReferralError::AlreadyReferred { .. } | ReferralError::PaidBeforeReferral(_) => {
                ApiError::Conflict(e.to_string())
            }
            ReferralError::DailyLimit { .. } => ApiError::TooManyRequests(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    if let Some(refusal) = refusal {
        tracing::warn!(user = %signup.user_id, "self-referral refused; fraud case opened");
        return Err(ApiError::Unprocessable(refusal));
    }
    Ok(recorded(decided))
}
