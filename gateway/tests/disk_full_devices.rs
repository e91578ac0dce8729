//! The embedded store (sled, `db/`) on a disk that fills up: a small tmpfs
//! the test mounts as the data directory (so it needs root, as the test
//! command has). Devices and HTTP callers get clear errors, nothing is
//! confirmed that is not stored, and once there is space again and the
//! gateway restarts, every confirmed report is there exactly once and new
//! ones are taken.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use common::*;
use eagate_gateway::http::tokens::{Scope, TokenStore, create_token};
use eagate_gateway::http::{AppState, router};
use eagate_gateway::server::Gateway;
use eagate_protocol::*;
use eagate_tests::SmallDisk;
use http_body_util::BodyExt;
use tower::ServiceExt;

const SIGNAL: SignalId = SignalId([7; 16]);

/// A rejection with a long text: reports that fill a disk quickly.
fn bulky_report(seq: u64) -> DeviceMessage {
    DeviceMessage::Report(Report {
        seq,
        signal_id: SIGNAL,
        at_ms: 1_700_000_000_000 + seq,
        outcome: ReportOutcome::Rejected(Rejection {
            code: 10_019,
            text: RejectionText::new(&"not enough money ".repeat(7)).unwrap(),
        }),
    })
}

/// Registers a device over HTTP: the status and the problem type, if any.
async fn register_over_http(app: &axum::Router, token: &str, name: &str) -> (u16, String) {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/devices")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            serde_json::json!({"account_id": "acct-1", "name": name}).to_string(),
        ))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, body["type"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_full_disk_confirms_nothing_unstored_and_after_space_returns_and_a_restart_every_confirmed_report_is_there_once()
 {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "24m");
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    let device = register(&gateway).await;
    let token = create_token(dir.path(), Scope::Admin).unwrap().to_string();
    let app = app_of(&gateway, dir.path());

    // Reports in bursts until the store stops confirming them.
    let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let ended_by = 'filling: loop {
        for _ in 0..200 {
            sent += 1;
            session.send(&bulky_report(sent)).await;
        }
        while confirmed < sent {
            match tokio::time::timeout(
                Duration::from_secs(8),
                session.receive_within(Duration::from_secs(60)),
            )
            .await
            {
                Ok(Some(GatewayMessage::ReportsConfirmed(c))) => {
                    assert!(c.up_to_seq >= confirmed, "confirmations never go back");
                    confirmed = c.up_to_seq;
                }
                Ok(Some(GatewayMessage::GoingAway(goodbye))) => {
                    break 'filling format!("{goodbye:?}");
                }
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => break 'filling format!("closed: {}", session.close_code().await),
                Err(_) => break 'filling "confirmations stopped".to_owned(),
            }
        }
        assert!(sent < 2_000_000, "the disk never filled");
    };
    eprintln!("sent {sent}, confirmed {confirmed}, then {ended_by}");
    assert!(confirmed > 1_000, "{confirmed} reports fit");
    assert!(confirmed < sent, "the full disk stopped confirmations");
    // The device is told the gateway lost its store (reconnect later).
    assert!(ended_by.contains("Shutdown"), "{ended_by}");

    // HTTP writes get a clear error (problem+json), not a hang or a lie.
    let (status, problem) = register_over_http(&app, &token, "while full").await;
    assert!(status >= 500, "registering on a full disk: {status}");
    assert!(
        problem.starts_with("/problems/"),
        "a problem type: {problem:?}"
    );
    drop((session, app));

    // Space returns; the gateway restarts on the same data.
    disk.grow("256m");
    gateway.shutdown().await;
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    let stored = gateway.reports().for_signal(SIGNAL).await.unwrap();
    let mut seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), before, "no report stored twice");
    assert!(
        seqs.len() as u64 >= confirmed
            && seqs
                .iter()
                .take(confirmed as usize)
                .copied()
                .eq(1..=confirmed),
        "every confirmed report (1..={confirmed}) is stored; stored {} up to {:?}",
        seqs.len(),
        seqs.last()
    );

    // The device carries on from what was stored, and new reports are taken.
    let (mut session, accepted) = Session::open(&gateway, dir.path(), &device).await;
    let resume_from = accepted.confirmed_report_seq;
    assert!(resume_from >= confirmed, "{resume_from} < {confirmed}");
    assert_eq!(
        resume_from,
        *seqs.last().unwrap(),
        "the watermark is what is stored"
    );
    for seq in resume_from + 1..=sent {
        session.send(&bulky_report(seq)).await;
    }
    let mut last = resume_from;
    while last < sent {
        match session.receive_within(Duration::from_secs(10)).await {
            Some(GatewayMessage::ReportsConfirmed(c)) => last = c.up_to_seq,
            other => panic!("expected confirmations, got {other:?}"),
        }
    }
    let stored = gateway.reports().for_signal(SIGNAL).await.unwrap();
    assert_eq!(stored.len() as u64, sent, "each of the {sent} reports once");
    let (status, _) = register_over_http(&app_of(&gateway, dir.path()), &token, "after").await;
    assert_eq!(status, 201, "registering works again");
    gateway.shutdown().await;
}

/// The HTTP API of `gateway`, driven through its router.
fn app_of(gateway: &Gateway, dir: &Path) -> axum::Router {
    router(AppState {
        core: gateway.core(),
        tokens: std::sync::Arc::new(TokenStore::open(dir)),
        affiliates: gateway
            .affiliates()
            .expect("serve runs the programme")
            .clone(),
        console: Default::default(),
    })
}
