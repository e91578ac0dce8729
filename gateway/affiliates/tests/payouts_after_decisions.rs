//! Payouts against fraud decisions made while they wait: a confirmed case
//! fails an unsent payout holding its commissions (and reverses them), and
//! a refused self-referral, which holds nothing, stops no payout.

use eagate_affiliates::programme::PayoutOutcome;
use eagate_affiliates::{
    CaseDecision, Currency, Decided, Fact, PaymentEvent, PayoutProvider, Programme,
    ProgrammeConfig, ReferralCode, Signup, TradeSide,
};

const T0: u64 = 1_790_000_000_000;
const DAY: u64 = 86_400_000;

fn apply(p: &mut Programme, d: Decided) -> Vec<Fact> {
    d.facts.iter().for_each(|f| p.apply(f));
    d.facts
}

/// af_a refers t, who pays 50,000 at T0 (15,000 commission); af_a is paid
/// through Stripe.
fn owed() -> Programme {
    let mut p = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(6);
    let d = p
        .enrol_affiliate("a", "af_a", code, &"aa".repeat(32), &Default::default(), T0)
        .unwrap();
    apply(&mut p, d);
    let signup = Signup {
        user_id: "t".into(),
        code,
        click_id: None,
        source_address: "192.0.2.5".into(),
        email_sha256: format!("{:064x}", 7),
        email_verified: true,
        occurred_at_ms: T0,
    };
    let d = p.refer(&signup, T0).unwrap();
    apply(&mut p, d);
    let pay = PaymentEvent {
        payment_id: "p1".into(),
        user_id: "t".into(),
        amount_minor: 50_000,
        currency: Currency::GBP,
        billing_period: 1,
        occurred_at_ms: T0,
    };
    let d = p.pay(&pay, T0).unwrap();
    apply(&mut p, d);
    let d = p.set_payout_account("af_a", "acct_1", T0).unwrap();
    apply(&mut p, d);
    p
}

/// A Stripe batch opens; the run stops before sending (a crash, a
/// restart, a Stripe key missing for a while). Meanwhile a wash-trading
/// case opens on the customer and an admin confirms it: the payout fails
/// in the same write and its commission is reversed; nothing is sent.
#[test]
fn a_pending_payout_is_not_sent_after_a_case_on_its_commissions_was_confirmed() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    let d = p.open_batch(PayoutProvider::Stripe, None, now).unwrap();
    apply(&mut p, d);
    let day = (now / DAY) as i64;
    for (seq, side) in [(1, TradeSide::Buy), (2, TradeSide::Sell)] {
        let d = p.trade_seen(
            "t",
            ("dv_t", seq),
            "EURUSD",
            side,
            100_000_000,
            day,
            now + 1,
        );
        apply(&mut p, d);
    }
    let d = p
        .decide_case(1, CaseDecision::Confirmed, "token:x", "fraud", now + 2)
        .unwrap();
    apply(&mut p, d);
    let sent = match p.submit_payout("pb_1-af_a", now + 3) {
        Ok(submitted) => {
            let sent = matches!(submitted.facts.first(), Some(Fact::PayoutSubmitted { .. }));
            apply(&mut p, submitted);
            sent
        }
        // Already failed by the confirmation.
        Err(_) => false,
    };
    if sent {
        let d = p
            .record_answer(
                "pb_1-af_a",
                PayoutOutcome::Paid {
                    reference: "tr_1".into(),
                },
                now + 4,
            )
            .unwrap();
        apply(&mut p, d);
    }
    let b = p.balances("af_a", now + 4).unwrap().unwrap();
    assert!(
        !sent && b.paid == 0 && b.reversed == 15_000,
        "sent to Stripe: {sent}; the confirmed fraud's commission ended {b:?}"
    );
}

/// The affiliate once called the API from a shared address (a café, an
/// office, a mobile carrier's NAT). A stranger there signs up with their
/// code: the signup is refused as a self-referral and a refused case opens
/// that holds nothing. It keeps the affiliate out of no batch.
#[test]
fn a_refused_self_referral_case_holding_nothing_does_not_stop_payouts() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    let d = p.affiliate_address_seen("af_a", "198.51.100.7", T0);
    apply(&mut p, d);
    let code = p.affiliate("af_a").unwrap().code;
    let stranger = Signup {
        user_id: "stranger".into(),
        code,
        click_id: None,
        source_address: "198.51.100.7".into(),
        email_sha256: format!("{:064x}", 99),
        email_verified: true,
        occurred_at_ms: now,
    };
    let Err(eagate_affiliates::programme::ReferralError::SelfReferral {
        referrer, evidence, ..
    }) = p.refer(&stranger, now)
    else {
        panic!("not refused as a self-referral");
    };
    let d = p.self_referral_case(&stranger, referrer, evidence, now);
    apply(&mut p, d);
    let d = p.open_batch(PayoutProvider::Manual, None, now + 1).unwrap();
    let paid: Vec<i64> = apply(&mut p, d)
        .into_iter()
        .filter_map(|f| match f {
            Fact::PayoutPending { amount_minor, .. } => Some(amount_minor),
            _ => None,
        })
        .collect();
    assert_eq!(
        paid,
        [15_000],
        "af_a's earned, undisputed 15,000 was not batched"
    );
}
