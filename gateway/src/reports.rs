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
use utoipa::ToSchema;

use crate::api_schema;

/// A report as stored: flat, so that it reads the same as JSON in sled and as
/// the fields of a Redis stream entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoredReport {
    /// The reporting device.
    pub device_id: String,
    /// The device's report sequence number.
    pub seq: u64,
    /// The signal it is about.
    #[schema(value_type = api_schema::SignalId)]
    pub signal_id: SignalId,
    /// `received`, `filled`, `rejected` or `reversed`.
    pub kind: ReportKind,
    /// When it happened on the device, Unix ms.
    pub at_ms: u64,
    /// When the gateway stored it, Unix ms.
    pub stored_at_ms: u64,
    /// Fills and reversals: the terminal's ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<u64>,
    /// Fills: the execution price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<api_schema::Decimal>)]
    pub price: Option<Decimal>,
    /// Fills: the executed lots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<api_schema::Decimal>)]
    pub volume: Option<Decimal>,
    /// Rejections: MetaTrader's error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Rejections: the terminal's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_text: Option<String>,
}

/// What a report says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// The device has the signal.
    Received,
    /// It was (partly) executed.
    Filled,
    /// It was refused by the terminal or broker.
    Rejected,
    /// Fills of it reported before, with the report's ticket, were undone.
    Reversed,
}

impl ReportKind {
    /// Whether reports of this kind go into the fill feed, which the
    /// affiliate programme reads: fills, and reversals of fills.
    pub fn in_fill_feed(self) -> bool {
        matches!(self, Self::Filled | Self::Reversed)
    }
}

impl StoredReport {
    /// A report as a store keeps it (its JSON), or why it cannot be read.
    pub(crate) fn from_json(json: &[u8]) -> Result<Self, ReportStoreError> {
        serde_json::from_slice(json).map_err(|e| ReportStoreError::Corrupt(e.to_string()))
    }

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
            ReportOutcome::Reversed(reversal) => {
                stored.kind = ReportKind::Reversed;
                stored.ticket = Some(reversal.ticket);
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
    /// The store's newest session of the device is older than the one
    /// writing: the store lost its last writes (a failover to a replica
    /// behind, a restore from a backup). Nothing was written; no newer
    /// session replaced the writing one, which begins anew.
    #[error("the store lost the device's newest session (a failover or a restore)")]
    SessionLost,
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

impl ReportStoreError {
    /// Whether the store is only away for now (see
    /// [`crate::outage::is_outage`]): the same call may succeed in a
    /// moment.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(e) if crate::outage::is_outage(e))
    }
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
    let existing = StoredReport::from_json(existing)?;
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

/// Resolves once a written report is durable; owns what it needs, so a
/// session can hold several while it goes on with its work. It must make
/// progress without being polled (work on a thread or task of its own, or
/// a wait for one): a session polls only the oldest it holds.
pub type Durability = Pin<Box<dyn Future<Output = Result<(), ReportStoreError>> + Send>>;

/// A report written: what happened, and when it is durable (which is when
/// it may be confirmed).
pub struct Written {
    /// What the write found and did.
    pub ingested: Ingested,
    /// Resolves once the write (or, for a resend, the first write) is
    /// durable.
    pub durable: Durability,
}

impl Written {
    /// A write that needs nothing more: durable once acknowledged (Redis,
    /// as its AOF policy makes it), or one that stored nothing (refused, a
    /// conflict).
    pub fn final_outcome(ingested: Ingested) -> Self {
        Self {
            ingested,
            durable: Box::pin(std::future::ready(Ok(()))),
        }
    }
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("ingested", &self.ingested)
            .finish_non_exhaustive()
    }
}

/// Where reports are kept. Implementations store each (device, seq) once;
/// a report is confirmed only once durable.
pub trait ReportStore: Send + Sync + std::fmt::Debug {
    /// Writes `report` unless its (device, seq) is already stored, and
    /// returns once the outcome is known, before the write is durable. With
    /// a session epoch, only while that epoch is the device's newest: the
    /// check and the write are one atomic step. Without one (reports that
    /// arrive outside a device session) nothing is fenced.
    ///
    /// Writes one caller makes one after another become durable in that
    /// order, so a session can write its next report while the previous one
    /// is on its way to disk, and confirm each in turn.
    fn write<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Written>;

