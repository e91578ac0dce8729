//! The affiliate ledger on a disk that fills up (a small tmpfs the test
//! mounts, so it needs root, as the test command has): the write that did
//! not reach the disk is an error, the ledger then refuses to serve what it
//! holds in memory (it may be ahead of the disk), and once there is space
//! again every acknowledged write is there, the failed one's retry is
//! stored exactly once, and the chain verifies.

use eagate_affiliates::{Fact, Ledger, ProgrammeConfig, WriteError};
use eagate_tests::SmallDisk;

mod common;

use common::{T0, affiliate_with_customer, payment};

#[tokio::test]
async fn a_full_disk_refuses_to_serve_unsaved_state_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "3m");
    let path = dir.path().join("affiliates");
    let ledger = Ledger::open(&path, ProgrammeConfig::default()).unwrap();
    affiliate_with_customer(&ledger).await;
    let mut acked = 0u64;
    let failed_at = loop {
        let n = acked;
        match ledger.write(|p| p.pay(&payment(n, 1_000), T0 + n)).await {
            Ok(_) => acked += 1,
            Err(WriteError::Journal(e)) => break (n, e),
            Err(WriteError::Refused(e)) => panic!("refused: {e}"),
        }
        assert!(acked < 1_000_000, "the disk never filled");
    };
    let (failed, error) = failed_at;
    assert!(acked > 10, "{acked} writes fit");
    eprintln!("the write that failed: {error}");
    // Memory holds no write the disk did not take: either the failed write
    // never reached memory, or the ledger says memory is not to be trusted
    // (and refuses to serve it) until a write reaches the disk again.
    assert!(
        ledger.healthy().is_err() || ledger.read().payment_count() as u64 == acked,
        "memory shows {} payments, {acked} were acknowledged, and the ledger calls itself healthy",
        ledger.read().payment_count()
    );
    // While the disk is full, writes fail rather than pile up in memory.
    assert!(
        ledger
            .write(|p| p.pay(&payment(failed + 1, 1_000), T0))
            .await
            .is_err()
    );
    assert!(ledger.read().payment_count() as u64 <= acked + 1);

    // Space comes back; a restart replays what is on disk.
    disk.grow("64m");
    drop(ledger);
    let ledger = Ledger::open(&path, ProgrammeConfig::default()).unwrap();
    assert!(ledger.healthy().is_ok());
    let kept = ledger.read().payment_count() as u64;
    assert!(
        kept >= acked,
        "an acknowledged write is lost: {kept} of {acked}"
    );
    // The platform retries the payment that failed: stored once, however
    // far the failed attempt got.
    ledger
        .write(|p| p.pay(&payment(failed, 1_000), T0 + failed))
        .await
        .unwrap();
    let facts = ledger.facts().unwrap();
    let copies = facts
        .iter()
        .filter(|f| matches!(f, Fact::PaymentReceived { payment_id, .. } if *payment_id == format!("pay-{failed}")))
        .count();
    assert_eq!(copies, 1);
    assert_eq!(ledger.verify().unwrap().problem, None);
    drop(ledger);
}
