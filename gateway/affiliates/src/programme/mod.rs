//! The sans-IO core: the programme's state, and for each operation a
//! `decide` that checks it against the state and says which [`Fact`]s it
//! adds, and one [`Programme::apply`] that folds a fact into the state.
//!
//! Nothing here reads a clock, a random source or a disk: `now`, ids, codes
//! and token hashes come in as arguments, so every rule can be tested with
//! plain values and every state rebuilt by replaying its facts.

use std::collections::{BTreeMap, HashMap};

use crate::calendar::{self, day_of};
use crate::code::ReferralCode;
use crate::config::{DAY_MS, ProgrammeConfig};
use crate::facts::{CommissionKind, CreditReason, Fact, Referrer};
use crate::money::{Currency, MAX_AMOUNT, Minor, commission, share_of};

/// What a decision added. An empty list with `replayed` set means the same
/// request was already applied: a retry, answered as the first time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    /// The facts to journal and apply, in order.
    pub facts: Vec<Fact>,
    /// The request repeats one already applied; nothing changes.
    pub replayed: bool,
}

impl Decided {
    fn new(facts: Vec<Fact>) -> Self {
        Self {
            facts,
            replayed: false,
        }
    }

    fn replay() -> Self {
        Self {
            facts: Vec::new(),
            replayed: true,
        }
    }
}

/// Who owns a referral code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeOwner {
    /// An affiliate (commission).
    Affiliate(String),
    /// A customer (referral credit).
    Customer(String),
}

/// An affiliate and the indexes its reads need.
#[derive(Debug, Clone)]
pub struct Affiliate {
    /// `af_…`.
    pub affiliate_id: String,
    /// The platform user.
    pub user_id: String,
    /// The referral code.
    pub code: ReferralCode,
    /// When they joined.
    pub enrolled_at_ms: u64,
    token_sha256: String,
    entries: Vec<u64>,
    clicks_by_day: BTreeMap<i64, u64>,
    signups_by_day: BTreeMap<i64, u64>,
    conversions_by_day: BTreeMap<i64, u64>,
}

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
    /// The payout that settled it.
    pub payout_id: Option<String>,
    /// When that payout was made.
    pub paid_at_ms: Option<u64>,
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
}

impl EntryStatus {
    /// The lower-case name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Payable => "payable",
            Self::Paid => "paid",
            Self::Reversed => "reversed",
        }
    }
}

impl Entry {
    /// Where the entry stands at `now`.
    pub fn status(&self, now_ms: u64) -> EntryStatus {
        if self.payout_id.is_some() {
            EntryStatus::Paid
        } else if matches!(self.kind, EntryKind::Clawback { .. }) {
            EntryStatus::Payable
        } else if self.amount_minor == self.reversed_minor {
            EntryStatus::Reversed
        } else if now_ms < self.payable_at_ms {
            EntryStatus::Pending
        } else {
            EntryStatus::Payable
        }
    }

    /// What is left of a commission after reversals; a clawback's amount.
    pub fn remaining_minor(&self) -> Minor {
        self.amount_minor - self.reversed_minor
    }
}

/// An affiliate's money, by where it stands. Always
/// `earned = pending + payable + paid + reversed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balances {
    /// Every commission ever earned.
    pub earned: Minor,
    /// In the holding period.
    pub pending: Minor,
    /// Due at the next payout, net of clawbacks not yet settled.
    pub payable: Minor,
    /// Paid out, net of clawbacks settled by later payouts.
    pub paid: Minor,
    /// Taken back by refunds, before or after payout.
    pub reversed: Minor,
}

