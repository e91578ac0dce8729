//! `eagate` as an operator runs it: real processes, stopped by SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// A running `eagate serve`, killed if the test fails before stopping it,
/// so no orphan outlives the test (and holds CI's output pipe open).
struct Serving(Option<Child>);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(data_dir: &Path) -> (Serving, Vec<String>) {
    start_as("serve", data_dir, &[])
}

/// Starts `eagate <command>` on loopback ports chosen by the system, and
/// reads its readiness lines.
fn start_as(command: &str, data_dir: &Path, env: &[(&str, &str)]) -> (Serving, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eagate"));
    child
        .args([
            command,
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("EAGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        child.env(key, value);
    }
    let mut child = child.spawn().expect("eagate starts");
    let mut lines = Vec::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Serving(Some(child));
    while !lines
        .iter()
        .any(|l: &String| l.starts_with("Ctrl-C stops it."))
    {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "eagate exited early: {lines:?}"
        );
        lines.push(line.trim_end().to_owned());
    }
    (child, lines)
}

fn printed_fingerprint(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("TLS fingerprint:  SHA256 "))
        .expect("a fingerprint line")
        .to_owned()
}

fn stop(mut serving: Serving) {
    let mut child = serving.0.take().expect("running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "eagate exits cleanly on SIGTERM: {status}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "eagate did not stop within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_prints_the_pinned_fingerprint_keeps_it_across_restarts_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = start(dir.path());
    let fingerprint = printed_fingerprint(&lines);
    let cert = CertificateDer::from_pem_file(dir.path().join("tls/cert.pem")).unwrap();
    let expected: Vec<String> = Sha256::digest(&cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(fingerprint, expected.join(":"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("QUIC (devices):   127.0.0.1:"))
    );
    stop(child);

    // The sled lock is released on exit, and the identity is reused.
    let (child, lines) = start(dir.path());
    assert_eq!(printed_fingerprint(&lines), fingerprint);
    stop(child);
}

#[test]
fn config_show_prints_the_effective_settings_with_the_master_key_masked() {
    let output = Command::new(env!("CARGO_BIN_EXE_eagate"))
        .args(["config", "show", "--skew-window-secs", "45"])
        .env("EAGATE_MASTER_KEY", "ab".repeat(32))
        .env("EAGATE_QUIC_LISTEN", "127.0.0.1:9443")
        .output()
        .unwrap();
    assert!(output.status.success());
    let shown = String::from_utf8(output.stdout).unwrap();
    assert!(shown.contains("quic_listen = 127.0.0.1:9443"), "{shown}");
    assert!(shown.contains("skew_window_secs = 45"), "{shown}");
    assert!(shown.contains("master_key = (set, hidden)"), "{shown}");
    assert!(!shown.contains(&"ab".repeat(32)));
}

#[test]
fn a_skew_window_out_of_range_is_refused_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_eagate"))
        .args(["config", "show", "--skew-window-secs", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("skew-window-secs"), "{error}");
}

fn eagate(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eagate"));
    command.args(args).env_remove("EAGATE_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_cli_manages_devices_and_publishes_through_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = start(dir.path());
    let api = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("HTTP (admin API): "))
        .unwrap_or_else(|| panic!("no HTTP address in {lines:?}"))
        .to_owned();
    let data_dir = dir.path().to_str().unwrap();

    // Works while the gateway holds the store.
    let (ok, token, _) = eagate(
        &[
            "token",
            "create",
            "--scope",
            "admin",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    assert!(ok);
    let token = token.trim().to_owned();
    assert!(token.starts_with("eat_"));
    let env = [
        ("EAGATE_API_URL", api.as_str()),
        ("EAGATE_TOKEN", token.as_str()),
    ];

    let (ok, out, err) = eagate(
        &[
            "device",
            "register",
            "--account",
            "acct-1",
            "--name",
            "London VPS",
        ],
        &env,
    );
    assert!(ok, "{err}");
    let device_id = out
        .lines()
        .find_map(|l| l.strip_prefix("device id: "))
        .unwrap()
        .to_owned();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret:    "))
        .unwrap();
    eagate_protocol::DeviceSecret::parse(secret).expect("a valid secret is printed");

    let (ok, _, err) = eagate(&["device", "subscribe", &device_id, "gold"], &env);
    assert!(ok, "{err}");
    let (ok, out, err) = eagate(
        &[
            "signal",
            "publish",
            "--channel",
            "gold",
            "--symbol",
            "XAUUSD",
            "--action",
            "open-buy",
            "--volume",
            "0.10",
            "--stop-loss",
            "2300.00",
        ],
        &env,
    );
    assert!(ok, "{err}");
    assert!(out.contains("at position 1 of gold"), "{out}");

    let (ok, out, _) = eagate(&["device", "list"], &env);
    assert!(ok);
    assert!(out.contains(&device_id) && out.contains("London VPS") && out.contains("gold"));
    assert!(!out.contains(secret));

    // Bad input and a missing device come back as clear errors.
    let (ok, _, err) = eagate(
        &[
            "signal",
            "publish",
            "--channel",
            "gold",
            "--symbol",
            "XAUUSD",
            "--action",
            "open-buy",
            "--volume",
            "0",
        ],
        &env,
    );
    assert!(!ok);
    assert!(
        err.contains("422") && err.contains("volume must be positive"),
        "{err}"
    );
    let (ok, _, err) = eagate(&["device", "revoke", "dv_NOPE"], &env);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    let (ok, out, _) = eagate(&["device", "revoke", &device_id], &env);
    assert!(ok);
    assert!(out.contains("revoked"));

    let (ok, _, err) = eagate(&["device", "list"], &[("EAGATE_API_URL", api.as_str())]);
    assert!(!ok);
    assert!(err.contains("token create"), "{err}");
    stop(child);
}

#[test]
fn settings_come_from_the_file_then_the_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eagate.toml");
    std::fs::write(
        &file,
        "quic_listen = \"127.0.0.1:8443\"\nhttp_listen = \"127.0.0.1:8080\"\nskew_window_secs = 20\nsignal_queue_len = 64\nhostnames = [\"gw.example\", \"localhost\"]\ndevice_https_threads = 6\n",
    )
    .unwrap();
    let (ok, shown, err) = eagate(
        &[
            "config",
            "show",
            "--config",
            file.to_str().unwrap(),
            "--skew-window-secs",
            "45",
        ],
        &[
            ("EAGATE_HTTP_LISTEN", "127.0.0.1:9090"),
            ("EAGATE_SIGNAL_QUEUE_LEN", "128"),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        shown.contains("quic_listen = 127.0.0.1:8443"),
        "file: {shown}"
    );
    assert!(
        shown.contains("hostnames = gw.example,localhost"),
        "file: {shown}"
    );
    assert!(
        shown.contains("http_listen = 127.0.0.1:9090"),
        "env beats file: {shown}"
    );
    assert!(
        shown.contains("signal_queue_len = 128"),
        "env beats file: {shown}"
    );
    assert!(
        shown.contains("skew_window_secs = 45"),
        "flag beats file: {shown}"
    );
    assert!(shown.contains("auth_deadline_secs = 5"), "default: {shown}");
    assert!(shown.contains("device_https_threads = 6"), "file: {shown}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_value_out_of_range_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eagate.toml");
    for (contents, mentions) in [
        ("quic_lisen = \"127.0.0.1:1\"\n", "quic_lisen"),
        ("master_key = \"00\"\n", "master_key"),
        (
            "skew_window_secs = 0\n",
            "skew_window_secs must be between 1 and 300",
        ),
        ("quic_listen = 7443\n", "quic_listen"),
        (
            "device_https_threads = 257\n",
            "device_https_threads must be between 0 and 256",
        ),
    ] {
        std::fs::write(&file, contents).unwrap();
        let (ok, _, err) = eagate(&["config", "show", "--config", file.to_str().unwrap()], &[]);
        assert!(!ok, "{contents}");
        assert!(err.contains(mentions), "{contents}: {err}");
    }
}

fn printed(lines: &[String], label: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {lines:?}"))
        .trim_end_matches(" (ALPN eagate/1)")
        .to_owned()
}

#[test]
fn a_gateway_or_sidecar_without_redis_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["gateway", "sidecar"] {
        let (ok, _, err) = eagate(&[command, "--data-dir", dir.path().to_str().unwrap()], &[]);
        assert!(!ok);
        assert!(err.contains("needs --redis-url"), "{command}: {err}");
    }
}

#[test]
fn a_sidecar_and_two_gateway_processes_share_one_redis() {
    a_sidecar_and_two_gateway_processes_share(eagate_tests::redis_url());
}

#[test]
fn a_sidecar_and_two_gateway_processes_share_one_redis_cluster() {
    a_sidecar_and_two_gateway_processes_share(eagate_tests::redis_cluster_url());
}

fn a_sidecar_and_two_gateway_processes_share(redis_url: String) {
    let prefix = common::fresh_prefix();
    let master_key = "c0".repeat(32);
    let env = [
        ("EAGATE_REDIS_URL", redis_url.as_str()),
        ("EAGATE_REDIS_PREFIX", prefix.as_str()),
        ("EAGATE_MASTER_KEY", master_key.as_str()),
    ];
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let (sidecar, sidecar_lines) = start_as("sidecar", dirs[0].path(), &env);
    let (gateway_1, lines_1) = start_as("gateway", dirs[1].path(), &env);
    let (gateway_2, lines_2) = start_as("gateway", dirs[2].path(), &env);
    assert!(
        !sidecar_lines.iter().any(|l| l.contains("QUIC")),
        "a sidecar serves no devices: {sidecar_lines:?}"
    );
    assert!(
        !lines_1.iter().any(|l| l.contains("HTTP")),
        "a gateway serves no HTTP: {lines_1:?}"
    );
    let api = printed(&sidecar_lines, "HTTP (admin API): ");
    let quic_1: std::net::SocketAddr = printed(&lines_1, "QUIC (devices):   ").parse().unwrap();
    let quic_2: std::net::SocketAddr = printed(&lines_2, "QUIC (devices):   ").parse().unwrap();

    let (ok, token, _) = eagate(
        &[
            "token",
            "create",
            "--scope",
            "admin",
            "--data-dir",
            dirs[0].path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok);
    let cli = [
        ("EAGATE_API_URL", api.as_str()),
        ("EAGATE_TOKEN", token.trim()),
    ];
    let (ok, out, err) = eagate(
        &["device", "register", "--account", "acct-1", "--name", "VPS"],
        &cli,
    );
    assert!(ok, "{err}");
    let device = common::Device {
        id: eagate_protocol::DeviceId::new(
            out.lines()
                .find_map(|l| l.strip_prefix("device id: "))
                .unwrap(),
        )
        .unwrap(),
        secret: eagate_protocol::DeviceSecret::parse(
            out.lines()
                .find_map(|l| l.strip_prefix("secret:    "))
                .unwrap(),
        )
        .unwrap(),
    };
    let (ok, _, err) = eagate(&["device", "subscribe", device.id.as_str(), "gold"], &cli);
    assert!(ok, "{err}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut session = common::connect_to(quic_1, dirs[1].path()).await;
        assert!(matches!(
            session.authenticate(&device, common::fresh_nonce()).await,
            Some(eagate_protocol::GatewayMessage::AuthAccepted(_))
        ));
        let publish = [
            "signal",
            "publish",
            "--channel",
            "gold",
            "--symbol",
            "XAUUSD",
            "--action",
            "open-buy",
            "--volume",
            "0.10",
            "--idempotency-key",
            "order-7781",
        ];
        let (ok, first, err) = eagate(&publish, &cli);
        assert!(ok, "{err}");
        assert!(first.starts_with("published "), "{first}");
        // A retry with the same key publishes nothing new.
        let (ok, again, err) = eagate(&publish, &cli);
        assert!(ok, "{err}");
        assert!(again.starts_with("already published"), "{again}");
        assert!(again.contains("at position 1 of gold"), "{again}");

        match tokio::time::timeout(Duration::from_secs(5), session.receive()).await {
            Ok(Some(eagate_protocol::GatewayMessage::Signal(signal))) => {
                assert_eq!(signal.position, 1);
                assert_eq!(signal.symbol.as_str(), "XAUUSD");
            }
            other => panic!("expected the published signal, got {other:?}"),
        }

        // Revoked through the sidecar: its gateway closes the session, and
        // the other gateway will not take it.
        let (ok, _, err) = eagate(&["device", "revoke", device.id.as_str()], &cli);
        assert!(ok, "{err}");
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), session.receive())
                .await
                .expect("cut off within a second"),
            Some(eagate_protocol::GatewayMessage::GoingAway(
                eagate_protocol::GoingAway {
                    reason: eagate_protocol::GoingAwayReason::Revoked
                }
            ))
        );
        let mut other = common::connect_to(quic_2, dirs[2].path()).await;
        assert_eq!(
            other.authenticate(&device, common::fresh_nonce()).await,
            Some(eagate_protocol::GatewayMessage::AuthRefused(
                eagate_protocol::Refusal::Revoked
            ))
        );
    });
    stop(gateway_2);
    stop(gateway_1);
    stop(sidecar);
}

