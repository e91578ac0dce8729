//! The device routes over HTTPS: open a session, long-poll for signals,
//! send reports. Each request arrives checked (`super::signing`), and runs
//! the core's [`DeviceSession`] under the session's epoch for as long as it
//! lasts (`crate::core::signed_requests`), so signals and reports follow the
//! QUIC session's rules exactly.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/device/session` | opens a session: its token, the confirmed report sequence, the channels' heads, the gateway's time |
//! | `GET /v1/device/session?session=S` | the same state, for session `S` |
//! | `GET /v1/device/signals?session=S&after=gold:12,silver:3&wait=20` | the signals after those positions, at once, or when one is published within `wait` seconds |
//! | `POST /v1/device/reports?session=S` | stores `{"reports":[…]}`, answers `{"confirmed_up_to":N}` once durable |
//!
//! Every answer is JSON (errors: RFC 9457 problem details), and signed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use eagate_protocol::{
    ChannelName, Decimal, Fill, MAX_RESUME_POINTS, RejectionText, Report, ReportOutcome,
    ResumePoint, Reversal, Signal, SignalId,
};
use serde::{Deserialize, Serialize};

use super::signing::{DeviceProblem, SignedBy};
use crate::clock::unix_ms;
use crate::core::signed_requests::RejoinDenial;
use crate::core::{Close, Core, DeviceSession, Next, StoreAway};
use crate::reports::SessionEpoch;

/// How long a long-poll waits for a signal when the request names no
/// `wait`: short enough that an EA's timer handler, which `WebRequest`
/// blocks meanwhile, comes back to its chart and its report queue often.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(10);

/// The longest `wait` a long-poll may ask for: below the 60 s an EA's
/// `WebRequest` timeout and most proxies allow an idle request.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// The least a poll waits, `wait=0` included: time for the session's
/// channel followers to read the log, so a device behind the head gets
/// its signals rather than an empty answer.
const MIN_POLL_WAIT: Duration = Duration::from_millis(250);

/// The most signals one poll answers with; the rest come with the next.
pub const MAX_SIGNALS_PER_POLL: usize = 100;

/// After a signal, how long a poll waits for the next before it answers:
/// signals published together (a basket) arrive in one answer.
const POLL_LINGER: Duration = Duration::from_millis(2);

/// The most reports one request may carry: as many as a session holds on
/// their way to disk.
pub const MAX_REPORTS_PER_REQUEST: usize = crate::core::device_session::REPORTS_IN_FLIGHT;

/// How long a report request waits for its reports to be durable (a store
/// that is away included) before it answers 503: the device keeps them and
/// sends them again.
const REPORTS_DURABLE_WAIT: Duration = Duration::from_secs(10);

/// The device routes, behind the signature check.
pub fn router(core: Arc<Core>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/device/session",
            axum::routing::post(open_session).get(session_state),
        )
        .route("/v1/device/signals", axum::routing::get(poll_signals))
        .route("/v1/device/reports", axum::routing::post(take_reports))
        .fallback(|| async {
            DeviceProblem::new(StatusCode::NOT_FOUND, "no such device route").answer()
        })
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            super::signing::check_and_sign,
        ))
        .with_state(core)
}

/// A device's session, as it is told on opening and on asking.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionState {
    /// The session's token, to name in every later request
    /// (`?session=…`).
    pub session: String,
    /// The device's reports are stored up to and including this sequence.
    pub confirmed_up_to: u64,
    /// The gateway's clock, Unix milliseconds: an EA corrects its own by it.
    pub gateway_time_ms: u64,
    /// Each channel the device follows, and the position of its newest
    /// signal.
    pub heads: BTreeMap<String, u64>,
    /// The `wait` a poll gets when it names none, in seconds.
    pub default_wait_secs: u64,
    /// The longest `wait` a poll may name, in seconds.
    pub max_wait_secs: u64,
}

/// A poll's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Polled {
    /// The signals, in each channel's order.
    pub signals: Vec<Signal>,
    /// For each channel the device follows, the position to name in the
    /// next poll's `after`: its last signal here, else where it was.
    pub positions: BTreeMap<String, u64>,
}

/// A report request's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Confirmed {
    /// Every report of the device up to and including this sequence is
    /// stored, durably.
    pub confirmed_up_to: u64,
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    session: String,
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    session: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    wait: Option<u64>,
}

/// A report as a device sends it in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportIn {
    seq: u64,
    signal_id: String,
    kind: String,
    /// When it happened on the device (fills: the trade server's time),
    /// Unix ms; the same in every resend.
    #[serde(default)]
    at_ms: u64,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    price: Option<String>,
    #[serde(default)]
    volume: Option<String>,
    #[serde(default)]
    error_code: Option<u32>,
    #[serde(default)]
    error_text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportsIn {
    reports: Vec<ReportIn>,
}

