//! The affiliate programme through the sidecar's router, on a real gateway
//! (its ledger in the data directory's sled), with a clock the test moves.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::desk::*;
use common::*;
use eagate_affiliates::calendar::format_instant;
use eagate_gateway::registry::DeviceRecord;
use eagate_gateway::reports::{Ingested, StoredReport};
use eagate_protocol::{Decimal, Fill, Report, ReportOutcome, Reversal, SignalId};
use serde_json::{Value, json};

#[tokio::test]
async fn a_shared_link_a_tracked_signup_and_two_months_earn_30_then_15_percent() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    let shown = desk.admin_get(&format!("/v1/affiliates/{affiliate}")).await;
    assert_eq!(shown.body["currency"], "GBP");
    assert_eq!(
        shown.body["link"],
        format!("https://partners.example/r/{}", code.replace('-', ""))
    );

    let click = desk.click(&code, "198.51.100.7").await;
    desk.advance_days(2);
    let signup = desk.signup("bob", &code, Some(&click)).await;
    assert_eq!(signup.status, StatusCode::CREATED, "{}", signup.text);
    assert_eq!(
        signup.body["facts"][0]["referrer"]["affiliate_id"],
        affiliate
    );

    // Month one: 30% of GBP 29.99 = 8.997, rounded half up to 9.00.
    let month1 = desk.pay("pay-1", "bob", 2_999, 1).await;
    assert_eq!(month1.status, StatusCode::CREATED, "{}", month1.text);
    let commission = &month1.body["facts"][1];
    assert_eq!(commission["fact"], "commission_earned");
    assert_eq!(commission["amount_minor"], 900);
    assert_eq!(commission["rate"], 3_000);

    // Month two: 15% of GBP 29.99 = 4.4985 → 4.50.
    desk.advance_days(30);
    let month2 = desk.pay("pay-2", "bob", 2_999, 2).await;
    assert_eq!(month2.body["facts"][1]["amount_minor"], 450);

    // Month one's commission has served its 30-day hold; month two's has not.
    let totals = desk.totals(&affiliate).await;
    assert_eq!(totals["clicks"], 1);
    assert_eq!(totals["signups"], 1);
    assert_eq!(totals["conversions"], 1);
    assert_eq!(totals["conversion_rate_bps"], 10_000);
    assert_balances(&totals, 1_350, 450, 900, 0, 0);
    let statuses: Vec<_> = desk
        .entries(&affiliate)
        .await
        .iter()
        .map(|e| {
            (
                e["kind"].clone(),
                e["billing_period"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (json!("subscription"), json!(1), json!("payable")),
            (json!("subscription"), json!(2), json!("pending")),
        ]
    );

    // Per month: the click and signup in November, earnings by the month earned.
    let stats = desk
        .admin_get(&format!(
            "/v1/affiliates/{affiliate}/stats?granularity=month&from=2026-11-01&to=2026-12-31"
        ))
        .await;
    let periods = stats.body["periods"].as_array().unwrap();
    assert_eq!(periods.len(), 2);
    assert_eq!(periods[0]["period"], "2026-11");
    assert_eq!(periods[0]["clicks"], 1);
    assert_eq!(periods[0]["earned_minor"], 900);
    assert_eq!(periods[1]["period"], "2026-12");
    assert_eq!(periods[1]["earned_minor"], 450);
    assert_eq!(periods[1]["pending_minor"], 450);
}

async fn pay_at(
    desk: &Desk,
    payment_id: &str,
    user_id: &str,
    period: u32,
    occurred_at: &str,
) -> Answer {
    desk.platform(
        "/v1/payments",
        json!({"payment_id": payment_id, "user_id": user_id, "amount_minor": 10_000,
               "currency": "GBP", "billing_period": period, "occurred_at": occurred_at}),
    )
    .await
}

#[tokio::test]
async fn a_payment_reported_late_is_held_and_counted_from_the_day_it_was_taken() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    assert_eq!(
        desk.signup("bob", &code, None).await.status,
        StatusCode::CREATED
    );
    desk.advance_days(5);
    // Taken three days ago, on 2026-11-04; the platform's retry lands today.
    let paid = pay_at(&desk, "pay-1", "bob", 1, &desk.days_ago(3)).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(
        paid.body["facts"][0]["occurred_at_ms"],
        START_MS + 2 * DAY_MS
    );
    assert_eq!(paid.body["facts"][0]["at_ms"], START_MS + 5 * DAY_MS);
    let entry = &desk.entries(&affiliate).await[0];
    assert_eq!(entry["earned_at_ms"], START_MS + 2 * DAY_MS);
    assert_eq!(entry["payable_at_ms"], START_MS + 32 * DAY_MS);
    // The 30-day hold ends 30 days after the payment, not after its report.
    desk.advance_days(26);
    assert_balances(&desk.totals(&affiliate).await, 3_000, 3_000, 0, 0, 0);
    desk.advance_days(1);
    assert_balances(&desk.totals(&affiliate).await, 3_000, 0, 3_000, 0, 0);
    let stats = desk
        .admin_get(&format!(
            "/v1/affiliates/{affiliate}/stats?from=2026-11-04&to=2026-11-04"
        ))
        .await;
    assert_eq!(stats.body["totals"]["conversions"], 1, "{}", stats.text);
    assert_eq!(stats.body["totals"]["earned_minor"], 3_000);
}

#[tokio::test]
async fn the_first_month_rate_follows_the_customers_payment_dates_not_the_callers_period() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    assert_eq!(
        desk.signup("bob", &code, None).await.status,
        StatusCode::CREATED
    );
    let rate = |answer: &Answer| answer.body["facts"][1]["rate"].as_i64().unwrap();

    // Bob's first payment, whatever period the caller calls it: month one.
    desk.advance_days(10);
    let first = pay_at(&desk, "pay-a", "bob", 3, &desk.days_ago(0)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(rate(&first), 3_000);
    // A payment taken 9 days before it, reported after it: also month one.
    let earlier = pay_at(&desk, "pay-b", "bob", 2, &desk.days_ago(9)).await;
    assert_eq!(rate(&earlier), 3_000);
    // A calendar month after bob's first payment (2026-11-03 09:00Z),
    // "billing period 1" again and again earns the later months' rate.
    desk.advance_days(21);
    let next = pay_at(&desk, "pay-c", "bob", 1, "2026-12-03T09:00:00Z").await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
    assert_eq!(rate(&next), 1_500);
    // Month one ends with the UTC day before that day: the renewal in the
    // small hours of 3 December is month two, 23:59 on 2 December month one.
    let renewal = pay_at(&desk, "pay-r", "bob", 1, "2026-12-03T00:05:00Z").await;
    assert_eq!(rate(&renewal), 1_500);
    let edge = pay_at(&desk, "pay-d", "bob", 1, "2026-12-02T23:59:59.999Z").await;
    assert_eq!(rate(&edge), 3_000);
    // The conversion counts on the day of bob's earliest payment.
    let day = |date: &str| format!("/v1/affiliates/{affiliate}/stats?from={date}&to={date}");
    assert_eq!(
        desk.admin_get(&day("2026-11-03")).await.body["totals"]["conversions"],
        1
    );
    assert_eq!(
        desk.admin_get(&day("2026-11-12")).await.body["totals"]["conversions"],
        0
    );
    desk.advance_days(30);
    let again = pay_at(&desk, "pay-e", "bob", 1, &desk.days_ago(0)).await;
    assert_eq!(rate(&again), 1_500);
    let totals = desk.totals(&affiliate).await;
    assert_eq!(
        totals["earned_minor"],
        3_000 + 3_000 + 1_500 + 1_500 + 3_000 + 1_500
    );
}

#[tokio::test]
async fn events_from_the_future_too_old_or_without_a_time_are_refused_and_store_nothing() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    assert_eq!(
        desk.signup("bob", &code, None).await.status,
        StatusCode::CREATED
    );
    desk.advance_days(30);
    let ahead = format_instant(desk.clock.load(Ordering::SeqCst) + 6 * 60 * 1_000);
    assert_problem(
        &pay_at(&desk, "pay-1", "bob", 1, &ahead).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ahead of the gateway's clock",
    );
    assert_problem(
        &pay_at(&desk, "pay-1", "bob", 1, &desk.days_ago(28)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "events older than 26 days are refused",
    );
    assert_problem(
        &pay_at(&desk, "pay-1", "bob", 1, "yesterday").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "is not an RFC 3339 time",
    );
    let untimed = desk
        .call(
            "POST",
            "/v1/payments",
            &desk.platform.clone(),
            Some(
                json!({"payment_id": "pay-1", "user_id": "bob", "amount_minor": 100,
                        "currency": "GBP", "billing_period": 1}),
            ),
        )
        .await;
    assert_eq!(
        untimed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        untimed.text
    );
    assert!(untimed.text.contains("occurred_at"), "{}", untimed.text);
    // Four minutes ahead is within the clocks' accepted difference.
    let close = format_instant(desk.clock.load(Ordering::SeqCst) + 4 * 60 * 1_000);
    let paid = pay_at(&desk, "pay-1", "bob", 1, &close).await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    // A refund cannot come before its payment.
    let refund = desk
        .platform(
            "/v1/refunds",
            json!({"refund_id": "ref-1", "payment_id": "pay-1", "amount_minor": 100,
                   "currency": "GBP", "occurred_at": desk.days_ago(1)}),
        )
        .await;
    assert_problem(
        &refund,
        StatusCode::UNPROCESSABLE_ENTITY,
        "before its payment",
    );
    // Nothing refused was counted: one payment, one commission.
    assert_balances(&desk.totals(&affiliate).await, 3_000, 3_000, 0, 0, 0);
    // A retry of the recorded payment, however late, is answered as before;
    // the same id with another time is another payment's details.
    desk.advance_days(40);
    let retry = pay_at(&desk, "pay-1", "bob", 1, &close).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    let moved = pay_at(&desk, "pay-1", "bob", 1, &desk.days_ago(41)).await;
    assert_problem(&moved, StatusCode::CONFLICT, "different details");
}

