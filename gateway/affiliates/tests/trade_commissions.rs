//! Per-trade commissions from fills: the worked examples of
//! docs/affiliates.md, exact tier boundaries, busts before and after
//! payout, reversals reported by devices (before or after their fills
//! reach the programme), and property tests over random fill streams in which fills are
//! resent and the programme restarts from its facts: each fill counts once
//! and earns exactly its tier's share of its fee.

use std::collections::{BTreeMap, HashMap, HashSet};

use eagate_affiliates::calendar::{day_number, month_start};
use eagate_affiliates::config::DAY_MS;
use eagate_affiliates::money::commission;
use eagate_affiliates::programme::{TradeFill, TradeReversal, fill_reference};
use eagate_affiliates::trade_fees::{TierBasis, fee_for, parse_tiers, tier_of};
use eagate_affiliates::{
    CommissionKind, Decided, EntryKind, EntryStatus, Fact, Programme, ProgrammeConfig,
    ReferralCode, Signup,
};
use proptest::prelude::*;

/// 2026-10-01T00:00Z.
fn october() -> u64 {
    day_number(2026, 10, 1).unwrap() as u64 * DAY_MS
}

fn november() -> u64 {
    day_number(2026, 11, 1).unwrap() as u64 * DAY_MS
}

fn config(tiers: &str) -> ProgrammeConfig {
    ProgrammeConfig {
        trade_fees: vec!["fx:EURUSD,GBP*=700/lot".parse().unwrap()],
        trade_tiers: parse_tiers(tiers).unwrap(),
        ..ProgrammeConfig::default()
    }
}

fn apply(programme: &mut Programme, decided: &Decided) {
    for fact in &decided.facts {
        programme.apply(fact);
    }
}

fn code(i: usize) -> ReferralCode {
    ReferralCode::from_random(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1))
}

/// A programme with affiliates `af_0`… each referring `customers` customers
/// (`c<affiliate>-<n>`), all at `at_ms`.
fn programme_with(config: ProgrammeConfig, affiliates: usize, customers: usize) -> Programme {
    setup(config, affiliates, customers).0
}

/// [`programme_with`], and the facts that built it (for restarts).
fn setup(config: ProgrammeConfig, affiliates: usize, customers: usize) -> (Programme, Vec<Fact>) {
    let at_ms = october() - 40 * DAY_MS;
    let mut programme = Programme::new(config);
    let mut facts = Vec::new();
    for a in 0..affiliates {
        let enrolled = programme
            .enrol_affiliate(
                &format!("aff-user-{a}"),
                &format!("af_{a}"),
                code(a),
                &format!("{a:064x}"),
                &Default::default(),
                at_ms,
            )
            .unwrap();
        apply(&mut programme, &enrolled);
        facts.extend(enrolled.facts);
        for n in 0..customers {
            let signup = Signup {
                user_id: format!("c{a}-{n}"),
                code: code(a),
                click_id: None,
                source_address: format!("198.51.{a}.{n}"),
                email_sha256: format!("{:064x}", 1_000 + a * 100 + n),
                email_verified: true,
                occurred_at_ms: at_ms,
            };
            let referred = programme.refer(&signup, at_ms).unwrap();
            apply(&mut programme, &referred);
            facts.extend(referred.facts);
        }
    }
    (programme, facts)
}

fn fill(user: &str, device: &str, seq: u64, symbol: &str, lots_e8: u64, at_ms: u64) -> TradeFill {
    TradeFill {
        user_id: user.into(),
        device_id: device.into(),
        seq,
        signal_id: format!("{seq:032x}"),
        ticket: Some(9_000 + seq),
        symbol: symbol.into(),
        volume_e8: lots_e8,
        price: None,
        filled_at_ms: at_ms,
    }
}

/// Decides and applies `fill` at its own time.
fn take(programme: &mut Programme, fill: &TradeFill) -> Decided {
    let (decided, problem) = programme.trade_filled(fill, fill.filled_at_ms + 1_000);
    assert_eq!(problem, None);
    apply(programme, &decided);
    decided
}

