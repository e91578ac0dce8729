//! A gateway on a Redis of the test's own, which the test stops and starts
//! again: readiness says so at once, calls fail within their deadline
//! instead of hanging, and everything works again within seconds of Redis
//! returning.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use eagate_gateway::http::tokens::{Scope, TokenStore, create_token};
use eagate_gateway::http::{AppState, router};
use eagate_gateway::server::Gateway;
use tower::ServiceExt;

/// A redis-server the test owns, persisting to `dir` so a restart keeps
/// the data, as a production Redis would.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh needs it installed)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    /// Stops it as an operator's restart does (SIGTERM, then waits).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn status_of(app: &axum::Router, uri: &str, token: &str) -> (StatusCode, Duration) {
    let request = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let asked = Instant::now();
    let answer = app.clone().oneshot(request).await.unwrap();
    (answer.status(), asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_reported_at_once_and_recovered_from_within_seconds() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = OwnRedis::start(port, redis_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    let gateway = Gateway::start(&settings).await.unwrap();
    let device = register(&gateway).await;
    let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
    let app = router(AppState {
        core: gateway.core(),
        tokens: std::sync::Arc::new(TokenStore::open(dir.path())),
        affiliates: gateway.affiliates().unwrap().clone(),
        console: Default::default(),
    });
    assert_eq!(status_of(&app, "/readyz", &admin).await.0, StatusCode::OK);

    redis.stop();
    let (ready, took) = status_of(&app, "/readyz", &admin).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(2), "readyz took {took:?}");
    // A call that needs the store fails within its deadline, not later.
    let (listed, took) = status_of(&app, "/v1/devices", &admin).await;
    assert!(listed.is_server_error(), "{listed}");
    assert!(took < Duration::from_secs(7), "the call took {took:?}");

    // Away for a few seconds, then back with its data.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = OwnRedis::start(port, redis_dir.path());
    let back = Instant::now();
    loop {
        if status_of(&app, "/readyz", &admin).await.0 == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not ready 10 s after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (listed, took) = status_of(&app, "/v1/devices", &admin).await;
    assert_eq!(listed, StatusCode::OK);
    assert!(took < Duration::from_secs(2), "{took:?}");
    // And a device authenticates as before.
    let (_session, accepted) = Session::open(&gateway, dir.path(), &device).await;
    assert!(accepted.gateway_time_ms > 0);
    assert!(
        back.elapsed() < Duration::from_secs(15),
        "recovered in {:?}",
        back.elapsed()
    );
}
