//! C programs, compiled by gcc against `include/eagate.h` and the built
//! `libeagate.so`, calling the library as MQL does, under valgrind's
//! memcheck: any invalid access or definite leak fails the test.
//!
//! With `EAGATE_TEST_WINDOWS=x86_64` (or `i686`), as `scripts/windows.sh`
//! runs them, the programs (which need nothing of POSIX but threads and a
//! clock: `tests/c/process.h`) are instead compiled by MinGW against the
//! `eagate.dll` the script built, and run under Wine, against the same
//! gateway on Linux loopback.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use eagate_tests::process::{Bot, Gateway};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Windows target the programs are built for and run under Wine, if
/// any (`x86_64` or `i686`).
fn windows() -> Option<String> {
    std::env::var("EAGATE_TEST_WINDOWS").ok()
}

/// The directory holding `eagate.dll` for the Windows target, built by
/// `scripts/windows.sh`.
fn windows_library_dir(arch: &str) -> PathBuf {
    let dir = crate_dir().join(format!("../target/{arch}-pc-windows-gnu/release"));
    assert!(
        dir.join("eagate.dll").is_file(),
        "no eagate.dll in {}: run scripts/windows.sh",
        dir.display()
    );
    dir
}

/// The directory holding a freshly built `libeagate.so`.
///
/// `cargo test` builds this crate only as an rlib, so the shared library is
/// built here, by cargo, into a target directory of its own (no lock shared
/// with the cargo that runs this test), once per test binary.
fn library_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> → target
            let target = exe.ancestors().nth(3).unwrap().to_owned();
            let target_dir = target.join("c-harness");
            let output = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "eagate-ffi", "--lib"])
                .arg("--manifest-path")
                .arg(crate_dir().join("../Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target_dir)
                .output()
                .expect("cargo runs");
            assert!(
                output.status.success(),
                "building libeagate.so failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let dir = target_dir.join("debug");
            assert!(
                dir.join("libeagate.so").is_file(),
                "no libeagate.so in {}",
                dir.display()
            );
            dir
        })
        .clone()
}

/// How a program reaches the library.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Linking {
    /// Linked to it: loaded with the program, as MQL's `#import` does.
    Linked,
    /// Not linked: the program loads and unloads it itself.
    AtRunTime,
}

/// Compiles `tests/c/<name>.c`, linked to the library, with warnings as
/// errors; the executable.
fn compile(name: &str, out_dir: &Path) -> PathBuf {
    compile_with(name, out_dir, Linking::Linked)
}