/// The trade commissions (entry id, tier, rate, base, amount) earned.
fn trade_entries(programme: &Programme, affiliate: &str) -> Vec<(u8, u32, i64, i64)> {
    programme
        .entries_of(affiliate)
        .filter_map(|e| match e.kind {
            EntryKind::Commission {
                kind: CommissionKind::Trade { tier },
                rate_bps,
                base_minor,
            } => Some((tier, rate_bps, base_minor, e.amount_minor)),
            _ => None,
        })
        .collect()
}

const LOT: u64 = 100_000_000;

#[test]
fn worked_example_ten_active_traders_in_october_lift_november_to_tier_two() {
    let mut programme = programme_with(config("0:50,10:100,25:150,50:200"), 1, 10);
    // October: ten referred customers fill 1 lot of EURUSD each. Tier 1
    // (nobody traded in September): 0.5% of the GBP 7.00 fee = 3.5p → 4p.
    for n in 0..10 {
        let at = october() + n * DAY_MS;
        take(
            &mut programme,
            &fill(
                &format!("c0-{n}"),
                &format!("dev-{n}"),
                1,
                "EURUSD",
                LOT,
                at,
            ),
        );
    }
    assert_eq!(trade_entries(&programme, "af_0"), vec![(1, 50, 700, 4); 10]);
    let status = programme
        .tier_status("af_0", (october() / DAY_MS) as i64 + 20)
        .unwrap();
    assert_eq!((status.tier, status.this_month), (1, 10));
    // Ten this month put next month on course for tier 2: tier 3 is next,
    // from 25.
    assert_eq!(
        status.next.map(|(tier, _, from)| (tier, from)),
        Some((3, 25))
    );
    // November's first fill fixes tier 2 (1%) from October's ten: 3 lots of
    // GBPJPY.m (a prefix rule) cost GBP 21.00, of which 1% is 21p.
    let decided = take(
        &mut programme,
        &fill(
            "c0-0",
            "dev-0",
            2,
            "gbpjpy.m",
            3 * LOT,
            november() + 3_600_000,
        ),
    );
    assert!(decided.facts.iter().any(|f| matches!(
        f,
        Fact::TierSet {
            tier: 2,
            measure: 10,
            ..
        }
    )));
    assert_eq!(trade_entries(&programme, "af_0")[10], (2, 100, 2_100, 21));
    let status = programme
        .tier_status("af_0", (november() / DAY_MS) as i64)
        .unwrap();
    assert!(status.fixed);
    assert_eq!(
        (status.tier, status.measured, status.this_month),
        (2, 10, 1)
    );
}

#[test]
fn without_a_fee_schedule_fills_are_not_journaled_for_commissions() {
    let mut config = config("0:50");
    config.trade_fees.clear();
    let mut programme = programme_with(config, 1, 1);
    let decided = take(
        &mut programme,
        &fill("c0-0", "dev", 1, "EURUSD", LOT, october()),
    );
    assert!(decided.facts.is_empty());
    assert_eq!(programme.trade_fill_count(), 0);
}

#[test]
fn nine_active_traders_leave_the_next_month_at_tier_one() {
    let mut programme = programme_with(config("0:50,10:100"), 1, 10);
    // Nine traders, one of them twice and on two devices: still nine.
    for n in 0..9 {
        take(
            &mut programme,
            &fill(
                &format!("c0-{n}"),
                &format!("dev-{n}"),
                1,
                "EURUSD",
                LOT,
                october(),
            ),
        );
    }
    take(
        &mut programme,
        &fill("c0-0", "dev-0b", 1, "EURUSD", LOT, october()),
    );
    take(
        &mut programme,
        &fill("c0-9", "dev-9", 1, "EURUSD", LOT, november()),
    );
    assert_eq!(
        trade_entries(&programme, "af_0").last(),
        Some(&(1, 50, 700, 4))
    );
}

