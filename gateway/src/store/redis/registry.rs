//! The device registry in Redis: records and the name index in two hashes
//! under one hash tag, so one script keeps names unique within an account
//! even on a Redis Cluster.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::RedisStores;
use crate::registry::{
    DeviceRecord, DeviceStore, Modified, RecordChange, RegistryError, RegistryFuture, encode,
};

/// Changes a device record and the name index together (the script's
/// header says how).
static MODIFY_DEVICE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/modify_device.lua")));

/// A writer racing this many others in a row gives up rather than spin.
const MODIFY_ATTEMPTS: usize = 32;

impl RedisStores {
    /// The registry's keys share one hash tag: a registry is small and
    /// rarely written, and one slot lets a script keep names unique
    /// atomically even on a Redis Cluster.
    fn registry_key(&self, what: &str) -> String {
        format!("{}:{{registry}}:{what}", self.prefix)
    }

    fn decode_device(device_id: &str, json: &str) -> Result<DeviceRecord, RegistryError> {
        serde_json::from_str(json).map_err(|_| RegistryError::Corrupt(device_id.to_owned()))
    }
}

impl DeviceStore for RedisStores {
    fn get<'a>(&'a self, device_id: &'a str) -> RegistryFuture<'a, Option<DeviceRecord>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let json: Option<String> = connection
                .hget(self.registry_key("devices"), device_id)
                .await?;
            json.map(|json| Self::decode_device(device_id, &json))
                .transpose()
        })
    }

    fn list<'a>(&'a self, account_id: Option<&'a str>) -> RegistryFuture<'a, Vec<DeviceRecord>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let all: Vec<(String, String)> =
                connection.hgetall(self.registry_key("devices")).await?;
            let mut found = Vec::with_capacity(all.len());
            for (device_id, json) in all {
                let record = Self::decode_device(&device_id, &json)?;
                if account_id.is_none_or(|account| account == record.account_id) {
                    found.push(record);
                }
            }
            found.sort_by(|a, b| a.device_id.cmp(&b.device_id));
            Ok(found)
        })
    }

    fn modify<'a>(
        &'a self,
        device_id: &'a str,
        change: RecordChange,
    ) -> RegistryFuture<'a, Modified> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            for _ in 0..MODIFY_ATTEMPTS {
                let read: Option<String> = connection
                    .hget(self.registry_key("devices"), device_id)
                    .await?;
                let before = read
                    .as_deref()
                    .map(|json| Self::decode_device(device_id, json))
                    .transpose()?;
                let after = change(before.as_ref())?;
                let old_name = before
                    .as_ref()
                    .map(|b| name_key_text(&b.account_id, &b.name))
                    .unwrap_or_default();
                let written: i8 = MODIFY_DEVICE_SCRIPT
                    .key(self.registry_key("devices"))
                    .key(self.registry_key("names"))
                    .arg(device_id)
                    .arg(read.as_deref().unwrap_or(""))
                    .arg(String::from_utf8(encode(&after)).expect("JSON is UTF-8"))
                    .arg(old_name)
                    .arg(name_key_text(&after.account_id, &after.name))
                    .invoke_async(&mut connection)
                    .await?;
                match written {
                    1 => return Ok(Modified { before, after }),
                    -1 => return Err(RegistryError::NameTaken(after.name)),
                    // Changed under us: read it again and reapply.
                    _ => continue,
                }
            }
            Err(RegistryError::Contended(device_id.to_owned()))
        })
    }
}

impl RedisStores {
    /// Makes sure every device's name is in the index in its current form
    /// (devices named before names were compared normalised): idempotent,
    /// one pass at start (`HSETNX`: an old name that now compares equal to
    /// another keeps the first claim; both devices keep their names).
    pub async fn index_every_name(&self) -> Result<(), RegistryError> {
        let mut connection = self.connection.clone();
        let all: Vec<(String, String)> = connection.hgetall(self.registry_key("devices")).await?;
        for (device_id, json) in all {
            let record = Self::decode_device(&device_id, &json)?;
            let _: bool = connection
                .hset_nx(
                    self.registry_key("names"),
                    name_key_text(&record.account_id, &record.name),
                    &device_id,
                )
                .await?;
        }
        Ok(())
    }
}

/// The name index's field: the account's length, so no account can run
/// into a name, then the account and the name.
fn name_key_text(account_id: &str, name: &str) -> String {
    format!(
        "{}:{account_id}:{}",
        account_id.len(),
        crate::registry::name_key(name)
    )
}
