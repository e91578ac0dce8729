//! Several processes sharing one Redis, as a deployment runs them: two
//! `gateway` roles and one `sidecar` role, each with its own data directory
//! and TLS identity, sharing the master key. What one process does must reach
//! devices on the others.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use eagate_gateway::server::{Gateway, Role, StartError};
use eagate_protocol::*;

const MASTER_KEY: &str = "5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1ed5ea1";

struct Deployment {
    sidecar: Gateway,
    gateway_a: Gateway,
    gateway_b: Gateway,
    dirs: [tempfile::TempDir; 3],
    backend: Backend,
}

async fn start_role(backend: &Backend, dir: &Path, role: Role) -> Gateway {
    let mut config = config_on(backend, dir);
    config.master_key = Some(MASTER_KEY.into());
    Gateway::start_as(&config, role).await.unwrap()
}

async fn deployment() -> Deployment {
    let backend = Backend::redis();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    Deployment {
        sidecar: start_role(&backend, dirs[0].path(), Role::Sidecar).await,
        gateway_a: start_role(&backend, dirs[1].path(), Role::Devices).await,
        gateway_b: start_role(&backend, dirs[2].path(), Role::Devices).await,
        dirs,
        backend,
    }
}

fn gold() -> ChannelName {
    ChannelName::new("gold").unwrap()
}

async fn next_signal(session: &mut Session) -> Signal {
    match tokio::time::timeout(Duration::from_secs(5), session.receive()).await {
        Ok(Some(GatewayMessage::Signal(signal))) => signal,
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test]
async fn roles_sharing_state_refuse_to_start_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    for role in [Role::Devices, Role::Sidecar] {
        let refused = Gateway::start_as(&config(dir.path()), role).await;
        assert!(
            matches!(refused, Err(StartError::NeedsRedis(_))),
            "{role:?} started without Redis"
        );
    }
}

#[tokio::test]
async fn a_process_with_another_master_key_refuses_to_join_the_deployment() {
    let deployment = deployment().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_on(&deployment.backend, dir.path());
    config.master_key = Some("00".repeat(32));
    let refused = Gateway::start_as(&config, Role::Devices).await;
    assert!(matches!(refused, Err(StartError::MasterKeyMismatch)));
}

#[tokio::test]
async fn a_device_registered_on_the_sidecar_authenticates_on_any_gateway() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    for (gateway, dir) in [
        (&deployment.gateway_a, &deployment.dirs[1]),
        (&deployment.gateway_b, &deployment.dirs[2]),
    ] {
        Session::open(gateway, dir.path(), &device).await;
    }
}

#[tokio::test]
async fn a_signal_published_on_the_sidecar_reaches_devices_on_every_gateway() {
    let deployment = deployment().await;
    let on_a = register(&deployment.sidecar).await;
    let on_b = register(&deployment.sidecar).await;
    for device in [&on_a, &on_b] {
        deployment
            .sidecar
            .subscribe(device.id.as_str(), &gold())
            .await
            .unwrap();
    }
    let (mut session_a, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &on_a).await;
    let (mut session_b, _) =
        Session::open(&deployment.gateway_b, deployment.dirs[2].path(), &on_b).await;
    for comment in ["first", "second", "third"] {
        deployment
            .sidecar
            .publish(&gold(), market_buy(comment))
            .await
            .unwrap();
    }
    for session in [&mut session_a, &mut session_b] {
        let mut received = Vec::new();
        for _ in 0..3 {
            let signal = next_signal(session).await;
            received.push((signal.position, signal.comment.to_string()));
        }
        assert_eq!(
            received,
            [
                (1, "first".to_owned()),
                (2, "second".to_owned()),
                (3, "third".to_owned())
            ]
        );
    }
}

#[tokio::test]
async fn revoking_on_the_sidecar_cuts_the_device_off_its_gateway_within_one_second() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    let (mut session, _) =
        Session::open(&deployment.gateway_b, deployment.dirs[2].path(), &device).await;
    let revoked_at = Instant::now();
    deployment.sidecar.revoke(device.id.as_str()).await.unwrap();
    let told = tokio::time::timeout(Duration::from_secs(1), session.receive())
        .await
        .expect("the gateway acts on the revocation within a second");
    assert_eq!(
        told,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Revoked
        }))
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // And it cannot come back through the other gateway either.
    let mut again = connect(&deployment.gateway_a, deployment.dirs[1].path()).await;
    assert_eq!(
        again.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Revoked))
    );
}

