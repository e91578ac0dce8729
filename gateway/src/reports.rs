//! Execution reports: stored once per (device, report sequence), however
//! often a device resends them, and confirmed only once durable.
//!
//! The store keeps, per device, the highest sequence number below which
//! nothing is missing (the confirmed watermark), and per signal an index of
//! every report about it, to answer "what happened to signal X on every
//! device".

use std::future::Future;
use std::pin::Pin;

use eagate_protocol::{Decimal, Report, ReportOutcome, SignalId};
use serde::{Deserialize, Serialize};

/// A report as stored: flat, so that it reads the same as JSON in sled and as
/// the fields of a Redis stream entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    /// The reporting device.
    pub device_id: String,
    /// The device's report sequence number.
    pub seq: u64,
    /// The signal it is about.
    pub signal_id: SignalId,
    /// `received`, `filled` or `rejected`.
    pub kind: ReportKind,
    /// When it happened on the device, Unix ms.
    pub at_ms: u64,
    /// When the gateway stored it, Unix ms.
    pub stored_at_ms: u64,
    /// Fills: the terminal's ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<u64>,
    /// Fills: the execution price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Decimal>,
    /// Fills: the executed lots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Decimal>,
    /// Rejections: MetaTrader's error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Rejections: the terminal's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_text: Option<String>,
}

/// What a report says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// The device has the signal.
    Received,
    /// It was (partly) executed.
    Filled,
    /// It was refused by the terminal or broker.
    Rejected,
}

impl StoredReport {
    /// The stored form of `report` from `device_id`, stored at `stored_at_ms`.
    pub fn new(device_id: &str, report: &Report, stored_at_ms: u64) -> Self {
        let mut stored = Self {
            device_id: device_id.to_owned(),
            seq: report.seq,
            signal_id: report.signal_id,
            kind: ReportKind::Received,
            at_ms: report.at_ms,
            stored_at_ms,
            ticket: None,
            price: None,
            volume: None,
            error_code: None,
            error_text: None,
        };
        match &report.outcome {
            ReportOutcome::Received => {}
            ReportOutcome::Filled(fill) => {
                stored.kind = ReportKind::Filled;
                stored.ticket = Some(fill.ticket);
                stored.price = Some(fill.price);
                stored.volume = Some(fill.volume);
            }
            ReportOutcome::Rejected(rejection) => {
                stored.kind = ReportKind::Rejected;
                stored.error_code = Some(rejection.code);
                stored.error_text = Some(rejection.text.to_string());
            }
        }
        stored
    }

    /// Whether two stores of one (device, seq) carry the same report, apart
    /// from when each was stored.
    pub fn same_report(&self, other: &StoredReport) -> bool {
        Self {
            stored_at_ms: 0,
            ..self.clone()
        } == Self {
            stored_at_ms: 0,
            ..other.clone()
        }
    }
}

/// Which of a device's sessions may write its reports. Every successful
/// authentication takes a new, higher epoch ([`ReportStore::begin_session`]);
/// a write under an older one is refused, atomically with the write, so a
/// replaced session can never store (nor have confirmed) a report once its
/// successor has started, on this gateway or any other sharing the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionEpoch(pub u64);

/// What happened when a report was offered to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Newly stored.
    Stored {
        /// Every report of the device up to this sequence number is stored.
        confirmed_up_to: u64,
    },
    /// The same report was stored before (a resend); nothing was written.
    AlreadyStored {
        /// Every report of the device up to this sequence number is stored.
        confirmed_up_to: u64,
    },
    /// Another report is stored under this (device, seq); nothing was
    /// written, and this one must not be confirmed.
    Conflict {
        /// The report stored under the number.
        stored: Box<StoredReport>,
    },
    /// A newer session of the device has begun; nothing was written.
    Superseded,
}

impl Ingested {
    /// The device's watermark, when the report is stored (now or before).
    pub fn confirmed_up_to(&self) -> Option<u64> {
        match self {
            Self::Stored { confirmed_up_to } | Self::AlreadyStored { confirmed_up_to } => {
                Some(*confirmed_up_to)
            }
            Self::Conflict { .. } | Self::Superseded => None,
        }
    }
}

