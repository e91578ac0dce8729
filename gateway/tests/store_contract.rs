//! One contract for the stores, proven against both backends: sled (the
//! embedded default) and Redis (the private instance the test command
//! starts). Each Redis test uses its own key prefix, so tests share nothing.

use std::sync::Arc;

use eagate_gateway::nonces::NonceStore;
use eagate_gateway::presence::PresenceStore;
use eagate_gateway::registry::{DeviceRegistry, RegistryError};
use eagate_gateway::reports::{
    FeedFill, Ingested, ReportKind, ReportStore, ReportStoreError, StoredReport,
};
use eagate_gateway::seal::MasterKey;
use eagate_gateway::signals::{PositionStore, SignalDraft, SignalLog};
use eagate_gateway::store::redis::RedisStores;
use eagate_gateway::store::sled::{
    SledDeviceStore, SledNonceStore, SledPositions, SledReportStore, SledSignalLog,
};
use eagate_protocol::*;

struct Stores {
    reports: Arc<dyn ReportStore>,
    signals: Arc<dyn SignalLog>,
    nonces: Arc<dyn NonceStore>,
    registry: DeviceRegistry,
    positions: Arc<dyn PositionStore>,
    _db: Option<eagate_gateway::durable::Durable>,
}

fn sled_stores() -> Stores {
    let db =
        eagate_gateway::durable::Durable::new(sled::Config::new().temporary(true).open().unwrap())
            .unwrap();
    Stores {
        reports: Arc::new(SledReportStore::open(&db).unwrap()),
        signals: Arc::new(SledSignalLog::open(&db).unwrap()),
        nonces: Arc::new(SledNonceStore::open(&db).unwrap()),
        registry: DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db).unwrap())),
        positions: Arc::new(SledPositions::open(&db).unwrap()),
        _db: Some(db),
    }
}

fn unique_prefix() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let tag: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("eagate-test-{tag}")
}

async fn redis_stores() -> Stores {
    let url = eagate_tests::redis_url();
    let stores = RedisStores::connect(&url, &unique_prefix())
        .await
        .unwrap_or_else(|e| panic!("the test Redis at {url} must answer: {e}"));
    let stores = Arc::new(stores);
    Stores {
        reports: stores.clone(),
        signals: stores.clone(),
        nonces: stores.clone(),
        registry: DeviceRegistry::new(stores.clone()),
        positions: stores,
        _db: None,
    }
}

/// Runs one contract check against both backends, as two tests.
macro_rules! on_both_backends {
    ($check:ident) => {
        mod $check {
            #[tokio::test]
            async fn on_sled() {
                super::$check(&super::sled_stores()).await;
            }

            #[tokio::test]
            async fn on_redis() {
                super::$check(&super::redis_stores().await).await;
            }
        }
    };
}

fn report(device: &str, seq: u64, signal: u8, outcome: ReportOutcome) -> StoredReport {
    StoredReport::new(
        device,
        &Report {
            seq,
            signal_id: SignalId([signal; 16]),
            at_ms: 1_000 + seq,
            outcome,
        },
        5_000,
    )
}

fn fill(ticket: u64) -> ReportOutcome {
    ReportOutcome::Filled(Fill {
        ticket,
        price: "1.08543".parse().unwrap(),
        volume: "0.10".parse().unwrap(),
    })
}

