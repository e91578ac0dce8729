//! Signals over real QUIC: in order, resumed without gaps after being
//! offline or a gateway restart, and a slow device holds back no one.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

impl Session {
    async fn open_resuming(
        gateway: &Gateway,
        data_dir: &Path,
        device: &Device,
        resume: &[(ChannelName, u64)],
    ) -> Self {
        let points: Vec<(&str, u64)> = resume
            .iter()
            .map(|(channel, position)| (channel.as_str(), *position))
            .collect();
        Session::open_as(gateway, data_dir, device, PROTOCOL_VERSION, &points)
            .await
            .0
    }
}

fn comments(signals: &[Signal]) -> Vec<String> {
    signals.iter().map(|s| s.comment.to_string()).collect()
}

on_both_backends!(published_signals_arrive_in_order_to_subscribed_devices_only);
async fn published_signals_arrive_in_order_to_subscribed_devices_only(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    let follower = register(&gateway).await;
    let outsider = register(&gateway).await;
    gateway
        .subscribe(follower.id.as_str(), &gold)
        .await
        .unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &follower).await;
    let (mut other, _) = Session::open(&gateway, dir.path(), &outsider).await;
    for i in 1..=5 {
        gateway
            .publish(&gold, market_buy(&format!("s{i}")))
            .await
            .unwrap();
    }
    let received = session.signals(5).await;
    assert_eq!(comments(&received), ["s1", "s2", "s3", "s4", "s5"]);
    let positions: Vec<u64> = received.iter().map(|s| s.position).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);
    assert!(received.iter().all(|s| s.channel == gold));
    // The unsubscribed device got nothing: its next message is our pong.
    other.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    assert_eq!(
        other.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 1 }))
    );
}

on_both_backends!(an_invalid_signal_is_refused_and_not_logged);
async fn an_invalid_signal_is_refused_and_not_logged(backend: Backend) {
    let (gateway, _dir) = start_on(&backend).await;
    let mut draft = market_buy("bad");
    draft.volume = Decimal::ZERO;
    assert!(gateway.publish(&channel("gold"), draft).await.is_err());
    assert_eq!(gateway.signals().head(&channel("gold")).await.unwrap(), 0);
}

on_both_backends!(a_device_that_was_offline_resumes_without_a_gap_even_after_a_gateway_restart);
async fn a_device_that_was_offline_resumes_without_a_gap_even_after_a_gateway_restart(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let gold = channel("gold");
    let gateway = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    gateway.publish(&gold, market_buy("a")).await.unwrap();
    gateway.publish(&gold, market_buy("b")).await.unwrap();
    assert_eq!(comments(&session.signals(2).await), ["a", "b"]);
    drop(session);

    // Published while the device is away, then the gateway restarts.
    gateway.publish(&gold, market_buy("c")).await.unwrap();
    gateway.publish(&gold, market_buy("d")).await.unwrap();
    gateway.shutdown().await;
    let gateway = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    gateway.publish(&gold, market_buy("e")).await.unwrap();

    let mut session =
        Session::open_resuming(&gateway, dir.path(), &device, &[(gold.clone(), 2)]).await;
    assert_eq!(comments(&session.signals(3).await), ["c", "d", "e"]);
    gateway.publish(&gold, market_buy("f")).await.unwrap();
    assert_eq!(comments(&session.signals(1).await), ["f"]);
}

on_both_backends!(without_a_resume_point_the_device_continues_after_what_it_reported);
async fn without_a_resume_point_the_device_continues_after_what_it_reported(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    for name in ["a", "b", "c"] {
        gateway.publish(&gold, market_buy(name)).await.unwrap();
    }
    let received = session.signals(3).await;
    // The device reports receipt of the first two only.
    for (seq, signal) in received[..2].iter().enumerate() {
        session
            .send(&DeviceMessage::Report(Report {
                seq: seq as u64 + 1,
                signal_id: signal.signal_id,
                at_ms: now_ms(),
                outcome: ReportOutcome::Received,
            }))
            .await;
        assert!(matches!(
            session.receive().await,
            Some(GatewayMessage::ReportsConfirmed(_))
        ));
    }
    drop(session);
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(comments(&session.signals(1).await), ["c"]);
}

