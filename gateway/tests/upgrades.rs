//! Existing deployments keep working after an upgrade: devices whose names
//! now compare equal (normalised names) stay changeable and revocable and
//! the first one keeps its claim, on sled and Redis; a data directory the
//! service may write but does not own (a shared volume) is still taken.

use std::sync::Arc;

use eagate_gateway::durable::Durable;
use eagate_gateway::registry::DeviceRegistry;
use eagate_gateway::seal::MasterKey;
use eagate_gateway::store::sled::SledDeviceStore;

/// The index key an older version wrote: account length, account, raw name.
fn old_name_key(account: &str, name: &str) -> Vec<u8> {
    let mut key = (account.len() as u16).to_be_bytes().to_vec();
    key.extend_from_slice(account.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// A sled store as the older version left it: devices "Office" and
/// "OFFICE" in one account, the name index holding raw names; then the
/// upgraded process opens it (the migration runs). Returns the registry,
/// the two devices' ids (the first registered first) and the master key.
async fn upgraded_sled_store() -> (Durable, DeviceRegistry, String, String, MasterKey) {
    let db = Durable::new(sled::Config::new().temporary(true).open().unwrap()).unwrap();
    let key = MasterKey::from_hex(&"11".repeat(32)).unwrap();
    let registry = DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db).unwrap()));
    let (a, _) = registry.register(&key, "acct-1", "Office").await.unwrap();
    let (b, _) = registry.register(&key, "acct-1", "Backup").await.unwrap();
    let devices = db.db().open_tree("devices").unwrap();
    let names = db.db().open_tree("device_names").unwrap();
    let mut record: serde_json::Value =
        serde_json::from_slice(&devices.get(&b.device_id).unwrap().unwrap()).unwrap();
    record["name"] = "OFFICE".into();
    devices
        .insert(b.device_id.as_bytes(), serde_json::to_vec(&record).unwrap())
        .unwrap();
    names.clear().unwrap();
    names
        .insert(old_name_key("acct-1", "Office"), a.device_id.as_bytes())
        .unwrap();
    names
        .insert(old_name_key("acct-1", "OFFICE"), b.device_id.as_bytes())
        .unwrap();
    let registry = DeviceRegistry::new(Arc::new(SledDeviceStore::open(&db).unwrap()));
    (db, registry, a.device_id, b.device_id, key)
}

/// An existing deployment has two devices whose names were distinct before
/// names were normalised ("Office" and "OFFICE"). After the upgrade's
/// index migration, the one that lost the claim can still be revoked.
#[tokio::test]
async fn a_device_whose_name_collides_after_the_migration_can_still_be_revoked() {
    let (_db, registry, a, b, _) = upgraded_sled_store().await;
    // The device that lost the claim must still be revocable.
    let second = if a < b { &b } else { &a };
    let revoked = registry.revoke(second).await;
    assert!(revoked.is_ok(), "revoking {second} failed: {revoked:?}");
}

/// Same upgrade: renaming the loser leaves the winner's normalised claim,
/// so no third device can take a name that looks the same as the winner's.
#[tokio::test]
async fn renaming_the_loser_of_the_migration_keeps_the_winners_claim() {
    let (_db, registry, a, b, key) = upgraded_sled_store().await;
    let loser = if a < b { &b } else { &a };
    registry.rename(loser, "Spare").await.unwrap();
    let third = registry.register(&key, "acct-1", "office").await;
    assert!(
        third.is_err(),
        "a third device took a name that compares equal to a remaining device's: {third:?}"
    );
}

/// A data directory the service user may write but does not own (a
/// Kubernetes volume with fsGroup: root:<gid>, mode 2770; a Docker volume
/// made by root): it starts (with a warning), as before. Needs root to
/// run the process as another user, as the test command has.
#[test]
fn a_writable_data_directory_owned_by_another_user_is_not_refused() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::{PermissionsExt, chown};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = parent.path().join("volume");
    std::fs::create_dir(&data).unwrap();
    chown(&data, Some(0), Some(65534)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eagate"))
        .args([
            "serve",
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("EAGATE_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut started = false;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("Ctrl-C stops it.") {
            started = true;
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        started,
        "eagate refused to start: {}",
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .next()
            .unwrap_or("")
    );
}

/// The same upgrade on Redis (`index_every_name`, HSETNX).
#[tokio::test]
async fn redis_a_device_whose_name_collides_after_the_migration_can_still_be_revoked() {
    use redis::AsyncCommands;
    let url = eagate_tests::redis_url();
    let mut tag = [0u8; 6];
    getrandom::fill(&mut tag).unwrap();
    let prefix = format!("upgrade-{}", hex::encode(tag));
    let stores = Arc::new(
        eagate_gateway::store::redis::RedisStores::connect(&url, &prefix)
            .await
            .unwrap(),
    );
    let key = MasterKey::from_hex(&"11".repeat(32)).unwrap();
    let registry = DeviceRegistry::new(stores.clone());
    let (a, _) = registry.register(&key, "acct-1", "Office").await.unwrap();
    let (b, _) = registry.register(&key, "acct-1", "Backup").await.unwrap();
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let devices = format!("{prefix}:{{registry}}:devices");
    let names = format!("{prefix}:{{registry}}:names");
    let json: String = redis.hget(&devices, &b.device_id).await.unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&json).unwrap();
    record["name"] = "OFFICE".into();
    let _: () = redis
        .hset(&devices, &b.device_id, record.to_string())
        .await
        .unwrap();
    let _: () = redis.del(&names).await.unwrap();
    let _: () = redis
        .hset(&names, "6:acct-1:Office", &a.device_id)
        .await
        .unwrap();
    let _: () = redis
        .hset(&names, "6:acct-1:OFFICE", &b.device_id)
        .await
        .unwrap();
    stores.index_every_name().await.unwrap();
    let second = if a.device_id < b.device_id { &b } else { &a };
    let revoked = registry.revoke(&second.device_id).await;
    assert!(
        revoked.is_ok(),
        "revoking {} failed: {revoked:?}",
        second.device_id
    );
}
