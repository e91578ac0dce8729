//! The journal is a tamper-evident audit trail: each entry names who made
//! the change and why, and verifying names the first entry altered,
//! removed or reordered.

use eagate_affiliates::{
    Actor, AuditProblem, Decided, Fact, Ledger, ProgrammeConfig, ReferralCode, verify_journal,
};

const T0: u64 = 1_790_000_000_000;

/// A ledger with six entries: three enrolments by an admin token, three
/// adjustments with reasons.
async fn six_entries(path: &std::path::Path) {
    let ledger = Ledger::open(path, ProgrammeConfig::default()).unwrap();
    let admin = Actor {
        by: "token:0123456789ab".into(),
        why: String::new(),
    };
    for n in 0..3u64 {
        ledger
            .write_by(&admin, |p| {
                p.enrol_affiliate(
                    &format!("user-{n}"),
                    &format!("af_{n}"),
                    ReferralCode::from_random(n + 1),
                    &format!("{n:064x}"),
                    &Default::default(),
                    T0 + n,
                )
            })
            .await
            .unwrap();
    }
    for n in 0..3u64 {
        let actor = Actor {
            by: "token:0123456789ab".into(),
            why: format!("correction {n}"),
        };
        ledger
            .write_by(&actor, |p| {
                p.adjust(
                    "af_0",
                    &format!("adj-{n}"),
                    100,
                    &format!("correction {n}"),
                    T0 + 10 + n,
                )
            })
            .await
            .unwrap();
    }
}

fn tree(path: &std::path::Path) -> (sled::Db, sled::Tree) {
    let db = eagate_affiliates::journal::open_db(path).unwrap();
    let facts = db.open_tree("affiliate_facts").unwrap();
    (db, facts)
}

#[tokio::test]
async fn every_entry_names_who_and_why_and_an_untouched_trail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    six_entries(dir.path()).await;
    let ledger = Ledger::open(dir.path(), ProgrammeConfig::default()).unwrap();
    let entries = ledger.audit_after(0, 100).unwrap();
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e.by == "token:0123456789ab"));
    assert_eq!(entries[4].why, "correction 1");
    assert!(matches!(entries[4].fact, Fact::AdjustmentEntered { .. }));
    assert_eq!(ledger.audit_after(4, 1).unwrap()[0].seq, 5);
    let report = ledger.verify().unwrap();
    assert_eq!((report.entries, report.problem), (6, None));
    assert_eq!(report.head, entries[5].hash);
    // The sidecar's own writes are `system`'s.
    ledger
        .write(|_| {
            Ok::<_, ()>(Decided {
                facts: vec![Fact::FirstTrade {
                    user_id: "u".into(),
                    device_id: "d".into(),
                    at_ms: T0 + 20,
                }],
                replayed: false,
            })
        })
        .await
        .unwrap();
    assert_eq!(ledger.audit_after(6, 1).unwrap()[0].by, "system");
}

#[tokio::test]
async fn altering_removing_or_reordering_one_entry_is_named_by_verify() {
    // Altered: one amount changed in place.
    let dir = tempfile::tempdir().unwrap();
    six_entries(dir.path()).await;
    {
        let (db, facts) = tree(dir.path());
        let value = facts.get(5u64.to_be_bytes()).unwrap().unwrap();
        let text = String::from_utf8(value.to_vec()).unwrap();
        let altered = text.replace("\"amount_minor\":100", "\"amount_minor\":100000");
        assert_ne!(altered, text);
        facts
            .insert(5u64.to_be_bytes(), altered.as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let report = verify_journal(dir.path()).unwrap();
    assert_eq!(report.problem, Some(AuditProblem::Altered(5)));

    // Removed: one entry deleted, and the last one deleted.
    for seq in [3u64, 6] {
        let dir = tempfile::tempdir().unwrap();
        six_entries(dir.path()).await;
        {
            let (db, facts) = tree(dir.path());
            facts.remove(seq.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let report = verify_journal(dir.path()).unwrap();
        assert_eq!(
            report.problem,
            Some(AuditProblem::Removed(seq)),
            "entry {seq}"
        );
    }

    // Reordered: two entries swapped.
    let dir = tempfile::tempdir().unwrap();
    six_entries(dir.path()).await;
    {
        let (db, facts) = tree(dir.path());
        let second = facts.get(2u64.to_be_bytes()).unwrap().unwrap();
        let fourth = facts.get(4u64.to_be_bytes()).unwrap().unwrap();
        facts.insert(2u64.to_be_bytes(), fourth).unwrap();
        facts.insert(4u64.to_be_bytes(), second).unwrap();
        db.flush().unwrap();
    }
    let report = verify_journal(dir.path()).unwrap();
    assert!(
        matches!(
            report.problem,
            Some(AuditProblem::WrongPrevious(2) | AuditProblem::Altered(2))
        ),
        "{report:?}"
    );
}

#[test]
fn a_journal_from_before_the_trail_is_chained_once_and_then_guarded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, facts) = tree(dir.path());
        for (seq, line) in (1u64..).zip(include_str!("fixtures/journal-2026-11.jsonl").lines()) {
            facts.insert(seq.to_be_bytes(), line.as_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    // Before the new version first opens it: nothing to check against yet,
    // and no false alarm.
    let before = verify_journal(dir.path()).unwrap();
    assert_eq!(
        (before.started, before.entries, before.problem),
        (false, 22, None)
    );
    drop(Ledger::open(dir.path(), ProgrammeConfig::default()).unwrap());
    let report = verify_journal(dir.path()).unwrap();
    assert!(report.started);
    assert_eq!((report.entries, report.problem.clone()), (22, None));
    // After the first opening, a bare entry changed is caught too.
    {
        let (db, facts) = tree(dir.path());
        let value = facts.get(5u64.to_be_bytes()).unwrap().unwrap();
        let text = String::from_utf8(value.to_vec())
            .unwrap()
            .replace("5000", "9000");
        facts.insert(5u64.to_be_bytes(), text.as_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(
        verify_journal(dir.path()).unwrap().problem,
        Some(AuditProblem::Altered(5))
    );
}