/// Why the report store failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportStoreError {
    /// sled failed.
    #[error("report store: {0}")]
    Sled(#[from] sled::Error),
    /// Redis failed.
    #[error("report store: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record could not be decoded.
    #[error("a stored report is damaged: {0}")]
    Corrupt(String),
    /// A sequence number of 0 (they start at 1).
    #[error("report sequence numbers start at 1")]
    ZeroSequence,
    /// A sequence number so far above the confirmed one that the reports
    /// between cannot all be waiting in a device's outbox.
    #[error("report {seq} is more than {MAX_REPORT_GAP} above the confirmed {confirmed}")]
    TooFarAhead {
        /// The report's sequence number.
        seq: u64,
        /// The device's confirmed watermark.
        confirmed: u64,
    },
}

/// How far above its confirmed watermark a device may report. Bounds the
/// work of advancing the watermark over a gap, and what a device can make
/// the store hold; an SDK keeps at most this many unconfirmed reports.
pub const MAX_REPORT_GAP: u64 = 4096;

/// The outcome of offering `report` where `existing` (the stored JSON) is
/// already in place: the same report resent, or another report under the
/// same number. The first stored version always stands.
pub(crate) fn resend_outcome(
    existing: &[u8],
    report: &StoredReport,
    confirmed_up_to: u64,
) -> Result<Ingested, ReportStoreError> {
    let existing: StoredReport =
        serde_json::from_slice(existing).map_err(|e| ReportStoreError::Corrupt(e.to_string()))?;
    Ok(if existing.same_report(report) {
        Ingested::AlreadyStored { confirmed_up_to }
    } else {
        Ingested::Conflict {
            stored: Box::new(existing),
        }
    })
}

/// A boxed future, so stores can be used as `dyn ReportStore`.
pub type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ReportStoreError>> + Send + 'a>>;

/// Where reports are kept. Implementations store each (device, seq) once and
/// return from [`ReportStore::ingest`] only when the report is durable.
pub trait ReportStore: Send + Sync + std::fmt::Debug {
    /// Stores `report` unless its (device, seq) is already stored. With a
    /// session epoch, only while that epoch is the device's newest: the
    /// check and the write are one atomic step. Without one (reports that
    /// arrive outside a device session) nothing is fenced.
    fn ingest<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Ingested>;

    /// Begins a new session of the device: takes the next epoch, which
    /// fences off every earlier session's writes, and returns it with the
    /// device's confirmed watermark as of that moment (durable), which no
    /// earlier session can move any more.
    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)>;

    /// The device's newest session epoch (0 before its first session).
    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch>;

    /// The device's confirmed watermark: 0 before its first report.
    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64>;

    /// Every stored report about `signal_id`, by device then sequence.
    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>>;

    /// Up to `limit` stored fills the fill feed's reader has not claimed,
    /// oldest first. The affiliate programme reads first trades from here.
    /// A fill may appear twice (a resend after a crash); readers are
    /// idempotent.
    fn unclaimed_fills(&self, limit: usize) -> StoreFuture<'_, Vec<FeedFill>>;

    /// Removes fills the reader has handled from the feed.
    fn claim_fills<'a>(&'a self, fills: &'a [FeedFill]) -> StoreFuture<'a, ()>;
}

/// A fill in the feed: which device filled, and the feed's own mark for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedFill {
    /// The store's position of the fill in the feed.
    #[serde(skip)]
    pub mark: Vec<u8>,
    /// The device that reported the fill.
    pub device_id: String,
    /// Its report sequence.
    pub seq: u64,
    /// When the gateway stored it, Unix ms.
    pub stored_at_ms: u64,
}

impl FeedFill {
    /// A feed entry that could not be read: no device, so readers skip it,
    /// but it can be claimed like any other.
    pub fn damaged() -> Self {
        Self {
            mark: Vec::new(),
            device_id: String::new(),
            seq: 0,
            stored_at_ms: 0,
        }
    }

