//! Links the no_std crates and calls into them, so their code is really
//! compiled for a std-less world, not just type-checked.
#![no_std]

use core::panic::PanicInfo;

use eagate_sdk::core::SessionCore;

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

/// Drives the SDK's session core through a connection and a report; returns
/// the length of the first frame it writes (the signed authentication).
#[unsafe(no_mangle)]
pub extern "C" fn eagate_no_std_session_probe(now_ms: u64) -> usize {
    let Ok(id) = DeviceId::new("probe") else {
        return 0;
    };
    let mut core = SessionCore::new(id, DeviceSecret::from_bytes([7; 32]));
    if core
        .report(
            now_ms,
            eagate_protocol::SignalId([1; 16]),
            eagate_protocol::ReportOutcome::Received,
        )
        .is_err()
    {
        return 0;
    }
    core.handle_connected(now_ms, [0; 32], [1; 16]);
    let mut buf = [0u8; MAX_WIRE_LEN];
    core.poll_transmit(now_ms, &mut buf).unwrap_or(0)
}