#[tokio::test]
async fn a_device_moving_to_another_gateway_resumes_after_what_it_reported() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    deployment
        .sidecar
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    let (mut session, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    for comment in ["one", "two"] {
        deployment
            .sidecar
            .publish(&gold(), market_buy(comment))
            .await
            .unwrap();
    }
    let signals = [
        next_signal(&mut session).await,
        next_signal(&mut session).await,
    ];
    for (seq, signal) in (1..).zip(&signals) {
        session
            .send(&DeviceMessage::Report(Report {
                seq,
                signal_id: signal.signal_id,
                at_ms: now_ms(),
                outcome: ReportOutcome::Received,
            }))
            .await;
        assert_eq!(
            session.receive().await,
            Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                up_to_seq: seq
            }))
        );
    }
    drop(session);
    deployment
        .sidecar
        .publish(&gold(), market_buy("three"))
        .await
        .unwrap();

    // No resume point: gateway B knows the position from the shared store.
    let (mut session, accepted) =
        Session::open(&deployment.gateway_b, deployment.dirs[2].path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 2);
    let signal = next_signal(&mut session).await;
    assert_eq!((signal.position, signal.comment.as_str()), (3, "three"));
}

#[tokio::test]
async fn the_sidecar_shows_a_device_online_while_any_gateway_holds_its_session() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    let id = device.id.as_str();
    let sidecar = deployment.sidecar.core();
    assert_eq!(sidecar.presence_of(id).await.sessions, 0);
    assert_eq!(sidecar.presence_of(id).await.last_seen_ms, 0);

    let (mut session, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    let online = sidecar.presence_of(id).await;
    assert_eq!(online.sessions, 1);
    assert!(online.last_seen_ms > 0);

    session
        .send(&DeviceMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Shutdown,
        }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sidecar.presence_of(id).await.sessions > 0 {
        assert!(
            Instant::now() < deadline,
            "still online after the device left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sidecar.presence_of(id).await.last_seen_ms >= online.last_seen_ms);
}

#[tokio::test]
async fn a_device_connecting_through_another_gateway_replaces_its_session_on_the_first() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    deployment
        .sidecar
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    let (mut on_a, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    // The same device from a second VPS, through gateway B.
    let (mut on_b, _) =
        Session::open(&deployment.gateway_b, deployment.dirs[2].path(), &device).await;
    // Gateway A closed its session before B accepted the new one.
    tokio::time::timeout(Duration::from_millis(100), on_a.connection.closed())
        .await
        .expect("the session on gateway A was closed before gateway B accepted");
    assert_eq!(
        on_a.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Replaced
        }))
    );
    deployment
        .sidecar
        .publish(&gold(), market_buy("once"))
        .await
        .unwrap();
    assert_eq!(next_signal(&mut on_b).await.comment.as_str(), "once");
    assert_eq!(on_a.receive().await, None);
    let presence = deployment
        .sidecar
        .core()
        .presence_of(device.id.as_str())
        .await;
    assert_eq!(presence.sessions, 1, "online on one gateway only");
}

#[tokio::test]
async fn reports_of_one_number_from_two_gateways_are_stored_and_confirmed_once() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    let signal = deployment
        .sidecar
        .publish(&gold(), market_buy("buy"))
        .await
        .unwrap();
    deployment
        .sidecar
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    let fill = |ticket: u64| {
        DeviceMessage::Report(Report {
            seq: 1,
            signal_id: signal.signal_id,
            at_ms: 1_700_000_000_000 + ticket,
            outcome: ReportOutcome::Filled(Fill {
                ticket,
                price: "2350.10".parse().unwrap(),
                volume: "0.10".parse().unwrap(),
            }),
        })
    };
    let (mut on_a, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    on_a.send(&fill(111)).await;
    assert_eq!(
        on_a.receive().await,
        Some(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
            up_to_seq: 1
        }))
    );
    let (mut on_b, accepted) =
        Session::open(&deployment.gateway_b, deployment.dirs[2].path(), &device).await;
    assert_eq!(accepted.confirmed_report_seq, 1);
    on_b.send(&fill(222)).await;
    assert_eq!(
        on_b.receive().await,
        Some(GatewayMessage::ReportConflict(ReportConflict { seq: 1 }))
    );
    let stored = deployment
        .sidecar
        .reports()
        .for_signal(signal.signal_id)
        .await
        .unwrap();
    let tickets: Vec<(u64, Option<u64>)> = stored.iter().map(|r| (r.seq, r.ticket)).collect();
    assert_eq!(tickets, [(1, Some(111))]);
}

