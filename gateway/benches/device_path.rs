//! One device's publish-to-receive latency on loopback: publish through the
//! gateway's API (validated, appended to the sled log and flushed), fanned
//! out over QUIC, decoded by the device. Also report ingest: a fill sent by
//! the device until its confirmation arrives (stored and flushed).
//!
//! `cargo bench -p eagate-gateway --bench device_path`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use eagate_protocol::*;

fn device_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (gateway, dir, mut session, channel) = runtime.block_on(async {
        let (gateway, dir) = start().await;
        let device = register(&gateway).await;
        let channel = ChannelName::new("bench").unwrap();
        gateway
            .subscribe(device.id.as_str(), &channel)
            .await
            .unwrap();
        let (session, _) = Session::open(&gateway, dir.path(), &device).await;
        (gateway, dir, session, channel)
    });
    // The device only receives here; as the protocol asks, it pings so the
    // gateway does not take it for gone (idle timeout 10 s).
    let mut last_ping = Instant::now();
    let mut group = c.benchmark_group("device path");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("publish to receive, one device", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    keep_alive(&mut session, &mut last_ping).await;
                    let started = Instant::now();
                    gateway
                        .publish(&channel, market_buy("bench"))
                        .await
                        .unwrap();
                    match session.receive().await {
                        Some(GatewayMessage::Signal(_)) => {}
                        other => panic!("expected a signal, got {other:?}"),
                    }
                    total += started.elapsed();
                }
                total
            })
        })
    });
    let mut seq = 0;
    group.bench_function("report to confirmation, one device", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    seq += 1;
                    let started = Instant::now();
                    session
                        .send(&DeviceMessage::Report(Report {
                            seq,
                            signal_id: SignalId([1; 16]),
                            at_ms: now_ms(),
                            outcome: ReportOutcome::Filled(Fill {
                                ticket: seq,
                                price: "2350.27".parse().unwrap(),
                                volume: "0.10".parse().unwrap(),
                            }),
                        }))
                        .await;
                    match session.receive().await {
                        Some(GatewayMessage::ReportsConfirmed(c)) => assert_eq!(c.up_to_seq, seq),
                        other => panic!("expected a confirmation, got {other:?}"),
                    }
                    total += started.elapsed();
                }
                total
            })
        })
    });
    group.finish();
    drop(session);
    runtime.block_on(gateway.shutdown());
    drop(dir);
}

/// Pings (outside the timed part) when the device has sent nothing for a
/// while.
async fn keep_alive(session: &mut Session, last_ping: &mut Instant) {
    if last_ping.elapsed() < Duration::from_secs(2) {
        return;
    }
    session.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    match session.receive().await {
        Some(GatewayMessage::Pong(_)) => {}
        other => panic!("expected a pong, got {other:?}"),
    }
    *last_ping = Instant::now();
}

criterion_group!(benches, device_path);
criterion_main!(benches);
