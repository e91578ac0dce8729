//! Attribution: a signup that came with a referral code is credited to the
//! code's owner, within the attribution window of its click, never to the
//! user themselves, and only once: the first referrer wins.
//!
//! Every time here is the signup's own `occurred_at`: a click's window is
//! measured from the click to the signup, not to when the platform reported
//! it. A code typed at signup without a click is attributed by the code
//! alone; the age limit on every event keeps a late report of it out.

use super::{CodeOwner, Decided, EventTimeError, Programme};
use crate::calendar::{day_of, format_instant};
use crate::code::ReferralCode;
use crate::config::{DAY_MS, EVENT_CLOCK_SKEW_MS};
use crate::facts::{Fact, Referrer};

/// Why a signup was not attributed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralError {
    /// The signup's time is not one the programme takes.
    #[error(transparent)]
    Time(#[from] EventTimeError),
    /// No affiliate or customer has this code.
    #[error("referral code {0} is not known")]
    UnknownCode(ReferralCode),
    /// The click id was never issued, or is past the time clicks are kept
    /// (the attribution window, plus how late a signup may be reported).
    #[error("click {0} is not known (or older than clicks are kept)")]
    UnknownClick(String),
    /// The click was on another code's link.
    #[error("click {click_id} was on referral code {clicked}, not {code}")]
    ClickForAnotherCode {
        /// The click.
        click_id: String,
        /// Its code.
        clicked: ReferralCode,
        /// The code in the signup.
        code: ReferralCode,
    },
    /// The signup happened before the click it names.
    #[error("the signup at {signup_at} is before its click {click_id} at {clicked_at}")]
    BeforeClick {
        /// The click.
        click_id: String,
        /// When the click was, RFC 3339.
        clicked_at: String,
        /// When the signup was, RFC 3339.
        signup_at: String,
    },
    /// The click is older than the attribution window.
    #[error(
        "referral code {code} expired for this signup: its link was followed {age_days} days ago and the attribution window is {window_days} days"
    )]
    Expired {
        /// The code.
        code: ReferralCode,
        /// Days since the click.
        age_days: u64,
        /// The window.
        window_days: u64,
    },
    /// A user cannot refer themselves (the evidence says how it was seen);
    /// the refusal is a fraud case ([`Programme::self_referral_case`]).
    #[error("user {user_id} cannot be referred by themselves: {evidence}")]
    SelfReferral {
        /// The user.
        user_id: String,
        /// Whose code it is.
        referrer: Referrer,
        /// What matched.
        evidence: String,
    },
    /// The user was already referred, by another code: the first one wins.
    #[error("user {user_id} was already referred with code {code}; the first referral stands")]
    AlreadyReferred {
        /// The user.
        user_id: String,
        /// The code that referred them.
        code: ReferralCode,
    },
    /// The user paid before the referral was reported.
    #[error(
        "user {0} has already paid; a referral must be reported at signup, before the user's first payment"
    )]
    PaidBeforeReferral(String),
    /// The referring customer reached today's limit.
    #[error(
        "customer {user_id} has already referred {limit} customers on {day} (UTC), the daily limit"
    )]
    DailyLimit {
        /// The referring customer.
        user_id: String,
        /// The signup's UTC day.
        day: String,
        /// The limit.
        limit: u32,
    },
}

/// A signup as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    /// The new platform user.
    pub user_id: String,
    /// The referral code they came with.
    pub code: ReferralCode,
    /// The click id from the landing page, if any.
    pub click_id: Option<String>,
    /// The signup's source address.
    pub source_address: String,
    /// SHA-256 (hex) of the normalised email address.
    pub email_sha256: String,
    /// Whether the email is verified already.
    pub email_verified: bool,
    /// When the user signed up, as the platform says (Unix ms).
    pub occurred_at_ms: u64,
}

