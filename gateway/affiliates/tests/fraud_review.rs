//! Fraud cases hold exactly what they are about: a held customer's
//! referral credits wait for the decision, a refused self-referral's case
//! touches no other referrer's money, and a signup reported late is
//! counted with the signups around it.

use eagate_affiliates::programme::AffiliateIdentity;
use eagate_affiliates::{
    CaseDecision, CaseKind, Currency, Decided, Fact, PaymentEvent, Programme, ProgrammeConfig,
    ReferralCode, Signup,
};

const T0: u64 = 1_790_000_000_000;
const HOUR: u64 = 3_600_000;

fn apply(programme: &mut Programme, decided: Decided) -> Vec<Fact> {
    decided.facts.iter().for_each(|f| programme.apply(f));
    decided.facts
}

fn signup(user: &str, code: ReferralCode, address: &str, at: u64, verified: bool) -> Signup {
    Signup {
        user_id: user.into(),
        code,
        click_id: None,
        source_address: address.into(),
        email_sha256: format!(
            "{:064x}",
            user.len() as u64 * 7 + u64::from(user.as_bytes()[0])
        ),
        email_verified: verified,
        occurred_at_ms: at,
    }
}

fn payment(id: &str, user: &str, amount: i64, at: u64) -> PaymentEvent {
    PaymentEvent {
        payment_id: id.into(),
        user_id: user.into(),
        amount_minor: amount,
        currency: Currency::GBP,
        billing_period: 1,
        occurred_at_ms: at,
    }
}

fn count(facts: &[Fact], what: fn(&Fact) -> bool) -> usize {
    facts.iter().filter(|f| what(f)).count()
}

/// Alice, a customer, refers three customers and then bob from one
/// address: bob's referral is held. Returns the programme and bob's case.
fn bob_held() -> (Programme, u64) {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(9);
    let issued = programme.issue_customer_code("alice", code, T0).unwrap();
    apply(&mut programme, issued);
    for (n, user) in ["u1", "u2", "u3", "bob"].into_iter().enumerate() {
        let at = T0 + n as u64 * HOUR;
        let referred = programme
            .refer(&signup(user, code, "192.0.2.77", at, false), at)
            .unwrap();
        let facts = apply(&mut programme, referred);
        let opened = count(&facts, |f| matches!(f, Fact::CaseOpened { .. }));
        assert_eq!(opened, usize::from(user == "bob"), "{user}");
    }
    (programme, 1)
}

#[test]
fn a_held_customers_referral_credits_wait_for_the_decision() {
    let (mut programme, case) = bob_held();
    let now = T0 + 5 * HOUR;
    let paid = programme
        .pay(&payment("p1", "bob", 5_000, now), now)
        .unwrap();
    apply(&mut programme, paid);
    let verified = programme.verify_email("bob", now, now).unwrap();
    let facts = apply(&mut programme, verified);
    assert_eq!(
        count(&facts, |f| matches!(f, Fact::CreditGranted { .. })),
        0
    );
    // Cleared: the credits due are granted with the decision.
    let cleared = programme
        .decide_case(
            case,
            CaseDecision::Cleared,
            "token:abc",
            "a real friend",
            now + 1,
        )
        .unwrap();
    let facts = apply(&mut programme, cleared);
    assert_eq!(
        count(&facts, |f| matches!(f, Fact::CreditGranted { .. })),
        2
    );
    let balance = programme.credit_balance("alice", now + 1).unwrap();
    assert_eq!((balance.pending, balance.available), (1_000, 0));

    // Confirmed instead: no credit then, nor after a later verification.
    let (mut programme, case) = bob_held();
    let paid = programme
        .pay(&payment("p1", "bob", 5_000, now), now)
        .unwrap();
    apply(&mut programme, paid);
    let confirmed = programme
        .decide_case(
            case,
            CaseDecision::Confirmed,
            "token:abc",
            "a farm",
            now + 1,
        )
        .unwrap();
    apply(&mut programme, confirmed);
    let verified = programme.verify_email("bob", now + 2, now + 2).unwrap();
    let facts = apply(&mut programme, verified);
    assert_eq!(
        count(&facts, |f| matches!(f, Fact::CreditGranted { .. })),
        0
    );
    assert_eq!(
        programme
            .credit_balance("alice", now + 40 * 24 * HOUR)
            .unwrap()
            .available,
        0
    );
}

