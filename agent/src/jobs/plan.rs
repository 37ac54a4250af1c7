//! What a job would be *now*: the agent reads the guest, its snapshots, the backup and the
//! storages, checks everything that can refuse the job (pre-flight), and renders the
//! [`PlannedJob`] the gate compares a signed job with.
//!
//! The operator's *choices* (which backup, which snapshot, its name and description, the
//! target storage, `hold`) come from the request; every *fact* (config digest, the backup's
//! ctime and size, the snapshot's time) comes from PVE at this moment. `drover job new` uses
//! the same function to render the request, and the lane uses it again before a signed job
//! runs, so the signature binds exactly what the operator saw.

use std::collections::BTreeMap;

use gate::{JobKind, JobPayload, PlannedJob};
use proxmox_client::{ContentFilter, Error as PveError, GuestStatus};

use crate::jobs::refusal::JobRefusal;
use crate::reconcile::pve::Pve;

/// What an operator asks for (from `drover job new`, or read back from a signed job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobAsk {
    pub kind: JobKind,
    pub vmid: u32,
    /// snapshot, delete_snapshot, rollback_snapshot.
    pub snapname: Option<String>,
    /// snapshot.
    pub description: Option<String>,
    /// backup: the target storage; restore: the storage of the restored volumes (default:
    /// the current rootfs storage, or the archive's for a free vmid).
    pub storage: Option<String>,
    /// backup.
    pub protected: bool,
    /// restore_backup: the backup's volume id.
    pub volid: Option<String>,
    /// Keep the desired state's hands off the guest after the job until `drover resume`.
    pub hold: bool,
}

/// The default of `hold` for a kind: a restore or rollback deliberately goes back in time, so
/// the desired state must not "correct" it at once; the other jobs change no config.
pub fn default_hold(kind: JobKind) -> bool {
    matches!(kind, JobKind::RestoreBackup | JobKind::RollbackSnapshot)
}

impl JobAsk {
    /// The choices a signed job carries (unverified: only used to render the agent's own
    /// job from current state, which the gate then compares byte for byte).
    pub fn from_payload(p: &JobPayload) -> JobAsk {
        let param = |k: &str| p.params.get(k).cloned();
        JobAsk {
            kind: p.kind,
            vmid: p.vmid,
            snapname: param("snapname"),
            description: param("description"),
            storage: param("storage"),
            protected: param("protected").as_deref() == Some("1"),
            volid: param("ostemplate"),
            hold: p.binds.get("hold").map(String::as_str) == Some("1"),
        }
    }
}

/// Facts the pre-flight read that the run needs (journaled with the job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub exists: bool,
    pub running: bool,
    /// The storage of the current rootfs (or the restore target).
    pub rootfs_storage: Option<String>,
    /// restore: the archive's config text (`extractconfig`).
    pub archive_config: Option<String>,
}

fn refuse(code: &'static str, message: impl Into<String>) -> JobRefusal {
    JobRefusal::new(code, message)
}

fn pve_err(what: &str, e: PveError) -> JobRefusal {
    refuse("pve_unavailable", format!("{what}: {e}"))
}

