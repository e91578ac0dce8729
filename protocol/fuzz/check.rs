//! The fuzz target's check, shared with the corpus replay test
//! (`protocol/tests/fuzz_corpus.rs`), so both hold the decoder to the same
//! rules. Any panic is a bug; so is a frame that decodes but does not
//! re-encode to exactly its own bytes (every message has one encoding).

use eagate_protocol::{
    Decoded, DeviceMessage, GatewayMessage, MAX_WIRE_LEN, WireMessage, decode_frame, encode_frame,
};

/// Decodes `data` as a frame in both directions and checks what came out.
pub(crate) fn decode_both_ways(data: &[u8]) {
    check::<DeviceMessage>(data);
    check::<GatewayMessage>(data);
}

fn check<M: WireMessage + PartialEq + core::fmt::Debug>(data: &[u8]) {
    let Ok(decoded) = decode_frame::<M>(data) else {
        return;
    };
    match decoded {
        Decoded::Frame { message, consumed } => {
            assert!(consumed <= data.len());
            let mut buf = [0u8; MAX_WIRE_LEN];
            let len = encode_frame(&message, &mut buf).expect("a decoded message re-encodes");
            // Only the shortest encoding decodes, so every accepted frame
            // is exactly the encoding of its message.
            assert_eq!(&buf[..len], &data[..consumed]);
        }
        Decoded::Incomplete { needed } => assert!(needed > 0),
    }
}
