//! One live session per device, over real QUIC on loopback: a device that
//! connects again replaces its older session before the new one receives
//! anything, a replaced session can never have a report confirmed, and a
//! report under a number that holds another report is a conflict, never
//! confirmed as if stored.

mod common;

use std::time::Duration;

use common::*;
use eagate_gateway::reports::StoredReport;
use eagate_gateway::transport::quic::close_code;
use eagate_protocol::*;

fn gold() -> ChannelName {
    ChannelName::new("gold").unwrap()
}

/// A device following `gold`, and a signal of `gold` published before it
/// subscribed: never sent to it, but of a channel it follows, so one it may
/// report on (as after an earlier subscription).
async fn device_with_a_signal_to_report_on(
    gateway: &eagate_gateway::server::Gateway,
) -> (Device, Signal) {
    let device = register(gateway).await;
    let signal = gateway.publish(&gold(), market_buy("buy")).await.unwrap();
    gateway
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    (device, signal)
}

fn fill(seq: u64, signal_id: SignalId, ticket: u64) -> DeviceMessage {
    DeviceMessage::Report(Report {
        seq,
        signal_id,
        at_ms: 1_700_000_000_000 + ticket,
        outcome: ReportOutcome::Filled(Fill {
            ticket,
            price: "2350.10".parse().unwrap(),
            volume: "0.10".parse().unwrap(),
        }),
    })
}

/// Log lines written while a test runs, for checking what an operator
/// would read. Tests run on one thread, so a thread-local subscriber sees
/// every task of the gateway under test.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn going_away(reason: GoingAwayReason) -> Option<GatewayMessage> {
    Some(GatewayMessage::GoingAway(GoingAway { reason }))
}

/// The stored reports about `signal_id`, as (seq, ticket).
async fn stored_tickets(
    gateway: &eagate_gateway::server::Gateway,
    signal_id: SignalId,
) -> Vec<(u64, u64)> {
    gateway
        .reports()
        .for_signal(signal_id)
        .await
        .unwrap()
        .iter()
        .map(|r: &StoredReport| (r.seq, r.ticket.unwrap_or(0)))
        .collect()
}

on_both_backends!(
    a_device_connecting_again_replaces_its_older_session_before_the_new_one_hears_anything
);
async fn a_device_connecting_again_replaces_its_older_session_before_the_new_one_hears_anything(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    gateway
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    let (mut first, _) = Session::open(&gateway, dir.path(), &device).await;
    // The same device id and secret from a second chart.
    let (mut second, _) = Session::open(&gateway, dir.path(), &device).await;
    // By the time the newer session is accepted, the gateway has closed the
    // older connection (its close is already on the wire) and counts one
    // session.
    assert_eq!(
        gateway
            .core()
            .presence_of(device.id.as_str())
            .await
            .sessions,
        1
    );
    tokio::time::timeout(Duration::from_millis(100), first.connection.closed())
        .await
        .expect("the older connection was closed before the newer one was accepted");
    first
        .expect_goodbye(GoingAwayReason::Replaced, close_code::REPLACED)
        .await;
    // Only the live session trades the next signal.
    gateway.publish(&gold(), market_buy("once")).await.unwrap();
    assert_eq!(second.signals(1).await[0].comment.as_str(), "once");
    assert_eq!(first.receive().await, None);
    let presence = gateway.core().presence_of(device.id.as_str()).await;
    assert_eq!(presence.sessions, 1);
    // The newer session is not replaced by its own takeover.
    second.send(&DeviceMessage::Ping(Ping { token: 3 })).await;
    assert_eq!(
        second.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 3 }))
    );
}

