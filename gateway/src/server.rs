//! Starting and stopping a gateway process: opens its stores (sled, or the
//! deployment's Redis), loads the master key and TLS identity, binds what its
//! role serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::affiliates::AffiliateDesk;
use crate::config::ServeConfig;
use crate::core::Core;
use crate::core::checks::AuthSettings;
use crate::core::connection_gate::{ConnectionGate, GateSettings};
use crate::core::fanout::SignalHub;
use crate::core::notices::NoticeBus;
use crate::core::sessions::SharedPresence;
use crate::http::tokens::TokenStore;
use crate::nonces::NonceStore;
use crate::registry::{DeviceRegistry, RegistryError};
use crate::reports::ReportStore;
use crate::seal::{MasterKey, SealError};
use crate::signals::{PositionStore, SignalDraft, SignalLog, SignalLogError};
use crate::store::redis::RedisStores;
use crate::store::sled::{
    SledDeviceStore, SledNonceStore, SledPositions, SledReportStore, SledSignalLog,
};
use crate::tls::{Fingerprint, IdentityError, ServerIdentity};
use crate::transport::quic::{self, close_code};
use eagate_protocol::{ChannelName, Signal};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    /// The embedded store could not be opened.
    #[error("opening the store in {0}: {1}")]
    Store(std::path::PathBuf, sled::Error),
    /// Another process holds the data directory's store or ledger.
    #[error(
        "{0} is in use by another eagate process: one process per data directory \
         (several sidecars share a Redis, each with a data directory of its own)"
    )]
    DataDirInUse(std::path::PathBuf),
    /// The shared Redis could not be reached.
    #[error("connecting to Redis: {0}")]
    Redis(redis::RedisError),
    /// This role shares its state with other processes, so it needs Redis.
    #[error("`eagate {0}` runs beside other processes and needs --redis-url")]
    NeedsRedis(&'static str),
    /// The data directory's store was sealed under another master key.
    #[error(
        "this master key differs from the one the data directory {0} was set up with: \
         restore its master.key from a backup, or set EAGATE_MASTER_KEY to the original key"
    )]
    StoreKeyMismatch(std::path::PathBuf),
    /// The deployment's Redis was set up with another master key.
    #[error(
        "this master key differs from the one the deployment's Redis was set up with: \
         give every process the same EAGATE_MASTER_KEY"
    )]
    MasterKeyMismatch,
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The master key is missing or malformed.
    #[error(transparent)]
    MasterKey(#[from] SealError),
    /// The TLS identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The affiliate programme could not start.
    #[error(transparent)]
    Affiliates(#[from] crate::affiliates::DeskError),
    /// A listener could not bind.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The webhook store could not be opened.
    #[error("opening the webhook store: {0}")]
    Webhooks(crate::webhooks::WebhookError),
    /// The device HTTPS listener's threads could not start.
    #[error("starting the device HTTPS listener's threads: {0}")]
    DeviceHttps(std::io::Error),
}

/// What one process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Devices and the HTTP sidecar (`eagate serve`).
    #[default]
    All,
    /// Devices only (`eagate gateway`, one of several sharing a Redis).
    Devices,
    /// The HTTP sidecar only (`eagate sidecar`, once per deployment).
    Sidecar,
}

impl Role {
    fn serves_devices(self) -> bool {
        matches!(self, Self::All | Self::Devices)
    }

    fn serves_http(self) -> bool {
        matches!(self, Self::All | Self::Sidecar)
    }
}

/// The stores a process runs on.
struct Stores {
    registry: DeviceRegistry,
    nonces: Arc<dyn NonceStore>,
    reports: Arc<dyn ReportStore>,
    signals: Arc<dyn SignalLog>,
    positions: Arc<dyn PositionStore>,
    notices: Option<Arc<dyn NoticeBus>>,
    /// The embedded store, held until shutdown flushes it.
    db: Option<crate::durable::Durable>,
    /// Background upkeep: expired nonce purging (sled), or listening for
    /// other processes' notices (Redis, started once the core exists).
    upkeep: Vec<tokio::task::JoinHandle<()>>,
    redis_client: Option<redis::Client>,
    /// The shared Redis connection (the payout runner's lease).
    redis_manager: Option<crate::store::redis::RedisConnection>,
    shared_presence: Option<SharedPresence>,
}

