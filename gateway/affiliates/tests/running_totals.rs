//! Running totals never wrap: an event that would take a customer's spend
//! or an affiliate's earnings past the ledger's limit is refused, and the
//! ledger is left as it was.

use eagate_affiliates::money::{MAX_AMOUNT, MAX_TOTAL, TotalOutOfRange};
use eagate_affiliates::programme::PaymentError;
use eagate_affiliates::{Currency, PaymentEvent, Programme, ProgrammeConfig, ReferralCode, Signup};

const NOW: u64 = 1_790_000_000_000;

fn payment(n: u32) -> PaymentEvent {
    PaymentEvent {
        payment_id: format!("pay-{n}"),
        user_id: "whale".into(),
        amount_minor: MAX_AMOUNT,
        currency: Currency::GBP,
        billing_period: 1,
        occurred_at_ms: NOW,
    }
}

#[test]
fn a_payment_past_the_largest_total_is_refused_not_wrapped() {
    let mut programme = Programme::new(ProgrammeConfig::default());
    let code = ReferralCode::from_random(7);
    let enrolled = programme
        .enrol_affiliate(
            "aff",
            "af_1",
            code,
            &"ab".repeat(32),
            &Default::default(),
            NOW,
        )
        .unwrap();
    enrolled.facts.iter().for_each(|f| programme.apply(f));
    let signup = Signup {
        user_id: "whale".into(),
        code,
        click_id: None,
        source_address: "192.0.2.1".into(),
        email_sha256: "cd".repeat(32),
        email_verified: true,
        occurred_at_ms: NOW,
    };
    let referred = programme.refer(&signup, NOW).unwrap();
    referred.facts.iter().for_each(|f| programme.apply(f));
    // 1,000 payments of the largest amount reach the largest total exactly.
    let per_payment = MAX_TOTAL / MAX_AMOUNT;
    for n in 0..per_payment as u32 {
        let decided = programme.pay(&payment(n), NOW).unwrap();
        decided.facts.iter().for_each(|f| programme.apply(f));
    }
    assert_eq!(
        programme.pay(&payment(u32::MAX), NOW),
        Err(PaymentError::TotalOutOfRange(TotalOutOfRange))
    );
    assert_eq!(programme.payment_count(), per_payment as usize);
    let balances = programme.balances("af_1", NOW).unwrap().unwrap();
    assert_eq!(balances.earned, MAX_TOTAL / 10 * 3);
    assert_eq!(balances.pending, balances.earned);
}