#[test]
fn audit_verify_says_the_trail_holds_and_names_an_altered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("affiliates");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ledger = eagate_affiliates::Ledger::open(
            &ledger_dir,
            eagate_affiliates::ProgrammeConfig::default(),
        )
        .unwrap();
        for n in 0..3u64 {
            ledger
                .write(|p| {
                    p.enrol_affiliate(
                        &format!("user-{n}"),
                        &format!("af_{n}"),
                        eagate_affiliates::ReferralCode::from_random(n + 7),
                        &format!("{n:064x}"),
                        &Default::default(),
                        1_790_000_000_000,
                    )
                })
                .await
                .unwrap();
        }
    });
    let data_dir = dir.path().to_str().unwrap();
    let (ok, out, err) = eagate(&["audit", "verify", "--data-dir", data_dir], &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("audit trail holds: 3 entries, head "),
        "{out}"
    );
    {
        let db = sled::open(&ledger_dir).unwrap();
        let facts = db.open_tree("affiliate_facts").unwrap();
        let value = facts.get(2u64.to_be_bytes()).unwrap().unwrap();
        let text = String::from_utf8(value.to_vec())
            .unwrap()
            .replace("user-1", "user-X");
        facts.insert(2u64.to_be_bytes(), text.as_bytes()).unwrap();
        db.flush().unwrap();
    }
    let (ok, out, _) = eagate(&["audit", "verify", "--data-dir", data_dir], &[]);
    assert!(!ok);
    assert!(out.contains("entry 2 was altered"), "{out}");
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = eagate(
        &[
            "audit",
            "verify",
            "--data-dir",
            empty.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("no affiliate ledger"), "{err}");
}