on_both_backends!(a_subscriber_starts_from_signals_published_after_it_subscribed);
async fn a_subscriber_starts_from_signals_published_after_it_subscribed(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    gateway.publish(&gold, market_buy("old")).await.unwrap();
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    gateway.publish(&gold, market_buy("new")).await.unwrap();
    assert_eq!(comments(&session.signals(1).await), ["new"]);
}

on_both_backends!(a_slow_device_holds_back_no_one_and_still_gets_every_signal_in_order);
async fn a_slow_device_holds_back_no_one_and_still_gets_every_signal_in_order(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config_on(&backend, dir.path());
    // A tiny live queue, so the slow device is certain to fall behind it.
    settings.signal_queue_len = 4;
    let gateway = Gateway::start(&settings).await.unwrap();
    let gold = channel("gold");
    let slow = register(&gateway).await;
    let fast = register(&gateway).await;
    for device in [&slow, &fast] {
        gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    }
    let (mut slow_session, _) = Session::open(&gateway, dir.path(), &slow).await;
    let (mut fast_session, _) = Session::open(&gateway, dir.path(), &fast).await;
    const COUNT: usize = 300;
    let publisher = async {
        for i in 0..COUNT {
            gateway
                .publish(&gold, market_buy(&i.to_string()))
                .await
                .unwrap();
        }
    };
    // The fast device reads while publishing goes on; the slow one does not
    // read at all until the end.
    let (_, fast_received) = tokio::join!(publisher, fast_session.signals(COUNT));
    let expected: Vec<String> = (0..COUNT).map(|i| i.to_string()).collect();
    assert_eq!(comments(&fast_received), expected);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slow_received = slow_session.signals(COUNT).await;
    assert_eq!(comments(&slow_received), expected);
    let positions: Vec<u64> = slow_received.iter().map(|s| s.position).collect();
    assert_eq!(positions, (1..=COUNT as u64).collect::<Vec<_>>());
}

on_both_backends!(re_subscribing_after_unsubscribing_starts_from_now_not_from_history);
async fn re_subscribing_after_unsubscribing_starts_from_now_not_from_history(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    let device = register(&gateway).await;
    let core = gateway.core();
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    gateway
        .publish(&gold, market_buy("while subscribed"))
        .await
        .unwrap();
    core.registry
        .unsubscribe(device.id.as_str(), &gold)
        .await
        .unwrap();
    gateway
        .publish(&gold, market_buy("while away"))
        .await
        .unwrap();
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    // Subscribing again while subscribed changes nothing either.
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    gateway.publish(&gold, market_buy("after")).await.unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(comments(&session.signals(1).await), ["after"]);
    session.send(&DeviceMessage::Ping(Ping { token: 3 })).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 3 }))
    );
}

on_both_backends!(a_connected_device_follows_a_subscription_change_at_once);
async fn a_connected_device_follows_a_subscription_change_at_once(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let (gold, silver) = (channel("gold"), channel("silver"));
    let device = register(&gateway).await;
    let core = gateway.core();
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;

    // Subscribed while connected: the session follows silver at once,
    // from the moment of subscribing (not silver's history).
    gateway
        .publish(&silver, market_buy("silver before"))
        .await
        .unwrap();
    gateway
        .subscribe(device.id.as_str(), &silver)
        .await
        .unwrap();
    gateway
        .publish(&silver, market_buy("silver after"))
        .await
        .unwrap();
    assert_eq!(comments(&session.signals(1).await), ["silver after"]);

    // Unsubscribed while connected: gold stops at once.
    assert!(core.unsubscribe(device.id.as_str(), &gold).await.unwrap());
    gateway.publish(&gold, market_buy("gold")).await.unwrap();
    gateway
        .publish(&silver, market_buy("silver last"))
        .await
        .unwrap();
    assert_eq!(comments(&session.signals(1).await), ["silver last"]);
    session.send(&DeviceMessage::Ping(Ping { token: 9 })).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 9 })),
        "nothing from gold arrived in between"
    );
}

