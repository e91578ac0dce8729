//! Facts: what the programme decided, in the order it decided it. The
//! journal stores them (append-only: it is also the audit log of every
//! change of money), and replaying them rebuilds the state exactly, because
//! each fact carries the amounts, rates and dates it was decided with.

use serde::{Deserialize, Serialize};

use crate::code::ReferralCode;
use crate::money::{Bps, Currency, Minor};

/// Who referred a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Referrer {
    /// An affiliate: earns commission.
    Affiliate {
        /// The affiliate.
        affiliate_id: String,
    },
    /// A customer: earns account credit.
    Customer {
        /// The referring customer's platform user id.
        user_id: String,
    },
}

/// What a commission is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommissionKind {
    /// A share of a subscription payment for a billing period.
    Subscription {
        /// The billing period (1 is the first month).
        billing_period: u32,
    },
    /// The one-off bonus on the first payment, when the user first trades.
    FirstTradeBonus,
    /// A share of the platform's fee for one fill of a referred customer,
    /// at the affiliate's tier for the fill's month.
    Trade {
        /// The tier, 1 for the lowest.
        tier: u8,
    },
}

/// Which fraud check opened a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// The referred customer is the referrer, or shares their email hash or
    /// enrolment address: refused at signup.
    SelfReferral,
    /// More signups from one source address within the window than the
    /// programme allows: the later referrals are held.
    SharedAddress,
    /// A referred customer bought and sold one symbol on one UTC day in
    /// offsetting volume: their commissions are held.
    WashTrading,
}

/// Which way a fill went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeSide {
    /// Opened long.
    Buy,
    /// Opened short.
    Sell,
}

/// How an admin decided a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseDecision {
    /// Not fraud: held money is released.
    Cleared,
    /// Fraud: unpaid commissions reversed, the referral blocked.
    Confirmed,
}

/// Who pays a batch's payouts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutProvider {
    /// An admin pays by hand from the batch's CSV and confirms each payout
    /// with the provider's reference, or marks it failed.
    Manual,
    /// A Stripe transfer to the affiliate's connected account.
    Stripe,
}

impl PayoutProvider {
    /// The lower-case name used by the API and the settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Stripe => "stripe",
        }
    }
}

/// Why a customer got credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditReason {
    /// They referred a customer who reached the threshold.
    ReferredACustomer,
    /// They were referred and reached the threshold.
    WasReferred,
}

