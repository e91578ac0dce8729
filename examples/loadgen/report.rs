//! What a run found: the figures, checked counts and percentiles, as a
//! table, as JSON, and as an SVG of throughput over time and latency
//! percentiles.

// Rates, percentages and drawing coordinates, never money.
#![allow(clippy::float_arithmetic)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::device::DeviceStats;
use crate::live::{Totals, histogram};
use crate::{Args, Scenario, ServerUsage};

/// The times of a run and the counters at the edges of its measured part.
pub(crate) struct Window {
    /// From the first connection attempt until every device had its turn.
    pub(crate) connecting: Duration,
    /// The measured part: publishing, flooding or holding.
    pub(crate) measured: Duration,
    /// From the end of the measured part until every device was done.
    pub(crate) drained_in: Duration,
    pub(crate) at_start: Totals,
    pub(crate) at_end: Totals,
    pub(crate) published: u64,
}

/// The server's usage before the devices came, once they were connected,
/// and at the end of the measured part.
pub(crate) struct Server {
    pub(crate) before: Option<ServerUsage>,
    pub(crate) connected: Option<ServerUsage>,
    pub(crate) after: Option<ServerUsage>,
    /// The harness's own usage over the measured part: what its devices
    /// (the SDK's core, its whole client with `--sdk-client`, or an MQTT
    /// client library) cost per message.
    pub(crate) harness: (Option<ServerUsage>, Option<ServerUsage>),
}

/// One device's reports, as counted at the end: how many the server
/// stored (with none missing below), sent, and confirmed.
pub(crate) struct Stored {
    pub(crate) stored: u64,
    pub(crate) sent: u64,
    pub(crate) confirmed: u64,
}

/// A run's findings.
pub(crate) struct Outcome {
    summary: Value,
    latency: Histogram<u64>,
    confirmation: Histogram<u64>,
    timeline: Vec<(u64, u64)>,
    half_open: Option<crate::halfopen::HalfOpen>,
}

fn merged(stats: &[DeviceStats], pick: fn(&DeviceStats) -> &Histogram<u64>) -> Histogram<u64> {
    let mut all = histogram();
    for s in stats {
        // Same bounds everywhere: adding cannot fail.
        let _ = all.add(pick(s));
    }
    all
}

fn percentiles(histogram: &Histogram<u64>) -> Value {
    json!({
        "count": histogram.len(),
        "p50_us": histogram.value_at_quantile(0.5),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
    })
}

fn per_second(count: u64, over: Duration) -> u64 {
    (count as f64 / over.as_secs_f64().max(0.001)).round() as u64
}

