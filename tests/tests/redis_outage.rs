//! A deployment's Redis crashes and restarts, then freezes for 8 s, then
//! stays away for 30 s, under devices that report without pause: the devices stay
//! connected, their confirmations pause and resume within seconds of Redis
//! returning, every report is stored exactly once, and readiness says
//! what is true throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eagate_sdk::protocol::{Fill, Signal};
use eagate_sdk::{Client, ClientConfig, Event, ServerTrust};
use eagate_tests::PrivateRedis;
use eagate_tests::process::Gateway;

const DEVICES: usize = 4;
/// Each device's pace: 5 reports a second, so a 30 s outage leaves about
/// 150 waiting per device, within the 256 a session holds.
const REPORT_EVERY: Duration = Duration::from_millis(200);
const OUTAGE: Duration = Duration::from_secs(30);
const FREEZE: Duration = Duration::from_secs(8);
/// How soon after Redis returns every report made before is confirmed.
const RESUMED_WITHIN: Duration = Duration::from_secs(10);

/// What one device saw.
#[derive(Debug, Default)]
struct Tally {
    device_id: String,
    connected: u32,
    disconnected: u32,
    /// Every report made: when, and its number.
    reported: Vec<(Instant, u64)>,
    /// Every confirmation: when, and up to which number.
    confirmed: Vec<(Instant, u64)>,
}

impl Tally {
    fn note(&mut self, event: Event) {
        match event {
            Event::Connected { .. } => self.connected += 1,
            Event::Disconnected { .. } => self.disconnected += 1,
            Event::ReportsConfirmed { up_to_seq } => {
                self.confirmed.push((Instant::now(), up_to_seq));
            }
            other => panic!("{}: unexpected {other:?}", self.device_id),
        }
    }

    fn last_reported(&self) -> u64 {
        self.reported.last().map_or(0, |&(_, seq)| seq)
    }

    fn last_confirmed(&self) -> u64 {
        self.confirmed.last().map_or(0, |&(_, seq)| seq)
    }

    /// The last report made before `moment`.
    fn reported_before(&self, moment: Instant) -> u64 {
        self.reported
            .iter()
            .take_while(|(at, _)| *at < moment)
            .last()
            .map_or(0, |&(_, seq)| seq)
    }

    /// How soon after Redis returned at `moment` (after `what`) every
    /// report made before was confirmed; at most [`RESUMED_WITHIN`].
    fn resumed_after(&self, moment: Instant, what: &str) -> Duration {
        let wanted = self.reported_before(moment);
        let after = self
            .confirmed
            .iter()
            .find(|(at, seq)| *at >= moment && *seq >= wanted)
            .map(|(at, _)| at.duration_since(moment))
            .unwrap_or_else(|| {
                panic!(
                    "{}: reports up to {wanted}, made before {what}, never confirmed",
                    self.device_id
                )
            });
        assert!(
            after < RESUMED_WITHIN,
            "{}: confirmed {after:?} after {what}",
            self.device_id
        );
        after
    }
}

/// A device reporting a fill of `signal` every [`REPORT_EVERY`] until
/// `stop`, then waiting until all its reports are confirmed.
async fn report_without_pause(
    config: ClientConfig,
    device_id: String,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally {
        device_id,
        ..Tally::default()
    };
    let mut client = Client::connect(config).await.expect("the device connects");
    let signal: Signal = loop {
        match client.next_event().await.expect("the client runs") {
            Event::Signal(signal) => break signal,
            other => tally.note(other),
        }
    };
    let mut pace = tokio::time::interval(REPORT_EVERY);
    let mut ticket = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            event = client.next_event() => tally.note(event.expect("the client runs")),
            _ = pace.tick() => {
                ticket += 1;
                let fill = Fill {
                    ticket,
                    price: "2350.5".parse().unwrap(),
                    volume: signal.volume,
                };
                let seq = client
                    .filled(signal.signal_id, fill)
                    .await
                    .expect("the journal takes the fill");
                tally.reported.push((Instant::now(), seq));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tally.last_confirmed() < tally.last_reported() {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(event) => tally.note(event.expect("the client runs")),
            Err(_) => panic!(
                "{}: reports up to {} made, confirmed up to {}",
                tally.device_id,
                tally.last_reported(),
                tally.last_confirmed()
            ),
        }
    }
    client.close().await;
    tally
}

