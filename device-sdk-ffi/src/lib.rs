//! The C library (`eagate.dll` / `libeagate.so`) that MetaTrader 4/5 Expert
//! Advisors import, built over the device SDK.
//!
//! Conventions of every export, chosen for MQL:
//! - `extern "system"`: stdcall on 32-bit Windows (MT4), the C convention
//!   everywhere else (MT5 is 64-bit).
//! - Strings in are NUL-terminated UTF-16 (what MQL passes for `string`),
//!   read during the call and never kept.
//! - Strings out go into a buffer the caller reserved, with its length in
//!   16-bit units (or bytes, for the `_utf8` variants), always
//!   NUL-terminated, truncated if too small (and the call says so).
//! - Every call returns an [`EagateResult`]; on failure,
//!   [`eagate_last_error`] copies the reason. No call panics across the
//!   boundary: a bug inside is caught and reported as
//!   [`EagateResult::Internal`].
//!
//! An EA starts a session with `eagate_connect`, which returns an integer
//! handle at once; the session runs on the library's own threads. On its
//! timer the EA polls `eagate_poll_signal` and reports with
//! `eagate_report_received` / `_filled` / `_rejected` (each returns once the
//! report is on disk); `eagate_close` ends it within MetaTrader's 2.5 s.
//! No call waits on the network. `docs/metatrader.md` has the whole story,
//! `mql/` the MQL side.
//!
//! The header `include/eagate.h` is generated from this crate by cbindgen;
//! a test fails when it is out of date.

mod boundary;
mod diagnostics;
mod session;
mod signal;
mod text;

pub use boundary::{EagateResult, eagate_last_error, eagate_last_error_utf8};
pub use diagnostics::{eagate_auth_mac, eagate_version};
pub use session::{
    EagateState, eagate_close, eagate_connect, eagate_handle_last_error,
    eagate_handle_last_error_utf8, eagate_poll_signal, eagate_report_filled,
    eagate_report_received, eagate_report_rejected, eagate_report_reversed, eagate_state,
    eagate_state_text,
};
pub use signal::{
    EAGATE_COMMENT_CAPACITY, EAGATE_SYMBOL_CAPACITY, EagateAction, EagateOrderType, EagateSignal,
};
