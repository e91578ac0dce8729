//! Property tests over random event sequences: the ledger balances to the
//! penny after every step, every event counts once however often it is
//! retried (in sequence, after a restart, or concurrently), and replaying
//! the journal rebuilds the same state.

use std::collections::HashMap;
use std::sync::Arc;

use eagate_affiliates::config::DAY_MS;
use eagate_affiliates::{
    Balances, CommissionKind, Currency, Decided, Fact, Ledger, PaymentEvent, Programme,
    ProgrammeConfig, ReferralCode, RefundEvent, Signup,
};
use proptest::prelude::*;

const AFFILIATES: usize = 2;
const CUSTOMERS: usize = 2;
const START_MS: u64 = 1_790_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Signup {
        user: u8,
        code: u8,
        verified: bool,
    },
    Pay {
        payment: u8,
        user: u8,
        amount: i64,
        period: u32,
    },
    Refund {
        refund: u8,
        payment: u8,
        amount: i64,
    },
    Trade {
        user: u8,
    },
    Verify {
        user: u8,
    },
    Advance {
        days: u64,
    },
    Payout {
        affiliate: u8,
        payout: u8,
    },
    /// A customer (`cust-…` below CUSTOMERS, else `user-…`) spends credit.
    Spend {
        customer: u8,
        spend: u8,
        amount: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8, 0..(AFFILIATES + CUSTOMERS) as u8, any::<bool>()).prop_map(
            |(user, code, verified)| Op::Signup {
                user,
                code,
                verified
            }
        ),
        (0..16u8, 0..8u8, 1..20_000i64, 1..4u32).prop_map(|(payment, user, amount, period)| {
            Op::Pay {
                payment,
                user,
                amount,
                period,
            }
        }),
        (0..12u8, 0..16u8, 1..12_000i64).prop_map(|(refund, payment, amount)| Op::Refund {
            refund,
            payment,
            amount
        }),
        (0..8u8).prop_map(|user| Op::Trade { user }),
        (0..8u8).prop_map(|user| Op::Verify { user }),
        (0..40u64).prop_map(|days| Op::Advance { days }),
        (0..AFFILIATES as u8, 0..6u8)
            .prop_map(|(affiliate, payout)| Op::Payout { affiliate, payout }),
        (0..(CUSTOMERS + 8) as u8, 0..6u8, 1..1_500i64).prop_map(|(customer, spend, amount)| {
            Op::Spend {
                customer,
                spend,
                amount,
            }
        }),
    ]
}

fn code(i: usize) -> ReferralCode {
    ReferralCode::from_random(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1))
}

fn affiliate_id(i: usize) -> String {
    format!("af_{i}")
}

/// The setup every sequence starts from: affiliates and customers with codes.
fn setup_facts(programme: &Programme) -> Vec<Vec<Fact>> {
    let mut batches = Vec::new();
    let mut programme = programme.clone();
    for i in 0..AFFILIATES {
        let decided = programme
            .enrol_affiliate(
                &format!("aff-user-{i}"),
                &affiliate_id(i),
                code(i),
                &format!("{i:064x}"),
                &Default::default(),
                START_MS,
            )
            .expect("enrol");
        decided.facts.iter().for_each(|f| programme.apply(f));
        batches.push(decided.facts);
    }
    for i in 0..CUSTOMERS {
        let decided = programme
            .issue_customer_code(&format!("cust-{i}"), code(AFFILIATES + i), START_MS)
            .expect("code");
        decided.facts.iter().for_each(|f| programme.apply(f));
        batches.push(decided.facts);
    }
    batches
}

/// The default rules, but any payout allowed: the sequences' commissions
/// are pennies, and payouts netting clawbacks are what is tested.
fn rules() -> ProgrammeConfig {
    ProgrammeConfig {
        payout_minimum: 1,
        ..ProgrammeConfig::default()
    }
}