/// Waits until `/readyz` answers 200; how long that took.
fn ready_again(gateway: &Gateway, within: Duration) -> Duration {
    let since = Instant::now();
    loop {
        if gateway.readiness().0 == 200 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "not ready {within:?} after Redis returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn devices_ride_out_a_redis_crash_a_freeze_and_a_30_s_outage_connected_with_every_report_stored_once()
 {
    let mut redis = PrivateRedis::start_durable();
    let data = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(data.path(), &["--redis-url", &redis.url]);
    let devices: Vec<(String, String)> = (0..DEVICES).map(|_| gateway.register("gold")).collect();
    let signal_id = gateway.publish("gold");
    let states: Vec<_> = (0..DEVICES).map(|_| tempfile::tempdir().unwrap()).collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = devices
        .iter()
        .zip(&states)
        .map(|(device, state)| {
            let config = ClientConfig::new(
                &gateway.quic,
                &device.0,
                &device.1,
                ServerTrust::Pinned(gateway.fingerprint.parse().unwrap()),
                state.path(),
            )
            .unwrap();
            runtime.spawn(report_without_pause(config, device.0.clone(), stop.clone()))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));

    // Redis crashes (SIGKILL) and is started again at once.
    redis.stop();
    redis.restart();
    let restarted = Instant::now();
    ready_again(&gateway, RESUMED_WITHIN);
    std::thread::sleep(Duration::from_secs(5));

    // Redis freezes for 8 s: connections open, no answers, no errors.
    redis.freeze();
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = gateway.readiness();
    assert_eq!(status, 503, "not ready while Redis is frozen");
    assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
    std::thread::sleep(FREEZE.saturating_sub(Duration::from_millis(200) + took));
    redis.thaw();
    let thawed = Instant::now();
    ready_again(&gateway, RESUMED_WITHIN);
    std::thread::sleep(Duration::from_secs(5));

    // Redis goes away for 30 s.
    redis.stop();
    let gone = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = gateway.readiness();
    assert_eq!(status, 503, "not ready while Redis is away");
    assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
    std::thread::sleep(OUTAGE / 2);
    let (status, took) = gateway.readiness();
    assert_eq!(status, 503, "still not ready half-way through");
    assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
    std::thread::sleep(OUTAGE.saturating_sub(gone.elapsed()));
    redis.restart();
    let back = Instant::now();
    let ready_after = ready_again(&gateway, RESUMED_WITHIN);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = tasks
        .into_iter()
        .map(|task| runtime.block_on(task).expect("the device's task"))
        .collect();
    let away = back.duration_since(gone);
    eprintln!("Redis away {away:?}; ready again after {ready_after:?}");

    for tally in &tallies {
        let device = &tally.device_id;
        assert_eq!(
            (tally.connected, tally.disconnected),
            (1, 0),
            "{device}: one session throughout, never disconnected"
        );
        let after_crash = tally.resumed_after(restarted, "the crash");
        let after_freeze = tally.resumed_after(thawed, "the freeze");
        // Nothing is confirmed while Redis is away (allowing a moment for
        // confirmations already on their way), and a report made while it
        // was away is among those waiting.
        let confirmed_meanwhile = tally
            .confirmed
            .iter()
            .filter(|(at, _)| *at > gone + Duration::from_secs(2) && *at < back)
            .count();
        assert_eq!(
            confirmed_meanwhile, 0,
            "{device}: a confirmation while Redis was away"
        );
        assert!(
            tally.reported_before(back) > tally.reported_before(gone) + 100,
            "{device}: it went on reporting while Redis was away"
        );
        let after_outage = tally.resumed_after(back, "the outage");
        eprintln!(
            "{device}: {} reports; confirmed {after_crash:?} after the crash, {after_freeze:?} after the freeze, {after_outage:?} after the outage",
            tally.last_reported()
        );
        // Every report stored once, under its number.
        let expected: Vec<(u64, String)> = (1..=tally.last_reported())
            .map(|seq| (seq, "filled".to_owned()))
            .collect();
        let mut stored = gateway.stored_reports(&signal_id, device);
        stored.sort();
        assert_eq!(
            stored, expected,
            "{device}: each report stored exactly once"
        );
    }
}
