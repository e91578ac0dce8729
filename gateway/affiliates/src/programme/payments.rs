//! The platform's money events: a subscription payment earns the
//! referring affiliate a commission (and the first-trade bonus), a refund
//! takes back each commission's share (reversed if unpaid, clawed back if
//! paid), and a referred user's first trade may earn the bonus late.

use super::event_time::check_not_ahead;
use super::{Decided, EventTimeError, Programme};
use crate::calendar::{day_of, format_instant, one_month_after};
use crate::config::EVENT_CLOCK_SKEW_MS;
use crate::facts::{CommissionKind, Fact, Referrer};
use crate::money::{
    Currency, MAX_AMOUNT, Minor, TotalOutOfRange, commission, share_of, sum, total,
};

/// Why a payment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The customer's spend or the affiliate's earnings would pass the
    /// ledger's limit.
    #[error(transparent)]
    TotalOutOfRange(#[from] TotalOutOfRange),
    /// The payment's time is not one the programme takes.
    #[error(transparent)]
    Time(#[from] EventTimeError),
    /// Zero, negative or absurdly large.
    #[error("amount_minor must be between 1 and {MAX_AMOUNT} minor units, not {0}")]
    InvalidAmount(Minor),
    /// Not the programme's currency.
    #[error("the programme runs in {expected}; a payment in {given} cannot be counted")]
    WrongCurrency {
        /// The programme's currency.
        expected: Currency,
        /// The payment's.
        given: Currency,
    },
    /// Billing periods start at 1.
    #[error("billing_period starts at 1 (the first month)")]
    InvalidPeriod,
    /// The id was used for a different payment.
    #[error("payment {0} was already recorded with different details")]
    IdReused(String),
}

/// Why a refund was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    /// A running total would pass the ledger's limit.
    #[error(transparent)]
    TotalOutOfRange(#[from] TotalOutOfRange),
    /// The refund's time is not one the programme takes.
    #[error(transparent)]
    Time(#[from] EventTimeError),
    /// The refund is said to have happened before its payment.
    #[error("the refund at {refunded_at} is before its payment {payment_id} at {paid_at}")]
    BeforePayment {
        /// The payment.
        payment_id: String,
        /// When it was paid, RFC 3339.
        paid_at: String,
        /// When the refund was, RFC 3339.
        refunded_at: String,
    },
    /// Zero, negative or absurdly large.
    #[error("amount_minor must be between 1 and {MAX_AMOUNT} minor units, not {0}")]
    InvalidAmount(Minor),
    /// Not the programme's currency.
    #[error("the programme runs in {expected}; a refund in {given} cannot be counted")]
    WrongCurrency {
        /// The programme's currency.
        expected: Currency,
        /// The refund's.
        given: Currency,
    },
    /// The payment was never recorded.
    #[error("payment {0} is not known; send the payment before its refund")]
    UnknownPayment(String),
    /// More than what is left of the payment.
    #[error("payment {payment_id} has only {refundable} minor units left to refund, not {amount}")]
    ExceedsPayment {
        /// The payment.
        payment_id: String,
        /// What is left.
        refundable: Minor,
        /// The refund asked for.
        amount: Minor,
    },
    /// The id was used for a different refund.
    #[error("refund {0} was already recorded with different details")]
    IdReused(String),
}

/// A subscription payment as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    /// The platform's payment id.
    pub payment_id: String,
    /// Who paid.
    pub user_id: String,
    /// How much.
    pub amount_minor: Minor,
    /// In what.
    pub currency: Currency,
    /// Billing period as the platform numbers it, 1 for the first month:
    /// kept for display; the commission's month is decided from the
    /// customer's own payment dates.
    pub billing_period: u32,
    /// When the payment was taken, as the platform says (Unix ms).
    pub occurred_at_ms: u64,
}

/// A refund as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundEvent {
    /// The platform's refund id.
    pub refund_id: String,
    /// The payment refunded.
    pub payment_id: String,
    /// How much.
    pub amount_minor: Minor,
    /// In what.
    pub currency: Currency,
    /// When the refund was made, as the platform says (Unix ms).
    pub occurred_at_ms: u64,
}

