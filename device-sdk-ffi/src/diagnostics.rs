//! Calls that touch no session: the library's version, and the
//! authentication MAC for given inputs, so an EA author (or the test
//! vectors) can check the library computes exactly what the spec says.

use eagate_protocol::{AuthTranscript, DeviceId, DeviceSecret};

use crate::boundary::{EagateResult, Failure, guard};
use crate::text::{read_bytes, read_utf16};

/// The library's version as `major << 16 | minor << 8 | patch`, for an EA
/// to check it loaded the DLL it was written for.
#[unsafe(no_mangle)]
pub extern "system" fn eagate_version() -> u32 {
    let part = |text: &str| text.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) << 16
        | part(env!("CARGO_PKG_VERSION_MINOR")) << 8
        | part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Computes the authentication MAC of `DEVICE-AUTH.md` for a device id and
/// secret (the `egs_…` text), a timestamp (Unix ms), a 16-byte nonce and a
/// 32-byte channel binding, into the 32 bytes at `mac_out`.
///
/// Returns [`EagateResult::InvalidArgument`] for a null pointer, an empty
/// or overlong device id, or a secret that is not the `egs_` text.
///
/// # Safety
///
/// The strings must be NUL-terminated UTF-16 (or null); `nonce` must point
/// to 16 readable bytes, `binding` to 32, and `mac_out` to 32 writable
/// bytes (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_auth_mac(
    device_id: *const u16,
    secret: *const u16,
    timestamp_ms: u64,
    nonce: *const u8,
    binding: *const u8,
    mac_out: *mut u8,
) -> EagateResult {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let device_id = unsafe { read_utf16(device_id, "device id") }?;
        // SAFETY: as above.
        let secret = unsafe { read_utf16(secret, "secret") }?;
        // SAFETY: as above.
        let nonce = unsafe { read_bytes::<16>(nonce, "nonce") }?;
        // SAFETY: as above.
        let binding = unsafe { read_bytes::<32>(binding, "channel binding") }?;
        if mac_out.is_null() {
            return Err(Failure::invalid("the MAC output is missing (null)"));
        }
        let device_id =
            DeviceId::new(&device_id).map_err(|e| Failure::invalid(format!("device id: {e}")))?;
        let secret =
            DeviceSecret::parse(&secret).map_err(|e| Failure::invalid(format!("secret: {e}")))?;
        let mac = AuthTranscript::new(&device_id, timestamp_ms, &nonce, &binding).mac(&secret);
        // SAFETY: the caller promises 32 writable bytes at `mac_out`.
        unsafe { std::ptr::copy_nonoverlapping(mac.as_ptr(), mac_out, mac.len()) };
        Ok(EagateResult::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_crates() {
        let version = eagate_version();
        assert_eq!(
            format!(
                "{}.{}.{}",
                version >> 16,
                (version >> 8) & 0xFF,
                version & 0xFF
            ),
            env!("CARGO_PKG_VERSION")
        );
    }
}
