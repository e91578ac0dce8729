//! The session core against a fake gateway in memory, with a simulated
//! clock: no sockets, no sleeping, every step deterministic.

use std::collections::BTreeMap;

use eagate_sdk::core::{
    AUTH_TIMEOUT_MS, BACKOFF_MAX_MS, BACKOFF_START_MS, Event, OUTBOX_CAPACITY, ReportError,
    SessionCore, SessionError, State, backoff_ms,
};
use eagate_sdk::protocol::*;

const SECRET_HEX: [u8; 32] = [7; 32];

/// The gateway's side, reduced to its rules: verifies authentication with
/// its own clock and window, stores each report once, confirms what it
/// stores (never above the report just handled), answers a report under a
/// number that holds another with `ReportConflict` and ends the session, and
/// streams signals from per-channel logs (from their start when the device
/// names a position beyond the head).
struct FakeGateway {
    secret: DeviceSecret,
    binding: ChannelBinding,
    clock_ms: u64,
    window_ms: u64,
    revoked: bool,
    stored: BTreeMap<u64, Report>,
    log: Vec<Signal>,
    inbound: Vec<u8>,
    authenticated: Option<Authenticate>,
    /// Drop the next confirmation on the way to the device.
    lose_confirmation: bool,
    /// The session ended (after a conflict): nothing more is handled until
    /// the next authentication.
    ended: bool,
}

impl FakeGateway {
    fn new() -> Self {
        Self {
            secret: DeviceSecret::from_bytes(SECRET_HEX),
            binding: [3; 32],
            clock_ms: 1_000_000,
            window_ms: 30_000,
            revoked: false,
            stored: BTreeMap::new(),
            log: Vec::new(),
            inbound: Vec::new(),
            authenticated: None,
            lose_confirmation: false,
            ended: false,
        }
    }

    fn confirmed(&self) -> u64 {
        let mut watermark = 0;
        while self.stored.contains_key(&(watermark + 1)) {
            watermark += 1;
        }
        watermark
    }

    fn publish(&mut self, comment: &str) -> Signal {
        let signal = Signal {
            channel: ChannelName::new("gold").unwrap(),
            position: self.log.len() as u64 + 1,
            signal_id: SignalId([self.log.len() as u8 + 1; 16]),
            symbol: Symbol::new("XAUUSD").unwrap(),
            action: Action::OpenBuy,
            order_type: OrderType::Market,
            volume: "0.10".parse().unwrap(),
            price: None,
            stop_loss: None,
            take_profit: None,
            magic: 1,
            comment: SignalComment::new(comment).unwrap(),
            issued_at_ms: self.clock_ms,
            expires_at_ms: None,
            reference: None,
        };
        self.log.push(signal.clone());
        signal
    }

    /// Takes the device's bytes; returns the gateway's answers.
    fn receive(&mut self, bytes: &[u8]) -> Vec<GatewayMessage> {
        self.inbound.extend_from_slice(bytes);
        let mut answers = Vec::new();
        while let Decoded::Frame { message, consumed } =
            decode_frame::<DeviceMessage>(&self.inbound).unwrap()
        {
            self.inbound.drain(..consumed);
            if self.ended && !matches!(message, DeviceMessage::Authenticate(_)) {
                continue;
            }
            match message {
                DeviceMessage::Authenticate(auth) => {
                    self.ended = false;
                    let valid = auth
                        .transcript(&self.binding)
                        .verify(&self.secret, &auth.mac);
                    let skew = auth.timestamp_ms.abs_diff(self.clock_ms);
                    let answer = if !valid {
                        Refusal::Failed
                    } else if skew > self.window_ms {
                        Refusal::ClockSkew(ClockSkew {
                            gateway_time_ms: self.clock_ms,
                        })
                    } else if self.revoked {
                        Refusal::Revoked
                    } else {
                        answers.push(GatewayMessage::AuthAccepted(AuthAccepted {
                            gateway_time_ms: self.clock_ms,
                            session: SessionParams {
                                ping_interval_ms: 5_000,
                                idle_timeout_ms: 10_000,
                                max_frame_len: MAX_FRAME_LEN as u32,
                            },
                            confirmed_report_seq: self.confirmed(),
                        }));
                        let named = auth
                            .resume
                            .iter()
                            .find(|p| p.channel.as_str() == "gold")
                            .map_or(0, |p| p.position);
                        // Beyond the head: a position of a log that is
                        // gone; the device gets the whole log there is.
                        let after = if named > self.log.len() as u64 {
                            0
                        } else {
                            named
                        };
                        for signal in self.log.iter().filter(|s| s.position > after) {
                            answers.push(GatewayMessage::Signal(signal.clone()));
                        }
                        self.authenticated = Some(auth);
                        continue;
                    };
                    answers.push(GatewayMessage::AuthRefused(answer));
                }
                DeviceMessage::Report(report) => {
                    let seq = report.seq;
                    if self
                        .stored
                        .get(&seq)
                        .is_some_and(|stored| *stored != report)
                    {
                        answers.push(GatewayMessage::ReportConflict(ReportConflict { seq }));
                        self.ended = true;
                        continue;
                    }
                    self.stored.entry(seq).or_insert(report);
                    if std::mem::take(&mut self.lose_confirmation) {
                        continue;
                    }
                    answers.push(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                        up_to_seq: self.confirmed().min(seq),
                    }));
                }
                DeviceMessage::Ping(ping) => {
                    answers.push(GatewayMessage::Pong(Pong { token: ping.token }))
                }
                DeviceMessage::Pong(_) | DeviceMessage::GoingAway(_) => {}
            }
        }
        answers
    }
}