impl Programme {
    /// Attributes a signup to the code's owner. The first valid referral of
    /// a user stands; the same referral again is a replay.
    pub fn refer(&self, signup: &Signup, now_ms: u64) -> Result<Decided, ReferralError> {
        let owner = self
            .codes
            .get(&signup.code)
            .ok_or(ReferralError::UnknownCode(signup.code))?;
        let customer = self.customers.get(&signup.user_id);
        if let Some(referral) = customer.and_then(|c| c.referral.as_ref()) {
            return if referral.code == signup.code
                && referral
                    .stated_at_ms
                    .is_none_or(|at| at == signup.occurred_at_ms)
            {
                Ok(Decided::replay())
            } else {
                Err(ReferralError::AlreadyReferred {
                    user_id: signup.user_id.clone(),
                    code: referral.code,
                })
            };
        }
        // After the replay: a retry answers as the first time, however late.
        self.check_occurred(signup.occurred_at_ms, now_ms)?;
        // Payments before the referral were decided without a referrer; a
        // referral now would earn a bonus and credits on unattributed money.
        if customer.is_some_and(|c| c.first_payment.is_some()) {
            return Err(ReferralError::PaidBeforeReferral(signup.user_id.clone()));
        }
        let (referrer, own) = match owner {
            CodeOwner::Affiliate(affiliate_id) => {
                let affiliate = &self.affiliates[affiliate_id];
                let own = if affiliate.user_id == signup.user_id {
                    Some("the code is their own".to_owned())
                } else if affiliate.email_sha256.as_deref() == Some(&signup.email_sha256) {
                    Some("the signup's email hash is the affiliate's".to_owned())
                } else if affiliate.source_address.as_deref() == Some(&signup.source_address) {
                    Some(format!(
                        "the signup came from {}, the address the affiliate enrolled from",
                        signup.source_address
                    ))
                } else if affiliate.addresses_seen.contains(&signup.source_address) {
                    Some(format!(
                        "the signup came from {}, an address the affiliate called the API from",
                        signup.source_address
                    ))
                } else {
                    None
                };
                let referrer = Referrer::Affiliate {
                    affiliate_id: affiliate_id.clone(),
                };
                (referrer, own)
            }
            CodeOwner::Customer(user_id) => {
                let own = (*user_id == signup.user_id).then(|| "the code is their own".to_owned());
                let referrer = Referrer::Customer {
                    user_id: user_id.clone(),
                };
                (referrer, own)
            }
        };
        if let Some(evidence) = own {
            return Err(ReferralError::SelfReferral {
                user_id: signup.user_id.clone(),
                referrer,
                evidence,
            });
        }
        if let Some(click_id) = &signup.click_id {
            let click = self
                .clicks
                .get(click_id)
                .ok_or_else(|| ReferralError::UnknownClick(click_id.clone()))?;
            if click.code != signup.code {
                return Err(ReferralError::ClickForAnotherCode {
                    click_id: click_id.clone(),
                    clicked: click.code,
                    code: signup.code,
                });
            }
            // The clocks of the platform and the gateway (which stamped the
            // click) may differ by the skew the programme accepts.
            if signup.occurred_at_ms.saturating_add(EVENT_CLOCK_SKEW_MS) < click.at_ms {
                return Err(ReferralError::BeforeClick {
                    click_id: click_id.clone(),
                    clicked_at: format_instant(click.at_ms),
                    signup_at: format_instant(signup.occurred_at_ms),
                });
            }
            let age = signup.occurred_at_ms.saturating_sub(click.at_ms);
            if age > self.config.attribution_window_ms {
                return Err(ReferralError::Expired {
                    code: signup.code,
                    age_days: age / DAY_MS,
                    window_days: self.config.attribution_window_ms / DAY_MS,
                });
            }
        }
        if let Referrer::Customer { user_id } = &referrer {
            let day = day_of(signup.occurred_at_ms);
            let that_day = self
                .referrals_by_day
                .get(&(user_id.clone(), day))
                .copied()
                .unwrap_or(0);
            if that_day >= self.config.daily_referral_limit {
                return Err(ReferralError::DailyLimit {
                    user_id: user_id.clone(),
                    day: crate::calendar::format_date(day),
                    limit: self.config.daily_referral_limit,
                });
            }
        }
        let held = self.shared_address_case(signup, &referrer, self.cases.len() as u64 + 1, now_ms);
        let mut facts = vec![Fact::Referred {
            user_id: signup.user_id.clone(),
            referrer,
            code: signup.code,
            click_id: signup.click_id.clone(),
            source_address: signup.source_address.clone(),
            email_sha256: signup.email_sha256.clone(),
            email_verified: signup.email_verified,
            occurred_at_ms: Some(signup.occurred_at_ms),
            at_ms: now_ms,
        }];
        facts.extend(held);
        Ok(Decided::new(facts))
    }
}
