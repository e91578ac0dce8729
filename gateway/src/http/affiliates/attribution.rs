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

use super::{Recorded, parse_code, recorded, write};
use crate::http::{ApiError, ApiJson, AppState, PlatformOrAdmin, check_text};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewReferral {
    user_id: String,
    code: String,
    #[serde(default)]
    click_id: Option<String>,
    source_address: String,
    email_sha256: String,
    email_verified: bool,
}

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
    let signup = Signup {
        user_id: new.user_id,
        code,
        click_id: new.click_id,
        source_address: source.to_string(),
        email_sha256: new.email_sha256,
        email_verified: new.email_verified,
    };
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.refer(&signup, now),
        |e| match e {
            ReferralError::AlreadyReferred { .. } | ReferralError::PaidBeforeReferral(_) => {
                ApiError::Conflict(e.to_string())
            }
            ReferralError::DailyLimit { .. } => ApiError::TooManyRequests(e.to_string()),
            ReferralError::SelfReferral(_) => {
                tracing::warn!(user = %signup.user_id, "self-referral refused");
                ApiError::Unprocessable(e.to_string())
            }
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}