fn device() -> SessionCore {
    SessionCore::new(
        DeviceId::new("dv_TEST").unwrap(),
        DeviceSecret::from_bytes(SECRET_HEX),
    )
}

fn encode(messages: &[GatewayMessage]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for message in messages {
        let mut buf = [0u8; MAX_WIRE_LEN];
        let len = encode_frame(message, &mut buf).unwrap();
        bytes.extend_from_slice(&buf[..len]);
    }
    bytes
}

/// Moves bytes both ways until neither side has anything to say.
fn exchange(
    core: &mut SessionCore,
    gateway: &mut FakeGateway,
    now_ms: u64,
) -> Result<(), SessionError> {
    let mut buf = [0u8; MAX_WIRE_LEN];
    loop {
        let mut sent = Vec::new();
        while let Some(len) = core.poll_transmit(now_ms, &mut buf) {
            sent.extend_from_slice(&buf[..len]);
        }
        if sent.is_empty() {
            return Ok(());
        }
        let answers = encode(&gateway.receive(&sent));
        let mut offset = 0;
        while offset < answers.len() {
            offset += core.handle_bytes(now_ms, &answers[offset..])?;
        }
    }
}

fn events(core: &mut SessionCore) -> Vec<Event> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn signal_comments(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Signal(s) => Some(s.comment.to_string()),
            _ => None,
        })
        .collect()
}

/// The connection dropped at `now_ms`: waits out the backoff and connects
/// again; the time it connected.
fn reconnect(core: &mut SessionCore, gateway: &mut FakeGateway, now_ms: u64, nonce: u8) -> u64 {
    core.handle_disconnected(now_ms, 0);
    let later = core.poll_timeout().unwrap();
    core.handle_timeout(later).unwrap();
    connect(core, gateway, later, nonce);
    later
}

fn connect(core: &mut SessionCore, gateway: &mut FakeGateway, now_ms: u64, nonce: u8) {
    core.handle_connected(now_ms, gateway.binding, [nonce; 16]);
    exchange(core, gateway, now_ms).unwrap();
}

#[test]
fn authenticates_then_hands_out_signals_in_order() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    gateway.publish("one");
    gateway.publish("two");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(core.state(), State::Connected);
    let events = events(&mut core);
    assert_eq!(
        events[0],
        Event::Connected {
            gateway_time_ms: now
        }
    );
    assert_eq!(signal_comments(&events), ["one", "two"]);
}

