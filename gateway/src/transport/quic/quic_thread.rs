//! quinn on tokio, each endpoint on a thread of its own: the endpoint's
//! driver (the task that drains the UDP socket and routes each datagram to
//! its connection) and its connections' drivers (packets in and out, loss
//! recovery, encryption) run on one single-threaded runtime, while the
//! sessions (authentication, the store, fan-out) stay on the gateway's
//! shared runtime and talk to their connections through quinn's streams.
//!
//! Why: on the shared runtime the endpoint's driver was one task among
//! thousands. It reads the socket for at most 50 µs per turn (quinn's
//! bound), then waits for every other runnable task to get a turn, and
//! under a flood of signals a round of the sessions' work (the store's
//! writes above all) took long enough for the socket's receive buffer to
//! fill: the kernel dropped the devices' reports and acknowledgements,
//! QUIC's loss recovery backed off on the connections that lost most, and
//! the gateway closed them for silence. On their own thread the QUIC tasks
//! only wait for each other, which is cheap work, and the kernel schedules
//! the thread as soon as a datagram arrives; what the sessions cannot keep
//! up with waits in quinn's streams, bounded by flow control, instead of
//! being dropped at the socket. Running only the endpoint's driver there
//! was measured too: every datagram then woke its connection across
//! threads, which cost a third more CPU per message.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

/// quinn's [`Runtime`] for one endpoint: a single-threaded tokio runtime
/// on a thread of its own, which registers the endpoint's socket and runs
/// its driver and its connections. The thread runs until this is let go:
/// quinn holds it in the endpoint and in every connection, and their
/// drivers on the thread hold it until they end, so it outlives them all
/// (a driver that ends on a socket error leaves its connections running
/// until they have seen the endpoint go and woken whoever waits on them).
#[derive(Debug)]
pub(super) struct QuicThread {
    /// Where everything is spawned and timers are made.
    handle: tokio::runtime::Handle,
    /// Dropped with this, which ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl QuicThread {
    /// Starts a thread called `thread_name` running a runtime for one
    /// endpoint.
    pub(super) fn new(thread_name: String) -> io::Result<Arc<Self>> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        // The runtime is made, run and dropped on its thread: dropping one
        // blocks, which tokio forbids on the threads this is called from.
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        // Waits for the thread's first steps only: microseconds, at start.
        let handle = handle
            .recv()
            .map_err(|_| io::Error::other("the QUIC thread ended before it started"))??;
        Ok(Arc::new(Self {
            handle,
            _stop: stop,
        }))
    }
}

impl Runtime for QuicThread {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        // On this runtime's clock whoever asks: a connection's timers are
        // polled by its driver, here.
        let _here = self.handle.enter();
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // Registered with this runtime's reactor: the thread that reads the
        // socket is the one its readiness wakes.
        let _here = self.handle.enter();
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_and_its_connections_run_on_the_endpoints_own_thread() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let runtime = QuicThread::new("eagate-quic-test".into()).unwrap();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime.clone(),
        )
        .unwrap();
        // A connection's driver runs on that thread.
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(Box::pin(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        }));
        assert_eq!(rx.await.unwrap().as_deref(), Some("eagate-quic-test"));
        drop(endpoint);
    }

    #[tokio::test]
    async fn the_thread_stops_when_the_runtime_is_let_go_on_a_tokio_thread() {
        /// Says when the task holding it is dropped by its runtime.
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let runtime = QuicThread::new("eagate-quic-test".into()).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _wrapped = runtime.wrap_udp_socket(socket).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let held = Dropped(tx);
        runtime.spawn(Box::pin(async move {
            let _held = held;
            std::future::pending::<()>().await;
        }));
        // Let go here, on a tokio thread: no panic, and the thread ends,
        // dropping what its runtime still ran.
        drop(runtime);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the QUIC thread's runtime stopped");
    }
}
