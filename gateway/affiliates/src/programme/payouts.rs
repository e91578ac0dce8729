//! Payouts: an affiliate is paid everything payable at once, clawbacks
//! netted, and a payout id is recorded so that a retry pays nothing twice.

use super::{Decided, EntryStatus, Programme};
use crate::facts::Fact;
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
}

/// A payout as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutRecord<'a> {
    /// 1, 2, 3, … in the order payouts were made.
    pub seq: u64,
    /// Its id.
    pub payout_id: &'a str,
    /// Who was paid.
    pub affiliate_id: &'a str,
    /// The net amount paid.
    pub amount_minor: Minor,
    /// How many ledger lines it settled.
    pub entries: usize,
    /// When.
    pub at_ms: u64,
}

impl Programme {
    /// Every payout, oldest first.
    pub fn payouts(&self) -> impl Iterator<Item = PayoutRecord<'_>> {
        (1u64..).zip(&self.payout_order).map(|(seq, payout_id)| {
            let payout = &self.payouts[payout_id];
            PayoutRecord {
                seq,
                payout_id,
                affiliate_id: &payout.affiliate_id,
                amount_minor: payout.amount,
                entries: payout.entries,
                at_ms: payout.at_ms,
            }
        })
    }

    /// Pays every payable entry of an affiliate, clawbacks netted, if the
    /// net is at least the programme's payout minimum. The same payout id
    /// again is a replay.
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
        let affiliate = self
            .affiliates
            .get(affiliate_id)
            .ok_or_else(|| PayoutError::UnknownAffiliate(affiliate_id.to_owned()))?;
        let mut settled = Vec::new();
        let mut amount = 0;
        for &entry_id in &affiliate.entries {
            let entry = self.entry(entry_id);
            if entry.status(now_ms) == EntryStatus::Payable {
                settled.push(entry_id);
                amount = total(amount, entry.remaining_minor())?;
            }
        }
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
}
