//! The device registry in sled: who may connect, under which account, with
//! which (sealed) secret, and whether they are revoked.

use serde::{Deserialize, Serialize};

use eagate_protocol::{ChannelName, DeviceId, DeviceSecret, MAX_RESUME_POINTS};

use crate::clock::unix_ms;
use crate::seal::{MasterKey, SealError};

/// A registered device as stored. The secret is only ever stored sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The gateway-issued id, `dv_` and a ULID.
    pub device_id: String,
    /// The platform user the device belongs to.
    pub account_id: String,
    /// A name its owner chose, unique within the account.
    pub name: String,
    /// The secret, sealed under the master key for this device id.
    pub sealed_secret: Vec<u8>,
    /// When it was registered, Unix ms.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
    /// The channels it receives signals from.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// What authentication needs to know about a device.
#[derive(Debug)]
pub struct DeviceCredentials {
    /// The unsealed secret.
    pub secret: DeviceSecret,
    /// Whether the device is revoked.
    pub revoked: bool,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// sled failed.
    #[error("device store: {0}")]
    Store(#[from] sled::Error),
    /// A record could not be decoded: the store is damaged.
    #[error("device record {0} is damaged")]
    Corrupt(String),
    /// The secret could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The operating system's random source failed.
    #[error("no randomness from the operating system")]
    Random,
    /// No such device.
    #[error("no device {0}")]
    NotFound(String),
    /// A device follows at most as many channels as it can name when it
    /// resumes.
    #[error("a device can subscribe to at most {MAX_RESUME_POINTS} channels")]
    TooManyChannels,
}

/// Devices in a sled tree, keyed by device id.
#[derive(Debug, Clone)]
pub struct DeviceRegistry {
    devices: sled::Tree,
}

impl DeviceRegistry {
    /// Opens the `devices` tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, RegistryError> {
        Ok(Self {
            devices: db.open_tree("devices")?,
        })
    }

    /// Registers a device and returns its record and secret. The secret is
    /// returned this once and stored only sealed.
    pub fn register(
        &self,
        master_key: &MasterKey,
        account_id: &str,
        name: &str,
    ) -> Result<(DeviceRecord, DeviceSecret), RegistryError> {
        let device_id = new_device_id()?;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..]).map_err(|_| RegistryError::Random)?;
        let secret = DeviceSecret::from_bytes(*bytes);
        let record = DeviceRecord {
            sealed_secret: master_key.seal(&device_id, &secret)?,
            device_id: device_id.to_string(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            created_at_ms: unix_ms(),
            revoked_at_ms: None,
            channels: Vec::new(),
        };
        self.devices
            .insert(record.device_id.as_bytes(), encode(&record))?;
        self.devices.flush()?;
        Ok((record, secret))
    }

    /// The stored record of `device_id`.
    pub fn get(&self, device_id: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        self.devices
            .get(device_id.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|_| RegistryError::Corrupt(device_id.to_owned()))
            })
            .transpose()
    }

    /// The credentials of `device_id`, unsealed, if it is registered.
    pub fn credentials(
        &self,
        master_key: &MasterKey,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceCredentials>, RegistryError> {
        let Some(record) = self.get(device_id.as_str())? else {
            return Ok(None);
        };
        Ok(Some(DeviceCredentials {
            secret: master_key.unseal(device_id, &record.sealed_secret)?,
            revoked: record.revoked_at_ms.is_some(),
        }))
    }

    /// Marks `device_id` revoked; it can no longer authenticate.
    pub fn revoke(&self, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        let now = unix_ms();
        let updated = self.devices.update_and_fetch(device_id.as_bytes(), |old| {
            let mut record: DeviceRecord = serde_json::from_slice(old?).ok()?;
            record.revoked_at_ms.get_or_insert(now);
            Some(encode(&record))
        })?;
        self.devices.flush()?;
        let bytes = updated.ok_or_else(|| RegistryError::NotFound(device_id.to_owned()))?;
        serde_json::from_slice(&bytes).map_err(|_| RegistryError::Corrupt(device_id.to_owned()))
    }
}

impl DeviceRegistry {
    /// Subscribes `device_id` to `channel`; returns whether it was newly
    /// subscribed (subscribing twice changes nothing).
    pub fn subscribe(&self, device_id: &str, channel: &ChannelName) -> Result<bool, RegistryError> {
        let mut added = false;
        let mut too_many = false;
        let updated = self.devices.update_and_fetch(device_id.as_bytes(), |old| {
            let mut record: DeviceRecord = serde_json::from_slice(old?).ok()?;
            added = false;
            too_many = false;
            if !record.channels.iter().any(|c| c == channel.as_str()) {
                if record.channels.len() >= MAX_RESUME_POINTS {
                    too_many = true;
                } else {
                    record.channels.push(channel.to_string());
                    added = true;
                }
            }
            Some(encode(&record))
        })?;
        if updated.is_none() {
            return Err(RegistryError::NotFound(device_id.to_owned()));
        }
        if too_many {
            return Err(RegistryError::TooManyChannels);
        }
        self.devices.flush()?;
        Ok(added)
    }
}

fn encode(record: &DeviceRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a device record always serializes")
}

/// `dv_` and a ULID: 48 bits of milliseconds then 80 random bits, in
/// Crockford base32, so ids sort by registration time and are easy to read
/// aloud to support.
fn new_device_id() -> Result<DeviceId, RegistryError> {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut random = [0u8; 10];
    getrandom::fill(&mut random).map_err(|_| RegistryError::Random)?;
    let mut value = u128::from(unix_ms() & 0xffff_ffff_ffff) << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (72 - 8 * i);
    }
    let mut text = String::from("dv_");
    for k in (0..26).rev() {
        text.push(CROCKFORD[((value >> (5 * k)) & 0x1f) as usize] as char);
    }
    Ok(DeviceId::new(&text).expect("a generated id is valid"))
}
