//! Where the desired state comes from. Today: a local directory (the embedded default).
//!
//! A source hands out a validated [`DesiredDoc`] plus its raw bytes (so the journal can keep a
//! last-known-good copy). It never decides what is safe: a document from any source only ever
//! *asks*; classification and the gate decide.

use std::path::{Path, PathBuf};

use crate::desired::{self, DesiredDoc, DesiredError};

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
}

impl SourceError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SourceError::Invalid(e) => e.code(),
            SourceError::Rollback { .. } => "desired_rollback",
        }
    }
}

/// A directory holding `desired.toml` and an `approvals/` folder.
#[derive(Debug, Clone)]
pub struct DirSource {
    pub dir: PathBuf,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource { dir: dir.into() }
    }

    /// Reads and validates the document; refuses a revision lower than `last_accepted`.
    pub fn fetch(&self, last_accepted: Option<u64>) -> Result<Fetched, SourceError> {
        let (doc, bytes) = desired::load_dir(&self.dir)?;
        let origin = self.dir.join("desired.toml").display().to_string();
        check_revision(&origin, doc.revision, last_accepted)?;
        Ok(Fetched { doc, bytes, origin })
    }

    /// Where signed approvals may be dropped beside the document.
    pub fn approvals_dir(&self) -> PathBuf {
        self.dir.join("approvals")
    }

    pub fn path(&self) -> &Path {
        &self.dir
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_a_directory_and_refuses_rollback() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("desired.toml"),
            "revision = 5\n[[guest]]\nvmid = 101\n",
        )
        .unwrap();
        let s = DirSource::new(d.path());
        assert_eq!(s.fetch(None).unwrap().doc.revision, 5);
        assert_eq!(s.fetch(Some(5)).unwrap().doc.revision, 5);
        let e = s.fetch(Some(6)).unwrap_err();
        assert_eq!(e.code(), "desired_rollback");
        std::fs::write(d.path().join("desired.toml"), "revision = x").unwrap();
        assert_eq!(s.fetch(None).unwrap_err().code(), "desired_invalid");
    }
}
