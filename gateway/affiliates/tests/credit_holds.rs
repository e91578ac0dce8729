//! Referral credits are held from their grant, and what a refund reverses
//! is decided against the latest state, never an older view of the clock.

use eagate_affiliates::config::DAY_MS;
use eagate_affiliates::{
    Currency, Decided, Fact, PaymentEvent, Programme, ProgrammeConfig, RefundEvent, Signup,
};

const T0: u64 = 1_790_000_000_000;

fn apply(programme: &mut Programme, decided: Decided) -> Vec<Fact> {
    decided.facts.iter().for_each(|f| programme.apply(f));
    decided.facts
}

/// Alice (a customer) refers bob; bob pays 5,000 at T0.
fn alice_refers_bob(verified: bool) -> Programme {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = eagate_affiliates::ReferralCode::from_random(5);
    let issued = programme.issue_customer_code("alice", code, T0).unwrap();
    apply(&mut programme, issued);
    let signup = Signup {
        user_id: "bob".into(),
        code,
        click_id: None,
        source_address: "192.0.2.1".into(),
        email_sha256: "ef".repeat(32),
        email_verified: verified,
        occurred_at_ms: T0,
    };
    let referred = programme.refer(&signup, T0).unwrap();
    apply(&mut programme, referred);
    let paid = programme
        .pay(
            &PaymentEvent {
                payment_id: "pay-1".into(),
                user_id: "bob".into(),
                amount_minor: 5_000,
                currency: Currency::GBP,
                billing_period: 1,
                occurred_at_ms: T0,
            },
            T0,
        )
        .unwrap();
    apply(&mut programme, paid);
    programme
}

fn refund_all(programme: &Programme, now: u64) -> Vec<Fact> {
    programme
        .refund(
            &RefundEvent {
                refund_id: "ref-1".into(),
                payment_id: "pay-1".into(),
                amount_minor: 5_000,
                currency: Currency::GBP,
                occurred_at_ms: now.min(T0 + DAY_MS),
            },
            now,
        )
        .unwrap()
        .facts
}

#[test]
fn a_refund_decided_with_an_older_clock_cannot_reverse_credit_already_spent() {
    let mut programme = alice_refers_bob(true);
    let available_at = T0 + ProgrammeConfig::default().holding_period_ms;
    let spent = programme
        .spend_credit("alice", "sp-1", 1_000, Currency::GBP, available_at)
        .unwrap();
    apply(&mut programme, spent);
    // A refund that read the clock just before the spend, and was decided
    // after it: the grant is no longer pending, so nothing is reversed.
    let facts = refund_all(&programme, available_at - 1);
    assert!(
        !facts
            .iter()
            .any(|f| matches!(f, Fact::CreditReversed { .. })),
        "{facts:?}"
    );
    for fact in &facts {
        programme.apply(fact);
    }
    let balance = programme.credit_balance("alice", available_at).unwrap();
    assert_eq!((balance.pending, balance.available), (0, 0));
}

#[test]
fn credit_granted_at_a_late_verification_is_held_from_the_grant() {
    let mut programme = alice_refers_bob(false);
    let verified_at = T0 + 31 * DAY_MS;
    let verified = programme
        .verify_email("bob", verified_at, verified_at)
        .unwrap();
    let grants = apply(&mut programme, verified);
    assert_eq!(
        grants
            .iter()
            .filter(|f| matches!(f, Fact::CreditGranted { .. }))
            .count(),
        2
    );
    let balance = programme
        .credit_balance("alice", verified_at + 60_000)
        .unwrap();
    assert_eq!((balance.pending, balance.available), (1_000, 0));
    assert!(
        programme
            .spend_credit("alice", "sp-1", 1, Currency::GBP, verified_at + 60_000)
            .is_err()
    );
    // A refund a minute later takes both back.
    let facts = refund_all(&programme, verified_at + 60_000);
    let reversed = facts
        .iter()
        .filter(|f| matches!(f, Fact::CreditReversed { .. }))
        .count();
    assert_eq!(reversed, 2, "{facts:?}");
}
