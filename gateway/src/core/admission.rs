//! Admitting a device: its claim (an `Authenticate` with the channel binding
//! of the connection it came on) checked as DEVICE-AUTH.md says, slowed down
//! after repeated failures, then made the device's only live session. What
//! a transport calls once it has read the claim; what it tells the device is
//! the answer, `AuthAccepted` or a [`Denial`].

use std::net::IpAddr;
use std::time::Instant;

use eagate_protocol::{AuthAccepted, Authenticate, ChannelBinding, Refusal};
use tracing::{info, warn};

use super::Core;
use super::checks::{self, Assessment, FailureReason, ThrottleKey};
use super::close::Close;
use super::device_session::DeviceSession;
use crate::clock::unix_ms;

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
        let (live, alone) = self.take_over(device, epoch).await;
        if !alone {
            warn!(
                device,
                "an older session of the device did not close in time; its reports are fenced off"
            );
        }
        Ok(Admitted {
            accepted: AuthAccepted {
                gateway_time_ms: unix_ms(),
                session: self.session,
                confirmed_report_seq,
            },
            session: DeviceSession::new(self, claim, live),
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
        let source_key = ThrottleKey::Source(source);
        // Per (device, source): failures from one address cannot slow the
        // device's logins from another.
        let device_key = ThrottleKey::Device(claim.device_id.to_string(), source);
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
        match self.decide(claim, binding).await {
            Ok(()) => {
                self.throttle
                    .lock()
                    .expect("throttle lock")
                    .record_success(&device_key);
                Ok(())
            }
            // Not the device's failure: it comes back when the store does,
            // and is neither refused (the SDK would stop for good) nor slowed
            // down.
            Err(Decided::StoreTrouble) => Err(Denial::StoreUnavailable),
            Err(Decided::Refused(refusal, reason)) => {
                {
                    let mut throttle = self.throttle.lock().expect("throttle lock");
                    let now = Instant::now();
                    throttle.record_failure(source_key, now);
                    throttle.record_failure(device_key, now);
                }
                self.metrics.auth_failure(reason);
                info!(
                    %source,
                    device = %claim.device_id,
                    reason = reason.as_str(),
                    "authentication refused"
                );
                Err(Denial::Refused(refusal))
            }
        }
    }

    async fn decide(&self, claim: &Authenticate, binding: &ChannelBinding) -> Result<(), Decided> {
        let credentials = self
            .registry
            .credentials(&self.master_key, &claim.device_id)
            .await
            .map_err(|e| {
                self.metrics.store_error();
                warn!(error = %e, "device lookup failed");
                Decided::StoreTrouble
            })?;
        let now_ms = unix_ms();
        match checks::assess(claim, credentials.as_ref(), binding, now_ms, &self.auth) {
            Assessment::Refuse(refusal, reason) => Err(Decided::Refused(refusal, reason)),
            Assessment::ClaimNonce => {
                let ttl = self.auth.nonce_ttl.as_millis() as u64;
                match self
                    .nonces
                    .claim(&claim.device_id, &claim.nonce, now_ms, ttl)
                    .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Decided::Refused(
                        Refusal::Failed,
                        FailureReason::ReplayedNonce,
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

/// Why an authentication did not pass the checks.
enum Decided {
    /// The device is refused, with this answer.
    Refused(Refusal, FailureReason),
    /// The store could not be asked.
    StoreTrouble,
}
