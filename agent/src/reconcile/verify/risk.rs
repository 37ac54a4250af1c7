//! Which config changes can cut a guest off (`safety-nets.md` §6.2): benign by provenance,
//! risky by effect. Only these go through a verify window; the rest of a `set_config` step is
//! sent on its own first, so a revert never takes a hostname or a tag with it.

use sha2::Digest;

use crate::desired::GuestSpec;
use crate::model::{ActualGuest, Power};
use crate::reconcile::planner::{GuestPlan, Note, Step, StepKind};
use crate::store::VerifyWindow;

/// `net[n]`, `mp[n]`, a memory or swap decrease, and keys PVE applies only at the next start.
pub fn is_risky(key: &str, actual: &ActualGuest, new: &str) -> bool {
    let numbered = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    if numbered("net") || numbered("mp") {
        return true;
    }
    let decrease = |have: Option<u64>| match (have, new.parse::<u64>()) {
        (Some(have), Ok(want)) => want < have,
        _ => false,
    };
    match key {
        "memory" => decrease(actual.config.memory),
        "swap" => decrease(actual.config.swap),
        _ => applies_at_reboot(key),
    }
}

/// Keys a running CT only picks up when it starts again (they go to `[pve:pending]`).
pub fn applies_at_reboot(key: &str) -> bool {
    matches!(key, "nameserver" | "searchdomain" | "features")
}

/// Splits a `set_config` step into its benign part and its risky part (either may be absent).
pub fn split(step: &Step, actual: &ActualGuest) -> (Option<Step>, Option<Step>) {
    let mut benign = Step {
        params: Default::default(),
        changes: Vec::new(),
        ..step.clone()
    };
    let mut risky = benign.clone();
    for (k, v) in &step.params {
        let to = if is_risky(k, actual, v) {
            &mut risky
        } else {
            &mut benign
        };
        to.params.insert(k.clone(), v.clone());
    }
    for c in &step.changes {
        if risky.params.contains_key(&c.key) {
            risky.changes.push(c.clone());
        } else {
            benign.changes.push(c.clone());
        }
    }
    let some = |s: Step| (!s.params.is_empty()).then_some(s);
    (some(benign), some(risky))
}

/// What identifies the desired entry a change came from: any edit of the guest's entry (its
/// keys or its `verify` table) gives another fingerprint and lifts a park.
pub fn fingerprint(spec: &GuestSpec) -> String {
    hex::encode(sha2::Sha256::digest(format!("{spec:?}").as_bytes()))
}

/// Note codes of a parked change, shown by `plan` and `status`.
pub const PARKED_REVERTED: &str = "verify_reverted";
pub const PARKED_CONFLICT: &str = "verify_conflict";

/// Shapes a guest's plan for verification: the risky keys of its `set_config` step become a
/// step of their own, after the benign ones; while a reverted change is parked for this very
/// entry, that step is withheld with a note instead (no apply → revert → apply loop).
pub fn shape_plan(
    gp: &mut GuestPlan,
    spec: &GuestSpec,
    actual: Option<&ActualGuest>,
    window: Option<&VerifyWindow>,
) {
    let (Some(_), Some(actual)) = (&spec.verify, actual) else {
        return;
    };
    if actual.power != Power::Running {
        // A stopped guest cannot be cut off: its change takes effect when it starts.
        return;
    }
    let Some(i) = gp.steps.iter().position(|s| s.kind == StepKind::SetConfig) else {
        return;
    };
    let (benign, risky) = split(&gp.steps[i], actual);
    let parked = window.filter(|w| w.is_parked() && w.spec_fingerprint == fingerprint(spec));
    let mut replace = Vec::new();
    replace.extend(benign);
    match (risky, parked) {
        (Some(_), Some(w)) => {
            let (code, what) = if w.phase == crate::store::VerifyPhase::Conflict {
                (PARKED_CONFLICT, "was left alone after a conflicting edit")
            } else {
                (PARKED_REVERTED, "was reverted")
            };
            gp.notes.push(Note {
                code,
                vmid: Some(gp.vmid),
                message: format!(
                    "the change of {} {what} ({}: {}); it is parked until the desired entry of CT {} changes",
                    w.keys.join(", "),
                    w.code.as_deref().unwrap_or("-"),
                    w.reason.as_deref().unwrap_or("-"),
                    gp.vmid
                ),
            });
        }
        (Some(r), None) => replace.push(r),
        (None, _) => {}
    }
    gp.steps.splice(i..=i, replace);
}

/// True when `step` is the risky part `shape_plan` made: it runs inside a verify window.
pub fn needs_window(step: &Step, spec: &GuestSpec, actual: Option<&ActualGuest>) -> bool {
    let Some(actual) = actual else { return false };
    spec.verify.is_some()
        && actual.power == Power::Running
        && step.kind == StepKind::SetConfig
        && !step.params.is_empty()
        && step.params.iter().all(|(k, v)| is_risky(k, actual, v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::ActualConfig;
    use std::collections::BTreeMap;

    fn actual() -> ActualGuest {
        ActualGuest {
            vmid: 101,
            power: Power::Running,
            lock: None,
            config: ActualConfig {
                memory: Some(512),
                swap: Some(0),
                ..Default::default()
            },
            digest: "d".into(),
            pending: Default::default(),
            template: false,
        }
    }

    #[test]
    fn risky_keys() {
        let a = actual();
        assert!(is_risky("net0", &a, "name=eth0,bridge=vmbr1"));
        assert!(is_risky("mp3", &a, "local-lvm:8,mp=/srv"));
        assert!(is_risky("memory", &a, "256"));
        assert!(
            !is_risky("memory", &a, "1024"),
            "growing memory is not risky"
        );
        assert!(!is_risky("swap", &a, "512"));
        assert!(is_risky("nameserver", &a, "10.0.0.1"));
        assert!(!is_risky("hostname", &a, "x"));
        assert!(!is_risky("network", &a, "x"));
        assert!(!is_risky("net", &a, "x"));
    }

    #[test]
    fn split_keeps_the_benign_part_first() {
        let step = Step {
            vmid: 101,
            kind: StepKind::SetConfig,
            params: BTreeMap::from([
                ("hostname".to_string(), "b".to_string()),
                ("net0".to_string(), "name=eth0,bridge=vmbr1".to_string()),
            ]),
            changes: vec![
                crate::model::step::Change {
                    key: "hostname".into(),
                    old: Some("a".into()),
                    new: Some("b".into()),
                },
                crate::model::step::Change {
                    key: "net0".into(),
                    old: None,
                    new: Some("x".into()),
                },
            ],
        };
        let (b, r) = split(&step, &actual());
        let (b, r) = (b.unwrap(), r.unwrap());
        assert_eq!(b.params.keys().collect::<Vec<_>>(), ["hostname"]);
        assert_eq!(r.params.keys().collect::<Vec<_>>(), ["net0"]);
        assert_eq!(r.changes.len(), 1);
    }
}
