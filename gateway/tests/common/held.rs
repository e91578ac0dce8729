//! A core built by hand on a temporary sled database, around a report store
//! the test holds: its writes made durable, held or failed when the test
//! says, its session calls frozen while the test says. What a real store does
//! when its disk stalls or its server stops answering, on cue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eagate_gateway::core::Core;
use eagate_gateway::durable::Durable;
use eagate_gateway::registry::DeviceRegistry;
use eagate_gateway::reports::{
    FeedFill, ReportStore, ReportStoreError, SessionEpoch, StoreFuture, StoredReport, Written,
};
use eagate_gateway::seal::MasterKey;
use eagate_gateway::store::sled::{
    SledDeviceStore, SledNonceStore, SledPositions, SledReportStore, SledSignalLog,
};
use eagate_protocol::{ChannelName, DeviceId, DeviceSecret, SignalId};
use tokio::sync::watch;

/// A core on a temporary sled database, its reports kept by `reports`; no
/// endpoint, no listener.
pub fn core_with(reports: impl FnOnce(&Durable) -> Arc<dyn ReportStore>) -> (Core, Durable) {
    let db = Durable::new(sled::Config::new().temporary(true).open().unwrap()).unwrap();
    let core = Core::new(
        DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db).unwrap())),
        MasterKey::from_hex(&"ab".repeat(32)).unwrap(),
        Arc::new(SledNonceStore::open(&db).unwrap()),
        reports(&db),
        Arc::new(SledSignalLog::open(&db).unwrap()),
        Arc::new(SledPositions::open(&db).unwrap()),
    );
    (core, db)
}

/// A core whose reports a [`HeldReports`] keeps, and that store, for the
/// test to hold and let go.
pub fn core_with_held_reports() -> (Core, Durable, Arc<HeldReports>) {
    let mut held = None;
    let (core, db) = core_with(|db| {
        let store = Arc::new(HeldReports::new(SledReportStore::open(db).unwrap()));
        held = Some(store.clone());
        store
    });
    (core, db, held.unwrap())
}

/// A device registered on `core` and subscribed to gold: its id and secret.
pub async fn gold_follower(core: &Core) -> (DeviceId, DeviceSecret) {
    let (record, secret) = core
        .registry
        .register(&core.master_key, "acct-1", "VPS")
        .await
        .unwrap();
    let id = DeviceId::new(&record.device_id).unwrap();
    let gold = ChannelName::new("gold").unwrap();
    core.subscribe(id.as_str(), &gold).await.unwrap();
    (id, secret)
}

/// What becomes of a report once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// It becomes durable as sled makes it so.
    Durable,
    /// It waits, as on a disk that stalls.
    Held,
    /// It fails, as on a disk that is gone.
    Failing,
}

/// A report store on sled that a test can stall: writes made while
/// [`HeldReports::durability`] is not `Durable` become durable only when it
/// says (and what is announced as
/// confirmed waits for that too, as sled's flush is waited for), are refused at once while
/// [`HeldReports::away`] is set (as a Redis restarting refuses
/// connections), and the session calls (beginning a session, reading a
/// session's epoch or the confirmed sequence) wait while
/// [`HeldReports::frozen`] is set, as on a store that stopped answering.
#[derive(Debug)]
pub struct HeldReports {
    inner: SledReportStore,
    pub durability: watch::Sender<Durability>,
    pub away: AtomicBool,
    pub frozen: watch::Sender<bool>,
}

impl HeldReports {
    /// Durable, present and answering until the test says otherwise.
    pub fn new(inner: SledReportStore) -> Self {
        Self {
            inner,
            durability: watch::channel(Durability::Durable).0,
            away: AtomicBool::new(false),
            frozen: watch::channel(false).0,
        }
    }

    async fn thawed(&self) {
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|frozen| !*frozen).await;
    }
}

/// Waits, as the store's flush does, until writes are no longer held: an
/// error once they fail.
async fn flushed(mut durability: watch::Receiver<Durability>) -> Result<(), ReportStoreError> {
    match *durability
        .wait_for(|d| *d != Durability::Held)
        .await
        .unwrap()
    {
        Durability::Failing => Err(ReportStoreError::Corrupt("the disk is gone".into())),
        _ => Ok(()),
    }
}

impl ReportStore for HeldReports {
    fn write<'a>(
        &'a self,
        report: &'a StoredReport,
        epoch: Option<SessionEpoch>,
    ) -> StoreFuture<'a, Written> {
        if self.away.load(Ordering::SeqCst) {
            let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            return Box::pin(std::future::ready(Err(ReportStoreError::Redis(
                refused.into(),
            ))));
        }
        // A write made while the disk works is durable once sled says so,
        // whatever happens to the disk after.
        let durability = self.durability.subscribe();
        let works = *durability.borrow() == Durability::Durable;
        Box::pin(async move {
            let written = self.inner.write(report, epoch).await?;
            let inner = written.durable;
            Ok(Written {
                ingested: written.ingested,
                durable: Box::pin(async move {
                    inner.await?;
                    if works {
                        return Ok(());
                    }
                    flushed(durability).await
                }),
            })
        })
    }
    fn begin_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, (SessionEpoch, u64)> {
        Box::pin(async move {
            self.thawed().await;
            let durability = self.durability.subscribe();
            let begun = self.inner.begin_session(device_id).await?;
            // What it announces as confirmed is on disk (as sled's is).
            flushed(durability).await?;
            Ok(begun)
        })
    }
    fn current_session<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, SessionEpoch> {
        Box::pin(async move {
            self.thawed().await;
            self.inner.current_session(device_id).await
        })
    }
    fn confirmed_up_to<'a>(&'a self, device_id: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            self.thawed().await;
            let durability = self.durability.subscribe();
            let confirmed = self.inner.confirmed_up_to(device_id).await?;
            flushed(durability).await?;
            Ok(confirmed)
        })
    }
    fn for_signal<'a>(&'a self, signal_id: SignalId) -> StoreFuture<'a, Vec<StoredReport>> {
        self.inner.for_signal(signal_id)
    }
    fn report_at<'a>(
        &'a self,
        device_id: &'a str,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredReport>> {
        self.inner.report_at(device_id, seq)
    }
    fn unclaimed_fills<'a>(
        &'a self,
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<FeedFill>> {
        self.inner.unclaimed_fills(after, limit)
    }
    fn claim_fills<'a>(&'a self, fills: &'a [FeedFill]) -> StoreFuture<'a, ()> {
        self.inner.claim_fills(fills)
    }
}
