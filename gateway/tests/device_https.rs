//! Devices over HTTPS (`DEVICE-HTTP.md`), against a real gateway on
//! loopback: every request checked as the spec says (the same nonce store,
//! skew window and generic failure as QUIC), every answer to a checked
//! request signed back, signals long-polled with QUIC's order and resume
//! rules, reports stored exactly once, and one live session per device
//! across both transports.

mod common;

use std::time::{Duration, Instant};

use common::https::{HttpsClient, HttpsDevice};
use common::*;
use eagate_gateway::reports::ReportKind;
use eagate_gateway::transport::quic::close_code;
use eagate_protocol::http_signing::body_sha256;
use eagate_protocol::*;
use serde_json::json;

/// The gateway's one answer to a request that failed its checks: the
/// spec's vector answer, byte for byte.
const REFUSED: &str = r#"{"type":"about:blank","title":"authentication failed","status":401}"#;

struct Setup {
    gateway: eagate_gateway::server::Gateway,
    dir: tempfile::TempDir,
    device: HttpsDevice,
    gold: ChannelName,
}

async fn setup_on(backend: &Backend) -> Setup {
    let (gateway, dir) = start_on(backend).await;
    let registered = register(&gateway).await;
    let gold = ChannelName::new("gold").unwrap();
    gateway
        .subscribe(registered.id.as_str(), &gold)
        .await
        .unwrap();
    let client = HttpsClient::new(gateway.device_https_addr().unwrap(), dir.path());
    let device = HttpsDevice::new(client, registered.id, registered.secret);
    Setup {
        gateway,
        dir,
        device,
        gold,
    }
}

async fn setup() -> Setup {
    setup_on(&Backend::Sled).await
}

fn filled(seq: u64, signal_id: &str, price: &str) -> serde_json::Value {
    json!({"seq": seq, "signal_id": signal_id, "kind": "filled", "at_ms": 1_767_225_601_000u64,
           "ticket": "123456789", "price": price, "volume": "0.10"})
}

