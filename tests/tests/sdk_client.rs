//! The Rust SDK's client against a real `eagate serve`, as a bot author
//! runs it: bots killed with SIGKILL, gateways restarted under them, and
//! every way of being turned away.

use std::path::Path;
use std::time::Duration;

use eagate_sdk::{Client, ClientConfig, ClientState, ServerTrust, StopReason};
use eagate_tests::lossy::{Impairment, LossyRelay};
use eagate_tests::process::{Bot, Gateway};
use eagate_tests::redis_url;

const BOT: &str = env!("CARGO_BIN_EXE_test-bot");
const SOON: Duration = Duration::from_secs(20);
/// A gateway killed without a goodbye is noticed by the bot's idle timeout
/// (10 s) and then reconnected to after a backoff.
const RECONNECT: Duration = Duration::from_secs(40);

/// The gateway's arguments for the test command's private Redis, under a
/// key prefix no other test uses.
fn redis_args(prefix_of: &Path) -> Vec<String> {
    redis_args_at(redis_url(), prefix_of)
}

/// [`redis_args`] for the private Redis Cluster.
fn redis_cluster_args(prefix_of: &Path) -> Vec<String> {
    redis_args_at(eagate_tests::redis_cluster_url(), prefix_of)
}

fn redis_args_at(url: String, prefix_of: &Path) -> Vec<String> {
    let prefix = format!(
        "e2e-{}",
        prefix_of
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .replace('.', "-")
    );
    vec![
        "--redis-url".to_owned(),
        url,
        "--redis-prefix".to_owned(),
        prefix,
    ]
}

fn start_bot(gateway: &Gateway, device: &(String, String), state: &Path) -> Bot {
    let mut bot = Bot::start(
        BOT.as_ref(),
        &gateway.quic,
        &gateway.fingerprint,
        device,
        state,
    );
    bot.lines.expect("connected", SOON);
    bot
}

/// The client configuration of `device`, trusting `gateway`'s pinned
/// certificate, with its journal in `state`.
fn pinned_config(gateway: &Gateway, device: &(String, String), state: &Path) -> ClientConfig {
    ClientConfig::new(
        &gateway.quic,
        &device.0,
        &device.1,
        ServerTrust::Pinned(gateway.fingerprint.parse().unwrap()),
        state,
    )
    .unwrap()
}

/// The ids of every signal the bot printed so far (waiting for stragglers),
/// in the order it got them.
fn delivered(bot: &mut Bot) -> Vec<String> {
    bot.lines
        .drain(Duration::from_millis(500))
        .iter()
        .filter(|l| l.starts_with("signal "))
        .map(|l| signal_id_of(l))
        .collect()
}

fn signal_id_of(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .expect("signal <id> …")
        .to_owned()
}

fn killed_bot_with_unconfirmed_fills_delivers_each_exactly_once(extra: &[String]) {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut gateway = Gateway::start(data.path(), &extra);
    let device = gateway.register("gold");
    let mut bot = start_bot(&gateway, &device, state.path());

    let published: Vec<String> = (0..3).map(|_| gateway.publish("gold")).collect();
    for id in &published {
        let line = bot.lines.expect("signal ", SOON);
        assert_eq!(&signal_id_of(&line), id, "in publishing order");
    }
    // The first fill is confirmed while the gateway runs…
    bot.send(&format!("fill {} 1001 2350.10 0.10", published[0]));
    bot.lines.expect("accepted 1 ", SOON);
    bot.lines.expect("confirmed 1", SOON);

    // …the other two are accepted while it is down, so they are only in
    // the bot's journal when the bot is killed.
    gateway.kill();
    bot.send(&format!("fill {} 1002 2350.20 0.10", published[1]));
    bot.lines.expect("accepted 2 ", SOON);
    bot.send(&format!("fill {} 1003 2350.30 0.10", published[2]));
    bot.lines.expect("accepted 3 ", SOON);
    bot.kill();

    gateway.restart();
    let mut bot = start_bot(&gateway, &device, state.path());
    bot.lines.expect("confirmed 3", SOON);
    gateway.assert_each_filled_once_in_order(&published, &device.0);
    // Reported signals are done: none comes again after the restart.
    let seen = bot.lines.drain(Duration::from_millis(500));
    assert!(
        !seen.iter().any(|l| l.starts_with("signal ")),
        "no signal delivered twice: {seen:#?}"
    );
    // A second restart of the bot resends nothing: the journal is clean.
    bot.send("close");
    bot.lines.expect("closed", SOON);
    let mut bot = start_bot(&gateway, &device, state.path());
    bot.send(&format!("received {}", published[2]));
    bot.lines.expect("accepted 4 ", SOON);
    bot.lines.expect("confirmed 4", SOON);
    for (n, id) in published.iter().enumerate().take(2) {
        assert_eq!(gateway.stored_reports(id, &device.0).len(), 1, "{n}");
    }
}

