//! Set-up shared by the tests that write through a journal on disk.
#![allow(dead_code, unreachable_pub)]

use eagate_affiliates::{Currency, Ledger, PaymentEvent, ReferralCode, Signup};

/// The time the tests' events happen at.
pub const T0: u64 = 1_790_000_000_000;

/// Journals affiliate `af_1` and its referred customer `cust`.
pub async fn affiliate_with_customer(ledger: &Ledger) {
    let code = ReferralCode::from_random(5);
    ledger
        .write(|p| {
            p.enrol_affiliate(
                "aff",
                "af_1",
                code,
                &"ab".repeat(32),
                &Default::default(),
                T0,
            )
        })
        .await
        .unwrap();
    let signup = Signup {
        user_id: "cust".into(),
        code,
        click_id: None,
        source_address: "192.0.2.1".into(),
        email_sha256: "cd".repeat(32),
        email_verified: true,
        occurred_at_ms: T0,
    };
    ledger.write(|p| p.refer(&signup, T0)).await.unwrap();
}

/// `cust`'s payment number `n` of `amount_minor`, at `T0 + n`.
pub fn payment(n: u64, amount_minor: i64) -> PaymentEvent {
    PaymentEvent {
        payment_id: format!("pay-{n}"),
        user_id: "cust".into(),
        amount_minor,
        currency: Currency::GBP,
        billing_period: 1,
        occurred_at_ms: T0 + n,
    }
}
