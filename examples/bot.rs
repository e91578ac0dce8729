//! A paper-trading bot: connects to a running `eagate serve`, prints each
//! signal, "fills" it on paper and reports the fill.
//!
//! ```text
//! EAGATE_SECRET=egs_… cargo run --example bot -- \
//!     --server 127.0.0.1:4433 --device-id dv_… --fingerprint 'SHA256 AB:CD:…'
//! ```
//!
//! Stop it with Ctrl-C. Kill it any way you like: reports it accepted are in
//! its journal (`--state-dir`) and reach the gateway exactly once after it
//! starts again, and it picks up after the last signal it reported on.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use eagate_sdk::protocol::{Action, Decimal, Fill, OrderType, Rejection, RejectionText, Signal};
use eagate_sdk::{Client, ClientConfig, ClientState, Event, ServerTrust};

/// Receives eagate signals and fills them on paper.
#[derive(Debug, Parser)]
struct Args {
    /// The gateway's QUIC address, as `eagate serve` prints it.
    #[arg(long, env = "EAGATE_SERVER")]
    server: String,
    /// The device id printed by `eagate device register`.
    #[arg(long, env = "EAGATE_DEVICE_ID")]
    device_id: String,
    /// The device secret printed by `eagate device register`. Prefer the
    /// environment variable: command lines are visible to other users.
    #[arg(long, env = "EAGATE_SECRET", hide_env_values = true)]
    secret: String,
    /// The gateway's certificate fingerprint, as `eagate serve` prints it.
    #[arg(long, env = "EAGATE_FINGERPRINT")]
    fingerprint: String,
    /// Where the bot keeps its journal of unconfirmed reports and positions.
    #[arg(long, default_value = "eagate-bot-state")]
    state_dir: PathBuf,
    /// The price paper fills of market orders get (there is no market here).
    #[arg(long, default_value = "1.00000")]
    paper_price: Decimal,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let trust = ServerTrust::Pinned(args.fingerprint.parse()?);
    let config = ClientConfig::new(
        &args.server,
        &args.device_id,
        &args.secret,
        trust,
        &args.state_dir,
    )?;
    let mut client = Client::connect(config).await?;
    println!(
        "eagate bot for {} → {} (journal in {})",
        args.device_id,
        args.server,
        args.state_dir.display()
    );
    let mut tickets = now_ms();
    loop {
        let event = tokio::select! {
            event = client.next_event() => event,
            _ = tokio::signal::ctrl_c() => {
                println!("stopping; unconfirmed reports stay in the journal for next time");
                client.close().await;
                return Ok(());
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Connected { .. } => println!("connected"),
            Event::Signal(signal) => {
                println!("signal   {}", describe(&signal));
                tickets += 1;
                trade_on_paper(&client, &signal, tickets, args.paper_price).await?;
            }
            Event::ReportsConfirmed { up_to_seq } => {
                println!("gateway stored reports up to #{up_to_seq}");
            }
            Event::ClockCorrected { offset_ms } => {
                println!("this machine's clock is {offset_ms} ms behind the gateway; corrected");
            }
            Event::ReportsRenumbered {
                from_seq,
                to_seq,
                count,
            } => {
                println!(
                    "another installation of this device used report numbers from #{from_seq}: \
                     {count} report(s) resent as #{to_seq} on"
                );
            }
            Event::Disconnected { reason, retry_in } => {
                println!("disconnected ({reason}); retrying in {retry_in:.1?}");
            }
            Event::Stopped(reason) => {
                eprintln!("stopped: {reason}");
                std::process::exit(1);
            }
        }
    }
    if let ClientState::Stopped(reason) = client.state() {
        eprintln!("stopped: {reason}");
    }
    Ok(())
}

/// Fills opening and closing signals at their price (or the paper price),
/// rejects expired ones, and acknowledges the rest.
async fn trade_on_paper(
    client: &Client,
    signal: &Signal,
    ticket: u64,
    paper_price: Decimal,
) -> Result<(), eagate_sdk::ReportError> {
    if signal.expires_at_ms.is_some_and(|at| at <= now_ms()) {
        let seq = client
            .rejected(
                signal.signal_id,
                Rejection {
                    code: 0,
                    text: RejectionText::lossy("expired before it could be placed"),
                },
            )
            .await?;
        println!("  rejected: expired (report #{seq})");
        return Ok(());
    }
    match signal.action {
        Action::OpenBuy | Action::OpenSell | Action::Close => {
            let fill = Fill {
                ticket,
                price: signal.price.unwrap_or(paper_price),
                volume: signal.volume,
            };
            let seq = client.filled(signal.signal_id, fill).await?;
            println!(
                "  filled on paper: ticket {ticket}, {} @ {} (report #{seq}, in the journal)",
                fill.volume, fill.price
            );
        }
        Action::Modify | Action::Cancel => {
            let seq = client.received(signal.signal_id).await?;
            println!("  noted (report #{seq})");
        }
    }
    Ok(())
}

fn describe(signal: &Signal) -> String {
    let action = match signal.action {
        Action::OpenBuy => "buy",
        Action::OpenSell => "sell",
        Action::Close => "close",
        Action::Modify => "modify",
        Action::Cancel => "cancel",
    };
    let how = match (signal.order_type, signal.price) {
        (OrderType::Market, _) | (_, None) => "at market".to_owned(),
        (OrderType::Limit, Some(price)) => format!("limit {price}"),
        (OrderType::Stop, Some(price)) => format!("stop {price}"),
    };
    let mut text = format!(
        "{}#{} {action} {} {} {how}",
        signal.channel, signal.position, signal.volume, signal.symbol
    );
    if let Some(sl) = signal.stop_loss {
        text.push_str(&format!(" SL {sl}"));
    }
    if let Some(tp) = signal.take_profit {
        text.push_str(&format!(" TP {tp}"));
    }
    text.push_str(&format!(" [{}]", signal.signal_id));
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
