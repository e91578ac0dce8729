//! One QUIC connection's device session: a thin IO loop around the core.
//! It reads the device's first frame within the authentication deadline,
//! computes the connection's channel binding and asks the core to admit the
//! claim; then it writes the signals the core hands it, passes on the
//! device's reports and writes their confirmations, answers pings, applies
//! the liveness rule, and closes the connection with the code of however
//! the session ended.

use std::time::Duration;

use eagate_protocol::{
    CHANNEL_BINDING_LABEL, DeviceMessage, GatewayMessage, Ping, Pong, Refusal, ReportsConfirmed,
};
use tracing::{debug, info, warn};

use super::close_code_of;
use super::wire::{DeviceStream, FrameReader, QUEUE_LIMIT, WireError, signal_frame};
use crate::core::checks::FailureReason;
use crate::core::{Close, Core, Denial, DeviceSession, Next};

/// How a connection ends: what the device is told on its stream, when it
/// can be, and how it closes.
#[derive(Debug)]
enum Ending {
    /// Tell the device this, then close (boxed: a session ends once).
    Tell(Box<GatewayMessage>, Close),
    /// Close, saying nothing on the stream (there is none, or it cannot be
    /// written, or the ending has no last word).
    Silent(Close),
    /// The connection is already gone.
    Gone,
}

impl Ending {
    /// The ending of a session the core ends (or a device that left): its
    /// last word, if it has one.
    fn of(close: Close) -> Self {
        match close.last_word() {
            Some(word) => Self::Tell(Box::new(word), close),
            None => Self::Silent(close),
        }
    }

    fn denied(denial: Denial) -> Self {
        match denial {
            Denial::Refused(refusal) => Self::Tell(
                Box::new(GatewayMessage::AuthRefused(refusal)),
                denial.close(),
            ),
            Denial::StoreUnavailable => Self::of(Close::StoreUnavailable),
        }
    }

    /// How a failure of the stream ends the connection.
    fn of_wire(error: &WireError) -> Self {
        match error {
            _ if error.is_protocol_violation() => Self::of(Close::ProtocolViolation),
            WireError::WriteTimeout => Self::Silent(Close::SlowReader),
            _ => Self::Gone,
        }
    }

    /// Carries it out: the message (if the stream can take it), the end of
    /// the stream, a moment for both to reach the device (closing at once
    /// would discard unsent stream data), then the close.
    async fn carry_out(
        self,
        connection: &quinn::Connection,
        stream: Option<&mut DeviceStream>,
        core: &Core,
    ) {
        let close = match self {
            Self::Gone => return,
            Self::Silent(close) => close,
            Self::Tell(word, close) => {
                if let Some(stream) = stream
                    && stream.write(*word).await.is_ok()
                {
                    let _ = stream.send.finish();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.send.stopped()).await;
                }
                close
            }
        };
        core.metrics.session_ended(close);
        connection.close(close_code_of(close).into(), close.name().as_bytes());
    }
}

/// Runs the session of one connection until it ends.
pub(super) async fn run(connection: quinn::Connection, core: &Core, waiting: super::Waiting) {
    let remote = connection.remote_address();
    let mut opened = None;
    // Every step is boxed: held inline, each would make this future (which
    // every session holds for its whole life) as large as the largest step's
    // state, and the compiler laid them out to 48 KB; boxed, a session holds
    // the task's 5 KB and the streaming's 6 KB while it waits.
    let admitted = Box::pin(admit(&connection, core, &mut opened)).await;
    // Authenticated or not, it waits no more.
    drop(waiting);
    let (mut session, mut reader) = match admitted {
        Ok(admitted) => admitted,
        Err(ending) => {
            Box::pin(ending.carry_out(&connection, opened.as_mut(), core)).await;
            return;
        }
    };
    let mut stream = opened.take().expect("an admitted session's stream is open");
    info!(
        %remote,
        device = %session.device_id(),
        epoch = session.epoch().0,
        version = stream.version,
        "device authenticated"
    );
    let ending = match Box::pin(session.start()).await {
        Ok(()) => {
            Box::pin(stream_and_ingest(
                &mut session,
                &mut stream,
                &mut reader,
                core,
            ))
            .await
        }
        Err(close) => Ending::of(close),
    };
    session.stop();
    let device = session.device_id().clone();
    match &ending {
        Ending::Tell(word, close) => info!(%device, ?word, reason = close.name(), "ending session"),
        Ending::Silent(close) => info!(%device, reason = close.name(), "closing session"),
        Ending::Gone => debug!(%device, "session ended"),
    }
    Box::pin(ending.carry_out(&connection, Some(&mut stream), core)).await;
    // Only now, with the connection closed: a newer session of the device
    // waits for this before it is accepted.
    Box::pin(session.finish()).await;
}

