//! The QUIC transport: the endpoint (TLS 1.3, ALPN `eagate/1`, transport
//! settings sized for many small sessions), the connection loop, and the
//! close codes by which every ending is told. Each connection's session is
//! driven by `session`, over the frames of `wire`.

mod quic_thread;
mod session;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eagate_protocol::ALPN;
use quinn::VarInt;
use tracing::debug;

use crate::core::connection_gate::Verdict;
use crate::core::{Close, Core};
use crate::tls::ServerIdentity;
use quic_thread::QuicThread;

/// QUIC application close codes the gateway uses: every way a connection
/// ends has its own, so a device (or a capture) can tell why without
/// decoding the stream. Where the stream is open, the gateway first sends
/// the message named here, then finishes the stream and closes. The numbers
/// are those of docs/protocol.md.
pub mod close_code {
    /// The device said `GoingAway`: the session ended normally.
    pub const DONE: u32 = 0;
    /// The device broke the protocol: a malformed, oversized or truncated
    /// frame, a first message other than `Authenticate`, a second
    /// `Authenticate`, report sequence 0 or too far ahead, or a report
    /// about a signal of a channel the device never followed. After
    /// `GoingAway(ProtocolViolation)`.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// Authentication failed (`AuthRefused(Failed)`).
    pub const AUTH_FAILED: u32 = 2;
    /// No `Authenticate` within the deadline; after `GoingAway(AuthTimeout)`
    /// when the device had opened its stream.
    pub const AUTH_TIMEOUT: u32 = 3;
    /// The gateway is shutting down; after `GoingAway(Shutdown)`.
    pub const SHUTDOWN: u32 = 4;
    /// The device is revoked: after `AuthRefused(Revoked)`, or
    /// `GoingAway(Revoked)` when revoked while connected.
    pub const REVOKED: u32 = 5;
    /// The device's clock is outside the window; after
    /// `AuthRefused(ClockSkew)`.
    pub const CLOCK_SKEW: u32 = 6;
    /// The device speaks an unsupported protocol version; after
    /// `AuthRefused(UnsupportedVersion)`.
    pub const UNSUPPORTED_VERSION: u32 = 7;
    /// A newer session of the same device took over; after
    /// `GoingAway(Replaced)`.
    pub const REPLACED: u32 = 8;
    /// The device's secret was rotated; after `GoingAway(SecretRotated)`
    /// (`GoingAway(Replaced)` in protocol version 1).
    pub const SECRET_ROTATED: u32 = 9;
    /// A report's sequence number holds another report; after
    /// `ReportConflict` (`GoingAway(ProtocolViolation)` in version 1).
    pub const REPORT_CONFLICT: u32 = 10;
    /// Nothing arrived from the device for the idle timeout; after
    /// `GoingAway(IdleTimeout)` (`GoingAway(ProtocolViolation)` in version 1).
    pub const IDLE_TIMEOUT: u32 = 11;
    /// The gateway could not reach its store; after `GoingAway(Shutdown)`.
    /// Reconnect with backoff.
    pub const STORE_UNAVAILABLE: u32 = 12;
    /// The device did not read what the gateway sent for 10 s; nothing more
    /// can be sent on the stream.
    pub const SLOW_READER: u32 = 13;
}

/// The close code of an ending.
pub fn close_code_of(close: Close) -> u32 {
    use close_code::*;
    match close {
        Close::DeviceLeft => DONE,
        Close::ProtocolViolation => PROTOCOL_VIOLATION,
        Close::AuthFailed => AUTH_FAILED,
        Close::AuthTimeout => AUTH_TIMEOUT,
        Close::Shutdown => SHUTDOWN,
        Close::Revoked => REVOKED,
        Close::ClockSkew => CLOCK_SKEW,
        Close::UnsupportedVersion => UNSUPPORTED_VERSION,
        Close::Replaced => REPLACED,
        Close::SecretRotated => SECRET_ROTATED,
        Close::ReportConflict { .. } => REPORT_CONFLICT,
        Close::IdleTimeout => IDLE_TIMEOUT,
        Close::StoreUnavailable => STORE_UNAVAILABLE,
        Close::SlowReader => SLOW_READER,
    }
}

