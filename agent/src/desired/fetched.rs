//! What every source hands out: a validated document with its bytes, the errors a document
//! can be refused with, and the rollback rule. The directory source and the hub both build on
//! it, so neither depends on the other.

use crate::desired::{DesiredDoc, DesiredError};

/// A fetched document and how much to trust it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub doc: DesiredDoc,
    pub bytes: Vec<u8>,
    /// Where it came from, for messages.
    pub origin: String,
}

/// Why the source could not provide a usable document.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Invalid(#[from] DesiredError),
    #[error(
        "desired state {origin}: revision {got} is lower than the last accepted revision {accepted} (refusing a rollback)"
    )]
    Rollback {
        origin: String,
        got: u64,
        accepted: u64,
    },
    /// The file could not be read at all (missing, not a regular file, too large, out of file
    /// handles): not the document's fault, so not `desired_invalid`.
    #[error("desired state {origin}: {message}")]
    Unreadable { origin: String, message: String },
}

impl SourceError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SourceError::Invalid(e) => e.code(),
            SourceError::Rollback { .. } => "desired_rollback",
            SourceError::Unreadable { .. } => "desired_unreadable",
        }
    }
}

/// The rollback rule shared by every source.
pub fn check_revision(
    origin: &str,
    got: u64,
    last_accepted: Option<u64>,
) -> Result<(), SourceError> {
    match last_accepted {
        Some(accepted) if got < accepted => Err(SourceError::Rollback {
            origin: origin.to_string(),
            got,
            accepted,
        }),
        _ => Ok(()),
    }
}
