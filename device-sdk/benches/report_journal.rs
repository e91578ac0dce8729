//! What a report call costs the bot: the report is `fsync`ed in the
//! device's journal before the call returns. One caller at a time pays one
//! `fsync` per report whatever the journal does; several tasks (or C
//! threads) reporting at once on one client are where a group commit, one
//! `fsync` for every report waiting on it, shows. No gateway: the client
//! keeps trying to connect in the background and the reports wait in its
//! outbox, so the figure is the journal's alone.
//!
//! `cargo bench -p eagate-sdk --bench report_journal`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eagate_sdk::protocol::{DeviceId, DeviceSecret, SignalId};
use eagate_sdk::{CertFingerprint, Client, ClientConfig, ServerTrust, UdpSocketKind};

/// Reports per measured round: well inside the outbox of 256, which no
/// gateway empties here.
const REPORTS: usize = 128;

fn client_config(dir: &std::path::Path) -> ClientConfig {
    ClientConfig {
        // Nothing listens there: the reports stay in the outbox.
        server: "127.0.0.1:9".to_owned(),
        server_name: Some("localhost".to_owned()),
        device_id: DeviceId::new("dv_bench").unwrap(),
        secret: DeviceSecret::from_bytes([7; 32]),
        trust: ServerTrust::Pinned(CertFingerprint::of(b"no certificate")),
        state_dir: dir.to_path_buf(),
        udp: UdpSocketKind::default(),
    }
}

/// Time for `REPORTS` reports on a fresh client, sent by `callers` tasks at
/// once (each sending its share one after another).
async fn round(callers: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let client = std::sync::Arc::new(Client::connect(client_config(dir.path())).await.unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let client = client.clone();
            tokio::spawn(async move {
                for n in 0..REPORTS / callers {
                    let id = SignalId([(caller * 64 + n) as u8; 16]);
                    client.received(id).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(client.unconfirmed().await, REPORTS);
    std::sync::Arc::into_inner(client).unwrap().close().await;
    elapsed
}

fn report_journal(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("report into the journal");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(REPORTS as u64));
    for callers in [1, 16] {
        group.bench_function(format!("{callers} callers"), |b| {
            b.iter_custom(|rounds| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..rounds {
                        total += round(callers).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, report_journal);
criterion_main!(benches);
