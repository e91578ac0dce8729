//! The admin console in a real browser (headless Chromium over WebDriver)
//! against a real `eagate serve` and a real device client: what an admin on
//! call sees and does. Screenshots of the main pages, at desktop and phone
//! widths, are kept in `target/screenshots/` as the tests' artefacts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eagate_tests::browser::{Browser, DESKTOP, PHONE};
use eagate_tests::process::{Bot, Gateway};

const BOT: &str = env!("CARGO_BIN_EXE_test-bot");
const SOON: Duration = Duration::from_secs(20);

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

/// Signs in to the console of `gateway` with its admin token.
fn sign_in(browser: &Browser, gateway: &Gateway) {
    browser.open(&format!("{}/console/sign-in", gateway.api));
    browser.type_into("#token", gateway.admin_token());
    browser.click("button[type=submit]");
    assert!(
        browser.url().ends_with("/console/devices"),
        "signed in: {}",
        browser.url()
    );
}

/// A device client (the SDK, in `test-bot`) of `device`, connected.
fn connected_bot(gateway: &Gateway, device: &(String, String), state: &Path) -> Bot {
    let mut bot = Bot::start(
        BOT.as_ref(),
        &gateway.quic,
        &gateway.fingerprint,
        device,
        state,
    );
    bot.lines.expect("connected", SOON);
    bot
}

#[test]
fn an_admin_sees_a_device_come_online_revokes_it_there_and_its_session_ends() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, secret) = gateway.register("gold");
    gateway.register("silver");
    let browser = Browser::start(DESKTOP);
    sign_in(&browser, &gateway);
    let row = format!("tr[data-device='{id}']");
    assert!(browser.text_of(&row).contains("○ Offline"));

    let mut bot = connected_bot(&gateway, &(id.clone(), secret), state.path());
    browser.reload_until(SOON, |_| browser.text_of(&row).contains("● Online"));
    browser.screenshot(&screenshots().join("console-devices-desktop.png"));
    browser.open(&format!("{}/console/health", gateway.api));
    assert_eq!(browser.text_of("dd[data-total=connections]"), "1");
    browser.screenshot(&screenshots().join("console-health-desktop.png"));
    browser.open(&format!("{}/console/devices", gateway.api));
    browser.resize(PHONE);
    browser.screenshot(&screenshots().join("console-devices-phone.png"));
    browser.resize(DESKTOP);

    browser.click(&format!("{row} a"));
    assert!(browser.url().ends_with(&format!("/console/devices/{id}")));
    browser.click("a.button.danger");
    assert!(
        browser.text().contains("Revoke bot 1?"),
        "{}",
        browser.text()
    );
    browser.screenshot(&screenshots().join("console-revoke-desktop.png"));
    browser.click("button.danger");
    assert!(browser.text().contains("✕ Revoked"), "{}", browser.text());
    // The device's live session ended at once.
    bot.lines.expect("stopped Revoked", SOON);
    assert_eq!(bot.wait_exit(SOON), Some(3));
}

#[test]
fn a_form_without_its_csrf_token_is_refused_in_the_browser_and_signing_out_ends_the_session() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, _) = gateway.register("gold");
    let browser = Browser::start(DESKTOP);
    sign_in(&browser, &gateway);

    // A revoke form with its token taken out (as a page of another site
    // would post it): refused, the device untouched.
    browser.open(&format!("{}/console/devices/{id}/revoke", gateway.api));
    browser.run_script(
        "document.querySelectorAll('main input[name=csrf]').forEach(function (e) { e.remove(); });",
    );
    browser.click("button.danger");
    assert!(
        browser
            .text()
            .contains("did not come from a page of this console"),
        "{}",
        browser.text()
    );
    browser.open(&format!("{}/console/devices/{id}", gateway.api));
    assert!(browser.text().contains("○ Offline"), "not revoked");

    // Signed out, the console's pages send the browser to sign in again.
    browser.click("header button[type=submit]");
    assert!(browser.url().ends_with("/console/sign-in"));
    browser.open(&format!("{}/console/devices", gateway.api));
    assert!(
        browser.url().ends_with("/console/sign-in"),
        "{}",
        browser.url()
    );
    browser.resize(PHONE);
    browser.screenshot(&screenshots().join("console-sign-in-phone.png"));
}

