//! A bot for the end-to-end tests: the SDK client driven line by line.
//!
//! ```text
//! test-bot <server> <device-id> <fingerprint> <state-dir>   (secret in EAGATE_SECRET)
//! ```
//!
//! It prints one line per event (`signal <id> <channel> <position>`,
//! `confirmed <seq>`, `renumbered <from> <to> <count>`, `state <state>`,
//! `stopped <reason>`, …) and takes
//! commands on stdin: `fill <signal-id> <ticket> <price> <volume>`,
//! `received <signal-id>`, `close`. Each report prints
//! `accepted <seq> <signal-id>` once the client has it in its journal.
//!
//! With `EAGATE_TEST_BOT_STEP=1` it takes the next event only on a `next`
//! command after each signal, like a bot busy placing an order (the SDK
//! counts a signal done when it is reported on or the next event is asked
//! for).

use std::io::Write;

use eagate_sdk::protocol::{Decimal, Fill, SignalId};
use eagate_sdk::{Client, ClientConfig, Event, ServerTrust};
use tokio::io::{AsyncBufReadExt, BufReader};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, device_id, fingerprint, state_dir] = args.as_slice() else {
        eprintln!("usage: test-bot <server> <device-id> <fingerprint> <state-dir>");
        std::process::exit(2);
    };
    let secret = std::env::var("EAGATE_SECRET").expect("EAGATE_SECRET is set");
    let trust = ServerTrust::Pinned(fingerprint.parse().expect("a fingerprint"));
    let config = ClientConfig::new(server, device_id, &secret, trust, state_dir)
        .expect("a valid configuration");
    let mut client = match Client::connect(config).await {
        Ok(client) => client,
        Err(e) => {
            say(&format!("error {e}"));
            std::process::exit(1);
        }
    };
    let mut states = client.watch_state();
    tokio::spawn(async move {
        loop {
            let state = states.borrow_and_update().clone();
            say(&format!("state {state:?}"));
            if states.changed().await.is_err() {
                return;
            }
        }
    });
    let step = std::env::var("EAGATE_TEST_BOT_STEP").is_ok_and(|v| v == "1");
    let mut busy = false;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = client.next_event(), if !busy => match event {
                Some(Event::Signal(signal)) => {
                    busy = step;
                    say(&format!(
                        "signal {} {} {}",
                        signal.signal_id, signal.channel, signal.position
                    ));
                }
                Some(Event::Connected { .. }) => say("connected"),
                Some(Event::ReportsConfirmed { up_to_seq }) => say(&format!("confirmed {up_to_seq}")),
                Some(Event::ClockCorrected { offset_ms }) => say(&format!("clock {offset_ms}")),
                Some(Event::ReportsRenumbered { from_seq, to_seq, count }) => {
                    say(&format!("renumbered {from_seq} {to_seq} {count}"));
                }
                Some(Event::Disconnected { reason, .. }) => say(&format!("disconnected {reason}")),
                Some(Event::Stopped(reason)) => {
                    say(&format!("stopped {reason:?}"));
                    std::process::exit(3);
                }
                None => std::process::exit(3),
            },
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { break };
                let words: Vec<&str> = line.split_whitespace().collect();
                let outcome = match words.as_slice() {
                    ["fill", id, ticket, price, volume] => {
                        let id: SignalId = id.parse().expect("a signal id");
                        let fill = Fill {
                            ticket: ticket.parse().expect("a ticket"),
                            price: price.parse::<Decimal>().expect("a price"),
                            volume: volume.parse::<Decimal>().expect("a volume"),
                        };
                        client.filled(id, fill).await.map(|seq| (seq, id))
                    }
                    ["received", id] => {
                        let id: SignalId = id.parse().expect("a signal id");
                        client.received(id).await.map(|seq| (seq, id))
                    }
                    ["close"] => break,
                    ["next"] => {
                        busy = false;
                        continue;
                    }
                    _ => {
                        say(&format!("error unknown command {line:?}"));
                        continue;
                    }
                };
                match outcome {
                    Ok((seq, id)) => say(&format!("accepted {seq} {id}")),
                    Err(e) => say(&format!("error {e}")),
                }
            }
        }
    }
    client.close().await;
    say("closed");
}
