//! The node's storages as PVE's storage layer shows them (`safety-nets.md` §1.2, §1.6, §1.7):
//! types with their content types and snapshot abilities, volume ids per type, free space,
//! and the content listing (templates, backups and the CTs' disks).
//!
//! Backups and templates are records in [`StorageState`]; the CTs' disks are not stored twice
//! but read from the configs (rootfs, `mpN`, `unusedN`, pending and snapshot sections), so a
//! config change can never leave the listing out of date. File storages (`dir`, `btrfs`) keep
//! real archive files under the simulator's storage root, so a test can read and hash them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::state::{ApiError, Ct, Host};

/// A storage type PVE knows (`pvesm add <type>`), with what the simulator models of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Dir,
    Lvm,
    Lvmthin,
    Zfspool,
    Rbd,
    Btrfs,
    Pbs,
}

impl StorageType {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::Dir => "dir",
            StorageType::Lvm => "lvm",
            StorageType::Lvmthin => "lvmthin",
            StorageType::Zfspool => "zfspool",
            StorageType::Rbd => "rbd",
            StorageType::Btrfs => "btrfs",
            StorageType::Pbs => "pbs",
        }
    }

    /// Whether an LXC volume on it can be snapshotted (`volume_has_feature`: dir and thick
    /// LVM only for qcow2, which containers never use).
    pub fn can_snapshot(self) -> bool {
        matches!(
            self,
            StorageType::Lvmthin | StorageType::Zfspool | StorageType::Rbd | StorageType::Btrfs
        )
    }

    /// ZFS can only roll back to its most recent snapshot (`volume_rollback_is_possible`).
    pub fn rollback_newest_only(self) -> bool {
        self == StorageType::Zfspool
    }

    /// Backups are files in `<path>/dump` (PBS keeps them server-side).
    pub fn is_file_storage(self) -> bool {
        matches!(self, StorageType::Dir | StorageType::Btrfs)
    }

    /// The volume name of CT disk `n` and its format (`alloc_image` of each plugin).
    fn disk_volname(self, vmid: u32, n: u32) -> (String, &'static str) {
        match self {
            StorageType::Dir => (format!("{vmid}/vm-{vmid}-disk-{n}.raw"), "raw"),
            StorageType::Btrfs => (format!("{vmid}/vm-{vmid}-disk-{n}.raw"), "raw"),
            StorageType::Zfspool => (format!("subvol-{vmid}-disk-{n}"), "subvol"),
            StorageType::Lvm | StorageType::Lvmthin | StorageType::Rbd | StorageType::Pbs => {
                (format!("vm-{vmid}-disk-{n}"), "raw")
            }
        }
    }
}

/// One storage of the simulated node (an entry of `/etc/pve/storage.cfg`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SimStorage {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Content types (`backup`, `vztmpl`, `iso`, `rootdir`, `images`, `snippets`).
    pub content: BTreeSet<String>,
    pub total_bytes: u64,
    pub shared: bool,
    /// The storage's `prune-backups` (`keep-last=3,...`); `None` is `keep-all=1`.
    pub prune_backups: Option<String>,
    /// `max-protected-backups`; `None` is PVE's default for a caller without
    /// `Datastore.Allocate` (every simulated token): 5 per guest.
    pub max_protected_backups: Option<u32>,
    /// Container templates in `template/cache` (file names such as
    /// `debian-12-standard_12.7-1_amd64.tar.zst`), listed as `<id>:vztmpl/<name>`.
    pub templates: Vec<String>,
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage {
            id: "local".into(),
            kind: StorageType::Dir,
            content: BTreeSet::new(),
            total_bytes: 100 * GIB,
            shared: false,
            prune_backups: None,
            max_protected_backups: None,
            templates: Vec::new(),
        }
    }
}

pub const GIB: u64 = 1024 * 1024 * 1024;
/// The size the listing reports for a template (the sim keeps no template files).
const TEMPLATE_SIZE: u64 = 126_322_118;

impl SimStorage {
    /// A storage with `content` given as PVE writes it (`backup,iso,vztmpl`).
    pub fn new(id: &str, kind: StorageType, content: &str, total_gib: u64) -> SimStorage {
        SimStorage {
            id: id.into(),
            kind,
            content: content
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            total_bytes: total_gib * GIB,
            ..SimStorage::default()
        }
    }

