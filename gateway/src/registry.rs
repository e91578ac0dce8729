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
    /// Another device of the account already has this name.
    #[error("the account already has a device named {0:?}")]
    NameTaken(String),
}

/// Devices in a sled tree keyed by device id, and an index of names per
/// account that keeps names unique within an account.
#[derive(Debug, Clone)]
pub struct DeviceRegistry {
    devices: sled::Tree,
    names: sled::Tree,
}

impl DeviceRegistry {
    /// Opens the `devices` tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, RegistryError> {
        Ok(Self {
            devices: db.open_tree("devices")?,
            names: db.open_tree("device_names")?,
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
        let secret = fresh_secret()?;
        let record = DeviceRecord {
            sealed_secret: master_key.seal(&device_id, &secret)?,
            device_id: device_id.to_string(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            created_at_ms: unix_ms(),
            revoked_at_ms: None,
            channels: Vec::new(),
        };
        self.write(&record)?;
        Ok((record, secret))
    }

    /// Stores a new `record`, taking its name in its account; refuses a name
    /// another device of the account holds.
    fn write(&self, record: &DeviceRecord) -> Result<(), RegistryError> {
        self.modify_with(&record.device_id, true, |current| {
            if current.is_some() {
                return Err(RegistryError::Corrupt(format!(
                    "device id {} reused",
                    record.device_id
                )));
            }
            Ok(record.clone())
        })
        .map(|_| ())
    }

    /// Changes a device inside one transaction over the record and the name
    /// index: `change` sees the record as stored now, so no concurrent change
    /// (a revocation, say) is overwritten by a stale copy.
    fn modify(
        &self,
        device_id: &str,
        change: impl Fn(&DeviceRecord) -> Result<DeviceRecord, RegistryError>,
    ) -> Result<DeviceRecord, RegistryError> {
        self.modify_with(device_id, false, |current| match current {
            Some(record) => change(record),
            None => Err(RegistryError::NotFound(device_id.to_owned())),
        })
    }

    fn modify_with(
        &self,
        device_id: &str,
        create: bool,
        change: impl Fn(Option<&DeviceRecord>) -> Result<DeviceRecord, RegistryError>,
    ) -> Result<DeviceRecord, RegistryError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};

        let id = device_id.as_bytes();
        let outcome = (&self.devices, &self.names).transaction(|(devices, names)| {
            let abort = ConflictableTransactionError::Abort;
            let current = match devices.get(id)? {
                Some(bytes) => Some(
                    serde_json::from_slice::<DeviceRecord>(&bytes)
                        .map_err(|_| abort(RegistryError::Corrupt(device_id.to_owned())))?,
                ),
                None if create => None,
                None => return Err(abort(RegistryError::NotFound(device_id.to_owned()))),
            };
            let updated = change(current.as_ref()).map_err(abort)?;
            let name_key = name_key_of(&updated.account_id, &updated.name);
            if let Some(holder) = names.get(&name_key)? {
                if holder != id {
                    return Err(abort(RegistryError::NameTaken(updated.name.clone())));
                }
            }
            if let Some(current) = &current {
                let old_key = name_key_of(&current.account_id, &current.name);
                if old_key != name_key {
                    names.remove(old_key)?;
                }
            }
            names.insert(name_key, id)?;
            devices.insert(id, encode(&updated))?;
            Ok(updated)
        });
        let updated = outcome.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => RegistryError::Store(e),
        })?;
        self.devices.flush()?;
        Ok(updated)
    }

    /// Renames a device; the name must be free within its account.
    pub fn rename(&self, device_id: &str, name: &str) -> Result<DeviceRecord, RegistryError> {
        self.modify(device_id, |current| {
            Ok(DeviceRecord {
                name: name.to_owned(),
                ..current.clone()
            })
        })
    }

    /// Gives a device a new secret, returned this once. Its old secret no
    /// longer authenticates.
    pub fn rotate_secret(
        &self,
        master_key: &MasterKey,
        device_id: &str,
    ) -> Result<(DeviceRecord, DeviceSecret), RegistryError> {
        let id = DeviceId::new(device_id).map_err(|_| RegistryError::NotFound(device_id.into()))?;
        let secret = fresh_secret()?;
        let sealed = master_key.seal(&id, &secret)?;
        let record = self.modify(device_id, |current| {
            Ok(DeviceRecord {
                sealed_secret: sealed.clone(),
                ..current.clone()
            })
        })?;
        Ok((record, secret))
    }

    /// Every device, or those of one account, in id (so registration) order.
    pub fn list(&self, account_id: Option<&str>) -> Result<Vec<DeviceRecord>, RegistryError> {
        let mut found = Vec::new();
        for entry in self.devices.iter() {
            let (key, value) = entry?;
            let record: DeviceRecord = serde_json::from_slice(&value)
                .map_err(|_| RegistryError::Corrupt(String::from_utf8_lossy(&key).into()))?;
            if account_id.is_none_or(|account| account == record.account_id) {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Unsubscribes `device_id` from `channel`; returns whether it was
    /// subscribed.
    pub fn unsubscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, RegistryError> {
        let mut removed = false;
        let updated = self.devices.update_and_fetch(device_id.as_bytes(), |old| {
            let mut record: DeviceRecord = serde_json::from_slice(old?).ok()?;
            let before = record.channels.len();
            record.channels.retain(|c| c != channel.as_str());
            removed = record.channels.len() != before;
            Some(encode(&record))
        })?;
        if updated.is_none() {
            return Err(RegistryError::NotFound(device_id.to_owned()));
        }
        self.devices.flush()?;
        Ok(removed)
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

/// 32 bytes from the operating system's CSPRNG.
fn fresh_secret() -> Result<DeviceSecret, RegistryError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|_| RegistryError::Random)?;
    Ok(DeviceSecret::from_bytes(*bytes))
}

/// Length-prefixed account then name, so no account can run into a name.
fn name_key_of(account_id: &str, name: &str) -> Vec<u8> {
    let account = account_id.as_bytes();
    let mut key = Vec::with_capacity(2 + account.len() + name.len());
    key.extend_from_slice(&(account.len() as u16).to_be_bytes());
    key.extend_from_slice(account);
    key.extend_from_slice(name.as_bytes());
    key
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