impl Outcome {
    pub(crate) fn new(
        args: &Args,
        stats: &[DeviceStats],
        window: Window,
        server: Server,
        stored: Vec<Stored>,
        timeline: Vec<(u64, u64)>,
    ) -> Self {
        let connected = stats.iter().filter(|s| s.connected_after.is_some()).count() as u64;
        let failures: Vec<&str> = stats.iter().filter_map(|s| s.failure.as_deref()).collect();
        let sum = |pick: fn(&DeviceStats) -> u64| stats.iter().map(pick).sum::<u64>();
        let last_connected = stats
            .iter()
            .filter_map(|s| s.connected_after)
            .max()
            .unwrap_or_default();
        let millis = |d: Duration| d.as_millis() as u64;
        let delivered = window.at_end.delivered - window.at_start.delivered;
        let confirmed = window.at_end.confirmed - window.at_start.confirmed;
        let stored_total: u64 = stored.iter().map(|s| s.stored).sum();
        let unstored: u64 = stored.iter().map(|s| s.sent.saturating_sub(s.stored)).sum();
        let lost: u64 = stored
            .iter()
            .map(|s| s.confirmed.saturating_sub(s.stored))
            .sum();
        let stored_beyond_sent: u64 = stored.iter().map(|s| s.stored.saturating_sub(s.sent)).sum();
        let latency = merged(stats, |s| &s.latency);
        let confirmation = merged(stats, |s| &s.confirmation);
        let mut summary = json!({
            "target": args.target,
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "devices": stats.len(),
            "connected": connected,
            "failures": failures.len(),
            "first_failure": failures.first(),
            "connecting_ms": millis(window.connecting),
            "last_connected_ms": millis(last_connected),
            "sessions_per_s": per_second(connected, last_connected),
            "measured_ms": millis(window.measured),
            "drained_ms": millis(window.drained_in),
            "devices_not_drained": stats.iter().filter(|s| !s.drained).count(),
        });
        let fields = summary.as_object_mut().expect("an object");
        let mut add = |key: &str, value: Value| {
            fields.insert(key.to_owned(), value);
        };
        let fans_out = matches!(args.scenario, Scenario::Fanout | Scenario::Mixed);
        let reports = args.scenario != Scenario::Connect;
        if fans_out {
            add("published", json!(window.published));
            add("deliveries", json!(sum(|s| s.signals)));
            add("deliveries_in_window", json!(delivered));
            add(
                "deliveries_per_s",
                json!(per_second(delivered, window.measured)),
            );
            add(
                "missing_deliveries",
                json!((window.published * connected).saturating_sub(sum(|s| s.signals))),
            );
            add("gaps", json!(sum(|s| s.gaps)));
            add("repeats", json!(sum(|s| s.repeats)));
            add("latency", percentiles(&latency));
        }
        if reports {
            add("reports", json!(sum(|s| s.reports)));
            add("confirmed", json!(sum(|s| s.confirmed)));
            add("confirmed_in_window", json!(confirmed));
            add(
                "confirmed_per_s",
                json!(per_second(confirmed, window.measured)),
            );
            add("outbox_full_waits", json!(sum(|s| s.outbox_full)));
            add("stored", json!(stored_total));
            add("sent_not_stored", json!(unstored));
            add("confirmed_not_stored", json!(lost));
            add("stored_beyond_sent", json!(stored_beyond_sent));
            add("confirmation", percentiles(&confirmation));
        }
        if let (Some(before), Some(connected_usage)) = (server.before, server.connected) {
            add(
                "server_rss_per_device_bytes",
                json!(
                    connected_usage.rss_kib.saturating_sub(before.rss_kib) * 1024
                        / connected.max(1)
                ),
            );
            add("server_rss_kib", json!(connected_usage.rss_kib));
        }
        // CPU over the measured part per message (a delivery with its
        // report, or a confirmed report), the server's and the harness's.
        let work = if fans_out { delivered } else { confirmed };
        for (who, usage) in [
            ("server", (server.connected, server.after)),
            ("harness", server.harness),
        ] {
            if let (Some(connected_usage), Some(after)) = usage
                && reports
            {
                let cpu_ms = after.cpu_ms.saturating_sub(connected_usage.cpu_ms);
                add(&format!("{who}_cpu_ms"), json!(cpu_ms));
                add(
                    &format!("{who}_cpu_us_per_message"),
                    json!((cpu_ms as f64 * 1_000.0 / work.max(1) as f64 * 100.0).round() / 100.0),
                );
            }
        }
        Self {
            summary,
            latency,
            confirmation,
            timeline,
            half_open: None,
        }
    }

    /// With the `halfopen` scenario's figures.
    pub(crate) fn with_half_open(self, half_open: Option<crate::halfopen::HalfOpen>) -> Self {
        Self { half_open, ..self }
    }

    pub(crate) fn summary(&self) -> Value {
        let mut summary = self.summary.clone();
        summary["timeline_per_s"] = json!(
            self.timeline
                .iter()
                .map(|(d, c)| json!({"delivered": d, "confirmed": c}))
                .collect::<Vec<_>>()
        );
        if let Some(half_open) = &self.half_open {
            summary["half_open"] = half_open.summary();
        }
        summary
    }

    pub(crate) fn print_table(&self) {
        let s = &self.summary;
        println!(
            "eagate-loadgen: {} on {}",
            s["scenario"].as_str().unwrap_or("?"),
            s["target"].as_str().unwrap_or("?")
        );
        for key in ORDER {
            let value = &s[key];
            match key {
                "latency" | "confirmation" => {
                    if value.is_null() {
                        continue;
                    }
                    let name = if key == "latency" {
                        "publish → receipt"
                    } else {
                        "report → confirmation"
                    };
                    println!(
                        "  {name:<30} n={} p50={} p99={} p99.9={} max={}",
                        value["count"],
                        micros(&value["p50_us"]),
                        micros(&value["p99_us"]),
                        micros(&value["p999_us"]),
                        micros(&value["max_us"]),
                    );
                }
                _ if value.is_null() => {}
                _ => println!("  {key:<30} {}", value.to_string().trim_matches('"')),
            }
        }
        if let Some(half_open) = &self.half_open {
            half_open.print();
        }
    }
}

/// The table's rows, in the order a reader wants them; those a scenario
/// does not have are left out.
const ORDER: [&str; 34] = [
    "devices",
    "connected",
    "failures",
    "first_failure",
    "connecting_ms",
    "last_connected_ms",
    "sessions_per_s",
    "measured_ms",
    "published",
    "deliveries",
    "deliveries_in_window",
    "deliveries_per_s",
    "missing_deliveries",
    "gaps",
    "repeats",
    "latency",
    "reports",
    "confirmed",
    "confirmed_in_window",
    "confirmed_per_s",
    "confirmation",
    "outbox_full_waits",
    "stored",
    "sent_not_stored",
    "confirmed_not_stored",
    "stored_beyond_sent",
    "drained_ms",
    "devices_not_drained",
    "server_rss_kib",
    "server_rss_per_device_bytes",
    "server_cpu_ms",
    "server_cpu_us_per_message",
    "harness_cpu_ms",
    "harness_cpu_us_per_message",
];

