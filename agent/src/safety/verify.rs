//! Verification before a copy counts (`safety-nets.md` §6.1): vzdump's answer is not the
//! backup (§3 item 10), so the volid comes from the task log, must be in the listing with
//! Drover's protection, the archived config must be the guest's current one, and where the
//! agent can read the archive it is hashed (sha256) and its size checked against the listing.

use std::io::Read;
use std::path::Path;

use proxmox_client::{ContentFilter, LxcConfig, Upid, backup_volid_from_log};

use super::{CopyError, CopyManifest, SafetyCopies};

/// What the checks established about a vzdump archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub volid: String,
    pub format: Option<String>,
    pub size: Option<u64>,
    pub ctime: Option<i64>,
    pub total_bytes_written: Option<u64>,
    pub sha256: Option<String>,
    /// `agent`, `pbs` or `none`.
    pub hash_source: String,
    pub warnings: Vec<String>,
}

/// `INFO: Total bytes written: 1289748480 (1.3GiB, 98MiB/s)` → 1289748480.
fn total_bytes_written(line: &str) -> Option<u64> {
    let rest = line.split("Total bytes written: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Streams a file once: its sha256 and its length.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut n: u64 = 0;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// The archived `pct.conf` (the text before the first snapshot section) as a typed config.
pub fn parse_archived_config(text: &str) -> Result<LxcConfig, String> {
    let mut map = serde_json::Map::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with('[') {
            break;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("line {line:?} is not `key: value`"));
        };
        map.insert(
            k.trim().to_string(),
            serde_json::Value::String(v.trim().to_string()),
        );
    }
    LxcConfig::from_map(map)
}

/// The keys that say "this is the same CT": layout, identity, network (§6.1 step 3).
pub fn config_differences(archived: &LxcConfig, current: &LxcConfig) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |key: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{key}: archived {a:?}, current {b:?}"));
        }
    };
    cmp(
        "hostname",
        format!("{:?}", archived.hostname),
        format!("{:?}", current.hostname),
    );
    cmp(
        "arch",
        format!("{:?}", archived.arch),
        format!("{:?}", current.arch),
    );
    cmp(
        "unprivileged",
        format!("{}", archived.unprivileged.unwrap_or(false)),
        format!("{}", current.unprivileged.unwrap_or(false)),
    );
    cmp(
        "rootfs",
        format!("{:?}", archived.rootfs.as_ref().map(|r| &r.volume)),
        format!("{:?}", current.rootfs.as_ref().map(|r| &r.volume)),
    );
    let vols = |c: &LxcConfig| -> Vec<(u32, String)> {
        c.mp.iter().map(|(i, m)| (*i, m.volume.clone())).collect()
    };
    cmp(
        "mp",
        format!("{:?}", vols(archived)),
        format!("{:?}", vols(current)),
    );
    cmp(
        "net",
        format!("{:?}", archived.net),
        format!("{:?}", current.net),
    );
    d
}