impl Balances {
    fn add(&mut self, entry: &Entry, now_ms: u64) {
        match entry.kind {
            EntryKind::Commission { .. } => {
                self.earned += entry.amount_minor;
                self.reversed += entry.reversed_minor;
            }
            EntryKind::Clawback { .. } => self.reversed -= entry.amount_minor,
        }
        let remaining = entry.remaining_minor();
        match entry.status(now_ms) {
            EntryStatus::Pending => self.pending += remaining,
            EntryStatus::Payable => self.payable += remaining,
            EntryStatus::Paid => self.paid += remaining,
            EntryStatus::Reversed => {}
        }
    }
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

#[derive(Debug, Clone)]
struct Referral {
    referrer: Referrer,
    code: ReferralCode,
    credited: bool,
}

/// What the programme knows of a platform user as a referred customer.
#[derive(Debug, Clone, Default)]
struct Customer {
    referral: Option<Referral>,
    email_verified: bool,
    first_payment: Option<String>,
    first_trade: bool,
    /// Payments net of refunds.
    spent: Minor,
}

#[derive(Debug, Clone)]
struct Payment {
    user_id: String,
    amount: Minor,
    billing_period: u32,
    refunded: Minor,
    last_refund: Option<String>,
    /// Commissions that are shares of this payment.
    entries: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Refund {
    payment_id: String,
    amount: Minor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Payout {
    affiliate_id: String,
}

#[derive(Debug, Clone)]
struct Click {
    code: ReferralCode,
    at_ms: u64,
}

/// The whole programme's state.
#[derive(Debug, Clone)]
pub struct Programme {
    config: ProgrammeConfig,
    affiliates: HashMap<String, Affiliate>,
    affiliate_by_user: HashMap<String, String>,
    affiliate_by_token: HashMap<String, String>,
    codes: HashMap<ReferralCode, CodeOwner>,
    customer_codes: HashMap<String, ReferralCode>,
    clicks: HashMap<String, Click>,
    customers: HashMap<String, Customer>,
    payments: HashMap<String, Payment>,
    refunds: HashMap<String, Refund>,
    payouts: HashMap<String, Payout>,
    entries: Vec<Entry>,
    credits: Vec<CreditEntry>,
    credits_by_user: HashMap<String, Vec<u64>>,
    referrals_by_day: HashMap<(String, i64), u32>,
}

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

/// Why a customer could not get a referral code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerCodeError {
    /// The generated code is taken; draw another and retry.
    #[error("the generated referral code is taken")]
    Collision,
}

/// Why a signup was not attributed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralError {
    /// No affiliate or customer has this code.
    #[error("referral code {0} is not known")]
    UnknownCode(ReferralCode),
    /// The click id was never issued.
    #[error("click {0} is not known")]
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
    /// A user cannot refer themselves.
    #[error("user {0} cannot use their own referral code")]
    SelfReferral(String),
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
        "customer {user_id} has already referred {limit} customers today (UTC), the daily limit; try again after midnight UTC"
    )]
    DailyLimit {
        /// The referring customer.
        user_id: String,
        /// The limit.
        limit: u32,
    },
}

/// Why a payment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
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

/// Why a payout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutError {
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
    /// The id was used for another affiliate's payout.
    #[error("payout {0} was already made for another affiliate")]
    IdReused(String),
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
    /// Billing period, 1 for the first month.
    pub billing_period: u32,
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
}

fn validate_amount(amount: Minor) -> bool {
    (1..=MAX_AMOUNT).contains(&amount)
}

impl Programme {
    /// An empty programme with these rules.
    pub fn new(config: ProgrammeConfig) -> Self {
        Self {
            config,
            affiliates: HashMap::new(),
            affiliate_by_user: HashMap::new(),
            affiliate_by_token: HashMap::new(),
            codes: HashMap::new(),
            customer_codes: HashMap::new(),
            clicks: HashMap::new(),
            customers: HashMap::new(),
            payments: HashMap::new(),
            refunds: HashMap::new(),
            payouts: HashMap::new(),
            entries: Vec::new(),
            credits: Vec::new(),
            credits_by_user: HashMap::new(),
            referrals_by_day: HashMap::new(),
        }
    }

    /// The rules.
    pub fn config(&self) -> &ProgrammeConfig {
        &self.config
    }

    // ---- decisions -------------------------------------------------------

