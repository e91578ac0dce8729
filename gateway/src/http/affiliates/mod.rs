//! The affiliate programme's routes: enrolment, referral links and clicks,
//! signups, the platform's payment and refund events, payouts, stats,
//! commission and credit ledgers (JSON pages or CSV).
//!
//! Who may do what: the platform backend's token (and admin) writes events;
//! an affiliate's own token reads only that affiliate; admin reads all.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eagate_affiliates::calendar::{self, day_of, format_instant};
use eagate_affiliates::money::format_major;
use eagate_affiliates::programme::{
    CustomerCodeError, EnrolError, PaymentError, PayoutError, ReferralError, RefundError,
};
use eagate_affiliates::{
    CodeOwner, CommissionKind, CreditReason, Currency, Decided, Entry, EntryKind, EntryStatus,
    Fact, Granularity, PaymentEvent, ReferralCode, RefundEvent, Signup, WriteError,
};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, AppState, Caller, PlatformOrAdmin, check_text};
use crate::http::tokens::{self, Scope};

/// The `/v1` routes of the programme (behind bearer authentication).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/affiliates", post(enrol))
        .route("/affiliates/{affiliate_id}", get(affiliate))
        .route("/affiliates/{affiliate_id}/token", post(replace_token))
        .route("/affiliates/{affiliate_id}/stats", get(stats))
        .route("/affiliates/{affiliate_id}/commissions", get(commissions))
        .route("/affiliates/{affiliate_id}/payouts", post(pay_out))
        .route("/referral-codes/{code}", get(code_owner))
        .route("/referrals", post(refer))
        .route("/payments", post(pay))
        .route("/refunds", post(refund))
        .route("/email-verifications", post(verify_email))
        .route("/customers/{user_id}/referral-code", post(customer_code))
        .route("/customers/{user_id}/credits", get(credits))
}

/// The public click route, `GET /r/{code}`.
pub(super) fn click_route() -> Router<AppState> {
    Router::new().route("/r/{code}", get(click))
}

// ---- who is calling ------------------------------------------------------

/// A caller that may read an affiliate's data: admin (any affiliate) or the
/// affiliate itself.
pub(super) enum AffiliateReader {
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
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let address = match (peer, forwarded) {
            (Some(peer), Some(forwarded)) if peer.is_loopback() => forwarded.to_string(),
            (Some(peer), _) => peer.to_string(),
            (None, _) => "unknown".to_owned(),
        };
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

fn parse_code(text: &str) -> Result<ReferralCode, ApiError> {
    text.parse()
        .map_err(|e: eagate_affiliates::code::BadCode| ApiError::Unprocessable(e.to_string()))
}

fn parse_currency(text: &str) -> Result<Currency, ApiError> {
    text.parse()
        .map_err(|e: eagate_affiliates::money::BadCurrency| ApiError::Unprocessable(e.to_string()))
}

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
    state
        .affiliates
        .ledger
        .write(decide)
        .await
        .map_err(|e| match e {
            WriteError::Refused(e) => refused(e),
            WriteError::Journal(e) => ApiError::Internal(e.to_string()),
        })
}

/// What a write recorded: the facts it added, or none for a retry.
#[derive(Debug, Serialize, Deserialize)]
pub struct Recorded {
    /// The request repeats one already recorded; nothing changed.
    pub replayed: bool,
    /// The facts recorded, in order (commissions, reversals, credits…).
    pub facts: Vec<Fact>,
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

// ---- affiliates ----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAffiliate {
    user_id: String,
}

/// An affiliate as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AffiliateView {
    /// `af_…`.
    pub affiliate_id: String,
    /// The platform user.
    pub user_id: String,
    /// The referral code, as people type it: `K7QM2-XR4HD`.
    pub code: String,
    /// The referral link to share.
    pub link: String,
    /// The programme's currency.
    pub currency: Currency,
    /// When they joined, Unix ms.
    pub enrolled_at_ms: u64,
}