#[test]
fn a_customer_blocked_by_a_confirmed_case_does_not_lift_the_tier() {
    let mut programme = programme_with(config("0:50,4:100"), 1, 0);
    let at_ms = october() - 40 * DAY_MS;
    // Four signups from one address: the fourth is held for review.
    for n in 0..4 {
        let signup = Signup {
            user_id: format!("c0-{n}"),
            code: code(0),
            click_id: None,
            source_address: "198.51.100.7".into(),
            email_sha256: format!("{:064x}", 5_000 + n),
            email_verified: true,
            occurred_at_ms: at_ms,
        };
        let referred = programme.refer(&signup, at_ms).unwrap();
        apply(&mut programme, &referred);
    }
    // All four trade in October; then the case is confirmed: only three
    // were genuine.
    for n in 0..4 {
        take(
            &mut programme,
            &fill(
                &format!("c0-{n}"),
                &format!("dev-{n}"),
                1,
                "EURUSD",
                LOT,
                october(),
            ),
        );
    }
    let case = programme
        .cases()
        .last()
        .expect("a shared-address case")
        .case_id;
    let confirmed = programme
        .decide_case(
            case,
            eagate_affiliates::CaseDecision::Confirmed,
            "token:admin",
            "one person, four accounts",
            october() + DAY_MS,
        )
        .unwrap();
    apply(&mut programme, &confirmed);
    take(
        &mut programme,
        &fill("c0-0", "dev-0", 2, "EURUSD", LOT, november()),
    );
    let tiers: Vec<u8> = trade_entries(&programme, "af_0")
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(tiers.last(), Some(&1), "{tiers:?}");
}

#[test]
fn by_volume_a_tier_starts_at_exactly_its_whole_lots() {
    let mut config = config("0:50,5:200");
    config.tier_basis = TierBasis::VolumeLots;
    for (october_lots_e8, november_tier) in [(5 * LOT - 1, 1), (5 * LOT, 2)] {
        let mut programme = programme_with(config.clone(), 1, 1);
        take(
            &mut programme,
            &fill("c0-0", "dev", 1, "EURUSD", october_lots_e8, october()),
        );
        take(
            &mut programme,
            &fill("c0-0", "dev", 2, "EURUSD", LOT, november()),
        );
        assert_eq!(trade_entries(&programme, "af_0")[1].0, november_tier);
    }
}

#[test]
fn a_resent_fill_and_an_unreferred_customers_fill_earn_nothing() {
    let mut programme = programme_with(config("0:50"), 1, 1);
    let first = fill("c0-0", "dev", 7, "EURUSD", 2 * LOT, october());
    assert!(!take(&mut programme, &first).facts.is_empty());
    assert!(take(&mut programme, &first).replayed);
    assert!(
        take(
            &mut programme,
            &fill("stranger", "dev-x", 1, "EURUSD", LOT, october())
        )
        .replayed
    );
    // A symbol no rule covers counts toward tiers but earns nothing.
    let gold = take(
        &mut programme,
        &fill("c0-0", "dev", 8, "XAUUSD", LOT, october()),
    );
    assert!(
        gold.facts
            .iter()
            .any(|f| matches!(f, Fact::TradeFilled { fee_minor: 0, .. }))
    );
    assert_eq!(trade_entries(&programme, "af_0").len(), 1);
    let counted = programme.counted_fill("dev", 7).unwrap();
    assert_eq!((counted.ticket, counted.fee_minor), (Some(9_007), 1_400));
}

#[test]
fn a_late_fill_of_last_month_does_not_change_a_tier_already_fixed() {
    let mut programme = programme_with(config("0:50,1:100"), 1, 2);
    take(
        &mut programme,
        &fill("c0-0", "dev", 1, "EURUSD", LOT, november()),
    );
    assert_eq!(trade_entries(&programme, "af_0")[0].0, 1);
    // An October fill the feed hands over late: counted in October, but
    // November stays at the tier its first fill fixed.
    take(
        &mut programme,
        &fill("c0-1", "dev-1", 1, "EURUSD", LOT, november() - 1),
    );
    take(
        &mut programme,
        &fill("c0-0", "dev", 2, "EURUSD", LOT, november() + 1),
    );
    let tiers: Vec<u8> = trade_entries(&programme, "af_0")
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(tiers, [1, 1, 1]);
}

