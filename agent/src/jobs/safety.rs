//! The pre-job safety copy of a restore over a guest or a rollback, through the safety-copy
//! machinery (`safety/`): its preflight gives the `bind.safety` (and `bind.uncovered`) lines
//! the job must carry, and `take` makes the verified copy, journaled as a manifest whose
//! `step_id` is the job's id. The copy is never deleted by the job; once the job ends it stays
//! protected for the operation's grace period (`[safety.grace]`), after which retention may
//! release it.

use std::collections::BTreeMap;

use gate::{JobKind, JobPayload};

use crate::jobs::refusal::JobRefusal;
use crate::safety::{CopyError, CopyManifest, CopyOp, CopyState, Preflight, SafetyCopies};

/// Whether a job of `kind` over an existing guest needs a safety copy first.
pub fn needs_copy(kind: JobKind, guest_exists: bool) -> bool {
    guest_exists && copy_op(kind).is_some()
}

/// The copy's operation for a job kind.
pub fn copy_op(kind: JobKind) -> Option<CopyOp> {
    match kind {
        JobKind::RestoreBackup => Some(CopyOp::Restore),
        JobKind::RollbackSnapshot => Some(CopyOp::Rollback),
        _ => None,
    }
}

impl From<CopyError> for JobRefusal {
    fn from(e: CopyError) -> Self {
        JobRefusal::new(e.code, e.to_string())
    }
}

/// The refusals of the copy and the lines it binds, before anything is done.
pub async fn preflight(
    safety: Option<&SafetyCopies>,
    vmid: u32,
    kind: JobKind,
) -> Result<Preflight, JobRefusal> {
    let Some(safety) = safety else {
        return Err(JobRefusal::new(
            "safety_storage_unset",
            "restores and rollbacks need a storage for safety copies: set [safety] storage in drover.toml",
        ));
    };
    let op = copy_op(kind).ok_or_else(|| JobRefusal::new("bad_request", "no copy for this job"))?;
    safety.preflight(vmid, op).await.map_err(JobRefusal::from)
}

/// The `bind.*` lines of a signed job that belong to its copy.
pub fn signed_binding(p: &JobPayload) -> BTreeMap<String, String> {
    p.binds
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "safety" | "uncovered"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A verified copy already taken for job `job_id` (a restart after the copy finished).
pub fn existing(safety: &SafetyCopies, vmid: u32, job_id: &str) -> Option<CopyManifest> {
    safety
        .list(Some(vmid))
        .ok()?
        .into_iter()
        .find(|m| m.step_id == job_id && m.state == CopyState::Complete)
}

/// What the job journals of its copy: the volid (a vzdump) or the snapshot's name.
pub fn copy_ref(m: &CopyManifest) -> String {
    m.volid
        .clone()
        .or_else(|| m.snapname.clone().map(|s| format!("snapshot {s}")))
        .unwrap_or_else(|| m.id.clone())
}