    pub fn has_content(&self, c: &str) -> bool {
        self.content.contains(c)
    }

    pub fn content_text(&self) -> String {
        self.content.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

/// The storages of a fresh PVE install on LVM: `local` (dir: backups, ISOs, templates) and
/// `local-lvm` (LVM-thin: CT and VM disks), with a few templates.
pub fn default_storages() -> Vec<SimStorage> {
    let mut local = SimStorage::new("local", StorageType::Dir, "backup,iso,vztmpl", 100);
    local.templates = vec![
        "debian-12-standard_12.7-1_amd64.tar.zst".into(),
        "alpine-3.20-default_20240908_amd64.tar.xz".into(),
        "ubuntu-24.04-standard_24.04-2_amd64.tar.zst".into(),
    ];
    vec![
        local,
        SimStorage::new("local-lvm", StorageType::Lvmthin, "images,rootdir", 400),
    ]
}

/// The storage layout the simulator runs with: the storages and where file storages live.
#[derive(Debug, Clone)]
pub struct Layout {
    pub storages: Vec<SimStorage>,
    /// `<root>/<storage id>/dump` holds the archives of file storages.
    pub root: PathBuf,
}

impl Layout {
    pub fn get(&self, id: &str) -> Option<&SimStorage> {
        self.storages.iter().find(|s| s.id == id)
    }

    /// `storage_config`: the storage or PVE's `storage 'X' does not exist`.
    pub fn require(&self, id: &str) -> Result<&SimStorage, ApiError> {
        self.get(id)
            .ok_or_else(|| ApiError::new(500, format!("storage '{id}' does not exist")))
    }

    /// The directory a file storage writes its backups to.
    pub fn dump_dir(&self, id: &str) -> PathBuf {
        self.root.join(id).join("dump")
    }

    /// Creates the directories of the file storages.
    pub fn prepare(&self) -> std::io::Result<()> {
        for s in self.storages.iter().filter(|s| s.kind.is_file_storage()) {
            std::fs::create_dir_all(self.dump_dir(&s.id))?;
        }
        Ok(())
    }
}

/// A backup or template on a storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub volid: String,
    pub storage: String,
    /// `backup` or `vztmpl`.
    pub content: String,
    pub format: String,
    pub vmid: Option<u32>,
    /// `lxc` for CT backups (the listing's undeclared `subtype`).
    pub subtype: Option<String>,
    pub size: u64,
    pub ctime: u64,
    pub notes: Option<String>,
    pub protected: bool,
    /// The archive file of a file storage.
    pub path: Option<PathBuf>,
    /// The archive itself where there is no file (PBS keeps it server-side).
    #[serde(default)]
    pub payload: Option<Vec<u8>>,
}

/// What the storage layer persists: backup and template records, the pretend data of CT
/// volumes (what a restore brings back or leaves empty), and the log lines of storage tasks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageState {
    pub volumes: BTreeMap<String, Volume>,
    /// Pretend contents of CT volumes by volid (set with `/_sim/volume-data`).
    pub data: BTreeMap<String, String>,
    /// Log lines of vzdump/vzrestore/imgdel/prunebackups tasks by UPID (without `TASK ...`).
    pub task_logs: BTreeMap<String, Vec<String>>,
    /// Sizes of volumes detached to `unusedN` (whose config line carries no size), so the
    /// storage still reports them as PVE's does.
    pub detached_sizes: BTreeMap<String, u64>,
}

/// Faults for the storage tasks, part of the simulator's [`crate::Faults`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageFaults {
    /// Storages whose writes fail with "No space left on device" (vzdump and restore).
    pub no_space: BTreeSet<String>,
    /// Every vzdump of these vmids fails inside the task (`job errors`) with this reason.
    pub vzdump_fail: BTreeMap<u32, String>,
    /// vzdump of these vmids "crashes": the task ends `unexpected status`, the CT keeps
    /// `lock: backup` and the `.dat` file stays (a killed vzdump).
    pub vzdump_crash: BTreeSet<u32>,
    /// Restores of these vmids fail while extracting (after the old CT is destroyed).
    pub restore_fail: BTreeSet<u32>,
    /// Restores *from* these archives (volids) fail while extracting, as a corrupt archive
    /// does; restores from other archives onto the same vmid work (an undo from a copy).
    #[serde(default)]
    pub restore_fail_archives: BTreeSet<String>,
    /// The node dies while restoring these vmids, after the old volumes are freed: the task
    /// ends `unexpected status` and the config holds only `lock: create` (which the API
    /// cannot clear, `safety-nets.md` §1.5).
    pub restore_crash: BTreeSet<u32>,
    /// Notes cannot be written for backups of these vmids: only a warning, the task ends
    /// `WARNINGS: 1` and the archive has no notes (`exec_backup_task`).
    pub notes_fail: BTreeSet<u32>,
}

