//! The affiliate desk through the sidecar's router, on a real gateway (its
//! ledger in the data directory's sled), with a clock the test moves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use eagate_affiliates::calendar::format_instant;
use eagate_gateway::affiliates::AffiliateDesk;
use eagate_gateway::config::ServeConfig;
use eagate_gateway::http::tokens::{Scope, TokenStore, create_token};
use eagate_gateway::http::{AppState, router};
use eagate_gateway::server::Gateway;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

pub const DAY_MS: u64 = 86_400_000;
/// 2026-11-02T09:00:00Z.
pub const START_MS: u64 = 1_793_610_000_000;
pub const EMAIL: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub struct Desk {
    pub gateway: Gateway,
    pub app: axum::Router,
    pub admin: String,
    pub platform: String,
    pub clock: Arc<AtomicU64>,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

pub async fn desk_on(backend: &Backend) -> Desk {
    let (gateway, dir) = start_on(backend).await;
    desk_for(gateway, dir)
}

/// A desk on `backend` whose settings `change` changed from the tests'
/// own; returns the settings too.
pub async fn desk_on_with(
    backend: &Backend,
    change: impl FnOnce(&mut ServeConfig),
) -> (Desk, ServeConfig) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_on(backend, dir.path());
    change(&mut config);
    let gateway = Gateway::start(&config).await.unwrap();
    (desk_for(gateway, dir), config)
}

/// A desk on sled whose settings `change` changed from the tests' own.
pub async fn desk_with(change: impl FnOnce(&mut ServeConfig)) -> Desk {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    change(&mut config);
    let gateway = Gateway::start(&config).await.unwrap();
    desk_for(gateway, dir)
}

pub fn desk_for(gateway: Gateway, dir: tempfile::TempDir) -> Desk {
    let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
    let platform = create_token(dir.path(), Scope::Platform)
        .unwrap()
        .to_string();
    let clock = Arc::new(AtomicU64::new(START_MS));
    let app = app(&gateway, dir.path(), &clock);
    Desk {
        gateway,
        app,
        admin,
        platform,
        clock,
        dir,
    }
}

pub fn app(gateway: &Gateway, dir: &std::path::Path, clock: &Arc<AtomicU64>) -> axum::Router {
    router(AppState {
        core: gateway.core(),
        tokens: Arc::new(TokenStore::open(dir)),
        affiliates: clocked(gateway, clock),
        console: Default::default(),
    })
}

/// The gateway's affiliate desk, on the test's clock.
pub fn clocked(gateway: &Gateway, clock: &Arc<AtomicU64>) -> AffiliateDesk {
    let time = clock.clone();
    gateway
        .affiliates()
        .expect("serve runs the programme")
        .with_clock(Arc::new(move || time.load(Ordering::SeqCst)))
}

pub async fn desk() -> Desk {
    desk_on(&Backend::Sled).await
}

impl Desk {
    /// Stops the gateway and starts a new one on the same data directory
    /// (tests' settings), as a crash and restart would: the ledger is
    /// replayed from disk; the clock and tokens carry over.
    pub async fn restart(self) -> Desk {
        let Desk {
            gateway,
            app: old_app,
            clock,
            dir,
            admin,
            platform,
        } = self;
        drop(old_app);
        gateway.shutdown().await;
        let gateway = Gateway::start(&config(dir.path())).await.unwrap();
        let app = app(&gateway, dir.path(), &clock);
        Desk {
            gateway,
            app,
            admin,
            platform,
            clock,
            dir,
        }
    }

    /// Stops the whole gateway, runs `while_down` against a devices-only
    /// gateway on `config` (the sidecar is down: devices still report),
    /// stops that, and starts the whole gateway on `config` again. On sled,
    /// where devices and the sidecar are one process, `while_down` runs
    /// against a whole gateway, then it stops and starts again.
    pub async fn sidecar_down_while(
        self,
        config: &ServeConfig,
        while_down: impl AsyncFnOnce(&Gateway),
    ) -> Desk {
        let Desk {
            gateway,
            app: old_app,
            clock,
            dir,
            admin,
            platform,
        } = self;
        drop(old_app);
        gateway.shutdown().await;
        let role = if config.redis_url.is_some() {
            eagate_gateway::server::Role::Devices
        } else {
            eagate_gateway::server::Role::All
        };
        let devices = Gateway::start_as(config, role).await.unwrap();
        while_down(&devices).await;
        devices.shutdown().await;
        let gateway = Gateway::start(config).await.unwrap();
        let app = app(&gateway, dir.path(), &clock);
        Desk {
            gateway,
            app,
            admin,
            platform,
            clock,
            dir,
        }
    }

    /// The affiliate desk the router uses (on the test's clock).
    pub fn affiliates(&self) -> AffiliateDesk {
        clocked(&self.gateway, &self.clock)
    }

    pub fn advance_days(&self, days: u64) {
        self.clock.fetch_add(days * DAY_MS, Ordering::SeqCst);
    }

