//! Which gateways hold a live session of each device, in Redis: per device a
//! hash of gateway instance to the Unix ms until which it vouches (renewed
//! while the session lives), and when the device was last seen.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::RedisStores;
use crate::presence::{PRESENCE_TTL_MS, PresenceFuture, PresenceStore};

const RENEW_PRESENCE: &str = include_str!("scripts/renew_presence.lua");
static RENEW_PRESENCE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_PRESENCE));

impl PresenceStore for RedisStores {
    fn mark<'a>(
        &'a self,
        device_id: &'a str,
        instance: &'a str,
        connected: bool,
        now_ms: u64,
    ) -> PresenceFuture<'a, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            if connected {
                pipe.hset(
                    self.device_key(device_id, "presence"),
                    instance,
                    now_ms + PRESENCE_TTL_MS,
                );
            } else {
                pipe.hdel(self.device_key(device_id, "presence"), instance);
            }
            pipe.ignore()
                .set(self.device_key(device_id, "last-seen"), now_ms)
                .ignore();
            let mut connection = self.connection.clone();
            let () = pipe.query_async(&mut connection).await?;
            Ok(())
        })
    }

    fn renew<'a>(
        &'a self,
        devices: &'a [String],
        instance: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, ()> {
        Box::pin(async move {
            if devices.is_empty() {
                return Ok(());
            }
            let mut connection = self.connection.clone();
            let renewals = devices.iter().map(|device_id| {
                let mut renewal = redis::cmd("EVALSHA");
                renewal
                    .arg(RENEW_PRESENCE_SCRIPT.get_hash())
                    .arg(1)
                    .arg(self.device_key(device_id, "presence"))
                    .arg(instance)
                    .arg(now_ms + PRESENCE_TTL_MS);
                renewal
            });
            if let super::RedisConnection::Single(_) = connection {
                // One round trip: the script is loaded first in the pipeline
                // (a no-op when Redis has it), so the EVALSHAs after it find
                // it; then one script call a device (each touches one slot).
                let mut pipe = redis::pipe();
                pipe.cmd("SCRIPT").arg("LOAD").arg(RENEW_PRESENCE).ignore();
                for renewal in renewals {
                    pipe.add_command(renewal).ignore();
                }
                let () = pipe.query_async(&mut connection).await?;
            } else {
                // A cluster takes one pipeline per slot.
                let renewals: Vec<redis::Cmd> = renewals.collect();
                connection
                    .send_script_calls_by_slot(&RENEW_PRESENCE_SCRIPT, &renewals)
                    .await?;
            }
            Ok(())
        })
    }

    fn presence<'a>(
        &'a self,
        device_id: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, (usize, Option<u64>)> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (gateways, last_seen): (Vec<(String, u64)>, Option<u64>) = redis::pipe()
                .hgetall(self.device_key(device_id, "presence"))
                .get(self.device_key(device_id, "last-seen"))
                .query_async(&mut connection)
                .await?;
            let live = gateways.iter().filter(|(_, until)| *until > now_ms).count();
            Ok((live, last_seen))
        })
    }

    fn elsewhere<'a>(
        &'a self,
        device_id: &'a str,
        instance: &'a str,
        now_ms: u64,
    ) -> PresenceFuture<'a, usize> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let gateways: Vec<(String, u64)> = connection
                .hgetall(self.device_key(device_id, "presence"))
                .await?;
            Ok(gateways
                .iter()
                .filter(|(gateway, until)| gateway != instance && *until > now_ms)
                .count())
        })
    }
}
