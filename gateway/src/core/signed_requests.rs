//! Devices that speak in signed requests instead of a connection
//! (`DEVICE-HTTP.md`: EAs that may not load a DLL, over HTTPS): each request
//! checked on its own, and sessions that live between requests.
//!
//! A request passes the same checks as a QUIC authentication, in the same
//! nonce store, skew window and slow-down ([`Core::check_request`]); only
//! the MAC differs (no channel binding; the request's method, target and
//! body hash instead).
//!
//! A session over requests is a session epoch like any other: the device
//! opens one ([`Core::open_request_session`]), which takes over from every
//! older session of the device (QUIC or requests, newest wins, the older
//! told `Replaced`), and names it in every later request. Each request then
//! runs the core's own [`DeviceSession`] for as long as it lasts
//! ([`Core::rejoin`]), registered under that epoch: the signals it sends are
//! a QUIC session's signals (same order, resume and retention rules), the
//! reports it takes are a QUIC session's reports (stored once, confirmed
//! once durable, fenced by the epoch), and a takeover or revocation reaches
//! it as it reaches any session. Between requests the epoch is all there
//! is: a request naming one older than the device's newest is told it was
//! replaced.

use std::net::IpAddr;

use eagate_protocol::{
    DeviceId, DeviceSecret, MAX_RESUME_POINTS, Nonce, PROTOCOL_VERSION, Refusal, ResumePoint,
};
use tracing::warn;

use super::Core;
use super::admission::CheckFailure;
use super::checks;
use super::close::Close;
use super::device_session::{DeviceSession, SessionClaim};
use crate::reports::SessionEpoch;

/// What a signed request claims, beside its MAC.
#[derive(Debug, Clone, Copy)]
pub struct RequestClaim<'r> {
    /// The device it comes from.
    pub device_id: &'r DeviceId,
    /// The device's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Unique per device for the nonce lifetime.
    pub nonce: &'r Nonce,
}

/// Why a request's session could not be rejoined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejoinDenial {
    /// The session is over: replaced by a newer one, or the store away.
    Ended(Close),
    /// The store knows no session under the token's epoch, nor any newer:
    /// the device opens a new one.
    UnknownSession,
}

/// Why a signed request was not let through.
#[derive(Debug)]
pub enum RequestDenial {
    /// Refused, whatever the reason: one answer for all.
    Failed,
    /// The device's clock is outside the window. The request's MAC
    /// verified, so the answer is signed, with the device's secret.
    ClockSkew {
        /// The gateway's clock, Unix milliseconds.
        gateway_time_ms: u64,
        /// The device's secret.
        secret: DeviceSecret,
    },
    /// The store could not be asked in time.
    StoreUnavailable,
}

/// The label of session tokens' MACs under the master key.
const SESSION_TOKEN_LABEL: &str = "https session";

impl Core {
    /// The token naming `device_id`'s session `epoch` over HTTPS:
    /// `EPOCH-TAG`, the tag a MAC under the master key, so a device can
    /// name only sessions it opened over HTTPS (never a QUIC session's
    /// epoch, nor one it made up), on any gateway of the deployment.
    pub fn session_token(&self, device_id: &str, epoch: SessionEpoch) -> String {
        let tag = self.session_tag(device_id, epoch);
        let tag: [u8; 16] = eagate_protocol::http_signing::lower_hex(&tag);
        let tag = std::str::from_utf8(&tag).expect("hex digits are ASCII");
        format!("{}-{tag}", epoch.0)
    }

    /// The session `token` names for `device_id`, if it is one
    /// [`Core::session_token`] gave.
    pub fn session_of_token(&self, device_id: &str, token: &str) -> Option<SessionEpoch> {
        let (epoch, tag) = token.split_once('-')?;
        let epoch = SessionEpoch(eagate_protocol::http_signing::parse_timestamp(epoch)?);
        let tag: [u8; 8] = eagate_protocol::http_signing::parse_lower_hex(tag)?;
        let expected = self.session_tag(device_id, epoch);
        // Compared in constant time: the tag is a MAC.
        let same = expected
            .iter()
            .zip(tag)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
        same.then_some(epoch)
    }

    /// The MAC a session token carries: its first 8 bytes, under the master
    /// key, over the device and the epoch.
    fn session_tag(&self, device_id: &str, epoch: SessionEpoch) -> [u8; 8] {
        let tag = self.master_key.tag(
            SESSION_TOKEN_LABEL,
            &[device_id.as_bytes(), &epoch.0.to_be_bytes()],
        );
        tag[..8].try_into().expect("8 of 32 bytes")
    }

