//! The admin console through the router (no socket), on a real gateway's
//! state: sign-in and its cookie, CSRF on every form, the devices pages
//! and their actions. The browser end to end is `tests/tests/console_browser.rs`.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use eagate_gateway::http::tokens::{Scope, create_token};
use eagate_gateway::server::Gateway;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Console {
    gateway: Gateway,
    app: axum::Router,
    admin: String,
    platform: String,
    _dir: tempfile::TempDir,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn console() -> Console {
    let (gateway, dir) = start_on(&Backend::Sled).await;
    let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
    let platform = create_token(dir.path(), Scope::Platform)
        .unwrap()
        .to_string();
    let app = sidecar(&gateway, dir.path());
    Console {
        gateway,
        app,
        admin,
        platform,
        _dir: dir,
    }
}

/// `name=value` pairs as a form body.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            let encode = |text: &str| -> String {
                text.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            };
            format!("{}={}", encode(name), encode(value))
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Console {
    async fn request(&self, request: Request<Body>) -> Page {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Page {
        let mut request = Request::get(uri);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.request(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, uri: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Page {
        let mut request =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.request(request.body(Body::from(form(fields))).unwrap())
            .await
    }

    /// Signs in as an admin; the cookie to send back (`name=value`).
    async fn sign_in(&self) -> String {
        self.sign_in_with(&self.admin).await
    }

    /// Signs in with `token`; the cookie to send back (`name=value`).
    async fn sign_in_with(&self, token: &str) -> String {
        let page = self
            .post("/console/sign-in", None, &[("token", token)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let set = page.headers[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    /// The CSRF token the session's pages carry in their forms.
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/console/devices", Some(cookie)).await;
        let at = page.body.find("name=\"csrf\" value=\"").expect("a form") + 19;
        page.body[at..at + 64].to_owned()
    }

    /// A call of the JSON API with `token`; the answer's status and body.
    async fn api(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let page = self.request(request).await;
        (
            page.status,
            serde_json::from_str(&page.body).unwrap_or(Value::Null),
        )
    }

    /// Alice enrolled, with four customers who signed up from one address
    /// and paid: the fourth over the shared-address limit (3), so its
    /// commission is held by an open case. Her affiliate id.
    async fn affiliate_with_a_held_referral(&self) -> String {
        let (status, enrolled) = self
            .api(
                "POST",
                "/v1/affiliates",
                &self.platform,
                Some(json!({"user_id": "alice", "email_sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                            "source_address": "198.51.100.20"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{enrolled}");
        let affiliate = enrolled["affiliate"]["affiliate_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let code = enrolled["affiliate"]["code"].as_str().unwrap().to_owned();
        let (_, list) = self.api("GET", "/v1/affiliates", &self.admin, None).await;
        let currency = list["currency"].as_str().unwrap().to_owned();
        let now = now_instant();
        for n in 1..=4 {
            let (status, body) = self
                .api(
                    "POST",
                    "/v1/referrals",
                    &self.platform,
                    Some(json!({"user_id": format!("c{n}"), "code": code, "source_address": "192.0.2.50",
                                "email_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                                "email_verified": true, "occurred_at": now})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let (status, body) = self
                .api(
                    "POST",
                    "/v1/payments",
                    &self.platform,
                    Some(
                        json!({"payment_id": format!("p{n}"), "user_id": format!("c{n}"),
                                "amount_minor": 10_000, "currency": currency, "billing_period": 1,
                                "occurred_at": now}),
                    ),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        affiliate
    }

    /// Alice's row of `GET /v1/affiliates`.
    async fn balances(&self, affiliate: &str) -> Value {
        let (_, list) = self.api("GET", "/v1/affiliates", &self.admin, None).await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["affiliate_id"] == affiliate)
            .cloned()
            .unwrap()
    }

    async fn register(&self, name: &str) -> String {
        let (record, _secret) = self
            .gateway
            .core()
            .registry
            .register(&self.gateway.core().master_key, "acct-1", name)
            .await
            .unwrap();
        record.device_id
    }
}

#[tokio::test]
async fn an_admin_token_signs_in_with_a_cookie_scripts_and_other_sites_cannot_use() {
    let console = console().await;
    let page = console
        .post("/console/sign-in", None, &[("token", &console.admin)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/console/devices");
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(
        !cookie.contains(&console.admin),
        "the token is not the cookie"
    );

    // Behind a TLS proxy the cookie goes over TLS only.
    let request = Request::post("/console/sign-in")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https")
        .body(Body::from(form(&[("token", &console.admin)])))
        .unwrap();
    let page = console.request(request).await;
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn a_platform_token_or_a_wrong_one_does_not_sign_in() {
    let console = console().await;
    for token in [console.platform.as_str(), "eat_not-a-token", ""] {
        let page = console
            .post("/console/sign-in", None, &[("token", token)])
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{token}");
        assert!(page.headers.get(header::SET_COOKIE).is_none());
        assert!(page.body.contains("not an admin token"), "{}", page.body);
        assert!(
            page.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
}

#[tokio::test]
async fn pages_without_a_session_send_the_browser_to_sign_in() {
    let console = console().await;
    let id = console.register("London VPS").await;
    for uri in [
        "/console/devices".to_owned(),
        format!("/console/devices/{id}"),
        format!("/console/devices/{id}/revoke"),
    ] {
        for cookie in [None, Some("eagate_console=0000")] {
            let page = console.get(&uri, cookie).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{uri}");
            assert_eq!(page.location(), "/console/sign-in");
        }
    }
}

#[tokio::test]
async fn the_devices_page_shows_each_device_with_its_status_in_words_and_escapes_names() {
    let console = console().await;
    let id = console.register("<script>alert(1)</script>").await;
    let cookie = console.sign_in().await;
    let page = console.get("/console/devices", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&id));
    assert!(page.body.contains("○ Offline"), "status in words");
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.body.contains("<script>alert"));
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let policy = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'self'"));
}

#[tokio::test]
async fn a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing() {
    let console = console().await;
    let id = console.register("London VPS").await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let revoke = format!("/console/devices/{id}/revoke");
    for fields in [
        vec![],
        vec![("csrf", "0".repeat(64))],
        vec![("csrf", format!("{}x", &csrf[..63]))],
    ] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = console.post(&revoke, Some(&cookie), &fields).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(
            page.body
                .contains("did not come from a page of this console")
        );
    }
    // Nor with the right token but no session (another browser).
    let page = console.post(&revoke, None, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let record = console.gateway.core().registry.get(&id).await.unwrap();
    assert!(record.unwrap().revoked_at_ms.is_none(), "not revoked");

    // With it, after the confirmation page, the device is revoked.
    let confirm = console.get(&revoke, Some(&cookie)).await;
    assert!(confirm.body.contains("Revoke London VPS?"));
    let page = console
        .post(&revoke, Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let record = console.gateway.core().registry.get(&id).await.unwrap();
    assert!(record.unwrap().revoked_at_ms.is_some(), "revoked");
    let device = console
        .get(&format!("/console/devices/{id}"), Some(&cookie))
        .await;
    assert!(device.body.contains("✕ Revoked"));
}

#[tokio::test]
async fn signing_out_ends_the_session_on_the_server_so_a_copied_cookie_is_dead() {
    let console = console().await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let page = console
        .post("/console/sign-out", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(
        page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let page = console.get("/console/devices", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "the old cookie is dead");
    assert_eq!(page.location(), "/console/sign-in");
}

#[tokio::test]
async fn renaming_to_a_name_the_account_has_says_so_on_the_page() {
    let console = console().await;
    console.register("London VPS").await;
    let id = console.register("Frankfurt VPS").await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let rename = format!("/console/devices/{id}/rename");
    let page = console
        .post(
            &rename,
            Some(&cookie),
            &[("csrf", &csrf), ("name", "london vps")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("role=\"alert\""), "{}", page.body);
    let page = console
        .post(
            &rename,
            Some(&cookie),
            &[("csrf", &csrf), ("name", "Paris VPS")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let record = console.gateway.core().registry.get(&id).await.unwrap();
    assert_eq!(record.unwrap().name, "Paris VPS");
}

#[tokio::test]
async fn a_new_secret_is_shown_once_on_an_uncached_page() {
    let console = console().await;
    let id = console.register("London VPS").await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let page = console
        .post(
            &format!("/console/devices/{id}/rotate-secret"),
            Some(&cookie),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let at = page.body.find("egs_").expect("the secret");
    let secret = &page.body[at..at + 47];
    let device = console
        .get(&format!("/console/devices/{id}"), Some(&cookie))
        .await;
    assert!(!device.body.contains(secret), "shown once");
}

#[tokio::test]
async fn the_publish_form_refuses_what_the_api_refuses_naming_the_field() {
    let console = console().await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    for (fields, expected) in [
        (
            vec![("channel", "gold"), ("symbol", "XAUUSD"), ("volume", "abc")],
            "volume: ",
        ),
        (
            vec![("channel", "gold"), ("volume", "0.10")],
            "missing field `symbol`",
        ),
        (
            vec![
                ("channel", "no spaces"),
                ("symbol", "XAUUSD"),
                ("volume", "0.10"),
            ],
            "channel name",
        ),
        (
            vec![
                ("channel", "gold"),
                ("symbol", "XAUUSD"),
                ("volume", "0.10"),
                ("magic", "-1"),
            ],
            "magic must be a whole number",
        ),
        (
            vec![
                ("channel", "gold"),
                ("symbol", "XAUUSD"),
                ("volume", "0.10"),
                ("order_type", "Limit"),
            ],
            "needs a price",
        ),
    ] {
        // What a browser sends with the selects left as they are.
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("form_key", "k1"),
            ("action", "OpenBuy"),
        ];
        form.extend(fields.iter().copied());
        let page = console.post("/console/signals", Some(&cookie), &form).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{fields:?}");
        assert!(page.body.contains(expected), "{expected} in {}", page.body);
    }
}

#[tokio::test]
async fn a_publish_form_sent_twice_publishes_one_signal_and_shows_its_executions() {
    let console = console().await;
    let subscriber = console.register("London VPS").await;
    console
        .gateway
        .core()
        .registry
        .subscribe(&subscriber, &"gold".parse().unwrap())
        .await
        .unwrap();
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let form = [
        ("csrf", csrf.as_str()),
        ("form_key", &"c0".repeat(32)),
        ("channel", "gold"),
        ("symbol", "XAUUSD"),
        ("action", "OpenBuy"),
        ("order_type", "Market"),
        ("volume", "0.10"),
    ];
    let first = console.post("/console/signals", Some(&cookie), &form).await;
    let second = console.post("/console/signals", Some(&cookie), &form).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
    assert_eq!(first.location(), second.location(), "one signal");
    let head = console
        .gateway
        .core()
        .signals
        .head(&"gold".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(head, 1, "published once");

    let executions = console.get(first.location(), Some(&cookie)).await;
    assert_eq!(executions.status, StatusCode::OK);
    assert!(executions.body.contains(&subscriber));
    assert!(executions.body.contains("○ Pending"), "{}", executions.body);
}

#[tokio::test]
async fn a_fraud_case_cleared_in_the_console_releases_the_held_money_recorded_as_the_admins() {
    let console = console().await;
    let affiliate = console.affiliate_with_a_held_referral().await;
    let before = console.balances(&affiliate).await;
    assert!(before["held_minor"].as_i64().unwrap() > 0, "{before}");
    assert_eq!(before["open_cases"], 1);
    let cookie = console.sign_in().await;
    let affiliates = console.get("/console/affiliates", Some(&cookie)).await;
    assert!(affiliates.body.contains(&affiliate));
    assert!(
        affiliates.body.contains("1 to review"),
        "{}",
        affiliates.body
    );

    let queue = console.get("/console/fraud", Some(&cookie)).await;
    assert!(queue.body.contains("shared address"), "{}", queue.body);
    assert!(queue.body.contains("192.0.2.50"), "the evidence");
    let csrf = console.csrf(&cookie).await;
    let decided = console
        .post(
            "/console/fraud/1",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("decision", "cleared"),
                ("reason", "a family, checked by phone"),
            ],
        )
        .await;
    assert_eq!(decided.status, StatusCode::SEE_OTHER, "{}", decided.body);

    let after = console.balances(&affiliate).await;
    assert_eq!(after["held_minor"], 0, "released: {after}");
    assert_eq!(after["open_cases"], 0);
    assert_eq!(
        after["pending_minor"].as_i64().unwrap(),
        before["pending_minor"].as_i64().unwrap() + before["held_minor"].as_i64().unwrap()
    );
    let (_, cases) = console
        .api(
            "GET",
            "/v1/fraud-cases?status=decided",
            &console.admin,
            None,
        )
        .await;
    let case = &cases["items"][0];
    assert_eq!(case["reason"], "a family, checked by phone");
    let by = case["decided_by"].as_str().unwrap();
    assert!(
        by.starts_with("token:") && !by.contains(&console.admin),
        "{by}"
    );
    // The same token through the API is recorded as the same caller.
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(console.admin.as_bytes()));
    assert_eq!(by, format!("token:{}", &hash[..12]));

    // The audit log shows the decision with who and why, and the chain
    // verified.
    let audit = console.get("/console/audit", Some(&cookie)).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(
        audit.body.contains(r#"data-verified="yes""#),
        "{}",
        audit.body
    );
    assert!(audit.body.contains("case decided"));
    assert!(audit.body.contains("a family, checked by phone"));
    assert!(audit.body.contains(by));
    let payouts = console.get("/console/payouts", Some(&cookie)).await;
    assert_eq!(payouts.status, StatusCode::OK);
    assert!(payouts.body.contains("No payout batch yet"));

    // A second decision the other way is a conflict, said on the page.
    let again = console
        .post(
            "/console/fraud/1",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("decision", "confirmed"),
                ("reason", "changed my mind"),
            ],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let unknown = console
        .post(
            "/console/fraud/99",
            Some(&cookie),
            &[("csrf", &csrf), ("decision", "cleared"), ("reason", "x")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// Enrols `user`; (affiliate id, code, its token).
async fn enrol(console: &Console, user: &str, email_sha256: &str) -> (String, String, String) {
    let (status, enrolled) = console
        .api(
            "POST",
            "/v1/affiliates",
            &console.platform,
            Some(json!({"user_id": user, "email_sha256": email_sha256, "source_address": "198.51.100.20"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    (
        enrolled["affiliate"]["affiliate_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        enrolled["affiliate"]["code"].as_str().unwrap().to_owned(),
        enrolled["token"].as_str().unwrap().to_owned(),
    )
}

type Enrolled = (String, String, String);

/// Alice and Bob enrolled, each (affiliate id, code, token).
async fn alice_and_bob(console: &Console) -> (Enrolled, Enrolled) {
    let alice = enrol(
        console,
        "alice",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    )
    .await;
    let bob = enrol(
        console,
        "bob",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    )
    .await;
    (alice, bob)
}

/// Now, as the API reads an event's `occurred_at`.
fn now_instant() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    eagate_affiliates::calendar::format_instant(now_ms)
}

#[tokio::test]
async fn an_affiliate_token_opens_its_own_portal_and_no_other_page() {
    let console = console().await;
    let ((alice, code, token), (bob, _, _)) = alice_and_bob(&console).await;
    let device = console.register("London VPS").await;
    let signed_in = console
        .post("/console/sign-in", None, &[("token", &token)])
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), format!("/console/portal/{alice}"));
    let cookie = signed_in.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let own = console
        .get(&format!("/console/portal/{alice}"), Some(&cookie))
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(own.body.contains(&code), "the code");
    assert!(own.body.contains("<svg"), "charts drawn on the server");
    assert!(own.body.contains("Clicks per day"), "per day by default");
    assert!(
        own.body
            .contains(r#"data-total="credits-available">0.00 GBP<"#),
        "{}",
        own.body
    );
    let monthly = console
        .get(&format!("/console/portal/{alice}?by=month"), Some(&cookie))
        .await;
    for chart in [
        "Earned per month",
        "Clicks per month",
        "Signups per month",
        "First payments per month",
        "First trades per month",
    ] {
        assert!(monthly.body.contains(chart), "{chart}");
    }
    assert!(
        !own.body.contains("/console/devices"),
        "no admin navigation"
    );
    for uri in [
        format!("/console/portal/{bob}"),
        "/console/devices".to_owned(),
        "/console/affiliates".to_owned(),
        "/console/fraud".to_owned(),
        "/console/signals".to_owned(),
        format!("/console/devices/{device}/revoke"),
    ] {
        let page = console.get(&uri, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            !page.body.contains(&device) || uri.contains("revoke"),
            "{uri}"
        );
    }
    // Nor its forms, with its own CSRF token.
    let at = own.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &own.body[at..at + 64];
    let revoke = console
        .post(
            &format!("/console/devices/{device}/revoke"),
            Some(&cookie),
            &[("csrf", csrf)],
        )
        .await;
    assert_eq!(revoke.status, StatusCode::FORBIDDEN);
    let record = console.gateway.core().registry.get(&device).await.unwrap();
    assert!(record.unwrap().revoked_at_ms.is_none());

    // An admin may open any affiliate's portal.
    let admin = console.sign_in().await;
    let page = console
        .get(&format!("/console/portal/{bob}"), Some(&admin))
        .await;
    assert_eq!(page.status, StatusCode::OK);
}

#[tokio::test]
async fn the_health_page_shows_the_counters_metrics_exposes_and_the_store_answering() {
    let console = console().await;
    let cookie = console.sign_in().await;
    for _ in 0..3 {
        console.gateway.core().metrics.signal_delivered();
    }
    let page = console.get("/console/health", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("● Answering"), "{}", page.body);
    assert!(
        page.body.contains(r#"data-total="signals">3<"#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"data-total="connections">0<"#));
    assert!(
        page.body.contains("Rates appear a few seconds"),
        "no rate from one sample"
    );
    let metrics = console.get("/metrics", None).await;
    assert!(metrics.body.contains("eagate_signals_delivered_total 3"));
}

#[tokio::test]
async fn the_health_pages_rates_cover_the_time_before_it_was_first_opened() {
    let mut console = console().await;
    // The sidecar's own state, with its sampler running (every second here).
    let state = std::sync::Arc::new(eagate_gateway::http::Console::default());
    tokio::spawn(
        state
            .clone()
            .keep_health_samples(console.gateway.core(), std::time::Duration::from_secs(1)),
    );
    console.app = eagate_gateway::http::router(eagate_gateway::http::AppState {
        core: console.gateway.core(),
        tokens: std::sync::Arc::new(eagate_gateway::http::tokens::TokenStore::open(
            console._dir.path(),
        )),
        affiliates: console.gateway.affiliates().unwrap().clone(),
        console: state,
    });
    let cookie = console.sign_in().await;
    // Deliveries while nobody has the page open; then the first look.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    for _ in 0..12 {
        console.gateway.core().metrics.signal_delivered();
    }
    tokio::time::sleep(std::time::Duration::from_millis(5_000)).await;
    let page = console.get("/console/health", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Rates appear"), "{}", page.body);
    // 12 signals over the 6.5 s or so since the oldest sample, taken
    // before them: about 110 per minute (at most 144, over 5 s; less on a
    // slow machine, never 0).
    let rate = page
        .body
        .split(r#"data-total="signals-per-minute">"#)
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .and_then(|whole| whole.parse::<u64>().ok())
        .expect("a rate of signals");
    assert!((30..=144).contains(&rate), "{rate} per minute");
}

#[tokio::test]
async fn the_payouts_page_shows_each_batch_with_its_payouts_and_their_state() {
    let console = console().await;
    let (alice, _, _) = enrol(
        &console,
        "alice",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    )
    .await;
    let (status, body) = console
        .api(
            "POST",
            &format!("/v1/affiliates/{alice}/adjustments"),
            &console.admin,
            Some(
                json!({"adjustment_id": "adj-1", "amount_minor": 15_000, "reason": "launch bonus"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, run) = console
        .api("POST", "/v1/payout-batches", &console.admin, None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let batch = run["batch"]["batch_id"]
        .as_str()
        .expect("a batch")
        .to_owned();
    let cookie = console.sign_in().await;
    let page = console.get("/console/payouts", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&batch), "{}", page.body);
    assert!(page.body.contains(&alice));
    assert!(page.body.contains("150.00 GBP"), "{}", page.body);
    assert!(page.body.contains(">pending<"), "{}", page.body);
}

#[tokio::test]
async fn the_portal_lists_commissions_with_pseudonyms_and_exports_them_as_csv_to_their_owner_only()
{
    let console = console().await;
    let ((alice, code, token), (bob, _, bob_token)) = alice_and_bob(&console).await;
    let now = now_instant();
    for (uri, body) in [
        (
            "/v1/referrals",
            json!({"user_id": "customer-7", "code": code, "source_address": "192.0.2.7",
                   "email_sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
                   "email_verified": true, "occurred_at": now}),
        ),
        (
            "/v1/payments",
            json!({"payment_id": "p1", "user_id": "customer-7", "amount_minor": 10_000,
                   "currency": "GBP", "billing_period": 1, "occurred_at": now}),
        ),
    ] {
        let (status, answer) = console
            .api("POST", uri, &console.platform, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let cookie = console.sign_in_with(&token).await;
    let page = console
        .get(&format!("/console/portal/{alice}"), Some(&cookie))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("30.00 GBP"), "{}", page.body);
    assert!(page.body.contains("subscription"));
    assert!(
        !page.body.contains("customer-7"),
        "an affiliate sees a pseudonym, not the platform's id"
    );
    let csv = console
        .get(
            &format!("/console/portal/{alice}/commissions.csv"),
            Some(&cookie),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(csv.body.starts_with("entry_id,"), "{}", csv.body);
    assert!(csv.body.contains("3000") && !csv.body.contains("customer-7"));
    let payouts = console
        .get(
            &format!("/console/portal/{alice}/payouts.csv"),
            Some(&cookie),
        )
        .await;
    assert_eq!(payouts.status, StatusCode::OK);
    // Bob's ledger is not Alice's to download, nor hers his.
    let other = console
        .get(
            &format!("/console/portal/{bob}/commissions.csv"),
            Some(&cookie),
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let bob_cookie = console.sign_in_with(&bob_token).await;
    let theirs = console
        .get(
            &format!("/console/portal/{alice}/payouts.csv"),
            Some(&bob_cookie),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    // An admin's export shows the platform's ids.
    let admin = console.sign_in().await;
    let full = console
        .get(
            &format!("/console/portal/{alice}/commissions.csv"),
            Some(&admin),
        )
        .await;
    assert!(full.body.contains("customer-7"));
}

#[tokio::test]
async fn the_portal_shows_the_referral_credits_the_affiliate_earned_as_a_customer() {
    let console = console().await;
    let ((alice, _, token), _) = alice_and_bob(&console).await;
    // Alice (platform user "alice") refers a friend as a customer, who
    // signs up verified and pays over the credit threshold (GBP 50.00).
    let (status, issued) = console
        .api(
            "POST",
            "/v1/customers/alice/referral-code",
            &console.platform,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let (status, referred) = console
        .api(
            "POST",
            "/v1/referrals",
            &console.platform,
            Some(json!({
                "user_id": "dave", "code": issued["code"], "source_address": "203.0.113.77",
                "email_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "email_verified": true, "occurred_at": now_instant()
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{referred}");
    let (status, paid) = console
        .api(
            "POST",
            "/v1/payments",
            &console.platform,
            Some(
                json!({"payment_id": "d1", "user_id": "dave", "amount_minor": 6_000,
                        "currency": "GBP", "billing_period": 1, "occurred_at": now_instant()}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    let cookie = console.sign_in_with(&token).await;
    let portal = console
        .get(&format!("/console/portal/{alice}"), Some(&cookie))
        .await;
    assert_eq!(portal.status, StatusCode::OK);
    // GBP 10.00, in its holding period; nothing to spend yet.
    assert!(
        portal
            .body
            .contains(r#"data-total="credits-pending">10.00 GBP<"#),
        "{}",
        portal.body
    );
    assert!(
        portal
            .body
            .contains(r#"data-total="credits-available">0.00 GBP<"#),
        "{}",
        portal.body
    );
}

#[tokio::test]
async fn a_sign_in_link_an_admin_issues_opens_the_affiliates_page_once() {
    let console = console().await;
    let ((alice, _, _), _) = alice_and_bob(&console).await;
    let admin = console.sign_in().await;
    let csrf = console.csrf(&admin).await;
    let issued = console
        .post(
            &format!("/console/affiliates/{alice}/sign-in-link"),
            Some(&admin),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    assert_eq!(issued.headers[header::CACHE_CONTROL], "no-store");
    assert!(
        issued
            .body
            .contains("https://partners.example/console/sign-in/link/"),
        "on the sidecar's configured public address, not the request's Host"
    );
    let at = issued
        .body
        .find("/console/sign-in/link/")
        .expect("the link");
    let path = issued.body[at..at + 22 + 64].to_owned();
    // The audit trail shows who issued it, for whom; never the link.
    let (status, audit) = console
        .api(
            "GET",
            "/v1/audit?kind=sign_in_link_issued",
            &console.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["affiliate_id"], alice.as_str(), "{audit}");
    assert!(
        entries[0]["by"].as_str().unwrap().starts_with("token:"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(&path[22..]),
        "the link's secret"
    );

    // Fetching it (a mail scanner, a preview) does not use it up.
    for _ in 0..2 {
        let offer = console.get(&path, None).await;
        assert_eq!(offer.status, StatusCode::OK);
        assert!(offer.body.contains("This link works once"));
    }
    let used = console.post(&path, None, &[]).await;
    assert_eq!(used.status, StatusCode::SEE_OTHER, "{}", used.body);
    assert_eq!(used.location(), format!("/console/portal/{alice}"));
    let cookie = used.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let portal = console
        .get(&format!("/console/portal/{alice}"), Some(&cookie))
        .await;
    assert_eq!(portal.status, StatusCode::OK);
    let devices = console.get("/console/devices", Some(&cookie)).await;
    assert_eq!(
        devices.status,
        StatusCode::FORBIDDEN,
        "an affiliate's session"
    );

    // Once only.
    assert_eq!(
        console.post(&path, None, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let spent = console.get(&path, None).await;
    assert_eq!(spent.status, StatusCode::UNAUTHORIZED);
    assert!(spent.body.contains("used already, or has expired"));
    // Nor does a made-up one work, nor may an affiliate issue links.
    let made_up = format!("/console/sign-in/link/{}", "0".repeat(64));
    assert_eq!(
        console.post(&made_up, None, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let at = portal.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let own_csrf = &portal.body[at..at + 64];
    let by_affiliate = console
        .post(
            &format!("/console/affiliates/{alice}/sign-in-link"),
            Some(&cookie),
            &[("csrf", own_csrf)],
        )
        .await;
    assert_eq!(by_affiliate.status, StatusCode::FORBIDDEN);
}

/// The `attribute="value"` of an HTML tag's text, if there.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[at..].split('"').next()
}

#[tokio::test]
async fn every_field_of_every_console_page_has_a_label_and_every_page_a_title_and_language() {
    let console = console().await;
    let ((alice, _, _), _) = alice_and_bob(&console).await;
    let device = console.register("London VPS").await;
    let cookie = console.sign_in().await;
    for uri in [
        "/console/sign-in".to_owned(),
        "/console/devices".to_owned(),
        format!("/console/devices/{device}"),
        format!("/console/devices/{device}/revoke"),
        "/console/signals".to_owned(),
        "/console/affiliates".to_owned(),
        "/console/fraud".to_owned(),
        "/console/payouts".to_owned(),
        "/console/audit".to_owned(),
        "/console/health".to_owned(),
        format!("/console/portal/{alice}"),
    ] {
        let cookie = (uri != "/console/sign-in").then_some(cookie.as_str());
        let page = console.get(&uri, cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert!(page.body.contains("<html lang=\"en\">"), "{uri}");
        assert!(page.body.contains("<title>"), "{uri}");
        assert!(
            page.body.contains("name=\"viewport\""),
            "{uri}: readable on a phone"
        );
        for field in ["<input", "<select", "<textarea"] {
            for (at, _) in page.body.match_indices(field) {
                let tag = &page.body[at..at + page.body[at..].find('>').unwrap()];
                if matches!(attribute(tag, "type"), Some("hidden" | "submit")) {
                    continue;
                }
                let labelled = attribute(tag, "aria-label").is_some()
                    || attribute(tag, "id")
                        .is_some_and(|id| page.body.contains(&format!("<label for=\"{id}\"")));
                assert!(labelled, "{uri}: a field without a label: {tag}");
            }
        }
    }
}

#[tokio::test]
async fn a_session_ends_with_its_token_and_a_new_sign_in_ends_the_browsers_old_session() {
    let console = console().await;
    let ((alice, _, token), _) = alice_and_bob(&console).await;
    let cookie = console.sign_in_with(&token).await;
    let portal = format!("/console/portal/{alice}");
    assert_eq!(
        console.get(&portal, Some(&cookie)).await.status,
        StatusCode::OK
    );
    // The affiliate's token is replaced (it leaked): its sessions end.
    let (status, _) = console
        .api(
            "POST",
            &format!("/v1/affiliates/{alice}/token"),
            &console.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = console.get(&portal, Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "signed out");
    assert_eq!(page.location(), "/console/sign-in");

    // Signing in again from a browser with a session ends that session.
    let first = console.sign_in().await;
    let request = Request::post("/console/sign-in")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &first)
        .body(Body::from(form(&[("token", &console.admin)])))
        .unwrap();
    let again = console.request(request).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(
        console.get("/console/devices", Some(&first)).await.status,
        StatusCode::SEE_OTHER,
        "the old session is gone"
    );
}

#[tokio::test]
async fn a_sign_in_posted_from_another_site_is_refused() {
    let console = console().await;
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ] {
        let request = Request::post("/console/sign-in")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "gw.example")
            .header(name, value)
            .body(Body::from(form(&[("token", &console.admin)])))
            .unwrap();
        let page = console.request(request).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{name}");
        assert!(page.headers.get(header::SET_COOKIE).is_none());
    }
}

#[tokio::test]
async fn a_publish_form_whose_key_published_another_signal_gets_a_new_key() {
    let console = console().await;
    let cookie = console.sign_in().await;
    let csrf = console.csrf(&cookie).await;
    let key = "ab".repeat(32);
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("form_key", key.as_str()),
        ("channel", "gold"),
        ("symbol", "XAUUSD"),
        ("action", "OpenBuy"),
        ("order_type", "Market"),
        ("volume", "0.10"),
    ];
    let first = console
        .post("/console/signals", Some(&cookie), &fields)
        .await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    // Back, an edit, a resubmit: the key published another signal.
    fields[6] = ("volume", "0.20");
    let conflict = console
        .post("/console/signals", Some(&cookie), &fields)
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.body);
    let at = conflict.body.find("name=\"form_key\" value=\"").unwrap() + 23;
    let new_key = &conflict.body[at..at + 64];
    assert_ne!(new_key, key, "a new key");
    fields[1] = ("form_key", new_key);
    let second = console
        .post("/console/signals", Some(&cookie), &fields)
        .await;
    assert_eq!(second.status, StatusCode::SEE_OTHER, "{}", second.body);
    assert_ne!(second.location(), first.location(), "a second signal");
}
