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

    /// Signs in; the cookie to send back (`name=value`).
    async fn sign_in(&self) -> String {
        let page = self
            .post("/console/sign-in", None, &[("token", &self.admin)])
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
        ("form_key", "the-same-form"),
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
