//! Device authentication against a real gateway over QUIC on loopback.

mod common;

use std::time::Duration;

use common::*;
use eagate_gateway::server::Gateway;
use eagate_gateway::transport::quic::close_code;
use eagate_protocol::*;

on_both_backends!(device_with_the_right_secret_is_accepted_with_the_gateway_time);
async fn device_with_the_right_secret_is_accepted_with_the_gateway_time(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    let before = now_ms();
    match session.authenticate(&device, fresh_nonce()).await {
        Some(GatewayMessage::AuthAccepted(accepted)) => {
            assert!(accepted.gateway_time_ms >= before - 1000);
            assert!(accepted.gateway_time_ms <= now_ms() + 1000);
            assert_eq!(accepted.session.max_frame_len as usize, MAX_FRAME_LEN);
        }
        other => panic!("expected AuthAccepted, got {other:?}"),
    }
    // The session is live: a ping is answered.
    session.send(&DeviceMessage::Ping(Ping { token: 77 })).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 77 }))
    );
}

on_both_backends!(wrong_secret_is_refused_generically_and_the_connection_closed);
async fn wrong_secret_is_refused_generically_and_the_connection_closed(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let mut device = register(&gateway).await;
    device.secret = DeviceSecret::from_bytes([9; 32]);
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    assert_eq!(session.close_code().await, close_code::AUTH_FAILED as u64);
}

on_both_backends!(unknown_device_is_refused_with_the_same_generic_answer);
async fn unknown_device_is_refused_with_the_same_generic_answer(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let stranger = Device {
        id: DeviceId::new("dv_NOBODY").unwrap(),
        secret: DeviceSecret::from_bytes([1; 32]),
    };
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&stranger, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    assert_eq!(session.close_code().await, close_code::AUTH_FAILED as u64);
}

on_both_backends!(revoked_device_with_the_right_secret_is_told_it_is_revoked);
async fn revoked_device_with_the_right_secret_is_told_it_is_revoked(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    gateway.registry().revoke(device.id.as_str()).await.unwrap();
    let mut session = connect(&gateway, dir.path()).await;
    assert_eq!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Revoked))
    );
}

on_both_backends!(timestamp_outside_the_window_gets_clock_skew_with_the_gateway_time);
async fn timestamp_outside_the_window_gets_clock_skew_with_the_gateway_time(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    let skewed = now_ms() - 31_000;
    let message = session.authenticate_message(&device, skewed, fresh_nonce());
    session.send(&message).await;
    match session.receive().await {
        Some(GatewayMessage::AuthRefused(Refusal::ClockSkew(skew))) => {
            assert!(skew.gateway_time_ms.abs_diff(now_ms()) < 5_000);
        }
        other => panic!("expected ClockSkew, got {other:?}"),
    }
}

