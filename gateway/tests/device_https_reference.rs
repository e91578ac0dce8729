//! The C twin of the pure-MQL client's signing code
//! (`device-sdk-ffi/mql/reference/`, held token for token to
//! `eagate_http.mqh` by device-sdk-ffi/tests/mql.rs), compiled by gcc and
//! run against the spec's vectors and a live gateway: the requests it signs
//! pass the gateway's checks, the answers it accepts are the gateway's, and
//! it refuses answers that were changed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::https::{HttpsClient, RawRequest};
use common::*;
use eagate_protocol::{ChannelName, Decimal, SignalId};
use serde::Deserialize;
use serde_json::json;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-sdk-ffi/mql/reference")
}

/// The C twin's command line, built by gcc.
fn build_cli(out: &Path) -> PathBuf {
    let dir = reference_dir();
    let binary = out.join("eagate_http_ref");
    let built = Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg("-I")
        .arg(&dir)
        .arg(dir.join("eagate_http_ref.c"))
        .arg(dir.join("cli.c"))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("gcc runs (scripts/test.sh installs it if missing)");
    assert!(
        built.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    binary
}

/// Runs the C twin: its output line and exit status.
fn run(cli: &Path, args: &[&str]) -> (String, i32) {
    let output = Command::new(cli).args(args).output().unwrap();
    (
        String::from_utf8(output.stdout).unwrap().trim().to_owned(),
        output.status.code().unwrap(),
    )
}

fn hex_or_dash(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "-".to_owned()
    } else {
        hex::encode(bytes)
    }
}

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    secret: String,
    method: String,
    target: String,
    device_id: String,
    timestamp_ms: u64,
    nonce_hex: String,
    body: String,
    signature_hex: String,
    answer: Answer,
}

#[derive(Deserialize)]
struct Answer {
    status: u16,
    body: String,
    signature_hex: String,
}

#[test]
fn the_c_twin_reproduces_every_vector_and_refuses_changed_answers() {
    let out = tempfile::tempdir().unwrap();
    let cli = build_cli(out.path());
    let vectors: Vectors = serde_json::from_str(include_str!(
        "../../protocol/tests/data/device-http-vectors.json"
    ))
    .unwrap();
    assert_eq!(vectors.cases.len(), 4);
    for case in &vectors.cases {
        let timestamp = case.timestamp_ms.to_string();
        let body = hex_or_dash(case.body.as_bytes());
        let (signature, status) = run(
            &cli,
            &[
                "sign",
                &case.secret,
                &case.method,
                &case.target,
                &case.device_id,
                &timestamp,
                &case.nonce_hex,
                &body,
            ],
        );
        assert_eq!(
            (signature.as_str(), status),
            (case.signature_hex.as_str(), 0)
        );
        let answer_status = case.answer.status.to_string();
        let answer_body = hex_or_dash(case.answer.body.as_bytes());
        let verify = |status: &str, body: &str, signature: &str| {
            run(
                &cli,
                &[
                    "verify",
                    &case.secret,
                    &case.nonce_hex,
                    status,
                    body,
                    signature,
                ],
            )
        };
        assert_eq!(
            verify(&answer_status, &answer_body, &case.answer.signature_hex),
            ("ok".to_owned(), 0)
        );
        // A changed status, body or signature is refused.
        let changed_body = hex_or_dash(format!("{} ", case.answer.body).as_bytes());
        let mut changed_signature = case.answer.signature_hex.clone();
        changed_signature.replace_range(
            0..1,
            if changed_signature.starts_with('0') {
                "1"
            } else {
                "0"
            },
        );
        for (status, body, signature) in [
            (
                "201",
                answer_body.as_str(),
                case.answer.signature_hex.as_str(),
            ),
            (
                answer_status.as_str(),
                changed_body.as_str(),
                case.answer.signature_hex.as_str(),
            ),
            (
                answer_status.as_str(),
                answer_body.as_str(),
                changed_signature.as_str(),
            ),
            (answer_status.as_str(), answer_body.as_str(), ""),
        ] {
            assert_eq!(verify(status, body, signature), ("refused".to_owned(), 1));
        }
    }
    // Secrets that are not one: refused, as the gateway's parser does.
    for bad in [
        "egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh",
        "egx_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+",
        // The last character's unused bits set: not the canonical text.
        "egs_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9",
    ] {
        assert!(eagate_protocol::DeviceSecret::parse(bad).is_err(), "{bad}");
        let (_, status) = run(
            &cli,
            &["sign", bad, "GET", "/", "dv_A", "1", &"00".repeat(16), "-"],
        );
        assert_eq!(status, 2, "{bad}");
    }
}