#[test]
fn a_busted_fill_is_reversed_before_payout_and_clawed_back_after() {
    let mut config = config("0:200");
    config.holding_period_ms = 0;
    config.payout_minimum = 1;
    let mut programme = programme_with(config, 1, 1);
    // 10 lots: GBP 70.00 fee, 2% = GBP 1.40 each.
    take(
        &mut programme,
        &fill("c0-0", "dev", 1, "EURUSD", 10 * LOT, october()),
    );
    take(
        &mut programme,
        &fill("c0-0", "dev", 2, "EURUSD", 10 * LOT, october()),
    );
    let busted = programme
        .bust_trade("dev", 1, "broker cancelled the trade", october() + DAY_MS)
        .unwrap();
    apply(&mut programme, &busted);
    assert!(busted.facts.iter().any(|f| matches!(
        f,
        Fact::CommissionReversed {
            amount_minor: 140,
            ..
        }
    )));
    assert!(
        programme
            .bust_trade("dev", 1, "again", october() + DAY_MS)
            .unwrap()
            .replayed
    );
    assert!(
        programme
            .bust_trade("dev", 9, "unknown", october())
            .is_err()
    );
    assert!(programme.bust_trade("dev", 2, "  ", october()).is_err());
    let reversed = programme
        .entries_of("af_0")
        .find(|e| e.payment_id == fill_reference("dev", 1))
        .unwrap();
    assert_eq!(reversed.status(october() + DAY_MS), EntryStatus::Reversed);
    // The second is paid, then busted: a negative entry for the next payout.
    let paid = programme
        .pay_out("af_0", "po-1", october() + 2 * DAY_MS)
        .unwrap();
    apply(&mut programme, &paid);
    let busted = programme
        .bust_trade("dev", 2, "fill reported in error", october() + 3 * DAY_MS)
        .unwrap();
    assert!(busted.facts.iter().any(|f| matches!(
        f,
        Fact::ClawbackEntered {
            amount_minor: -140,
            ..
        }
    )));
    apply(&mut programme, &busted);
    assert!(programme.counted_fill("dev", 2).unwrap().busted);
    // Busted fills leave their month's activity.
    let status = programme
        .tier_status("af_0", (october() / DAY_MS) as i64)
        .unwrap();
    assert_eq!(status.this_month, 0);
}

/// Fill `seq` of device `dev` for customer `c0-0`: signal `signal` (hex),
/// ticket `ticket`, 10 lots of EURUSD (GBP 70.00 fee).
fn ticketed(seq: u64, signal: &str, ticket: u64, at_ms: u64) -> TradeFill {
    TradeFill {
        signal_id: signal.into(),
        ticket: Some(ticket),
        ..fill("c0-0", "dev", seq, "EURUSD", 10 * LOT, at_ms)
    }
}

/// Device `dev`'s report `seq` that its fills of `signal` with `ticket`
/// were undone.
fn reversal(seq: u64, signal: &str, ticket: u64) -> TradeReversal {
    TradeReversal {
        user_id: "c0-0".into(),
        device_id: "dev".into(),
        seq,
        signal_id: signal.into(),
        ticket,
    }
}

/// Decides and applies `reversal`, which takes no total out of range.
fn reverse(programme: &mut Programme, reversal: &TradeReversal, at_ms: u64) -> Decided {
    let (decided, problem) = programme.trade_reversed(reversal, at_ms);
    assert_eq!(problem, None);
    apply(programme, &decided);
    decided
}

const SIGNAL_A: &str = "000000000000000000000000000000aa";
const SIGNAL_B: &str = "000000000000000000000000000000bb";

