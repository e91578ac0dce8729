//! An affiliate's commission ledger: its lines (commissions, the clawbacks
//! of paid ones, admins' adjustments), where each stands at a given moment,
//! and the balances they add up to.

use super::Programme;
use crate::facts::CommissionKind;
use crate::money::{Minor, TotalOutOfRange, total};

/// A line of an affiliate's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1, 2, 3, … across the programme.
    pub entry_id: u64,
    /// The affiliate.
    pub affiliate_id: String,
    /// The referred user.
    pub user_id: String,
    /// The payment it comes from.
    pub payment_id: String,
    /// A commission, or a clawback of one.
    pub kind: EntryKind,
    /// The amount: positive for commissions, negative for clawbacks.
    pub amount_minor: Minor,
    /// How much of a commission was reversed before it was paid.
    pub reversed_minor: Minor,
    /// How much of a paid commission later clawbacks took back.
    pub clawed_back_minor: Minor,
    /// When the entry was made.
    pub created_at_ms: u64,
    /// When the commission it belongs to was earned: the stats period.
    pub earned_at_ms: u64,
    /// When it stops being pending (clawbacks: at once).
    pub payable_at_ms: u64,
    /// The payout that settles it (tied from when the payout is pending).
    pub payout_id: Option<String>,
    /// When that payout's money arrived.
    pub paid_at_ms: Option<u64>,
    /// The open fraud case that holds it: never payable until decided.
    pub held_by: Option<u64>,
}

/// What a ledger entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A commission.
    Commission {
        /// What for.
        kind: CommissionKind,
        /// The rate, in basis points.
        rate_bps: u32,
        /// The amount the rate was applied to.
        base_minor: Minor,
    },
    /// Money taken back from a paid commission.
    Clawback {
        /// The commission.
        of_entry: u64,
        /// The refund that caused it.
        refund_id: String,
    },
    /// An admin's correction, either sign.
    Adjustment {
        /// The admin's id for it.
        adjustment_id: String,
        /// Why.
        reason: String,
    },
}

/// Where an entry's money stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryStatus {
    /// In the holding period.
    Pending,
    /// Due at the next payout (clawbacks: to be netted against it).
    Payable,
    /// Settled by a payout.
    Paid,
    /// Entirely taken back before it was paid.
    Reversed,
    /// Held by an open fraud case: not payable until an admin decides.
    Held,
    /// In a payout that has not arrived yet: nothing else can pay it.
    Paying,
}

impl EntryStatus {
    /// The lower-case name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Payable => "payable",
            Self::Paid => "paid",
            Self::Reversed => "reversed",
            Self::Held => "held",
            Self::Paying => "paying",
        }
    }
}

impl Entry {
    /// Where the entry stands at `now`.
    pub fn status(&self, now_ms: u64) -> EntryStatus {
        if self.payout_id.is_some() {
            if self.paid_at_ms.is_some() {
                EntryStatus::Paid
            } else {
                EntryStatus::Paying
            }
        } else if matches!(
            self.kind,
            EntryKind::Clawback { .. } | EntryKind::Adjustment { .. }
        ) {
            EntryStatus::Payable
        } else if self.amount_minor == self.reversed_minor {
            EntryStatus::Reversed
        } else if self.held_by.is_some() {
            EntryStatus::Held
        } else if now_ms < self.payable_at_ms {
            EntryStatus::Pending
        } else {
            EntryStatus::Payable
        }
    }

    /// What is left of a commission after reversals; a clawback's amount.
    pub fn remaining_minor(&self) -> Minor {
        // Both within 0..=MAX_AMOUNT: reversals never exceed the amount.
        self.amount_minor.saturating_sub(self.reversed_minor)
    }

    /// What of a commission nothing has taken back yet, neither a reversal
    /// nor a clawback (one entered while it was in a payout that then
    /// failed): what a fraud case may hold or reverse.
    pub fn unsettled_minor(&self) -> Minor {
        self.remaining_minor()
            .saturating_sub(self.clawed_back_minor)
            .max(0)
    }
}

/// An affiliate's money, by where it stands. Always
/// `earned = pending + held + payable + paying + paid + reversed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balances {
    /// Every commission ever earned.
    pub earned: Minor,
    /// In the holding period.
    pub pending: Minor,
    /// Held by open fraud cases.
    pub held: Minor,
    /// Due at the next payout, net of clawbacks not yet settled.
    pub payable: Minor,
    /// In payouts that have not arrived yet.
    pub paying: Minor,
    /// Paid out, net of clawbacks settled by later payouts.
    pub paid: Minor,
    /// Taken back by refunds, before or after payout.
    pub reversed: Minor,
}

impl Balances {
    /// Counts `entry` in, or refuses past [`MAX_TOTAL`](crate::money::MAX_TOTAL).
    pub(super) fn add(&mut self, entry: &Entry, now_ms: u64) -> Result<(), TotalOutOfRange> {
        match entry.kind {
            EntryKind::Commission { .. } => {
                self.earned = total(self.earned, entry.amount_minor)?;
                self.reversed = total(self.reversed, entry.reversed_minor)?;
            }
            EntryKind::Clawback { .. } => {
                self.reversed = total(self.reversed, -entry.amount_minor)?;
            }
            // Counted as earned with its sign, so the balances still add up.
            EntryKind::Adjustment { .. } => {
                self.earned = total(self.earned, entry.amount_minor)?;
            }
        }
        let remaining = entry.remaining_minor();
        let bucket = match entry.status(now_ms) {
            EntryStatus::Pending => &mut self.pending,
            EntryStatus::Held => &mut self.held,
            EntryStatus::Payable => &mut self.payable,
            EntryStatus::Paying => &mut self.paying,
            EntryStatus::Paid => &mut self.paid,
            EntryStatus::Reversed => return Ok(()),
        };
        *bucket = total(*bucket, remaining)?;
        Ok(())
    }
}

impl Programme {
    /// An affiliate's ledger, oldest first.
    pub fn entries_of(&self, affiliate_id: &str) -> impl Iterator<Item = &Entry> {
        self.affiliates
            .get(affiliate_id)
            .into_iter()
            .flat_map(|a| a.entries.iter().map(|&id| self.entry(id)))
    }

    /// A ledger line by its id.
    pub fn entry_by_id(&self, entry_id: u64) -> Option<&Entry> {
        self.entries.get(entry_id.checked_sub(1)? as usize)
    }

    /// An affiliate's balances at `now`; `None` for no such affiliate.
    pub fn balances(
        &self,
        affiliate_id: &str,
        now_ms: u64,
    ) -> Result<Option<Balances>, TotalOutOfRange> {
        if !self.affiliates.contains_key(affiliate_id) {
            return Ok(None);
        }
        let mut balances = Balances::default();
        for entry in self.entries_of(affiliate_id) {
            balances.add(entry, now_ms)?;
        }
        Ok(Some(balances))
    }
}
