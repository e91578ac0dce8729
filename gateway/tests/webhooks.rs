//! Webhooks end to end: a real sidecar POSTs the programme's events to a
//! receiver on a loopback socket that checks every signature, answers
//! errors and stalls on purpose, and records what it got. Proves signing,
//! retries with backoff, order per endpoint, one `delivered` line per event
//! in the log, survival across a restart, giving up after the retry
//! window, replays, and the refusals (private targets, unknown kinds).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::desk::*;
use common::*;
use eagate_gateway::config::ServeConfig;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// What the receiver does with the next request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Holds the request past the sidecar's timeout, then answers 200.
    Stall(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    event_id: String,
    kind: String,
    seq: u64,
    /// The event's data.
    data: Value,
    signed: bool,
    answered: Option<u16>,
}

#[derive(Default)]
struct Receiver {
    secret: Vec<u8>,
    script: VecDeque<Answer>,
    /// What to answer once the script is done.
    otherwise: u16,
    /// An event always refused (500).
    refused: Option<String>,
    got: Vec<Got>,
}

type Shared = Arc<Mutex<Receiver>>;

/// The platform's check, as docs/affiliates.md shows it: the signature is
/// HMAC-SHA256 over "<t>.<body>" with the endpoint's secret, compared in
/// constant time, and t is recent.
fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (answer, secret) = {
        let mut receiver = shared.lock().unwrap();
        let answer = receiver
            .script
            .pop_front()
            .unwrap_or(Answer::Status(receiver.otherwise));
        (answer, receiver.secret.clone())
    };
    let header = headers
        .get("eagate-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let refused = shared.lock().unwrap().refused.clone();
    let event_id = event["id"].as_str().unwrap_or_default().to_owned();
    let answer = if refused.as_ref() == Some(&event_id) {
        Answer::Status(500)
    } else {
        answer
    };
    // Recorded on arrival: a stalled request's handler is dropped when the
    // sidecar gives up on it and closes the connection.
    shared.lock().unwrap().got.push(Got {
        signed: verify(&secret, header, &body)
            && headers.get("eagate-event-id").and_then(|v| v.to_str().ok()) == Some(&event_id),
        event_id,
        kind: event["type"].as_str().unwrap_or_default().to_owned(),
        seq: event["seq"].as_u64().unwrap_or_default(),
        data: event["data"].clone(),
        // A stalled answer arrives after the sidecar gave up on it: it is
        // not a delivery the sidecar saw.
        answered: match answer {
            Answer::Status(status) => Some(status),
            Answer::Stall(_) => None,
        },
    });
    let status = match answer {
        Answer::Status(status) => status,
        Answer::Stall(time) => {
            tokio::time::sleep(time).await;
            200
        }
    };
    StatusCode::from_u16(status).unwrap()
}

/// A receiver on a loopback port; its URL.
async fn receiver(otherwise: u16, script: &[Answer]) -> (Shared, String) {
    let shared: Shared = Arc::new(Mutex::new(Receiver {
        otherwise,
        script: script.iter().copied().collect(),
        ..Receiver::default()
    }));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (shared, url)
}

/// A sidecar that may call loopback, with quick retries.
async fn sidecar(change: impl FnOnce(&mut ServeConfig)) -> (Desk, ServeConfig) {
    desk_on_with(&Backend::Sled, |config| {
        config.webhook_allow_private = true;
        config.webhook_timeout_secs = 1;
        config.webhook_retry_base_secs = 1;
        change(config);
    })
    .await
}

