//! Payouts: an affiliate is paid everything payable at once, clawbacks
//! netted, and a payout id is recorded so that a retry pays nothing twice.
//!
//! A batch ties each payout's entries to it when it opens (`pending`), so
//! nothing else can pay them; the runner records `submitted` with the
//! idempotency key *before* it asks the provider, then `paid` or `failed`
//! from the answer, or `needs_reconciliation` when there was no clear
//! answer. Failed payouts give their entries back to payable.

use super::{Batch, Decided, EntryStatus, Programme};
use crate::facts::{Fact, PayoutProvider, Referrer};
use crate::money::{Minor, TotalOutOfRange, total};

/// Why a payout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutError {
    /// The sum would pass the ledger's limit.
    #[error(transparent)]
    TotalOutOfRange(#[from] TotalOutOfRange),
    /// No such affiliate.
    #[error("no affiliate {0}")]
    UnknownAffiliate(String),
    /// Nothing, or less than nothing, is payable.
    #[error(
        "nothing to pay: the payable balance is {payable} minor units ({pending} still pending)"
    )]
    NothingPayable {
        /// The payable balance (may be negative after clawbacks).
        payable: Minor,
        /// What is still in the holding period.
        pending: Minor,
    },
    /// The payable balance is positive but below the programme's minimum.
    #[error(
        "the payable balance of {payable} minor units is below the payout minimum of {minimum}; it is paid once it reaches it"
    )]
    BelowMinimum {
        /// The payable balance.
        payable: Minor,
        /// The minimum payout.
        minimum: Minor,
    },
    /// The id was used for another affiliate's payout.
    #[error("payout {0} was already made for another affiliate")]
    IdReused(String),
    /// Ids starting `pb_` are the batches'.
    #[error("payout ids starting pb_ are kept for payout batches; choose another id")]
    ReservedId,
}

/// Where a payout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayoutState {
    /// In a batch, its entries tied to it; not yet sent to the provider
    /// (manual: waiting for an admin to pay it and confirm).
    Pending,
    /// Sent to the provider with its idempotency key, answer not recorded.
    Submitted,
    /// The provider's answer was unknown: ask it by idempotency key.
    NeedsReconciliation,
    /// The money arrived.
    Paid,
    /// It did not happen; its entries are payable again.
    Failed,
}

impl PayoutState {
    /// The snake_case name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Submitted => "submitted",
            Self::NeedsReconciliation => "needs_reconciliation",
            Self::Paid => "paid",
            Self::Failed => "failed",
        }
    }

    /// Paid or failed: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Paid | Self::Failed)
    }
}

/// A payout as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutRecord<'a> {
    /// 1, 2, 3, … in the order payouts were made.
    pub seq: u64,
    /// Its id.
    pub payout_id: &'a str,
    /// Who is paid.
    pub affiliate_id: &'a str,
    /// The net amount.
    pub amount_minor: Minor,
    /// How many ledger lines it settles.
    pub entries: usize,
    /// When it was made (a batch's: when the batch opened).
    pub at_ms: u64,
    /// The batch, if it was made in one.
    pub batch_id: Option<&'a str>,
    /// Where it stands.
    pub state: PayoutState,
    /// The account paid into, if the provider has one.
    pub destination: Option<&'a str>,
    /// The idempotency key sent to the provider, once submitted.
    pub idempotency_key: Option<&'a str>,
    /// The provider's reference, once paid.
    pub reference: Option<&'a str>,
    /// Why it failed, or what left it to reconcile.
    pub detail: Option<&'a str>,
    /// When it was paid or failed.
    pub settled_at_ms: Option<u64>,
}

/// A payout batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord<'a> {
    /// `pb_<n>`.
    pub batch_id: &'a str,
    /// Who pays it out.
    pub provider: PayoutProvider,
    /// The UTC day of a daily batch; none for one run by hand.
    pub scheduled_day: Option<i64>,
    /// When it opened.
    pub at_ms: u64,
    /// Its payouts, in the order they were made.
    pub payout_ids: &'a [String],
}