#[test]
fn a_report_whose_confirmation_is_lost_is_resent_after_reconnecting_and_stored_once() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    gateway.lose_confirmation = true;
    let seq = core
        .report(now, signal.signal_id, ReportOutcome::Received)
        .unwrap();
    exchange(&mut core, &mut gateway, now).unwrap();
    assert_eq!(core.unconfirmed(), 1, "no confirmation arrived");

    // The connection drops; after the backoff the device reconnects and
    // learns from AuthAccepted that the report is stored.
    core.handle_disconnected(now, 0);
    let State::BackingOff { until_ms } = core.state() else {
        panic!("expected backoff, got {:?}", core.state());
    };
    core.handle_timeout(until_ms).unwrap();
    assert_eq!(core.state(), State::Disconnected);
    connect(&mut core, &mut gateway, until_ms, 2);
    assert_eq!(core.unconfirmed(), 0);
    assert_eq!(gateway.stored.len(), 1);
    assert_eq!(gateway.stored[&seq].outcome, ReportOutcome::Received);
    // The signal already handed out is not handed out again.
    assert!(signal_comments(&events(&mut core)).len() == 1);
}

#[test]
fn reports_made_while_offline_are_sent_after_authentication_in_order() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let fill = ReportOutcome::Filled(Fill {
        ticket: 42,
        price: "2300.50".parse().unwrap(),
        volume: "0.10".parse().unwrap(),
    });
    assert_eq!(
        core.report(1, signal.signal_id, ReportOutcome::Received),
        Ok(1)
    );
    assert_eq!(core.report(2, signal.signal_id, fill.clone()), Ok(2));
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(gateway.stored.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(gateway.stored[&2].outcome, fill);
    assert_eq!(core.unconfirmed(), 0);
    assert!(events(&mut core).contains(&Event::ReportsConfirmed { up_to_seq: 2 }));
}

#[test]
fn a_clock_skew_refusal_corrects_the_offset_and_the_retry_is_accepted() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    // The device's clock is five minutes behind the gateway's.
    let device_now = gateway.clock_ms - 300_000;
    connect(&mut core, &mut gateway, device_now, 1);
    assert_eq!(
        events(&mut core),
        [Event::ClockCorrected { offset_ms: 300_000 }]
    );
    assert_eq!(core.clock_offset_ms(), 300_000);
    // Retry at once, with the corrected clock.
    core.handle_timeout(device_now).unwrap();
    assert_eq!(core.state(), State::Disconnected);
    connect(&mut core, &mut gateway, device_now, 2);
    assert_eq!(core.state(), State::Connected);
    let signed_at = gateway.authenticated.as_ref().unwrap().timestamp_ms;
    assert_eq!(signed_at, gateway.clock_ms);
}

#[test]
fn a_wrong_secret_is_refused_for_good_with_no_retry() {
    let mut core = SessionCore::new(
        DeviceId::new("dv_TEST").unwrap(),
        DeviceSecret::from_bytes([9; 32]),
    );
    let mut gateway = FakeGateway::new();
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(core.state(), State::Refused(Refusal::Failed));
    assert_eq!(events(&mut core), [Event::Refused(Refusal::Failed)]);
    assert_eq!(core.poll_timeout(), None, "nothing more to wait for");
    // A disconnect does not start a retry cycle.
    core.handle_disconnected(now, 0);
    assert_eq!(core.state(), State::Refused(Refusal::Failed));
}

#[test]
fn a_revoked_device_stops_and_keeps_what_it_reports_after_for_its_next_session() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    gateway.revoked = true;
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(core.state(), State::Revoked);
    assert_eq!(events(&mut core), [Event::Revoked]);
    // Taken and kept, as after any stop: the terminal's record of a trade.
    let seq = core
        .report(now, SignalId([1; 16]), ReportOutcome::Received)
        .unwrap();
    assert_eq!(
        core.snapshot()
            .outbox
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [seq]
    );
    core.handle_connected(now, gateway.binding, [2; 16]);
    assert_eq!(core.state(), State::Revoked, "never connects again");
}

#[test]
fn revocation_while_connected_stops_the_session() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    let going_away = encode(&[GatewayMessage::GoingAway(GoingAway {
        reason: GoingAwayReason::Revoked,
    })]);
    assert_eq!(
        core.handle_bytes(now, &going_away),
        Err(SessionError::GatewayLeft(GoingAwayReason::Revoked))
    );
    assert_eq!(core.state(), State::Revoked);
}

