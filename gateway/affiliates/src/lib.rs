//! The affiliate programme and customer referral credits of an eagate
//! deployment: referral codes, click and signup attribution, commissions by
//! a schedule with a holding period, refunds clawed back, payouts netted,
//! and an append-only credit ledger.
//!
//! [`programme`] is the sans-IO core (decide, then apply facts);
//! [`journal`] keeps the facts in sled and replays them. The HTTP routes
//! live in the gateway's sidecar.
#![forbid(unsafe_code)]
// Money is integer minor units: a float anywhere in the ledger is a bug.
#![deny(clippy::float_arithmetic)]

pub mod audit;
pub mod calendar;
pub mod code;
pub mod config;
pub mod facts;
pub mod journal;
pub mod money;
pub mod programme;
pub mod trade_fees;

pub use audit::{Actor, AuditEntry, AuditProblem, AuditReport};
pub use code::ReferralCode;
pub use config::ProgrammeConfig;
pub use facts::{
    CaseDecision, CaseKind, CommissionKind, CreditReason, Fact, PayoutProvider, Referrer, TradeSide,
};
pub use journal::{JournalError, Ledger, WriteError, verify_journal};
pub use money::{Bps, Currency, Minor};
pub use programme::{
    Balances, CodeOwner, Decided, Entry, EntryKind, EntryStatus, Granularity, PaymentEvent,
    Programme, RefundEvent, Signup,
};
