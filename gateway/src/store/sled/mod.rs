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

/// A big-endian `u64` as sled values hold them; 0 for anything else.
fn read_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
