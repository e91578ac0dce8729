//! The embedded backend: every store in one sled database in the data
//! directory, one tree (or a few) per domain, one file per domain here.
//! What one gateway on one machine runs on (`eagate serve` without Redis).

mod nonces;
mod positions;
mod registry;
mod reports;
mod signals;

pub use nonces::SledNonceStore;
pub use positions::SledPositions;
pub use registry::SledDeviceStore;
pub use reports::SledReportStore;
pub use signals::SledSignalLog;

/// Records `check` (a [`crate::seal::MasterKey::check_value`]) as the
/// store's master key on first use, durably; returns whether it matches the
/// one recorded. A store whose key file was lost and regenerated, or that
/// is given another valid key, is then refused at start instead of
/// refusing every device one by one.
pub fn same_master_key(db: &sled::Db, check: &str) -> sled::Result<bool> {
    let meta = db.open_tree("gateway_meta")?;
    let recorded = meta.compare_and_swap(
        "master_key_check",
        None as Option<&[u8]>,
        Some(check.as_bytes()),
    )?;
    match recorded {
        Ok(()) => {
            meta.flush()?;
            Ok(true)
        }
        Err(existing) => Ok(existing.current.as_deref() == Some(check.as_bytes())),
    }
}

/// A big-endian `u64` as sled values hold them; 0 for anything else.
fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