    /// Writes a run of one device's reports, in order, each as
    /// [`ReportStore::write`] does, and stops after the first that is not
    /// stored anew: one refused, in conflict, of a replaced session, or
    /// that failed, so nothing is stored after a report the device must
    /// hear about first (it renumbers after a conflict). Backends that
    /// cannot compare a resend with what is stored stop after one found
    /// already stored too. Returns an outcome per report attempted, in
    /// order, at least one; the caller writes the rest again once it has
    /// looked at the last. Backends with round trips write a run at once.
    fn write_run<'a>(
        &'a self,
        reports: &'a [StoredReport],
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Vec<Result<Written, ReportStoreError>>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(reports.len());
            for report in reports {
                let written = self.write(report, epoch).await;
                let stored_anew = matches!(
                    written,
                    Ok(Written {
                        ingested: Ingested::Stored { .. },
                        ..
                    })
                );
                outcomes.push(written);
                if !stored_anew {
                    break;
                }
            }
            Ok(outcomes)
        })
    }

    /// Writes `report` as [`ReportStore::write`] does and returns once it is
    /// durable.
    fn ingest<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Ingested> {
        Box::pin(async move {
            let written = self.write(report, epoch).await?;
            written.durable.await?;
            Ok(written.ingested)
        })
    }

    /// Begins a new session of the device: takes the next epoch, which
    /// fences off every earlier session's writes, and returns it with the
    /// device's confirmed watermark as of that moment (durable), which no
    /// earlier session can move any more.
    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)>;

    /// The device's newest session epoch (0 before its first session).
    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch>;

    /// The newest session epoch of each of `devices`, in order. Backends
    /// with round trips answer all at once.
    fn current_sessions<'a>(
        &'a self,
        devices: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<SessionEpoch>> {
        Box::pin(async move {
            let mut epochs = Vec::with_capacity(devices.len());
            for device_id in devices {
                epochs.push(self.current_session(device_id).await?);
            }
            Ok(epochs)
        })
    }

    /// The device's confirmed watermark: 0 before its first report.
    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64>;

    /// The confirmed watermark of each of `devices`, in order (a device
    /// list's): backends answer all at once, with one flush or one round
    /// trip rather than one per device.
    fn confirmed_up_to_each<'a>(&'a self, devices: &'a [&'a str]) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let mut watermarks = Vec::with_capacity(devices.len());
            for device_id in devices {
                watermarks.push(self.confirmed_up_to(device_id).await?);
            }
            Ok(watermarks)
        })
    }

    /// Every stored report about `signal_id`, by device then sequence.
    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>>;

    /// The report stored under `seq` of `device_id`, if any.
    fn report_at<'a>(
        &'a self,
        device_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredReport>>;

    /// Up to `limit` stored fills the fill feed's reader has not claimed,
    /// oldest first, after the entry marked `after` (from the start when
    /// `None`): a reader pages past entries it leaves in the feed. The
    /// affiliate programme reads first trades from here. A fill may appear
    /// twice (a resend after a crash); readers are idempotent.
    fn unclaimed_fills<'a>(
        &'a self,
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<FeedFill>>;

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
    /// The signal it filled (absent in entries written before the feed
    /// carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_id: Option<SignalId>,
    /// The executed lots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Decimal>,
    /// Not a fill but a reversal: the device's fills of `signal_id`
    /// reported before it with this ticket were undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses_ticket: Option<u64>,
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
            signal_id: None,
            volume: None,
            reverses_ticket: None,
        }
    }

    /// The feed entry of a stored fill or reversal.
    pub fn of(report: &StoredReport) -> Self {
        Self {
            mark: Vec::new(),
            device_id: report.device_id.clone(),
            seq: report.seq,
            stored_at_ms: report.stored_at_ms,
            signal_id: Some(report.signal_id),
            volume: report.volume,
            reverses_ticket: match report.kind {
                ReportKind::Reversed => report.ticket,
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eagate_protocol::Fill;

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
