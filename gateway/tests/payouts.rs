//! Payday: batches through the sidecar's router (manual provider, confirmed
//! or failed by an admin), the daily schedule, and the Stripe provider
//! against a local server that speaks the shape of Stripe's transfer API
//! (idempotent replays, refusals, lost answers), including a run stopped
//! at every step and restarted.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::desk::*;
use eagate_affiliates::Actor;
use eagate_affiliates::calendar::day_of;
use eagate_gateway::affiliates::AffiliateDesk;
use eagate_gateway::payouts::{
    PayoutRunner, PayoutSettings, RunError, RunStep, RunnerLease, Trigger,
};
use eagate_gateway::stripe::{SecretKey, StripeClient, TransferAnswer, TransferRequest};
use serde_json::{Value, json};

const SECRET: &str = "sk_test_eagate_payday_0123456789";

// ---- a server speaking the shape of Stripe's transfer API -----------------

/// What the fake does with the next transfer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers at once.
    Answer,
    /// Makes the transfer, then answers after the client stopped waiting.
    AnswerLate,
    /// Makes the transfer, then answers 500: the answer is lost.
    FailAfterMaking,
    /// Answers 500 without making anything.
    FailBeforeMaking,
}

#[derive(Debug, Default)]
struct FakeStripe {
    /// The platform's available balance, minor units.
    balance: i64,
    /// Connected accounts that exist.
    accounts: HashSet<String>,
    transfers: Vec<Value>,
    /// Answers by idempotency key: the same key gets the same answer.
    answers: HashMap<String, (u16, Value)>,
    posts: usize,
    replays: usize,
    lookups: usize,
    lookups_fail: bool,
    next: VecDeque<Behaviour>,
}

type Fake = Arc<Mutex<FakeStripe>>;

fn stripe_error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"type": "invalid_request_error", "code": code, "message": message}}),
    )
}

fn answer((status, body): (u16, Value)) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// `application/x-www-form-urlencoded`, decoded.
fn form(body: &str) -> HashMap<String, String> {
    let decode = |text: &str| {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn create_transfer(State(fake): State<Fake>, headers: HeaderMap, body: String) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {SECRET}"))
    {
        return answer(stripe_error(
            401,
            "invalid_api_key",
            "Invalid API Key provided",
        ));
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return answer(stripe_error(400, "missing_key", "this fake wants keys"));
    };
    let fields = form(&body);
    let (behaviour, made) = {
        let mut stripe = fake.lock().unwrap();
        stripe.posts += 1;
        let behaviour = stripe.next.pop_front().unwrap_or(Behaviour::Answer);
        if let Some(stored) = stripe.answers.get(&key).cloned() {
            stripe.replays += 1;
            return answer(stored);
        }
        if behaviour == Behaviour::FailBeforeMaking {
            return answer(stripe_error(500, "api_error", "something went wrong"));
        }
        let amount: i64 = fields["amount"].parse().unwrap();
        let destination = fields["destination"].clone();
        let made = if !stripe.accounts.contains(&destination) {
            stripe_error(
                400,
                "account_invalid",
                "The provided destination is not a connected account",
            )
        } else if amount > stripe.balance {
            stripe_error(
                400,
                "balance_insufficient",
                "You have insufficient available funds in your Stripe account",
            )
        } else {
            stripe.balance -= amount;
            let transfer = json!({
                "id": format!("tr_{}", stripe.transfers.len() + 1),
                "object": "transfer",
                "amount": amount,
                "currency": fields["currency"],
                "destination": destination,
                "transfer_group": fields["transfer_group"],
                "metadata": {"payout_id": fields["metadata[payout_id]"]},
            });
            stripe.transfers.push(transfer.clone());
            (200, transfer)
        };
        stripe.answers.insert(key, made.clone());
        (behaviour, made)
    };
    match behaviour {
        Behaviour::AnswerLate => {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            answer(made)
        }
        Behaviour::FailAfterMaking => {
            answer(stripe_error(500, "api_error", "something went wrong"))
        }
        _ => answer(made),
    }
}

async fn list_transfers(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut stripe = fake.lock().unwrap();
    stripe.lookups += 1;
    if stripe.lookups_fail {
        return answer(stripe_error(500, "api_error", "lookups are down"));
    }
    let data: Vec<Value> = stripe
        .transfers
        .iter()
        .filter(|t| {
            query
                .get("transfer_group")
                .is_none_or(|g| t["transfer_group"] == *g)
        })
        .cloned()
        .collect();
    answer((
        200,
        json!({"object": "list", "data": data, "has_more": false}),
    ))
}

/// Starts the fake on loopback; returns its base URL.
async fn start_stripe(balance: i64, accounts: &[&str]) -> (String, Fake) {
    let fake: Fake = Arc::new(Mutex::new(FakeStripe {
        balance,
        accounts: accounts.iter().map(|a| (*a).to_owned()).collect(),
        ..FakeStripe::default()
    }));
    let app = Router::new()
        .route("/v1/transfers", post(create_transfer).get(list_transfers))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, fake)
}