async fn open_stores(
    config: &ServeConfig,
    role: Role,
    master_key: &MasterKey,
) -> Result<Stores, StartError> {
    let Some(url) = &config.redis_url else {
        if role != Role::All {
            return Err(StartError::NeedsRedis(match role {
                Role::Sidecar => "sidecar",
                _ => "gateway",
            }));
        }
        let db_path = config.data_dir.join(crate::seal::STORE_DIR);
        let db = crate::durable::Durable::open(&db_path, config.store_cache_mib << 20)
            .await
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StartError::DataDirInUse(config.data_dir.clone())
                }
                e => StartError::Store(db_path, e),
            })?;
        let sled_error = |e: sled::Error| StartError::Registry(RegistryError::from(e));
        if !crate::store::sled::same_master_key(db.db(), &master_key.check_value())
            .map_err(sled_error)?
        {
            return Err(StartError::StoreKeyMismatch(config.data_dir.clone()));
        }
        let nonces = SledNonceStore::open(&db).map_err(sled_error)?;
        let purging = nonces.clone();
        let purge = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = purging.purge_expired(crate::clock::unix_ms()) {
                    tracing::warn!(error = %e, "purging expired nonces failed");
                }
            }
        });
        return Ok(Stores {
            registry: DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db)?)),
            nonces: Arc::new(nonces),
            reports: Arc::new(SledReportStore::open(&db).map_err(sled_error)?),
            signals: Arc::new(SledSignalLog::open(&db).map_err(sled_error)?),
            positions: Arc::new(SledPositions::open(&db).map_err(sled_error)?),
            notices: None,
            db: Some(db),
            upkeep: vec![purge],
            redis_client: None,
            redis_manager: None,
            shared_presence: None,
        });
    };
    let redis = Arc::new(
        RedisStores::connect(url, &config.redis_prefix)
            .await
            .map_err(StartError::Redis)?,
    );
    if !redis
        .same_master_key(&master_key.check_value())
        .await
        .map_err(StartError::Redis)?
    {
        return Err(StartError::MasterKeyMismatch);
    }
    redis.index_every_name().await?;
    Ok(Stores {
        registry: DeviceRegistry::new(redis.clone()),
        nonces: redis.clone(),
        reports: redis.clone(),
        signals: redis.clone(),
        positions: redis.clone(),
        notices: Some(Arc::new(redis.notice_bus())),
        db: None,
        upkeep: Vec::new(),
        redis_client: Some(redis.client().clone()),
        redis_manager: Some(redis.connection().clone()),
        shared_presence: Some(SharedPresence {
            stores: redis.clone(),
            instance: instance_name()?,
        }),
    })
}