on_both_backends!(
    two_sessions_reporting_seq_1_with_different_tickets_get_only_the_stored_one_confirmed
);
async fn two_sessions_reporting_seq_1_with_different_tickets_get_only_the_stored_one_confirmed(
    backend: Backend,
) {
    let logs = CapturedLogs::default();
    let _capturing = tracing::subscriber::set_default(logs.subscriber());
    let (gateway, dir) = start_on(&backend).await;
    let (device, signal) = device_with_a_signal_to_report_on(&gateway).await;
    let (mut first, _) = Session::open(&gateway, dir.path(), &device).await;
    first.send(&fill(1, signal.signal_id, 111)).await;
    assert_eq!(
        first.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
    // The second installation numbers its own fill 1 too.
    let (mut second, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 1);
    assert_eq!(first.receive().await, going_away(GoingAwayReason::Replaced));
    second.send(&fill(1, signal.signal_id, 222)).await;
    assert_eq!(
        second.receive().await,
        Some(GatewayMessage::ReportConflict(ReportConflict { seq: 1 })),
        "never confirmed as if stored"
    );
    assert_eq!(second.receive().await, None);
    assert_eq!(
        second.close_code().await,
        close_code::REPORT_CONFLICT as u64
    );
    assert_eq!(stored_tickets(&gateway, signal.signal_id).await, [(1, 111)]);
    let metrics = gateway.core().metrics.render();
    assert!(metrics.contains("eagate_reports_ingested_total{outcome=\"conflict\"} 1\n"));
    let warning = logs
        .lines()
        .into_iter()
        .find(|line| line.contains("conflicts with the one stored"))
        .expect("the conflict is logged");
    assert!(warning.contains("WARN"), "{warning}");
    for content in ["\"ticket\":111", "\"ticket\":222"] {
        assert!(warning.contains(content), "both contents: {warning}");
    }
    assert!(metrics.contains("eagate_device_connections_closed_total{reason=\"replaced\"} 1\n"));

    // Renumbered after the gateway's number, the same fill is stored.
    let (mut third, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 1);
    third.send(&fill(2, signal.signal_id, 222)).await;
    assert_eq!(
        third.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 2
        }))
    );
    assert_eq!(
        stored_tickets(&gateway, signal.signal_id).await,
        [(1, 111), (2, 222)]
    );
}

on_both_backends!(a_version_1_device_is_told_a_conflict_as_a_protocol_violation);
async fn a_version_1_device_is_told_a_conflict_as_a_protocol_violation(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let (device, signal) = device_with_a_signal_to_report_on(&gateway).await;
    let (mut first, _) = Session::open_as(&gateway, dir.path(), &device, 1, &[]).await;
    first.send(&fill(1, signal.signal_id, 111)).await;
    assert!(matches!(
        first.receive().await,
        Some(GatewayMessage::ReportsConfirmed(_))
    ));
    drop(first);
    let (mut second, _) = Session::open_as(&gateway, dir.path(), &device, 1, &[]).await;
    second.send(&fill(1, signal.signal_id, 222)).await;
    assert_eq!(
        second.receive().await,
        going_away(GoingAwayReason::ProtocolViolation)
    );
    assert_eq!(
        second.close_code().await,
        close_code::REPORT_CONFLICT as u64
    );
    assert_eq!(stored_tickets(&gateway, signal.signal_id).await, [(1, 111)]);
}

on_both_backends!(
    reports_racing_a_takeover_are_confirmed_only_when_stored_with_that_sessions_content
);
async fn reports_racing_a_takeover_are_confirmed_only_when_stored_with_that_sessions_content(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let (device, signal) = device_with_a_signal_to_report_on(&gateway).await;
    let (mut old, _) = Session::open(&gateway, dir.path(), &device).await;
    // The old session streams fills 1..=200 (tickets 1000 + seq) without
    // waiting, while a second installation takes over.
    for seq in 1..=200 {
        old.send(&fill(seq, signal.signal_id, 1_000 + seq)).await;
    }
    let (mut new, accepted) = Session::open(&gateway, dir.path(), &device).await;
    let mut confirmed_to_old = 0;
    loop {
        match old.receive().await {
            Some(GatewayMessage::ReportsConfirmed(c)) => {
                assert!(c.up_to_seq > confirmed_to_old);
                confirmed_to_old = c.up_to_seq;
            }
            Some(GatewayMessage::GoingAway(GoingAway {
                reason: GoingAwayReason::Replaced,
            })) => break,
            other => panic!("expected confirmations then Replaced, got {other:?}"),
        }
    }
    // Nothing after the goodbye, and everything confirmed to the old session
    // was stored before the new one began.
    assert_eq!(old.receive().await, None);
    assert!(confirmed_to_old <= accepted.confirmed_report_seq);
    let stored = stored_tickets(&gateway, signal.signal_id).await;
    assert_eq!(stored.len() as u64, accepted.confirmed_report_seq);
    for (seq, ticket) in &stored {
        assert_eq!(*ticket, 1_000 + seq, "the old session's own fill");
    }
    // The new installation carries on above it; the old one wrote nothing
    // after it began.
    let next = accepted.confirmed_report_seq + 1;
    new.send(&fill(next, signal.signal_id, 9_999)).await;
    assert_eq!(
        new.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: next
        }))
    );
    let stored = stored_tickets(&gateway, signal.signal_id).await;
    assert_eq!(stored.last(), Some(&(next, 9_999)));
    assert_eq!(stored.len() as u64, next);
}

