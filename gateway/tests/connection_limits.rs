//! The QUIC listener's gate, over real sockets on loopback: a source
//! opening connections too fast, and a crowd of connections that never
//! authenticate, are refused before their handshake (QUIC's
//! CONNECTION_REFUSED), while other sources and devices carry on.

mod common;

use std::time::Duration;

use common::*;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;
use quinn::{ConnectionError, TransportErrorCode};

fn refused(outcome: &Result<quinn::Connection, ConnectionError>) -> bool {
    matches!(
        outcome,
        Err(ConnectionError::ConnectionClosed(close))
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED
    )
}

fn turned_away(gateway: &Gateway, reason: &str) -> String {
    let metrics = gateway.core().metrics.render();
    let line = format!("eagate_connections_turned_away_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {metrics}"))
        .to_owned()
}

async fn authenticates_from(gateway: &Gateway, dir: &std::path::Path, local: &str) {
    let device = register(gateway).await;
    let addr = gateway.quic_addr().unwrap();
    let connection = try_connect_from(addr, dir, local, None)
        .await
        .unwrap_or_else(|e| panic!("a connection from {local}: {e}"));
    let mut session = session_over(connection).await;
    match session.authenticate(&device, fresh_nonce()).await {
        Some(GatewayMessage::AuthAccepted(_)) => {}
        other => panic!("expected AuthAccepted from {local}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_source_opening_connections_too_fast_is_refused_before_the_handshake_and_others_are_not()
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.connections_per_minute_per_source = 5;
    let gateway = Gateway::start(&config).await.unwrap();
    let addr = gateway.quic_addr().unwrap();
    let mut held = Vec::new();
    for n in 0..5 {
        let outcome = try_connect_from(addr, dir.path(), "127.0.0.1", None).await;
        held.push(outcome.unwrap_or_else(|e| panic!("connection {n}: {e}")));
    }
    let sixth = try_connect_from(addr, dir.path(), "127.0.0.1", None).await;
    match &sixth {
        // A source is charged once the gateway's side of a handshake
        // completes: when the gateway had not yet charged the fifth (a
        // loaded machine), the sixth passes the gate and is closed right
        // after its handshake instead, never served.
        Ok(connection) => {
            let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
                .await
                .expect("the gateway closes the sixth");
            assert!(
                matches!(closed, ConnectionError::ApplicationClosed(_)),
                "the sixth in a minute: {closed:?}"
            );
        }
        refused_before => assert!(refused(refused_before), "the sixth in a minute: {sixth:?}"),
    }
    assert_eq!(turned_away(&gateway, "too_fast"), "1");
    // Another source has its own budget: its device authenticates.
    authenticates_from(&gateway, dir.path(), "127.0.0.2").await;
    assert_eq!(turned_away(&gateway, "too_fast"), "1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn connections_waiting_to_authenticate_are_capped_and_the_deadline_frees_their_places() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_unauthenticated_connections = 3;
    let gateway = Gateway::start(&config).await.unwrap();
    let addr = gateway.quic_addr().unwrap();
    // Three sources each open a connection and say nothing.
    let mut silent = Vec::new();
    for n in 3..6 {
        let local = format!("127.0.0.{n}");
        silent.push(
            try_connect_from(addr, dir.path(), &local, None)
                .await
                .unwrap(),
        );
    }
    let fourth = try_connect_from(addr, dir.path(), "127.0.0.6", None).await;
    assert!(refused(&fourth), "a fourth waiting: {fourth:?}");
    assert_eq!(turned_away(&gateway, "too_many_waiting"), "1");
    // The authentication deadline (1 s here) closes the silent ones and
    // frees their places.
    for connection in &silent {
        let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("closed at the deadline");
        assert!(
            matches!(closed, ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
    }
    authenticates_from(&gateway, dir.path(), "127.0.0.6").await;
    // An authenticated device does not hold a waiting place: three more
    // may wait beside it.
    for n in 7..10 {
        let local = format!("127.0.0.{n}");
        silent.push(
            try_connect_from(addr, dir.path(), &local, None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(turned_away(&gateway, "too_many_waiting"), "1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_not_speaking_the_eagate_protocol_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    let addr = gateway.quic_addr().unwrap();
    for offered in [&[b"h3".as_slice()][..], &[]] {
        let outcome = try_connect_speaking(addr, dir.path(), "127.0.0.1", None, offered).await;
        // TLS's no_application_protocol alert (120), as a QUIC crypto error.
        assert!(
            matches!(
                &outcome,
                Err(ConnectionError::ConnectionClosed(close))
                    if close.error_code == TransportErrorCode::crypto(120)
            ),
            "offering {offered:?}: {outcome:?}"
        );
    }
    // The eagate protocol is served (TLS 1.3: QUIC knows no other).
    authenticates_from(&gateway, dir.path(), "127.0.0.1").await;
    gateway.shutdown().await;
}
