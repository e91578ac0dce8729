//! The gateway's health at a glance: the counters `/metrics` exposes,
//! sampled every few seconds by the sidecar (and each time the page is
//! shown), so rates (per minute) come from two samples a known time apart.
//! Nothing is added to the device path: the counters are the ones it keeps
//! anyway.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::metrics::{LATENCY_BOUNDS_US, MetricsSnapshot};

/// Rates are taken over at most this long.
const WINDOW: Duration = Duration::from_secs(60);

/// A rate needs samples at least this far apart.
const SHORTEST: Duration = Duration::from_secs(5);

/// Samples of the counters, newest last, over the last [`WINDOW`] or so.
#[derive(Debug, Default)]
pub(super) struct Samples {
    samples: Mutex<VecDeque<(Instant, MetricsSnapshot)>>,
}

/// What the health page shows.
#[derive(Debug)]
pub(super) struct Health {
    pub(super) now: MetricsSnapshot,
    /// Changes over the window, and its length; none until samples are
    /// [`SHORTEST`] apart.
    pub(super) recent: Option<(Duration, MetricsSnapshot)>,
}

impl Samples {
    /// Records `now` and compares it with the oldest sample of the window.
    pub(super) fn sample(&self, now: MetricsSnapshot) -> Health {
        let at = Instant::now();
        let mut samples = self.samples.lock().expect("health samples");
        while samples
            .front()
            .is_some_and(|(then, _)| at.duration_since(*then) > WINDOW)
        {
            samples.pop_front();
        }
        let recent = samples.front().and_then(|(then, before)| {
            let span = at.duration_since(*then);
            (span >= SHORTEST).then(|| (span, difference(&now, before)))
        });
        // One sample per second at most: a page reloaded in a loop does not
        // grow the window's memory.
        if samples
            .back()
            .is_none_or(|(last, _)| at.duration_since(*last) >= Duration::from_secs(1))
        {
            samples.push_back((at, now));
        }
        Health { now, recent }
    }
}

fn difference(now: &MetricsSnapshot, before: &MetricsSnapshot) -> MetricsSnapshot {
    MetricsSnapshot {
        connections: now.connections,
        auth_failures: now.auth_failures.saturating_sub(before.auth_failures),
        signals_delivered: now
            .signals_delivered
            .saturating_sub(before.signals_delivered),
        reports_stored: now.reports_stored.saturating_sub(before.reports_stored),
        reports_ingested: now.reports_ingested.saturating_sub(before.reports_ingested),
        store_errors: now.store_errors.saturating_sub(before.store_errors),
        latency_buckets: std::array::from_fn(|i| {
            now.latency_buckets[i].saturating_sub(before.latency_buckets[i])
        }),
        latency_count: now.latency_count.saturating_sub(before.latency_count),
        latency_sum_us: now.latency_sum_us.saturating_sub(before.latency_sum_us),
    }
}

/// `count` per `span`, per minute, to one decimal (as text: integers only).
pub(super) fn per_minute(count: u64, span: Duration) -> String {
    let millis = u64::try_from(span.as_millis()).unwrap_or(u64::MAX).max(1);
    let tenths = count.saturating_mul(600_000) / millis;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// The latency bound under which at least `percent` of `snapshot`'s
/// measurements fall, as text; "over 1 s" beyond the last bucket.
pub(super) fn latency_within(snapshot: &MetricsSnapshot, percent: u64) -> Option<String> {
    if snapshot.latency_count == 0 {
        return None;
    }
    let wanted = (snapshot.latency_count * percent).div_ceil(100);
    let mut seen = 0;
    for (bound, count) in LATENCY_BOUNDS_US.iter().zip(snapshot.latency_buckets) {
        seen += count;
        if seen >= wanted {
            return Some(micros_text(*bound));
        }
    }
    Some("over 1 s".to_owned())
}

/// A mean latency in microseconds as text.
pub(super) fn mean_latency(snapshot: &MetricsSnapshot) -> Option<String> {
    (snapshot.latency_count > 0)
        .then(|| micros_text(snapshot.latency_sum_us / snapshot.latency_count))
}

fn micros_text(micros: u64) -> String {
    if micros >= 1_000 {
        format!("{}.{} ms", micros / 1_000, (micros % 1_000) / 100)
    } else {
        format!("{micros} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_minute_and_latencies_read_off_the_buckets() {
        assert_eq!(per_minute(30, Duration::from_secs(30)), "60.0");
        assert_eq!(per_minute(1, Duration::from_secs(40)), "1.5");
        let mut snapshot = MetricsSnapshot {
            latency_count: 100,
            latency_sum_us: 150_000,
            ..MetricsSnapshot::default()
        };
        snapshot.latency_buckets[0] = 90; // ≤ 0.5 ms
        snapshot.latency_buckets[3] = 10; // ≤ 5 ms
        assert_eq!(latency_within(&snapshot, 50).as_deref(), Some("500 µs"));
        assert_eq!(latency_within(&snapshot, 99).as_deref(), Some("5.0 ms"));
        assert_eq!(mean_latency(&snapshot).as_deref(), Some("1.5 ms"));
    }

    #[test]
    fn the_first_sample_gives_no_rate_and_a_later_one_the_difference() {
        let samples = Samples::default();
        let first = samples.sample(MetricsSnapshot {
            signals_delivered: 10,
            ..MetricsSnapshot::default()
        });
        assert!(first.recent.is_none());
        // Backdate the first sample past the shortest span.
        samples.samples.lock().unwrap()[0].0 -= Duration::from_secs(10);
        let second = samples.sample(MetricsSnapshot {
            signals_delivered: 25,
            ..MetricsSnapshot::default()
        });
        let (span, change) = second.recent.expect("a rate");
        assert!(span >= Duration::from_secs(10));
        assert_eq!(change.signals_delivered, 15);
    }
}
