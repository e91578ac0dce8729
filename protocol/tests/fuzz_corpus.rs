//! The fuzzer's findings kept as a regression test: every input of the
//! minimised corpus of `cargo fuzz run decode_frame` (`protocol/fuzz/corpus`,
//! refreshed by hand, see `protocol/fuzz/Cargo.toml`) and every input that
//! once crashed it (`protocol/fuzz/regressions`), through the same check
//! the fuzz target runs.

use std::path::{Path, PathBuf};

#[path = "../fuzz/check.rs"]
mod check;

fn inputs_in(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = entries
        .map(|entry| entry.expect("a readable corpus directory").path())
        .filter(|path| path.is_file() && path.extension().is_none_or(|ext| ext != "md"))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("a readable corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_input_the_fuzzer_kept_decodes_without_panic_and_reencodes_exactly() {
    let corpus = inputs_in("fuzz/corpus/decode_frame");
    // The corpus is committed: an empty one means it went missing, and this
    // test would prove nothing.
    assert!(
        corpus.len() >= 100,
        "the committed corpus has {} inputs",
        corpus.len()
    );
    for (path, bytes) in corpus.iter().chain(&inputs_in("fuzz/regressions")) {
        let outcome = std::panic::catch_unwind(|| check::decode_both_ways(bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the decoder's check",
            path.display()
        );
    }
}

#[test]
fn the_corpus_reaches_every_message_of_both_directions() {
    use eagate_protocol::{Decoded, DeviceMessage, GatewayMessage, decode_frame};
    let corpus = inputs_in("fuzz/corpus/decode_frame");
    let kinds = |decode: &dyn Fn(&[u8]) -> Option<String>| {
        let mut kinds: Vec<String> = corpus.iter().filter_map(|(_, b)| decode(b)).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    let variant = |debug: String| debug.split([' ', '(', '{']).next().unwrap_or("").to_owned();
    let device = kinds(&|bytes| match decode_frame::<DeviceMessage>(bytes) {
        Ok(Decoded::Frame { message, .. }) => Some(variant(format!("{message:?}"))),
        _ => None,
    });
    let gateway = kinds(&|bytes| match decode_frame::<GatewayMessage>(bytes) {
        Ok(Decoded::Frame { message, .. }) => Some(variant(format!("{message:?}"))),
        _ => None,
    });
    // Frames of every message that decode: the corpus gets the fuzzer past
    // the length prefix and the tag into each message's body.
    assert_eq!(
        device,
        ["Authenticate", "GoingAway", "Ping", "Pong", "Report"],
        "device messages reached"
    );
    assert_eq!(
        gateway,
        [
            "AuthAccepted",
            "AuthRefused",
            "GoingAway",
            "Ping",
            "Pong",
            "ReportConflict",
            "ReportsConfirmed",
            "Signal"
        ],
        "gateway messages reached"
    );
}
