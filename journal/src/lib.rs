//! Drover's write-ahead journal on sled: step records, provenance inventory, nonce store, audit
//! log and the small state the agent keeps across restarts. No sled type leaves this crate.
//!
//! Every mutating call is durable before it returns: sled's `flush` followed by `fdatasync` of
//! sled's files (see `durable`, which shares one sync among concurrent writers). The one
//! exception is `done_deferred`, the close of a step whose task's UPID is journaled, which
//! recovery can rebuild from the task.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Errors: always name the store's directory and say what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {dir} is in use by another drover process (pid {holder})")]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "journal {dir} is damaged: {detail}; run `drover journal check`, or move it aside with `drover journal move-aside` to start a new store (this invalidates outstanding approvals)"
    )]
    Corrupt { dir: PathBuf, detail: String },
    #[error(
        "journal {dir}: record {key} has version {version}, which this drover does not know; upgrade drover"
    )]
    UnknownVersion {
        dir: PathBuf,
        key: String,
        version: u32,
    },
    #[error("journal {dir}: {context}: {message}")]
    Io {
        dir: PathBuf,
        context: String,
        message: String,
    },
    #[error("journal {dir}: no step {id}")]
    NoSuchStep { dir: PathBuf, id: StepId },
}

/// Step id: dense and monotonic across restarts, never reused (see `next_step_id`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct StepId(pub u64);

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum StepClass {
    Benign,
    Destructive { reason: String },
}

/// What the engine is about to do (recorded by `intent` before any PVE call).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewStep {
    pub vmid: u32,
    /// Step kind (`create`, `start`, `destroy_guest`, ...).
    pub kind: String,
    pub params: BTreeMap<String, String>,
    pub class: StepClass,
    /// Hex sha256 of the approval payload, when gated.
    pub approval_sha256: Option<String>,
    /// `principal SHA256:fp` of each counted signer, when gated.
    pub signers: Vec<String>,
    /// The operation this step belongs to (the agent's create operation id), if any.
    pub operation: Option<String>,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Warnings(u32),
    Failed(String),
    Abandoned(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Intent,
    Submitted {
        upid: String,
    },
    Done {
        upid: Option<String>,
        outcome: Outcome,
    },
}

/// One step record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub id: StepId,
    pub step: NewStep,
    pub phase: Phase,
    /// Unix milliseconds.
    pub intent_at_ms: i64,
    pub submitted_at_ms: Option<i64>,
    pub done_at_ms: Option<i64>,
}

impl StepRecord {
    pub fn upid(&self) -> Option<&str> {
        match &self.phase {
            Phase::Intent => None,
            Phase::Submitted { upid } => Some(upid),
            Phase::Done { upid, .. } => upid.as_deref(),
        }
    }
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done { .. })
    }
}

/// A signed job (snapshot, rollback, backup, restore, reboot) as the agent runs it: written
/// when the gate accepted it (its nonce consumed) and rewritten, durably, at every phase, so a
/// restart continues exactly where the job was and never runs a phase's PVE call twice. The
/// journal keeps the phases as the agent names them; it does not interpret them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// The job's nonce (unique: the gate consumed it).
    pub id: String,
    pub vmid: u32,
    /// `snapshot`, `rollback_snapshot`, ... (the job's `job:` line).
    pub kind: String,
    /// The signed text, verbatim.
    pub payload: String,
    pub payload_sha256: String,
    /// `principal SHA256:fp` of each counted signer.
    pub signers: Vec<String>,
    /// The phase reached (durable before the next PVE call).
    pub phase: String,
    /// The task of the phase in `phase`, journaled before the agent waits on it.
    pub upid: Option<String>,
    /// When the current phase's call was about to be sent (unix seconds): a lost answer's task
    /// is looked for from here.
    pub phase_at: i64,
    /// Facts the phases gathered (`was_running`, `copy`, ...).
    pub facts: BTreeMap<String, String>,
    /// Every phase reached, oldest first: (phase, unix ms, detail).
    pub history: Vec<(String, i64, String)>,
    /// None while the job runs.
    pub end: Option<JobEnd>,
    pub accepted_at_ms: i64,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum JobEnd {
    Done { detail: String },
    Failed { code: String, message: String },
}

/// What the journal knows of a guest's origin. Only the journal writes this; nothing from the
/// hub can.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    pub vmid: u32,
    pub created_by_agent: bool,
    /// Operation id of the create (the agent uses the create step's id).
    pub create_op: Option<String>,
    /// Kept for records written by older versions; classification no longer reads it.
    pub op_finished: bool,
    pub create_upid: Option<String>,
    /// Config digest the create (or the adoption) left; the agent's later writes do not move
    /// it, so "still the digest the create left" stays checkable.
    pub config_digest: Option<String>,
    /// Kept for records written by older versions; classification no longer reads it.
    pub scratch: bool,
    pub created_at_ms: i64,
    /// How the create step ended: `ok`, `failed` or `abandoned`. Absent in records of older
    /// versions, which only recorded successful creates: absent means `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_outcome: Option<CreateEnd>,
    /// The agent started (or tried to start) this incarnation, or saw it running.
    #[serde(default)]
    pub started: bool,
    /// An operator's signed `adopt` approval (its payload sha256) made this guest managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_by: Option<String>,
}

