//! The worked byte examples of docs/protocol.md are what the code sends:
//! every frame shown there, read from the document, is exactly the encoding
//! of the message named here, in the order the document shows them. An
//! implementer in another language can trust every byte of them.
//!
//! `EAGATE_PRINT_EXAMPLES=1 cargo test -p eagate-protocol --test doc_examples
//! -- --nocapture` prints the frames, for writing the document.

use eagate_protocol::*;

fn signal_id(hex: &str) -> SignalId {
    hex.parse().unwrap()
}

fn decimal(text: &str) -> Decimal {
    text.parse().unwrap()
}

/// The messages of section 8, in the document's order.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let frame = |message: &dyn Fn(&mut [u8]) -> usize| {
        let mut buf = [0u8; MAX_WIRE_LEN];
        let len = message(&mut buf);
        buf[..len].to_vec()
    };
    let device = |m: DeviceMessage| frame(&|buf| encode_frame(&m, buf).unwrap());
    let gateway = |m: GatewayMessage| frame(&|buf| encode_frame(&m, buf).unwrap());
    let fill_signal = signal_id("0193a8d5e3f07c2a9b4e1d6f5a7c8e9b");
    let mut resume = heapless::Vec::new();
    resume
        .push(ResumePoint {
            channel: ChannelName::new("gold").unwrap(),
            position: 41,
        })
        .unwrap();
    let mac: [u8; 32] =
        hex::decode("68b62e165fad4295947bc581453834a72b22533165a47138ea77912469eb48e0")
            .unwrap()
            .try_into()
            .unwrap();
    vec![
        (
            "Authenticate",
            device(DeviceMessage::Authenticate(Authenticate {
                protocol_version: 2,
                device_id: DeviceId::new("dv_01HZX3K9Q2M4T7VWB8C5N6PRSA").unwrap(),
                timestamp_ms: 1_767_225_600_000,
                nonce: hex::decode("00112233445566778899aabbccddeeff")
                    .unwrap()
                    .try_into()
                    .unwrap(),
                mac,
                resume,
            })),
        ),
        (
            "Report Received",
            device(DeviceMessage::Report(Report {
                seq: 1,
                signal_id: fill_signal,
                at_ms: 1_767_225_601_000,
                outcome: ReportOutcome::Received,
            })),
        ),
        (
            "Report Filled",
            device(DeviceMessage::Report(Report {
                seq: 2,
                signal_id: fill_signal,
                at_ms: 1_767_225_601_250,
                outcome: ReportOutcome::Filled(Fill {
                    ticket: 50_123,
                    price: decimal("2350.27"),
                    volume: decimal("0.10"),
                }),
            })),
        ),
        (
            "Report Rejected",
            device(DeviceMessage::Report(Report {
                seq: 3,
                signal_id: fill_signal,
                at_ms: 1_767_225_601_300,
                outcome: ReportOutcome::Rejected(Rejection {
                    code: 10_019,
                    text: RejectionText::new("No money").unwrap(),
                }),
            })),
        ),
        (
            "Report Reversed",
            device(DeviceMessage::Report(Report {
                seq: 4,
                signal_id: fill_signal,
                at_ms: 1_767_225_601_400,
                outcome: ReportOutcome::Reversed(Reversal { ticket: 50_123 }),
            })),
        ),
        (
            "device Ping",
            device(DeviceMessage::Ping(Ping { token: 300 })),
        ),
        (
            "device Pong",
            device(DeviceMessage::Pong(Pong { token: 7 })),
        ),
        (
            "device GoingAway",
            device(DeviceMessage::GoingAway(GoingAway {
                reason: GoingAwayReason::Shutdown,
            })),
        ),
        (
            "AuthAccepted",
            gateway(GatewayMessage::AuthAccepted(AuthAccepted {
                gateway_time_ms: 1_767_225_600_123,
                session: SessionParams {
                    ping_interval_ms: 5_000,
                    idle_timeout_ms: 10_000,
                    max_frame_len: 4_096,
                },
                confirmed_report_seq: 2,
            })),
        ),
        (
            "AuthRefused Failed",
            gateway(GatewayMessage::AuthRefused(Refusal::Failed)),
        ),
        (
            "AuthRefused ClockSkew",
            gateway(GatewayMessage::AuthRefused(Refusal::ClockSkew(ClockSkew {
                gateway_time_ms: 1_767_225_600_123,
            }))),
        ),
        (
            "AuthRefused Revoked",
            gateway(GatewayMessage::AuthRefused(Refusal::Revoked)),
        ),
        (
            "AuthRefused UnsupportedVersion",
            gateway(GatewayMessage::AuthRefused(Refusal::UnsupportedVersion(
                SupportedVersions { min: 1, max: 2 },
            ))),
        ),
        (
            "Signal",
            gateway(GatewayMessage::Signal(Signal {
                channel: ChannelName::new("gold").unwrap(),
                position: 42,
                signal_id: fill_signal,
                symbol: Symbol::new("XAUUSD").unwrap(),
                action: Action::OpenBuy,
                order_type: OrderType::Limit,
                volume: decimal("0.10"),
                price: Some(decimal("2350.10")),
                stop_loss: Some(decimal("2340.00")),
                take_profit: None,
                magic: 77,
                comment: SignalComment::new("breakout").unwrap(),
                issued_at_ms: 1_767_225_600_500,
                expires_at_ms: None,
                reference: None,
            })),
        ),
        (
            "ReportsConfirmed",
            gateway(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                up_to_seq: 3,
            })),
        ),
        (
            "gateway Ping",
            gateway(GatewayMessage::Ping(Ping { token: 9 })),
        ),
        (
            "gateway Pong",
            gateway(GatewayMessage::Pong(Pong { token: 300 })),
        ),
        (
            "gateway GoingAway",
            gateway(GatewayMessage::GoingAway(GoingAway {
                reason: GoingAwayReason::Replaced,
            })),
        ),
        (
            "ReportConflict",
            gateway(GatewayMessage::ReportConflict(ReportConflict { seq: 2 })),
        ),
    ]
}

