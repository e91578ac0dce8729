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
                self.buffer.drain(..consumed);
                if self.buffer.is_empty() && self.buffer.capacity() > BUFFER_KEPT {
                    self.buffer = Vec::new();
                }
                Ok(Some(message))
            }
            Decoded::Incomplete { .. } => Ok(None),
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

/// The gateway's half of a session stream, speaking the device's protocol
/// version (version 1 until `Authenticate` says otherwise).
pub(super) struct DeviceStream {
    pub(super) send: SendStream,
    pub(super) version: u16,
}

impl DeviceStream {
    pub(super) async fn write(&mut self, message: GatewayMessage) -> Result<(), WireError> {
        let frame = encode(&message.for_version(self.version));
        tokio::time::timeout(WRITE_TIMEOUT, self.send.write_chunk(frame))
            .await
            .map_err(|_| WireError::WriteTimeout)??;
        Ok(())
    }
}

thread_local! {
    /// Where frames are encoded before they are copied out at their size.
    static SCRATCH: std::cell::RefCell<Box<[u8; MAX_WIRE_LEN]>> =
        std::cell::RefCell::new(Box::new([0; MAX_WIRE_LEN]));
}

/// `message` as one frame, in an allocation of its own size: quinn keeps it
/// until the device acknowledges it, and a frame-sized buffer in the
/// writing future would sit in every session's future, idle or not.
fn encode(message: &GatewayMessage) -> bytes::Bytes {
    SCRATCH.with_borrow_mut(|scratch| {
        let len =
            encode_frame(message, &mut scratch[..]).expect("gateway messages always fit a frame");
        bytes::Bytes::copy_from_slice(&scratch[..len])
    })
}
