//! Where the desired state comes from: a local directory (the embedded default) or an HTTPS
//! hub ([`crate::desired::hub`]), behind one [`Source`].
//!
//! A source hands out a validated [`crate::desired::DesiredDoc`] plus its raw bytes (so the journal can keep a
//! last-known-good copy). It never decides what is safe: a document from any source only ever
//! *asks*; classification and the gate decide.
//!
//! What every source hands out is in [`crate::desired::fetched`], so the hub does not depend on
//! this module; `drover.toml`'s `[source]` becomes a `Source` in `service::config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::desired;
pub use crate::desired::fetched::{Fetched, SourceError, check_revision};
use crate::desired::hub::{HubError, HubFetch, HubSource};

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
        let path = self.dir.join("desired.toml");
        let origin = path.display().to_string();
        // A FIFO or device here must not hang the agent; the cap comes before any allocation.
        let bytes = crate::local_file::read_regular(&path, desired::MAX_DOCUMENT_BYTES as u64)
            .map_err(|e| SourceError::Unreadable {
                origin: origin.clone(),
                message: format!("cannot read: {e}"),
            })?;
        let doc = desired::parse(&bytes, &origin)?;
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

/// The configured source.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(DirSource),
    Hub {
        hub: Arc<HubSource>,
        /// Where the hub's approval files are mirrored (a directory used for nothing else).
        approvals: PathBuf,
    },
}

/// Why a fetch gave no usable document.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Local(#[from] SourceError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Local(e) => e.code(),
            FetchError::Hub(e) => e.code(),
        }
    }
}

impl Source {
    /// `dir` or `hub`, for status and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dir(_) => "dir",
            Source::Hub { .. } => "hub",
        }
    }

    /// The document's location, for messages.
    pub fn location(&self) -> String {
        match self {
            Source::Dir(d) => d.dir.join("desired.toml").display().to_string(),
            Source::Hub { hub, .. } => hub.document_url(),
        }
    }

    /// Where the approval scan finds files that came with the desired state.
    pub fn approvals_dir(&self) -> PathBuf {
        match self {
            Source::Dir(d) => d.approvals_dir(),
            Source::Hub { approvals, .. } => approvals.clone(),
        }
    }

    /// Fetches the document: `Ok(None)` when a hub says it is unchanged since the last one
    /// this process accepted. `trust` decides whether the hub's signature is required.
    pub async fn fetch(
        &self,
        last_accepted: Option<u64>,
        trust: Option<&gate::TrustStore>,
        now: i64,
    ) -> Result<Option<Fetched>, FetchError> {
        match self {
            Source::Dir(d) => {
                // Blocking file I/O, off the async workers.
                let d = d.clone();
                let fetched = tokio::task::spawn_blocking(move || d.fetch(last_accepted))
                    .await
                    .map_err(|e| {
                        FetchError::from(SourceError::Unreadable {
                            origin: "desired.toml".into(),
                            message: format!("reading the document: {e}"),
                        })
                    })??;
                Ok(Some(fetched))
            }
            Source::Hub { hub, .. } => match hub.fetch(last_accepted, trust, now).await? {
                HubFetch::NotModified => Ok(None),
                HubFetch::Fresh(f) => Ok(Some(f)),
            },
        }
    }

    /// Mirrors the hub's approval files (nothing to do for a directory: the scan reads it).
    pub async fn sync_approvals(&self) -> Result<(), HubError> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Hub { hub, approvals } => {
                let sync = hub.fetch_approvals(approvals).await?;
                if !sync.written.is_empty() || !sync.removed.is_empty() {
                    tracing::info!(
                        written = sync.written.len(),
                        removed = sync.removed.len(),
                        "hub approvals synced"
                    );
                }
                for p in &sync.problems {
                    tracing::warn!("hub approval file: {p}");
                }
                Ok(())
            }
        }
    }

    /// Sends a status report to the hub (a directory source has nobody to tell).
    pub async fn report(&self, body: &crate::desired::report::Report) -> Result<(), HubError> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Hub { hub, .. } => hub.report(body).await.map(|_| ()),
        }
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
