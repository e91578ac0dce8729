//! eagate-loadgen: simulates many devices against a running gateway (or an
//! MQTT broker, for the peer baseline), on loopback, for a bounded time, and
//! says what it sustained.
//!
//! Against eagate it registers its devices through the sidecar (and revokes
//! them afterwards, unless `--keep`), and connects them over QUIC, each the
//! SDK's session core without a journal, so the harness costs little. Then
//! it runs a scenario:
//!
//! - `connect`: sessions per second, time until all are connected, the
//!   gateway's memory per connected device (`--gateway-pid`);
//! - `fanout`: signals published at `--rate` per second to every device,
//!   each answering with a report: deliveries per second, publication →
//!   receipt latency percentiles, every device checked for gaps, repeats and
//!   order, and the reports stored counted against those sent;
//! - `ingest`: every device keeps `--window` reports in flight: confirmed
//!   reports per second, confirmation latency, stored count against sent;
//! - `mixed`: `fanout` and `ingest` at once, for a soak;
//! - `halfopen`: with the devices connected, `--connections` more that
//!   complete the QUIC handshake and never authenticate: the gateway's
//!   memory per such connection (`--server-pid`), how many it refused and
//!   when it closed the rest, and the devices still connected afterwards.
//!
//! With `--https-pollers N`, a `fanout` run also has N devices long-polling
//! over HTTPS (the pure-MQL client's way, `--https`, `--https-ca`): their
//! publication → receipt latency is reported beside the QUIC devices'.
//!
//! With `--sdk-client` each device is instead the SDK's whole client, as a
//! bot runs it (journal and all), and the harness's own CPU per message is
//! what the SDK costs a bot; against an MQTT broker the same figure is an
//! MQTT client library's.
//!
//! At the end every device stops making reports of its own and waits until
//! all it sent is confirmed (the drain), so that the stored count can be
//! compared with the sent count exactly.
//!
//! ```text
//! cargo run --release --example eagate-loadgen -- --help
//! ```

mod bot;
mod device;
mod halfopen;
mod https;
mod live;
mod mqtt;
mod platform;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use eagate_protocol::{DeviceId, DeviceSecret, SignalId};
use eagate_sdk::ServerTrust;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use device::{DeviceStats, Link, Mode, Turn};
use live::{Live, Phase};
use platform::Platform;
use report::{Outcome, Stored};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    Connect,
    Fanout,
    Ingest,
    Mixed,
    Halfopen,
}

