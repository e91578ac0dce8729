//! Counters for Prometheus, rendered as its text format by the sidecar's
//! `/metrics`. Atomics only: updating a metric never waits on a lock.
//!
//! Why not `prometheus-client` (the maintained crate): every label here is
//! a fixed, known set (failure reasons, report outcomes, endings), so each
//! series is a plain atomic, and the whole exposition is one short function
//! checked by the tests below and by the sidecar's tests. The crate would
//! put label families behind a lock on the report path, measure time in
//! `f64` seconds (this crate keeps durations integral and prints exact
//! decimals), and change the text scrapers and dashboards already read
//! (OpenMetrics' `# EOF`, float bucket bounds) for no series we lack. Should
//! labels ever come from data (per channel, per account), that is the time
//! to move to it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::checks::FailureReason;
use super::close::Close;
use super::connection_gate::TurnedAway;
use crate::reports::Ingested;

/// Upper bounds of the ingest latency buckets, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 11] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// The metrics at one instant; counters only grow, so two snapshots give
/// rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Authenticated device sessions now.
    pub connections: i64,
    /// Refused authentications, all reasons.
    pub auth_failures: u64,
    /// Signals written to device sessions.
    pub signals_delivered: u64,
    /// Reports newly stored.
    pub reports_stored: u64,
    /// Reports offered to the store, whatever came of them.
    pub reports_ingested: u64,
    /// Failed store operations.
    pub store_errors: u64,
    /// Ingest latencies per bucket of [`LATENCY_BOUNDS_US`] (each its own
    /// range, not cumulative).
    pub latency_buckets: [u64; LATENCY_BOUNDS_US.len()],
    /// Ingest latencies measured.
    pub latency_count: u64,
    /// Their sum, in microseconds.
    pub latency_sum_us: u64,
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicI64,
    auth_failures: [AtomicU64; FailureReason::ALL.len()],
    turned_away: [AtomicU64; TurnedAway::LABELS.len()],
    signals_delivered: AtomicU64,
    reports_stored: AtomicU64,
    reports_duplicate: AtomicU64,
    reports_conflicting: AtomicU64,
    reports_superseded: AtomicU64,
    reports_unknown_signal: AtomicU64,
    resumes_beyond_head: AtomicU64,
    session_endings: [AtomicU64; Close::NAMES.len()],
    store_errors: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// A device session started (+1) or ended (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.fetch_add(delta, Relaxed);
    }

    /// An authentication was refused.
    pub fn auth_failure(&self, reason: FailureReason) {
        self.auth_failures[reason.index()].fetch_add(1, Relaxed);
    }

    /// A connection was refused by the gate.
    pub fn turned_away(&self, why: TurnedAway) {
        self.turned_away[why.index()].fetch_add(1, Relaxed);
    }

    /// A signal was written to a device's stream.
    pub fn signal_delivered(&self) {
        self.signals_delivered.fetch_add(1, Relaxed);
    }

    /// A report was offered to the store, with what came of it and how
    /// long from its arrival until the store answered.
    pub fn report_ingested(&self, ingested: &Ingested, latency: Duration) {
        let counter = match ingested {
            Ingested::Stored { .. } => &self.reports_stored,
            Ingested::AlreadyStored { .. } => &self.reports_duplicate,
            Ingested::Conflict { .. } => &self.reports_conflicting,
            Ingested::Superseded => &self.reports_superseded,
        };
        counter.fetch_add(1, Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Buckets are cumulative in the text format; here each holds its own
        // range and rendering adds them up.
        if let Some(bucket) = LATENCY_BOUNDS_US.iter().position(|&bound| micros <= bound) {
            self.latency_buckets[bucket].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(micros, Relaxed);
    }

    /// A report named a signal the log does not hold (expired, or never
    /// published); it was stored all the same.
    pub fn report_about_unknown_signal(&self) {
        self.reports_unknown_signal.fetch_add(1, Relaxed);
    }

    /// A device named a resume position beyond its channel's head.
    pub fn resume_beyond_head(&self) {
        self.resumes_beyond_head.fetch_add(1, Relaxed);
    }

    /// A device connection closed, ending as `close` says.
    pub fn session_ended(&self, close: Close) {
        self.session_endings[close.index()].fetch_add(1, Relaxed);
    }

    /// A store operation failed.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// The counters now, for the console's health page (the same numbers
    /// `/metrics` shows).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let sum = |counters: &[AtomicU64]| counters.iter().map(|c| c.load(Relaxed)).sum();
        // The count before the buckets: a report adds to its bucket first,
        // so the buckets read after hold at least as many as the count.
        let latency_count = self.latency_count.load(Relaxed);
        let latency_sum_us = self.latency_sum_us.load(Relaxed);
        MetricsSnapshot {
            connections: self.connections.load(Relaxed),
            auth_failures: sum(&self.auth_failures),
            signals_delivered: self.signals_delivered.load(Relaxed),
            reports_stored: self.reports_stored.load(Relaxed),
            reports_ingested: self.reports_stored.load(Relaxed)
                + self.reports_duplicate.load(Relaxed)
                + self.reports_conflicting.load(Relaxed)
                + self.reports_superseded.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
            latency_buckets: std::array::from_fn(|i| self.latency_buckets[i].load(Relaxed)),
            latency_count,
            latency_sum_us,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "eagate_device_connections",
            "gauge",
            "Authenticated device sessions now.",
        );
        let _ = writeln!(
            out,
            "eagate_device_connections {}",
            self.connections.load(Relaxed)
        );
        header(
            &mut out,
            "eagate_auth_failures_total",
            "counter",
            "Refused device authentications, by reason.",
        );
        for reason in FailureReason::ALL {
            let _ = writeln!(
                out,
                "eagate_auth_failures_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.auth_failures[reason.index()].load(Relaxed)
            );
        }
        header(
            &mut out,
            "eagate_connections_turned_away_total",
            "counter",
            "Device connections refused: a source opening too many (before or right after the handshake), or too many waiting to authenticate.",
        );
        for (reason, count) in TurnedAway::LABELS.iter().zip(&self.turned_away) {
            let _ = writeln!(
                out,
                "eagate_connections_turned_away_total{{reason=\"{reason}\"}} {}",
                count.load(Relaxed)
            );
        }
        header(
            &mut out,
            "eagate_signals_delivered_total",
            "counter",
            "Signals written to device sessions.",
        );
        let _ = writeln!(
            out,
            "eagate_signals_delivered_total {}",
            self.signals_delivered.load(Relaxed)
        );
        header(
            &mut out,
            "eagate_reports_ingested_total",
            "counter",
            "Device reports offered to the store, by outcome.",
        );
        for (outcome, counter) in [
            ("stored", &self.reports_stored),
            ("duplicate", &self.reports_duplicate),
            ("conflict", &self.reports_conflicting),
            ("superseded", &self.reports_superseded),
        ] {
            let _ = writeln!(
                out,
                "eagate_reports_ingested_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Relaxed)
            );
        }
        header(
            &mut out,
            "eagate_reports_about_unknown_signals_total",
            "counter",
            "Reports stored about a signal the log does not hold (expired or never published).",
        );
        let _ = writeln!(
            out,
            "eagate_reports_about_unknown_signals_total {}",
            self.reports_unknown_signal.load(Relaxed)
        );
        header(
            &mut out,
            "eagate_resumes_beyond_head_total",
            "counter",
            "Resume points beyond their channel's head (a reset log, or a device of another deployment).",
        );
        let _ = writeln!(
            out,
            "eagate_resumes_beyond_head_total {}",
            self.resumes_beyond_head.load(Relaxed)
        );
        header(
            &mut out,
            "eagate_device_connections_closed_total",
            "counter",
            "Device connections closed by the gateway or the device, by close code.",
        );
        for (name, counter) in Close::NAMES.iter().zip(&self.session_endings) {
            let _ = writeln!(
                out,
                "eagate_device_connections_closed_total{{reason=\"{name}\"}} {}",
                counter.load(Relaxed)
            );
        }
        header(
            &mut out,
            "eagate_report_ingest_seconds",
            "histogram",
            "Time from a report's arrival until it is durable.",
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BOUNDS_US.iter().zip(&self.latency_buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "eagate_report_ingest_seconds_bucket{{le=\"{}\"}} {cumulative}",
                seconds(*bound)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "eagate_report_ingest_seconds_bucket{{le=\"+Inf\"}} {count}\neagate_report_ingest_seconds_sum {}\neagate_report_ingest_seconds_count {count}",
            seconds(self.latency_sum_us.load(Relaxed))
        );
        header(
            &mut out,
            "eagate_store_errors_total",
            "counter",
            "Failed store operations.",
        );
        let _ = writeln!(
            out,
            "eagate_store_errors_total {}",
            self.store_errors.load(Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Microseconds as decimal seconds, without floating point.
fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_and_the_sum_is_exact() {
        let metrics = Metrics::default();
        let stored = Ingested::Stored { confirmed_up_to: 1 };
        let duplicate = Ingested::AlreadyStored { confirmed_up_to: 1 };
        metrics.report_ingested(&stored, Duration::from_micros(400));
        metrics.report_ingested(&stored, Duration::from_micros(3_000));
        metrics.report_ingested(&duplicate, Duration::from_secs(2));
        let text = metrics.render();
        assert!(text.contains("eagate_report_ingest_seconds_bucket{le=\"0.000500\"} 1\n"));
        assert!(text.contains("eagate_report_ingest_seconds_bucket{le=\"0.005000\"} 2\n"));
        assert!(text.contains("eagate_report_ingest_seconds_bucket{le=\"1.000000\"} 2\n"));
        assert!(text.contains("eagate_report_ingest_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("eagate_report_ingest_seconds_sum 2.003400\n"));
        assert!(text.contains("eagate_reports_ingested_total{outcome=\"stored\"} 2\n"));
        assert!(text.contains("eagate_reports_ingested_total{outcome=\"duplicate\"} 1\n"));
        assert!(text.contains("eagate_reports_ingested_total{outcome=\"conflict\"} 0\n"));
    }

    #[test]
    fn connections_closed_are_counted_by_the_name_of_their_ending() {
        let metrics = Metrics::default();
        metrics.session_ended(Close::Replaced);
        metrics.session_ended(Close::Replaced);
        metrics.session_ended(Close::ReportConflict { seq: 7 });
        let text = metrics.render();
        assert!(text.contains("eagate_device_connections_closed_total{reason=\"replaced\"} 2\n"));
        assert!(
            text.contains("eagate_device_connections_closed_total{reason=\"report_conflict\"} 1\n")
        );
        assert!(text.contains("eagate_device_connections_closed_total{reason=\"done\"} 0\n"));
    }

    #[test]
    fn every_failure_reason_has_its_own_series() {
        let metrics = Metrics::default();
        metrics.auth_failure(FailureReason::BadMac);
        metrics.auth_failure(FailureReason::BadMac);
        let text = metrics.render();
        assert!(text.contains("eagate_auth_failures_total{reason=\"bad_mac\"} 2\n"));
        for reason in FailureReason::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", reason.as_str())));
        }
    }
}
