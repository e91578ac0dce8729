//! A bot and its gateway across a bad network, two ways. In the kernel: the
//! bot in a network namespace of its own, joined to the gateway's by a
//! veth pair, where nftables drops a tenth of its UDP packets each way
//! (`eagate_tests::netns`). In the test: every datagram through a relay
//! (`eagate_tests::lossy`) that drops a tenth of them, delays the rest by
//! 25 ms ± 10 ms (so they overtake each other) and sends some at once,
//! ahead of the rest, both ways. (`tc netem` would delay and reorder in the
//! kernel too; this machine's kernel is built without netem, so the relay
//! does that part.)

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eagate_tests::lossy::{Impairment, LossyRelay};
use eagate_tests::netns::LossyNamespace;
use eagate_tests::process::{Bot, Gateway};

const BOT: &str = env!("CARGO_BIN_EXE_test-bot");
/// Generous: every lost packet costs QUIC a retransmission timeout.
const LOSSY: Duration = Duration::from_secs(60);

fn signal_id_of(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .expect("signal <id> …")
        .to_owned()
}

/// The bot of `command` for `device`, connected to `server` (its last
/// arguments are the server, the device, the fingerprint and its journal).
fn bot_of(
    mut command: Command,
    server: &str,
    gateway: &Gateway,
    device: &(String, String),
    state: &std::path::Path,
) -> Bot {
    command
        .arg(server)
        .arg(&device.0)
        .arg(&gateway.fingerprint)
        .arg(state)
        .env("EAGATE_SECRET", &device.1);
    let mut bot = Bot::spawn(command);
    bot.lines.expect("state Connected", LOSSY);
    bot
}

/// Publishes signals one after another; the bot must get each once and in
/// order, fill it, and have every fill confirmed and stored once, on the
/// one session it started with.
fn every_signal_once_in_order_and_every_fill_confirmed_on_one_session(
    gateway: &Gateway,
    device: &(String, String),
    bot: &mut Bot,
) {
    const SIGNALS: usize = 200;
    let published: Vec<String> = (0..SIGNALS).map(|_| gateway.publish("gold")).collect();
    for (n, id) in published.iter().enumerate() {
        let line = bot.lines.expect("signal ", LOSSY);
        assert_eq!(&signal_id_of(&line), id, "signal {n}: in publishing order");
        bot.send(&format!("fill {id} {} 2350.10 0.10", 1000 + n));
    }
    bot.lines.expect(&format!("confirmed {SIGNALS}"), LOSSY);

    gateway.assert_each_filled_once_in_order(&published, &device.0);
    let seen = bot.lines.drain(Duration::from_millis(500));
    let signals = seen.iter().filter(|l| l.starts_with("signal ")).count();
    assert_eq!(signals, SIGNALS, "each signal once: {seen:#?}");
    // The session lived through it: one connection, never a second.
    let connected = seen.iter().filter(|l| *l == "state Connected").count();
    assert_eq!(connected, 1, "one session: {seen:#?}");
}

#[test]
fn a_session_across_a_link_losing_a_tenth_of_its_packets_gets_every_signal_in_order_and_every_fill_confirmed()
 {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let device = gateway.register("gold");
    // Both ways: 10% lost, 25 ms ± 10 ms late (jitter reorders), and a
    // tenth sent at once, ahead of earlier ones.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("relay seed {seed}");
    let relay = LossyRelay::start(
        gateway.quic.parse().expect("the gateway's QUIC address"),
        Impairment {
            loss_per_mille: 100,
            delay: Duration::from_millis(25),
            jitter: Duration::from_millis(10),
            jump_ahead_per_mille: 100,
        },
        seed,
    );
    let mut bot = bot_of(
        Command::new(BOT),
        &relay.addr.to_string(),
        &gateway,
        &device,
        state.path(),
    );
    every_signal_once_in_order_and_every_fill_confirmed_on_one_session(&gateway, &device, &mut bot);
    // And the network really was that bad.
    let counts = relay.counts();
    let (relayed, dropped, reordered) = (
        counts.relayed.load(Ordering::Relaxed),
        counts.dropped.load(Ordering::Relaxed),
        counts.reordered.load(Ordering::Relaxed),
    );
    println!("relayed {relayed}, dropped {dropped}, reordered {reordered}");
    assert!(
        dropped * 20 > relayed,
        "about a tenth dropped: {dropped} of {relayed}"
    );
    assert!(reordered > 0, "datagrams overtook each other");
}

#[test]
fn a_bot_whose_own_network_drops_a_tenth_of_its_packets_gets_every_signal_in_order_and_every_fill_confirmed()
 {
    let network = LossyNamespace::create(100);
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Devices are served on the pair's address; the admin API stays on
    // loopback, outside the bad network.
    let gateway = Gateway::start_on(data.path(), &format!("{}:0", network.host), &[]);
    let device = gateway.register("gold");
    let mut bot = bot_of(
        network.command(BOT),
        &gateway.quic,
        &gateway,
        &device,
        state.path(),
    );
    every_signal_once_in_order_and_every_fill_confirmed_on_one_session(&gateway, &device, &mut bot);
    // The kernel did drop packets, both ways.
    let (sent, received) = network.dropped();
    println!("the kernel dropped {sent} packets the bot sent and {received} sent to it");
    assert!(
        sent > 0 && received > 0,
        "dropped {sent} sent, {received} received"
    );
}