fn validate_amount(amount: Minor) -> bool {
    (1..=MAX_AMOUNT).contains(&amount)
}

impl Programme {
    /// A subscription payment: commission for the referring affiliate (and
    /// the first-trade bonus, if the user traded before paying), or credit
    /// for a referring customer once the threshold is reached.
    ///
    /// The commission's rate is the first month's when the payment was
    /// taken on a UTC day before the same day of the next month after the
    /// customer's earliest payment (by `occurred_at`, whichever order they
    /// arrive in), the later months' otherwise; the caller's billing period
    /// decides nothing.
    pub fn pay(&self, payment: &PaymentEvent, now_ms: u64) -> Result<Decided, PaymentError> {
        if !validate_amount(payment.amount_minor) {
            return Err(PaymentError::InvalidAmount(payment.amount_minor));
        }
        if payment.currency != self.config.currency {
            return Err(PaymentError::WrongCurrency {
                expected: self.config.currency,
                given: payment.currency,
            });
        }
        if payment.billing_period == 0 {
            return Err(PaymentError::InvalidPeriod);
        }
        if let Some(existing) = self.payments.get(&payment.payment_id) {
            return if existing.user_id == payment.user_id
                && existing.amount == payment.amount_minor
                && existing.billing_period == payment.billing_period
                && existing
                    .stated_at_ms
                    .is_none_or(|at| at == payment.occurred_at_ms)
            {
                Ok(Decided::replay())
            } else {
                Err(PaymentError::IdReused(payment.payment_id.clone()))
            };
        }
        // After the replay: a retry answers as the first time, however late.
        self.check_occurred(payment.occurred_at_ms, now_ms)?;
        let mut facts = vec![Fact::PaymentReceived {
            payment_id: payment.payment_id.clone(),
            user_id: payment.user_id.clone(),
            amount_minor: payment.amount_minor,
            currency: payment.currency,
            billing_period: payment.billing_period,
            occurred_at_ms: Some(payment.occurred_at_ms),
            at_ms: now_ms,
        }];
        let customer = self.customers.get(&payment.user_id);
        let spent = total(customer.map_or(0, |c| c.spent), payment.amount_minor)?;
        // A referral a confirmed fraud case blocked earns nothing more.
        let referrer = customer
            .filter(|c| !c.blocked)
            .and_then(|c| c.referral.as_ref())
            .map(|r| &r.referrer);
        match referrer {
            Some(Referrer::Affiliate { affiliate_id }) => {
                let paid_at = payment.occurred_at_ms;
                let first_paid_at = customer
                    .and_then(|c| c.first_paid_at_ms)
                    .map_or(paid_at, |first| first.min(paid_at));
                // By UTC day: a renewal on the same day next month is month
                // two, whatever the time of day of either payment.
                let month_one_ends = day_of(one_month_after(first_paid_at));
                let rate = if day_of(paid_at) < month_one_ends {
                    self.config.first_month_rate
                } else {
                    self.config.later_months_rate
                };
                let kind = CommissionKind::Subscription {
                    billing_period: payment.billing_period,
                };
                let mut next_entry = self.entries.len() as u64 + 1;
                let earned = self.earn(
                    next_entry,
                    affiliate_id,
                    &payment.payment_id,
                    &payment.user_id,
                    kind,
                    rate,
                    payment.amount_minor,
                    paid_at,
                    now_ms,
                );
                if let Some(fact) = earned {
                    facts.push(fact);
                    next_entry += 1;
                }
                let first_payment = customer.is_some_and(|c| c.first_payment.is_none());
                if first_payment && customer.is_some_and(|c| c.first_trade) {
                    facts.extend(self.earn(
                        next_entry,
                        affiliate_id,
                        &payment.payment_id,
                        &payment.user_id,
                        CommissionKind::FirstTradeBonus,
                        self.config.first_trade_bonus_rate,
                        payment.amount_minor,
                        paid_at,
                        now_ms,
                    ));
                }
            }
            Some(Referrer::Customer { .. }) => {
                let customer = customer.expect("a referral belongs to a customer");
                let last_paid = customer
                    .last_paid_at_ms
                    .map_or(payment.occurred_at_ms, |at| at.max(payment.occurred_at_ms));
                let gate = super::credits::CreditGate {
                    spent,
                    verified: customer.email_verified,
                    last_paid_at_ms: Some(last_paid),
                    released_case: None,
                };
                self.credits_due(&payment.user_id, gate, now_ms, &mut facts);
            }
            None => {}
        }
        if let Some(Referrer::Affiliate { affiliate_id }) = referrer {
            let earned_now = facts.iter().filter_map(|fact| match fact {
                Fact::CommissionEarned { amount_minor, .. } => Some(*amount_minor),
                _ => None,
            });
            total(self.affiliates[affiliate_id].earned, sum(earned_now)?)?;
        }
        Ok(Decided::new(facts))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn earn(
        &self,
        entry_id: u64,
        affiliate_id: &str,
        payment_id: &str,
        user_id: &str,
        kind: CommissionKind,
        rate: crate::money::Bps,
        base: Minor,
        earned_at_ms: u64,
        now_ms: u64,
    ) -> Option<Fact> {
        let amount = commission(base, rate);
        (amount > 0).then(|| Fact::CommissionEarned {
            entry_id,
            affiliate_id: affiliate_id.to_owned(),
            user_id: user_id.to_owned(),
            payment_id: payment_id.to_owned(),
            kind,
            rate,
            base_minor: base,
            amount_minor: amount,
            payable_at_ms: earned_at_ms.saturating_add(self.config.holding_period_ms),
            earned_at_ms: Some(earned_at_ms),
            at_ms: now_ms,
        })
    }

    /// A refund: each commission on the payment gives back its share of the
    /// refund (of its stored amount, rounded half up, so that refunds adding
    /// up to the whole payment give back exactly the whole commission).
    /// Unpaid: reversed. Paid: a negative entry for the next payout.
    pub fn refund(&self, refund: &RefundEvent, now_ms: u64) -> Result<Decided, RefundError> {
        if !validate_amount(refund.amount_minor) {
            return Err(RefundError::InvalidAmount(refund.amount_minor));
        }
        if refund.currency != self.config.currency {
            return Err(RefundError::WrongCurrency {
                expected: self.config.currency,
                given: refund.currency,
            });
        }
        if let Some(existing) = self.refunds.get(&refund.refund_id) {
            return if existing.payment_id == refund.payment_id
                && existing.amount == refund.amount_minor
                && existing
                    .stated_at_ms
                    .is_none_or(|at| at == refund.occurred_at_ms)
            {
                Ok(Decided::replay())
            } else {
                Err(RefundError::IdReused(refund.refund_id.clone()))
            };
        }
        let payment = self
            .payments
            .get(&refund.payment_id)
            .ok_or_else(|| RefundError::UnknownPayment(refund.payment_id.clone()))?;
        // At any age: see `check_not_ahead`. Before its payment only when
        // the platform said when the payment was (a payment from before
        // events carried their time is dated by its arrival).
        check_not_ahead(refund.occurred_at_ms, now_ms)?;
        if let Some(paid_at) = payment.stated_at_ms
            && refund.occurred_at_ms.saturating_add(EVENT_CLOCK_SKEW_MS) < paid_at
        {
            return Err(RefundError::BeforePayment {
                payment_id: refund.payment_id.clone(),
                paid_at: format_instant(paid_at),
                refunded_at: format_instant(refund.occurred_at_ms),
            });
        }
        // Both within 0..=MAX_AMOUNT: refunds never exceed their payment.
        let refundable = payment.amount.saturating_sub(payment.refunded);
        if refund.amount_minor > refundable {
            return Err(RefundError::ExceedsPayment {
                payment_id: refund.payment_id.clone(),
                refundable,
                amount: refund.amount_minor,
            });
        }
        let mut facts = vec![Fact::RefundReceived {
            refund_id: refund.refund_id.clone(),
            payment_id: refund.payment_id.clone(),
            amount_minor: refund.amount_minor,
            currency: refund.currency,
            occurred_at_ms: Some(refund.occurred_at_ms),
            at_ms: now_ms,
        }];
        let refunded = total(payment.refunded, refund.amount_minor)?;
        let mut next_entry = self.entries.len() as u64 + 1;
        for &entry_id in &payment.entries {
            let entry = self.entry(entry_id);
            let owed_back = share_of(entry.amount_minor, refunded, payment.amount);
            let taken_back = total(entry.reversed_minor, entry.clawed_back_minor)?;
            let delta = total(owed_back, -taken_back)?;
            if delta <= 0 {
                continue;
            }
            if entry.payout_id.is_none() {
                facts.push(Fact::CommissionReversed {
                    entry_id,
                    refund_id: refund.refund_id.clone(),
                    amount_minor: delta,
                    at_ms: now_ms,
                });
            } else {
                facts.push(Fact::ClawbackEntered {
                    entry_id: next_entry,
                    of_entry: entry_id,
                    affiliate_id: entry.affiliate_id.clone(),
                    refund_id: refund.refund_id.clone(),
                    amount_minor: -delta,
                    at_ms: now_ms,
                });
                next_entry += 1;
            }
        }
        if let Some(customer) = self.customers.get(&payment.user_id)
            && let Some(super::Referral {
                referrer: Referrer::Customer { .. },
                ..
            }) = &customer.referral
        {
            let spent_after = total(customer.spent, -refund.amount_minor)?;
            self.credit_reversals_due(
                &payment.user_id,
                spent_after,
                &refund.refund_id,
                now_ms,
                &mut facts,
            );
        }
        Ok(Decided::new(facts))
    }

    /// A fill on a device of `user_id`'s account: the first one of a
    /// referred user is recorded, and earns the bonus on their first payment
    /// if they have paid already. Later fills decide nothing.
    pub fn first_trade(&self, user_id: &str, device_id: &str, now_ms: u64) -> Decided {
        let Some(customer) = self.customers.get(user_id) else {
            return Decided::replay();
        };
        let Some(referral) = &customer.referral else {
            return Decided::replay();
        };
        if customer.first_trade || customer.blocked {
            return Decided::replay();
        }
        let mut facts = vec![Fact::FirstTrade {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            at_ms: now_ms,
        }];
        if let (Referrer::Affiliate { affiliate_id }, Some(payment_id)) =
            (&referral.referrer, &customer.first_payment)
        {
            let payment = &self.payments[payment_id];
            let entry_id = self.entries.len() as u64 + 1;
            if let Some(bonus) = self.earn(
                entry_id,
                affiliate_id,
                payment_id,
                user_id,
                CommissionKind::FirstTradeBonus,
                self.config.first_trade_bonus_rate,
                payment.amount,
                now_ms,
                now_ms,
            ) {
                // A payment already partly refunded gives its share of the
                // bonus back at once, as if the bonus had been there first.
                facts.push(bonus);
                let amount = commission(payment.amount, self.config.first_trade_bonus_rate);
                let owed_back = share_of(amount, payment.refunded, payment.amount);
                if let (true, Some(refund_id)) = (owed_back > 0, &payment.last_refund) {
                    facts.push(Fact::CommissionReversed {
                        entry_id,
                        refund_id: refund_id.clone(),
                        amount_minor: owed_back,
                        at_ms: now_ms,
                    });
                }
            }
        }
        Decided::new(facts)
    }

    /// How many payments were recorded (each id once).
    pub fn payment_count(&self) -> usize {
        self.payments.len()
    }
}
