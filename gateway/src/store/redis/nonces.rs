//! Authentication nonces in Redis: one key per (device, nonce), set only if
//! absent and expiring with the nonce lifetime, shared by every gateway.

use eagate_protocol::{DeviceId, Nonce};

use super::RedisStores;
use crate::nonces::{NonceFuture, NonceStore};

impl NonceStore for RedisStores {
    fn claim<'a>(
        &'a self,
        device_id: &'a DeviceId,
        nonce: &'a Nonce,
        _now_ms: u64,
        ttl_ms: u64,
    ) -> NonceFuture<'a, bool> {
        Box::pin(async move {
            let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
            let key = self.device_key(device_id.as_str(), &format!("nonce:{hex}"));
            let mut connection = self.connection.clone();
            // SET NX PX: atomic, expiring, shared by every gateway.
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async(&mut connection)
                .await?;
            Ok(set.is_some())
        })
    }
}
