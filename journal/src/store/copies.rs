//! Safety-copy manifests (`safety-nets.md` §6.1): one record per copy Drover takes before a
//! destructive step, in the tree `copies` (copy id → record). A manifest is written as
//! `creating` *before* the vzdump or snapshot call, so a copy can never exist on PVE without
//! a record saying Drover made it; later writes move it to `complete`/`failed` and then
//! `released`/`deleted`. Each write is durable before it returns, like every journal write.

use serde::{Deserialize, Serialize};

use super::{Journal, sled_err};
use crate::JournalError;

/// The manifest format written by this version (inside the journal's own record envelope).
pub const MANIFEST_VERSION: u32 = 1;

/// Where a copy is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CopyState {
    /// Journaled before the vzdump/snapshot call; the task may be running or its outcome not
    /// yet seen (the boot sweep resolves it).
    Creating,
    /// Verified: volid from the task log, in the listing, protected, the archived config
    /// matches, hashed where readable.
    Complete,
    /// No usable copy; `reason` is a stable code and a sentence.
    Failed { reason: String },
    /// Unprotected and handed to PVE for deletion (`imgdel`), or a snapshot being removed.
    Released { delete_upid: Option<String> },
    /// Gone from PVE.
    Deleted { delete_upid: Option<String> },
    /// Found on PVE with Drover's notes marker but no manifest of this journal (a journal
    /// moved aside, another host's copy on a shared storage): reported, never deleted.
    Orphan,
}

impl CopyState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CopyState::Creating => "creating",
            CopyState::Complete => "complete",
            CopyState::Failed { .. } => "failed",
            CopyState::Released { .. } => "released",
            CopyState::Deleted { .. } => "deleted",
            CopyState::Orphan => "orphan",
        }
    }
}

/// One safety copy's manifest (seed C's manifest with PVE's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyCopy {
    /// `<state epoch>-<step id>`: unique across journals, in the notes marker.
    pub id: String,
    pub manifest_version: u32,
    /// `pre-destroy`, `pre-restore`, `pre-rollback`, `pre-shrink`.
    pub kind: String,
    /// The gate's op the copy guards (`destroy_guest`, `restore_backup`, ...).
    pub op: String,
    /// `vzdump` or `snapshot`.
    pub method: String,
    pub host: String,
    pub vmid: u32,
    pub hostname: Option<String>,
    /// The journal step (or job) the copy was taken for.
    pub step_id: String,
    /// The safety storage (vzdump) or the guest's storage (snapshot).
    pub storage: String,
    /// The notes marker / snapshot description (`drover:pre-destroy:<id>`).
    pub notes: String,
    #[serde(flatten)]
    pub state: CopyState,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// Protected at least until then (the step's end plus its grace); `None` while the step
    /// has not ended.
    pub protect_until_ms: Option<i64>,
    /// PVE's config digest when the copy was taken (`guest-config-sha1` of the approval).
    pub config_digest: Option<String>,
    /// Volumes in the copy (`rootfs`, `mp0`, ...) and those it cannot hold.
    pub covered: Vec<String>,
    pub uncovered: Vec<String>,
    /// The guest ran before it was quiesced (a failed copy restarts it).
    pub was_running: bool,
    pub upid: Option<String>,
    pub volid: Option<String>,
    pub format: Option<String>,
    /// Archive bytes as listed.
    pub size: Option<u64>,
    /// The listing's `ctime`, as PVE reports it.
    pub ctime: Option<i64>,
    /// `Total bytes written` from the log: the uncompressed tar size.
    pub total_bytes_written: Option<u64>,
    pub sha256: Option<String>,
    /// `agent` (hashed by the agent), `none` (not readable).
    pub hash_source: Option<String>,
    pub snapname: Option<String>,
    /// Warnings kept with the copy (notes not written, task `WARNINGS: n`).
    pub warnings: Vec<String>,
}

impl SafetyCopy {
    /// Still holds data on PVE (or might: `creating`).
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            CopyState::Creating | CopyState::Complete | CopyState::Orphan
        )
    }
}

impl Journal {
    /// Writes (creates or replaces) a manifest, durably.
    pub fn put_copy(&self, copy: &SafetyCopy) -> Result<(), JournalError> {
        let tree = self.copies_tree()?;
        self.put(&tree, copy.id.as_bytes(), self.enc(copy)?)
    }

    pub fn copy_record(&self, id: &str) -> Result<Option<SafetyCopy>, JournalError> {
        let tree = self.copies_tree()?;
        match tree.get(id).map_err(|e| sled_err(&self.inner.dir, e))? {
            Some(v) => Ok(Some(self.dec(&format!("copy {id}"), &v)?)),
            None => Ok(None),
        }
    }

    /// Every manifest, oldest first.
    pub fn copy_records(&self) -> Result<Vec<SafetyCopy>, JournalError> {
        let tree = self.copies_tree()?;
        let mut out: Vec<SafetyCopy> = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec(&format!("copy {}", String::from_utf8_lossy(&k)), &v)?);
        }
        out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Drops manifests of deleted or failed copies beyond the newest `keep_per_guest` per
    /// guest: they describe nothing left on PVE, so the journal stays bounded.
    pub fn prune_copy_records(&self, keep_per_guest: usize) -> Result<u64, JournalError> {
        let all = self.copy_records()?;
        let mut seen: std::collections::HashMap<u32, usize> = Default::default();
        let tree = self.copies_tree()?;
        let mut removed = 0;
        for c in all.iter().rev() {
            if !matches!(
                c.state,
                CopyState::Deleted { .. } | CopyState::Failed { .. }
            ) {
                continue;
            }
            let n = seen.entry(c.vmid).or_default();
            *n += 1;
            if *n > keep_per_guest {
                tree.remove(c.id.as_bytes())
                    .map_err(|e| sled_err(&self.inner.dir, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.durable()?;
        }
        Ok(removed)
    }

    pub(super) fn copies_tree(&self) -> Result<sled::Tree, JournalError> {
        // sled caches open trees; this is a map lookup after the first call.
        self.inner
            .db
            .open_tree("copies")
            .map_err(|e| sled_err(&self.inner.dir, e))
    }
}