#[test]
fn a_reconnecting_device_resumes_after_its_last_signal_and_drops_repeats() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    gateway.publish("one");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    events(&mut core);
    core.handle_disconnected(now, 0);
    gateway.publish("two");
    gateway.publish("three");
    core.handle_timeout(now + BACKOFF_MAX_MS).unwrap();
    connect(&mut core, &mut gateway, now + BACKOFF_MAX_MS, 2);
    let resume = &gateway.authenticated.as_ref().unwrap().resume;
    assert_eq!(resume[0].position, 1, "resumes after what it has");
    assert_eq!(signal_comments(&events(&mut core)), ["two", "three"]);
    // A repeat from the gateway (as after a lost position) is dropped.
    let repeat = encode(&[GatewayMessage::Signal(gateway.log[1].clone())]);
    core.handle_bytes(now + BACKOFF_MAX_MS, &repeat).unwrap();
    assert!(signal_comments(&events(&mut core)).is_empty());
}

#[test]
fn a_restored_core_resends_what_was_unconfirmed_and_continues_the_sequence() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    core.report(1, signal.signal_id, ReportOutcome::Received)
        .unwrap();
    core.report(2, signal.signal_id, ReportOutcome::Received)
        .unwrap();
    // The process dies here; what it persisted is the snapshot.
    let snapshot = core.snapshot();
    let mut restored = SessionCore::restore(
        DeviceId::new("dv_TEST").unwrap(),
        DeviceSecret::from_bytes(SECRET_HEX),
        snapshot,
    );
    assert_eq!(restored.unconfirmed(), 2);
    assert_eq!(
        restored.report(3, signal.signal_id, ReportOutcome::Received),
        Ok(3)
    );
    let now = gateway.clock_ms;
    connect(&mut restored, &mut gateway, now, 1);
    assert_eq!(gateway.stored.len(), 3);
    assert_eq!(restored.unconfirmed(), 0);
}

#[test]
fn a_silent_gateway_is_noticed_at_the_idle_timeout_after_pings() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    // Quiet: a ping is due after the ping interval.
    let ping_at = core.poll_timeout().unwrap();
    assert_eq!(ping_at, now + 5_000);
    core.handle_timeout(ping_at).unwrap();
    let mut buf = [0u8; MAX_WIRE_LEN];
    let len = core.poll_transmit(ping_at, &mut buf).unwrap();
    assert!(matches!(
        decode_frame::<DeviceMessage>(&buf[..len]).unwrap(),
        Decoded::Frame {
            message: DeviceMessage::Ping(_),
            ..
        }
    ));
    // No answer at all: the session fails at the idle timeout.
    assert_eq!(core.poll_timeout(), Some(now + 10_000));
    assert_eq!(
        core.handle_timeout(now + 10_000),
        Err(SessionError::TimedOut)
    );
}

#[test]
fn no_answer_to_authentication_times_out() {
    let mut core = device();
    core.handle_connected(0, [0; 32], [1; 16]);
    assert_eq!(core.poll_timeout(), Some(AUTH_TIMEOUT_MS));
    assert_eq!(core.handle_timeout(AUTH_TIMEOUT_MS - 1), Ok(()));
    assert_eq!(
        core.handle_timeout(AUTH_TIMEOUT_MS),
        Err(SessionError::TimedOut)
    );
}

#[test]
fn garbage_from_the_gateway_is_an_error_not_a_panic() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert!(matches!(
        core.handle_bytes(now, &[0, 0, 0, 2, 0xff, 0xff]),
        Err(SessionError::Malformed(_))
    ));
}

#[test]
fn the_outbox_refuses_reports_beyond_its_capacity() {
    let mut core = device();
    for _ in 0..OUTBOX_CAPACITY {
        core.report(1, SignalId([1; 16]), ReportOutcome::Received)
            .unwrap();
    }
    assert_eq!(
        core.report(1, SignalId([1; 16]), ReportOutcome::Received),
        Err(ReportError::OutboxFull)
    );
}

#[test]
fn backoff_doubles_to_a_ceiling_and_jitter_stays_within_it() {
    assert_eq!(backoff_ms(0, 0), BACKOFF_START_MS / 2);
    assert_eq!(
        backoff_ms(0, u32::MAX),
        BACKOFF_START_MS / 2 + u32::MAX as u64 % (BACKOFF_START_MS / 2 + 1)
    );
    for failures in 0..40 {
        for jitter in [0, 1, 777, u32::MAX] {
            let delay = backoff_ms(failures, jitter);
            let ceiling = (BACKOFF_START_MS << failures.min(16)).min(BACKOFF_MAX_MS);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures} {jitter}"
            );
        }
    }
    assert_eq!(backoff_ms(30, 0), BACKOFF_MAX_MS / 2);
}

