//! proptest strategies for every wire type, each covering its full range:
//! bounds of text fields, every enum variant, extreme numbers.
#![allow(dead_code, unreachable_pub)]

use eagate_protocol::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn text(max: usize, min: usize, pattern: &'static str) -> impl Strategy<Value = String> {
    proptest::string::string_regex(pattern)
        .unwrap()
        .prop_filter_map("fits the byte bound", move |s| {
            let mut s: String = s;
            while s.len() > max {
                s.pop();
            }
            (s.len() >= min).then_some(s)
        })
}

pub fn device_id() -> impl Strategy<Value = DeviceId> {
    text(255, 1, "[^\\p{Cc}]{1,300}").prop_map(|s| DeviceId::new(&s).unwrap())
}

pub fn channel() -> impl Strategy<Value = ChannelName> {
    text(64, 1, "[A-Za-z0-9._-]{1,64}").prop_map(|s| ChannelName::new(&s).unwrap())
}

pub fn symbol() -> impl Strategy<Value = Symbol> {
    text(32, 1, "[^\\p{Cc}\\s]{1,32}").prop_map(|s| Symbol::new(&s).unwrap())
}

pub fn comment() -> impl Strategy<Value = SignalComment> {
    text(64, 0, "[^\\p{Cc}]{0,64}").prop_map(|s| SignalComment::new(&s).unwrap())
}

pub fn rejection_text() -> impl Strategy<Value = RejectionText> {
    text(128, 0, "[^\\p{Cc}]{0,130}").prop_map(|s| RejectionText::new(&s).unwrap())
}

pub fn decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u8..=18).prop_map(|(m, s)| Decimal::new(m, s).unwrap())
}

pub fn signal_id() -> impl Strategy<Value = SignalId> {
    any::<[u8; 16]>().prop_map(SignalId)
}

pub fn resume_points() -> impl Strategy<Value = heapless::Vec<ResumePoint, MAX_RESUME_POINTS>> {
    vec(
        (channel(), any::<u64>()).prop_map(|(channel, position)| ResumePoint { channel, position }),
        0..=MAX_RESUME_POINTS,
    )
    .prop_map(|points| points.into_iter().collect())
}

pub fn authenticate() -> impl Strategy<Value = Authenticate> {
    (
        any::<u16>(),
        device_id(),
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        resume_points(),
    )
        .prop_map(
            |(protocol_version, device_id, timestamp_ms, nonce, mac, resume)| Authenticate {
                protocol_version,
                device_id,
                timestamp_ms,
                nonce,
                mac,
                resume,
            },
        )
}

pub fn outcome() -> impl Strategy<Value = ReportOutcome> {
    prop_oneof![
        Just(ReportOutcome::Received),
        (any::<u64>(), decimal(), decimal()).prop_map(|(ticket, price, volume)| {
            ReportOutcome::Filled(Fill {
                ticket,
                price,
                volume,
            })
        }),
        (any::<u32>(), rejection_text())
            .prop_map(|(code, text)| ReportOutcome::Rejected(Rejection { code, text })),
    ]
}

pub fn report() -> impl Strategy<Value = Report> {
    (any::<u64>(), signal_id(), any::<u64>(), outcome()).prop_map(
        |(seq, signal_id, at_ms, outcome)| Report {
            seq,
            signal_id,
            at_ms,
            outcome,
        },
    )
}

pub fn going_away() -> impl Strategy<Value = GoingAway> {
    prop_oneof![
        Just(GoingAwayReason::Shutdown),
        Just(GoingAwayReason::Revoked),
        Just(GoingAwayReason::ProtocolViolation),
        Just(GoingAwayReason::AuthTimeout),
        Just(GoingAwayReason::Replaced),
    ]
    .prop_map(|reason| GoingAway { reason })
}

pub fn device_message() -> impl Strategy<Value = DeviceMessage> {
    prop_oneof![
        authenticate().prop_map(DeviceMessage::Authenticate),
        report().prop_map(DeviceMessage::Report),
        any::<u64>().prop_map(|token| DeviceMessage::Ping(Ping { token })),
        any::<u64>().prop_map(|token| DeviceMessage::Pong(Pong { token })),
        going_away().prop_map(DeviceMessage::GoingAway),
    ]
}

pub fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::OpenBuy),
        Just(Action::OpenSell),
        Just(Action::Close),
        Just(Action::Modify),
        Just(Action::Cancel),
    ]
}

pub fn order_type() -> impl Strategy<Value = OrderType> {
    prop_oneof![
        Just(OrderType::Market),
        Just(OrderType::Limit),
        Just(OrderType::Stop)
    ]
}

pub fn signal() -> impl Strategy<Value = Signal> {
    (
        (channel(), any::<u64>(), signal_id(), symbol(), action()),
        (
            order_type(),
            decimal(),
            option::of(decimal()),
            option::of(decimal()),
            option::of(decimal()),
        ),
        (
            any::<u64>(),
            comment(),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(signal_id()),
        ),
    )
        .prop_map(
            |(
                (channel, position, signal_id, symbol, action),
                (order_type, volume, price, stop_loss, take_profit),
                (magic, comment, issued_at_ms, expires_at_ms, reference),
            )| Signal {
                channel,
                position,
                signal_id,
                symbol,
                action,
                order_type,
                volume,
                price,
                stop_loss,
                take_profit,
                magic,
                comment,
                issued_at_ms,
                expires_at_ms,
                reference,
            },
        )
}

pub fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        Just(Refusal::Failed),
        any::<u64>().prop_map(|gateway_time_ms| Refusal::ClockSkew(ClockSkew { gateway_time_ms })),
        Just(Refusal::Revoked),
        (any::<u16>(), any::<u16>())
            .prop_map(|(min, max)| Refusal::UnsupportedVersion(SupportedVersions { min, max })),
    ]
}

pub fn gateway_message() -> impl Strategy<Value = GatewayMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(gateway_time_ms, ping, idle, max, seq)| {
                GatewayMessage::AuthAccepted(AuthAccepted {
                    gateway_time_ms,
                    session: SessionParams {
                        ping_interval_ms: ping,
                        idle_timeout_ms: idle,
                        max_frame_len: max,
                    },
                    confirmed_report_seq: seq,
                })
            }),
        refusal().prop_map(GatewayMessage::AuthRefused),
        signal().prop_map(GatewayMessage::Signal),
        any::<u64>()
            .prop_map(|up_to_seq| GatewayMessage::ReportsConfirmed(ReportsConfirmed { up_to_seq })),
        any::<u64>().prop_map(|token| GatewayMessage::Ping(Ping { token })),
        any::<u64>().prop_map(|token| GatewayMessage::Pong(Pong { token })),
        going_away().prop_map(GatewayMessage::GoingAway),
    ]
}

/// Encodes one message as a frame.
pub fn frame<M: WireMessage>(message: &M) -> Vec<u8> {
    let mut buf = [0u8; MAX_WIRE_LEN];
    let len = encode_frame(message, &mut buf).expect("every message fits MAX_WIRE_LEN");
    buf[..len].to_vec()
}
