//! Authentication nonces in sled: the `auth_nonces` tree, with each pair's
//! expiry as its value, purged by the gateway's upkeep.

use eagate_protocol::{DeviceId, Nonce};

use crate::durable::Durable;
use crate::nonces::{NonceFuture, NonceStore};

/// Nonces in a sled tree, with expiry times as values.
#[derive(Debug, Clone)]
pub struct SledNonceStore {
    seen: sled::Tree,
}

impl NonceStore for SledNonceStore {
    fn claim<'a>(
        &'a self,
        device_id: &'a DeviceId,
        nonce: &'a Nonce,
        now_ms: u64,
        ttl_ms: u64,
    ) -> NonceFuture<'a, bool> {
        Box::pin(async move { Ok(self.claim_now(device_id, nonce, now_ms, ttl_ms)?) })
    }
}

impl SledNonceStore {
    /// Opens the `auth_nonces` tree of `db`. Claims are made durable by
    /// the flush of the session they admit (`begin_session` on the same
    /// database), not here.
    pub fn open(durable: &Durable) -> sled::Result<Self> {
        Ok(Self {
            seen: durable.db().open_tree("auth_nonces")?,
        })
    }

    fn claim_now(
        &self,
        device_id: &DeviceId,
        nonce: &Nonce,
        now_ms: u64,
        ttl_ms: u64,
    ) -> sled::Result<bool> {
        let key = key(device_id, nonce);
        let expires = now_ms.saturating_add(ttl_ms).to_be_bytes();
        loop {
            let current = self.seen.get(&key)?;
            if let Some(old) = &current
                && expiry(old) > now_ms
            {
                return Ok(false);
            }
            match self
                .seen
                .compare_and_swap(&key, current, Some(&expires[..]))?
            {
                Ok(()) => break,
                Err(_) => continue,
            }
        }
        // Not flushed here: the device's session begins only after the
        // flush `begin_session` asks for, which covers this write, so an
        // authentication waits for one flush, not two.
        Ok(true)
    }

    /// Removes expired pairs; returns how many.
    pub fn purge_expired(&self, now_ms: u64) -> sled::Result<usize> {
        let mut removed = 0;
        for entry in self.seen.iter() {
            let (key, value) = entry?;
            if expiry(&value) <= now_ms
                && self
                    .seen
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// How many pairs are stored.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are stored.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn key(device_id: &DeviceId, nonce: &Nonce) -> Vec<u8> {
    // Length-prefixed id, so no id can end where another's nonce begins.
    let id = device_id.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + id.len() + nonce.len());
    key.push(id.len() as u8);
    key.extend_from_slice(id);
    key.extend_from_slice(nonce);
    key
}

fn expiry(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nonce_is_claimed_once_until_it_expires() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = SledNonceStore::open(&Durable::new(db).unwrap()).unwrap();
        let device = DeviceId::new("dv_1").unwrap();
        let nonce = [9; 16];
        assert!(store.claim(&device, &nonce, 1_000, 100).await.unwrap());
        assert!(!store.claim(&device, &nonce, 1_050, 100).await.unwrap());
        let other = DeviceId::new("dv_2").unwrap();
        assert!(store.claim(&other, &nonce, 1_050, 100).await.unwrap());
        // After expiry the pair may be stored again (its timestamp would be
        // refused by the clock window long before).
        assert!(store.claim(&device, &nonce, 1_100, 100).await.unwrap());
        assert_eq!(store.purge_expired(1_500).unwrap(), 2);
        assert!(store.is_empty());
    }
}
