//! Customer referral credits: a customer gets a referral code of their
//! own, and when the customer they referred has verified their email and
//! spent the threshold, both are credited once, in an append-only ledger.
//!
//! A credit is pending through the holding period (from the referred
//! customer's latest payment): a refund that takes their spend back under
//! the threshold meanwhile reverses both credits, and only available credit
//! can be spent. Grants, reversals and spends are lines of the same ledger;
//! a balance never goes below zero.

use serde::{Deserialize, Serialize};

use super::{Decided, EventTimeError, Programme};
use crate::code::ReferralCode;
use crate::facts::{CreditReason, Fact, Referrer};
use crate::money::{Currency, MAX_AMOUNT, Minor, TotalOutOfRange, total};

/// Why a customer code could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerCodeError {
    /// The random code belongs to someone else; draw another.
    #[error("the generated referral code is taken")]
    Collision,
}

/// Why credit could not be spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditSpendError {
    /// Zero, negative or absurdly large.
    #[error("amount_minor must be between 1 and {MAX_AMOUNT} minor units, not {0}")]
    InvalidAmount(Minor),
    /// Not the programme's currency.
    #[error("credits are in {expected}, not {given}")]
    WrongCurrency {
        /// The programme's currency.
        expected: Currency,
        /// The spend's.
        given: Currency,
    },
    /// More than the available balance (pending credit cannot be spent).
    #[error(
        "customer {user_id} has {available} minor units of credit available ({pending} still pending), not {amount}"
    )]
    Insufficient {
        /// The customer.
        user_id: String,
        /// What may be spent now.
        available: Minor,
        /// What is still in the holding period.
        pending: Minor,
        /// The spend asked for.
        amount: Minor,
    },
    /// The id was used for a different spend.
    #[error("credit spend {0} was already recorded with different details")]
    IdReused(String),
    /// A running total would pass the ledger's limit.
    #[error(transparent)]
    TotalOutOfRange(#[from] TotalOutOfRange),
}

/// What a line of a customer's credit ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Granted: they referred a customer who reached the threshold.
    ReferredACustomer,
    /// Granted: they were referred and reached the threshold.
    WasReferred,
    /// A pending grant taken back by a refund.
    Reversal,
    /// Credit spent on the platform.
    Spend,
}

impl From<CreditReason> for CreditKind {
    fn from(reason: CreditReason) -> Self {
        match reason {
            CreditReason::ReferredACustomer => Self::ReferredACustomer,
            CreditReason::WasReferred => Self::WasReferred,
        }
    }
}

/// Where a grant stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditStatus {
    /// In the holding period: counted, not yet spendable.
    Pending,
    /// Spendable.
    Available,
    /// Taken back by a refund.
    Reversed,
}

/// A line of a customer's credit ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditEntry {
    /// 1, 2, 3, … across the programme.
    pub credit_id: u64,
    /// Whose credit.
    pub user_id: String,
    /// Signed: grants positive, reversals and spends negative.
    pub amount_minor: Minor,
    /// What the line is.
    pub kind: CreditKind,
    /// Grants and reversals: the referred customer whose spend earned the
    /// grant; spends: empty.
    pub referred_user_id: String,
    /// Reversals: the refund; spends: the platform's spend id.
    pub reference: Option<String>,
    /// Reversals: the grant they take back.
    pub of_credit: Option<u64>,
    /// Grants: when they stop being pending.
    pub available_at_ms: u64,
    /// Grants: taken back by a refund.
    pub reversed: bool,
    /// When the line was written.
    pub at_ms: u64,
}

impl CreditEntry {
    /// Whether the line is a grant.
    pub fn is_grant(&self) -> bool {
        matches!(
            self.kind,
            CreditKind::ReferredACustomer | CreditKind::WasReferred
        )
    }

    /// A grant's standing at `now`; `None` for other lines.
    pub fn status(&self, now_ms: u64) -> Option<CreditStatus> {
        if !self.is_grant() {
            None
        } else if self.reversed {
            Some(CreditStatus::Reversed)
        } else if now_ms < self.available_at_ms {
            Some(CreditStatus::Pending)
        } else {
            Some(CreditStatus::Available)
        }
    }
}

/// A customer's credit at a given moment. The ledger's lines add up to
/// `pending + available`: a reversed grant and its reversal cancel out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditBalance {
    /// Granted and still in the holding period.
    pub pending: Minor,
    /// Spendable: available grants less spends. Never below zero.
    pub available: Minor,
}

/// What the credit gates look at for a customer.
pub(super) struct CreditGate {
    /// Their spend net of refunds.
    pub(super) spent: Minor,
    /// Whether their email is verified.
    pub(super) verified: bool,
    /// Their latest payment.
    pub(super) last_paid_at_ms: Option<u64>,
    /// The fraud case being cleared in this decision, whose hold no longer
    /// counts.
    pub(super) released_case: Option<u64>,
}

/// A spend already recorded, to recognise its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spend {
    pub(super) user_id: String,
    pub(super) amount: Minor,
}

