//! Starting and stopping a gateway: opens the embedded store, loads the TLS
//! identity and master key, binds the QUIC endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthSettings;
use crate::config::ServeConfig;
use crate::http::tokens::TokenStore;
use crate::nonces::SledNonceStore;
use crate::quic::{self, SessionContext, close_code};
use crate::registry::{DeviceRegistry, RegistryError};
use crate::reports::{ReportStore, SledReportStore};
use crate::seal::{MasterKey, SealError};
use crate::signals::{
    DevicePositions, SignalDraft, SignalHub, SignalLog, SignalLogError, SledSignalLog,
};
use crate::tls::{Fingerprint, IdentityError, ServerIdentity};
use eagate_protocol::{ChannelName, Signal};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    /// The embedded store could not be opened (another process holds it?).
    #[error("opening the store in {0}: {1}")]
    Store(std::path::PathBuf, sled::Error),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The master key is missing or malformed.
    #[error(transparent)]
    MasterKey(#[from] SealError),
    /// The TLS identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A listener could not bind.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    endpoint: quinn::Endpoint,
    fingerprint: Fingerprint,
    context: Arc<SessionContext>,
    db: sled::Db,
    sessions: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
    http_addr: SocketAddr,
    purge: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Opens the store and starts accepting devices. Must run inside a tokio
    /// runtime.
    pub async fn start(config: &ServeConfig) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let db_path = config.data_dir.join("db");
        let db = sled::open(&db_path).map_err(|e| StartError::Store(db_path, e))?;
        let registry = DeviceRegistry::open(&db)?;
        let nonces = SledNonceStore::open(&db).map_err(RegistryError::from)?;
        let master_key = MasterKey::load_or_create(&config.data_dir, config.master_key.as_deref())?;
        let identity = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => ServerIdentity::from_pem_files(cert, key)?,
            _ => ServerIdentity::load_or_generate(&config.data_dir, &config.hostnames)?,
        };
        let reports = Arc::new(SledReportStore::open(&db).map_err(RegistryError::from)?);
        let signals = Arc::new(SledSignalLog::open(&db).map_err(RegistryError::from)?);
        let positions = DevicePositions::open(&db).map_err(RegistryError::from)?;
        let mut context = SessionContext::new(
            registry,
            master_key,
            Arc::new(nonces.clone()),
            reports,
            signals,
            positions,
        );
        context.hub = SignalHub::new(config.signal_queue_len as usize);
        context.auth = AuthSettings {
            skew_window: config.skew_window(),
            nonce_ttl: config.skew_window() * 4,
        };
        context.auth_deadline = config.auth_deadline();
        let context = Arc::new(context);
        let endpoint = quic::bind(&identity, config.quic_listen)
            .map_err(|e| StartError::Bind(config.quic_listen, e))?;
        let sessions = tokio::spawn(quic::serve(endpoint.clone(), context.clone()));
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| StartError::Bind(config.http_listen, e))?;
        let http_addr = http
            .local_addr()
            .map_err(|e| StartError::Bind(config.http_listen, e))?;
        let app = crate::http::router(crate::http::AppState {
            core: context.clone(),
            tokens: Arc::new(TokenStore::open(&config.data_dir)),
        });
        let mut stopping = context.shutdown.subscribe();
        let http = tokio::spawn(async move {
            let serving = axum::serve(http, app).with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            });
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "the HTTP sidecar failed");
            }
        });
        let purge = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = nonces.purge_expired(crate::clock::unix_ms()) {
                    tracing::warn!(error = %e, "purging expired nonces failed");
                }
            }
        });
        Ok(Self {
            endpoint,
            fingerprint: identity.fingerprint(),
            context,
            db,
            sessions,
            http,
            http_addr,
            purge,
        })
    }

    /// Where devices connect.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Where the HTTP sidecar listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The SHA-256 fingerprint of the TLS certificate, for pinning.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The device registry.
    pub fn registry(&self) -> &DeviceRegistry {
        &self.context.registry
    }

    /// The execution reports stored.
    pub fn reports(&self) -> &dyn ReportStore {
        self.context.reports.as_ref()
    }

    /// The master key sealing device secrets.
    pub fn master_key(&self) -> &MasterKey {
        &self.context.master_key
    }

    /// Publishes a signal (see [`SessionContext::publish`]).
    pub async fn publish(
        &self,
        channel: &ChannelName,
        draft: SignalDraft,
    ) -> Result<Signal, SignalLogError> {
        self.context
            .publish(channel, draft, None)
            .await
            .map(|appended| appended.signal)
    }

    /// The channels' signal logs.
    pub fn signals(&self) -> &dyn SignalLog {
        self.context.signals.as_ref()
    }

    /// Subscribes a device to a channel (see [`SessionContext::subscribe`]).
    pub async fn subscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<(), RegistryError> {
        self.context.subscribe(device_id, channel).await
    }

    /// Revokes a device (see [`SessionContext::revoke`]).
    pub fn revoke(&self, device_id: &str) -> Result<(), RegistryError> {
        self.context.revoke(device_id).map(|_| ())
    }

    /// The state shared by the QUIC sessions and the HTTP sidecar.
    pub fn context(&self) -> Arc<SessionContext> {
        self.context.clone()
    }

    /// Tells every device `GoingAway(Shutdown)`, closes every connection and
    /// flushes the store.
    pub async fn shutdown(self) {
        self.context.shutdown.send_replace(true);
        // Give sessions a moment to deliver their going-away and close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.endpoint.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"gateway shutting down");
        self.endpoint.wait_idle().await;
        self.purge.abort();
        let _ = self.purge.await;
        // Sessions and the sidecar hold the store; they end now that their
        // connections are closed.
        let _ = self.sessions.await;
        let _ = self.http.await;
        if let Err(e) = crate::durable::flush(&self.db).await {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
        // The context holds the last handles on the store; dropping it here
        // releases the data directory's lock for the next process.
        drop(self.context);
    }
}
