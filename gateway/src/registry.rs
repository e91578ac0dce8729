//! The device registry: who may connect, under which account, with which
//! (sealed) secret, whether they are revoked, and which channels they follow.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
    Sled(#[from] sled::Error),
    /// Redis failed.
    #[error("device store: {0}")]
    Redis(#[from] redis::RedisError),
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
    /// Other writers kept changing the record; nothing was changed.
    #[error("device {0} is being changed by others; try again")]
    Contended(String),
}

impl RegistryError {
    /// Whether the store is only away for now (see
    /// [`crate::outage::is_outage`]): the same call may succeed in a
    /// moment.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(e) if crate::outage::is_outage(e))
    }
}

/// A boxed future, so stores can be used as `dyn DeviceStore`.
pub type RegistryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

/// A change to one device record, given the record as stored now (`None`
/// when there is none). A store may call it more than once when it races
/// another writer, so it must only compute, never act.
pub type RecordChange =
    Box<dyn Fn(Option<&DeviceRecord>) -> Result<DeviceRecord, RegistryError> + Send + Sync>;

/// A record before and after a change.
#[derive(Debug, Clone)]
pub struct Modified {
    /// As stored before; `None` for a new device.
    pub before: Option<DeviceRecord>,
    /// As stored now.
    pub after: DeviceRecord,
}

impl Modified {
    /// Whether the change altered an existing device's subscriptions.
    fn channels_changed(&self) -> bool {
        self.before
            .as_ref()
            .is_some_and(|before| before.channels != self.after.channels)
    }
}

/// The form of a device name its account's uniqueness is checked in:
/// compatibility-normalised (NFKC: a fullwidth `Ｌ` is `L`), spaces of any
/// kind collapsed and trimmed, lower-cased, and reduced to its confusable
/// skeleton (Unicode TR39: a Cyrillic `о` is an `o`; zero-width characters
/// go). Names are kept and shown as typed.
pub fn name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let compatible: String = name.nfkc().collect();
    let spaced = compatible.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower = spaced.to_lowercase();
    unicode_security::confusable_detection::skeleton(&lower)
        .collect::<String>()
        .to_lowercase()
}

/// Where device records live: sled on one machine, Redis when gateways
/// share. Stores only keep records and the per-account name index; the rules
/// (fresh ids and secrets, sealing, channel limits) are in [`DeviceRegistry`],
/// once for both.
pub trait DeviceStore: Send + Sync + std::fmt::Debug {
    /// The stored record of `device_id`.
    fn get<'a>(&'a self, device_id: &'a str) -> RegistryFuture<'a, Option<DeviceRecord>>;

    /// Every device, or those of one account, in id (so registration) order.
    fn list<'a>(&'a self, account_id: Option<&'a str>) -> RegistryFuture<'a, Vec<DeviceRecord>>;

    /// At most `limit` devices (of one account, if given) with ids after
    /// `after`, in id order. By default read from [`DeviceStore::list`];
    /// a store that can seek overrides it.
    fn list_page<'a>(
        &'a self,
        account_id: Option<&'a str>,
        after: Option<&'a str>,
        limit: usize,
    ) -> RegistryFuture<'a, Vec<DeviceRecord>> {
        Box::pin(async move {
            let all = self.list(account_id).await?;
            Ok(all
                .into_iter()
                .filter(|r| after.is_none_or(|after| r.device_id.as_str() > after))
                .take(limit)
                .collect())
        })
    }

    /// Applies `change` to the record as stored now, atomically with the
    /// name index: the new name must be free within the account (else
    /// [`RegistryError::NameTaken`]) and the old one is released. No
    /// concurrent change is overwritten by a stale copy.
    fn modify<'a>(
        &'a self,
        device_id: &'a str,
        change: RecordChange,
    ) -> RegistryFuture<'a, Modified>;
}

/// The device registry: the rules of registering and changing devices over
/// whichever [`DeviceStore`] the deployment uses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceRegistry {
    store: Arc<dyn DeviceStore>,
}