fn unprocessable(title: impl Into<String>) -> Response {
    DeviceProblem::new(StatusCode::UNPROCESSABLE_ENTITY, title).answer()
}

/// How a session that ended mid-request is answered.
fn ended(close: Close) -> Response {
    let (status, title) = match close {
        Close::Replaced => (StatusCode::GONE, "session replaced by a newer one".into()),
        Close::Revoked => (StatusCode::GONE, "the device is revoked".into()),
        Close::SecretRotated => (StatusCode::GONE, "the device's secret was replaced".into()),
        Close::ReportConflict { seq } => (
            StatusCode::CONFLICT,
            format!("report {seq} differs from the one stored"),
        ),
        Close::ProtocolViolation => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "a report breaks the protocol (sequence 0, too far ahead of the confirmed ones, or a signal of a channel the device never followed)".into(),
        ),
        _ => {
            let mut answer = DeviceProblem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway cannot take this now; try again",
            )
            .answer();
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return answer;
        }
    };
    DeviceProblem::new(status, title).answer()
}

fn json<T: Serialize>(value: &T) -> Response {
    Json(value).into_response()
}

async fn open_session(
    State(core): State<Arc<Core>>,
    Extension(by): Extension<SignedBy>,
) -> Response {
    match core.open_request_session(by.device_id.as_str()).await {
        Ok((epoch, confirmed)) => state_of(&core, &by, epoch, confirmed).await,
        Err(_) => ended(Close::StoreUnavailable),
    }
}

/// The answer to a request naming a session the gateway never gave.
fn no_such_session() -> Response {
    DeviceProblem::new(StatusCode::GONE, "no such session; open a new one").answer()
}

/// The answer to a request whose session could not be rejoined.
fn not_rejoined(denial: RejoinDenial) -> Response {
    match denial {
        RejoinDenial::Ended(close) => ended(close),
        RejoinDenial::UnknownSession => no_such_session(),
    }
}

/// A store call of `by`'s request, `what` it is, under the core's deadline
/// ([`Core::in_time`]); a store away ends the request as it ends a session.
async fn in_time<T, E: std::fmt::Display>(
    core: &Core,
    by: &SignedBy,
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Close> {
    core.in_time(by.device_id.as_str(), what, call)
        .await
        .map_err(|StoreAway| Close::StoreUnavailable)
}

/// Runs `work` to its end in a task of its own: a device that hangs up
/// mid-request (its `WebRequest` timed out) does not cut a session short
/// between its start and its finish, which keep the connection count and
/// the deployment's presence records.
async fn to_the_end(
    work: impl std::future::Future<Output = Response> + Send + 'static,
) -> Response {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|_| ended(Close::StoreUnavailable))
}

async fn session_state(
    State(core): State<Arc<Core>>,
    Extension(by): Extension<SignedBy>,
    query: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return unprocessable("name the session: ?session=…");
    };
    let Some(epoch) = core.session_of_token(by.device_id.as_str(), &query.session) else {
        return no_such_session();
    };
    to_the_end(async move {
        let session = match core
            .rejoin(by.device_id.clone(), epoch, heapless::Vec::new())
            .await
        {
            Ok(session) => session,
            Err(denial) => return not_rejoined(denial),
        };
        let answer = match in_time(
            &core,
            &by,
            "reading the confirmed report sequence",
            core.reports.confirmed_up_to(by.device_id.as_str()),
        )
        .await
        {
            Ok(confirmed) => state_of(&core, &by, epoch, confirmed).await,
            Err(close) => ended(close),
        };
        session.finish().await;
        answer
    })
    .await
}

async fn state_of(core: &Core, by: &SignedBy, epoch: SessionEpoch, confirmed: u64) -> Response {
    let channels = match in_time(
        core,
        by,
        "reading the device's channels",
        core.registry.get(by.device_id.as_str()),
    )
    .await
    {
        Ok(Some(record)) => record.channels,
        Ok(None) => Vec::new(),
        Err(close) => return ended(close),
    };
    let mut heads = BTreeMap::new();
    for name in channels {
        let Ok(channel) = ChannelName::new(&name) else {
            continue;
        };
        match in_time(
            core,
            by,
            "reading a channel's head",
            core.signals.head(&channel),
        )
        .await
        {
            Ok(head) => {
                heads.insert(name, head);
            }
            Err(close) => return ended(close),
        }
    }
    json(&SessionState {
        session: core.session_token(by.device_id.as_str(), epoch),
        confirmed_up_to: confirmed,
        gateway_time_ms: unix_ms(),
        heads,
        default_wait_secs: DEFAULT_POLL_WAIT.as_secs(),
        max_wait_secs: MAX_POLL_WAIT.as_secs(),
    })
}

