//! The desired state: the `desired.toml` document, where it comes from (a directory or the
//! HTTPS hub) and the rule that a document only ever *asks*.
//!
//! Everything here turns bytes from outside into a validated [`DesiredDoc`] or a typed error
//! with a stable code; nothing here decides what is safe (classification and the gate do).

pub mod document;
pub mod hub;
pub mod pve_format;
pub mod source;

pub use document::*;
