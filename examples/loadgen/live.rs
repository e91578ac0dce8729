//! What the harness watches while a run goes on: counters every simulated
//! device bumps (for the progress bar and the throughput over time), and the
//! phase the harness is in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Where a run is; devices watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connecting and measuring.
    Run,
    /// No new reports of their own; a device ends once everything it sent is
    /// confirmed and it has received `signals` signals.
    Drain { signals: u64 },
    /// End now.
    Stop,
}

/// The longest run the timeline keeps, in seconds.
const TIMELINE_SECS: usize = 3_600;

/// Counters shared by every device of a run, bumped with relaxed atomics:
/// the totals, and deliveries and confirmations per second since the start.
pub(crate) struct Live {
    started: Instant,
    connected: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    confirmed: AtomicU64,
    delivered_per_second: Box<[AtomicU64]>,
    confirmed_per_second: Box<[AtomicU64]>,
}

/// The totals at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) delivered: u64,
    pub(crate) confirmed: u64,
}

impl Live {
    pub(crate) fn new() -> Self {
        let buckets = || (0..TIMELINE_SECS).map(|_| AtomicU64::new(0)).collect();
        Self {
            started: Instant::now(),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            delivered_per_second: buckets(),
            confirmed_per_second: buckets(),
        }
    }

    fn second(&self) -> usize {
        (self.started.elapsed().as_secs() as usize).min(TIMELINE_SECS - 1)
    }

    pub(crate) fn connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_per_second[self.second()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::Relaxed);
        self.confirmed_per_second[self.second()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            connected: self.connected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
        }
    }

    /// Deliveries and confirmations in each whole second so far.
    pub(crate) fn timeline(&self) -> Vec<(u64, u64)> {
        let seconds = self.second() + 1;
        (0..seconds)
            .map(|s| {
                (
                    self.delivered_per_second[s].load(Ordering::Relaxed),
                    self.confirmed_per_second[s].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// A latency histogram from 1 µs to 10 min, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Unix time in µs: signals carry their publication time so in their
/// comment, `t<µs>`.
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