/// Reads `after`: `channel:position` pairs separated by commas.
fn resume_points(
    after: Option<&str>,
) -> Result<heapless::Vec<ResumePoint, MAX_RESUME_POINTS>, String> {
    let mut points = heapless::Vec::new();
    let Some(after) = after.filter(|after| !after.is_empty()) else {
        return Ok(points);
    };
    for pair in after.split(',') {
        let (channel, position) = pair
            .split_once(':')
            .ok_or_else(|| format!("`after` takes channel:position pairs, not {pair:?}"))?;
        let channel = ChannelName::new(channel)
            .map_err(|e| format!("`after` names no valid channel in {pair:?}: {e}"))?;
        let position = eagate_protocol::http_signing::parse_timestamp(position)
            .ok_or_else(|| format!("`after` needs a position (a whole number) in {pair:?}"))?;
        if points
            .iter()
            .any(|point: &ResumePoint| point.channel == channel)
        {
            return Err(format!("`after` names channel {channel} twice"));
        }
        points
            .push(ResumePoint { channel, position })
            .map_err(|_| format!("`after` names at most {MAX_RESUME_POINTS} channels"))?;
    }
    Ok(points)
}

async fn poll_signals(
    State(core): State<Arc<Core>>,
    Extension(by): Extension<SignedBy>,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return unprocessable(
            "a poll takes ?session=…, and may take after=channel:position,… and wait=seconds",
        );
    };
    let resume = match resume_points(query.after.as_deref()) {
        Ok(resume) => resume,
        Err(why) => return unprocessable(why),
    };
    let wait = match query.wait {
        None => DEFAULT_POLL_WAIT,
        Some(secs) if secs <= MAX_POLL_WAIT.as_secs() => Duration::from_secs(secs),
        Some(_) => {
            return unprocessable(format!(
                "`wait` is at most {} seconds",
                MAX_POLL_WAIT.as_secs()
            ));
        }
    };
    let Some(epoch) = core.session_of_token(by.device_id.as_str(), &query.session) else {
        return no_such_session();
    };
    // Held by this handler: dropped when the device hangs up (hyper drops
    // the handler), which ends the poll at once rather than at its wait.
    let (_listening, hung_up) = tokio::sync::oneshot::channel::<()>();
    to_the_end(async move {
        let mut session = match core.rejoin(by.device_id, epoch, resume).await {
            Ok(session) => session,
            Err(denial) => return not_rejoined(denial),
        };
        if let Err(close) = session.start().await {
            session.finish().await;
            return ended(close);
        }
        let (polled, ending) = poll(&mut session, wait.max(MIN_POLL_WAIT), hung_up).await;
        session.stop();
        session.finish().await;
        match ending {
            // Signals taken before the end go out: the device learns of the
            // end at its next request.
            Some(close) if polled.signals.is_empty() => ended(close),
            _ => json(&polled),
        }
    })
    .await
}

/// Takes the signals the session has for the device now, or waits up to
/// `wait` for the first, or until the device hangs up (`hung_up`
/// resolves); and how the session ended, if it did.
async fn poll(
    session: &mut DeviceSession<'_>,
    wait: Duration,
    mut hung_up: tokio::sync::oneshot::Receiver<()>,
) -> (Polled, Option<Close>) {
    let mut positions: BTreeMap<String, u64> = session
        .following()
        .map(|(channel, after)| (channel.to_string(), after))
        .collect();
    let mut signals = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let ending = loop {
        let until = if signals.is_empty() {
            deadline
        } else {
            (tokio::time::Instant::now() + POLL_LINGER).min(deadline)
        };
        match tokio::time::timeout_at(until, session.next(&mut hung_up)).await {
            Err(_waited) => break None,
            // Nobody to answer: what was taken goes nowhere, and the device
            // resumes from its own positions next time.
            Ok(Next::Device(_)) => break None,
            Ok(Next::Signal(signal)) => {
                session.sent(&signal);
                // Seeded with every followed channel: a lookup, no key made.
                match positions.get_mut(signal.channel.as_str()) {
                    Some(position) => *position = signal.position,
                    None => {
                        positions.insert(signal.channel.to_string(), signal.position);
                    }
                }
                signals.push(Signal::clone(&signal));
                if signals.len() >= MAX_SIGNALS_PER_POLL {
                    break None;
                }
            }
            Ok(Next::End(close)) => break Some(close),
            // No reports are taken here.
            Ok(Next::Confirm(_)) => {}
        }
    };
    (Polled { signals, positions }, ending)
}

