//! Verify windows: the durable record of a risky configuration change that must prove itself
//! (`safety-nets.md` §6.2), written before the change is sent and after every phase.
//!
//! The journal knows nothing of probes or PVE: the agent stores its probe list as text and
//! decides from the live config against `old` and `new` after a restart. One window per guest
//! is kept (a new change replaces a terminal one); `history` holds every phase it went through.

use std::collections::BTreeMap;

use crate::StepId;

/// Where a verify window stands. The terminal phases are `Committed`, `Reverted`,
/// `Unverifiable`, `Conflict` and `NeverApplied`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum VerifyPhase {
    /// Journaled before the `PUT config`: the old values are known, the change may or may not
    /// have reached PVE.
    Armed,
    /// Keys went to `[pve:pending]`: the guest is rebooting to apply them.
    Rebooting {
        upid: String,
    },
    /// The change is live; the guest gets `settle_ms` before it is judged.
    Settling,
    /// Probes run until `successes_needed` consecutive passes or the deadline.
    Probing,
    /// Journaled before the old values are sent back.
    Reverting,
    Committed,
    /// The old values are live again (by this agent's revert, or found so after a restart).
    Reverted,
    /// The baseline probe failed before the change: applied without automatic revert.
    Unverifiable,
    /// The live values are neither the old nor the new ones: nothing was touched.
    Conflict,
    /// Found after a restart with the old values live and no push recorded: the change never
    /// reached PVE, the plan tries again.
    NeverApplied,
}

impl VerifyPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            VerifyPhase::Armed => "armed",
            VerifyPhase::Rebooting { .. } => "rebooting",
            VerifyPhase::Settling => "settling",
            VerifyPhase::Probing => "probing",
            VerifyPhase::Reverting => "reverting",
            VerifyPhase::Committed => "committed",
            VerifyPhase::Reverted => "reverted",
            VerifyPhase::Unverifiable => "unverifiable",
            VerifyPhase::Conflict => "conflict",
            VerifyPhase::NeverApplied => "never_applied",
        }
    }

    /// No more work: the window is closed (parked or not).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            VerifyPhase::Committed
                | VerifyPhase::Reverted
                | VerifyPhase::Unverifiable
                | VerifyPhase::Conflict
                | VerifyPhase::NeverApplied
        )
    }
}

/// One phase a window went through (its journal entry).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyTransition {
    pub phase: String,
    pub at_ms: i64,
    pub detail: String,
}

/// A verify window of one guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyWindow {
    pub vmid: u32,
    /// The journaled `set_config` step that pushed the change.
    pub step_id: Option<StepId>,
    pub phase: VerifyPhase,
    /// The config keys of the change.
    pub keys: Vec<String>,
    /// Each key's raw PVE value before the change (`None`: absent).
    pub old: BTreeMap<String, Option<String>>,
    /// Each key's value as sent.
    pub new: BTreeMap<String, Option<String>>,
    pub digest_before: String,
    pub digest_after: Option<String>,
    /// Some key only takes effect at a reboot (it went to `[pve:pending]`).
    pub needs_reboot: bool,
    /// The probes, as the agent writes them (`tcp:ADDR:PORT`, `status`, `interfaces`).
    pub probes: Vec<String>,
    pub probe_timeout_ms: u64,
    pub settle_ms: u64,
    pub successes_needed: u32,
    /// Consecutive passes so far.
    pub successes: u32,
    /// The probes passed against the old config before the change.
    pub baseline_ok: bool,
    pub armed_at_ms: i64,
    /// End of the settle window (set when the change is live).
    pub settle_until_ms: i64,
    /// The revert deadline: past it, a change not committed is reverted.
    pub deadline_ms: i64,
    /// The desired entry this change came from: a reverted change stays parked while the
    /// document's entry for the guest is unchanged.
    pub spec_fingerprint: String,
    /// Stable code of the outcome (`probe_failed`, `deadline`, `agent_restart`, ...).
    pub code: Option<String>,
    /// The outcome in a sentence.
    pub reason: Option<String>,
    /// Automatic re-applies of this same change so far: a change reverted only because the
    /// agent was down past its deadline was never judged, so it is pushed once more.
    #[serde(default)]
    pub reapplied: u32,
    pub history: Vec<VerifyTransition>,
}

impl VerifyWindow {
    /// A reverted change or a conflict holds the guest's risky keys until the document changes.
    pub fn is_parked(&self) -> bool {
        matches!(self.phase, VerifyPhase::Reverted | VerifyPhase::Conflict) && !self.may_reapply()
    }

    /// Reverted only because the deadline passed while the agent was down (`agent_restart`),
    /// for the first time: the probes never judged the change, so it may be pushed once more.
    pub fn may_reapply(&self) -> bool {
        self.phase == VerifyPhase::Reverted
            && self.code.as_deref() == Some("agent_restart")
            && self.reapplied == 0
    }
}

/// Keeps the last windows' history bounded (a window is rewritten on every phase).
pub const MAX_HISTORY: usize = 64;
