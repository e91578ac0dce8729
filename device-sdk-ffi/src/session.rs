//! Sessions behind integer handles, one per EA, on one shared runtime.
//!
//! MetaTrader loads the DLL once per terminal and calls it from each EA's
//! own thread, on timers. So: handles are plain integers (never pointers an
//! EA could keep after closing), never reused within a process; every call
//! returns without waiting on the network (the sessions run on a small
//! tokio runtime in the background); the runtime starts with the first
//! session and stops with the last, and on Windows the DLL pins itself
//! once it has started threads, so no thread of ours can outlive its code.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eagate_sdk::protocol::{Decimal, Fill, Rejection, RejectionText, ReportOutcome, Reversal};
use eagate_sdk::{
    CertFingerprint, Client, ClientConfig, ClientState, ConnectError, Event, JournalError,
    ReportError, ServerTrust, StopReason,
};
use tokio::runtime::{Handle, Runtime};
use zeroize::Zeroizing;

use crate::boundary::{EagateResult, Failure, guard};
use crate::signal::{EAGATE_COMMENT_CAPACITY, EAGATE_SYMBOL_CAPACITY, EagateSignal, join_id};
use crate::text::{read_utf16, write_utf8, write_utf16};

/// Where a session stands, as `eagate_state` reports it. Values from 10 up
/// mean the session stopped for good: close the handle.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EagateState {
    /// Connecting and authenticating.
    Connecting = 1,
    /// Authenticated: signals arrive, reports are sent.
    Connected = 2,
    /// The last attempt failed or the connection was lost; the session
    /// tries again by itself (`eagate_state_text` says when and why).
    BackingOff = 3,
    /// Closed by the EA.
    Closed = 10,
    /// The platform revoked the device: it must never trade again.
    Revoked = 11,
    /// The gateway refused the device id or secret.
    CredentialsRefused = 12,
    /// The gateway does not speak this library's protocol version: update
    /// the DLL.
    UnsupportedVersion = 13,
    /// The server's certificate is not the pinned fingerprint: it may not
    /// be the gateway.
    CertificateRefused = 14,
    /// The same device connected from elsewhere (another chart, terminal or
    /// VPS with the same device id) and took over: this session stopped
    /// and does not reconnect by itself. Run the device in one place only.
    Replaced = 15,
    /// The device's secret was rotated on the platform: enter the new
    /// secret and start the EA again.
    SecretRotated = 16,
}

/// Worker threads for all sessions of a terminal: sessions are idle most of
/// the time, and a terminal shares its cores with the charts.
const WORKER_THREADS: usize = 2;

/// How long stopping the runtime after the last close may take, within the
/// 2.5 s MetaTrader gives `OnDeinit`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(200);

struct Library {
    runtime: Option<Runtime>,
    sessions: BTreeMap<i64, Arc<Session>>,
    /// Connects and closes using the runtime outside the lock: it must not
    /// stop under them.
    busy: usize,
    next_handle: i64,
}

static LIBRARY: Mutex<Library> = Mutex::new(Library {
    runtime: None,
    sessions: BTreeMap::new(),
    busy: 0,
    next_handle: 1,
});

fn library() -> MutexGuard<'static, Library> {
    // A panic caught at the boundary while holding it leaves the map intact.
    LIBRARY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Library {
    /// The runtime, started if need be, for a connect or close about to run
    /// outside the lock; it keeps running until the returned guard drops.
    fn start_busy(&mut self) -> Result<Busy, Failure> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("eagate")
                .enable_all()
                .build()
                .map_err(|e| {
                    Failure::new(
                        EagateResult::Internal,
                        format!("cannot start eagate's network threads: {e}"),
                    )
                })?;
            pin_library();
            self.runtime = Some(runtime);
        }
        self.busy += 1;
        let runtime = self.runtime.as_ref().expect("started above").handle();
        Ok(Busy {
            runtime: runtime.clone(),
        })
    }
}

/// A connect or close using the runtime outside the lock. Dropping it (also
/// when a bug unwinds through) stops the runtime if no session is left.
struct Busy {
    runtime: Handle,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut library = library();
        library.busy -= 1;
        if library.busy == 0 && library.sessions.is_empty() {
            let runtime = library.runtime.take();
            drop(library);
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            }
        }
    }
}