#[test]
fn a_bot_killed_holding_unconfirmed_fills_stores_each_exactly_once_after_restart_on_sled() {
    killed_bot_with_unconfirmed_fills_delivers_each_exactly_once(&[]);
}

#[test]
fn a_bot_killed_holding_unconfirmed_fills_stores_each_exactly_once_after_restart_on_redis() {
    let prefix = tempfile::tempdir().unwrap();
    killed_bot_with_unconfirmed_fills_delivers_each_exactly_once(&redis_args(prefix.path()));
}

#[test]
fn a_bot_killed_holding_unconfirmed_fills_stores_each_exactly_once_after_restart_on_redis_cluster()
{
    let prefix = tempfile::tempdir().unwrap();
    killed_bot_with_unconfirmed_fills_delivers_each_exactly_once(&redis_cluster_args(
        prefix.path(),
    ));
}

#[test]
fn a_bot_killed_before_reporting_gets_the_signal_again_and_no_other() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let step = [("EAGATE_TEST_BOT_STEP", "1")];
    let mut bot = Bot::start_with(
        BOT.as_ref(),
        &gateway.quic,
        &gateway.fingerprint,
        &device,
        state.path(),
        &step,
    );
    bot.lines.expect("connected", SOON);
    let first = gateway.publish("gold");
    bot.lines.expect("signal ", SOON);
    bot.send(&format!("fill {first} 7 1.1 0.10"));
    bot.lines.expect("accepted 1 ", SOON);
    bot.send("next");
    let second = gateway.publish("gold");
    let line = bot.lines.expect("signal ", SOON);
    assert_eq!(signal_id_of(&line), second);
    // Killed after taking the second signal, before acting on it.
    bot.kill();

    let mut bot = start_bot(&gateway, &device, state.path());
    let line = bot.lines.expect("signal ", SOON);
    assert_eq!(
        signal_id_of(&line),
        second,
        "the unfinished signal comes again"
    );
    let seen = bot.lines.drain(Duration::from_millis(500));
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("signal ")).count(),
        1,
        "the finished one does not: {seen:#?}"
    );
}

#[test]
fn a_restarted_gateway_is_reconnected_to_and_no_signal_is_missed_or_repeated() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let mut bot = start_bot(&gateway, &device, state.path());

    let mut published: Vec<String> = (0..2).map(|_| gateway.publish("gold")).collect();
    for _ in 0..2 {
        bot.lines.expect("signal ", SOON);
    }
    gateway.kill();
    gateway.restart();
    published.extend((0..2).map(|_| gateway.publish("gold")));

    // The bot notices by itself and comes back.
    bot.lines.expect("disconnected", RECONNECT);
    bot.lines.expect("connected", RECONNECT);
    for _ in 0..2 {
        bot.lines.expect("signal ", SOON);
    }
    assert_eq!(delivered(&mut bot), published, "each once, in order");
}

