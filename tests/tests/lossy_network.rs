//! A bot and its gateway across a bad network: every datagram between them
//! goes through a relay (`eagate_tests::lossy`) that drops a tenth of
//! them, delays the rest by 25 ms ± 10 ms (so they overtake each other) and
//! sends some at once, ahead of the rest, both ways. (`tc netem` in a
//! network namespace would do the same in the kernel; this machine's kernel
//! is built without netem, so the relay does it in the test.)

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eagate_tests::lossy::{Impairment, LossyRelay};
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
    let mut command = Command::new(BOT);
    command
        .arg(relay.addr.to_string())
        .arg(&device.0)
        .arg(&gateway.fingerprint)
        .arg(state.path())
        .env("EAGATE_SECRET", &device.1);
    let mut bot = Bot::spawn(command);
    bot.lines.expect("state Connected", LOSSY);

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
