//! The pre-job safety copy of a restore over a guest or a rollback: where it goes (signed as
//! `bind.safety: vzdump@<storage>`, so the operator sees it) and the request that takes it.
//!
//! This is the seam to the safety-copy machinery (`safety/`, issue 17a: verified copies with a
//! journaled manifest and retention). Until that lands, the copy is a protected vzdump
//! (`protected=1 remove=0`, safety-nets.md §7 item 3) to the signed storage, taken and
//! awaited as a journaled job phase; its volid is journaled with the job and never deleted by
//! Drover, so it outlives any failure. Wiring the real API replaces [`copy_request`] and the
//! phase's call, nothing else.

use gate::{JobKind, JobPayload};
use proxmox_client::VzdumpRequest;

/// The `bind.safety` value for a copy to `storage`.
pub fn bind_value(storage: &str) -> String {
    format!("vzdump@{storage}")
}

/// Whether a job of `kind` over an existing guest needs a safety copy first.
pub fn needs_copy(kind: JobKind, guest_exists: bool) -> bool {
    guest_exists && matches!(kind, JobKind::RestoreBackup | JobKind::RollbackSnapshot)
}

/// The storage a signed job's copy goes to, if it takes one.
pub fn copy_storage(p: &JobPayload) -> Option<String> {
    p.binds
        .get("safety")
        .and_then(|v| v.strip_prefix("vzdump@"))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The vzdump that takes the copy (the notes name the job, so an operator can tell it apart).
pub fn copy_request(vmid: u32, storage: &str, job_id: &str) -> VzdumpRequest {
    let mut r = VzdumpRequest::new(vmid, storage);
    r.mode = Some(proxmox_client::BackupMode::Snapshot);
    r.compress = Some(proxmox_client::BackupCompression::Zstd);
    r.protected = true;
    r.remove = Some(false);
    r.notes_template = Some(format!(
        "drover pre-job safety copy of {{{{vmid}}}} (job {})",
        &job_id[..job_id.len().min(12)]
    ));
    r
}