#[test]
fn confirming_a_refused_self_referral_touches_no_other_referrers_money() {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let (code_a, code_b) = (ReferralCode::from_random(1), ReferralCode::from_random(2));
    let identity = AffiliateIdentity {
        email_sha256: None,
        source_address: Some("198.51.100.20".into()),
    };
    let a = programme
        .enrol_affiliate("a", "af_a", code_a, &"aa".repeat(32), &identity, T0)
        .unwrap();
    apply(&mut programme, a);
    let b = programme
        .enrol_affiliate(
            "b",
            "af_b",
            code_b,
            &"bb".repeat(32),
            &Default::default(),
            T0,
        )
        .unwrap();
    apply(&mut programme, b);
    let own = signup("u", code_a, "198.51.100.20", T0, true);
    let Err(eagate_affiliates::programme::ReferralError::SelfReferral {
        referrer, evidence, ..
    }) = programme.refer(&own, T0)
    else {
        panic!("a self-referral");
    };
    let case = programme.self_referral_case(&own, referrer, evidence, T0);
    apply(&mut programme, case);
    assert_eq!(programme.cases()[0].kind, CaseKind::SelfReferral);
    let with_b = programme
        .refer(&signup("u", code_b, "192.0.2.9", T0 + 1, true), T0 + 1)
        .unwrap();
    apply(&mut programme, with_b);
    let paid = programme
        .pay(&payment("p1", "u", 10_000, T0 + 2), T0 + 2)
        .unwrap();
    apply(&mut programme, paid);
    let confirmed = programme
        .decide_case(
            1,
            CaseDecision::Confirmed,
            "token:abc",
            "alice's own account",
            T0 + 3,
        )
        .unwrap();
    let facts = apply(&mut programme, confirmed);
    assert_eq!(
        count(&facts, |f| matches!(f, Fact::CommissionReversed { .. })),
        0
    );
    assert_eq!(
        programme.balances("af_b", T0 + 3).unwrap().unwrap().pending,
        3_000
    );
}

#[test]
fn a_signup_reported_late_is_counted_with_the_signups_after_it() {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(4);
    let enrolled = programme
        .enrol_affiliate("a", "af_a", code, &"aa".repeat(32), &Default::default(), T0)
        .unwrap();
    apply(&mut programme, enrolled);
    let now = T0 + 4 * HOUR;
    for (user, at) in [
        ("u1", T0 + HOUR),
        ("u2", T0 + 2 * HOUR),
        ("u3", T0 + 3 * HOUR),
    ] {
        let referred = programme
            .refer(&signup(user, code, "192.0.2.60", at, false), now)
            .unwrap();
        apply(&mut programme, referred);
    }
    // The earliest of the four, reported last.
    let late = programme
        .refer(&signup("u0", code, "192.0.2.60", T0 + 1_000, false), now)
        .unwrap();
    let facts = apply(&mut programme, late);
    assert_eq!(count(&facts, |f| matches!(f, Fact::CaseOpened { .. })), 1);
}

/// Customer `t`, referred by affiliate `af_a`, their trades watched.
fn t_referred_by_an_affiliate() -> Programme {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(6);
    let enrolled = programme
        .enrol_affiliate("a", "af_a", code, &"aa".repeat(32), &Default::default(), T0)
        .unwrap();
    apply(&mut programme, enrolled);
    let referred = programme
        .refer(&signup("t", code, "192.0.2.5", T0, false), T0)
        .unwrap();
    apply(&mut programme, referred);
    assert!(programme.watches_trades("t"));
    programme
}

