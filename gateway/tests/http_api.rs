//! The HTTP sidecar, driven through its router (no socket), on a real
//! gateway's state.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use eagate_gateway::http::tokens::{Scope, create_token};
use eagate_gateway::reports::StoredReport;
use eagate_gateway::server::Gateway;
use eagate_protocol::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    gateway: Gateway,
    app: axum::Router,
    admin: String,
    platform: String,
    _dir: tempfile::TempDir,
}

async fn api(backend: &Backend) -> Api {
    let (gateway, dir) = start_on(backend).await;
    let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
    let platform = create_token(dir.path(), Scope::Platform)
        .unwrap()
        .to_string();
    let app = sidecar(&gateway, dir.path());
    Api {
        gateway,
        app,
        admin,
        platform,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let raw = body.map(|b| b.to_string());
        self.call_raw(method, uri, token, raw).await
    }

    async fn call_raw(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(text) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(text)
            }
            None => Body::empty(),
        };
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn admin(&self, method: &str, uri: &str, body: Option<Value>) -> Answer {
        self.call(method, uri, Some(&self.admin.clone()), body)
            .await
    }

    async fn register(&self, account: &str, name: &str) -> Value {
        let answer = self
            .admin(
                "POST",
                "/v1/devices",
                Some(json!({"account_id": account, "name": name})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        answer.body
    }
}

fn assert_problem(answer: &Answer, status: StatusCode, detail_contains: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status.as_u16());
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_contains),
        "{detail:?} should mention {detail_contains:?}"
    );
}

const V1_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/devices"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/dv_X"),
    ("PATCH", "/v1/devices/dv_X"),
    ("POST", "/v1/devices/dv_X/revoke"),
    ("POST", "/v1/devices/dv_X/rotate-secret"),
    ("PUT", "/v1/devices/dv_X/subscriptions/gold"),
    ("DELETE", "/v1/devices/dv_X/subscriptions/gold"),
    ("POST", "/v1/channels/gold/signals"),
    (
        "GET",
        "/v1/signals/00000000000000000000000000000000/executions",
    ),
    ("POST", "/v1/affiliates"),
    ("GET", "/v1/affiliates/af_X"),
    ("POST", "/v1/affiliates/af_X/token"),
    ("GET", "/v1/affiliates/af_X/stats"),
    ("GET", "/v1/affiliates/af_X/commissions"),
    ("POST", "/v1/affiliates/af_X/payouts"),
    ("POST", "/v1/affiliates/af_X/adjustments"),
    ("POST", "/v1/trades/dv_X/1/bust"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("DELETE", "/v1/webhooks/wh_X"),
    ("GET", "/v1/webhooks/wh_X/deliveries"),
    ("POST", "/v1/webhooks/wh_X/replay"),
    ("GET", "/v1/affiliates"),
    ("GET", "/v1/payouts"),
    ("GET", "/v1/fraud-cases"),
    ("GET", "/v1/audit"),
    ("POST", "/v1/fraud-cases/1/decision"),
    ("GET", "/v1/affiliates/af_X/payouts"),
    ("POST", "/v1/payout-batches"),
    ("GET", "/v1/payout-batches"),
    ("GET", "/v1/payout-batches/pb_X"),
    ("POST", "/v1/payouts/po_X/outcome"),
    ("PUT", "/v1/affiliates/af_X/payout-account"),
    ("GET", "/v1/referral-codes/K7QM2XR4HD"),
    ("POST", "/v1/referrals"),
    ("POST", "/v1/payments"),
    ("POST", "/v1/refunds"),
    ("POST", "/v1/email-verifications"),
    ("POST", "/v1/customers/cust_X/referral-code"),
    ("GET", "/v1/customers/cust_X/credits"),
    ("POST", "/v1/customers/cust_X/credit-spends"),
];

on_both_backends!(every_v1_route_without_a_valid_token_is_401);
async fn every_v1_route_without_a_valid_token_is_401(backend: Backend) {
    let api = api(&backend).await;
    for (method, uri) in V1_ROUTES {
        for token in [None, Some("eat_not-a-real-token")] {
            let answer = api.call(method, uri, token, None).await;
            assert_problem(&answer, StatusCode::UNAUTHORIZED, "bearer token");
        }
    }
}