#[tokio::test]
async fn a_refund_reported_late_still_takes_back_the_unpaid_commission() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    assert_eq!(
        pay_at(&desk, "pay-1", "bob", 1, &desk.days_ago(0))
            .await
            .status,
        StatusCode::CREATED
    );
    // Refunded the next day; the platform reports it four weeks later,
    // past the age limit for other events, before the commission is paid.
    desk.advance_days(29);
    let refund = desk
        .platform(
            "/v1/refunds",
            json!({"refund_id": "ref-1", "payment_id": "pay-1", "amount_minor": 10_000,
                   "currency": "GBP", "occurred_at": desk.days_ago(28)}),
        )
        .await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.text);
    assert_eq!(refund.body["facts"][1]["fact"], "commission_reversed");
    desk.advance_days(5);
    assert_balances(&desk.totals(&affiliate).await, 3_000, 0, 0, 0, 3_000);
    let retry_moved = desk
        .platform(
            "/v1/refunds",
            json!({"refund_id": "ref-1", "payment_id": "pay-1", "amount_minor": 10_000,
                   "currency": "GBP", "occurred_at": desk.days_ago(0)}),
        )
        .await;
    assert_problem(&retry_moved, StatusCode::CONFLICT, "different details");
}

#[tokio::test]
async fn a_click_window_runs_to_the_signup_and_a_late_code_only_signup_is_refused() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    let click = desk.click(&code, "198.51.100.7").await;
    // Signed up on day 29 of the 30-day window, reported on day 31.
    desk.advance_days(31);
    let late = desk
        .platform(
            "/v1/referrals",
            json!({"user_id": "bob", "code": code, "click_id": click,
                   "source_address": "203.0.113.9", "email_sha256": EMAIL,
                   "email_verified": false, "occurred_at": desk.days_ago(2)}),
        )
        .await;
    assert_eq!(late.status, StatusCode::CREATED, "{}", late.text);
    // The same click, for a signup on day 31: outside its window.
    let expired = desk
        .platform(
            "/v1/referrals",
            json!({"user_id": "carol", "code": code, "click_id": click,
                   "source_address": "203.0.113.9", "email_sha256": EMAIL,
                   "email_verified": false}),
        )
        .await;
    assert_problem(&expired, StatusCode::UNPROCESSABLE_ENTITY, "expired");
    // A code typed at signup, without a click, reported 61 days later.
    desk.advance_days(61);
    let stale = desk
        .platform(
            "/v1/referrals",
            json!({"user_id": "dave", "code": code, "source_address": "203.0.113.9",
                   "email_sha256": EMAIL, "email_verified": false,
                   "occurred_at": desk.days_ago(61)}),
        )
        .await;
    assert_problem(&stale, StatusCode::UNPROCESSABLE_ENTITY, "61 days ago");
    // The signup counts on the day it happened.
    let stats = desk
        .admin_get(&format!(
            "/v1/affiliates/{affiliate}/stats?from=2026-12-01&to=2026-12-01"
        ))
        .await;
    assert_eq!(stats.body["totals"]["signups"], 1, "{}", stats.text);
    assert_eq!(desk.totals(&affiliate).await["signups"], 1);
}

#[tokio::test]
async fn a_refund_inside_the_holding_period_reverses_the_commission_to_the_penny() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("pay-1", "bob", 2_999, 1).await;
    desk.advance_days(5);
    // A third back first: 900 × 1000 / 2999 = 300.1 → 300.
    let partial = desk.refund("ref-1", "pay-1", 1_000).await;
    assert_eq!(partial.status, StatusCode::CREATED, "{}", partial.text);
    assert_eq!(partial.body["facts"][1]["fact"], "commission_reversed");
    assert_eq!(partial.body["facts"][1]["amount_minor"], 300);
    assert_balances(&desk.totals(&affiliate).await, 900, 600, 0, 0, 300);
    // The rest: exactly what is left of the stored 900, not a recomputation.
    desk.refund("ref-2", "pay-1", 1_999).await;
    assert_balances(&desk.totals(&affiliate).await, 900, 0, 0, 0, 900);
    assert_eq!(desk.entries(&affiliate).await[0]["status"], "reversed");
    // More than was paid is refused, and changes nothing.
    let too_much = desk.refund("ref-3", "pay-1", 1).await;
    assert_problem(
        &too_much,
        StatusCode::UNPROCESSABLE_ENTITY,
        "only 0 minor units left",
    );
    // Nothing left to pay, even after the hold.
    desk.advance_days(40);
    assert_problem(
        &desk.payout(&affiliate, "po-1").await,
        StatusCode::CONFLICT,
        "nothing to pay",
    );
}

#[tokio::test]
async fn a_refund_after_payout_is_netted_against_the_next_payout() {
    // Pennies, to keep the arithmetic readable: any payout is allowed.
    let desk = desk_with(|config| config.payout_minimum_minor = 1).await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("pay-1", "bob", 2_999, 1).await; // 900
    desk.advance_days(10);
    assert_problem(
        &desk.payout(&affiliate, "po-0").await,
        StatusCode::CONFLICT,
        "900 still pending",
    );
    desk.advance_days(21);
    let first = desk.payout(&affiliate, "po-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.body["facts"][0]["amount_minor"], 900);
    // Paying the same payout again pays nothing.
    let again = desk.payout(&affiliate, "po-1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["replayed"], true);

    desk.pay("pay-2", "bob", 9_999, 2).await; // 15% = 1499.85 → 1500
    desk.advance_days(2);
    let refund = desk.refund("ref-1", "pay-1", 2_999).await;
    assert_eq!(refund.body["facts"][1]["fact"], "clawback_entered");
    assert_eq!(refund.body["facts"][1]["amount_minor"], -900);
    assert_balances(&desk.totals(&affiliate).await, 2_400, 1_500, -900, 900, 900);
    // The clawback alone is not a payout.
    assert_problem(
        &desk.payout(&affiliate, "po-2").await,
        StatusCode::CONFLICT,
        "-900",
    );

    desk.advance_days(30);
    let second = desk.payout(&affiliate, "po-3").await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_eq!(second.body["facts"][0]["amount_minor"], 600);
    assert_balances(&desk.totals(&affiliate).await, 2_400, 0, 0, 1_500, 900);
    let entries = desk.entries(&affiliate).await;
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["kind"], "clawback");
    assert_eq!(entries[2]["of_entry"], 1);
    assert!(entries.iter().all(|e| e["status"] == "paid"));
}

#[tokio::test]
async fn a_payout_below_the_minimum_is_refused_until_the_balance_reaches_it() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("pay-1", "bob", 20_000, 1).await; // 30%: 6,000
    desk.advance_days(31);
    assert_problem(
        &desk.payout(&affiliate, "po-1").await,
        StatusCode::CONFLICT,
        "6000 minor units is below the payout minimum of 10000",
    );
    assert_balances(&desk.totals(&affiliate).await, 6_000, 0, 6_000, 0, 0);
    desk.pay("pay-2", "bob", 30_000, 2).await; // 15%: 4,500
    desk.advance_days(30);
    let paid = desk.payout(&affiliate, "po-1").await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(paid.body["facts"][0]["amount_minor"], 10_500);
    assert_balances(&desk.totals(&affiliate).await, 10_500, 0, 0, 10_500, 0);
}

