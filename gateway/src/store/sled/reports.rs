//! Execution reports in sled: the reports, their index by signal, the
//! confirmed watermarks, the newest session epochs and the fill feed, each a
//! tree, changed in an order that any crash leaves consistent, under a
//! per-device lock.

use eagate_protocol::SignalId;

use super::read_u64;
use crate::durable::Durable;
use crate::reports::{
    FeedFill, Ingested, MAX_REPORT_GAP, ReportStore, ReportStoreError, SessionEpoch, StoreFuture,
    StoredReport, Written, resend_outcome,
};

/// Reports in sled: `reports` keyed by (device, seq), `signal_reports`
/// indexing them by signal, `report_watermarks` and `device_sessions` (the
/// newest session epoch) per device.
#[derive(Debug, Clone)]
pub struct SledReportStore {
    durable: Durable,
    reports: sled::Tree,
    by_signal: sled::Tree,
    watermarks: sled::Tree,
    fills: sled::Tree,
    sessions: sled::Tree,
    /// Writes about one device are serialized on one of these, picked by
    /// the device id's hash.
    device_locks: std::sync::Arc<[std::sync::Mutex<()>]>,
}

/// How many locks the devices' writes are spread over.
const DEVICE_LOCK_STRIPES: usize = 256;

impl SledReportStore {
    /// Opens the trees in `db`.
    pub fn open(durable: &Durable) -> sled::Result<Self> {
        let db = durable.db();
        Ok(Self {
            durable: durable.clone(),
            reports: db.open_tree("reports")?,
            by_signal: db.open_tree("signal_reports")?,
            watermarks: db.open_tree("report_watermarks")?,
            fills: db.open_tree("fill_feed")?,
            sessions: db.open_tree("device_sessions")?,
            device_locks: (0..DEVICE_LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// The lock serializing every write about `device`: this process owns
    /// the database (sled locks its directory), so holding it makes a
    /// report's checks and writes one step for every other writer.
    fn device_lock(&self, device: &str) -> std::sync::MutexGuard<'_, ()> {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(device, &mut hasher);
        let stripe = std::hash::Hasher::finish(&hasher) as usize % self.device_locks.len();
        // The lock guards no data of its own; a panic under it leaves
        // nothing half-changed that the trees would not show.
        self.device_locks[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a report, without flushing.
    ///
    /// No sled transaction or batch here: each of those writes sled's IO
    /// buffer out on its own (one disk write per report, whatever the group
    /// commit does), which was most of the gateway's CPU under load. The
    /// per-device lock makes the checks and writes atomic for every other
    /// writer in the process, and the order of the writes keeps every state
    /// a crash can leave (sled recovers a prefix of its log) correct: the
    /// signal index before the report (an index entry without its report is
    /// skipped by readers), the report before the watermark (a watermark
    /// left behind is advanced over stored reports by the next ingest or
    /// session start). Fills alone still take a transaction, so that a fill
    /// and its feed entry are stored together or not at all (the feed must
    /// hold each fill exactly once, and fills are few).
    fn ingest_now(
        &self,
        report: &StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> Result<Ingested, ReportStoreError> {
        if report.seq == 0 {
            return Err(ReportStoreError::ZeroSequence);
        }
        let key = report_key(&report.device_id, report.seq);
        let value = serde_json::to_vec(report).expect("a report always serializes");
        let index_key = [&report.signal_id.0[..], &key].concat();
        let device = report.device_id.as_bytes();
        let _writing = self.device_lock(&report.device_id);
        if let Some(SessionEpoch(epoch)) = epoch {
            let newest = self.sessions.get(device)?.as_deref().map_or(0, read_u64);
            if newest > epoch {
                return Ok(Ingested::Superseded);
            }
            if newest < epoch {
                return Err(ReportStoreError::SessionLost);
            }
        }
        let watermark = self.watermarks.get(device)?.as_deref().map_or(0, read_u64);
        if report.seq > watermark.saturating_add(MAX_REPORT_GAP) {
            return Err(ReportStoreError::TooFarAhead {
                seq: report.seq,
                confirmed: watermark,
            });
        }
        if let Some(existing) = self.reports.get(&key)? {
            let confirmed_up_to = self.advance_watermark(&report.device_id, watermark)?;
            return resend_outcome(&existing, report, confirmed_up_to);
        }
        if report.kind.in_fill_feed() {
            self.store_fill(&key, &value, &index_key, report)?;
        } else {
            self.by_signal.insert(&index_key[..], &[][..])?;
            self.reports.insert(&key[..], &value[..])?;
        }
        let confirmed_up_to = self.advance_watermark(&report.device_id, watermark)?;
        Ok(Ingested::Stored { confirmed_up_to })
    }

    /// Stores a fill (or a reversal), its index entry and its feed entry in
    /// one transaction.
    fn store_fill(
        &self,
        key: &[u8],
        value: &[u8],
        index_key: &[u8],
        report: &StoredReport,
    ) -> Result<(), ReportStoreError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};

        // The feed is a queue, so its key only needs to be unique.
        let feed_key = self.durable.db().generate_id()?.to_be_bytes();
        let feed_value =
            serde_json::to_vec(&FeedFill::of(report)).expect("a fill always serializes");
        (&self.reports, &self.by_signal, &self.fills)
            .transaction(|(reports, by_signal, fills)| {
                by_signal.insert(index_key, &[][..])?;
                fills.insert(&feed_key[..], &feed_value[..])?;
                reports.insert(key, value)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => ReportStoreError::Sled(e),
                TransactionError::Abort(()) => {
                    ReportStoreError::Corrupt("a fill transaction aborted".into())
                }
            })
    }

    /// Advances the device's watermark from `watermark` over every
    /// contiguous stored report; the new watermark. Called under the
    /// device's lock.
    fn advance_watermark(&self, device_id: &str, watermark: u64) -> Result<u64, ReportStoreError> {
        let mut up_to = watermark;
        while self
            .reports
            .contains_key(report_key(device_id, up_to + 1))?
        {
            up_to += 1;
        }
        if up_to != watermark {
            self.watermarks
                .insert(device_id.as_bytes(), &up_to.to_be_bytes()[..])?;
        }
        Ok(up_to)
    }

    fn begin_session_now(&self, device_id: &str) -> Result<(SessionEpoch, u64), ReportStoreError> {
        let device = device_id.as_bytes();
        // Under the device's lock: an ingest under the old epoch either
        // wrote before (and is in the watermark read here) or sees the new
        // epoch and writes nothing.
        let _writing = self.device_lock(device_id);
        // Never one a live session holds, even after the store went back
        // (restored from a backup): the clock, or the last one plus one.
        let last = self.sessions.get(device)?.as_deref().map_or(0, read_u64);
        let epoch = (last + 1).max(crate::clock::unix_ms());
        self.sessions.insert(device, &epoch.to_be_bytes()[..])?;
        let watermark = self.watermarks.get(device)?.as_deref().map_or(0, read_u64);
        // A crash may have left the watermark behind the reports stored.
        let watermark = self.advance_watermark(device_id, watermark)?;
        Ok((SessionEpoch(epoch), watermark))
    }
}

impl ReportStore for SledReportStore {
    fn write<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Written> {
        // Written at once, in the order of the calls (the future is ready
        // when returned): the durability of each is the group commit's.
        let written = self.ingest_now(report, epoch).map(|ingested| {
            // Asked for now, after the write: the flush that answers covers
            // it. Resends too: the first attempt's flush may have failed or
            // still be running. A flush with nothing pending costs little.
            let flushed = self.durable.durable();
            Written {
                ingested,
                durable: Box::pin(async move { Ok(flushed.await?) }),
            }
        });
        Box::pin(std::future::ready(written))
    }

    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)> {
        Box::pin(async move {
            let begun = self.begin_session_now(device_id)?;
            // The reports under the watermark announced must be on disk
            // (another session's last report may still be on its way there),
            // and so must this authentication's nonce claim: a flush asked
            // for after the read covers both (one asked for before it would
            // miss a report written under the old epoch whose own flush is
            // not asked for yet). The epoch need not be on disk: after a
            // crash no session of the old process is left, and sled recovers
            // writes in order, so no report written under this epoch
            // survives without it.
            self.durable.durable().await?;
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
            let mut watermarks = self.confirmed_up_to_each(&[device_id]).await?;
            Ok(watermarks.pop().unwrap_or(0))
        })
    }

    fn confirmed_up_to_each<'a>(&'a self, devices: &'a [&'a str]) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let watermarks = devices
                .iter()
                .map(|device_id| {
                    Ok(self
                        .watermarks
                        .get(device_id.as_bytes())?
                        .as_deref()
                        .map_or(0, read_u64))
                })
                .collect::<Result<Vec<u64>, ReportStoreError>>()?;
            // What is announced as confirmed must be on disk: a flush asked
            // for after the reads covers every write they saw (asked for
            // before them, it could miss one made in between).
            self.durable.durable().await?;
            Ok(watermarks)
        })
    }

    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.by_signal.scan_prefix(signal_id.0) {
                let (index_key, _) = entry?;
                if let Some(value) = self.reports.get(&index_key[16..])? {
                    found.push(StoredReport::from_json(&value)?);
                }
            }
            Ok(found)
        })
    }

    fn report_at<'a>(
        &'a self,
        device_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredReport>> {
        Box::pin(async move {
            self.reports
                .get(report_key(device_id, seq))?
                .map(|value| StoredReport::from_json(&value))
                .transpose()
        })
    }

    fn unclaimed_fills<'a>(
        &'a self,
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<FeedFill>> {
        Box::pin(async move {
            use std::ops::Bound;
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut found = Vec::new();
            for entry in self
                .fills
                .range::<&[u8], _>((from, Bound::Unbounded))
                .take(limit)
            {
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
            self.durable.durable().await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use eagate_protocol::{Fill, Rejection, RejectionText, Report, ReportOutcome};

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
        SledReportStore::open(
            &Durable::new(sled::Config::new().temporary(true).open().unwrap()).unwrap(),
        )
        .unwrap()
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
    async fn a_watermark_a_crash_left_behind_is_advanced_over_the_stored_reports() {
        let store = store();
        for seq in 1..=3 {
            store
                .ingest(&report(seq, ReportOutcome::Received), None)
                .await
                .unwrap();
        }
        // The state a crash between a report's write and its watermark's
        // leaves behind.
        store
            .watermarks
            .insert("dv_A".as_bytes(), &1u64.to_be_bytes()[..])
            .unwrap();
        let (_, watermark) = store.begin_session("dv_A").await.unwrap();
        assert_eq!(watermark, 3);
        assert_eq!(store.confirmed_up_to("dv_A").await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_index_entry_a_crash_left_without_its_report_is_skipped_and_healed_by_the_resend() {
        let store = store();
        let lost = report(1, ReportOutcome::Received);
        // The state a crash between the index entry and the report leaves.
        let key = report_key("dv_A", 1);
        store
            .by_signal
            .insert([&lost.signal_id.0[..], &key].concat(), &[][..])
            .unwrap();
        assert!(store.for_signal(lost.signal_id).await.unwrap().is_empty());
        assert_eq!(store.confirmed_up_to("dv_A").await.unwrap(), 0);
        // The device resends what was never confirmed.
        assert_eq!(
            store.ingest(&lost, None).await.unwrap(),
            Ingested::Stored { confirmed_up_to: 1 }
        );
        assert_eq!(store.for_signal(lost.signal_id).await.unwrap(), vec![lost]);
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
}