on_both_backends!(resume_position_zero_starts_at_the_subscription_not_the_channels_history);
async fn resume_position_zero_starts_at_the_subscription_not_the_channels_history(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    gateway.publish(&gold, market_buy("history")).await.unwrap();
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    gateway.publish(&gold, market_buy("after")).await.unwrap();
    let mut session = Session::open_resuming(&gateway, dir.path(), &device, &[(gold, 0)]).await;
    assert_eq!(comments(&session.signals(1).await), ["after"]);
    session.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 1 })),
        "nothing from before the subscription"
    );
}

on_both_backends!(a_resume_position_beyond_the_head_gets_the_log_from_the_subscriptions_start);
async fn a_resume_position_beyond_the_head_gets_the_log_from_the_subscriptions_start(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    gateway.publish(&gold, market_buy("history")).await.unwrap();
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    for name in ["a", "b"] {
        gateway.publish(&gold, market_buy(name)).await.unwrap();
    }
    // Position 50 of a log that is gone (a reset store): the device gets
    // this log's signals since it subscribed, not silence until 51.
    let mut session =
        Session::open_resuming(&gateway, dir.path(), &device, &[(gold.clone(), 50)]).await;
    let signals = session.signals(2).await;
    assert_eq!(comments(&signals), ["a", "b"]);
    assert_eq!(signals[0].position, 2);
    gateway.publish(&gold, market_buy("c")).await.unwrap();
    assert_eq!(comments(&session.signals(1).await), ["c"]);
    let metrics = gateway.core().metrics.render();
    assert!(metrics.contains("eagate_resumes_beyond_head_total 1\n"));
}

on_both_backends!(a_resume_point_for_a_channel_the_device_does_not_follow_is_ignored);
async fn a_resume_point_for_a_channel_the_device_does_not_follow_is_ignored(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let (gold, silver) = (channel("gold"), channel("silver"));
    gateway
        .publish(&silver, market_buy("silver"))
        .await
        .unwrap();
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let mut session =
        Session::open_resuming(&gateway, dir.path(), &device, &[(silver.clone(), 0)]).await;
    gateway
        .publish(&silver, market_buy("silver 2"))
        .await
        .unwrap();
    gateway.publish(&gold, market_buy("gold")).await.unwrap();
    assert_eq!(comments(&session.signals(1).await), ["gold"]);
}

on_both_backends!(the_gateways_record_of_a_position_starts_where_the_subscription_started);
async fn the_gateways_record_of_a_position_starts_where_the_subscription_started(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    for name in ["one", "two"] {
        gateway.publish(&gold, market_buy(name)).await.unwrap();
    }
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let positions = &gateway.core().positions;
    assert_eq!(
        positions.get(device.id.as_str(), &gold).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        positions
            .subscription_start(device.id.as_str(), &gold)
            .await
            .unwrap(),
        Some(2)
    );
    gateway.publish(&gold, market_buy("three")).await.unwrap();
    // No resume point: from the record, so from the subscription.
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    let signals = session.signals(1).await;
    assert_eq!(
        (signals[0].position, signals[0].comment.as_str()),
        (3, "three")
    );
}