#[test]
fn a_reversal_reported_by_the_device_takes_back_its_tickets_earlier_fills_once() {
    let mut config = config("0:200");
    config.holding_period_ms = 0;
    let mut programme = programme_with(config, 1, 1);
    // Two partial fills of one deal (ticket 500), one of another deal, one
    // of another signal with the same ticket number: GBP 1.40 each.
    for (seq, signal, ticket) in [
        (1, SIGNAL_A, 500),
        (2, SIGNAL_A, 500),
        (3, SIGNAL_A, 501),
        (4, SIGNAL_B, 500),
    ] {
        take(&mut programme, &ticketed(seq, signal, ticket, october()));
    }
    let undone = reverse(
        &mut programme,
        &reversal(5, SIGNAL_A, 500),
        october() + DAY_MS,
    );
    let busted: Vec<u64> = undone
        .facts
        .iter()
        .filter_map(|f| match f {
            Fact::TradeBusted { seq, reason, .. } => {
                assert!(reason.contains("report 5"), "{reason}");
                Some(*seq)
            }
            _ => None,
        })
        .collect();
    assert_eq!(busted, [1, 2]);
    let reversed_minor: Vec<i64> = undone
        .facts
        .iter()
        .filter_map(|f| match f {
            Fact::CommissionReversed { amount_minor, .. } => Some(*amount_minor),
            _ => None,
        })
        .collect();
    assert_eq!(reversed_minor, [140, 140]);
    for (seq, busted) in [(1, true), (2, true), (3, false), (4, false)] {
        assert_eq!(programme.counted_fill("dev", seq).unwrap().busted, busted);
    }
    // The feed handing the reversal over again changes nothing.
    assert!(
        programme
            .trade_reversed(&reversal(5, SIGNAL_A, 500), october() + 2 * DAY_MS)
            .0
            .replayed
    );
    // A fill reported after the reversal, under the same ticket, earns.
    let later = take(&mut programme, &ticketed(6, SIGNAL_A, 500, october()));
    assert!(
        later
            .facts
            .iter()
            .any(|f| matches!(f, Fact::CommissionEarned { .. })),
        "{later:?}"
    );
    assert!(!programme.counted_fill("dev", 6).unwrap().busted);
    // Three fills of October still count toward the tier: 3, 4 and 6.
    let status = programme
        .tier_status("af_0", (october() / DAY_MS) as i64)
        .unwrap();
    assert_eq!(status.this_month, 1, "one active trader");
}

#[test]
fn paid_fills_a_device_reports_reversed_are_clawed_back_in_separate_entries() {
    let mut config = config("0:200");
    config.holding_period_ms = 0;
    config.payout_minimum = 1;
    let mut programme = programme_with(config, 1, 1);
    take(&mut programme, &ticketed(1, SIGNAL_A, 500, october()));
    take(&mut programme, &ticketed(2, SIGNAL_A, 500, october()));
    let paid = programme
        .pay_out("af_0", "po-1", october() + DAY_MS)
        .unwrap();
    apply(&mut programme, &paid);
    let undone = reverse(
        &mut programme,
        &reversal(3, SIGNAL_A, 500),
        october() + 2 * DAY_MS,
    );
    let clawbacks: Vec<(u64, i64)> = undone
        .facts
        .iter()
        .filter_map(|f| match f {
            Fact::ClawbackEntered {
                entry_id,
                amount_minor,
                ..
            } => Some((*entry_id, *amount_minor)),
            _ => None,
        })
        .collect();
    assert_eq!(clawbacks.len(), 2, "{undone:?}");
    assert_ne!(clawbacks[0].0, clawbacks[1].0, "each its own entry");
    assert_eq!((clawbacks[0].1, clawbacks[1].1), (-140, -140));
    let negative: i64 = programme
        .entries_of("af_0")
        .filter(|e| e.amount_minor < 0)
        .map(|e| e.amount_minor)
        .sum();
    assert_eq!(negative, -280, "both clawbacks are in the ledger");
}

