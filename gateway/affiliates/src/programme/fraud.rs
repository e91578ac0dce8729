//! Fraud review: checks at signup open cases with their evidence. A
//! self-referral is refused and the refusal is a case; a referral from an
//! address that signed up more customers within the window than the
//! programme allows is taken but held: its commissions are never payable
//! until an admin decides. Clearing releases them; confirming reverses the
//! unpaid ones and blocks the referral, so later payments earn nothing.

use std::collections::VecDeque;

use super::{Decided, Programme, Signup};
use crate::calendar::format_date;
use crate::facts::{CaseDecision, CaseKind, Fact, Referrer, TradeSide};

/// A case as the review queue shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// 1, 2, 3, … across the programme.
    pub case_id: u64,
    /// Which check opened it.
    pub kind: CaseKind,
    /// The referred customer.
    pub user_id: String,
    /// Whose referral.
    pub referrer: Referrer,
    /// What the check saw.
    pub evidence: String,
    /// The referral was refused, not held.
    pub refused: bool,
    /// When it opened.
    pub opened_at_ms: u64,
    /// The decision, once made.
    pub decision: Option<Decision>,
}

/// An admin's decision on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Cleared or confirmed.
    pub decision: CaseDecision,
    /// Who decided.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at_ms: u64,
}

/// Why a case could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseError {
    /// No such case.
    #[error("no fraud case {0}")]
    UnknownCase(u64),
    /// Decided already, the other way.
    #[error("fraud case {case_id} was already {decided:?} by {by}; a decision stands")]
    AlreadyDecided {
        /// The case.
        case_id: u64,
        /// How.
        decided: CaseDecision,
        /// By whom.
        by: String,
    },
}

/// Signup times per source address, for the shared-address check.
pub(super) type SignupsByAddress = std::collections::HashMap<String, VecDeque<u64>>;

/// Bought and sold volume (10^-8 lot) per customer, UTC day and symbol,
/// for the wash-trading check; only the latest days are kept.
pub(super) type Trades = std::collections::HashMap<(String, i64, String), (u128, u128)>;

/// The fills counted, by device and report sequence, with their day.
pub(super) type TradesCounted = std::collections::HashMap<(String, u64), i64>;

impl Programme {
    /// The case a refused self-referral opens (none if one is open for the
    /// same customer and referrer already: a retry).
    pub fn self_referral_case(
        &self,
        signup: &Signup,
        referrer: Referrer,
        evidence: String,
        now_ms: u64,
    ) -> Decided {
        let open_already = self.cases.iter().any(|c| {
            c.kind == CaseKind::SelfReferral
                && c.user_id == signup.user_id
                && c.referrer == referrer
                && c.decision.is_none()
        });
        if open_already {
            return Decided::replay();
        }
        Decided::new(vec![Fact::CaseOpened {
            case_id: self.cases.len() as u64 + 1,
            kind: CaseKind::SelfReferral,
            user_id: signup.user_id.clone(),
            referrer,
            evidence,
            refused: true,
            at_ms: now_ms,
        }])
    }

    /// The shared-address case a signup opens, if its address already had
    /// the most signups the programme allows within the window before it.
    pub(super) fn shared_address_case(
        &self,
        signup: &Signup,
        referrer: &Referrer,
        case_id: u64,
        now_ms: u64,
    ) -> Option<Fact> {
        let limit = self.config.shared_address_limit as usize;
        // Within a window either side: a signup reported late is counted
        // with the ones after it as well as before.
        let window = self.config.shared_address_window_ms;
        let since = signup.occurred_at_ms.saturating_sub(window);
        let until = signup.occurred_at_ms.saturating_add(window);
        let earlier = self
            .signups_by_address
            .get(&signup.source_address)
            .map_or(0, |times| {
                times.iter().filter(|&&t| t >= since && t <= until).count()
            });
        (earlier >= limit).then(|| Fact::CaseOpened {
            case_id,
            kind: CaseKind::SharedAddress,
            user_id: signup.user_id.clone(),
            referrer: referrer.clone(),
            evidence: format!(
                "signup number {} from {} within {} h of each other; the programme allows {limit}",
                earlier + 1,
                signup.source_address,
                self.config.shared_address_window_ms / 3_600_000,
            ),
            refused: false,
            at_ms: now_ms,
        })
    }

