//! Real `eagate serve` processes and real bot processes, as an operator and
//! a bot author run them, for the end-to-end tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A binary of this workspace, built by the same `cargo test` or `cargo
/// nextest` run that built the test (they share the target directory).
///
/// # Panics
///
/// When it is not built: run the suite with `scripts/test.sh`, or build
/// the workspace first (`cargo build --workspace --all-targets`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    for candidate in [
        profile_dir.join(name),
        profile_dir.join("examples").join(name),
    ] {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not built next to this test in {}: run scripts/test.sh, or \
         `cargo build --workspace --all-targets` first",
        profile_dir.display()
    );
}

/// Kills a child process when dropped, so no orphan outlives a failed test.
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a child process prints, read by a thread so a test can wait for
/// one with a deadline.
#[derive(Debug)]
pub struct Lines {
    receiver: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            receiver,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a line starting with `prefix` and returns
    /// it; lines before it are kept in [`Lines::seen`].
    ///
    /// # Panics
    ///
    /// When none comes in time, with everything printed so far.
    pub fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {within:?}; printed so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line printed so far, waiting `settle` for stragglers.
    pub fn drain(&mut self, settle: Duration) -> &[String] {
        while let Ok(line) = self.receiver.recv_timeout(settle) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

/// A running `eagate serve` with its admin token.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Reaped>,
    /// The QUIC address devices connect to.
    pub quic: String,
    /// The admin API's base URL.
    pub api: String,
    /// The TLS fingerprint it printed.
    pub fingerprint: String,
    /// The device HTTPS listener's address, when it serves one
    /// (`--device-https-listen`).
    pub device_https: Option<String>,
    data_dir: PathBuf,
    extra: Vec<String>,
    token: String,
    registered: std::cell::Cell<u32>,
}

impl Gateway {
    /// Starts `eagate serve` on system-chosen loopback ports with `extra`
    /// arguments (a Redis URL, say), and creates an admin token.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// [`Gateway::start`] with devices served on `quic` (an address of a
    /// test network, say); the admin API stays on loopback.
    pub fn start_on(data_dir: &Path, quic: &str, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut gateway = Self::spawn(data_dir, quic, extra);
        let token = gateway.eagate_ok(&[
            "token",
            "create",
            "--scope",
            "admin",
            "--data-dir",
            data_dir.to_str().expect("a UTF-8 path"),
        ]);
        gateway.token = token.trim().to_owned();
        gateway
    }

