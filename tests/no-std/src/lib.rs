//! Links the no_std crates and calls into them, so their code is really
//! compiled for a std-less world, not just type-checked.
#![no_std]

use core::panic::PanicInfo;

// The SDK re-exports the protocol; linking it proves the SDK is std-free too.
use eagate_sdk::protocol as _;

use eagate_protocol::{
    AuthTranscript, Decoded, DeviceId, DeviceMessage, DeviceSecret, MAX_WIRE_LEN, Ping,
    decode_frame, encode_frame,
};

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {}
}

/// Encodes and decodes a ping and computes a MAC; returns the MAC's first byte.
#[unsafe(no_mangle)]
pub extern "C" fn eagate_no_std_probe(token: u64) -> u8 {
    let mut buf = [0u8; MAX_WIRE_LEN];
    let Ok(len) = encode_frame(&DeviceMessage::Ping(Ping { token }), &mut buf) else {
        return 0;
    };
    let Ok(Decoded::Frame { .. }) = decode_frame::<DeviceMessage>(&buf[..len]) else {
        return 0;
    };
    let Ok(id) = DeviceId::new("probe") else {
        return 0;
    };
    let secret = DeviceSecret::from_bytes([7; 32]);
    AuthTranscript::new(&id, token, &[0; 16], &[0; 32]).mac(&secret)[0]
}