on_both_backends!(a_platform_token_cannot_manage_devices_403);
async fn a_platform_token_cannot_manage_devices_403(backend: Backend) {
    let api = api(&backend).await;
    let platform = api.platform.clone();
    for (method, uri) in &V1_ROUTES[..8] {
        let answer = api.call(method, uri, Some(&platform), None).await;
        assert_problem(&answer, StatusCode::FORBIDDEN, "scope");
    }
}

on_both_backends!(a_token_created_while_the_sidecar_runs_works_at_once);
async fn a_token_created_while_the_sidecar_runs_works_at_once(backend: Backend) {
    let api = api(&backend).await;
    let dir = api._dir.path().to_owned();
    let fresh = create_token(&dir, Scope::Admin).unwrap().to_string();
    let answer = api.call("GET", "/v1/devices", Some(&fresh), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    // Only hashes are on disk.
    let stored = std::fs::read_to_string(dir.join("api-tokens")).unwrap();
    assert!(!stored.contains(&fresh));
    assert!(!stored.contains(&api.admin));
}

on_both_backends!(registering_shows_the_secret_once_and_never_again);
async fn registering_shows_the_secret_once_and_never_again(backend: Backend) {
    let api = api(&backend).await;
    let created = api.register("acct-1", "London VPS").await;
    let secret = created["secret"].as_str().unwrap();
    DeviceSecret::parse(secret).expect("a valid egs_ secret");
    let id = created["device"]["device_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("dv_"));
    let listed = api.admin("GET", "/v1/devices", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let got = api.admin("GET", &format!("/v1/devices/{id}"), None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"], "London VPS");
    assert_eq!(got.body["online"], false);
    for body in [&listed.body, &got.body] {
        let text = body.to_string();
        assert!(!text.contains(secret) && !text.contains("secret"), "{text}");
    }
}

on_both_backends!(listing_filters_by_account);
async fn listing_filters_by_account(backend: Backend) {
    let api = api(&backend).await;
    api.register("acct-1", "a").await;
    api.register("acct-2", "b").await;
    let listed = api
        .admin("GET", "/v1/devices?account_id=acct-2", None)
        .await;
    let devices = listed.body["items"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["account_id"], "acct-2");
}

on_both_backends!(devices_are_listed_a_page_at_a_time_in_registration_order);
async fn devices_are_listed_a_page_at_a_time_in_registration_order(backend: Backend) {
    let api = api(&backend).await;
    let mut registered = Vec::new();
    for n in 0..7 {
        let account = if n % 2 == 0 { "acct-even" } else { "acct-odd" };
        let created = api.register(account, &format!("VPS {n}")).await;
        registered.push(created["device"]["device_id"].as_str().unwrap().to_owned());
    }
    registered.sort();
    let mut seen = Vec::new();
    let mut uri = "/v1/devices?limit=3".to_owned();
    loop {
        let page = api.admin("GET", &uri, None).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|d| d["device_id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_after"].as_str() {
            Some(next) => uri = format!("/v1/devices?limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, registered);
    let odd = api
        .admin("GET", "/v1/devices?account_id=acct-odd&limit=2", None)
        .await;
    assert_eq!(odd.body["items"].as_array().unwrap().len(), 2);
    assert!(odd.body["next_after"].is_string());
    for bad in ["0", "1001"] {
        let answer = api
            .admin("GET", &format!("/v1/devices?limit={bad}"), None)
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "limit");
    }
}

on_both_backends!(names_that_look_the_same_are_the_same_name_and_bidi_tricks_are_refused);
async fn names_that_look_the_same_are_the_same_name_and_bidi_tricks_are_refused(backend: Backend) {
    let api = api(&backend).await;
    let first = api.register("acct-1", "London VPS").await;
    assert_eq!(first["device"]["name"], "London VPS");
    for lookalike in [
        "london vps",
        "London VPS ",
        " London  VPS",
        "L\u{043E}ndon VPS",  // Cyrillic o
        "London\u{00A0}VPS",  // no-break space
        "London\u{200B} VPS", // zero-width space
        "\u{FF2C}ondon VPS",  // fullwidth L
    ] {
        let answer = api
            .admin(
                "POST",
                "/v1/devices",
                Some(json!({"account_id": "acct-1", "name": lookalike})),
            )
            .await;
        assert_problem(&answer, StatusCode::CONFLICT, "already has a device named");
    }
    for trick in ["London \u{202E}SPV", "\u{2067}London VPS\u{2069}"] {
        let answer = api
            .admin(
                "POST",
                "/v1/devices",
                Some(json!({"account_id": "acct-1", "name": trick})),
            )
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "bidirectional");
    }
    // Kept as typed, and another name is another name.
    let other = api.register("acct-1", "Londön VPS 2").await;
    assert_eq!(other["device"]["name"], "Londön VPS 2");
}

on_both_backends!(a_duplicate_name_within_an_account_is_409_but_fine_in_another);
async fn a_duplicate_name_within_an_account_is_409_but_fine_in_another(backend: Backend) {
    let api = api(&backend).await;
    api.register("acct-1", "VPS-1").await;
    let second = api.register("acct-1", "VPS-2").await;
    let id = second["device"]["device_id"].as_str().unwrap();
    let clash = api
        .admin(
            "PATCH",
            &format!("/v1/devices/{id}"),
            Some(json!({"name": "VPS-1"})),
        )
        .await;
    assert_problem(&clash, StatusCode::CONFLICT, "VPS-1");
    let again = api
        .admin(
            "POST",
            "/v1/devices",
            Some(json!({"account_id": "acct-1", "name": "VPS-1"})),
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "VPS-1");
    api.register("acct-2", "VPS-1").await;
    let renamed = api
        .admin(
            "PATCH",
            &format!("/v1/devices/{id}"),
            Some(json!({"name": "VPS-3"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
    // The old name is free again.
    api.register("acct-1", "VPS-2").await;
}

on_both_backends!(bad_device_input_is_422_with_a_clear_message);
async fn bad_device_input_is_422_with_a_clear_message(backend: Backend) {
    let api = api(&backend).await;
    let cases = [
        (json!({"account_id": "a"}), "name"),
        (
            json!({"account_id": "a", "name": ""}),
            "name must not be empty",
        ),
        (
            json!({"account_id": "a", "name": "x\ny"}),
            "control characters",
        ),
        (
            json!({"account_id": "a", "name": "x", "colour": "red"}),
            "colour",
        ),
        (
            json!({"account_id": "a", "name": "n".repeat(65)}),
            "at most 64",
        ),
    ];
    for (body, mentions) in cases {
        let answer = api.admin("POST", "/v1/devices", Some(body)).await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, mentions);
    }
    let broken = api
        .call_raw(
            "POST",
            "/v1/devices",
            Some(&api.admin.clone()),
            Some("{not json".into()),
        )
        .await;
    assert_eq!(broken.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(broken.content_type, "application/problem+json");
}

on_both_backends!(an_oversized_body_is_413_and_changes_nothing);
async fn an_oversized_body_is_413_and_changes_nothing(backend: Backend) {
    let api = api(&backend).await;
    let huge = format!(r#"{{"account_id": "a", "name": "{}"}}"#, "x".repeat(70_000));
    let answer = api
        .call_raw("POST", "/v1/devices", Some(&api.admin.clone()), Some(huge))
        .await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE, "larger than");
    let listed = api.admin("GET", "/v1/devices", None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0);
}

on_both_backends!(unknown_devices_and_routes_are_404);
async fn unknown_devices_and_routes_are_404(backend: Backend) {
    let api = api(&backend).await;
    for (method, uri) in [
        ("GET", "/v1/devices/dv_NOPE"),
        ("POST", "/v1/devices/dv_NOPE/revoke"),
        ("POST", "/v1/devices/dv_NOPE/rotate-secret"),
        ("PUT", "/v1/devices/dv_NOPE/subscriptions/gold"),
        (
            "GET",
            "/v1/signals/0123456789abcdef0123456789abcdef/executions",
        ),
    ] {
        let answer = api.admin(method, uri, None).await;
        assert_problem(&answer, StatusCode::NOT_FOUND, "no ");
    }
    let answer = api.admin("GET", "/nowhere", None).await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "no such route");
}

on_both_backends!(revoking_and_rotating_a_device);
async fn revoking_and_rotating_a_device(backend: Backend) {
    let api = api(&backend).await;
    let created = api.register("acct-1", "EA").await;
    let id = created["device"]["device_id"].as_str().unwrap();
    let rotated = api
        .admin("POST", &format!("/v1/devices/{id}/rotate-secret"), None)
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_ne!(rotated.body["secret"], created["secret"]);
    DeviceSecret::parse(rotated.body["secret"].as_str().unwrap()).unwrap();
    let revoked = api
        .admin("POST", &format!("/v1/devices/{id}/revoke"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at_ms"].as_u64().unwrap() > 0);
}

on_both_backends!(subscriptions_are_added_removed_and_bounded);
async fn subscriptions_are_added_removed_and_bounded(backend: Backend) {
    let api = api(&backend).await;
    let created = api.register("acct-1", "EA").await;
    let id = created["device"]["device_id"].as_str().unwrap();
    let added = api
        .admin("PUT", &format!("/v1/devices/{id}/subscriptions/gold"), None)
        .await;
    assert_eq!(added.body["channels"], json!(["gold"]));
    let bad = api
        .admin(
            "PUT",
            &format!("/v1/devices/{id}/subscriptions/no%20spaces"),
            None,
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "channel name");
    for i in 1..16 {
        let answer = api
            .admin("PUT", &format!("/v1/devices/{id}/subscriptions/c{i}"), None)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let seventeenth = api
        .admin("PUT", &format!("/v1/devices/{id}/subscriptions/c99"), None)
        .await;
    assert_problem(&seventeenth, StatusCode::UNPROCESSABLE_ENTITY, "at most 16");
    let removed = api
        .admin(
            "DELETE",
            &format!("/v1/devices/{id}/subscriptions/gold"),
            None,
        )
        .await;
    assert_eq!(removed.body["channels"].as_array().unwrap().len(), 15);
}

fn market_buy() -> Value {
    json!({
        "symbol": "EURUSD",
        "action": "OpenBuy",
        "order_type": "Market",
        "volume": "0.10",
        "stop_loss": "1.07500",
        "comment": "copy #1"
    })
}

on_both_backends!(publishing_a_signal_gives_it_a_position_and_an_id);
async fn publishing_a_signal_gives_it_a_position_and_an_id(backend: Backend) {
    let api = api(&backend).await;
    let platform = api.platform.clone();
    for position in 1..=2 {
        let answer = api
            .call(
                "POST",
                "/v1/channels/gold/signals",
                Some(&platform),
                Some(market_buy()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        assert_eq!(answer.body["position"], position);
        assert_eq!(answer.body["volume"], "0.10");
        assert_eq!(answer.body["signal_id"].as_str().unwrap().len(), 32);
    }
}

on_both_backends!(invalid_signals_are_422_with_a_clear_message_and_not_logged);
async fn invalid_signals_are_422_with_a_clear_message_and_not_logged(backend: Backend) {
    let api = api(&backend).await;
    let mut zero_volume = market_buy();
    zero_volume["volume"] = json!("0");
    let mut float_price = market_buy();
    float_price["order_type"] = json!("Limit");
    float_price["price"] = json!(1.1);
    let mut unknown_action = market_buy();
    unknown_action["action"] = json!("Buy");
    let mut limit_without_price = market_buy();
    limit_without_price["order_type"] = json!("Limit");
    let cases = [
        (zero_volume, "volume must be positive"),
        (float_price, "string"),
        (unknown_action, "Buy"),
        (limit_without_price, "needs a price"),
    ];
    for (body, mentions) in cases {
        let answer = api
            .admin("POST", "/v1/channels/gold/signals", Some(body))
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, mentions);
    }
    let bad_channel = api
        .admin("POST", "/v1/channels/a%2Fb/signals", Some(market_buy()))
        .await;
    assert_problem(
        &bad_channel,
        StatusCode::UNPROCESSABLE_ENTITY,
        "channel name",
    );
    let gold = ChannelName::new("gold").unwrap();
    assert_eq!(api.gateway.signals().head(&gold).await.unwrap(), 0);
}

on_both_backends!(executions_show_each_subscribed_device_pending_delivered_received_or_filled);
async fn executions_show_each_subscribed_device_pending_delivered_received_or_filled(
    backend: Backend,
) {
    let api = api(&backend).await;
    let mut ids = Vec::new();
    let mut secrets = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let created = api.register("acct-1", name).await;
        let id = created["device"]["device_id"].as_str().unwrap().to_owned();
        api.admin("PUT", &format!("/v1/devices/{id}/subscriptions/gold"), None)
            .await;
        ids.push(id);
        secrets.push(created["secret"].as_str().unwrap().to_owned());
    }
    // Device d is online and is sent the signal, but reports nothing.
    let online = Device {
        id: DeviceId::new(&ids[3]).unwrap(),
        secret: DeviceSecret::parse(&secrets[3]).unwrap(),
    };
    let (mut session, _) = Session::open(&api.gateway, api._dir.path(), &online).await;
    let published = api
        .admin("POST", "/v1/channels/gold/signals", Some(market_buy()))
        .await;
    assert!(matches!(
        session.receive().await,
        Some(GatewayMessage::Signal(_))
    ));
    let signal_id: SignalId = published.body["signal_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reports = api.gateway.core().reports.clone();
    let report = |device: &str, seq, outcome| {
        StoredReport::new(
            device,
            &Report {
                seq,
                signal_id,
                at_ms: 1,
                outcome,
            },
            2,
        )
    };
    reports
        .ingest(&report(&ids[0], 1, ReportOutcome::Received), None)
        .await
        .unwrap();
    reports
        .ingest(&report(&ids[1], 1, ReportOutcome::Received), None)
        .await
        .unwrap();
    let fill = ReportOutcome::Filled(Fill {
        ticket: 77,
        price: "1.08543".parse().unwrap(),
        volume: "0.10".parse().unwrap(),
    });
    reports
        .ingest(&report(&ids[1], 2, fill), None)
        .await
        .unwrap();

    let executions = || async {
        let answer = api
            .call(
                "GET",
                &format!("/v1/signals/{signal_id}/executions"),
                Some(&api.platform.clone()),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.body["channel"], "gold");
        answer.body
    };
    let status_of = |body: &Value, id: &str| {
        body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .map(|d| d["status"].as_str().unwrap().to_owned())
            .unwrap()
    };
    // Sessions record deliveries in batches: wait for d's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let body = loop {
        let body = executions().await;
        if status_of(&body, &ids[3]) == "delivered" || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status_of(&body, &ids[0]), "received");
    assert_eq!(status_of(&body, &ids[1]), "filled");
    assert_eq!(status_of(&body, &ids[2]), "pending");
    assert_eq!(status_of(&body, &ids[3]), "delivered");
    let malformed = api
        .admin("GET", "/v1/signals/not-hex/executions", None)
        .await;
    assert_problem(&malformed, StatusCode::UNPROCESSABLE_ENTITY, "signal id");
}

on_both_backends!(health_and_readiness_need_no_token);
async fn health_and_readiness_need_no_token(backend: Backend) {
    let api = api(&backend).await;
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/readyz", None, None).await.status,
        StatusCode::OK
    );
}

on_both_backends!(a_device_registered_over_http_authenticates_over_quic);
async fn a_device_registered_over_http_authenticates_over_quic(backend: Backend) {
    let api = api(&backend).await;
    let created = api.register("acct-1", "EA").await;
    let device = Device {
        id: DeviceId::new(created["device"]["device_id"].as_str().unwrap()).unwrap(),
        secret: DeviceSecret::parse(created["secret"].as_str().unwrap()).unwrap(),
    };
    let (_session, _) = Session::open(&api.gateway, api._dir.path(), &device).await;
    let shown = api
        .admin("GET", &format!("/v1/devices/{}", device.id), None)
        .await;
    assert_eq!(shown.body["online"], true);
    assert!(shown.body["last_seen_ms"].as_u64().is_some());
}

on_both_backends!(metrics_count_sessions_refusals_deliveries_and_reports);
async fn metrics_count_sessions_refusals_deliveries_and_reports(backend: Backend) {
    let api = api(&backend).await;
    let created = api.register("acct-1", "EA").await;
    let id = created["device"]["device_id"].as_str().unwrap().to_owned();
    api.admin("PUT", &format!("/v1/devices/{id}/subscriptions/gold"), None)
        .await;
    let device = Device {
        id: DeviceId::new(&id).unwrap(),
        secret: DeviceSecret::parse(created["secret"].as_str().unwrap()).unwrap(),
    };
    let impostor = Device {
        id: device.id.clone(),
        secret: DeviceSecret::from_bytes([1; 32]),
    };
    let mut refused = connect(&api.gateway, api._dir.path()).await;
    refused.authenticate(&impostor, fresh_nonce()).await;
    let (mut session, _) = Session::open(&api.gateway, api._dir.path(), &device).await;
    api.admin("POST", "/v1/channels/gold/signals", Some(market_buy()))
        .await;
    let Some(GatewayMessage::Signal(signal)) = session.receive().await else {
        panic!("expected the signal");
    };
    session
        .send(&DeviceMessage::Report(Report {
            seq: 1,
            signal_id: signal.signal_id,
            at_ms: now_ms(),
            outcome: ReportOutcome::Received,
        }))
        .await;
    assert!(matches!(
        session.receive().await,
        Some(GatewayMessage::ReportsConfirmed(_))
    ));

    let answer = api.call("GET", "/metrics", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.content_type.starts_with("text/plain"));
    let text = answer.body.as_str().unwrap();
    for line in [
        "eagate_device_connections 1",
        "eagate_auth_failures_total{reason=\"bad_mac\"} 1",
        "eagate_signals_delivered_total 1",
        "eagate_reports_ingested_total{outcome=\"stored\"} 1",
        "eagate_report_ingest_seconds_count 1",
        "eagate_store_errors_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

on_both_backends!(the_openapi_document_and_the_routes_agree_both_ways);
async fn the_openapi_document_and_the_routes_agree_both_ways(backend: Backend) {
    let api = api(&backend).await;
    let answer = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let paths = answer.body["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Every /v1 route the router has is documented...
    for (method, uri) in V1_ROUTES {
        let template = uri
            .replace("dv_X", "{device_id}")
            .replace("/subscriptions/gold", "/subscriptions/{channel}")
            .replace("/channels/gold/", "/channels/{channel}/")
            .replace("00000000000000000000000000000000", "{signal_id}")
            .replace("af_X", "{affiliate_id}")
            .replace("K7QM2XR4HD", "{code}")
            .replace("cust_X", "{user_id}")
            .replace("/fraud-cases/1/", "/fraud-cases/{case_id}/")
            .replace("pb_X", "{batch_id}")
            .replace("po_X", "{payout_id}")
            .replace("/1/bust", "/{seq}/bust")
            .replace("wh_X", "{endpoint_id}");
        assert!(
            documented.contains(&(method.to_string(), template.clone())),
            "{method} {template} is not documented"
        );
    }
    // ...and every documented operation is routed.
    for (method, path) in &documented {
        let uri = path
            .replace("{device_id}", "dv_X")
            .replace("{channel}", "gold")
            .replace("{signal_id}", "00000000000000000000000000000000")
            .replace("{affiliate_id}", "af_X")
            .replace("{case_id}", "1")
            .replace("{code}", "K7QM2XR4HD")
            .replace("{user_id}", "cust_X")
            .replace("{batch_id}", "pb_X")
            .replace("{payout_id}", "po_X")
            .replace("{seq}", "1")
            .replace("{endpoint_id}", "wh_X");
        let answer = api.admin(method, &uri, None).await;
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        let fell_through = answer.body["detail"] == "no such route";
        assert!(!fell_through, "{method} {uri} is documented but not routed");
    }
}

/// Every `$ref` anywhere below `value`.
fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => references(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

on_both_backends!(the_document_is_derived_from_the_types_the_routes_read);
async fn the_document_is_derived_from_the_types_the_routes_read(backend: Backend) {
    let api = api(&backend).await;
    let document = api.call("GET", "/openapi.json", None, None).await.body;
    let schemas = document["components"]["schemas"].as_object().unwrap();

    // Every reference resolves to a schema the document holds.
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(found.len() > 50, "only {} references", found.len());
    for target in found {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{target} points outside the schemas"));
        assert!(schemas.contains_key(name), "{target} does not resolve");
    }

    // The register body's schema is the type the route reads: exactly its
    // documented properties are accepted, each is required, and nothing
    // else is allowed.
    let new_device = &schemas["NewDevice"];
    let properties: Vec<&String> = new_device["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut required: Vec<&str> = new_device["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["account_id", "name"]);
    assert_eq!(properties, required);
    assert_eq!(new_device["additionalProperties"], false);
    let body = |fields: &[&str]| -> Value {
        fields
            .iter()
            .map(|field| (field.to_string(), json!("documented")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let registered = api
        .admin("POST", "/v1/devices", Some(body(&required)))
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{:?}",
        registered.body
    );
    for left_out in &required {
        let rest: Vec<&str> = required.iter().copied().filter(|f| f != left_out).collect();
        let answer = api.admin("POST", "/v1/devices", Some(body(&rest))).await;
        assert_problem(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("missing field `{left_out}`"),
        );
    }
    let mut extra = body(&required);
    extra["colour"] = json!("red");
    let answer = api.admin("POST", "/v1/devices", Some(extra)).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field `colour`",
    );
}

on_both_backends!(a_publish_retried_with_its_idempotency_key_returns_the_same_signal_once);
async fn a_publish_retried_with_its_idempotency_key_returns_the_same_signal_once(backend: Backend) {
    let api = api(&backend).await;
    let publish = |key: Option<&str>, body: Value| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/channels/gold/signals")
            .header(header::AUTHORIZATION, format!("Bearer {}", api.platform))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let request = request.body(Body::from(body.to_string())).unwrap();
        let app = api.app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, first) = publish(Some("trade-1001"), market_buy()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = publish(Some("trade-1001"), market_buy()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["signal_id"], first["signal_id"]);
    let mut other = market_buy();
    other["volume"] = json!("0.20");
    let (status, problem) = publish(Some("trade-1001"), other).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("idempotency key")
    );
    let (status, _) = publish(Some(""), market_buy()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let gold = ChannelName::new("gold").unwrap();
    assert_eq!(api.gateway.signals().head(&gold).await.unwrap(), 1);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
    let api = api(&Backend::Sled).await;
    for (header_value, status) in [
        (format!("bearer {}", api.admin), StatusCode::OK),
        (format!("BEARER {}", api.admin), StatusCode::OK),
        (format!("Basic {}", api.admin), StatusCode::UNAUTHORIZED),
        (api.admin.clone(), StatusCode::UNAUTHORIZED),
    ] {
        let request = Request::builder()
            .uri("/v1/devices")
            .header(header::AUTHORIZATION, header_value.clone())
            .body(Body::empty())
            .unwrap();
        let answer = api.app.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), status, "{header_value}");
    }
}

#[tokio::test]
async fn framework_rejections_are_problem_details_too() {
    let api = api(&Backend::Sled).await;
    let admin = api.admin.clone();
    // A path segment that is not UTF-8.
    let answer = api
        .call("GET", "/v1/devices/%FF%FE", Some(&admin), None)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.content_type, "application/problem+json");
    assert!(
        answer.body["detail"].as_str().unwrap().len() > 5,
        "{:?}",
        answer.body
    );
    // A method the route does not have keeps its Allow header.
    let request = Request::builder()
        .method("DELETE")
        .uri("/v1/payouts")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let response = api.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert!(response.headers().contains_key(header::ALLOW));
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_and_others_are_served_meanwhile() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gateway, _dir) = start().await;
    let addr = gateway.http_addr().unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile another client is served at once.
    let mut quick = tokio::net::TcpStream::connect(addr).await.unwrap();
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    quick.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The slow one never finishes its headers: closed at the deadline.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        eagate_gateway::server::HTTP_HEADER_DEADLINE + std::time::Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the connection was held open");
    assert!(
        started.elapsed()
            <= eagate_gateway::server::HTTP_HEADER_DEADLINE + std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_document_declares_the_rules_the_server_enforces() {
    let api = api(&Backend::Sled).await;
    let document = api.call("GET", "/openapi.json", None, None).await.body;
    let schemas = &document["components"]["schemas"];
    // Ids and names may not be empty.
    for (schema, field) in [
        ("NewDevice", "account_id"),
        ("NewDevice", "name"),
        ("NewPayment", "payment_id"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["minLength"], 1,
            "{schema}.{field}"
        );
    }
    let parameter = |path: &str, method: &str, name: &str| -> Value {
        document["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
    };
    let code = parameter("/v1/referral-codes/{code}", "get", "code");
    let pattern = code["schema"]["pattern"].as_str().unwrap();
    assert!(pattern.contains("{10}"), "{pattern}");
    let channel = parameter("/v1/channels/{channel}/signals", "post", "channel");
    assert!(channel["schema"]["pattern"].is_string());
    let limit = parameter("/v1/devices", "get", "limit");
    assert_eq!(limit["schema"]["minimum"], 1);
    let unsubscribe =
        &document["paths"]["/v1/devices/{device_id}/subscriptions/{channel}"]["delete"];
    assert!(unsubscribe["responses"]["422"].is_object());
}

/// A connection from `source` (a loopback address), and whether all of
/// `sent` went out on it (a connection turned away at once may not take
/// it).
async fn connection_from(
    source: &str,
    addr: std::net::SocketAddr,
    sent: &[u8],
) -> (tokio::net::TcpStream, std::io::Result<()>) {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let written = stream.write_all(sent).await;
    (stream, written)
}

/// A client of `source` (a loopback address) asking `GET /healthz`; the
/// whole answer.
async fn healthz_from(source: &str, addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let (mut stream, _) = connection_from(
        source,
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("answered and closed within 5 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_clients_hold_at_most_their_sources_share_of_connections_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.max_http_connections = 12;
    settings.max_http_connections_per_source = 8;
    let gateway = Gateway::start(&settings).await.unwrap();
    let addr = gateway.http_addr().unwrap();
    // A slow-loris from 127.0.0.1: eight connections dribbling headers.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let (stream, sent) =
            connection_from("127.0.0.1", addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        sent.unwrap();
        slow.push(stream);
    }
    // Its ninth is told why and closed, not held.
    let turned_away = healthz_from("127.0.0.1", addr).await;
    assert!(
        turned_away.starts_with("HTTP/1.1 503") && turned_away.contains("Retry-After: 1"),
        "{turned_away:?}"
    );
    // Another source is served meanwhile.
    let served = healthz_from("127.0.0.2", addr).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
    // Sources together hold at most the bound: four more slow ones from a
    // third source fill it, and then even a fourth source is turned away.
    for _ in 0..4 {
        let (stream, sent) = connection_from("127.0.0.3", addr, b"GET /healthz HTTP/1.1\r\n").await;
        sent.unwrap();
        slow.push(stream);
    }
    let full = healthz_from("127.0.0.4", addr).await;
    assert!(full.starts_with("HTTP/1.1 503"), "{full:?}");
    // A place given back is taken again.
    drop(slow.pop());
    let mut served = String::new();
    for _ in 0..50 {
        served = healthz_from("127.0.0.4", addr).await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
}
