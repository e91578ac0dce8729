//! A UDP socket for QUIC that uses nothing but `send_to` and `recv_from`.
//!
//! quinn's own socket (quinn-udp) reaches for each platform's fast paths:
//! control messages for ECN and the packet's source address, segmentation
//! offload, `WSASendMsg`/`WSARecvMsg` on Windows. Those are where platforms
//! differ and emulations fall short: under Wine (how MetaTrader runs on
//! macOS and Linux) not one of its packets reaches the gateway. A device
//! sends a few packets a second, so it gains nothing from them; this socket
//! gives them up for the two calls every UDP stack has. The cost: no ECN
//! marks (congestion is still seen through loss) and no path MTU discovery
//! (packets stay at QUIC's minimum of 1200 bytes, far above a device's
//! messages).

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Which UDP socket a device's QUIC connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSocketKind {
    /// quinn's own socket with the platform's fast paths (ECN, segmentation
    /// offload, source address control messages). The default except on
    /// Windows.
    Platform,
    /// Plain `send_to` and `recv_from` only: works wherever UDP does,
    /// including Wine. The default on Windows, where the DLL MetaTrader
    /// loads may be running under Wine.
    Plain,
}

impl Default for UdpSocketKind {
    fn default() -> Self {
        if cfg!(windows) {
            Self::Plain
        } else {
            Self::Platform
        }
    }
}

/// A tokio UDP socket that quinn drives through `send_to`/`recv_from`.
pub(crate) struct PlainUdpSocket {
    io: tokio::net::UdpSocket,
}

impl fmt::Debug for PlainUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainUdpSocket")
            .field("local", &self.io.local_addr().ok())
            .finish()
    }
}

impl PlainUdpSocket {
    /// Binds a socket on `local`; must run inside a tokio runtime.
    pub(crate) fn bind(local: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
        })
    }
}

impl AsyncUdpSocket for PlainUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // One datagram per transmit: `max_transmit_segments` is 1, so quinn
        // never hands over a batch to split.
        match self.io.try_send_to(transmit.contents, transmit.destination) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // Any other failure (no route for now, a full interface queue)
            // is a lost datagram, which QUIC already recovers from; ending
            // the connection over it would be worse. quinn-udp does the same.
            Err(_) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                // Readiness was stale: poll again, which registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // No "don't fragment" flag is set, so quinn must not probe the path
        // MTU with packets the network may split.
        true
    }
}

/// Waits for the socket to take another datagram.
type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Tells quinn when the socket can take another datagram. Each poller
/// waits with a future of its own, so each keeps its own waker (tokio's
/// `poll_send_ready` keeps only the last one).
struct Writable {
    socket: Arc<PlainUdpSocket>,
    waiting: Option<WritableFuture>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Writable")
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let waiting = this.waiting.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let result = waiting.as_mut().poll(cx);
        if result.is_ready() {
            self.waiting = None;
        }
        result
    }
}