/// What settles a payout: the provider's answer, or an admin's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutOutcome {
    /// The money moved; the provider's reference.
    Paid {
        /// E.g. a Stripe transfer id, a bank reference.
        reference: String,
    },
    /// It did not, and will not: the entries are payable again.
    Failed {
        /// Why.
        reason: String,
    },
    /// No clear answer: reconcile by asking the provider.
    Unknown {
        /// What happened.
        detail: String,
    },
}

/// Why a payout's state could not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// No such payout.
    #[error("no payout {0}")]
    UnknownPayout(String),
    /// It is already paid or failed, differently.
    #[error("payout {payout_id} is already {state}; it cannot become {wanted}")]
    AlreadySettled {
        /// The payout.
        payout_id: String,
        /// Where it stands.
        state: &'static str,
        /// What was asked.
        wanted: &'static str,
    },
    /// An unknown answer for a payout never sent.
    #[error("payout {0} was never submitted: there is nothing to reconcile")]
    NotSubmitted(String),
    /// A Stripe payout still in the runner's hands.
    #[error(
        "payout {0} is with the stripe provider and not in needs_reconciliation: the payout run settles it from Stripe's answer"
    )]
    InProvidersHands(String),
    /// A Stripe payout that may have been sent cannot be failed by hand:
    /// Stripe may still make (or have made) the transfer.
    #[error(
        "payout {0} was sent to Stripe, which may have made the transfer: only the run's reconciliation can fail it; confirm it paid with Stripe's transfer id if the dashboard shows one"
    )]
    MaybeSent(String),
}

/// Why an affiliate's payout account was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutAccountError {
    /// No such affiliate.
    #[error("no affiliate {0}")]
    UnknownAffiliate(String),
    /// Not a Stripe connected account id.
    #[error(
        "stripe_account must be a Stripe connected account id: acct_ and 1 to 64 letters or digits"
    )]
    InvalidAccount,
}

