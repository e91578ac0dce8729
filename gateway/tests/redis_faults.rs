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

impl OwnRedis {
    /// Sends it `signal` (`-STOP` freezes it: connections stay open and
    /// nothing is answered, as a Redis stuck on its disk would do).
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
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

/// A gateway (with its device HTTPS listener) on a Redis of the test's own.
struct OnOwnRedis {
    redis: OwnRedis,
    redis_dir: tempfile::TempDir,
    port: u16,
    dir: tempfile::TempDir,
    gateway: Gateway,
}

async fn on_own_redis() -> OnOwnRedis {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = OwnRedis::start(port, redis_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    let gateway = Gateway::start(&settings).await.unwrap();
    OnOwnRedis {
        redis,
        redis_dir,
        port,
        dir,
        gateway,
    }
}

/// A device of `gateway` over HTTPS, subscribed to `gold`.
async fn https_device_on(
    gateway: &Gateway,
    dir: &std::path::Path,
) -> (common::https::HttpsDevice, eagate_protocol::ChannelName) {
    let registered = register(gateway).await;
    let gold = eagate_protocol::ChannelName::new("gold").unwrap();
    gateway
        .subscribe(registered.id.as_str(), &gold)
        .await
        .unwrap();
    let device = common::https::HttpsDevice::new(
        common::https::HttpsClient::new(gateway.device_https_addr().unwrap(), dir),
        registered.id,
        registered.secret,
    );
    (device, gold)
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
    let OnOwnRedis {
        redis,
        redis_dir,
        port,
        dir,
        gateway,
    } = on_own_redis().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_device_is_told_to_retry_while_redis_is_away_and_loses_no_fill() {
    use serde_json::json;

    let OnOwnRedis {
        redis,
        redis_dir,
        port,
        dir,
        gateway,
    } = on_own_redis().await;
    let (device, gold) = https_device_on(&gateway, dir.path()).await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("away")).await.unwrap();
    let id = signal.signal_id.to_string();
    let fill = json!([{"seq": 1, "signal_id": id, "kind": "filled", "at_ms": 5,
                       "ticket": "77", "price": "2350.10", "volume": "0.10"}]);
    let body = serde_json::to_vec(&json!({ "reports": fill })).unwrap();

    redis.stop();
    // Every request is answered within its deadline, told to come back,
    // and stores nothing: the EA keeps its fill queued.
    for (method, target, body) in [
        ("POST", "/v1/device/session".to_owned(), Vec::new()),
        (
            "GET",
            format!("/v1/device/signals?session={session}&after=gold:0&wait=0"),
            Vec::new(),
        ),
        (
            "POST",
            format!("/v1/device/reports?session={session}"),
            body.clone(),
        ),
    ] {
        device
            .told_to_come_back_within(method, &target, &body, Duration::from_secs(7))
            .await;
    }

    // Back with its data: the same session polls the signal, and the
    // queued fill, sent twice, is stored once.
    let _redis = OwnRedis::start(port, redis_dir.path());
    let back = Instant::now();
    let polled = loop {
        let signed = device.sign(
            "GET",
            &format!("/v1/device/signals?session={session}&after=gold:0&wait=0"),
            b"",
        );
        let answer = device.client.send(&signed.request).await;
        if answer.status == 200 {
            break answer.json();
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "polls still fail 10 s after Redis returned: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(polled["signals"][0]["signal_id"], id.as_str());
    for _ in 0..2 {
        let confirmed = device.report(&session, fill.clone()).await;
        assert_eq!(confirmed.text(), r#"{"confirmed_up_to":1}"#);
    }
    assert_eq!(stored_count(&gateway, signal.signal_id).await, 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_device_is_answered_within_the_deadline_while_redis_is_frozen() {
    let OnOwnRedis {
        redis,
        dir,
        gateway,
        ..
    } = on_own_redis().await;
    let (device, gold) = https_device_on(&gateway, dir.path()).await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("frozen")).await.unwrap();
    let poll = format!("/v1/device/signals?session={session}&after=gold:0&wait=0");

    // Frozen, Redis answers nothing: each request still gets its answer
    // within the checks' deadline (1 s in these tests), told to come back.
    redis.signal("-STOP");
    let reports = format!("/v1/device/reports?session={session}");
    for (method, target, body) in [
        ("POST", "/v1/device/session", &b""[..]),
        ("GET", poll.as_str(), b""),
        ("POST", reports.as_str(), br#"{"reports":[]}"#),
    ] {
        device
            .told_to_come_back_within(method, target, body, Duration::from_secs(4))
            .await;
    }

    // Thawed: the same session polls its signal.
    redis.signal("-CONT");
    let back = Instant::now();
    loop {
        let answer = device
            .client
            .send(&device.sign("GET", &poll, b"").request)
            .await;
        if answer.status == 200 {
            assert_eq!(
                answer.json()["signals"][0]["signal_id"],
                signal.signal_id.to_string().as_str()
            );
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "polls still fail 10 s after Redis thawed: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.shutdown().await;
}
