//! A plan with every step's class: what the engine hands to the operator surfaces (`drover
//! plan`, the control socket, the hub report), which render it but never re-classify it.

use serde::Serialize;

use crate::reconcile::planner::Plan;

/// How the gate classified a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "class", rename_all = "lowercase")]
pub enum StepClass {
    Benign,
    Destructive { reason: String },
}

/// A plan with every step's class, in step order per guest.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifiedPlan {
    pub host: String,
    pub plan: Plan,
    /// Same shape as `plan.guests[vmid].steps`.
    pub classes: std::collections::BTreeMap<u32, Vec<StepClass>>,
}

impl ClassifiedPlan {
    pub fn class_of(&self, vmid: u32, index: usize) -> Option<&StepClass> {
        self.classes.get(&vmid).and_then(|c| c.get(index))
    }
}