/// Every check of a finished vzdump task's archive.
pub(crate) async fn vzdump_archive(
    sc: &SafetyCopies,
    m: &CopyManifest,
    upid: &Upid,
    current: Option<&LxcConfig>,
) -> Result<Evidence, CopyError> {
    let node = &sc.node;
    let storage = &m.storage;
    let mut warnings = Vec::new();
    // 1. The volid from the task log.
    let log = sc
        .client
        .task_log(upid, 0, 10_000)
        .await
        .map_err(|e| CopyError::pve(&format!("reading the log of {upid}"), &e))?;
    let Some(volid) = backup_volid_from_log(storage, &log.lines) else {
        return Err(CopyError::failed(
            "no_volid",
            format!(
                "vzdump task {upid} ended without naming an archive in its log: nothing was backed up"
            ),
        ));
    };
    let total = log.lines.iter().find_map(|l| total_bytes_written(&l.t));
    for l in &log.lines {
        if l.t.starts_with("WARN") || l.t.contains("unable to add notes") {
            warnings.push(l.t.clone());
        }
    }
    // 2. The listing: present, protected, not empty, a CT backup.
    let listing = sc
        .client
        .storage_content(node, storage, &ContentFilter::backups_of(m.vmid))
        .await
        .map_err(|e| CopyError::pve("listing the safety storage", &e))?;
    let Some(entry) = listing.into_iter().find(|e| e.volid == volid) else {
        return Err(CopyError::failed(
            "not_listed",
            format!(
                "{volid} is not in the listing of storage {storage} (the token needs VM.Backup and Datastore.AllocateSpace on it to see it)"
            ),
        ));
    };
    if !entry.is_protected() {
        return Err(CopyError::failed(
            "not_protected",
            format!(
                "{volid} is not protected; an unprotected copy could be pruned by the storage's retention"
            ),
        ));
    }
    if entry.size.unwrap_or(0) == 0 {
        return Err(CopyError::failed(
            "empty_archive",
            format!("{volid} is empty"),
        ));
    }
    if let Some(sub) = &entry.subtype
        && sub != "lxc"
    {
        return Err(CopyError::failed(
            "wrong_subtype",
            format!("{volid} is a {sub} backup, not a CT's"),
        ));
    }
    if let Some(other) = entry
        .notes
        .as_deref()
        .map(str::trim)
        .filter(|n| n.starts_with("drover:") && *n != m.notes.trim())
    {
        // Another copy's marker: this task is not this copy's, and its archive must not be
        // counted as this copy (the guest would be destroyed behind someone else's copy).
        return Err(CopyError::failed(
            "archive_of_another_copy",
            format!(
                "{volid} carries the marker {other:?}, not this copy's {:?}",
                m.notes
            ),
        ));
    }
    if entry.notes.as_deref() != Some(m.notes.as_str()) {
        // Notes are a recovery aid only; their failure is a warning in PVE too.
        warnings.push(format!(
            "notes_missing: {volid} does not carry the marker {:?}",
            m.notes
        ));
    }
    // 3. The archived config is the guest's current one.
    let text = sc.client.extract_config(node, &volid).await.map_err(|e| {
        CopyError::failed(
            "unreadable_archive",
            format!("extractconfig of {volid}: {e}"),
        )
    })?;
    let archived = parse_archived_config(&text).map_err(|e| {
        CopyError::failed("unreadable_archive", format!("the config in {volid}: {e}"))
    })?;
    if let Some(current) = current {
        let diff = config_differences(&archived, current);
        if !diff.is_empty() {
            return Err(CopyError::failed(
                "config_mismatch",
                format!(
                    "{volid} does not hold CT {}'s current config: {}",
                    m.vmid,
                    diff.join("; ")
                ),
            ));
        }
    }
    // 4. The hash, where the archive is a file the agent can read.
    let info = sc
        .client
        .volume_info(node, storage, &volid)
        .await
        .map_err(|e| CopyError::pve(&format!("reading {volid}"), &e))?;
    let (sha256, hash_source) = if info.path.starts_with("pbs://") {
        warnings.push("hash: a PBS archive has no file to hash; PBS verifies its chunks (enable verify-new on the datastore)".into());
        (None, "pbs".to_string())
    } else {
        let path = std::path::PathBuf::from(&info.path);
        let hashed = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| CopyError::failed("hash_failed", format!("hashing {volid}: {e}")))?;
        match hashed {
            Ok((hex, len)) => {
                if let Some(size) = entry.size
                    && size != len
                {
                    return Err(CopyError::failed(
                        "size_mismatch",
                        format!("{volid} is {len} bytes on disk but listed as {size}"),
                    ));
                }
                (Some(hex), "agent".to_string())
            }
            Err(e) if sc.policy.require_hash => {
                return Err(CopyError::failed(
                    "hash_unavailable",
                    format!(
                        "cannot read {} to hash it ({e}); give the agent read access to the safety storage or set [safety] require_hash = false",
                        info.path
                    ),
                ));
            }
            Err(e) => {
                warnings.push(format!(
                    "hash: {} not readable ({e}); not hashed",
                    info.path
                ));
                (None, "none".to_string())
            }
        }
    };
    Ok(Evidence {
        volid,
        format: entry.format,
        size: entry.size,
        ctime: entry.ctime,
        total_bytes_written: total,
        sha256,
        hash_source,
        warnings,
    })
}

/// A safety snapshot counts once PVE lists it complete with Drover's description.
pub(crate) async fn snapshot(sc: &SafetyCopies, m: &CopyManifest) -> Result<(), CopyError> {
    let name = m.snapname.clone().unwrap_or_default();
    let snaps = sc
        .client
        .list_snapshots(&sc.node, m.vmid)
        .await
        .map_err(|e| CopyError::pve("listing snapshots", &e))?;
    match snaps.iter().find(|s| s.name == name) {
        None => Err(CopyError::failed(
            "not_listed",
            format!("snapshot {name} of CT {} is not listed", m.vmid),
        )),
        Some(s) if s.snapstate.is_some() => Err(CopyError::failed(
            "incomplete_snapshot",
            format!("snapshot {name} is incomplete ({:?})", s.snapstate),
        )),
        Some(s) if s.description.as_deref().map(str::trim) != Some(m.notes.as_str()) => {
            Err(CopyError::failed(
                "not_ours",
                format!(
                    "snapshot {name} does not carry Drover's description {:?}",
                    m.notes
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn total_bytes_from_the_log_line() {
        assert_eq!(
            total_bytes_written("INFO: Total bytes written: 1289748480 (1.3GiB, 98MiB/s)"),
            Some(1_289_748_480)
        );
        assert_eq!(total_bytes_written("INFO: archive file size: 412MB"), None);
    }

    #[test]
    fn archived_config_stops_at_the_first_snapshot_section() {
        let c = parse_archived_config(
            "#managed\narch: amd64\nhostname: web1\nrootfs: local-lvm:vm-101-disk-0,size=4G\n\n[snap1]\nhostname: old\n",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("web1"));
        let mut other = c.clone();
        other.hostname = Some("web2".into());
        assert_eq!(config_differences(&c, &c), Vec::<String>::new());
        assert_eq!(config_differences(&c, &other).len(), 1);
    }
}
