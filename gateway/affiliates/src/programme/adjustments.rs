//! Manual adjustments: an admin corrects an affiliate's balance by a signed
//! amount, with a reason, as a new ledger line. History is never edited:
//! a mistake stays in the journal next to the line that corrects it.

use super::{Decided, Programme};
use crate::facts::Fact;
use crate::money::{MAX_AMOUNT, Minor, TotalOutOfRange, total};

/// Why an adjustment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdjustmentError {
    /// No such affiliate.
    #[error("no affiliate {0}")]
    UnknownAffiliate(String),
    /// Zero, or beyond the largest single amount either way.
    #[error(
        "amount_minor must be between -{MAX_AMOUNT} and {MAX_AMOUNT} minor units and not zero, not {0}"
    )]
    InvalidAmount(Minor),
    /// The id was used for a different adjustment.
    #[error("adjustment {0} was already recorded with different details")]
    IdReused(String),
    /// The affiliate's earnings would pass the ledger's limit.
    #[error(transparent)]
    TotalOutOfRange(#[from] TotalOutOfRange),
}

/// An adjustment already recorded, to recognise its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Adjustment {
    pub(super) affiliate_id: String,
    pub(super) amount: Minor,
    pub(super) reason: String,
}

impl Programme {
    /// Adds `amount_minor` (positive: owed to the affiliate; negative: owed
    /// by them) to an affiliate's balance, payable at once, for `reason`.
    /// The same `adjustment_id` again is a replay.
    pub fn adjust(
        &self,
        affiliate_id: &str,
        adjustment_id: &str,
        amount_minor: Minor,
        reason: &str,
        now_ms: u64,
    ) -> Result<Decided, AdjustmentError> {
        let asked = Adjustment {
            affiliate_id: affiliate_id.to_owned(),
            amount: amount_minor,
            reason: reason.to_owned(),
        };
        if let Some(existing) = self.adjustments.get(adjustment_id) {
            return if *existing == asked {
                Ok(Decided::replay())
            } else {
                Err(AdjustmentError::IdReused(adjustment_id.to_owned()))
            };
        }
        if amount_minor == 0 || amount_minor.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
            return Err(AdjustmentError::InvalidAmount(amount_minor));
        }
        let affiliate = self
            .affiliates
            .get(affiliate_id)
            .ok_or_else(|| AdjustmentError::UnknownAffiliate(affiliate_id.to_owned()))?;
        total(affiliate.earned, amount_minor)?;
        Ok(Decided::new(vec![Fact::AdjustmentEntered {
            entry_id: self.entries.len() as u64 + 1,
            adjustment_id: adjustment_id.to_owned(),
            affiliate_id: affiliate_id.to_owned(),
            amount_minor,
            reason: reason.to_owned(),
            at_ms: now_ms,
        }]))
    }
}
