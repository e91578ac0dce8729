//! A flood of referral-link clicks through the sidecar's router, and what
//! it costs: answers, time, resident memory and the data directory's size.
//!
//! - 100 000 clicks from 4 addresses with the default limits (60 clicks
//!   per address per minute, repeats within an hour counted once);
//! - the same with the rate limit lifted, to show the dedupe alone;
//! - 20 000 clicks from 20 000 addresses (nothing to dedupe, nothing
//!   limited), 64 at a time: the cost of each click that is kept.
//!
//! `cargo bench -p eagate-gateway --bench click_flood`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::*;
use eagate_affiliates::{Decided, Fact, ReferralCode};
use eagate_gateway::http::tokens::TokenStore;
use eagate_gateway::http::{AppState, router};
use eagate_gateway::server::Gateway;
use tower::ServiceExt;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4_096
}

fn size_of_dir(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .map(|entry| {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                size_of_dir(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

struct Flood {
    name: &'static str,
    clicks: usize,
    addresses: usize,
    at_once: usize,
    rate_per_minute: u64,
}

async fn run(flood: &Flood) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.click_rate_per_minute = flood.rate_per_minute;
    let gateway = Gateway::start(&config).await.unwrap();
    let desk = gateway.affiliates().unwrap().clone();
    let code = ReferralCode::from_random(42);
    desk.ledger
        .write(|_| {
            Ok::<_, ()>(Decided {
                facts: vec![Fact::AffiliateEnrolled {
                    affiliate_id: "af_flood".into(),
                    user_id: "flood-owner".into(),
                    code,
                    token_sha256: "ab".repeat(32),
                    email_sha256: None,
                    source_address: None,
                    at_ms: 1_793_610_000_000,
                }],
                replayed: false,
            })
        })
        .await
        .unwrap();
    let app = router(AppState {
        core: gateway.core(),
        tokens: Arc::new(TokenStore::open(dir.path())),
        affiliates: desk.clone(),
        console: Default::default(),
    });
    let ledger_dir = dir.path().join(eagate_gateway::affiliates::LEDGER_DIR);
    let (rss_before, disk_before) = (resident_bytes(), size_of_dir(&ledger_dir));
    let started = Instant::now();
    let mut redirected = 0usize;
    let mut limited = 0usize;
    let mut next = 0usize;
    while next < flood.clicks {
        let batch: Vec<_> = (next..(next + flood.at_once).min(flood.clicks))
            .map(|i| {
                let n = i % flood.addresses;
                let address = format!("10.{}.{}.{}:4000", n >> 16 & 255, n >> 8 & 255, n & 255);
                let mut request = Request::builder()
                    .uri(format!("/r/{code}"))
                    .body(Body::empty())
                    .unwrap();
                let peer: SocketAddr = address.parse().unwrap();
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            })
            .collect();
        next += batch.len();
        for answer in futures_util::future::join_all(batch).await {
            match answer.unwrap().status() {
                StatusCode::SEE_OTHER => redirected += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let journaled = desk
        .ledger
        .facts()
        .unwrap()
        .iter()
        .filter(|f| matches!(f, Fact::Clicked { .. }))
        .count();
    let kept = desk.ledger.read().clicks_kept();
    let (rss_after, disk_after) = (resident_bytes(), size_of_dir(&ledger_dir));
    println!(
        "{}: {} clicks from {} addresses in {:?} ({} per s): {redirected} redirected, {limited} answered 429; {journaled} journaled, {kept} kept in memory; resident memory +{} KiB, ledger on disk {} -> {} KiB",
        flood.name,
        flood.clicks,
        flood.addresses,
        elapsed,
        flood.clicks as u128 * 1_000 / elapsed.as_millis().max(1),
        rss_after.saturating_sub(rss_before) / 1_024,
        disk_before / 1_024,
        disk_after / 1_024,
    );
    gateway.shutdown().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for flood in [
            Flood {
                name: "default limits",
                clicks: 100_000,
                addresses: 4,
                at_once: 64,
                rate_per_minute: 60,
            },
            Flood {
                name: "dedupe alone (rate limit lifted)",
                clicks: 100_000,
                addresses: 4,
                at_once: 64,
                rate_per_minute: 100_000,
            },
            Flood {
                name: "every click new",
                clicks: 20_000,
                addresses: 20_000,
                at_once: 64,
                rate_per_minute: 60,
            },
        ] {
            run(&flood).await;
        }
    });
}