/// Simulates devices against a running eagate gateway, or MQTT clients
/// against a broker, and reports what it sustained.
#[derive(Debug, Parser)]
#[command(name = "eagate-loadgen", version)]
pub(crate) struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// What to measure it on: `eagate` (the gateway at --quic and --api), or
    /// an MQTT broker, `mqtts://host:port` (TLS) or `mqtt://host:port`.
    #[arg(long, default_value = "eagate")]
    target: String,
    /// How many devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// How long the measured part runs, in seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// fanout, mixed: signals per second (0: as fast as they are taken).
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// fanout, mixed: publishers at once when the rate is 0.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// ingest, mixed: reports each device keeps in flight.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// ingest, mixed (eagate): instead of keeping the window full, each
    /// device sends one report every this many milliseconds: a steady load
    /// for a soak (0: flat out).
    #[arg(long, default_value_t = 0)]
    report_every_ms: u64,
    /// halfopen: how many silent connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// halfopen: how long to wait for the gateway to close them, in
    /// seconds.
    #[arg(long, default_value_t = 90)]
    halfopen_wait: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// UDP sockets the simulated devices share (eagate).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// How long the drain at the end may take, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// The gateway's QUIC address.
    #[arg(long, env = "EAGATE_QUIC", default_value = "127.0.0.1:7443")]
    quic: SocketAddr,
    /// The sidecar's base URL.
    #[arg(long, env = "EAGATE_API_URL", default_value = "http://127.0.0.1:7080")]
    api: String,
    /// An admin token (`eagate token create --scope admin`).
    #[arg(long, env = "EAGATE_TOKEN")]
    token: Option<String>,
    /// The gateway certificate's fingerprint, as `eagate serve` prints it.
    #[arg(long, env = "EAGATE_FINGERPRINT")]
    fingerprint: Option<String>,
    /// mqtts: the CA certificate (PEM) the broker's certificate is checked
    /// against.
    #[arg(long)]
    mqtt_ca: Option<std::path::PathBuf>,
    /// The server's process id, to read its memory and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// eagate, `connect` and `fanout`: each device is the SDK's whole
    /// client as a bot runs it (a journal `fsync`ing every report, its own
    /// QUIC endpoint), not the bare session core: the harness's CPU per
    /// message is then what the SDK costs a bot.
    #[arg(long)]
    sdk_client: bool,
    /// The channel (eagate) or topic prefix (MQTT) the devices follow.
    #[arg(long, default_value = "loadgen")]
    channel: String,
    /// fanout: devices long-polling over HTTPS beside the QUIC ones.
    #[arg(long, default_value_t = 0)]
    https_pollers: usize,
    /// The gateway's device HTTPS listener (`--device-https-listen`).
    #[arg(long, default_value = "127.0.0.1:7444")]
    https: SocketAddr,
    /// The certificate the HTTPS listener is trusted by (the gateway's
    /// `tls/cert.pem` in its data directory, for a self-signed identity).
    #[arg(long, default_value = "eagate-data/tls/cert.pem")]
    https_ca: std::path::PathBuf,
    /// How long each HTTPS poll may wait, in seconds.
    #[arg(long, default_value_t = 10)]
    https_wait: u64,
    /// The channel the HTTPS pollers follow: the QUIC devices' own by
    /// default; another one to measure pollers that wait and receive
    /// nothing, beside the QUIC devices' traffic.
    #[arg(long)]
    https_channel: Option<String>,
    /// Keep the devices registered afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write throughput over time and the latency percentiles as an SVG.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        if args.target == "eagate" {
            run_eagate(&args).await
        } else {
            mqtt::run(&args).await
        }
    })?;
    if let Some(path) = &args.plot {
        report::plot(&outcome, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.summary())?);
    } else {
        outcome.print_table();
    }
    Ok(())
}

async fn run_eagate(args: &Args) -> anyhow::Result<Outcome> {
    // Settings are checked before anything is registered.
    let (Some(token), Some(fingerprint)) = (&args.token, &args.fingerprint) else {
        bail!("--token and --fingerprint are needed against eagate");
    };
    let trust = ServerTrust::Pinned(
        fingerprint
            .parse()
            .map_err(|e| anyhow::anyhow!("--fingerprint: {e}"))?,
    );
    let client = eagate_sdk::quic_client_config(&trust)?;
    let platform = Platform::new(&args.api, token);
    let account = format!("loadgen-{}", live::unix_micros());
    eprintln!("registering {} devices…", args.devices);
    let devices = provision(&platform, &account, args.devices, &args.channel).await?;
    let pollers = if args.https_pollers > 0 {
        if args.scenario != Scenario::Fanout {
            bail!("--https-pollers runs with the fanout scenario");
        }
        eprintln!("registering {} HTTPS pollers…", args.https_pollers);
        provision(
            &platform,
            &format!("{account}-https"),
            args.https_pollers,
            args.https_channel.as_deref().unwrap_or(&args.channel),
        )
        .await?
    } else {
        Vec::new()
    };
    let outcome = measure((client, &trust), &platform, &devices, &pollers, args).await;
    if !args.keep {
        eprintln!("revoking the devices…");
        let ids: Vec<String> = devices
            .iter()
            .chain(&pollers)
            .map(|(id, _)| id.to_string())
            .collect();
        on_threads(&platform, ids, 16, |platform, id| platform.revoke(&id)).await?;
    }
    outcome
}