/// The frames written out in section 8 of docs/protocol.md: the leading
/// two-digit hex tokens of each line of each code block.
fn documented_frames() -> Vec<Vec<u8>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let section = doc
        .split_once("\n## 8. Examples")
        .expect("section 8")
        .1
        .split("\n## ")
        .next()
        .unwrap();
    let mut frames = Vec::new();
    for block in section.split("```").skip(1).step_by(2) {
        let mut bytes = Vec::new();
        for line in block.lines() {
            for token in line.split_whitespace() {
                match u8::from_str_radix(token, 16) {
                    Ok(byte) if token.len() == 2 => bytes.push(byte),
                    _ => break,
                }
            }
        }
        frames.push(bytes);
    }
    frames
}

#[test]
fn every_example_in_the_protocol_document_is_the_exact_encoding_of_its_message() {
    let examples = examples();
    if std::env::var("EAGATE_PRINT_EXAMPLES").is_ok() {
        for (name, bytes) in &examples {
            println!("{name}:");
            for chunk in bytes.chunks(16) {
                let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                println!("  {}", line.join(" "));
            }
        }
    }
    let documented = documented_frames();
    assert_eq!(
        documented.len(),
        examples.len(),
        "one example for each message in section 8"
    );
    for ((name, expected), shown) in examples.iter().zip(&documented) {
        assert_eq!(shown, expected, "{name}");
    }
}

#[test]
fn every_message_and_variant_has_an_example() {
    let tags: std::collections::BTreeSet<u8> = examples()
        .iter()
        .map(|(_, bytes)| bytes[FRAME_HEADER_LEN])
        .collect();
    let all: std::collections::BTreeSet<u8> = (0x01..=0x05).chain(0x41..=0x48).collect();
    assert_eq!(tags, all);
}