#[test]
fn bytes_split_anywhere_decode_the_same() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    gateway.publish("one");
    gateway.publish("two");
    let now = gateway.clock_ms;
    core.handle_connected(now, gateway.binding, [1; 16]);
    let mut buf = [0u8; MAX_WIRE_LEN];
    let len = core.poll_transmit(now, &mut buf).unwrap();
    let answers = encode(&gateway.receive(&buf[..len]));
    for byte in answers.chunks(1) {
        assert_eq!(core.handle_bytes(now, byte).unwrap(), 1);
    }
    assert_eq!(signal_comments(&events(&mut core)), ["one", "two"]);
}

#[test]
fn a_report_under_a_number_another_installation_used_is_renumbered_and_stored_once() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    // Another installation of this device (a second VPS, or an earlier
    // install whose journal is gone) stored reports 1 to 3.
    for seq in 1..=3 {
        gateway.stored.insert(
            seq,
            Report {
                seq,
                signal_id: signal.signal_id,
                at_ms: 1,
                outcome: ReportOutcome::Received,
            },
        );
    }
    let fill = ReportOutcome::Filled(Fill {
        ticket: 5,
        price: "2301".parse().unwrap(),
        volume: "0.10".parse().unwrap(),
    });
    assert_eq!(core.report(9, signal.signal_id, fill.clone()), Ok(1));
    let now = gateway.clock_ms;
    core.handle_connected(now, gateway.binding, [1; 16]);
    // Our #1 is not theirs: the gateway refuses to confirm it.
    assert_eq!(
        exchange(&mut core, &mut gateway, now),
        Err(SessionError::ReportConflict(1))
    );
    assert_eq!(gateway.stored[&1].outcome, ReportOutcome::Received);
    assert!(events(&mut core).contains(&Event::ReportsRenumbered {
        from_seq: 1,
        to_seq: 4,
        count: 1
    }));
    assert_eq!(core.snapshot().outbox[0].seq, 4);
    reconnect(&mut core, &mut gateway, now, 2);
    assert_eq!(gateway.stored.len(), 4);
    assert_eq!(gateway.stored[&4].outcome, fill, "stored once, under #4");
    assert_eq!(core.unconfirmed(), 0);
    assert_eq!(
        core.report(10, signal.signal_id, ReportOutcome::Received),
        Ok(5)
    );
}

#[test]
fn a_report_stored_before_its_confirmation_was_lost_is_confirmed_even_below_the_gateways_number() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    core.report(now, signal.signal_id, ReportOutcome::Received)
        .unwrap();
    gateway.lose_confirmation = true;
    exchange(&mut core, &mut gateway, now).unwrap();
    // Meanwhile another installation stored #2 and #3.
    for seq in 2..=3 {
        gateway.stored.insert(
            seq,
            Report {
                seq,
                signal_id: signal.signal_id,
                at_ms: 1,
                outcome: ReportOutcome::Received,
            },
        );
    }
    let later = reconnect(&mut core, &mut gateway, now, 2);
    // #1 is ours and stored: resent, matched, confirmed; nothing renumbered.
    assert_eq!(core.unconfirmed(), 0);
    assert!(
        !events(&mut core)
            .iter()
            .any(|e| matches!(e, Event::ReportsRenumbered { .. }))
    );
    assert_eq!(gateway.stored.len(), 3);
    // New reports go above every number the gateway holds.
    assert_eq!(
        core.report(later, signal.signal_id, ReportOutcome::Received),
        Ok(4)
    );
}

