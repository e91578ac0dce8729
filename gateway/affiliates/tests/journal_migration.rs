//! A journal written before events carried their time (the fact format of
//! 2026-11, `tests/fixtures/journal-2026-11.jsonl`) replays under this
//! version to the same ledger, and new events are decided against it.

use eagate_affiliates::config::DAY_MS;
use eagate_affiliates::{Balances, Currency, Ledger, PaymentEvent, ProgrammeConfig};

const FIXTURE: &str = include_str!("fixtures/journal-2026-11.jsonl");
/// The fixture's last fact was written at this time.
const WRITTEN_UNTIL_MS: u64 = 1_792_678_406_000;

fn ledger_from_fixture(dir: &std::path::Path) -> Ledger {
    let db = eagate_affiliates::journal::open_db(dir).unwrap();
    let facts = db.open_tree("affiliate_facts").unwrap();
    for (seq, line) in (1u64..).zip(FIXTURE.lines()) {
        facts.insert(seq.to_be_bytes(), line.as_bytes()).unwrap();
    }
    db.flush().unwrap();
    Ledger::on(db, ProgrammeConfig::default()).unwrap()
}

#[test]
fn a_journal_from_before_event_times_replays_to_the_same_balances_and_credits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_from_fixture(dir.path());
    let state = ledger.read();
    // What the version that wrote the fixture reported for it.
    assert_eq!(
        state.balances("af_1", WRITTEN_UNTIL_MS + 1_000),
        Ok(Some(Balances {
            earned: 2_500,
            pending: 750,
            held: 0,
            payable: -1_400,
            paying: 0,
            paid: 1_400,
            reversed: 1_750,
        }))
    );
    let credits: Vec<_> = state
        .all_credits()
        .iter()
        .map(|c| (c.user_id.as_str(), c.amount_minor))
        .collect();
    assert_eq!(credits, [("u-cust", 1_000), ("u-2", 1_000)]);
    assert_eq!(state.payment_count(), 3);
    // Entries keep their times: earned when they were decided.
    let entries: Vec<_> = state
        .entries_of("af_1")
        .map(|e| (e.entry_id, e.earned_at_ms, e.payable_at_ms))
        .collect();
    assert_eq!(entries[0], (1, 1_790_000_004_000, 1_792_592_004_000));
    assert_eq!(entries[2], (3, 1_792_678_401_000, 1_795_270_401_000));
}

#[tokio::test]
async fn after_replay_a_new_payment_is_rated_by_the_customers_recorded_payments() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_from_fixture(dir.path());
    // u-1 first paid (in the fixture, without a time) at 1_790_000_004_000:
    // a payment a few days after the fixture ends is in a later month.
    let now = WRITTEN_UNTIL_MS + 3 * DAY_MS;
    let decided = ledger
        .write(|p| {
            p.pay(
                &PaymentEvent {
                    payment_id: "pay-4".into(),
                    user_id: "u-1".into(),
                    amount_minor: 10_000,
                    currency: Currency::GBP,
                    billing_period: 1,
                    occurred_at_ms: now - DAY_MS,
                },
                now,
            )
        })
        .await
        .unwrap();
    let serialized = serde_json::to_value(&decided.facts).unwrap();
    assert_eq!(serialized[1]["fact"], "commission_earned");
    assert_eq!(serialized[1]["rate"], 1_500);
    assert_eq!(serialized[1]["earned_at_ms"], now - DAY_MS);
    assert_eq!(serialized[0]["occurred_at_ms"], now - DAY_MS);
}
