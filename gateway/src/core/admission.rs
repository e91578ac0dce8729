//! Admitting a device: its claim (an `Authenticate` with the channel binding
//! of the connection it came on) checked as DEVICE-AUTH.md says, slowed down
//! after repeated failures, then made the device's only live session. What
//! a transport calls once it has read the claim; what it tells the device is
//! the answer, `AuthAccepted` or a [`Denial`].

use std::net::IpAddr;
use std::time::Instant;

use eagate_protocol::{AuthAccepted, Authenticate, ChannelBinding, DeviceId, Nonce, Refusal};
use tracing::{info, warn};

use super::Core;
use super::checks::{self, Assessment, FailureReason, ThrottleKey};
use super::close::Close;
use super::device_session::DeviceSession;
use crate::clock::unix_ms;
use crate::registry::DeviceCredentials;

/// Why a device was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Refused, with this answer (`AuthRefused`).
    Refused(Refusal),
    /// The store could not be asked in time: no refusal, the device comes
    /// back later (`GoingAway(Shutdown)`).
    StoreUnavailable,
}

impl Denial {
    /// How the attempt ends.
    pub fn close(self) -> Close {
        match self {
            Self::Refused(Refusal::Failed) => Close::AuthFailed,
            Self::Refused(Refusal::ClockSkew(_)) => Close::ClockSkew,
            Self::Refused(Refusal::Revoked) => Close::Revoked,
            Self::Refused(Refusal::UnsupportedVersion(_)) => Close::UnsupportedVersion,
            Self::StoreUnavailable => Close::StoreUnavailable,
        }
    }
}

/// An admitted device: its session, and the welcome to send it.
#[derive(Debug)]
pub struct Admitted<'a> {
    /// The device's session, the only live one of the device.
    pub session: DeviceSession<'a>,
    /// What to tell the device.
    pub accepted: AuthAccepted,
}

