//! `include/eagate.h` is what cbindgen makes of this crate, byte for byte:
//! the committed header can never drift from the library.
//!
//! cbindgen skips functions of any ABI but "C" (mozilla/cbindgen#55), so it
//! reads a copy of the sources with `extern "system"` written as
//! `extern "C"`, and the header marks every function `EAGATE_CALL`, which
//! is stdcall on 32-bit Windows: the same convention `extern "system"` is.
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
    let generated = String::from_utf8(generated).unwrap();
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