/// A random name for this process in shared presence records.
fn instance_name() -> Result<String, StartError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|_| StartError::Registry(RegistryError::Random))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Every QUIC endpoint on the listener's port (none when this process
    /// serves no devices).
    endpoints: Vec<quinn::Endpoint>,
    /// What the kernel granted the QUIC socket.
    socket_buffers: Option<quic::SocketBuffers>,
    fingerprint: Option<Fingerprint>,
    core: Arc<Core>,
    db: Option<crate::durable::Durable>,
    sessions: Option<tokio::task::JoinHandle<()>>,
    http: Option<(tokio::task::JoinHandle<()>, SocketAddr)>,
    /// The device HTTPS listener, when this process serves it.
    device_https: Option<DeviceHttps>,
    affiliates: Option<AffiliateDesk>,
    upkeep: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts everything in this process (`eagate serve`): devices and the
    /// HTTP sidecar, on the embedded store or, given a Redis URL, on Redis.
    /// Must run inside a tokio runtime.
    pub async fn start(config: &ServeConfig) -> Result<Self, StartError> {
        Self::start_as(config, Role::All).await
    }

    /// Starts one role of a deployment.
    pub async fn start_as(config: &ServeConfig, role: Role) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        // The stores hold addresses, email hashes and sealed secrets: the
        // directory is the owner's alone, whatever modes sled gives files.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A directory another user owns (a volume shared by group) is
            // left as its owner set it: tightening it is theirs to do.
            match std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(
                        dir = %config.data_dir.display(),
                        "the data directory belongs to another user; make sure only this service can read it"
                    );
                }
                Err(e) => return Err(StartError::DataDir(config.data_dir.clone(), e)),
            }
        }
        let master_key = MasterKey::load_or_create(&config.data_dir, config.master_key.as_deref())?;
        let stores = open_stores(config, role, &master_key).await?;
        let mut core = Core::new(
            stores.registry,
            master_key,
            stores.nonces,
            stores.reports,
            stores.signals,
            stores.positions,
        );
        core.notices = stores.notices;
        core.shared_presence = stores.shared_presence.clone();
        core.hub = SignalHub::new(config.signal_queue_len as usize);
        core.auth = AuthSettings {
            skew_window: config.skew_window(),
            nonce_ttl: config.skew_window() * 4,
        };
        core.auth_deadline = config.auth_deadline();
        core.connection_gate = std::sync::Mutex::new(ConnectionGate::new(GateSettings {
            per_minute: config.connections_per_minute_per_source as u32,
            max_unauthenticated: config.max_unauthenticated_connections as usize,
            ..GateSettings::default()
        }));
        let core = Arc::new(core);
        let mut upkeep = stores.upkeep;
        upkeep.push(tokio::spawn(core.hub.clone().recheck(core.signals.clone())));
        upkeep.push(tokio::spawn(crate::signals::enforce_retention(
            core.signals.clone(),
            config.signal_retention(),
        )));
        if let Some(shared) = stores.shared_presence {
            upkeep.push(tokio::spawn(shared.renew(core.clone())));
        }
        if let Some(client) = stores.redis_client {
            let channel = format!("{}:notices", config.redis_prefix);
            upkeep.push(tokio::spawn(crate::store::redis::listen(
                client,
                channel,
                core.clone(),
            )));
        }
        let mut socket_buffers = None;
        let mut https_start = None;
        let (endpoints, fingerprint, sessions) = if role.serves_devices() {
            let identity = match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => ServerIdentity::from_pem_files(cert, key)?,
                _ => ServerIdentity::load_or_generate(&config.data_dir, &config.hostnames)?,
            };
            let (endpoints, buffers) = quic::bind(
                &identity,
                config.quic_listen,
                config.quic_endpoints as usize,
            )
            .map_err(|e| StartError::Bind(config.quic_listen, e))?;
            socket_buffers = Some(buffers);
            if buffers.receive < quic::SOCKET_BUFFER_ASKED {
                tracing::warn!(
                    granted = buffers.receive,
                    asked = quic::SOCKET_BUFFER_ASKED,
                    "the kernel granted the QUIC socket a smaller receive buffer than asked; raise net.core.rmem_max (and wmem_max) for connect storms of thousands of devices"
                );
            }
            let serving: Vec<_> = endpoints
                .iter()
                .map(|endpoint| quic::serve(endpoint.clone(), core.clone()))
                .collect();
            let sessions = tokio::spawn(async move {
                futures_util::future::join_all(serving).await;
            });
            if let Some(listen) = config.device_https_listen {
                let tls = crate::transport::https::tls_acceptor(&identity)
                    .map_err(|e| StartError::Bind(listen, std::io::Error::other(e)))?;
                // Bound now, so a port in use fails the start before the
                // sidecar is up; served once everything else is.
                let listener = std::net::TcpListener::bind(listen)
                    .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                    .map_err(|e| StartError::Bind(listen, e))?;
                https_start = Some((listen, listener, tls));
            }
            (endpoints, Some(identity.fingerprint()), Some(sessions))
        } else {
            (Vec::new(), None, None)
        };
        // The affiliate programme lives with the sidecar: one per deployment.
        let (http, affiliates) = if role.serves_http() {
            let mut desk = AffiliateDesk::open(config).map_err(|e| match e {
                crate::affiliates::DeskError::Journal(eagate_affiliates::JournalError::Sled(
                    sled::Error::Io(io),
                )) if io.to_string().contains("could not acquire lock") => {
                    StartError::DataDirInUse(config.data_dir.clone())
                }
                e => e.into(),
            })?;
            if let Some(redis) = &stores.redis_manager {
                let lease = crate::payouts::RunnerLease::new(redis.clone(), &config.redis_prefix);
                desk = desk.with_payouts(desk.payouts.clone().with_lease(lease));
            }
            // Webhooks: events from the ledger's journal, delivered by an
            // upkeep task; their store is the sidecar's own.
            let webhooks =
                crate::webhooks::Webhooks::open(&config.data_dir, config.webhook_allow_private)
                    .map_err(|e| match e {
                        crate::webhooks::WebhookError::Store(sled::Error::Io(io))
                            if io.to_string().contains("could not acquire lock") =>
                        {
                            StartError::DataDirInUse(config.data_dir.clone())
                        }
                        e => StartError::Webhooks(e),
                    })?;
            let dispatcher = crate::webhooks::Dispatcher::new(
                webhooks,
                desk.ledger.clone(),
                core.master_key.clone(),
                desk.clock(),
                crate::webhooks::Pacing {
                    timeout: Duration::from_secs(config.webhook_timeout_secs),
                    retry_base_ms: config.webhook_retry_base_secs * 1_000,
                    retry_window_ms: config.webhook_retry_window_secs * 1_000,
                },
            );
            desk = desk.with_webhooks(dispatcher.clone());
            upkeep.push(tokio::spawn(dispatcher.follow()));
            upkeep.push(tokio::spawn(desk.clone().follow_fills(core.clone())));
            upkeep.push(tokio::spawn(desk.clone().follow_devices(core.clone())));
            upkeep.push(tokio::spawn(desk.clone().schedule_payouts()));
            // The health page's sampler holds the core: an upkeep task,
            // ended before the store is released at shutdown.
            let console = Arc::new(crate::http::Console::default());
            upkeep.push(tokio::spawn(console.clone().keep_health_samples(
                core.clone(),
                crate::http::HEALTH_SAMPLE_EVERY,
            )));
            let http = start_http(config, core.clone(), desk.clone(), console, role).await?;
            (Some(http), Some(desk))
        } else {
            (None, None)
        };
        // Last: nothing can fail after its threads have started.
        let device_https = match https_start {
            Some((listen, listener, tls)) => {
                Some(start_device_https(config, listen, listener, tls, core.clone(), role).await?)
            }
            None => None,
        };
        Ok(Self {
            endpoints,
            socket_buffers,
            fingerprint,
            core,
            db: stores.db,
            sessions,
            http,
            device_https,
            affiliates,
            upkeep,
        })
    }

    /// Where devices connect, when this process serves them.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.endpoints.first().and_then(|e| e.local_addr().ok())
    }

    /// How many connections each QUIC endpoint holds (`quic_endpoints` of
    /// them share the port).
    pub fn connections_per_endpoint(&self) -> Vec<usize> {
        self.endpoints
            .iter()
            .map(|e| e.open_connections())
            .collect()
    }

    /// The QUIC socket's buffer sizes, as the kernel granted them.
    pub fn socket_buffers(&self) -> Option<quic::SocketBuffers> {
        self.socket_buffers
    }

    /// Where the HTTP sidecar listens, when this process serves it.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// Where devices reach the gateway over HTTPS, when this process
    /// serves them so (`device_https_listen`).
    pub fn device_https_addr(&self) -> Option<SocketAddr> {
        self.device_https.as_ref().map(|https| https.addr)
    }

    /// The SHA-256 fingerprint of the TLS certificate devices pin, when this
    /// process serves devices.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The device registry.
    pub fn registry(&self) -> &DeviceRegistry {
        &self.core.registry
    }

    /// The execution reports stored.
    pub fn reports(&self) -> &dyn ReportStore {
        self.core.reports.as_ref()
    }

    /// The master key sealing device secrets.
    pub fn master_key(&self) -> &MasterKey {
        &self.core.master_key
    }

    /// Publishes a signal (see [`Core::publish`]).
    pub async fn publish(
        &self,
        channel: &ChannelName,
        draft: SignalDraft,
    ) -> Result<Signal, SignalLogError> {
        self.core
            .publish(channel, draft, None)
            .await
            .map(|appended| appended.signal)
    }

    /// The channels' signal logs.
    pub fn signals(&self) -> &dyn SignalLog {
        self.core.signals.as_ref()
    }

    /// Subscribes a device to a channel (see [`Core::subscribe`]).
    pub async fn subscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<(), RegistryError> {
        self.core.subscribe(device_id, channel).await
    }

    /// Revokes a device (see [`Core::revoke`]).
    pub async fn revoke(&self, device_id: &str) -> Result<(), RegistryError> {
        self.core.revoke(device_id).await.map(|_| ())
    }

    /// The affiliate programme, when this process serves the sidecar.
    pub fn affiliates(&self) -> Option<&AffiliateDesk> {
        self.affiliates.as_ref()
    }

    /// The state shared by the QUIC sessions and the HTTP sidecar.
    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// Tells every device `GoingAway(Shutdown)`, closes every connection and
    /// flushes the store.
    pub async fn shutdown(self) {
        self.core.shutdown.send_replace(true);
        // Give sessions a moment to deliver their going-away and close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.endpoints.iter().any(|e| e.open_connections() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for endpoint in &self.endpoints {
            endpoint.close(close_code::SHUTDOWN.into(), b"gateway shutting down");
        }
        for endpoint in &self.endpoints {
            endpoint.wait_idle().await;
        }
        for task in self.upkeep {
            task.abort();
            let _ = task.await;
        }
        // Sessions and the sidecar hold the store; they end now that their
        // connections are closed.
        if let Some(sessions) = self.sessions {
            let _ = sessions.await;
        }
        if let Some((http, _)) = self.http {
            let _ = http.await;
        }
        if let Some(DeviceHttps { ended, running, .. }) = self.device_https {
            drop(running);
            let _ = ended.await;
        }
        if let Some(db) = &self.db
            && let Err(e) = db.durable().await
        {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
        // The core holds the last handles on the store; dropping it here
        // releases the data directory's lock for the next process.
        drop(self.core);
    }
}

