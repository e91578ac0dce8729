//! Referral code lookup with a million codes: `GET /v1/referral-codes/{code}`
//! through the sidecar's router (authentication, parsing, lookup, JSON), and
//! the programme's own lookup, each timed one request at a time to report
//! p50 / p99 / p99.9 / max. The target is p99 ≤ 2 ms; the bench exits with an
//! error above it.
//!
//! `cargo bench -p eagate-gateway --bench referral_codes`
//! (`EAGATE_BENCH_CODES` sets how many codes; default 1 000 000.)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use eagate_affiliates::{Decided, Fact, ReferralCode};
use eagate_gateway::http::tokens::{Scope, TokenStore, create_token};
use eagate_gateway::http::{AppState, router};
use tower::ServiceExt;

const TARGET_P99: Duration = Duration::from_millis(2);
const LOOKUPS: usize = 200_000;

/// A deterministic stream of well-mixed 64-bit values (splitmix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn percentiles(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    // Per-mille ranks, in integers: no floats in this codebase.
    let at = |per_mille: usize| samples[(samples.len() - 1) * per_mille / 1_000];
    let p99 = at(990);
    println!(
        "{name}: n={} p50={:?} p99={p99:?} p99.9={:?} max={:?}",
        samples.len(),
        at(500),
        samples[(samples.len() - 1) * 999 / 1_000],
        samples[samples.len() - 1]
    );
    p99
}

fn main() {
    let count: u64 = std::env::var("EAGATE_BENCH_CODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (gateway, dir) = start().await;
        let desk = gateway.affiliates().unwrap().clone();
        let started = Instant::now();
        // Enrolments journaled in batches, as the sidecar would after a
        // million POST /v1/affiliates.
        let codes: Vec<ReferralCode> = (0..count)
            .map(|i| ReferralCode::from_random(mix(i)))
            .collect();
        for (batch_no, chunk) in codes.chunks(10_000).enumerate() {
            let facts = chunk
                .iter()
                .enumerate()
                .map(|(i, code)| {
                    let n = batch_no * 10_000 + i;
                    Fact::AffiliateEnrolled {
                        affiliate_id: format!("af_{n:016x}"),
                        user_id: format!("user-{n}"),
                        code: *code,
                        token_sha256: format!("{n:064x}"),
                        email_sha256: None,
                        source_address: None,
                        at_ms: 1_793_610_000_000,
                    }
                })
                .collect();
            desk.ledger
                .write(|_| {
                    Ok::<_, ()>(Decided {
                        facts,
                        replayed: false,
                    })
                })
                .await
                .unwrap();
        }
        println!("journaled {count} enrolments in {:?}", started.elapsed());
        let distinct = codes
            .iter()
            .filter(|c| desk.ledger.read().code_owner(c).is_some())
            .count();
        println!("{distinct} distinct codes held");

        let admin = create_token(dir.path(), Scope::Admin).unwrap().to_string();
        let app = router(AppState {
            core: gateway.core(),
            tokens: Arc::new(TokenStore::open(dir.path())),
            affiliates: desk.clone(),
            console: Default::default(),
        });
        let mut router_samples = Vec::with_capacity(LOOKUPS);
        for i in 0..LOOKUPS {
            // Mostly codes that exist, typed as people do; every tenth unknown.
            let text = if i % 10 == 9 {
                ReferralCode::from_random(mix(u64::MAX - i as u64)).to_string()
            } else {
                codes[(mix(i as u64) % count) as usize]
                    .to_string()
                    .to_lowercase()
            };
            let request = Request::builder()
                .uri(format!("/v1/referral-codes/{text}"))
                .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                .body(Body::empty())
                .unwrap();
            let began = Instant::now();
            let response = app.clone().oneshot(request).await.unwrap();
            let _ = axum::body::to_bytes(response.into_body(), 4_096)
                .await
                .unwrap();
            router_samples.push(began.elapsed());
            if i == 0 {
                assert!(matches!(
                    app.clone()
                        .oneshot(
                            Request::builder()
                                .uri(format!("/v1/referral-codes/{}", codes[0]))
                                .header(header::AUTHORIZATION, format!("Bearer {admin}"))
                                .body(Body::empty())
                                .unwrap()
                        )
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::OK
                ));
            }
        }
        let mut core_samples = Vec::with_capacity(LOOKUPS);
        for i in 0..LOOKUPS {
            let text = codes[(mix(i as u64 + 7) % count) as usize].to_string();
            let began = Instant::now();
            let code: ReferralCode = text.parse().unwrap();
            let found = desk.ledger.read().code_owner(&code).is_some();
            core_samples.push(began.elapsed());
            assert!(found);
        }
        let router_p99 = percentiles(
            &format!("GET /v1/referral-codes/{{code}} with {count} codes"),
            router_samples,
        );
        percentiles(
            &format!("parse + programme lookup with {count} codes"),
            core_samples,
        );
        gateway.shutdown().await;
        drop(dir);
        if router_p99 > TARGET_P99 {
            eprintln!("p99 {router_p99:?} is above the {TARGET_P99:?} target");
            std::process::exit(1);
        }
    });
}
