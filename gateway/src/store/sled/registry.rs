//! The device registry in sled: records in the `devices` tree keyed by
//! device id, and the `device_names` index that keeps names unique within an
//! account, changed together in one transaction.

use crate::durable::Durable;
use crate::registry::{
    DeviceRecord, DeviceStore, Modified, RecordChange, RegistryError, RegistryFuture, encode,
};

/// Devices in a sled tree keyed by device id, and an index of names per
/// account that keeps names unique within an account.
#[derive(Debug, Clone)]
pub struct SledDeviceStore {
    devices: sled::Tree,
    names: sled::Tree,
    durable: Durable,
}

impl SledDeviceStore {
    /// Opens the `devices` and `device_names` trees of `db`.
    pub fn open(durable: &Durable) -> Result<Self, RegistryError> {
        let db = durable.db();
        let store = Self {
            devices: db.open_tree("devices")?,
            names: db.open_tree("device_names")?,
            durable: durable.clone(),
        };
        store.index_every_name()?;
        Ok(store)
    }

    /// Makes sure every device's name is in the index in its current form
    /// (devices named before names were compared normalised): idempotent,
    /// one pass at start. Two old names that now compare equal keep the
    /// first device's claim; both devices keep their names.
    fn index_every_name(&self) -> Result<(), RegistryError> {
        for entry in self.devices.iter() {
            let (id, value) = entry?;
            let record = decode(&String::from_utf8_lossy(&id), &value)?;
            let key = name_key_of(&record.account_id, &record.name);
            self.names
                .compare_and_swap(key, None as Option<&[u8]>, Some(id.as_ref()))?
                .ok();
        }
        Ok(())
    }

    fn get_now(&self, device_id: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        self.devices
            .get(device_id.as_bytes())?
            .map(|bytes| decode(device_id, &bytes))
            .transpose()
    }

    fn modify_now(
        &self,
        device_id: &str,
        change: &RecordChange,
    ) -> Result<Modified, RegistryError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};

        let id = device_id.as_bytes();
        let outcome = (&self.devices, &self.names).transaction(|(devices, names)| {
            let abort = ConflictableTransactionError::Abort;
            let current = match devices.get(id)? {
                Some(bytes) => Some(decode(device_id, &bytes).map_err(abort)?),
                None => None,
            };
            let updated = change(current.as_ref()).map_err(abort)?;
            let name_key = name_key_of(&updated.account_id, &updated.name);
            let old_key = current
                .as_ref()
                .map(|current| name_key_of(&current.account_id, &current.name));
            match names.get(&name_key)? {
                // Taking a name another device holds is refused; keeping
                // its own (two old names that now compare equal) is not:
                // the other keeps the entry, this one can still change.
                Some(holder) if holder != id => {
                    if old_key.as_ref() != Some(&name_key) {
                        return Err(abort(RegistryError::NameTaken(updated.name.clone())));
                    }
                }
                _ => {
                    names.insert(name_key.clone(), id)?;
                }
            }
            // The old entry goes only if it is this device's own.
            if let Some(old_key) = old_key
                && old_key != name_key
                && names.get(&old_key)?.is_some_and(|holder| holder == id)
            {
                names.remove(old_key)?;
            }
            devices.insert(id, encode(&updated))?;
            Ok(Modified {
                before: current,
                after: updated,
            })
        });
        outcome.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => RegistryError::Sled(e),
        })
    }
}

impl DeviceStore for SledDeviceStore {
    fn get<'a>(&'a self, device_id: &'a str) -> RegistryFuture<'a, Option<DeviceRecord>> {
        // A read from sled's page cache: too quick to be worth a thread hop.
        Box::pin(async move { self.get_now(device_id) })
    }

    fn list<'a>(&'a self, account_id: Option<&'a str>) -> RegistryFuture<'a, Vec<DeviceRecord>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.devices.iter() {
                let (key, value) = entry?;
                let record = decode(&String::from_utf8_lossy(&key), &value)?;
                if account_id.is_none_or(|account| account == record.account_id) {
                    found.push(record);
                }
            }
            Ok(found)
        })
    }

    fn list_page<'a>(
        &'a self,
        account_id: Option<&'a str>,
        after: Option<&'a str>,
        limit: usize,
    ) -> RegistryFuture<'a, Vec<DeviceRecord>> {
        Box::pin(async move {
            // Seek past the cursor: a page costs its own records (and, for
            // one account, the others' in between), never the whole tree.
            let from = match after {
                Some(after) => std::ops::Bound::Excluded(after.as_bytes().to_vec()),
                None => std::ops::Bound::Unbounded,
            };
            let mut found = Vec::new();
            for entry in self
                .devices
                .range::<Vec<u8>, _>((from, std::ops::Bound::Unbounded))
            {
                if found.len() == limit {
                    break;
                }
                let (key, value) = entry?;
                let record = decode(&String::from_utf8_lossy(&key), &value)?;
                if account_id.is_none_or(|account| account == record.account_id) {
                    found.push(record);
                }
            }
            Ok(found)
        })
    }

    fn modify<'a>(
        &'a self,
        device_id: &'a str,
        change: RecordChange,
    ) -> RegistryFuture<'a, Modified> {
        Box::pin(async move {
            let modified = self.modify_now(device_id, &change)?;
            // Both trees share one log: one flush makes the change durable.
            self.durable.durable().await?;
            Ok(modified)
        })
    }
}

fn decode(device_id: &str, bytes: &[u8]) -> Result<DeviceRecord, RegistryError> {
    serde_json::from_slice(bytes).map_err(|_| RegistryError::Corrupt(device_id.to_owned()))
}

/// Length-prefixed account then name, so no account can run into a name.
fn name_key_of(account_id: &str, name: &str) -> Vec<u8> {
    let account = account_id.as_bytes();
    let mut key = Vec::with_capacity(2 + account.len() + name.len());
    key.extend_from_slice(&(account.len() as u16).to_be_bytes());
    key.extend_from_slice(account);
    key.extend_from_slice(crate::registry::name_key(name).as_bytes());
    key
}