fn micros(value: &Value) -> String {
    let us = value.as_u64().unwrap_or(0);
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{us}µs")
    }
}

/// Writes an SVG with two panels: deliveries and confirmations per second
/// over the run, and the latency at each percentile (log scales).
pub(crate) fn plot(outcome: &Outcome, path: &Path) -> std::io::Result<()> {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const PAD: f64 = 50.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * H + 20.0
    );
    let title = format!(
        "{} on {}",
        outcome.summary["scenario"].as_str().unwrap_or("?"),
        outcome.summary["target"].as_str().unwrap_or("?")
    );
    // Throughput over time.
    let top = outcome
        .timeline
        .iter()
        .map(|(d, c)| (*d).max(*c))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let seconds = outcome.timeline.len().max(2) as f64 - 1.0;
    let x = |s: f64| PAD + s / seconds * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD + 10.0 - v / top * (H - 2.0 * PAD);
    axes(&mut svg, 0.0, &format!("{title}: per second"), W, H, PAD);
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}">{top:.0}/s</text><text x="{}" y="{}" text-anchor="end">{seconds:.0} s</text>"#,
        4.0,
        y(top),
        W - PAD,
        H - PAD + 24.0
    );
    for (pick, colour, name, at) in [
        (0usize, "#1f77b4", "delivered", 0.0),
        (1, "#d62728", "confirmed", 90.0),
    ] {
        let points: Vec<String> = outcome
            .timeline
            .iter()
            .enumerate()
            .map(|(s, pair)| {
                let v = if pick == 0 { pair.0 } else { pair.1 };
                format!("{:.1},{:.1}", x(s as f64), y(v as f64))
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="30" fill="{colour}">{name}</text>"#,
            points.join(" "),
            PAD + 10.0 + at
        );
    }
    // Latency by percentile: x is -log10(1 - q), 0 (p0) to 5 (p99.999).
    axes(&mut svg, H, "latency by percentile", W, H, PAD);
    let spectrum = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        (0..=100)
            .map(|i| {
                let nines = f64::from(i) * 0.05;
                let q = 1.0 - 10f64.powf(-nines);
                (nines, h.value_at_quantile(q.min(0.99999)) as f64)
            })
            .collect()
    };
    let all: Vec<Curve<'_>> = [
        ("publish → receipt", "#1f77b4", &outcome.latency),
        ("report → confirmation", "#d62728", &outcome.confirmation),
    ]
    .into_iter()
    .filter(|(_, _, h)| !h.is_empty())
    .map(|(name, colour, h)| (name, colour, spectrum(h)))
    .collect();
    let highest = all
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|(_, v)| *v))
        .fold(10.0f64, f64::max);
    let decades = highest.log10().ceil();
    let lx = |nines: f64| PAD + nines / 5.0 * (W - 2.0 * PAD);
    let ly = |us: f64| 2.0 * H - PAD + 10.0 - us.max(1.0).log10() / decades * (H - 2.0 * PAD);
    for (label, nines) in [
        ("p50", 0.301),
        ("p90", 1.0),
        ("p99", 2.0),
        ("p99.9", 3.0),
        ("p99.99", 4.0),
    ] {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            lx(nines),
            2.0 * H - PAD + 24.0
        );
    }
    for decade in 0..=decades as u32 {
        let us = 10f64.powi(decade as i32);
        let text = if us >= 1_000.0 {
            format!("{} ms", us / 1_000.0)
        } else {
            format!("{us} µs")
        };
        let _ = write!(svg, r#"<text x="4" y="{:.1}">{text}</text>"#, ly(us));
    }
    for (i, (name, colour, points)) in all.iter().enumerate() {
        let line: Vec<String> = points
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", lx(*n), ly(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            line.join(" "),
            PAD + 10.0 + 150.0 * i as f64,
            H + 30.0
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

/// A named, coloured line of (x, y) points.
type Curve<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn axes(svg: &mut String, top: f64, title: &str, w: f64, h: f64, pad: f64) {
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="{}" font-size="13">{title}</text><line x1="{pad}" y1="{}" x2="{pad}" y2="{}" stroke="#444"/><line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="#444"/>"##,
        top + 16.0,
        top + pad - 10.0,
        top + h - pad + 10.0,
        top + h - pad + 10.0,
        w - pad,
        top + h - pad + 10.0
    );
}