/// Decides `op` at `now`; `None` for a refusal.
fn decide(programme: &Programme, op: &Op, now: u64) -> Option<Decided> {
    match op {
        Op::Signup {
            user,
            code: c,
            verified,
        } => programme
            .refer(
                &Signup {
                    user_id: format!("user-{user}"),
                    code: code(*c as usize),
                    click_id: None,
                    source_address: "192.0.2.1".into(),
                    email_sha256: format!("{user:064x}"),
                    email_verified: *verified,
                    occurred_at_ms: now,
                },
                now,
            )
            .ok(),
        Op::Pay {
            payment,
            user,
            amount,
            period,
        } => programme
            .pay(
                &PaymentEvent {
                    payment_id: format!("pay-{payment}"),
                    user_id: format!("user-{user}"),
                    amount_minor: *amount,
                    currency: Currency::GBP,
                    billing_period: *period,
                    occurred_at_ms: now,
                },
                now,
            )
            .ok(),
        Op::Refund {
            refund,
            payment,
            amount,
        } => programme
            .refund(
                &RefundEvent {
                    refund_id: format!("ref-{refund}"),
                    payment_id: format!("pay-{payment}"),
                    amount_minor: *amount,
                    currency: Currency::GBP,
                    occurred_at_ms: now,
                },
                now,
            )
            .ok(),
        Op::Trade { user } => Some(programme.first_trade(&format!("user-{user}"), "dv_1", now)),
        Op::Verify { user } => programme
            .verify_email(&format!("user-{user}"), now, now)
            .ok(),
        Op::Spend {
            customer,
            spend,
            amount,
        } => programme
            .spend_credit(
                &customer_id(*customer),
                &format!("sp-{spend}"),
                *amount,
                Currency::GBP,
                now,
            )
            .ok(),
        Op::Advance { .. } => None,
        Op::Payout { affiliate, payout } => programme
            .pay_out(
                &affiliate_id(*affiliate as usize),
                &format!("po-{payout}"),
                now,
            )
            .ok(),
    }
}

/// Who spends in `Op::Spend`: the code-owning customers, then the users.
fn customer_id(n: u8) -> String {
    if usize::from(n) < CUSTOMERS {
        format!("cust-{n}")
    } else {
        format!("user-{}", usize::from(n) - CUSTOMERS)
    }
}

/// Sums the facts independently of the programme's own bookkeeping.
#[derive(Debug, Default)]
struct Tally {
    earned: HashMap<String, i64>,
    paid: HashMap<String, i64>,
    reversed: HashMap<String, i64>,
}

fn tally(facts: &[Fact]) -> Tally {
    let mut tally = Tally::default();
    let mut owner = HashMap::new();
    for fact in facts {
        match fact {
            Fact::CommissionEarned {
                entry_id,
                affiliate_id,
                amount_minor,
                ..
            } => {
                owner.insert(*entry_id, affiliate_id.clone());
                *tally.earned.entry(affiliate_id.clone()).or_default() += amount_minor;
            }
            Fact::CommissionReversed {
                entry_id,
                amount_minor,
                ..
            } => {
                *tally.reversed.entry(owner[entry_id].clone()).or_default() += amount_minor;
            }
            Fact::ClawbackEntered {
                affiliate_id,
                amount_minor,
                ..
            } => {
                *tally.reversed.entry(affiliate_id.clone()).or_default() -= amount_minor;
            }
            Fact::PayoutMade {
                affiliate_id,
                amount_minor,
                ..
            } => {
                *tally.paid.entry(affiliate_id.clone()).or_default() += amount_minor;
            }
            _ => {}
        }
    }
    tally
}

