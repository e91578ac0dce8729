//! The `halfopen` scenario's flood: connections that complete the QUIC
//! handshake and then never authenticate, opened as fast as the gateway
//! takes them, while the scenario's devices stay connected beside them.
//! What it shows: how much memory the gateway spends on each such
//! connection, so the cap on them (`--max-unauthenticated-connections`)
//! is a bound in bytes; that the gateway refuses those beyond the cap and
//! closes the rest at its authentication deadline; and that the connected
//! devices live on meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::ServerUsage;

/// What the flood saw.
#[derive(Debug, Clone)]
pub(crate) struct HalfOpen {
    /// Connections attempted.
    pub(crate) attempted: u64,
    /// Handshakes completed (then left silent).
    pub(crate) opened: u64,
    /// Refused by the gateway (its cap or its per-source budget) or failed.
    pub(crate) refused: u64,
    /// The most held open at once.
    pub(crate) peak_open: u64,
    /// The gateway's resident memory before the flood, at its peak, and
    /// once the gateway had closed them all (KiB).
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_peak_kib: u64,
    pub(crate) rss_after_kib: u64,
    /// (peak − before) / peak open, in bytes.
    pub(crate) bytes_per_connection: u64,
    /// Closed by the gateway (its authentication deadline) and by nobody
    /// before the wait ended.
    pub(crate) closed_by_gateway: u64,
    pub(crate) still_open: u64,
    /// From the first attempt until the last connection was closed.
    pub(crate) lasted_ms: u64,
}

impl HalfOpen {
    pub(crate) fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "attempted": self.attempted,
            "opened": self.opened,
            "refused": self.refused,
            "peak_open": self.peak_open,
            "rss_before_kib": self.rss_before_kib,
            "rss_peak_kib": self.rss_peak_kib,
            "rss_after_kib": self.rss_after_kib,
            "bytes_per_connection": self.bytes_per_connection,
            "closed_by_gateway": self.closed_by_gateway,
            "still_open": self.still_open,
            "lasted_ms": self.lasted_ms,
        })
    }

    pub(crate) fn print(&self) {
        // Tenths, in integers (the workspace keeps floats out).
        let mib = |kib: u64| format!("{}.{}", kib / 1024, kib % 1024 * 10 / 1024);
        println!("half-open connections (handshake done, never authenticated)");
        println!(
            "  attempted {} · opened {} · refused {} · most open at once {}",
            self.attempted, self.opened, self.refused, self.peak_open
        );
        println!(
            "  gateway memory: {} MiB before, {} MiB at the peak, {} MiB after ({} bytes per open connection)",
            mib(self.rss_before_kib),
            mib(self.rss_peak_kib),
            mib(self.rss_after_kib),
            self.bytes_per_connection
        );
        println!(
            "  closed by the gateway {} · still open at the end {} · {}.{} s in all",
            self.closed_by_gateway,
            self.still_open,
            self.lasted_ms / 1000,
            self.lasted_ms % 1000 / 100
        );
    }
}

/// Opens `count` half-open connections to `gateway`, `concurrency` at a
/// time, over `endpoints`, sampling the gateway (`server_pid`) every
/// 100 ms, and waits (at most `wait`) until the gateway has closed them.
pub(crate) async fn flood(
    endpoints: &[quinn::Endpoint],
    client: &quinn::ClientConfig,
    gateway: SocketAddr,
    (count, concurrency): (u64, usize),
    server_pid: u32,
    wait: Duration,
) -> anyhow::Result<HalfOpen> {
    let rss = |pid| ServerUsage::read(pid).map_or(0, |usage| usage.rss_kib);
    let rss_before_kib = rss(server_pid);
    let started = Instant::now();
    let open = Arc::new(AtomicU64::new(0));
    let peak_open = Arc::new(AtomicU64::new(0));
    let rss_peak = Arc::new(AtomicU64::new(rss_before_kib));
    let sampler = {
        let (open, peak_open, rss_peak) = (open.clone(), peak_open.clone(), rss_peak.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                peak_open.fetch_max(open.load(Ordering::Relaxed), Ordering::Relaxed);
                rss_peak.fetch_max(rss(server_pid), Ordering::Relaxed);
            }
        })
    };
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let deadline = tokio::time::Instant::now() + wait;
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let permit = slots.clone().acquire_owned().await?;
        let endpoint = endpoints[i as usize % endpoints.len()].clone();
        let (client, open) = (client.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            let connecting = endpoint.connect_with(client, gateway, "localhost");
            let connection = match connecting {
                Ok(connecting) => connecting.await,
                Err(_) => return Held::Refused,
            };
            drop(permit);
            let Ok(connection) = connection else {
                return Held::Refused;
            };
            open.fetch_add(1, Ordering::Relaxed);
            // Silent: no stream, no Authenticate. The gateway ends it.
            let closed = tokio::time::timeout_at(deadline, connection.closed()).await;
            open.fetch_sub(1, Ordering::Relaxed);
            match closed {
                Ok(_) => Held::ClosedByGateway,
                Err(_) => Held::StillOpen,
            }
        }));
    }
    let mut figures = HalfOpen {
        attempted: count,
        opened: 0,
        refused: 0,
        peak_open: 0,
        rss_before_kib,
        rss_peak_kib: 0,
        rss_after_kib: 0,
        bytes_per_connection: 0,
        closed_by_gateway: 0,
        still_open: 0,
        lasted_ms: 0,
    };
    for task in tasks {
        match task.await? {
            Held::Refused => figures.refused += 1,
            Held::ClosedByGateway => figures.closed_by_gateway += 1,
            Held::StillOpen => figures.still_open += 1,
        }
    }
    sampler.abort();
    figures.lasted_ms = started.elapsed().as_millis() as u64;
    figures.opened = figures.closed_by_gateway + figures.still_open;
    figures.peak_open = peak_open.load(Ordering::Relaxed);
    figures.rss_peak_kib = rss_peak.load(Ordering::Relaxed);
    // A moment for the gateway to let go of what it freed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.rss_after_kib = rss(server_pid);
    figures.bytes_per_connection = (figures.rss_peak_kib.saturating_sub(rss_before_kib) * 1024)
        .checked_div(figures.peak_open)
        .unwrap_or(0);
    Ok(figures)
}

/// How one half-open connection ended.
enum Held {
    Refused,
    ClosedByGateway,
    StillOpen,
}