impl Programme {
    /// Gives a customer a referral code for referral credits; a customer
    /// keeps the code they have (a replay).
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
        let last_paid = customer.and_then(|c| c.last_paid_at_ms);
        let gate = CreditGate {
            spent,
            verified: true,
            last_paid_at_ms: last_paid,
            released_case: None,
        };
        self.credits_due(user_id, gate, now_ms, &mut facts);
        Ok(Decided::new(facts))
    }

    /// The grants due when a customer referred by a customer has verified
    /// their email and spent the threshold: pending for the holding period
    /// from the grant (or from their latest payment, if that is later).
    pub(super) fn credits_due(
        &self,
        user_id: &str,
        gate: CreditGate,
        now_ms: u64,
        facts: &mut Vec<Fact>,
    ) {
        let CreditGate {
            spent,
            verified,
            last_paid_at_ms,
            released_case,
        } = gate;
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
        // Nothing is granted while a fraud case holds the customer (the
        // decision that clears them, `released_case`, grants what is due),
        // nor ever after one confirmed fraud.
        if self
            .customers
            .get(user_id)
            .is_some_and(|c| c.blocked || c.held_by.is_some_and(|case| Some(case) != released_case))
        {
            return;
        }
        // Held from the grant, whatever triggered it: a verification long
        // after the payment must not make credit spendable at once, before a
        // refund could take it back.
        let available_at_ms = last_paid_at_ms
            .unwrap_or(now_ms)
            .max(now_ms)
            .saturating_add(self.config.holding_period_ms);
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
                available_at_ms: Some(available_at_ms),
                at_ms: now_ms,
            });
        }
    }

    /// The reversals due when a refund takes `referred_user_id`'s spend to
    /// `spent_after`: every grant their spend earned that is still pending,
    /// if they are now under the threshold. Grants already available stay.
    pub(super) fn credit_reversals_due(
        &self,
        referred_user_id: &str,
        spent_after: Minor,
        refund_id: &str,
        now_ms: u64,
        facts: &mut Vec<Fact>,
    ) {
        if spent_after >= self.config.credit_threshold {
            return;
        }
        let now_ms = self.not_before_latest(now_ms);
        let mut next_id = self.credits.len() as u64 + 1;
        for &grant_id in self.grants_for.get(referred_user_id).into_iter().flatten() {
            let grant = self.credit(grant_id);
            if grant.status(now_ms) == Some(CreditStatus::Pending) {
                facts.push(Fact::CreditReversed {
                    credit_id: next_id,
                    of_credit: grant_id,
                    user_id: grant.user_id.clone(),
                    refund_id: refund_id.to_owned(),
                    amount_minor: grant.amount_minor,
                    at_ms: now_ms,
                });
                next_id += 1;
            }
        }
    }

    /// Spends `amount_minor` of a customer's available credit, identified by
    /// the platform's `spend_id` (the same spend again is a replay).
    pub fn spend_credit(
        &self,
        user_id: &str,
        spend_id: &str,
        amount_minor: Minor,
        currency: Currency,
        now_ms: u64,
    ) -> Result<Decided, CreditSpendError> {
        if !(1..=MAX_AMOUNT).contains(&amount_minor) {
            return Err(CreditSpendError::InvalidAmount(amount_minor));
        }
        if currency != self.config.currency {
            return Err(CreditSpendError::WrongCurrency {
                expected: self.config.currency,
                given: currency,
            });
        }
        if let Some(existing) = self.spends.get(spend_id) {
            return if existing.user_id == user_id && existing.amount == amount_minor {
                Ok(Decided::replay())
            } else {
                Err(CreditSpendError::IdReused(spend_id.to_owned()))
            };
        }
        let balance = self.credit_balance(user_id, self.not_before_latest(now_ms))?;
        if amount_minor > balance.available {
            return Err(CreditSpendError::Insufficient {
                user_id: user_id.to_owned(),
                available: balance.available,
                pending: balance.pending,
                amount: amount_minor,
            });
        }
        Ok(Decided::new(vec![Fact::CreditSpent {
            credit_id: self.credits.len() as u64 + 1,
            spend_id: spend_id.to_owned(),
            user_id: user_id.to_owned(),
            amount_minor,
            at_ms: now_ms,
        }]))
    }

    /// A customer's credit at `now`.
    pub fn credit_balance(
        &self,
        user_id: &str,
        now_ms: u64,
    ) -> Result<CreditBalance, TotalOutOfRange> {
        let mut balance = CreditBalance::default();
        for entry in self.credits_of(user_id) {
            match (entry.kind, entry.status(now_ms)) {
                (_, Some(CreditStatus::Pending)) => {
                    balance.pending = total(balance.pending, entry.amount_minor)?;
                }
                (_, Some(CreditStatus::Available)) | (CreditKind::Spend, None) => {
                    balance.available = total(balance.available, entry.amount_minor)?;
                }
                // A reversed grant and its reversal cancel out.
                (_, Some(CreditStatus::Reversed)) | (_, None) => {}
            }
        }
        Ok(balance)
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
            .map(|&id| self.credit(id))
    }

    /// Every credit ledger line, in order.
    pub fn all_credits(&self) -> &[CreditEntry] {
        &self.credits
    }

    pub(super) fn credit(&self, credit_id: u64) -> &CreditEntry {
        &self.credits[(credit_id - 1) as usize]
    }
}
