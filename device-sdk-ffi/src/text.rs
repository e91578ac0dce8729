//! Strings across the boundary: UTF-16 in (as MQL passes them), UTF-16 or
//! UTF-8 out into caller buffers.

use crate::boundary::{EagateResult, Failure};

/// The longest string accepted, in UTF-16 units: far above any id, secret,
/// address or path, and a bound on how far a missing NUL is searched for.
pub(crate) const MAX_TEXT_UNITS: usize = 4096;

/// Reads a NUL-terminated UTF-16 string; `what` names it in errors.
///
/// # Safety
///
/// `text` must be null or point to readable units up to a NUL or
/// [`MAX_TEXT_UNITS`], whichever comes first.
pub(crate) unsafe fn read_utf16(text: *const u16, what: &str) -> Result<String, Failure> {
    if text.is_null() {
        return Err(Failure::invalid(format!("{what} is missing (null)")));
    }
    let mut len = 0;
    // SAFETY: the caller promises readable units up to the NUL or the bound.
    while unsafe { *text.add(len) } != 0 {
        len += 1;
        if len == MAX_TEXT_UNITS {
            return Err(Failure::invalid(format!(
                "{what} is longer than {MAX_TEXT_UNITS} characters or not NUL-terminated"
            )));
        }
    }
    // SAFETY: `len` units were just read one by one.
    let units = unsafe { std::slice::from_raw_parts(text, len) };
    String::from_utf16(units).map_err(|_| Failure::invalid(format!("{what} is not valid UTF-16")))
}

/// Reads exactly `N` bytes; `what` names them in errors.
///
/// # Safety
///
/// `bytes` must be null or point to `N` readable bytes.
pub(crate) unsafe fn read_bytes<const N: usize>(
    bytes: *const u8,
    what: &str,
) -> Result<[u8; N], Failure> {
    if bytes.is_null() {
        return Err(Failure::invalid(format!("{what} is missing (null)")));
    }
    let mut out = [0u8; N];
    // SAFETY: the caller promises N readable bytes; `out` is N bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes, out.as_mut_ptr(), N) };
    Ok(out)
}

/// The caller's output buffer as a slice of at least one element.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable elements that
/// nothing else touches during the call.
unsafe fn output<'a, T>(buffer: *mut T, capacity: i32) -> Result<&'a mut [T], Failure> {
    if buffer.is_null() {
        return Err(Failure::invalid("the output buffer is missing (null)"));
    }
    match usize::try_from(capacity) {
        Ok(capacity) if capacity >= 1 => {
            // SAFETY: the caller promises `capacity` writable elements.
            let out = unsafe { std::slice::from_raw_parts_mut(buffer, capacity) };
            Ok(out)
        }
        _ => Err(Failure::invalid(format!(
            "buffer capacity {capacity} is below 1 (room for the NUL)"
        ))),
    }
}

/// Copies `text` as UTF-16 with a NUL into `buffer` of `capacity` units,
/// cut at a character boundary if it does not fit.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable units.
pub(crate) unsafe fn write_utf16(
    text: &str,
    buffer: *mut u16,
    capacity: i32,
) -> Result<EagateResult, Failure> {
    // SAFETY: forwarded from this function's contract.
    let out = unsafe { output(buffer, capacity) }?;
    let capacity = out.len();
    let mut written = 0;
    let mut complete = true;
    for ch in text.chars() {
        let mut units = [0u16; 2];
        let units = ch.encode_utf16(&mut units);
        if written + units.len() > capacity - 1 {
            complete = false;
            break;
        }
        out[written..written + units.len()].copy_from_slice(units);
        written += units.len();
    }
    out[written] = 0;
    Ok(if complete {
        EagateResult::Ok
    } else {
        EagateResult::BufferTooSmall
    })
}

/// Copies `text` as UTF-8 with a NUL into `buffer` of `capacity` bytes,
/// cut at a character boundary if it does not fit.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable bytes.
pub(crate) unsafe fn write_utf8(
    text: &str,
    buffer: *mut u8,
    capacity: i32,
) -> Result<EagateResult, Failure> {
    // SAFETY: forwarded from this function's contract.
    let out = unsafe { output(buffer, capacity) }?;
    let mut end = text.len().min(out.len() - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out[end] = 0;
    Ok(if end == text.len() {
        EagateResult::Ok
    } else {
        EagateResult::BufferTooSmall
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16z(text: &str) -> Vec<u16> {
        text.encode_utf16().chain([0]).collect()
    }

    #[test]
    fn utf16_text_round_trips_including_characters_outside_the_bmp() {
        let input = utf16z("EURUSD € 𝄞");
        // SAFETY: NUL-terminated.
        let text = unsafe { read_utf16(input.as_ptr(), "symbol") }.unwrap();
        assert_eq!(text, "EURUSD € 𝄞");
        let mut out = [0xFFFFu16; 16];
        // SAFETY: 16 units.
        let code = unsafe { write_utf16(&text, out.as_mut_ptr(), 16) }.unwrap();
        assert_eq!(code, EagateResult::Ok);
        assert_eq!(&out[..input.len()], &input[..]);
    }

    #[test]
    fn a_small_buffer_gets_whole_characters_and_a_nul() {
        let mut out = [0xFFFFu16; 4];
        // SAFETY: 4 units.
        let code = unsafe { write_utf16("ab𝄞", out.as_mut_ptr(), 4) }.unwrap();
        assert_eq!(code, EagateResult::BufferTooSmall);
        assert_eq!(out, [u16::from(b'a'), u16::from(b'b'), 0, 0xFFFF]);
        let mut bytes = [0xFFu8; 4];
        // SAFETY: 4 bytes.
        let code = unsafe { write_utf8("a€", bytes.as_mut_ptr(), 4) }.unwrap();
        assert_eq!(code, EagateResult::BufferTooSmall);
        assert_eq!(bytes, [b'a', 0, 0xFF, 0xFF]);
    }

    #[test]
    fn null_unterminated_and_broken_input_is_refused_with_its_name() {
        // SAFETY: null is allowed.
        let error = unsafe { read_utf16(std::ptr::null(), "device id") }.unwrap_err();
        assert!(error.message.contains("device id"));
        let long = vec![u16::from(b'x'); MAX_TEXT_UNITS + 10];
        // SAFETY: readable up to the bound.
        let error = unsafe { read_utf16(long.as_ptr(), "server") }.unwrap_err();
        assert!(error.message.contains("NUL-terminated"));
        let lone_surrogate = [0xD800u16, 0];
        // SAFETY: NUL-terminated.
        let error = unsafe { read_utf16(lone_surrogate.as_ptr(), "secret") }.unwrap_err();
        assert!(error.message.contains("UTF-16"));
        let mut out = [0u16; 1];
        // SAFETY: 1 unit, but capacity 0 is refused first.
        let error = unsafe { write_utf16("x", out.as_mut_ptr(), 0) }.unwrap_err();
        assert_eq!(error.code, EagateResult::InvalidArgument);
    }
}