#[test]
fn a_wrong_secret_stops_the_bot_with_a_typed_error_and_no_retries() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (device_id, _) = gateway.register("gold");
    // A well-formed secret of another device.
    let (_, other_secret) = gateway.register("gold");
    let mut bot = Bot::start(
        BOT.as_ref(),
        &gateway.quic,
        &gateway.fingerprint,
        &(device_id, other_secret),
        state.path(),
    );
    bot.lines.expect("stopped CredentialsRefused", SOON);
    assert_eq!(bot.wait_exit(SOON), Some(3));
    let attempts = bot
        .lines
        .seen()
        .iter()
        .filter(|l| l.as_str() == "state Connecting")
        .count();
    assert_eq!(attempts, 1, "one attempt: {:#?}", bot.lines.seen());
}

#[test]
fn a_revoked_device_is_stopped_while_connected_and_when_it_comes_back() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let mut bot = start_bot(&gateway, &device, state.path());
    gateway.revoke(&device.0);
    bot.lines.expect("stopped Revoked", SOON);
    assert_eq!(bot.wait_exit(SOON), Some(3));

    let mut bot = Bot::start(
        BOT.as_ref(),
        &gateway.quic,
        &gateway.fingerprint,
        &device,
        state.path(),
    );
    bot.lines.expect("stopped Revoked", SOON);
    assert_eq!(bot.wait_exit(SOON), Some(3));
}

#[test]
fn a_wrong_pinned_fingerprint_stops_the_bot_before_it_sends_its_secret() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let wrong = "AB:".repeat(31) + "AB";
    let mut bot = Bot::start(BOT.as_ref(), &gateway.quic, &wrong, &device, state.path());
    let line = bot.lines.expect("stopped Certificate", SOON);
    assert!(
        line.contains(&gateway.fingerprint),
        "says what it saw: {line}"
    );
    assert_eq!(bot.wait_exit(SOON), Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_certificate_outside_the_trusted_roots_is_a_typed_stop() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = tokio::task::block_in_place(|| Gateway::start(data.path(), &[]));
    let device = tokio::task::block_in_place(|| gateway.register("gold"));
    // Roots that do not include the gateway's self-signed certificate: the
    // gateway is not "pinned" at all.
    let roots = std::sync::Arc::new(rustls_roots_without_the_gateway());
    let config = ClientConfig::new(
        &gateway.quic,
        &device.0,
        &device.1,
        ServerTrust::Roots(roots),
        state.path(),
    )
    .unwrap();
    let client = Client::connect(config).await.unwrap();
    let mut states = client.watch_state();
    let stopped = tokio::time::timeout(
        SOON,
        states.wait_for(|s| matches!(s, ClientState::Stopped(_))),
    )
    .await
    .expect("stops in time")
    .unwrap()
    .clone();
    let ClientState::Stopped(StopReason::Certificate(why)) = stopped else {
        panic!("a certificate stop, not {stopped:?}");
    };
    assert!(why.contains("not trusted"), "{why}");
}

/// A root store holding some other self-signed certificate.
fn rustls_roots_without_the_gateway() -> eagate_sdk::trust::RootCertStore {
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut roots = eagate_sdk::trust::RootCertStore::empty();
    roots.add(other.cert.der().clone()).unwrap();
    roots
}

/// The README's walkthrough: `eagate serve`, a registered device, the
/// example bot, a published signal, a stored paper fill.
#[test]
fn the_example_bot_fills_a_published_signal_on_paper_and_the_fill_is_stored() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let mut bot = std::process::Command::new(eagate_tests::process::workspace_binary("bot"));
    bot.args(["--server", &gateway.quic, "--device-id", &device.0])
        .args(["--fingerprint", &format!("SHA256 {}", gateway.fingerprint)])
        .arg("--state-dir")
        .arg(state.path())
        .env("EAGATE_SECRET", &device.1);
    let mut bot = Bot::spawn(bot);
    bot.lines.expect("connected", SOON);
    let signal_id = gateway.publish("gold");
    let line = bot.lines.expect("signal ", SOON);
    assert!(
        line.contains(&signal_id) && line.contains("buy 0.10 XAUUSD"),
        "{line}"
    );
    bot.lines.expect("  filled on paper", SOON);
    bot.lines.expect("gateway stored reports up to #1", SOON);
    assert_eq!(
        gateway.stored_reports(&signal_id, &device.0),
        vec![(1, "filled".to_owned())]
    );
}

