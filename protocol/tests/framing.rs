//! Framing rules: sizes, bad input, explicit tags, and signal validation.

mod common;

use common::frame;
use eagate_protocol::frame::Malformed;
use eagate_protocol::*;

fn max_signal() -> Signal {
    let big = Decimal::new(i64::MIN, 18).unwrap();
    Signal {
        channel: ChannelName::new(&"c".repeat(64)).unwrap(),
        position: u64::MAX,
        signal_id: SignalId([0xff; 16]),
        symbol: Symbol::new(&"S".repeat(32)).unwrap(),
        action: Action::Modify,
        order_type: OrderType::Stop,
        volume: big,
        price: Some(big),
        stop_loss: Some(big),
        take_profit: Some(big),
        magic: u64::MAX,
        comment: SignalComment::new(&"é".repeat(32)).unwrap(),
        issued_at_ms: u64::MAX,
        expires_at_ms: Some(u64::MAX),
        reference: Some(SignalId([0xff; 16])),
    }
}

fn max_authenticate() -> Authenticate {
    let resume = (0..MAX_RESUME_POINTS)
        .map(|i| ResumePoint {
            channel: ChannelName::new(&format!("{i:0>64}")).unwrap(),
            position: u64::MAX,
        })
        .collect();
    Authenticate {
        protocol_version: u16::MAX,
        device_id: DeviceId::new(&"ü".repeat(127)).unwrap(),
        timestamp_ms: u64::MAX,
        nonce: [0xff; 16],
        mac: [0xff; 32],
        resume,
    }
}

#[test]
fn the_largest_message_of_each_direction_fits_one_frame() {
    let auth = frame(&DeviceMessage::Authenticate(max_authenticate()));
    let report = frame(&DeviceMessage::Report(Report {
        seq: u64::MAX,
        signal_id: SignalId([0xff; 16]),
        at_ms: u64::MAX,
        outcome: ReportOutcome::Rejected(Rejection {
            code: u32::MAX,
            text: RejectionText::new(&"x".repeat(128)).unwrap(),
        }),
    }));
    let signal = frame(&GatewayMessage::Signal(max_signal()));
    for bytes in [&auth, &report, &signal] {
        assert!(bytes.len() <= MAX_WIRE_LEN);
    }
    // Headroom: the bound leaves room to grow without a framing change.
    assert!(auth.len() < MAX_FRAME_LEN / 2, "{}", auth.len());
}

#[test]
fn an_oversized_length_prefix_is_refused_before_any_body_arrives() {
    let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert_eq!(
        decode_frame::<DeviceMessage>(&header),
        Err(DecodeError::Oversized {
            len: MAX_FRAME_LEN as u32 + 1,
            max: MAX_FRAME_LEN
        })
    );
    // An HTTP request or TLS record sent to the wrong port is oversized too.
    assert!(matches!(
        decode_frame::<DeviceMessage>(b"GET / HTTP/1.1\r\n"),
        Err(DecodeError::Oversized { .. })
    ));
}

#[test]
fn an_empty_frame_is_refused() {
    assert_eq!(
        decode_frame::<GatewayMessage>(&[0, 0, 0, 0, 1]),
        Err(DecodeError::Empty)
    );
}

#[test]
fn a_frame_whose_body_ends_inside_a_field_is_malformed_not_incomplete() {
    let whole = frame(&DeviceMessage::Ping(Ping { token: u64::MAX }));
    let mut short = whole[..whole.len() - 1].to_vec();
    short[..4].copy_from_slice(&((whole.len() - 5) as u32).to_be_bytes());
    assert_eq!(
        decode_frame::<DeviceMessage>(&short),
        Err(DecodeError::Malformed(Malformed::Truncated))
    );
}

