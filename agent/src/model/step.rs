//! What a step is: the kinds of change the agent makes to a guest, with exactly the API
//! parameters it will send and the old → new values shown to people.
//!
//! The planner produces steps, the journal records them write-ahead and the gate binds
//! approvals to them, so the type lives below all three.

use std::collections::BTreeMap;

/// What a step does. The names are the approval payload's `op` for the destructive ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Create,
    SetConfig,
    Resize,
    Start,
    Shutdown,
    Stop,
    Reboot,
    Destroy,
    /// Take over a guest Drover did not create (see `reconcile::adoption`): no PVE call, the
    /// journal records it once an operator's signed approval is verified.
    Adopt,
    /// Detach a mount point (`delete=mpN`): PVE keeps a volume as `unusedN`, so it is
    /// reversible; the volume is deleted only by a later [`StepKind::DeleteVolume`].
    Detach,
    /// Delete a volume Drover detached (`delete=unusedN`), planned only after the grace period.
    DeleteVolume,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Create => "create",
            StepKind::SetConfig => "set_config",
            StepKind::Resize => "resize",
            StepKind::Start => "start",
            StepKind::Shutdown => "shutdown",
            StepKind::Stop => "stop",
            StepKind::Reboot => "reboot",
            StepKind::Destroy => "destroy_guest",
            StepKind::Adopt => "adopt",
            StepKind::Detach => "remove_mountpoint",
            StepKind::DeleteVolume => "delete_volume",
        }
    }
}

/// One value that changes, for the plan display.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One planned step: exactly the API parameters it will send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub vmid: u32,
    pub kind: StepKind,
    /// API parameters, as sent (and as bound into an approval for destructive steps).
    pub params: BTreeMap<String, String>,
    /// Human-readable old → new values.
    pub changes: Vec<Change>,
}

/// Something the plan wants an operator to know that is not a step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    /// Stable machine-readable code.
    pub code: &'static str,
    pub vmid: Option<u32>,
    pub message: String,
}