/// QUIC's own idle timeout: a connection that carries no packet at all for
/// this long is gone. (The session's liveness rule is the core's.)
const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway probes a quiet connection this often, so a live but idle EA
/// never reaches the idle timeout and a dead one is found within it.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// The QUIC server configuration.
///
/// quinn's defaults suit a few connections moving bulk data (megabytes of
/// flow-control window per connection, 100 concurrent streams). A gateway
/// serves many devices that each exchange small messages on one stream, so
/// windows are small (memory per connection stays in the tens of KiB), a
/// device may open exactly one bidirectional stream and no unidirectional
/// ones, 0-RTT is off (it would allow replays), and idle detection is quick.
pub fn server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(64 * 1024))
        .send_window(256 * 1024)
        .max_idle_timeout(Some(QUIC_IDLE_TIMEOUT.try_into().expect("10 s fits")))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The UDP buffer sizes asked of the kernel for the gateway's socket.
///
/// Every device's packets arrive on this one socket. The kernel's default
/// receive buffer (208 KiB, a hundred or so datagrams once the kernel's
/// overhead is counted) overflows in a connect storm of a few hundred
/// devices, and each datagram dropped costs its device a retransmission
/// timeout (hundreds of ms in a handshake). Linux grants at most
/// `net.core.rmem_max` / `wmem_max` (doubled, for its bookkeeping); what it
/// granted is in [`SocketBuffers`].
pub const SOCKET_BUFFER_ASKED: usize = 8 * 1024 * 1024;

/// The buffer sizes the kernel granted the QUIC socket, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// SO_RCVBUF as the kernel reports it.
    pub receive: usize,
    /// SO_SNDBUF as the kernel reports it.
    pub send: usize,
}

/// Binds `count` endpoints on UDP sockets with buffers sized for thousands
/// of devices (see [`SOCKET_BUFFER_ASKED`]), all on `addr`'s port; the
/// endpoints and the buffers the kernel granted each.
///
/// Each endpoint and its connections run on a thread of their own (see
/// `quic_thread`), so the socket is drained however busy the sessions are;
/// one such thread is about one core of QUIC work. More than one endpoint
/// share the port through `SO_REUSEPORT` (Linux): the kernel spreads the
/// devices over them by address, so each connection stays on one endpoint,
/// unless its address changes (NAT rebinding), when it lands on another
/// that does not know it and the device reconnects and resumes.
pub fn bind(
    identity: &ServerIdentity,
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<quinn::Endpoint>, SocketBuffers)> {
    let config = server_config(identity).map_err(std::io::Error::other)?;
    let shared = count > 1;
    let (first, buffers) = udp_socket(addr, shared)?;
    // Port 0 binds the first socket to a free port; the others take it.
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(udp_socket(addr, shared)?.0);
    }
    // One endpoint configuration for all: their stateless-reset key is the
    // same, so when a device's packets reach an endpoint that does not know
    // its connection (its address changed), that endpoint's reset is one
    // the device accepts, and it reconnects at once instead of after its
    // idle timeout.
    let endpoint_config = quinn::EndpointConfig::default();
    let endpoints = sockets
        .into_iter()
        .enumerate()
        .map(|(n, socket)| {
            quinn::Endpoint::new(
                endpoint_config.clone(),
                Some(config.clone()),
                socket,
                QuicThread::new(format!("eagate-quic-{n}"))?,
            )
        })
        .collect::<std::io::Result<_>>()?;
    Ok((endpoints, buffers))
}

/// A UDP socket bound to `addr`, with the biggest buffers the kernel grants
/// up to [`SOCKET_BUFFER_ASKED`]; sharing its port with the process's other
/// endpoints when `shared`.
pub fn udp_socket(
    addr: SocketAddr,
    shared: bool,
) -> std::io::Result<(std::net::UdpSocket, SocketBuffers)> {
    use socket2::{Domain, Protocol, Socket, Type};

    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As std binds: an IPv6 wildcard takes IPv4 too where the system
        // allows it.
        let _ = socket.set_only_v6(false);
    }
    if shared {
        reuse_port(&socket)?;
    }
    // Asking for more than the system allows is not an error: the kernel
    // grants its maximum, and what it granted is read back below.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_ASKED);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_ASKED);
    socket.bind(&addr.into())?;
    let buffers = SocketBuffers {
        receive: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    Ok((socket.into(), buffers))
}