#[test]
fn a_device_replaced_by_another_installation_stops_and_keeps_its_reports() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    events(&mut core);
    let goodbye = encode(&[GatewayMessage::GoingAway(GoingAway {
        reason: GoingAwayReason::Replaced,
    })]);
    assert_eq!(
        core.handle_bytes(now, &goodbye),
        Err(SessionError::GatewayLeft(GoingAwayReason::Replaced))
    );
    core.handle_disconnected(now, 0);
    assert_eq!(core.state(), State::Replaced);
    assert_eq!(events(&mut core), [Event::Replaced]);
    // It does not come back by itself…
    assert_eq!(core.poll_timeout(), None);
    core.handle_connected(now, gateway.binding, [2; 16]);
    assert_eq!(core.state(), State::Replaced);
    // …and what it reports now is kept for when it is started again.
    assert_eq!(
        core.report(now, signal.signal_id, ReportOutcome::Received),
        Ok(1)
    );
    assert_eq!(core.unconfirmed(), 1);
}

#[test]
fn a_rotated_secret_stops_the_device_but_idle_and_shutdown_endings_reconnect() {
    let gateway = FakeGateway::new();
    let now = gateway.clock_ms;
    for (reason, stops) in [
        (GoingAwayReason::SecretRotated, Some(State::SecretRotated)),
        (GoingAwayReason::IdleTimeout, None),
        (GoingAwayReason::Shutdown, None),
        (GoingAwayReason::ProtocolViolation, None),
    ] {
        let (mut core, mut gateway) = (device(), FakeGateway::new());
        connect(&mut core, &mut gateway, now, 1);
        let goodbye = encode(&[GatewayMessage::GoingAway(GoingAway { reason })]);
        assert!(core.handle_bytes(now, &goodbye).is_err());
        core.handle_disconnected(now, 0);
        match stops {
            Some(state) => {
                assert_eq!(core.state(), state);
                assert_eq!(core.poll_timeout(), None, "{reason:?}");
            }
            None => assert!(
                matches!(core.state(), State::BackingOff { .. }),
                "{reason:?}"
            ),
        }
    }
}

#[test]
fn the_device_pings_every_interval_even_while_signals_keep_arriving() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let start = gateway.clock_ms;
    connect(&mut core, &mut gateway, start, 1);
    let mut pings = 0;
    let mut buf = [0u8; MAX_WIRE_LEN];
    // A signal every 2 s for 20 s; the device reports nothing.
    for second in (2..=20).step_by(2) {
        let now = start + second * 1_000;
        let signal = gateway.publish("tick");
        core.handle_bytes(now, &encode(&[GatewayMessage::Signal(signal)]))
            .unwrap();
        core.handle_timeout(now).unwrap();
        while let Some(len) = core.poll_transmit(now, &mut buf) {
            if let Decoded::Frame {
                message: DeviceMessage::Ping(_),
                ..
            } = decode_frame::<DeviceMessage>(&buf[..len]).unwrap()
            {
                pings += 1;
            }
        }
    }
    // Every 5 s (the gateway's ping interval): the gateway, which drops a
    // device it has not heard from for 10 s, keeps hearing from it.
    assert!(pings >= 3, "{pings} pings in 20 s");
}

#[test]
fn a_log_restarted_below_the_devices_position_is_followed_not_ignored() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    for comment in ["one", "two", "three"] {
        gateway.publish(comment);
    }
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(signal_comments(&events(&mut core)), ["one", "two", "three"]);
    // The operator starts over with an empty log: positions begin at 1.
    gateway.log.clear();
    gateway.publish("fresh");
    gateway.publish("fresher");
    let later = reconnect(&mut core, &mut gateway, now, 2);
    assert_eq!(signal_comments(&events(&mut core)), ["fresh", "fresher"]);
    // Within the connection, a repeat is still a repeat.
    let repeat = gateway.log[0].clone();
    core.handle_bytes(later, &encode(&[GatewayMessage::Signal(repeat)]))
        .unwrap();
    assert!(signal_comments(&events(&mut core)).is_empty());
    // And the next connection resumes after it.
    assert_eq!(core.snapshot().positions[0].position, 2);
}