/// Adds an endpoint for `events`; its id. The receiver learns the secret.
async fn subscribe(desk: &Desk, shared: &Shared, url: &str, events: &[&str]) -> String {
    let added = desk
        .admin_post("/v1/webhooks", json!({"url": url, "events": events}))
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let secret = added.body["secret"].as_str().unwrap();
    let key = hex::decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    assert_eq!(key.len(), 32);
    shared.lock().unwrap().secret = key;
    // Shown once: the list never has it.
    let listed = desk.admin_get("/v1/webhooks").await;
    assert!(!listed.text.contains(secret), "{}", listed.text);
    added.body["endpoint"]["endpoint_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits (up to 30 s) until `done` holds of what the receiver got.
async fn wait_for(shared: &Shared, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = shared.lock().unwrap().got.clone();
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "the receiver got only {got:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn delivered(got: &[Got]) -> Vec<&Got> {
    got.iter()
        .filter(|g| g.answered.is_some_and(|s| (200..300).contains(&s)))
        .collect()
}

/// The log once `done` holds of it (up to 30 s): the receiver sees a
/// request before the sidecar has read its answer and written its line.
async fn log_until(desk: &Desk, endpoint: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = log_of(desk, endpoint).await;
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "the log has only {log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(log: &[Value], field: &str, value: Value) -> usize {
    log.iter().filter(|line| line[field] == value).count()
}

async fn log_of(desk: &Desk, endpoint: &str) -> Vec<Value> {
    let log = desk
        .admin_get(&format!("/v1/webhooks/{endpoint}/deliveries"))
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    log.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn events_arrive_signed_in_order_once_delivered_despite_errors_and_timeouts() {
    let (desk, _) = sidecar(|_| {}).await;
    // The first event is answered 500, then stalls past the timeout, then
    // is taken; everything after is taken at once.
    let (shared, url) = receiver(
        200,
        &[Answer::Status(500), Answer::Stall(Duration::from_secs(3))],
    )
    .await;
    let endpoint = subscribe(
        &desk,
        &shared,
        &url,
        &[
            "affiliate.enrolled",
            "referral.created",
            "commission.created",
        ],
    )
    .await;
    let (_, code, _) = desk.enrol("alice").await;
    desk.signup("cust-1", &code, None).await;
    desk.pay("pay-1", "cust-1", 2_999, 1).await;
    let got = wait_for(&shared, |got| delivered(got).len() >= 3).await;
    assert!(
        got.iter().all(|g| g.signed),
        "every request signed: {got:#?}"
    );
    let kinds: Vec<&str> = delivered(&got).iter().map(|g| g.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "affiliate.enrolled",
            "referral.created",
            "commission.created"
        ]
    );
    // In journal order, and nothing of a later event before an earlier
    // one was taken.
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    let first = &delivered(&got)[0].event_id;
    assert_eq!(got.iter().filter(|g| &g.event_id == first).count(), 3);
    // The log: two failed attempts of the first event, then one delivered
    // line per event.
    let log = log_until(&desk, &endpoint, |log| {
        count(log, "state", json!("delivered")) == 3
    })
    .await;
    let states: Vec<(&str, &str)> = log
        .iter()
        .map(|l| {
            (
                l["event_id"].as_str().unwrap(),
                l["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states[0], (first.as_str(), "retrying"));
    assert_eq!(log[0]["status"], 500, "{log:#?}");
    assert_eq!(states[1], (first.as_str(), "retrying"));
    assert!(log[1]["status"].is_null(), "a timeout: {}", log[1]);
    for event in delivered(&got) {
        let lines = states
            .iter()
            .filter(|(id, state)| *id == event.event_id && *state == "delivered")
            .count();
        assert_eq!(lines, 1, "{states:?}");
    }
}

#[tokio::test]
async fn an_event_being_retried_survives_a_restart_and_is_delivered_once_after_it() {
    let (desk, config) = sidecar(|_| {}).await;
    let (shared, url) = receiver(503, &[]).await;
    let endpoint = subscribe(&desk, &shared, &url, &["affiliate.enrolled"]).await;
    desk.enrol("alice").await;
    wait_for(&shared, |got| !got.is_empty()).await;
    // Once the failed attempt is in the log, the sidecar stops.
    log_until(&desk, &endpoint, |log| {
        count(log, "state", json!("retrying")) > 0
    })
    .await;
    let desk = desk.sidecar_down_while(&config, async |_| {}).await;
    shared.lock().unwrap().otherwise = 200;
    let got = wait_for(&shared, |got| !delivered(got).is_empty()).await;
    assert!(got.len() >= 2);
    assert!(
        got.iter()
            .all(|g| g.event_id == got[0].event_id && g.signed)
    );
    let log = log_until(&desk, &endpoint, |log| {
        count(log, "state", json!("delivered")) == 1
    })
    .await;
    let delivered_lines = log.iter().filter(|l| l["state"] == "delivered").count();
    assert_eq!(delivered_lines, 1, "{log:#?}");
    assert!(log.iter().any(|l| l["status"] == 503));
    // Nothing more arrives for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered(&shared.lock().unwrap().got).len(), 1);
}

#[tokio::test]
async fn an_event_refused_past_its_retry_window_is_given_up_and_the_next_is_sent() {
    let (desk, _) = sidecar(|config| config.webhook_retry_window_secs = 2).await;
    let (shared, url) = receiver(500, &[]).await;
    let endpoint = subscribe(&desk, &shared, &url, &["affiliate.enrolled"]).await;
    desk.enrol("alice").await;
    let first = wait_for(&shared, |got| !got.is_empty()).await;
    {
        let mut receiver = shared.lock().unwrap();
        receiver.refused = Some(first[0].event_id.clone());
        receiver.otherwise = 200;
    }
    desk.enrol("bob").await;
    let got = wait_for(&shared, |got| !delivered(got).is_empty()).await;
    let log = log_of(&desk, &endpoint).await;
    let alice = &got[0].event_id;
    assert!(
        log.iter()
            .any(|l| l["event_id"] == alice.as_str() && l["state"] == "failed"),
        "{log:#?}"
    );
    assert_ne!(&delivered(&got)[0].event_id, alice, "bob's event");
}

#[tokio::test]
async fn replays_send_one_event_or_everything_since_a_time_again_with_the_same_ids() {
    let (desk, _) = sidecar(|_| {}).await;
    let (shared, url) = receiver(200, &[]).await;
    let endpoint = subscribe(&desk, &shared, &url, &["affiliate.enrolled"]).await;
    desk.enrol("alice").await;
    desk.enrol("bob").await;
    let got = wait_for(&shared, |got| delivered(got).len() == 2).await;
    // Replays are of events the endpoint has had: wait for the log.
    log_until(&desk, &endpoint, |log| {
        count(log, "state", json!("delivered")) == 2
    })
    .await;
    let path = format!("/v1/webhooks/{endpoint}/replay");
    let one = desk
        .admin_post(&path, json!({"event_id": got[1].event_id}))
        .await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.text);
    assert_eq!(one.body["queued"], 1);
    let again = wait_for(&shared, |got| got.len() == 3).await;
    assert_eq!(again[2].event_id, got[1].event_id);
    let all = desk
        .admin_post(&path, json!({"since": "2000-01-01T00:00:00Z"}))
        .await;
    assert_eq!(all.body["queued"], 2, "{}", all.text);
    let again = wait_for(&shared, |got| got.len() == 5).await;
    assert_eq!(
        [&again[3].event_id, &again[4].event_id],
        [&got[0].event_id, &got[1].event_id]
    );
    assert!(again.iter().all(|g| g.signed));
    let log = log_until(&desk, &endpoint, |log| {
        count(log, "replay", json!(true)) == 3
    })
    .await;
    assert_eq!(count(&log, "state", json!("delivered")), 5);
    // The log a line at a time, following next_after.
    let mut paged = Vec::new();
    let mut uri = format!("/v1/webhooks/{endpoint}/deliveries?limit=1");
    loop {
        let page = desk.admin_get(&uri).await;
        paged.extend(page.body["items"].as_array().unwrap().clone());
        match page.body["next_after"].as_u64() {
            Some(after) => {
                uri = format!("/v1/webhooks/{endpoint}/deliveries?limit=1&after={after}")
            }
            None => break,
        }
    }
    assert_eq!(paged, log);
    for (body, status) in [
        (json!({"event_id": "evt_9999"}), StatusCode::NOT_FOUND),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"since": "yesterday"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(desk.admin_post(&path, body).await.status, status);
    }
}

#[tokio::test]
async fn device_registrations_new_secrets_and_revocations_are_events_once_also_from_outside() {
    let (desk, _) = sidecar(|_| {}).await;
    let (shared, url) = receiver(200, &[]).await;
    subscribe(
        &desk,
        &shared,
        &url,
        &["device.registered", "device.replaced", "device.revoked"],
    )
    .await;
    // Through the API: each change is an event at once.
    let created = desk
        .admin_post(
            "/v1/devices",
            json!({"account_id": "acct-1", "name": "London VPS"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let device = created.body["device"]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&shared, |got| delivered(got).len() == 1).await;
    // (Each waits for the one before: changes made between two looks at
    // the registry arrive as what it holds by then.)
    let admin = desk.admin.clone();
    for (action, events) in [("rotate-secret", 2), ("revoke", 3)] {
        let done = desk
            .call(
                "POST",
                &format!("/v1/devices/{device}/{action}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text);
        wait_for(&shared, |got| delivered(got).len() == events).await;
    }
    let got = shared.lock().unwrap().got.clone();
    let kinds: Vec<&str> = got.iter().map(|g| g.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["device.registered", "device.replaced", "device.revoked"]
    );
    assert!(
        got.iter()
            .all(|g| g.signed && g.data["device_id"] == device.as_str())
    );
    assert_eq!(got[0].data["account_id"], "acct-1");
    assert!(
        got.iter().all(|g| g.data.get("secret_digest").is_none()),
        "nothing of the secret: {got:#?}"
    );
    // A device registered outside the sidecar (from the command line) is
    // found by the next comparison of the registry with the journal.
    let key = desk.gateway.master_key();
    let (laptop, _) = desk
        .gateway
        .registry()
        .register(key, "acct-2", "Laptop")
        .await
        .unwrap();
    let programme = desk.gateway.affiliates().unwrap();
    programme
        .observe_devices(&desk.gateway.core())
        .await
        .unwrap();
    let got = wait_for(&shared, |got| delivered(got).len() == 4).await;
    assert_eq!(got[3].kind, "device.registered");
    assert_eq!(got[3].data["device_id"], laptop.device_id.as_str());
    // Comparing again finds nothing new.
    assert_eq!(
        programme
            .observe_devices(&desk.gateway.core())
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(shared.lock().unwrap().got.len(), 4);
}

#[tokio::test]
async fn a_removed_endpoint_gets_nothing_more_and_its_log_stays_readable() {
    let (desk, _) = sidecar(|_| {}).await;
    let (shared, url) = receiver(200, &[]).await;
    let endpoint = subscribe(&desk, &shared, &url, &["affiliate.enrolled"]).await;
    desk.enrol("alice").await;
    wait_for(&shared, |got| delivered(got).len() == 1).await;
    log_until(&desk, &endpoint, |log| log.len() == 1).await;
    let path = format!("/v1/webhooks/{endpoint}");
    let removed = desk.call("DELETE", &path, &desk.admin.clone(), None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let again = desk.call("DELETE", &path, &desk.admin.clone(), None).await;
    assert_problem(&again, StatusCode::NOT_FOUND, "no webhook endpoint");
    assert_eq!(
        desk.admin_get("/v1/webhooks").await.body["items"],
        json!([])
    );
    desk.enrol("bob").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shared.lock().unwrap().got.len(), 1, "nothing after removal");
    assert_eq!(log_of(&desk, &endpoint).await.len(), 1);
    let unknown = desk.admin_get("/v1/webhooks/wh_nobody/deliveries").await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "no webhook endpoint");
}

#[tokio::test]
async fn endpoints_on_private_addresses_or_for_unknown_events_are_refused() {
    let desk = desk().await;
    for (body, detail) in [
        (
            json!({"url": "http://127.0.0.1:6379/", "events": ["payout.paid"]}),
            "not a public address",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "events": ["payout.paid"]}),
            "not a public address",
        ),
        (
            json!({"url": "gopher://example.com/", "events": ["payout.paid"]}),
            "http:// or https://",
        ),
        (
            json!({"url": "https://example.com/", "events": ["payout.sent"]}),
            "unknown event kind",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "at least one",
        ),
    ] {
        let answer = desk.admin_post("/v1/webhooks", body).await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, detail);
    }
    let platform = desk.platform.clone();
    let answer = desk
        .call(
            "POST",
            "/v1/webhooks",
            &platform,
            Some(json!({"url": "https://example.com/", "events": ["payout.paid"]})),
        )
        .await;
    assert_problem(&answer, StatusCode::FORBIDDEN, "scope");
}
