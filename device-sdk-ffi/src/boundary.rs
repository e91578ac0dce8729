//! The panic boundary every export runs inside, its result codes, and the
//! last error text of each thread.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::text::{write_utf8, write_utf16};

/// What a call did. Zero is success, positive values are normal outcomes
/// that are not success (no signal waiting), negative values are failures
/// whose reason [`eagate_last_error`] (and, for a call on a handle,
/// `eagate_handle_last_error`) copies out.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EagateResult {
    /// Done.
    Ok = 0,
    /// No signal is waiting; poll again on the next timer tick.
    NoSignal = 1,
    /// An argument is missing (null), malformed or out of range.
    InvalidArgument = -1,
    /// The output buffer is too small; it holds as much as fits.
    BufferTooSmall = -2,
    /// No session has this handle: it was closed, or never returned by
    /// `eagate_connect`.
    UnknownHandle = -3,
    /// The state directory cannot be used: it cannot be created, read or
    /// written (disk full, permissions), or another EA or program in use
    /// of the same device holds its journal. Nothing was stored.
    StateDirectory = -4,
    /// Too many reports wait for the gateway's confirmation; nothing was
    /// stored. Report again once the session is connected.
    OutboxFull = -5,
    /// The session stopped for good (revoked, replaced, credentials or
    /// certificate refused): `eagate_poll_signal` has no more signals, and
    /// `eagate_state` says why. Close the handle. (Reports made after the
    /// stop are still stored: see `eagate_report_received`.)
    Stopped = -6,
    /// A bug in eagate was caught at the boundary; the call did nothing
    /// further. Please report it with the last error text.
    Internal = -99,
}

/// Why a call failed, with a message for the person reading the EA's log.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: EagateResult,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: EagateResult, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(EagateResult::InvalidArgument, message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(message: &str) {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        last.push_str(message);
    });
}

/// Runs an export's body: its failure becomes a code and this thread's
/// last error, and a panic becomes [`EagateResult::Internal`] instead of
/// unwinding into MetaTrader (which would take the terminal down).
pub(crate) fn guard(body: impl FnOnce() -> Result<EagateResult, Failure>) -> EagateResult {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(code)) => code,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last_error(&format!("internal error in eagate (please report): {what}"));
            EagateResult::Internal
        }
    }
}

/// Copies the reason for the last failure on the calling thread into
/// `buffer` (`capacity` UTF-16 units, NUL included). An empty text if
/// nothing failed yet on this thread.
///
/// Returns [`EagateResult::Ok`], or [`EagateResult::BufferTooSmall`] with
/// the text cut to fit, or [`EagateResult::InvalidArgument`] for a null
/// buffer or a capacity below 1.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable 16-bit units.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_last_error(buffer: *mut u16, capacity: i32) -> EagateResult {
    // Not through `guard`: reading the last error must not replace it.
    let text = LAST_ERROR.with(|last| last.borrow().clone());
    // SAFETY: the caller promises `buffer` holds `capacity` units.
    match unsafe { write_utf16(&text, buffer, capacity) } {
        Ok(code) => code,
        Err(failure) => failure.code,
    }
}

/// [`eagate_last_error`] in UTF-8, `capacity` bytes with the NUL.
///
/// # Safety
///
/// `buffer` must be null or point to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_last_error_utf8(
    buffer: *mut u8,
    capacity: i32,
) -> EagateResult {
    let text = LAST_ERROR.with(|last| last.borrow().clone());
    // SAFETY: the caller promises `buffer` holds `capacity` bytes.
    match unsafe { write_utf8(&text, buffer, capacity) } {
        Ok(code) => code,
        Err(failure) => failure.code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let mut buffer = [0u16; 256];
        // SAFETY: the buffer holds 256 units.
        let code = unsafe { eagate_last_error(buffer.as_mut_ptr(), 256) };
        assert_eq!(code, EagateResult::Ok);
        let len = buffer.iter().position(|&u| u == 0).unwrap();
        String::from_utf16(&buffer[..len]).unwrap()
    }

    #[test]
    fn a_panic_inside_becomes_an_internal_error_with_its_text() {
        let code = guard(|| panic!("kaboom"));
        assert_eq!(code, EagateResult::Internal);
        assert!(last_error().contains("kaboom"), "{}", last_error());
    }

    #[test]
    fn a_failure_sets_this_threads_last_error_only() {
        let code = guard(|| Err(Failure::invalid("device id is null")));
        assert_eq!(code, EagateResult::InvalidArgument);
        assert_eq!(last_error(), "device id is null");
        std::thread::spawn(|| assert_eq!(last_error(), ""))
            .join()
            .unwrap();
    }
}