#[test]
fn reports_renumbered_after_a_conflict_leave_no_hole_for_the_confirmations_to_stop_at() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let received = |seq| Report {
        seq,
        signal_id: signal.signal_id,
        at_ms: 1,
        outcome: ReportOutcome::Received,
    };
    // This installation stored #1, then made #2 and #3 offline; another
    // installation meanwhile stored its own #2.
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    core.report(now, signal.signal_id, ReportOutcome::Received)
        .unwrap();
    exchange(&mut core, &mut gateway, now).unwrap();
    core.handle_disconnected(now, 0);
    for at in [10, 11] {
        core.report(at, signal.signal_id, ReportOutcome::Received)
            .unwrap();
    }
    gateway.stored.insert(2, received(2));
    let later = core.poll_timeout().unwrap();
    core.handle_timeout(later).unwrap();
    core.handle_connected(later, gateway.binding, [2; 16]);
    assert_eq!(
        exchange(&mut core, &mut gateway, later),
        Err(SessionError::ReportConflict(2))
    );
    assert!(events(&mut core).contains(&Event::ReportsRenumbered {
        from_seq: 2,
        to_seq: 3,
        count: 2
    }));
    let again = reconnect(&mut core, &mut gateway, later, 3);
    // Both stored, right after the gateway's #2, and both confirmed.
    assert_eq!(gateway.confirmed(), 4);
    assert_eq!(gateway.stored[&3].at_ms, 10);
    assert_eq!(gateway.stored[&4].at_ms, 11);
    assert_eq!(core.unconfirmed(), 0);
    assert_eq!(
        core.report(again, signal.signal_id, ReportOutcome::Received),
        Ok(5)
    );
}

#[test]
fn held_reports_wait_for_their_release_and_then_go_out_in_sequence_order() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    let id = signal.signal_id;
    assert_eq!(core.hold_report(now, id, ReportOutcome::Received), Ok(1));
    assert_eq!(core.hold_report(now, id, ReportOutcome::Received), Ok(2));
    // Accepted while others are held: it queues behind them.
    assert_eq!(core.report(now, id, ReportOutcome::Received), Ok(3));
    exchange(&mut core, &mut gateway, now).unwrap();
    assert!(gateway.stored.is_empty(), "nothing held went out");
    assert_eq!((core.held(), core.unconfirmed()), (3, 3));

    core.release_held(2);
    exchange(&mut core, &mut gateway, now).unwrap();
    assert_eq!(gateway.stored.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(core.held(), 1);
    core.release_held(5);
    exchange(&mut core, &mut gateway, now).unwrap();
    assert_eq!(
        gateway.stored.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!((core.held(), core.unconfirmed()), (0, 0));
}

#[test]
fn held_reports_are_not_resent_on_reconnecting_until_released() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let id = signal.signal_id;
    core.report(1, id, ReportOutcome::Received).unwrap();
    core.hold_report(2, id, ReportOutcome::Received).unwrap();
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(gateway.stored.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(core.snapshot().outbox.len(), 1, "the held report is kept");
    core.release_held(1);
    exchange(&mut core, &mut gateway, now).unwrap();
    assert_eq!(gateway.stored.keys().copied().collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn discarded_held_reports_are_never_sent_and_their_numbers_are_given_out_again() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let id = signal.signal_id;
    core.report(1, id, ReportOutcome::Received).unwrap();
    core.hold_report(2, id, ReportOutcome::Received).unwrap();
    core.hold_report(3, id, ReportOutcome::Received).unwrap();
    core.discard_held();
    assert_eq!((core.held(), core.unconfirmed()), (0, 1));
    // The next report takes the first discarded number: no hole.
    assert_eq!(core.report(4, id, ReportOutcome::Received), Ok(2));
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    assert_eq!(gateway.stored.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(gateway.stored[&2].at_ms, 4);
}

#[test]
fn discarded_held_reports_never_give_back_numbers_the_gateway_holds() {
    let (mut core, mut gateway) = (device(), FakeGateway::new());
    let signal = gateway.publish("buy");
    let id = signal.signal_id;
    // Another installation's reports hold numbers 1 to 5 at the gateway.
    for seq in 1..=5 {
        let report = Report {
            seq,
            signal_id: id,
            at_ms: 1,
            outcome: ReportOutcome::Received,
        };
        gateway.stored.insert(seq, report);
    }
    assert_eq!(core.hold_report(2, id, ReportOutcome::Received), Ok(1));
    assert_eq!(core.hold_report(3, id, ReportOutcome::Received), Ok(2));
    let now = gateway.clock_ms;
    connect(&mut core, &mut gateway, now, 1);
    core.discard_held();
    assert_eq!(core.report(4, id, ReportOutcome::Received), Ok(6));
}
