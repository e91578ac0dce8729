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

impl FrameReader {
    pub(super) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buffer: Vec::with_capacity(1024),
        }
    }

    /// The next message. Cancel-safe: if the future is dropped before it
    /// completes, no received byte is lost or duplicated, so it can sit in a
    /// `select!` beside the session's other work.
    pub(super) async fn next<M: WireMessage>(&mut self) -> Result<M, WireError> {
        loop {
            match decode_frame::<M>(&self.buffer)? {
                Decoded::Frame { message, consumed } => {
                    self.buffer.drain(..consumed);
                    return Ok(message);
                }
                Decoded::Incomplete { .. } => {
                    // The decoder has already refused an oversized frame, so
                    // the buffer never holds more than one frame and a chunk.
                    let mut chunk = [0u8; 2048];
                    match self.recv.read(&mut chunk).await? {
                        Some(n) => self.buffer.extend_from_slice(&chunk[..n]),
                        None if self.buffer.is_empty() => return Err(WireError::Ended),
                        None => return Err(WireError::Truncated),
                    }
                }
            }
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
        let mut frame = [0u8; MAX_WIRE_LEN];
        let len = encode_frame(&message.for_version(self.version), &mut frame)
            .expect("gateway messages always fit a frame");
        tokio::time::timeout(WRITE_TIMEOUT, self.send.write_all(&frame[..len]))
            .await
            .map_err(|_| WireError::WriteTimeout)??;
        Ok(())
    }
}
