//! Why a job was refused or failed: a stable snake_case code and a sentence for people
//! (deploy/README.md lists every code and what to do about it).

use std::fmt;

/// A refusal or failure of a job. Codes of the gate (`stale_state`, `binding_mismatch`,
/// `replayed`, ...) pass through unchanged; the job's own are listed in [`CODES`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRefusal {
    pub code: String,
    pub message: String,
    /// Whether a trusted signature had been verified when the reason was found.
    pub authenticated: bool,
}

/// The job's own codes (besides the gate's), each documented in the operator guide.
pub const CODES: &[&str] = &[
    "job_in_progress",
    "guest_missing",
    "guest_locked",
    "guest_is_template",
    "guest_protected",
    "guest_not_running",
    "snapshot_exists",
    "snapshot_not_found",
    "snapshot_incomplete",
    "snapshot_unsupported",
    "zfs_not_newest",
    "storage_unusable",
    "no_room",
    "backup_not_found",
    "backup_of_other_guest",
    "bad_request",
    "pve_unavailable",
    "call_lost",
    "task_failed",
    "verify_failed",
    "safety_copy_failed",
    "restore_undone",
    "needs_operator",
    "interrupted",
];

impl JobRefusal {
    pub fn new(code: &str, message: impl Into<String>) -> JobRefusal {
        JobRefusal {
            code: code.to_string(),
            message: message.into(),
            authenticated: false,
        }
    }
}

impl From<gate::Rejection> for JobRefusal {
    fn from(r: gate::Rejection) -> Self {
        JobRefusal {
            code: r.code.as_str().to_string(),
            message: r.message,
            authenticated: r.authenticated,
        }
    }
}

impl fmt::Display for JobRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