fn affiliate_view(state: &AppState, affiliate_id: &str) -> Result<AffiliateView, ApiError> {
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
#[derive(Debug, Serialize, Deserialize)]
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

async fn enrol(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewAffiliate>,
) -> Result<(StatusCode, Json<AffiliateWithToken>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    let (token, token_hash) = new_token()?;
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
            .write(|p| p.enrol_affiliate(&new.user_id, &affiliate_id, code, &token_hash, now))
            .await;
        match written {
            Ok(_) => break affiliate_id,
            Err(WriteError::Refused(EnrolError::Collision)) if attempts < 8 => continue,
            Err(WriteError::Refused(e @ EnrolError::AlreadyAffiliate { .. })) => {
                return Err(ApiError::Conflict(e.to_string()));
            }
            Err(WriteError::Refused(e)) => return Err(ApiError::Internal(e.to_string())),
            Err(WriteError::Journal(e)) => return Err(ApiError::Internal(e.to_string())),
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

async fn affiliate(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(affiliate_id): Path<String>,
) -> Result<Json<AffiliateView>, ApiError> {
    reader.may_read(&affiliate_id)?;
    Ok(Json(affiliate_view(&state, &affiliate_id)?))
}

async fn replace_token(
    State(state): State<AppState>,
    _: super::Admin,
    Path(affiliate_id): Path<String>,
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
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeOwnerView {
    /// The code, as people type it.
    pub code: String,
    /// `affiliate` (commission) or `customer` (referral credit).
    pub kind: String,
    /// The affiliate, for affiliate codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// The customer, for customer codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

async fn code_owner(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(code): Path<String>,
) -> Result<Json<CodeOwnerView>, ApiError> {
    let code = parse_code(&code)?;
    let programme = state.affiliates.ledger.read();
    let owner = programme
        .code_owner(&code)
        .ok_or_else(|| ApiError::NotFound(format!("referral code {code} is not known")))?;
    let (kind, affiliate_id, user_id) = match owner {
        CodeOwner::Affiliate(id) => ("affiliate", Some(id.clone()), None),
        CodeOwner::Customer(user) => ("customer", None, Some(user.clone())),
    };
    Ok(Json(CodeOwnerView {
        code: code.to_string(),
        kind: kind.to_owned(),
        affiliate_id,
        user_id,
    }))
}

// ---- clicks and signups --------------------------------------------------

async fn click(
    State(state): State<AppState>,
    Path(code): Path<String>,
    visitor: Visitor,
) -> Result<Response, ApiError> {
    let landing = &state.affiliates.landing_page;
    let joiner = if landing.contains('?') { '&' } else { '?' };
    // A mistyped or unknown code still lands the visitor, without a code:
    // a broken link must not lose them.
    let Ok(code) = code.parse::<ReferralCode>() else {
        return Ok(Redirect::to(landing).into_response());
    };
    let click_id = format!("ck_{}", random_hex(12)?);
    let now = state.affiliates.now_ms();
    let written = state
        .affiliates
        .ledger
        .write(|p| {
            p.click(code, &click_id, &visitor.address, &visitor.user_agent, now)
                .ok_or(())
        })
        .await;
    match written {
        Ok(_) => Ok(Redirect::to(&format!(
            "{landing}{joiner}ref={}&click={click_id}",
            code.as_str()
        ))
        .into_response()),
        Err(WriteError::Refused(())) => Ok(Redirect::to(landing).into_response()),
        Err(WriteError::Journal(e)) => Err(ApiError::Internal(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReferral {
    user_id: String,
    code: String,
    #[serde(default)]
    click_id: Option<String>,
    source_address: String,
    email_sha256: String,
    email_verified: bool,
}

async fn refer(
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

// ---- the platform's events -----------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    payment_id: String,
    user_id: String,
    amount_minor: i64,
    currency: String,
    billing_period: u32,
}

async fn pay(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewPayment>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("payment_id", &new.payment_id, 128)?;
    check_text("user_id", &new.user_id, 128)?;
    let payment = PaymentEvent {
        currency: parse_currency(&new.currency)?,
        payment_id: new.payment_id,
        user_id: new.user_id,
        amount_minor: new.amount_minor,
        billing_period: new.billing_period,
    };
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.pay(&payment, now),
        |e| match e {
            PaymentError::IdReused(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRefund {
    refund_id: String,
    payment_id: String,
    amount_minor: i64,
    currency: String,
}

async fn refund(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<NewRefund>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("refund_id", &new.refund_id, 128)?;
    check_text("payment_id", &new.payment_id, 128)?;
    let refund = RefundEvent {
        currency: parse_currency(&new.currency)?,
        refund_id: new.refund_id,
        payment_id: new.payment_id,
        amount_minor: new.amount_minor,
    };
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.refund(&refund, now),
        |e| match e {
            RefundError::IdReused(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Unprocessable(other.to_string()),
        },
    )
    .await?;
    Ok(recorded(decided))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailVerification {
    user_id: String,
}

async fn verify_email(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    ApiJson(new): ApiJson<EmailVerification>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("user_id", &new.user_id, 128)?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| Ok::<_, std::convert::Infallible>(p.verify_email(&new.user_id, now)),
        |never| match never {},
    )
    .await?;
    Ok(recorded(decided))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayout {
    payout_id: String,
}

async fn pay_out(
    State(state): State<AppState>,
    _: super::Admin,
    Path(affiliate_id): Path<String>,
    ApiJson(new): ApiJson<NewPayout>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    check_text("payout_id", &new.payout_id, 128)?;
    let now = state.affiliates.now_ms();
    let decided = write(
        &state,
        |p| p.pay_out(&affiliate_id, &new.payout_id, now),
        |e| match e {
            PayoutError::UnknownAffiliate(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Conflict(other.to_string()),
        },
    )
    .await?;
    if let Some(Fact::PayoutMade { amount_minor, .. }) = decided.facts.first() {
        tracing::info!(affiliate = %affiliate_id, payout = %new.payout_id, amount_minor, "payout recorded");
    }
    Ok(recorded(decided))
}

// ---- customer referral credits -------------------------------------------

/// A customer's referral code.
#[derive(Debug, Serialize, Deserialize)]
pub struct CustomerCodeView {
    /// The customer.
    pub user_id: String,
    /// The code, as people type it.
    pub code: String,
    /// The referral link.
    pub link: String,
}

async fn customer_code(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<CustomerCodeView>), ApiError> {
    check_text("user_id", &user_id, 128)?;
    let mut attempts = 0;
    let decided = loop {
        attempts += 1;
        let code = new_code()?;
        let now = state.affiliates.now_ms();
        let written = state
            .affiliates
            .ledger
            .write(|p| p.issue_customer_code(&user_id, code, now))
            .await;
        match written {
            Ok(decided) => break decided,
            Err(WriteError::Refused(CustomerCodeError::Collision)) if attempts < 8 => continue,
            Err(WriteError::Refused(e)) => return Err(ApiError::Internal(e.to_string())),
            Err(WriteError::Journal(e)) => return Err(ApiError::Internal(e.to_string())),
        }
    };
    let code = state
        .affiliates
        .ledger
        .read()
        .customer_code(&user_id)
        .ok_or_else(|| ApiError::Internal("a customer code vanished".into()))?;
    let status = if decided.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(CustomerCodeView {
            user_id,
            code: code.to_string(),
            link: state.affiliates.link(&code),
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The most rows one JSON page holds.
const MAX_PAGE: usize = 1_000;

/// Whether the caller asked for CSV (`?format=csv` or `Accept: text/csv`).
fn wants_csv(query: &PageQuery, headers: &HeaderMap) -> Result<bool, ApiError> {
    match query.format.as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::Unprocessable(format!(
            "format must be json or csv, not {other:?}"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

fn page_limit(query: &PageQuery, csv: bool) -> Result<usize, ApiError> {
    match query.limit {
        None if csv => Ok(usize::MAX),
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) || (csv && n > 0) => Ok(n),
        Some(n) => Err(ApiError::Unprocessable(format!(
            "limit must be between 1 and {MAX_PAGE}, not {n}"
        ))),
    }
}

fn date_bound(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            calendar::parse_date(text).ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "{field} must be a date like 2026-11-23, not {text:?}"
                ))
            })
        })
        .transpose()
}

/// One CSV field, quoted when it must be. Text a spreadsheet would run as
/// a formula (`=`, `+`, `-`, `@` first) gets a leading `'`; numbers, even
/// negative ones, are left alone.
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '@', '\t', '\r'])
        || (text.starts_with('-')
            && !(text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.')));
    let text = if formula {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_response(filename: &str, header_line: &str, rows: Vec<Vec<String>>) -> Response {
    let mut body = String::from(header_line);
    body.push('\n');
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        body.push_str(&fields.join(","));
        body.push('\n');
    }
    let disposition = format!("attachment; filename=\"{filename}\"");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// A credit ledger line as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreditView {
    /// The ledger entry.
    pub credit_id: u64,
    /// How much.
    pub amount_minor: i64,
    /// `referred_a_customer` or `was_referred`.
    pub reason: CreditReason,
    /// The referred customer whose spend earned it.
    pub referred_user_id: String,
    /// When, Unix ms.
    pub at_ms: u64,
}

/// A customer's credit balance and a page of its history.
#[derive(Debug, Serialize, Deserialize)]
pub struct Credits {
    /// The customer.
    pub user_id: String,
    /// The programme's currency.
    pub currency: Currency,
    /// Every credit ever granted, summed.
    pub balance_minor: i64,
    /// Oldest first.
    pub items: Vec<CreditView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

async fn credits(
    State(state): State<AppState>,
    _: PlatformOrAdmin,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let csv = wants_csv(&query, &headers)?;
    let limit = page_limit(&query, csv)?;
    let after = query.after.unwrap_or(0);
    let programme = state.affiliates.ledger.read();
    let currency = programme.config().currency;
    let balance_minor = programme.credits_of(&user_id).map(|c| c.amount_minor).sum();
    if query.status.is_some() {
        return Err(ApiError::Unprocessable(
            "credits have no status: filter them by kind, from or to".to_owned(),
        ));
    }
    let reason = match query.kind.as_deref() {
        None => None,
        Some("referred_a_customer") => Some(CreditReason::ReferredACustomer),
        Some("was_referred") => Some(CreditReason::WasReferred),
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "kind must be referred_a_customer or was_referred, not {other:?}"
            )));
        }
    };
    let from = date_bound("from", query.from.as_deref())?;
    let to = date_bound("to", query.to.as_deref())?;
    let mut matching = programme
        .credits_of(&user_id)
        .filter(|c| c.credit_id > after)
        .filter(|c| reason.is_none_or(|r| c.reason == r))
        .filter(|c| from.is_none_or(|d| day_of(c.at_ms) >= d))
        .filter(|c| to.is_none_or(|d| day_of(c.at_ms) <= d));
    let items: Vec<_> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let rows = items
            .iter()
            .map(|c| {
                vec![
                    c.credit_id.to_string(),
                    format_instant(c.at_ms),
                    user_id.clone(),
                    reason_name(c.reason).to_owned(),
                    c.referred_user_id.clone(),
                    c.amount_minor.to_string(),
                    format_major(c.amount_minor),
                    currency.to_string(),
                ]
            })
            .collect();
        return Ok(csv_response(
            "credits.csv",
            "credit_id,at,user_id,reason,referred_user_id,amount_minor,amount,currency",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|c| c.credit_id)).flatten();
    let items = items
        .into_iter()
        .map(|c| CreditView {
            credit_id: c.credit_id,
            amount_minor: c.amount_minor,
            reason: c.reason,
            referred_user_id: c.referred_user_id.clone(),
            at_ms: c.at_ms,
        })
        .collect();
    Ok(Json(Credits {
        user_id: user_id.clone(),
        currency,
        balance_minor,
        items,
        next_after,
    })
    .into_response())
}

fn reason_name(reason: CreditReason) -> &'static str {
    match reason {
        CreditReason::ReferredACustomer => "referred_a_customer",
        CreditReason::WasReferred => "was_referred",
    }
}

// ---- affiliate reading ---------------------------------------------------

/// A ledger line as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EntryView {
    /// The entry.
    pub entry_id: u64,
    /// `subscription`, `first_trade_bonus` or `clawback`.
    pub kind: String,
    /// Subscriptions: the billing period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_period: Option<u32>,
    /// Commissions: the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u32>,
    /// Commissions: the amount the rate was applied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_minor: Option<i64>,
    /// Positive for commissions, negative for clawbacks.
    pub amount_minor: i64,
    /// How much of a commission was reversed before payout.
    pub reversed_minor: i64,
    /// `pending`, `payable`, `paid` or `reversed`, now.
    pub status: String,
    /// The referred user.
    pub user_id: String,
    /// The payment it comes from.
    pub payment_id: String,
    /// Clawbacks: the commission clawed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_entry: Option<u64>,
    /// Clawbacks: the refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// When it was made, Unix ms.
    pub created_at_ms: u64,
    /// When it stops being pending, Unix ms.
    pub payable_at_ms: u64,
    /// The payout that settled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    /// When that payout was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<u64>,
}

fn entry_view(entry: &Entry, now: u64) -> EntryView {
    let (kind, billing_period, rate_bps, base_minor, of_entry, refund_id) = match &entry.kind {
        EntryKind::Commission {
            kind,
            rate_bps,
            base_minor,
        } => {
            let (name, period) = match kind {
                CommissionKind::Subscription { billing_period } => {
                    ("subscription", Some(*billing_period))
                }
                CommissionKind::FirstTradeBonus => ("first_trade_bonus", None),
            };
            (name, period, Some(*rate_bps), Some(*base_minor), None, None)
        }
        EntryKind::Clawback {
            of_entry,
            refund_id,
        } => (
            "clawback",
            None,
            None,
            None,
            Some(*of_entry),
            Some(refund_id.clone()),
        ),
    };
    EntryView {
        entry_id: entry.entry_id,
        kind: kind.to_owned(),
        billing_period,
        rate_bps,
        base_minor,
        amount_minor: entry.amount_minor,
        reversed_minor: entry.reversed_minor,
        status: entry.status(now).as_str().to_owned(),
        user_id: entry.user_id.clone(),
        payment_id: entry.payment_id.clone(),
        of_entry,
        refund_id,
        created_at_ms: entry.created_at_ms,
        payable_at_ms: entry.payable_at_ms,
        payout_id: entry.payout_id.clone(),
        paid_at_ms: entry.paid_at_ms,
    }
}

/// A page of an affiliate's ledger.
#[derive(Debug, Serialize, Deserialize)]
pub struct Commissions {
    /// The affiliate.
    pub affiliate_id: String,
    /// The programme's currency.
    pub currency: Currency,
    /// Oldest first.
    pub items: Vec<EntryView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}

async fn commissions(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(affiliate_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    reader.may_read(&affiliate_id)?;
    let Query(query) = query?;
    let csv = wants_csv(&query, &headers)?;
    let limit = page_limit(&query, csv)?;
    let status = match query.status.as_deref() {
        None => None,
        Some("pending") => Some(EntryStatus::Pending),
        Some("payable") => Some(EntryStatus::Payable),
        Some("paid") => Some(EntryStatus::Paid),
        Some("reversed") => Some(EntryStatus::Reversed),
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "status must be pending, payable, paid or reversed, not {other:?}"
            )));
        }
    };
    if let Some(kind) = query.kind.as_deref()
        && !["subscription", "first_trade_bonus", "clawback"].contains(&kind)
    {
        return Err(ApiError::Unprocessable(format!(
            "kind must be subscription, first_trade_bonus or clawback, not {kind:?}"
        )));
    }
    let from = date_bound("from", query.from.as_deref())?;
    let to = date_bound("to", query.to.as_deref())?;
    let after = query.after.unwrap_or(0);
    let now = state.affiliates.now_ms();
    let programme = state.affiliates.ledger.read();
    if programme.affiliate(&affiliate_id).is_none() {
        return Err(ApiError::NotFound(format!("no affiliate {affiliate_id}")));
    }
    let currency = programme.config().currency;
    let mut matching = programme
        .entries_of(&affiliate_id)
        .filter(|e| e.entry_id > after)
        .filter(|e| status.is_none_or(|s| e.status(now) == s))
        .filter(|e| from.is_none_or(|d| day_of(e.created_at_ms) >= d))
        .filter(|e| to.is_none_or(|d| day_of(e.created_at_ms) <= d))
        .map(|e| entry_view(e, now))
        .filter(|v| query.kind.as_deref().is_none_or(|k| v.kind == k));
    let items: Vec<EntryView> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    if csv {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let rows = items
            .into_iter()
            .map(|v| {
                vec![
                    v.entry_id.to_string(),
                    format_instant(v.created_at_ms),
                    v.kind,
                    opt(v.billing_period.map(|p| p.to_string())),
                    v.user_id,
                    v.payment_id,
                    opt(v.rate_bps.map(|r| r.to_string())),
                    opt(v.base_minor.map(|b| b.to_string())),
                    v.amount_minor.to_string(),
                    format_major(v.amount_minor),
                    v.reversed_minor.to_string(),
                    v.status,
                    format_instant(v.payable_at_ms),
                    opt(v.payout_id),
                    opt(v.paid_at_ms.map(format_instant)),
                    opt(v.of_entry.map(|e| e.to_string())),
                    opt(v.refund_id),
                    currency.to_string(),
                ]
            })
            .collect();
        return Ok(csv_response(
            "commissions.csv",
            "entry_id,created_at,kind,billing_period,user_id,payment_id,rate_bps,base_minor,amount_minor,amount,reversed_minor,status,payable_at,payout_id,paid_at,of_entry,refund_id,currency",
            rows,
        ));
    }
    let next_after = more.then(|| items.last().map(|v| v.entry_id)).flatten();
    Ok(Json(Commissions {
        affiliate_id: affiliate_id.clone(),
        currency,
        items,
        next_after,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    granularity: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// One period of an affiliate's stats. Earnings are of the commissions
/// earned in the period, by where they stand now.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeriodView {
    /// `YYYY-MM` or `YYYY-MM-DD`; `total` for the whole range.
    pub period: String,
    /// Referral links followed.
    pub clicks: u64,
    /// Signups attributed.
    pub signups: u64,
    /// Referred users' first payments.
    pub conversions: u64,
    /// Conversions per signup, in basis points (2500 = 25%).
    pub conversion_rate_bps: u32,
    /// Commissions earned.
    pub earned_minor: i64,
    /// Still in the holding period.
    pub pending_minor: i64,
    /// Due at the next payout, net of clawbacks.
    pub payable_minor: i64,
    /// Paid out.
    pub paid_minor: i64,
    /// Taken back by refunds.
    pub reversed_minor: i64,
}

/// An affiliate's stats.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsView {
    /// The affiliate.
    pub affiliate_id: String,
    /// The programme's currency.
    pub currency: Currency,
    /// `day` or `month`.
    pub granularity: String,
    /// First day of the range.
    pub from: String,
    /// Last day of the range.
    pub to: String,
    /// The whole range.
    pub totals: PeriodView,
    /// Each period in the range, oldest first.
    pub periods: Vec<PeriodView>,
}

fn period_view(period: String, stats: &eagate_affiliates::programme::PeriodStats) -> PeriodView {
    PeriodView {
        period,
        clicks: stats.clicks,
        signups: stats.signups,
        conversions: stats.conversions,
        conversion_rate_bps: stats.conversion_rate_bps,
        earned_minor: stats.earnings.earned,
        pending_minor: stats.earnings.pending,
        payable_minor: stats.earnings.payable,
        paid_minor: stats.earnings.paid,
        reversed_minor: stats.earnings.reversed,
    }
}

async fn stats(
    State(state): State<AppState>,
    reader: AffiliateReader,
    Path(affiliate_id): Path<String>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    reader.may_read(&affiliate_id)?;
    let Query(query) = query?;
    let (granularity, max_days) = match query.granularity.as_deref() {
        None | Some("month") => (Granularity::Month, 3_660),
        Some("day") => (Granularity::Day, 366),
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "granularity must be day or month, not {other:?}"
            )));
        }
    };
    let now = state.affiliates.now_ms();
    let to = date_bound("to", query.to.as_deref())?.unwrap_or(day_of(now));
    let from = date_bound("from", query.from.as_deref())?.unwrap_or(match granularity {
        Granularity::Day => to - 29,
        Granularity::Month => calendar::month_start(to - 334),
    });
    if from > to {
        return Err(ApiError::Unprocessable(
            "from must not be after to".to_owned(),
        ));
    }
    if to - from >= max_days {
        return Err(ApiError::Unprocessable(format!(
            "at most {max_days} days per request at this granularity"
        )));
    }
    let programme = state.affiliates.ledger.read();
    let stats = programme
        .stats(&affiliate_id, granularity, from, to, now)
        .ok_or_else(|| ApiError::NotFound(format!("no affiliate {affiliate_id}")))?;
    Ok(Json(StatsView {
        affiliate_id,
        currency: stats.currency,
        granularity: match granularity {
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
        .to_owned(),
        from: calendar::format_date(from),
        to: calendar::format_date(to),
        totals: period_view("total".to_owned(), &stats.totals),
        periods: stats
            .periods
            .iter()
            .map(|(period, s)| period_view(period.clone(), s))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused_but_numbers_kept() {
        assert_eq!(csv_field("u1"), "u1");
        assert_eq!(csv_field("-900"), "-900");
        assert_eq!(csv_field("-9.00"), "-9.00");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@sum"), "'@sum");
        assert_eq!(csv_field("-cmd"), "'-cmd");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