/// Runs `work` on every item, `threads` at a time (the sidecar client is
/// blocking).
pub(crate) async fn on_threads<C, T, R>(
    context: &C,
    items: Vec<T>,
    threads: usize,
    work: fn(&C, T) -> anyhow::Result<R>,
) -> anyhow::Result<Vec<R>>
where
    C: Clone + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    let mut items = items.into_iter();
    let mut tasks = Vec::new();
    loop {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let context = context.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|item| work(&context, item))
                .collect::<anyhow::Result<Vec<R>>>()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await??);
    }
    Ok(results)
}

async fn provision(
    platform: &Platform,
    account: &str,
    count: usize,
    channel: &str,
) -> anyhow::Result<Vec<(DeviceId, DeviceSecret)>> {
    let names: Vec<(String, String, String)> = (0..count)
        .map(|i| (account.to_owned(), format!("sim {i}"), channel.to_owned()))
        .collect();
    let registered = on_threads(platform, names, 16, |platform, (account, name, channel)| {
        let (id, secret) = platform.register(&account, &name)?;
        platform.subscribe(&id, &channel)?;
        Ok((id, secret))
    })
    .await?;
    registered
        .into_iter()
        .map(|(id, secret)| {
            Ok((
                DeviceId::new(&id).map_err(|e| anyhow::anyhow!("{e}"))?,
                DeviceSecret::parse(&secret).map_err(|e| anyhow::anyhow!("{e}"))?,
            ))
        })
        .collect()
}

/// A progress line on standard error, redrawn four times a second until
/// the returned sender is dropped or sent to.
pub(crate) fn progress(live: Arc<Live>, devices: usize) -> tokio::sync::oneshot::Sender<()> {
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template"),
    );
    tokio::spawn(async move {
        let mut last = live.totals();
        let mut last_at = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = &mut finished => break,
                _ = tick.tick() => {}
            }
            let now = live.totals();
            let millis = (last_at.elapsed().as_millis() as u64).max(1);
            bar.set_message(format!(
                "connected {}/{devices} · failed {} · delivered {}/s · confirmed {}/s",
                now.connected,
                now.failed,
                (now.delivered - last.delivered) * 1_000 / millis,
                (now.confirmed - last.confirmed) * 1_000 / millis,
            ));
            bar.tick();
            last = now;
            last_at = Instant::now();
        }
        bar.finish_and_clear();
    });
    done
}

/// The server process's resident memory (KiB) and CPU time so far (ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUsage {
    pub(crate) rss_kib: u64,
    pub(crate) cpu_ms: u64,
}

impl ServerUsage {
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // utime and stime, fields 14 and 15, after the parenthesised name,
        // in clock ticks of USER_HZ.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss_kib,
            cpu_ms: ticks * 1_000 / USER_HZ,
        })
    }
}

/// Clock ticks per second in /proc's CPU times: fixed at 100 for user space
/// on Linux whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

