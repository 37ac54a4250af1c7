//! The PVE privileges the agent uses, per API call it makes, and why.
//!
//! `deploy/pve-setup.sh` grants exactly [`GRANTED`] to the agent's token; the tests below
//! derive the privileges of every step the planner can produce (and of the reads every pass
//! makes) and compare the three lists. So a new API call without its privilege, or a
//! privilege granted "just in case" that nothing uses, fails the tests instead of an
//! operator's first run or a security review. Sources: `proxmox-api.md` §1.4
//! (`PVE/API2/LXC.pm`, `LXC.pm check_ct_modify_config_perm`).

use crate::model::step::{Step, StepKind};

/// One privilege the role grants: the name PVE knows, the ACL path it must hold on, and what
/// the agent does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privilege {
    pub name: &'static str,
    pub path: &'static str,
    pub used_for: &'static str,
}

/// Exactly what the role `Drover` holds (in `pve-setup.sh`'s order). `SDN.Use` is left out
/// with `--no-sdn` (PVE 7 has no SDN permissions).
pub const GRANTED: &[Privilege] = &[
    Privilege {
        name: "VM.Audit",
        path: "/vms (or /pool/<pool>)",
        used_for: "listing guests, reading config, status and pending changes",
    },
    Privilege {
        name: "VM.PowerMgmt",
        path: "/vms (or /pool/<pool>)",
        used_for: "start, stop, shutdown, reboot",
    },
    Privilege {
        name: "VM.Allocate",
        path: "/vms (or /pool/<pool>)",
        used_for: "create and destroy",
    },
    Privilege {
        name: "VM.Config.CPU",
        path: "/vms (or /pool/<pool>)",
        used_for: "cores",
    },
    Privilege {
        name: "VM.Config.Memory",
        path: "/vms (or /pool/<pool>)",
        used_for: "memory, swap",
    },
    Privilege {
        name: "VM.Config.Network",
        path: "/vms (or /pool/<pool>)",
        used_for: "net[n], hostname",
    },
    Privilege {
        name: "VM.Config.Disk",
        path: "/vms (or /pool/<pool>)",
        used_for: "rootfs, resize",
    },
    Privilege {
        name: "VM.Config.Options",
        path: "/vms (or /pool/<pool>)",
        used_for: "onboot, tags, description",
    },
    Privilege {
        name: "VM.Backup",
        path: "/vms (or /pool/<pool>)",
        used_for: "backups and safety copies (vzdump), reading a backup's config, restores over a guest",
    },
    Privilege {
        name: "VM.Snapshot",
        path: "/vms (or /pool/<pool>)",
        used_for: "snapshot and delete_snapshot jobs, snapshot safety copies",
    },
    Privilege {
        name: "VM.Snapshot.Rollback",
        path: "/vms (or /pool/<pool>)",
        used_for: "rollback_snapshot jobs",
    },
    Privilege {
        name: "Datastore.AllocateSpace",
        path: "/storage/<storage>",
        used_for: "new volumes and resizes; on the safety storage: writing, listing, protecting and deleting safety copies",
    },
    Privilege {
        name: "Datastore.Audit",
        path: "/storage/<storage>",
        used_for: "reading a template from its storage, and the size of a detached volume",
    },
    Privilege {
        name: "SDN.Use",
        path: "/sdn/zones/localnetwork/<bridge>",
        used_for: "net[n] on a bridge",
    },
    Privilege {
        name: "Sys.Audit",
        path: "/nodes/<node>",
        used_for: "reading the agent's tasks",
    },
];

