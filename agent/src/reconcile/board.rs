//! What the agent knows about each guest right now, for `drover status`, the report to the hub,
//! metrics and systemd's STATUS line. Written by the engine, read by everyone else.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::desired::DesiredDoc;
use crate::model::ActualHost;
use crate::reconcile::lanes::LaneOutcome;
use crate::reconcile::planner::{Note, Plan};

/// A guest's sync state, like `flux get`'s READY column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    #[default]
    Unknown,
    Converged,
    Pending,
    Running,
    AwaitingApproval,
    Blocked,
    Failed,
    Suspended,
    /// In this node's document but on another node of the cluster (HA, a migration): left
    /// alone here (plan note `exists_on_other_node`).
    Elsewhere,
    /// A risky change is live inside its verify window (settling, probing or reverting).
    Verifying,
}

impl GuestState {
    /// Every state, so metrics can show a zero for each (a rate over a series that appears
    /// only once something happens misses the first change).
    pub const ALL: [GuestState; 10] = [
        GuestState::Unknown,
        GuestState::Converged,
        GuestState::Pending,
        GuestState::Running,
        GuestState::AwaitingApproval,
        GuestState::Blocked,
        GuestState::Failed,
        GuestState::Suspended,
        GuestState::Elsewhere,
        GuestState::Verifying,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Unknown => "unknown",
            GuestState::Converged => "converged",
            GuestState::Pending => "pending",
            GuestState::Running => "running",
            GuestState::AwaitingApproval => "awaiting_approval",
            GuestState::Blocked => "blocked",
            GuestState::Failed => "failed",
            GuestState::Suspended => "suspended",
            GuestState::Elsewhere => "elsewhere",
            GuestState::Verifying => "verifying",
        }
    }
}

/// One guest's line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestStatusLine {
    pub vmid: u32,
    /// The guest's hostname (the document's, else PVE's), so tables say which guest it is.
    pub name: Option<String>,
    pub state: GuestState,
    pub last_step: Option<String>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub pending_approval: Option<String>,
    pub blocked_code: Option<String>,
    pub notes: Vec<String>,
    /// The guest's verify window, when it has one (`reconcile::verify`).
    pub verify: Option<VerifyLine>,
}

/// A verify window as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyLine {
    /// `armed`, `settling`, `probing`, `reverting`, `committed`, `reverted`, ...
    pub phase: String,
    pub keys: Vec<String>,
    /// The revert deadline (unix seconds) while the window is open.
    pub deadline_unix: Option<i64>,
    /// The outcome's stable code (`probe_failed`, `deadline`, ...).
    pub code: Option<String>,
    pub message: String,
    /// A reverted change waits for the desired entry to change.
    pub parked: bool,
    /// Every phase of the window: `(phase, unix ms, detail)`, oldest first.
    pub history: Vec<(String, i64, String)>,
}

/// The whole board.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub desired_revision: Option<u64>,
    pub desired_degraded: bool,
    pub last_pass_unix: Option<i64>,
    pub passes: u64,
    pub guests: BTreeMap<u32, GuestStatusLine>,
    pub unmanaged: Vec<u32>,
    pub source: SourceHealth,
}

/// How fresh the desired state is: what `drover status` and the hub freshness metric show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceHealth {
    /// `dir` or `hub`.
    pub kind: String,
    pub location: String,
    /// Unix time of the last fetch that gave a usable answer (a valid document or `304`).
    pub last_success_unix: Option<i64>,
    pub last_attempt_unix: Option<i64>,
    /// The last fetch's refusal, while it lasts.
    pub error_code: Option<String>,
    pub error: Option<String>,
}

impl Snapshot {
    pub fn count(&self, state: GuestState) -> usize {
        self.guests.values().filter(|g| g.state == state).count()
    }

    /// One line for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let verifying = match self.count(GuestState::Verifying) {
            0 => String::new(),
            n => format!(", {n} verifying"),
        };
        format!(
            "rev {}{}: {} converged, {} pending, {} awaiting approval, {} failed{verifying}",
            self.desired_revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            if self.desired_degraded {
                " (stale)"
            } else {
                ""
            },
            self.count(GuestState::Converged),
            self.count(GuestState::Pending) + self.count(GuestState::Running),
            self.count(GuestState::AwaitingApproval),
            self.count(GuestState::Failed),
        )
    }
}

/// Thread-safe holder of the snapshot.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: Mutex<Snapshot>,
}

