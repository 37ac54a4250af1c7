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
use std::sync::{Arc, Mutex};

use crate::desired;
pub use crate::desired::fetched::{Fetched, SourceError, check_revision};
use crate::desired::hub::{HubError, HubFetch, HubSource};

/// A directory holding `desired.toml` and an `approvals/` folder.
#[derive(Debug, Clone)]
pub struct DirSource {
    pub dir: PathBuf,
    /// What the daemon's passes already have (see [`DirSource::fetch_if_changed`]), shared by
    /// the clones of one source.
    seen: Arc<Mutex<Seen>>,
}

/// The last document this source handed out, by the SHA-256 of its bytes, and how many times
/// it parsed one (for tests and benchmarks: a pass over an unchanged file parses nothing).
#[derive(Debug, Default)]
struct Seen {
    sha256: Option<[u8; 32]>,
    parses: u64,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            seen: Arc::default(),
        }
    }

    /// Reads and validates the document; refuses a revision lower than `last_accepted`.
    pub fn fetch(&self, last_accepted: Option<u64>) -> Result<Fetched, SourceError> {
        let (bytes, origin) = self.read()?;
        self.parse(bytes, origin, last_accepted)
    }

    /// Like [`DirSource::fetch`], but `Ok(None)` when the file's bytes are those of the
    /// document this source handed out last: the hub's `304`, without parsing (175 ms at
    /// 10,000 guests) or journaling it again on every pass. Any refusal forgets the last
    /// document, so the next good read is handed out (and heals a degraded state) again.
    pub fn fetch_if_changed(
        &self,
        last_accepted: Option<u64>,
    ) -> Result<Option<Fetched>, SourceError> {
        use sha2::Digest as _;
        let read = self.read();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, origin) = match read {
            Ok(r) => r,
            Err(e) => {
                seen.sha256 = None;
                return Err(e);
            }
        };
        let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if seen.sha256 == Some(sha256) {
            return Ok(None);
        }
        seen.sha256 = None;
        drop(seen);
        let fetched = self.parse(bytes, origin, last_accepted)?;
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).sha256 = Some(sha256);
        Ok(Some(fetched))
    }

    /// Forgets the last document handed out: the next fetch parses and hands it out again
    /// (after keeping it in the journal failed, so the next pass tries again).
    pub fn forget_last(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).sha256 = None;
    }

    /// How many documents this source (and its clones) parsed.
    pub fn parses(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).parses
    }

    fn read(&self) -> Result<(Vec<u8>, String), SourceError> {
        let path = self.dir.join("desired.toml");
        let origin = path.display().to_string();
        // A FIFO or device here must not hang the agent; the cap comes before any allocation.
        let bytes = crate::local_file::read_regular(&path, desired::MAX_DOCUMENT_BYTES as u64)
            .map_err(|e| SourceError::Unreadable {
                origin: origin.clone(),
                message: format!("cannot read: {e}"),
            })?;
        Ok((bytes, origin))
    }

    fn parse(
        &self,
        bytes: Vec<u8>,
        origin: String,
        last_accepted: Option<u64>,
    ) -> Result<Fetched, SourceError> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).parses += 1;
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

    /// Fetches the document: `Ok(None)` when it is unchanged since the last one this source
    /// handed out (a hub's `304`, a directory's file with the same bytes). `trust` decides
    /// whether the hub's signature is required.
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
                let fetched =
                    tokio::task::spawn_blocking(move || d.fetch_if_changed(last_accepted))
                        .await
                        .map_err(|e| {
                            FetchError::from(SourceError::Unreadable {
                                origin: "desired.toml".into(),
                                message: format!("reading the document: {e}"),
                            })
                        })??;
                Ok(fetched)
            }
            Source::Hub { hub, .. } => match hub.fetch(last_accepted, trust, now).await? {
                HubFetch::NotModified => Ok(None),
                HubFetch::Fresh(f) => Ok(Some(f)),
            },
        }
    }

    /// The next fetch hands the current document out again even if it did not change (after
    /// keeping it in the journal failed). A hub's next fetch is unconditional anyway only
    /// after a restart, so this matters for a directory.
    pub fn forget_last(&self) {
        if let Source::Dir(d) = self {
            d.forget_last();
        }
    }

    /// Mirrors the hub's approval files (nothing to do for a directory: the scan reads it).
    pub async fn sync_approvals(&self) -> Result<(), HubError> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Hub { hub, approvals } => {
                // Signed jobs first, and whatever the approvals do: `hosts/<host>/jobs/` into
                // `<state_dir>/hub-jobs` (beside `hub-approvals`), where the job runner looks.
                if let Some(state) = approvals.parent() {
                    match hub.fetch_jobs(&state.join("hub-jobs")).await {
                        Ok(jobs) => {
                            if !jobs.written.is_empty() || !jobs.removed.is_empty() {
                                tracing::info!(
                                    written = jobs.written.len(),
                                    removed = jobs.removed.len(),
                                    "hub jobs synced"
                                );
                            }
                            for p in &jobs.problems {
                                tracing::warn!("hub job file: {p}");
                            }
                        }
                        Err(e) => tracing::warn!(code = e.code(), "hub jobs not synced: {e}"),
                    }
                }
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

    #[test]
    fn an_unchanged_file_is_not_parsed_again_and_an_edit_is_picked_up() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("desired.toml");
        std::fs::write(&file, "revision = 5\n[[guest]]\nvmid = 101\n").unwrap();
        let s = DirSource::new(d.path());
        let clone = s.clone();
        assert_eq!(s.fetch_if_changed(None).unwrap().unwrap().doc.revision, 5);
        assert_eq!(s.parses(), 1);
        // Unchanged bytes (also through a clone, as the daemon holds it): nothing parsed.
        assert!(clone.fetch_if_changed(Some(5)).unwrap().is_none());
        assert!(s.fetch_if_changed(Some(5)).unwrap().is_none());
        assert_eq!(s.parses(), 1);
        // An edit, even one that keeps the revision, is read again.
        std::fs::write(&file, "revision = 5\n[[guest]]\nvmid = 102\n").unwrap();
        let f = s.fetch_if_changed(Some(5)).unwrap().unwrap();
        assert!(f.doc.guests.contains_key(&102));
        assert_eq!(s.parses(), 2);
        // A refusal forgets the last document: the same good bytes afterwards are handed out
        // again (so the daemon leaves its degraded state).
        std::fs::write(&file, "revision = x").unwrap();
        assert_eq!(
            s.fetch_if_changed(Some(5)).unwrap_err().code(),
            "desired_invalid"
        );
        assert_eq!(
            s.fetch_if_changed(Some(5)).unwrap_err().code(),
            "desired_invalid",
            "an invalid file stays refused, it is not 'unchanged'"
        );
        std::fs::write(&file, "revision = 5\n[[guest]]\nvmid = 102\n").unwrap();
        assert!(s.fetch_if_changed(Some(5)).unwrap().is_some());
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            s.fetch_if_changed(Some(5)).unwrap_err().code(),
            "desired_unreadable"
        );
        std::fs::write(&file, "revision = 5\n[[guest]]\nvmid = 102\n").unwrap();
        assert!(s.fetch_if_changed(Some(5)).unwrap().is_some());
        // A rollback is refused, not taken for unchanged.
        std::fs::write(&file, "revision = 4\n").unwrap();
        assert_eq!(
            s.fetch_if_changed(Some(5)).unwrap_err().code(),
            "desired_rollback"
        );
        // After a failed journal write the daemon forgets: the same bytes come again.
        std::fs::write(&file, "revision = 6\n").unwrap();
        assert!(s.fetch_if_changed(Some(5)).unwrap().is_some());
        s.forget_last();
        assert!(s.fetch_if_changed(Some(6)).unwrap().is_some());
        assert!(s.fetch_if_changed(Some(6)).unwrap().is_none());
    }
}