/// The privileges of [`GRANTED`] that hold on the guests (`/vms`, or `/pool/<pool>` with
/// `pve-setup.sh --pool`): what `check-config` asks PVE the token has there.
pub const ON_GUESTS: &[&str] = &[
    "VM.Audit",
    "VM.PowerMgmt",
    "VM.Allocate",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Disk",
    "VM.Config.Options",
    "VM.Backup",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// The privileges a signed job of `kind` needs (`restore_to_free`: a restore onto a vmid that
/// does not exist, which allocates a new guest), besides [`READS`]. Storage listings and
/// status need `Datastore.Audit`; the safety copy of a restore or rollback needs `VM.Backup`
/// (vzdump) or `VM.Snapshot` (a snapshot copy) and the guest's power management.
pub fn for_job(kind: gate::JobKind, restore_to_free: bool) -> Vec<&'static str> {
    use gate::JobKind as K;
    let mut out: Vec<&'static str> = match kind {
        K::Snapshot | K::DeleteSnapshot => vec!["VM.Snapshot"],
        K::RollbackSnapshot => vec![
            "VM.Snapshot.Rollback",
            "VM.PowerMgmt",
            "VM.Backup",
            "VM.Snapshot",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
        ],
        K::Backup => vec!["VM.Backup", "Datastore.AllocateSpace", "Datastore.Audit"],
        K::RestoreBackup if restore_to_free => vec![
            "VM.Allocate",
            "VM.Backup",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
        ],
        K::RestoreBackup => vec![
            "VM.Backup",
            "VM.PowerMgmt",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
        ],
        K::Reboot => vec!["VM.PowerMgmt"],
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// What every pass needs before it plans anything: the guest list, configs and status
/// (`VM.Audit`), and the active tasks on the node, to re-attach and to wait (`Sys.Audit`).
pub const READS: &[&str] = &["VM.Audit", "Sys.Audit"];

/// The privileges a config key needs when it is sent (create or `PUT config`).
pub fn for_config_key(key: &str) -> &'static [&'static str] {
    match key {
        "cores" | "cpulimit" | "cpuunits" => &["VM.Config.CPU"],
        "memory" | "swap" => &["VM.Config.Memory"],
        "hostname" | "nameserver" | "searchdomain" => &["VM.Config.Network"],
        // Sent at create only, with the create's own privileges.
        "ssh-public-keys" | "ostype" | "arch" | "unprivileged" => &["VM.Allocate"],
        k if k.starts_with("net") => &["VM.Config.Network", "SDN.Use"],
        k if k == "rootfs" || k.starts_with("mp") => &["VM.Config.Disk", "Datastore.AllocateSpace"],
        "ostemplate" => &["Datastore.Audit"],
        // `vmid` and `start=0` are part of the create call itself.
        "vmid" | "start" => &[],
        "features" => &["VM.Allocate"],
        _ => &["VM.Config.Options"],
    }
}