    fn spawn(data_dir: &Path, quic: &str, extra: Vec<String>) -> Self {
        let mut command = Command::new(workspace_binary("eagate"));
        command
            .args([
                "serve",
                "--quic-listen",
                quic,
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(&extra)
            .env("EAGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("eagate starts");
        let mut lines = Lines::new(child.stdout.take().expect("piped"));
        let child = Reaped(child);
        lines.expect("Ctrl-C stops it.", Duration::from_secs(30));
        let field = |prefix: &str| {
            lines
                .seen()
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
                .unwrap_or_else(|| panic!("no {prefix:?} in {:#?}", lines.seen()))
        };
        let quic = field("QUIC (devices):   ")
            .split_whitespace()
            .next()
            .expect("an address")
            .to_owned();
        let api = field("HTTP (admin API): ");
        let fingerprint = field("TLS fingerprint:  SHA256 ");
        let device_https = lines.seen().iter().find_map(|l| {
            l.trim()
                .strip_prefix("HTTPS (devices):  https://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        });
        Self {
            child: Some(child),
            quic,
            api,
            fingerprint,
            device_https,
            data_dir: data_dir.to_owned(),
            extra,
            token: String::new(),
            registered: std::cell::Cell::new(0),
        }
    }

    /// Kills the gateway with SIGKILL: no goodbye, no flush.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Starts the gateway again on the same data, QUIC address and
    /// arguments, after [`Gateway::kill`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the gateway first");
        let mut again = Self::spawn(&self.data_dir, &self.quic.clone(), self.extra.clone());
        assert_eq!(again.fingerprint, self.fingerprint, "the identity is kept");
        self.child = again.child.take();
        self.api = again.api.clone();
        self.device_https = again.device_https.clone();
    }

    /// Runs the `eagate` CLI against this gateway and returns its stdout.
    ///
    /// # Panics
    ///
    /// When it fails, with its stderr.
    pub fn eagate_ok(&self, args: &[&str]) -> String {
        let output = Command::new(workspace_binary("eagate"))
            .args(args)
            .env("EAGATE_API_URL", &self.api)
            .env("EAGATE_TOKEN", &self.token)
            .output()
            .expect("eagate runs");
        assert!(
            output.status.success(),
            "eagate {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// The admin token made at start.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// Registers a device subscribed to `channel`; its id and secret.
    pub fn register(&self, channel: &str) -> (String, String) {
        // Names are unique per account.
        self.registered.set(self.registered.get() + 1);
        let name = format!("bot {}", self.registered.get());
        let out = self.eagate_ok(&[
            "device",
            "register",
            "--account",
            "acct-e2e",
            "--name",
            &name,
        ]);
        let field = |prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
                .trim()
                .to_owned()
        };
        let (device_id, secret) = (field("device id: "), field("secret:"));
        self.eagate_ok(&["device", "subscribe", &device_id, channel]);
        (device_id, secret)
    }

    /// Publishes a market buy to `channel`; the signal's id.
    pub fn publish(&self, channel: &str) -> String {
        let out = self.eagate_ok(&[
            "signal",
            "publish",
            "--channel",
            channel,
            "--symbol",
            "XAUUSD",
            "--action",
            "open-buy",
            "--volume",
            "0.10",
        ]);
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no signal id in {out}"))
            .to_owned()
    }

    /// Revokes a device.
    pub fn revoke(&self, device_id: &str) {
        self.eagate_ok(&["device", "revoke", device_id]);
    }

    /// `GET /v1/signals/{id}/executions`: every device's reports on it.
    pub fn executions(&self, signal_id: &str) -> serde_json::Value {
        let url = format!("{}/v1/signals/{signal_id}/executions", self.api);
        let body = ureq::get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .body_mut()
            .read_to_string()
            .expect("a body");
        serde_json::from_str(&body).expect("JSON")
    }

    /// `GET /readyz`: its status code, and how long the answer took.
    ///
    /// # Panics
    ///
    /// When the gateway gives no answer within 30 s.
    pub fn readiness(&self) -> (u16, Duration) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let asked = std::time::Instant::now();
        let status = agent
            .get(&format!("{}/readyz", self.api))
            .call()
            .unwrap_or_else(|e| panic!("GET /readyz: {e}"))
            .status()
            .as_u16();
        (status, asked.elapsed())
    }

    /// Asserts that the device's fills of `signals`, reported in that order
    /// as its reports 1, 2, 3, …, are each stored once, under its number.
    ///
    /// # Panics
    ///
    /// When one is missing, stored twice or under another number.
    pub fn assert_each_filled_once_in_order(&self, signals: &[String], device_id: &str) {
        for (n, id) in signals.iter().enumerate() {
            assert_eq!(
                self.stored_reports(id, device_id),
                vec![(n as u64 + 1, "filled".to_owned())],
                "signal {id}: its fill, stored once"
            );
        }
    }

    /// The reports of `device_id` on `signal_id` stored by the gateway, as
    /// the executions query shows them.
    pub fn stored(&self, signal_id: &str, device_id: &str) -> Vec<serde_json::Value> {
        let executions = self.executions(signal_id);
        executions["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .filter(|d| d["device_id"] == device_id)
            .flat_map(|d| d["reports"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The reports of `device_id` on `signal_id` stored by the gateway, as
    /// (seq, kind) pairs.
    pub fn stored_reports(&self, signal_id: &str, device_id: &str) -> Vec<(u64, String)> {
        self.stored(signal_id, device_id)
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64().expect("seq"),
                    r["kind"].as_str().expect("kind").to_owned(),
                )
            })
            .collect()
    }
}

/// A running `test-bot` (the SDK client driven over stdin and stdout).
#[derive(Debug)]
pub struct Bot {
    child: Option<Reaped>,
    stdin: Option<ChildStdin>,
    /// What it printed.
    pub lines: Lines,
}

impl Bot {
    /// Starts the test bot `binary` (`env!("CARGO_BIN_EXE_test-bot")`) for
    /// a device, with its journal in `state_dir`.
    pub fn start(
        binary: &Path,
        server: &str,
        fingerprint: &str,
        device: &(String, String),
        state_dir: &Path,
    ) -> Self {
        Self::start_with(binary, server, fingerprint, device, state_dir, &[])
    }

    /// [`Bot::start`] with extra environment (`EAGATE_TEST_BOT_STEP=1`: take
    /// the next event only on a `next` command, as a bot busy with a signal).
    pub fn start_with(
        binary: &Path,
        server: &str,
        fingerprint: &str,
        device: &(String, String),
        state_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(binary);
        command
            .envs(env.iter().copied())
            .arg(server)
            .arg(&device.0)
            .arg(fingerprint)
            .arg(state_dir)
            .env("EAGATE_SECRET", &device.1);
        Self::spawn(command)
    }

    /// Runs any bot command, with piped stdin and stdout.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the bot starts");
        let lines = Lines::new(child.stdout.take().expect("piped"));
        let stdin = child.stdin.take();
        Self {
            child: Some(Reaped(child)),
            stdin,
            lines,
        }
    }

    /// Sends one command line.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("the bot runs");
        writeln!(stdin, "{command}").expect("the bot reads its commands");
        stdin.flush().expect("flushed");
    }

    /// Kills the bot with SIGKILL: no close, no flush.
    pub fn kill(&mut self) {
        self.stdin = None;
        drop(self.child.take());
    }

    /// Waits for the bot to exit by itself within `within`; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = &mut self.child.as_mut().expect("the bot runs").0;
        loop {
            if let Some(status) = child.try_wait().expect("waitable") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the bot did not exit within {within:?}; it printed {:#?}",
                self.lines.seen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