/// Keeps the DLL loaded until the process exits, once it has started
/// threads: a thread stuck in a blocking call the runtime's shutdown gave
/// up on (a slow DNS lookup) would crash the terminal if the DLL's code
/// were unmapped under it. Windows only; elsewhere nothing unloads us
/// behind our back (and no test here runs Windows).
#[cfg(windows)]
fn pin_library() {
    use std::ffi::c_void;
    // From the Windows SDK (libloaderapi.h).
    const GET_MODULE_HANDLE_EX_FLAG_PIN: u32 = 0x1;
    const GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS: u32 = 0x4;
    unsafe extern "system" {
        fn GetModuleHandleExW(flags: u32, name: *const u16, module: *mut *mut c_void) -> i32;
    }
    let mut module = std::ptr::null_mut();
    // SAFETY: with FROM_ADDRESS, `name` is an address inside this DLL (this
    // function's); `module` is a valid out pointer. A failure only leaves
    // the DLL unpinned, as before.
    unsafe {
        GetModuleHandleExW(
            GET_MODULE_HANDLE_EX_FLAG_PIN | GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS,
            pin_library as *const u16,
            &mut module,
        );
    }
}

#[cfg(not(windows))]
fn pin_library() {}

struct Session {
    server: String,
    client: Mutex<Option<Client>>,
    news: Mutex<News>,
}

/// What the session's events said, kept for the state text, and the
/// handle's last error.
#[derive(Default)]
struct News {
    /// Why the last connection or attempt failed; cleared on connecting.
    trouble: Option<String>,
    stopped: Option<StopReason>,
    last_error: String,
}

