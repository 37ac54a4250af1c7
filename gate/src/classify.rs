//! Benign or destructive, decided by what a step does and by provenance from the agent's own
//! journal, never by tags, names or flags in the desired document.
//!
//! Destroying or overwriting data is destructive unless it cleans up the agent's own create that
//! did **not** succeed (signing-gate.md §6 rows 54-56): the journal shows that the create step of
//! this very incarnation ended failed or abandoned, the guest was never started, and its config
//! digest is still the one that create left. From the moment a create task ends OK the guest may
//! hold data, and destroying it needs a signature whatever happens later. Taking over a guest
//! the agent did not create (`adopt`) always needs a signature. Unknown kinds and unknown config
//! keys are destructive.

use crate::action::{Op, PlannedAction};

/// How the agent's own create step of an incarnation ended, as its journal recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The create task ended OK (or with warnings): the guest may hold data from then on.
    Succeeded,
    /// The create task (or the call) failed, yet a guest was left behind.
    Failed,
    /// The create step was abandoned (the call never started a task the agent could find),
    /// yet a guest exists.
    Abandoned,
}

/// Where a guest the journal knows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The agent's own create step made this incarnation.
    Created(CreateOutcome),
    /// An operator signed an `adopt` approval for a guest the agent did not create.
    Adopted,
}

/// What the journal knows about a guest (the agent implements [`ProvenanceSource`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProvenance {
    pub origin: Origin,
    /// The agent started (or tried to start) this incarnation, or saw it running.
    pub ever_started: bool,
    /// Which incarnation the journal means.
    pub incarnation: Option<Incarnation>,
}

/// One incarnation of a vmid: the create task and the config digest that create (or the
/// adoption) left. A vmid destroyed and re-created by anyone else, or a config changed since,
/// has another digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    /// None when the create never got a task id (abandoned) or the guest was adopted.
    pub create_upid: Option<String>,
    pub config_digest: String,
}

/// Provenance lookup, implemented by the agent on its journal.
pub trait ProvenanceSource {
    fn provenance(&self, vmid: u32) -> Option<GuestProvenance>;
}

/// The gate's verdict on a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    Benign,
    Destructive { reason: String },
}

impl Classification {
    pub fn is_destructive(&self) -> bool {
        matches!(self, Classification::Destructive { .. })
    }
}

/// Config keys whose change never loses data (identity, sizing, network, boot behaviour,
/// description). Anything else (rootfs, mp[n], unused[n], lxc.*, hookscript, features, ...) is
/// treated as possibly destructive. `protection` is handled separately: setting it is benign,
/// clearing it is destructive.
pub const BENIGN_CONFIG_KEYS: &[&str] = &[
    "hostname",
    "description",
    "tags",
    "cores",
    "cpulimit",
    "cpuunits",
    "memory",
    "swap",
    "onboot",
    "startup",
    "nameserver",
    "searchdomain",
    "timezone",
    "console",
    "tty",
    "cmode",
];

/// Parameters that steer the API call without describing the guest.
const CONTROL_PARAMS: &[&str] = &["digest"];

fn is_benign_key(k: &str) -> bool {
    BENIGN_CONFIG_KEYS.contains(&k)
        || k.strip_prefix("net")
            .is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|c| c.is_ascii_digit()))
}

fn destructive(reason: impl Into<String>) -> Classification {
    Classification::Destructive {
        reason: reason.into(),
    }
}

/// The step cleans up the agent's own create that did not succeed: every clause of the rule in
/// the module doc must hold, and each one missing makes the step destructive.
fn cleanup_of_own_failed_create(action: &PlannedAction, prov: Option<&GuestProvenance>) -> bool {
    let Some(p) = prov else { return false };
    let create_did_not_succeed = matches!(
        p.origin,
        Origin::Created(CreateOutcome::Failed | CreateOutcome::Abandoned)
    );
    let digest_the_create_left = match (&p.incarnation, &action.guest_config_sha1) {
        (Some(i), Some(d)) => &i.config_digest == d,
        _ => false,
    };
    create_did_not_succeed && !p.ever_started && digest_the_create_left
}