#[test]
fn a_fill_that_reaches_the_programme_after_its_reversal_is_counted_busted_also_after_a_restart() {
    let mut config = config("0:200");
    config.holding_period_ms = 0;
    let (mut programme, mut facts) = setup(config.clone(), 1, 1);
    // The store may hold report 5 before report 4.
    let early = reverse(&mut programme, &reversal(5, SIGNAL_A, 500), october());
    assert!(matches!(
        early.facts.as_slice(),
        [Fact::TradeReversalReported {
            seq: 5,
            ticket: 500,
            ..
        }]
    ));
    facts.extend(early.facts);
    let late = take(&mut programme, &ticketed(4, SIGNAL_A, 500, october()));
    assert!(
        late.facts
            .iter()
            .all(|f| !matches!(f, Fact::CommissionEarned { .. } | Fact::TierSet { .. })),
        "a reversed fill earns nothing and fixes no tier: {late:?}"
    );
    assert!(programme.counted_fill("dev", 4).unwrap().busted);
    assert!(trade_entries(&programme, "af_0").is_empty());
    facts.extend(late.facts);
    // A restart rebuilds the programme from its facts, the reversal too.
    let mut restarted = Programme::new(config);
    for fact in &facts {
        restarted.apply(fact);
    }
    let resent = restarted.trade_filled(&ticketed(4, SIGNAL_A, 500, october()), october());
    assert!(resent.0.replayed, "counted once");
    take(&mut restarted, &ticketed(3, SIGNAL_A, 500, october()));
    assert!(restarted.counted_fill("dev", 3).unwrap().busted);
    assert!(trade_entries(&restarted, "af_0").is_empty());
}

#[test]
fn a_reversal_of_a_customer_nobody_referred_or_without_fees_decides_nothing() {
    let programme = programme_with(config("0:200"), 1, 1);
    let stranger = TradeReversal {
        user_id: "stranger".into(),
        ..reversal(2, SIGNAL_A, 500)
    };
    assert!(
        programme
            .trade_reversed(&stranger, october())
            .0
            .facts
            .is_empty()
    );
    // Per-trade commissions off: a referred customer's reversal is not
    // journaled either.
    let without_fees = programme_with(ProgrammeConfig::default(), 1, 1);
    assert!(
        without_fees
            .trade_reversed(&reversal(2, SIGNAL_A, 500), october())
            .0
            .facts
            .is_empty()
    );
    let referred = programme.trade_reversed(&reversal(2, SIGNAL_A, 500), october());
    assert!(
        matches!(
            referred.0.facts.as_slice(),
            [Fact::TradeReversalReported { affiliate_id, .. }] if affiliate_id == "af_0"
        ),
        "{referred:?}"
    );
}

/// One fill of the random streams: its identity and what it carries (a
/// resend carries the same).
#[derive(Debug, Clone)]
struct RandomFill {
    user: usize,
    device: u8,
    seq: u64,
    gold: bool,
    lots_e8: u64,
    month: u8,
    minute: u64,
}

fn random_fill() -> impl Strategy<Value = RandomFill> {
    (
        0..8usize,
        0..2u8,
        1..6u64,
        prop::bool::weighted(0.2),
        1..500_000_000u64,
        0..3u8,
        0..40_000u64,
    )
        .prop_map(
            |(user, device, seq, gold, lots_e8, month, minute)| RandomFill {
                user,
                device,
                seq,
                gold,
                lots_e8,
                month,
                minute,
            },
        )
}

/// Customers 0-2 belong to af_0, 3-5 to af_1, 6-7 to nobody.
fn user_name(user: usize) -> String {
    match user {
        0..=2 => format!("c0-{user}"),
        3..=5 => format!("c1-{}", user - 3),
        _ => format!("stranger-{user}"),
    }
}

fn month_ms(month: u8) -> u64 {
    let (year, m) = (2026, 10 + u32::from(month));
    let (year, m) = if m > 12 {
        (year + 1, m - 12)
    } else {
        (year, m)
    };
    day_number(year, m, 1).unwrap() as u64 * DAY_MS
}

