//! The IO driver: the programme's facts in a sled tree (append-only, one
//! key per fact in decision order), replayed into a [`Programme`] on open.
//!
//! Writes are serialised by one async lock: decide against the state,
//! append the facts, apply them, then flush to disk *after* releasing the
//! lock, so concurrent writers share one fsync. A write is acknowledged only
//! once flushed. Reads take a short read lock on the state and never wait
//! for a disk.

use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use sled::Transactional;

use crate::audit::{Actor, AuditEntry, AuditProblem, AuditReport, Stored, chain, hex};
use crate::config::ProgrammeConfig;
use crate::facts::Fact;
use crate::programme::{Decided, Programme};

/// How long opening waits for a just-closed ledger's lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// sled failed.
    #[error("affiliate journal: {0}")]
    Sled(#[from] sled::Error),
    /// The journal holds money in another currency than the programme's.
    #[error(
        "the affiliate ledger holds amounts in {journal}, but the programme is set to {configured}: \
         amounts cannot change currency; set affiliate_currency back to {journal}"
    )]
    CurrencyChanged {
        /// The journal's currency.
        journal: crate::money::Currency,
        /// The configured one.
        configured: crate::money::Currency,
    },
    /// A write did not reach the disk (full, failing): what memory holds
    /// may be ahead of it, so the ledger serves nothing until a write
    /// reaches the disk again.
    #[error(
        "the affiliate ledger could not write to disk ({0}); it serves again once its writes reach the disk (free space; a restart replays what is on disk)"
    )]
    NotDurable(String),
    /// A stored fact could not be read back.
    #[error("affiliate journal entry {seq} is damaged: {detail}")]
    Corrupt {
        /// Its position.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

/// What a write produced: the operation's own refusal, or a journal failure.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The programme refused the request; nothing was written.
    #[error(transparent)]
    Refused(E),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The journal's trees: the entries, and each one's chain hash.
const FACTS_TREE: &str = "affiliate_facts";
const CHAIN_TREE: &str = "affiliate_chain";
/// Set once the chain covers the entries written before it existed: after
/// that a missing chain hash is a removal, never filled in again.
const CHAIN_BACKFILLED: &str = "chain_backfilled";

/// Where the key of customer pseudonyms is kept, beside the journal.
const META_TREE: &str = "ledger_meta";
const PSEUDONYM_KEY: &str = "customer_pseudonym_key";

/// Opens the sled database at `path`. sled's background writer threads may
/// hold the directory's lock for a moment after the last handle of a
/// previous opening is dropped (a restart in the same process): this waits
/// for that, briefly, before reporting the directory as taken by another
/// process.
pub fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// The programme, kept in memory, journaled in sled.
pub struct Ledger {
    db: sled::Db,
    facts: sled::Tree,
    chain: sled::Tree,
    /// Keys the pseudonyms affiliates see for their customers: random, made
    /// once per ledger, never shown.
    pseudonym_key: [u8; 32],
    state: RwLock<Programme>,
    writer: tokio::sync::Mutex<Head>,
    /// A flush failed: what memory holds may be ahead of the disk. Reads
    /// and writes are refused ([`Ledger::healthy`]) until a flush
    /// succeeds again, so nothing not durable is ever shown or built on.
    failed: std::sync::atomic::AtomicBool,
    /// The last journal position known to be on disk: readers that act on
    /// entries outside this process (webhooks) read no further.
    durable: std::sync::atomic::AtomicU64,
}

/// The journal's last entry and its chain hash.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or creates) the journal at `path` and replays it under
    /// `config`.
    pub fn open(path: &Path, config: ProgrammeConfig) -> Result<Self, JournalError> {
        Self::on(open_db(path)?, config)
    }

    /// The ledger in an already opened sled database.
    pub fn on(db: sled::Db, config: ProgrammeConfig) -> Result<Self, JournalError> {
        let facts = db.open_tree(FACTS_TREE)?;
        let chain_tree = db.open_tree(CHAIN_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let backfill = meta.get(CHAIN_BACKFILLED)?.is_none();
        let mut programme = Programme::new(config);
        let mut head = Head {
            seq: 0,
            hash: [0; 32],
        };
        for item in facts.iter() {
            let (key, value) = item?;
            let (seq, stored) = decode(&key, &value)?;
            let fact = match stored {
                Stored::Chained { entry, .. } => entry,
                Stored::Bare(fact) => fact,
            };
            if let Fact::PaymentReceived { currency, .. } | Fact::RefundReceived { currency, .. } =
                &fact
                && *currency != programme.config().currency
            {
                return Err(JournalError::CurrencyChanged {
                    journal: *currency,
                    configured: programme.config().currency,
                });
            }
            programme.apply(&fact);
            head = Head {
                seq,
                hash: chain(&head.hash, seq, &value),
            };
            // Entries from before the chain existed get their hashes once.
            if backfill && chain_tree.get(seq.to_be_bytes())?.is_none() {
                chain_tree.insert(seq.to_be_bytes(), &head.hash)?;
            }
        }
        if backfill {
            meta.insert(CHAIN_BACKFILLED, &head.seq.to_be_bytes())?;
            db.flush()?;
        }
        let pseudonym_key = pseudonym_key(&db)?;
        Ok(Self {
            db,
            facts,
            chain: chain_tree,
            pseudonym_key,
            state: RwLock::new(programme),
            durable: std::sync::atomic::AtomicU64::new(head.seq),
            writer: tokio::sync::Mutex::new(head),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The state, for reading. Hold it briefly: writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Programme> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides with `decide` against the current state and, unless it
    /// refuses, journals and applies the facts as the sidecar's own work
    /// (`system`); see [`Ledger::write_by`].
    pub async fn write<E>(
        &self,
        decide: impl FnOnce(&Programme) -> Result<Decided, E>,
    ) -> Result<Decided, WriteError<E>> {
        self.write_by(&Actor::system(), decide).await
    }

    /// Decides with `decide` against the current state and, unless it
    /// refuses, journals the facts as `actor`'s, chained, and applies them;
    /// returns once they are on disk. Concurrent writes are decided one at
    /// a time, so two requests racing for the same grant see each other.
    pub async fn write_by<E>(
        &self,
        actor: &Actor,
        decide: impl FnOnce(&Programme) -> Result<Decided, E>,
    ) -> Result<Decided, WriteError<E>> {
        self.healthy_or_recover().await?;
        let decided = {
            let mut head = self.writer.lock().await;
            let decided = decide(&self.read()).map_err(WriteError::Refused)?;
            if decided.facts.is_empty() {
                decided
            } else {
                let mut entries = Vec::with_capacity(decided.facts.len());
                let mut next = *head;
                for fact in &decided.facts {
                    let seq = next.seq + 1;
                    let value = serde_json::to_vec(&StoredRef {
                        entry: fact,
                        by: &actor.by,
                        why: &actor.why,
                        prev: hex(&next.hash),
                    })
                    .expect("a fact always serializes");
                    next = Head {
                        seq,
                        hash: chain(&next.hash, seq, &value),
                    };
                    entries.push((seq, value, next.hash));
                }
                (&self.facts, &self.chain)
                    .transaction(|(facts, chain)| {
                        for (seq, value, hash) in &entries {
                            facts.insert(&seq.to_be_bytes(), value.as_slice())?;
                            chain.insert(&seq.to_be_bytes(), hash)?;
                        }
                        Ok(())
                    })
                    .map_err(|e: sled::transaction::TransactionError<()>| {
                        JournalError::from(match e {
                            sled::transaction::TransactionError::Storage(e) => e,
                            sled::transaction::TransactionError::Abort(()) => {
                                sled::Error::Unsupported("journal write aborted".into())
                            }
                        })
                    })?;
                *head = next;
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                for fact in &decided.facts {
                    state.apply(fact);
                }
                decided
            }
        };
        // Retries of an already applied request flush too: the first
        // attempt's flush may have failed.
        if let Err(e) = self.flush_durable().await {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(JournalError::NotDurable(e.to_string()).into());
        }
        Ok(decided)
    }

    /// Whether what memory holds is on disk: `Err` after a flush failed,
    /// until one succeeds again. Callers that show the ledger's state
    /// check it first.
    pub fn healthy(&self) -> Result<(), JournalError> {
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            Err(JournalError::NotDurable(
                "an earlier write's flush failed".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// [`Ledger::healthy`], first trying a flush when it is not: space
    /// that came back makes everything written so far durable at once.
    pub async fn healthy_or_recover(&self) -> Result<(), JournalError> {
        if self.healthy().is_ok() {
            return Ok(());
        }
        match self.flush_durable().await {
            Ok(()) => {
                self.failed
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(JournalError::NotDurable(e.to_string())),
        }
    }

    /// sled's synchronous flush on a blocking thread: its `flush_async`
    /// can stall when several flushes overlap (sled 0.34), and flushes here
    /// overlap by design.
    async fn flush(&self) -> Result<(), JournalError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(flushed) => flushed.map(|_| ()).map_err(JournalError::from),
            Err(e) => Err(JournalError::Sled(sled::Error::Io(std::io::Error::other(
                e.to_string(),
            )))),
        }
    }

    /// The name an affiliate sees for a customer they referred: `cu_` and
    /// 20 hex digits, the same for the same pair every time (across
    /// restarts), different between affiliates, and not to be turned back
    /// into the platform's user id without the ledger's key.
    pub fn customer_pseudonym(&self, affiliate_id: &str, user_id: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.pseudonym_key)
            .expect("HMAC takes a key of any length");
        // The affiliate id never holds a NUL: it separates the two ids.
        mac.update(affiliate_id.as_bytes());
        mac.update(&[0]);
        mac.update(user_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        format!("cu_{hex}")
    }

    /// Every fact in the journal, in order.
    pub fn facts(&self) -> Result<Vec<Fact>, JournalError> {
        // The facts alone: no chain hash read per entry.
        self.facts
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok(match decode(&key, &value)?.1 {
                    Stored::Chained { entry, .. } => entry,
                    Stored::Bare(fact) => fact,
                })
            })
            .collect()
    }

    /// A flush, and then every entry the journal held when it began is
    /// known durable.
    async fn flush_durable(&self) -> Result<(), JournalError> {
        let written = match self.facts.last()? {
            Some((key, _)) => key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default(),
            None => 0,
        };
        self.flush().await?;
        self.durable
            .fetch_max(written, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The last journal position known to be on disk (0 for an empty
    /// journal); an error while a flush failure is not recovered.
    pub fn durable_seq(&self) -> Result<u64, JournalError> {
        self.healthy()?;
        Ok(self.durable.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// [`Ledger::audit_after`], only as far as the journal is known to be
    /// on disk: for readers that tell the world (webhooks), which must
    /// never announce a change a crash could still undo.
    pub fn durable_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, JournalError> {
        let durable = self.durable_seq()?;
        let mut entries = self.audit_after(after, limit)?;
        entries.retain(|entry| entry.seq <= durable);
        Ok(entries)
    }

    /// Up to `limit` entries of the audit trail after `after`, in order.
    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, JournalError> {
        let from = after.saturating_add(1).to_be_bytes();
        self.facts
            .range(from..)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let (seq, stored) = decode(&key, &value)?;
                let hash = self
                    .chain
                    .get(seq.to_be_bytes())?
                    .map(|h| hex(&h))
                    .unwrap_or_default();
                let (fact, by, why) = match stored {
                    Stored::Chained { entry, by, why, .. } => (entry, by, why),
                    Stored::Bare(fact) => (fact, "unrecorded".to_owned(), String::new()),
                };
                Ok(AuditEntry {
                    seq,
                    fact,
                    by,
                    why,
                    hash,
                })
            })
            .collect()
    }

    /// Recomputes the chain and names the first entry that does not hold.
    pub fn verify(&self) -> Result<AuditReport, JournalError> {
        verify_trees(&self.db, &self.facts, &self.chain)
    }
}

/// Verifies the audit trail of the ledger at `path` (the sidecar must not
/// hold it: sled locks the directory).
pub fn verify_journal(path: &Path) -> Result<AuditReport, JournalError> {
    let db = open_db(path)?;
    verify_trees(&db, &db.open_tree(FACTS_TREE)?, &db.open_tree(CHAIN_TREE)?)
}

fn verify_trees(
    db: &sled::Db,
    facts: &sled::Tree,
    chain_tree: &sled::Tree,
) -> Result<AuditReport, JournalError> {
    if db.open_tree(META_TREE)?.get(CHAIN_BACKFILLED)?.is_none() {
        return Ok(AuditReport {
            started: false,
            entries: facts.len() as u64,
            head: String::new(),
            problem: None,
        });
    }
    let mut hash = [0u8; 32];
    let mut expected = 1u64;
    let mut problem = None;
    for item in facts.iter() {
        let (key, value) = item?;
        let seq = match key.as_ref().try_into() {
            Ok(bytes) => u64::from_be_bytes(bytes),
            Err(_) => {
                problem = Some(AuditProblem::Damaged {
                    seq: expected,
                    detail: format!("a key of {} bytes", key.len()),
                });
                break;
            }
        };
        if seq != expected {
            problem = Some(AuditProblem::Removed(expected));
            break;
        }
        match serde_json::from_slice::<Stored>(&value) {
            Ok(Stored::Chained { prev, .. }) if prev != hex(&hash) => {
                problem = Some(AuditProblem::WrongPrevious(seq));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                problem = Some(AuditProblem::Damaged {
                    seq,
                    detail: e.to_string(),
                });
                break;
            }
        }
        hash = chain(&hash, seq, &value);
        match chain_tree.get(seq.to_be_bytes())? {
            Some(stored) if stored.as_ref() == hash => {}
            Some(_) => {
                problem = Some(AuditProblem::Altered(seq));
                break;
            }
            None => {
                problem = Some(AuditProblem::Removed(seq));
                break;
            }
        }
        expected += 1;
    }
    // A chain hash past the last entry: the entries after it were removed.
    if problem.is_none() && chain_tree.get(expected.to_be_bytes())?.is_some() {
        problem = Some(AuditProblem::Removed(expected));
    }
    Ok(AuditReport {
        started: true,
        entries: expected - 1,
        head: hex(&hash),
        problem,
    })
}

/// A chained entry as it is written (borrowing the fact).
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    entry: &'a Fact,
    by: &'a str,
    why: &'a str,
    prev: String,
}

/// The ledger's pseudonym key, made (and flushed) on first use.
fn pseudonym_key(db: &sled::Db) -> Result<[u8; 32], JournalError> {
    let meta = db.open_tree(META_TREE)?;
    if let Some(stored) = meta.get(PSEUDONYM_KEY)? {
        return stored
            .as_ref()
            .try_into()
            .map_err(|_| JournalError::Corrupt {
                seq: 0,
                detail: format!(
                    "the customer pseudonym key is {} bytes, not 32",
                    stored.len()
                ),
            });
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| {
        JournalError::Sled(sled::Error::Io(std::io::Error::other(format!(
            "random source failed: {e}"
        ))))
    })?;
    // Another opener cannot race this one: sled locks the directory.
    meta.insert(PSEUDONYM_KEY, &key)?;
    db.flush()?;
    Ok(key)
}

/// A journal entry: its big-endian position and, as JSON, its fact (bare,
/// or chained with its actor).
fn decode(key: &[u8], value: &[u8]) -> Result<(u64, Stored), JournalError> {
    let seq = u64::from_be_bytes(key.try_into().map_err(|_| JournalError::Corrupt {
        seq: 0,
        detail: format!("key {key:?} is not 8 bytes"),
    })?);
    let stored = serde_json::from_slice(value).map_err(|e| JournalError::Corrupt {
        seq,
        detail: e.to_string(),
    })?;
    Ok((seq, stored))
}