/// A volume id `storage:volname` split in two.
pub fn parse_volid(volid: &str) -> Result<(&str, &str), ApiError> {
    match volid.split_once(':') {
        Some((s, v)) if !s.is_empty() && !v.is_empty() => Ok((s, v)),
        _ => Err(ApiError::new(
            500,
            format!("unable to parse volume ID '{volid}'"),
        )),
    }
}

/// The volume ids a config references (rootfs, `mpN`, `unusedN`), bind mounts excluded.
pub fn config_volumes(conf: &BTreeMap<String, String>) -> Vec<(String, String)> {
    conf.iter()
        .filter(|(k, _)| is_disk_key(k))
        .filter_map(|(k, v)| {
            let vol = v.split(',').next().unwrap_or("");
            let vol = vol.strip_prefix("volume=").unwrap_or(vol);
            (!vol.starts_with('/') && vol.contains(':')).then(|| (k.clone(), vol.to_string()))
        })
        .collect()
}

/// `rootfs`, `mp0`, `unused3`.
pub fn is_disk_key(k: &str) -> bool {
    k == "rootfs"
        || ["mp", "unused"].iter().any(|p| {
            k.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

/// Every volid a CT holds: current, pending and snapshot sections.
pub fn ct_volumes(ct: &Ct) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = config_volumes(&ct.conf).into_iter().map(|x| x.1).collect();
    out.extend(config_volumes(&ct.pending).into_iter().map(|x| x.1));
    for s in ct.snapshots.values() {
        out.extend(config_volumes(&s.conf).into_iter().map(|x| x.1));
    }
    out
}

fn size_bytes(v: &str) -> u64 {
    v.split(',')
        .find_map(|p| p.strip_prefix("size="))
        .map(parse_size)
        .unwrap_or(0)
}

/// `8G`, `512M`, `1T`, `100K` or plain bytes.
pub fn parse_size(s: &str) -> u64 {
    let (num, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1024),
        Some('M') => (&s[..s.len() - 1], 1024 * 1024),
        Some('G') => (&s[..s.len() - 1], GIB),
        Some('T') => (&s[..s.len() - 1], 1024 * GIB),
        _ => (s, 1),
    };
    num.parse::<f64>()
        .map(|n| (n * mult as f64) as u64)
        .unwrap_or(0)
}

/// A CT disk found in the configs: volid, owner, size, format.
struct Disk {
    volid: String,
    vmid: u32,
    size: u64,
    format: &'static str,
}

fn disks_on(host: &Host, storage: &str) -> Vec<Disk> {
    let mut out: BTreeMap<String, Disk> = BTreeMap::new();
    for ct in host.p.cts.values().filter(|c| c.node == host.node) {
        let mut confs = vec![&ct.conf, &ct.pending];
        confs.extend(ct.snapshots.values().map(|s| &s.conf));
        for conf in confs {
            for (k, v) in conf.iter().filter(|(k, _)| is_disk_key(k)) {
                let Some((_, vol)) = config_volumes(&BTreeMap::from([(k.clone(), v.clone())]))
                    .into_iter()
                    .next()
                else {
                    continue;
                };
                let Ok((s, name)) = parse_volid(&vol) else {
                    continue;
                };
                if s != storage {
                    continue;
                }
                let size = match size_bytes(v) {
                    0 => host
                        .p
                        .storage
                        .detached_sizes
                        .get(&vol)
                        .copied()
                        .unwrap_or(0),
                    s => s,
                };
                let e = out.entry(vol.clone()).or_insert(Disk {
                    volid: vol.clone(),
                    vmid: ct.vmid,
                    size,
                    format: if name.contains("subvol-") {
                        "subvol"
                    } else {
                        "raw"
                    },
                });
                // An `unusedN` line carries no size; the volume keeps the one it had.
                e.size = e.size.max(size);
            }
        }
    }
    out.into_values().collect()
}

/// Bytes used on a storage: backups, templates and CT disks.
pub fn used_bytes(host: &Host, storage: &str) -> u64 {
    let records: u64 = host
        .p
        .storage
        .volumes
        .values()
        .filter(|v| v.storage == storage)
        .map(|v| v.size)
        .sum();
    let disks: u64 = disks_on(host, storage).iter().map(|d| d.size).sum();
    records + disks
}

fn status_json(host: &Host, s: &SimStorage) -> Value {
    let used = used_bytes(host, &s.id).min(s.total_bytes);
    json!({
        "type": s.kind.as_str(),
        "content": s.content_text(),
        "total": s.total_bytes,
        "used": used,
        "avail": s.total_bytes - used,
        "active": 1,
        "enabled": 1,
        "shared": u8::from(s.shared),
    })
}

/// `GET /nodes/{node}/storage`: filtered by `content` (any of the listed types), `storage`
/// and `enabled`.
pub fn list(host: &Host, params: &BTreeMap<String, String>) -> Result<Value, ApiError> {
    let want: Vec<&str> = params
        .get("content")
        .map(|c| c.split([',', ';', ' ']).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    let only = params.get("storage");
    let rows = host
        .layout
        .storages
        .iter()
        .filter(|s| only.is_none_or(|o| *o == s.id))
        .filter(|s| want.is_empty() || want.iter().any(|c| s.has_content(c)))
        .map(|s| {
            let mut o = status_json(host, s);
            o["storage"] = s.id.clone().into();
            let total = s.total_bytes.max(1) as f64;
            o["used_fraction"] = json!(o["used"].as_u64().unwrap_or(0) as f64 / total);
            o
        })
        .collect();
    Ok(Value::Array(rows))
}

/// `GET /nodes/{node}/storage/{storage}/status`.
pub fn status(host: &Host, storage: &str) -> Result<Value, ApiError> {
    let s = host.layout.require(storage)?;
    Ok(status_json(host, s))
}

/// Free bytes on a storage.
#[allow(dead_code)] // used by backup.rs
pub fn avail(host: &Host, storage: &str) -> u64 {
    host.layout
        .get(storage)
        .map(|s| s.total_bytes.saturating_sub(used_bytes(host, storage)))
        .unwrap_or(0)
}

fn volume_json(v: &Volume) -> Value {
    let mut o = json!({
        "volid": v.volid,
        "content": v.content,
        "format": v.format,
        "size": v.size,
        "ctime": v.ctime,
    });
    if let Some(id) = v.vmid {
        o["vmid"] = id.into();
    }
    if let Some(st) = &v.subtype {
        o["subtype"] = st.clone().into();
    }
    if let Some(n) = &v.notes {
        // The listing carries only the first line of the notes.
        o["notes"] = n.lines().next().unwrap_or("").into();
    }
    if v.protected {
        o["protected"] = 1.into();
    }
    o
}

/// `GET /nodes/{node}/storage/{storage}/content[?content=..][&vmid=..]`, sorted by volid.
/// Backups are listed only to a caller holding `VM.Backup` on their owner (`see_backups`):
/// `check_volume_access` filters them out silently.
pub fn content(
    host: &Host,
    storage: &str,
    params: &BTreeMap<String, String>,
    see_backups: bool,
) -> Result<Value, ApiError> {
    host.layout.require(storage)?;
    let want = params.get("content").map(String::as_str);
    let vmid: Option<u32> = params.get("vmid").and_then(|v| v.parse().ok());
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    for v in host.p.storage.volumes.values() {
        if v.storage == storage
            && (see_backups || v.content != "backup")
            && want.is_none_or(|w| w == v.content)
            && vmid.is_none_or(|id| v.vmid == Some(id))
        {
            rows.insert(v.volid.clone(), volume_json(v));
        }
    }
    if want.is_none_or(|w| w == "rootdir") {
        for d in disks_on(host, storage) {
            if vmid.is_none_or(|id| id == d.vmid) {
                rows.insert(
                    d.volid.clone(),
                    json!({"volid": d.volid, "content": "rootdir", "format": d.format,
                           "size": d.size, "vmid": d.vmid}),
                );
            }
        }
    }
    Ok(Value::Array(rows.into_values().collect()))
}

/// The path PVE reports for a volume (`filesystem_path`, PBS's artificial `pbs://` path).
fn disk_path(host: &Host, s: &SimStorage, volname: &str) -> String {
    match s.kind {
        StorageType::Dir | StorageType::Btrfs => host
            .layout
            .root
            .join(&s.id)
            .join("images")
            .join(volname)
            .display()
            .to_string(),
        StorageType::Lvm | StorageType::Lvmthin => format!("/dev/pve/{volname}"),
        StorageType::Zfspool => format!("/rpool/data/{volname}"),
        StorageType::Rbd => format!("/dev/rbd/{}/{volname}", s.id),
        StorageType::Pbs => format!("pbs://{}/{volname}", s.id),
    }
}

/// `GET .../content/{volume}`: `path`, `size`, `used`, `format`, full `notes`, `protected`.
pub fn volume_info(host: &Host, storage: &str, volid: &str) -> Result<Value, ApiError> {
    let s = host.layout.require(storage)?;
    let (sid, volname) = parse_volid(volid)?;
    if sid != storage {
        return Err(ApiError::new(
            500,
            format!("volume '{volid}' is not on storage '{storage}'"),
        ));
    }
    if let Some(v) = host.p.storage.volumes.get(volid) {
        let path = match &v.path {
            Some(p) => p.display().to_string(),
            None => match s.kind {
                StorageType::Pbs => {
                    format!("pbs://{}/{}", s.id, volname.trim_start_matches("backup/"))
                }
                _ => host
                    .layout
                    .root
                    .join(&s.id)
                    .join("template/cache")
                    .join(volname.trim_start_matches("vztmpl/"))
                    .display()
                    .to_string(),
            },
        };
        let mut o = json!({"path": path, "size": v.size, "used": v.size, "format": v.format,
                           "protected": u8::from(v.protected)});
        if let Some(n) = &v.notes {
            o["notes"] = n.clone().into();
        }
        return Ok(o);
    }
    if let Some(d) = disks_on(host, storage)
        .into_iter()
        .find(|d| d.volid == volid)
    {
        return Ok(json!({"path": disk_path(host, s, volname), "size": d.size,
                         "used": d.size, "format": d.format}));
    }
    Err(no_volume(volid))
}

pub fn no_volume(volid: &str) -> ApiError {
    ApiError::new(500, format!("volume '{volid}' does not exist"))
}

/// Adds the configured templates as volumes (once; a persisted state keeps its own).
pub fn seed_templates(host: &mut Host) {
    let now = crate::state::unix_now();
    let add: Vec<Volume> = host
        .layout
        .storages
        .iter()
        .flat_map(|s| {
            s.templates.iter().map(|t| Volume {
                volid: format!("{}:vztmpl/{t}", s.id),
                storage: s.id.clone(),
                content: "vztmpl".into(),
                format: template_format(t).into(),
                vmid: None,
                subtype: None,
                size: TEMPLATE_SIZE,
                ctime: now,
                notes: None,
                protected: false,
                path: None,
                payload: None,
            })
        })
        .collect();
    for v in add {
        host.p.storage.volumes.entry(v.volid.clone()).or_insert(v);
    }
}

fn template_format(name: &str) -> &'static str {
    if name.ends_with(".tar.zst") {
        "tzst"
    } else if name.ends_with(".tar.xz") {
        "txz"
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        "tgz"
    } else {
        "tar"
    }
}

// ---------------------------------------------------------------- disk allocation

/// The disk numbers already taken for `vmid` on `storage` by any config on the node (and by
/// `also`, the config being built), so each new volume gets its own number.
fn taken_numbers(host: &Host, vmid: u32, storage: &str, also: &[&str]) -> BTreeSet<u32> {
    let mut vols: BTreeSet<String> = host
        .p
        .cts
        .values()
        .filter(|c| c.node == host.node)
        .flat_map(ct_volumes)
        .collect();
    vols.extend(also.iter().map(|s| s.to_string()));
    vols.iter()
        .filter_map(|v| parse_volid(v).ok())
        .filter(|(s, _)| *s == storage)
        .filter_map(|(_, name)| {
            let stem = name.rsplit('/').next()?;
            let stem = stem.split('.').next()?;
            let rest = stem
                .strip_prefix(&format!("vm-{vmid}-disk-"))
                .or_else(|| stem.strip_prefix(&format!("subvol-{vmid}-disk-")))?;
            rest.parse().ok()
        })
        .collect()
}

/// Turns a create-syntax disk (`local-lvm:8,mp=/srv`) into an allocated volume
/// (`local-lvm:vm-101-disk-1,mp=/srv,size=8G`) with the next free disk number, keys printed
/// as PVE prints a mount point (volume, then `mp`, then the rest sorted). Values that already
/// name a volume, and bind mounts, are returned unchanged. `also` are the volids allocated
/// for the same config so far.
pub fn allocate(
    host: &Host,
    vmid: u32,
    value: &str,
    also: &[&str],
) -> Result<Option<String>, ApiError> {
    let mut parts = value.split(',');
    let first = parts.next().unwrap_or("");
    let first = first.strip_prefix("volume=").unwrap_or(first);
    let Some((sid, size)) = first.split_once(':') else {
        return Ok(None);
    };
    let Ok(gib) = size.parse::<f64>() else {
        return Ok(None);
    };
    let s = host.layout.require(sid)?;
    if !s.has_content("rootdir") {
        return Err(ApiError::params(BTreeMap::from([(
            "storage".to_string(),
            format!("storage '{sid}' does not support container directories"),
        )])));
    }
    let taken = taken_numbers(host, vmid, sid, also);
    let n = (0..).find(|n| !taken.contains(n)).unwrap_or(0);
    let (volname, _) = s.kind.disk_volname(vmid, n);
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k != "size" {
            opts.insert(k.to_string(), v.to_string());
        }
    }
    let size_text = if gib.fract() == 0.0 {
        format!("{}G", gib as u64)
    } else {
        format!("{}M", (gib * 1024.0).round() as u64)
    };
    opts.insert("size".into(), size_text);
    let mut out = format!("{sid}:{volname}");
    if let Some(mp) = opts.remove("mp") {
        out.push_str(&format!(",mp={mp}"));
    }
    for (k, v) in opts {
        out.push_str(&format!(",{k}={v}"));
    }
    Ok(Some(out))
}