async fn resent_reports_are_stored_once_and_the_first_content_is_kept(stores: &Stores) {
    let first = report("dv_A", 1, 7, fill(1));
    assert_eq!(
        stores.reports.ingest(&first, None).await.unwrap(),
        Ingested::Stored { confirmed_up_to: 1 }
    );
    for _ in 0..3 {
        assert_eq!(
            stores.reports.ingest(&first, None).await.unwrap(),
            Ingested::AlreadyStored { confirmed_up_to: 1 }
        );
    }
    // Another report under the same number is a conflict, never taken for
    // a resend: it is not stored, and the store says what it holds.
    let other = report("dv_A", 1, 7, fill(999));
    assert_eq!(
        stores.reports.ingest(&other, None).await.unwrap(),
        Ingested::Conflict {
            stored: Box::new(first.clone())
        }
    );
    assert_eq!(
        stores.reports.for_signal(SignalId([7; 16])).await.unwrap(),
        vec![first]
    );
    // Nor is it indexed under its own signal.
    let elsewhere = report("dv_A", 1, 8, fill(1));
    assert!(matches!(
        stores.reports.ingest(&elsewhere, None).await.unwrap(),
        Ingested::Conflict { .. }
    ));
    assert!(
        stores
            .reports
            .for_signal(SignalId([8; 16]))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(resent_reports_are_stored_once_and_the_first_content_is_kept);

async fn fills_and_reversals_enter_the_fill_feed_with_what_the_programme_reads(stores: &Stores) {
    let device = format!("dv_feed_{}", unique_prefix());
    let reversal = ReportOutcome::Reversed(Reversal { ticket: 41 });
    for (seq, outcome) in [
        (1, ReportOutcome::Received),
        (2, fill(41)),
        (3, reversal.clone()),
    ] {
        stores
            .reports
            .ingest(&report(&device, seq, 9, outcome), None)
            .await
            .unwrap();
    }
    // A resent reversal is stored once (it may enter the feed again, which
    // its reader ignores).
    assert!(matches!(
        stores
            .reports
            .ingest(&report(&device, 3, 9, reversal), None)
            .await
            .unwrap(),
        Ingested::AlreadyStored { confirmed_up_to: 3 }
    ));
    let feed: Vec<FeedFill> = stores
        .reports
        .unclaimed_fills(None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.device_id == device)
        .collect();
    // What the programme reads of each entry: sequence, signal, lots, and
    // the ticket a reversal undoes.
    type Read = (u64, Option<SignalId>, Option<String>, Option<u64>);
    let mut read: Vec<Read> = feed
        .iter()
        .map(|f| {
            (
                f.seq,
                f.signal_id,
                f.volume.map(|v| v.to_string()),
                f.reverses_ticket,
            )
        })
        .collect();
    // Redis adds a resend's entry again (its reader ignores the copy).
    read.dedup();
    let signal = Some(SignalId([9; 16]));
    assert_eq!(
        read,
        [
            (2, signal, Some("0.10".to_owned()), None),
            (3, signal, None, Some(41)),
        ],
        "the received report is not in the feed; the fill and the reversal are, in order"
    );
    // A reader pages on after an entry it leaves in the feed.
    let after_first: Vec<FeedFill> = stores
        .reports
        .unclaimed_fills(Some(&feed[0].mark), 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.device_id == device)
        .collect();
    assert_eq!(after_first, feed[1..]);
    let kinds: Vec<ReportKind> = stores
        .reports
        .for_signal(SignalId([9; 16]))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.device_id == device)
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ReportKind::Received,
            ReportKind::Filled,
            ReportKind::Reversed
        ]
    );
    // The feed's reader checks an entry against the report stored under
    // its number.
    let stored = stores.reports.report_at(&device, 3).await.unwrap().unwrap();
    assert_eq!(
        (stored.kind, stored.ticket),
        (ReportKind::Reversed, Some(41))
    );
    assert_eq!(stores.reports.report_at(&device, 4).await.unwrap(), None);
    assert_eq!(
        stores.reports.report_at("dv_nobody", 3).await.unwrap(),
        None
    );
    stores.reports.claim_fills(&feed).await.unwrap();
    assert!(
        stores
            .reports
            .unclaimed_fills(None, 1_000)
            .await
            .unwrap()
            .iter()
            .all(|f| f.device_id != device)
    );
}
on_both_backends!(fills_and_reversals_enter_the_fill_feed_with_what_the_programme_reads);

async fn the_watermark_waits_for_a_gap_and_jumps_when_it_fills(stores: &Stores) {
    let received = |seq| report("dv_A", seq, 1, ReportOutcome::Received);
    let watermark = |ingested: Ingested| ingested.confirmed_up_to().unwrap();
    assert_eq!(
        watermark(stores.reports.ingest(&received(1), None).await.unwrap()),
        1
    );
    assert_eq!(
        watermark(stores.reports.ingest(&received(3), None).await.unwrap()),
        1
    );
    assert_eq!(
        watermark(stores.reports.ingest(&received(4), None).await.unwrap()),
        1
    );
    assert_eq!(
        watermark(stores.reports.ingest(&received(2), None).await.unwrap()),
        4
    );
    assert_eq!(stores.reports.confirmed_up_to("dv_A").await.unwrap(), 4);
    assert_eq!(stores.reports.confirmed_up_to("dv_B").await.unwrap(), 0);
}
on_both_backends!(the_watermark_waits_for_a_gap_and_jumps_when_it_fills);

async fn concurrent_resends_of_one_report_store_it_exactly_once(stores: &Stores) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let reports = stores.reports.clone();
            tokio::spawn(async move {
                matches!(
                    reports
                        .ingest(&report("dv_A", 5, 9, fill(5)), None)
                        .await
                        .unwrap(),
                    Ingested::Stored { .. }
                )
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += usize::from(task.await.unwrap());
    }
    assert_eq!(stored, 1);
    assert_eq!(
        stores
            .reports
            .for_signal(SignalId([9; 16]))
            .await
            .unwrap()
            .len(),
        1
    );
}
on_both_backends!(concurrent_resends_of_one_report_store_it_exactly_once);

