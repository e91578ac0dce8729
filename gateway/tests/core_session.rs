//! A device's whole session driven through the core alone, with no socket:
//! admission, signals in order, reports stored and confirmed, resuming
//! after the device was away, a takeover by a second session. What a second
//! device transport does with the core, this test does by hand; the QUIC
//! transport is nowhere in it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use eagate_gateway::core::{Close, Core, Denial, DeviceSession, Next};
use eagate_gateway::registry::DeviceRegistry;
use eagate_gateway::seal::MasterKey;
use eagate_gateway::signals::SignalDraft;
use eagate_gateway::store::sled::{
    SledDeviceStore, SledNonceStore, SledPositions, SledReportStore, SledSignalLog,
};
use eagate_protocol::*;

const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A core on a temporary sled database; no endpoint, no listener.
fn core() -> (Core, eagate_gateway::durable::Durable) {
    let db =
        eagate_gateway::durable::Durable::new(sled::Config::new().temporary(true).open().unwrap())
            .unwrap();
    let core = Core::new(
        DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db).unwrap())),
        MasterKey::from_hex(&"ab".repeat(32)).unwrap(),
        Arc::new(SledNonceStore::open(&db).unwrap()),
        Arc::new(SledReportStore::open(&db).unwrap()),
        Arc::new(SledSignalLog::open(&db).unwrap()),
        Arc::new(SledPositions::open(&db).unwrap()),
    );
    (core, db)
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

async fn next_signal(session: &mut DeviceSession<'_>) -> std::sync::Arc<Signal> {
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
    let (record, secret) = core
        .registry
        .register(&core.master_key, "acct-1", "VPS")
        .await
        .unwrap();
    let id = DeviceId::new(&record.device_id).unwrap();
    core.subscribe(id.as_str(), &gold()).await.unwrap();
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
        assert_eq!(session.report(report).await, Ok(seq));
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
    let (record, secret) = core
        .registry
        .register(&core.master_key, "acct-1", "VPS")
        .await
        .unwrap();
    let id = DeviceId::new(&record.device_id).unwrap();
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
