//! Payout batches against what happens while a payout is in flight or
//! waits: a fraud case opened or confirmed (which fails an unsent payout
//! holding its commissions), a refused self-referral (which holds nothing
//! and stops nothing), a refund clawed back, a hand payout whose id looks
//! like a batch's.

use eagate_affiliates::programme::{PayoutOutcome, PayoutState, ReferralError};
use eagate_affiliates::{
    Balances, CaseDecision, Currency, Decided, Fact, PaymentEvent, PayoutProvider, Programme,
    ProgrammeConfig, ReferralCode, RefundEvent, Signup, TradeSide,
};

const T0: u64 = 1_790_000_000_000;
const DAY: u64 = 86_400_000;

fn apply(programme: &mut Programme, decided: Decided) -> Vec<Fact> {
    decided.facts.iter().for_each(|f| programme.apply(f));
    decided.facts
}

/// af_a refers customer t, who pays 50,000 at T0: a 15,000 commission.
fn owed() -> Programme {
    let mut p = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(6);
    let d = p
        .enrol_affiliate("a", "af_a", code, &"aa".repeat(32), &Default::default(), T0)
        .unwrap();
    apply(&mut p, d);
    let d = p.refer(&signup("t", code), T0).unwrap();
    apply(&mut p, d);
    let d = p.pay(&payment("p1", 50_000, T0), T0).unwrap();
    apply(&mut p, d);
    p
}

fn signup(user: &str, code: ReferralCode) -> Signup {
    Signup {
        user_id: user.into(),
        code,
        click_id: None,
        source_address: "192.0.2.5".into(),
        email_sha256: format!("{:064x}", user.len() * 7 + 1),
        email_verified: true,
        occurred_at_ms: T0,
    }
}

fn payment(id: &str, amount: i64, at: u64) -> PaymentEvent {
    PaymentEvent {
        payment_id: id.into(),
        user_id: "t".into(),
        amount_minor: amount,
        currency: Currency::GBP,
        billing_period: 1,
        occurred_at_ms: at,
    }
}

/// A wash-trading case on t (case 1).
fn wash_case(p: &mut Programme, now: u64) {
    let day = (now / DAY) as i64;
    for (seq, side) in [(1, TradeSide::Buy), (2, TradeSide::Sell)] {
        let d = p.trade_seen("t", ("dv_t", seq), "EURUSD", side, 100_000_000, day, now);
        apply(p, d);
    }
    assert!(p.cases().iter().any(|c| c.decision.is_none()));
}

fn open_manual_batch(p: &mut Programme, now: u64) -> Vec<(String, i64)> {
    let d = p.open_batch(PayoutProvider::Manual, None, now).unwrap();
    apply(p, d)
        .into_iter()
        .filter_map(|f| match f {
            Fact::PayoutPending {
                payout_id,
                amount_minor,
                ..
            } => Some((payout_id, amount_minor)),
            _ => None,
        })
        .collect()
}

fn bal(p: &Programme, now: u64) -> Balances {
    p.balances("af_a", now).unwrap().unwrap()
}

fn fail(p: &mut Programme, id: &str, now: u64) {
    let d = p
        .settle_by_hand(
            id,
            PayoutOutcome::Failed {
                reason: "bounced".into(),
            },
            now,
        )
        .unwrap();
    apply(p, d);
}

fn confirm(p: &mut Programme, now: u64) {
    let d = p
        .decide_case(1, CaseDecision::Confirmed, "token:x", "fraud", now)
        .unwrap();
    apply(p, d);
}

/// A case opened while a payout is pending: when the payout fails its
/// commission comes back held, not payable; no hand payout or batch pays
/// it while the case is open; confirming reverses it.
#[test]
fn a_commission_back_from_a_failed_payout_is_held_by_a_case_opened_meanwhile() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    let batch = open_manual_batch(&mut p, now);
    assert_eq!(batch, [("pb_1-af_a".to_owned(), 15_000)]);
    wash_case(&mut p, now + 1);
    fail(&mut p, "pb_1-af_a", now + 2);
    let while_open = bal(&p, now + 2);
    // The hand payout route pays it while the case is open.
    let hand = p.pay_out("af_a", "hand-1", now + 2).is_ok();
    confirm(&mut p, now + 3);
    let after_confirm = bal(&p, now + 3);
    let next_batch = open_manual_batch(&mut p, now + 4);
    assert_eq!(
        (
            while_open.held,
            while_open.payable,
            hand,
            after_confirm.reversed,
            next_batch
        ),
        (15_000, 0, false, 15_000, vec![]),
        "held/payable while the case is open, hand payout allowed, reversed after confirm, next batch"
    );
}