/// A device's JSON report, read into the protocol's: exact decimals, a
/// numeric ticket, bounded text.
fn report_of(report: ReportIn) -> Result<Report, String> {
    let seq = report.seq;
    let signal_id: SignalId = report
        .signal_id
        .parse()
        .map_err(|_| format!("report {seq}: signal_id is 32 hex digits"))?;
    let ticket = |what: &str| {
        report
            .ticket
            .as_deref()
            .and_then(eagate_protocol::http_signing::parse_timestamp)
            .ok_or_else(|| {
                format!("report {seq}: {what} needs its ticket, a whole number in a string")
            })
    };
    let outcome = match report.kind.as_str() {
        "received" => ReportOutcome::Received,
        "filled" => {
            let decimal = |name: &str, value: Option<String>| -> Result<Decimal, String> {
                value
                    .ok_or_else(|| format!("report {seq}: a fill needs {name}"))?
                    .parse()
                    .map_err(|e| format!("report {seq}: {name}: {e}"))
            };
            ReportOutcome::Filled(Fill {
                ticket: ticket("a fill")?,
                price: decimal("price", report.price)?,
                volume: decimal("volume", report.volume)?,
            })
        }
        "reversed" => ReportOutcome::Reversed(Reversal {
            ticket: ticket("a reversal")?,
        }),
        "rejected" => ReportOutcome::Rejected(eagate_protocol::Rejection {
            code: report
                .error_code
                .ok_or_else(|| format!("report {seq}: a rejection needs error_code"))?,
            // As over QUIC: a terminal's text is information; a long one
            // is cut, never a reason to refuse the report (the device
            // would resend it, refused, for ever).
            text: RejectionText::lossy(report.error_text.as_deref().unwrap_or("")),
        }),
        other => {
            return Err(format!(
                "report {seq}: kind is received, filled, rejected or reversed, not {other:?}"
            ));
        }
    };
    Ok(Report {
        seq,
        signal_id,
        at_ms: report.at_ms,
        outcome,
    })
}

async fn take_reports(
    State(core): State<Arc<Core>>,
    Extension(by): Extension<SignedBy>,
    query: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return unprocessable("name the session: ?session=…");
    };
    let reports: ReportsIn = match serde_json::from_slice(&body) {
        Ok(reports) => reports,
        Err(e) => return unprocessable(format!("the body is {{\"reports\":[…]}}: {e}")),
    };
    if reports.reports.len() > MAX_REPORTS_PER_REQUEST {
        return unprocessable(format!(
            "at most {MAX_REPORTS_PER_REQUEST} reports per request"
        ));
    }
    let reports = match reports
        .reports
        .into_iter()
        .map(report_of)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(reports) => reports,
        Err(why) => return unprocessable(why),
    };
    let Some(epoch) = core.session_of_token(by.device_id.as_str(), &query.session) else {
        return no_such_session();
    };
    to_the_end(async move {
        let mut session = match core
            .rejoin(by.device_id.clone(), epoch, heapless::Vec::new())
            .await
        {
            Ok(session) => session,
            Err(denial) => return not_rejoined(denial),
        };
        let answer = if reports.is_empty() {
            // Nothing to store: where the device's reports stand.
            in_time(
                &core,
                &by,
                "reading the confirmed report sequence",
                core.reports.confirmed_up_to(by.device_id.as_str()),
            )
            .await
        } else {
            store_reports(&mut session, reports).await
        };
        session.finish().await;
        match answer {
            Ok(confirmed_up_to) => json(&Confirmed { confirmed_up_to }),
            Err(close) => ended(close),
        }
    })
    .await
}

/// Writes `reports` through the session and waits until every one is
/// durable: the highest sequence confirmed.
async fn store_reports(
    session: &mut DeviceSession<'_>,
    reports: Vec<Report>,
) -> Result<u64, Close> {
    session.reports(reports).await?;
    let deadline = tokio::time::Instant::now() + REPORTS_DURABLE_WAIT;
    let mut confirmed = 0;
    while !session.settled() {
        match tokio::time::timeout_at(deadline, session.next(std::future::pending::<()>())).await {
            Ok(Next::Confirm(up_to)) => confirmed = confirmed.max(up_to),
            Ok(Next::End(close)) => return Err(close),
            Ok(Next::Signal(_) | Next::Device(())) => {}
            // The store is away, or slow: the device keeps its reports and
            // sends them again; any already stored are found so.
            Err(_waited) => return Err(Close::StoreUnavailable),
        }
    }
    Ok(confirmed)
}