on_both_backends!(replayed_nonce_is_refused_also_after_a_gateway_restart);
async fn replayed_nonce_is_refused_also_after_a_gateway_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    let device = register(&gateway).await;
    let nonce = fresh_nonce();
    let mut first = connect(&gateway, dir.path()).await;
    assert!(matches!(
        first.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    // Same nonce, correctly signed for a new connection: a replay.
    let mut second = connect(&gateway, dir.path()).await;
    assert_eq!(
        second.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    drop((first, second));
    gateway.shutdown().await;

    let restarted = Gateway::start(&config_on(&backend, dir.path()))
        .await
        .unwrap();
    let mut third = connect(&restarted, dir.path()).await;
    assert_eq!(
        third.authenticate(&device, nonce).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    let mut fourth = connect(&restarted, dir.path()).await;
    assert!(matches!(
        fourth.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
}

on_both_backends!(authentication_captured_on_one_connection_is_refused_on_another);
async fn authentication_captured_on_one_connection_is_refused_on_another(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let victim = connect(&gateway, dir.path()).await;
    let captured = victim.authenticate_message(&device, now_ms(), fresh_nonce());
    let mut attacker = connect(&gateway, dir.path()).await;
    attacker.send(&captured).await;
    assert_eq!(
        attacker.receive().await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
}

on_both_backends!(garbage_closes_the_connection_and_the_gateway_keeps_serving);
async fn garbage_closes_the_connection_and_the_gateway_keeps_serving(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut garbage = connect(&gateway, dir.path()).await;
    garbage
        .send_raw(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await;
    garbage
        .expect_goodbye(
            GoingAwayReason::ProtocolViolation,
            close_code::PROTOCOL_VIOLATION,
        )
        .await;
    let mut honest = connect(&gateway, dir.path()).await;
    assert!(matches!(
        honest.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
}

on_both_backends!(oversized_frame_is_refused_before_its_body_is_read);
async fn oversized_frame_is_refused_before_its_body_is_read(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let mut session = connect(&gateway, dir.path()).await;
    session.send_raw(&u32::MAX.to_be_bytes()).await;
    session
        .expect_goodbye(
            GoingAwayReason::ProtocolViolation,
            close_code::PROTOCOL_VIOLATION,
        )
        .await;
}

on_both_backends!(anything_but_authenticate_first_is_a_protocol_violation);
async fn anything_but_authenticate_first_is_a_protocol_violation(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let mut session = connect(&gateway, dir.path()).await;
    session.send(&DeviceMessage::Ping(Ping { token: 1 })).await;
    session
        .expect_goodbye(
            GoingAwayReason::ProtocolViolation,
            close_code::PROTOCOL_VIOLATION,
        )
        .await;
}

on_both_backends!(connection_that_does_not_authenticate_is_closed_at_the_deadline);
async fn connection_that_does_not_authenticate_is_closed_at_the_deadline(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let session = connect(&gateway, dir.path()).await;
    // Opened the stream but sends nothing; the deadline in the test config
    // is one second.
    let started = std::time::Instant::now();
    assert_eq!(session.close_code().await, close_code::AUTH_TIMEOUT as u64);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

on_both_backends!(unsupported_protocol_version_is_told_the_supported_range);
async fn unsupported_protocol_version_is_told_the_supported_range(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    let DeviceMessage::Authenticate(mut auth) =
        session.authenticate_message(&device, now_ms(), fresh_nonce())
    else {
        unreachable!()
    };
    auth.protocol_version = PROTOCOL_VERSION + 1;
    session.send(&DeviceMessage::Authenticate(auth)).await;
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::AuthRefused(Refusal::UnsupportedVersion(
            SupportedVersions { min: 1, max: 3 }
        )))
    );
    assert_eq!(
        session.close_code().await,
        close_code::UNSUPPORTED_VERSION as u64
    );
}

on_both_backends!(revoking_a_connected_device_cuts_it_off_within_one_second);
async fn revoking_a_connected_device_cuts_it_off_within_one_second(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let bystander = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    let mut other = connect(&gateway, dir.path()).await;
    assert!(matches!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    assert!(matches!(
        other.authenticate(&bystander, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let revoked_at = std::time::Instant::now();
    gateway.revoke(device.id.as_str()).await.unwrap();
    assert_eq!(
        session.receive().await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Revoked
        }))
    );
    session.close_code().await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "cut off after {:?}",
        revoked_at.elapsed()
    );
    // Another device's session is untouched.
    other.send(&DeviceMessage::Ping(Ping { token: 5 })).await;
    assert_eq!(
        other.receive().await,
        Some(GatewayMessage::Pong(Pong { token: 5 }))
    );
}

on_both_backends!(shutdown_tells_connected_devices_the_gateway_is_going_away);
async fn shutdown_tells_connected_devices_the_gateway_is_going_away(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    assert!(matches!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let stopping = tokio::spawn(gateway.shutdown());
    session
        .expect_goodbye(GoingAwayReason::Shutdown, close_code::SHUTDOWN)
        .await;
    stopping.await.unwrap();
}

on_both_backends!(rotating_a_secret_ends_live_sessions_and_only_the_new_secret_authenticates);
async fn rotating_a_secret_ends_live_sessions_and_only_the_new_secret_authenticates(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    assert!(matches!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let (_, new_secret) = gateway
        .core()
        .rotate_secret(device.id.as_str())
        .await
        .unwrap();
    session
        .expect_goodbye(GoingAwayReason::SecretRotated, close_code::SECRET_ROTATED)
        .await;
    let mut with_old = connect(&gateway, dir.path()).await;
    assert_eq!(
        with_old.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    let rotated = Device {
        id: device.id.clone(),
        secret: new_secret,
    };
    let mut with_new = connect(&gateway, dir.path()).await;
    assert!(matches!(
        with_new.authenticate(&rotated, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
}

on_both_backends!(
    a_frame_cut_off_by_the_end_of_the_stream_is_a_protocol_violation_said_on_the_stream
);
async fn a_frame_cut_off_by_the_end_of_the_stream_is_a_protocol_violation_said_on_the_stream(
    backend: Backend,
) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut session = connect(&gateway, dir.path()).await;
    let message = session.authenticate_message(&device, now_ms(), fresh_nonce());
    let mut frame = [0u8; MAX_WIRE_LEN];
    let len = encode_frame(&message, &mut frame).unwrap();
    // Half a frame, then the end of the device's stream.
    session.send_raw(&frame[..len / 2]).await;
    session.finish();
    session
        .expect_goodbye(
            GoingAwayReason::ProtocolViolation,
            close_code::PROTOCOL_VIOLATION,
        )
        .await;
}

on_both_backends!(a_varint_in_more_bytes_than_its_shortest_form_is_a_protocol_violation);
async fn a_varint_in_more_bytes_than_its_shortest_form_is_a_protocol_violation(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    // Ping { token: 1 } with the token padded to two bytes.
    session.send_raw(&[0, 0, 0, 3, 0x03, 0x81, 0x00]).await;
    session
        .expect_goodbye(
            GoingAwayReason::ProtocolViolation,
            close_code::PROTOCOL_VIOLATION,
        )
        .await;
}

on_both_backends!(the_authentication_deadline_is_said_on_the_stream_before_the_close);
async fn the_authentication_deadline_is_said_on_the_stream_before_the_close(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let mut session = connect(&gateway, dir.path()).await;
    // The stream opens only with the first bytes sent on it: one byte of a
    // frame, and then nothing.
    session.send_raw(&[0]).await;
    session
        .expect_goodbye(GoingAwayReason::AuthTimeout, close_code::AUTH_TIMEOUT)
        .await;
}

on_both_backends!(each_refusal_closes_with_its_own_code);
async fn each_refusal_closes_with_its_own_code(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let mut skewed = connect(&gateway, dir.path()).await;
    let message = skewed.authenticate_message(&device, now_ms() - 60_000, fresh_nonce());
    skewed.send(&message).await;
    assert!(matches!(
        skewed.receive().await,
        Some(GatewayMessage::AuthRefused(Refusal::ClockSkew(_)))
    ));
    assert_eq!(skewed.close_code().await, close_code::CLOCK_SKEW as u64);

    gateway.registry().revoke(device.id.as_str()).await.unwrap();
    let mut revoked = connect(&gateway, dir.path()).await;
    assert_eq!(
        revoked.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Revoked))
    );
    assert_eq!(revoked.close_code().await, close_code::REVOKED as u64);
    let metrics = gateway.core().metrics.render();
    for reason in ["clock_skew", "revoked"] {
        assert!(
            metrics.contains(&format!(
                "eagate_device_connections_closed_total{{reason=\"{reason}\"}} 1\n"
            )),
            "{reason}"
        );
    }
}

on_both_backends!(a_version_1_device_is_told_a_rotated_secret_as_replaced);
async fn a_version_1_device_is_told_a_rotated_secret_as_replaced(backend: Backend) {
    let (gateway, dir) = start_on(&backend).await;
    let device = register(&gateway).await;
    let (mut session, _) = Session::open_as(&gateway, dir.path(), &device, 1, &[]).await;
    gateway
        .core()
        .rotate_secret(device.id.as_str())
        .await
        .unwrap();
    session
        .expect_goodbye(GoingAwayReason::Replaced, close_code::SECRET_ROTATED)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_during_authentication_is_no_refusal_and_says_so() {
    let mut redis = eagate_tests::PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.redis_url = Some(redis.url.clone());
    let gateway = Gateway::start(&config).await.unwrap();
    let device = register(&gateway).await;
    redis.stop();
    let mut session = connect(&gateway, dir.path()).await;
    // Not `AuthRefused(Failed)`, which stops a client for good: the device
    // is told to come back later.
    assert_eq!(
        session.authenticate(&device, fresh_nonce()).await,
        Some(GatewayMessage::GoingAway(GoingAway {
            reason: GoingAwayReason::Shutdown
        }))
    );
    assert_eq!(
        session.close_code().await,
        close_code::STORE_UNAVAILABLE as u64
    );
    let metrics = gateway.core().metrics.render();
    assert!(metrics.contains("eagate_auth_failures_total{reason=\"unknown_device\"} 0\n"));
}
