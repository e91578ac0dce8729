//! `include/eagate.h` is what cbindgen makes of this crate, byte for byte:
//! the committed header can never drift from the library.
//!
//! cbindgen skips functions of any ABI but "C" (mozilla/cbindgen#55), so it
//! reads a copy of the sources with `extern "system"` written as
//! `extern "C"`, and the header marks every function `EAGATE_CALL`, which
//! is stdcall on 32-bit Windows: the same convention `extern "system"` is.
//!
//! cbindgen writes `#endif // …` and a comma after an enum's last
//! value, which C89 refuses (MetaTrader's header sits in C projects of
//! every age): the generated text is made C89-clean here ([`c89`]), and
//! the result is compiled as C89 through C17 and C++11 and C++17, by gcc
//! and clang, with warnings as errors.
//!
//! After changing an export, regenerate it with
//! `EAGATE_WRITE_HEADER=1 cargo test -p eagate-ffi --test header`.

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let copy = tempfile::tempdir().unwrap();
    let mut builder = cbindgen::Builder::new().with_config(config);
    let sources: Vec<_> = std::fs::read_dir(crate_dir.join("src"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    for source in sources {
        let text = std::fs::read_to_string(&source)
            .unwrap()
            .replace("extern \"system\" fn", "extern \"C\" fn");
        std::fs::write(copy.path().join(source.file_name().unwrap()), text).unwrap();
    }
    // cbindgen follows `mod` items from the crate root to the other files.
    builder = builder.with_src(copy.path().join("lib.rs"));
    let mut generated = Vec::new();
    builder
        .generate()
        .expect("cbindgen understands the crate")
        .write(&mut generated);
    let generated = c89(&String::from_utf8(generated).unwrap());
    let path = crate_dir.join("include/eagate.h");
    if std::env::var_os("EAGATE_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/eagate.h is out of date; regenerate it with \
         EAGATE_WRITE_HEADER=1 cargo test -p eagate-ffi --test header"
    );
}

/// cbindgen's C made C89-clean: the `// …` comments it puts after code
/// (`#endif // __cplusplus`, `}  // extern "C"`) become block comments,
/// and an enum's last value loses its comma.
fn c89(generated: &str) -> String {
    let lines: Vec<String> = generated
        .lines()
        .map(|line| {
            let in_doc = line.trim_start().starts_with('*') || line.trim_start().starts_with("/*");
            match line.split_once("// ") {
                Some((code, comment)) if !in_doc && !code.trim().is_empty() => {
                    format!("{code}/* {comment} */")
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    let mut text = lines.join("\n") + "\n";
    // Only an enum's body ends with a comma before its closing brace
    // (struct fields end with semicolons).
    text = text.replace(",\n};", "\n};");
    text
}

/// A program using the header's types, constants and a function pointer
/// of each kind it declares.
const USES_THE_HEADER: &str = r#"#include "eagate.h"
int main(void) {
  EagateSignal signal;
  EagateResult result = EAGATE_RESULT_OK;
  signal.volume_mantissa = 0;
  (void)signal;
  (void)result;
  (void)&eagate_connect;
  return EAGATE_SYMBOL_CAPACITY > 0 ? 0 : 1;
}
"#;

#[test]
fn the_header_compiles_cleanly_as_c89_through_c17_and_as_cpp_with_gcc_and_clang() {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("uses.c");
    let cpp = dir.path().join("uses.cpp");
    std::fs::write(&c, USES_THE_HEADER).unwrap();
    std::fs::write(&cpp, USES_THE_HEADER).unwrap();
    let mut compiled = 0;
    for (compiler, source, standards) in [
        ("gcc", &c, &["c89", "c99", "c11", "c17"][..]),
        ("clang", &c, &["c89", "c99", "c11", "c17"][..]),
        ("g++", &cpp, &["c++11", "c++17"][..]),
        ("clang++", &cpp, &["c++11", "c++17"][..]),
    ] {
        for standard in standards {
            let output = std::process::Command::new(compiler)
                .arg(format!("-std={standard}"))
                .args([
                    "-pedantic",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-fsyntax-only",
                    "-I",
                ])
                .arg(&include)
                .arg(source)
                .output()
                .unwrap_or_else(|e| {
                    panic!("{compiler} runs (scripts/test.sh installs gcc, g++ and clang): {e}")
                });
            assert!(
                output.status.success(),
                "{compiler} -std={standard}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            compiled += 1;
        }
    }
    assert_eq!(compiled, 12);
}