    /// The feed entry of a stored fill.
    pub fn of(report: &StoredReport) -> Self {
        Self {
            mark: Vec::new(),
            device_id: report.device_id.clone(),
            seq: report.seq,
            stored_at_ms: report.stored_at_ms,
        }
    }
}

/// Reports in sled: `reports` keyed by (device, seq), `signal_reports`
/// indexing them by signal, `report_watermarks` and `device_sessions` (the
/// newest session epoch) per device.
#[derive(Debug, Clone)]
pub struct SledReportStore {
    db: sled::Db,
    reports: sled::Tree,
    by_signal: sled::Tree,
    watermarks: sled::Tree,
    fills: sled::Tree,
    sessions: sled::Tree,
}

/// Why a sled ingest transaction stopped without writing.
enum Refused {
    TooFarAhead(u64),
    Superseded,
}

impl SledReportStore {
    /// Opens the trees in `db`.
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            db: db.clone(),
            reports: db.open_tree("reports")?,
            by_signal: db.open_tree("signal_reports")?,
            watermarks: db.open_tree("report_watermarks")?,
            fills: db.open_tree("fill_feed")?,
            sessions: db.open_tree("device_sessions")?,
        })
    }

    fn ingest_now(
        &self,
        report: &StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> Result<Ingested, ReportStoreError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};

        if report.seq == 0 {
            return Err(ReportStoreError::ZeroSequence);
        }
        let key = report_key(&report.device_id, report.seq);
        let value = serde_json::to_vec(report).expect("a report always serializes");
        let index_key = [&report.signal_id.0[..], &key].concat();
        let device = report.device_id.as_bytes();
        // Only a fill goes to the feed; its key is taken before the
        // transaction (the feed is a queue, so order does not matter).
        let feed_entry = match report.kind {
            ReportKind::Filled => Some((
                self.db.generate_id()?.to_be_bytes(),
                serde_json::to_vec(&FeedFill::of(report)).expect("a fill always serializes"),
            )),
            _ => None,
        };
        let trees = (
            &self.reports,
            &self.by_signal,
            &self.watermarks,
            &self.fills,
            &self.sessions,
        );
        let outcome = trees.transaction(|(reports, by_signal, watermarks, fills, sessions)| {
            if let Some(SessionEpoch(epoch)) = epoch {
                let newest = sessions.get(device)?.as_deref().map_or(0, read_u64);
                if newest != epoch {
                    return Err(ConflictableTransactionError::Abort(Refused::Superseded));
                }
            }
            let watermark = watermarks.get(device)?.as_deref().map_or(0, read_u64);
            if report.seq > watermark.saturating_add(MAX_REPORT_GAP) {
                return Err(ConflictableTransactionError::Abort(Refused::TooFarAhead(
                    watermark,
                )));
            }
            if let Some(existing) = reports.get(&key)? {
                return Ok((false, watermark, Some(existing)));
            }
            reports.insert(&key[..], &value[..])?;
            by_signal.insert(&index_key[..], &[][..])?;
            if let Some((feed_key, feed_value)) = &feed_entry {
                fills.insert(&feed_key[..], &feed_value[..])?;
            }
            // Advance the watermark over every contiguous stored seq.
            let mut up_to = watermark;
            while reports
                .get(report_key(&report.device_id, up_to + 1))?
                .is_some()
            {
                up_to += 1;
            }
            if up_to != watermark {
                watermarks.insert(device, &up_to.to_be_bytes()[..])?;
            }
            Ok::<_, ConflictableTransactionError<Refused>>((true, up_to, None))
        });
        let (_, confirmed_up_to, existing) = match outcome {
            Ok(outcome) => outcome,
            Err(TransactionError::Storage(e)) => return Err(ReportStoreError::Sled(e)),
            Err(TransactionError::Abort(Refused::Superseded)) => return Ok(Ingested::Superseded),
            Err(TransactionError::Abort(Refused::TooFarAhead(confirmed))) => {
                return Err(ReportStoreError::TooFarAhead {
                    seq: report.seq,
                    confirmed,
                });
            }
        };
        match existing {
            Some(existing) => resend_outcome(&existing, report, confirmed_up_to),
            None => Ok(Ingested::Stored { confirmed_up_to }),
        }
    }

    fn begin_session_now(&self, device_id: &str) -> Result<(SessionEpoch, u64), ReportStoreError> {
        use sled::Transactional;
        use sled::transaction::TransactionError;

        let device = device_id.as_bytes();
        // One transaction with the ingest's reads of both trees: an ingest
        // under the old epoch either committed before (and is in the
        // watermark read here) or sees the new epoch and writes nothing.
        (&self.sessions, &self.watermarks)
            .transaction(|(sessions, watermarks)| {
                let epoch = sessions.get(device)?.as_deref().map_or(0, read_u64) + 1;
                sessions.insert(device, &epoch.to_be_bytes()[..])?;
                let watermark = watermarks.get(device)?.as_deref().map_or(0, read_u64);
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>((
                    SessionEpoch(epoch),
                    watermark,
                ))
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => ReportStoreError::Sled(e),
                TransactionError::Abort(()) => {
                    ReportStoreError::Corrupt("a session transaction aborted".into())
                }
            })
    }
}