/// A refund while the payout is in flight is a clawback; the payout then
/// fails and a case confirms the customer's fraud: the commission is taken
/// back once, never twice.
#[test]
fn a_clawback_then_a_failed_payout_then_a_confirmed_case_take_the_commission_back_once() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    open_manual_batch(&mut p, now);
    let refund = RefundEvent {
        refund_id: "r1".into(),
        payment_id: "p1".into(),
        amount_minor: 50_000,
        currency: Currency::GBP,
        occurred_at_ms: now + 1,
    };
    let d = p.refund(&refund, now + 1).unwrap();
    let facts = apply(&mut p, d);
    assert!(matches!(
        facts[1],
        Fact::ClawbackEntered {
            amount_minor: -15_000,
            ..
        }
    ));
    fail(&mut p, "pb_1-af_a", now + 2);
    wash_case(&mut p, now + 3);
    confirm(&mut p, now + 4);
    let b = bal(&p, now + 4);
    assert_eq!(b.earned, 15_000);
    assert_eq!(
        (b.payable, b.reversed),
        (0, 15_000),
        "the whole commission was refunded, never paid: nothing is owed either way; {b:?}"
    );
}

/// Hand payouts cannot take ids of the batches' form, and a batch never
/// takes an id already used: the history keeps every payout.
#[test]
fn hand_payouts_cannot_take_batch_payout_ids() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    assert_eq!(
        p.pay_out("af_a", "pb_1-af_a", now),
        Err(eagate_affiliates::programme::PayoutError::ReservedId)
    );
    let d = p.pay_out("af_a", "hand-1", now).unwrap();
    apply(&mut p, d);
    let d = p.pay(&payment("p2", 100_000, now), now).unwrap();
    apply(&mut p, d);
    let later = now + 31 * DAY;
    let batch = open_manual_batch(&mut p, later);
    assert_eq!(batch, [("pb_1-af_a".to_owned(), 15_000)]); // month two: 15%
    let history: Vec<(String, PayoutState, i64)> = p
        .payouts()
        .map(|r| (r.payout_id.to_owned(), r.state, r.amount_minor))
        .collect();
    assert_eq!(
        history,
        [
            ("hand-1".to_owned(), PayoutState::Paid, 15_000),
            ("pb_1-af_a".to_owned(), PayoutState::Pending, 15_000)
        ]
    );
}

/// A payout that fails after the customer's fraud was confirmed brings
/// nothing back to payable: the commission is reversed.
#[test]
fn a_payout_failing_after_its_customers_fraud_was_confirmed_reverses_the_commission() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    open_manual_batch(&mut p, now);
    wash_case(&mut p, now + 1);
    confirm(&mut p, now + 2);
    fail(&mut p, "pb_1-af_a", now + 3);
    let b = bal(&p, now + 3);
    assert_eq!((b.payable, b.held, b.reversed), (0, 0, 15_000), "{b:?}");
    assert!(open_manual_batch(&mut p, now + 4).is_empty());
}

/// A Stripe batch opens; the run stops before sending (a crash, a
/// restart, a Stripe key missing for a while). Meanwhile a wash-trading
/// case opens on the customer and an admin confirms it: the payout fails
/// in the same write and its commission is reversed; nothing is sent.
#[test]
fn confirming_a_case_fails_an_unsent_payout_holding_its_commission() {
    let mut p = owed();
    let d = p.set_payout_account("af_a", "acct_1", T0).unwrap();
    apply(&mut p, d);
    let now = T0 + 31 * DAY;
    let d = p.open_batch(PayoutProvider::Stripe, None, now).unwrap();
    apply(&mut p, d);
    wash_case(&mut p, now + 1);
    confirm(&mut p, now + 2);
    let sent = p
        .submit_payout("pb_1-af_a", now + 3)
        .is_ok_and(|d| matches!(d.facts.first(), Some(Fact::PayoutSubmitted { .. })));
    let b = bal(&p, now + 3);
    assert!(
        !sent && (b.paid, b.paying, b.reversed) == (0, 0, 15_000),
        "sent: {sent}; {b:?}"
    );
}

/// The affiliate once called the API from a shared address (a café, an
/// office, a mobile carrier's NAT). A stranger there signs up with their
/// code: refused as a self-referral, a refused case that holds nothing,
/// and it keeps the affiliate out of no batch.
#[test]
fn a_refused_self_referral_holding_nothing_stops_no_payout() {
    let mut p = owed();
    let now = T0 + 31 * DAY;
    let d = p.affiliate_address_seen("af_a", "198.51.100.7", T0);
    apply(&mut p, d);
    let code = p.affiliate("af_a").unwrap().code;
    let mut stranger = signup("stranger", code);
    stranger.source_address = "198.51.100.7".into();
    stranger.occurred_at_ms = now;
    let Err(ReferralError::SelfReferral {
        referrer, evidence, ..
    }) = p.refer(&stranger, now)
    else {
        panic!("not refused as a self-referral");
    };
    let d = p.self_referral_case(&stranger, referrer, evidence, now);
    apply(&mut p, d);
    assert_eq!(
        open_manual_batch(&mut p, now + 1),
        [("pb_1-af_a".to_owned(), 15_000)]
    );
}
