//! C programs, compiled by gcc against `include/eagate.h` and the built
//! `libeagate.so`, calling the library as MQL does, under valgrind's
//! memcheck: any invalid access or definite leak fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// Compiles `tests/c/<name>.c` with warnings as errors; the executable.
fn compile(name: &str, out_dir: &Path) -> PathBuf {
    let library = library_dir();
    let exe = out_dir.join(name);
    let output = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(format!("tests/c/{name}.c")))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&library)
        .arg(format!("-Wl,-rpath,{}", library.display()))
        .args(["-leagate", "-lpthread"])
        .output()
        .expect("gcc runs (scripts/test.sh installs it if missing)");
    assert!(
        output.status.success(),
        "gcc failed on {name}.c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Runs `exe` under memcheck with `input` on stdin; its stdout.
fn run_under_valgrind(exe: &Path, input: &str) -> String {
    let mut child = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
        ])
        .arg(exe)
        // Cargo points LD_LIBRARY_PATH at target/<profile>, whose
        // libeagate.so may be stale; it would win over the rpath.
        .env("LD_LIBRARY_PATH", library_dir())
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