/// One decided change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// A platform user became an affiliate.
    AffiliateEnrolled {
        /// `af_…`.
        affiliate_id: String,
        /// The platform user.
        user_id: String,
        /// Their referral code.
        code: ReferralCode,
        /// SHA-256 (hex) of their API token; the token is never stored.
        token_sha256: String,
        /// SHA-256 (hex) of their normalised email, if the platform gave it:
        /// a signup with the same is a self-referral.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email_sha256: Option<String>,
        /// The address they enrolled from, if the platform gave it: a signup
        /// from it is a self-referral.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_address: Option<String>,
        /// When.
        at_ms: u64,
    },
    /// An affiliate called the API from an address not seen before: a
    /// signup from it is a self-referral.
    AffiliateAddressSeen {
        /// The affiliate.
        affiliate_id: String,
        /// The address.
        source_address: String,
        /// When.
        at_ms: u64,
    },
    /// An admin issued a one-time sign-in link to the console for an
    /// affiliate (the link itself is never stored): recorded so the trail
    /// shows who let whom in.
    SignInLinkIssued {
        /// The affiliate the link signs in as.
        affiliate_id: String,
        /// Until when it can be used.
        expires_at_ms: u64,
        /// When.
        at_ms: u64,
    },
    /// The sidecar saw a device in the registry for the first time.
    DeviceRegistered {
        /// The device.
        device_id: String,
        /// Its platform account.
        account_id: String,
        /// When the registry says it was registered.
        registered_at_ms: u64,
        /// A digest of its sealed secret (not of the secret): a change
        /// means the secret was replaced.
        secret_digest: String,
        /// When.
        at_ms: u64,
    },
    /// The sidecar saw that a device's secret was replaced.
    DeviceSecretReplaced {
        /// The device.
        device_id: String,
        /// The new sealed secret's digest.
        secret_digest: String,
        /// When.
        at_ms: u64,
    },
    /// The sidecar saw that a device was revoked.
    DeviceRevoked {
        /// The device.
        device_id: String,
        /// When the registry says it was revoked.
        revoked_at_ms: u64,
        /// When.
        at_ms: u64,
    },
    /// An affiliate's API token was replaced.
    AffiliateTokenReplaced {
        /// The affiliate.
        affiliate_id: String,
        /// SHA-256 (hex) of the new token.
        token_sha256: String,
        /// When.
        at_ms: u64,
    },
    /// A customer got a referral code for referral credits.
    CustomerCodeIssued {
        /// The customer's platform user id.
        user_id: String,
        /// The code.
        code: ReferralCode,
        /// When.
        at_ms: u64,
    },
    /// A referral link was followed.
    Clicked {
        /// `ck_…`, passed on to the landing page.
        click_id: String,
        /// The code in the link.
        code: ReferralCode,
        /// The visitor's address.
        source_address: String,
        /// The visitor's user agent, cut to 256 bytes.
        user_agent: String,
        /// When.
        at_ms: u64,
    },
    /// A signup was attributed to a referrer.
    Referred {
        /// The new platform user.
        user_id: String,
        /// Who referred them.
        referrer: Referrer,
        /// The code used.
        code: ReferralCode,
        /// The click it came from, if the platform passed it on.
        click_id: Option<String>,
        /// The address the signup came from.
        source_address: String,
        /// SHA-256 (hex) of the normalised email address.
        email_sha256: String,
        /// Whether the email was verified at signup.
        email_verified: bool,
        /// When it happened, as the platform said (absent in facts written
        /// before events carried their time: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at_ms: Option<u64>,
        /// When it arrived.
        at_ms: u64,
    },
    /// A user verified their email address.
    EmailVerified {
        /// The user.
        user_id: String,
        /// When it happened, as the platform said (absent in facts written
        /// before events carried their time: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at_ms: Option<u64>,
        /// When it arrived.
        at_ms: u64,
    },
    /// A subscription payment.
    PaymentReceived {
        /// The platform's id of the payment.
        payment_id: String,
        /// Who paid.
        user_id: String,
        /// How much.
        amount_minor: Minor,
        /// In what.
        currency: Currency,
        /// Which billing period (1 is the first month).
        billing_period: u32,
        /// When it happened, as the platform said (absent in facts written
        /// before events carried their time: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at_ms: Option<u64>,
        /// When it arrived.
        at_ms: u64,
    },
    /// A refund of (part of) a payment.
    RefundReceived {
        /// The platform's id of the refund.
        refund_id: String,
        /// The payment refunded.
        payment_id: String,
        /// How much.
        amount_minor: Minor,
        /// In what.
        currency: Currency,
        /// When it happened, as the platform said (absent in facts written
        /// before events carried their time: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at_ms: Option<u64>,
        /// When it arrived.
        at_ms: u64,
    },
    /// A referred user's first fill, from the gateway's execution reports.
    FirstTrade {
        /// The user (the device's account).
        user_id: String,
        /// The device that reported the fill.
        device_id: String,
        /// When the fill was stored.
        at_ms: u64,
    },
    /// A commission, pending until `payable_at_ms`.
    CommissionEarned {
        /// The ledger entry.
        entry_id: u64,
        /// Who earns it.
        affiliate_id: String,
        /// The referred user.
        user_id: String,
        /// The payment it is a share of.
        payment_id: String,
        /// What for.
        kind: CommissionKind,
        /// The rate applied.
        rate: Bps,
        /// The amount it was applied to.
        base_minor: Minor,
        /// The commission, rounded half up.
        amount_minor: Minor,
        /// When it stops being pending.
        payable_at_ms: u64,
        /// When it was earned: the payment's `occurred_at` (absent in facts
        /// written before events carried their time: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        earned_at_ms: Option<u64>,
        /// When it was decided.
        at_ms: u64,
    },
    /// (Part of) an unpaid commission taken back by a refund.
    CommissionReversed {
        /// The commission.
        entry_id: u64,
        /// The refund.
        refund_id: String,
        /// How much, positive.
        amount_minor: Minor,
        /// When.
        at_ms: u64,
    },
    /// (Part of) a paid commission taken back by a refund: a negative entry,
    /// netted against the next payout.
    ClawbackEntered {
        /// The new (negative) ledger entry.
        entry_id: u64,
        /// The paid commission it claws back.
        of_entry: u64,
        /// The affiliate.
        affiliate_id: String,
        /// The refund.
        refund_id: String,
        /// Negative.
        amount_minor: Minor,
        /// When.
        at_ms: u64,
    },
    /// A payout of every payable entry of an affiliate.
    PayoutMade {
        /// The payout's id, given by whoever made it.
        payout_id: String,
        /// The affiliate.
        affiliate_id: String,
        /// The net amount paid.
        amount_minor: Minor,
        /// The entries it settled.
        entries: Vec<u64>,
        /// When.
        at_ms: u64,
    },
    /// A payout batch began: the payouts it makes follow it as
    /// [`Fact::PayoutPending`], in the same write.
    PayoutBatchOpened {
        /// `pb_<n>`.
        batch_id: String,
        /// Who pays them out.
        provider: PayoutProvider,
        /// The UTC day (days since 1970-01-01) of a daily batch; absent for
        /// one run by hand. Each day has at most one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_day: Option<i64>,
        /// When.
        at_ms: u64,
    },
    /// A payout of an affiliate's payable entries, in a batch. The entries
    /// are tied to it from here on: nothing else can pay them, and a refund
    /// claws back rather than reverses, since the money may be on its way.
    PayoutPending {
        /// `<batch_id>-<affiliate_id>`: also the provider's idempotency key
        /// and transfer group, so a restart can only ever ask for the same
        /// transfer.
        payout_id: String,
        /// The batch.
        batch_id: String,
        /// Who is paid.
        affiliate_id: String,
        /// The net amount, clawbacks and adjustments netted.
        amount_minor: Minor,
        /// The entries it settles.
        entries: Vec<u64>,
        /// The provider's account to pay into (Stripe: `acct_…`), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
        /// When.
        at_ms: u64,
    },
    /// The request to the provider is about to be sent, with this
    /// idempotency key: written before it goes, so a crash after it is
    /// reconciled by asking, never by paying blindly again.
    PayoutSubmitted {
        /// The payout.
        payout_id: String,
        /// The key sent with the request.
        idempotency_key: String,
        /// When.
        at_ms: u64,
    },
    /// The provider's answer is unknown (a timeout, a dropped connection, a
    /// server error): only asking the provider by idempotency key can say
    /// whether the money moved.
    PayoutNeedsReconciliation {
        /// The payout.
        payout_id: String,
        /// What happened.
        detail: String,
        /// When.
        at_ms: u64,
    },
    /// The money arrived: the entries are paid.
    PayoutPaid {
        /// The payout.
        payout_id: String,
        /// The provider's reference (Stripe: the transfer id `tr_…`).
        reference: String,
        /// When.
        at_ms: u64,
    },
    /// The payout did not happen: its entries are payable again.
    PayoutFailed {
        /// The payout.
        payout_id: String,
        /// Why, as the provider or the admin said.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// Where an affiliate is paid: their Stripe connected account.
    PayoutAccountSet {
        /// The affiliate.
        affiliate_id: String,
        /// `acct_…`.
        stripe_account: String,
        /// When.
        at_ms: u64,
    },
    /// An admin's correction of an affiliate's balance: a ledger line of
    /// its own, payable at once.
    AdjustmentEntered {
        /// The new ledger entry.
        entry_id: u64,
        /// The admin's id for it; the same id again changes nothing.
        adjustment_id: String,
        /// The affiliate.
        affiliate_id: String,
        /// Signed: positive is owed to the affiliate, negative by them.
        amount_minor: Minor,
        /// Why, in the admin's words.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// A fill by a customer an affiliate referred, counted for the
    /// wash-trading check.
    TradeSeen {
        /// The customer.
        user_id: String,
        /// The device that reported the fill, and the report's sequence:
        /// the fill feed may hand a fill over twice, and it counts once.
        device_id: String,
        /// See `device_id`.
        seq: u64,
        /// What they traded.
        symbol: String,
        /// Which way.
        side: TradeSide,
        /// How many lots, in units of 10^-8 lot.
        volume_e8: u64,
        /// The fill's UTC day (days since 1970-01-01).
        day: i64,
        /// When.
        at_ms: u64,
    },
    /// A fill by a customer an affiliate referred, counted once for the
    /// affiliate's per-trade commission and its tier (with the platform's
    /// fee for it, which may be zero).
    TradeFilled {
        /// The referring affiliate.
        affiliate_id: String,
        /// The customer (the device's account).
        user_id: String,
        /// The device that reported the fill, and the report's sequence:
        /// the fill's identity, which earns once however often it arrives.
        device_id: String,
        /// See `device_id`.
        seq: u64,
        /// The signal it filled, hex.
        signal_id: String,
        /// The terminal's ticket, if the report carried one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<u64>,
        /// What was traded.
        symbol: String,
        /// How many lots, in units of 10^-8 lot.
        volume_e8: u64,
        /// The platform's fee for the fill, in minor units.
        fee_minor: Minor,
        /// The fill's UTC day (by when the gateway stored it).
        day: i64,
        /// When the gateway stored it.
        filled_at_ms: u64,
        /// When.
        at_ms: u64,
    },
    /// An affiliate's per-trade tier for a calendar month, fixed by its
    /// first fill in that month from the month before's activity.
    TierSet {
        /// The affiliate.
        affiliate_id: String,
        /// The month's first day (days since 1970-01-01).
        month: i64,
        /// The tier, 1 for the lowest.
        tier: u8,
        /// Its rate.
        rate: Bps,
        /// The previous month's active referred traders or lots, as the
        /// programme measures tiers.
        measure: u64,
        /// When.
        at_ms: u64,
    },
    /// An admin busted a fill: its commission is reversed (or clawed back
    /// once paid) and it no longer counts toward tiers.
    TradeBusted {
        /// The fill's device.
        device_id: String,
        /// The fill's report sequence.
        seq: u64,
        /// Why.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// A device reported that its fills of a signal with one ticket,
    /// reported before this report, were undone (the broker cancelled the
    /// deals). Each is busted with it; a fill the feed hands over later is
    /// counted busted.
    TradeReversalReported {
        /// The affiliate whose commissions it concerns.
        #[serde(default)]
        affiliate_id: String,
        /// The reporting device.
        device_id: String,
        /// The reversal's own report sequence.
        seq: u64,
        /// The signal, hex.
        signal_id: String,
        /// The ticket of the fills it undoes.
        ticket: u64,
        /// When.
        at_ms: u64,
    },
    /// A fraud check opened a case for review.
    CaseOpened {
        /// 1, 2, 3, … across the programme.
        case_id: u64,
        /// Which check.
        kind: CaseKind,
        /// The referred customer it is about.
        user_id: String,
        /// The affiliate or customer whose referral it is.
        referrer: Referrer,
        /// What the check saw, for the reviewer.
        evidence: String,
        /// Whether the referral was refused (a self-referral) rather than
        /// held: a refused one has no money to hold.
        refused: bool,
        /// When.
        at_ms: u64,
    },
    /// An admin decided a case.
    CaseDecided {
        /// The case.
        case_id: u64,
        /// Cleared (money released) or confirmed (commissions reversed,
        /// referral blocked).
        decision: CaseDecision,
        /// Who decided: the admin token's id.
        by: String,
        /// Why, in their words.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// Account credit for a customer.
    CreditGranted {
        /// The credit ledger entry.
        credit_id: u64,
        /// Who gets it.
        user_id: String,
        /// How much.
        amount_minor: Minor,
        /// Why.
        reason: CreditReason,
        /// The referred customer whose spend earned it.
        referred_user_id: String,
        /// When it may be spent: pending until then, and reversed if a
        /// refund takes the referred customer's spend back under the
        /// threshold before it (absent in facts written before credits were
        /// held: then `at_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available_at_ms: Option<u64>,
        /// When.
        at_ms: u64,
    },
    /// A pending credit taken back by a refund.
    CreditReversed {
        /// The new credit ledger entry.
        credit_id: u64,
        /// The grant reversed.
        of_credit: u64,
        /// Whose credit it was.
        user_id: String,
        /// The refund.
        refund_id: String,
        /// How much, positive: the whole grant.
        amount_minor: Minor,
        /// When.
        at_ms: u64,
    },
    /// A customer spent available credit.
    CreditSpent {
        /// The new credit ledger entry.
        credit_id: u64,
        /// The platform's id for the spend; the same id again changes
        /// nothing.
        spend_id: String,
        /// Whose credit.
        user_id: String,
        /// How much, positive.
        amount_minor: Minor,
        /// When.
        at_ms: u64,
    },
}

impl Fact {
    /// When the programme decided it (its arrival, for the platform's
    /// events).
    pub fn at_ms(&self) -> u64 {
        match self {
            Self::AffiliateEnrolled { at_ms, .. }
            | Self::AffiliateTokenReplaced { at_ms, .. }
            | Self::AffiliateAddressSeen { at_ms, .. }
            | Self::SignInLinkIssued { at_ms, .. }
            | Self::DeviceRegistered { at_ms, .. }
            | Self::DeviceSecretReplaced { at_ms, .. }
            | Self::DeviceRevoked { at_ms, .. }
            | Self::CustomerCodeIssued { at_ms, .. }
            | Self::Clicked { at_ms, .. }
            | Self::Referred { at_ms, .. }
            | Self::EmailVerified { at_ms, .. }
            | Self::PaymentReceived { at_ms, .. }
            | Self::RefundReceived { at_ms, .. }
            | Self::FirstTrade { at_ms, .. }
            | Self::CommissionEarned { at_ms, .. }
            | Self::CommissionReversed { at_ms, .. }
            | Self::ClawbackEntered { at_ms, .. }
            | Self::PayoutMade { at_ms, .. }
            | Self::PayoutBatchOpened { at_ms, .. }
            | Self::PayoutPending { at_ms, .. }
            | Self::PayoutSubmitted { at_ms, .. }
            | Self::PayoutNeedsReconciliation { at_ms, .. }
            | Self::PayoutPaid { at_ms, .. }
            | Self::PayoutFailed { at_ms, .. }
            | Self::PayoutAccountSet { at_ms, .. }
            | Self::AdjustmentEntered { at_ms, .. }
            | Self::CreditGranted { at_ms, .. }
            | Self::CreditReversed { at_ms, .. }
            | Self::CreditSpent { at_ms, .. }
            | Self::CaseOpened { at_ms, .. }
            | Self::TradeSeen { at_ms, .. }
            | Self::TradeFilled { at_ms, .. }
            | Self::TierSet { at_ms, .. }
            | Self::TradeBusted { at_ms, .. }
            | Self::TradeReversalReported { at_ms, .. }
            | Self::CaseDecided { at_ms, .. } => *at_ms,
        }
    }
}
