//! Joining the programme and sharing its links: an affiliate enrols with a
//! referral code and an API token (only its hash is kept), replaces that
//! token, and visitors follow referral links (clicks). Also the reads of
//! who owns a code and of affiliates.

use super::{Affiliate, CodeOwner, Decided, Programme};
use crate::code::ReferralCode;
use crate::facts::Fact;

/// The most API addresses kept per affiliate for the self-referral check:
/// past it new ones are not recorded (the enrolment address and the first
/// ones still count).
pub const MAX_ADDRESSES_SEEN: usize = 256;

/// Why a user could not become an affiliate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// The user already is one.
    #[error("user {user_id} is already affiliate {affiliate_id}")]
    AlreadyAffiliate {
        /// The user.
        user_id: String,
        /// Their affiliate id.
        affiliate_id: String,
    },
    /// The generated code or id is taken; draw another and retry.
    #[error("the generated referral code or id is taken")]
    Collision,
}

/// What the platform knows of a new affiliate that a self-referral would
/// share: both optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffiliateIdentity {
    /// SHA-256 (hex) of their normalised email.
    pub email_sha256: Option<String>,
    /// The address they enrolled from.
    pub source_address: Option<String>,
}

impl Programme {
    /// `user_id` becomes affiliate `affiliate_id` with `code`; only the
    /// SHA-256 of their API token is kept.
    pub fn enrol_affiliate(
        &self,
        user_id: &str,
        affiliate_id: &str,
        code: ReferralCode,
        token_sha256: &str,
        identity: &AffiliateIdentity,
        now_ms: u64,
    ) -> Result<Decided, EnrolError> {
        if let Some(existing) = self.affiliate_by_user.get(user_id) {
            return Err(EnrolError::AlreadyAffiliate {
                user_id: user_id.to_owned(),
                affiliate_id: existing.clone(),
            });
        }
        if self.codes.contains_key(&code) || self.affiliates.contains_key(affiliate_id) {
            return Err(EnrolError::Collision);
        }
        Ok(Decided::new(vec![Fact::AffiliateEnrolled {
            affiliate_id: affiliate_id.to_owned(),
            user_id: user_id.to_owned(),
            code,
            token_sha256: token_sha256.to_owned(),
            email_sha256: identity.email_sha256.clone(),
            source_address: identity.source_address.clone(),
            at_ms: now_ms,
        }]))
    }

    /// Replaces an affiliate's API token (the old one stops working).
    pub fn replace_token(
        &self,
        affiliate_id: &str,
        token_sha256: &str,
        now_ms: u64,
    ) -> Option<Decided> {
        self.affiliates.get(affiliate_id)?;
        Some(Decided::new(vec![Fact::AffiliateTokenReplaced {
            affiliate_id: affiliate_id.to_owned(),
            token_sha256: token_sha256.to_owned(),
            at_ms: now_ms,
        }]))
    }

    /// A referral link was followed; `None` if no one has the code. A
    /// repeat from the same address within the dedupe interval is a replay
    /// (counted once; [`Programme::recent_click`] has the id to hand out).
    pub fn click(
        &self,
        code: ReferralCode,
        click_id: &str,
        source_address: &str,
        user_agent: &str,
        now_ms: u64,
    ) -> Option<Decided> {
        self.codes.get(&code)?;
        if self.recent_click(source_address, code, now_ms).is_some() {
            return Some(Decided::replay());
        }
        Some(Decided::new(vec![Fact::Clicked {
            click_id: click_id.to_owned(),
            code,
            source_address: source_address.to_owned(),
            user_agent: user_agent.to_owned(),
            at_ms: now_ms,
        }]))
    }

    /// The id of the click counted for `source_address` on `code` within
    /// the dedupe interval before `now_ms`, if any.
    pub fn recent_click(
        &self,
        source_address: &str,
        code: ReferralCode,
        now_ms: u64,
    ) -> Option<&str> {
        let (click_id, at) = self.recent_clicks.get(&(source_address.to_owned(), code))?;
        (now_ms.saturating_sub(*at) < self.config.click_dedupe_ms).then_some(click_id.as_str())
    }

    /// How many clicks are kept for attribution.
    pub fn clicks_kept(&self) -> usize {
        self.clicks.len()
    }

    /// Who owns `code`. A hash map lookup: constant time however many codes.
    pub fn code_owner(&self, code: &ReferralCode) -> Option<&CodeOwner> {
        self.codes.get(code)
    }

    /// An affiliate.
    pub fn affiliate(&self, affiliate_id: &str) -> Option<&Affiliate> {
        self.affiliates.get(affiliate_id)
    }

    /// The affiliate whose API token has this SHA-256 (hex).
    pub fn affiliate_of_token(&self, token_sha256: &str) -> Option<&Affiliate> {
        self.affiliates
            .get(self.affiliate_by_token.get(token_sha256)?)
    }

    /// Every affiliate id, in the order they enrolled.
    pub fn affiliate_ids(&self) -> impl Iterator<Item = &str> {
        self.affiliate_order.iter().map(String::as_str)
    }

    /// An affiliate's own token called the API from `address`: recorded
    /// once per address (up to [`MAX_ADDRESSES_SEEN`]), so a signup from it
    /// is refused as a self-referral. Known, unknown affiliate or full:
    /// nothing to record.
    pub fn affiliate_address_seen(
        &self,
        affiliate_id: &str,
        address: &str,
        now_ms: u64,
    ) -> Decided {
        let Some(affiliate) = self.affiliates.get(affiliate_id) else {
            return Decided::replay();
        };
        if affiliate.addresses_seen.contains(address)
            || affiliate.source_address.as_deref() == Some(address)
            || affiliate.addresses_seen.len() >= MAX_ADDRESSES_SEEN
        {
            return Decided::replay();
        }
        Decided::new(vec![Fact::AffiliateAddressSeen {
            affiliate_id: affiliate_id.to_owned(),
            source_address: address.to_owned(),
            at_ms: now_ms,
        }])
    }

    /// An admin issues a console sign-in link for `affiliate_id`, usable
    /// until `expires_at_ms`: the record the audit trail keeps of it.
    /// Nothing for an affiliate the programme does not know.
    pub fn sign_in_link_issued(
        &self,
        affiliate_id: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Decided {
        if !self.affiliates.contains_key(affiliate_id) {
            return Decided::replay();
        }
        Decided::new(vec![Fact::SignInLinkIssued {
            affiliate_id: affiliate_id.to_owned(),
            expires_at_ms,
            at_ms: now_ms,
        }])
    }
}