#[tokio::test]
async fn an_admin_adjustment_corrects_the_balance_once_and_is_netted_at_payout() {
    let desk = desk().await;
    let (affiliate, code, token) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("pay-1", "bob", 40_000, 1).await; // 30%: 12,000, pending
    // A bonus owed by hand: payable at once, next to the pending commission.
    let bonus = desk
        .adjust(&affiliate, "adj-1", 2_500, "launch bonus agreed by email")
        .await;
    assert_eq!(bonus.status, StatusCode::CREATED, "{}", bonus.text);
    assert_eq!(bonus.body["facts"][0]["fact"], "adjustment_entered");
    let again = desk
        .adjust(&affiliate, "adj-1", 2_500, "launch bonus agreed by email")
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["replayed"], true);
    assert_problem(
        &desk
            .adjust(&affiliate, "adj-1", 2_600, "launch bonus agreed by email")
            .await,
        StatusCode::CONFLICT,
        "different details",
    );
    for (amount, reason, why) in [
        (0, "nothing", "not zero"),
        (1_000_000_000_001, "too much", "between"),
        (100, "", "reason must not be empty"),
    ] {
        assert_problem(
            &desk.adjust(&affiliate, "adj-bad", amount, reason).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            why,
        );
    }
    let unknown = desk
        .call(
            "POST",
            "/v1/affiliates/af_nobody/adjustments",
            &desk.admin.clone(),
            Some(json!({"adjustment_id": "adj-9", "amount_minor": 1, "reason": "x"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    // A correction the other way: owed by the affiliate.
    let fix = desk
        .adjust(&affiliate, "adj-2", -500, "duplicate bonus in October")
        .await;
    assert_eq!(fix.status, StatusCode::CREATED, "{}", fix.text);
    assert_balances(&desk.totals(&affiliate).await, 14_000, 12_000, 2_000, 0, 0);
    // The affiliate sees the lines and their reasons.
    let rows = desk
        .call(
            "GET",
            &format!("/v1/affiliates/{affiliate}/commissions?kind=adjustment"),
            &token,
            None,
        )
        .await;
    let items = rows.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", rows.text);
    assert_eq!(items[0]["reason"], "launch bonus agreed by email");
    assert_eq!(items[1]["amount_minor"], -500);
    assert_eq!(items[1]["status"], "payable");
    // After the hold, one payout pays the commission and both adjustments.
    desk.advance_days(30);
    let paid = desk.payout(&affiliate, "po-1").await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(paid.body["facts"][0]["amount_minor"], 14_000);
    assert_balances(&desk.totals(&affiliate).await, 14_000, 0, 0, 14_000, 0);
}

#[tokio::test]
async fn payday_lists_show_who_is_owed_what_and_every_payout() {
    let desk = desk_with(|config| config.payout_minimum_minor = 1).await;
    let (alice, alice_code, alice_token) = desk.enrol("alice").await;
    let (zoe, zoe_code, zoe_token) = desk.enrol("zoe").await;
    let (yan, _, _) = desk.enrol("yan").await;
    desk.signup("c1", &alice_code, None).await;
    desk.signup("c2", &zoe_code, None).await;
    desk.pay("p1", "c1", 10_000, 1).await; // alice 3,000
    desk.pay("p2", "c2", 2_000, 1).await; // zoe 600
    desk.advance_days(31);
    assert_eq!(
        desk.payout(&alice, "po-1").await.status,
        StatusCode::CREATED
    );
    desk.adjust(&zoe, "adj-1", -1_000, "bonus paid twice").await;
    desk.pay("p3", "c1", 10_000, 2).await; // alice 1,500, pending
    let list = |query: &str| {
        let desk = &desk;
        let uri = format!("/v1/affiliates{query}");
        async move {
            let answer = desk.admin_get(&uri).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            answer.body
        }
    };
    let all = list("").await;
    let rows: Vec<_> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["affiliate_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["pending_minor"].as_i64().unwrap(),
                r["payable_minor"].as_i64().unwrap(),
                r["paid_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (alice.clone(), "pending".into(), 1_500, 0, 3_000),
            (zoe.clone(), "negative".into(), 0, -400, 0),
            (yan.clone(), "settled".into(), 0, 0, 0),
        ]
    );
    assert!(all["items"][0]["last_paid_at_ms"].is_u64());
    assert_eq!(
        list("?status=negative").await["items"][0]["affiliate_id"],
        zoe
    );
    assert_eq!(list("?min_payable_minor=1").await["items"], json!([]));
    let first = list("?limit=1").await;
    assert_eq!(first["items"][0]["affiliate_id"], alice);
    assert_eq!(first["next_after"], 1);
    assert_eq!(
        list("?after=1&limit=1").await["items"][0]["affiliate_id"],
        zoe
    );
    let csv = desk.admin_get("/v1/affiliates?format=csv").await.text;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[2].contains(",negative,") && lines[2].contains(",-400,-4.00,"),
        "{csv}"
    );

    let payouts = desk.admin_get("/v1/payouts").await;
    assert_eq!(
        payouts.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        payouts.text
    );
    assert_eq!(payouts.body["items"][0]["payout_id"], "po-1");
    assert_eq!(payouts.body["items"][0]["amount_minor"], 3_000);
    let own_uri = format!("/v1/affiliates/{alice}/payouts");
    let own = desk.call("GET", &own_uri, &alice_token, None).await;
    assert_eq!(own.body["items"][0]["payout_id"], "po-1", "{}", own.text);
    let other = desk.call("GET", &own_uri, &zoe_token, None).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let zoes = desk
        .call(
            "GET",
            &format!("/v1/affiliates/{zoe}/payouts"),
            &zoe_token,
            None,
        )
        .await;
    assert_eq!(zoes.body["items"], json!([]));
    // The lists are the admin's: an affiliate's token cannot read them.
    for uri in ["/v1/affiliates", "/v1/payouts"] {
        let answer = desk.call("GET", uri, &alice_token, None).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{uri}");
    }
}

const ALICE_EMAIL: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

async fn signup_from(desk: &Desk, user: &str, code: &str, email: &str, address: &str) -> Answer {
    desk.platform(
        "/v1/referrals",
        json!({"user_id": user, "code": code, "source_address": address,
               "email_sha256": email, "email_verified": true}),
    )
    .await
}

async fn fraud_cases(desk: &Desk, query: &str) -> Vec<Value> {
    let answer = desk.admin_get(&format!("/v1/fraud-cases{query}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.body["items"].as_array().unwrap().clone()
}

async fn decide_case(desk: &Desk, case_id: u64, decision: &str, reason: &str) -> Answer {
    let admin = desk.admin.clone();
    desk.call(
        "POST",
        &format!("/v1/fraud-cases/{case_id}/decision"),
        &admin,
        Some(json!({"decision": decision, "reason": reason})),
    )
    .await
}

#[tokio::test]
async fn a_link_checkers_head_request_is_answered_and_not_counted_as_a_click() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    let request = Request::builder()
        .method("HEAD")
        .uri(format!("/r/{code}"))
        .body(Body::empty())
        .unwrap();
    let answer = desk.send(request).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let location = answer.headers[header::LOCATION].to_str().unwrap();
    assert!(location.contains("ref="), "{location}");
    assert!(!location.contains("click="), "{location}");
    assert_eq!(desk.totals(&affiliate).await["clicks"], 0);
    desk.click(&code, "198.51.100.7").await;
    assert_eq!(desk.totals(&affiliate).await["clicks"], 1);
}

#[tokio::test]
async fn a_signup_from_an_address_the_affiliate_called_the_api_from_is_a_self_referral() {
    let desk = desk().await;
    let (affiliate, code, token) = desk.enrol("alice").await;
    // Alice reads her own stats from home, through the proxy on the
    // sidecar's machine.
    let mut request = Request::builder()
        .uri(format!("/v1/affiliates/{affiliate}/stats"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-forwarded-for", "203.0.113.99")
        .body(Body::empty())
        .unwrap();
    let proxy: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(proxy));
    assert_eq!(desk.send(request).await.status, StatusCode::OK);
    let answer = signup_from(&desk, "mallory", &code, EMAIL, "203.0.113.99").await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an address the affiliate called the API from",
    );
    let open = fraud_cases(&desk, "").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["user_id"], "mallory");
    // Another address is a referral like any other.
    let other = signup_from(&desk, "bob", &code, EMAIL, "203.0.113.100").await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    // The address is recorded once, in the audit trail, with who.
    let seen = desk
        .admin_get("/v1/audit?kind=affiliate_address_seen")
        .await;
    let items = seen.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", seen.text);
    assert_eq!(items[0]["fact"]["source_address"], "203.0.113.99");
}

#[tokio::test]
async fn a_self_referral_is_refused_and_opens_a_case_in_the_review_queue() {
    let desk = desk().await;
    let enrolled = desk
        .platform(
            "/v1/affiliates",
            json!({"user_id": "alice", "email_sha256": ALICE_EMAIL,
                   "source_address": "198.51.100.20"}),
        )
        .await;
    assert_eq!(enrolled.status, StatusCode::CREATED, "{}", enrolled.text);
    let affiliate = enrolled.body["affiliate"]["affiliate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = enrolled.body["affiliate"]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let refusals = [
        ("alice", EMAIL, "192.0.2.1", "the code is their own"),
        (
            "bob",
            ALICE_EMAIL,
            "192.0.2.2",
            "email hash is the affiliate's",
        ),
        (
            "carol",
            EMAIL,
            "198.51.100.20",
            "the address the affiliate enrolled from",
        ),
    ];
    for (user, email, address, why) in refusals {
        let answer = signup_from(&desk, user, &code, email, address).await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, why);
        assert_problem(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a fraud case is open",
        );
    }
    // A retry is refused again and opens no second case.
    let retry = signup_from(&desk, "bob", &code, ALICE_EMAIL, "192.0.2.2").await;
    assert_eq!(retry.status, StatusCode::UNPROCESSABLE_ENTITY);
    let open = fraud_cases(&desk, "").await;
    assert_eq!(open.len(), 3, "{open:?}");
    assert!(open.iter().all(|c| c["kind"] == "self_referral"
        && c["refused"] == true
        && c["affiliate_id"] == affiliate.as_str()));
    assert_eq!(open[1]["user_id"], "bob");
    assert!(
        open[2]["evidence"]
            .as_str()
            .unwrap()
            .contains("198.51.100.20")
    );
    // An admin closes one, recorded with who and why; the referral stays
    // refused (nothing was attributed).
    let decided = decide_case(&desk, 2, "confirmed", "second account of the affiliate").await;
    assert_eq!(decided.status, StatusCode::CREATED, "{}", decided.text);
    let closed = fraud_cases(&desk, "?status=decided").await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["status"], "confirmed");
    assert_eq!(closed[0]["reason"], "second account of the affiliate");
    assert!(
        closed[0]["decided_by"]
            .as_str()
            .unwrap()
            .starts_with("token:")
    );
    assert!(
        !closed[0]["decided_by"]
            .as_str()
            .unwrap()
            .contains(&desk.admin)
    );
    assert_eq!(fraud_cases(&desk, "").await.len(), 2);
    assert_eq!(desk.totals(&affiliate).await["signups"], 0);
}

