//! The session stream's two halves as frames: reading the device's messages
//! off the receive half (cancel-safe, refusing a malformed or cut-off frame),
//! and writing the gateway's in the device's protocol version, with a bound
//! on how long a device that does not read can hold a write.

use std::time::Duration;

use eagate_protocol::{
    DecodeError, Decoded, GatewayMessage, MAX_WIRE_LEN, WireMessage, decode_frame, encode_frame,
};
use quinn::{RecvStream, SendStream};

/// Why reading or writing a session's stream failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("bad frame: {0}")]
    Frame(#[from] DecodeError),
    #[error("the stream ended")]
    Ended,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("the device has not read for {:?}", WRITE_TIMEOUT)]
    WriteTimeout,
}

impl WireError {
    /// The device sent what the protocol does not allow (as opposed to the
    /// connection failing).
    pub(super) fn is_protocol_violation(&self) -> bool {
        matches!(self, Self::Frame(_) | Self::Truncated)
    }
}

/// Reads frames of one direction off a QUIC stream.
pub(super) struct FrameReader {
    recv: RecvStream,
    buffer: Vec<u8>,
}

/// A reader's buffer grown past this by a big frame is let go once empty,
/// so an idle session holds none.
const BUFFER_KEPT: usize = 1024;

impl FrameReader {
    pub(super) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buffer: Vec::new(),
        }
    }

    /// The next message. Cancel-safe: if the future is dropped before it
    /// completes, no received byte is lost or duplicated, so it can sit in a
    /// `select!` beside the session's other work.
    pub(super) async fn next<M: WireMessage>(&mut self) -> Result<M, WireError> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// The next whole message already received, if there is one. Apart from
    /// the waiting, so no message is held in the waiting future: a session
    /// waits there most of its life, and every byte of that future is held
    /// by every idle session.
    fn decode<M: WireMessage>(&mut self) -> Result<Option<M>, WireError> {
        match decode_frame::<M>(&self.buffer)? {
            Decoded::Frame { message, consumed } => {
                self.consume(consumed);
                Ok(Some(message))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    /// The next message if it is a report already received whole, so a run
    /// of reports the device sent together is taken at once; anything else
    /// (another message, a malformed frame) stays for [`FrameReader::next`].
    pub(super) fn report_now(&mut self) -> Option<eagate_protocol::Report> {
        match decode_frame::<eagate_protocol::DeviceMessage>(&self.buffer) {
            Ok(Decoded::Frame {
                message: eagate_protocol::DeviceMessage::Report(report),
                consumed,
            }) => {
                self.consume(consumed);
                Some(report)
            }
            _ => None,
        }
    }

    /// Drops a decoded frame's bytes; a buffer grown by a big frame is let
    /// go once empty, so an idle session holds none.
    fn consume(&mut self, consumed: usize) {
        self.buffer.drain(..consumed);
        if self.buffer.is_empty() && self.buffer.capacity() > BUFFER_KEPT {
            self.buffer = Vec::new();
        }
    }

    /// Waits for more bytes. The decoder has already refused an oversized
    /// frame, so the buffer never holds more than one frame and a chunk;
    /// the chunk is quinn's own, not a buffer in this future.
    async fn fill(&mut self) -> Result<(), WireError> {
        match self.recv.read_chunk(MAX_WIRE_LEN, true).await? {
            Some(chunk) => {
                self.buffer.extend_from_slice(&chunk.bytes);
                Ok(())
            }
            None if self.buffer.is_empty() => Err(WireError::Ended),
            None => Err(WireError::Truncated),
        }
    }
}

/// How long a write may wait for a device that does not read. A device
/// stuck longer is dropped; it resumes from the log when it comes back, and
/// meanwhile its session cannot miss a revocation or a shutdown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes of frames a session queues for a device that reads
/// slower than they come: past this it takes no more signals until the
/// device has read some (it keeps reading the device meanwhile).
pub(super) const QUEUE_LIMIT: usize = 64 * 1024;

/// The gateway's half of a session stream, speaking the device's protocol
/// version (version 1 until `Authenticate` says otherwise). Frames are
/// queued and written as the device takes them, from inside the session's
/// wait for the device: a session blocked in a write would stop reading,
/// and a device blocked writing its reports to it would stop reading too,
/// each waiting for the other until both gave up.
pub(super) struct DeviceStream {
    pub(super) send: SendStream,
    pub(super) version: u16,
    /// Encoded frames quinn has not taken yet, in order; a frame may be
    /// partly taken.
    queued: bytes::BytesMut,
    /// Since when the device has taken nothing of what is queued.
    stalled_since: tokio::time::Instant,
    /// How many times something was queued: whether the gateway has said
    /// anything lately.
    said: u64,
}

impl DeviceStream {
    pub(super) fn new(send: SendStream) -> Self {
        Self {
            send,
            version: 1,
            queued: bytes::BytesMut::new(),
            stalled_since: tokio::time::Instant::now(),
            said: 0,
        }
    }

    /// Queues `message` after what is queued; [`DeviceStream::write_queued`]
    /// writes it.
    pub(super) fn queue(&mut self, message: GatewayMessage) {
        encode_into(&message.for_version(self.version), self.queue_end());
    }

    /// Queues a frame encoded already (a signal's, encoded once for every
    /// device it goes to) after what is queued.
    pub(super) fn queue_frame(&mut self, frame: &[u8]) {
        self.queue_end().extend_from_slice(frame);
    }

    /// The queue, to append to; the device's wait for it starts now if
    /// nothing was waiting.
    fn queue_end(&mut self) -> &mut bytes::BytesMut {
        self.said += 1;
        if self.queued.is_empty() {
            self.stalled_since = tokio::time::Instant::now();
        }
        &mut self.queued
    }

    /// Bytes queued and not yet taken by quinn.
    pub(super) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// How many frames were queued so far (a count that only grows).
    pub(super) fn said(&self) -> u64 {
        self.said
    }

    /// Writes as much of the queue as quinn takes now, waiting until it
    /// takes something. Cancel-safe: what quinn took is off the queue,
    /// nothing else is; so it can sit in a `select!`. Fails once the device
    /// has taken nothing for [`WRITE_TIMEOUT`].
    pub(super) async fn write_queued(&mut self) -> Result<(), WireError> {
        let stalled_until = self.stalled_since + WRITE_TIMEOUT;
        let taken = tokio::time::timeout_at(stalled_until, self.send.write(&self.queued))
            .await
            .map_err(|_| WireError::WriteTimeout)??;
        let _ = self.queued.split_to(taken);
        self.stalled_since = tokio::time::Instant::now();
        if self.queued.is_empty() && self.queued.capacity() > QUEUE_KEPT {
            // An idle session holds no buffer from a burst.
            self.queued = bytes::BytesMut::new();
        }
        Ok(())
    }

    /// Queues `message` and writes the whole queue, waiting as long as the
    /// device takes something at least every [`WRITE_TIMEOUT`].
    pub(super) async fn write(&mut self, message: GatewayMessage) -> Result<(), WireError> {
        self.queue(message);
        while !self.queued.is_empty() {
            self.write_queued().await?;
        }
        Ok(())
    }
}

/// A queue's buffer grown past this by a burst is let go once empty.
const QUEUE_KEPT: usize = 4096;

thread_local! {
    /// Where frames are encoded before they are copied into a queue.
    static SCRATCH: std::cell::RefCell<Box<[u8; MAX_WIRE_LEN]>> =
        std::cell::RefCell::new(Box::new([0; MAX_WIRE_LEN]));
}

/// `signal`'s frame, the same in every protocol version.
pub(super) fn signal_frame(signal: &eagate_protocol::Signal) -> bytes::Bytes {
    let mut frame = bytes::BytesMut::new();
    encode_into(&GatewayMessage::Signal(signal.clone()), &mut frame);
    frame.freeze()
}

/// Appends `message` as one frame to `out`.
fn encode_into(message: &GatewayMessage, out: &mut bytes::BytesMut) {
    SCRATCH.with_borrow_mut(|scratch| {
        let len =
            encode_frame(message, &mut scratch[..]).expect("gateway messages always fit a frame");
        out.extend_from_slice(&scratch[..len]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use eagate_protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

    #[test]
    fn one_signal_frame_is_what_every_protocol_version_would_encode() {
        let signal = crate::signals::sample_signal();
        let shared = signal_frame(&signal);
        for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            let mut own = bytes::BytesMut::new();
            encode_into(
                &GatewayMessage::Signal(signal.clone()).for_version(version),
                &mut own,
            );
            assert_eq!(shared, own.freeze(), "version {version}");
        }
    }
}