impl StatusBoard {
    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    fn guest<R>(&self, vmid: u32, f: impl FnOnce(&mut GuestStatusLine) -> R) -> R {
        self.with(|s| {
            let g = s.guests.entry(vmid).or_insert_with(|| GuestStatusLine {
                vmid,
                ..Default::default()
            });
            f(g)
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }

    /// Records a fetch attempt: `Ok` on success, else the refusal's code and sentence.
    pub fn source_attempt(
        &self,
        kind: &str,
        location: &str,
        now: i64,
        result: Result<(), (&str, String)>,
    ) {
        self.with(|s| {
            let h = &mut s.source;
            h.kind = kind.to_string();
            h.location = location.to_string();
            h.last_attempt_unix = Some(now);
            match result {
                Ok(()) => {
                    h.last_success_unix = Some(now);
                    h.error_code = None;
                    h.error = None;
                }
                Err((code, message)) => {
                    h.error_code = Some(code.to_string());
                    h.error = Some(message);
                }
            }
        });
    }

    pub fn set_desired(&self, revision: u64, degraded: bool) {
        self.with(|s| {
            s.desired_revision = Some(revision);
            s.desired_degraded = degraded;
        });
    }

    /// After a pass: every managed guest without steps is converged (unless it is waiting on
    /// something a note explains); guests with steps are pending; a suspended guest is
    /// `suspended` whatever its plan says, and stops being so once resumed.
    pub fn observe_pass(
        &self,
        doc: &DesiredDoc,
        actual: &ActualHost,
        plan: &Plan,
        suspended: &dyn Fn(u32) -> bool,
    ) {
        self.with(|s| {
            s.passes += 1;
            s.last_pass_unix = Some(crate::clock::unix_now());
            s.unmanaged = plan.unmanaged.clone();
            s.guests.retain(|v, _| doc.guests.contains_key(v));
            for vmid in doc.guests.keys() {
                let g = s.guests.entry(*vmid).or_insert_with(|| GuestStatusLine {
                    vmid: *vmid,
                    ..Default::default()
                });
                g.name = doc
                    .guests
                    .get(vmid)
                    .and_then(|spec| spec.hostname.clone())
                    .or_else(|| {
                        actual
                            .guests
                            .get(vmid)
                            .and_then(|a| a.config.hostname.clone())
                    });
                if suspended(*vmid) {
                    g.state = GuestState::Suspended;
                    continue;
                }
                if g.state == GuestState::Suspended {
                    g.state = GuestState::Unknown;
                }
                let gp = plan.guests.get(vmid);
                g.notes = gp
                    .map(|p| {
                        p.notes
                            .iter()
                            .map(|n| format!("{}: {}", n.code, n.message))
                            .collect()
                    })
                    .unwrap_or_default();
                let has_steps = gp.is_some_and(|p| !p.steps.is_empty());
                let elsewhere =
                    gp.is_some_and(|p| p.notes.iter().any(|n| n.code == "exists_on_other_node"));
                // Listed, then gone before its config was read: not known this pass.
                let vanished = actual.vanished.contains(vmid);
                let verifying = g.verify.as_ref().is_some_and(|v| v.deadline_unix.is_some());
                if !has_steps && verifying {
                    g.state = GuestState::Verifying;
                } else if !has_steps {
                    g.state = if elsewhere {
                        GuestState::Elsewhere
                    } else if vanished {
                        GuestState::Unknown
                    } else {
                        GuestState::Converged
                    };
                    g.pending_approval = None;
                    g.blocked_code = None;
                } else if matches!(
                    g.state,
                    GuestState::Converged | GuestState::Unknown | GuestState::Elsewhere
                ) {
                    g.state = GuestState::Pending;
                }
            }
        });
    }

    /// A suspension took effect: one guest, or every managed guest (`None`).
    pub fn mark_suspended(&self, vmid: Option<u32>) {
        self.with(|s| {
            for g in s.guests.values_mut() {
                if vmid.is_none_or(|v| v == g.vmid) {
                    g.state = GuestState::Suspended;
                }
            }
        });
    }

    pub fn set_state(&self, vmid: u32, state: GuestState) {
        self.guest(vmid, |g| g.state = state);
    }

    pub fn set_notes(&self, vmid: u32, notes: &[Note]) {
        self.guest(vmid, |g| {
            g.notes = notes
                .iter()
                .map(|n| format!("{}: {}", n.code, n.message))
                .collect()
        });
    }

    /// The guest's verify window moved (or was found at boot).
    pub fn set_verify(&self, vmid: u32, line: Option<VerifyLine>) {
        self.guest(vmid, |g| {
            if line.as_ref().is_some_and(|l| l.deadline_unix.is_some()) {
                g.state = GuestState::Verifying;
            }
            g.verify = line;
        });
    }

    pub fn set_running(&self, vmid: u32, step: &str) {
        self.guest(vmid, |g| {
            g.state = GuestState::Running;
            g.last_step = Some(step.to_string());
        });
    }

    pub fn set_blocked(&self, vmid: u32, code: &str, message: &str) {
        self.guest(vmid, |g| {
            g.state = GuestState::Blocked;
            g.blocked_code = Some(code.to_string());
            g.last_error = Some(message.to_string());
        });
    }

    pub fn set_pending_approval(&self, vmid: u32, step: &str, request: &Path) {
        self.guest(vmid, |g| {
            g.state = GuestState::AwaitingApproval;
            g.pending_approval = Some(format!("{step}: {}", request.display()));
        });
    }

    pub fn record_outcome(&self, vmid: u32, outcome: &LaneOutcome) {
        self.guest(vmid, |g| match outcome {
            // A step ran or nothing is left: whatever the guest waited for is resolved (a next
            // step that needs an approval sets its own request again).
            LaneOutcome::Converged => {
                g.state = GuestState::Converged;
                g.last_error = None;
                g.pending_approval = None;
                g.blocked_code = None;
            }
            LaneOutcome::Progressed => {
                g.state = GuestState::Pending;
                g.last_result = Some("ok".into());
                g.last_error = None;
                g.pending_approval = None;
                g.blocked_code = None;
            }
            LaneOutcome::Waiting => {}
            LaneOutcome::Transient(e) => {
                g.state = GuestState::Pending;
                g.last_result = Some("retrying".into());
                g.last_error = Some(e.clone());
            }
            LaneOutcome::Terminal(e) => {
                g.state = GuestState::Failed;
                g.last_result = Some("failed".into());
                g.last_error = Some(e.clone());
            }
            LaneOutcome::RecheckAt(_) => {
                g.state = GuestState::Verifying;
                g.last_error = None;
            }
        });
    }
}