#[test]
fn the_c_twins_nonces_differ_for_any_change_of_their_inputs() {
    let out = tempfile::tempdir().unwrap();
    let cli = build_cli(out.path());
    let nonce = |device: &str, counter: &str, time: &str, a: &str, b: &str| {
        let (nonce, status) = run(&cli, &["nonce", device, counter, time, a, b]);
        assert_eq!(status, 0);
        assert_eq!(nonce.len(), 32);
        nonce
    };
    let base = nonce("dv_A", "1", "1767225600000", "17", "29");
    assert_eq!(base, nonce("dv_A", "1", "1767225600000", "17", "29"));
    for other in [
        nonce("dv_B", "1", "1767225600000", "17", "29"),
        nonce("dv_A", "2", "1767225600000", "17", "29"),
        nonce("dv_A", "1", "1767225600001", "17", "29"),
        nonce("dv_A", "1", "1767225600000", "18", "29"),
        nonce("dv_A", "1", "1767225600000", "17", "30"),
    ] {
        assert_ne!(base, other);
    }
}

/// The copier without a DLL turns each polled signal into the DLL's struct
/// (`EagateHttpToSignal`): its decimals and ids go through these two twins,
/// which must read every value the gateway writes as the gateway means it.
#[test]
fn the_c_twin_reads_decimals_magic_numbers_and_signal_ids_exactly_as_the_gateway_writes_them() {
    let out = tempfile::tempdir().unwrap();
    let cli = build_cli(out.path());
    let mut written = 0;
    for mantissa in [
        0i64,
        1,
        7,
        10,
        125,
        235_010,
        -15,
        999_999_999_999_999_999,
        -999_999_999_999_999_999,
    ] {
        for scale in [0u8, 1, 2, 3, 5, 8, 18] {
            let Ok(decimal) = Decimal::new(mantissa, scale) else {
                continue;
            };
            let text = decimal.to_string();
            let (read, status) = run(&cli, &["decimal", &text]);
            assert_eq!(status, 0, "{text}");
            assert_eq!(read, format!("{mantissa} {scale}"), "{text}");
            written += 1;
        }
    }
    assert!(written >= 60, "{written}");
    // What the gateway's own parser refuses, the twin refuses too.
    for bad in [
        "",
        "-",
        "1.",
        ".5",
        "+1",
        " 1",
        "1 ",
        "1e5",
        "1,5",
        "0x10",
        "1.2.3",
        "--1",
        "1.-5",
        "١",
        "0.0000000000000000001",
    ] {
        assert!(bad.parse::<Decimal>().is_err(), "{bad}");
        assert_eq!(run(&cli, &["decimal", bad]), ("refused".into(), 1), "{bad}");
    }
    // Leading zeros are not digits that could overflow.
    assert_eq!(
        run(&cli, &["decimal", "000000000000000000000.5"]),
        ("5 1".into(), 0)
    );
    // 19 significant digits fit the gateway's i64 but could overflow the
    // twin's arithmetic; it refuses them (the copier rejects the signal as
    // malformed rather than trade a wrapped number).
    for long in [
        "1234567890123456789",
        "-1234567890123456789",
        "1.234567890123456789",
    ] {
        assert!(long.parse::<Decimal>().is_ok(), "{long}");
        assert_eq!(
            run(&cli, &["decimal", long]),
            ("refused".into(), 1),
            "{long}"
        );
    }

    // A magic number is any u64.
    for magic in [
        0u64,
        77,
        u64::from(u32::MAX) + 1,
        i64::MAX as u64 + 1,
        u64::MAX,
    ] {
        assert_eq!(
            run(&cli, &["unsigned", &magic.to_string()]),
            (magic.to_string(), 0)
        );
    }
    for bad in [
        "",
        "-1",
        "+1",
        " 1",
        "1.0",
        "18446744073709551616",
        "99999999999999999999",
    ] {
        assert_eq!(
            run(&cli, &["unsigned", bad]),
            ("refused".into(), 1),
            "{bad}"
        );
    }

    let mut counting = [0u8; 16];
    for (i, byte) in counting.iter_mut().enumerate() {
        *byte = (i as u8) * 17;
    }
    for bytes in [[0u8; 16], [0xff; 16], counting] {
        let id = SignalId(bytes);
        let hi = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        let lo = u64::from_be_bytes(bytes[8..].try_into().unwrap());
        assert_eq!(
            run(&cli, &["signal-id", &id.to_string()]),
            (format!("{hi} {lo}"), 0),
            "{id}"
        );
    }
    let id = SignalId(counting).to_string();
    for bad in [
        id.to_uppercase(),
        id[1..].to_owned(),
        format!("{id}0"),
        format!("g{}", &id[1..]),
        String::new(),
    ] {
        assert_eq!(
            run(&cli, &["signal-id", &bad]),
            ("refused".into(), 1),
            "{bad}"
        );
    }
}