/// The disk keys of a create in PVE's order (`rootfs`, then `mp0`, `mp1`, ...), with
/// `default_rootfs` when the call gives none.
pub fn disks_in_order(
    params: &BTreeMap<String, String>,
    default_rootfs: &str,
) -> Vec<(String, String)> {
    let mut mps: Vec<(u32, String, String)> = params
        .iter()
        .filter(|(k, _)| is_mp_key(k))
        .map(|(k, v)| (k[2..].parse().unwrap_or(0), k.clone(), v.clone()))
        .collect();
    mps.sort();
    let rootfs = params
        .get("rootfs")
        .cloned()
        .unwrap_or_else(|| default_rootfs.to_string());
    std::iter::once(("rootfs".to_string(), rootfs))
        .chain(mps.into_iter().map(|(_, k, v)| (k, v)))
        .collect()
}

/// The `unusedN` entries a config update leaves behind: a volume mount point that is deleted
/// or replaced by another volume keeps its volume as the next free `unusedN`
/// (`LXC/Config.pm` `add_unused_volume`); bind mounts simply go.
pub fn detach_volumes(ct: &Ct, params: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let deleted: BTreeSet<&str> = params
        .get("delete")
        .map(|d| d.split([',', ';', ' ']).filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    let mut used: BTreeSet<u32> = ct
        .conf
        .keys()
        .filter_map(|k| k.strip_prefix("unused").and_then(|n| n.parse().ok()))
        .collect();
    for k in &deleted {
        if let Some(n) = k.strip_prefix("unused").and_then(|n| n.parse().ok()) {
            used.remove(&n);
        }
    }
    let mut out = Vec::new();
    for (k, old) in ct.conf.iter().filter(|(k, _)| is_mp_key(k)) {
        let old_vol = old.split(',').next().unwrap_or("");
        if old_vol.starts_with('/') || !old_vol.contains(':') {
            continue;
        }
        let replaced = params
            .get(k)
            .is_some_and(|new| new.split(',').next().unwrap_or("") != old_vol);
        if deleted.contains(k.as_str()) || replaced {
            let n = (0..).find(|n| !used.contains(n)).unwrap_or(0);
            used.insert(n);
            out.push((format!("unused{n}"), old_vol.to_string()));
        }
    }
    out
}

// ---------------------------------------------------------------- snapshots and features

/// The storage of a volid, if it is one of the node's.
pub fn storage_of<'a>(host: &'a Host, vol: &str) -> Option<&'a SimStorage> {
    parse_volid(vol).ok().and_then(|(s, _)| host.layout.get(s))
}