#[test]
fn a_signal_published_from_the_form_shows_its_executions_filling_in_as_the_device_reports() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let mut bot = connected_bot(&gateway, &device, state.path());
    let browser = Browser::start(DESKTOP);
    sign_in(&browser, &gateway);

    // The form refuses what the API refuses, and keeps what was typed.
    browser.open(&format!("{}/console/signals", gateway.api));
    browser.type_into("#channel", "gold");
    browser.type_into("#symbol", "XAUUSD");
    browser.type_into("#volume", "0.1.0");
    browser.click("form[action='/console/signals'] button[type=submit]");
    assert!(browser.has("p.notice.error"), "says what was wrong");
    assert_eq!(browser.value_of("#volume"), "0.1.0", "kept as typed");
    assert_eq!(browser.value_of("#channel"), "gold");
    browser.screenshot(&screenshots().join("console-publish-refused-desktop.png"));

    browser.type_into("#volume", "0.10");
    browser.type_into("#stop_loss", "2340.00");
    browser.click("form[action='/console/signals'] button[type=submit]");
    let url = browser.url();
    let signal_id = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(signal_id.len(), 32, "at the signal's page: {url}");
    let row = format!("tr[data-device='{}']", device.0);
    browser.reload_until(SOON, |_| browser.text_of(&row).contains("Delivered"));
    bot.lines.expect(&format!("signal {signal_id}"), SOON);

    bot.send(&format!("fill {signal_id} 7 2350.5 0.10"));
    let text = browser.reload_until(SOON, |_| browser.text_of(&row).contains("● Filled"));
    assert!(text.contains("filled 0.10 at 2350.5 (ticket 7)"), "{text}");
    browser.screenshot(&screenshots().join("console-signal-desktop.png"));
    assert_eq!(
        gateway.stored_reports(&signal_id, &device.0),
        vec![(1, "filled".to_owned())],
        "the fill stored once"
    );
}

