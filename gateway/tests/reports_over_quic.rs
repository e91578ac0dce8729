//! Reports from a device over real QUIC: stored once each, confirmed only
//! when durable, and the confirmation survives reconnects and restarts.

mod common;

use common::*;
use eagate_gateway::reports::ReportKind;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;

/// A report as a device's outbox holds it: a resend is the same bytes, so
/// the time it happened is fixed by what it reports.
fn report(seq: u64, signal: u8, outcome: ReportOutcome) -> DeviceMessage {
    DeviceMessage::Report(Report {
        seq,
        signal_id: SignalId([signal; 16]),
        at_ms: 1_700_000_000_000 + seq,
        outcome,
    })
}

fn fill(ticket: u64) -> ReportOutcome {
    ReportOutcome::Filled(Fill {
        ticket,
        price: "1.08543".parse().unwrap(),
        volume: "0.10".parse().unwrap(),
    })
}

on_both_backends!(each_report_is_confirmed_once_it_is_stored);
async fn each_report_is_confirmed_once_it_is_stored(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 0);
    session.send(&report(1, 7, ReportOutcome::Received)).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
    session.send(&report(2, 7, fill(555))).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 2
        }))
    );
    let stored = gateway
        .reports()
        .for_signal(SignalId([7; 16]))
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].kind, ReportKind::Received);
    assert_eq!(stored[1].kind, ReportKind::Filled);
    assert_eq!(stored[1].ticket, Some(555));
    assert_eq!(stored[1].price, Some("1.08543".parse().unwrap()));
    assert_eq!(stored[1].device_id, device.id.as_str());
}

on_both_backends!(reports_resent_after_a_lost_confirmation_are_stored_exactly_once);
async fn reports_resent_after_a_lost_confirmation_are_stored_exactly_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    for seq in 1..=3 {
        session.send(&report(seq, 9, fill(seq))).await;
    }
    // The gateway stores them; the device drops the connection without
    // reading the confirmations, as if they were lost on the way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gateway
        .reports()
        .confirmed_up_to(device.id.as_str())
        .await
        .unwrap()
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "reports not stored");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(session);

    let (mut session, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 3);
    // A device that did not see that answer resends everything anyway.
    for seq in 1..=4 {
        session.send(&report(seq, 9, fill(seq))).await;
    }
    let mut last = 0;
    while last < 4 {
        match session.receive().await {
            Some(GatewayMessage::ReportsConfirmed(c)) => last = c.up_to_seq,
            other => panic!("expected confirmations, got {other:?}"),
        }
    }
    let stored = gateway
        .reports()
        .for_signal(SignalId([9; 16]))
        .await
        .unwrap();
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // What an operator sees with a plain Redis client: one record and one
    // stream entry per report, however often it was sent.
    if let Some((mut redis, prefix)) = backend.redis_connection() {
        let device_key = |what: &str| format!("{prefix}:{{dev:{}}}:{what}", device.id.as_str());
        let records: u64 = redis::cmd("HLEN")
            .arg(device_key("reports"))
            .query(&mut *redis)
            .unwrap();
        let entries: u64 = redis::cmd("XLEN")
            .arg(device_key("executions"))
            .query(&mut *redis)
            .unwrap();
        assert_eq!((records, entries), (4, 4));
    }
    drop(session);

    // And after a gateway restart, the watermark and the records are there.
    gateway.shutdown().await;
    let restarted = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    let (_session, accepted) = Session::open(&restarted, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 4);
    assert_eq!(
        restarted
            .reports()
            .for_signal(SignalId([9; 16]))
            .await
            .unwrap()
            .len(),
        4
    );
}

on_both_backends!(a_report_with_sequence_zero_is_a_protocol_violation);
async fn a_report_with_sequence_zero_is_a_protocol_violation(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    session.send(&report(0, 1, ReportOutcome::Received)).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::ProtocolViolation
        }))
    );
    assert!(
        gateway
            .reports()
            .for_signal(SignalId([1; 16]))
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(a_report_far_beyond_the_confirmed_sequence_is_a_protocol_violation);
async fn a_report_far_beyond_the_confirmed_sequence_is_a_protocol_violation(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    let too_far = eagate_gateway::reports::MAX_REPORT_GAP + 1;
    session
        .send(&report(too_far, 2, ReportOutcome::Received))
        .await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::ProtocolViolation
        }))
    );
    assert!(
        gateway
            .reports()
            .for_signal(SignalId([2; 16]))
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(a_report_about_a_signal_of_a_channel_never_followed_is_a_protocol_violation);
async fn a_report_about_a_signal_of_a_channel_never_followed_is_a_protocol_violation(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let silver = ChannelName::new("silver").unwrap();
    let foreign = gateway
        .publish(
            &silver,
            eagate_gateway::signals::SignalDraft {
                symbol: Symbol::new("XAGUSD").unwrap(),
                action: Action::OpenBuy,
                order_type: OrderType::Market,
                volume: "1".parse().unwrap(),
                price: None,
                stop_loss: None,
                take_profit: None,
                magic: 0,
                comment: SignalComment::new("").unwrap(),
                issued_at_ms: None,
                expires_at_ms: None,
                reference: None,
            },
        )
        .await
        .unwrap();
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    session
        .send(&DeviceMessage::Report(Report {
            seq: 1,
            signal_id: foreign.signal_id,
            at_ms: 1,
            outcome: fill(1),
        }))
        .await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::ProtocolViolation
        }))
    );
    assert!(
        gateway
            .reports()
            .for_signal(foreign.signal_id)
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(a_report_about_a_signal_the_log_does_not_hold_is_kept_and_counted);
async fn a_report_about_a_signal_the_log_does_not_hold_is_kept_and_counted(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    // Expired from the log while the device was away (or never published):
    // the report is the only record of what the terminal did.
    session.send(&report(1, 0xee, fill(77))).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
    assert_eq!(
        gateway
            .reports()
            .for_signal(SignalId([0xee; 16]))
            .await
            .unwrap()
            .len(),
        1
    );
    let metrics = gateway.core().metrics.render();
    assert!(metrics.contains("eagate_reports_about_unknown_signals_total 1\n"));
}