async fn measure(
    (client, trust): (quinn::ClientConfig, &ServerTrust),
    platform: &Platform,
    devices: &[(DeviceId, DeviceSecret)],
    pollers: &[(DeviceId, DeviceSecret)],
    args: &Args,
) -> anyhow::Result<Outcome> {
    let pollers = if pollers.is_empty() {
        None
    } else {
        let link = https::HttpsLink::new(args.https, &args.https_ca)?;
        eprintln!("opening {} HTTPS sessions…", pollers.len());
        let channel = args.https_channel.as_deref().unwrap_or(&args.channel);
        Some(https::Pollers::start(&link, pollers.to_vec(), channel, args.https_wait).await?)
    };
    let endpoints: Vec<quinn::Endpoint> = (0..args.sockets.max(1))
        .map(|_| client_endpoint())
        .collect::<Result<_, _>>()?;
    // ingest reports about a signal of the devices' channel, published
    // before they connect (so they receive it too).
    let flood_target = || -> anyhow::Result<SignalId> {
        let signal = platform.publish(&args.channel, "ingest target")?;
        signal
            .parse::<SignalId>()
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let mode = match args.scenario {
        Scenario::Connect | Scenario::Halfopen => Mode::Idle,
        Scenario::Fanout => Mode::Acknowledge,
        Scenario::Ingest => Mode::Flood {
            signal: flood_target()?,
            window: args.window,
        },
        Scenario::Mixed => Mode::Mixed {
            signal: flood_target()?,
            window: args.window,
        },
    };
    let pace = (args.report_every_ms > 0).then(|| Duration::from_millis(args.report_every_ms));
    let signals_before = u64::from(matches!(mode, Mode::Mixed { .. }));
    let half_open = std::sync::Mutex::new(None);
    let measured_part = async {
        match args.scenario {
            Scenario::Connect | Scenario::Ingest => {
                tokio::time::sleep(Duration::from_secs(args.duration)).await;
                Ok(0)
            }
            Scenario::Fanout | Scenario::Mixed => publish(platform, args).await,
            Scenario::Halfopen => {
                let Some(pid) = args.server_pid else {
                    bail!("halfopen measures the gateway's memory: give --server-pid");
                };
                let figures = halfopen::flood(
                    &endpoints,
                    &client,
                    args.quic,
                    (args.connections, args.concurrency),
                    pid,
                    Duration::from_secs(args.halfopen_wait),
                )
                .await?;
                *half_open.lock().expect("not poisoned") = Some(figures);
                Ok(0)
            }
        }
    };
    let ran = if args.sdk_client {
        if mode.flood().is_some() {
            bail!("--sdk-client runs the connect and fanout scenarios only");
        }
        // The bots' journals, removed afterwards.
        let state = std::env::temp_dir().join(format!("eagate-loadgen-{}", std::process::id()));
        let link = bot::BotLink {
            server: args.quic.to_string(),
            trust: trust.clone(),
            state_dir: &state,
        };
        let ran = drive(
            args,
            devices.len(),
            signals_before,
            |i, turn, live, phases| {
                bot::run(link.config(devices[i].clone()), mode, turn, live, phases)
            },
            measured_part,
        )
        .await;
        let _ = std::fs::remove_dir_all(&state);
        ran?
    } else {
        drive(
            args,
            devices.len(),
            signals_before,
            |i, turn, live, phases| {
                let link = Link {
                    endpoint: endpoints[i % endpoints.len()].clone(),
                    client: client.clone(),
                    gateway: args.quic,
                };
                device::run(link, devices[i].clone(), mode, pace, turn, live, phases)
            },
            measured_part,
        )
        .await?
    };
    if let Some(pollers) = pollers {
        let published = match &args.https_channel {
            Some(channel) if *channel != args.channel => 0,
            _ => ran.window.published + signals_before,
        };
        let seen = pollers
            .finish(published, Duration::from_secs(args.drain_timeout))
            .await;
        https::print_summary(&seen, published);
    }
    let stored = stored_counts(platform, devices, &ran.stats).await?;
    let half_open = half_open.into_inner().expect("not poisoned");
    Ok(ran.outcome(args, stored).with_half_open(half_open))
}

/// A client endpoint on a loopback UDP socket with big buffers: the
/// harness's own sockets must not be where datagrams are dropped.
fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel grants what net.core.rmem_max allows.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
    let runtime = quinn::default_runtime().context("no runtime")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )?)
}

/// A run's devices and what was seen of it.
pub(crate) struct Ran {
    pub(crate) stats: Vec<DeviceStats>,
    window: report::Window,
    server: report::Server,
    live: Arc<Live>,
}

impl Ran {
    pub(crate) fn outcome(self, args: &Args, stored: Vec<Stored>) -> Outcome {
        Outcome::new(
            args,
            &self.stats,
            self.window,
            self.server,
            stored,
            self.live.timeline(),
        )
    }
}

