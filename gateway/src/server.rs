//! Starting and stopping a gateway: opens the embedded store, loads the TLS
//! identity and master key, binds the QUIC endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthSettings;
use crate::config::ServeConfig;
use crate::nonces::NonceStore;
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
    /// The QUIC listener could not bind.
    #[error("binding the QUIC listener on {0}: {1}")]
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
        let nonces = NonceStore::open(&db).map_err(RegistryError::from)?;
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
            nonces.clone(),
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
            purge,
        })
    }

    /// Where devices connect.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
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

    /// Publishes a signal: validates it, appends it durably to the channel's
    /// log, and hands it to every connected subscriber.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        draft: SignalDraft,
    ) -> Result<Signal, SignalLogError> {
        let signal = self.context.signals.append(channel, draft).await?;
        self.context.hub.announce(signal.clone());
        Ok(signal)
    }

    /// The channels' signal logs.
    pub fn signals(&self) -> &dyn SignalLog {
        self.context.signals.as_ref()
    }

    /// Subscribes a device to a channel from now on: it receives signals
    /// published after this call (from its next connection). Subscribing
    /// again changes nothing.
    pub async fn subscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<(), RegistryError> {
        if self.context.registry.subscribe(device_id, channel)? {
            let head = self
                .context
                .signals
                .head(channel)
                .await
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            self.context.positions.advance(device_id, channel, head)?;
        }
        Ok(())
    }

    /// Revokes a device: it can no longer authenticate, and its live
    /// sessions are told `GoingAway(Revoked)` and closed at once.
    pub fn revoke(&self, device_id: &str) -> Result<(), RegistryError> {
        self.context.registry.revoke(device_id)?;
        // No receiver just means no session is live.
        let _ = self.context.revocations.send(device_id.to_owned());
        Ok(())
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
        // Sessions hold the store; they end now that their connections are closed.
        let _ = self.sessions.await;
        if let Err(e) = self.db.flush_async().await {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
        // The context holds the last handles on the store; dropping it here
        // releases the data directory's lock for the next process.
        drop(self.context);
    }
}
