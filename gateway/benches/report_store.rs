//! The embedded report store on its own, no network: how long a report
//! takes to be stored and made durable, one device at a time, and how many
//! per second it takes when many devices report at once (where the group
//! commit shares one flush among all the reports waiting for one). The
//! store's ceiling, apart from QUIC's and the session's costs.
//!
//! `cargo bench -p eagate-gateway --bench report_store`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eagate_gateway::durable::Durable;
use eagate_gateway::reports::{ReportStore, SessionEpoch, StoredReport};
use eagate_gateway::store::sled::SledReportStore;
use eagate_protocol::{Fill, Report, ReportOutcome, SignalId};

/// Devices reporting at once in the concurrent case.
const DEVICES: usize = 256;

fn report(device: &str, seq: u64) -> StoredReport {
    let report = Report {
        seq,
        signal_id: SignalId([7; 16]),
        at_ms: 1_700_000_000_000,
        outcome: ReportOutcome::Received,
    };
    StoredReport::new(device, &report, 1_700_000_000_001)
}

/// A fill: also written to the fill feed the affiliate programme reads.
fn fill(device: &str, seq: u64) -> StoredReport {
    let report = Report {
        seq,
        signal_id: SignalId([7; 16]),
        at_ms: 1_700_000_000_000,
        outcome: ReportOutcome::Filled(Fill {
            ticket: seq,
            price: "1.08543".parse().unwrap(),
            volume: "0.10".parse().unwrap(),
        }),
    };
    StoredReport::new(device, &report, 1_700_000_000_001)
}

fn report_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, epochs) = runtime.block_on(async {
        // sled's default cache, as `eagate serve` has by default.
        let durable = Durable::open(&dir.path().join("db"), 1 << 30)
            .await
            .unwrap();
        let store = Arc::new(SledReportStore::open(&durable).unwrap());
        let mut epochs = Vec::new();
        for d in 0..DEVICES {
            let (epoch, _) = store.begin_session(&format!("dv_{d}")).await.unwrap();
            epochs.push(epoch);
        }
        (store, epochs)
    });
    let mut next_seq = vec![0u64; DEVICES];
    let mut group = c.benchmark_group("sled report store");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("ingest and flush, one device at a time", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    next_seq[0] += 1;
                    store
                        .ingest(&report("dv_0", next_seq[0]), Some(epochs[0]))
                        .await
                        .unwrap();
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("ingest and flush, 256 devices at once (per report)", |b| {
        b.iter_custom(|iterations| {
            let per_device = iterations.div_ceil(DEVICES as u64);
            let firsts: Vec<u64> = next_seq.iter().map(|s| s + 1).collect();
            for seq in &mut next_seq {
                *seq += per_device;
            }
            let elapsed =
                runtime.block_on(concurrent(&store, &epochs, &firsts, per_device, report));
            // Scaled to the iterations asked for.
            let stored = u128::from(per_device) * DEVICES as u128;
            Duration::from_nanos((elapsed.as_nanos() * u128::from(iterations) / stored) as u64)
        })
    });
    group.bench_function(
        "fills, 256 devices at once (per fill, with its feed entry)",
        |b| {
            b.iter_custom(|iterations| {
                let per_device = iterations.div_ceil(DEVICES as u64);
                let firsts: Vec<u64> = next_seq.iter().map(|s| s + 1).collect();
                for seq in &mut next_seq {
                    *seq += per_device;
                }
                let elapsed =
                    runtime.block_on(concurrent(&store, &epochs, &firsts, per_device, fill));
                let stored = u128::from(per_device) * DEVICES as u128;
                Duration::from_nanos((elapsed.as_nanos() * u128::from(iterations) / stored) as u64)
            })
        },
    );
    group.finish();
}

/// Every device stores `count` reports from its first, one after another,
/// all devices at once; how long until all are durable.
async fn concurrent(
    store: &Arc<SledReportStore>,
    epochs: &[SessionEpoch],
    firsts: &[u64],
    count: u64,
    make: fn(&str, u64) -> StoredReport,
) -> Duration {
    let started = Instant::now();
    let mut devices = tokio::task::JoinSet::new();
    for (d, (&epoch, &first)) in epochs.iter().zip(firsts).enumerate() {
        let store = store.clone();
        devices.spawn(async move {
            let device = format!("dv_{d}");
            for seq in first..first + count {
                store
                    .ingest(&make(&device, seq), Some(epoch))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = devices.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

criterion_group!(benches, report_store);
criterion_main!(benches);