/// Runs `devices` devices, each the future `device` makes for its index, and
/// the measured part once all have had their turn at connecting; then
/// drains them. The measured part says how many signals it published;
/// `signals_before` were published before the devices connected.
pub(crate) async fn drive<D, F>(
    args: &Args,
    devices: usize,
    signals_before: u64,
    mut device: D,
    measured_part: impl std::future::Future<Output = anyhow::Result<u64>>,
) -> anyhow::Result<Ran>
where
    D: FnMut(usize, Turn, Arc<Live>, watch::Receiver<Phase>) -> F,
    F: std::future::Future<Output = DeviceStats> + Send + 'static,
{
    let usage_before = args.server_pid.and_then(ServerUsage::read);
    let live = Arc::new(Live::new());
    let progress = progress(live.clone(), devices);
    let (phase, phases) = watch::channel(Phase::Run);
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let (turn_over, mut turns) = tokio::sync::mpsc::unbounded_channel::<()>();
    let tasks: Vec<_> = (0..devices)
        .map(|i| {
            let turn = Turn::new(slots.clone(), turn_over.clone());
            tokio::spawn(device(i, turn, live.clone(), phases.clone()))
        })
        .collect();
    drop(turn_over);
    // Wait until every device has had its turn at connecting.
    let mut taken = 0;
    while taken < devices && turns.recv().await.is_some() {
        taken += 1;
    }
    let connecting = started.elapsed();
    let usage_connected = args.server_pid.and_then(ServerUsage::read);
    let harness_connected = ServerUsage::read(std::process::id());
    let measure_from = Instant::now();
    let at_start = live.totals();
    let published = measured_part.await?;
    let measured = measure_from.elapsed();
    let at_end = live.totals();
    let usage_after = args.server_pid.and_then(ServerUsage::read);
    let harness_after = ServerUsage::read(std::process::id());
    // The drain: every device answers what it was sent and waits for its
    // confirmations; those that cannot in time are stopped.
    let drain_from = Instant::now();
    phase.send_replace(Phase::Drain {
        signals: published + signals_before,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain_timeout);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        phase.send_replace(Phase::Stop);
        phase
    });
    let mut stats = Vec::with_capacity(tasks.len());
    for task in tasks {
        stats.push(task.await?);
    }
    stopper.abort();
    let drained_in = drain_from.elapsed();
    let _ = progress.send(());
    Ok(Ran {
        stats,
        window: report::Window {
            connecting,
            measured,
            drained_in,
            at_start,
            at_end,
            published,
        },
        server: report::Server {
            before: usage_before,
            connected: usage_connected,
            after: usage_after,
            harness: (harness_connected, harness_after),
        },
        live,
    })
}

/// What the gateway stored for each device: the highest report sequence
/// with none missing below, beside the highest the device sent.
async fn stored_counts(
    platform: &Platform,
    devices: &[(DeviceId, DeviceSecret)],
    stats: &[DeviceStats],
) -> anyhow::Result<Vec<Stored>> {
    let ids: Vec<(String, u64, u64)> = devices
        .iter()
        .zip(stats)
        .map(|((id, _), s)| (id.to_string(), s.last_seq, s.confirmed_seq))
        .collect();
    on_threads(platform, ids, 16, |platform, (id, sent, confirmed)| {
        Ok(Stored {
            stored: platform.stored_up_to(&id)?,
            sent,
            confirmed,
        })
    })
    .await
}

/// Publishes for `--duration` seconds at `--rate` (0: flat out with
/// `--publishers` at once); how many were published.
async fn publish(platform: &Platform, args: &Args) -> anyhow::Result<u64> {
    let until = Instant::now() + Duration::from_secs(args.duration);
    let publishers = if args.rate == 0 {
        args.publishers.max(1)
    } else {
        1
    };
    let interval = (args.rate > 0).then(|| Duration::from_micros(1_000_000 / args.rate));
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let platform = platform.clone();
        let channel = args.channel.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut count = 0u64;
            let mut next = Instant::now();
            while Instant::now() < until {
                platform.publish(&channel, &format!("t{}", live::unix_micros()))?;
                count += 1;
                if let Some(interval) = interval {
                    next += interval;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            anyhow::Ok(count)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total)
}