/// How long a client may take to send a request's headers: a connection
/// that dribbles them (slow-loris) is closed, not held.
pub const HTTP_HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stopping` turns true, then lets the
/// requests in flight finish. Each connection gets its peer address (for
/// referral clicks) and [`HTTP_HEADER_DEADLINE`] to send each request's
/// headers.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<crate::http::connections::HttpConnections>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_DEADLINE);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async {
                let _ = stopping.wait_for(|stop| *stop).await;
            } => break,
        };
        let Some(place) = connections.admit(peer.ip()) else {
            tracing::debug!(%peer, "an HTTP connection beyond the bounds turned away");
            crate::http::connections::turn_away(stream);
            continue;
        };
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let Some(tls) = &tls else {
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                // Its place is given back when the connection ends.
                let _place = place;
                if let Err(e) = watched.await {
                    tracing::debug!(error = %e, peer = %peer, "an HTTP connection ended");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task, with the header
        // deadline: a client that never finishes it is dropped, not held.
        let handshake = tls.accept(stream);
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _place = place;
            let stream = match tokio::time::timeout(HTTP_HEADER_DEADLINE, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, peer = %peer, "a TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "a TLS handshake did not finish in time");
                    return;
                }
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, peer = %peer, "an HTTPS connection ended");
            }
        });
    }
    // In-flight requests get a moment to finish.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// How many connections each HTTP listener of this process may hold:
/// `max_http_connections`, or fewer when the open-files limit leaves less
/// room, shared between the sidecar and the device HTTPS listener when
/// this process runs both, so that together they stay within the limit.
fn http_connection_budget(config: &ServeConfig, role: Role) -> usize {
    let listeners = usize::from(role.serves_http())
        + usize::from(role.serves_devices() && config.device_https_listen.is_some());
    let room = crate::http::connections::within_open_files(
        (config.max_http_connections as usize).saturating_mul(listeners.max(1)),
    );
    (room / listeners.max(1))
        .min(config.max_http_connections as usize)
        .max(1)
}

/// Binds the HTTP sidecar and serves it until shutdown.
async fn start_http(
    config: &ServeConfig,
    core: Arc<Core>,
    affiliates: AffiliateDesk,
    console: Arc<crate::http::Console>,
    role: Role,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| StartError::Bind(config.http_listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.http_listen, e))?;
    let stopping = core.shutdown.subscribe();
    let app = crate::http::router(crate::http::AppState {
        core,
        tokens: Arc::new(TokenStore::open(&config.data_dir)),
        affiliates,
        console,
    });
    let most = http_connection_budget(config, role);
    let connections = crate::http::connections::HttpConnections::new(
        most,
        config.max_http_connections_per_source as usize,
    );
    let task = tokio::spawn(serve_http(listener, app, None, connections, stopping));
    Ok((task, addr))
}

/// The device HTTPS listener, on threads of its own.
#[derive(Debug)]
struct DeviceHttps {
    addr: SocketAddr,
    /// Resolves once its thread has ended, and its runtime with everything
    /// on it (and so its hold on the core and the store).
    ended: tokio::sync::oneshot::Receiver<()>,
    /// Dropped (a shutdown, or a gateway dropped without one), it stops
    /// the listener.
    running: tokio::sync::oneshot::Sender<()>,
}

/// Starts the device HTTPS listener on a runtime of its own, driven by a
/// thread of its own: polling EAs run on its worker threads
/// (`device_https_threads`; by default half the machine's cores, one on a
/// machine of up to three), so thousands of TLS
/// requests queue behind each other, not in front of the QUIC devices'
/// signals, and never take every core. Serves `listener` (bound to
/// `listen`, non-blocking; `DEVICE-HTTP.md`) until shutdown, with the same
/// connection bounds as the sidecar. Returns once it listens.
async fn start_device_https(
    config: &ServeConfig,
    listen: SocketAddr,
    listener: std::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    core: Arc<Core>,
    role: Role,
) -> Result<DeviceHttps, StartError> {
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(listen, e))?;
    let mut core_stopping = core.shutdown.subscribe();
    let app = crate::transport::https::routes::router(core);
    let most = http_connection_budget(config, role);
    let connections = crate::http::connections::HttpConnections::new(
        most,
        config.max_http_connections_per_source as usize,
    );
    let threads = crate::config::device_https_threads(config.device_https_threads);
    let (ready, readied) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    let (running, gone) = tokio::sync::oneshot::channel::<()>();
    let (finished, ended) = tokio::sync::oneshot::channel::<()>();
    // Everything of the runtime is made and dropped on this thread: a
    // runtime may not be dropped where async code runs.
    std::thread::Builder::new()
        .name("eagate-device-https".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("eagate-device-https")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let listener = {
                let _context = runtime.enter();
                tokio::net::TcpListener::from_std(listener)
            };
            let listener = match listener {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(async move {
                    let (stop, stopping) = tokio::sync::watch::channel(false);
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = core_stopping.wait_for(|stop| *stop) => {}
                            _ = gone => {}
                        }
                        let _ = stop.send(true);
                    });
                    serve_http(listener, app, Some(tls), connections, stopping).await;
                });
            }));
            if served.is_err() {
                tracing::error!("the device HTTPS listener failed (a panic); it is stopped");
            }
            // Requests still running had their moment in serve_http.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = finished.send(());
        })
        .map_err(StartError::DeviceHttps)?;
    match readied.await {
        Ok(Ok(())) => Ok(DeviceHttps {
            addr,
            ended,
            running,
        }),
        Ok(Err(e)) => Err(StartError::DeviceHttps(e)),
        Err(_) => Err(StartError::DeviceHttps(std::io::Error::other(
            "its thread ended before it listened",
        ))),
    }
}
