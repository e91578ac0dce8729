//! Secrets stay secret: a whole flow (devices registered and authenticated
//! over QUIC, a signal published and executed, API tokens used, an
//! affiliate's own token) logged at trace level leaves no device secret,
//! token or master key in any log line; and what is kept at rest (every
//! file of the data directory, every Redis key) holds none in plaintext,
//! with the key and token files the owner's alone.
//!
//! One test per process (it installs the global log subscriber): this
//! file holds one test.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, header};
use common::*;
use eagate_gateway::http::tokens::{Scope, create_token};
use eagate_protocol::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn call(app: &axum::Router, method: &str, uri: &str, token: &str, body: Value) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let answer = app.clone().oneshot(request).await.unwrap();
    assert!(
        answer.status().is_success(),
        "{method} {uri}: {}",
        answer.status()
    );
    let bytes = answer.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Every file under `dir`, as bytes.
fn files(dir: &std::path::Path, found: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, found);
        } else {
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_or_kept_in_plaintext_on_either_backend() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    for backend in [Backend::Sled, Backend::redis()] {
        let (gateway, dir) = start_on(&backend).await;
        let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
        let platform = create_token(dir.path(), Scope::Platform)
            .unwrap()
            .to_string();
        let app = sidecar(&gateway, dir.path());
        // A device registered through the API (its secret shown once), and
        // one through the registry, both authenticated over QUIC.
        let created = call(
            &app,
            "POST",
            "/v1/devices",
            &admin,
            json!({"account_id": "acct-1", "name": "London VPS"}),
        )
        .await;
        let api_secret = created["secret"].as_str().unwrap().to_owned();
        let api_device = Device {
            id: DeviceId::new(created["device"]["device_id"].as_str().unwrap()).unwrap(),
            secret: DeviceSecret::parse(&api_secret).unwrap(),
        };
        let device = register(&gateway).await;
        for device in [&api_device, &device] {
            let id = device.id.as_str().to_owned();
            call(
                &app,
                "PUT",
                &format!("/v1/devices/{id}/subscriptions/gold"),
                &admin,
                Value::Null,
            )
            .await;
        }
        let (mut session, _) = Session::open(&gateway, dir.path(), &device).await;
        call(
            &app,
            "POST",
            "/v1/channels/gold/signals",
            &platform,
            json!({"symbol": "EURUSD", "action": "OpenBuy", "order_type": "Market", "volume": "0.10"}),
        )
        .await;
        let signals = session.signals(1).await;
        assert_eq!(signals.len(), 1);
        // A wrong secret, refused, is not logged either.
        let wrong = Device {
            id: device.id.clone(),
            secret: DeviceSecret::parse(&api_secret).unwrap(),
        };
        let mut refused = connect(&gateway, dir.path()).await;
        assert!(matches!(
            refused.authenticate(&wrong, fresh_nonce()).await,
            Some(GatewayMessage::AuthRefused(_)) | None
        ));
        // An affiliate and its own token.
        let enrolled = call(
            &app,
            "POST",
            "/v1/affiliates",
            &platform,
            json!({"user_id": "alice"}),
        )
        .await;
        let affiliate_token = enrolled["token"].as_str().unwrap().to_owned();
        let affiliate_id = enrolled["affiliate"]["affiliate_id"].as_str().unwrap();
        call(
            &app,
            "GET",
            &format!("/v1/affiliates/{affiliate_id}/stats"),
            &affiliate_token,
            Value::Null,
        )
        .await;
        let master_key_hex = std::fs::read_to_string(dir.path().join("master.key"))
            .map(|k| k.trim().to_owned())
            .ok();
        drop(session);
        gateway.shutdown().await;

        let secrets: Vec<(&str, Vec<u8>)> = vec![
            ("the API device's secret", api_secret.clone().into_bytes()),
            (
                "the API device's secret bytes",
                api_device.secret.expose_bytes().to_vec(),
            ),
            (
                "a device secret",
                device.secret.to_text().as_str().as_bytes().to_vec(),
            ),
            (
                "a device secret's bytes",
                device.secret.expose_bytes().to_vec(),
            ),
            ("the admin token", admin.clone().into_bytes()),
            ("the platform token", platform.clone().into_bytes()),
            (
                "the affiliate's token",
                affiliate_token.clone().into_bytes(),
            ),
        ];
        let logs = captured.0.lock().unwrap().clone();
        assert!(logs.len() > 10_000, "the flow logged at trace level");
        for (what, secret) in &secrets {
            assert!(!contains(&logs, secret), "{what} is in the log");
        }
        if let Some(key) = &master_key_hex {
            assert!(
                !contains(&logs, key.as_bytes()),
                "the master key is in the log"
            );
        }

        let mut kept = Vec::new();
        files(dir.path(), &mut kept);
        assert!(kept.len() > 5, "{kept:?}");
        for (path, bytes) in &kept {
            for (what, secret) in &secrets {
                assert!(!contains(bytes, secret), "{what} is in {}", path.display());
            }
            if let Some(key) = &master_key_hex
                && !path.ends_with("master.key")
            {
                assert!(
                    !contains(bytes, key.as_bytes()),
                    "the master key is in {}",
                    path.display()
                );
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in ["master.key", "api-tokens"] {
                let path = dir.path().join(name);
                if path.exists() {
                    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "{name}");
                }
            }
        }
        if let Backend::Redis { prefix } = &backend {
            let client = redis::Client::open(eagate_tests::redis_url()).unwrap();
            let mut redis = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut redis)
                .await
                .unwrap();
            assert!(keys.len() > 3, "{keys:?}");
            for key in keys {
                // DUMP holds every type's whole value.
                let dumped: Vec<u8> = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                for (what, secret) in &secrets {
                    assert!(!contains(&dumped, secret), "{what} is in Redis key {key}");
                }
            }
        }
    }
}