/// Runs `eagate serve` on `dir` with `extra` flags, expecting it to stop by
/// itself (a refusal to start).
fn serve_once(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--quic-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    eagate(&args, env)
}

#[test]
fn the_daily_batch_runs_in_a_started_sidecar_and_payouts_run_by_hand_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // 00:00 UTC has always passed: the scheduler's first look runs the day's
    // batch at once.
    let (child, lines) = start_as("serve", dir.path(), &[("EAGATE_PAYOUT_TIME", "00:00")]);
    let api = printed(&lines, "HTTP (admin API): ");
    let (ok, token, err) = eagate(
        &[
            "token",
            "create",
            "--scope",
            "admin",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let batches = || -> serde_json::Value {
        let text = agent
            .get(&format!("{api}/v1/payout-batches"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = batches();
        if !listed["items"].as_array().unwrap().is_empty() {
            break listed;
        }
        assert!(Instant::now() < deadline, "no daily batch ran");
        std::thread::sleep(Duration::from_millis(100));
    };
    let today = eagate_affiliates::calendar::format_date(eagate_affiliates::calendar::day_of(
        eagate_gateway::clock::unix_ms(),
    ));
    assert_eq!(listed["items"][0]["batch_id"], "pb_1");
    assert_eq!(listed["items"][0]["scheduled_for"], today.as_str());

    let env = [
        ("EAGATE_API_URL", api.as_str()),
        ("EAGATE_TOKEN", token.as_str()),
    ];
    let (ok, out, err) = eagate(&["payouts", "run"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("batch pb_2 (manual): 0 payouts"), "{out}");
    // Still one daily batch: the hand run is a batch of its own.
    assert_eq!(batches()["items"].as_array().unwrap().len(), 2);
    let (ok, _, err) = eagate(
        &[
            "payouts",
            "confirm",
            "pb_1-af_nobody",
            "--reference",
            "BACS-1",
        ],
        &env,
    );
    assert!(!ok);
    assert!(err.contains("no payout pb_1-af_nobody"), "{err}");
    stop(child);
}

#[test]
fn the_stripe_key_comes_from_the_environment_is_never_shown_and_is_required_for_stripe() {
    let (ok, shown, err) = eagate(
        &["config", "show", "--payout-provider", "stripe"],
        &[("EAGATE_STRIPE_SECRET_KEY", "sk_live_do_not_show_1234")],
    );
    assert!(ok, "{err}");
    assert!(
        shown.contains("stripe_secret_key = (set, hidden)"),
        "{shown}"
    );
    assert!(shown.contains("payout_provider = stripe"), "{shown}");
    assert!(!shown.contains("sk_live_do_not_show_1234"), "{shown}");

    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = serve_once(dir.path(), &[], &[("EAGATE_PAYOUT_PROVIDER", "stripe")]);
    assert!(!ok);
    assert!(err.contains("EAGATE_STRIPE_SECRET_KEY"), "{err}");
    let (ok, _, err) = serve_once(dir.path(), &["--payout-time", "9am"], &[]);
    assert!(!ok);
    assert!(
        err.contains("payout_time must be HH:MM (UTC) or off"),
        "{err}"
    );
}

#[test]
fn a_second_process_on_a_data_directory_in_use_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _) = start(dir.path());
    let (ok, _, err) = serve_once(dir.path(), &[], &[]);
    assert!(!ok);
    assert!(err.contains("is in use by another eagate process"), "{err}");
    stop(child);
}

#[test]
fn a_silent_redis_fails_the_start_within_seconds_and_a_stop_is_honoured_meanwhile() {
    // Accepts connections and never answers: a Redis that hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "sidecar",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--redis-url",
        url.as_str(),
    ];
    let started = Instant::now();
    let (ok, _, err) = eagate(&args, &[("EAGATE_LOG", "warn")]);
    assert!(!ok);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("Redis"), "{err}");
    assert!(
        err.contains("trying again"),
        "a log line per attempt: {err}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_eagate"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let asked = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "SIGTERM was ignored while starting"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