// ---- the desk's side -----------------------------------------------------

/// Enrols `name`, signs up a customer of theirs and takes a first-month
/// payment (30% of it is the commission); returns the affiliate id.
async fn affiliate_owed(desk: &Desk, name: &str, payment: i64) -> String {
    let (affiliate, code, _) = desk.enrol(name).await;
    let customer = format!("{name}-customer");
    let signed = desk.signup(&customer, &code, None).await;
    assert_eq!(signed.status, StatusCode::CREATED, "{}", signed.text);
    let paid = desk
        .pay(&format!("{name}-payment"), &customer, payment, 1)
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    affiliate
}

async fn set_account(desk: &Desk, affiliate: &str, account: &str) -> Answer {
    let token = desk.admin.clone();
    desk.call(
        "PUT",
        &format!("/v1/affiliates/{affiliate}/payout-account"),
        &token,
        Some(json!({"stripe_account": account})),
    )
    .await
}

async fn run_by_hand(desk: &Desk) -> Answer {
    let token = desk.admin.clone();
    desk.call("POST", "/v1/payout-batches", &token, None).await
}

async fn settle(desk: &Desk, payout_id: &str, body: Value) -> Answer {
    let token = desk.admin.clone();
    desk.call(
        "POST",
        &format!("/v1/payouts/{payout_id}/outcome"),
        &token,
        Some(body),
    )
    .await
}

fn get(totals: &Value, key: &str) -> i64 {
    totals[key].as_i64().unwrap()
}

/// [payable, paying, paid] of an affiliate.
async fn money(desk: &Desk, affiliate: &str) -> [i64; 3] {
    let totals = desk.totals(affiliate).await;
    assert_ledger_adds_up(&totals);
    [
        get(&totals, "payable_minor"),
        get(&totals, "paying_minor"),
        get(&totals, "paid_minor"),
    ]
}