on_both_backends!(confirmations_never_go_above_the_report_just_handled);
async fn confirmations_never_go_above_the_report_just_handled(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let (device, signal) = device_with_a_signal_to_report_on(&gateway).await;
    let (mut first, _) = Session::open(&gateway, dir.path(), &device).await;
    for seq in 1..=3 {
        first.send(&fill(seq, signal.signal_id, seq)).await;
    }
    // Confirmations are cumulative: reports durable together are confirmed
    // as one; each rises, and the last covers all three.
    let mut confirmed = 0;
    while confirmed < 3 {
        match first.receive().await {
            Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed { up_to_seq })) => {
                assert!(up_to_seq > confirmed && up_to_seq <= 3, "{up_to_seq}");
                confirmed = up_to_seq;
            }
            other => panic!("expected confirmations, got {other:?}"),
        }
    }
    drop(first);
    // A device resending its #1 (its confirmation lost) hears #1 confirmed,
    // not #3: #2 and #3 might be another installation's.
    let (mut again, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 3);
    again.send(&fill(1, signal.signal_id, 1)).await;
    assert_eq!(
        again.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
}

on_both_backends!(
    a_device_that_sends_nothing_is_pinged_then_dropped_at_the_idle_timeout_and_one_that_pings_is_not
);
async fn a_device_that_sends_nothing_is_pinged_then_dropped_at_the_idle_timeout_and_one_that_pings_is_not(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let silent_device = register(&gateway).await;
    let pinging_device = register(&gateway).await;
    let (mut silent, accepted) = Session::open(&gateway, dir.path(), &silent_device).await;
    let (mut pinging, _) = Session::open(&gateway, dir.path(), &pinging_device).await;
    let idle = Duration::from_millis(accepted.session.idle_timeout_ms.into());
    let interval = Duration::from_millis(accepted.session.ping_interval_ms.into());
    assert!(interval * 2 <= idle);
    let started = std::time::Instant::now();
    // QUIC keep-alives hold the silent device's connection; the rule is the
    // application's: nothing heard for the idle timeout ends the session.
    let pings = tokio::spawn(async move {
        for token in 0.. {
            tokio::time::sleep(interval).await;
            pinging.send(&DeviceMessage::Ping(Ping { token })).await;
            assert_eq!(
                pinging.receive().await,
                Some(GatewayMessage::Pong(Pong { token }))
            );
            if started.elapsed() > idle + interval * 2 {
                return pinging;
            }
        }
        unreachable!()
    });
    let goodbye = silent.receive_within(idle + Duration::from_secs(5)).await;
    assert_eq!(goodbye, going_away(GoingAwayReason::IdleTimeout));
    assert!(started.elapsed() >= idle - Duration::from_millis(200));
    assert_eq!(silent.close_code().await, close_code::IDLE_TIMEOUT as u64);
    // Having nothing else to say, the gateway pinged it (about once a ping
    // interval): a device that reports without pause never pings, and must
    // hear something within its own idle timeout.
    assert!(
        (1..=4).contains(&silent.pings_heard),
        "{} pings in {idle:?}",
        silent.pings_heard
    );
    let pinging = pings.await.unwrap();
    assert!(
        !pinging.is_closed(),
        "a pinging device outlives the idle timeout"
    );
}

/// A Redis that lost the device's newest session epoch under a live
/// session (a failover to a replica behind, a restore): the session's next
/// report is not taken for one from a replaced session, which would stop
/// the device for good. The session ends as on a store that failed
/// (`GoingAway(Shutdown)`), nothing is written, and the device, connecting
/// again, has its report stored once.
async fn a_session_whose_epoch_redis_lost_ends_to_reconnect_not_as_replaced(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let (device, signal) = device_with_a_signal_to_report_on(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    let (mut redis, prefix) = backend.redis_connection().unwrap();
    let _: i64 = redis::cmd("DECR")
        .arg(format!("{prefix}:{{dev:{}}}:session", device.id.as_str()))
        .query(&mut *redis)
        .unwrap();
    session.send(&fill(1, signal.signal_id, 111)).await;
    assert_eq!(
        session.receive().await,
        going_away(GoingAwayReason::Shutdown)
    );
    assert_eq!(
        session.close_code().await,
        close_code::STORE_UNAVAILABLE as u64
    );
    assert!(stored_tickets(&gateway, signal.signal_id).await.is_empty());
    let (mut again, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 0);
    again.send(&fill(1, signal.signal_id, 111)).await;
    assert_eq!(
        again.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
    assert_eq!(stored_tickets(&gateway, signal.signal_id).await, [(1, 111)]);
}

#[tokio::test]
async fn a_session_whose_epoch_redis_lost_ends_to_reconnect_not_as_replaced_on_redis() {
    a_session_whose_epoch_redis_lost_ends_to_reconnect_not_as_replaced(Backend::redis()).await;
}

#[tokio::test]
async fn a_session_whose_epoch_redis_lost_ends_to_reconnect_not_as_replaced_on_redis_cluster() {
    a_session_whose_epoch_redis_lost_ends_to_reconnect_not_as_replaced(Backend::redis_cluster())
        .await;
}
