//! The journal as a tamper-evident audit trail. Every entry written since
//! the trail began carries who made the change (an API token's id, or
//! `system`), why, and the chain hash of the entry before it; and for every
//! entry, old or new, a second tree keeps the running chain hash
//! `h(n) = SHA-256(h(n-1) || n || entry n as stored)`, `h(0)` all zeros.
//! Verifying recomputes the chain from the entries and names the first one
//! whose hash no longer matches (altered or moved), or that is missing.
//!
//! What it proves: nobody changed, removed or reordered an entry without
//! also rewriting every chain hash after it. Keep the head hash that
//! `eagate audit verify` prints somewhere else (a ticket, a log service) to
//! catch a rewrite of the whole tail too.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::facts::Fact;

/// Who made a change, and why: carried by every new journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// An API token's id (`token:…`), `visitor:<address>` for a click, or
    /// `system` for the sidecar's own work (the fill feed).
    pub by: String,
    /// The reason given, if any.
    pub why: String,
}

impl Actor {
    /// The sidecar itself.
    pub fn system() -> Self {
        Self {
            by: "system".into(),
            why: String::new(),
        }
    }
}

/// A journal entry as stored: chained (since the trail began), or a bare
/// fact (written before).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stored {
    /// An entry with its actor and the chain hash before it.
    Chained {
        /// The change.
        entry: Fact,
        /// Who.
        by: String,
        /// Why.
        why: String,
        /// The chain hash of the entry before it, hex.
        prev: String,
    },
    /// A fact written before the trail began.
    Bare(Fact),
}

/// The chain hash after entry `seq`, stored as `value`.
pub(crate) fn chain(prev: &[u8; 32], seq: u64, value: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(value);
    hasher.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its position.
    pub seq: u64,
    /// The change.
    pub fact: Fact,
    /// Who made it (`unrecorded` for entries from before the trail).
    pub by: String,
    /// Why, if said.
    pub why: String,
    /// The chain hash after it, hex.
    pub hash: String,
}

/// What verifying the trail found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Whether the trail has begun: a journal written before this version
    /// is chained the first time the sidecar opens it, and until then there
    /// is nothing to check it against.
    pub started: bool,
    /// Entries checked.
    pub entries: u64,
    /// The chain hash after the last entry, hex: keep it elsewhere.
    pub head: String,
    /// The first problem, if any.
    pub problem: Option<AuditProblem>,
}

/// The first place the trail does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditProblem {
    /// The entry's content, or its place, is not what was chained.
    #[error("entry {0} was altered or moved: its chain hash does not match")]
    Altered(u64),
    /// An entry is missing from the sequence.
    #[error("entry {0} was removed")]
    Removed(u64),
    /// The entry names another hash before it than the chain has.
    #[error("entry {0} names a previous hash that is not the chain's")]
    WrongPrevious(u64),
    /// The entry cannot be read at all.
    #[error("entry {seq} is damaged: {detail}")]
    Damaged {
        /// Its position.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}
