//! Benign or destructive, decided by what a step does and by provenance from the agent's own
//! journal, never by tags, names or flags in the desired document.
//!
//! Destroying or overwriting data is destructive unless the journal shows the agent created
//! this very incarnation of the guest in the same, still unfinished operation (cleanup of its
//! own failed create) or marked that incarnation scratch. Unknown kinds and unknown config keys
//! are destructive.

use crate::action::{Op, PlannedAction};

/// What the journal knows about a guest (the agent implements [`ProvenanceSource`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestProvenance {
    /// The agent's journal records creating this vmid.
    pub created_by_agent: bool,
    /// Journal id of the operation that created it.
    pub create_op: Option<String>,
    /// Whether that operation has finished (successfully or not).
    pub op_finished: bool,
    /// Which incarnation the journal means.
    pub incarnation: Option<Incarnation>,
    /// The agent marked this incarnation as scratch (its own throwaway guest).
    pub scratch: bool,
}

/// One incarnation of a vmid: the create task and the config digest the journal last recorded
/// after the agent's own writes. A vmid destroyed and re-created by anyone else has another
/// digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    pub create_upid: String,
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

/// The journal says the agent created exactly the incarnation the step would touch, in the same
/// unfinished operation, or marked it scratch.
fn own_incarnation(action: &PlannedAction, prov: Option<&GuestProvenance>) -> bool {
    let Some(p) = prov else { return false };
    let same_incarnation = match (&p.incarnation, &action.guest_config_sha1) {
        (Some(i), Some(d)) => &i.config_digest == d,
        _ => false,
    };
    if !p.created_by_agent || !same_incarnation {
        return false;
    }
    let same_unfinished_op =
        !p.op_finished && p.create_op.is_some() && p.create_op == action.operation;
    same_unfinished_op || p.scratch
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
        Op::Unknown(k) => Err(format!("step kind {k:?} is unknown to the gate")),
    };
    match verdict {
        Ok(()) => Classification::Benign,
        Err(_) if !matches!(action.op, Op::Unknown(_)) && own_incarnation(action, provenance) => {
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
            operation: None,
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
}
