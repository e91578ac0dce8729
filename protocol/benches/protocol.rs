//! Per-operation cost of the hot paths: framing a signal (gateway fan-out),
//! decoding a report (gateway ingest), and verifying an authentication.
//!
//! `cargo bench -p eagate-protocol`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use eagate_protocol::*;

fn signal() -> GatewayMessage {
    GatewayMessage::Signal(Signal {
        channel: ChannelName::new("gold-scalper").unwrap(),
        position: 1_234_567,
        signal_id: SignalId([7; 16]),
        symbol: Symbol::new("XAUUSD").unwrap(),
        action: Action::OpenBuy,
        order_type: OrderType::Limit,
        volume: "0.10".parse().unwrap(),
        price: Some("2350.25".parse().unwrap()),
        stop_loss: Some("2340.00".parse().unwrap()),
        take_profit: Some("2370.00".parse().unwrap()),
        magic: 20_240_501,
        comment: SignalComment::new("gs#1234567").unwrap(),
        issued_at_ms: 1_767_225_600_000,
        expires_at_ms: Some(1_767_225_660_000),
        reference: None,
    })
}

fn fill_report() -> DeviceMessage {
    DeviceMessage::Report(Report {
        seq: 98_765,
        signal_id: SignalId([7; 16]),
        at_ms: 1_767_225_600_150,
        outcome: ReportOutcome::Filled(Fill {
            ticket: 123_456_789,
            price: "2350.27".parse().unwrap(),
            volume: "0.10".parse().unwrap(),
        }),
    })
}

fn framing(c: &mut Criterion) {
    let mut buf = [0u8; MAX_WIRE_LEN];
    let signal = signal();
    c.bench_function("encode signal frame", |b| {
        b.iter(|| encode_frame(black_box(&signal), &mut buf).unwrap())
    });
    let len = encode_frame(&signal, &mut buf).unwrap();
    let signal_frame = buf[..len].to_vec();
    c.bench_function("decode signal frame", |b| {
        b.iter(|| decode_frame::<GatewayMessage>(black_box(&signal_frame)).unwrap())
    });
    let len = encode_frame(&fill_report(), &mut buf).unwrap();
    let report_frame = buf[..len].to_vec();
    c.bench_function("decode fill report frame", |b| {
        b.iter(|| decode_frame::<DeviceMessage>(black_box(&report_frame)).unwrap())
    });
}

fn authentication(c: &mut Criterion) {
    let secret = DeviceSecret::from_bytes([42; 32]);
    let binding = [0xab; 32];
    let auth = Authenticate::sign(
        DeviceId::new("dv_01HZX3K9Q2M4T7VWB8C5N6PRSA").unwrap(),
        &secret,
        1_767_225_600_000,
        [1; 16],
        &binding,
        heapless::Vec::new(),
    );
    c.bench_function("verify authentication mac", |b| {
        b.iter(|| {
            assert!(
                black_box(&auth)
                    .transcript(&binding)
                    .verify(&secret, &auth.mac)
            )
        })
    });
    c.bench_function("parse secret text", |b| {
        b.iter(|| {
            DeviceSecret::parse(black_box("egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"))
                .unwrap()
        })
    });
}

criterion_group!(benches, framing, authentication);
criterion_main!(benches);