    /// Checks a signed request from `source` as `DEVICE-HTTP.md` says:
    /// the device exists and is not revoked, `verify` accepts its MAC under
    /// the device's secret, its clock is within the window, its nonce is
    /// new; repeated failures are slowed down. The device's secret, to sign
    /// the answer with.
    ///
    /// Every refusal but a skewed clock comes back as
    /// [`RequestDenial::Failed`]: whoever sent the request learns nothing of
    /// which check failed.
    pub async fn check_request(
        &self,
        claim: RequestClaim<'_>,
        verify: impl FnOnce(&DeviceSecret) -> bool,
        source: IpAddr,
    ) -> Result<DeviceSecret, RequestDenial> {
        let settings = self.auth;
        let checked = self.check_claim(claim.device_id, claim.nonce, source, |device, now_ms| {
            checks::assess_signed(device, verify, claim.timestamp_ms, now_ms, &settings)
        });
        match tokio::time::timeout(self.auth_deadline, checked).await {
            Ok(Ok(credentials)) => Ok(credentials.secret),
            Ok(Err(CheckFailure::Refused(Refusal::ClockSkew(skew), Some(credentials)))) => {
                Err(RequestDenial::ClockSkew {
                    gateway_time_ms: skew.gateway_time_ms,
                    secret: credentials.secret,
                })
            }
            Ok(Err(CheckFailure::Refused(..))) => Err(RequestDenial::Failed),
            Ok(Err(CheckFailure::StoreUnavailable)) => Err(RequestDenial::StoreUnavailable),
            Err(_elapsed) => {
                self.metrics.store_error();
                warn!(
                    device = %claim.device_id,
                    "the checks of a signed request did not finish in time"
                );
                Err(RequestDenial::StoreUnavailable)
            }
        }
    }

    /// Opens a session over requests for `device_id` (whose request passed
    /// [`Core::check_request`]): a new epoch, which ends every older
    /// session of the device, here and on other gateways, as a QUIC
    /// authentication does. The epoch, and the device's confirmed report
    /// sequence.
    pub async fn open_request_session(
        &self,
        device_id: &str,
    ) -> Result<(SessionEpoch, u64), RequestDenial> {
        let (epoch, confirmed) = self
            .in_time(
                device_id,
                "beginning a session",
                self.reports.begin_session(device_id),
            )
            .await
            .map_err(|_| RequestDenial::StoreUnavailable)?;
        // The session lives in the device's later requests, not here: its
        // place is given up at once, once the older sessions were told.
        drop(self.take_over(device_id, epoch).await);
        Ok((epoch, confirmed))
    }

    /// The device's session under `epoch`, for the span of one request:
    /// registered where takeovers and revocations find it, resuming each
    /// channel after the position `resume` names (others where the
    /// gateway's record says). [`Close::Replaced`] when a newer session of
    /// the device began; [`RejoinDenial::UnknownSession`] when the store's
    /// newest epoch is behind `epoch` (it lost its last writes). Call [`DeviceSession::start`] to have it follow
    /// the device's channels, and [`DeviceSession::finish`] at the end.
    pub async fn rejoin(
        &self,
        device_id: DeviceId,
        epoch: SessionEpoch,
        resume: heapless::Vec<ResumePoint, MAX_RESUME_POINTS>,
    ) -> Result<DeviceSession<'_>, RejoinDenial> {
        // Registered before the epoch is read: a takeover after the read
        // finds the session and ends it.
        let live = self
            .live
            .register(device_id.as_str(), epoch, crate::clock::unix_ms());
        let newest = self
            .in_time(
                device_id.as_str(),
                "reading a session's epoch",
                self.reports.current_session(device_id.as_str()),
            )
            .await;
        let session = DeviceSession::new(
            self,
            SessionClaim {
                device_id,
                protocol_version: PROTOCOL_VERSION,
                resume,
            },
            live,
        );
        match newest {
            Ok(newest) if newest == epoch && epoch > SessionEpoch(0) => Ok(session),
            Ok(newest) if newest > epoch => Err(RejoinDenial::Ended(Close::Replaced)),
            // Behind the token: the store lost the newest epoch (restored
            // from a backup, a Redis failover that lost its last writes).
            // Nothing replaced the device; it opens a new session.
            Ok(_) => Err(RejoinDenial::UnknownSession),
            Err(super::StoreAway) => Err(RejoinDenial::Ended(Close::StoreUnavailable)),
        }
    }
}
