//! The stores' backends, side by side: [`sled`], the embedded default for one
//! gateway on one machine, and [`redis`], shared by any number of gateways
//! and one sidecar. Each implements the store traits of the domains
//! (`crate::registry`, `crate::signals`, `crate::reports`, `crate::nonces`,
//! `crate::presence`), one file per domain; adding a backend or a domain is
//! a file, not an edit to the others.

pub mod redis;
pub mod sled;
