//! The journal under SIGKILL: a writer process is killed at many points of
//! a stream of payments (each one write of a payment and its commission),
//! and the ledger reopened from disk holds every acknowledged write, no
//! half of one, a hash chain that verifies, and balances equal to what its
//! facts add up to.
//!
//! The writer is this test binary run again with `EAGATE_JOURNAL_WRITER`
//! set (the one test below then writes instead of checking).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use eagate_affiliates::{Fact, Ledger, ProgrammeConfig};

mod common;

use common::{T0, affiliate_with_customer, payment};
const WRITER: &str = "EAGATE_JOURNAL_WRITER";

/// Writes payments into the ledger at `dir` until killed, printing
/// `acked N` once payment N is on disk.
fn write_until_killed(dir: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ledger = Ledger::open(std::path::Path::new(dir), ProgrammeConfig::default()).unwrap();
        if ledger.read().affiliate("af_1").is_none() {
            affiliate_with_customer(&ledger).await;
        }
        let start = ledger.read().payment_count() as u64;
        for n in start.. {
            let payment = payment(n, 1_000 + n as i64);
            ledger.write(|p| p.pay(&payment, T0 + n)).await.unwrap();
            println!("acked {n}");
        }
    });
}

#[test]
fn a_ledger_killed_mid_stream_keeps_every_acknowledged_write_whole() {
    if let Ok(dir) = std::env::var(WRITER) {
        write_until_killed(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked_total = 0u64;
    for kill_after in [0u64, 3, 17, 40, 90] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_ledger_killed_mid_stream_keeps_every_acknowledged_write_whole",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("acked ") {
                let n: u64 = n.parse().unwrap();
                last = Some(n);
                if n >= acked_total + kill_after {
                    break;
                }
            }
        }
        // SIGKILL: no destructor, no flush.
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = last.expect("the writer acknowledged writes");

        let ledger = Ledger::open(dir.path(), ProgrammeConfig::default()).unwrap();
        let facts = ledger.facts().unwrap();
        let payments = facts
            .iter()
            .filter(|f| matches!(f, Fact::PaymentReceived { .. }))
            .count() as u64;
        let commissions: Vec<i64> = facts
            .iter()
            .filter_map(|f| match f {
                Fact::CommissionEarned { amount_minor, .. } => Some(*amount_minor),
                _ => None,
            })
            .collect();
        assert!(
            payments > acked,
            "acknowledged payment {acked} is lost ({payments} kept)"
        );
        assert_eq!(commissions.len() as u64, payments, "half a write was kept");
        let report = ledger.verify().unwrap();
        assert_eq!(report.problem, None, "after a kill at {acked}");
        let balances = ledger.read().balances("af_1", T0).unwrap().unwrap();
        assert_eq!(balances.earned, commissions.iter().sum::<i64>());
        acked_total = payments;
        drop(ledger);
    }
    assert!(acked_total > 100, "{acked_total}");
}