impl ReportStore for SledReportStore {
    fn ingest<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Ingested> {
        Box::pin(async move {
            let ingested = self.ingest_now(report, epoch)?;
            // Durable before it is confirmed, resends included: the first
            // attempt's flush may have failed or been cut short. A flush with
            // nothing pending costs little.
            crate::durable::flush(&self.db).await?;
            Ok(ingested)
        })
    }

    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)> {
        Box::pin(async move {
            let begun = self.begin_session_now(device_id)?;
            // The watermark announced must be on disk (another session's
            // last report may still be on its way there). The epoch need not
            // be: after a crash no session of the old process is left.
            crate::durable::flush(&self.db).await?;
            Ok(begun)
        })
    }

    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch> {
        Box::pin(async move {
            Ok(SessionEpoch(
                self.sessions
                    .get(device_id.as_bytes())?
                    .as_deref()
                    .map_or(0, read_u64),
            ))
        })
    }

    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // What is announced as confirmed must be on disk.
            crate::durable::flush(&self.db).await?;
            Ok(self
                .watermarks
                .get(device_id.as_bytes())?
                .as_deref()
                .map_or(0, read_u64))
        })
    }

    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.by_signal.scan_prefix(signal_id.0) {
                let (index_key, _) = entry?;
                if let Some(value) = self.reports.get(&index_key[16..])? {
                    found.push(
                        serde_json::from_slice(&value)
                            .map_err(|e| ReportStoreError::Corrupt(e.to_string()))?,
                    );
                }
            }
            Ok(found)
        })
    }

    fn unclaimed_fills(&self, limit: usize) -> StoreFuture<'_, Vec<FeedFill>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.fills.iter().take(limit) {
                let (key, value) = entry?;
                let mut fill = serde_json::from_slice(&value).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "a fill feed entry is damaged; skipping it");
                    FeedFill::damaged()
                });
                fill.mark = key.to_vec();
                found.push(fill);
            }
            Ok(found)
        })
    }

    fn claim_fills<'a>(&'a self, fills: &'a [FeedFill]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut batch = sled::Batch::default();
            for fill in fills {
                batch.remove(&fill.mark[..]);
            }
            self.fills.apply_batch(batch)?;
            crate::durable::flush(&self.db).await?;
            Ok(())
        })
    }
}

