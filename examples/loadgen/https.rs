//! Devices that long-poll over HTTPS (`DEVICE-HTTP.md`), as the pure-MQL
//! client does, beside the QUIC devices of a `fanout` run
//! (`--https-pollers`): each opens a session, polls for the run's channel
//! with `--https-wait`, and reports "received" for what it gets, every
//! request signed and every answer's signature checked. What they measure:
//! publication → receipt latency over HTTPS, gaps and repeats, and, by
//! comparison with a run without them, what they cost the QUIC devices.
//!
//! Each poller keeps one connection (HTTP/1.1 keep-alive), as `WebRequest`
//! does, and opens another only when it is closed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eagate_protocol::http_signing::{
    AnswerToSign, RequestToSign, body_sha256, lower_hex, parse_lower_hex,
};
use eagate_protocol::{DeviceId, DeviceSecret};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::live::{histogram, unix_micros};

/// Where the pollers reach the gateway.
#[derive(Clone)]
pub(crate) struct HttpsLink {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl HttpsLink {
    /// The device HTTPS listener at `addr`, trusted by the certificate in
    /// `ca` (the gateway's `tls/cert.pem` for its self-signed identity).
    pub(crate) fn new(addr: SocketAddr, ca: &Path) -> anyhow::Result<Self> {
        let cert = CertificateDer::from_pem_file(ca)
            .with_context(|| format!("reading {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// What one poller saw.
pub(crate) struct PollerStats {
    pub(crate) latency: Histogram<u64>,
    pub(crate) signals: u64,
    pub(crate) gaps: u64,
    pub(crate) repeats: u64,
    pub(crate) requests: u64,
    pub(crate) failure: Option<String>,
}

/// One device's keep-alive connection and its requests.
struct Poller {
    link: HttpsLink,
    id: DeviceId,
    secret: DeviceSecret,
    connection: Option<TlsStream<TcpStream>>,
    requests: u64,
}

impl Poller {
    async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.link.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(self
            .link
            .connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?)
    }

    /// One signed request; its status and body, the answer's signature
    /// checked.
    async fn call(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("{e}"))?;
        let body_hash = body_sha256(body);
        let timestamp_ms = unix_micros() / 1_000;
        let signature: [u8; 64] = lower_hex(
            &RequestToSign {
                method,
                target,
                device_id: self.id.as_str(),
                timestamp_ms,
                nonce: &nonce,
                body_sha256: &body_hash,
            }
            .signature(&self.secret),
        );
        let nonce_hex: [u8; 32] = lower_hex(&nonce);
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\
             Eagate-Device: {}\r\nEagate-Timestamp: {timestamp_ms}\r\nEagate-Nonce: {}\r\nEagate-Signature: {}\r\n\r\n",
            body.len(),
            self.id,
            std::str::from_utf8(&nonce_hex)?,
            std::str::from_utf8(&signature)?,
        );
        for attempt in 0..2 {
            let mut connection = match self.connection.take() {
                Some(connection) => connection,
                None => self.connect().await?,
            };
            let answered = async {
                connection.write_all(head.as_bytes()).await?;
                connection.write_all(body).await?;
                connection.flush().await?;
                read_answer(&mut connection).await
            }
            .await;
            match answered {
                Ok((status, answer, keep)) => {
                    self.requests += 1;
                    if keep {
                        self.connection = Some(connection);
                    }
                    let signature = answer
                        .1
                        .and_then(|s| parse_lower_hex::<32>(&s))
                        .context("an answer without a signature")?;
                    let signed = AnswerToSign {
                        nonce: &nonce,
                        status,
                        body_sha256: &body_sha256(&answer.0),
                    };
                    if !signed.verify(&self.secret, &signature) {
                        bail!("an answer ({status}) not signed for its request");
                    }
                    return Ok((status, answer.0));
                }
                // A kept connection the gateway closed meanwhile: once more
                // on a new one.
                Err(_) if attempt == 0 => {}
                Err(e) => return Err(e),
            }
        }
        bail!("no answer")
    }
}

/// Reads one answer: status, (body, signature header), and whether the
/// connection may be kept.
async fn read_answer(
    connection: &mut TlsStream<TcpStream>,
) -> anyhow::Result<(u16, (Vec<u8>, Option<String>), bool)> {
    let mut raw = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break split;
        }
        let n = connection.read(&mut chunk).await?;
        if n == 0 {
            bail!("the connection closed");
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&raw[..split])?.to_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    let (mut length, mut signature, mut keep) = (0usize, None, true);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse()?,
            "eagate-signature" => signature = Some(value.to_owned()),
            "connection" if value.eq_ignore_ascii_case("close") => keep = false,
            _ => {}
        }
    }
    let mut body = raw[split + 4..].to_vec();
    while body.len() < length {
        let n = connection.read(&mut chunk).await?;
        if n == 0 {
            bail!("the connection closed mid-body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((status, (body, signature), keep))
}

/// The pollers of a run: started before it, finished after it.
pub(crate) struct Pollers {
    /// How many signals the run published, once it knows.
    expected: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<PollerStats>>,
    /// The pollers run on a thread of their own, as they would on machines
    /// of their own: the harness's QUIC devices, whose latency is measured
    /// beside them, do not wait in the pollers' run queue behind thousands
    /// of TLS requests. (The two still share this machine's cores.)
    /// Taken, and shut down without waiting, when they are dropped: a
    /// runtime may not be dropped where async code runs.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Pollers {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Pollers {
    /// Starts one poller per device, each polling `channel` with `wait`;
    /// returns once every one has opened its session (or failed to), so
    /// none misses a signal published from then on.
    pub(crate) async fn start(
        link: &HttpsLink,
        devices: Vec<(DeviceId, DeviceSecret)>,
        channel: &str,
        wait: u64,
    ) -> anyhow::Result<Self> {
        // One thread: the pollers take at most one of the machine's cores,
        // as a client machine of their own would take none of the gateway's.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("https-pollers")
            .enable_all()
            .build()?;
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let (opened, mut openings) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<_> = devices
            .into_iter()
            .map(|(id, secret)| {
                let poller = Poller {
                    link: link.clone(),
                    id,
                    secret,
                    connection: None,
                    requests: 0,
                };
                runtime.spawn(run(
                    poller,
                    channel.to_owned(),
                    wait,
                    expected.clone(),
                    opened.clone(),
                ))
            })
            .collect();
        drop(opened);
        let mut count = 0;
        while count < tasks.len() && openings.recv().await.is_some() {
            count += 1;
        }
        Ok(Self {
            expected,
            tasks,
            runtime: Some(runtime),
        })
    }

    /// The run published `published` signals: each poller ends once it has
    /// them all, or at `deadline`. What they saw.
    pub(crate) async fn finish(mut self, published: u64, within: Duration) -> Vec<PollerStats> {
        self.expected.store(published, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + within;
        let mut stats = Vec::new();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(seen)) => stats.push(seen),
                Ok(Err(e)) => stats.push(failed(format!("poller task: {e}"))),
                Err(_) => {
                    abort.abort();
                    stats.push(failed("did not get every signal in time".into()));
                }
            }
        }
        stats
    }
}

