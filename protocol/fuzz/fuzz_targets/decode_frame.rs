//! Feeds arbitrary bytes to the frame decoder in both directions; the check
//! is `../check.rs`, which the test command also runs over the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::decode_both_ways(data));