/// Reads the device's claim within the authentication deadline and has the
/// core admit it. On success the device has been told `AuthAccepted`;
/// otherwise the ending says what to tell it. The stream, once the device
/// opened it, is left in `opened`.
async fn admit<'a>(
    connection: &quinn::Connection,
    core: &'a Core,
    opened: &mut Option<DeviceStream>,
) -> Result<(DeviceSession<'a>, FrameReader), Ending> {
    let deadline = tokio::time::Instant::now() + core.auth_deadline;
    let timed_out = || {
        debug!(remote = %connection.remote_address(), "authentication deadline");
        core.metrics.auth_failure(FailureReason::Timeout);
    };
    let (send, recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(halves)) => halves,
        Ok(Err(_lost)) => return Err(Ending::Gone),
        Err(_elapsed) => {
            timed_out();
            return Err(Ending::Silent(Close::AuthTimeout));
        }
    };
    let stream = opened.insert(DeviceStream::new(send));
    let mut reader = FrameReader::new(recv);
    let malformed = |why: &dyn std::fmt::Display| {
        debug!(remote = %connection.remote_address(), error = %why, "closing before authentication");
        core.metrics.auth_failure(FailureReason::Malformed);
        Ending::of(Close::ProtocolViolation)
    };
    let claim = match tokio::time::timeout_at(deadline, reader.next::<DeviceMessage>()).await {
        Err(_elapsed) => {
            timed_out();
            return Err(Ending::of(Close::AuthTimeout));
        }
        Ok(Ok(DeviceMessage::Authenticate(claim))) => claim,
        Ok(Ok(_)) => return Err(malformed(&"the first message was not Authenticate")),
        // Opened its stream and finished it without a word: as broken as a
        // cut-off frame.
        Ok(Err(WireError::Ended)) => return Err(malformed(&WireError::Truncated)),
        Ok(Err(e)) if e.is_protocol_violation() => return Err(malformed(&e)),
        Ok(Err(_lost)) => return Err(Ending::Gone),
    };
    let mut binding = [0u8; 32];
    if connection
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, b"")
        .is_err()
    {
        // Cannot happen with TLS 1.3; without a binding nothing can be checked.
        return Err(Ending::denied(Denial::Refused(Refusal::Failed)));
    }
    let version = claim.protocol_version;
    let admitted = core
        .admit(claim, &binding, connection.remote_address().ip())
        .await
        .map_err(Ending::denied)?;
    stream.version = version;
    if stream
        .write(GatewayMessage::AuthAccepted(admitted.accepted))
        .await
        .is_err()
    {
        admitted.session.finish().await;
        return Err(Ending::Gone);
    }
    Ok((admitted.session, reader))
}

/// What the session's wait for the device ended with. (Its size is the
/// device message's, as the `Option` it replaces was: moved once per
/// message and never held, where boxing would allocate per message.)
#[allow(clippy::large_enum_variant)]
enum Heard {
    /// A message, or why none could be read (or written).
    Message(Result<DeviceMessage, WireError>),
    /// Nothing for the idle timeout.
    Silence,
    /// The queue for the device has room again: signals may flow.
    Room,
    /// Time to see whether the gateway has said anything lately.
    QuietCheck,
}

/// The most reports written as one run.
const REPORT_RUN: usize = 64;

