//! Devices as the sidecar's journal knows them: it compares the device
//! registry with what it has journaled and records each registration,
//! secret replacement and revocation it had not seen, once. The journal is
//! the webhooks' outbox, so these become `device.*` events; a change the
//! sidecar missed (a crash, a device registered from the command line) is
//! found at the next comparison, never lost.

use super::{Decided, Programme};
use crate::facts::Fact;

/// A device as the registry holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    /// The device.
    pub device_id: String,
    /// Its platform account.
    pub account_id: String,
    /// When it was registered.
    pub registered_at_ms: u64,
    /// A digest of its sealed secret.
    pub secret_digest: String,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// What the journal knows of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KnownDevice {
    pub(super) secret_digest: String,
    pub(super) revoked: bool,
}

impl Programme {
    /// Whether the journal already knows `device` as it is.
    pub fn knows_device(&self, device: &ObservedDevice) -> bool {
        self.devices.get(&device.device_id).is_some_and(|known| {
            known.revoked == device.revoked_at_ms.is_some()
                && (known.revoked || known.secret_digest == device.secret_digest)
        })
    }

    /// The facts that bring the journal up to `device`: its registration,
    /// a replaced secret, its revocation, each only if not journaled yet.
    /// A revoked device's later secret changes are not news.
    pub fn device_observed(&self, device: &ObservedDevice, now_ms: u64) -> Decided {
        let mut facts = Vec::new();
        let known = self.devices.get(&device.device_id);
        match known {
            None => facts.push(Fact::DeviceRegistered {
                device_id: device.device_id.clone(),
                account_id: device.account_id.clone(),
                registered_at_ms: device.registered_at_ms,
                secret_digest: device.secret_digest.clone(),
                at_ms: now_ms,
            }),
            Some(known) if !known.revoked && known.secret_digest != device.secret_digest => {
                facts.push(Fact::DeviceSecretReplaced {
                    device_id: device.device_id.clone(),
                    secret_digest: device.secret_digest.clone(),
                    at_ms: now_ms,
                });
            }
            Some(_) => {}
        }
        if let Some(revoked_at_ms) = device.revoked_at_ms
            && !known.is_some_and(|k| k.revoked)
        {
            facts.push(Fact::DeviceRevoked {
                device_id: device.device_id.clone(),
                revoked_at_ms,
                at_ms: now_ms,
            });
        }
        if facts.is_empty() {
            Decided::replay()
        } else {
            Decided::new(facts)
        }
    }

    pub(super) fn apply_device(&mut self, fact: &Fact) {
        match fact {
            Fact::DeviceRegistered {
                device_id,
                secret_digest,
                ..
            } => {
                self.devices.insert(
                    device_id.clone(),
                    KnownDevice {
                        secret_digest: secret_digest.clone(),
                        revoked: false,
                    },
                );
            }
            Fact::DeviceSecretReplaced {
                device_id,
                secret_digest,
                ..
            } => {
                if let Some(known) = self.devices.get_mut(device_id) {
                    known.secret_digest = secret_digest.clone();
                }
            }
            Fact::DeviceRevoked { device_id, .. } => {
                if let Some(known) = self.devices.get_mut(device_id) {
                    known.revoked = true;
                }
            }
            _ => {}
        }
    }
}