    /// `user_id` becomes affiliate `affiliate_id` with `code`; only the
    /// SHA-256 of their API token is kept.
    pub fn enrol_affiliate(
        &self,
        user_id: &str,
        affiliate_id: &str,
        code: ReferralCode,
        token_sha256: &str,
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

    /// A referral link was followed; `None` if no one has the code.
    pub fn click(
        &self,
        code: ReferralCode,
        click_id: &str,
        source_address: &str,
        user_agent: &str,
        now_ms: u64,
    ) -> Option<Decided> {
        self.codes.get(&code)?;
        Some(Decided::new(vec![Fact::Clicked {
            click_id: click_id.to_owned(),
            code,
            source_address: source_address.to_owned(),
            user_agent: user_agent.to_owned(),
            at_ms: now_ms,
        }]))
    }

    /// Attributes a signup to the code's owner. The first valid referral of
    /// a user stands; the same referral again is a replay.
    pub fn refer(&self, signup: &Signup, now_ms: u64) -> Result<Decided, ReferralError> {
        let owner = self
            .codes
            .get(&signup.code)
            .ok_or(ReferralError::UnknownCode(signup.code))?;
        let customer = self.customers.get(&signup.user_id);
        if let Some(referral) = customer.and_then(|c| c.referral.as_ref()) {
            return if referral.code == signup.code {
                Ok(Decided::replay())
            } else {
                Err(ReferralError::AlreadyReferred {
                    user_id: signup.user_id.clone(),
                    code: referral.code,
                })
            };
        }
        // Payments before the referral were decided without a referrer; a
        // referral now would earn a bonus and credits on unattributed money.
        if customer.is_some_and(|c| c.first_payment.is_some()) {
            return Err(ReferralError::PaidBeforeReferral(signup.user_id.clone()));
        }
        let referrer = match owner {
            CodeOwner::Affiliate(affiliate_id) => {
                if self.affiliates[affiliate_id].user_id == signup.user_id {
                    return Err(ReferralError::SelfReferral(signup.user_id.clone()));
                }
                Referrer::Affiliate {
                    affiliate_id: affiliate_id.clone(),
                }
            }
            CodeOwner::Customer(user_id) => {
                if *user_id == signup.user_id {
                    return Err(ReferralError::SelfReferral(signup.user_id.clone()));
                }
                Referrer::Customer {
                    user_id: user_id.clone(),
                }
            }
        };
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
            let age = now_ms.saturating_sub(click.at_ms);
            if age > self.config.attribution_window_ms {
                return Err(ReferralError::Expired {
                    code: signup.code,
                    age_days: age / DAY_MS,
                    window_days: self.config.attribution_window_ms / DAY_MS,
                });
            }
        }
        if let Referrer::Customer { user_id } = &referrer {
            let today = self
                .referrals_by_day
                .get(&(user_id.clone(), day_of(now_ms)))
                .copied()
                .unwrap_or(0);
            if today >= self.config.daily_referral_limit {
                return Err(ReferralError::DailyLimit {
                    user_id: user_id.clone(),
                    limit: self.config.daily_referral_limit,
                });
            }
        }
        Ok(Decided::new(vec![Fact::Referred {
            user_id: signup.user_id.clone(),
            referrer,
            code: signup.code,
            click_id: signup.click_id.clone(),
            source_address: signup.source_address.clone(),
            email_sha256: signup.email_sha256.clone(),
            email_verified: signup.email_verified,
            at_ms: now_ms,
        }]))
    }

    /// A user verified their email: may release referral credits.
    pub fn verify_email(&self, user_id: &str, now_ms: u64) -> Decided {
        let customer = self.customers.get(user_id);
        if customer.is_some_and(|c| c.email_verified) {
            return Decided::replay();
        }
        let mut facts = vec![Fact::EmailVerified {
            user_id: user_id.to_owned(),
            at_ms: now_ms,
        }];
        let spent = customer.map_or(0, |c| c.spent);
        self.credits_due(user_id, spent, true, now_ms, &mut facts);
        Decided::new(facts)
    }