/// `POST` of `body` to the gateway's API with `token`; the answer.
fn post_json(
    gateway: &Gateway,
    token: &str,
    uri: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let text = ureq::post(&format!("{}{uri}", gateway.api))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {uri}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn an_admin_clears_a_fraud_case_in_the_queue_and_sees_the_held_money_released() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let platform = platform_token(&gateway, data.path());
    let enrolled = post_json(
        &gateway,
        &platform,
        "/v1/affiliates",
        serde_json::json!({"user_id": "alice", "source_address": "198.51.100.20",
            "email_sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}),
    );
    let affiliate = enrolled["affiliate"]["affiliate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = enrolled["affiliate"]["code"].as_str().unwrap().to_owned();
    let occurred_at = now_rfc3339();
    // Four customers from one address: the fourth is held for review.
    for n in 1..=4 {
        post_json(
            &gateway,
            &platform,
            "/v1/referrals",
            serde_json::json!({"user_id": format!("c{n}"), "code": code,
                "source_address": "192.0.2.50", "email_verified": true, "occurred_at": occurred_at,
                "email_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}),
        );
        post_json(
            &gateway,
            &platform,
            "/v1/payments",
            serde_json::json!({"payment_id": format!("p{n}"), "user_id": format!("c{n}"),
                "amount_minor": 10_000, "currency": "GBP", "billing_period": 1,
                "occurred_at": occurred_at}),
        );
    }

    let browser = Browser::start(DESKTOP);
    sign_in(&browser, &gateway);
    browser.open(&format!("{}/console/affiliates", gateway.api));
    let row = format!("tr[data-affiliate='{affiliate}']");
    let held = browser.text_of(&format!("{row} td.held"));
    assert!(!held.starts_with("0.00"), "held before: {held}");
    assert!(browser.text_of(&row).contains("1 to review"));
    browser.click(&format!("{row} a"));
    assert!(
        browser.url().contains("/console/fraud"),
        "{}",
        browser.url()
    );
    assert!(browser.text().contains("192.0.2.50"), "the evidence");
    browser.screenshot(&screenshots().join("console-fraud-desktop.png"));
    browser.type_into("textarea[name=reason]", "a family, checked by phone");
    browser.click("button[value=cleared]");
    assert!(
        browser.text().contains("a family, checked by phone"),
        "{}",
        browser.text()
    );

    browser.open(&format!("{}/console/affiliates", gateway.api));
    let released = browser.text_of(&format!("{row} td.held"));
    assert!(released.starts_with("0.00"), "released: {released}");
    assert!(browser.text_of(&row).contains("none"), "no case open");
    browser.screenshot(&screenshots().join("console-affiliates-desktop.png"));
}

/// An instant of now as the API reads it.
fn now_rfc3339() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    eagate_affiliates::calendar::format_instant(now_ms)
}

#[test]
fn an_affiliates_chart_shows_a_new_commission_and_no_other_affiliates_or_admin_page_opens() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let platform = platform_token(&gateway, data.path());
    let enrol = |user: &str, email: &str| {
        let enrolled = post_json(
            &gateway,
            &platform,
            "/v1/affiliates",
            serde_json::json!({"user_id": user, "source_address": "198.51.100.20", "email_sha256": email}),
        );
        (
            enrolled["affiliate"]["affiliate_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            enrolled["affiliate"]["code"].as_str().unwrap().to_owned(),
            enrolled["token"].as_str().unwrap().to_owned(),
        )
    };
    let (alice, code, token) = enrol(
        "alice",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    );
    let (bob, _, _) = enrol(
        "bob",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    );
    post_json(
        &gateway,
        &platform,
        "/v1/referrals",
        serde_json::json!({"user_id": "c1", "code": code, "source_address": "192.0.2.7",
            "email_verified": true, "occurred_at": now_rfc3339(),
            "email_sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}),
    );

    let browser = Browser::start(DESKTOP);
    browser.open(&format!("{}/console/sign-in", gateway.api));
    browser.type_into("#token", &token);
    browser.click("button[type=submit]");
    assert!(
        browser.url().ends_with(&format!("/console/portal/{alice}")),
        "{}",
        browser.url()
    );
    assert_eq!(browser.text_of("#code"), code);
    assert_eq!(browser.text_of("dd[data-total=signups]"), "1");
    assert!(browser.text_of("dd[data-total=earned]").starts_with("0.00"));
    let today = &now_rfc3339()[..10];
    let bar = format!("rect[data-period='{today}']");
    assert_eq!(browser.attribute_of(&bar, "height").as_deref(), Some("0"));

    // The customer pays: a commission, on today's bar and in the totals.
    post_json(
        &gateway,
        &platform,
        "/v1/payments",
        serde_json::json!({"payment_id": "p1", "user_id": "c1", "amount_minor": 10_000,
            "currency": "GBP", "billing_period": 1, "occurred_at": now_rfc3339()}),
    );
    browser.reload();
    let earned = browser.text_of("dd[data-total=earned]");
    assert!(!earned.starts_with("0.00"), "{earned}");
    let height: i64 = browser
        .attribute_of(&bar, "height")
        .unwrap()
        .parse()
        .unwrap();
    assert!(height > 0, "today's bar rose");
    browser.screenshot(&screenshots().join("portal-desktop.png"));
    browser.resize(PHONE);
    browser.screenshot(&screenshots().join("portal-phone.png"));
    browser.resize(DESKTOP);

    // Bob's page and the admins' pages stay shut to Alice.
    for page in [
        format!("/console/portal/{bob}"),
        "/console/devices".to_owned(),
        "/console/affiliates".to_owned(),
    ] {
        browser.open(&format!("{}{page}", gateway.api));
        assert!(
            browser.text().contains("Not yours to see"),
            "{page}: {}",
            browser.text()
        );
    }
}

/// A platform token for `gateway`, made with its CLI.
fn platform_token(gateway: &Gateway, data_dir: &Path) -> String {
    gateway
        .eagate_ok(&[
            "token",
            "create",
            "--scope",
            "platform",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .trim()
        .to_owned()
}

/// Every console page works with JavaScript off: the pages are plain
/// forms and links; only the copy buttons need it, and without it they
/// stay hidden with the text there to select.
#[test]
fn every_console_page_works_with_javascript_off_and_the_copy_button_stays_hidden() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, _) = gateway.register("gold");
    let browser = Browser::start_with(DESKTOP, false);
    sign_in(&browser, &gateway);
    for (page, says) in [
        ("/console/devices", "Devices"),
        ("/console/signals", "Publish a signal"),
        ("/console/affiliates", "Affiliates"),
        ("/console/fraud", "Fraud review"),
        ("/console/payouts", "Payout batches"),
        ("/console/audit", "Audit log"),
        ("/console/health", "Gateway health"),
    ] {
        browser.open(&format!("{}{page}", gateway.api));
        assert!(browser.text().contains(says), "{page}: {}", browser.text());
    }
    // A form round trip: publish, then a device's new secret.
    browser.open(&format!("{}/console/signals", gateway.api));
    browser.type_into("#channel", "gold");
    browser.type_into("#symbol", "XAUUSD");
    browser.type_into("#volume", "0.10");
    browser.click("form[action='/console/signals'] button[type=submit]");
    assert!(browser.text().contains("Signal "), "{}", browser.text());
    browser.open(&format!(
        "{}/console/devices/{id}/rotate-secret",
        gateway.api
    ));
    browser.click("main button[type=submit]");
    assert!(browser.text_of("#secret").starts_with("egs_"));
    assert_eq!(
        browser
            .attribute_of("button[data-copy]", "hidden")
            .as_deref(),
        Some("true"),
        "no script, no copy button"
    );
}