/// Many writers, each holding the durability of its writes in flight and
/// polling only its oldest (as a device session does), the rest polled once
/// and left: every write goes through and becomes durable; none stalls
/// another (a durability future that waited to be polled to get a slot of a
/// shared connection would stall them all).
async fn writers_with_many_writes_in_flight_never_stall_each_other(stores: &Stores) {
    let writers: Vec<_> = (0..50)
        .map(|writer| {
            let reports = stores.reports.clone();
            tokio::spawn(async move {
                let device = format!("dv_{writer}");
                let mut in_flight = std::collections::VecDeque::new();
                for seq in 1..=100 {
                    let written = reports
                        .write(&report(&device, seq, 9, ReportOutcome::Received), None)
                        .await
                        .unwrap();
                    let mut durable = written.durable;
                    if let Some(done) = futures_util::FutureExt::now_or_never(&mut durable) {
                        done.unwrap();
                    } else {
                        in_flight.push_back(durable);
                    }
                    if in_flight.len() > 32 {
                        in_flight.pop_front().unwrap().await.unwrap();
                    }
                }
                for durable in in_flight {
                    durable.await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        for writer in writers {
            writer.await.unwrap();
        }
    })
    .await
    .expect("every writer finishes");
    for writer in 0..50 {
        let device = format!("dv_{writer}");
        assert_eq!(stores.reports.confirmed_up_to(&device).await.unwrap(), 100);
    }
    assert_eq!(
        stores
            .reports
            .for_signal(SignalId([9; 16]))
            .await
            .unwrap()
            .len(),
        5_000
    );
}
on_both_backends!(writers_with_many_writes_in_flight_never_stall_each_other);

async fn a_signals_reports_are_listed_by_device_then_sequence(stores: &Stores) {
    for (device, seq) in [("dv_B", 2), ("dv_A", 2), ("dv_B", 1), ("dv_A", 1)] {
        stores
            .reports
            .ingest(&report(device, seq, 3, ReportOutcome::Received), None)
            .await
            .unwrap();
    }
    stores
        .reports
        .ingest(&report("dv_A", 3, 4, ReportOutcome::Received), None)
        .await
        .unwrap();
    let listed: Vec<(String, u64)> = stores
        .reports
        .for_signal(SignalId([3; 16]))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.device_id, r.seq))
        .collect();
    let expected: Vec<(String, u64)> = [("dv_A", 1), ("dv_A", 2), ("dv_B", 1), ("dv_B", 2)]
        .into_iter()
        .map(|(d, s)| (d.to_owned(), s))
        .collect();
    assert_eq!(listed, expected);
}
on_both_backends!(a_signals_reports_are_listed_by_device_then_sequence);

async fn sequence_zero_is_refused(stores: &Stores) {
    assert!(
        stores
            .reports
            .ingest(&report("dv_A", 0, 1, ReportOutcome::Received), None)
            .await
            .is_err()
    );
    assert_eq!(stores.reports.confirmed_up_to("dv_A").await.unwrap(), 0);
}
on_both_backends!(sequence_zero_is_refused);

fn draft(comment: &str) -> SignalDraft {
    SignalDraft {
        symbol: Symbol::new("EURUSD").unwrap(),
        action: Action::OpenSell,
        order_type: OrderType::Limit,
        volume: "1.5".parse().unwrap(),
        price: Some("1.09000".parse().unwrap()),
        stop_loss: None,
        take_profit: Some("1.08000".parse().unwrap()),
        magic: 42,
        comment: SignalComment::new(comment).unwrap(),
        issued_at_ms: Some(1_700_000_000_000),
        expires_at_ms: None,
        reference: None,
    }
}

async fn a_channel_log_numbers_signals_and_reads_them_back_in_order(stores: &Stores) {
    let gold = ChannelName::new("gold").unwrap();
    let silver = ChannelName::new("silver").unwrap();
    let mut published = Vec::new();
    for i in 1..=5 {
        published.push(
            stores
                .signals
                .append(&gold, draft(&i.to_string()), None)
                .await
                .unwrap()
                .signal,
        );
    }
    stores
        .signals
        .append(&silver, draft("s"), None)
        .await
        .unwrap();
    let positions: Vec<u64> = published.iter().map(|s| s.position).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 5);
    assert_eq!(stores.signals.head(&silver).await.unwrap(), 1);
    assert_eq!(
        stores.signals.read_after(&gold, 0, 100).await.unwrap(),
        published
    );
    assert_eq!(
        stores.signals.read_after(&gold, 2, 2).await.unwrap(),
        published[2..4].to_vec()
    );
    assert!(
        stores
            .signals
            .read_after(&gold, 5, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        stores
            .signals
            .read_after(&gold, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        stores.signals.locate(published[3].signal_id).await.unwrap(),
        Some((gold.clone(), 4))
    );
    assert_eq!(
        stores.signals.locate(SignalId([0; 16])).await.unwrap(),
        None
    );
}
on_both_backends!(a_channel_log_numbers_signals_and_reads_them_back_in_order);

async fn an_invalid_signal_is_refused_and_takes_no_position(stores: &Stores) {
    let gold = ChannelName::new("gold").unwrap();
    let mut invalid = draft("x");
    invalid.price = None;
    assert!(stores.signals.append(&gold, invalid, None).await.is_err());
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 0);
    assert_eq!(
        stores
            .signals
            .append(&gold, draft("ok"), None)
            .await
            .unwrap()
            .signal
            .position,
        1
    );
}
on_both_backends!(an_invalid_signal_is_refused_and_takes_no_position);

async fn a_nonce_is_claimed_once_per_device_until_it_expires(stores: &Stores) {
    let alice = DeviceId::new("dv_ALICE").unwrap();
    let bob = DeviceId::new("dv_BOB").unwrap();
    let nonce = [5; 16];
    let now = eagate_gateway::clock::unix_ms();
    assert!(stores.nonces.claim(&alice, &nonce, now, 200).await.unwrap());
    assert!(
        !stores
            .nonces
            .claim(&alice, &nonce, now + 1, 200)
            .await
            .unwrap()
    );
    assert!(
        stores
            .nonces
            .claim(&bob, &nonce, now + 1, 200)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = eagate_gateway::clock::unix_ms();
    assert!(
        stores
            .nonces
            .claim(&alice, &nonce, later, 200)
            .await
            .unwrap()
    );
}
on_both_backends!(a_nonce_is_claimed_once_per_device_until_it_expires);

/// What a Redis restart does to the scripts the Redis at `url` holds.
async fn flush_scripts(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_stores_a_report_once_after_its_scripts_were_flushed() {
    // A Redis of its own: flushing the scripts of the shared one would
    // reach into the other tests.
    let redis = eagate_tests::PrivateRedis::start();
    let stores = RedisStores::connect(&redis.url, &unique_prefix())
        .await
        .unwrap();
    // A first write loads the script; then what a Redis restart does to
    // loaded scripts.
    stores
        .ingest(&report("dv_B", 1, 8, ReportOutcome::Received), None)
        .await
        .unwrap();
    flush_scripts(&redis.url).await;
    let fill_one = report("dv_A", 1, 8, fill(1));
    assert_eq!(
        stores.ingest(&fill_one, None).await.unwrap(),
        Ingested::Stored { confirmed_up_to: 1 }
    );
    let listed = stores.for_signal(SignalId([8; 16])).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&fill_one));
}

#[tokio::test]
async fn a_redis_cluster_stores_many_devices_reports_once_and_renews_their_presence_after_every_node_lost_its_scripts()
 {
    // A cluster of its own: flushing the scripts of the shared one would
    // reach into the other tests.
    let cluster = eagate_tests::PrivateRedisCluster::start();
    let stores = RedisStores::connect(&cluster.url, &unique_prefix())
        .await
        .unwrap();
    let devices: Vec<String> = (0..24).map(|n| format!("dv_{n}")).collect();
    // Written at once, so batches carry many devices' runs, in many slots.
    let write_all = |seq: u64| {
        futures_util::future::join_all(devices.iter().map(|device| {
            let stores = &stores;
            async move {
                stores
                    .ingest(&report(device, seq, 8, fill(seq)), None)
                    .await
                    .unwrap()
            }
        }))
    };
    for ingested in write_all(1).await {
        assert_eq!(ingested, Ingested::Stored { confirmed_up_to: 1 });
    }
    let now = 1_700_000_000_000;
    stores.renew(&devices, "gw-1", now).await.unwrap();
    for node in cluster.nodes() {
        flush_scripts(&format!("redis://{node}/")).await;
    }
    for ingested in write_all(2).await {
        assert_eq!(ingested, Ingested::Stored { confirmed_up_to: 2 });
    }
    // Again: each once, the already stored answered as such.
    for ingested in write_all(2).await {
        assert_eq!(ingested, Ingested::AlreadyStored { confirmed_up_to: 2 });
    }
    let listed = stores.for_signal(SignalId([8; 16])).await.unwrap();
    assert_eq!(listed.len(), devices.len() * 2, "each report once");
    // Presence renewals reach every device's slot, scripts flushed or not.
    stores.mark(&devices[0], "gw-1", true, now).await.unwrap();
    stores
        .renew(&devices[..1], "gw-1", now + 1_000)
        .await
        .unwrap();
    assert_eq!(
        stores.presence(&devices[0], now + 1_000).await.unwrap().0,
        1,
        "one gateway vouches for the device"
    );
}

#[tokio::test]
async fn redis_keeps_one_readable_stream_entry_per_report_however_often_it_is_resent() {
    let prefix = unique_prefix();
    let url = eagate_tests::redis_url();
    let stores = RedisStores::connect(&url, &prefix).await.unwrap();
    for seq in [1, 2, 2, 1, 3, 3, 3] {
        stores
            .ingest(&report("dv_A", seq, 8, fill(seq)), None)
            .await
            .unwrap();
    }
    // Read back with plain commands, as an operator would with redis-cli.
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{prefix}:{{dev:dv_A}}:executions");
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(length, 3);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let field = |i: usize, name: &str| -> String {
        redis::from_redis_value(&entries.ids[i].map[name]).unwrap()
    };
    assert_eq!(field(0, "seq"), "1");
    assert_eq!(field(2, "seq"), "3");
    assert_eq!(field(1, "kind"), "filled");
    assert_eq!(field(1, "price"), "1.08543");
    assert_eq!(field(1, "volume"), "0.10");
    assert_eq!(field(1, "signal_id"), SignalId([8; 16]).to_string());
    let watermark: u64 = redis::cmd("GET")
        .arg(format!("{prefix}:{{dev:dv_A}}:watermark"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(watermark, 3);
}

async fn a_report_too_far_above_the_watermark_is_refused_and_not_stored(stores: &Stores) {
    use eagate_gateway::reports::{MAX_REPORT_GAP, ReportStoreError};
    let at_limit = report("dv_A", MAX_REPORT_GAP, 6, ReportOutcome::Received);
    assert!(matches!(
        stores.reports.ingest(&at_limit, None).await.unwrap(),
        Ingested::Stored { .. }
    ));
    let beyond = report("dv_A", MAX_REPORT_GAP + 1, 6, ReportOutcome::Received);
    assert!(matches!(
        stores.reports.ingest(&beyond, None).await,
        Err(ReportStoreError::TooFarAhead { confirmed: 0, .. })
    ));
    assert_eq!(
        stores
            .reports
            .for_signal(SignalId([6; 16]))
            .await
            .unwrap()
            .len(),
        1
    );
}
on_both_backends!(a_report_too_far_above_the_watermark_is_refused_and_not_stored);

async fn a_retried_publish_with_the_same_key_is_stored_once(stores: &Stores) {
    use eagate_gateway::signals::SignalLogError;
    let gold = ChannelName::new("gold").unwrap();
    let silver = ChannelName::new("silver").unwrap();
    let first = stores
        .signals
        .append(&gold, draft("a"), Some("order-77"))
        .await
        .unwrap();
    assert!(!first.replayed);
    let retried = stores
        .signals
        .append(&gold, draft("a"), Some("order-77"))
        .await
        .unwrap();
    assert!(retried.replayed);
    assert_eq!(retried.signal, first.signal);
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 1);
    // The same key with another signal is refused, not silently replayed.
    assert!(matches!(
        stores
            .signals
            .append(&gold, draft("b"), Some("order-77"))
            .await,
        Err(SignalLogError::KeyReused)
    ));
    // Keys are per channel, and no key means no deduplication.
    let other = stores
        .signals
        .append(&silver, draft("a"), Some("order-77"))
        .await
        .unwrap();
    assert!(!other.replayed);
    stores
        .signals
        .append(&gold, draft("a"), None)
        .await
        .unwrap();
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 2);
}
on_both_backends!(a_retried_publish_with_the_same_key_is_stored_once);

async fn concurrent_retries_with_one_key_publish_once(stores: &Stores) {
    let gold = ChannelName::new("gold").unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let signals = stores.signals.clone();
            let gold = gold.clone();
            tokio::spawn(async move {
                signals
                    .append(&gold, draft("x"), Some("k"))
                    .await
                    .unwrap()
                    .signal
                    .signal_id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 1);
}
on_both_backends!(concurrent_retries_with_one_key_publish_once);

fn master_key() -> MasterKey {
    MasterKey::from_hex(&"ab".repeat(32)).unwrap()
}

on_both_backends!(concurrent_registrations_of_one_name_in_an_account_admit_exactly_one);
async fn concurrent_registrations_of_one_name_in_an_account_admit_exactly_one(stores: &Stores) {
    let key = master_key();
    let attempts = (0..8).map(|_| stores.registry.register(&key, "acct-9", "London VPS"));
    let outcomes = futures_util::future::join_all(attempts).await;
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(admitted, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| match o {
        Ok(_) => true,
        Err(RegistryError::NameTaken(name)) => name == "London VPS",
        Err(_) => false,
    }));
    // Another account may use the name.
    stores
        .registry
        .register(&key, "acct-10", "London VPS")
        .await
        .unwrap();
    assert_eq!(stores.registry.list(Some("acct-9")).await.unwrap().len(), 1);
    assert_eq!(stores.registry.list(None).await.unwrap().len(), 2);
}

on_both_backends!(renaming_takes_the_new_name_and_frees_the_old_one);
async fn renaming_takes_the_new_name_and_frees_the_old_one(stores: &Stores) {
    let key = master_key();
    let (first, _) = stores.registry.register(&key, "acct", "one").await.unwrap();
    let (second, _) = stores.registry.register(&key, "acct", "two").await.unwrap();
    assert!(matches!(
        stores.registry.rename(&second.device_id, "one").await,
        Err(RegistryError::NameTaken(_))
    ));
    let renamed = stores
        .registry
        .rename(&first.device_id, "uno")
        .await
        .unwrap();
    assert_eq!(renamed.name, "uno");
    stores
        .registry
        .rename(&second.device_id, "one")
        .await
        .unwrap();
    let mut names: Vec<String> = stores
        .registry
        .list(Some("acct"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(names, ["one", "uno"]);
}

on_both_backends!(concurrent_changes_to_one_device_are_all_kept);
async fn concurrent_changes_to_one_device_are_all_kept(stores: &Stores) {
    let key = master_key();
    let (device, _) = stores.registry.register(&key, "acct", "vps").await.unwrap();
    let channels: Vec<ChannelName> = (0..8)
        .map(|i| ChannelName::new(&format!("ch{i}")).unwrap())
        .collect();
    let id = device.device_id.as_str();
    let subscribing = channels.iter().map(|c| stores.registry.subscribe(id, c));
    let (added, revoked) = tokio::join!(
        futures_util::future::join_all(subscribing),
        stores.registry.revoke(id)
    );
    assert!(added.into_iter().all(|a| a.unwrap()));
    revoked.unwrap();
    let stored = stores.registry.get(id).await.unwrap().unwrap();
    assert_eq!(stored.channels.len(), 8, "no subscription was overwritten");
    assert!(
        stored.revoked_at_ms.is_some(),
        "the revocation was not overwritten"
    );
    let credentials = stores
        .registry
        .credentials(&key, &DeviceId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(credentials.revoked);
}

on_both_backends!(a_device_position_only_moves_forward_unless_a_subscription_starts);
async fn a_device_position_only_moves_forward_unless_a_subscription_starts(stores: &Stores) {
    let gold = ChannelName::new("gold").unwrap();
    let positions = &stores.positions;
    assert_eq!(positions.get("dv_A", &gold).await.unwrap(), None);
    assert_eq!(
        positions.subscription_start("dv_A", &gold).await.unwrap(),
        None
    );
    positions.advance("dv_A", &gold, 5).await.unwrap();
    positions.advance("dv_A", &gold, 3).await.unwrap();
    assert_eq!(positions.get("dv_A", &gold).await.unwrap(), Some(5));
    positions
        .start_subscription("dv_A", &gold, 2)
        .await
        .unwrap();
    assert_eq!(positions.get("dv_A", &gold).await.unwrap(), Some(2));
    assert_eq!(
        positions.subscription_start("dv_A", &gold).await.unwrap(),
        Some(2)
    );
    // Reports move the position on, never the subscription's start.
    positions.advance("dv_A", &gold, 9).await.unwrap();
    assert_eq!(
        positions.subscription_start("dv_A", &gold).await.unwrap(),
        Some(2)
    );
    assert_eq!(positions.get("dv_B", &gold).await.unwrap(), None);
}

on_both_backends!(a_newer_session_fences_off_every_report_write_of_an_older_one);
async fn a_newer_session_fences_off_every_report_write_of_an_older_one(stores: &Stores) {
    let reports = &stores.reports;
    let (first, watermark) = reports.begin_session("dv_A").await.unwrap();
    assert_eq!(watermark, 0);
    assert_eq!(reports.current_session("dv_A").await.unwrap(), first);
    assert!(matches!(
        reports
            .ingest(&report("dv_A", 1, 1, fill(1)), Some(first))
            .await
            .unwrap(),
        Ingested::Stored { confirmed_up_to: 1 }
    ));
    let (second, watermark) = reports.begin_session("dv_A").await.unwrap();
    assert!(second > first);
    assert_eq!(watermark, 1, "what the older session stored counts");
    // The older session can no longer write, not even a resend.
    for seq in [1, 2] {
        assert_eq!(
            reports
                .ingest(&report("dv_A", seq, 2, fill(seq)), Some(first))
                .await
                .unwrap(),
            Ingested::Superseded
        );
    }
    assert!(
        reports
            .for_signal(SignalId([2; 16]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(reports.confirmed_up_to("dv_A").await.unwrap(), 1);
    assert!(matches!(
        reports
            .ingest(&report("dv_A", 2, 2, fill(2)), Some(second))
            .await
            .unwrap(),
        Ingested::Stored { confirmed_up_to: 2 }
    ));
    // Other devices have sessions of their own: an epoch newer than the
    // device's newest is one the store lost (a failover, a restore), not a
    // replaced session's, and nothing is written.
    assert!(reports.current_session("dv_B").await.unwrap() < first);
    assert!(matches!(
        reports
            .ingest(&report("dv_B", 1, 3, fill(1)), Some(first))
            .await,
        Err(ReportStoreError::SessionLost)
    ));
    assert!(
        reports
            .for_signal(SignalId([3; 16]))
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(retention_removes_the_oldest_signals_and_never_reuses_their_positions);
async fn retention_removes_the_oldest_signals_and_never_reuses_their_positions(stores: &Stores) {
    use eagate_gateway::signals::logged_at_ms;
    let gold = ChannelName::new("gold").unwrap();
    let silver = ChannelName::new("silver").unwrap();
    let mut published = Vec::new();
    for (i, comment) in ["old", "middle", "new"].into_iter().enumerate() {
        let key = format!("order-{i}");
        let appended = stores
            .signals
            .append(&gold, draft(comment), Some(&key))
            .await
            .unwrap();
        published.push(appended.signal);
        // Distinct log times, so a cutoff can fall between signals.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let kept_silver = stores
        .signals
        .append(&silver, draft("silver"), None)
        .await
        .unwrap()
        .signal;
    assert_eq!(
        stores.signals.trim(0).await.unwrap(),
        0,
        "nothing is older than 0"
    );

    // Cut just before "middle" was logged: only "old" goes.
    let cutoff = logged_at_ms(published[1].signal_id);
    assert!(logged_at_ms(published[0].signal_id) < cutoff);
    assert!(logged_at_ms(kept_silver.signal_id) > cutoff);
    assert_eq!(stores.signals.trim(cutoff).await.unwrap(), 1);
    let left: Vec<u64> = stores
        .signals
        .read_after(&gold, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.position)
        .collect();
    assert_eq!(left, [2, 3], "a device resuming from 0 gets what is kept");
    assert_eq!(
        stores.signals.locate(published[0].signal_id).await.unwrap(),
        None
    );
    assert_eq!(
        stores.signals.locate(published[1].signal_id).await.unwrap(),
        Some((gold.clone(), 2))
    );
    assert_eq!(stores.signals.head(&gold).await.unwrap(), 3);
    assert_eq!(
        stores.signals.read_after(&silver, 0, 10).await.unwrap(),
        [kept_silver]
    );

    // The removed signal's key is free again and a new signal takes the
    // next position, not a removed one; the kept signal's key still replays.
    let again = stores
        .signals
        .append(&gold, draft("old"), Some("order-0"))
        .await
        .unwrap();
    assert!(!again.replayed);
    assert_eq!(again.signal.position, 4);
    let replayed = stores
        .signals
        .append(&gold, draft("middle"), Some("order-1"))
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.signal.position, 2);
}

/// Puts a string where Redis holds a hash, set or stream: every command of
/// the wrong type on `key` fails.
async fn damage(url: &str, key: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(key)
        .arg("damaged")
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_a_report_that_fails_fails_alone_however_its_batch_was_gathered() {
    let prefix = unique_prefix();
    let url = eagate_tests::redis_url();
    let stores = RedisStores::connect(&url, &prefix).await.unwrap();
    // One device's reports hash is damaged (a string where a hash belongs):
    // its script fails inside Redis.
    damage(&url, &format!("{prefix}:{{dev:dv_damaged}}:reports")).await;
    // Its writes race many others', so batches hold both kinds.
    let writers: Vec<_> = (0..40)
        .map(|writer| {
            let stores = stores.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for seq in 1..=25 {
                    let device = if writer % 8 == 0 {
                        "dv_damaged".to_owned()
                    } else {
                        format!("dv_{writer}")
                    };
                    let report = report(&device, seq, 5, ReportOutcome::Received);
                    outcomes.push((device, stores.ingest(&report, None).await));
                }
                outcomes
            })
        })
        .collect();
    let (mut failed, mut stored) = (0, 0);
    for writer in writers {
        for (device, outcome) in writer.await.unwrap() {
            if device == "dv_damaged" {
                assert!(
                    outcome.is_err(),
                    "a damaged device's write failed: {outcome:?}"
                );
                failed += 1;
            } else {
                assert!(
                    matches!(outcome, Ok(Ingested::Stored { .. })),
                    "{device}: {outcome:?}"
                );
                stored += 1;
            }
        }
    }
    assert_eq!((failed, stored), (125, 875));
    for writer in (0..40).filter(|writer| writer % 8 != 0) {
        let device = format!("dv_{writer}");
        assert_eq!(stores.confirmed_up_to(&device).await.unwrap(), 25);
    }
}

#[tokio::test]
async fn redis_reports_of_a_signal_whose_index_is_damaged_fail_without_failing_others() {
    let prefix = unique_prefix();
    let url = eagate_tests::redis_url();
    let stores = RedisStores::connect(&url, &prefix).await.unwrap();
    // Signal 6's index is damaged: the pipeline's SADD fails, outside the
    // script, for reports about it.
    damage(
        &url,
        &format!("{prefix}:signal:{}:reports", SignalId([6; 16])),
    )
    .await;
    let writers: Vec<_> = (0..30)
        .map(|writer| {
            let stores = stores.clone();
            tokio::spawn(async move {
                let signal = if writer % 6 == 0 { 6 } else { 5 };
                let device = format!("dv_{writer}");
                let mut outcomes = Vec::new();
                for seq in 1..=20 {
                    let report = report(&device, seq, signal, ReportOutcome::Received);
                    outcomes.push(stores.ingest(&report, None).await);
                    if signal == 6 {
                        // Its first report stays unconfirmed; go no further.
                        break;
                    }
                }
                (signal, outcomes)
            })
        })
        .collect();
    for writer in writers {
        let (signal, outcomes) = writer.await.unwrap();
        for outcome in outcomes {
            if signal == 6 {
                assert!(outcome.is_err(), "{outcome:?}");
            } else {
                // Stored, or already stored by a batch sent again report
                // by report: confirmed either way.
                assert!(
                    matches!(
                        outcome,
                        Ok(Ingested::Stored { .. } | Ingested::AlreadyStored { .. })
                    ),
                    "{outcome:?}"
                );
            }
        }
    }
    let listed = stores.for_signal(SignalId([5; 16])).await.unwrap();
    assert_eq!(listed.len(), 25 * 20);
    for writer in (0..30).filter(|writer| writer % 6 != 0) {
        let device = format!("dv_{writer}");
        assert_eq!(stores.confirmed_up_to(&device).await.unwrap(), 20);
    }
}

async fn watermarks_of_many_devices_are_read_at_once_in_their_order(stores: &Stores) {
    for (device, up_to) in [("dv_A", 3), ("dv_C", 1)] {
        for seq in 1..=up_to {
            stores
                .reports
                .ingest(&report(device, seq, 4, ReportOutcome::Received), None)
                .await
                .unwrap();
        }
    }
    assert_eq!(
        stores
            .reports
            .confirmed_up_to_each(&["dv_C", "dv_unknown", "dv_A", "dv_C"])
            .await
            .unwrap(),
        vec![1, 0, 3, 1]
    );
    assert_eq!(
        stores.reports.confirmed_up_to_each(&[]).await.unwrap(),
        Vec::<u64>::new()
    );
}
on_both_backends!(watermarks_of_many_devices_are_read_at_once_in_their_order);

/// What `write_run` did with each report it attempted.
async fn run_outcomes(
    stores: &Stores,
    run: &[StoredReport],
    epoch: Option<eagate_gateway::reports::SessionEpoch>,
) -> Vec<Ingested> {
    stores
        .reports
        .write_run(run, epoch)
        .await
        .unwrap()
        .into_iter()
        .map(|written| written.unwrap().ingested)
        .collect()
}

async fn a_run_of_reports_is_stored_in_order_and_stops_at_a_conflict(stores: &Stores) {
    let run: Vec<_> = (1..=5)
        .map(|seq| report("dv_A", seq, 2, fill(seq)))
        .collect();
    assert_eq!(
        run_outcomes(stores, &run, None).await,
        (1..=5)
            .map(|seq| Ingested::Stored {
                confirmed_up_to: seq
            })
            .collect::<Vec<_>>()
    );
    // Report 7 is stored already; a run offers 6, another 7, then 8.
    stores
        .reports
        .ingest(&report("dv_A", 7, 2, fill(70)), None)
        .await
        .unwrap();
    let run = [
        report("dv_A", 6, 2, fill(6)),
        report("dv_A", 7, 2, fill(7)),
        report("dv_A", 8, 2, fill(8)),
    ];
    let outcomes = run_outcomes(stores, &run, None).await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0], Ingested::Stored { confirmed_up_to: 7 });
    assert!(
        matches!(outcomes[1], Ingested::Conflict { .. }),
        "{outcomes:?}"
    );
    // 8 came after the conflict: not stored, so the device can renumber it.
    assert_eq!(stores.reports.confirmed_up_to("dv_A").await.unwrap(), 7);
    let listed = stores.reports.for_signal(SignalId([2; 16])).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
}
on_both_backends!(a_run_of_reports_is_stored_in_order_and_stops_at_a_conflict);

async fn a_run_stops_after_a_resend_and_stores_nothing_for_a_replaced_session(stores: &Stores) {
    let first = report("dv_A", 1, 3, ReportOutcome::Received);
    stores.reports.ingest(&first, None).await.unwrap();
    let run = [first, report("dv_A", 2, 3, ReportOutcome::Received)];
    // The resend is answered; the caller writes the rest again.
    assert_eq!(
        run_outcomes(stores, &run, None).await,
        vec![Ingested::AlreadyStored { confirmed_up_to: 1 }]
    );
    assert_eq!(
        run_outcomes(stores, &run[1..], None).await,
        vec![Ingested::Stored { confirmed_up_to: 2 }]
    );
    let (old, _) = stores.reports.begin_session("dv_A").await.unwrap();
    stores.reports.begin_session("dv_A").await.unwrap();
    let late = [
        report("dv_A", 3, 3, ReportOutcome::Received),
        report("dv_A", 4, 3, ReportOutcome::Received),
    ];
    assert_eq!(
        run_outcomes(stores, &late, Some(old)).await,
        vec![Ingested::Superseded]
    );
    assert_eq!(stores.reports.confirmed_up_to("dv_A").await.unwrap(), 2);
}
on_both_backends!(a_run_stops_after_a_resend_and_stores_nothing_for_a_replaced_session);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_lost_and_remade_by_a_call_from_another_runtime_outlives_that_runtime() {
    // A Redis of its own: its clients are cut below.
    let redis = eagate_tests::PrivateRedis::start();
    let stores = Arc::new(
        RedisStores::connect(&redis.url, &unique_prefix())
            .await
            .unwrap(),
    );
    stores
        .ingest(&report("dv_A", 1, 8, ReportOutcome::Received), None)
        .await
        .unwrap();
    // Every client's connection cut (but this one's): the next call
    // remakes the store's.
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .unwrap();
    // That call comes from a runtime of its own, as the device HTTPS
    // listener's do, which then ends, as the listener's does at shutdown.
    let elsewhere = stores.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let answered = runtime.block_on(async {
            for _ in 0..40 {
                if let Ok(confirmed) = elsewhere.confirmed_up_to("dv_A").await {
                    return Some(confirmed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            None
        });
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        answered
    })
    .await
    .unwrap();
    assert_eq!(answered, Some(1));
    // The remade connection belongs to the store's own runtime: its first
    // call after the other runtime ended is answered.
    assert_eq!(stores.confirmed_up_to("dv_A").await.unwrap(), 1);
    stores
        .ingest(&report("dv_A", 2, 8, ReportOutcome::Received), None)
        .await
        .unwrap();
    assert_eq!(stores.confirmed_up_to("dv_A").await.unwrap(), 2);
}
