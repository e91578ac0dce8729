//! The sans-IO core: the programme's state, and for each operation a
//! `decide` that checks it against the state and says which [`Fact`]s it
//! adds, and one [`Programme::apply`] that folds a fact into the state.
//!
//! Nothing here reads a clock, a random source or a disk: `now`, ids, codes
//! and token hashes come in as arguments, so every rule can be tested with
//! plain values and every state rebuilt by replaying its facts.
//!
//! This file holds the state, the types the operations share and the one
//! fold, so that what a fact does to the state reads in one place. The
//! decisions sit beside it by concern (enrolment and clicks, attribution,
//! payments and refunds, payouts, customer credits), with the reads of the
//! commission ledger and of stats.

mod adjustments;
mod attribution;
mod commissions;
mod credits;
mod devices;
mod enrolment;
mod event_time;
mod fraud;
mod payments;
mod payouts;
mod stats;
mod trades;

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::calendar::day_of;
use crate::code::ReferralCode;
use crate::config::ProgrammeConfig;
use crate::facts::{CaseDecision, CommissionKind, Fact, Referrer};
use crate::money::Minor;

// Every type keeps the path it had when this was one file:
// `eagate_affiliates::programme::X`.
pub use adjustments::AdjustmentError;
pub use attribution::{ReferralError, Signup};
pub use commissions::{Balances, Entry, EntryKind, EntryStatus};
pub use credits::{
    CreditBalance, CreditEntry, CreditKind, CreditSpendError, CreditStatus, CustomerCodeError,
};
pub use devices::ObservedDevice;
pub use enrolment::{AffiliateIdentity, EnrolError, MAX_ADDRESSES_SEEN};
pub use event_time::EventTimeError;
pub use fraud::{Case, CaseError, Decision};
pub use payments::{PaymentError, PaymentEvent, RefundError, RefundEvent};
pub use payouts::{
    BatchRecord, PayoutAccountError, PayoutError, PayoutOutcome, PayoutRecord, PayoutState,
    SettleError,
};
pub use stats::{Granularity, PeriodStats, Stats};
pub use trades::{
    BustError, CountedFill, TierStatus, TradeFill, TradeReversal, fill_reference, month_text,
};

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
    /// Their email hash and enrolment address, if the platform gave them.
    email_sha256: Option<String>,
    source_address: Option<String>,
    /// Addresses they called the API from (at most
    /// [`enrolment::MAX_ADDRESSES_SEEN`]).
    addresses_seen: std::collections::HashSet<String>,
    entries: Vec<u64>,
    /// Their Stripe connected account, for the `stripe` provider.
    stripe_account: Option<String>,
    /// Every commission ever earned: bounded by [`MAX_TOTAL`](crate::money::MAX_TOTAL) when decided.
    earned: Minor,
    clicks_by_day: BTreeMap<i64, u64>,
    signups_by_day: BTreeMap<i64, u64>,
    conversions_by_day: BTreeMap<i64, u64>,
    /// Referred customers' first fills, by the fill's day.
    first_trades_by_day: BTreeMap<i64, u64>,
}

#[derive(Debug, Clone)]
struct Referral {
    referrer: Referrer,
    code: ReferralCode,
    credited: bool,
    /// The platform's time of the signup, if the fact has one (retries must
    /// repeat it).
    stated_at_ms: Option<u64>,
}

/// What the programme knows of a platform user as a referred customer.
#[derive(Debug, Clone, Default)]
struct Customer {
    referral: Option<Referral>,
    email_verified: bool,
    first_payment: Option<String>,
    /// The earliest `occurred_at` of their payments: their first month of
    /// subscription starts here.
    first_paid_at_ms: Option<u64>,
    /// The latest `occurred_at` of their payments: their credits' holding
    /// period runs from here.
    last_paid_at_ms: Option<u64>,
    first_trade: bool,
    /// Payments net of refunds.
    spent: Minor,
    /// An open case holds their commissions.
    held_by: Option<u64>,
    /// A confirmed case blocked their referral: they earn nothing more.
    blocked: bool,
}