#[tokio::test]
async fn a_replaced_session_on_a_gateway_that_missed_the_notice_cannot_store_a_report() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    let signal = deployment
        .sidecar
        .publish(&gold(), market_buy("buy"))
        .await
        .unwrap();
    deployment
        .sidecar
        .subscribe(device.id.as_str(), &gold())
        .await
        .unwrap();
    let (mut on_a, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    // A newer session begins without any gateway being told (as when the
    // notice is lost): the store's fence alone must stop session A.
    let (newer, _) = deployment
        .gateway_b
        .reports()
        .begin_session(device.id.as_str())
        .await
        .unwrap();
    assert!(newer.0 >= 2);
    on_a.send(&DeviceMessage::Report(Report {
        seq: 1,
        signal_id: signal.signal_id,
        at_ms: 1,
        outcome: ReportOutcome::Received,
    }))
    .await;
    assert_eq!(
        on_a.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Replaced
        })),
        "not confirmed: told it was replaced"
    );
    assert!(
        deployment
            .sidecar
            .reports()
            .for_signal(signal.signal_id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_session_whose_takeover_notice_was_lost_is_ended_by_the_epoch_check() {
    let deployment = deployment().await;
    let device = register(&deployment.sidecar).await;
    let (mut on_a, _) =
        Session::open(&deployment.gateway_a, deployment.dirs[1].path(), &device).await;
    // The session is past its start (a ping answered)…
    on_a.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    assert_eq!(
        on_a.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 1 }))
    );
    // …when a newer session begins and no gateway is told.
    let begun = Instant::now();
    deployment
        .gateway_b
        .reports()
        .begin_session(device.id.as_str())
        .await
        .unwrap();
    let ended = tokio::time::timeout(
        eagate_gateway::core::sessions::EPOCH_CHECK + Duration::from_secs(2),
        on_a.receive(),
    )
    .await
    .expect("ended within one epoch check");
    assert!(
        begun.elapsed() > Duration::from_millis(50),
        "by the check, not at once"
    );
    assert_eq!(
        ended,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Replaced
        }))
    );
}

#[tokio::test]
async fn presence_renewal_keeps_live_devices_and_never_brings_back_one_that_left() {
    use eagate_gateway::presence::PresenceStore;
    let backend = Backend::redis();
    let Backend::Redis { prefix } = &backend else {
        unreachable!()
    };
    let stores =
        eagate_gateway::store::redis::RedisStores::connect(&eagate_tests::redis_url(), prefix)
            .await
            .unwrap();
    stores.mark("dv_here", "gw1", true, 1_000).await.unwrap();
    stores.mark("dv_left", "gw1", true, 1_000).await.unwrap();
    // dv_left's session ends between the renewal's list and its write.
    stores.mark("dv_left", "gw1", false, 2_000).await.unwrap();
    stores
        .renew(&["dv_here".to_owned(), "dv_left".to_owned()], "gw1", 50_000)
        .await
        .unwrap();
    let now = 50_000 + eagate_gateway::presence::PRESENCE_TTL_MS - 1;
    assert_eq!(stores.presence("dv_here", now).await.unwrap().0, 1);
    assert_eq!(stores.presence("dv_left", now).await.unwrap().0, 0);
    assert_eq!(stores.elsewhere("dv_here", "gw2", now).await.unwrap(), 1);
    assert_eq!(stores.elsewhere("dv_here", "gw1", now).await.unwrap(), 0);
}
