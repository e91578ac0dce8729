//! Customer referral credits: a customer gets a referral code of their
//! own, and when the customer they referred has verified their email and
//! spent the threshold, both are credited once, in an append-only ledger.

use super::{Decided, EventTimeError, Programme};
use crate::code::ReferralCode;
use crate::facts::{CreditReason, Fact, Referrer};
use crate::money::Minor;

/// Why a customer could not get a referral code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerCodeError {
    /// The generated code is taken; draw another and retry.
    #[error("the generated referral code is taken")]
    Collision,
}

/// A line of a customer's credit ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditEntry {
    /// 1, 2, 3, … across the programme.
    pub credit_id: u64,
    /// The customer credited.
    pub user_id: String,
    /// How much.
    pub amount_minor: Minor,
    /// Why.
    pub reason: CreditReason,
    /// The referred customer whose spend earned it.
    pub referred_user_id: String,
    /// When.
    pub at_ms: u64,
}

impl Programme {
    /// Gives a customer a referral code for credits; a customer who has one
    /// keeps it (replayed).
    pub fn issue_customer_code(
        &self,
        user_id: &str,
        code: ReferralCode,
        now_ms: u64,
    ) -> Result<Decided, CustomerCodeError> {
        if self.customer_codes.contains_key(user_id) {
            return Ok(Decided::replay());
        }
        if self.codes.contains_key(&code) {
            return Err(CustomerCodeError::Collision);
        }
        Ok(Decided::new(vec![Fact::CustomerCodeIssued {
            user_id: user_id.to_owned(),
            code,
            at_ms: now_ms,
        }]))
    }

    /// A user verified their email: may release referral credits.
    pub fn verify_email(
        &self,
        user_id: &str,
        occurred_at_ms: u64,
        now_ms: u64,
    ) -> Result<Decided, EventTimeError> {
        let customer = self.customers.get(user_id);
        if customer.is_some_and(|c| c.email_verified) {
            return Ok(Decided::replay());
        }
        self.check_occurred(occurred_at_ms, now_ms)?;
        let mut facts = vec![Fact::EmailVerified {
            user_id: user_id.to_owned(),
            occurred_at_ms: Some(occurred_at_ms),
            at_ms: now_ms,
        }];
        let spent = customer.map_or(0, |c| c.spent);
        self.credits_due(user_id, spent, true, now_ms, &mut facts);
        Ok(Decided::new(facts))
    }

    /// Credits for a customer-referred user whose net spend is `spent` and
    /// whose email is (or is about to be) `verified`, if both gates are
    /// open and no credit was granted for them yet.
    pub(super) fn credits_due(
        &self,
        user_id: &str,
        spent: Minor,
        verified: bool,
        now_ms: u64,
        facts: &mut Vec<Fact>,
    ) {
        let Some(referral) = self
            .customers
            .get(user_id)
            .and_then(|c| c.referral.as_ref())
        else {
            return;
        };
        let Referrer::Customer {
            user_id: referrer_id,
        } = &referral.referrer
        else {
            return;
        };
        if referral.credited || !verified || spent < self.config.credit_threshold {
            return;
        }
        let first_id = self.credits.len() as u64 + 1;
        for (credit_id, (to, amount, reason)) in (first_id..).zip([
            (
                referrer_id.as_str(),
                self.config.referrer_credit,
                CreditReason::ReferredACustomer,
            ),
            (
                user_id,
                self.config.referred_credit,
                CreditReason::WasReferred,
            ),
        ]) {
            facts.push(Fact::CreditGranted {
                credit_id,
                user_id: to.to_owned(),
                amount_minor: amount,
                reason,
                referred_user_id: user_id.to_owned(),
                at_ms: now_ms,
            });
        }
    }

    /// A customer's referral code, if they have one.
    pub fn customer_code(&self, user_id: &str) -> Option<ReferralCode> {
        self.customer_codes.get(user_id).copied()
    }

    /// A customer's credit ledger, oldest first.
    pub fn credits_of(&self, user_id: &str) -> impl Iterator<Item = &CreditEntry> {
        self.credits_by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .map(|&id| &self.credits[(id - 1) as usize])
    }

    /// Every credit ever granted.
    pub fn all_credits(&self) -> &[CreditEntry] {
        &self.credits
    }
}