#[derive(Debug, Clone)]
struct Payment {
    user_id: String,
    amount: Minor,
    /// When it was taken, if the fact says (facts written before events
    /// carried their time do not): retries must repeat it.
    stated_at_ms: Option<u64>,
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
    /// The platform's time, if the fact has one (retries must repeat it).
    stated_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Payout {
    /// 1, 2, 3, … in the order payouts were made.
    seq: u64,
    affiliate_id: String,
    amount: Minor,
    entries: Vec<u64>,
    at_ms: u64,
    /// The batch it was made in; none for one recorded by hand.
    batch_id: Option<String>,
    destination: Option<String>,
    state: PayoutState,
    idempotency_key: Option<String>,
    /// The provider's reference once paid.
    reference: Option<String>,
    /// Why it failed, or what left it to reconcile.
    detail: Option<String>,
    /// When it was paid or failed.
    settled_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Batch {
    batch_id: String,
    provider: crate::facts::PayoutProvider,
    scheduled_day: Option<i64>,
    at_ms: u64,
    payouts: Vec<String>,
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
    /// Clicks by id, kept for [`ProgrammeConfig::click_retention_ms`].
    clicks: HashMap<String, Click>,
    /// Click ids oldest first, to let go of clicks past their retention.
    click_order: VecDeque<(u64, String)>,
    /// The latest counted click per (source address, code), to count a
    /// repeat within the dedupe interval once.
    recent_clicks: HashMap<(String, ReferralCode), (String, u64)>,
    recent_order: VecDeque<(u64, String, ReferralCode)>,
    customers: HashMap<String, Customer>,
    payments: HashMap<String, Payment>,
    refunds: HashMap<String, Refund>,
    payouts: HashMap<String, Payout>,
    /// Payout ids in the order they were made.
    payout_order: Vec<String>,
    /// Payout batches, oldest first.
    batches: Vec<Batch>,
    /// Affiliate ids in the order they enrolled.
    affiliate_order: Vec<String>,
    adjustments: HashMap<String, adjustments::Adjustment>,
    entries: Vec<Entry>,
    credits: Vec<CreditEntry>,
    credits_by_user: HashMap<String, Vec<u64>>,
    /// Grants by the referred customer whose spend earned them.
    grants_for: HashMap<String, Vec<u64>>,
    spends: HashMap<String, credits::Spend>,
    referrals_by_day: HashMap<(String, i64), u32>,
    /// Fraud cases, oldest first.
    cases: Vec<fraud::Case>,
    /// Signup times per source address, for the shared-address check.
    signups_by_address: fraud::SignupsByAddress,
    /// (arrival, address) of each signup, oldest first: addresses with no
    /// signup recent enough to be asked about are let go of.
    signup_order: VecDeque<(u64, String)>,
    trades: fraud::Trades,
    trades_counted: fraud::TradesCounted,
    /// The latest UTC day a trade was counted on.
    trades_day: i64,
    /// Fills counted for per-trade commissions, by (device, sequence):
    /// each earns once.
    // Ordered, so a device's fills are one range (a reversal looks there).
    trade_fills: BTreeMap<(String, u64), trades::CountedFill>,
    /// Reversals devices reported, by (device, report sequence): the
    /// signal (hex) and ticket whose earlier fills they undo.
    trade_reversals: BTreeMap<(String, u64), (String, u64)>,
    /// Per-trade commission entries by their fill's reference.
    trade_entries: HashMap<String, u64>,
    /// Each affiliate's referred trading per month (first day), for tiers.
    trade_activity: HashMap<(String, i64), trades::Activity>,
    /// Tiers fixed per (affiliate, month).
    tiers_set: HashMap<(String, i64), trades::TierChoice>,
    /// Devices the journal has seen in the registry.
    devices: HashMap<String, devices::KnownDevice>,
    /// The latest decision time folded in: decisions never look at the
    /// programme from before it (a request that read the clock, then waited
    /// for the journal's lock behind a later one, sees the later state).
    latest_at_ms: u64,
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
            click_order: VecDeque::new(),
            recent_clicks: HashMap::new(),
            recent_order: VecDeque::new(),
            customers: HashMap::new(),
            payments: HashMap::new(),
            refunds: HashMap::new(),
            payouts: HashMap::new(),
            payout_order: Vec::new(),
            batches: Vec::new(),
            affiliate_order: Vec::new(),
            adjustments: HashMap::new(),
            entries: Vec::new(),
            credits: Vec::new(),
            credits_by_user: HashMap::new(),
            grants_for: HashMap::new(),
            spends: HashMap::new(),
            referrals_by_day: HashMap::new(),
            cases: Vec::new(),
            signups_by_address: HashMap::new(),
            signup_order: VecDeque::new(),
            trades: HashMap::new(),
            trades_counted: HashMap::new(),
            trades_day: i64::MIN,
            trade_fills: BTreeMap::new(),
            trade_reversals: BTreeMap::new(),
            trade_entries: HashMap::new(),
            trade_activity: HashMap::new(),
            tiers_set: HashMap::new(),
            devices: HashMap::new(),
            latest_at_ms: 0,
        }
    }