/// How the agent's own create step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateEnd {
    Ok,
    Failed,
    Abandoned,
}

/// A nonce consumption (signing-gate.md §5.8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NonceClaim {
    pub nonce: String,
    pub payload_sha256: String,
    pub signers: Vec<String>,
    pub op: String,
    pub vmid: u32,
    /// Unix seconds.
    pub expires_at: i64,
    /// The agent clock at verification (unix seconds); raises the clock high-water mark.
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("nonce {0} was already consumed")]
    Replayed(String),
    #[error("the approval expired at or before the garbage-collection horizon")]
    ExpiredForever,
    #[error("{0}")]
    Storage(String),
}

/// One gate decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub time_ms: i64,
    pub allowed: bool,
    pub code: String,
    pub vmid: Option<u32>,
    pub step: Option<String>,
    pub signers: Vec<String>,
    pub authenticated: bool,
    pub detail: String,
}

/// The trust document in force, as the agent applied it: the bootstrap file, a signed rotation
/// or a local replacement. Kept whole, because the next rotation is verified against it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustRecord {
    pub version: u64,
    /// sha256 of `document`.
    pub sha256: String,
    pub document: String,
    /// sha256 of the local trust file when it was last read; a different file means root
    /// replaced it out of band.
    pub file_sha256: String,
    /// `file`, `rotation` or `local_replacement`.
    pub origin: String,
    pub applied_ms: i64,
}

/// How long one kind of PVE task took on this node, as the agent learned it: advisory, kept so
/// that `run --once` and a restarted daemon do not learn every task type again (each wait
/// while learning costs several polls).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskDuration {
    /// PVE's worker type (`vzstart`, `vzcreate`, ...).
    pub worker_type: String,
    /// Microseconds until the first poll.
    pub estimate_us: u64,
    /// Microseconds: the latest end the estimate allows.
    pub latest_us: u64,
}

/// A volume Drover detached from a mount point (`delete=mpN` left it as `unusedN`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetachRecord {
    pub vmid: u32,
    /// The mount point key it was (`mp1`).
    pub key: String,
    pub volume: String,
    /// The mount point's whole value before the detach.
    pub mount: String,
    /// Unix seconds, journaled before the call.
    pub at: i64,
}

/// A suspension of one guest or (vmid None) the whole host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    pub vmid: Option<u32>,
    pub reason: String,
    pub since_ms: i64,
}

/// How long one durable write took: sled's flush, then the `fdatasync` of its files that makes
/// the write survive a power loss (see `Journal::durable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncTiming {
    pub flush: std::time::Duration,
    pub fdatasync: std::time::Duration,
}

/// Which done records compaction keeps. In-flight records are never removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most recent done records kept per guest (what `drover status` shows).
    pub per_guest: usize,
    /// The most recent done records kept overall.
    pub total: usize,
    /// Compact automatically after this many `done` calls (0: never automatically).
    pub every: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            per_guest: 20,
            total: 10_000,
            every: 1_000,
        }
    }
}

/// The report of `check`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub opened: bool,
    pub error: Option<String>,
    pub epoch: Option<String>,
    pub steps: u64,
    pub in_flight: u64,
    pub provenance: u64,
    pub nonces: u64,
    pub audit: u64,
    /// Safety-copy manifests.
    pub copies: u64,
    /// Keys of records that do not decode, with the reason.
    pub undecodable: Vec<(String, String)>,
}

impl CheckReport {
    pub fn is_healthy(&self) -> bool {
        self.opened && self.error.is_none() && self.undecodable.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "journal {}", self.dir.display())?;
        if let Some(e) = &self.error {
            writeln!(f, "  status: DAMAGED: {e}")?;
        } else if !self.undecodable.is_empty() {
            writeln!(
                f,
                "  status: DAMAGED: {} record(s) do not decode",
                self.undecodable.len()
            )?;
        } else {
            writeln!(f, "  status: ok")?;
        }
        if let Some(e) = &self.epoch {
            writeln!(f, "  state epoch: {e}")?;
        }
        writeln!(
            f,
            "  steps: {} ({} in flight); provenance: {}; nonces: {}; audit entries: {}; safety copies: {}",
            self.steps, self.in_flight, self.provenance, self.nonces, self.audit, self.copies
        )?;
        for (k, why) in &self.undecodable {
            writeln!(f, "  undecodable record {k}: {why}")?;
        }
        if !self.is_healthy() {
            writeln!(
                f,
                "  what to do: stop drover, then `drover journal move-aside` (or rename the directory) and start again;\n  a new store gets a new state epoch, so outstanding approvals must be signed again."
            )?;
        }
        Ok(())
    }
}

mod store;
pub use store::copies::{CopyState, MANIFEST_VERSION, SafetyCopy};
pub mod verify;
pub use store::{Journal, check, move_aside};
pub use verify::{VerifyPhase, VerifyTransition, VerifyWindow};