/// After admission: writes what the core hands out (signals, confirmations
/// of reports once durable), passes on what the device sends, answers
/// pings, and ends on the device's going-away, its silence, or whatever the
/// core decides. Frames are queued and written while the session waits, so
/// it never stops reading the device to write to it; a device that reads
/// slowly gets no more signals once [`QUEUE_LIMIT`] bytes wait for it.
async fn stream_and_ingest(
    session: &mut DeviceSession<'_>,
    stream: &mut DeviceStream,
    reader: &mut FrameReader,
    core: &Core,
) -> Ending {
    // The liveness contract: a device sends something at least every ping
    // interval, so silence for the idle timeout means it is gone (QUIC
    // keep-alives alone would hold a dead EA's connection open).
    let idle_timeout = Duration::from_millis(u64::from(core.session.idle_timeout_ms));
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    // The other half: a device drops a session it has heard nothing on for
    // the idle timeout, and one that reports without pause never pings, so
    // when the gateway has nothing to say (no confirmations while its store
    // is away) it pings. Checked every half ping interval, so the device
    // never waits more than one for a frame (with the session's store work
    // bounded by its patience, a second).
    let half_ping = Duration::from_millis(u64::from(core.session.ping_interval_ms) / 2);
    let mut quiet_check =
        tokio::time::interval_at(tokio::time::Instant::now() + half_ping, half_ping);
    quiet_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut said_at_check = stream.said();
    let mut ping_token = 0u64;
    loop {
        let held = stream.queued() >= QUEUE_LIMIT;
        session.hold_signals(held);
        // The core orders the work: its orders, then what the device said,
        // then signals. The device's silence is part of "what the device
        // said", so it is only judged when the core looks at the device (not
        // while the core waits on its store) and after any message already
        // read. Meanwhile the queue is written as the device takes it
        // (first: a device that sends without pause must not starve it), and
        // signals held back are let through again as soon as it has room.
        let heard = async {
            loop {
                tokio::select! {
                    biased;
                    written = stream.write_queued(), if stream.queued() > 0 => match written {
                        Err(e) => return Heard::Message(Err(e)),
                        Ok(()) if held && stream.queued() < QUEUE_LIMIT => return Heard::Room,
                        Ok(()) => {}
                    },
                    message = reader.next::<DeviceMessage>() => return Heard::Message(message),
                    () = &mut idle => return Heard::Silence,
                    _ = quiet_check.tick() => return Heard::QuietCheck,
                }
            }
        };
        let step = session.next(heard).await;
        if matches!(step, Next::Device(Heard::Message(Ok(_)))) {
            idle.as_mut()
                .reset(tokio::time::Instant::now() + idle_timeout);
        }
        match step {
            Next::End(close) => return Ending::of(close),
            Next::Device(Heard::Silence) => return Ending::of(Close::IdleTimeout),
            // Signals are let through again on the next turn.
            Next::Device(Heard::Room) => {}
            Next::Device(Heard::QuietCheck) => {
                // The ping counts as said: a quiet session is pinged every
                // other check, once a ping interval.
                let quiet = stream.said() == said_at_check;
                said_at_check = stream.said();
                if quiet {
                    stream.queue(GatewayMessage::Ping(Ping { token: ping_token }));
                    ping_token += 1;
                }
            }
            Next::Confirm(up_to_seq) => {
                stream.queue(GatewayMessage::ReportsConfirmed(ReportsConfirmed {
                    up_to_seq,
                }));
            }
            Next::Signal(signal) => {
                stream.queue_frame(&signal.frame(signal_frame));
                session.sent(&signal);
            }
            Next::Device(Heard::Message(Err(e))) => {
                if e.is_protocol_violation() {
                    warn!(device = %session.device_id(), error = %e, "protocol violation");
                } else {
                    debug!(device = %session.device_id(), error = %e, "session failed");
                }
                return Ending::of_wire(&e);
            }
            Next::Device(Heard::Message(Ok(message))) => match message {
                DeviceMessage::Ping(ping) => {
                    stream.queue(GatewayMessage::Pong(Pong { token: ping.token }));
                }
                DeviceMessage::Pong(_) => {}
                DeviceMessage::GoingAway(_) => return Ending::of(Close::DeviceLeft),
                DeviceMessage::Authenticate(_) => {
                    warn!(device = %session.device_id(), "Authenticate sent on an authenticated session");
                    return Ending::of(Close::ProtocolViolation);
                }
                // Confirmed later, once durable (`Next::Confirm`).
                DeviceMessage::Report(report) => {
                    // With every report already here behind it: one store
                    // write, and their confirmations leave together.
                    let mut run = vec![report];
                    while run.len() < session.room_for_reports().min(REPORT_RUN)
                        && let Some(report) = reader.report_now()
                    {
                        run.push(report);
                    }
                    if let Err(close) = session.reports(run).await {
                        return Ending::of(close);
                    }
                }
            },
        }
    }
}