fn set_config(action: &PlannedAction) -> Result<(), String> {
    for (k, v) in &action.params {
        if CONTROL_PARAMS.contains(&k.as_str()) || is_benign_key(k) {
            continue;
        }
        match k.as_str() {
            "protection" if v == "1" => {}
            "protection" => return Err("it clears protection".into()),
            "delete" => {
                // PVE accepts `,`, `;` and spaces between keys (pve-configid-list).
                for d in v.split([',', ';', ' ']).filter(|d| !d.is_empty()) {
                    if d == "protection" {
                        return Err("it clears protection".into());
                    }
                    if !is_benign_key(d) {
                        return Err(format!("it removes {d}, which may hold data"));
                    }
                }
            }
            other => return Err(format!("it changes {other}, which may hold or move data")),
        }
    }
    Ok(())
}

fn is_grow_size(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|c| c.is_ascii_digit())
}

/// Classifies one planned step with the journal's provenance of its guest.
pub fn classify(action: &PlannedAction, provenance: Option<&GuestProvenance>) -> Classification {
    let verdict: Result<(), String> = match &action.op {
        Op::Start | Op::Stop | Op::Shutdown | Op::Reboot => Ok(()),
        Op::Create => {
            let flag = |k: &str| action.params.get(k).is_some_and(|v| v != "0");
            if flag("force") {
                Err("it creates with force=1, which overwrites an existing guest".into())
            } else {
                Ok(())
            }
        }
        Op::SetConfig => set_config(action),
        // PVE refuses to shrink a CT volume ("unable to shrink disk size"), so a plain size only
        // grows; anything else is not understood and treated as destructive.
        Op::Resize => match action.params.get("size") {
            Some(s) if is_grow_size(s) => Ok(()),
            _ => Err("the resize size is not a plain growth".into()),
        },
        Op::DestroyGuest => Err("it destroys the guest and its volumes".into()),
        Op::DeleteVolume => Err("it deletes a volume".into()),
        Op::RollbackSnapshot => Err("it rolls the guest back, losing newer data".into()),
        Op::DeleteSnapshot => Err("it deletes a snapshot".into()),
        Op::RestoreOverwrite => Err("it restores a backup over the guest".into()),
        Op::RemoveMountpoint => Err("it removes a mount point".into()),
        Op::Adopt => Err("it takes over a guest Drover did not create".into()),
        Op::Unknown(k) => Err(format!("step kind {k:?} is unknown to the gate")),
    };
    match verdict {
        Ok(()) => Classification::Benign,
        Err(_)
            if !matches!(action.op, Op::Unknown(_) | Op::Adopt)
                && cleanup_of_own_failed_create(action, provenance) =>
        {
            Classification::Benign
        }
        Err(why) => destructive(format!(
            "{} on CT {} is destructive: {why}",
            action.op, action.vmid
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(op: Op, params: &[(&str, &str)]) -> PlannedAction {
        PlannedAction {
            op,
            vmid: 101,
            guest_config_sha1: Some("a".repeat(40)),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            bind: BTreeMap::new(),
        }
    }

    #[test]
    fn benign_kinds_and_keys() {
        for a in [
            step(
                Op::Create,
                &[("ostemplate", "local:vztmpl/x.tar.zst"), ("start", "0")],
            ),
            step(Op::Start, &[]),
            step(Op::Stop, &[]),
            step(Op::Shutdown, &[]),
            step(Op::Reboot, &[]),
            step(
                Op::SetConfig,
                &[
                    ("cores", "2"),
                    ("memory", "512"),
                    ("net0", "name=eth0,bridge=vmbr0"),
                    ("digest", "x"),
                ],
            ),
            step(
                Op::SetConfig,
                &[("protection", "1"), ("delete", "description;tags")],
            ),
            step(Op::Resize, &[("disk", "rootfs"), ("size", "8G")]),
            step(Op::Resize, &[("disk", "mp0"), ("size", "+2G")]),
        ] {
            assert_eq!(classify(&a, None), Classification::Benign, "{a:?}");
        }
    }

    #[test]
    fn destructive_kinds_and_keys() {
        for a in [
            step(Op::Create, &[("force", "1"), ("restore", "1")]),
            step(Op::SetConfig, &[("protection", "0")]),
            step(Op::SetConfig, &[("delete", "protection")]),
            step(Op::SetConfig, &[("delete", "mp0")]),
            step(Op::SetConfig, &[("delete", "cores mp1")]),
            step(
                Op::SetConfig,
                &[("mp0", "local-lvm:vm-101-disk-1,mp=/data")],
            ),
            step(
                Op::SetConfig,
                &[("rootfs", "local-lvm:vm-101-disk-0,size=4G")],
            ),
            step(Op::SetConfig, &[("lxc.mount.entry", "x")]),
            step(Op::Resize, &[("size", "-2G")]),
            step(Op::Resize, &[]),
            step(Op::DestroyGuest, &[]),
            step(Op::DeleteVolume, &[]),
            step(Op::RollbackSnapshot, &[]),
            step(Op::DeleteSnapshot, &[]),
            step(Op::RestoreOverwrite, &[]),
            step(Op::RemoveMountpoint, &[]),
            step(Op::Unknown("snapshot".into()), &[]),
        ] {
            assert!(classify(&a, None).is_destructive(), "{a:?}");
        }
    }

    fn prov(origin: Origin, started: bool, digest: &str) -> GuestProvenance {
        GuestProvenance {
            origin,
            ever_started: started,
            incarnation: Some(Incarnation {
                create_upid: None,
                config_digest: digest.to_string(),
            }),
        }
    }

    const FAILED: Origin = Origin::Created(CreateOutcome::Failed);

    /// Every data-destroying op, as the agent would plan it against a guest with digest `a..`.
    fn data_destroying() -> Vec<PlannedAction> {
        vec![
            step(Op::DestroyGuest, &[("force", "1"), ("purge", "1")]),
            step(Op::DeleteVolume, &[]),
            step(Op::RollbackSnapshot, &[]),
            step(Op::DeleteSnapshot, &[]),
            step(Op::RestoreOverwrite, &[]),
            step(Op::RemoveMountpoint, &[]),
            step(Op::SetConfig, &[("delete", "mp0")]),
            step(Op::Resize, &[("size", "-1G")]),
        ]
    }

    #[test]
    fn cleanup_of_an_own_create_that_failed_or_was_abandoned_is_benign() {
        let a = "a".repeat(40);
        for origin in [FAILED, Origin::Created(CreateOutcome::Abandoned)] {
            for s in data_destroying() {
                assert_eq!(
                    classify(&s, Some(&prov(origin, false, &a))),
                    Classification::Benign,
                    "{s:?} {origin:?}"
                );
            }
        }
    }

    #[test]
    fn each_clause_of_the_cleanup_rule_is_needed() {
        let a = "a".repeat(40);
        for s in data_destroying() {
            // The create task ended OK: the guest may hold data, whatever happens later.
            let ok = prov(Origin::Created(CreateOutcome::Succeeded), false, &a);
            assert!(classify(&s, Some(&ok)).is_destructive(), "{s:?}");
            // Adopted guests were never the agent's create.
            let adopted = prov(Origin::Adopted, false, &a);
            assert!(classify(&s, Some(&adopted)).is_destructive(), "{s:?}");
            // Started once: it may have written data.
            assert!(classify(&s, Some(&prov(FAILED, true, &a))).is_destructive());
            // Another digest: another incarnation, or the config changed since the create.
            let other = prov(FAILED, false, &"b".repeat(40));
            assert!(classify(&s, Some(&other)).is_destructive(), "{s:?}");
            let mut none = prov(FAILED, false, &a);
            none.incarnation = None;
            assert!(classify(&s, Some(&none)).is_destructive(), "{s:?}");
            let mut no_digest = s.clone();
            no_digest.guest_config_sha1 = None;
            assert!(classify(&no_digest, Some(&prov(FAILED, false, &a))).is_destructive());
            // Nothing in the journal.
            assert!(classify(&s, None).is_destructive(), "{s:?}");
        }
    }

    #[test]
    fn adopt_always_needs_a_signature() {
        let a = "a".repeat(40);
        let adopt = step(Op::Adopt, &[]);
        assert!(classify(&adopt, None).is_destructive());
        for origin in [FAILED, Origin::Adopted] {
            assert!(classify(&adopt, Some(&prov(origin, false, &a))).is_destructive());
        }
        assert_eq!(Op::from_name("adopt"), Op::Adopt);
    }
}