impl Session {
    fn client(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn news(&self) -> MutexGuard<'_, News> {
        self.news.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_news(&self, event: &Event) {
        let mut news = self.news();
        match event {
            Event::Connected { .. } => news.trouble = None,
            Event::Disconnected { reason, .. } => news.trouble = Some(reason.clone()),
            Event::Stopped(reason) => news.stopped = Some(reason.clone()),
            Event::Signal(_)
            | Event::ReportsConfirmed { .. }
            | Event::ClockCorrected { .. }
            | Event::ReportsRenumbered { .. } => {}
        }
    }
}

fn unknown_handle(handle: i64) -> Failure {
    Failure::new(
        EagateResult::UnknownHandle,
        format!("no session has handle {handle}: it was closed, or not returned by eagate_connect"),
    )
}

/// The session of `handle`.
fn session(handle: i64) -> Result<Arc<Session>, Failure> {
    library()
        .sessions
        .get(&handle)
        .cloned()
        .ok_or_else(|| unknown_handle(handle))
}

/// Runs `body` on the session of `handle`; its failure also becomes the
/// handle's last error.
fn on_session(
    handle: i64,
    body: impl FnOnce(&Session) -> Result<EagateResult, Failure>,
) -> Result<EagateResult, Failure> {
    let session = session(handle)?;
    let result = body(&session);
    if let Err(failure) = &result {
        session.news().last_error.clone_from(&failure.message);
    }
    result
}

/// Runs `body` with the session's client; a client being closed on another
/// thread counts as closed.
fn with_client(
    handle: i64,
    body: impl FnOnce(&Session, &mut Client) -> Result<EagateResult, Failure>,
) -> Result<EagateResult, Failure> {
    on_session(handle, |session| {
        let mut client = session.client();
        let client = client.as_mut().ok_or_else(|| unknown_handle(handle))?;
        body(session, client)
    })
}

/// Writes a plain value where an MQL struct or variable may sit at any
/// address (MQL packs on one byte).
///
/// # Safety
///
/// `out` must be null or point to `size_of::<T>()` writable bytes.
unsafe fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid(format!("{what} is missing (null)")));
    }
    // SAFETY: the caller promises room for a T; no alignment is assumed.
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// Starts a session for one device and returns its handle in `handle_out`
/// at once: the session connects in the background (watch
/// `eagate_state`), and keeps reconnecting until closed.
///
/// - `server`: the gateway's QUIC address, `host:port`.
/// - `device_id`, `secret`: as printed when the device was registered.
/// - `fingerprint`: the gateway's certificate fingerprint as `eagate serve`
///   prints it (`SHA256 AB:CD:…`; the prefix and colons are optional).
/// - `state_dir`: a directory that survives restarts (created if missing),
///   such as `MQL5\Files\eagate`, for the device's journal of unconfirmed
///   reports and positions. One directory can serve several EAs, each with
///   its own device.
///
/// Returns [`EagateResult::InvalidArgument`] for a malformed argument,
/// [`EagateResult::StateDirectory`] when the journal cannot be opened or
/// is held by another EA of the same device.
///
/// # Safety
///
/// The strings must be NUL-terminated UTF-16 (or null); `handle_out` must
/// point to 8 writable bytes (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_connect(
    server: *const u16,
    device_id: *const u16,
    secret: *const u16,
    fingerprint: *const u16,
    state_dir: *const u16,
    handle_out: *mut i64,
) -> EagateResult {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let server = unsafe { read_utf16(server, "server") }?;
        // SAFETY: as above.
        let device_id = unsafe { read_utf16(device_id, "device id") }?;
        // SAFETY: as above.
        let secret = Zeroizing::new(unsafe { read_utf16(secret, "secret") }?);
        // SAFETY: as above.
        let fingerprint = unsafe { read_utf16(fingerprint, "certificate fingerprint") }?;
        // SAFETY: as above.
        let state_dir = unsafe { read_utf16(state_dir, "state directory") }?;
        if handle_out.is_null() {
            return Err(Failure::invalid("the handle output is missing (null)"));
        }
        let server = server.trim().to_owned();
        if server.is_empty() || !server.contains(':') {
            return Err(Failure::invalid(format!(
                "server {server:?} is not host:port (the QUIC address eagate serve prints)"
            )));
        }
        if state_dir.trim().is_empty() {
            return Err(Failure::invalid("state directory is empty"));
        }
        let fingerprint: CertFingerprint = fingerprint.parse().map_err(|_| {
            Failure::invalid(
                "certificate fingerprint is not 32 hex bytes (copy the line \
                 `TLS fingerprint: SHA256 …` that eagate serve prints)",
            )
        })?;
        let config = ClientConfig::new(
            server.clone(),
            device_id.trim(),
            &secret,
            ServerTrust::Pinned(fingerprint),
            state_dir,
        )
        .map_err(|e| Failure::invalid(e.to_string()))?;
        let busy = library().start_busy()?;
        let connected = busy.runtime.block_on(Client::connect(config));
        let mut library = library();
        let handle = connected.map(|client| {
            let handle = library.next_handle;
            library.next_handle += 1;
            let session = Session {
                server,
                client: Mutex::new(Some(client)),
                news: Mutex::new(News::default()),
            };
            library.sessions.insert(handle, Arc::new(session));
            handle
        });
        drop(library);
        drop(busy);
        let handle = handle.map_err(|error| match error {
            ConnectError::Journal(JournalError::Locked(path)) => Failure::new(
                EagateResult::StateDirectory,
                format!(
                    "the journal {} is in use: another EA (or program) runs this device; \
                     give each EA a device of its own",
                    path.display()
                ),
            ),
            ConnectError::Journal(other) => {
                Failure::new(EagateResult::StateDirectory, other.to_string())
            }
            ConnectError::Tls(why) => Failure::new(
                EagateResult::Internal,
                format!("TLS configuration (please report): {why}"),
            ),
        })?;
        // SAFETY: checked non-null above; the caller promises 8 bytes.
        unsafe { write_out(handle_out, handle, "the handle output") }?;
        Ok(EagateResult::Ok)
    })
}

fn state_of(state: &ClientState) -> EagateState {
    match state {
        ClientState::Connecting => EagateState::Connecting,
        ClientState::Connected => EagateState::Connected,
        ClientState::BackingOff { .. } => EagateState::BackingOff,
        ClientState::Stopped(reason) => match reason {
            StopReason::Closed => EagateState::Closed,
            StopReason::Revoked => EagateState::Revoked,
            StopReason::CredentialsRefused => EagateState::CredentialsRefused,
            StopReason::UnsupportedVersion { .. } => EagateState::UnsupportedVersion,
            StopReason::Certificate(_) => EagateState::CertificateRefused,
            StopReason::Replaced => EagateState::Replaced,
            StopReason::SecretRotated => EagateState::SecretRotated,
        },
    }
}