/// A request signed by the C twin, as the MQL client sends it.
fn signed_by_twin(
    cli: &Path,
    device: &Device,
    method: &str,
    target: &str,
    body: &[u8],
    counter: u64,
) -> (RawRequest, String) {
    let timestamp = now_ms().to_string();
    let (nonce, _) = run(
        cli,
        &[
            "nonce",
            device.id.as_str(),
            &counter.to_string(),
            &timestamp,
            "12345",
            "6789",
        ],
    );
    let secret = device.secret.to_text();
    let (signature, status) = run(
        cli,
        &[
            "sign",
            secret.as_str(),
            method,
            target,
            device.id.as_str(),
            &timestamp,
            &nonce,
            &hex_or_dash(body),
        ],
    );
    assert_eq!(status, 0);
    let request = RawRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: vec![
            ("Eagate-Device".into(), device.id.to_string()),
            ("Eagate-Timestamp".into(), timestamp),
            ("Eagate-Nonce".into(), nonce.clone()),
            ("Eagate-Signature".into(), signature),
        ],
        body: body.to_vec(),
    };
    (request, nonce)
}

#[tokio::test]
async fn the_c_twin_talks_to_a_live_gateway_and_accepts_only_its_answers() {
    let out = tempfile::tempdir().unwrap();
    let cli = build_cli(out.path());
    let (gateway, dir) = start().await;
    let device = register(&gateway).await;
    let gold = ChannelName::new("gold").unwrap();
    gateway.subscribe(device.id.as_str(), &gold).await.unwrap();
    let signal = gateway.publish(&gold, market_buy("twin")).await.unwrap();
    let client = HttpsClient::new(gateway.device_https_addr().unwrap(), dir.path());
    let secret = device.secret.to_text();
    let verify = |nonce: &str, status: u16, body: &[u8], signature: &str| {
        run(
            &cli,
            &[
                "verify",
                secret.as_str(),
                nonce,
                &status.to_string(),
                &hex_or_dash(body),
                signature,
            ],
        )
        .0
    };

    let (request, nonce) = signed_by_twin(&cli, &device, "POST", "/v1/device/session", b"", 1);
    let opened = client.send(&request).await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    let signature = opened.header("Eagate-Signature").unwrap().to_owned();
    assert_eq!(
        verify(&nonce, opened.status, &opened.body, &signature),
        "ok"
    );
    // What a proxy in the middle might change: refused.
    let mut changed = opened.body.clone();
    changed.push(b' ');
    assert_eq!(
        verify(&nonce, opened.status, &changed, &signature),
        "refused"
    );
    assert_eq!(verify(&nonce, 201, &opened.body, &signature), "refused");
    assert_eq!(
        verify(&"0".repeat(32), 200, &opened.body, &signature),
        "refused"
    );
    let session = opened.json()["session"].as_str().unwrap().to_owned();

    let target = format!("/v1/device/signals?session={session}&after=gold:0&wait=5");
    let (request, nonce) = signed_by_twin(&cli, &device, "GET", &target, b"", 2);
    let polled = client.send(&request).await;
    assert_eq!(polled.status, 200);
    assert_eq!(
        verify(
            &nonce,
            200,
            &polled.body,
            polled.header("Eagate-Signature").unwrap()
        ),
        "ok"
    );
    assert_eq!(
        polled.json()["signals"][0]["signal_id"],
        signal.signal_id.to_string()
    );

    // The same fill twice, as after a restart with the queue kept: stored
    // once, confirmed both times.
    let body = serde_json::to_vec(&json!({"reports": [{
        "seq": 1, "signal_id": signal.signal_id.to_string(), "kind": "filled", "at_ms": 7,
        "ticket": "42", "price": "2351.17", "volume": "0.10"}]}))
    .unwrap();
    for counter in [3, 4] {
        let (request, nonce) = signed_by_twin(
            &cli,
            &device,
            "POST",
            &format!("/v1/device/reports?session={session}"),
            &body,
            counter,
        );
        let confirmed = client.send(&request).await;
        assert_eq!(confirmed.text(), r#"{"confirmed_up_to":1}"#);
        assert_eq!(
            verify(
                &nonce,
                200,
                &confirmed.body,
                confirmed.header("Eagate-Signature").unwrap()
            ),
            "ok"
        );
    }
    assert_eq!(stored_count(&gateway, signal.signal_id).await, 1);
    gateway.shutdown().await;
}