#[tokio::test]
async fn several_signups_from_one_address_hold_the_later_referrals_until_reviewed() {
    let desk = desk_with(|config| config.payout_minimum_minor = 1).await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    for n in 1..=5 {
        let user = format!("c{n}");
        let answer = signup_from(&desk, &user, &code, EMAIL, "192.0.2.50").await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        let held = answer.body["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["fact"] == "case_opened");
        assert_eq!(held, n > 3, "signup {n}");
        desk.pay(&format!("p{n}"), &user, 10_000, 1).await; // 3,000 each
    }
    let open = fraud_cases(&desk, &format!("?affiliate_id={affiliate}")).await;
    let under_review = desk.admin_get("/v1/affiliates?open_case=true").await;
    assert_eq!(
        under_review.body["items"][0]["affiliate_id"],
        affiliate.as_str()
    );
    assert_eq!(under_review.body["items"][0]["open_cases"], 2);
    let clean = desk.admin_get("/v1/affiliates?open_case=false").await;
    assert_eq!(clean.body["items"], json!([]));
    let held: Vec<_> = open.iter().map(|c| c["user_id"].clone()).collect();
    assert_eq!(held, [json!("c4"), json!("c5")]);
    assert!(
        open[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("signup number 4 from 192.0.2.50")
    );
    // After the hold, only the three not under review are paid.
    desk.advance_days(31);
    let totals = desk.totals(&affiliate).await;
    assert_eq!(totals["held_minor"], 6_000, "{totals}");
    assert_balances(&totals, 15_000, 0, 9_000, 0, 0);
    let first = desk.payout(&affiliate, "po-1").await;
    assert_eq!(
        first.body["facts"][0]["amount_minor"], 9_000,
        "{}",
        first.text
    );
    let statuses: Vec<_> = desk
        .entries(&affiliate)
        .await
        .iter()
        .map(|e| e["status"].clone())
        .collect();
    assert_eq!(statuses[3..], [json!("held"), json!("held")]);
    // Cleared: c4's commission is released. Confirmed: c5's is reversed and
    // c5 earns nothing more.
    let (c4, c5) = (
        open[0]["case_id"].as_u64().unwrap(),
        open[1]["case_id"].as_u64().unwrap(),
    );
    assert_eq!(
        decide_case(&desk, c4, "cleared", "a family, checked by phone")
            .await
            .status,
        StatusCode::CREATED
    );
    let confirmed = decide_case(&desk, c5, "confirmed", "farmed accounts").await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    assert_eq!(confirmed.body["facts"][1]["fact"], "commission_reversed");
    assert_eq!(
        decide_case(&desk, c5, "confirmed", "farmed accounts")
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &decide_case(&desk, c5, "cleared", "changed my mind").await,
        StatusCode::CONFLICT,
        "a decision stands",
    );
    assert_problem(
        &decide_case(&desk, 99, "cleared", "x").await,
        StatusCode::NOT_FOUND,
        "no fraud case 99",
    );
    let later = desk.pay("p6", "c5", 10_000, 2).await;
    assert_eq!(
        later.body["facts"].as_array().unwrap().len(),
        1,
        "{}",
        later.text
    );
    let second = desk.payout(&affiliate, "po-2").await;
    assert_eq!(
        second.body["facts"][0]["amount_minor"], 3_000,
        "{}",
        second.text
    );
    assert_balances(&desk.totals(&affiliate).await, 15_000, 0, 0, 12_000, 3_000);
    assert_eq!(fraud_cases(&desk, "").await, Vec::<Value>::new());
}

#[tokio::test]
async fn the_audit_trail_names_who_changed_money_and_why_for_admins_only() {
    let desk = desk().await;
    let (alice, code, alice_token) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("p1", "bob", 10_000, 1).await;
    desk.adjust(&alice, "adj-1", -200, "duplicate bonus").await;
    desk.click(&code, "198.51.100.7").await;
    let page = desk.admin_get("/v1/audit").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let items = page.body["items"].as_array().unwrap();
    let kinds: Vec<_> = items.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "affiliate_enrolled",
            "referred",
            "payment_received",
            "commission_earned",
            "adjustment_entered",
            "clicked"
        ]
    );
    let platform_id = items[0]["by"].as_str().unwrap();
    assert!(
        platform_id.starts_with("token:") && platform_id.len() == 18,
        "{platform_id}"
    );
    assert!(
        !desk.platform.contains(&platform_id[6..]),
        "a token's id is not the token"
    );
    assert_eq!(items[4]["why"], "duplicate bonus");
    assert_ne!(
        items[4]["by"], items[0]["by"],
        "the admin, not the platform"
    );
    assert_eq!(items[5]["by"], "visitor:198.51.100.7");
    assert!(
        items
            .iter()
            .all(|e| e["hash"].as_str().unwrap().len() == 64)
    );
    let alices = desk
        .admin_get(&format!(
            "/v1/audit?affiliate_id={alice}&kind=commission_earned"
        ))
        .await;
    assert_eq!(
        alices.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        alices.text
    );
    let paged = desk.admin_get("/v1/audit?limit=2").await;
    assert_eq!(paged.body["next_after"], 2);
    let next = desk.admin_get("/v1/audit?after=2&limit=2").await;
    assert_eq!(next.body["items"][0]["seq"], 3);
    let forbidden = desk.call("GET", "/v1/audit", &alice_token, None).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_payable_balance_of_exactly_the_minimum_is_paid_and_a_penny_below_is_not() {
    let desk = desk().await;
    let (below, below_code, _) = desk.enrol("alice").await;
    let (exact, exact_code, _) = desk.enrol("zoe").await;
    desk.signup("bob", &below_code, None).await;
    desk.signup("carol", &exact_code, None).await;
    desk.pay("p1", "bob", 33_330, 1).await; // 30%: 9,999
    desk.pay("p2", "carol", 33_334, 1).await; // 30%: 10,000.2, half up: 10,000
    desk.advance_days(31);
    assert_problem(
        &desk.payout(&below, "po-1").await,
        StatusCode::CONFLICT,
        "9999 minor units is below the payout minimum of 10000",
    );
    let paid = desk.payout(&exact, "po-2").await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    assert_eq!(paid.body["facts"][0]["amount_minor"], 10_000);
}

on_both_backends!(the_first_fill_on_any_device_of_the_account_earns_the_bonus_once);
async fn the_first_fill_on_any_device_of_the_account_earns_the_bonus_once(backend: Backend) {
    let desk = desk_on(&backend).await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("acct-7", &code, None).await;
    desk.pay("pay-1", "acct-7", 2_999, 1).await;
    let registry = desk.gateway.registry();
    let key = desk.gateway.master_key();
    let (laptop, _) = registry.register(key, "acct-7", "Laptop").await.unwrap();
    let (vps, _) = registry.register(key, "acct-7", "VPS").await.unwrap();
    let fill = |device: &str, seq: u64| {
        let report = Report {
            seq,
            signal_id: SignalId([seq as u8; 16]),
            at_ms: now_ms(),
            outcome: ReportOutcome::Filled(Fill {
                ticket: 1_000 + seq,
                price: "1.08543".parse::<Decimal>().unwrap(),
                volume: "0.10".parse::<Decimal>().unwrap(),
            }),
        };
        StoredReport::new(device, &report, now_ms())
    };
    // Received-only reports are not trades.
    let received = StoredReport {
        kind: eagate_gateway::reports::ReportKind::Received,
        ticket: None,
        price: None,
        volume: None,
        ..fill(&laptop.device_id, 1)
    };
    let reports = desk.gateway.core().reports.clone();
    reports.ingest(&received, None).await.unwrap();
    // The fill comes from the second device of the account; resent twice.
    let first_fill = fill(&vps.device_id, 1);
    reports.ingest(&first_fill, None).await.unwrap();
    reports.ingest(&first_fill, None).await.unwrap();
    let bonus = wait_for_bonus(&desk, &affiliate).await;
    // 5% of the first payment, GBP 29.99 → 1.4995 → 1.50.
    assert_eq!(bonus["amount_minor"], 150);
    assert_eq!(bonus["rate_bps"], 500);
    assert_eq!(bonus["payment_id"], "pay-1");
    // More fills, on both devices: no second bonus.
    reports
        .ingest(&fill(&laptop.device_id, 2), None)
        .await
        .unwrap();
    reports
        .ingest(&fill(&vps.device_id, 2), None)
        .await
        .unwrap();
    let desk_core = desk.gateway.core();
    let programme = desk.gateway.affiliates().unwrap();
    // Drain the feed now rather than waiting for the background reader.
    while programme.take_fills(&desk_core).await.unwrap() > 0 {}
    let bonuses = desk
        .entries(&affiliate)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "first_trade_bonus")
        .count();
    assert_eq!(bonuses, 1);
    assert!(reports.unclaimed_fills(None, 10).await.unwrap().is_empty());
    // The stats count the customer's first trade once, on today (the
    // fill's wall-clock day: the desk's clock catches up with it).
    desk.clock.store(now_ms(), Ordering::SeqCst);
    let stats = desk
        .admin_get(&format!("/v1/affiliates/{affiliate}/stats"))
        .await;
    assert_eq!(stats.body["totals"]["first_trades"], 1, "{}", stats.text);
    let last = stats.body["periods"].as_array().unwrap().last().unwrap();
    assert_eq!(last["first_trades"], 1, "{}", stats.text);
}