    /// A fill on a device of `user_id`'s account. Counted only for a
    /// customer an affiliate referred and no case holds or blocked; when
    /// their bought and sold volume of the symbol that UTC day come within
    /// the tolerance of each other, a wash-trading case opens and holds
    /// their unpaid commissions.
    #[allow(clippy::too_many_arguments)]
    pub fn trade_seen(
        &self,
        user_id: &str,
        (device_id, seq): (&str, u64),
        symbol: &str,
        side: TradeSide,
        volume_e8: u64,
        day: i64,
        now_ms: u64,
    ) -> Decided {
        let Some(referrer) = self.trade_watch(user_id) else {
            return Decided::replay();
        };
        if volume_e8 == 0
            || self
                .trades_counted
                .contains_key(&(device_id.to_owned(), seq))
        {
            return Decided::replay();
        }
        let mut facts = vec![Fact::TradeSeen {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            seq,
            symbol: symbol.to_owned(),
            side,
            volume_e8,
            day,
            at_ms: now_ms,
        }];
        let (mut bought, mut sold) = self
            .trades
            .get(&(user_id.to_owned(), day, symbol.to_owned()))
            .copied()
            .unwrap_or_default();
        match side {
            TradeSide::Buy => bought = bought.saturating_add(u128::from(volume_e8)),
            TradeSide::Sell => sold = sold.saturating_add(u128::from(volume_e8)),
        }
        let larger = bought.max(sold);
        let apart = bought.abs_diff(sold);
        let offsetting = bought > 0
            && sold > 0
            && apart * 10_000 <= u128::from(self.config.wash_trade_tolerance_bps) * larger;
        if offsetting {
            let lots = |e8: u128| format!("{}.{:08}", e8 / 100_000_000, e8 % 100_000_000);
            facts.push(Fact::CaseOpened {
                case_id: self.cases.len() as u64 + 1,
                kind: CaseKind::WashTrading,
                user_id: user_id.to_owned(),
                referrer: referrer.clone(),
                evidence: format!(
                    "{symbol} on {}: bought {} lots, sold {} lots (within {} bp of each other)",
                    format_date(day),
                    lots(bought),
                    lots(sold),
                    self.config.wash_trade_tolerance_bps
                ),
                refused: false,
                at_ms: now_ms,
            });
        }
        Decided::new(facts)
    }

    /// Whether `user_id`'s fills are counted for the wash-trading check: a
    /// customer an affiliate referred, that no case holds or blocked. The
    /// sidecar asks before it looks up a fill's signal.
    pub fn watches_trades(&self, user_id: &str) -> bool {
        self.trade_watch(user_id).is_some()
    }

    /// The affiliate referrer of a customer whose trades are watched.
    fn trade_watch(&self, user_id: &str) -> Option<&Referrer> {
        let customer = self.customers.get(user_id)?;
        let referrer = &customer.referral.as_ref()?.referrer;
        let watched = matches!(referrer, Referrer::Affiliate { .. })
            && !customer.blocked
            && customer.held_by.is_none();
        watched.then_some(referrer)
    }

    /// Clears or confirms a case. The same decision again is a replay.
    pub fn decide_case(
        &self,
        case_id: u64,
        decision: CaseDecision,
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Decided, CaseError> {
        let case = case_id
            .checked_sub(1)
            .and_then(|at| self.cases.get(at as usize))
            .ok_or(CaseError::UnknownCase(case_id))?;
        if let Some(made) = &case.decision {
            return if made.decision == decision {
                Ok(Decided::replay())
            } else {
                Err(CaseError::AlreadyDecided {
                    case_id,
                    decided: made.decision,
                    by: made.by.clone(),
                })
            };
        }
        let mut facts = vec![Fact::CaseDecided {
            case_id,
            decision,
            by: by.to_owned(),
            reason: reason.to_owned(),
            at_ms: now_ms,
        }];
        if decision == CaseDecision::Confirmed {
            // Every commission the case held goes (a refused case held
            // nothing: another referrer's commissions are not its business).
            facts.extend(
                self.entries
                    .iter()
                    .filter(|e| e.held_by == Some(case_id) && e.payout_id.is_none())
                    .filter_map(|e| Self::case_reversal(e, case_id, now_ms)),
            );
            if !case.refused {
                facts.extend(self.fail_unsent_payouts_of(&case.user_id, case_id, now_ms));
            }
        }
        // Cleared: the referral credits the hold kept back are due now.
        if decision == CaseDecision::Cleared
            && !case.refused
            && let Some(customer) = self.customers.get(&case.user_id)
            && customer.held_by == Some(case_id)
        {
            let gate = super::credits::CreditGate {
                spent: customer.spent,
                verified: customer.email_verified,
                last_paid_at_ms: customer.last_paid_at_ms,
                released_case: Some(case_id),
            };
            self.credits_due(&case.user_id, gate, now_ms, &mut facts);
        }
        Ok(Decided::new(facts))
    }

    /// Every case, oldest first.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }
}