impl DeviceRegistry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn DeviceStore>) -> Self {
        Self { store }
    }

    /// Registers a device and returns its record and secret. The secret is
    /// returned this once and stored only sealed.
    pub async fn register(
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
        let created = self
            .store
            .modify(
                device_id.as_str(),
                Box::new(move |current| match current {
                    Some(existing) => Err(RegistryError::Corrupt(format!(
                        "device id {} reused",
                        existing.device_id
                    ))),
                    None => Ok(record.clone()),
                }),
            )
            .await?;
        Ok((created.after, secret))
    }

    /// Changes an existing device; see [`DeviceStore::modify`].
    async fn modify(
        &self,
        device_id: &str,
        change: impl Fn(&DeviceRecord) -> Result<DeviceRecord, RegistryError> + Send + Sync + 'static,
    ) -> Result<Modified, RegistryError> {
        let id = device_id.to_owned();
        self.store
            .modify(
                device_id,
                Box::new(move |current| match current {
                    Some(record) => change(record),
                    None => Err(RegistryError::NotFound(id.clone())),
                }),
            )
            .await
    }

    /// Renames a device; the name must be free within its account.
    pub async fn rename(&self, device_id: &str, name: &str) -> Result<DeviceRecord, RegistryError> {
        let name = name.to_owned();
        let renamed = self
            .modify(device_id, move |current| {
                Ok(DeviceRecord {
                    name: name.clone(),
                    ..current.clone()
                })
            })
            .await?;
        Ok(renamed.after)
    }

    /// Gives a device a new secret, returned this once. Its old secret no
    /// longer authenticates.
    pub async fn rotate_secret(
        &self,
        master_key: &MasterKey,
        device_id: &str,
    ) -> Result<(DeviceRecord, DeviceSecret), RegistryError> {
        let id = DeviceId::new(device_id).map_err(|_| RegistryError::NotFound(device_id.into()))?;
        let secret = fresh_secret()?;
        let sealed = master_key.seal(&id, &secret)?;
        let rotated = self
            .modify(device_id, move |current| {
                Ok(DeviceRecord {
                    sealed_secret: sealed.clone(),
                    ..current.clone()
                })
            })
            .await?;
        Ok((rotated.after, secret))
    }

    /// Every device, or those of one account, in id (so registration) order.
    pub async fn list(&self, account_id: Option<&str>) -> Result<Vec<DeviceRecord>, RegistryError> {
        self.store.list(account_id).await
    }

    /// A page of devices: see [`DeviceStore::list_page`].
    pub async fn list_page(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, RegistryError> {
        self.store.list_page(account_id, after, limit).await
    }

    /// The stored record of `device_id`.
    pub async fn get(&self, device_id: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        self.store.get(device_id).await
    }

    /// The credentials of `device_id`, unsealed, if it is registered.
    pub async fn credentials(
        &self,
        master_key: &MasterKey,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceCredentials>, RegistryError> {
        let Some(record) = self.get(device_id.as_str()).await? else {
            return Ok(None);
        };
        Ok(Some(DeviceCredentials {
            secret: master_key.unseal(device_id, &record.sealed_secret)?,
            revoked: record.revoked_at_ms.is_some(),
        }))
    }

    /// Marks `device_id` revoked; it can no longer authenticate. Revoking
    /// again keeps the first time.
    pub async fn revoke(&self, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        let now = unix_ms();
        let revoked = self
            .modify(device_id, move |current| {
                let mut record = current.clone();
                record.revoked_at_ms.get_or_insert(now);
                Ok(record)
            })
            .await?;
        Ok(revoked.after)
    }

    /// Subscribes `device_id` to `channel`; returns whether it was newly
    /// subscribed (subscribing twice changes nothing).
    pub async fn subscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, RegistryError> {
        let name = channel.to_string();
        let changed = self
            .modify(device_id, move |current| {
                let mut record = current.clone();
                if !record.channels.contains(&name) {
                    if record.channels.len() >= MAX_RESUME_POINTS {
                        return Err(RegistryError::TooManyChannels);
                    }
                    record.channels.push(name.clone());
                }
                Ok(record)
            })
            .await?;
        Ok(changed.channels_changed())
    }

    /// Unsubscribes `device_id` from `channel`; returns whether it was
    /// subscribed.
    pub async fn unsubscribe(
        &self,
        device_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, RegistryError> {
        let name = channel.to_string();
        let changed = self
            .modify(device_id, move |current| {
                let mut record = current.clone();
                record.channels.retain(|c| *c != name);
                Ok(record)
            })
            .await?;
        Ok(changed.channels_changed())
    }
}

/// 32 bytes from the operating system's CSPRNG.
fn fresh_secret() -> Result<DeviceSecret, RegistryError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|_| RegistryError::Random)?;
    Ok(DeviceSecret::from_bytes(*bytes))
}

pub(crate) fn encode(record: &DeviceRecord) -> Vec<u8> {
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
