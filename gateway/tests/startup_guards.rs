//! What a start refuses rather than quietly replace: a lost or different
//! master key for a store that exists (every device would be locked out),
//! and half a TLS identity (every device pinning the fingerprint would
//! break). Each refusal names the file and what to do.

mod common;

use common::*;
use eagate_gateway::server::Gateway;

/// A gateway that ran once on `dir` with a device registered.
async fn set_up(dir: &std::path::Path) {
    let gateway = Gateway::start(&config(dir)).await.unwrap();
    gateway
        .registry()
        .register(gateway.master_key(), "acct-1", "London VPS")
        .await
        .unwrap();
    gateway.shutdown().await;
}

async fn refusal(
    dir: &std::path::Path,
    change: impl FnOnce(&mut eagate_gateway::config::ServeConfig),
) -> String {
    let mut settings = config(dir);
    change(&mut settings);
    match Gateway::start(&settings).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_lost_master_key_file_is_refused_naming_it_and_no_new_key_is_made() {
    let dir = tempfile::tempdir().unwrap();
    set_up(dir.path()).await;
    let key_file = dir.path().join("master.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let error = refusal(dir.path(), |_| {}).await;
    assert!(error.contains("master.key is missing"), "{error}");
    assert!(error.contains(&key_file.display().to_string()), "{error}");
    assert!(!key_file.exists(), "a new key was written");
    // Restored from the backup, it starts, and the device is still known.
    std::fs::write(&key_file, key).unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    assert_eq!(
        gateway.registry().list(Some("acct-1")).await.unwrap().len(),
        1
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn another_valid_master_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    set_up(dir.path()).await;
    let error = refusal(dir.path(), |c| c.master_key = Some("ab".repeat(32))).await;
    assert!(
        error.contains("differs from the one the data directory"),
        "{error}"
    );
    // The right key given by the environment is taken.
    let key = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    let mut settings = config(dir.path());
    settings.master_key = Some(key.trim().to_owned());
    Gateway::start(&settings).await.unwrap().shutdown().await;
}

#[tokio::test]
async fn half_a_tls_identity_is_refused_and_never_replaced() {
    for lost in ["tls/key.pem", "tls/cert.pem"] {
        let dir = tempfile::tempdir().unwrap();
        set_up(dir.path()).await;
        let other = if lost == "tls/key.pem" {
            "tls/cert.pem"
        } else {
            "tls/key.pem"
        };
        let kept = std::fs::read(dir.path().join(other)).unwrap();
        std::fs::remove_file(dir.path().join(lost)).unwrap();
        let error = refusal(dir.path(), |_| {}).await;
        assert!(error.contains(&format!("{lost} is missing")), "{error}");
        assert!(error.contains("restore"), "{error}");
        assert!(!dir.path().join(lost).exists());
        assert_eq!(std::fs::read(dir.path().join(other)).unwrap(), kept);
    }
}

#[tokio::test]
async fn the_data_directory_is_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("eagate-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_up(&data).await;
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let key_mode = std::fs::metadata(data.join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
}

#[tokio::test]
async fn an_identity_generation_interrupted_between_its_renames_is_completed_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    let pinned = gateway.fingerprint().unwrap().to_string();
    gateway.shutdown().await;
    // The key was renamed into place, the certificate was not yet.
    let tls = dir.path().join("tls");
    std::fs::rename(tls.join("cert.pem"), tls.join("cert.pem.new")).unwrap();
    let gateway = Gateway::start(&config(dir.path())).await.unwrap();
    assert_eq!(gateway.fingerprint().unwrap().to_string(), pinned);
    gateway.shutdown().await;
    assert!(!tls.join("cert.pem.new").exists());

    // Interrupted before any rename: what was written aside is discarded
    // and a fresh identity made (neither file was in place).
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fresh.path().join("tls")).unwrap();
    std::fs::write(fresh.path().join("tls/key.pem.new"), "-----BEGIN PRIV").unwrap();
    let gateway = Gateway::start(&config(fresh.path())).await.unwrap();
    assert!(gateway.fingerprint().is_some());
    gateway.shutdown().await;
    assert!(!fresh.path().join("tls/key.pem.new").exists());
}