on_both_backends!(a_device_that_writes_reports_without_reading_never_stalls_its_session);
/// A device that sends a long burst of reports while it reads nothing (as
/// an EA or bot writing all it has before reading does), with many signals
/// waiting for it: the gateway keeps reading its reports while the signals
/// wait for the device to read, so neither side stalls for the other; once
/// the device reads, every signal arrives in order and every report is
/// confirmed.
async fn a_device_that_writes_reports_without_reading_never_stalls_its_session(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    // It takes 8 KiB ahead of reading: far less than what waits for it.
    let (mut session, _) = Session::open_with_window(&gateway, dir.path(), &device, 8 * 1024).await;
    const SIGNALS: usize = 400;
    const REPORTS: u64 = 3_000;
    for i in 1..=SIGNALS {
        gateway
            .publish(&gold, market_buy(&format!("s{i}")))
            .await
            .unwrap();
    }
    // Far more than the gateway takes ahead of reading (64 KiB): written
    // only if the gateway goes on reading while its signals wait.
    let mut burst = Vec::new();
    for seq in 1..=REPORTS {
        let mut frame = [0u8; MAX_WIRE_LEN];
        let report = DeviceMessage::Report(Report {
            seq,
            signal_id: SignalId([7; 16]),
            at_ms: 1_700_000_000_000 + seq,
            outcome: ReportOutcome::Received,
        });
        let len = encode_frame(&report, &mut frame).unwrap();
        burst.extend_from_slice(&frame[..len]);
    }
    tokio::time::timeout(Duration::from_secs(20), session.send_raw(&burst))
        .await
        .expect("the gateway reads reports while signals wait for the device");
    let mut signals = Vec::new();
    let mut confirmed = 0;
    while signals.len() < SIGNALS || confirmed < REPORTS {
        match session.receive().await {
            Some(GatewayMessage::Signal(signal)) => signals.push(signal),
            Some(GatewayMessage::ReportsConfirmed(c)) => {
                assert!(c.up_to_seq > confirmed);
                confirmed = c.up_to_seq;
            }
            other => panic!("expected signals and confirmations, got {other:?}"),
        }
    }
    let positions: Vec<u64> = signals.iter().map(|s| s.position).collect();
    assert_eq!(positions, (1..=SIGNALS as u64).collect::<Vec<_>>());
    assert_eq!(confirmed, REPORTS);
}

on_both_backends!(signals_held_back_for_a_slow_reader_flow_again_once_it_reads_without_it_sending);
/// Far more signals than the gateway queues for one device, to a device that
/// reads slowly (8 KiB ahead) and sends nothing: once it has read what was
/// queued, the rest flows at once, in order, without waiting for the device
/// to say something.
async fn signals_held_back_for_a_slow_reader_flow_again_once_it_reads_without_it_sending(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let gold = channel("gold");
    let device = register(&gateway).await;
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    const SIGNALS: usize = 1_500;
    for i in 1..=SIGNALS {
        gateway
            .publish(&gold, market_buy(&format!("s{i}")))
            .await
            .unwrap();
    }
    let (mut session, _) = Session::open_with_window(&gateway, dir.path(), &device, 8 * 1024).await;
    let received = session.signals(SIGNALS).await;
    let positions: Vec<u64> = received.iter().map(|s| s.position).collect();
    assert_eq!(positions, (1..=SIGNALS as u64).collect::<Vec<_>>());
}

/// `quic_endpoints = 4`: four sockets share the port, the kernel spreads
/// the devices over them, and every device gets every signal as with one.
#[tokio::test]
async fn devices_spread_over_several_endpoints_on_one_port_each_get_every_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.quic_endpoints = 4;
    let gateway = Gateway::start(&settings).await.unwrap();
    let gold = channel("gold");
    let mut sessions = Vec::new();
    for _ in 0..16 {
        let device = register(&gateway).await;
        gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
        sessions.push(Session::open(&gateway, dir.path(), &device).await.0);
    }
    let per_endpoint = gateway.connections_per_endpoint();
    assert_eq!(per_endpoint.len(), 4);
    assert_eq!(per_endpoint.iter().sum::<usize>(), 16);
    // 16 devices on one of four sockets by chance: about 1 in 10^9.
    assert!(
        per_endpoint.iter().filter(|n| **n > 0).count() > 1,
        "{per_endpoint:?}"
    );
    for i in 1..=3 {
        gateway
            .publish(&gold, market_buy(&format!("s{i}")))
            .await
            .unwrap();
    }
    for session in &mut sessions {
        assert_eq!(comments(&session.signals(3).await), ["s1", "s2", "s3"]);
    }
    gateway.shutdown().await;
    for session in &sessions {
        assert!(session.connection.close_reason().is_some(), "closed");
    }
}
