//! Adoption: a guest Drover did not create is not Drover's to change until an operator says so.
//!
//! A guest that exists on the host but has no provenance in the journal (neither created by
//! this agent nor adopted) is *unmanaged*. Its desired entry plans nothing but one `adopt`
//! step, which the gate always classifies destructive: it needs an operator's signed approval,
//! bound like any other to host, guest, config digest and nonce. Without this a hub that lists
//! an existing customer CT could, unsigned, stop it, shrink its memory, move its NIC to another
//! bridge or turn its firewall off. Once adopted, the guest is managed like one Drover created;
//! destroying it still needs its own signature (its origin is `Adopted`, never a failed create).
//!
//! Pure, like the planner: the engine supplies whether the journal knows the guest.

use crate::model::ActualGuest;
use crate::reconcile::planner::{Change, GuestPlan, Note, Step, StepKind};

/// The note an unmanaged guest's plan carries.
pub const UNMANAGED_NOTE: &str = "unmanaged_until_adopted";

/// Replaces the plan of a guest the journal does not know by a single `adopt` step. Plans of
/// guests that do not exist (a create), that the journal knows, or that are templates or locked
/// (nothing is planned for them yet) are returned unchanged.
pub fn require_adoption(gp: GuestPlan, actual: Option<&ActualGuest>, known: bool) -> GuestPlan {
    let Some(actual) = actual else { return gp };
    if known || actual.template || actual.lock.is_some() {
        return gp;
    }
    let vmid = gp.vmid;
    let then: Vec<String> = gp
        .steps
        .iter()
        .map(|s| {
            let keys: Vec<&str> = s.params.keys().map(String::as_str).collect();
            if keys.is_empty() || s.kind == StepKind::Destroy {
                s.kind.as_str().to_string()
            } else {
                format!("{} {}", s.kind.as_str(), keys.join(","))
            }
        })
        .collect();
    let mut notes = gp.notes;
    notes.push(Note {
        code: UNMANAGED_NOTE,
        vmid: Some(vmid),
        message: format!(
            "CT {vmid} exists and Drover did not create it; nothing is changed until an operator signs its adopt request"
        ),
    });
    GuestPlan {
        vmid,
        steps: vec![Step {
            vmid,
            kind: StepKind::Adopt,
            params: Default::default(),
            changes: vec![Change {
                key: "managed_by_drover".into(),
                old: Some("no".into()),
                new: Some(if then.is_empty() {
                    "yes (nothing to change)".into()
                } else {
                    format!("yes, then: {}", then.join("; "))
                }),
            }],
        }],
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActualConfig, Power};
    use std::collections::BTreeSet;

    fn guest(vmid: u32) -> ActualGuest {
        ActualGuest {
            vmid,
            power: Power::Running,
            lock: None,
            config: ActualConfig::default(),
            digest: "d".repeat(40),
            pending: BTreeSet::new(),
            template: false,
        }
    }

    fn plan_with(kind: StepKind) -> GuestPlan {
        GuestPlan {
            vmid: 301,
            steps: vec![Step {
                vmid: 301,
                kind,
                params: [("memory".to_string(), "16".to_string())].into(),
                changes: vec![],
            }],
            notes: vec![],
        }
    }

    #[test]
    fn an_unknown_existing_guest_plans_only_adopt() {
        let g = guest(301);
        for kind in [StepKind::SetConfig, StepKind::Shutdown, StepKind::Destroy] {
            let gp = require_adoption(plan_with(kind), Some(&g), false);
            assert_eq!(gp.steps.len(), 1);
            assert_eq!(gp.steps[0].kind, StepKind::Adopt);
            assert!(gp.steps[0].params.is_empty());
            assert!(gp.notes.iter().any(|n| n.code == UNMANAGED_NOTE));
        }
        // Even a guest that already matches its entry must be adopted before it is managed.
        let empty = GuestPlan {
            vmid: 301,
            steps: vec![],
            notes: vec![],
        };
        assert_eq!(
            require_adoption(empty, Some(&g), false).steps[0].kind,
            StepKind::Adopt
        );
    }

    #[test]
    fn known_missing_template_and_locked_guests_are_unchanged() {
        let g = guest(301);
        let p = plan_with(StepKind::SetConfig);
        assert_eq!(require_adoption(p.clone(), Some(&g), true), p);
        assert_eq!(require_adoption(p.clone(), None, false), p);
        let mut t = guest(301);
        t.template = true;
        assert_eq!(require_adoption(p.clone(), Some(&t), false), p);
        let mut l = guest(301);
        l.lock = Some("backup".into());
        assert_eq!(require_adoption(p.clone(), Some(&l), false), p);
    }
}
