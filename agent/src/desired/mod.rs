//! The desired state: the `desired.toml` document, where it comes from (a directory or the
//! HTTPS hub) and the rule that a document only ever *asks*.
//!
//! Everything here turns bytes from outside into a validated [`DesiredDoc`] or a typed error
//! with a stable code; nothing here decides what is safe (classification and the gate do).

pub mod document;
pub mod fetched;
pub mod hub;
pub mod pve_format;
pub mod report;
pub mod source;
pub mod verify_spec;
pub mod vocabulary;

pub use document::*;

use std::sync::Arc;

/// The desired document the engine works from, and whether it is fresh.
#[derive(Debug, Clone)]
pub struct Desired {
    pub doc: Arc<DesiredDoc>,
    pub origin: String,
    /// True when the source failed and this is the journal's last-known-good copy: benign
    /// convergence continues, destructive steps wait.
    pub degraded: bool,
}
