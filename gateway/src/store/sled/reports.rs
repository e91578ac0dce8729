//! Execution reports in sled: the reports, their index by signal, the
//! confirmed watermarks, the newest session epochs and the fill feed, each a
//! tree, changed together in one transaction per report.

use eagate_protocol::SignalId;

use super::read_u64;
use crate::reports::{
    FeedFill, Ingested, MAX_REPORT_GAP, ReportKind, ReportStore, ReportStoreError, SessionEpoch,
    StoreFuture, StoredReport, resend_outcome,
};

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
}