/// Writes where the session of `handle` stands into `state_out`.
///
/// # Safety
///
/// `state_out` must point to 4 writable bytes (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_state(
    handle: i64,
    state_out: *mut EagateState,
) -> EagateResult {
    guard(|| {
        with_client(handle, |_, client| {
            let state = state_of(&client.state());
            // SAFETY: forwarded from this function's contract.
            unsafe { write_out(state_out, state, "the state output") }?;
            Ok(EagateResult::Ok)
        })
    })
}

/// Copies a sentence on where the session stands, for the EA's log and
/// chart comment: whom it is connected to, or why it is reconnecting and
/// when, or why it stopped and what to do. `capacity` in UTF-16 units.
///
/// # Safety
///
/// `buffer` must point to `capacity` writable 16-bit units (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_state_text(
    handle: i64,
    buffer: *mut u16,
    capacity: i32,
) -> EagateResult {
    guard(|| {
        with_client(handle, |session, client| {
            let text = describe(session, &client.state());
            // SAFETY: forwarded from this function's contract.
            unsafe { write_utf16(&text, buffer, capacity) }
        })
    })
}

fn describe(session: &Session, state: &ClientState) -> String {
    let news = session.news();
    let server = &session.server;
    match state {
        ClientState::Connecting => format!("connecting to {server}"),
        ClientState::Connected => format!("connected to {server}"),
        ClientState::BackingOff { retry_at } => {
            let wait = retry_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let seconds = wait.as_millis().div_ceil(1000);
            let trouble = news.trouble.as_deref().unwrap_or("the connection was lost");
            format!("{trouble}; trying {server} again in {seconds} s")
        }
        ClientState::Stopped(reason) => {
            let advice = match reason {
                StopReason::Revoked => {
                    "; this device may not trade again: register a new one on the platform"
                }
                StopReason::CredentialsRefused => {
                    "; check the device id and secret inputs (the secret is shown once, at \
                     registration)"
                }
                StopReason::UnsupportedVersion { .. } => "; install the DLL the gateway supports",
                StopReason::Certificate(_) => {
                    "; check the fingerprint input against the one eagate serve prints"
                }
                StopReason::Replaced => {
                    "; another chart, terminal or VPS uses this device id: run the EA in one \
                     place only, then restart it there"
                }
                StopReason::SecretRotated => {
                    "; enter the device's new secret in the EA's inputs and restart it"
                }
                StopReason::Closed => "",
            };
            format!("stopped: {reason}{advice}")
        }
    }
}