/// The payouts of an affiliate, from the history.
async fn payouts_of(desk: &Desk, affiliate: &str) -> Vec<Value> {
    let answer = desk
        .admin_get(&format!("/v1/affiliates/{affiliate}/payouts"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.body["items"].as_array().unwrap().clone()
}

/// A runner paying through the fake at `base`, waiting `timeout_s` for
/// each answer.
fn stripe_runner(base: &str, timeout_s: u64) -> PayoutRunner {
    PayoutRunner::new(PayoutSettings::stripe(
        base,
        SecretKey::new(SECRET),
        Duration::from_secs(timeout_s),
    ))
}

fn stripe_desk(desk: &Desk, base: &str) -> AffiliateDesk {
    desk.affiliates().with_payouts(stripe_runner(base, 1))
}

fn today(desk: &Desk) -> i64 {
    day_of(desk.clock.load(Ordering::SeqCst))
}

// ---- manual provider -------------------------------------------------------

#[tokio::test]
async fn the_daily_batch_pays_exactly_the_minimum_and_a_penny_below_waits() {
    let desk = desk().await;
    let below = affiliate_owed(&desk, "alice", 33_330).await; // 30%: 9,999
    let exact = affiliate_owed(&desk, "zoe", 33_334).await; // 10,000.2: 10,000
    desk.advance_days(31);
    // 08:59 UTC on the day: not yet; the desk's clock starts at 09:00.
    desk.clock.fetch_sub(60_000, Ordering::SeqCst);
    let daily = desk
        .affiliates()
        .with_payouts(PayoutRunner::new(PayoutSettings {
            daily_at_minute: Some(9 * 60),
            ..PayoutSettings::manual()
        }));
    assert!(daily.run_daily_if_due().await.is_none());
    desk.clock.fetch_add(60_000, Ordering::SeqCst);
    let report = daily.run_daily_if_due().await.unwrap().unwrap();
    assert_eq!(report.batch_id.as_deref(), Some("pb_1"));
    // Once a day, however often the scheduler looks.
    assert!(daily.run_daily_if_due().await.is_none());

    let batch = desk.admin_get("/v1/payout-batches/pb_1").await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.text);
    assert_eq!(batch.body["provider"], "manual");
    assert_eq!(batch.body["scheduled_for"], "2026-12-03");
    let payouts = batch.body["payouts"].as_array().unwrap();
    assert_eq!(payouts.len(), 1, "{}", batch.text);
    assert_eq!(payouts[0]["affiliate_id"], exact);
    assert_eq!(payouts[0]["amount_minor"], 10_000);
    assert_eq!(payouts[0]["state"], "pending");
    let payout_id = payouts[0]["payout_id"].as_str().unwrap().to_owned();
    assert_eq!(money(&desk, &exact).await, [0, 10_000, 0]);
    assert_eq!(money(&desk, &below).await, [9_999, 0, 0]);

    // The sheet an admin pays from.
    let csv = desk.admin_get("/v1/payout-batches/pb_1?format=csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(
        lines[0],
        "batch_id,payout_id,affiliate_id,user_id,amount_minor,amount,currency,state,destination,reference,settled_at"
    );
    assert_eq!(
        lines[1],
        format!("pb_1,{payout_id},{exact},zoe,10000,100.00,GBP,pending,,,")
    );
    assert_eq!(lines.len(), 2);

    // Confirmed with the bank's reference; the same word again is a retry.
    let confirmed = settle(
        &desk,
        &payout_id,
        json!({"outcome": "paid", "reference": "BACS-0042"}),
    )
    .await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    let again = settle(
        &desk,
        &payout_id,
        json!({"outcome": "paid", "reference": "BACS-0042"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(money(&desk, &exact).await, [0, 0, 10_000]);
    let history = payouts_of(&desk, &exact).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["state"], "paid");
    assert_eq!(history[0]["reference"], "BACS-0042");
    assert_eq!(history[0]["batch_id"], "pb_1");
    let entries = desk.entries(&exact).await;
    assert!(entries.iter().all(|e| e["status"] == "paid"), "{entries:?}");

    // Nothing is paid twice: the next batch has nobody in it.
    let next = run_by_hand(&desk).await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
    assert_eq!(next.body["batch"]["batch_id"], "pb_2");
    assert_eq!(next.body["batch"]["payouts"], json!([]));
    // The audit trail names who confirmed it, and why.
    let audit = desk.admin_get("/v1/audit?kind=payout_paid").await;
    let items = audit.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", audit.text);
    assert!(items[0]["by"].as_str().unwrap().starts_with("token:"));
    assert_eq!(items[0]["why"], "confirmed paid");
}

#[tokio::test]
async fn a_failed_manual_payout_is_payable_again_and_the_next_batch_pays_it_once() {
    let desk = desk().await;
    let zoe = affiliate_owed(&desk, "zoe", 50_000).await; // 15,000
    desk.advance_days(31);
    let first = run_by_hand(&desk).await;
    let payout_id = first.body["batch"]["payouts"][0]["payout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // While it is unsettled, no other batch pays her again.
    let second = run_by_hand(&desk).await;
    assert_eq!(
        second.body["batch"]["payouts"],
        json!([]),
        "{}",
        second.text
    );
    assert_eq!(money(&desk, &zoe).await, [0, 15_000, 0]);

    let failed = settle(
        &desk,
        &payout_id,
        json!({"outcome": "failed", "reason": "account closed"}),
    )
    .await;
    assert_eq!(failed.status, StatusCode::CREATED, "{}", failed.text);
    assert_eq!(money(&desk, &zoe).await, [15_000, 0, 0]);
    assert_problem(
        &settle(
            &desk,
            &payout_id,
            json!({"outcome": "paid", "reference": "late"}),
        )
        .await,
        StatusCode::CONFLICT,
        "already failed",
    );
    assert_problem(
        &settle(
            &desk,
            "pb_9-af_nobody",
            json!({"outcome": "paid", "reference": "x"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no payout",
    );
    assert_problem(
        &settle(
            &desk,
            &payout_id,
            json!({"outcome": "paid", "reference": ""}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reference",
    );

    let third = run_by_hand(&desk).await;
    let retry = &third.body["batch"]["payouts"][0];
    assert_eq!(retry["amount_minor"], 15_000, "{}", third.text);
    let retry_id = retry["payout_id"].as_str().unwrap().to_owned();
    assert_ne!(retry_id, payout_id);
    settle(
        &desk,
        &retry_id,
        json!({"outcome": "paid", "reference": "BACS-7"}),
    )
    .await;
    assert_eq!(money(&desk, &zoe).await, [0, 0, 15_000]);
    let states: Vec<Value> = payouts_of(&desk, &zoe)
        .await
        .iter()
        .map(|p| p["state"].clone())
        .collect();
    assert_eq!(states, [json!("failed"), json!("paid")]);
}

#[tokio::test]
async fn an_affiliate_with_an_open_fraud_case_is_not_paid_until_it_is_decided() {
    let desk = desk().await;
    let (alice, code, _) = desk.enrol("alice").await;
    // Four signups from one address: the fourth is held for review.
    for user in ["c1", "c2", "c3", "c4"] {
        desk.platform(
            "/v1/referrals",
            json!({"user_id": user, "code": code, "source_address": "198.51.100.9",
                   "email_sha256": EMAIL, "email_verified": true}),
        )
        .await;
        desk.pay(&format!("pay-{user}"), user, 20_000, 1).await; // 6,000 each
    }
    desk.advance_days(31);
    let held = run_by_hand(&desk).await;
    assert_eq!(held.body["batch"]["payouts"], json!([]), "{}", held.text);
    assert_eq!(money(&desk, &alice).await, [18_000, 0, 0]);

    let cases = desk.admin_get("/v1/fraud-cases?status=open").await;
    let case_id = cases.body["items"][0]["case_id"].as_u64().unwrap();
    let token = desk.admin.clone();
    let cleared = desk
        .call(
            "POST",
            &format!("/v1/fraud-cases/{case_id}/decision"),
            &token,
            Some(json!({"decision": "cleared", "reason": "a family at one address"})),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::CREATED, "{}", cleared.text);
    let paid = run_by_hand(&desk).await;
    assert_eq!(
        paid.body["batch"]["payouts"][0]["amount_minor"], 24_000,
        "{}",
        paid.text
    );
}

#[tokio::test]
async fn a_refund_of_a_commission_in_a_payout_is_clawed_back_from_the_next_one() {
    let desk = desk().await;
    let zoe = affiliate_owed(&desk, "zoe", 50_000).await; // 15,000
    desk.advance_days(31);
    let batch = run_by_hand(&desk).await;
    let payout_id = batch.body["batch"]["payouts"][0]["payout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The money may be on its way: the refund cannot take it back from the
    // payout, so it is a clawback, netted later.
    let refunded = desk.refund("r1", "zoe-payment", 10_000).await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.text);
    assert_eq!(refunded.body["facts"][1]["fact"], "clawback_entered");
    assert_eq!(money(&desk, &zoe).await, [-3_000, 15_000, 0]);
    settle(
        &desk,
        &payout_id,
        json!({"outcome": "paid", "reference": "BACS-1"}),
    )
    .await;
    assert_eq!(money(&desk, &zoe).await, [-3_000, 0, 15_000]);
}

// ---- Stripe ----------------------------------------------------------------

#[tokio::test]
async fn stripe_pays_each_affiliate_once_and_a_refusal_returns_the_money_to_payable() {
    let desk = desk().await;
    let ok = affiliate_owed(&desk, "alice", 50_000).await; // 15,000
    let bad_account = affiliate_owed(&desk, "bob", 40_000).await; // 12,000
    let too_much = affiliate_owed(&desk, "carol", 100_000).await; // 30,000
    let no_account = affiliate_owed(&desk, "dave", 40_000).await; // 12,000
    for (affiliate, account) in [
        (&ok, "acct_alice"),
        (&bad_account, "acct_closed"),
        (&too_much, "acct_carol"),
    ] {
        let set = set_account(&desk, affiliate, account).await;
        assert_eq!(set.status, StatusCode::CREATED, "{}", set.text);
    }
    assert_problem(
        &set_account(&desk, &no_account, "bank-1234").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "acct_",
    );
    desk.advance_days(31);
    let (base, fake) = start_stripe(20_000, &["acct_alice", "acct_carol"]).await;
    let runner = stripe_desk(&desk, &base);
    let report = runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(report.batch_id.as_deref(), Some("pb_1"));

    let batch = desk.admin_get("/v1/payout-batches/pb_1").await;
    let by_affiliate: HashMap<String, Value> = batch.body["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["affiliate_id"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    // Without an account there is nothing to pay into.
    assert_eq!(by_affiliate.len(), 3, "{}", batch.text);
    assert!(!by_affiliate.contains_key(&no_account));
    assert_eq!(by_affiliate[&ok]["state"], "paid");
    assert_eq!(by_affiliate[&ok]["reference"], "tr_1");
    assert_eq!(by_affiliate[&ok]["destination"], "acct_alice");
    assert_eq!(by_affiliate[&bad_account]["state"], "failed");
    assert!(
        by_affiliate[&bad_account]["detail"]
            .as_str()
            .unwrap()
            .contains("account_invalid")
    );
    assert_eq!(by_affiliate[&too_much]["state"], "failed");
    assert!(
        by_affiliate[&too_much]["detail"]
            .as_str()
            .unwrap()
            .contains("balance_insufficient")
    );
    assert_eq!(money(&desk, &ok).await, [0, 0, 15_000]);
    assert_eq!(money(&desk, &bad_account).await, [12_000, 0, 0]);
    assert_eq!(money(&desk, &too_much).await, [30_000, 0, 0]);
    {
        let stripe = fake.lock().unwrap();
        assert_eq!(stripe.transfers.len(), 1);
        assert_eq!(stripe.transfers[0]["amount"], 15_000);
        assert_eq!(stripe.transfers[0]["currency"], "gbp");
        assert_eq!(
            stripe.transfers[0]["metadata"]["payout_id"],
            "pb_1-".to_owned() + &ok
        );
    }

    // The admin fixes the account and tops up the balance: the next run
    // pays those two, once, and alice nothing more.
    set_account(&desk, &bad_account, "acct_bob").await;
    {
        let mut stripe = fake.lock().unwrap();
        stripe.accounts.insert("acct_bob".into());
        stripe.balance += 100_000;
    }
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(money(&desk, &bad_account).await, [0, 0, 12_000]);
    assert_eq!(money(&desk, &too_much).await, [0, 0, 30_000]);
    assert_eq!(money(&desk, &ok).await, [0, 0, 15_000]);
    let stripe = fake.lock().unwrap();
    let paid_to: Vec<&str> = stripe
        .transfers
        .iter()
        .map(|t| t["destination"].as_str().unwrap())
        .collect();
    assert_eq!(paid_to, ["acct_alice", "acct_bob", "acct_carol"]);
}

#[tokio::test]
async fn a_lost_answer_is_reconciled_by_idempotency_key_and_never_sent_blind() {
    let desk = desk().await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await; // 15,000
    set_account(&desk, &alice, "acct_alice").await;
    desk.advance_days(31);
    let (base, fake) = start_stripe(1_000_000, &["acct_alice"]).await;
    let runner = stripe_desk(&desk, &base);
    // Stripe makes the transfer but the answer comes after the timeout.
    fake.lock().unwrap().next.push_back(Behaviour::AnswerLate);
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    let history = payouts_of(&desk, &alice).await;
    assert_eq!(history[0]["state"], "needs_reconciliation", "{history:?}");
    assert_eq!(money(&desk, &alice).await, [0, 15_000, 0]);
    // The next run asks Stripe first; while the question goes unanswered,
    // nothing is sent.
    fake.lock().unwrap().lookups_fail = true;
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    {
        let stripe = fake.lock().unwrap();
        // Asked, got no answer, sent nothing.
        assert_eq!((stripe.posts, stripe.lookups), (1, 1));
    }
    assert_eq!(
        payouts_of(&desk, &alice).await[0]["state"],
        "needs_reconciliation"
    );
    fake.lock().unwrap().lookups_fail = false;
    let report = runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(report.resumed, ["pb_1-".to_owned() + &alice]);
    let history = payouts_of(&desk, &alice).await;
    assert_eq!(history[0]["state"], "paid");
    assert_eq!(history[0]["reference"], "tr_1");
    assert_eq!(money(&desk, &alice).await, [0, 0, 15_000]);
    let stripe = fake.lock().unwrap();
    assert_eq!(
        stripe.posts, 1,
        "reconciliation found the transfer: no second request"
    );
    assert_eq!(stripe.transfers.len(), 1);
}

#[tokio::test]
async fn a_server_error_is_reconciled_and_resent_under_the_same_key() {
    let desk = desk().await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await;
    let bob = affiliate_owed(&desk, "bob", 40_000).await;
    set_account(&desk, &alice, "acct_alice").await;
    set_account(&desk, &bob, "acct_bob").await;
    desk.advance_days(31);
    let (base, fake) = start_stripe(1_000_000, &["acct_alice", "acct_bob"]).await;
    let runner = stripe_desk(&desk, &base);
    // alice: 500 before anything was made; bob: made, then a 500.
    fake.lock()
        .unwrap()
        .next
        .extend([Behaviour::FailBeforeMaking, Behaviour::FailAfterMaking]);
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(
        payouts_of(&desk, &alice).await[0]["state"],
        "needs_reconciliation"
    );
    assert_eq!(
        payouts_of(&desk, &bob).await[0]["state"],
        "needs_reconciliation"
    );
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(money(&desk, &alice).await, [0, 0, 15_000]);
    assert_eq!(money(&desk, &bob).await, [0, 0, 12_000]);
    let stripe = fake.lock().unwrap();
    // alice's was sent again (nothing was found under its key), bob's was
    // found and not sent again.
    assert_eq!(stripe.posts, 3);
    assert_eq!(stripe.transfers.len(), 2);
}

#[tokio::test]
async fn the_same_idempotency_key_gets_the_same_transfer_from_stripe() {
    let (base, fake) = start_stripe(100_000, &["acct_alice"]).await;
    let client = StripeClient::new(&base, SecretKey::new(SECRET), Duration::from_secs(2));
    let request = TransferRequest {
        amount_minor: 1_234,
        currency: "GBP".into(),
        destination: "acct_alice".into(),
        payout_id: "pb_1-af_alice".into(),
    };
    let (first, second) =
        tokio::task::spawn_blocking(move || (client.transfer(&request), client.transfer(&request)))
            .await
            .unwrap();
    let TransferAnswer::Made(made) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(made.amount, 1_234);
    assert_eq!(first, second);
    let stripe = fake.lock().unwrap();
    assert_eq!((stripe.transfers.len(), stripe.replays), (1, 1));
    // A wrong key is refused, and says why without showing the key.
    let wrong = StripeClient::new(&base, SecretKey::new("sk_wrong"), Duration::from_secs(2));
    assert!(!format!("{wrong:?}").contains("sk_wrong"));
}

/// Stops the run the `nth` time (0-based) it reaches `step`.
fn stop_at(step: RunStep, nth: usize) -> eagate_gateway::payouts::StopAt {
    let seen = Arc::new(AtomicUsize::new(0));
    Arc::new(move |reached, _| reached == step && seen.fetch_add(1, Ordering::SeqCst) == nth)
}

#[tokio::test]
async fn a_run_stopped_at_every_step_and_restarted_pays_each_affiliate_exactly_once() {
    let cases = [
        (RunStep::BatchOpened, 0),
        (RunStep::Submitted, 0),
        (RunStep::Submitted, 1),
        (RunStep::Answered, 0),
        (RunStep::Answered, 1),
        (RunStep::Recorded, 0),
        (RunStep::Recorded, 1),
    ];
    for (step, nth) in cases {
        let desk = desk().await;
        let alice = affiliate_owed(&desk, "alice", 50_000).await; // 15,000
        let bob = affiliate_owed(&desk, "bob", 40_000).await; // 12,000
        set_account(&desk, &alice, "acct_alice").await;
        set_account(&desk, &bob, "acct_bob").await;
        desk.advance_days(31);
        let day = today(&desk);
        let (base, fake) = start_stripe(1_000_000, &["acct_alice", "acct_bob"]).await;
        let crashing = desk
            .affiliates()
            .with_payouts(stripe_runner(&base, 1).stopping_at(stop_at(step, nth)));
        let stopped = crashing
            .run_payouts(Trigger::Daily(day), &Actor::system())
            .await;
        assert!(
            matches!(stopped, Err(RunError::Stopped(s)) if s == step),
            "{step:?} {nth}: {stopped:?}"
        );
        drop(crashing);

        // The process dies; a new one opens the ledger from disk.
        let desk = desk.restart().await;
        let runner = stripe_desk(&desk, &base);
        let report = runner
            .run_payouts(Trigger::Daily(day), &Actor::system())
            .await
            .unwrap();
        assert_eq!(
            report.batch_id, None,
            "{step:?} {nth}: the day had its batch"
        );
        // And once more, for good measure: nothing left to do.
        runner
            .run_payouts(Trigger::Daily(day), &Actor::system())
            .await
            .unwrap();

        let mut paid: Vec<(String, i64)> = fake
            .lock()
            .unwrap()
            .transfers
            .iter()
            .map(|t| {
                (
                    t["destination"].as_str().unwrap().to_owned(),
                    t["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        paid.sort();
        assert_eq!(
            paid,
            [
                ("acct_alice".to_owned(), 15_000),
                ("acct_bob".to_owned(), 12_000)
            ],
            "{step:?} {nth}"
        );
        for (affiliate, owed) in [(&alice, 15_000), (&bob, 12_000)] {
            assert_eq!(
                money(&desk, affiliate).await,
                [0, 0, owed],
                "{step:?} {nth}"
            );
            let history = payouts_of(&desk, affiliate).await;
            assert_eq!(history.len(), 1, "{step:?} {nth}: {history:?}");
            assert_eq!(history[0]["state"], "paid");
        }
    }
}

#[tokio::test]
async fn one_payout_run_at_a_time_in_a_process_and_across_sidecars_sharing_a_redis() {
    let (base, fake) = start_stripe(1_000_000, &["acct_alice", "acct_bob"]).await;
    let stripe_base = base.clone();
    let desk = desk_with(move |config| {
        config.payout_provider = "stripe".into();
        config.stripe_api_base = stripe_base;
        config.stripe_timeout_secs = 1;
        config.stripe_secret_key = Some(SecretKey::new(SECRET));
    })
    .await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await;
    set_account(&desk, &alice, "acct_alice").await;
    desk.advance_days(31);
    fake.lock().unwrap().next.push_back(Behaviour::AnswerLate);

    // In one process the scheduler and `eagate payouts run` share one
    // runner: while it runs, a hand run is refused.
    let runner = desk.affiliates();
    let first =
        tokio::spawn(async move { runner.run_payouts(Trigger::ByHand, &Actor::system()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_problem(
        &run_by_hand(&desk).await,
        StatusCode::CONFLICT,
        "already in progress",
    );
    first.await.unwrap().unwrap();
    // Its answer came too late: the next hand run reconciles it.
    let resumed = run_by_hand(&desk).await;
    assert_eq!(resumed.status, StatusCode::CREATED, "{}", resumed.text);
    assert_eq!(
        resumed.body["resumed"],
        json!(["pb_1-".to_owned() + &alice])
    );
    assert_eq!(money(&desk, &alice).await, [0, 0, 15_000]);

    // Two sidecars (two runners, each with a lock of its own) sharing a
    // Redis take turns through the lease.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("payouts-{}-{nanos}", std::process::id());
    let redis = eagate_gateway::store::redis::RedisConnection::Single(
        eagate_gateway::store::redis::AtHome::here(
            redis::Client::open(eagate_tests::redis_url())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap(),
        ),
    );
    let leased = |desk: &Desk| {
        desk.affiliates().with_payouts(
            stripe_runner(&base, 1).with_lease(RunnerLease::new(redis.clone(), &prefix)),
        )
    };
    let (one, two) = (leased(&desk), leased(&desk));
    let bob = affiliate_owed(&desk, "bob", 40_000).await;
    set_account(&desk, &bob, "acct_bob").await;
    desk.advance_days(31);
    fake.lock().unwrap().next.push_back(Behaviour::AnswerLate);
    let first =
        tokio::spawn(async move { one.run_payouts(Trigger::ByHand, &Actor::system()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = two.run_payouts(Trigger::ByHand, &Actor::system()).await;
    assert!(matches!(busy, Err(RunError::Busy)), "{busy:?}");
    first.await.unwrap().unwrap();
    // The lease is given back: the other takes its turn (and reconciles
    // bob's late answer).
    two.run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    assert_eq!(money(&desk, &bob).await, [0, 0, 12_000]);
    assert_eq!(fake.lock().unwrap().transfers.len(), 2);
}

// ---- what an admin may do while Stripe has a payout -------------------------

#[tokio::test]
async fn an_admin_cannot_fail_a_payout_stripe_may_have_made_so_it_is_paid_once() {
    let desk = desk().await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await; // 15,000
    set_account(&desk, &alice, "acct_alice").await;
    desk.advance_days(31);
    let (base, fake) = start_stripe(1_000_000, &["acct_alice"]).await;
    let runner = desk.affiliates().with_payouts(stripe_runner(&base, 5));
    // A 500 before anything was made: left to reconcile.
    fake.lock()
        .unwrap()
        .next
        .push_back(Behaviour::FailBeforeMaking);
    runner
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    let payout_id = format!("pb_1-{alice}");
    assert_eq!(
        payouts_of(&desk, &alice).await[0]["state"],
        "needs_reconciliation"
    );
    // The next run reconciles: nothing under the key, so it sends again
    // under the same key; Stripe makes the transfer and answers in 1.5 s.
    fake.lock().unwrap().next.push_back(Behaviour::AnswerLate);
    let reconciling = runner.clone();
    let run = tokio::spawn(async move {
        reconciling
            .run_payouts(Trigger::ByHand, &Actor::system())
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile an admin, seeing needs_reconciliation, tries to mark it
    // failed: refused, Stripe may be making it right now.
    let failed = settle(
        &desk,
        &payout_id,
        json!({"outcome": "failed", "reason": "not in the Stripe dashboard"}),
    )
    .await;
    assert_problem(
        &failed,
        StatusCode::CONFLICT,
        "only the run's reconciliation",
    );
    let reconciled = run.await.unwrap();
    // The next run pays the "failed" commissions again, under a new key.
    let next = runner.run_payouts(Trigger::ByHand, &Actor::system()).await;
    let transfers: Vec<(String, i64)> = fake
        .lock()
        .unwrap()
        .transfers
        .iter()
        .map(|t| {
            (
                t["transfer_group"].as_str().unwrap().to_owned(),
                t["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transfers.len(),
        1,
        "alice owed 15,000 once; Stripe made {transfers:?}; the reconciling run said {reconciled:?}, the next {next:?}"
    );
}

#[tokio::test]
async fn a_payout_not_yet_sent_is_failed_when_the_account_changes_and_the_next_batch_pays_the_new_one()
 {
    let desk = desk().await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await; // 15,000
    set_account(&desk, &alice, "acct_typo").await;
    desk.advance_days(31);
    let (base, fake) = start_stripe(1_000_000, &["acct_alice", "acct_typo"]).await;
    // The run stops (a crash) once the batch is open, before anything is sent.
    let crashing = desk
        .affiliates()
        .with_payouts(stripe_runner(&base, 1).stopping_at(stop_at(RunStep::BatchOpened, 0)));
    let stopped = crashing
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await;
    assert!(matches!(stopped, Err(RunError::Stopped(_))), "{stopped:?}");
    // The admin corrects the account before anything was sent.
    let set = set_account(&desk, &alice, "acct_alice").await;
    assert_eq!(set.status, StatusCode::CREATED, "{}", set.text);
    stripe_desk(&desk, &base)
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await
        .unwrap();
    let paid_to: Vec<String> = fake
        .lock()
        .unwrap()
        .transfers
        .iter()
        .map(|t| t["destination"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paid_to,
        ["acct_alice"],
        "sent after the account was replaced"
    );
    let states: Vec<Value> = payouts_of(&desk, &alice)
        .await
        .iter()
        .map(|p| p["state"].clone())
        .collect();
    assert_eq!(states, [json!("failed"), json!("paid")]);
    assert_eq!(money(&desk, &alice).await, [0, 0, 15_000]);
}

#[tokio::test]
async fn a_stripe_payout_left_without_a_key_holds_up_no_one_else_and_may_be_failed_by_hand() {
    let desk = desk().await;
    let alice = affiliate_owed(&desk, "alice", 50_000).await;
    let bob = affiliate_owed(&desk, "bob", 50_000).await;
    set_account(&desk, &alice, "acct_alice").await;
    desk.advance_days(31);
    let (base, _fake) = start_stripe(1_000_000, &["acct_alice"]).await;
    let crashing = desk
        .affiliates()
        .with_payouts(stripe_runner(&base, 1).stopping_at(stop_at(RunStep::BatchOpened, 0)));
    let _ = crashing
        .run_payouts(Trigger::ByHand, &Actor::system())
        .await;
    // Switched to manual (no Stripe key): alice's pending Stripe payout can
    // be neither sent, nor settled by hand, and no manual batch opens for bob.
    let run = run_by_hand(&desk).await;
    let by_hand = settle(
        &desk,
        &format!("pb_1-{alice}"),
        json!({"outcome": "failed", "reason": "switching to manual"}),
    )
    .await;
    assert_eq!(
        (run.status, by_hand.status, money(&desk, &bob).await),
        (StatusCode::CREATED, StatusCode::CREATED, [0, 15_000, 0]),
        "run: {} / settle: {}",
        run.text,
        by_hand.text
    );
}