/// Publishes an opening signal on `gold`; returns its id.
async fn publish(desk: &Desk, action: &str) -> SignalId {
    let answer = desk
        .platform(
            "/v1/channels/gold/signals",
            json!({"symbol": "EURUSD", "action": action, "order_type": "Market", "volume": "1.00"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    answer.body["signal_id"].as_str().unwrap().parse().unwrap()
}

on_both_backends!(
    a_sidecar_that_was_down_catches_up_and_each_referred_fill_earns_its_trade_commission_once
);
async fn a_sidecar_that_was_down_catches_up_and_each_referred_fill_earns_its_trade_commission_once(
    backend: Backend,
) {
    // The platform charges GBP 7.00 per lot of EURUSD; tier 1 earns 0.5%.
    let (desk, config) = desk_on_with(&backend, |config| {
        config.trade_fees = vec!["fx:EURUSD=700/lot".into()];
    })
    .await;
    // Fills are stored on the wall clock; the desk's reads follow it.
    desk.clock.store(now_ms(), Ordering::SeqCst);
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("acct-7", &code, None).await;
    let registry = desk.gateway.registry();
    let key = desk.gateway.master_key();
    let (vps, _) = registry.register(key, "acct-7", "VPS").await.unwrap();
    let (stranger, _) = registry.register(key, "acct-9", "Other").await.unwrap();
    let signal = publish(&desk, "OpenBuy").await;
    let fill = |device: &str, seq: u64, lots: &str| {
        let report = Report {
            seq,
            signal_id: signal,
            at_ms: now_ms(),
            outcome: ReportOutcome::Filled(Fill {
                ticket: 5_000 + seq,
                price: "1.08543".parse::<Decimal>().unwrap(),
                volume: lots.parse::<Decimal>().unwrap(),
            }),
        };
        StoredReport::new(device, &report, now_ms())
    };
    let vps_id = vps.device_id.clone();
    let stranger_id = stranger.device_id.clone();
    // The sidecar is down while the devices report: three fills of the
    // referred customer (one resent), one of a customer nobody referred.
    let desk = desk
        .sidecar_down_while(
            &config,
            async |devices: &eagate_gateway::server::Gateway| {
                let reports = devices.core().reports.clone();
                for (seq, lots) in [(1, "10.00"), (2, "2.00"), (3, "0.01")] {
                    let report = fill(&vps_id, seq, lots);
                    reports.ingest(&report, None).await.unwrap();
                    reports.ingest(&report, None).await.unwrap();
                }
                reports
                    .ingest(&fill(&stranger_id, 1, "5.00"), None)
                    .await
                    .unwrap();
            },
        )
        .await;
    // Back up: the reader catches up from where it stopped.
    let core = desk.gateway.core();
    let programme = desk.gateway.affiliates().unwrap();
    while programme.take_fills(&core).await.unwrap() > 0 {}
    let trades: Vec<Value> = desk
        .entries(&affiliate)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "trade")
        .collect();
    // 10 lots: fee 7000, 0.5% = 35p; 2 lots: 1400 → 7p; 0.01 lot: 7 →
    // 0.035p, nothing.
    let earned: Vec<(i64, i64, u64)> = trades
        .iter()
        .map(|e| {
            (
                e["base_minor"].as_i64().unwrap(),
                e["amount_minor"].as_i64().unwrap(),
                e["fill"]["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(earned, [(7_000, 35, 1), (1_400, 7, 2)]);
    let first = &trades[0];
    assert_eq!(first["tier"], 1);
    assert_eq!(first["rate_bps"], 50);
    assert_eq!(first["fill"]["device_id"], vps.device_id.as_str());
    assert_eq!(first["fill"]["ticket"], 5_001);
    assert_eq!(first["fill"]["signal_id"], signal.to_string());
    assert_eq!(first["fill"]["symbol"], "EURUSD");
    assert_eq!(first["fill"]["volume"], "10.00000000");
    assert_eq!(first["status"], "pending");
    assert!(
        core.reports
            .unclaimed_fills(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // This month: one active trader so far; the tier needs 10.
    let stats = desk
        .admin_get(&format!("/v1/affiliates/{affiliate}/stats"))
        .await;
    let tier = &stats.body["trade_tier"];
    assert_eq!(tier["tier"], 1, "{}", stats.text);
    assert_eq!(tier["this_month"], 1);
    assert_eq!(tier["next"]["needs"], 9);

    // A restart reads nothing twice (the old process's handles go first).
    drop((core, programme));
    let desk = desk.sidecar_down_while(&config, async |_| {}).await;
    let programme = desk.gateway.affiliates().unwrap();
    while programme.take_fills(&desk.gateway.core()).await.unwrap() > 0 {}
    let after = desk.entries(&affiliate).await;
    assert_eq!(after.iter().filter(|e| e["kind"] == "trade").count(), 2);

    // An admin busts the first fill: its commission is reversed, once.
    let path = format!("/v1/trades/{}/1/bust", vps.device_id);
    let busted = desk
        .admin_post(&path, json!({"reason": "broker cancelled the trade"}))
        .await;
    assert_eq!(busted.status, StatusCode::CREATED, "{}", busted.text);
    let again = desk
        .admin_post(&path, json!({"reason": "broker cancelled the trade"}))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let unknown = desk
        .admin_post(
            &format!("/v1/trades/{}/1/bust", stranger.device_id),
            json!({"reason": "not referred"}),
        )
        .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "no counted fill");
    let entries = desk.entries(&affiliate).await;
    let first = entries
        .iter()
        .find(|e| e["kind"] == "trade" && e["fill"]["seq"] == 1)
        .unwrap();
    assert_eq!(first["status"], "reversed");
    assert_eq!(first["fill"]["busted"], true);
}

/// A desk charging 700 a lot on EURUSD, alice's referred customer acct-7
/// with a device, and an opening signal: what the reversal tests trade on.
struct ReferredTrader {
    desk: Desk,
    affiliate: String,
    vps: DeviceRecord,
    signal: SignalId,
}

async fn referred_trader(backend: &Backend) -> ReferredTrader {
    let (desk, _) = desk_on_with(backend, |config| {
        config.trade_fees = vec!["fx:EURUSD=700/lot".into()];
    })
    .await;
    desk.clock.store(now_ms(), Ordering::SeqCst);
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("acct-7", &code, None).await;
    let (vps, _) = desk
        .gateway
        .registry()
        .register(desk.gateway.master_key(), "acct-7", "VPS")
        .await
        .unwrap();
    let signal = publish(&desk, "OpenBuy").await;
    ReferredTrader {
        desk,
        affiliate,
        vps,
        signal,
    }
}

/// `device`'s report `seq` on `signal`, as stored now.
fn stored_report(device: &str, signal: SignalId, seq: u64, outcome: ReportOutcome) -> StoredReport {
    let report = Report {
        seq,
        signal_id: signal,
        at_ms: now_ms(),
        outcome,
    };
    StoredReport::new(device, &report, now_ms())
}

/// A deal of 10 lots at 1.08543 under `ticket`.
fn deal(ticket: u64) -> ReportOutcome {
    ReportOutcome::Filled(Fill {
        ticket,
        price: "1.08543".parse::<Decimal>().unwrap(),
        volume: "10.00".parse::<Decimal>().unwrap(),
    })
}

on_both_backends!(a_fill_its_device_reports_reversed_gives_back_its_trade_commission_once);
async fn a_fill_its_device_reports_reversed_gives_back_its_trade_commission_once(backend: Backend) {
    let ReferredTrader {
        desk,
        affiliate,
        vps,
        signal,
    } = referred_trader(&backend).await;
    let report = |seq, outcome| stored_report(&vps.device_id, signal, seq, outcome);
    let fill = |seq, ticket| report(seq, deal(ticket));
    let core = desk.gateway.core();
    let programme = desk.gateway.affiliates().unwrap();
    // Two deals of the signal, each earning 35p; the broker then cancels
    // the first, and the device reports it (and resends the report).
    for stored in [fill(1, 5_001), fill(2, 5_002)] {
        core.reports.ingest(&stored, None).await.unwrap();
    }
    while programme.take_fills(&core).await.unwrap() > 0 {}
    let undo = |seq| report(seq, ReportOutcome::Reversed(Reversal { ticket: 5_001 }));
    // Report 3 of another installation of the device holds the number: the
    // reversal sent under it is refused (Redis has added its feed entry
    // already), and undoes nothing.
    let other = report(3, ReportOutcome::Received);
    core.reports.ingest(&other, None).await.unwrap();
    assert!(matches!(
        core.reports.ingest(&undo(3), None).await.unwrap(),
        Ingested::Conflict { .. }
    ));
    // Report 4 sent by a session a newer one replaced: refused too (with a
    // feed entry on Redis), and it waits for the device's resend.
    let (older, _) = core.reports.begin_session(&vps.device_id).await.unwrap();
    core.reports.begin_session(&vps.device_id).await.unwrap();
    assert_eq!(
        core.reports.ingest(&undo(4), Some(older)).await.unwrap(),
        Ingested::Superseded
    );
    while programme.take_fills(&core).await.unwrap() > 0 {}
    let first = desk
        .entries(&affiliate)
        .await
        .into_iter()
        .find(|e| e["kind"] == "trade" && e["fill"]["seq"] == 1)
        .unwrap();
    assert_eq!(
        first["status"], "pending",
        "nothing stored undid it: {first}"
    );
    // On Redis the refused report 4's entry waits in the feed for its
    // resend (report 3's, whose number holds another report, was claimed);
    // sled wrote no entry for either.
    let waiting: Vec<(u64, Option<u64>)> = core
        .reports
        .unclaimed_fills(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|f| (f.seq, f.reverses_ticket))
        .collect();
    let expected: &[(u64, Option<u64>)] = match backend {
        Backend::Sled => &[],
        _ => &[(4, Some(5_001))],
    };
    assert_eq!(waiting, expected);
    // The newer session resends it, twice.
    core.reports.ingest(&undo(4), None).await.unwrap();
    core.reports.ingest(&undo(4), None).await.unwrap();
    while programme.take_fills(&core).await.unwrap() > 0 {}
    assert!(
        core.reports
            .unclaimed_fills(None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let trades: Vec<(u64, String, bool)> = desk
        .entries(&affiliate)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "trade")
        .map(|e| {
            (
                e["fill"]["seq"].as_u64().unwrap(),
                e["status"].as_str().unwrap().to_owned(),
                e["fill"]["busted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trades,
        [
            (1, "reversed".to_owned(), true),
            (2, "pending".to_owned(), false)
        ]
    );
    let balances = desk
        .admin_get(&format!("/v1/affiliates/{affiliate}/stats"))
        .await;
    assert_eq!(
        balances.body["totals"]["reversed_minor"], 35,
        "{}",
        balances.text
    );
    // The audit trail says who undid it: the device's report.
    let audit = desk.admin_get("/v1/audit?kind=trade_busted").await;
    let busts = audit.body["items"].as_array().unwrap();
    assert_eq!(busts.len(), 1, "{}", audit.text);
    assert!(
        busts[0]["fact"]["reason"]
            .as_str()
            .unwrap()
            .contains("reported reversed by the device (report 4)"),
        "{}",
        audit.text
    );
    let alices = desk
        .admin_get(&format!(
            "/v1/audit?affiliate_id={affiliate}&kind=trade_reversal_reported"
        ))
        .await;
    assert_eq!(
        alices.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        alices.text
    );
    // The signal's executions show the device's fill still standing.
    let executions = desk
        .admin_get(&format!("/v1/signals/{signal}/executions"))
        .await;
    assert_eq!(
        executions.body["devices"][0]["status"], "filled",
        "one deal of two is left: {}",
        executions.text
    );
}

on_both_backends!(reversals_waiting_for_their_reports_hold_back_no_fill_behind_them);
async fn reversals_waiting_for_their_reports_hold_back_no_fill_behind_them(backend: Backend) {
    let ReferredTrader {
        desk,
        affiliate,
        vps,
        signal,
    } = referred_trader(&backend).await;
    let report = |seq, outcome| stored_report(&vps.device_id, signal, seq, outcome);
    let fill = |seq, ticket| report(seq, deal(ticket));
    let core = desk.gateway.core();
    let programme = desk.gateway.affiliates().unwrap();
    core.reports.ingest(&fill(1, 5_001), None).await.unwrap();
    while programme.take_fills(&core).await.unwrap() > 0 {}
    // More reversals of that earning fill than the reader takes in one
    // batch, each sent by a session a newer one replaced: refused, and on
    // Redis each leaves a feed entry that waits for the device's resend.
    let (older, _) = core.reports.begin_session(&vps.device_id).await.unwrap();
    core.reports.begin_session(&vps.device_id).await.unwrap();
    const REFUSED: u64 = 300;
    for seq in 2..2 + REFUSED {
        let undo = report(seq, ReportOutcome::Reversed(Reversal { ticket: 5_001 }));
        assert_eq!(
            core.reports.ingest(&undo, Some(older)).await.unwrap(),
            Ingested::Superseded
        );
    }
    // The fills behind them are all taken, in one read of the feed: a
    // reader that stopped at the first batch it claimed anything in would
    // take one fill a round while they wait.
    const BEHIND: u64 = 300;
    for seq in 2 + REFUSED..2 + REFUSED + BEHIND {
        core.reports
            .ingest(&fill(seq, 6_000 + seq), None)
            .await
            .unwrap();
    }
    assert_eq!(programme.take_fills(&core).await.unwrap(), BEHIND as usize);
    assert_eq!(programme.take_fills(&core).await.unwrap(), 0);
    // Every fill earned its 35p; nothing undid the first.
    let stats = desk
        .admin_get(&format!("/v1/affiliates/{affiliate}/stats"))
        .await;
    assert_eq!(
        (
            stats.body["totals"]["earned_minor"].as_i64(),
            stats.body["totals"]["reversed_minor"].as_i64()
        ),
        (Some(35 * (1 + BEHIND as i64)), Some(0)),
        "{}",
        stats.text
    );
    let waiting = core.reports.unclaimed_fills(None, 1_000).await.unwrap();
    let expected = match backend {
        Backend::Sled => 0,
        _ => REFUSED as usize,
    };
    assert_eq!(waiting.len(), expected);
    assert!(waiting.iter().all(|f| f.reverses_ticket == Some(5_001)));
}

on_both_backends!(a_referred_customers_offsetting_buy_and_sell_of_a_day_hold_their_commissions);
async fn a_referred_customers_offsetting_buy_and_sell_of_a_day_hold_their_commissions(
    backend: Backend,
) {
    let desk = desk_on(&backend).await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    let traders = ["trader-1", "trader-2", "trader-3"];
    for customer in traders {
        desk.signup(customer, &code, None).await;
        desk.pay(&format!("pay-{customer}"), customer, 10_000, 1)
            .await; // 3,000 each
    }
    let registry = desk.gateway.registry();
    let key = desk.gateway.master_key();
    let (buy, sell) = (
        publish(&desk, "OpenBuy").await,
        publish(&desk, "OpenSell").await,
    );
    let reports = desk.gateway.core().reports.clone();
    let mut devices = Vec::new();
    for customer in traders {
        let (device, _) = registry.register(key, customer, "MT5").await.unwrap();
        devices.push(device.device_id);
    }
    let fill = |device: &str, seq: u64, signal_id: SignalId, lots: &str| {
        let report = Report {
            seq,
            signal_id,
            at_ms: now_ms(),
            outcome: ReportOutcome::Filled(Fill {
                ticket: 1_000 + seq,
                price: "1.08543".parse::<Decimal>().unwrap(),
                volume: lots.parse::<Decimal>().unwrap(),
            }),
        };
        StoredReport::new(device, &report, now_ms())
    };
    // trader-1 buys 1.00 and sells 0.95 lots of EURUSD the same day: within
    // 10%. trader-2 buys 1.00 and sells 0.50: a real trade, not a wash.
    // trader-3 buys and sells 1.00.
    for (device, sold) in devices.iter().zip(["0.95", "0.50", "1.00"]) {
        reports
            .ingest(&fill(device, 1, buy, "1.00"), None)
            .await
            .unwrap();
        reports
            .ingest(&fill(device, 2, sell, sold), None)
            .await
            .unwrap();
    }
    let desk_core = desk.gateway.core();
    let programme = desk.gateway.affiliates().unwrap();
    while programme.take_fills(&desk_core).await.unwrap() > 0 {}
    let open = fraud_cases(&desk, "").await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.iter().all(|c| c["kind"] == "wash_trading"));
    assert_eq!(open[0]["user_id"], "trader-1");
    assert_eq!(open[1]["user_id"], "trader-3");
    let evidence = open[0]["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("EURUSD")
            && evidence.contains("bought 1.00000000")
            && evidence.contains("sold 0.95000000"),
        "{evidence}"
    );
    // trader-1's commission, earned before the case, is held, and so is
    // the first-trade bonus their first fill earned (5%: 500). trader-2's
    // commission is payable after the hold; their bonus, decided on the
    // gateway's own clock, is still pending.
    desk.advance_days(31);
    let totals = desk.totals(&affiliate).await;
    assert_eq!(totals["held_minor"], 7_000, "{totals}");
    assert_eq!(totals["payable_minor"], 3_000);
    // Confirmed: reversed, and trader-1's next payment earns nothing.
    let case = open[0]["case_id"].as_u64().unwrap();
    let confirmed = decide_case(&desk, case, "confirmed", "wash trades on EURUSD").await;
    assert_eq!(confirmed.status, StatusCode::CREATED, "{}", confirmed.text);
    let later = desk.pay("pay-again", "trader-1", 10_000, 2).await;
    assert_eq!(
        later.body["facts"].as_array().unwrap().len(),
        1,
        "{}",
        later.text
    );
    // Cleared: trader-3's commission is payable, their bonus pending again.
    let cleared = open[1]["case_id"].as_u64().unwrap();
    let decided = decide_case(&desk, cleared, "cleared", "a hedge, agreed with the desk").await;
    assert_eq!(decided.status, StatusCode::CREATED, "{}", decided.text);
    assert_balances(
        &desk.totals(&affiliate).await,
        10_500,
        1_000,
        6_000,
        0,
        3_500,
    );
}

async fn wait_for_bonus(desk: &Desk, affiliate: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(bonus) = desk
            .entries(affiliate)
            .await
            .into_iter()
            .find(|e| e["kind"] == "first_trade_bonus")
        {
            return bonus;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fill feed reader never saw the fill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn repeated_clicks_from_one_address_count_once_and_keep_the_first_click_id() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    let first = desk.click(&code, "198.51.100.7").await;
    for _ in 0..20 {
        assert_eq!(desk.click(&code, "198.51.100.7").await, first);
    }
    let elsewhere = desk.click(&code, "203.0.113.9").await;
    assert_ne!(elsewhere, first);
    assert_eq!(desk.totals(&affiliate).await["clicks"], 2);
    // An hour later the same visitor's click counts again, with a new id.
    desk.clock.fetch_add(61 * 60 * 1_000, Ordering::SeqCst);
    let later = desk.click(&code, "198.51.100.7").await;
    assert_ne!(later, first);
    assert_eq!(desk.totals(&affiliate).await["clicks"], 3);
    // Only the counted clicks were journaled.
    let ledger = &desk.gateway.affiliates().unwrap().ledger;
    let journaled = ledger
        .facts()
        .unwrap()
        .iter()
        .filter(|f| matches!(f, eagate_affiliates::Fact::Clicked { .. }))
        .count();
    assert_eq!(journaled, 3);
    // The repeated click's id attributes the signup like the first.
    let signup = desk.signup("bob", &code, Some(&first)).await;
    assert_eq!(signup.status, StatusCode::CREATED, "{}", signup.text);
}

#[tokio::test]
async fn a_click_flood_from_one_address_is_429_with_retry_after_and_others_pass() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    // 09:00:00 on the desk's clock: a fresh minute.
    for _ in 0..60 {
        let answer = desk.follow_link(&code, "198.51.100.7").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
    }
    let flooded = desk.follow_link(&code, "198.51.100.7").await;
    assert_problem(&flooded, StatusCode::TOO_MANY_REQUESTS, "try again in 60 s");
    assert_eq!(flooded.headers[header::RETRY_AFTER], "60");
    // Unknown codes count against the same limit: a scan is a flood too.
    let scan = desk.follow_link("AAAAA-AAAAA", "198.51.100.7").await;
    assert_eq!(scan.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        desk.follow_link(&code, "203.0.113.9").await.status,
        StatusCode::SEE_OTHER
    );
    desk.clock.fetch_add(60 * 1_000, Ordering::SeqCst);
    assert_eq!(
        desk.follow_link(&code, "198.51.100.7").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(desk.totals(&affiliate).await["clicks"], 2);
}

#[tokio::test]
async fn unknown_or_expired_codes_are_422_and_the_first_referrer_wins() {
    let desk = desk().await;
    let (first, code, _) = desk.enrol("alice").await;
    let (_, other_code, _) = desk.enrol("carol").await;

    let unknown = desk.signup("bob", "ZZZZZ-ZZZZZ", None).await;
    assert_problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "ZZZZZ-ZZZZZ is not known",
    );
    let malformed = desk.signup("bob", "HELLO", None).await;
    assert_problem(
        &malformed,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a referral code",
    );

    let old_click = desk.click(&code, "198.51.100.7").await;
    desk.advance_days(31);
    let expired = desk.signup("bob", &code, Some(&old_click)).await;
    assert_problem(&expired, StatusCode::UNPROCESSABLE_ENTITY, "expired");
    assert_problem(&expired, StatusCode::UNPROCESSABLE_ENTITY, "31 days ago");
    let other_click = desk.click(&other_code, "198.51.100.7").await;
    let mismatched = desk.signup("bob", &code, Some(&other_click)).await;
    assert_problem(
        &mismatched,
        StatusCode::UNPROCESSABLE_ENTITY,
        "was on referral code",
    );
    let own = desk.signup("alice", &code, None).await;
    assert_problem(
        &own,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the code is their own",
    );

    // Codes are forgiving to type: lower case, no hyphen.
    let typed = code.replace('-', "").to_lowercase();
    let signup = desk.signup("bob", &typed, None).await;
    assert_eq!(signup.status, StatusCode::CREATED, "{}", signup.text);
    let retried = desk.signup("bob", &code, None).await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.body["replayed"], true);
    let second = desk.signup("bob", &other_code, None).await;
    assert_problem(&second, StatusCode::CONFLICT, "first referral stands");
    assert_eq!(desk.totals(&first).await["signups"], 1);
    // A user who paid before any referral was reported cannot be referred:
    // that payment was decided without a referrer.
    desk.pay("early-1", "erin", 2_999, 1).await;
    let late = desk.signup("erin", &code, None).await;
    assert_problem(&late, StatusCode::CONFLICT, "already paid");
    // A payment earns the first referrer's commission only.
    let paid = desk.pay("pay-1", "bob", 1_000, 1).await;
    assert_eq!(paid.body["facts"][1]["affiliate_id"], first);
}

#[tokio::test]
async fn an_affiliate_token_reads_only_its_own_data_and_writes_nothing() {
    let desk = desk().await;
    let (alice, _, alice_token) = desk.enrol("alice").await;
    let (carol, _, _) = desk.enrol("carol").await;
    for path in ["", "/stats", "/commissions"] {
        let own = desk
            .call(
                "GET",
                &format!("/v1/affiliates/{alice}{path}"),
                &alice_token,
                None,
            )
            .await;
        assert_eq!(own.status, StatusCode::OK, "{path}: {}", own.text);
        let other = desk
            .call(
                "GET",
                &format!("/v1/affiliates/{carol}{path}"),
                &alice_token,
                None,
            )
            .await;
        assert_problem(&other, StatusCode::FORBIDDEN, "scope");
        // The platform writes events; it does not read affiliates' ledgers.
        let platform = desk.platform.clone();
        let by_platform = desk
            .call(
                "GET",
                &format!("/v1/affiliates/{alice}{path}"),
                &platform,
                None,
            )
            .await;
        assert_problem(&by_platform, StatusCode::FORBIDDEN, "scope");
        let by_admin = desk
            .admin_get(&format!("/v1/affiliates/{carol}{path}"))
            .await;
        assert_eq!(by_admin.status, StatusCode::OK);
    }
    let writes = [
        ("POST", "/v1/payments".to_owned()),
        ("POST", "/v1/refunds".to_owned()),
        ("POST", "/v1/referrals".to_owned()),
        ("POST", "/v1/affiliates".to_owned()),
        ("POST", format!("/v1/affiliates/{alice}/payouts")),
        ("POST", format!("/v1/affiliates/{alice}/adjustments")),
        ("POST", "/v1/trades/dv_X/1/bust".to_owned()),
        ("POST", format!("/v1/affiliates/{alice}/token")),
        ("GET", "/v1/devices".to_owned()),
        ("GET", "/v1/customers/bob/credits".to_owned()),
        ("POST", "/v1/customers/bob/credit-spends".to_owned()),
    ];
    for (method, uri) in &writes {
        let answer = desk.call(method, uri, &alice_token, Some(json!({}))).await;
        assert_problem(&answer, StatusCode::FORBIDDEN, "scope");
    }
    // Replacing the token retires the old one.
    let replaced = desk
        .call(
            "POST",
            &format!("/v1/affiliates/{alice}/token"),
            &desk.admin.clone(),
            None,
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    let new_token = replaced.body["token"].as_str().unwrap();
    let old = desk
        .call(
            "GET",
            &format!("/v1/affiliates/{alice}"),
            &alice_token,
            None,
        )
        .await;
    assert_problem(&old, StatusCode::UNAUTHORIZED, "bearer token");
    let new = desk
        .call("GET", &format!("/v1/affiliates/{alice}"), new_token, None)
        .await;
    assert_eq!(new.status, StatusCode::OK);
    // Tokens are kept only as hashes.
    let journal = desk.gateway.affiliates().unwrap().ledger.facts().unwrap();
    let journal = serde_json::to_string(&journal).unwrap();
    assert!(!journal.contains(&alice_token) && !journal.contains(new_token));
}

#[tokio::test]
async fn retried_events_count_once_and_bad_money_is_refused_with_a_reason() {
    let desk = desk().await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    assert_eq!(
        desk.pay("pay-1", "bob", 2_999, 1).await.status,
        StatusCode::CREATED
    );
    let retry = desk.pay("pay-1", "bob", 2_999, 1).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body, json!({"replayed": true, "facts": []}));
    let reused = desk.pay("pay-1", "bob", 3_000, 1).await;
    assert_problem(&reused, StatusCode::CONFLICT, "different details");

    let bad = [
        (json!(0), "GBP", 1, "between 1 and"),
        (json!(-500), "GBP", 1, "between 1 and"),
        (json!(1_000_000_000_001_i64), "GBP", 1, "between 1 and"),
        (json!(29.99), "GBP", 1, "amount_minor"),
        (json!("2999"), "GBP", 1, "amount_minor"),
        (json!(2_999), "EUR", 1, "runs in GBP"),
        (json!(2_999), "gbp", 1, "ISO 4217"),
        (
            json!(2_999),
            "ZZZ",
            1,
            "not an active ISO 4217 currency code",
        ),
        (json!(2_999), "GBP", 0, "billing_period"),
    ];
    for (i, (amount, currency, period, reason)) in bad.into_iter().enumerate() {
        let answer = desk
            .platform(
                "/v1/payments",
                json!({"payment_id": format!("bad-{i}"), "user_id": "bob", "amount_minor": amount,
                       "currency": currency, "billing_period": period}),
            )
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, reason);
    }
    let unknown = desk.refund("ref-1", "pay-404", 100).await;
    assert_problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "pay-404 is not known",
    );
    let huge = "x".repeat(70_000);
    let oversized = desk
        .platform("/v1/payments", json!({"payment_id": huge}))
        .await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Only the one good payment counted.
    assert_balances(&desk.totals(&affiliate).await, 900, 900, 0, 0, 0);
}

#[tokio::test]
async fn commissions_page_filter_and_export_as_csv() {
    let desk = desk().await;
    let (affiliate, code, token) = desk.enrol("alice").await;
    for user in ["u1", "u2", "u3"] {
        desk.signup(user, &code, None).await;
    }
    desk.pay("p1", "u1", 1_000, 1).await; // 300
    desk.pay("p2", "u2", 2_000, 1).await; // 600
    desk.advance_days(31);
    desk.pay("p3", "u3", 3_000, 1).await; // 900, pending
    desk.pay("p4", "u1", 1_000, 2).await; // 150, pending

    let base = format!("/v1/affiliates/{affiliate}/commissions");
    let page1 = desk
        .call("GET", &format!("{base}?limit=3"), &token, None)
        .await;
    let items = page1.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(page1.body["next_after"], 3);
    let page2 = desk
        .call("GET", &format!("{base}?limit=3&after=3"), &token, None)
        .await;
    assert_eq!(page2.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(page2.body["items"][0]["amount_minor"], 150);
    assert_eq!(page2.body["next_after"], Value::Null);

    let payable = desk
        .call("GET", &format!("{base}?status=payable"), &token, None)
        .await;
    let amounts: Vec<_> = payable.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [300, 600]);
    let december = desk
        .call(
            "GET",
            &format!("{base}?from=2026-12-01&to=2026-12-31"),
            &token,
            None,
        )
        .await;
    assert_eq!(december.body["items"].as_array().unwrap().len(), 2);
    for bad in [
        "status=owed",
        "limit=0",
        "limit=5000",
        "from=2026-13-01",
        "kind=tip",
        "format=xml",
    ] {
        let answer = desk
            .call("GET", &format!("{base}?{bad}"), &token, None)
            .await;
        assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "");
    }

    let csv = desk
        .call("GET", &format!("{base}?format=csv"), &token, None)
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("entry_id,created_at,kind,billing_period,user_id,payment_id"));
    // The affiliate's own export names customers by pseudonym.
    assert!(
        lines[1].starts_with("1,2026-11-02T09:00:00Z,subscription,1,cu_")
            && lines[1].contains(",p1,3000,1000,300,3.00,0,payable,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[0].ends_with(
            ",currency,earned_at,adjustment_id,reason,tier,device_id,seq,signal_id,ticket,symbol,volume"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with(",GBP,2026-11-02T09:00:00Z,,,,,,,,,"),
        "{}",
        lines[1]
    );
    let by_accept = desk
        .send(
            Request::builder()
                .uri(format!("{base}?status=pending"))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::ACCEPT, "text/csv")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(by_accept.text.lines().count(), 3);
}

#[tokio::test]
async fn amounts_are_shown_with_their_currencys_minor_digits() {
    let desk = desk_with(|config| config.affiliate_currency = "JPY".into()).await;
    let (affiliate, code, _) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    let paid = desk
        .platform(
            "/v1/payments",
            json!({"payment_id": "pay-1", "user_id": "bob", "amount_minor": 10_000,
                   "currency": "JPY", "billing_period": 1}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
    let csv = desk
        .admin_get(&format!(
            "/v1/affiliates/{affiliate}/commissions?format=csv"
        ))
        .await;
    let row = csv.text.lines().nth(1).unwrap().to_owned();
    // 30% of 10,000 yen is 3,000 yen: "3000", not "30.00".
    assert!(row.contains(",3000,3000,0,pending,"), "{row}");
    assert!(row.contains(",JPY,"), "{row}");
}

#[tokio::test]
async fn credits_need_the_threshold_and_a_verified_email_then_both_customers_get_them_once() {
    let desk = desk().await;
    let issued = desk
        .platform("/v1/customers/carol/referral-code", json!({}))
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text);
    let code = issued.body["code"].as_str().unwrap().to_owned();
    let again = desk
        .platform("/v1/customers/carol/referral-code", json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["code"], code);
    let owner = desk.admin_get(&format!("/v1/referral-codes/{code}")).await;
    assert_eq!(owner.body["kind"], "customer");

    assert_eq!(
        desk.signup("dave", &code, None).await.status,
        StatusCode::CREATED
    );
    // Threshold GBP 50.00: 30.00, then a 10.00 refund, then 29.99 = 49.99.
    desk.pay("d1", "dave", 3_000, 1).await;
    desk.refund("r1", "d1", 1_000).await;
    let below = desk.pay("d2", "dave", 2_999, 2).await;
    assert_eq!(below.body["facts"].as_array().unwrap().len(), 1);
    // Over the threshold, but the email is not verified yet.
    let over = desk.pay("d3", "dave", 1, 3).await;
    assert_eq!(over.body["facts"].as_array().unwrap().len(), 1);
    let balance = |user: &'static str| {
        let desk = &desk;
        async move {
            let answer = desk
                .admin_get(&format!("/v1/customers/{user}/credits"))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            answer.body
        }
    };
    assert_eq!(balance("carol").await["balance_minor"], 0);
    // Verification opens the second gate: both get GBP 10.00, once.
    let verified = desk
        .platform("/v1/email-verifications", json!({"user_id": "dave"}))
        .await;
    let granted: Vec<_> = verified.body["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fact"] == "credit_granted")
        .map(|f| (f["user_id"].clone(), f["amount_minor"].clone()))
        .collect();
    assert_eq!(
        granted,
        [
            (json!("carol"), json!(1_000)),
            (json!("dave"), json!(1_000))
        ]
    );
    desk.pay("d4", "dave", 10_000, 4).await;
    let again = desk
        .platform("/v1/email-verifications", json!({"user_id": "dave"}))
        .await;
    assert_eq!(again.body["replayed"], true);
    let carol = balance("carol").await;
    assert_eq!(carol["balance_minor"], 1_000);
    assert_eq!(carol["items"][0]["reason"], "referred_a_customer");
    assert_eq!(carol["items"][0]["referred_user_id"], "dave");
    assert_eq!(balance("dave").await["balance_minor"], 1_000);
    let filtered = desk
        .admin_get("/v1/customers/carol/credits?kind=was_referred&from=2026-11-01")
        .await;
    assert_eq!(filtered.body["items"], json!([]));
    assert_eq!(filtered.body["balance_minor"], 1_000);
    let bad = desk
        .admin_get("/v1/customers/carol/credits?status=paid")
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "filtered by kind");
    let csv = desk
        .admin_get("/v1/customers/carol/credits?format=csv")
        .await;
    assert_eq!(
        csv.text.lines().nth(1).unwrap().split(',').nth(5),
        Some("1000")
    );
}

/// Carol, a customer, refers dave, who signs up verified.
async fn carol_refers_dave(desk: &Desk) {
    let issued = desk
        .platform("/v1/customers/carol/referral-code", json!({}))
        .await;
    let code = issued.body["code"].as_str().unwrap().to_owned();
    let signup = desk.signup_verified("dave", &code, None, true).await;
    assert_eq!(signup.status, StatusCode::CREATED, "{}", signup.text);
}

async fn credits_of(desk: &Desk, user: &str) -> Value {
    let answer = desk
        .admin_get(&format!("/v1/customers/{user}/credits"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.body
}

fn assert_credit(body: &Value, pending: i64, available: i64) {
    assert_eq!(
        [
            &body["pending_minor"],
            &body["available_minor"],
            &body["balance_minor"]
        ],
        [
            &json!(pending),
            &json!(available),
            &json!(pending + available)
        ],
        "{body}"
    );
}

#[tokio::test]
async fn a_payment_refunded_within_the_hold_takes_both_pending_credits_back() {
    let desk = desk().await;
    carol_refers_dave(&desk).await;
    let paid = desk.pay("d1", "dave", 5_000, 1).await;
    let grants = paid.body["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fact"] == "credit_granted")
        .count();
    assert_eq!(grants, 2, "{}", paid.text);
    assert_credit(&credits_of(&desk, "carol").await, 1_000, 0);
    // Pending credit cannot be spent.
    let early = desk
        .platform(
            "/v1/customers/carol/credit-spends",
            json!({"spend_id": "sp-0", "amount_minor": 1, "currency": "GBP"}),
        )
        .await;
    assert_problem(
        &early,
        StatusCode::CONFLICT,
        "0 minor units of credit available (1000 still pending)",
    );
    // Refunded minutes later: both grants are reversed, nothing leaks.
    let refund = desk.refund("r1", "d1", 5_000).await;
    assert_eq!(refund.status, StatusCode::CREATED, "{}", refund.text);
    let reversals: Vec<_> = refund.body["facts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fact"] == "credit_reversed")
        .map(|f| f["user_id"].clone())
        .collect();
    assert_eq!(reversals, [json!("carol"), json!("dave")]);
    for user in ["carol", "dave"] {
        let body = credits_of(&desk, user).await;
        assert_credit(&body, 0, 0);
        assert_eq!(body["items"][0]["status"], "reversed");
        assert_eq!(body["items"][1]["reason"], "reversal");
        assert_eq!(body["items"][1]["amount_minor"], -1_000);
        assert_eq!(body["items"][1]["refund_id"], "r1");
    }
    // Paying again earns them again, held again.
    desk.pay("d2", "dave", 5_000, 2).await;
    assert_credit(&credits_of(&desk, "carol").await, 1_000, 0);
    desk.advance_days(30);
    assert_credit(&credits_of(&desk, "carol").await, 0, 1_000);
}

#[tokio::test]
async fn available_credit_is_spent_once_per_spend_id_and_never_below_zero() {
    let desk = desk().await;
    carol_refers_dave(&desk).await;
    desk.pay("d1", "dave", 6_000, 1).await;
    desk.advance_days(30);
    let spend = |id: &'static str, amount: i64| {
        let desk = &desk;
        async move {
            desk.platform(
                "/v1/customers/carol/credit-spends",
                json!({"spend_id": id, "amount_minor": amount, "currency": "GBP"}),
            )
            .await
        }
    };
    let first = spend("sp-1", 600).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(spend("sp-1", 600).await.body["replayed"], true);
    assert_problem(
        &spend("sp-1", 700).await,
        StatusCode::CONFLICT,
        "different details",
    );
    assert_problem(
        &spend("sp-2", 401).await,
        StatusCode::CONFLICT,
        "400 minor units of credit available",
    );
    assert_problem(
        &spend("sp-3", 0).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "between 1 and",
    );
    assert_eq!(spend("sp-4", 400).await.status, StatusCode::CREATED);
    let carol = credits_of(&desk, "carol").await;
    assert_credit(&carol, 0, 0);
    let spends: Vec<_> = carol["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "spend")
        .map(|c| (c["spend_id"].clone(), c["amount_minor"].clone()))
        .collect();
    assert_eq!(
        spends,
        [(json!("sp-1"), json!(-600)), (json!("sp-4"), json!(-400))]
    );
    // A refund after the hold leaves spent credit alone: nothing to reverse.
    let late = desk.refund("r1", "d1", 6_000).await;
    assert_eq!(late.status, StatusCode::CREATED, "{}", late.text);
    assert!(!late.text.contains("credit_reversed"), "{}", late.text);
    assert_credit(&credits_of(&desk, "carol").await, 0, 0);
    assert_credit(&credits_of(&desk, "dave").await, 0, 1_000);
}

#[tokio::test]
async fn the_eleventh_customer_referral_of_a_day_is_refused_until_the_next_day() {
    let desk = desk().await;
    let issued = desk
        .platform("/v1/customers/carol/referral-code", json!({}))
        .await;
    let code = issued.body["code"].as_str().unwrap().to_owned();
    for i in 0..10 {
        let answer = desk.signup(&format!("friend-{i}"), &code, None).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    }
    let eleventh = desk.signup("friend-10", &code, None).await;
    assert_problem(&eleventh, StatusCode::TOO_MANY_REQUESTS, "daily limit");
    // A retry of one already counted is still fine.
    assert_eq!(
        desk.signup("friend-3", &code, None).await.status,
        StatusCode::OK
    );
    desk.advance_days(1);
    // Each signup counts on the day it happened: one from yesterday,
    // reported today, is over yesterday's limit.
    let reported_late = desk
        .platform(
            "/v1/referrals",
            json!({"user_id": "friend-11", "code": code, "source_address": "203.0.113.9",
                   "email_sha256": EMAIL, "email_verified": false,
                   "occurred_at": desk.days_ago(1)}),
        )
        .await;
    assert_problem(
        &reported_late,
        StatusCode::TOO_MANY_REQUESTS,
        "referred 10 customers on 2026-11-02 (UTC)",
    );
    assert_eq!(
        desk.signup("friend-10", &code, None).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payments_and_verifications_never_grant_a_credit_twice() {
    let desk = desk().await;
    let issued = desk
        .platform("/v1/customers/carol/referral-code", json!({}))
        .await;
    let code = issued.body["code"].as_str().unwrap().to_owned();
    desk.signup("dave", &code, None).await;
    let desk = Arc::new(desk);
    let mut racers = Vec::new();
    for i in 0..24 {
        let desk = desk.clone();
        racers.push(tokio::spawn(async move {
            if i % 3 == 0 {
                desk.platform("/v1/email-verifications", json!({"user_id": "dave"}))
                    .await
                    .status
            } else {
                // Each of these alone crosses the threshold; half are retries.
                desk.pay(&format!("d{}", i % 6), "dave", 6_000, 1)
                    .await
                    .status
            }
        }));
    }
    for racer in racers {
        let status = racer.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
    }
    for user in ["carol", "dave"] {
        let answer = desk
            .admin_get(&format!("/v1/customers/{user}/credits"))
            .await;
        assert_eq!(answer.body["balance_minor"], 1_000, "{user}");
        assert_eq!(answer.body["items"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn the_ledger_is_on_disk_and_survives_a_restart() {
    let desk = desk().await;
    let (affiliate, code, token) = desk.enrol("alice").await;
    desk.signup("bob", &code, None).await;
    desk.pay("pay-1", "bob", 2_999, 1).await;
    let before = desk.totals(&affiliate).await;
    let commissions = format!("/v1/affiliates/{affiliate}/commissions");
    let pseudonym_before =
        desk.call("GET", &commissions, &token, None).await.body["items"][0]["user_id"].clone();
    let desk = desk.restart().await;
    assert_eq!(desk.totals(&affiliate).await, before);
    let own = desk
        .call("GET", &format!("/v1/affiliates/{affiliate}"), &token, None)
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["code"], code);
    // The affiliate's name for bob is the same after the restart.
    let pseudonym_after =
        desk.call("GET", &commissions, &token, None).await.body["items"][0]["user_id"].clone();
    assert!(pseudonym_before.as_str().unwrap().starts_with("cu_"));
    assert_eq!(pseudonym_after, pseudonym_before);
    let _ = &desk.dir;
}

#[tokio::test]
async fn an_affiliate_sees_a_stable_pseudonym_for_each_customer_and_an_admin_the_id() {
    let desk = desk().await;
    let (affiliate, code, token) = desk.enrol("alice").await;
    let (other, other_code, other_token) = desk.enrol("zoe").await;
    for (user, code) in [("bob", &code), ("carol", &code), ("dave", &other_code)] {
        assert_eq!(
            desk.signup(user, code, None).await.status,
            StatusCode::CREATED
        );
    }
    desk.pay("pay-1", "bob", 2_999, 1).await;
    desk.pay("pay-2", "bob", 2_999, 1).await;
    desk.pay("pay-3", "carol", 2_999, 1).await;
    desk.pay("pay-4", "dave", 2_999, 1).await;
    let names = |answer: &Answer| -> Vec<String> {
        answer.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let uri = format!("/v1/affiliates/{affiliate}/commissions");
    let own = names(&desk.call("GET", &uri, &token, None).await);
    assert_eq!(own.len(), 3);
    assert!(
        own.iter().all(|n| n.starts_with("cu_") && n.len() == 23),
        "{own:?}"
    );
    assert_eq!(own[0], own[1], "one customer, one name");
    assert_ne!(own[0], own[2], "two customers, two names");
    let csv = desk
        .call("GET", &format!("{uri}?format=csv"), &token, None)
        .await
        .text;
    assert!(csv.contains(&own[0]) && csv.contains(&own[2]), "{csv}");
    assert!(!csv.contains("bob") && !csv.contains("carol"), "{csv}");
    // Admins see the platform's ids.
    assert_eq!(names(&desk.admin_get(&uri).await), ["bob", "bob", "carol"]);
    // Another affiliate's customers get names of that affiliate's own.
    let theirs = names(
        &desk
            .call(
                "GET",
                &format!("/v1/affiliates/{other}/commissions"),
                &other_token,
                None,
            )
            .await,
    );
    assert_eq!(theirs.len(), 1);
    assert!(!own.contains(&theirs[0]));
}

#[tokio::test]
async fn a_fraud_case_id_that_is_no_number_is_no_case_404() {
    let desk = desk().await;
    let admin = desk.admin.clone();
    for case_id in ["-1", "abc", "18446744073709551616"] {
        let answer = desk
            .call(
                "POST",
                &format!("/v1/fraud-cases/{case_id}/decision"),
                &admin,
                Some(json!({"decision": "cleared", "reason": "checked"})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{case_id}: {}",
            answer.text
        );
        assert_eq!(answer.body["type"], "/problems/not-found", "{case_id}");
    }
    assert_eq!(
        decide_case(&desk, 1, "cleared", "checked").await.status,
        StatusCode::NOT_FOUND
    );
}
