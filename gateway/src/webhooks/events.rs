//! Which journal entries are events, and what an event looks like on the
//! wire.

use eagate_affiliates::{AuditEntry, Fact};
use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An affiliate enrolled.
    AffiliateEnrolled,
    /// A signup was attributed to a referrer.
    ReferralCreated,
    /// A commission was earned (pending its holding period).
    CommissionCreated,
    /// A commission was taken back: reversed before payout, or clawed back
    /// after.
    CommissionReversed,
    /// A payout's money arrived (or an admin recorded one paid).
    PayoutPaid,
    /// A payout failed: its entries are payable again.
    PayoutFailed,
    /// A fraud check opened a case.
    FraudCaseOpened,
    /// A fraud case was cleared or confirmed.
    FraudCaseDecided,
    /// An admin busted a fill.
    TradeBusted,
    /// A device was registered.
    DeviceRegistered,
    /// A device was revoked.
    DeviceRevoked,
    /// A device's secret was replaced.
    DeviceReplaced,
}

/// Every kind, as endpoints subscribe to them.
pub const EVENT_KINDS: [EventKind; 12] = [
    EventKind::AffiliateEnrolled,
    EventKind::ReferralCreated,
    EventKind::CommissionCreated,
    EventKind::CommissionReversed,
    EventKind::PayoutPaid,
    EventKind::PayoutFailed,
    EventKind::FraudCaseOpened,
    EventKind::FraudCaseDecided,
    EventKind::TradeBusted,
    EventKind::DeviceRegistered,
    EventKind::DeviceRevoked,
    EventKind::DeviceReplaced,
];

impl EventKind {
    /// The name on the wire (`commission.created`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AffiliateEnrolled => "affiliate.enrolled",
            Self::ReferralCreated => "referral.created",
            Self::CommissionCreated => "commission.created",
            Self::CommissionReversed => "commission.reversed",
            Self::PayoutPaid => "payout.paid",
            Self::PayoutFailed => "payout.failed",
            Self::FraudCaseOpened => "fraud.case_opened",
            Self::FraudCaseDecided => "fraud.case_decided",
            Self::TradeBusted => "trade.busted",
            Self::DeviceRegistered => "device.registered",
            Self::DeviceRevoked => "device.revoked",
            Self::DeviceReplaced => "device.replaced",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        EVENT_KINDS.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// The event a journal entry is, if it is one.
pub fn event_of(fact: &Fact) -> Option<EventKind> {
    Some(match fact {
        Fact::AffiliateEnrolled { .. } => EventKind::AffiliateEnrolled,
        Fact::Referred { .. } => EventKind::ReferralCreated,
        Fact::CommissionEarned { .. } => EventKind::CommissionCreated,
        Fact::CommissionReversed { .. } | Fact::ClawbackEntered { .. } => {
            EventKind::CommissionReversed
        }
        Fact::PayoutPaid { .. } | Fact::PayoutMade { .. } => EventKind::PayoutPaid,
        Fact::PayoutFailed { .. } => EventKind::PayoutFailed,
        Fact::CaseOpened { .. } => EventKind::FraudCaseOpened,
        Fact::CaseDecided { .. } => EventKind::FraudCaseDecided,
        Fact::TradeBusted { .. } => EventKind::TradeBusted,
        Fact::DeviceRegistered { .. } => EventKind::DeviceRegistered,
        Fact::DeviceRevoked { .. } => EventKind::DeviceRevoked,
        Fact::DeviceSecretReplaced { .. } => EventKind::DeviceReplaced,
        _ => return None,
    })
}

/// An event as the endpoint receives it: the JSON body of the POST.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEvent {
    /// `evt_` and the journal position: the same event always has the
    /// same id, also when retried or replayed. Deduplicate on it.
    pub id: String,
    /// The kind, `commission.created`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The journal position (events of one endpoint arrive in its order).
    pub seq: u64,
    /// When the change was made, Unix ms.
    pub created_ms: u64,
    /// The change as the audit trail shows it (its `fact`), less what the
    /// platform has no use for: hashes of tokens and emails, and source
    /// addresses.
    pub data: serde_json::Value,
}

/// Fields of a fact no event carries.
const WITHHELD: [&str; 4] = [
    "token_sha256",
    "email_sha256",
    "source_address",
    "secret_digest",
];

impl WebhookEvent {
    /// The event of a journal entry, if it is one.
    pub fn of(entry: &AuditEntry) -> Option<Self> {
        let kind = event_of(&entry.fact)?;
        let mut data = serde_json::to_value(&entry.fact).expect("a fact serializes");
        if let Some(fields) = data.as_object_mut() {
            for field in WITHHELD {
                fields.remove(field);
            }
        }
        Some(Self {
            id: event_id(entry.seq),
            kind: kind.as_str(),
            seq: entry.seq,
            created_ms: entry.fact.at_ms(),
            data,
        })
    }
}

/// The id of the event at journal position `seq`.
pub fn event_id(seq: u64) -> String {
    format!("evt_{seq:016}")
}

/// The journal position an event id names.
pub(super) fn event_seq(id: &str) -> Option<u64> {
    id.strip_prefix("evt_")?.parse().ok()
}