/// Takes the next signal if one is waiting, without waiting: call it on
/// every timer tick until it returns [`EagateResult::NoSignal`].
///
/// Fills `signal_out`, and copies the symbol and comment into `symbol`
/// ([`EAGATE_SYMBOL_CAPACITY`] units at least) and `comment`
/// ([`EAGATE_COMMENT_CAPACITY`] at least); smaller buffers are refused
/// before any signal is taken.
///
/// A signal is done once the EA reports on it or polls again: it is not
/// delivered again, even after a restart. A signal the EA has not finished
/// when the terminal dies comes again on the next run.
///
/// Returns [`EagateResult::Ok`] with a signal, [`EagateResult::NoSignal`],
/// or [`EagateResult::Stopped`] once the session has stopped for good and
/// every signal before the stop was taken.
///
/// # Safety
///
/// `signal_out` must point to a writable `EagateSignal` (any alignment);
/// `symbol` and `comment` to their capacities in writable 16-bit units.
/// Null pointers are refused.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_poll_signal(
    handle: i64,
    signal_out: *mut EagateSignal,
    symbol: *mut u16,
    symbol_capacity: i32,
    comment: *mut u16,
    comment_capacity: i32,
) -> EagateResult {
    guard(|| {
        with_client(handle, |session, client| {
            if signal_out.is_null() {
                return Err(Failure::invalid("the signal output is missing (null)"));
            }
            for (buffer, capacity, needed, what) in [
                (symbol, symbol_capacity, EAGATE_SYMBOL_CAPACITY, "symbol"),
                (
                    comment,
                    comment_capacity,
                    EAGATE_COMMENT_CAPACITY,
                    "comment",
                ),
            ] {
                if buffer.is_null() || capacity < needed {
                    return Err(Failure::invalid(format!(
                        "the {what} buffer must hold {needed} characters (has {capacity})"
                    )));
                }
            }
            while let Some(event) = client.try_next_event() {
                let Event::Signal(signal) = event else {
                    session.take_news(&event);
                    continue;
                };
                // SAFETY: checked non-null; the caller promises the struct.
                unsafe { write_out(signal_out, EagateSignal::from(&signal), "signal") }?;
                // SAFETY: capacities checked above to hold the longest texts.
                unsafe { write_utf16(signal.symbol.as_str(), symbol, symbol_capacity) }?;
                // SAFETY: as above.
                unsafe { write_utf16(signal.comment.as_str(), comment, comment_capacity) }?;
                return Ok(EagateResult::Ok);
            }
            match &session.news().stopped {
                Some(reason) => Err(Failure::new(
                    EagateResult::Stopped,
                    format!("the session stopped: {reason}"),
                )),
                None => Ok(EagateResult::NoSignal),
            }
        })
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Stores a report in the journal (returning once it is on disk) for the
/// session to deliver: exactly once, whatever happens to the terminal or
/// the network. `outcome` reads the call's arguments, so that a malformed
/// one is also the handle's last error.
fn report(
    handle: i64,
    hi: u64,
    lo: u64,
    outcome: impl FnOnce() -> Result<ReportOutcome, Failure>,
) -> Result<EagateResult, Failure> {
    with_client(handle, |_, client| {
        client
            .report_blocking(now_ms(), join_id(hi, lo), outcome()?)
            .map_err(|error| match error {
                ReportError::OutboxFull => {
                    Failure::new(EagateResult::OutboxFull, error.to_string())
                }
                ReportError::Journal(_) => {
                    Failure::new(EagateResult::StateDirectory, error.to_string())
                }
            })?;
        Ok(EagateResult::Ok)
    })
}

/// Reports that the EA has the signal and is acting on it.
///
/// Every report call (`eagate_report_received`, `eagate_report_filled`,
/// `eagate_report_rejected`, `eagate_report_reversed`) returns [`EagateResult::Ok`] once the report
/// is on disk in the device's journal, and the device delivers it exactly
/// once, by this session or a later one. The rule holds after the session
/// stopped for good too, whatever stopped it: the report is the terminal's
/// record of a trade, and waits in the journal for the device's next
/// session (once its secret or certificate is put right, or the EA runs
/// here again). A revoked device has no next session (revocation is
/// final): its reports stay in the journal as that record, unsent. Any
/// other result means nothing was stored: keep the report and hand it over
/// again.
#[unsafe(no_mangle)]
pub extern "system" fn eagate_report_received(
    handle: i64,
    signal_id_hi: u64,
    signal_id_lo: u64,
) -> EagateResult {
    guard(|| {
        report(handle, signal_id_hi, signal_id_lo, || {
            Ok(ReportOutcome::Received)
        })
    })
}

/// Reads a positive decimal such as `1.08525` (`DoubleToString(price,
/// _Digits)` in MQL).
///
/// # Safety
///
/// `text` must be NUL-terminated UTF-16 or null.
unsafe fn read_positive(text: *const u16, what: &str) -> Result<Decimal, Failure> {
    // SAFETY: forwarded from this function's contract.
    let text = unsafe { read_utf16(text, what) }?;
    let value: Decimal = text
        .trim()
        .parse()
        .map_err(|e| Failure::invalid(format!("{what} {text:?} {e}")))?;
    if !value.is_positive() {
        return Err(Failure::invalid(format!(
            "{what} {text:?} must be above zero"
        )));
    }
    Ok(value)
}

/// Reports an execution of the signal: the terminal's ticket (order or
/// deal), the price and the lots as decimal text (`"1.08525"`, `"0.10"`).
/// A partial fill is followed by more reports for the same signal.
///
/// # Safety
///
/// `price` and `volume` must be NUL-terminated UTF-16 (or null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_report_filled(
    handle: i64,
    signal_id_hi: u64,
    signal_id_lo: u64,
    ticket: u64,
    price: *const u16,
    volume: *const u16,
) -> EagateResult {
    guard(|| {
        report(handle, signal_id_hi, signal_id_lo, || {
            // SAFETY: forwarded from this function's contract.
            let price = unsafe { read_positive(price, "price") }?;
            // SAFETY: as above.
            let volume = unsafe { read_positive(volume, "volume") }?;
            Ok(ReportOutcome::Filled(Fill {
                ticket,
                price,
                volume,
            }))
        })
    })
}

/// Reports that the terminal or the broker refused the signal, with
/// MetaTrader's own error code (`GetLastError()` in MQL4, the trade
/// server's retcode in MQL5) and its description (cut to 128 bytes).
///
/// # Safety
///
/// `text` must be NUL-terminated UTF-16 (or null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_report_rejected(
    handle: i64,
    signal_id_hi: u64,
    signal_id_lo: u64,
    code: u32,
    text: *const u16,
) -> EagateResult {
    guard(|| {
        report(handle, signal_id_hi, signal_id_lo, || {
            // SAFETY: forwarded from this function's contract.
            let text = unsafe { read_utf16(text, "rejection text") }?;
            Ok(ReportOutcome::Rejected(Rejection {
                code,
                text: RejectionText::lossy(&text),
            }))
        })
    })
}

/// Reports that fills of the signal reported before, with `ticket`, were
/// undone: the broker cancelled the deal (MT5's history loses it, a
/// `TRADE_TRANSACTION_DEAL_DELETE` transaction), or the trade was busted.
/// Every earlier fill report of the signal with that ticket is reversed;
/// the platform takes back what they earned.
#[unsafe(no_mangle)]
pub extern "system" fn eagate_report_reversed(
    handle: i64,
    signal_id_hi: u64,
    signal_id_lo: u64,
    ticket: u64,
) -> EagateResult {
    guard(|| {
        report(handle, signal_id_hi, signal_id_lo, || {
            Ok(ReportOutcome::Reversed(Reversal { ticket }))
        })
    })
}

/// Closes the session: tells the gateway, and returns within about 1.7 s
/// whatever the network does (MetaTrader cuts `OnDeinit` off at 2.5 s).
/// Reports the gateway has not confirmed stay in the journal and are sent
/// by the next session of the device. The handle is invalid afterwards,
/// and the device's journal free for the next `eagate_connect`.
#[unsafe(no_mangle)]
pub extern "system" fn eagate_close(handle: i64) -> EagateResult {
    guard(|| {
        let (session, busy) = {
            let mut library = library();
            let session = library
                .sessions
                .remove(&handle)
                .ok_or_else(|| unknown_handle(handle))?;
            (session, library.start_busy()?)
        };
        let client = session.client().take();
        if let Some(client) = client {
            busy.runtime.block_on(client.close());
        }
        drop(busy);
        Ok(EagateResult::Ok)
    })
}

/// Copies the reason for the last failed call on `handle` (from any
/// thread) into `buffer`, `capacity` UTF-16 units with the NUL; empty if
/// none failed. [`EagateResult::UnknownHandle`] once the handle is closed:
/// use `eagate_last_error` for the close itself.
///
/// # Safety
///
/// `buffer` must point to `capacity` writable 16-bit units (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_handle_last_error(
    handle: i64,
    buffer: *mut u16,
    capacity: i32,
) -> EagateResult {
    let text = handle_last_error(handle);
    let written = text.and_then(|text| {
        // SAFETY: forwarded from this function's contract.
        unsafe { write_utf16(&text, buffer, capacity) }
    });
    written.unwrap_or_else(|failure| failure.code)
}

/// [`eagate_handle_last_error`] in UTF-8, `capacity` bytes with the NUL.
///
/// # Safety
///
/// `buffer` must point to `capacity` writable bytes (or be null).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn eagate_handle_last_error_utf8(
    handle: i64,
    buffer: *mut u8,
    capacity: i32,
) -> EagateResult {
    let text = handle_last_error(handle);
    let written = text.and_then(|text| {
        // SAFETY: forwarded from this function's contract.
        unsafe { write_utf8(&text, buffer, capacity) }
    });
    written.unwrap_or_else(|failure| failure.code)
}

/// Read without `guard` or `on_session`: reading an error must not
/// replace one.
fn handle_last_error(handle: i64) -> Result<String, Failure> {
    let session = session(handle)?;
    let text = session.news().last_error.clone();
    Ok(text)
}