/// Every privilege one step needs when it runs.
pub fn for_step(step: &Step) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = match step.kind {
        StepKind::Create => vec!["VM.Allocate"],
        StepKind::SetConfig => vec![],
        StepKind::Resize => vec!["VM.Config.Disk", "Datastore.AllocateSpace"],
        StepKind::Start | StepKind::Shutdown | StepKind::Stop | StepKind::Reboot => {
            vec!["VM.PowerMgmt"]
        }
        // The safety copy first: a clean shutdown, a vzdump to the safety storage, its
        // verification (listing, extractconfig, volume info) and, later, its release.
        StepKind::Destroy => vec![
            "VM.Allocate",
            "VM.PowerMgmt",
            "VM.Backup",
            "Datastore.AllocateSpace",
        ],
        // Recorded in the journal only: no PVE call.
        StepKind::Adopt => vec![],
        // `PUT config delete=mpN` / `delete=unusedN` (check_ct_modify_config_perm: disks).
        StepKind::Detach | StepKind::DeleteVolume => vec!["VM.Config.Disk"],
    };
    if matches!(step.kind, StepKind::Create | StepKind::SetConfig) {
        for k in step.params.keys() {
            out.extend_from_slice(for_config_key(k));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::desired;
    use crate::model::{ActualConfig, ActualGuest, ActualHost, Power, RootfsState};
    use crate::reconcile::planner;
    use std::collections::{BTreeMap, BTreeSet};

    /// A document with every field the planner knows and every `ensure`, so every config key
    /// it can send and every kind of step shows up.
    const EVERYTHING: &str = r#"
revision = 1

[[guest]]
vmid = 101
ensure = "running"
hostname = "web"
template = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
cores = 2
memory = 1024
swap = 512
rootfs = "local-lvm:8"
net0 = "name=eth0,bridge=vmbr0,ip=dhcp"
onboot = true
tags = ["prod"]
description = "managed"

[[guest]]
vmid = 102
ensure = "running"
hostname = "db"
cores = 4
memory = 4096
swap = 1024
rootfs = "local-lvm:16"
net0 = "name=eth0,bridge=vmbr1,ip=dhcp"
onboot = true
tags = ["db"]
description = "changed"
features = { nesting = true }
nameserver = ["10.0.0.53"]
searchdomain = ["lan.example"]
timezone = "UTC"
startup = { order = 1 }
cpulimit = 2
cpuunits = 200
console = true
tty = 2
cmode = "tty"
protection = true
mp0 = { storage = "local-lvm", size = 2, path = "/srv/data", backup = true }

[[guest]]
vmid = 103
ensure = "absent"

[[guest]]
vmid = 104
ensure = "stopped"
"#;

    fn guest(vmid: u32, power: Power) -> ActualGuest {
        ActualGuest {
            vmid,
            power,
            lock: None,
            config: ActualConfig {
                hostname: Some("old".into()),
                cores: Some(1),
                memory: Some(512),
                swap: Some(0),
                rootfs: Some(RootfsState {
                    storage: "local-lvm".into(),
                    size_mib: Some(8192),
                }),
                ..ActualConfig::default()
            },
            digest: "0".repeat(40),
            pending: BTreeSet::new(),
            template: false,
        }
    }

    /// The union of what every pass reads and what every step of a plan that touches every
    /// field and every kind of step needs.
    fn used() -> BTreeSet<&'static str> {
        let doc = desired::parse(EVERYTHING.as_bytes(), "everything").unwrap();
        let mut host = ActualHost::default();
        for (vmid, power) in [
            (102, Power::Stopped),
            (103, Power::Running),
            (104, Power::Running),
        ] {
            host.guests.insert(vmid, Box::new(guest(vmid, power)));
        }
        let plan = planner::plan(&doc, &host);
        let mut kinds = BTreeSet::new();
        let mut used: BTreeSet<&'static str> = READS.iter().copied().collect();
        for gp in plan.guests.values() {
            for step in &gp.steps {
                kinds.insert(step.kind);
                used.extend(for_step(step));
            }
        }
        // Reboot comes from pending changes, Stop from no plan at all today (the engine may
        // still send it); they need what Shutdown needs.
        for kind in [StepKind::Reboot, StepKind::Stop] {
            used.extend(for_step(&Step {
                vmid: 1,
                kind,
                params: BTreeMap::new(),
                changes: vec![],
            }));
        }
        // Signed jobs of every kind (restores both over a guest and onto a free vmid).
        for kind in gate::JobKind::ALL {
            used.extend(for_job(kind, false));
            used.extend(for_job(kind, true));
        }
        for kind in [
            StepKind::Create,
            StepKind::SetConfig,
            StepKind::Resize,
            StepKind::Shutdown,
            StepKind::Start,
            StepKind::Destroy,
        ] {
            assert!(
                kinds.contains(&kind),
                "the test document produced no {kind:?} step: {kinds:?}"
            );
        }
        used
    }

    fn granted() -> BTreeSet<&'static str> {
        GRANTED.iter().map(|p| p.name).collect()
    }

    #[test]
    fn the_role_grants_exactly_what_the_steps_use() {
        let used = used();
        let granted = granted();
        let unused: Vec<_> = granted.difference(&used).collect();
        let missing: Vec<_> = used.difference(&granted).collect();
        assert!(unused.is_empty(), "granted but never used: {unused:?}");
        assert!(missing.is_empty(), "used but not granted: {missing:?}");
    }

    /// The words of a `NAME="..."` assignment in the script.
    fn script_var<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
        let prefix = format!("{name}=\"");
        let line = script
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("pve-setup.sh has no {name}=\"...\" line"));
        line[prefix.len()..]
            .trim_end_matches('"')
            .split_whitespace()
            .collect()
    }

    /// `Datastore.Allocate` would let the token delete any volume on a storage, pass its own
    /// `prune-backups` and bypass the per-backup visibility check (`safety-nets.md` §2):
    /// safety copies work without it, and it is never granted.
    #[test]
    fn safety_copies_never_need_datastore_allocate() {
        assert!(granted().contains("VM.Backup"));
        assert!(!granted().contains("Datastore.Allocate"));
        let destroy = for_step(&Step {
            vmid: 1,
            kind: StepKind::Destroy,
            params: BTreeMap::new(),
            changes: vec![],
        });
        assert!(destroy.contains(&"VM.Backup") && destroy.contains(&"Datastore.AllocateSpace"));
        assert!(!destroy.contains(&"Datastore.Allocate"));
    }

    #[test]
    fn on_guests_is_the_granted_list_on_the_guests_path() {
        let want: Vec<&str> = GRANTED
            .iter()
            .filter(|p| p.path.starts_with("/vms"))
            .map(|p| p.name)
            .collect();
        assert_eq!(ON_GUESTS, want.as_slice());
    }

    #[test]
    fn pve_setup_sh_grants_exactly_this_list() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/pve-setup.sh");
        let script = std::fs::read_to_string(path).unwrap();
        let mut privs = script_var(&script, "PRIVS_BASE");
        privs.extend(script_var(&script, "PRIV_SDN"));
        privs.extend(script_var(&script, "PRIV_SYS_AUDIT"));
        let want: Vec<&str> = GRANTED.iter().map(|p| p.name).collect();
        assert_eq!(
            privs, want,
            "deploy/pve-setup.sh and privileges::GRANTED differ"
        );
    }

    #[test]
    fn the_operator_guide_lists_every_granted_privilege() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/README.md");
        let guide = std::fs::read_to_string(path).unwrap();
        let section = guide
            .split("## 2. PVE user")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("deploy/README.md has a section 2");
        for p in GRANTED {
            assert!(
                section.contains(&format!("`{}`", p.name)),
                "deploy/README.md §2 does not mention {}",
                p.name
            );
        }
        // Every privilege-looking word the section names is one the role grants (or the
        // separate Sys.Modify role of --with-sys-modify).
        let granted = granted();
        for word in section.split('`').skip(1).step_by(2) {
            let looks_like_privilege = word.contains('.')
                && word.starts_with(|c: char| c.is_ascii_uppercase())
                && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
            if looks_like_privilege && word != "Sys.Modify" {
                assert!(
                    granted.contains(word),
                    "deploy/README.md §2 names {word}, which the role does not grant"
                );
            }
        }
    }
}