/// How MetaTrader drives the client through the C library: from a plain
/// thread on a timer, never blocking on the network.
#[test]
fn a_timer_driven_caller_polls_signals_and_reports_without_an_async_context() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = pinned_config(&gateway, &device, state.path());
    let mut client = runtime.block_on(Client::connect(config)).unwrap();
    let signal_id = gateway.publish("gold");

    let deadline = std::time::Instant::now() + SOON;
    let signal = loop {
        match client.try_next_event() {
            Some(eagate_sdk::Event::Signal(signal)) => break signal,
            Some(_) => {}
            None => {
                assert!(std::time::Instant::now() < deadline, "no signal in time");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert_eq!(signal.signal_id.to_string(), signal_id);
    let fill = eagate_sdk::protocol::Fill {
        ticket: 9,
        price: "2350.5".parse().unwrap(),
        volume: signal.volume,
    };
    let seq = client
        .report_blocking(
            1_700_000_000_000,
            signal.signal_id,
            eagate_sdk::protocol::ReportOutcome::Filled(fill),
        )
        .unwrap();
    assert_eq!(seq, 1);
    let deadline = std::time::Instant::now() + SOON;
    while gateway.stored_reports(&signal_id, &device.0).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill is not stored"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gateway.stored_reports(&signal_id, &device.0),
        vec![(1, "filled".to_owned())]
    );
    runtime.block_on(client.close());
}

/// The socket the DLL uses on Windows (and so under Wine): QUIC over plain
/// `send_to`/`recv_from`, without the platform's control messages. Signals
/// arrive in order, each fill is stored once, and a session lost to a
/// gateway restart resumes on a new plain socket.
#[test]
fn a_client_on_a_plain_udp_socket_gets_every_signal_and_has_every_fill_stored_once() {
    const SIGNALS: usize = 20;
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ClientConfig {
        udp: eagate_sdk::UdpSocketKind::Plain,
        ..pinned_config(&gateway, &device, state.path())
    };
    let mut client = runtime.block_on(Client::connect(config)).unwrap();
    let mut published = Vec::new();
    let mut received = Vec::new();
    for round in 0..2 {
        for _ in 0..SIGNALS / 2 {
            published.push(gateway.publish("gold"));
        }
        while received.len() < published.len() {
            let wait = if round == 0 { SOON } else { RECONNECT };
            let next =
                runtime.block_on(async { tokio::time::timeout(wait, client.next_signal()).await });
            let signal = next.expect("a signal in time").expect("the client runs");
            let fill = eagate_sdk::protocol::Fill {
                ticket: received.len() as u64 + 1,
                price: "2350.5".parse().unwrap(),
                volume: signal.volume,
            };
            runtime
                .block_on(client.filled(signal.signal_id, fill))
                .unwrap();
            received.push(signal.signal_id.to_string());
        }
        if round == 0 {
            // The second half comes over a new connection, on a new socket.
            gateway.kill();
            gateway.restart();
        }
    }
    assert_eq!(received, published, "every signal once, in order");
    for (n, signal_id) in published.iter().enumerate() {
        let deadline = std::time::Instant::now() + SOON;
        while gateway.stored_reports(signal_id, &device.0).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{signal_id}: no fill stored"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The device's n-th report, stored once.
        assert_eq!(
            gateway.stored_reports(signal_id, &device.0),
            vec![(n as u64 + 1, "filled".to_owned())],
            "{signal_id}: its one fill, once"
        );
    }
    runtime.block_on(client.close());
}

/// A bot whose strategies report from many tasks at once: the client's
/// journal syncs for all of them together, and every fill is numbered once,
/// sent in order and stored once.
#[test]
fn fills_reported_from_many_tasks_at_once_are_numbered_once_each_and_all_stored() {
    const TASKS: u64 = 16;
    const EACH: u64 = 8;
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = pinned_config(&gateway, &device, state.path());
    let signal_id = gateway.publish("gold");
    let mut seqs = runtime.block_on(async {
        let mut client = Client::connect(config.clone()).await.unwrap();
        let signal = client.next_signal().await.unwrap();
        let client = std::sync::Arc::new(client);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let client = client.clone();
                let signal = signal.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for n in 0..EACH {
                        let fill = eagate_sdk::protocol::Fill {
                            ticket: 1_000 + task * EACH + n,
                            price: "2350.5".parse().unwrap(),
                            volume: signal.volume,
                        };
                        seqs.push(client.filled(signal.signal_id, fill).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.extend(task.await.unwrap());
        }
        let deadline = tokio::time::Instant::now() + SOON;
        while client.unconfirmed().await > 0 {
            assert!(tokio::time::Instant::now() < deadline, "not all confirmed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::sync::Arc::into_inner(client).unwrap().close().await;
        seqs
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TASKS * EACH).collect::<Vec<_>>());
    let mut stored = stored_fills(&gateway, &signal_id, &device.0);
    stored.sort_unstable_by_key(|(_, ticket)| *ticket);
    assert_eq!(stored.len() as u64, TASKS * EACH, "each fill stored once");
    assert_eq!(
        stored.iter().map(|(_, ticket)| *ticket).collect::<Vec<_>>(),
        (1_000..1_000 + TASKS * EACH).collect::<Vec<_>>()
    );
    let mut stored_seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    stored_seqs.sort_unstable();
    assert_eq!(stored_seqs, seqs, "under the numbers the tasks were given");
    // The journal agrees: reopened, nothing waits to be sent again.
    runtime.block_on(async {
        let client = Client::connect(config).await.unwrap();
        assert_eq!(client.unconfirmed().await, 0);
        client.close().await;
    });
}

/// Each stored report of `device_id` on `signal_id`, as (seq, ticket).
fn stored_fills(gateway: &Gateway, signal_id: &str, device_id: &str) -> Vec<(u64, u64)> {
    gateway
        .stored(signal_id, device_id)
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().expect("seq"),
                r["ticket"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Two installations of one device (two VPSes with the same id and
/// secret), each with its own journal, numbering their fills on their own.
fn two_installations_of_one_device_lose_and_double_nothing(extra: &[String]) {
    let data = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut gateway = Gateway::start(data.path(), &extra);
    let device = gateway.register("gold");
    let first = gateway.publish("gold");

    // Installation A fills once, confirmed; then fills again while the
    // gateway is down, and is switched off with that fill (#2) unsent.
    let mut a = start_bot(&gateway, &device, state_a.path());
    a.lines.expect("signal ", SOON);
    a.send(&format!("fill {first} 1001 2350.10 0.10"));
    a.lines.expect("accepted 1 ", SOON);
    a.lines.expect("confirmed 1", SOON);
    gateway.kill();
    a.send(&format!("fill {first} 1002 2350.20 0.10"));
    a.lines.expect("accepted 2 ", SOON);
    a.kill();
    gateway.restart();

    // Installation B takes over the device and numbers its own fill #2.
    let mut b = start_bot(&gateway, &device, state_b.path());
    let second = gateway.publish("gold");
    // (On sled, A's first signal may come too: the position A's report
    // recorded was not flushed when the gateway was killed.)
    b.lines.expect(&format!("signal {second}"), SOON);
    b.send(&format!("fill {second} 2001 2351.00 0.10"));
    b.lines.expect("accepted 2 ", SOON);
    b.lines.expect("confirmed 2", SOON);

    // A comes back: B is told it was replaced and stops for good; A's #2
    // is not the gateway's #2, so it is renumbered and stored as #3.
    let mut a = start_bot(&gateway, &device, state_a.path());
    b.lines.expect("stopped Replaced", SOON);
    assert_eq!(b.wait_exit(SOON), Some(3), "B does not fight back");
    a.lines.expect("renumbered 2 3 1", SOON);
    a.lines.expect("confirmed 3", SOON);
    assert_eq!(
        stored_fills(&gateway, &first, &device.0),
        [(1, 1001), (3, 1002)],
        "both of A's fills, once each"
    );
    assert_eq!(
        stored_fills(&gateway, &second, &device.0),
        [(2, 2001)],
        "B's fill, once"
    );
    // A's renumbering is in its journal: a restart resends nothing.
    a.send("close");
    a.lines.expect("closed", SOON);
    let mut a = start_bot(&gateway, &device, state_a.path());
    a.send(&format!("received {second}"));
    a.lines.expect("accepted 4 ", SOON);
    a.lines.expect("confirmed 4", SOON);
    assert_eq!(stored_fills(&gateway, &first, &device.0).len(), 2);
}

#[test]
fn two_installations_of_one_device_replace_each_other_once_and_lose_or_double_no_fill_on_sled() {
    two_installations_of_one_device_lose_and_double_nothing(&[]);
}

#[test]
fn two_installations_of_one_device_replace_each_other_once_and_lose_or_double_no_fill_on_redis() {
    let prefix = tempfile::tempdir().unwrap();
    two_installations_of_one_device_lose_and_double_nothing(&redis_args(prefix.path()));
}

#[test]
fn two_installations_of_one_device_replace_each_other_once_and_lose_or_double_no_fill_on_redis_cluster()
 {
    let prefix = tempfile::tempdir().unwrap();
    two_installations_of_one_device_lose_and_double_nothing(&redis_cluster_args(prefix.path()));
}

#[test]
fn a_bot_whose_gateway_is_killed_resumes_on_another_gateway_of_the_deployment_losing_nothing() {
    // Two gateways on one Redis, with one master key and one TLS identity
    // (the certificate devices pin), behind one address: a relay standing
    // in for the load balancer that sends devices to a live gateway.
    let prefix = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = tempfile::tempdir().unwrap();
    let master_key = "ab".repeat(32);
    let mut shared = redis_args(prefix.path());
    shared.extend(["--master-key".to_owned(), master_key]);
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    let mut gateway_a = Gateway::start(dir_a.path(), &shared);
    let (cert, key) = (
        dir_a.path().join("tls/cert.pem"),
        dir_a.path().join("tls/key.pem"),
    );
    let mut with_identity = shared.clone();
    with_identity.extend([
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let gateway_b = Gateway::start(dir_b.path(), &with_identity);
    assert_eq!(gateway_a.fingerprint, gateway_b.fingerprint);
    let relay = LossyRelay::start(gateway_a.quic.parse().unwrap(), Impairment::NONE, 1);
    let device = gateway_a.register("gold");
    let mut bot = Bot::start(
        BOT.as_ref(),
        &relay.addr.to_string(),
        &gateway_a.fingerprint,
        &device,
        state.path(),
    );

    let mut published: Vec<String> = (0..2).map(|_| gateway_a.publish("gold")).collect();
    for id in &published {
        assert_eq!(&signal_id_of(&bot.lines.expect("signal ", SOON)), id);
    }
    bot.send(&format!("fill {} 2001 2350.10 0.10", published[0]));
    bot.lines.expect("confirmed 1", SOON);

    // Gateway A dies without a word; the balancer sends the device to B.
    gateway_a.kill();
    relay.redirect(gateway_b.quic.parse().unwrap());
    // A fill made while no gateway hears it waits in the bot's journal.
    bot.send(&format!("fill {} 2002 2350.20 0.10", published[1]));
    bot.lines.expect("accepted 2 ", SOON);
    published.extend((0..2).map(|_| gateway_b.publish("gold")));
    bot.lines.expect("disconnected", RECONNECT);
    bot.lines.expect("connected", RECONNECT);
    for id in &published[2..] {
        assert_eq!(&signal_id_of(&bot.lines.expect("signal ", SOON)), id);
    }
    // The journaled fill is confirmed by B, before or after those signals.
    if !bot.lines.seen().iter().any(|line| line == "confirmed 2") {
        bot.lines.expect("confirmed 2", SOON);
    }
    assert_eq!(
        delivered(&mut bot),
        published,
        "each signal once, in order, across the move"
    );
    gateway_b.assert_each_filled_once_in_order(&published[..2], &device.0);
}