fn one(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// The storage id of a volume (`local-lvm:vm-101-disk-0` → `local-lvm`).
fn storage_of(volume: &str) -> Option<String> {
    volume.split_once(':').map(|(s, _)| s.to_string())
}

/// `size=8G` of a mount value in bytes (rootfs/mp lines of an archived config).
fn size_bytes(value: &str) -> Option<u64> {
    let s = value.split(',').find_map(|p| p.strip_prefix("size="))?;
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "K" => 1u64 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

/// `key: value` lines of a `pct.conf` up to the first snapshot section.
pub fn config_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value_ok(v: &str) -> bool {
    gate::payload::is_param_value(v) && !v.is_empty()
}

/// Reads the host and renders the job `ask` stands for now, or the first reason it would be
/// refused. Nothing is changed.
pub async fn plan_job(
    pve: &Pve,
    safety: Option<&crate::safety::SafetyCopies>,
    ask: &JobAsk,
) -> Result<(PlannedJob, Facts), JobRefusal> {
    let node = pve.node.as_str();
    let vmid = ask.vmid;
    let client = &pve.client;
    let status = match client.lxc_status(node, vmid).await {
        Ok(s) => Some(s),
        Err(e) if e.is_not_found() || e.already_in_state().is_some() => None,
        Err(e) => return Err(pve_err("reading the guest's status", e)),
    };
    let config = match status {
        Some(_) => match client.lxc_config(node, vmid, false).await {
            Ok(c) => Some(c),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(pve_err("reading the guest's config", e)),
        },
        None => None,
    };
    let mut facts = Facts {
        exists: config.is_some(),
        running: status
            .as_ref()
            .is_some_and(|s| s.entry.status == GuestStatus::Running),
        rootfs_storage: config
            .as_ref()
            .and_then(|c| c.rootfs.as_ref())
            .and_then(|r| storage_of(&r.volume)),
        archive_config: None,
    };
    let restore_to_free = ask.kind == JobKind::RestoreBackup && config.is_none();
    if config.is_none() && !restore_to_free {
        return Err(refuse(
            "guest_missing",
            format!("CT {vmid} does not exist on this host"),
        ));
    }
    if let Some(c) = &config {
        if let Some(lock) = &c.lock {
            return Err(refuse(
                "guest_locked",
                format!(
                    "CT {vmid} is locked ({lock}); wait for the operation holding it, or `pct unlock {vmid}` if it is stale"
                ),
            ));
        }
        if c.template == Some(true) {
            return Err(refuse(
                "guest_is_template",
                format!("CT {vmid} is a template; jobs run on guests only"),
            ));
        }
    }
    let digest = config.as_ref().and_then(|c| c.digest.clone());
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    let mut binds: BTreeMap<String, String> = BTreeMap::new();
    binds.insert("hold".into(), if ask.hold { "1" } else { "0" }.into());
    let snapshots = || async {
        client
            .list_snapshots(node, vmid)
            .await
            .map_err(|e| pve_err("listing the guest's snapshots", e))
    };
    let need_name = || -> Result<String, JobRefusal> {
        let name = ask.snapname.clone().unwrap_or_default();
        let ok = !name.is_empty()
            && name.len() <= 40
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if !ok || name == "current" || name == "vzdump" {
            return Err(refuse(
                "bad_request",
                format!(
                    "{name:?} is not a snapshot name (a letter, then letters, digits, - or _, at most 40; not current or vzdump)"
                ),
            ));
        }
        Ok(name)
    };
    match ask.kind {
        JobKind::Snapshot => {
            let name = need_name()?;
            if snapshots().await?.iter().any(|s| s.name == name) {
                return Err(refuse(
                    "snapshot_exists",
                    format!("CT {vmid} already has a snapshot named {name}"),
                ));
            }
            let has = client
                .lxc_has_feature(node, vmid, "snapshot", None)
                .await
                .map_err(|e| pve_err("asking PVE whether the guest can be snapshotted", e))?;
            if !has {
                return Err(refuse(
                    "snapshot_unsupported",
                    format!(
                        "CT {vmid} cannot be snapshotted (a volume on storage without snapshots, or a bind mount)"
                    ),
                ));
            }
            params.insert("snapname".into(), name);
            if let Some(d) = ask.description.as_deref().filter(|d| !d.is_empty()) {
                if !value_ok(d) {
                    return Err(refuse(
                        "bad_request",
                        "the description may hold letters, digits and . _ : / , = @ + - only (no spaces), at most 256",
                    ));
                }
                params.insert("description".into(), d.to_string());
            }
        }
        JobKind::DeleteSnapshot | JobKind::RollbackSnapshot => {
            let name = need_name()?;
            let all = snapshots().await?;
            let Some(snap) = all.iter().find(|s| s.name == name) else {
                return Err(refuse(
                    "snapshot_not_found",
                    format!("CT {vmid} has no snapshot named {name} (any more)"),
                ));
            };
            if let Some(state) = &snap.snapstate {
                return Err(refuse(
                    "snapshot_incomplete",
                    format!("snapshot {name} of CT {vmid} is incomplete ({state})"),
                ));
            }
            binds.insert("snaptime".into(), snap.snaptime.unwrap_or(0).to_string());
            params.insert("snapname".into(), name.clone());
            if ask.kind == JobKind::RollbackSnapshot {
                // ZFS rolls back only to the newest snapshot (safety-nets.md §3 item 11).
                if let Some(sid) = &facts.rootfs_storage {
                    let st = client
                        .storage_status(node, sid)
                        .await
                        .map_err(|e| pve_err("reading the rootfs storage", e))?;
                    if st.storage_type == "zfspool" {
                        let newer: Vec<&str> = all
                            .iter()
                            .filter(|s| s.name != "current" && s.name != name)
                            .filter(|s| s.snaptime.unwrap_or(0) >= snap.snaptime.unwrap_or(0))
                            .map(|s| s.name.as_str())
                            .collect();
                        if !newer.is_empty() {
                            return Err(refuse(
                                "zfs_not_newest",
                                format!(
                                    "ZFS rolls back only to the newest snapshot; delete the newer snapshot(s) {} first (a delete_snapshot job each)",
                                    newer.join(", ")
                                ),
                            ));
                        }
                    }
                }
                params.insert("start".into(), "0".into());
            }
        }
        JobKind::Backup => {
            let Some(storage) = ask.storage.clone().filter(|s| value_ok(s)) else {
                return Err(refuse(
                    "bad_request",
                    "a backup needs --storage (a storage with content backup)",
                ));
            };
            let st = match client.storage_status(node, &storage).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() || e.status() == Some(400) => {
                    return Err(refuse(
                        "storage_unusable",
                        format!("storage {storage} does not exist on this node: {e}"),
                    ));
                }
                Err(e) => return Err(pve_err("reading the backup storage", e)),
            };
            if !st.supports("backup") {
                return Err(refuse(
                    "storage_unusable",
                    format!(
                        "storage {storage} does not hold backups (content {})",
                        st.content
                    ),
                ));
            }
            let need = config
                .as_ref()
                .and_then(|c| c.rootfs.as_ref())
                .and_then(|r| r.size)
                .map(|s| s.bytes())
                .unwrap_or(0);
            if st.avail.is_some_and(|a| a < need) {
                return Err(refuse(
                    "no_room",
                    format!(
                        "storage {storage} has {} bytes free; the guest's volumes take up to {need}",
                        st.avail.unwrap_or(0)
                    ),
                ));
            }
            params.extend([
                one("compress", "zstd"),
                one("mode", "snapshot"),
                one("protected", if ask.protected { 1 } else { 0 }),
                one("remove", 0),
                one("storage", &storage),
            ]);
        }
        JobKind::RestoreBackup => {
            let Some(volid) = ask.volid.clone().filter(|v| value_ok(v)) else {
                return Err(refuse("bad_request", "a restore needs --backup VOLID"));
            };
            let Some(backup_storage) = storage_of(&volid).filter(|_| volid.contains(":backup/"))
            else {
                return Err(refuse(
                    "bad_request",
                    format!("{volid} is not a backup volume id (storage:backup/vzdump-lxc-...)"),
                ));
            };
            let listing = client
                .storage_content(
                    node,
                    &backup_storage,
                    &ContentFilter {
                        content: Some("backup".into()),
                        vmid: None,
                    },
                )
                .await
                .map_err(|e| pve_err("listing the backups", e))?;
            let Some(entry) = listing.iter().find(|e| e.volid == volid) else {
                return Err(refuse(
                    "backup_not_found",
                    format!(
                        "backup {volid} is not on storage {backup_storage} (or this token may not see it)"
                    ),
                ));
            };
            let owner = entry.vmid.unwrap_or(0);
            if config.is_some() && owner != vmid {
                return Err(refuse(
                    "backup_of_other_guest",
                    format!(
                        "backup {volid} is of CT {owner}; restoring it over CT {vmid} would replace one guest with another (restore it onto a free vmid instead)"
                    ),
                ));
            }
            let archived = client
                .extract_config(node, &volid)
                .await
                .map_err(|e| pve_err("reading the backup's config (extractconfig)", e))?;
            let lines = config_lines(&archived);
            let storage = ask
                .storage
                .clone()
                .or_else(|| facts.rootfs_storage.clone())
                .or_else(|| lines.get("rootfs").and_then(|r| storage_of(r)))
                .unwrap_or_default();
            let st = client
                .storage_status(node, &storage)
                .await
                .map_err(|e| refuse("storage_unusable", format!("storage {storage}: {e}")))?;
            if !st.supports("rootdir") {
                return Err(refuse(
                    "storage_unusable",
                    format!("storage {storage} does not hold container volumes"),
                ));
            }
            // Old and new volumes exist at once during a forced restore (§3 item 1).
            let need: u64 = lines
                .iter()
                .filter(|(k, _)| *k == "rootfs" || k.starts_with("mp"))
                .filter_map(|(_, v)| size_bytes(v))
                .sum();
            if st.avail.is_some_and(|a| a < need) {
                return Err(refuse(
                    "no_room",
                    format!(
                        "storage {storage} has {} bytes free; the restored volumes need {need} while the old ones still exist",
                        st.avail.unwrap_or(0)
                    ),
                ));
            }
            if let Some(c) = &config
                && c.protection == Some(true)
            {
                return Err(refuse(
                    "guest_protected",
                    format!(
                        "CT {vmid} has protection set; PVE refuses to restore over it (clearing it is its own change)"
                    ),
                ));
            }
            binds.insert("archive-ctime".into(), entry.ctime.unwrap_or(0).to_string());
            binds.insert("archive-size".into(), entry.size.unwrap_or(0).to_string());
            binds.insert("archive-vmid".into(), owner.to_string());
            // Where the archive is a file this agent can read (a dir, NFS or CIFS storage
            // mounted on the node), its sha256 is bound too; PBS and unreadable paths bind
            // no hash (the ctime and size still are).
            if let Some(hash) = archive_sha256(pve, &backup_storage, &volid).await {
                binds.insert("archive-sha256".into(), hash);
            }
            params.insert("ostemplate".into(), volid);
            params.insert("restore".into(), "1".into());
            params.insert("storage".into(), storage.clone());
            if config.is_some() {
                params.insert("force".into(), "1".into());
            } else {
                // A copy next to the original gets new MAC addresses.
                params.insert("unique".into(), "1".into());
            }
            facts.rootfs_storage = Some(storage);
            facts.archive_config = Some(archived);
        }
        JobKind::Reboot => {
            if !facts.running {
                return Err(refuse(
                    "guest_not_running",
                    format!("CT {vmid} is not running; there is nothing to reboot"),
                ));
            }
            params.insert("timeout".into(), "60".into());
        }
    }
    if crate::jobs::safety::needs_copy(ask.kind, facts.exists) {
        // Every refusal of the copy now, before anything is signed or stopped; what it binds
        // (`bind.safety`, `bind.uncovered`) goes into the signed text.
        let pre = crate::jobs::safety::preflight(safety, vmid, ask.kind).await?;
        binds.extend(pre.binding());
    }
    Ok((
        PlannedJob {
            kind: ask.kind,
            vmid,
            guest_config_sha1: digest.filter(|_| facts.exists),
            params,
            binds,
        },
        facts,
    ))
}

/// The sha256 of a backup archive the node's path of which this process can read.
async fn archive_sha256(pve: &Pve, storage: &str, volid: &str) -> Option<String> {
    let info = pve
        .client
        .volume_info(&pve.node, storage, volid)
        .await
        .ok()?;
    let path = std::path::PathBuf::from(info.path);
    if !path.is_absolute() {
        return None;
    }
    tokio::task::spawn_blocking(move || crate::safety::verify::sha256_file(&path).ok())
        .await
        .ok()
        .flatten()
        .map(|(hash, _)| hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_config_lines() {
        assert_eq!(size_bytes("local-lvm:vm-1-disk-0,size=8G"), Some(8 << 30));
        assert_eq!(size_bytes("local:1/x.raw,mp=/a,size=512M"), Some(512 << 20));
        assert_eq!(size_bytes("local:1/x.raw"), None);
        let l = config_lines("arch: amd64\nhostname: a\n\n[snap]\nhostname: b\n");
        assert_eq!(l.get("hostname").map(String::as_str), Some("a"));
    }
}