impl Programme {
    /// Every payout, oldest first.
    pub fn payouts(&self) -> impl Iterator<Item = PayoutRecord<'_>> {
        (1u64..)
            .zip(&self.payout_order)
            .map(|(seq, payout_id)| self.payout_record(seq, payout_id))
    }

    fn payout_record<'a>(&'a self, seq: u64, payout_id: &'a str) -> PayoutRecord<'a> {
        let payout = &self.payouts[payout_id];
        PayoutRecord {
            seq,
            payout_id,
            affiliate_id: &payout.affiliate_id,
            amount_minor: payout.amount,
            entries: payout.entries.len(),
            at_ms: payout.at_ms,
            batch_id: payout.batch_id.as_deref(),
            state: payout.state,
            destination: payout.destination.as_deref(),
            idempotency_key: payout.idempotency_key.as_deref(),
            reference: payout.reference.as_deref(),
            detail: payout.detail.as_deref(),
            settled_at_ms: payout.settled_at_ms,
        }
    }

    /// A payout by id.
    pub fn payout(&self, payout_id: &str) -> Option<PayoutRecord<'_>> {
        let (key, payout) = self.payouts.get_key_value(payout_id)?;
        Some(self.payout_record(payout.seq, key))
    }

    /// Every batch, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = BatchRecord<'_>> {
        self.batches.iter().map(batch_record)
    }

    /// A batch by id.
    pub fn batch(&self, batch_id: &str) -> Option<BatchRecord<'_>> {
        self.batches
            .iter()
            .find(|b| b.batch_id == batch_id)
            .map(batch_record)
    }

    /// Payouts not yet paid or failed, oldest first: what a payout run
    /// must finish before it opens another batch.
    pub fn unsettled_payouts(&self) -> impl Iterator<Item = PayoutRecord<'_>> {
        self.payouts().filter(|p| !p.state.is_final())
    }

    /// The provider of the batch a payout is in (hand payouts: manual).
    pub fn provider_of(&self, payout_id: &str) -> PayoutProvider {
        self.payouts
            .get(payout_id)
            .and_then(|p| p.batch_id.as_deref())
            .and_then(|b| self.batches.iter().find(|batch| batch.batch_id == b))
            .map_or(PayoutProvider::Manual, |b| b.provider)
    }

    /// An affiliate's Stripe connected account, if set.
    pub fn stripe_account(&self, affiliate_id: &str) -> Option<&str> {
        self.affiliates.get(affiliate_id)?.stripe_account.as_deref()
    }

    /// Whether an open fraud case is about one of the affiliate's referrals.
    pub fn has_open_case(&self, affiliate_id: &str) -> bool {
        self.affiliates_under_review().any(|a| a == affiliate_id)
    }

    /// The affiliates an open fraud case holding money is about. A refused
    /// self-referral holds nothing: it does not stop payouts (a stranger
    /// could open one from an address the affiliate used).
    fn affiliates_under_review(&self) -> impl Iterator<Item = &str> {
        self.cases
            .iter()
            .filter(|c| c.decision.is_none() && !c.refused)
            .filter_map(|c| match &c.referrer {
                Referrer::Affiliate { affiliate_id } => Some(affiliate_id.as_str()),
                Referrer::Customer { .. } => None,
            })
    }

    /// The entries a payout of `affiliate_id` at `now` would settle, and
    /// their net.
    fn payable_entries(
        &self,
        affiliate_id: &str,
        now_ms: u64,
    ) -> Result<(Vec<u64>, Minor), TotalOutOfRange> {
        let mut settled = Vec::new();
        let mut amount = 0;
        for entry in self.entries_of(affiliate_id) {
            if entry.status(now_ms) == EntryStatus::Payable {
                settled.push(entry.entry_id);
                amount = total(amount, entry.remaining_minor())?;
            }
        }
        Ok((settled, amount))
    }

    /// Pays every payable entry of an affiliate, clawbacks netted, if the
    /// net is at least the programme's payout minimum: recorded as paid at
    /// once (the admin paid by other means). The same payout id again is a
    /// replay.
    pub fn pay_out(
        &self,
        affiliate_id: &str,
        payout_id: &str,
        now_ms: u64,
    ) -> Result<Decided, PayoutError> {
        if let Some(existing) = self.payouts.get(payout_id) {
            return if existing.affiliate_id == affiliate_id {
                Ok(Decided::replay())
            } else {
                Err(PayoutError::IdReused(payout_id.to_owned()))
            };
        }
        if payout_id.starts_with("pb_") {
            return Err(PayoutError::ReservedId);
        }
        if !self.affiliates.contains_key(affiliate_id) {
            return Err(PayoutError::UnknownAffiliate(affiliate_id.to_owned()));
        }
        // An open case holds what it is about (never payable); the rest an
        // admin may pay by hand on purpose. Batches wait for the decision.
        let (settled, amount) = self.payable_entries(affiliate_id, now_ms)?;
        if amount <= 0 {
            let balances = self.balances(affiliate_id, now_ms)?.unwrap_or_default();
            return Err(PayoutError::NothingPayable {
                payable: balances.payable,
                pending: balances.pending,
            });
        }
        if amount < self.config.payout_minimum {
            return Err(PayoutError::BelowMinimum {
                payable: amount,
                minimum: self.config.payout_minimum,
            });
        }
        Ok(Decided::new(vec![Fact::PayoutMade {
            payout_id: payout_id.to_owned(),
            affiliate_id: affiliate_id.to_owned(),
            amount_minor: amount,
            entries: settled,
            at_ms: now_ms,
        }]))
    }

    /// Opens a batch through `provider`: a pending payout for every
    /// affiliate whose payable balance is at least the minimum, who has no
    /// open fraud case and no payout still unsettled, and (Stripe) who has
    /// a connected account. A daily batch (`scheduled_day`) whose day
    /// already has one decides nothing.
    pub fn open_batch(
        &self,
        provider: PayoutProvider,
        scheduled_day: Option<i64>,
        now_ms: u64,
    ) -> Result<Decided, TotalOutOfRange> {
        if scheduled_day.is_some()
            && self
                .batches
                .iter()
                .any(|b| b.scheduled_day == scheduled_day)
        {
            return Ok(Decided::replay());
        }
        let batch_id = format!("pb_{}", self.batches.len() + 1);
        let mut facts = vec![Fact::PayoutBatchOpened {
            batch_id: batch_id.clone(),
            provider,
            scheduled_day,
            at_ms: now_ms,
        }];
        // Who waits: an unsettled payout, or an open case (found once, not
        // once per affiliate).
        let waiting: std::collections::HashSet<&str> = self
            .payouts
            .values()
            .filter(|p| !p.state.is_final())
            .map(|p| p.affiliate_id.as_str())
            .chain(self.affiliates_under_review())
            .collect();
        for affiliate_id in &self.affiliate_order {
            let destination = self.stripe_account(affiliate_id).map(str::to_owned);
            if waiting.contains(affiliate_id.as_str())
                || (provider == PayoutProvider::Stripe && destination.is_none())
            {
                continue;
            }
            let (entries, amount) = self.payable_entries(affiliate_id, now_ms)?;
            let payout_id = format!("{batch_id}-{affiliate_id}");
            // (A hand payout of an older version may hold the id: the
            // affiliate waits for the next batch rather than lose it.)
            if amount <= 0
                || amount < self.config.payout_minimum
                || self.payouts.contains_key(&payout_id)
            {
                continue;
            }
            facts.push(Fact::PayoutPending {
                payout_id,
                batch_id: batch_id.clone(),
                affiliate_id: affiliate_id.clone(),
                amount_minor: amount,
                entries,
                destination: match provider {
                    PayoutProvider::Stripe => destination,
                    PayoutProvider::Manual => None,
                },
                at_ms: now_ms,
            });
        }
        Ok(Decided::new(facts))
    }

    /// Records that the request for a pending payout is about to go to the
    /// provider, with its idempotency key (the payout id, so a restart can
    /// only ever ask for the same transfer). Already submitted: a replay.
    pub fn submit_payout(&self, payout_id: &str, now_ms: u64) -> Result<Decided, SettleError> {
        let payout = self.payout_or_refuse(payout_id)?;
        match payout.state {
            PayoutState::Pending => {
                // Nothing is sent yet: what changed since the batch opened
                // fails it rather than pays the wrong account, or money a
                // case now questions. The next batch pays what is due.
                let current = self.stripe_account(&payout.affiliate_id);
                let stop = if current != payout.destination.as_deref() {
                    Some(format!(
                        "the affiliate's payout account changed before it was sent (now {})",
                        current.unwrap_or("none")
                    ))
                } else if self.has_open_case(&payout.affiliate_id) {
                    Some(
                        "a fraud case opened about one of the affiliate's referrals before it was sent"
                            .to_owned(),
                    )
                } else if payout.entries.iter().any(|&entry_id| {
                    self.entry_by_id(entry_id)
                        .is_some_and(|e| self.customers.get(&e.user_id).is_some_and(|c| c.blocked))
                }) {
                    Some("a customer's fraud was confirmed before it was sent".to_owned())
                } else {
                    None
                };
                if let Some(reason) = stop {
                    return self.settle(payout_id, PayoutOutcome::Failed { reason }, now_ms);
                }
                Ok(Decided::new(vec![Fact::PayoutSubmitted {
                    payout_id: payout_id.to_owned(),
                    idempotency_key: payout_id.to_owned(),
                    at_ms: now_ms,
                }]))
            }
            PayoutState::Submitted | PayoutState::NeedsReconciliation => Ok(Decided::replay()),
            state @ (PayoutState::Paid | PayoutState::Failed) => Err(SettleError::AlreadySettled {
                payout_id: payout_id.to_owned(),
                state: state.as_str(),
                wanted: PayoutState::Submitted.as_str(),
            }),
        }
    }

    fn payout_or_refuse(&self, payout_id: &str) -> Result<&super::Payout, SettleError> {
        self.payouts
            .get(payout_id)
            .ok_or_else(|| SettleError::UnknownPayout(payout_id.to_owned()))
    }

    /// Records the provider's answer for a submitted payout.
    pub fn record_answer(
        &self,
        payout_id: &str,
        outcome: PayoutOutcome,
        now_ms: u64,
    ) -> Result<Decided, SettleError> {
        self.settle(payout_id, outcome, now_ms)
    }

    /// An admin settles a payout: a manual one once they have paid it (or
    /// could not), any one the provider left to reconcile.
    pub fn settle_by_hand(
        &self,
        payout_id: &str,
        outcome: PayoutOutcome,
        now_ms: u64,
    ) -> Result<Decided, SettleError> {
        let payout = self.payout_or_refuse(payout_id)?;
        if self.provider_of(payout_id) == PayoutProvider::Stripe {
            match (payout.state, &outcome) {
                // Never sent: an admin may fail it (a provider switched
                // off, say); paying it by hand would bypass Stripe.
                (PayoutState::Pending, PayoutOutcome::Failed { .. }) => {}
                (PayoutState::Pending | PayoutState::Submitted, _) => {
                    return Err(SettleError::InProvidersHands(payout_id.to_owned()));
                }
                (PayoutState::NeedsReconciliation, PayoutOutcome::Failed { .. }) => {
                    return Err(SettleError::MaybeSent(payout_id.to_owned()));
                }
                _ => {}
            }
        }
        self.settle(payout_id, outcome, now_ms)
    }

    fn settle(
        &self,
        payout_id: &str,
        outcome: PayoutOutcome,
        now_ms: u64,
    ) -> Result<Decided, SettleError> {
        let payout = self.payout_or_refuse(payout_id)?;
        let wanted = match &outcome {
            PayoutOutcome::Paid { .. } => PayoutState::Paid,
            PayoutOutcome::Failed { .. } => PayoutState::Failed,
            PayoutOutcome::Unknown { .. } => PayoutState::NeedsReconciliation,
        };
        match (payout.state, &outcome) {
            // The same answer again: a retry.
            (PayoutState::Paid, PayoutOutcome::Paid { reference })
                if payout.reference.as_deref() == Some(reference.as_str()) =>
            {
                return Ok(Decided::replay());
            }
            (PayoutState::Failed, PayoutOutcome::Failed { .. })
            | (PayoutState::NeedsReconciliation, PayoutOutcome::Unknown { .. }) => {
                return Ok(Decided::replay());
            }
            (state @ (PayoutState::Paid | PayoutState::Failed), _) => {
                return Err(SettleError::AlreadySettled {
                    payout_id: payout_id.to_owned(),
                    state: state.as_str(),
                    wanted: wanted.as_str(),
                });
            }
            (PayoutState::Pending, PayoutOutcome::Unknown { .. }) => {
                return Err(SettleError::NotSubmitted(payout_id.to_owned()));
            }
            _ => {}
        }
        let payout_id = payout_id.to_owned();
        Ok(Decided::new(vec![match outcome {
            PayoutOutcome::Paid { reference } => Fact::PayoutPaid {
                payout_id,
                reference,
                at_ms: now_ms,
            },
            PayoutOutcome::Failed { reason } => {
                let mut facts = vec![Fact::PayoutFailed {
                    payout_id,
                    reason,
                    at_ms: now_ms,
                }];
                facts.extend(self.reversals_for_confirmed_cases(&payout.entries, now_ms));
                return Ok(Decided::new(facts));
            }
            PayoutOutcome::Unknown { detail } => Fact::PayoutNeedsReconciliation {
                payout_id,
                detail,
                at_ms: now_ms,
            },
        }]))
    }

    /// Reverses what no reversal or clawback took of a commission, for a
    /// confirmed case; nothing for other entries or when nothing is left.
    pub(super) fn case_reversal(entry: &super::Entry, case_id: u64, now_ms: u64) -> Option<Fact> {
        let left = entry.unsettled_minor();
        (left > 0 && matches!(entry.kind, super::EntryKind::Commission { .. })).then(|| {
            Fact::CommissionReversed {
                entry_id: entry.entry_id,
                refund_id: format!("case-{case_id}"),
                amount_minor: left,
                at_ms: now_ms,
            }
        })
    }

    /// What confirming a case about `user_id` does to payouts not yet sent
    /// (Stripe `pending`) that hold their commissions: each fails, and the
    /// customer's commissions in it are reversed rather than payable again.
    pub(super) fn fail_unsent_payouts_of(
        &self,
        user_id: &str,
        case_id: u64,
        now_ms: u64,
    ) -> Vec<Fact> {
        let mut facts = Vec::new();
        for payout_id in &self.payout_order {
            let payout = &self.payouts[payout_id];
            if payout.state != PayoutState::Pending
                || self.provider_of(payout_id) != PayoutProvider::Stripe
            {
                continue;
            }
            let theirs: Vec<&super::Entry> = payout
                .entries
                .iter()
                .filter_map(|&id| self.entry_by_id(id))
                .filter(|e| {
                    e.user_id == user_id && matches!(e.kind, super::EntryKind::Commission { .. })
                })
                .collect();
            if theirs.is_empty() {
                continue;
            }
            facts.push(Fact::PayoutFailed {
                payout_id: payout_id.clone(),
                reason: format!(
                    "fraud case {case_id} was confirmed on a customer whose commission it holds, before it was sent"
                ),
                at_ms: now_ms,
            });
            facts.extend(
                theirs
                    .into_iter()
                    .filter_map(|e| Self::case_reversal(e, case_id, now_ms)),
            );
        }
        facts
    }

    /// What a failed payout's commissions of customers whose fraud was
    /// confirmed (while the payout was in flight) lose: they come back
    /// reversed, not payable.
    fn reversals_for_confirmed_cases(&self, entries: &[u64], now_ms: u64) -> Vec<Fact> {
        entries
            .iter()
            .filter_map(|&entry_id| self.entry_by_id(entry_id))
            .filter_map(|entry| {
                let case = self.cases.iter().find(|c| {
                    c.user_id == entry.user_id
                        && !c.refused
                        && c.decision
                            .as_ref()
                            .is_some_and(|d| d.decision == crate::facts::CaseDecision::Confirmed)
                })?;
                Self::case_reversal(entry, case.case_id, now_ms)
            })
            .collect()
    }

    /// Sets where an affiliate is paid by the `stripe` provider. The same
    /// account again is a replay.
    pub fn set_payout_account(
        &self,
        affiliate_id: &str,
        stripe_account: &str,
        now_ms: u64,
    ) -> Result<Decided, PayoutAccountError> {
        let affiliate = self
            .affiliates
            .get(affiliate_id)
            .ok_or_else(|| PayoutAccountError::UnknownAffiliate(affiliate_id.to_owned()))?;
        let valid = stripe_account.strip_prefix("acct_").is_some_and(|rest| {
            (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if !valid {
            return Err(PayoutAccountError::InvalidAccount);
        }
        if affiliate.stripe_account.as_deref() == Some(stripe_account) {
            return Ok(Decided::replay());
        }
        Ok(Decided::new(vec![Fact::PayoutAccountSet {
            affiliate_id: affiliate_id.to_owned(),
            stripe_account: stripe_account.to_owned(),
            at_ms: now_ms,
        }]))
    }
}

fn batch_record(batch: &Batch) -> BatchRecord<'_> {
    BatchRecord {
        batch_id: &batch.batch_id,
        provider: batch.provider,
        scheduled_day: batch.scheduled_day,
        at_ms: batch.at_ms,
        payout_ids: &batch.payouts,
    }
}