fn compile_with(name: &str, out_dir: &Path, linking: Linking) -> PathBuf {
    if let Some(arch) = windows() {
        return compile_for_windows(name, out_dir, &arch, linking);
    }
    let library = library_dir();
    let exe = out_dir.join(name);
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(format!("tests/c/{name}.c")))
        .arg("-o")
        .arg(&exe);
    match linking {
        Linking::Linked => gcc
            .arg("-L")
            .arg(&library)
            .arg(format!("-Wl,-rpath,{}", library.display()))
            .args(["-leagate", "-lpthread"]),
        Linking::AtRunTime => gcc.args(["-ldl", "-lpthread"]),
    };
    let output = gcc
        .output()
        .expect("gcc runs (scripts/test.sh installs it if missing)");
    assert!(
        output.status.success(),
        "gcc failed on {name}.c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// [`compile`] by MinGW for Windows, linked to `eagate.dll` (copied beside
/// the program, where Windows looks first) with its C runtime and threads
/// inside; the `.exe`. Beside them goes the shim of `bcryptprimitives.dll`
/// that Wine 8 lacks (`tests/c/wine/`).
fn compile_for_windows(name: &str, out_dir: &Path, arch: &str, linking: Linking) -> PathBuf {
    let dll = windows_library_dir(arch).join("eagate.dll");
    std::fs::copy(&dll, out_dir.join("eagate.dll")).expect("eagate.dll copied");
    let shim = Command::new(format!("{arch}-w64-mingw32-gcc"))
        .args(["-shared", "-O1", "-Wl,--kill-at", "-o"])
        .arg(out_dir.join("bcryptprimitives.dll"))
        .arg(crate_dir().join("tests/c/wine/bcryptprimitives.c"))
        .arg("-ladvapi32")
        .output()
        .expect("MinGW runs (scripts/windows.sh installs it)");
    assert!(
        shim.status.success(),
        "the bcryptprimitives shim: {}",
        String::from_utf8_lossy(&shim.stderr)
    );
    let exe = out_dir.join(format!("{name}.exe"));
    let mut gcc = Command::new(format!("{arch}-w64-mingw32-gcc"));
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-static"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(format!("tests/c/{name}.c")))
        .arg("-o")
        .arg(&exe);
    if linking == Linking::Linked {
        gcc.arg(out_dir.join("eagate.dll"));
    }
    let output = gcc
        .arg("-lpthread")
        .output()
        .expect("MinGW runs (scripts/windows.sh installs it)");
    assert!(
        output.status.success(),
        "{arch}-w64-mingw32-gcc failed on {name}.c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// `exe` under memcheck: an invalid access or a definite or indirect leak
/// makes it exit with 99. (Under Wine, for a Windows build: no memcheck.)
fn under_valgrind(exe: &Path) -> Command {
    if windows().is_some() {
        let mut command = Command::new("wine");
        command.arg(exe).env("WINEDEBUG", "-all");
        return command;
    }
    let mut command = Command::new("valgrind");
    command
        .args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
        ])
        .arg(format!(
            "--suppressions={}",
            crate_dir().join("tests/valgrind.supp").display()
        ))
        .arg(exe)
        // Cargo points LD_LIBRARY_PATH at target/<profile>, whose
        // libeagate.so may be stale; it would win over the rpath.
        .env("LD_LIBRARY_PATH", library_dir());
    command
}

/// Runs `exe` under memcheck with `input` on stdin; its stdout.
fn run_under_valgrind(exe: &Path, input: &str) -> String {
    let mut child = under_valgrind(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("valgrind runs (scripts/test.sh installs it if missing)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}\n{}",
        exe.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn utf16_hex(text: &str) -> String {
    text.encode_utf16()
        .map(|unit| format!("{unit:04x}"))
        .collect()
}

#[test]
fn c_computes_every_spec_vector_mac_through_the_library_under_valgrind() {
    // The protocol crate's copy of shared/spec/device-auth-vectors.json.
    let vectors: serde_json::Value = serde_json::from_str(include_str!(
        "../../protocol/tests/data/device-auth-vectors.json"
    ))
    .unwrap();
    let mut input = String::new();
    let cases = vectors["cases"].as_array().unwrap();
    for case in cases {
        input.push_str(&format!(
            "{} {} {} {} {} {}\n",
            utf16_hex(case["device_id"].as_str().unwrap()),
            case["secret"].as_str().unwrap(),
            case["timestamp_ms"].as_u64().unwrap(),
            case["nonce_hex"].as_str().unwrap(),
            case["binding_hex"].as_str().unwrap(),
            case["mac_hex"].as_str().unwrap(),
        ));
    }
    // A secret that is not the egs_ text is refused with a reason.
    input.push_str(&format!(
        "{} egs_tooshort 1 {} {} invalid\n",
        utf16_hex("dv_x"),
        "00".repeat(16),
        "00".repeat(32)
    ));
    let dir = tempfile::tempdir().unwrap();
    let exe = compile("auth_vectors", dir.path());
    let out = run_under_valgrind(&exe, &input);
    assert!(
        out.contains(&format!("{} cases, 0 failures", cases.len() + 1)),
        "{out}"
    );
    assert!(out.contains("refused: secret"), "{out}");
}

/// Generous: everything runs under valgrind, many times slower than native.
const SLOW: Duration = Duration::from_secs(90);

/// What MetaTrader gives `OnDeinit`.
const DEINIT_LIMIT_MS: u64 = 2_500;

/// The copier (tests/c/copier.c) under memcheck, for `gateway`.
fn start_copier(exe: &Path, server: &str, fingerprint: &str, state_dir: &Path) -> Bot {
    let mut command = under_valgrind(exe);
    command.arg(server).arg(fingerprint).arg(state_dir);
    Bot::spawn(command)
}

/// Waits until `n` lines starting with `prefix` were printed (lines of
/// several slots interleave, so none is skipped); those lines.
fn await_lines(copier: &mut Bot, prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + SLOW;
    loop {
        let found: Vec<String> = copier
            .lines
            .seen()
            .iter()
            .filter(|line| line.starts_with(prefix))
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{n} lines starting with {prefix:?} expected within {SLOW:?}; printed: {:#?}",
            copier.lines.seen()
        );
        copier.lines.expect("", left);
    }
}

/// The signal id in a copier line `<verb> <slot> <id> …`.
fn id_of(line: &str) -> &str {
    line.split_whitespace().nth(2).expect("an id")
}

/// Waits for the gateway to hold exactly `kinds` for a device's reports on
/// a signal.
fn expect_stored(gateway: &Gateway, signal_id: &str, device_id: &str, kinds: &[&str]) {
    let deadline = Instant::now() + SLOW;
    loop {
        let stored: Vec<String> = gateway
            .stored_reports(signal_id, device_id)
            .into_iter()
            .map(|(_, kind)| kind)
            .collect();
        if stored == kinds {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "device {device_id} on signal {signal_id}: stored {stored:?}, expected {kinds:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Milliseconds a `closed SLOT MS CODE` line reports, after checking the
/// close succeeded.
fn close_ms(line: &str) -> u64 {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.get(3), Some(&"0"), "close succeeded: {line}");
    fields[2].parse().expect("milliseconds")
}

#[test]
fn c_copier_receives_signals_and_reports_fills_and_rejections_stored_once_on_many_handles() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let devices: Vec<(String, String)> = (0..4).map(|_| gateway.register("gold")).collect();
    let state = tempfile::tempdir().unwrap();
    let exe = compile("copier", state.path());
    let mut copier = start_copier(&exe, &gateway.quic, &gateway.fingerprint, state.path());

    for (slot, (id, secret)) in devices.iter().enumerate() {
        copier.send(&format!("connect {slot} {id} {secret}"));
    }
    for slot in 0..devices.len() {
        await_lines(&mut copier, &format!("state {slot} 2 connected"), 1);
    }
    copier.send("reject 3");
    await_lines(&mut copier, "rejecting 3", 1);

    let limit = gateway.eagate_ok(&[
        "signal",
        "publish",
        "--channel",
        "gold",
        "--symbol",
        "XAUUSD",
        "--action",
        "open-buy",
        "--order-type",
        "limit",
        "--volume",
        "0.10",
        "--price",
        "2350.10",
        "--stop-loss",
        "2340.00",
        "--take-profit",
        "2370.5",
        "--magic",
        "77",
        "--comment",
        "gold breakout",
    ]);
    let limit = limit.split_whitespace().nth(1).expect("an id").to_owned();
    let market = gateway.publish("gold");

    for slot in 0..devices.len() {
        let signals = await_lines(&mut copier, &format!("signal {slot} "), 2);
        assert_eq!(id_of(&signals[0]), limit, "in channel order: {signals:?}");
        assert!(
            signals[0].ends_with(
                "pos=1 symbol=XAUUSD action=1 type=2 volume=0.10 price=2350.10 sl=2340.00 \
                 tp=2370.5 magic=77 ref=0 comment=gold breakout"
            ),
            "every field through the packed struct and the buffers: {}",
            signals[0]
        );
        assert_eq!(id_of(&signals[1]), market, "{}", signals[1]);
        assert!(
            signals[1].contains("type=1 volume=0.10 price=- sl=- tp=-"),
            "{}",
            signals[1]
        );
    }
    for (slot, (device, _)) in devices.iter().enumerate() {
        let expected: &[&str] = if slot == 3 {
            &["received", "rejected"]
        } else {
            &["received", "filled"]
        };
        for signal in [&limit, &market] {
            expect_stored(&gateway, signal, device, expected);
        }
    }
    let executions = gateway.executions(&limit);
    let reports = |device: &str| {
        executions["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == device)
            .unwrap_or_else(|| panic!("{device} reported: {executions}"))["reports"]
            .clone()
    };
    let fill = &reports(&devices[0].0)[1];
    assert_eq!(
        (&fill["ticket"], &fill["price"], &fill["volume"]),
        (
            &serde_json::json!(1),
            &serde_json::json!("2350.10"),
            &serde_json::json!("0.10")
        ),
        "{fill}"
    );
    let rejection = &reports(&devices[3].0)[1];
    assert_eq!(rejection["error_code"], 10019, "{rejection}");

    // The broker undoes slot 0's fill of the limit order (ticket 1): stored
    // once, beside the fill, and the execution reads reversed.
    copier.send(&format!("reverse 0 {limit} 1"));
    assert_eq!(
        await_lines(&mut copier, "reversed 0 ", 1),
        [format!("reversed 0 {limit} 0")]
    );
    expect_stored(
        &gateway,
        &limit,
        &devices[0].0,
        &["received", "filled", "reversed"],
    );
    let executions = gateway.executions(&limit);
    let device_0 = executions["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == devices[0].0.as_str())
        .unwrap();
    assert_eq!(device_0["status"], "reversed", "{device_0}");
    assert_eq!(device_0["reports"][2]["ticket"], 1, "{device_0}");

    // Misuse fails with reasons and harms nothing.
    copier.send("misuse 1");
    assert_eq!(await_lines(&mut copier, "misuse 1 ", 1), ["misuse 1 ok"]);

    // An EA re-initialised (a timeframe change) closes and connects again
    // at once: the device's journal is free, and done signals stay done.
    copier.send("close 0");
    let closed = await_lines(&mut copier, "closed 0 ", 1);
    assert!(close_ms(&closed[0]) < DEINIT_LIMIT_MS, "{closed:?}");
    copier.send(&format!("connect 0 {} {}", devices[0].0, devices[0].1));
    await_lines(&mut copier, "state 0 2 connected", 2);
    // A second EA on a device already in use is refused, not run twice.
    copier.send(&format!("connect 5 {} {}", devices[1].0, devices[1].1));
    let refused = await_lines(&mut copier, "connect-failed 5 ", 1);
    assert!(
        refused[0].starts_with("connect-failed 5 -4 "),
        "{refused:?}"
    );
    assert!(refused[0].contains("in use"), "{refused:?}");

    let third = gateway.publish("gold");
    for slot in 0..devices.len() {
        let signals = await_lines(&mut copier, &format!("signal {slot} "), 3);
        assert_eq!(
            id_of(&signals[2]),
            third,
            "only the new signal: {signals:?}"
        );
    }
    expect_stored(&gateway, &third, &devices[0].0, &["received", "filled"]);

    copier.send("quit");
    let bye = await_lines(&mut copier, "bye ", 1);
    assert_eq!(
        await_lines(&mut copier, "threads ", 1),
        ["threads 0"],
        "the library's threads stop with its last session"
    );
    assert_eq!(bye, ["bye 0"], "{:#?}", copier.lines.seen());
    assert_eq!(
        copier.wait_exit(SLOW),
        Some(0),
        "memcheck found no error or leak (exit 99 if it did)"
    );
    for slot in 0..devices.len() {
        let signals = await_lines(&mut copier, &format!("signal {slot} "), 3);
        assert_eq!(signals.len(), 3, "each signal once: {signals:#?}");
    }
    for line in await_lines(&mut copier, "closed ", devices.len() + 1) {
        assert!(close_ms(&line) < DEINIT_LIMIT_MS, "{line}");
    }
}

#[test]
fn c_close_returns_within_deinit_limit_when_the_gateway_is_gone_or_never_answered() {
    let data = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(data.path(), &[]);
    let connected = gateway.register("gold");
    let (wrong_id, _) = gateway.register("gold");
    let late = gateway.register("gold");
    let state = tempfile::tempdir().unwrap();
    let exe = compile("copier", state.path());
    let mut copier = start_copier(&exe, &gateway.quic, &gateway.fingerprint, state.path());

    copier.send(&format!("connect 0 {} {}", connected.0, connected.1));
    await_lines(&mut copier, "state 0 2 connected", 1);
    // A wrong secret stops that session for good, with advice.
    let wrong_secret = format!("egs_{}", "A".repeat(43));
    copier.send(&format!("connect 1 {wrong_id} {wrong_secret}"));
    let refused = await_lines(&mut copier, "state 1 12 ", 1);
    assert!(refused[0].contains("secret"), "{refused:?}");

    // The gateway dies without a goodbye: slot 0 still believes it is
    // connected, and its goodbye will never be answered.
    gateway.kill();
    // Slot 2 connects to where nothing listens any more.
    copier.send(&format!("connect 2 {} {}", late.0, late.1));
    await_lines(&mut copier, "state 2 ", 1);

    for slot in 0..3 {
        copier.send(&format!("close {slot}"));
        let closed = await_lines(&mut copier, &format!("closed {slot} "), 1);
        assert!(close_ms(&closed[0]) < DEINIT_LIMIT_MS, "{closed:?}");
    }
    copier.send("quit");
    assert_eq!(await_lines(&mut copier, "bye ", 1), ["bye 0"]);
    assert_eq!(await_lines(&mut copier, "threads ", 1), ["threads 0"]);
    assert_eq!(copier.wait_exit(SLOW), Some(0), "memcheck is clean");
}

#[test]
fn c_a_second_terminal_with_the_same_device_takes_over_and_the_first_stops_for_good() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, secret) = gateway.register("gold");
    // Two terminals (two processes, each with its own journal) given the
    // same device id and secret.
    let (first_state, second_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let exe = compile("copier", first_state.path());
    let mut first = start_copier(
        &exe,
        &gateway.quic,
        &gateway.fingerprint,
        first_state.path(),
    );
    first.send(&format!("connect 0 {id} {secret}"));
    await_lines(&mut first, "state 0 2 connected", 1);
    let mut second = start_copier(
        &exe,
        &gateway.quic,
        &gateway.fingerprint,
        second_state.path(),
    );
    second.send(&format!("connect 0 {id} {secret}"));
    await_lines(&mut second, "state 0 2 connected", 1);
    let replaced = await_lines(&mut first, "state 0 15 ", 1);
    assert!(
        replaced[0].contains("connected from elsewhere") && replaced[0].contains("one place"),
        "the state sentence says what happened and what to do: {replaced:?}"
    );
    await_lines(&mut first, "stopped 0 ", 1);

    // The replaced terminal does not fight back: the newer one keeps the
    // session and alone receives the next signal.
    let (first_before, second_before) = (first.lines.seen().len(), second.lines.seen().len());
    let signal = gateway.publish("gold");
    let received = await_lines(&mut second, "signal 0 ", 1);
    assert_eq!(id_of(&received[0]), signal);
    std::thread::sleep(Duration::from_secs(3));
    let first_after = first.lines.drain(Duration::from_millis(100))[first_before..].to_vec();
    assert!(
        !first_after
            .iter()
            .any(|line| line.starts_with("signal 0 ") || line.starts_with("state 0 ")),
        "the first terminal neither trades nor reconnects: {first_after:#?}"
    );
    let second_after = second.lines.drain(Duration::from_millis(100))[second_before..].to_vec();
    assert!(
        !second_after.iter().any(|line| line.starts_with("state 0 ")),
        "the second stays connected: {second_after:#?}"
    );
    expect_stored(&gateway, &signal, &id, &["received", "filled"]);

    for copier in [&mut first, &mut second] {
        copier.send("quit");
        assert_eq!(await_lines(copier, "bye ", 1), ["bye 0"]);
        assert_eq!(copier.wait_exit(SLOW), Some(0), "memcheck is clean");
    }
}

/// The terminal's pattern (tests/c/terminal.c) under memcheck: three EAs on
/// threads of their own, each with its handle, polling and reporting at
/// once while signals are published; and a fourth EA closed while another
/// thread is polling its handle. Every signal reaches every EA once, every
/// fill is stored once, the racing close neither crashes nor leaks, and
/// the handle is unknown after it.
#[test]
fn c_eas_on_threads_of_their_own_poll_and_report_at_once_and_a_close_races_a_poll() {
    const EAS: usize = 3;
    const SIGNALS: usize = 6;
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let devices: Vec<(String, String)> = (0..=EAS).map(|_| gateway.register("gold")).collect();
    let state = tempfile::tempdir().unwrap();
    let exe = compile("terminal", state.path());
    let mut command = under_valgrind(&exe);
    command
        .arg(&gateway.quic)
        .arg(&gateway.fingerprint)
        .arg(state.path())
        .arg(SIGNALS.to_string());
    for (id, secret) in &devices {
        command.arg(id).arg(secret);
    }
    let mut terminal = Bot::spawn(command);
    for ea in 0..EAS {
        await_lines(&mut terminal, &format!("connected {ea}"), 1);
    }
    let published: Vec<String> = (0..SIGNALS).map(|_| gateway.publish("gold")).collect();
    for ea in 0..EAS {
        let taken: Vec<String> = await_lines(&mut terminal, &format!("signal {ea} "), SIGNALS)
            .iter()
            .map(|line| id_of(line).to_owned())
            .collect();
        assert_eq!(taken, published, "EA {ea}: each signal once, in order");
    }
    for (id, _) in devices.iter().take(EAS) {
        for signal in &published {
            expect_stored(&gateway, signal, id, &["received", "filled"]);
        }
    }
    let raced = await_lines(&mut terminal, "raced ", 1);
    let fields: Vec<&str> = raced[0].split_whitespace().collect();
    let polls: u64 = fields[1].parse().unwrap();
    assert!(polls > 0, "the poller ran: {raced:?}");
    assert_eq!(
        &fields[2..],
        &["0", "-3", "-3"],
        "closed OK; the racing poll and any later one see an unknown handle"
    );
    terminal.send("close");
    for ea in 0..EAS {
        let done = await_lines(&mut terminal, &format!("done {ea} "), 1);
        assert_eq!(
            done[0],
            format!("done {ea} {SIGNALS} 0"),
            "took every signal, closed"
        );
    }
    await_lines(&mut terminal, "bye", 1);
    assert_eq!(
        terminal.wait_exit(SLOW),
        Some(0),
        "memcheck found no invalid access or leak"
    );
}

/// One rule for a stopped session: a report made after it stopped (a
/// pending order filled late, after the device was revoked) is taken like
/// any other, stored in the journal for the device's next session, and
/// answered OK; polling is what says STOPPED. (It answered STOPPED after a
/// revocation and OK after a refusal, and an EA re-queued the report
/// forever.)
#[test]
fn c_a_report_made_after_the_session_stopped_is_kept_like_any_other() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, secret) = gateway.register("gold");
    let state = tempfile::tempdir().unwrap();
    let exe = compile("copier", state.path());
    let mut copier = start_copier(&exe, &gateway.quic, &gateway.fingerprint, state.path());
    copier.send(&format!("connect 0 {id} {secret}"));
    await_lines(&mut copier, "state 0 2 connected", 1);
    gateway.revoke(&id);
    await_lines(&mut copier, "stopped 0 ", 1);
    copier.send("late 0");
    let late = await_lines(&mut copier, "late 0 ", 1);
    assert_eq!(late[0], "late 0 0", "taken: on disk for a later session");
    copier.send("quit");
    let bye = await_lines(&mut copier, "bye ", 1);
    assert_eq!(bye[0], "bye 0");
    assert_eq!(copier.wait_exit(SLOW), Some(0), "memcheck clean");
}

/// What MetaTrader does over an EA's life: load the DLL, connect, trade;
/// on removal close in OnDeinit and unload the DLL at once; on re-attach
/// load it again. The close returns within OnDeinit's limit with the
/// library's threads gone (one left would run unmapped code after the
/// unload and crash the terminal), and the second load resumes the device:
/// the first signal is not delivered again, the second arrives, both fills
/// are stored once. (On Windows the library pins itself once its threads
/// have started, so the unload only drops the terminal's reference; there
/// a third round unloads it with the session live, and nothing crashes.)
#[test]
fn c_the_library_unloaded_after_close_and_loaded_again_resumes_the_device_and_leaves_no_thread() {
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &[]);
    let (id, secret) = gateway.register("gold");
    let state = tempfile::tempdir().unwrap();
    let exe = compile_with("unload", state.path(), Linking::AtRunTime);
    let library = match windows() {
        Some(_) => PathBuf::from("eagate.dll"),
        None => library_dir().join("libeagate.so"),
    };
    let mut command = under_valgrind(&exe);
    command
        .arg(&library)
        .arg(&gateway.quic)
        .arg(&gateway.fingerprint)
        .arg(state.path())
        .arg(&id)
        .arg(&secret)
        .current_dir(state.path());
    let mut terminal = Bot::spawn(command);
    let mut published = Vec::new();
    for round in 1..=2 {
        await_lines(&mut terminal, &format!("connected {round}"), 1);
        published.push(gateway.publish("gold"));
        terminal.send("go");
        let taken = await_lines(&mut terminal, &format!("signal {round} "), 1);
        assert_eq!(
            id_of(&taken[0]),
            published[round - 1],
            "round {round}: the newest signal, none again"
        );
        expect_stored(
            &gateway,
            &published[round - 1],
            &id,
            &["received", "filled"],
        );
        terminal.send("close");
        let unloaded = await_lines(&mut terminal, &format!("unloaded {round} "), 1);
        let fields: Vec<i64> = unloaded[0]
            .split_whitespace()
            .skip(2)
            .map(|field| field.parse().unwrap())
            .collect();
        let [close_ms, code, threads_before, threads_after] = fields[..] else {
            panic!("{unloaded:?}");
        };
        eprintln!(
            "round {round}: closed in {close_ms} ms; {threads_before} threads before the load, \
             {threads_after} after the unload"
        );
        assert_eq!(code, 0, "closed OK");
        assert!(
            close_ms < DEINIT_LIMIT_MS as i64,
            "round {round}: the close took {close_ms} ms"
        );
        assert_eq!(
            threads_after, threads_before,
            "round {round}: no thread of the library outlives the close"
        );
    }
    if windows().is_some() {
        // The library unloaded with its session live: pinned, it ran on.
        await_lines(&mut terminal, "live-unloaded", 1);
    }
    await_lines(&mut terminal, "bye", 1);
    assert_eq!(
        terminal.wait_exit(SLOW),
        Some(0),
        "no crash after the unloads, and memcheck found no invalid access or leak"
    );
    for signal in &published {
        expect_stored(&gateway, signal, &id, &["received", "filled"]);
    }
}