/// Waits until `n` device sessions are counted as connected (a poll counts
/// while it waits), failing after 10 s.
async fn until_connected(gateway: &eagate_gateway::server::Gateway, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.core().metrics.snapshot().connections != n {
        assert!(
            Instant::now() < deadline,
            "{} sessions connected, not {n}",
            gateway.core().metrics.snapshot().connections
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_device_opens_a_session_polls_signals_and_reports_fills(backend: Backend) {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup_on(&backend).await;
    let session = device.open_session().await;
    // Nothing published yet: the spec's first answer, byte for byte in
    // shape: no signals, and where the device stands.
    let empty = device.poll(&session, "gold:0", 0).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.text(), r#"{"signals":[],"positions":{"gold":0}}"#);

    let first = gateway.publish(&gold, market_buy("first")).await.unwrap();
    let second = gateway.publish(&gold, market_buy("second")).await.unwrap();
    let polled = device.poll(&session, "gold:0", 5).await;
    assert_eq!(polled.status, 200, "{}", polled.text());
    let answer: serde_json::Value = polled.json();
    let signals: Vec<Signal> = serde_json::from_value(answer["signals"].clone()).unwrap();
    assert_eq!(signals, vec![first.clone(), second.clone()]);
    assert_eq!(answer["positions"], json!({"gold": 2}));

    // Resumed after the first: only the second.
    let resumed = device.poll(&session, "gold:1", 0).await.json();
    assert_eq!(resumed["signals"].as_array().unwrap().len(), 1);
    assert_eq!(resumed["signals"][0]["position"], 2);

    let id = first.signal_id.to_string();
    let confirmed = device
        .report(
            &session,
            json!([{"seq": 1, "signal_id": id, "kind": "received", "at_ms": 5}, filled(2, &id, "2351.17")]),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text());
    assert_eq!(confirmed.text(), r#"{"confirmed_up_to":2}"#);
    let stored = gateway.reports().for_signal(first.signal_id).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].ticket, Some(123_456_789));
    assert_eq!(stored[1].price, Some("2351.17".parse().unwrap()));

    // The session's state: confirmed sequence, heads, the gateway's time.
    let state = device
        .call("GET", &format!("/v1/device/session?session={session}"), b"")
        .await
        .json();
    assert_eq!(state["confirmed_up_to"], 2);
    assert_eq!(state["heads"], json!({"gold": 2}));
    assert!(
        state["gateway_time_ms"]
            .as_u64()
            .unwrap()
            .abs_diff(now_ms())
            < 5_000
    );
    gateway.shutdown().await;
}
on_both_backends!(a_device_opens_a_session_polls_signals_and_reports_fills);

on_both_backends!(a_device_resuming_behind_what_the_log_keeps_gets_what_is_kept_in_order);
async fn a_device_resuming_behind_what_the_log_keeps_gets_what_is_kept_in_order(backend: Backend) {
    use eagate_gateway::signals::logged_at_ms;
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup_on(&backend).await;
    let session = device.open_session().await;
    let mut published = Vec::new();
    for comment in ["old", "middle", "new"] {
        published.push(gateway.publish(&gold, market_buy(comment)).await.unwrap());
        // Distinct log times, so retention can fall between signals.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Retention removes the two oldest (as the upkeep would after
    // --signal-retention-hours).
    let cutoff = logged_at_ms(published[2].signal_id);
    assert_eq!(gateway.core().signals.trim(cutoff).await.unwrap(), 2);
    // A device that processed nothing, or only the first, gets what is
    // kept, at its own position: positions are never reused.
    for after in ["gold:0", "gold:1"] {
        let polled = device.poll(&session, after, 0).await.json();
        let signals: Vec<Signal> = serde_json::from_value(polled["signals"].clone()).unwrap();
        assert_eq!(signals, vec![published[2].clone()], "after {after}");
        assert_eq!(polled["positions"], json!({"gold": 3}));
    }
    // One that had it gets nothing again, and the next signal at 4.
    let nothing = device.poll(&session, "gold:3", 0).await;
    assert_eq!(nothing.text(), r#"{"signals":[],"positions":{"gold":3}}"#);
    let next = gateway.publish(&gold, market_buy("next")).await.unwrap();
    let polled = device.poll(&session, "gold:3", 5).await.json();
    assert_eq!(polled["signals"][0]["position"], 4);
    assert_eq!(
        polled["signals"][0]["signal_id"],
        next.signal_id.to_string().as_str()
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_waiting_long_poll_answers_as_soon_as_a_signal_is_published() {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup().await;
    let session = device.open_session().await;
    let polling = tokio::spawn({
        let (device, session) = (device.clone(), session.clone());
        async move {
            let answer = device.poll(&session, "gold:0", 20).await;
            (answer, Instant::now())
        }
    });
    until_connected(&gateway, 1).await;
    assert!(
        !polling.is_finished(),
        "the poll waits while nothing is published"
    );
    let published_at = Instant::now();
    let signal = gateway.publish(&gold, market_buy("now")).await.unwrap();
    let (answer, answered_at) = polling.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["signals"][0]["signal_id"],
        signal.signal_id.to_string()
    );
    // Long before the 20 s wait ran out.
    assert!(answered_at.duration_since(published_at) < Duration::from_secs(5));

    // A poll that waits and sees nothing answers empty when its wait ends.
    let started = Instant::now();
    let idle = device.poll(&session, "gold:1", 1).await;
    assert_eq!(idle.text(), r#"{"signals":[],"positions":{"gold":1}}"#);
    assert!(started.elapsed() >= Duration::from_millis(900));
    gateway.shutdown().await;
}

#[tokio::test]
async fn replayed_skewed_tampered_and_unknown_requests_get_one_unsigned_refusal() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let client = &device.client;
    // A replayed nonce: the first passes, the same request again fails.
    let signed = device.sign("POST", "/v1/device/session", b"");
    assert_eq!(client.send(&signed.request).await.status, 200);
    let replayed = client.send(&signed.request).await;
    assert_eq!(
        (replayed.status, replayed.text()),
        (401, REFUSED.to_owned())
    );
    assert_eq!(replayed.header("Eagate-Signature"), None);

    // A body changed after signing fails like a wrong signature.
    let session = device.open_session().await;
    let mut tampered = device.sign(
        "POST",
        &format!("/v1/device/reports?session={session}"),
        br#"{"reports":[]}"#,
    );
    tampered.request.body = br#"{"reports":[ ]}"#.to_vec();
    // A target changed after signing too.
    let mut retargeted = device.sign("GET", "/v1/device/signals?session=1-0&wait=0", b"");
    retargeted.request.target = "/v1/device/signals?session=1-0&wait=1".into();
    // The wrong secret.
    let mut impostor = device.clone();
    impostor.secret = DeviceSecret::from_bytes([9; 32]);
    // A device that does not exist.
    let mut stranger = device.clone();
    stranger.id = DeviceId::new("dv_0000000000000000000000000A").unwrap();
    // Malformed headers: an upper-case nonce, a timestamp with a leading
    // zero, a header given twice.
    let mut upper = device.sign("POST", "/v1/device/session", b"");
    upper.request.headers[2].1 = upper.request.headers[2].1.to_uppercase();
    let mut padded = device.sign("POST", "/v1/device/session", b"");
    padded.request.headers[1].1 = format!("0{}", padded.request.headers[1].1);
    let mut doubled = device.sign("POST", "/v1/device/session", b"");
    doubled
        .request
        .headers
        .push(doubled.request.headers[3].clone());
    // Signed over the path, sent in absolute form: its path and query would
    // verify, but the spec signs the target as sent.
    let mut absolute = device.sign("POST", "/v1/device/session", b"");
    absolute.request.target = "https://localhost/v1/device/session".into();
    let mut unsigned = device.sign("POST", "/v1/device/session", b"");
    unsigned.request.headers.truncate(3);
    for (what, request) in [
        ("tampered body", tampered.request),
        ("tampered target", retargeted.request),
        (
            "wrong secret",
            impostor.sign("POST", "/v1/device/session", b"").request,
        ),
        (
            "unknown device",
            stranger.sign("POST", "/v1/device/session", b"").request,
        ),
        ("upper-case nonce", upper.request),
        ("leading zero", padded.request),
        ("doubled header", doubled.request),
        ("no signature", unsigned.request),
        ("absolute-form target", absolute.request),
    ] {
        let answer = client.send(&request).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.text());
        assert_eq!(answer.text(), REFUSED, "{what}");
        assert_eq!(answer.header("Eagate-Signature"), None, "{what}");
    }

    // A skewed clock gets its own answer, signed (the MAC verified), with
    // the gateway's time to correct by.
    let mut skewed = device.clone();
    skewed.clock_offset_ms = -120_000;
    let signed = skewed.sign("POST", "/v1/device/session", b"");
    let answer = client.send(&signed.request).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["title"], "clock skew");
    let gateway_time = answer.json()["gateway_time_ms"].as_u64().unwrap();
    assert!(gateway_time.abs_diff(now_ms()) < 5_000);
    assert!(answer.signed_for(&signed.nonce, &device.secret));
    // Corrected by the gateway's time, the same device gets in.
    skewed.clock_offset_ms = 0;
    skewed.open_session().await;
    gateway.shutdown().await;
}

on_both_backends!(a_nonce_used_over_one_transport_is_a_replay_over_the_other);
async fn a_nonce_used_over_one_transport_is_a_replay_over_the_other(backend: Backend) {
    let Setup {
        gateway,
        dir,
        device,
        ..
    } = setup_on(&backend).await;
    let quic_device = Device {
        id: device.id.clone(),
        secret: device.secret.clone(),
    };
    // A nonce a QUIC authentication used, in a correctly signed request.
    let nonce = fresh_nonce();
    let mut quic = connect(&gateway, dir.path()).await;
    assert!(matches!(
        quic.authenticate(&quic_device, nonce).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    let replayed = device.sign_with("POST", "/v1/device/session", b"", now_ms(), nonce);
    let answer = device.client.send(&replayed.request).await;
    assert_eq!((answer.status, answer.text()), (401, REFUSED.to_owned()));
    // A request's nonce, in a QUIC authentication.
    let signed = device.sign("POST", "/v1/device/session", b"");
    assert_eq!(device.client.send(&signed.request).await.status, 200);
    let mut again = connect(&gateway, dir.path()).await;
    assert_eq!(
        again.authenticate(&quic_device, signed.nonce).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    drop((quic, again));
    gateway.shutdown().await;
}

#[tokio::test]
async fn failures_over_either_transport_slow_down_the_other_from_the_same_address() {
    let Setup {
        gateway,
        dir,
        device,
        ..
    } = setup().await;
    let quic_device = Device {
        id: device.id.clone(),
        secret: device.secret.clone(),
    };
    let mut impostor = device.clone();
    impostor.secret = DeviceSecret::from_bytes([9; 32]);
    // Three failures are free; the fourth makes the next attempt from this
    // address wait 250 ms, whichever transport it comes by.
    for _ in 0..4 {
        let refused = impostor
            .client
            .send(&impostor.sign("POST", "/v1/device/session", b"").request)
            .await;
        assert_eq!(refused.status, 401);
    }
    let mut quic = connect(&gateway, dir.path()).await;
    let started = Instant::now();
    assert!(matches!(
        quic.authenticate(&quic_device, fresh_nonce()).await,
        Some(GatewayMessage::AuthAccepted(_))
    ));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the QUIC authentication waited {:?}",
        started.elapsed()
    );
    // A fifth failure, over QUIC: the next attempt waits 500 ms, over HTTPS.
    let mut wrong = connect(&gateway, dir.path()).await;
    let impostor_quic = Device {
        id: device.id.clone(),
        secret: DeviceSecret::from_bytes([9; 32]),
    };
    assert_eq!(
        wrong.authenticate(&impostor_quic, fresh_nonce()).await,
        Some(GatewayMessage::AuthRefused(Refusal::Failed))
    );
    let started = Instant::now();
    let signed = device.sign("POST", "/v1/device/session", b"");
    assert_eq!(device.client.send(&signed.request).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the HTTPS request waited {:?}",
        started.elapsed()
    );
    drop((quic, wrong));
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_answer_whose_body_or_status_was_changed_fails_its_signature_check() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let signed = device.sign("POST", "/v1/device/session", b"");
    let answer = device.client.send(&signed.request).await;
    assert!(answer.signed_for(&signed.nonce, &device.secret));
    let mut changed_body = answer.clone();
    changed_body.body = changed_body
        .text()
        .replace("\"session\":", "\"session\": ")
        .into_bytes();
    let mut changed_status = answer.clone();
    changed_status.status = 201;
    let other_nonce = fresh_nonce();
    for (what, tampered, nonce) in [
        ("body", &changed_body, &signed.nonce),
        ("status", &changed_status, &signed.nonce),
        ("another request's nonce", &answer, &other_nonce),
    ] {
        assert!(!tampered.signed_for(nonce, &device.secret), "{what}");
    }
    assert_ne!(body_sha256(&changed_body.body), body_sha256(&answer.body));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reversal_over_https_is_stored_once_beside_its_fill_and_enters_the_fill_feed() {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup().await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("undone")).await.unwrap();
    let id = signal.signal_id.to_string();
    let reversal = json!({"seq": 2, "signal_id": id, "kind": "reversed", "at_ms": 7,
                          "ticket": "123456789"});
    let answer = device
        .report(
            &session,
            json!([filled(1, &id, "2351.17"), reversal.clone()]),
        )
        .await;
    assert_eq!(answer.text(), r#"{"confirmed_up_to":2}"#);
    let resent = device.report(&session, json!([reversal])).await;
    assert_eq!(resent.text(), r#"{"confirmed_up_to":2}"#);
    let stored = gateway
        .reports()
        .for_signal(signal.signal_id)
        .await
        .unwrap();
    let kinds: Vec<(u64, ReportKind, Option<u64>)> =
        stored.iter().map(|r| (r.seq, r.kind, r.ticket)).collect();
    assert_eq!(
        kinds,
        [
            (1, ReportKind::Filled, Some(123_456_789)),
            (2, ReportKind::Reversed, Some(123_456_789)),
        ]
    );
    let feed = gateway.reports().unclaimed_fills(None, 10).await.unwrap();
    let reversals: Vec<(u64, Option<u64>)> =
        feed.iter().map(|f| (f.seq, f.reverses_ticket)).collect();
    assert_eq!(reversals, [(1, None), (2, Some(123_456_789))]);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_resent_report_is_stored_once_and_a_different_one_under_its_number_is_refused() {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup().await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("fill")).await.unwrap();
    let id = signal.signal_id.to_string();
    for _ in 0..3 {
        let answer = device
            .report(&session, json!([filled(1, &id, "2351.17")]))
            .await;
        assert_eq!(answer.text(), r#"{"confirmed_up_to":1}"#);
    }
    assert_eq!(stored_count(&gateway, signal.signal_id).await, 1);
    let conflict = device
        .report(&session, json!([filled(1, &id, "2351.18")]))
        .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.text(),
        r#"{"type":"about:blank","title":"report 1 differs from the one stored","status":409}"#
    );
    let stored = gateway
        .reports()
        .for_signal(signal.signal_id)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].price, Some("2351.17".parse().unwrap()));

    // Bad content: a clear, signed 422, and nothing stored.
    for bad in [
        json!([{"seq": 2, "signal_id": id, "kind": "filled", "ticket": "1", "price": "1e3", "volume": "0.1"}]),
        json!([{"seq": 2, "signal_id": id, "kind": "filled", "ticket": "-1", "price": "1", "volume": "0.1"}]),
        json!([{"seq": 2, "signal_id": "nope", "kind": "received"}]),
        json!([{"seq": 2, "signal_id": id, "kind": "closed"}]),
        json!([{"seq": 2, "signal_id": id, "kind": "reversed"}]),
        json!([{"seq": 2, "signal_id": id, "kind": "reversed", "ticket": 5}]),
        json!([{"seq": 2, "signal_id": id, "kind": "received", "extra": 1}]),
    ] {
        let answer = device.report(&session, bad.clone()).await;
        assert_eq!(answer.status, 422, "{bad}: {}", answer.text());
    }
    assert_eq!(stored_count(&gateway, signal.signal_id).await, 1);

    // A terminal's long error text (with a line break) is cut and cleaned,
    // as over QUIC, never a reason to refuse the report; resent, it is the
    // same report.
    let long = format!("Not enough money\n{}", "x".repeat(300));
    let rejection = json!([{"seq": 2, "signal_id": id, "kind": "rejected", "at_ms": 9,
                            "error_code": 10019, "error_text": long}]);
    for _ in 0..2 {
        let answer = device.report(&session, rejection.clone()).await;
        assert_eq!(answer.text(), r#"{"confirmed_up_to":2}"#);
    }
    let stored = gateway
        .reports()
        .for_signal(signal.signal_id)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    let text = stored[1].error_text.as_deref().unwrap();
    assert!(text.starts_with("Not enough money x"), "{text}");
    assert_eq!(text.len(), RejectionText::MAX_LEN);
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_newest_session_wins_across_quic_and_https() {
    let Setup {
        gateway,
        dir,
        device,
        gold,
        ..
    } = setup().await;
    let quic_device = Device {
        id: device.id.clone(),
        secret: device.secret.clone(),
    };
    // An HTTPS session, then a QUIC one: the HTTPS session is replaced.
    let older = device.open_session().await;
    let (mut quic, _) = Session::open(&gateway, dir.path(), &quic_device).await;
    let gone = device.poll(&older, "", 0).await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(gone.json()["title"], "session replaced by a newer one");
    let report = device
        .report(&older, json!([{"seq": 1, "signal_id": "00000000000000000000000000000001", "kind": "received"}]))
        .await;
    assert_eq!(report.status, 410);

    // A new HTTPS session replaces the QUIC one, which is told so.
    let newer = device.open_session().await;
    assert_ne!(newer, older);
    quic.expect_goodbye(GoingAwayReason::Replaced, close_code::REPLACED)
        .await;
    until_connected(&gateway, 0).await;

    // A poll waiting under a session ends when a newer one opens.
    let waiting = device.poll_in_background(&newer, "gold:0", 20);
    until_connected(&gateway, 1).await;
    let started = Instant::now();
    let newest = device.open_session().await;
    let ended = waiting.await.unwrap();
    assert_eq!(ended.status, 410);
    // Long before the poll's 20 s wait.
    assert!(started.elapsed() < Duration::from_secs(10));
    // The newest works.
    gateway.publish(&gold, market_buy("after")).await.unwrap();
    let polled = device.poll(&newest, "gold:0", 5).await;
    assert_eq!(polled.json()["positions"], json!({"gold": 1}));
    // A session token the gateway never gave is no session: a made-up
    // tag, or the epoch of a QUIC session, which an HTTPS request may not
    // name.
    let (epoch, _) = newest.split_once('-').unwrap();
    let epoch: u64 = epoch.parse().unwrap();
    // Another device naming this one's session, while it is the live one:
    // its own requests verify, the token does not.
    let other = register(&gateway).await;
    let other = HttpsDevice::new(device.client.clone(), other.id, other.secret);
    let borrowed = other.poll(&newest, "", 0).await;
    assert_eq!(borrowed.status, 410, "{}", borrowed.text());
    assert_eq!(borrowed.json()["title"], "no such session; open a new one");
    let (_quic, _) = Session::open(&gateway, dir.path(), &quic_device).await;
    for made_up in [
        format!("{epoch}-0000000000000000"),
        format!("{}-{}", epoch + 1, newest.split_once('-').unwrap().1),
        (epoch + 1).to_string(),
    ] {
        let answer = device.poll(&made_up, "", 0).await;
        assert_eq!(answer.status, 410, "{made_up}: {}", answer.text());
        assert_eq!(answer.json()["title"], "no such session; open a new one");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_is_refused_and_its_waiting_poll_ends() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let session = device.open_session().await;
    let waiting = device.poll_in_background(&session, "gold:0", 20);
    until_connected(&gateway, 1).await;
    gateway.revoke(device.id.as_str()).await.unwrap();
    let ended = waiting.await.unwrap();
    assert_eq!(ended.status, 410);
    assert_eq!(ended.json()["title"], "the device is revoked");
    let signed = device.sign("POST", "/v1/device/session", b"");
    let refused = device.client.send(&signed.request).await;
    assert_eq!((refused.status, refused.text()), (401, REFUSED.to_owned()));
    gateway.shutdown().await;
}

#[tokio::test]
async fn bad_poll_parameters_get_a_clear_signed_error() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let session = device.open_session().await;
    for target in [
        format!("/v1/device/signals?session={session}&wait=31"),
        format!("/v1/device/signals?session={session}&after=gold"),
        format!("/v1/device/signals?session={session}&after=gold:01"),
        format!("/v1/device/signals?session={session}&after=gold:1,gold:2"),
        format!("/v1/device/signals?session={session}&after=g%20ld:1"),
        "/v1/device/signals?wait=1".to_owned(),
    ] {
        let answer = device.call("GET", &target, b"").await;
        assert_eq!(answer.status, 422, "{target}: {}", answer.text());
    }
    let unknown = device.call("GET", "/v1/device/nothing", b"").await;
    assert_eq!(unknown.status, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_request_ending_under_a_session_leaves_its_other_waiting_request_reachable() {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup().await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("one")).await.unwrap();
    // A poll waits under the session (after the signal: nothing new) ...
    let waiting = device.poll_in_background(&session, "gold:1", 20);
    until_connected(&gateway, 1).await;
    // ... while other requests under the same session come and go.
    let id = signal.signal_id.to_string();
    assert_eq!(
        device
            .report(&session, json!([filled(1, &id, "1.5")]))
            .await
            .status,
        200
    );
    assert_eq!(
        device
            .call("GET", &format!("/v1/device/session?session={session}"), b"")
            .await
            .status,
        200
    );
    // A takeover still reaches the waiting poll at once.
    let started = Instant::now();
    device.open_session().await;
    let ended = waiting.await.unwrap();
    assert_eq!(ended.status, 410);
    // Long before the poll's 20 s wait.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_device_that_hangs_up_mid_poll_ends_its_session_at_once() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let session = device.open_session().await;
    let signed = device.sign(
        "GET",
        &format!("/v1/device/signals?session={session}&after=gold:0&wait=20"),
        b"",
    );
    let sending = tokio::spawn({
        let client = device.client.clone();
        async move { client.send(&signed.request).await }
    });
    until_connected(&gateway, 1).await;
    // The device gives up, as a WebRequest timing out before the wait does:
    // its connection closes.
    sending.abort();
    let _ = sending.await;
    let started = Instant::now();
    until_connected(&gateway, 0).await;
    // Long before the poll's 20 s wait: the session finished, uncounted.
    assert!(started.elapsed() < Duration::from_secs(10));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_is_not_waited_for_without_end() {
    let Setup {
        gateway, device, ..
    } = setup().await;
    let mut signed = device.sign("POST", "/v1/device/session", b"");
    // Announces 1 KiB, sends 10 bytes, then nothing.
    signed.request.body = br#"{"reports""#.to_vec();
    let started = Instant::now();
    let mut slow = signed.request.clone();
    slow.headers.push(("X-Pad".into(), "1".into()));
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        device.client.send_announcing(&slow, 1024),
    )
    .await
    .expect("the gateway answers a stalled body within its deadline");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(started.elapsed() < Duration::from_secs(15));
    gateway.shutdown().await;
}

/// The threads of this process whose name starts with `prefix` (Linux
/// keeps 15 bytes of a thread's name).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn polling_devices_run_on_threads_of_their_own_which_end_with_the_gateway() {
    let Setup {
        gateway,
        dir,
        device,
        ..
    } = setup().await;
    // nextest runs each test in a process of its own, so the threads
    // counted are this test's gateway's; `cargo test` (the test command's
    // fallback) runs other gateways beside it.
    let alone = std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
    // Their own runtime: thousands of polls queue there, not in front of
    // the QUIC devices' signals (docs/benchmarks.md has the figures).
    assert!(threads_named("eagate-device-h") >= 1);
    let session = device.open_session().await;
    let waiting = device.poll_in_background(&session, "gold:0", 30);
    until_connected(&gateway, 1).await;
    // Stopped with a poll waiting: done within the listener's grace, its
    // threads gone and its hold on the store released, so the next gateway
    // opens the same data directory at once.
    let stopping = Instant::now();
    gateway.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    waiting.abort();
    let deadline = Instant::now() + Duration::from_secs(2);
    while alone && threads_named("eagate-device-h") > 0 {
        assert!(
            Instant::now() < deadline,
            "the listener's threads outlive the gateway"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restarted = eagate_gateway::server::Gateway::start(&config(dir.path()))
        .await
        .expect("the data directory is free");
    let client = HttpsClient::new(restarted.device_https_addr().unwrap(), dir.path());
    let device = HttpsDevice::new(client, device.id.clone(), device.secret.clone());
    let session = device.open_session().await;
    assert_eq!(device.poll(&session, "gold:0", 0).await.status, 200);
    restarted.shutdown().await;
}

/// The device routes on a core built by hand, its reports kept by a store
/// the test stalls once a request has passed its checks (the registry and
/// the nonce store still answer): the request is answered 503, signed, in
/// bounded time; nothing is confirmed that is not durable; and the same
/// session, once the store is back, has the resent report stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stalls_after_the_checks_gets_a_signed_503_in_time_and_the_resent_fill_is_stored_once()
 {
    let (mut core, _db, held) = common::held::core_with_held_reports();
    core.auth_deadline = Duration::from_millis(500);
    let core = std::sync::Arc::new(core);
    let (id, secret) = common::held::gold_follower(&core).await;
    let gold = ChannelName::new("gold").unwrap();
    let signal = core
        .publish(&gold, market_buy("stalled"), None)
        .await
        .unwrap()
        .signal
        .signal_id
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let addr = common::https::serve_device_routes(core.clone(), dir.path()).await;
    let device = HttpsDevice::new(HttpsClient::new(addr, dir.path()), id.clone(), secret);
    let session = device.open_session().await;
    let fill = json!([filled(1, &signal, "2350.10")]);
    let errors_before = core.metrics.snapshot().store_errors;

    // Written, but its disk stalls: the request waits for durability only
    // so long (10 s), then tells the device to send it again. Not confirmed.
    held.durability.send_replace(common::held::Durability::Held);
    let asked = Instant::now();
    let answer = device.report(&session, fill.clone()).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.header("Retry-After"), Some("1"));
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "a stalled write held the request {:?}",
        asked.elapsed()
    );
    // Nor is it announced as confirmed to a request that asks meanwhile:
    // the store's confirmed sequence waits for the flush, and the request
    // gives up at its deadline (0.5 s here).
    let state = format!("/v1/device/session?session={session}");
    assert!(
        device
            .told_to_come_back_within("GET", &state, b"", Duration::from_secs(4))
            .await,
        "the checks passed: the answer is signed"
    );

    // The store stops answering: each route's first store call after the
    // checks (the session's epoch, the confirmed sequence) gives up at the
    // deadline, 0.5 s here, and the answer is signed: the checks passed.
    held.frozen.send_replace(true);
    let reports = format!("/v1/device/reports?session={session}");
    let poll = format!("/v1/device/signals?session={session}&after=gold:0&wait=0");
    let body = serde_json::to_vec(&json!({ "reports": fill })).unwrap();
    for (method, target, body) in [
        ("GET", state.as_str(), &b""[..]),
        ("GET", poll.as_str(), b""),
        ("POST", reports.as_str(), body.as_slice()),
        ("POST", "/v1/device/session", b""),
    ] {
        assert!(
            device
                .told_to_come_back_within(method, target, body, Duration::from_secs(4))
                .await,
            "{method} {target}: the checks passed, so the answer is signed"
        );
    }
    assert!(
        core.metrics.snapshot().store_errors >= errors_before + 5,
        "each store call that gave up is counted"
    );

    // Back: the same session's resend is confirmed, and the fill is
    // stored once, though it was written before.
    held.frozen.send_replace(false);
    held.durability
        .send_replace(common::held::Durability::Durable);
    let answer = device.report(&session, fill).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["confirmed_up_to"], 1);
    let stored = core
        .reports
        .for_signal(signal.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, ReportKind::Filled);
    let answer = device.call("GET", &state, b"").await;
    assert_eq!(answer.json()["confirmed_up_to"], 1, "{}", answer.text());
}

/// A store that lost the device's newest session epoch (a Redis failover
/// that lost its last writes, a restore from a backup) knows nothing newer
/// than the device's token: the device is told to open a new session, not
/// that it was replaced (which would stop its EA for good).
async fn a_session_the_store_lost_is_reopened_not_taken_for_a_replacement(backend: Backend) {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup_on(&backend).await;
    let session = device.open_session().await;
    let (mut redis, prefix) = backend.redis_connection().unwrap();
    let epoch_key = format!("{prefix}:{{dev:{}}}:session", device.id.as_str());
    let lost: i64 = redis::cmd("DECR")
        .arg(&epoch_key)
        .query(&mut *redis)
        .unwrap();
    assert!(lost >= 0);
    for answer in [
        device.poll(&session, "gold:0", 0).await,
        device.report(&session, json!([])).await,
        device
            .call("GET", &format!("/v1/device/session?session={session}"), b"")
            .await,
    ] {
        assert_eq!(answer.status, 410, "{}", answer.text());
        assert_eq!(answer.json()["title"], "no such session; open a new one");
    }
    // Reopened, it polls on.
    let reopened = device.open_session().await;
    gateway.publish(&gold, market_buy("after")).await.unwrap();
    let polled = device.poll(&reopened, "gold:0", 5).await;
    assert_eq!(polled.json()["positions"], json!({"gold": 1}));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_session_the_store_lost_is_reopened_not_taken_for_a_replacement_on_redis() {
    a_session_the_store_lost_is_reopened_not_taken_for_a_replacement(Backend::redis()).await;
}

#[tokio::test]
async fn a_session_the_store_lost_is_reopened_not_taken_for_a_replacement_on_redis_cluster() {
    a_session_the_store_lost_is_reopened_not_taken_for_a_replacement(Backend::redis_cluster())
        .await;
}

/// What the pure-MQL client does with a report the gateway refuses as
/// malformed, against the gateway: a batch with one bad report is refused
/// whole, naming it, with nothing of it stored; the client sets it aside
/// and moves the later ones down one number, and they are stored and
/// confirmed.
#[tokio::test]
async fn a_batch_with_a_malformed_report_stores_nothing_and_its_renumbered_rest_is_confirmed() {
    let Setup {
        gateway,
        device,
        gold,
        ..
    } = setup().await;
    let session = device.open_session().await;
    let signal = gateway.publish(&gold, market_buy("aside")).await.unwrap();
    let id = signal.signal_id.to_string();
    let bad = json!({"seq": 2, "signal_id": id, "kind": "filled", "ticket": "1", "price": "1e3", "volume": "0.1"});
    let refused = device
        .report(
            &session,
            json!([filled(1, &id, "2351.17"), bad, filled(3, &id, "2351.19")]),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.json()["title"]
            .as_str()
            .unwrap()
            .starts_with("report 2: "),
        "{}",
        refused.text()
    );
    let stored = || async {
        gateway
            .reports()
            .for_signal(signal.signal_id)
            .await
            .unwrap()
    };
    assert!(stored().await.is_empty(), "nothing of the batch is stored");

    // Moved down one, report 3 takes number 2: both stored, confirmed.
    // (Left with a hole at 2, the watermark would wait for it for good:
    // store_contract's the_watermark_waits_for_a_gap_and_jumps_when_it_fills.)
    let renumbered = device
        .report(
            &session,
            json!([filled(1, &id, "2351.17"), filled(2, &id, "2351.19")]),
        )
        .await;
    assert_eq!(renumbered.text(), r#"{"confirmed_up_to":2}"#);
    assert_eq!(stored().await.len(), 2);
    gateway.shutdown().await;
}

/// After Redis lost the device's newest epoch under a live session, a
/// session begun by another installation still ends it: epochs never
/// repeat (the clock, or the last one plus one), so the new one is newer
/// than the live one's, and the two cannot both trade.
async fn a_session_begun_after_the_store_lost_an_epoch_still_replaces_the_live_one(
    backend: Backend,
) {
    let Setup {
        gateway, device, ..
    } = setup_on(&backend).await;
    let live = device.open_session().await;
    let (mut redis, prefix) = backend.redis_connection().unwrap();
    let _: i64 = redis::cmd("DECR")
        .arg(format!("{prefix}:{{dev:{}}}:session", device.id.as_str()))
        .query(&mut *redis)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let second = device.open_session().await;
    assert_ne!(second, live, "a new epoch, not the lost one again");
    let answer = device.poll(&live, "gold:0", 0).await;
    assert_eq!(answer.status, 410, "{}", answer.text());
    assert_eq!(answer.json()["title"], "session replaced by a newer one");
    assert_eq!(device.poll(&second, "gold:0", 0).await.status, 200);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_session_begun_after_the_store_lost_an_epoch_still_replaces_the_live_one_on_redis() {
    a_session_begun_after_the_store_lost_an_epoch_still_replaces_the_live_one(Backend::redis())
        .await;
}

#[tokio::test]
async fn a_session_begun_after_the_store_lost_an_epoch_still_replaces_the_live_one_on_redis_cluster()
 {
    a_session_begun_after_the_store_lost_an_epoch_still_replaces_the_live_one(
        Backend::redis_cluster(),
    )
    .await;
}

/// An operator sizes the listener's threads (`device_https_threads`):
/// that many workers, beside the one thread that drives them.
#[tokio::test]
async fn the_listener_runs_as_many_worker_threads_as_the_operator_sets() {
    let alone = std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.device_https_threads = 3;
    let gateway = eagate_gateway::server::Gateway::start(&settings)
        .await
        .unwrap();
    let threads = threads_named("eagate-device-h");
    assert!(threads >= 4, "{threads}");
    if alone {
        assert_eq!(threads, 4, "three workers and their driver");
    }
    gateway.shutdown().await;
    // 0 is the default: half the machine's cores, at least one.
    assert_eq!(
        eagate_gateway::config::device_https_threads(0),
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    );
    assert_eq!(eagate_gateway::config::device_https_threads(5), 5);
}
