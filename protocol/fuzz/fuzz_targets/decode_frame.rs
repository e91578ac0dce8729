//! Feeds arbitrary bytes to the frame decoder in both directions, whole and
//! Any panic is a bug; so is a frame that decodes but does not re-encode, or
//! whose re-encoding decodes to a different message.
#![no_main]

use eagate_protocol::{
    Decoded, DeviceMessage, GatewayMessage, MAX_WIRE_LEN, WireMessage, decode_frame, encode_frame,
};
use libfuzzer_sys::fuzz_target;

fn check<M: WireMessage + PartialEq + core::fmt::Debug>(data: &[u8]) {
    let Ok(decoded) = decode_frame::<M>(data) else {
        return;
    };
    match decoded {
        Decoded::Frame { message, consumed } => {
            assert!(consumed <= data.len());
            let mut buf = [0u8; MAX_WIRE_LEN];
            let len = encode_frame(&message, &mut buf).expect("a decoded message re-encodes");
            // Not byte-equal to the input: postcard accepts overlong varints.
            assert!(len <= consumed);
            if let Ok(Decoded::Frame { message: again, .. }) = decode_frame::<M>(&buf[..len]) {
                assert_eq!(again, message);
            } else {
                panic!("re-encoded frame did not decode");
            }
        }
        Decoded::Incomplete { needed } => assert!(needed > 0),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<DeviceMessage>(data);
    check::<GatewayMessage>(data);
});