fn check_invariants(programme: &Programme, facts: &[Fact], now: u64) -> Result<(), TestCaseError> {
    let tally = tally(facts);
    for i in 0..AFFILIATES {
        let id = affiliate_id(i);
        let b: Balances = programme
            .balances(&id, now)
            .expect("in range")
            .expect("affiliate");
        prop_assert_eq!(
            b.earned,
            b.pending + b.held + b.payable + b.paid + b.reversed,
            "{} {:?}",
            id,
            b
        );
        prop_assert_eq!(b.earned, tally.earned.get(&id).copied().unwrap_or(0));
        prop_assert_eq!(b.paid, tally.paid.get(&id).copied().unwrap_or(0));
        prop_assert_eq!(b.reversed, tally.reversed.get(&id).copied().unwrap_or(0));
        prop_assert!(
            b.pending >= 0
                && b.held >= 0
                && b.paid >= 0
                && b.reversed >= 0
                && b.reversed <= b.earned
        );
    }
    // Each payment once; at most one subscription commission and one bonus
    // per payment; at most one bonus per user; credits once per referral.
    let mut payments = HashMap::new();
    let mut per_payment: HashMap<(String, bool), u32> = HashMap::new();
    let mut bonus_per_user: HashMap<String, u32> = HashMap::new();
    // Grants less reversals, per customer and referred customer.
    let mut credits: HashMap<(String, String), i32> = HashMap::new();
    let mut grant_of: HashMap<u64, (String, String)> = HashMap::new();
    for fact in facts {
        match fact {
            Fact::PaymentReceived { payment_id, .. } => {
                *payments.entry(payment_id.clone()).or_insert(0) += 1
            }
            Fact::CommissionEarned {
                payment_id,
                kind,
                user_id,
                ..
            } => {
                let bonus = *kind == CommissionKind::FirstTradeBonus;
                *per_payment.entry((payment_id.clone(), bonus)).or_default() += 1;
                if bonus {
                    *bonus_per_user.entry(user_id.clone()).or_default() += 1;
                }
            }
            Fact::CreditGranted {
                credit_id,
                user_id,
                referred_user_id,
                ..
            } => {
                let key = (user_id.clone(), referred_user_id.clone());
                *credits.entry(key.clone()).or_default() += 1;
                grant_of.insert(*credit_id, key);
            }
            Fact::CreditReversed { of_credit, .. } => {
                *credits.entry(grant_of[of_credit].clone()).or_default() -= 1;
            }
            _ => {}
        }
    }
    // A payment refunded in full gives back exactly each stored commission
    // on it, however the refunds were split (reversed before payout plus
    // clawed back after).
    let mut paid_amount: HashMap<&str, i64> = HashMap::new();
    let mut refunded: HashMap<&str, i64> = HashMap::new();
    let mut earned_on: HashMap<u64, (&str, i64)> = HashMap::new();
    let mut given_back: HashMap<u64, i64> = HashMap::new();
    for fact in facts {
        match fact {
            Fact::PaymentReceived {
                payment_id,
                amount_minor,
                ..
            } => {
                paid_amount.insert(payment_id, *amount_minor);
            }
            Fact::RefundReceived {
                payment_id,
                amount_minor,
                ..
            } => {
                *refunded.entry(payment_id).or_default() += amount_minor;
            }
            Fact::CommissionEarned {
                entry_id,
                payment_id,
                amount_minor,
                ..
            } => {
                earned_on.insert(*entry_id, (payment_id, *amount_minor));
            }
            Fact::CommissionReversed {
                entry_id,
                amount_minor,
                ..
            } => {
                *given_back.entry(*entry_id).or_default() += amount_minor;
            }
            Fact::ClawbackEntered {
                of_entry,
                amount_minor,
                ..
            } => {
                *given_back.entry(*of_entry).or_default() -= amount_minor;
            }
            _ => {}
        }
    }
    for (entry_id, (payment_id, amount)) in &earned_on {
        let back = given_back.get(entry_id).copied().unwrap_or(0);
        prop_assert!(
            back <= *amount,
            "entry {} gave back {} of {}",
            entry_id,
            back,
            amount
        );
        if refunded.get(payment_id) == paid_amount.get(payment_id) {
            prop_assert_eq!(
                back,
                *amount,
                "entry {} of fully refunded {}",
                entry_id,
                payment_id
            );
        }
    }
    prop_assert!(payments.values().all(|&n| n == 1));
    prop_assert_eq!(payments.len(), programme.payment_count());
    prop_assert!(per_payment.values().all(|&n| n == 1));
    prop_assert!(bonus_per_user.values().all(|&n| n == 1));
    // Credits once per referral: a grant again only after its reversal.
    prop_assert!(credits.values().all(|&n| n == 0 || n == 1), "{:?}", credits);
    // No credit balance below zero, and the lines add up to it.
    for n in 0..(CUSTOMERS + 8) as u8 {
        let user = customer_id(n);
        let balance = programme.credit_balance(&user, now).expect("in range");
        prop_assert!(
            balance.available >= 0 && balance.pending >= 0,
            "{user}: {balance:?}"
        );
        let lines: i64 = programme.credits_of(&user).map(|c| c.amount_minor).sum();
        prop_assert_eq!(lines, balance.pending + balance.available);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_balances_and_every_event_counts_once_under_retries(ops in proptest::collection::vec(op(), 1..80)) {
        let mut programme = Programme::new(rules());
        let mut facts: Vec<Fact> = setup_facts(&programme).into_iter().flatten().collect();
        facts.iter().for_each(|f| programme.apply(f));
        let mut now = START_MS;
        for op in &ops {
            if let Op::Advance { days } = op {
                now += days * DAY_MS;
            }
            if let Some(decided) = decide(&programme, op, now) {
                for fact in &decided.facts {
                    programme.apply(fact);
                }
                facts.extend(decided.facts);
                // The same request again, at once: a retry changes nothing.
                if let Some(again) = decide(&programme, op, now) {
                    prop_assert!(again.facts.is_empty(), "retry of {:?} decided {:?}", op, again.facts);
                    prop_assert!(again.replayed);
                }
            }
            check_invariants(&programme, &facts, now)?;
        }
        // Replaying the facts rebuilds the same ledger.
        let mut rebuilt = Programme::new(rules());
        facts.iter().for_each(|f| rebuilt.apply(f));
        for i in 0..AFFILIATES {
            let id = affiliate_id(i);
            prop_assert_eq!(rebuilt.balances(&id, now), programme.balances(&id, now));
            prop_assert_eq!(
                rebuilt.entries_of(&id).collect::<Vec<_>>(),
                programme.entries_of(&id).collect::<Vec<_>>()
            );
        }
        prop_assert_eq!(rebuilt.all_credits(), programme.all_credits());
    }
}

/// Runs `ops` through a journaled ledger, every request sent by `copies`
/// concurrent senders, and returns the journal's facts.
fn run_concurrently(ops: &[Op], copies: usize) -> (Vec<Fact>, Arc<Ledger>, u64, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger"), rules()).expect("open"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let mut now = START_MS;
    runtime.block_on(async {
        let setup = setup_facts(&ledger.read());
        for batch in setup {
            ledger
                .write(|_| {
                    Ok::<_, ()>(Decided {
                        facts: batch,
                        replayed: false,
                    })
                })
                .await
                .expect("setup");
        }
        for op in ops {
            if let Op::Advance { days } = op {
                now += days * DAY_MS;
                continue;
            }
            let senders: Vec<_> = (0..copies)
                .map(|_| {
                    let ledger = ledger.clone();
                    let op = op.clone();
                    tokio::spawn(async move {
                        ledger
                            .write(|programme| decide(programme, &op, now).ok_or(()))
                            .await
                    })
                })
                .collect();
            for sender in senders {
                let _ = sender.await.expect("sender");
            }
        }
    });
    let facts = ledger.facts().expect("facts");
    (facts, ledger, now, dir)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_copies_of_every_event_count_once_and_survive_a_reopen(ops in proptest::collection::vec(op(), 1..40)) {
        let (single, _, now, _dir1) = run_concurrently(&ops, 1);
        let (facts, ledger, _, dir) = run_concurrently(&ops, 3);
        // Three concurrent senders of each request decide exactly what one did.
        prop_assert_eq!(&facts, &single);
        let programme = ledger.read().clone();
        check_invariants(&programme, &facts, now)?;
        drop(ledger);
        let reopened = Ledger::open(&dir.path().join("ledger"), rules()).expect("reopen");
        for i in 0..AFFILIATES {
            let id = affiliate_id(i);
            prop_assert_eq!(reopened.read().balances(&id, now), programme.balances(&id, now));
        }
        let credits = reopened.read().all_credits().to_vec();
        prop_assert_eq!(credits.as_slice(), programme.all_credits());
    }
}
