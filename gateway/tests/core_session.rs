//! A device's whole session driven through the core alone, with no socket:
//! admission, signals in order, reports stored and confirmed, resuming
//! after the device was away, a takeover by a second session. What a second
//! device transport does with the core, this test does by hand; the QUIC
//! transport is nowhere in it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use eagate_gateway::core::{Close, Core, Denial, DeviceSession, Next};
use eagate_gateway::signals::SignalDraft;
use eagate_gateway::store::sled::{SledReportStore, SledSignalLog};
use eagate_protocol::*;

mod common;

use common::held::{Durability, core_with, core_with_held_reports, gold_follower};

const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A core on a temporary sled database; no endpoint, no listener.
fn core() -> (Core, eagate_gateway::durable::Durable) {
    core_with(|db| Arc::new(SledReportStore::open(db).unwrap()))
}

fn gold() -> ChannelName {
    ChannelName::new("gold").unwrap()
}

fn market_buy(comment: &str) -> SignalDraft {
    SignalDraft {
        symbol: Symbol::new("XAUUSD").unwrap(),
        action: Action::OpenBuy,
        order_type: OrderType::Market,
        volume: "0.10".parse().unwrap(),
        price: None,
        stop_loss: None,
        take_profit: None,
        magic: 7,
        comment: SignalComment::new(comment).unwrap(),
        issued_at_ms: None,
        expires_at_ms: None,
        reference: None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A claim signed for a connection whose binding is `binding` (any 32
/// bytes: here there is no TLS, the transport would supply it).
fn claim(
    id: &DeviceId,
    secret: &DeviceSecret,
    binding: &ChannelBinding,
    nonce: u8,
    resume: &[(ChannelName, u64)],
) -> Authenticate {
    Authenticate::sign(
        id.clone(),
        secret,
        now_ms(),
        [nonce; 16],
        binding,
        resume
            .iter()
            .map(|(channel, position)| ResumePoint {
                channel: channel.clone(),
                position: *position,
            })
            .collect(),
    )
}

/// The next step of a session whose device says nothing meanwhile.
async fn next(session: &mut DeviceSession<'_>) -> Next<()> {
    tokio::time::timeout(
        Duration::from_secs(5),
        session.next(std::future::pending::<()>()),
    )
    .await
    .expect("the core has something within 5 s")
}

async fn next_signal(
    session: &mut DeviceSession<'_>,
) -> std::sync::Arc<eagate_gateway::core::fanout::OutgoingSignal> {
    match next(session).await {
        Next::Signal(signal) => {
            session.sent(&signal);
            signal
        }
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_session_runs_through_the_core_alone_and_resumes_after_it_was_away() {
    let (core, _db) = core();
    let (id, secret) = gold_follower(&core).await;
    core.publish(&gold(), market_buy("one"), None)
        .await
        .unwrap();
    let binding = [7; 32];

    // A wrong binding (a captured claim replayed elsewhere) is refused.
    let captured = claim(&id, &secret, &[8; 32], 1, &[]);
    assert_eq!(
        core.admit(captured, &binding, SOURCE).await.err(),
        Some(Denial::Refused(Refusal::Failed))
    );

    let admitted = core
        .admit(claim(&id, &secret, &binding, 2, &[]), &binding, SOURCE)
        .await
        .unwrap();
    assert_eq!(admitted.accepted.confirmed_report_seq, 0);
    let mut session = admitted.session;
    session.start().await.unwrap();
    let one = next_signal(&mut session).await;
    assert_eq!(one.comment.as_str(), "one");
    for (seq, outcome) in [
        (1, ReportOutcome::Received),
        (
            2,
            ReportOutcome::Filled(Fill {
                ticket: 42,
                price: "2350.10".parse().unwrap(),
                volume: "0.10".parse().unwrap(),
            }),
        ),
    ] {
        let report = Report {
            seq,
            signal_id: one.signal_id,
            at_ms: 1_000 + seq,
            outcome,
        };
        assert_eq!(session.report(report).await, Ok(()));
        // Confirmed once durable, by the session's next step.
        assert!(matches!(next(&mut session).await, Next::Confirm(up_to) if up_to == seq));
    }
    // What the device said comes through the session as it arrives.
    match session.next(async { "ping" }).await {
        Next::Device(said) => assert_eq!(said, "ping"),
        other => panic!("expected the device's message, got {other:?}"),
    }
    session.finish().await;

    // Away: a signal is published; back, resuming after what it had.
    core.publish(&gold(), market_buy("two"), None)
        .await
        .unwrap();
    let resume = [(gold(), one.position)];
    let admitted = core
        .admit(claim(&id, &secret, &binding, 3, &resume), &binding, SOURCE)
        .await
        .unwrap();
    assert_eq!(admitted.accepted.confirmed_report_seq, 2);
    let mut session = admitted.session;
    session.start().await.unwrap();
    assert_eq!(next_signal(&mut session).await.comment.as_str(), "two");
    let stored = core.reports.for_signal(one.signal_id).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].ticket, Some(42));

    // A second installation takes over: the first session is told to end,
    // and the second is admitted once it has.
    let second = core.admit(claim(&id, &secret, &binding, 4, &[]), &binding, SOURCE);
    let first_ends = async {
        let end = next(&mut session).await;
        session.finish().await;
        end
    };
    let (second, end) = tokio::join!(second, first_ends);
    assert!(matches!(end, Next::End(Close::Replaced)), "{end:?}");
    let mut second = second.unwrap().session;
    second.start().await.unwrap();
    core.publish(&gold(), market_buy("three"), None)
        .await
        .unwrap();
    // It names no resume point: it starts after the device's last report.
    for comment in ["two", "three"] {
        assert_eq!(next_signal(&mut second).await.comment.as_str(), comment);
    }
    second.finish().await;
}

#[tokio::test]
async fn a_session_revoked_before_it_starts_ends_without_starting_and_never_panics() {
    let (core, _db) = core();
    let (id, secret) = gold_follower(&core).await;
    let binding = [7; 32];
    let admitted = core
        .admit(claim(&id, &secret, &binding, 1, &[]), &binding, SOURCE)
        .await
        .unwrap();
    let mut session = admitted.session;
    // Revoked between admission and the welcome reaching the device.
    core.revoke(id.as_str()).await.unwrap();
    assert_eq!(session.start().await, Err(Close::Revoked));
    // A transport that carries on anyway is told the same, not a panic.
    assert!(matches!(
        session.next(std::future::ready(())).await,
        Next::End(Close::Revoked)
    ));
    session.stop();
    session.finish().await;
    assert_eq!(core.presence_of(id.as_str()).await.sessions, 0);
}

/// A gold follower's session on `core`, started, with one signal sent.
async fn started_gold_session(core: &Core) -> (DeviceSession<'_>, SignalId) {
    let (id, secret) = gold_follower(core).await;
    let signal = core
        .publish(&gold(), market_buy("one"), None)
        .await
        .unwrap();
    let binding = [7; 32];
    let mut session = core
        .admit(claim(&id, &secret, &binding, 1, &[]), &binding, SOURCE)
        .await
        .unwrap()
        .session;
    session.start().await.unwrap();
    next_signal(&mut session).await;
    (session, signal.signal.signal_id)
}

/// What the session says within `wait`, if anything.
async fn next_within(session: &mut DeviceSession<'_>, wait: Duration) -> Option<Next<()>> {
    tokio::time::timeout(wait, session.next(std::future::pending::<()>()))
        .await
        .ok()
}

#[tokio::test]
async fn a_report_sent_ahead_of_its_gap_does_not_vouch_for_the_one_that_fills_it() {
    let (core, _db, held) = core_with_held_reports();
    let (mut session, signal_id) = started_gold_session(&core).await;
    let report = |seq| Report {
        seq,
        signal_id,
        at_ms: 1_000 + seq,
        outcome: ReportOutcome::Received,
    };
    // Report 2 first, durable at once: it confirms nothing (1 is missing).
    assert_eq!(session.report(report(2)).await, Ok(()));
    // Then report 1, whose disk stalls.
    held.durability.send_replace(Durability::Held);
    assert_eq!(session.report(report(1)).await, Ok(()));
    let mut said = Vec::new();
    while let Some(next) = next_within(&mut session, Duration::from_millis(300)).await {
        match next {
            Next::Confirm(0) => {}
            Next::Confirm(up_to) => said.push(up_to),
            _ => panic!("nothing but confirmations is due"),
        }
    }
    assert_eq!(
        said, [0u64; 0],
        "report 1 is confirmed before it is durable"
    );
    // Durable: confirmed.
    held.durability.send_replace(Durability::Durable);
    assert!(matches!(next(&mut session).await, Next::Confirm(1..)));
    session.finish().await;
}

#[tokio::test]
async fn reports_on_their_way_to_disk_are_confirmed_in_order_once_durable_and_never_before() {
    let (core, _db, held) = core_with_held_reports();
    let (mut session, signal_id) = started_gold_session(&core).await;
    held.durability.send_replace(Durability::Held);
    let report = |seq| Report {
        seq,
        signal_id,
        at_ms: 1_000 + seq,
        outcome: ReportOutcome::Received,
    };

    // Three reports taken while none is durable: none confirmed yet.
    for seq in 1..=3 {
        assert_eq!(session.report(report(seq)).await, Ok(()));
    }
    assert!(
        next_within(&mut session, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing is confirmed before it is durable"
    );
    // Durable: all three confirmed, in one confirmation of the newest.
    held.durability.send_replace(Durability::Durable);
    assert!(matches!(next(&mut session).await, Next::Confirm(3)));

    // A write whose durability fails is never confirmed: the session ends
    // (the device resends it after reconnecting).
    held.durability.send_replace(Durability::Held);
    assert_eq!(session.report(report(4)).await, Ok(()));
    held.durability.send_replace(Durability::Failing);
    assert!(matches!(
        next(&mut session).await,
        Next::End(Close::StoreUnavailable)
    ));
    session.finish().await;
    // Written all the same: the device's resend finds it and is confirmed
    // once durable, stored once.
    assert_eq!(core.reports.for_signal(signal_id).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_signal_located_once_keeps_its_place_after_it_expires_from_the_log() {
    let (core, _db) = core();
    let appended = core.publish(&gold(), market_buy("a"), None).await.unwrap();
    let id = appended.signal.signal_id;
    let place = Some((gold(), appended.signal.position));
    assert_eq!(core.places.locate(&*core.signals, id).await.unwrap(), place);
    // Expired from the log: the log no longer knows it, the places do (the
    // channel it was published on does not change).
    assert_eq!(core.signals.trim(u64::MAX).await.unwrap(), 1);
    assert_eq!(core.signals.locate(id).await.unwrap(), None);
    assert_eq!(core.places.locate(&*core.signals, id).await.unwrap(), place);
    // Other signals are not taken for it.
    let later = core.publish(&gold(), market_buy("b"), None).await.unwrap();
    let mut unknown = later.signal.signal_id;
    unknown.0[15] ^= 1;
    assert_eq!(
        core.places.locate(&*core.signals, unknown).await.unwrap(),
        None
    );
    assert_eq!(
        core.places
            .locate(&*core.signals, later.signal.signal_id)
            .await
            .unwrap(),
        Some((gold(), later.signal.position))
    );
}

#[tokio::test]
async fn a_follower_held_back_past_the_broadcast_catches_up_from_the_log_in_order_once() {
    use eagate_gateway::core::fanout::SignalHub;
    use eagate_gateway::signals::SignalLog;

    let db =
        eagate_gateway::durable::Durable::new(sled::Config::new().temporary(true).open().unwrap())
            .unwrap();
    let log: Arc<dyn SignalLog> = Arc::new(SledSignalLog::open(&db).unwrap());
    let hub = SignalHub::new(2);
    let publish = |n: u32| {
        let (log, hub) = (log.clone(), hub.clone());
        async move {
            let appended = log
                .append(&gold(), market_buy(&format!("s{n}")), None)
                .await;
            hub.announce(appended.unwrap().signal);
        }
    };
    for n in 1..=3 {
        publish(n).await;
    }
    // From the log first (1..3), then live. The session takes one and then
    // holds the follower back (its queue of one is full) while 5 more are
    // announced into a broadcast holding 2.
    let (out, mut signals) = tokio::sync::mpsc::channel(1);
    let follower = tokio::spawn({
        let (hub, log) = (hub.clone(), log.clone());
        async move { hub.follow(log, gold(), 0, out).await }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), signals.recv())
            .await
            .expect("a signal in time")
            .expect("the follower runs")
            .position
    };
    let mut positions = vec![next().await];
    for n in 4..=8 {
        publish(n).await;
    }
    while positions.len() < 8 {
        positions.push(next().await);
    }
    assert_eq!(positions, (1..=8).collect::<Vec<u64>>());
    // Live again: the next announcement comes straight through.
    publish(9).await;
    assert_eq!(next().await, 9);
    follower.abort();
}

/// Waits for confirmations up to `seq`: each higher than the last, none
/// beyond `seq`, nothing else meanwhile.
async fn confirmed_up_to(session: &mut DeviceSession<'_>, seq: u64) {
    let mut confirmed = 0;
    while confirmed < seq {
        match next(session).await {
            Next::Confirm(up_to) if up_to > confirmed && up_to <= seq => confirmed = up_to,
            other => panic!("expected confirmations up to {seq} (at {confirmed}), got {other:?}"),
        }
    }
}

fn received(signal_id: SignalId, seq: u64) -> Report {
    Report {
        seq,
        signal_id,
        at_ms: 1_000 + seq,
        outcome: ReportOutcome::Received,
    }
}

#[tokio::test]
async fn reports_sent_while_the_store_is_away_wait_in_order_and_are_confirmed_once_it_is_back() {
    let (core, _db, held) = core_with_held_reports();
    let (mut session, signal_id) = started_gold_session(&core).await;
    held.away.store(true, std::sync::atomic::Ordering::SeqCst);
    // Taken, not refused: the session goes on, nothing is confirmed.
    for seq in 1..=3 {
        assert_eq!(session.report(received(signal_id, seq)).await, Ok(()));
    }
    assert!(
        next_within(&mut session, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing confirmed, nothing ended, while the store is away"
    );
    assert!(core.reports.for_signal(signal_id).await.unwrap().is_empty());
    // Back: the three are stored and confirmed (in order, as each is
    // durable), then the session takes reports as before.
    held.away.store(false, std::sync::atomic::Ordering::SeqCst);
    confirmed_up_to(&mut session, 3).await;
    assert_eq!(session.report(received(signal_id, 4)).await, Ok(()));
    confirmed_up_to(&mut session, 4).await;
    let stored: Vec<u64> = core
        .reports
        .for_signal(signal_id)
        .await
        .unwrap()
        .iter()
        .map(|report| report.seq)
        .collect();
    assert_eq!(stored, vec![1, 2, 3, 4], "each once, in order");
}

#[tokio::test]
async fn a_refused_report_ends_the_session_though_the_store_is_away_for_those_before_it() {
    let (core, _db, held) = core_with_held_reports();
    let (mut session, signal_id) = started_gold_session(&core).await;
    assert_eq!(session.report(received(signal_id, 1)).await, Ok(()));
    confirmed_up_to(&mut session, 1).await;
    // Report 2 cannot be written (the store is away) and the next one breaks
    // the protocol (no number): the session ends; it does not go on
    // holding 2 and lose the refusal.
    held.away.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        session
            .reports(vec![received(signal_id, 2), received(signal_id, 0)])
            .await,
        Err(Close::ProtocolViolation)
    );
}

#[tokio::test]
async fn a_device_sending_more_than_a_session_holds_while_the_store_is_away_is_asked_to_come_back_later()
 {
    let (core, _db, held) = core_with_held_reports();
    let (mut session, signal_id) = started_gold_session(&core).await;
    held.away.store(true, std::sync::atomic::Ordering::SeqCst);
    let holds = eagate_gateway::core::device_session::REPORTS_IN_FLIGHT as u64;
    for seq in 1..=holds {
        assert_eq!(session.report(received(signal_id, seq)).await, Ok(()));
    }
    assert_eq!(
        session.report(received(signal_id, holds + 1)).await,
        Err(Close::StoreUnavailable),
        "one more than a session holds: come back later (and resend)"
    );
}