#[test]
fn bytes_left_in_a_frame_after_its_message_are_refused() {
    let mut bytes = frame(&DeviceMessage::Ping(Ping { token: 1 }));
    bytes.push(0);
    let body_len = (bytes.len() - FRAME_HEADER_LEN) as u32;
    bytes[..4].copy_from_slice(&body_len.to_be_bytes());
    assert_eq!(
        decode_frame::<DeviceMessage>(&bytes),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn an_unknown_message_tag_is_refused() {
    assert_eq!(
        decode_frame::<DeviceMessage>(&[0, 0, 0, 2, 0x3f, 0]),
        Err(DecodeError::Malformed(Malformed::InvalidValue))
    );
}

#[test]
fn a_gateway_message_sent_by_a_device_is_refused() {
    let bytes = frame(&GatewayMessage::Ping(Ping { token: 9 }));
    assert!(matches!(
        decode_frame::<DeviceMessage>(&bytes),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn text_fields_longer_than_their_bound_are_refused() {
    // A Rejected report whose text claims 129 bytes.
    let mut body = vec![0x02, 1];
    body.extend([0u8; 16]);
    body.extend([0, 3, 1, 129, 1]);
    body.extend(std::iter::repeat_n(b'x', 129));
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend(body);
    assert_eq!(
        decode_frame::<DeviceMessage>(&bytes),
        Err(DecodeError::Malformed(Malformed::InvalidValue))
    );
}

#[test]
fn an_empty_device_id_or_control_character_is_refused_on_decode() {
    let mut good = frame(&DeviceMessage::Authenticate(Authenticate {
        protocol_version: 1,
        device_id: DeviceId::new("A").unwrap(),
        timestamp_ms: 0,
        nonce: [0; 16],
        mac: [0; 32],
        resume: heapless::Vec::new(),
    }));
    // Body: tag, version, id length, id byte, ...
    assert_eq!(&good[4..8], &[0x01, 0x01, 0x01, b'A']);
    good[7] = b'\n';
    assert_eq!(
        decode_frame::<DeviceMessage>(&good),
        Err(DecodeError::Malformed(Malformed::InvalidValue))
    );
    assert_eq!(DeviceId::new(""), Err(TextError::Empty));
}

#[test]
fn encoding_into_a_small_buffer_fails_without_writing_past_it() {
    let mut buf = [0u8; 8];
    let message = DeviceMessage::Authenticate(max_authenticate());
    assert_eq!(
        encode_frame(&message, &mut buf),
        Err(EncodeError::BufferTooSmall(8))
    );
    assert_eq!(
        encode_frame(&message, &mut [0u8; 3]),
        Err(EncodeError::BufferTooSmall(3))
    );
}

#[test]
fn wire_tags_are_the_documented_numbers() {
    let cases: [(Vec<u8>, u8); 6] = [
        (frame(&DeviceMessage::Ping(Ping { token: 0 })), 0x03),
        (
            frame(&DeviceMessage::GoingAway(GoingAway {
                reason: GoingAwayReason::Shutdown,
            })),
            0x05,
        ),
        (frame(&GatewayMessage::AuthRefused(Refusal::Revoked)), 0x42),
        (frame(&GatewayMessage::Signal(max_signal())), 0x43),
        (
            frame(&GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                up_to_seq: 0,
            })),
            0x44,
        ),
        (
            frame(&GatewayMessage::GoingAway(GoingAway {
                reason: GoingAwayReason::Replaced,
            })),
            0x47,
        ),
    ];
    for (bytes, tag) in cases {
        assert_eq!(bytes[FRAME_HEADER_LEN], tag);
    }
    assert_eq!(
        frame(&GatewayMessage::AuthRefused(Refusal::Revoked))[4..],
        [0x42, 3]
    );
    assert_eq!(Action::Cancel.wire_tag(), 5);
    assert_eq!(OrderType::Stop.wire_tag(), 3);
    assert_eq!(
        ReportOutcome::Rejected(Rejection {
            code: 0,
            text: RejectionText::lossy("")
        })
        .wire_tag(),
        3
    );
    assert_eq!(
        ReportOutcome::Reversed(Reversal { ticket: 0 }).wire_tag(),
        4
    );
}

#[test]
fn a_ping_frame_has_the_documented_bytes() {
    // Written out by hand from docs/protocol.md.
    assert_eq!(
        frame(&DeviceMessage::Ping(Ping { token: 300 })),
        [0, 0, 0, 3, 0x03, 0xac, 0x02]
    );
}

#[test]
fn rejection_text_from_a_terminal_is_cut_to_fit_not_refused() {
    let text = RejectionText::lossy(&format!("{}\r\nmore", "é".repeat(100)));
    assert_eq!(text.as_str().len(), 128);
    assert!(text.as_str().chars().all(|c| c == 'é'));
    assert_eq!(RejectionText::lossy("no\nmoney").as_str(), "no money");
}

type SignalEdit = dyn Fn(&mut Signal);

fn open_buy() -> Signal {
    Signal {
        channel: ChannelName::new("gold-scalper").unwrap(),
        position: 1,
        signal_id: SignalId([1; 16]),
        symbol: Symbol::new("XAUUSD").unwrap(),
        action: Action::OpenBuy,
        order_type: OrderType::Market,
        volume: "0.10".parse().unwrap(),
        price: None,
        stop_loss: Some("2300.5".parse().unwrap()),
        take_profit: None,
        magic: 42,
        comment: SignalComment::new("gs#1").unwrap(),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: Some(1_700_000_060_000),
        reference: None,
    }
}

#[test]
fn a_well_formed_market_buy_is_valid() {
    assert_eq!(open_buy().validate(), Ok(()));
}

#[test]
fn signals_that_no_terminal_could_execute_are_invalid() {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let cases: Vec<(Box<SignalEdit>, SignalError)> = vec![
        (
            Box::new(|s| s.volume = Decimal::ZERO),
            SignalError::VolumeNotPositive,
        ),
        (
            Box::new(move |s| s.volume = d("-1")),
            SignalError::VolumeNegative,
        ),
        (
            Box::new(|s| s.order_type = OrderType::Limit),
            SignalError::PriceMissing,
        ),
        (
            Box::new(move |s| s.price = Some(d("1.1"))),
            SignalError::PriceOnMarketOrder,
        ),
        (
            Box::new(move |s| s.stop_loss = Some(d("0"))),
            SignalError::PriceNotPositive("stop_loss"),
        ),
        (
            Box::new(|s| s.action = Action::Close),
            SignalError::ReferenceMissing,
        ),
        (
            Box::new(|s| s.reference = Some(SignalId([2; 16]))),
            SignalError::ReferenceOnOpen,
        ),
        (
            Box::new(|s| {
                s.action = Action::Modify;
                s.reference = Some(SignalId([2; 16]));
                s.stop_loss = None;
            }),
            SignalError::NothingToModify,
        ),
        (
            Box::new(|s| s.expires_at_ms = Some(s.issued_at_ms)),
            SignalError::ExpiresBeforeIssued,
        ),
    ];
    for (change, expected) in cases {
        let mut signal = open_buy();
        change(&mut signal);
        assert_eq!(signal.validate(), Err(expected));
    }
}

#[test]
fn close_with_zero_volume_means_close_everything_and_is_valid() {
    let mut signal = open_buy();
    signal.action = Action::Close;
    signal.volume = Decimal::ZERO;
    signal.reference = Some(SignalId([1; 16]));
    assert_eq!(signal.validate(), Ok(()));
}

#[test]
fn signal_ids_print_and_parse_as_32_hex_digits() {
    let id = SignalId([0xab; 16]);
    assert_eq!(id.to_string(), "ab".repeat(16));
    assert_eq!(id.to_string().parse::<SignalId>(), Ok(id));
    assert!("ab".repeat(15).parse::<SignalId>().is_err());
    assert!(
        format!("{}zz", "ab".repeat(15))
            .parse::<SignalId>()
            .is_err()
    );
    assert_eq!(
        serde_json::to_string(&id).unwrap(),
        format!("\"{}\"", "ab".repeat(16))
    );
}

#[test]
fn a_varint_padded_beyond_its_shortest_form_is_refused() {
    // Ping { token: 1 }: shortest 0x01; padded 0x81 0x00 and 0x81 0x80 0x00.
    assert!(matches!(
        decode_frame::<DeviceMessage>(&[0, 0, 0, 2, 0x03, 0x01]),
        Ok(Decoded::Frame { .. })
    ));
    for padded in [
        &[0, 0, 0, 3, 0x03, 0x81, 0x00][..],
        &[0, 0, 0, 4, 0x03, 0x81, 0x80, 0x00],
    ] {
        assert_eq!(
            decode_frame::<DeviceMessage>(padded),
            Err(DecodeError::Malformed(Malformed::NonCanonical)),
            "{padded:02x?}"
        );
    }
    // A padded tag and a padded text length are refused too.
    assert_eq!(
        decode_frame::<DeviceMessage>(&[0, 0, 0, 3, 0x83, 0x00, 0x01]),
        Err(DecodeError::Malformed(Malformed::NonCanonical))
    );
    let rejected = frame(&DeviceMessage::Report(Report {
        seq: 1,
        signal_id: SignalId([1; 16]),
        at_ms: 1,
        outcome: ReportOutcome::Rejected(Rejection {
            code: 1,
            text: RejectionText::new("x").unwrap(),
        }),
    }));
    // The body ends with the text: length 0x01, then "x". Pad the length.
    let body = &rejected[FRAME_HEADER_LEN..];
    let mut padded = body[..body.len() - 2].to_vec();
    padded.extend_from_slice(&[0x81, 0x00, b'x']);
    let mut bytes = (padded.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&padded);
    assert_eq!(
        decode_frame::<DeviceMessage>(&bytes),
        Err(DecodeError::Malformed(Malformed::NonCanonical))
    );
}

#[test]
fn version_2_additions_are_told_to_a_version_1_device_in_version_1_terms() {
    let conflict = GatewayMessage::ReportConflict(ReportConflict { seq: 7 });
    let going = |reason| GatewayMessage::GoingAway(GoingAway { reason });
    for (v2, v1) in [
        (conflict.clone(), going(GoingAwayReason::ProtocolViolation)),
        (
            going(GoingAwayReason::IdleTimeout),
            going(GoingAwayReason::ProtocolViolation),
        ),
        (
            going(GoingAwayReason::SecretRotated),
            going(GoingAwayReason::Replaced),
        ),
        (
            going(GoingAwayReason::Replaced),
            going(GoingAwayReason::Replaced),
        ),
        (
            GatewayMessage::Pong(Pong { token: 1 }),
            GatewayMessage::Pong(Pong { token: 1 }),
        ),
    ] {
        assert_eq!(v2.clone().for_version(1), v1);
        assert_eq!(v2.clone().for_version(2), v2);
    }
    assert_eq!(frame(&conflict)[FRAME_HEADER_LEN..], [0x48, 7]);
    assert_eq!(MIN_PROTOCOL_VERSION, 1);
    assert_eq!(PROTOCOL_VERSION, 3);
}