    /// A subscription payment: commission for the referring affiliate (and
    /// the first-trade bonus, if the user traded before paying), or credit
    /// for a referring customer once the threshold is reached.
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
            {
                Ok(Decided::replay())
            } else {
                Err(PaymentError::IdReused(payment.payment_id.clone()))
            };
        }
        let mut facts = vec![Fact::PaymentReceived {
            payment_id: payment.payment_id.clone(),
            user_id: payment.user_id.clone(),
            amount_minor: payment.amount_minor,
            currency: payment.currency,
            billing_period: payment.billing_period,
            at_ms: now_ms,
        }];
        let customer = self.customers.get(&payment.user_id);
        let referrer = customer
            .and_then(|c| c.referral.as_ref())
            .map(|r| &r.referrer);
        match referrer {
            Some(Referrer::Affiliate { affiliate_id }) => {
                let rate = if payment.billing_period == 1 {
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
                        now_ms,
                    ));
                }
            }
            Some(Referrer::Customer { .. }) => {
                let customer = customer.expect("a referral belongs to a customer");
                self.credits_due(
                    &payment.user_id,
                    customer.spent + payment.amount_minor,
                    customer.email_verified,
                    now_ms,
                    &mut facts,
                );
            }
            None => {}
        }
        Ok(Decided::new(facts))
    }

    #[allow(clippy::too_many_arguments)]
    fn earn(
        &self,
        entry_id: u64,
        affiliate_id: &str,
        payment_id: &str,
        user_id: &str,
        kind: CommissionKind,
        rate: crate::money::Bps,
        base: Minor,
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
            payable_at_ms: now_ms.saturating_add(self.config.holding_period_ms),
            at_ms: now_ms,
        })
    }

    /// Credits for a customer-referred user whose net spend is `spent` and
    /// whose email is (or is about to be) `verified`, if both gates are
    /// open and no credit was granted for them yet.
    fn credits_due(
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
        let refundable = payment.amount - payment.refunded;
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
            at_ms: now_ms,
        }];
        let refunded = payment.refunded + refund.amount_minor;
        let mut next_entry = self.entries.len() as u64 + 1;
        for &entry_id in &payment.entries {
            let entry = self.entry(entry_id);
            let owed_back = share_of(entry.amount_minor, refunded, payment.amount);
            let delta = owed_back - entry.reversed_minor - entry.clawed_back_minor;
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
        if customer.first_trade {
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

    /// Pays every payable entry of an affiliate, clawbacks netted, if the
    /// net is positive. The same payout id again is a replay.
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
                amount += entry.remaining_minor();
            }
        }
        if amount <= 0 {
            let balances = self.balances(affiliate_id, now_ms).unwrap_or_default();
            return Err(PayoutError::NothingPayable {
                payable: balances.payable,
                pending: balances.pending,
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

    // ---- applying facts --------------------------------------------------

    /// Folds a decided (or replayed) fact into the state.
    pub fn apply(&mut self, fact: &Fact) {
        match fact {
            Fact::AffiliateEnrolled {
                affiliate_id,
                user_id,
                code,
                token_sha256,
                at_ms,
            } => {
                self.affiliate_by_user
                    .insert(user_id.clone(), affiliate_id.clone());
                self.affiliate_by_token
                    .insert(token_sha256.clone(), affiliate_id.clone());
                self.codes
                    .insert(*code, CodeOwner::Affiliate(affiliate_id.clone()));
                self.affiliates.insert(
                    affiliate_id.clone(),
                    Affiliate {
                        affiliate_id: affiliate_id.clone(),
                        user_id: user_id.clone(),
                        code: *code,
                        enrolled_at_ms: *at_ms,
                        token_sha256: token_sha256.clone(),
                        entries: Vec::new(),
                        clicks_by_day: BTreeMap::new(),
                        signups_by_day: BTreeMap::new(),
                        conversions_by_day: BTreeMap::new(),
                    },
                );
            }
            Fact::AffiliateTokenReplaced {
                affiliate_id,
                token_sha256,
                ..
            } => {
                if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                    self.affiliate_by_token.remove(&affiliate.token_sha256);
                    affiliate.token_sha256.clone_from(token_sha256);
                    self.affiliate_by_token
                        .insert(token_sha256.clone(), affiliate_id.clone());
                }
            }
            Fact::CustomerCodeIssued { user_id, code, .. } => {
                self.customer_codes.insert(user_id.clone(), *code);
                self.codes
                    .insert(*code, CodeOwner::Customer(user_id.clone()));
            }
            Fact::Clicked {
                click_id,
                code,
                at_ms,
                ..
            } => {
                self.clicks.insert(
                    click_id.clone(),
                    Click {
                        code: *code,
                        at_ms: *at_ms,
                    },
                );
                if let Some(CodeOwner::Affiliate(id)) = self.codes.get(code)
                    && let Some(affiliate) = self.affiliates.get_mut(id)
                {
                    *affiliate.clicks_by_day.entry(day_of(*at_ms)).or_default() += 1;
                }
            }
            Fact::Referred {
                user_id,
                referrer,
                code,
                email_verified,
                at_ms,
                ..
            } => {
                let customer = self.customers.entry(user_id.clone()).or_default();
                customer.referral = Some(Referral {
                    referrer: referrer.clone(),
                    code: *code,
                    credited: false,
                });
                customer.email_verified |= *email_verified;
                match referrer {
                    Referrer::Affiliate { affiliate_id } => {
                        if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                            *affiliate.signups_by_day.entry(day_of(*at_ms)).or_default() += 1;
                        }
                    }
                    Referrer::Customer { user_id } => {
                        *self
                            .referrals_by_day
                            .entry((user_id.clone(), day_of(*at_ms)))
                            .or_default() += 1;
                    }
                }
            }
            Fact::EmailVerified { user_id, .. } => {
                self.customers
                    .entry(user_id.clone())
                    .or_default()
                    .email_verified = true;
            }
            Fact::PaymentReceived {
                payment_id,
                user_id,
                amount_minor,
                billing_period,
                at_ms,
                ..
            } => {
                self.payments.insert(
                    payment_id.clone(),
                    Payment {
                        user_id: user_id.clone(),
                        amount: *amount_minor,
                        billing_period: *billing_period,
                        refunded: 0,
                        last_refund: None,
                        entries: Vec::new(),
                    },
                );
                let customer = self.customers.entry(user_id.clone()).or_default();
                customer.spent += amount_minor;
                if customer.first_payment.is_none() {
                    customer.first_payment = Some(payment_id.clone());
                    if let Some(Referral {
                        referrer: Referrer::Affiliate { affiliate_id },
                        ..
                    }) = &customer.referral
                        && let Some(affiliate) = self.affiliates.get_mut(affiliate_id)
                    {
                        *affiliate
                            .conversions_by_day
                            .entry(day_of(*at_ms))
                            .or_default() += 1;
                    }
                }
            }
            Fact::RefundReceived {
                refund_id,
                payment_id,
                amount_minor,
                ..
            } => {
                self.refunds.insert(
                    refund_id.clone(),
                    Refund {
                        payment_id: payment_id.clone(),
                        amount: *amount_minor,
                    },
                );
                if let Some(payment) = self.payments.get_mut(payment_id) {
                    payment.refunded += amount_minor;
                    payment.last_refund = Some(refund_id.clone());
                    if let Some(customer) = self.customers.get_mut(&payment.user_id) {
                        customer.spent -= amount_minor;
                    }
                }
            }
            Fact::FirstTrade { user_id, .. } => {
                self.customers
                    .entry(user_id.clone())
                    .or_default()
                    .first_trade = true;
            }
            Fact::CommissionEarned {
                entry_id,
                affiliate_id,
                user_id,
                payment_id,
                kind,
                rate,
                base_minor,
                amount_minor,
                payable_at_ms,
                at_ms,
            } => {
                self.push_entry(Entry {
                    entry_id: *entry_id,
                    affiliate_id: affiliate_id.clone(),
                    user_id: user_id.clone(),
                    payment_id: payment_id.clone(),
                    kind: EntryKind::Commission {
                        kind: *kind,
                        rate_bps: rate.0,
                        base_minor: *base_minor,
                    },
                    amount_minor: *amount_minor,
                    reversed_minor: 0,
                    clawed_back_minor: 0,
                    created_at_ms: *at_ms,
                    earned_at_ms: *at_ms,
                    payable_at_ms: *payable_at_ms,
                    payout_id: None,
                    paid_at_ms: None,
                });
                if let Some(payment) = self.payments.get_mut(payment_id) {
                    payment.entries.push(*entry_id);
                }
            }
            Fact::CommissionReversed {
                entry_id,
                amount_minor,
                ..
            } => {
                if let Some(entry) = self.entry_mut(*entry_id) {
                    entry.reversed_minor += amount_minor;
                }
            }
            Fact::ClawbackEntered {
                entry_id,
                of_entry,
                affiliate_id,
                refund_id,
                amount_minor,
                at_ms,
            } => {
                let Some(original) = self.entry_mut(*of_entry) else {
                    return;
                };
                original.clawed_back_minor -= amount_minor;
                let (user_id, payment_id, earned_at_ms) = (
                    original.user_id.clone(),
                    original.payment_id.clone(),
                    original.earned_at_ms,
                );
                self.push_entry(Entry {
                    entry_id: *entry_id,
                    affiliate_id: affiliate_id.clone(),
                    user_id,
                    payment_id,
                    kind: EntryKind::Clawback {
                        of_entry: *of_entry,
                        refund_id: refund_id.clone(),
                    },
                    amount_minor: *amount_minor,
                    reversed_minor: 0,
                    clawed_back_minor: 0,
                    created_at_ms: *at_ms,
                    earned_at_ms,
                    payable_at_ms: *at_ms,
                    payout_id: None,
                    paid_at_ms: None,
                });
            }
            Fact::PayoutMade {
                payout_id,
                affiliate_id,
                entries,
                at_ms,
                ..
            } => {
                self.payouts.insert(
                    payout_id.clone(),
                    Payout {
                        affiliate_id: affiliate_id.clone(),
                    },
                );
                for entry_id in entries {
                    if let Some(entry) = self.entry_mut(*entry_id) {
                        entry.payout_id = Some(payout_id.clone());
                        entry.paid_at_ms = Some(*at_ms);
                    }
                }
            }
            Fact::CreditGranted {
                credit_id,
                user_id,
                amount_minor,
                reason,
                referred_user_id,
                at_ms,
            } => {
                self.credits.push(CreditEntry {
                    credit_id: *credit_id,
                    user_id: user_id.clone(),
                    amount_minor: *amount_minor,
                    reason: *reason,
                    referred_user_id: referred_user_id.clone(),
                    at_ms: *at_ms,
                });
                self.credits_by_user
                    .entry(user_id.clone())
                    .or_default()
                    .push(*credit_id);
                if let Some(referral) = self
                    .customers
                    .get_mut(referred_user_id)
                    .and_then(|c| c.referral.as_mut())
                {
                    referral.credited = true;
                }
            }
        }
    }

    fn push_entry(&mut self, entry: Entry) {
        debug_assert_eq!(entry.entry_id, self.entries.len() as u64 + 1);
        if let Some(affiliate) = self.affiliates.get_mut(&entry.affiliate_id) {
            affiliate.entries.push(entry.entry_id);
        }
        self.entries.push(entry);
    }

    fn entry(&self, entry_id: u64) -> &Entry {
        &self.entries[(entry_id - 1) as usize]
    }

    fn entry_mut(&mut self, entry_id: u64) -> Option<&mut Entry> {
        self.entries.get_mut(entry_id.checked_sub(1)? as usize)
    }

    // ---- reading ---------------------------------------------------------

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

    /// Every affiliate id, in no particular order.
    pub fn affiliate_ids(&self) -> impl Iterator<Item = &str> {
        self.affiliates.keys().map(String::as_str)
    }

    /// A customer's referral code, if they have one.
    pub fn customer_code(&self, user_id: &str) -> Option<ReferralCode> {
        self.customer_codes.get(user_id).copied()
    }

    /// An affiliate's ledger, oldest first.
    pub fn entries_of(&self, affiliate_id: &str) -> impl Iterator<Item = &Entry> {
        self.affiliates
            .get(affiliate_id)
            .into_iter()
            .flat_map(|a| a.entries.iter().map(|&id| self.entry(id)))
    }

    /// An affiliate's balances at `now`.
    pub fn balances(&self, affiliate_id: &str, now_ms: u64) -> Option<Balances> {
        self.affiliates.get(affiliate_id)?;
        let mut balances = Balances::default();
        for entry in self.entries_of(affiliate_id) {
            balances.add(entry, now_ms);
        }
        Some(balances)
    }

    /// A customer's credit ledger, oldest first.
    pub fn credits_of(&self, user_id: &str) -> impl Iterator<Item = &CreditEntry> {
        self.credits_by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .map(|&id| &self.credits[(id - 1) as usize])
    }

    /// How many payments were recorded (each id once).
    pub fn payment_count(&self) -> usize {
        self.payments.len()
    }

    /// Every credit ever granted.
    pub fn all_credits(&self) -> &[CreditEntry] {
        &self.credits
    }

    /// An affiliate's stats over `[from_day, to_day]`, by day or by month,
    /// at `now`. Earnings are by the period the commission was earned in:
    /// of what was earned then, how much is pending, payable, paid or
    /// reversed now.
    pub fn stats(
        &self,
        affiliate_id: &str,
        granularity: Granularity,
        from_day: i64,
        to_day: i64,
        now_ms: u64,
    ) -> Option<Stats> {
        let affiliate = self.affiliates.get(affiliate_id)?;
        let period_of = |day: i64| match granularity {
            Granularity::Day => day,
            Granularity::Month => calendar::month_start(day),
        };
        let mut periods: BTreeMap<i64, PeriodStats> = BTreeMap::new();
        let mut day = period_of(from_day);
        while day <= to_day {
            periods.insert(day, PeriodStats::default());
            day = match granularity {
                Granularity::Day => day + 1,
                Granularity::Month => calendar::month_start(day + 31),
            };
        }
        let mut totals = PeriodStats::default();
        let in_range = |day: i64| (from_day..=to_day).contains(&day);
        type Count = fn(&mut PeriodStats, u64);
        let counters: [(&BTreeMap<i64, u64>, Count); 3] = [
            (&affiliate.clicks_by_day, |s, n| s.clicks += n),
            (&affiliate.signups_by_day, |s, n| s.signups += n),
            (&affiliate.conversions_by_day, |s, n| s.conversions += n),
        ];
        for (by_day, count) in counters {
            for (&day, &n) in by_day.range(from_day..=to_day) {
                if let Some(stats) = periods.get_mut(&period_of(day)) {
                    count(stats, n);
                }
                count(&mut totals, n);
            }
        }
        for entry in self.entries_of(affiliate_id) {
            let day = day_of(entry.earned_at_ms);
            if !in_range(day) {
                continue;
            }
            if let Some(stats) = periods.get_mut(&period_of(day)) {
                stats.earnings.add(entry, now_ms);
            }
            totals.earnings.add(entry, now_ms);
        }
        let label = |day: i64| match granularity {
            Granularity::Day => calendar::format_date(day),
            Granularity::Month => calendar::format_date(day)[..7].to_owned(),
        };
        Some(Stats {
            currency: self.config.currency,
            totals: totals.with_rate(),
            periods: periods
                .into_iter()
                .map(|(day, stats)| (label(day), stats.with_rate()))
                .collect(),
        })
    }
}

/// How stats are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// By UTC day.
    Day,
    /// By UTC calendar month.
    Month,
}

/// An affiliate's activity and earnings in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodStats {
    /// Referral links followed.
    pub clicks: u64,
    /// Signups attributed.
    pub signups: u64,
    /// Referred users' first payments.
    pub conversions: u64,
    /// `conversions / signups` in basis points, rounded down (0 without
    /// signups).
    pub conversion_rate_bps: u32,
    /// Commissions earned in the period, by where they stand now.
    pub earnings: Balances,
}

impl PeriodStats {
    fn with_rate(mut self) -> Self {
        self.conversion_rate_bps = self
            .conversions
            .saturating_mul(10_000)
            .checked_div(self.signups)
            .map_or(0, |rate| rate.min(u64::from(u32::MAX)) as u32);
        self
    }
}

/// An affiliate's stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The programme's currency.
    pub currency: Currency,
    /// The whole range.
    pub totals: PeriodStats,
    /// Each period (`YYYY-MM-DD` or `YYYY-MM`), in order.
    pub periods: Vec<(String, PeriodStats)>,
}