impl RandomFill {
    fn trade(&self) -> TradeFill {
        fill(
            &user_name(self.user),
            &format!("dev-{}-{}", self.user, self.device),
            self.seq,
            if self.gold { "XAUUSD" } else { "EURUSD" },
            self.lots_e8,
            month_ms(self.month) + self.minute * 60_000,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn each_fill_earns_once_at_its_months_tier_across_resends_and_restarts(
        fills in prop::collection::vec(random_fill(), 1..60),
        resends in prop::collection::vec((0..60usize, 0..80usize), 0..30),
        restarts in prop::collection::vec(0..100usize, 0..4),
    ) {
        let config = config("0:50,2:100,3:150");
        let (mut programme, mut journal) = setup(config.clone(), 2, 3);
        // Distinct fills by identity (the first generated wins: a resend
        // carries what the original did), in the feed's order: by time.
        let mut by_identity: BTreeMap<(String, u64), TradeFill> = BTreeMap::new();
        for f in &fills {
            let trade = f.trade();
            by_identity.entry((trade.device_id.clone(), trade.seq)).or_insert(trade);
        }
        let mut stream: Vec<TradeFill> = by_identity.values().cloned().collect();
        stream.sort_by_key(|f| f.filled_at_ms);
        // Resends: copies of earlier fills handed over again later.
        for (of, at) in resends {
            let original = stream[of % stream.len()].clone();
            let at = (at % (stream.len() + 1)).max(1 + of % stream.len());
            stream.insert(at.min(stream.len()), original);
        }
        for (i, trade) in stream.iter().enumerate() {
            if restarts.contains(&i) {
                // A restart: the programme as the journal rebuilds it.
                programme = Programme::new(config.clone());
                for fact in &journal {
                    programme.apply(fact);
                }
            }
            let (decided, problem) = programme.trade_filled(trade, trade.filled_at_ms + 1);
            prop_assert_eq!(problem, None);
            apply(&mut programme, &decided);
            journal.extend(decided.facts);
        }

        // The model: each distinct referred fill once; a month's tier from
        // the month before's distinct traders.
        let affiliate_of = |user: &str| match user.as_bytes()[..2] {
            [b'c', b'0'] => Some("af_0"),
            [b'c', b'1'] => Some("af_1"),
            _ => None,
        };
        let mut traders: HashMap<(&str, i64), HashSet<String>> = HashMap::new();
        for f in by_identity.values() {
            if let Some(affiliate) = affiliate_of(&f.user_id) {
                let month = month_start((f.filled_at_ms / DAY_MS) as i64);
                traders.entry((affiliate, month)).or_default().insert(f.user_id.clone());
            }
        }
        let mut expected: HashMap<&str, Vec<(u8, i64)>> = HashMap::new();
        let mut seen = HashSet::new();
        for f in &stream {
            let Some(affiliate) = affiliate_of(&f.user_id) else { continue };
            if !seen.insert((f.device_id.clone(), f.seq)) {
                continue;
            }
            let month = month_start((f.filled_at_ms / DAY_MS) as i64);
            let before = month_start(month - 1);
            let active = traders.get(&(affiliate, before)).map_or(0, |t| t.len() as u64);
            let (tier, rate) = tier_of(&config.trade_tiers, active);
            let fee = fee_for(&config.trade_fees, &f.symbol, f.volume_e8, None, 2)
                .unwrap()
                .map_or(0, |(_, fee)| fee);
            let amount = commission(fee, rate);
            if amount > 0 {
                expected.entry(affiliate).or_default().push((tier, amount));
            }
        }
        for affiliate in ["af_0", "af_1"] {
            let earned: Vec<(u8, i64)> = trade_entries(&programme, affiliate)
                .into_iter()
                .map(|(tier, _, _, amount)| (tier, amount))
                .collect();
            prop_assert_eq!(&earned, &expected.get(affiliate).cloned().unwrap_or_default());
        }
        // Each referred fill counted exactly once in the journal.
        let counted = journal.iter().filter(|f| matches!(f, Fact::TradeFilled { .. })).count();
        let referred = by_identity.values().filter(|f| affiliate_of(&f.user_id).is_some()).count();
        prop_assert_eq!(counted, referred);
        prop_assert_eq!(programme.trade_fill_count(), referred);
    }
}