// Linux spreads a port's datagrams over the sockets sharing it; other
// systems accept the option but do not.
#[cfg(target_os = "linux")]
fn reuse_port(socket: &socket2::Socket) -> std::io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(target_os = "linux"))]
fn reuse_port(_socket: &socket2::Socket) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "more than one QUIC endpoint needs SO_REUSEPORT (Linux)",
    ))
}

/// A connection the gate admitted that has not authenticated yet: it
/// leaves the gate's count when dropped (authenticated, refused or gone).
pub(super) struct Waiting(Arc<Core>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.connection_gate.lock().expect("gate lock").settled();
    }
}

/// Accepts connections until the endpoint is closed, as the gate says
/// (admitted, asked to prove their address, or refused before their
/// handshake), each in its own task,
/// and returns once every session has ended, so the store they share is
/// released when this returns.
pub async fn serve(endpoint: quinn::Endpoint, core: Arc<Core>) {
    let mut sessions = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        // Reap finished sessions so the set stays as small as the live ones.
        while sessions.try_join_next().is_some() {}
        let remote = incoming.remote_address();
        let verdict = core.connection_gate.lock().expect("gate lock").arriving(
            remote.ip(),
            incoming.remote_address_validated(),
            Instant::now(),
        );
        match verdict {
            Verdict::Admit => {}
            Verdict::Retry => {
                debug!(%remote, "asking the source to prove its address");
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Verdict::Refuse(why) => {
                debug!(%remote, reason = why.as_str(), "connection turned away");
                core.metrics.turned_away(why);
                incoming.refuse();
                continue;
            }
        }
        let waiting = Waiting(core.clone());
        let core = core.clone();
        sessions.spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    debug!(%remote, error = %e, "handshake failed");
                    return;
                }
            };
            // The handshake proved the source: now it is charged.
            let charged = core
                .connection_gate
                .lock()
                .expect("gate lock")
                .charge(remote.ip(), Instant::now());
            if let Err(why) = charged {
                debug!(%remote, reason = why.as_str(), "connection turned away after its handshake");
                core.metrics.turned_away(why);
                connection.close(
                    close_code_of(Close::Shutdown).into(),
                    b"too many connections from this address; try again later",
                );
                return;
            }
            session::run(connection, &core, waiting).await;
        });
    }
    while sessions.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quic_socket_gets_buffers_bigger_than_the_kernel_default() {
        let (_, buffers) = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let default = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&default).recv_buffer_size().unwrap();
        // Whatever rmem_max is, asking grants at least the default, and at
        // least rmem_max where the system allows more than the default.
        let allowed = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|max| max.trim().parse::<usize>().ok())
            .unwrap_or(default);
        assert!(buffers.receive >= default);
        assert!(buffers.receive >= allowed.min(SOCKET_BUFFER_ASKED));
        assert!(buffers.send > 0);
    }

    #[test]
    fn each_ending_closes_with_the_code_of_its_number_in_the_protocol_document() {
        let all = [
            Close::DeviceLeft,
            Close::ProtocolViolation,
            Close::AuthFailed,
            Close::AuthTimeout,
            Close::Shutdown,
            Close::Revoked,
            Close::ClockSkew,
            Close::UnsupportedVersion,
            Close::Replaced,
            Close::SecretRotated,
            Close::ReportConflict { seq: 1 },
            Close::IdleTimeout,
            Close::StoreUnavailable,
            Close::SlowReader,
        ];
        assert_eq!(all.len(), Close::NAMES.len());
        for close in all {
            assert_eq!(close_code_of(close) as usize, close.index(), "{close:?}");
        }
    }
}
