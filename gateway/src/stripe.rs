//! The `stripe` payout provider: a transfer to an affiliate's connected
//! account (`POST /v1/transfers`), and the question a reconciliation asks
//! (`GET /v1/transfers?transfer_group=…`).
//!
//! Every answer is sorted into what it proves: the transfer was made, it was
//! refused and will not be made, or nothing is known (a timeout, a dropped
//! connection, a server error, a rate limit). Only the first two settle a
//! payout; the third leaves it to reconcile, never to a blind retry.
//!
//! The calls block (ureq); the payout runner makes them on tokio's blocking
//! pool.

use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroize;

/// The environment variable holding Stripe's secret key.
pub const SECRET_KEY_ENV: &str = "EAGATE_STRIPE_SECRET_KEY";

/// Stripe's secret key: never shown, never logged, wiped when dropped.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    /// The key in [`SECRET_KEY_ENV`], if set and not empty.
    pub fn from_env() -> Option<Self> {
        std::env::var(SECRET_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(Self)
    }

    /// A key given directly (tests).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(hidden)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A transfer to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217, any case (sent lower-case).
    pub currency: String,
    /// `acct_…`.
    pub destination: String,
    /// The payout id: idempotency key and transfer group both, so the
    /// transfer can be found again by it.
    pub payout_id: String,
}

/// A transfer as Stripe shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Transfer {
    /// `tr_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Lower-case ISO 4217.
    pub currency: String,
    /// `acct_…`.
    pub destination: String,
    /// The payout id it was made for.
    #[serde(default)]
    pub transfer_group: Option<String>,
}

/// What an answer proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferAnswer {
    /// The transfer exists.
    Made(Transfer),
    /// Stripe refused it: no money moved, none will.
    Refused {
        /// Stripe's error code (`balance_insufficient`, `account_invalid`,
        /// …), or the HTTP status when it gave none.
        code: String,
        /// Stripe's message.
        message: String,
    },
    /// No proof either way.
    Unknown {
        /// What happened.
        detail: String,
    },
}

/// What a reconciliation learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The transfer for this payout exists.
    Found(Transfer),
    /// Stripe has no transfer for this payout.
    NotFound,
    /// The question itself got no answer.
    Unknown {
        /// What happened.
        detail: String,
    },
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct StripeError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TransferList {
    data: Vec<Transfer>,
}

/// A client of Stripe's transfer API.
#[derive(Clone)]
pub struct StripeClient {
    agent: ureq::Agent,
    base: String,
    secret: SecretKey,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client of the API at `base` (`https://api.stripe.com`, or a test
    /// server), waiting at most `timeout` for each answer.
    pub fn new(base: &str, secret: SecretKey, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            secret,
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.secret.0)
    }

    /// Asks for the transfer, with the payout id as its idempotency key:
    /// asking again with the same key can only ever return the same
    /// transfer.
    pub fn transfer(&self, request: &TransferRequest) -> TransferAnswer {
        let amount = request.amount_minor.to_string();
        let currency = request.currency.to_ascii_lowercase();
        let sent = self
            .agent
            .post(&format!("{}/v1/transfers", self.base))
            .header("Authorization", &self.auth())
            .header("Idempotency-Key", &request.payout_id)
            .send_form([
                ("amount", amount.as_str()),
                ("currency", currency.as_str()),
                ("destination", request.destination.as_str()),
                ("transfer_group", request.payout_id.as_str()),
                ("metadata[payout_id]", request.payout_id.as_str()),
            ]);
        let (status, body) = match read(sent) {
            Ok(answer) => answer,
            Err(detail) => return TransferAnswer::Unknown { detail },
        };
        match status {
            200..=299 => match serde_json::from_str::<Transfer>(&body) {
                Ok(transfer) => TransferAnswer::Made(transfer),
                Err(e) => TransferAnswer::Unknown {
                    detail: format!(
                        "Stripe answered {status} with a body that is not a transfer: {e}"
                    ),
                },
            },
            // Stripe's own words for "not made, and will not be": a bad
            // request, a bad key, a refused permission, an unknown account.
            400..=404 => {
                let error = serde_json::from_str::<ErrorBody>(&body)
                    .ok()
                    .map(|b| b.error);
                let code = error
                    .as_ref()
                    .and_then(|e| e.code.clone().or_else(|| e.kind.clone()))
                    .unwrap_or_else(|| format!("http_{status}"));
                let message = error
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| format!("Stripe answered {status}"));
                TransferAnswer::Refused { code, message }
            }
            // 409 (the same key in flight), 429 (rate limited), 5xx and
            // anything else: whether the money moved is not known.
            _ => TransferAnswer::Unknown {
                detail: format!("Stripe answered {status}: {}", cut(&body)),
            },
        }
    }

    /// Looks for the transfer made for `payout_id` (its transfer group).
    pub fn find(&self, payout_id: &str) -> Lookup {
        let sent = self
            .agent
            .get(&format!("{}/v1/transfers", self.base))
            .query("transfer_group", payout_id)
            .query("limit", "10")
            .header("Authorization", &self.auth())
            .call();
        let (status, body) = match read(sent) {
            Ok(answer) => answer,
            Err(detail) => return Lookup::Unknown { detail },
        };
        if !(200..=299).contains(&status) {
            return Lookup::Unknown {
                detail: format!("Stripe answered {status} to the lookup: {}", cut(&body)),
            };
        }
        match serde_json::from_str::<TransferList>(&body) {
            Ok(list) => list
                .data
                .into_iter()
                .find(|t| t.transfer_group.as_deref() == Some(payout_id))
                .map_or(Lookup::NotFound, Lookup::Found),
            Err(e) => Lookup::Unknown {
                detail: format!("Stripe's transfer list could not be read: {e}"),
            },
        }
    }
}

fn read(
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), String> {
    let response = sent.map_err(|e| format!("no answer from Stripe: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .read_to_string()
        .map_err(|e| format!("Stripe's answer ({status}) broke off: {e}"))?;
    Ok((status, body))
}

/// The start of a body, for a message.
fn cut(body: &str) -> &str {
    let mut end = body.len().min(200);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}
