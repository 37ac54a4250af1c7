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
        let message = match e.reason {
            Some(r) => format!("{} ({r})", e.message),
            None => e.message.clone(),
        };
        JobRefusal::new(e.code, message)
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

/// The copy already started for job `job_id` (a restart during or after the copy).
pub enum Existing {
    /// Verified: use it.
    Complete(Box<CopyManifest>),
    /// Its task may still run: the safety machinery's sweep resolves it first.
    Creating,
    /// None, or only failed ones: take it (again).
    None,
}

pub fn existing(safety: &SafetyCopies, vmid: u32, job_id: &str) -> Existing {
    let mine: Vec<CopyManifest> = safety
        .list(Some(vmid))
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.step_id == job_id)
        .collect();
    if let Some(m) = mine.iter().find(|m| m.state == CopyState::Complete) {
        return Existing::Complete(Box::new(m.clone()));
    }
    if mine
        .iter()
        .any(|m| m.state == CopyState::Creating && !safety.is_busy(&m.id))
    {
        return Existing::Creating;
    }
    Existing::None
}

/// What the job journals of its copy: the volid (a vzdump) or the snapshot's name.
pub fn copy_ref(m: &CopyManifest) -> String {
    m.volid
        .clone()
        .or_else(|| m.snapname.clone().map(|s| format!("snapshot {s}")))
        .unwrap_or_else(|| m.id.clone())
}