    /// The desk's clock `days` ago, as the platform writes a time.
    pub fn days_ago(&self, days: u64) -> String {
        format_instant(self.clock.load(Ordering::SeqCst) - days * DAY_MS)
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    /// The platform's events happen when they are reported, unless the
    /// test says when (`occurred_at`).
    pub async fn platform(&self, uri: &str, mut body: Value) -> Answer {
        const EVENTS: [&str; 4] = [
            "/v1/referrals",
            "/v1/payments",
            "/v1/refunds",
            "/v1/email-verifications",
        ];
        if EVENTS.contains(&uri) && body.get("occurred_at").is_none() {
            body["occurred_at"] = json!(self.days_ago(0));
        }
        let token = self.platform.clone();
        self.call("POST", uri, &token, Some(body)).await
    }

    pub async fn admin_post(&self, uri: &str, body: Value) -> Answer {
        let token = self.admin.clone();
        self.call("POST", uri, &token, Some(body)).await
    }

    pub async fn admin_get(&self, uri: &str) -> Answer {
        let token = self.admin.clone();
        self.call("GET", uri, &token, None).await
    }

    /// Enrols `user_id`; returns (affiliate id, code, token).
    pub async fn enrol(&self, user_id: &str) -> (String, String, String) {
        let answer = self
            .platform("/v1/affiliates", json!({"user_id": user_id}))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        let affiliate = &answer.body["affiliate"];
        (
            affiliate["affiliate_id"].as_str().unwrap().to_owned(),
            affiliate["code"].as_str().unwrap().to_owned(),
            answer.body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Follows a referral link from `ip`: the answer, whatever it is.
    pub async fn follow_link(&self, code: &str, ip: &str) -> Answer {
        let mut request = Request::builder()
            .uri(format!("/r/{code}"))
            .header(header::USER_AGENT, "Mozilla/5.0 (test)")
            .body(Body::empty())
            .unwrap();
        let peer: SocketAddr = format!("{ip}:50000").parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        self.send(request).await
    }

    /// Follows a referral link from `ip`; returns the click id.
    pub async fn click(&self, code: &str, ip: &str) -> String {
        let answer = self.follow_link(code, ip).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.text);
        let location = answer.headers[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let plain = code.replace('-', "");
        let prefix = format!("https://platform.example/signup?ref={plain}&click=");
        assert!(location.starts_with(&prefix), "{location}");
        location[prefix.len()..].to_owned()
    }

    pub async fn signup(&self, user_id: &str, code: &str, click_id: Option<&str>) -> Answer {
        self.signup_verified(user_id, code, click_id, false).await
    }

    pub async fn signup_verified(
        &self,
        user_id: &str,
        code: &str,
        click_id: Option<&str>,
        verified: bool,
    ) -> Answer {
        // Each user signs up from an address of their own (the
        // shared-address fraud check holds the fourth from one address).
        let host = user_id.bytes().map(u32::from).sum::<u32>() % 250 + 1;
        let mut body = json!({
            "user_id": user_id, "code": code, "source_address": format!("203.0.113.{host}"),
            "email_sha256": EMAIL, "email_verified": verified
        });
        if let Some(click_id) = click_id {
            body["click_id"] = json!(click_id);
        }
        self.platform("/v1/referrals", body).await
    }

    pub async fn pay(&self, payment_id: &str, user_id: &str, amount: i64, period: u32) -> Answer {
        self.platform(
            "/v1/payments",
            json!({"payment_id": payment_id, "user_id": user_id, "amount_minor": amount,
                   "currency": "GBP", "billing_period": period}),
        )
        .await
    }

    pub async fn refund(&self, refund_id: &str, payment_id: &str, amount: i64) -> Answer {
        self.platform(
            "/v1/refunds",
            json!({"refund_id": refund_id, "payment_id": payment_id, "amount_minor": amount, "currency": "GBP"}),
        )
        .await
    }

    pub async fn adjust(&self, affiliate_id: &str, id: &str, amount: i64, reason: &str) -> Answer {
        let token = self.admin.clone();
        self.call(
            "POST",
            &format!("/v1/affiliates/{affiliate_id}/adjustments"),
            &token,
            Some(json!({"adjustment_id": id, "amount_minor": amount, "reason": reason})),
        )
        .await
    }

    pub async fn payout(&self, affiliate_id: &str, payout_id: &str) -> Answer {
        let token = self.admin.clone();
        self.call(
            "POST",
            &format!("/v1/affiliates/{affiliate_id}/payouts"),
            &token,
            Some(json!({"payout_id": payout_id})),
        )
        .await
    }

    pub async fn totals(&self, affiliate_id: &str) -> Value {
        let answer = self
            .admin_get(&format!("/v1/affiliates/{affiliate_id}/stats"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.body["totals"].clone()
    }

    pub async fn entries(&self, affiliate_id: &str) -> Vec<Value> {
        let answer = self
            .admin_get(&format!("/v1/affiliates/{affiliate_id}/commissions"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.body["items"].as_array().unwrap().clone()
    }
}

pub fn assert_problem(answer: &Answer, status: StatusCode, detail_contains: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_contains),
        "{detail:?} should mention {detail_contains:?}"
    );
}

/// Asserts the ledger identity and the five balances.
pub fn assert_balances(
    totals: &Value,
    earned: i64,
    pending: i64,
    payable: i64,
    paid: i64,
    reversed: i64,
) {
    let get = |k: &str| totals[k].as_i64().unwrap();
    assert_eq!(
        [
            get("earned_minor"),
            get("pending_minor"),
            get("payable_minor"),
            get("paid_minor"),
            get("reversed_minor")
        ],
        [earned, pending, payable, paid, reversed],
        "{totals}"
    );
    assert_ledger_adds_up(totals);
}

/// Asserts `earned = pending + held + payable + paying + paid + reversed`.
pub fn assert_ledger_adds_up(totals: &Value) {
    let get = |k: &str| totals[k].as_i64().unwrap();
    assert_eq!(
        get("earned_minor"),
        get("pending_minor")
            + get("held_minor")
            + get("payable_minor")
            + get("paying_minor")
            + get("paid_minor")
            + get("reversed_minor"),
        "{totals}"
    );
}