impl PollerStats {
    fn new() -> Self {
        Self {
            latency: histogram(),
            signals: 0,
            gaps: 0,
            repeats: 0,
            requests: 0,
            failure: None,
        }
    }
}

fn failed(why: String) -> PollerStats {
    PollerStats {
        failure: Some(why),
        ..PollerStats::new()
    }
}

async fn run(
    mut poller: Poller,
    channel: String,
    wait: u64,
    expected: Arc<AtomicU64>,
    opened: tokio::sync::mpsc::UnboundedSender<()>,
) -> PollerStats {
    let mut stats = PollerStats::new();
    let polled = polling(&mut poller, &channel, wait, &expected, &mut stats, opened).await;
    if let Err(e) = polled {
        stats.failure = Some(format!("{e:#}"));
    }
    stats.requests = poller.requests;
    stats
}

async fn polling(
    poller: &mut Poller,
    channel: &str,
    wait: u64,
    expected: &AtomicU64,
    stats: &mut PollerStats,
    opened: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<()> {
    // Counted as opened whatever happens, so the run never waits for it.
    let opening = poller.call("POST", "/v1/device/session", b"").await;
    let _ = opened.send(());
    let (status, answer) = opening?;
    if status != 200 {
        bail!(
            "opening a session: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let state: serde_json::Value = serde_json::from_slice(&answer)?;
    let session = state["session"].as_str().context("a session")?.to_owned();
    // From the channel's head now: the run's signals come after it.
    let mut position = state["heads"][channel].as_u64().unwrap_or(0);
    let mut seq = 0u64;
    let started = Instant::now();
    while stats.signals < expected.load(Ordering::Relaxed) {
        let target =
            format!("/v1/device/signals?session={session}&after={channel}:{position}&wait={wait}");
        let (status, answer) = poller.call("GET", &target, b"").await?;
        if status != 200 {
            bail!("polling: {status} {}", String::from_utf8_lossy(&answer));
        }
        let received_at = unix_micros();
        let polled: serde_json::Value = serde_json::from_slice(&answer)?;
        let mut reports = Vec::new();
        for signal in polled["signals"].as_array().context("signals")? {
            let at = signal["position"].as_u64().context("a position")?;
            if at <= position {
                stats.repeats += 1;
                continue;
            }
            stats.gaps += at - position - 1;
            position = at;
            stats.signals += 1;
            if let Some(sent) = signal["comment"]
                .as_str()
                .and_then(|c| c.strip_prefix('t'))
                .and_then(|t| t.parse::<u64>().ok())
            {
                let _ = stats
                    .latency
                    .record(received_at.saturating_sub(sent).max(1));
            }
            seq += 1;
            reports.push(serde_json::json!({
                "seq": seq, "signal_id": signal["signal_id"], "kind": "received", "at_ms": received_at / 1_000
            }));
        }
        if !reports.is_empty() {
            let body = serde_json::to_vec(&serde_json::json!({ "reports": reports }))?;
            let (status, answer) = poller
                .call(
                    "POST",
                    &format!("/v1/device/reports?session={session}"),
                    &body,
                )
                .await?;
            if status != 200 {
                bail!("reporting: {status} {}", String::from_utf8_lossy(&answer));
            }
        }
        if started.elapsed() > Duration::from_secs(3_600) {
            bail!("polled for an hour");
        }
    }
    Ok(())
}

/// The pollers' figures, on standard error (beside the run's table).
pub(crate) fn print_summary(seen: &[PollerStats], published: u64) {
    let mut latency = histogram();
    let (mut signals, mut gaps, mut repeats, mut requests, mut failed) = (0, 0, 0, 0, 0);
    for poller in seen {
        let _ = latency.add(&poller.latency);
        signals += poller.signals;
        gaps += poller.gaps;
        repeats += poller.repeats;
        requests += poller.requests;
        if let Some(why) = &poller.failure {
            if failed == 0 {
                eprintln!("an HTTPS poller failed: {why}");
            }
            failed += 1;
        }
    }
    // µs as milliseconds with one decimal, in integers.
    let as_ms = |us: u64| format!("{}.{}", us / 1_000, us % 1_000 / 100);
    let ms = |q: f64| as_ms(latency.value_at_quantile(q));
    eprintln!(
        "HTTPS pollers: {} · signals {signals} of {} · gaps {gaps} · repeats {repeats} · failed {failed} · requests {requests}",
        seen.len(),
        published * seen.len() as u64,
    );
    eprintln!(
        "HTTPS publication → receipt: p50 {} ms · p90 {} ms · p99 {} ms · max {} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        as_ms(latency.max())
    );
}
