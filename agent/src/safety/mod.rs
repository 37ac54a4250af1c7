//! Safety copies: before a destructive step runs, a verified copy of what it destroys
//! (`safety-nets.md` §6.1). "No copy, no destruction": any failure blocks the step, restarts a
//! guest that was running, and leaves the operator's approval unspent (the caller consumes the
//! nonce only after [`SafetyCopies::take`] returned a verified manifest).
//!
//! The API, for the engine's destroy and for signed jobs (restore, rollback, ...):
//! 1. [`SafetyCopies::preflight`]: every refusal, from CURRENT PVE state, before any side
//!    effect; its [`Preflight::binding`] is what the approval must bind (`bind.uncovered`,
//!    `bind.safety`).
//! 2. [`SafetyCopies::take`]: journal the manifest (`creating`), quiesce, copy, verify; returns
//!    the `complete` manifest or a [`CopyError`] (the manifest then says `failed`).
//! 3. [`SafetyCopies::step_done`]: the destructive step ended; the copy stays protected for the
//!    op's grace period from now.
//! 4. [`SafetyCopies::release`], [`SafetyCopies::retention`]: unprotect + delete Drover's own
//!    expired copies (never anything without a manifest).
//! 5. [`SafetyCopies::sweep`]: at boot, resolve `creating` manifests a crash left and report
//!    copies with Drover's marker that no manifest knows.
//!
//! Modules: `config` (`[safety]`), `coverage` (what a vzdump holds), `copy` (preflight, quiesce,
//! vzdump/snapshot), `verify` (task log, listing, extractconfig, sha256), `retention`, `sweep`,
//! `deferred` (the gate's verification without spending the nonce).

pub mod config;
pub mod copy;
pub mod coverage;
pub mod deferred;
pub mod retention;
pub mod sweep;
pub mod verify;

use std::time::Duration;

use proxmox_client::Client;

pub use self::config::SafetyPolicy;
pub use self::copy::Preflight;
use crate::store::Store;
pub use crate::store::{CopyManifest, CopyState};

/// The destructive operation a copy guards; decides the copy's kind, method and grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOp {
    /// `destroy_guest`: vzdump after a clean shutdown.
    Destroy,
    /// `restore_backup` over an existing CT: vzdump after a clean shutdown.
    Restore,
    /// `rollback_snapshot`: a snapshot where the storage can roll back to any snapshot
    /// (lvmthin, rbd, btrfs), else (ZFS, dir) a vzdump.
    Rollback,
    /// `shrink_volume` (a vzdump plus an advanced restore): the vzdump is the restore source.
    Shrink,
}

impl CopyOp {
    /// The gate's op name.
    pub fn op_name(self) -> &'static str {
        match self {
            CopyOp::Destroy => "destroy_guest",
            CopyOp::Restore => "restore_backup",
            CopyOp::Rollback => "rollback_snapshot",
            CopyOp::Shrink => "shrink_volume",
        }
    }

    /// The manifest's `kind`.
    pub fn kind(self) -> &'static str {
        match self {
            CopyOp::Destroy => "pre-destroy",
            CopyOp::Restore => "pre-restore",
            CopyOp::Rollback => "pre-rollback",
            CopyOp::Shrink => "pre-shrink",
        }
    }

    pub fn from_kind(kind: &str) -> Option<CopyOp> {
        Some(match kind {
            "pre-destroy" => CopyOp::Destroy,
            "pre-restore" => CopyOp::Restore,
            "pre-rollback" => CopyOp::Rollback,
            "pre-shrink" => CopyOp::Shrink,
            _ => return None,
        })
    }

    pub fn grace(self, p: &SafetyPolicy) -> Duration {
        match self {
            CopyOp::Destroy => p.destroy_grace,
            CopyOp::Restore => p.restore_grace,
            CopyOp::Rollback => p.rollback_grace,
            CopyOp::Shrink => p.shrink_grace,
        }
    }
}

/// Why there is no (verified) copy. `code` is stable (snake_case); `reason` narrows
/// `safety_copy_failed` (`not_on_node`, `job_errors`, `lock_timeout`, `no_volid`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}{}: {message}", reason.map(|r| format!("({r})")).unwrap_or_default())]
pub struct CopyError {
    pub code: &'static str,
    pub reason: Option<&'static str>,
    pub message: String,
    /// Worth retrying by itself (PVE unreachable, a lock held by someone else); otherwise
    /// the operator has to change something.
    pub transient: bool,
}

impl CopyError {
    pub fn new(code: &'static str, message: impl Into<String>) -> CopyError {
        CopyError {
            code,
            reason: None,
            message: message.into(),
            transient: false,
        }
    }

    /// `safety_copy_failed(reason)`.
    pub fn failed(reason: &'static str, message: impl Into<String>) -> CopyError {
        CopyError {
            code: "safety_copy_failed",
            reason: Some(reason),
            message: message.into(),
            transient: false,
        }
    }

    pub fn transient(mut self) -> CopyError {
        self.transient = true;
        self
    }

    /// `code(reason)` as journaled in a failed manifest.
    pub fn code_and_reason(&self) -> String {
        match self.reason {
            Some(r) => format!("{}({r})", self.code),
            None => self.code.to_string(),
        }
    }

    fn pve(what: &str, e: &proxmox_client::Error) -> CopyError {
        let err = CopyError::new("safety_pve_unavailable", format!("{what}: {e}"));
        if e.is_transient() || e.is_lock() {
            err.transient()
        } else {
            err
        }
    }

    fn journal(e: &crate::store::StoreError) -> CopyError {
        CopyError::new("safety_journal", format!("journaling the safety copy: {e}")).transient()
    }
}

/// Safety copies on one node. Cheap to clone.
#[derive(Clone)]
pub struct SafetyCopies {
    pub(crate) client: Client,
    pub(crate) node: String,
    pub(crate) store: Store,
    pub(crate) policy: SafetyPolicy,
    /// A fixed task poll interval (tests and the simulator), else PVE's usual schedule.
    pub(crate) poll: Option<Duration>,
    /// Copies being taken by this process right now (the sweep leaves them alone).
    pub(crate) busy: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl SafetyCopies {
    pub fn new(
        client: Client,
        node: impl Into<String>,
        store: Store,
        policy: SafetyPolicy,
        poll: Option<Duration>,
    ) -> SafetyCopies {
        SafetyCopies {
            client,
            node: node.into(),
            store,
            policy,
            poll,
            busy: Default::default(),
        }
    }

    pub(crate) fn busy_insert(&self, id: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    pub(crate) fn busy_remove(&self, id: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn is_busy(&self, id: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    pub fn policy(&self) -> &SafetyPolicy {
        &self.policy
    }

    /// Every manifest (of one guest), oldest first.
    pub fn list(&self, vmid: Option<u32>) -> Result<Vec<CopyManifest>, crate::store::StoreError> {
        Ok(self
            .store
            .copies()?
            .into_iter()
            .filter(|c| vmid.is_none_or(|v| c.vmid == v))
            .collect())
    }

    pub(crate) fn wait_options(&self, deadline: Duration) -> proxmox_client::WaitOptions {
        match self.poll {
            Some(i) => proxmox_client::WaitOptions::fast(i, deadline),
            None => proxmox_client::WaitOptions::with_deadline(deadline),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    crate::clock::unix_now_ms()
}