/// `has_feature('snapshot')` over the config's mount points: every volume on a storage that
/// can snapshot, and no bind or device mount (paths have no features). With `backup_only`
/// (vzdump's check) mount points not in the backup are skipped.
pub fn can_snapshot(host: &Host, conf: &BTreeMap<String, String>, backup_only: bool) -> bool {
    conf.iter()
        .filter(|(k, _)| k.as_str() == "rootfs" || is_mp_key(k))
        .filter(|(k, v)| !backup_only || k.as_str() == "rootfs" || mp_backed_up(v))
        .all(|(_, v)| {
            let vol = v.split(',').next().unwrap_or("");
            let vol = vol.strip_prefix("volume=").unwrap_or(vol);
            !vol.starts_with('/') && storage_of(host, vol).is_some_and(|s| s.kind.can_snapshot())
        })
}

pub fn is_mp_key(k: &str) -> bool {
    k.strip_prefix("mp")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// A volume mount point with `backup=1` (bind and device mounts never are).
pub fn mp_backed_up(v: &str) -> bool {
    let vol = v.split(',').next().unwrap_or("");
    !vol.starts_with('/')
        && v.split(',')
            .any(|p| matches!(p, "backup=1" | "backup=true" | "backup=yes" | "backup=on"))
}

/// `GET /nodes/{node}/lxc/{vmid}/feature?feature=snapshot|clone|copy[&snapname]`.
pub fn feature(
    host: &Host,
    vmid: u32,
    params: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let ct = host.local(vmid)?;
    let conf = match params.get("snapname") {
        Some(s) => {
            &ct.snapshots
                .get(s)
                .ok_or_else(|| ApiError::new(500, format!("snapshot '{s}' does not exist")))?
                .conf
        }
        None => &ct.conf,
    };
    let has = match params.get("feature").map(String::as_str) {
        Some("snapshot") => can_snapshot(host, conf, false),
        // clone/copy: every volume must be on a storage (no bind mounts).
        _ => conf
            .iter()
            .filter(|(k, _)| k.as_str() == "rootfs" || is_mp_key(k))
            .all(|(_, v)| !v.starts_with('/')),
    };
    Ok(json!({"hasFeature": u8::from(has)}))
}

/// ZFS rollback: `can't rollback, '<snap>' is not most recent snapshot on '<volid>'`.
/// "Most recent" is the snapshot whose successful `vzsnapshot` task ended last (snapshot
/// times have only seconds).
pub fn rollback_blocker(host: &Host, ct: &Ct, snap: &str) -> Option<String> {
    let target = ct.snapshots.get(snap)?;
    let newest = host
        .p
        .tasks
        .iter()
        .filter(|t| t.vmid == ct.vmid && t.done && t.exitstatus.as_deref() == Some("OK"))
        .filter_map(|t| match &t.effect {
            crate::state::Effect::SnapshotCreate { name, .. }
                if ct.snapshots.contains_key(name) =>
            {
                Some(name.as_str())
            }
            _ => None,
        })
        .next_back()
        .or_else(|| {
            ct.snapshots
                .iter()
                .max_by_key(|(_, s)| s.snaptime)
                .map(|(n, _)| n.as_str())
        })?;
    if newest == snap {
        return None;
    }
    config_volumes(&target.conf)
        .into_iter()
        .filter(|(k, _)| k == "rootfs" || is_mp_key(k))
        .find(|(_, vol)| storage_of(host, vol).is_some_and(|s| s.kind.rollback_newest_only()))
        .map(|(_, vol)| format!("can't rollback, '{snap}' is not most recent snapshot on '{vol}'"))
}

/// Frees a CT's volumes from the storage layer's records (their pretend data).
#[allow(dead_code)] // used by backup.rs
pub fn free_volumes(host: &mut Host, vols: &BTreeSet<String>) {
    for v in vols {
        host.p.storage.data.remove(v);
    }
}

/// Percent-decodes a path segment (volids arrive as `local%3Abackup%2F...`).
pub fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}