/// Length-prefixed device id then big-endian seq: one device's reports are
/// contiguous and in sequence order, and no id can run into another's.
fn report_key(device_id: &str, seq: u64) -> Vec<u8> {
    let id = device_id.as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(id.len() as u8);
    key.extend_from_slice(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eagate_protocol::{Fill, Rejection, RejectionText};

    fn report(seq: u64, outcome: ReportOutcome) -> StoredReport {
        StoredReport::new(
            "dv_A",
            &Report {
                seq,
                signal_id: SignalId([seq as u8; 16]),
                at_ms: 1_000 + seq,
                outcome,
            },
            5_000,
        )
    }

    fn store() -> SledReportStore {
        SledReportStore::open(&sled::Config::new().temporary(true).open().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_resend_is_already_stored_and_another_report_under_its_number_a_conflict() {
        let store = store();
        let first = report(1, ReportOutcome::Received);
        assert_eq!(
            store.ingest(&first, None).await.unwrap(),
            Ingested::Stored { confirmed_up_to: 1 }
        );
        assert_eq!(
            store.ingest(&first, None).await.unwrap(),
            Ingested::AlreadyStored { confirmed_up_to: 1 }
        );
        let altered = report(
            1,
            ReportOutcome::Rejected(Rejection {
                code: 10019,
                text: RejectionText::lossy("no money"),
            }),
        );
        assert_eq!(
            store.ingest(&altered, None).await.unwrap(),
            Ingested::Conflict {
                stored: Box::new(first.clone())
            }
        );
        assert_eq!(
            store.for_signal(first.signal_id).await.unwrap(),
            vec![first]
        );
    }

    #[tokio::test]
    async fn a_write_under_an_older_session_epoch_is_refused_and_stores_nothing() {
        let store = store();
        let (old, watermark) = store.begin_session("dv_A").await.unwrap();
        assert_eq!(watermark, 0);
        let first = report(1, ReportOutcome::Received);
        assert!(matches!(
            store.ingest(&first, Some(old)).await.unwrap(),
            Ingested::Stored { .. }
        ));
        let (new, watermark) = store.begin_session("dv_A").await.unwrap();
        assert!(new > old);
        assert_eq!(watermark, 1);
        assert_eq!(store.current_session("dv_A").await.unwrap(), new);
        let late = report(2, ReportOutcome::Received);
        assert_eq!(
            store.ingest(&late, Some(old)).await.unwrap(),
            Ingested::Superseded
        );
        assert_eq!(store.confirmed_up_to("dv_A").await.unwrap(), 1);
        assert!(store.for_signal(late.signal_id).await.unwrap().is_empty());
        assert!(matches!(
            store.ingest(&late, Some(new)).await.unwrap(),
            Ingested::Stored { confirmed_up_to: 2 }
        ));
    }

    #[tokio::test]
    async fn concurrent_resends_of_one_report_store_it_exactly_once() {
        let store = std::sync::Arc::new(store());
        let fill = report(
            7,
            ReportOutcome::Filled(Fill {
                ticket: 42,
                price: "1.1".parse().unwrap(),
                volume: "0.1".parse().unwrap(),
            }),
        );
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                let fill = fill.clone();
                tokio::spawn(async move {
                    matches!(
                        store.ingest(&fill, None).await.unwrap(),
                        Ingested::Stored { .. }
                    )
                })
            })
            .collect();
        let mut stored = 0;
        for task in tasks {
            stored += usize::from(task.await.unwrap());
        }
        assert_eq!(stored, 1);
        assert_eq!(store.for_signal(fill.signal_id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sequence_zero_is_refused() {
        assert!(matches!(
            store()
                .ingest(&report(0, ReportOutcome::Received), None)
                .await,
            Err(ReportStoreError::ZeroSequence)
        ));
    }

    #[test]
    fn a_stored_fill_reads_as_flat_json_with_exact_decimals() {
        let fill = report(
            2,
            ReportOutcome::Filled(Fill {
                ticket: 9,
                price: "2350.27".parse().unwrap(),
                volume: "0.10".parse().unwrap(),
            }),
        );
        let json = serde_json::to_value(&fill).unwrap();
        assert_eq!(json["kind"], "filled");
        assert_eq!(json["price"], "2350.27");
        assert_eq!(json["volume"], "0.10");
        assert!(json.get("error_code").is_none());
    }
}
