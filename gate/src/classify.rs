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
/// judged by [`config_value_class`]. `protection` is handled separately: setting it is benign,
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

/// The risk class of one config key and value: the gate's table, one row per kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    /// Never loses or exposes data: sizing, names, DNS, boot order, adding a volume, growing it.
    Benign,
    /// May lose or expose data, so an operator signs it.
    Destructive(&'static str),
    /// Root-only in PVE or a host takeover: Drover never plans it (the document refuses it);
    /// a step carrying it is destructive, so it could never run unsigned. The code is the
    /// document's refusal code.
    Refused(&'static str),
}

/// One row of the table, for the operator guide and the tests: the key (`[n]` for indexed
/// keys), the change, its class and why.
#[derive(Debug, Clone, Copy)]
pub struct KeyRisk {
    pub key: &'static str,
    pub change: &'static str,
    pub class: KeyClass,
    pub why: &'static str,
}

/// Every key the desired document can set, and the keys it refuses, with the class of each
/// change. `config_value_class` is the code of this table; the tests check they agree.
pub const KEY_TABLE: &[KeyRisk] = &[
    KeyRisk {
        key: "hostname, description, tags",
        change: "set",
        class: KeyClass::Benign,
        why: "names and labels; no data is touched",
    },
    KeyRisk {
        key: "cores, cpulimit, cpuunits, memory, swap",
        change: "set",
        class: KeyClass::Benign,
        why: "sizing; applied live or at the next reboot",
    },
    KeyRisk {
        key: "net[n], nameserver, searchdomain",
        change: "set",
        class: KeyClass::Benign,
        why: "addressing and DNS; no data is touched (a bad address is fixed by the next document)",
    },
    KeyRisk {
        key: "onboot, startup, timezone, console, tty, cmode",
        change: "set",
        class: KeyClass::Benign,
        why: "boot order and console behaviour",
    },
    KeyRisk {
        key: "protection",
        change: "set to 1",
        class: KeyClass::Benign,
        why: "only adds a guard against destroy and volume removal",
    },
    KeyRisk {
        key: "protection",
        change: "set to 0 or delete",
        class: KeyClass::Destructive("it clears protection"),
        why: "clearing it unblocks destroy and volume removal",
    },
    KeyRisk {
        key: "features",
        change: "nesting only",
        class: KeyClass::Benign,
        why: "the one flag PVE lets a token change; needed for systemd and Docker inside unprivileged guests",
    },
    KeyRisk {
        key: "features",
        change: "keyctl, fuse, mknod, mount, force_rw_sys",
        class: KeyClass::Refused("feature_root_only"),
        why: "root-only in PVE: they widen what the guest may do to the host kernel",
    },
    KeyRisk {
        key: "mp[n]",
        change: "a new volume (STORAGE:SIZE)",
        class: KeyClass::Benign,
        why: "adds an empty volume; nothing existing is touched (a replaced volume stays as unused[n])",
    },
    KeyRisk {
        key: "mp[n]",
        change: "options of the guest's own volume",
        class: KeyClass::Benign,
        why: "path, backup, ro, acl, quota, replicate, shared, mountoptions; the volume and its data stay",
    },
    KeyRisk {
        key: "mp[n]",
        change: "another guest's volume",
        class: KeyClass::Destructive(
            "it attaches a volume that is not this guest's, exposing its data",
        ),
        why: "exposes another guest's data",
    },
    KeyRisk {
        key: "mp[n]",
        change: "a host path (bind or device mount)",
        class: KeyClass::Refused("host_path_not_allowed"),
        why: "exposes the host; root-only in PVE, declared only for paths the host's drover.toml lists",
    },
    KeyRisk {
        key: "resize",
        change: "grow",
        class: KeyClass::Benign,
        why: "adds space; PVE cannot shrink",
    },
    KeyRisk {
        key: "resize",
        change: "anything but growth",
        class: KeyClass::Destructive("the resize size is not a plain growth"),
        why: "shrinking loses data",
    },
    KeyRisk {
        key: "mp[n]",
        change: "remove (remove_mountpoint)",
        class: KeyClass::Destructive("it removes a mount point"),
        why: "the guest loses the volume; PVE keeps it as unused[n] (reversible until deleted)",
    },
    KeyRisk {
        key: "unused[n]",
        change: "delete (delete_volume)",
        class: KeyClass::Destructive("it deletes a volume"),
        why: "the data is gone; planned only after the detach grace period",
    },
    KeyRisk {
        key: "rootfs",
        change: "set",
        class: KeyClass::Destructive("it changes rootfs, which may hold or move data"),
        why: "replaces or moves the root volume",
    },
    KeyRisk {
        key: "unprivileged",
        change: "0 at create",
        class: KeyClass::Destructive(
            "it creates a privileged container: root in the guest is root on the host",
        ),
        why: "a privileged guest is a host risk",
    },
    KeyRisk {
        key: "unprivileged",
        change: "change on an existing guest",
        class: KeyClass::Refused("unprivileged_is_create_only"),
        why: "read-only in PVE after create; reported, never acted on",
    },
    KeyRisk {
        key: "ostemplate, ssh-public-keys, ostype, arch, vmid, start=0",
        change: "at create",
        class: KeyClass::Benign,
        why: "describe the new guest; nothing exists yet",
    },
    KeyRisk {
        key: "password",
        change: "any",
        class: KeyClass::Refused("password_refused"),
        why: "a secret in a document served by the hub",
    },
    KeyRisk {
        key: "hookscript",
        change: "any",
        class: KeyClass::Refused("hookscript_refused"),
        why: "host code run as root on every start; root-only in PVE",
    },
    KeyRisk {
        key: "lxc.*",
        change: "any",
        class: KeyClass::Refused("raw_lxc_refused"),
        why: "raw LXC keys can grant any host capability; not in PVE's API",
    },
    KeyRisk {
        key: "dev[n]",
        change: "any",
        class: KeyClass::Refused("device_not_allowed"),
        why: "device passthrough exposes the host; root-only in PVE",
    },
    KeyRisk {
        key: "pool",
        change: "any",
        class: KeyClass::Refused("pool_is_host_setting"),
        why: "membership changes who may act on the guest; the host's [proxmox] pool decides",
    },
    KeyRisk {
        key: "anything else",
        change: "any",
        class: KeyClass::Destructive("it changes a key the gate does not know"),
        why: "unknown keys are never assumed safe",
    },
];

/// Parameters that steer the API call without describing the guest.
const CONTROL_PARAMS: &[&str] = &["digest"];

fn is_benign_key(k: &str) -> bool {
    BENIGN_CONFIG_KEYS.contains(&k) || indexed(k, "net")
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

fn indexed(k: &str, prefix: &str) -> bool {
    k.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// A volume name PVE gives this guest's own disks: `vm-V-disk-N`, `subvol-V-disk-N`, or a
/// file storage's `V/vm-V-disk-N.raw` (and `.qcow2`, `.subvol`).
fn is_own_volume(vmid: u32, volname: &str) -> bool {
    let v = vmid.to_string();
    let name = volname.strip_prefix(&format!("{v}/")).unwrap_or(volname);
    let name = [".raw", ".qcow2", ".subvol"]
        .iter()
        .find_map(|e| name.strip_suffix(e))
        .unwrap_or(name);
    ["vm-", "subvol-"].iter().any(|p| {
        name.strip_prefix(p)
            .and_then(|r| r.strip_prefix(v.as_str()))
            .and_then(|r| r.strip_prefix("-disk-"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    })
}

const MP_OPTIONS: &[&str] = &[
    "mp",
    "backup",
    "ro",
    "acl",
    "quota",
    "replicate",
    "shared",
    "mountoptions",
    "size",
    "keepattrs",
];

fn mount_point_class(vmid: u32, v: &str) -> KeyClass {
    let mut parts = v.split(',');
    let first = parts.next().unwrap_or("");
    let volume = first.strip_prefix("volume=").unwrap_or(first);
    for p in parts {
        let k = p.split_once('=').map(|(k, _)| k).unwrap_or(p);
        if !MP_OPTIONS.contains(&k) {
            return KeyClass::Destructive("it sets a mount point option the gate does not know");
        }
    }
    if volume.starts_with('/') {
        return KeyClass::Refused("host_path_not_allowed");
    }
    let Some((storage, rest)) = volume.split_once(':') else {
        return KeyClass::Destructive("its mount point names no storage");
    };
    if storage.is_empty() {
        return KeyClass::Destructive("its mount point names no storage");
    }
    let new_allocation = !rest.is_empty()
        && rest.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && rest.parse::<f64>().is_ok_and(|f| f > 0.0);
    if new_allocation || is_own_volume(vmid, rest) {
        KeyClass::Benign
    } else {
        KeyClass::Destructive("it attaches a volume that is not this guest's, exposing its data")
    }
}

/// The class of setting `key` to `value` on CT `vmid` (`PUT config`, or a create's config key):
/// [`KEY_TABLE`] as code.
pub fn config_value_class(vmid: u32, key: &str, value: &str) -> KeyClass {
    if is_benign_key(key) {
        return KeyClass::Benign;
    }
    match key {
        "protection" if value == "1" => KeyClass::Benign,
        "protection" => KeyClass::Destructive("it clears protection"),
        "features" => {
            let only_nesting = value
                .split(',')
                .filter(|p| !p.is_empty())
                .all(|p| p.split_once('=').is_some_and(|(k, _)| k == "nesting"));
            if only_nesting {
                KeyClass::Benign
            } else {
                KeyClass::Refused("feature_root_only")
            }
        }
        "rootfs" => KeyClass::Destructive("it changes rootfs, which may hold or move data"),
        "unprivileged" => KeyClass::Refused("unprivileged_is_create_only"),
        "password" => KeyClass::Refused("password_refused"),
        "hookscript" => KeyClass::Refused("hookscript_refused"),
        "pool" => KeyClass::Refused("pool_is_host_setting"),
        k if k == "lxc" || k.starts_with("lxc.") => KeyClass::Refused("raw_lxc_refused"),
        k if indexed(k, "dev") => KeyClass::Refused("device_not_allowed"),
        k if indexed(k, "mp") => mount_point_class(vmid, value),
        _ => KeyClass::Destructive("it changes a key the gate does not know"),
    }
}

fn refused_or_destructive(key: &str, class: KeyClass) -> Result<(), String> {
    match class {
        KeyClass::Benign => Ok(()),
        KeyClass::Destructive(why) => Err(format!("{why} ({key})")),
        KeyClass::Refused(code) => Err(format!(
            "it sets {key}, which Drover refuses ({code}) and never plans"
        )),
    }
}

fn set_config(action: &PlannedAction) -> Result<(), String> {
    for (k, v) in &action.params {
        if CONTROL_PARAMS.contains(&k.as_str()) {
            continue;
        }
        if k == "delete" {
            // PVE accepts `,`, `;` and spaces between keys (pve-configid-list).
            for d in v.split([',', ';', ' ']).filter(|d| !d.is_empty()) {
                if d == "protection" {
                    return Err("it clears protection".into());
                }
                if !is_benign_key(d) {
                    return Err(format!("it removes {d}, which may hold data"));
                }
            }
            continue;
        }
        refused_or_destructive(k, config_value_class(action.vmid, k, v))?;
    }
    Ok(())
}

/// A create describes a new guest: its template, first volumes and settings are benign; a
/// privileged container, `force` (overwrite) and anything the table refuses are not.
fn create(action: &PlannedAction) -> Result<(), String> {
    let flag = |k: &str| action.params.get(k).is_some_and(|v| v != "0");
    if flag("force") {
        return Err("it creates with force=1, which overwrites an existing guest".into());
    }
    for (k, v) in &action.params {
        match k.as_str() {
            "vmid" | "ostemplate" | "start" | "ssh-public-keys" | "ostype" | "arch" => {}
            // Nothing to clear yet: a new guest starts with or without protection.
            "protection" => {}
            "force" => {}
            "restore" if v == "0" => {}
            "restore" => return Err("it restores a backup".into()),
            "unprivileged" if v == "1" => {}
            "unprivileged" => {
                return Err(
                    "it creates a privileged container: root in the guest is root on the host"
                        .into(),
                );
            }
            // The first volumes of a new guest are new allocations.
            "rootfs" if mount_point_class(action.vmid, v) == KeyClass::Benign => {}
            _ => refused_or_destructive(k, config_value_class(action.vmid, k, v))?,
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
        Op::Create => create(action),
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
                // Another guest's volume: exposes its data (the guest's own is benign).
                &[("mp0", "local-lvm:vm-999-disk-1,mp=/data")],
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

    #[test]
    fn the_key_table_per_class() {
        let c = |k: &str, v: &str| config_value_class(101, k, v);
        // Benign: sizing, names, DNS, boot order, adding a volume, the guest's own volume.
        for (k, v) in [
            ("cpulimit", "1.5"),
            ("cpuunits", "200"),
            ("nameserver", "10.0.0.53 fd00::53"),
            ("searchdomain", "lan.example"),
            ("timezone", "Europe/Berlin"),
            ("startup", "order=2,up=30"),
            ("console", "0"),
            ("tty", "4"),
            ("cmode", "shell"),
            ("protection", "1"),
            ("features", "nesting=1"),
            ("features", "nesting=0"),
            ("mp0", "local-lvm:8,mp=/srv/data,backup=1"),
            (
                "mp3",
                "local-lvm:vm-101-disk-3,mp=/srv,ro=1,size=8G,mountoptions=noatime;nodev",
            ),
            ("mp4", "local-zfs:subvol-101-disk-1,mp=/x,size=2G"),
            ("mp5", "local:101/vm-101-disk-2.raw,mp=/y,size=1G"),
        ] {
            assert_eq!(c(k, v), KeyClass::Benign, "{k}={v}");
        }
        // Destructive: clearing protection, another guest's volume, rootfs, unknown keys.
        for (k, v) in [
            ("protection", "0"),
            ("mp0", "local-lvm:vm-999-disk-0,mp=/steal"),
            ("mp0", "local-lvm:vm-1010-disk-0,mp=/steal"),
            ("mp0", "local-lvm:8,mp=/x,evil=1"),
            ("rootfs", "local-lvm:vm-101-disk-0,size=4G"),
            ("future", "1"),
        ] {
            assert!(matches!(c(k, v), KeyClass::Destructive(_)), "{k}={v}");
        }
        // Refused: root-only or a host takeover.
        for (k, v, code) in [
            ("features", "keyctl=1,nesting=1", "feature_root_only"),
            ("features", "fuse=1", "feature_root_only"),
            ("mp0", "/srv/host,mp=/x", "host_path_not_allowed"),
            ("mp0", "/dev/sdb,mp=/x", "host_path_not_allowed"),
            ("dev0", "/dev/dri/renderD128", "device_not_allowed"),
            ("hookscript", "local:snippets/x.sh", "hookscript_refused"),
            ("lxc.apparmor.profile", "unconfined", "raw_lxc_refused"),
            ("password", "x", "password_refused"),
            ("unprivileged", "0", "unprivileged_is_create_only"),
            ("pool", "p", "pool_is_host_setting"),
        ] {
            assert_eq!(c(k, v), KeyClass::Refused(code), "{k}={v}");
        }
        // Every refusal code of the table is one `config_value_class` gives, and back.
        for row in KEY_TABLE {
            if let KeyClass::Refused(code) = row.class {
                assert!(
                    !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{code}"
                );
            }
        }
    }

    #[test]
    fn steps_per_class() {
        // A create is benign with its first volumes and settings, destructive when privileged.
        let create = step(
            Op::Create,
            &[
                ("ostemplate", "local:vztmpl/x.tar.zst"),
                ("rootfs", "local-lvm:8"),
                ("mp0", "local-lvm:4,mp=/srv"),
                ("unprivileged", "1"),
                ("features", "nesting=1"),
                ("protection", "0"),
                ("ssh-public-keys", "sha256:00"),
                ("nameserver", "sha256:00"),
            ],
        );
        assert_eq!(classify(&create, None), Classification::Benign);
        let mut privileged = create.clone();
        privileged.params.insert("unprivileged".into(), "0".into());
        assert!(classify(&privileged, None).is_destructive());
        let mut keyctl = create.clone();
        keyctl.params.insert("features".into(), "keyctl=1".into());
        assert!(classify(&keyctl, None).is_destructive());
        // In place: adding a volume is benign, a bind mount or a hookscript never runs unsigned.
        assert_eq!(
            classify(&step(Op::SetConfig, &[("mp1", "local-lvm:2,mp=/x")]), None),
            Classification::Benign
        );
        for p in [
            ("mp1", "/srv,mp=/x"),
            ("hookscript", "local:snippets/x.sh"),
            ("dev0", "/dev/kvm"),
        ] {
            assert!(
                classify(&step(Op::SetConfig, &[p]), None).is_destructive(),
                "{p:?}"
            );
        }
        // Removing a mount point and deleting its volume are each signed.
        assert!(classify(&step(Op::RemoveMountpoint, &[("delete", "mp1")]), None).is_destructive());
        assert!(classify(&step(Op::DeleteVolume, &[("delete", "unused0")]), None).is_destructive());
    }
}