#[test]
fn offsetting_volume_within_the_tolerance_opens_a_wash_case_and_beyond_it_does_not() {
    use eagate_affiliates::TradeSide::{Buy, Sell};
    let day = (T0 / (24 * HOUR)) as i64;
    // (bought, sold) in 10^-8 lot: 10% apart of the larger counts; more
    // does not; a buy alone never does.
    for (bought, sold, wash) in [
        (100_000_000, 90_000_000, true),
        (100_000_000, 89_999_999, false),
        (100_000_000, 0, false),
    ] {
        let mut programme = t_referred_by_an_affiliate();
        let mut opened = 0;
        for (side, lots) in [(Buy, bought), (Sell, sold)] {
            let seq = if side == Buy { 1 } else { 2 };
            let seen = programme.trade_seen("t", ("dv_t", seq), "EURUSD", side, lots, day, T0 + 1);
            let facts = apply(&mut programme, seen);
            opened += count(&facts, |f| matches!(f, Fact::CaseOpened { .. }));
        }
        assert_eq!(opened == 1, wash, "{bought} / {sold}");
        // Another day's trades are not this day's.
        let next = programme.trade_seen("t", ("dv_t", 3), "EURUSD", Sell, bought, day + 1, T0 + 2);
        assert_eq!(
            count(&next.facts, |f| matches!(f, Fact::CaseOpened { .. })),
            0
        );
    }
}

#[test]
fn a_fill_handed_over_twice_by_the_feed_counts_once() {
    use eagate_affiliates::TradeSide::{Buy, Sell};
    let day = (T0 / (24 * HOUR)) as i64;
    let mut programme = t_referred_by_an_affiliate();
    let buy = programme.trade_seen("t", ("dv_t", 1), "EURUSD", Buy, 100_000_000, day, T0);
    apply(&mut programme, buy);
    // The feed hands the buy over again (a reader stopped before claiming).
    let again = programme.trade_seen("t", ("dv_t", 1), "EURUSD", Buy, 100_000_000, day, T0);
    assert!(again.replayed);
    let sell = programme.trade_seen("t", ("dv_t", 2), "EURUSD", Sell, 95_000_000, day, T0);
    let facts = apply(&mut programme, sell);
    assert_eq!(count(&facts, |f| matches!(f, Fact::CaseOpened { .. })), 1);
}

#[test]
fn the_shared_address_check_lets_go_of_addresses_no_signup_can_be_counted_with() {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(3);
    let enrolled = programme
        .enrol_affiliate("a", "af_a", code, &"aa".repeat(32), &Default::default(), T0)
        .unwrap();
    apply(&mut programme, enrolled);
    // A signup a day from a new address each, for a year.
    let day = 24 * HOUR;
    for n in 0..365u64 {
        let at = T0 + n * day;
        let user = format!("user-{n}");
        let address = format!("10.{}.{}.1", n / 250, n % 250);
        let referred = programme
            .refer(&signup(&user, code, &address, at, false), at)
            .unwrap();
        apply(&mut programme, referred);
    }
    // What a late signup could still be counted with: the window and the
    // longest a signup may be late (the click retention), not the year.
    let config = ProgrammeConfig::default();
    let kept_days = (config.shared_address_window_ms + config.click_retention_ms()) / day + 1;
    let remembered = programme.remembered_signup_addresses() as u64;
    assert!(
        (kept_days - 1..=kept_days + 1).contains(&remembered),
        "{remembered} addresses remembered, {kept_days} days kept"
    );
    // And the check still counts what it must: four from one address today.
    let today = T0 + 365 * day;
    let mut held = 0;
    for n in 0..4u64 {
        let user = format!("late-{n}");
        let decided = programme
            .refer(
                &signup(&user, code, "198.51.100.1", today + n, false),
                today + n,
            )
            .unwrap();
        held += count(&apply(&mut programme, decided), |f| {
            matches!(
                f,
                Fact::CaseOpened {
                    kind: CaseKind::SharedAddress,
                    ..
                }
            )
        });
    }
    assert_eq!(held, 1);
}