impl Core {
    /// Admits the device claiming `claim` on a connection whose channel
    /// binding is `binding`, from `source`.
    ///
    /// The checks and the new session's epoch have a deadline of their own
    /// (the core's `auth_deadline`): a gateway whose store does not answer
    /// must not hold connections open without end. Then older sessions of
    /// the device end (see `super::sessions`), at most
    /// [`super::sessions::TAKEOVER_WAIT`] later.
    pub async fn admit(
        &self,
        claim: Authenticate,
        binding: &ChannelBinding,
        source: IpAddr,
    ) -> Result<Admitted<'_>, Denial> {
        let device = claim.device_id.as_str();
        let checked = async {
            self.check(&claim, binding, source).await?;
            self.reports.begin_session(device).await.map_err(|e| {
                self.metrics.store_error();
                warn!(device, error = %e, "beginning a session failed");
                Denial::StoreUnavailable
            })
        };
        let (epoch, confirmed_report_seq) =
            match tokio::time::timeout(self.auth_deadline, checked).await {
                Ok(begun) => begun?,
                Err(_elapsed) => {
                    self.metrics.store_error();
                    warn!(device, "the authentication checks did not finish in time");
                    return Err(Denial::StoreUnavailable);
                }
            };
        let live = self.take_over(device, epoch).await;
        Ok(Admitted {
            accepted: AuthAccepted {
                gateway_time_ms: unix_ms(),
                session: self.session,
                confirmed_report_seq,
            },
            session: DeviceSession::new(self, claim.into(), live),
        })
    }

    /// The checks of DEVICE-AUTH.md after the frame, with the slow-down of
    /// repeated failures.
    async fn check(
        &self,
        claim: &Authenticate,
        binding: &ChannelBinding,
        source: IpAddr,
    ) -> Result<(), Denial> {
        let settings = self.auth;
        self.check_claim(&claim.device_id, &claim.nonce, source, |device, now_ms| {
            checks::assess(claim, device, binding, now_ms, &settings)
        })
        .await
        .map(drop)
        .map_err(|failure| match failure {
            CheckFailure::Refused(refusal, _) => Denial::Refused(refusal),
            CheckFailure::StoreUnavailable => Denial::StoreUnavailable,
        })
    }

    /// The checks of any signed claim of `device_id` from `source`:
    /// `assess` judges the claim against what the registry holds for the
    /// device at a given time; the nonce is claimed if it passes; failures
    /// are slowed down, per source and per (device, source). The device's
    /// credentials when it passes.
    pub(super) async fn check_claim(
        &self,
        device_id: &DeviceId,
        nonce: &Nonce,
        source: IpAddr,
        assess: impl FnOnce(Option<&DeviceCredentials>, u64) -> Assessment,
    ) -> Result<DeviceCredentials, CheckFailure> {
        let source_key = ThrottleKey::Source(source);
        // Per (device, source): failures from one address cannot slow the
        // device's logins from another.
        let device_key = ThrottleKey::Device(device_id.to_string(), source);
        let delay = {
            let throttle = self.throttle.lock().expect("throttle lock");
            let now = Instant::now();
            throttle
                .delay(&source_key, now)
                .max(throttle.delay(&device_key, now))
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.decide(device_id, nonce, assess).await {
            Ok(credentials) => {
                self.throttle
                    .lock()
                    .expect("throttle lock")
                    .record_success(&device_key);
                Ok(credentials)
            }
            // Not the device's failure: it comes back when the store does,
            // and is neither refused (the SDK would stop for good) nor slowed
            // down.
            Err(Decided::StoreTrouble) => Err(CheckFailure::StoreUnavailable),
            Err(Decided::Refused(refusal, reason, credentials)) => {
                {
                    let mut throttle = self.throttle.lock().expect("throttle lock");
                    let now = Instant::now();
                    throttle.record_failure(source_key, now);
                    throttle.record_failure(device_key, now);
                }
                self.metrics.auth_failure(reason);
                info!(
                    %source,
                    device = %device_id,
                    reason = reason.as_str(),
                    "authentication refused"
                );
                Err(CheckFailure::Refused(refusal, credentials))
            }
        }
    }

    async fn decide(
        &self,
        device_id: &DeviceId,
        nonce: &Nonce,
        assess: impl FnOnce(Option<&DeviceCredentials>, u64) -> Assessment,
    ) -> Result<DeviceCredentials, Decided> {
        let credentials = self
            .registry
            .credentials(&self.master_key, device_id)
            .await
            .map_err(|e| {
                self.metrics.store_error();
                warn!(error = %e, "device lookup failed");
                Decided::StoreTrouble
            })?;
        let now_ms = unix_ms();
        match assess(credentials.as_ref(), now_ms) {
            Assessment::Refuse(refusal, reason) => {
                // Only a claim whose MAC verified gets an answer of its own
                // (revoked, skewed clock): those carry the credentials.
                let verified = matches!(reason, FailureReason::Revoked | FailureReason::ClockSkew);
                Err(Decided::Refused(
                    refusal,
                    reason,
                    credentials.filter(|_| verified),
                ))
            }
            Assessment::ClaimNonce => {
                let Some(credentials) = credentials else {
                    // The checks never pass an unknown device.
                    return Err(Decided::Refused(
                        Refusal::Failed,
                        FailureReason::UnknownDevice,
                        None,
                    ));
                };
                let ttl = self.auth.nonce_ttl.as_millis() as u64;
                match self.nonces.claim(device_id, nonce, now_ms, ttl).await {
                    Ok(true) => Ok(credentials),
                    Ok(false) => Err(Decided::Refused(
                        Refusal::Failed,
                        FailureReason::ReplayedNonce,
                        None,
                    )),
                    Err(e) => {
                        self.metrics.store_error();
                        warn!(error = %e, "nonce store failed");
                        Err(Decided::StoreTrouble)
                    }
                }
            }
        }
    }
}

/// Why a claim did not pass the checks, as its transport needs to know.
#[derive(Debug)]
pub(super) enum CheckFailure {
    /// Refused with this answer; the device's credentials only when its
    /// MAC verified (a revoked device, a skewed clock).
    Refused(Refusal, Option<DeviceCredentials>),
    /// The store could not be asked.
    StoreUnavailable,
}

/// Why an authentication did not pass the checks.
enum Decided {
    /// The device is refused, with this answer (and its credentials when
    /// its MAC verified).
    Refused(Refusal, FailureReason, Option<DeviceCredentials>),
    /// The store could not be asked.
    StoreTrouble,
}