    /// `now_ms`, or the latest decision time already folded in if that is
    /// later: what a decision that depends on where money stands at a
    /// moment must use, so that a request that waited behind a later one
    /// cannot undo what the later one saw (a grant seen available and
    /// spent must not look pending to a refund decided after it).
    fn not_before_latest(&self, now_ms: u64) -> u64 {
        now_ms.max(self.latest_at_ms)
    }

    /// The rules.
    pub fn config(&self) -> &ProgrammeConfig {
        &self.config
    }

    /// Folds a decided (or replayed) fact into the state.
    ///
    /// Its sums saturate rather than wrap: each decision already refused
    /// any event that would take a running total past
    /// [`MAX_TOTAL`](crate::money::MAX_TOTAL), so they never reach the
    /// ends of `i64`; saturating keeps even a damaged journal from turning
    /// a total's sign.
    pub fn apply(&mut self, fact: &Fact) {
        self.latest_at_ms = self.latest_at_ms.max(fact.at_ms());
        match fact {
            Fact::AffiliateEnrolled {
                affiliate_id,
                user_id,
                code,
                token_sha256,
                email_sha256,
                source_address,
                at_ms,
            } => {
                self.affiliate_order.push(affiliate_id.clone());
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
                        email_sha256: email_sha256.clone(),
                        source_address: source_address.clone(),
                        addresses_seen: Default::default(),
                        entries: Vec::new(),
                        stripe_account: None,
                        earned: 0,
                        clicks_by_day: BTreeMap::new(),
                        signups_by_day: BTreeMap::new(),
                        conversions_by_day: BTreeMap::new(),
                        first_trades_by_day: BTreeMap::new(),
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
            Fact::AffiliateAddressSeen {
                affiliate_id,
                source_address,
                ..
            } => {
                if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                    affiliate.addresses_seen.insert(source_address.clone());
                }
            }
            Fact::TradeFilled { .. } => self.apply_trade_filled(fact),
            Fact::DeviceRegistered { .. }
            | Fact::DeviceSecretReplaced { .. }
            | Fact::DeviceRevoked { .. } => self.apply_device(fact),
            Fact::TierSet {
                affiliate_id,
                month,
                tier,
                rate,
                measure,
                ..
            } => {
                self.tiers_set.insert(
                    (affiliate_id.clone(), *month),
                    trades::TierChoice {
                        tier: *tier,
                        rate: *rate,
                        measure: *measure,
                    },
                );
            }
            Fact::TradeBusted { device_id, seq, .. } => {
                self.apply_trade_busted(device_id, *seq);
            }
            Fact::TradeReversalReported {
                device_id,
                seq,
                signal_id,
                ticket,
                ..
            } => {
                self.trade_reversals
                    .insert((device_id.clone(), *seq), (signal_id.clone(), *ticket));
            }
            // A record for the audit trail: the link lives in the
            // console's memory, not in the programme.
            Fact::SignInLinkIssued { .. } => {}
            Fact::CustomerCodeIssued { user_id, code, .. } => {
                self.customer_codes.insert(user_id.clone(), *code);
                self.codes
                    .insert(*code, CodeOwner::Customer(user_id.clone()));
            }
            Fact::Clicked {
                click_id,
                code,
                source_address,
                at_ms,
                ..
            } => {
                self.forget_clicks_before(*at_ms);
                self.clicks.insert(
                    click_id.clone(),
                    Click {
                        code: *code,
                        at_ms: *at_ms,
                    },
                );
                self.click_order.push_back((*at_ms, click_id.clone()));
                self.recent_clicks
                    .insert((source_address.clone(), *code), (click_id.clone(), *at_ms));
                self.recent_order
                    .push_back((*at_ms, source_address.clone(), *code));
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
                source_address,
                occurred_at_ms,
                at_ms,
                ..
            } => {
                let signed_up_at = occurred_at_ms.unwrap_or(*at_ms);
                let day = day_of(signed_up_at);
                // Only the window around a signup is ever asked about, and
                // signups are at most the age limit late: keep that much.
                let keep = self
                    .config
                    .shared_address_window_ms
                    .saturating_add(self.config.click_retention_ms());
                self.forget_signups_before(at_ms.saturating_sub(keep));
                let times = self
                    .signups_by_address
                    .entry(source_address.clone())
                    .or_default();
                times.retain(|&t| t >= signed_up_at.saturating_sub(keep));
                times.push_back(signed_up_at);
                self.signup_order
                    .push_back((*at_ms, source_address.clone()));
                let customer = self.customers.entry(user_id.clone()).or_default();
                customer.referral = Some(Referral {
                    referrer: referrer.clone(),
                    code: *code,
                    credited: false,
                    stated_at_ms: *occurred_at_ms,
                });
                customer.email_verified |= *email_verified;
                match referrer {
                    Referrer::Affiliate { affiliate_id } => {
                        if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                            *affiliate.signups_by_day.entry(day).or_default() += 1;
                        }
                    }
                    Referrer::Customer { user_id } => {
                        *self
                            .referrals_by_day
                            .entry((user_id.clone(), day))
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
                occurred_at_ms: stated_at_ms,
                at_ms,
                ..
            } => {
                let occurred_at_ms = stated_at_ms.unwrap_or(*at_ms);
                self.payments.insert(
                    payment_id.clone(),
                    Payment {
                        user_id: user_id.clone(),
                        amount: *amount_minor,
                        stated_at_ms: *stated_at_ms,
                        billing_period: *billing_period,
                        refunded: 0,
                        last_refund: None,
                        entries: Vec::new(),
                    },
                );
                let customer = self.customers.entry(user_id.clone()).or_default();
                customer.spent = customer.spent.saturating_add(*amount_minor);
                // A conversion counts on the day of the customer's earliest
                // payment: it moves when an earlier one arrives late.
                let earlier = customer.first_paid_at_ms;
                let first = earlier.map_or(occurred_at_ms, |at| at.min(occurred_at_ms));
                customer.first_paid_at_ms = Some(first);
                customer.last_paid_at_ms = Some(
                    customer
                        .last_paid_at_ms
                        .map_or(occurred_at_ms, |at| at.max(occurred_at_ms)),
                );
                if customer.first_payment.is_none() {
                    customer.first_payment = Some(payment_id.clone());
                }
                if earlier != Some(first)
                    && let Some(Referral {
                        referrer: Referrer::Affiliate { affiliate_id },
                        ..
                    }) = &customer.referral
                    && let Some(affiliate) = self.affiliates.get_mut(affiliate_id)
                {
                    let by_day = &mut affiliate.conversions_by_day;
                    if let Some(count) = earlier.and_then(|at| by_day.get_mut(&day_of(at))) {
                        *count = count.saturating_sub(1);
                    }
                    *by_day.entry(day_of(first)).or_default() += 1;
                }
            }
            Fact::RefundReceived {
                refund_id,
                payment_id,
                amount_minor,
                occurred_at_ms,
                ..
            } => {
                self.refunds.insert(
                    refund_id.clone(),
                    Refund {
                        payment_id: payment_id.clone(),
                        amount: *amount_minor,
                        stated_at_ms: *occurred_at_ms,
                    },
                );
                if let Some(payment) = self.payments.get_mut(payment_id) {
                    payment.refunded = payment.refunded.saturating_add(*amount_minor);
                    payment.last_refund = Some(refund_id.clone());
                    if let Some(customer) = self.customers.get_mut(&payment.user_id) {
                        customer.spent = customer.spent.saturating_sub(*amount_minor);
                    }
                }
            }
            Fact::FirstTrade { user_id, at_ms, .. } => {
                let customer = self.customers.entry(user_id.clone()).or_default();
                customer.first_trade = true;
                if let Some(Referral {
                    referrer: Referrer::Affiliate { affiliate_id },
                    ..
                }) = &customer.referral
                    && let Some(affiliate) = self.affiliates.get_mut(affiliate_id)
                {
                    *affiliate
                        .first_trades_by_day
                        .entry(day_of(*at_ms))
                        .or_default() += 1;
                }
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
                earned_at_ms,
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
                    earned_at_ms: earned_at_ms.unwrap_or(*at_ms),
                    payable_at_ms: *payable_at_ms,
                    payout_id: None,
                    paid_at_ms: None,
                    held_by: self.customers.get(user_id).and_then(|c| c.held_by),
                });
                // A trade commission's reference is its fill's, never a
                // payment's, even one the platform named alike: a refund
                // must not reach it.
                if let CommissionKind::Trade { .. } = kind {
                    self.trade_entries.insert(payment_id.clone(), *entry_id);
                } else if let Some(payment) = self.payments.get_mut(payment_id) {
                    payment.entries.push(*entry_id);
                }
                if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                    affiliate.earned = affiliate.earned.saturating_add(*amount_minor);
                }
            }
            Fact::CommissionReversed {
                entry_id,
                amount_minor,
                ..
            } => {
                if let Some(entry) = self.entry_mut(*entry_id) {
                    entry.reversed_minor = entry.reversed_minor.saturating_add(*amount_minor);
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
                original.clawed_back_minor =
                    original.clawed_back_minor.saturating_sub(*amount_minor);
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
                    held_by: None,
                });
            }
            Fact::PayoutMade {
                payout_id,
                affiliate_id,
                amount_minor,
                entries,
                at_ms,
            } => {
                self.record_payout(
                    payout_id,
                    affiliate_id,
                    *amount_minor,
                    entries,
                    *at_ms,
                    PayoutState::Paid,
                );
                for entry_id in entries {
                    if let Some(entry) = self.entry_mut(*entry_id) {
                        entry.payout_id = Some(payout_id.clone());
                        entry.paid_at_ms = Some(*at_ms);
                    }
                }
            }
            Fact::PayoutBatchOpened {
                batch_id,
                provider,
                scheduled_day,
                at_ms,
            } => self.batches.push(Batch {
                batch_id: batch_id.clone(),
                provider: *provider,
                scheduled_day: *scheduled_day,
                at_ms: *at_ms,
                payouts: Vec::new(),
            }),
            Fact::PayoutPending {
                payout_id,
                batch_id,
                affiliate_id,
                amount_minor,
                entries,
                destination,
                at_ms,
            } => {
                let payout = self.record_payout(
                    payout_id,
                    affiliate_id,
                    *amount_minor,
                    entries,
                    *at_ms,
                    PayoutState::Pending,
                );
                payout.batch_id = Some(batch_id.clone());
                payout.destination.clone_from(destination);
                if let Some(batch) = self
                    .batches
                    .iter_mut()
                    .rev()
                    .find(|b| b.batch_id == *batch_id)
                {
                    batch.payouts.push(payout_id.clone());
                }
                // Tied, not paid: paid_at_ms stays empty until the money
                // has arrived.
                for entry_id in entries {
                    if let Some(entry) = self.entry_mut(*entry_id) {
                        entry.payout_id = Some(payout_id.clone());
                    }
                }
            }
            Fact::PayoutSubmitted {
                payout_id,
                idempotency_key,
                ..
            } => {
                if let Some(payout) = self.payouts.get_mut(payout_id) {
                    payout.state = PayoutState::Submitted;
                    payout.idempotency_key = Some(idempotency_key.clone());
                }
            }
            Fact::PayoutNeedsReconciliation {
                payout_id, detail, ..
            } => {
                if let Some(payout) = self.payouts.get_mut(payout_id) {
                    payout.state = PayoutState::NeedsReconciliation;
                    payout.detail = Some(detail.clone());
                }
            }
            Fact::PayoutPaid {
                payout_id,
                reference,
                at_ms,
            } => {
                let Some(payout) = self.payouts.get_mut(payout_id) else {
                    return;
                };
                payout.state = PayoutState::Paid;
                payout.reference = Some(reference.clone());
                payout.detail = None;
                payout.settled_at_ms = Some(*at_ms);
                let entries = payout.entries.clone();
                for entry_id in entries {
                    if let Some(entry) = self.entry_mut(entry_id) {
                        entry.paid_at_ms = Some(*at_ms);
                    }
                }
            }
            Fact::PayoutFailed {
                payout_id,
                reason,
                at_ms,
            } => {
                let Some(payout) = self.payouts.get_mut(payout_id) else {
                    return;
                };
                payout.state = PayoutState::Failed;
                payout.detail = Some(reason.clone());
                payout.settled_at_ms = Some(*at_ms);
                let entries = payout.entries.clone();
                // Back to payable: the next batch pays them. A commission
                // whose customer a fraud case holds now is held with the
                // rest of theirs.
                for entry_id in entries {
                    let Some(entry) = self.entries.get(entry_id.saturating_sub(1) as usize) else {
                        continue;
                    };
                    let holding = match entry.kind {
                        EntryKind::Commission { .. } => {
                            self.customers.get(&entry.user_id).and_then(|c| c.held_by)
                        }
                        _ => None,
                    };
                    if let Some(entry) = self.entry_mut(entry_id)
                        && entry.payout_id.as_deref() == Some(payout_id.as_str())
                    {
                        entry.payout_id = None;
                        entry.paid_at_ms = None;
                        entry.held_by = entry.held_by.or(holding);
                    }
                }
            }
            Fact::PayoutAccountSet {
                affiliate_id,
                stripe_account,
                ..
            } => {
                if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                    affiliate.stripe_account = Some(stripe_account.clone());
                }
            }
            Fact::AdjustmentEntered {
                entry_id,
                adjustment_id,
                affiliate_id,
                amount_minor,
                reason,
                at_ms,
            } => {
                self.adjustments.insert(
                    adjustment_id.clone(),
                    adjustments::Adjustment {
                        affiliate_id: affiliate_id.clone(),
                        amount: *amount_minor,
                        reason: reason.clone(),
                    },
                );
                self.push_entry(Entry {
                    entry_id: *entry_id,
                    affiliate_id: affiliate_id.clone(),
                    user_id: String::new(),
                    payment_id: String::new(),
                    kind: EntryKind::Adjustment {
                        adjustment_id: adjustment_id.clone(),
                        reason: reason.clone(),
                    },
                    amount_minor: *amount_minor,
                    reversed_minor: 0,
                    clawed_back_minor: 0,
                    created_at_ms: *at_ms,
                    earned_at_ms: *at_ms,
                    payable_at_ms: *at_ms,
                    payout_id: None,
                    paid_at_ms: None,
                    held_by: None,
                });
                if let Some(affiliate) = self.affiliates.get_mut(affiliate_id) {
                    affiliate.earned = affiliate.earned.saturating_add(*amount_minor);
                }
            }
            Fact::CaseOpened {
                case_id,
                kind,
                user_id,
                referrer,
                evidence,
                refused,
                at_ms,
            } => {
                self.cases.push(fraud::Case {
                    case_id: *case_id,
                    kind: *kind,
                    user_id: user_id.clone(),
                    referrer: referrer.clone(),
                    evidence: evidence.clone(),
                    refused: *refused,
                    opened_at_ms: *at_ms,
                    decision: None,
                });
                if !refused {
                    self.customers.entry(user_id.clone()).or_default().held_by = Some(*case_id);
                    // What they earned before the case and is not paid yet
                    // is held too (a wash-trading case opens after payments).
                    for entry in &mut self.entries {
                        if entry.user_id == *user_id
                            && entry.payout_id.is_none()
                            && entry.held_by.is_none()
                            && matches!(entry.kind, EntryKind::Commission { .. })
                            && entry.unsettled_minor() > 0
                        {
                            entry.held_by = Some(*case_id);
                        }
                    }
                }
            }
            Fact::TradeSeen {
                user_id,
                device_id,
                seq,
                symbol,
                side,
                volume_e8,
                day,
                ..
            } => {
                // Only the latest day and the one before are kept: let go of
                // the rest when a new day starts.
                if *day > self.trades_day {
                    self.trades_day = *day;
                    self.trades.retain(|(_, kept, _), _| *kept + 1 >= *day);
                    self.trades_counted.retain(|_, kept| *kept + 1 >= *day);
                }
                self.trades_counted.insert((device_id.clone(), *seq), *day);
                let tally = self
                    .trades
                    .entry((user_id.clone(), *day, symbol.clone()))
                    .or_default();
                match side {
                    crate::facts::TradeSide::Buy => {
                        tally.0 = tally.0.saturating_add(u128::from(*volume_e8));
                    }
                    crate::facts::TradeSide::Sell => {
                        tally.1 = tally.1.saturating_add(u128::from(*volume_e8));
                    }
                }
            }
            Fact::CaseDecided {
                case_id,
                decision,
                by,
                reason,
                at_ms,
            } => {
                let Some(case) = case_id
                    .checked_sub(1)
                    .and_then(|at| self.cases.get_mut(at as usize))
                else {
                    return;
                };
                case.decision = Some(fraud::Decision {
                    decision: *decision,
                    by: by.clone(),
                    reason: reason.clone(),
                    at_ms: *at_ms,
                });
                let user_id = case.user_id.clone();
                if let Some(customer) = self.customers.get_mut(&user_id)
                    && customer.held_by == Some(*case_id)
                {
                    customer.held_by = None;
                    customer.blocked |= *decision == CaseDecision::Confirmed;
                }
                for entry in &mut self.entries {
                    if entry.held_by == Some(*case_id) {
                        entry.held_by = None;
                    }
                }
            }
            Fact::CreditGranted {
                credit_id,
                user_id,
                amount_minor,
                reason,
                referred_user_id,
                available_at_ms,
                at_ms,
            } => {
                self.push_credit(CreditEntry {
                    credit_id: *credit_id,
                    user_id: user_id.clone(),
                    amount_minor: *amount_minor,
                    kind: (*reason).into(),
                    referred_user_id: referred_user_id.clone(),
                    reference: None,
                    of_credit: None,
                    // Grants from before credits were held could not be
                    // spent; they are held from when they were granted.
                    available_at_ms: available_at_ms
                        .unwrap_or_else(|| at_ms.saturating_add(self.config.holding_period_ms)),
                    reversed: false,
                    at_ms: *at_ms,
                });
                self.grants_for
                    .entry(referred_user_id.clone())
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
            Fact::CreditReversed {
                credit_id,
                of_credit,
                user_id,
                refund_id,
                amount_minor,
                at_ms,
            } => {
                let Some(grant) = of_credit
                    .checked_sub(1)
                    .and_then(|at| self.credits.get_mut(at as usize))
                else {
                    return;
                };
                grant.reversed = true;
                let referred_user_id = grant.referred_user_id.clone();
                // Spending the threshold again earns the credits again.
                if let Some(referral) = self
                    .customers
                    .get_mut(&referred_user_id)
                    .and_then(|c| c.referral.as_mut())
                {
                    referral.credited = false;
                }
                self.push_credit(CreditEntry {
                    credit_id: *credit_id,
                    user_id: user_id.clone(),
                    amount_minor: amount_minor.saturating_neg(),
                    kind: CreditKind::Reversal,
                    referred_user_id,
                    reference: Some(refund_id.clone()),
                    of_credit: Some(*of_credit),
                    available_at_ms: *at_ms,
                    reversed: false,
                    at_ms: *at_ms,
                });
            }
            Fact::CreditSpent {
                credit_id,
                spend_id,
                user_id,
                amount_minor,
                at_ms,
            } => {
                self.spends.insert(
                    spend_id.clone(),
                    credits::Spend {
                        user_id: user_id.clone(),
                        amount: *amount_minor,
                    },
                );
                self.push_credit(CreditEntry {
                    credit_id: *credit_id,
                    user_id: user_id.clone(),
                    amount_minor: amount_minor.saturating_neg(),
                    kind: CreditKind::Spend,
                    referred_user_id: String::new(),
                    reference: Some(spend_id.clone()),
                    of_credit: None,
                    available_at_ms: *at_ms,
                    reversed: false,
                    at_ms: *at_ms,
                });
            }
        }
    }

    /// A new payout in the history, next in order: paid at once (a hand
    /// payout) or pending (a batch's, which sets its batch and account).
    fn record_payout(
        &mut self,
        payout_id: &str,
        affiliate_id: &str,
        amount: Minor,
        entries: &[u64],
        at_ms: u64,
        state: PayoutState,
    ) -> &mut Payout {
        self.payout_order.push(payout_id.to_owned());
        let payout = Payout {
            seq: self.payout_order.len() as u64,
            affiliate_id: affiliate_id.to_owned(),
            amount,
            entries: entries.to_vec(),
            at_ms,
            batch_id: None,
            destination: None,
            state,
            idempotency_key: None,
            reference: None,
            detail: None,
            settled_at_ms: (state == PayoutState::Paid).then_some(at_ms),
        };
        self.payouts
            .entry(payout_id.to_owned())
            .insert_entry(payout)
            .into_mut()
    }

    fn push_credit(&mut self, entry: CreditEntry) {
        debug_assert_eq!(entry.credit_id, self.credits.len() as u64 + 1);
        self.credits_by_user
            .entry(entry.user_id.clone())
            .or_default()
            .push(entry.credit_id);
        self.credits.push(entry);
    }

    /// Lets go of clicks past their retention and of dedupe entries past
    /// their interval, as of `now_ms` (a click's own time: clicks are
    /// stamped under the journal's lock, so in order, and a replay lets go
    /// of the same ones).
    fn forget_clicks_before(&mut self, now_ms: u64) {
        let kept_from = now_ms.saturating_sub(self.config.click_retention_ms());
        while let Some((at, _)) = self.click_order.front()
            && *at < kept_from
        {
            if let Some((_, click_id)) = self.click_order.pop_front() {
                self.clicks.remove(&click_id);
            }
        }
        let deduped_from = now_ms.saturating_sub(self.config.click_dedupe_ms);
        while let Some((at, _, _)) = self.recent_order.front()
            && *at < deduped_from
        {
            if let Some((at, address, code)) = self.recent_order.pop_front() {
                let key = (address, code);
                // A later click of the same key replaced this one: keep it.
                if self
                    .recent_clicks
                    .get(&key)
                    .is_some_and(|(_, latest)| *latest == at)
                {
                    self.recent_clicks.remove(&key);
                }
            }
        }
    }

    /// Lets go of signup times before `horizon`, and of addresses left
    /// with none (in arrival order, so a replay lets go of the same ones).
    fn forget_signups_before(&mut self, horizon: u64) {
        while let Some((arrived, _)) = self.signup_order.front()
            && *arrived < horizon
        {
            let Some((_, address)) = self.signup_order.pop_front() else {
                break;
            };
            if let Some(times) = self.signups_by_address.get_mut(&address) {
                times.retain(|&t| t >= horizon);
                if times.is_empty() {
                    self.signups_by_address.remove(&address);
                }
            }
        }
    }

    /// How many source addresses the shared-address check remembers.
    pub fn remembered_signup_addresses(&self) -> usize {
        self.signups_by_address.len()
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
}
