//! Backups and restores as PVE runs them (`safety-nets.md` §1.1-§1.5, §3): `vzdump` tasks with
//! their modes, `lock: backup`, log lines and outcomes (`OK`, `WARNINGS: n`, `job errors`,
//! `unexpected status`, the plain `"OK"` answer); archives written as real files; protection,
//! notes and the protected-backup cap; pruning; `imgdel`; `vzdump/defaults` and
//! `extractconfig`; restore over an existing CT in PVE's destroy-then-extract order.
//!
//! Every task's outcome is decided when it ends (lazy time, like the rest of the simulator),
//! so a fault set while a backup runs still applies to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::archive::{self, Compression};
use crate::state::{ApiError, Ct, Effect, Host, Snapshot, Task};
use crate::storage::{self, StorageType, Volume};

/// What a storage task does when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    Vzdump(VzdumpJob),
    Restore(RestoreJob),
    /// `imgdel`: remove one volume.
    ImgDel {
        volid: String,
    },
    /// `prunebackups`: remove what the policy marks `remove`.
    Prune {
        storage: String,
        vmid: Option<u32>,
        policy: String,
    },
}

/// One `vzdump` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VzdumpJob {
    pub vmids: Vec<u32>,
    pub storage: String,
    pub mode: String,
    pub compress: String,
    pub protected: bool,
    pub remove: bool,
    pub notes_template: Option<String>,
    /// The global vzdump lock is held by a vzdump that never ends: this one gives up.
    pub lock_timeout: bool,
    /// CTs this run set `lock: backup` on (and removes it from at the end).
    pub locked: Vec<u32>,
    /// The caller holds `VM.Backup` (checked per guest inside the task, `exec_backup`).
    #[serde(default = "yes")]
    pub may_backup: bool,
}

fn yes() -> bool {
    true
}

/// Whether the calling token holds `VM.Backup` ([`crate::SimToken::vm_backup`]).
pub fn may_backup(shared: &crate::Shared, user: &str) -> bool {
    shared
        .config
        .tokens
        .iter()
        .find(|t| t.id == user)
        .is_none_or(|t| t.vm_backup)
}

/// `check_volume_access` for a backup archive: its owner's `VM.Backup`.
pub fn check_archive_access(
    shared: &crate::Shared,
    user: &str,
    volid: &str,
) -> Result<(), ApiError> {
    let Some((_, volname)) = volid.split_once(':') else {
        return Ok(());
    };
    if volname.starts_with("backup/") && !may_backup(shared, user) {
        let owner = owner_from_name(volname).unwrap_or(0);
        return Err(perm(&format!("/vms/{owner}"), "VM.Backup"));
    }
    Ok(())
}

/// One `vzrestore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreJob {
    pub vmid: u32,
    pub archive: String,
    pub storage: String,
    pub force: bool,
    pub unique: bool,
    pub start: bool,
    /// A CT with this vmid existed (a forced restore over it).
    pub existed: bool,
    /// Config keys given in the call (override the archive's; `rootfs` = advanced mode).
    pub given: BTreeMap<String, String>,
}

fn flag(params: &BTreeMap<String, String>, k: &str) -> Option<bool> {
    params.get(k).map(|v| matches!(v.as_str(), "1" | "true"))
}

fn perm(path: &str, privilege: &str) -> ApiError {
    ApiError::new(
        403,
        format!("Permission check failed ({path}, {privilege})"),
    )
}

/// The backup endpoints (everything of `storage_routes` that changes state, and the reads
/// that need archives).
pub async fn route(
    shared: &crate::Shared,
    method: &str,
    template: &str,
    path: &str,
    params: &BTreeMap<String, String>,
    user: &str,
) -> Result<Value, ApiError> {
    let sid = params.get("storage").cloned().unwrap_or_default();
    let volume = params.get("volume").cloned().unwrap_or_default();
    match (method, template) {
        ("POST", "/nodes/{node}/vzdump") => {
            let mut h = shared.lock();
            h.advance();
            let v = params
                .get("vmid")
                .and_then(|v| v.split([',', ' ', ';']).next()?.parse().ok());
            h.maybe_fault("vzdump", v.unwrap_or(0))?;
            let r = vzdump(&mut h, params, user, may_backup(shared, user))?;
            if let Some(upid) = r.as_str().filter(|u| u.starts_with("UPID:")) {
                h.record(method, path, v, "vzdump", Some(upid.to_string()), params);
            }
            shared.persist(&h);
            Ok(r)
        }
        ("GET", "/nodes/{node}/vzdump/defaults") => {
            let mut h = shared.lock();
            h.advance();
            defaults(&h, params)
        }
        ("GET", "/nodes/{node}/vzdump/extractconfig") => {
            check_archive_access(shared, user, &volume)?;
            let mut h = shared.lock();
            h.advance();
            extractconfig(&h, &volume)
        }
        ("PUT", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            check_archive_access(shared, user, &volume)?;
            let mut h = shared.lock();
            h.advance();
            update_attributes(&mut h, &sid, &volume, params)?;
            h.record(method, path, None, "content", None, params);
            shared.persist(&h);
            Ok(Value::Null)
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            check_archive_access(shared, user, &volume)?;
            let upid = {
                let mut h = shared.lock();
                h.advance();
                h.maybe_fault("imgdel", 0)?;
                let upid = delete_volume(&mut h, &sid, &volume, user)?;
                h.record(method, path, None, "imgdel", Some(upid.clone()), params);
                shared.persist(&h);
                upid
            };
            match params.get("delay").and_then(|d| d.parse::<u64>().ok()) {
                Some(d) => wait_briefly(shared, &upid, d).await,
                None => Ok(json!(upid)),
            }
        }
        ("GET", "/nodes/{node}/storage/{storage}/prunebackups") => {
            let mut h = shared.lock();
            h.advance();
            h.layout.require(&sid)?;
            let policy = policy_for(&h, &sid, params)?;
            let vmid = params.get("vmid").and_then(|v| v.parse().ok());
            let rows: Vec<Value> = prune_marks(&h, &sid, vmid, &policy)
                .into_iter()
                .map(|(v, mark)| {
                    json!({"volid": v.volid, "ctime": v.ctime, "mark": mark,
                           "type": v.subtype.clone().unwrap_or_else(|| "lxc".into()),
                           "vmid": v.vmid})
                })
                .collect();
            Ok(Value::Array(rows))
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/prunebackups") => {
            let mut h = shared.lock();
            h.advance();
            h.layout.require(&sid)?;
            let vmid: Option<u32> = params.get("vmid").and_then(|v| v.parse().ok());
            if vmid.is_none() {
                // Without `vmid` pruning needs Datastore.Allocate (`PruneBackups.pm`).
                return Err(perm(&format!("/storage/{sid}"), "Datastore.Allocate"));
            }
            let policy = policy_for(&h, &sid, params)?;
            let id = match vmid {
                Some(v) => format!("{v}@{sid}"),
                None => sid.clone(),
            };
            let upid = new_storage_task(
                &mut h,
                "prunebackups",
                0,
                &id,
                user,
                Job::Prune {
                    storage: sid.clone(),
                    vmid,
                    policy,
                },
            );
            h.record(
                method,
                path,
                vmid,
                "prunebackups",
                Some(upid.clone()),
                params,
            );
            shared.persist(&h);
            Ok(json!(upid))
        }
        ("POST", "/nodes/{node}/lxc") => {
            let vmid: u32 = params.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0);
            // An archive of another guest needs `VM.Backup` on its owner.
            let archive = params.get("ostemplate").cloned().unwrap_or_default();
            let owner = archive
                .split_once(':')
                .and_then(|(_, n)| owner_from_name(n));
            if owner != Some(vmid) {
                check_archive_access(shared, user, &archive)?;
            }
            crate::server::wait_flock(shared, vmid).await?;
            let mut h = shared.lock();
            h.advance();
            h.maybe_fault("vzrestore", vmid)?;
            let upid = restore(&mut h, params, user)?;
            h.record(
                method,
                path,
                Some(vmid),
                "restore",
                Some(upid.clone()),
                params,
            );
            shared.persist(&h);
            Ok(json!(upid))
        }
        ("GET", "/storage/{storage}") => {
            Err(perm(&format!("/storage/{sid}"), "Datastore.Allocate"))
        }
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /{path}' not implemented"),
        )),
    }
}

/// `DELETE ...?delay=N`: wait up to N seconds; `null` if the task ended OK, its error if it
/// failed, else the UPID.
async fn wait_briefly(shared: &crate::Shared, upid: &str, secs: u64) -> Result<Value, ApiError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        {
            let mut h = shared.lock();
            h.advance();
            if let Some(t) = h.p.tasks.iter().find(|t| t.upid == upid && t.done) {
                return match t.exitstatus.as_deref() {
                    Some("OK") => Ok(Value::Null),
                    Some(e) => Err(ApiError::new(500, e.to_string())),
                    None => Ok(json!(upid)),
                };
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(json!(upid));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A task whose UPID id is `id` (`101@local`, or empty for a vzdump of several guests).
fn new_storage_task(
    h: &mut Host,
    worker: &str,
    vmid: u32,
    id: &str,
    user: &str,
    job: Job,
) -> String {
    let upid = h.new_task(worker, vmid, user, Effect::Storage(job));
    let wanted = format!(":{worker}:{id}:");
    let fixed = upid.replacen(&format!(":{worker}:{vmid}:"), &wanted, 1);
    if let Some(t) = h.p.tasks.iter_mut().find(|t| t.upid == upid) {
        t.upid = fixed.clone();
    }
    fixed
}

fn log(h: &mut Host, upid: &str, line: impl Into<String>) {
    h.p.storage
        .task_logs
        .entry(upid.to_string())
        .or_default()
        .push(line.into());
}

/// The log of a storage task: its lines, then PVE's final status line (none for
/// `unexpected status`: the worker died before writing one).
pub fn task_log(h: &Host, t: &Task) -> Option<Vec<String>> {
    if !matches!(t.effect, Effect::Storage(_)) {
        return None;
    }
    let mut lines =
        h.p.storage
            .task_logs
            .get(&t.upid)
            .cloned()
            .unwrap_or_default();
    match t.exitstatus.as_deref() {
        None | Some("unexpected status") => {}
        Some("OK") => lines.push("TASK OK".into()),
        Some(w) if w.starts_with("WARNINGS: ") => lines.push(format!("TASK {w}")),
        Some(e) => lines.push(format!("TASK ERROR: {e}")),
    }
    Some(lines)
}

// ---------------------------------------------------------------- time

fn datetime(t: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `t` as `Y<d>M<d>D<mid>h<c>m<c>s<end>`: the three spellings PVE uses differ only in
/// their separators.
fn stamp(t: u64, date_sep: char, mid: char, time_sep: char, end: &str) -> String {
    let d = datetime(t);
    format!(
        "{:04}{date_sep}{:02}{date_sep}{:02}{mid}{:02}{time_sep}{:02}{time_sep}{:02}{end}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// `YYYY_MM_DD-HH_MM_SS` of vzdump file names (node local time; the sim's node runs in UTC).
fn file_stamp(t: u64) -> String {
    stamp(t, '_', '-', '_', "")
}

/// `2026-01-02T03:04:05Z` of PBS snapshot names.
fn pbs_stamp(t: u64) -> String {
    stamp(t, '-', 'T', ':', "Z")
}

/// `2026-01-02 03:04:05` of task log lines.
fn log_stamp(t: u64) -> String {
    stamp(t, '-', ' ', ':', "")
}

// ---------------------------------------------------------------- retention

/// A `prune-backups` value parsed (`Plugin.pm $prune_backups_format`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Policy {
    keep_all: bool,
    keep: Vec<(&'static str, u64)>,
}

const KEEP_KEYS: [&str; 6] = [
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
];

fn parse_policy(s: &str) -> Result<Policy, String> {
    let mut p = Policy::default();
    let mut given: BTreeMap<&str, u64> = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid format - missing value for '{part}'"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("invalid format - type check ('integer') failed - got '{v}'"))?;
        if k == "keep-all" {
            p.keep_all = n == 1;
            continue;
        }
        let key = KEEP_KEYS
            .iter()
            .find(|x| **x == k)
            .ok_or_else(|| format!("invalid format - property '{k}' is not defined"))?;
        given.insert(key, n);
    }
    if p.keep_all && given.values().any(|n| *n > 0) {
        return Err("keep-all cannot be set together with other options.".into());
    }
    for k in KEEP_KEYS {
        if let Some(n) = given.get(k).filter(|n| **n > 0) {
            p.keep.push((k, *n));
        }
    }
    if p.keep.is_empty() {
        p.keep_all = true;
    }
    Ok(p)
}

fn policy_text(p: &Policy) -> String {
    if p.keep_all {
        return "keep-all=1".into();
    }
    p.keep
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The policy in force: the call's `prune-backups`, else the storage's, else `keep-all=1`.
fn policy_for(h: &Host, sid: &str, params: &BTreeMap<String, String>) -> Result<String, ApiError> {
    let text = params
        .get("prune-backups")
        .cloned()
        .or_else(|| h.layout.get(sid).and_then(|s| s.prune_backups.clone()))
        .unwrap_or_else(|| "keep-all=1".into());
    let p = parse_policy(&text)
        .map_err(|e| ApiError::params(BTreeMap::from([("prune-backups".to_string(), e)])))?;
    Ok(policy_text(&p))
}

fn bucket(key: &str, ctime: u64) -> String {
    let d = datetime(ctime);
    match key {
        "keep-hourly" => format!(
            "{}/{}/{}/{}",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour()
        ),
        "keep-daily" => format!("{}/{}/{}", d.year(), u8::from(d.month()), d.day()),
        "keep-weekly" => {
            let (y, w, _) = d.date().to_iso_week_date();
            format!("{y}/{w}")
        }
        "keep-monthly" => format!("{}/{}", d.year(), u8::from(d.month())),
        "keep-yearly" => d.year().to_string(),
        _ => ctime.to_string(),
    }
}

/// `prune_mark_backup_group` for every group (`lxc/<vmid>`) on a storage: protected backups
/// are `protected` and never count, each option keeps the newest backup of each of its
/// first N buckets not already kept, the rest is `remove`. Newest first.
fn prune_marks(h: &Host, sid: &str, vmid: Option<u32>, policy: &str) -> Vec<(Volume, String)> {
    let p = parse_policy(policy).unwrap_or_default();
    let mut groups: BTreeMap<u32, Vec<Volume>> = BTreeMap::new();
    for v in h.p.storage.volumes.values() {
        if v.storage == sid
            && v.content == "backup"
            && let Some(id) = v.vmid
            && vmid.is_none_or(|w| w == id)
        {
            groups.entry(id).or_default().push(v.clone());
        }
    }
    let mut out = Vec::new();
    for (_, mut list) in groups {
        list.sort_by(|a, b| b.ctime.cmp(&a.ctime).then(b.volid.cmp(&a.volid)));
        let mut marks: Vec<Option<&'static str>> = list
            .iter()
            .map(|v| v.protected.then_some("protected"))
            .collect();
        if p.keep_all {
            for m in marks.iter_mut().filter(|m| m.is_none()) {
                *m = Some("keep");
            }
        }
        for (key, n) in &p.keep {
            let already: BTreeSet<String> = list
                .iter()
                .zip(&marks)
                .filter(|(_, m)| **m == Some("keep"))
                .map(|(v, _)| bucket(key, v.ctime))
                .collect();
            let mut newly: BTreeSet<String> = BTreeSet::new();
            for (i, v) in list.iter().enumerate() {
                if newly.len() as u64 >= *n {
                    break;
                }
                if marks[i].is_some() {
                    continue;
                }
                let b = bucket(key, v.ctime);
                if already.contains(&b) || newly.contains(&b) {
                    continue;
                }
                newly.insert(b);
                marks[i] = Some("keep");
            }
        }
        for (v, m) in list.into_iter().zip(marks) {
            out.push((v, m.unwrap_or("remove").to_string()));
        }
    }
    out
}

/// The sum of the keep options: how many unprotected backups a bounded policy allows
/// (`exec_backup_task`'s "max backup limit"); `None` for `keep-all`.
fn backup_limit(policy: &str) -> Option<u64> {
    let p = parse_policy(policy).ok()?;
    (!p.keep_all).then(|| p.keep.iter().map(|(_, n)| n).sum())
}

fn protected_cap(h: &Host, sid: &str) -> u32 {
    h.layout
        .get(sid)
        .and_then(|s| s.max_protected_backups)
        .unwrap_or(5)
}

fn protected_count(h: &Host, sid: &str, vmid: u32, except: &str) -> u32 {
    h.p.storage
        .volumes
        .values()
        .filter(|v| {
            v.storage == sid
                && v.content == "backup"
                && v.vmid == Some(vmid)
                && v.protected
                && v.volid != except
        })
        .count() as u32
}

fn cap_error(cap: u32, sid: &str) -> String {
    format!("The number of protected backups per guest is limited to {cap} on storage '{sid}'")
}

/// Removes a backup: record, archive and its `.notes`/`.protected`/`.log` companions.
fn remove_backup(h: &mut Host, volid: &str) {
    if let Some(v) = h.p.storage.volumes.remove(volid)
        && let Some(p) = &v.path
    {
        let _ = std::fs::remove_file(p);
        for ext in ["notes", "protected"] {
            let _ = std::fs::remove_file(companion(p, ext));
        }
        if let Some(log) = log_path(p) {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// `<archive>.notes`, `<archive>.protected`.
fn companion(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// `vzdump-lxc-101-....log` beside the archive.
fn log_path(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_str()?;
    let stem = name.split(".tar").next()?;
    Some(p.with_file_name(format!("{stem}.log")))
}

// ---------------------------------------------------------------- content attributes

/// `PUT .../content/{volume}`: `protected` (capped per guest) and `notes`, synchronously.
fn update_attributes(
    h: &mut Host,
    sid: &str,
    volid: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    h.layout.require(sid)?;
    let Some(v) = h.p.storage.volumes.get(volid).cloned() else {
        return Err(storage::no_volume(volid));
    };
    if v.content != "backup" {
        let attr = if params.contains_key("protected") {
            "protected"
        } else {
            "notes"
        };
        return Err(ApiError::new(
            500,
            format!("volume attribute '{attr}' is only supported for backups"),
        ));
    }
    if let Some(p) = flag(params, "protected") {
        if p && !v.protected {
            let cap = protected_cap(h, sid);
            if protected_count(h, sid, v.vmid.unwrap_or(0), volid) >= cap {
                return Err(ApiError::new(500, cap_error(cap, sid)));
            }
        }
        set_protected(h, volid, p);
    }
    if let Some(n) = params.get("notes") {
        set_notes(h, volid, n);
    }
    Ok(())
}

fn set_protected(h: &mut Host, volid: &str, p: bool) {
    if let Some(v) = h.p.storage.volumes.get_mut(volid) {
        v.protected = p;
        if let Some(path) = &v.path {
            let sentinel = companion(path, "protected");
            if p {
                let _ = std::fs::write(sentinel, b"");
            } else {
                let _ = std::fs::remove_file(sentinel);
            }
        }
    }
}

fn set_notes(h: &mut Host, volid: &str, notes: &str) {
    if let Some(v) = h.p.storage.volumes.get_mut(volid) {
        v.notes = (!notes.is_empty()).then(|| notes.to_string());
        if let Some(path) = &v.path {
            let f = companion(path, "notes");
            if notes.is_empty() {
                let _ = std::fs::remove_file(f);
            } else {
                let _ = std::fs::write(f, notes);
            }
        }
    }
}

/// `DELETE .../content/{volume}`: an `imgdel` task (id `<owner>@<storage>`). Backups need
/// `VM.Backup` (held); anything else `Datastore.Allocate` (not held by the sim's tokens).
fn delete_volume(h: &mut Host, sid: &str, volid: &str, user: &str) -> Result<String, ApiError> {
    h.layout.require(sid)?;
    let (vsid, volname) = storage::parse_volid(volid)?;
    if vsid != sid {
        return Err(ApiError::new(
            500,
            format!("volume '{volid}' is not on storage '{sid}'"),
        ));
    }
    let is_backup = volname.starts_with("backup/");
    if !is_backup {
        return Err(perm(&format!("/storage/{sid}"), "Datastore.Allocate"));
    }
    let owner =
        h.p.storage
            .volumes
            .get(volid)
            .and_then(|v| v.vmid)
            .or_else(|| owner_from_name(volname))
            .unwrap_or(0);
    Ok(new_storage_task(
        h,
        "imgdel",
        0,
        &format!("{owner}@{sid}"),
        user,
        Job::ImgDel {
            volid: volid.to_string(),
        },
    ))
}

/// The owner vmid in `backup/vzdump-lxc-101-...` or `backup/ct/101/...`.
fn owner_from_name(volname: &str) -> Option<u32> {
    let n = volname.strip_prefix("backup/")?;
    if let Some(rest) = n.strip_prefix("ct/") {
        return rest.split('/').next()?.parse().ok();
    }
    n.strip_prefix("vzdump-lxc-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------- reads

/// `GET /nodes/{node}/vzdump/defaults[?storage=X]`: the schema defaults merged with the
/// storage and its `prune-backups` (`read_vzdump_defaults`, `API2/VZDump.pm defaults`).
fn defaults(h: &Host, params: &BTreeMap<String, String>) -> Result<Value, ApiError> {
    let sid = params
        .get("storage")
        .cloned()
        .unwrap_or_else(|| "local".into());
    let s = h.layout.require(&sid)?;
    let mut o = json!({
        "all": 0, "bwlimit": 0, "compress": "0", "ionice": 7, "lockwait": 180,
        "mailnotification": "always", "mode": "snapshot", "notification-mode": "auto",
        "pigz": 0, "quiet": 0, "remove": 1, "stdexcludes": 1, "stop": 0, "stopwait": 10,
        "zstd": 1, "storage": sid,
    });
    o["prune-backups"] = s
        .prune_backups
        .clone()
        .unwrap_or_else(|| "keep-all=1".into())
        .into();
    Ok(o)
}

/// The bytes of a backup archive (its file, or PBS's copy).
fn archive_bytes(h: &Host, volid: &str) -> Result<Vec<u8>, String> {
    let v =
        h.p.storage
            .volumes
            .get(volid)
            .filter(|v| v.content == "backup")
            .ok_or_else(|| format!("volume '{volid}' does not exist"))?;
    match (&v.path, &v.payload) {
        (Some(p), _) => {
            std::fs::read(p).map_err(|e| format!("unable to open file '{}' - {e}", p.display()))
        }
        (None, Some(b)) => Ok(b.clone()),
        (None, None) => Err(format!("volume '{volid}' has no archive")),
    }
}

/// `GET /nodes/{node}/vzdump/extractconfig?volume=<volid>`: the archived `pct.conf`.
fn extractconfig(h: &Host, volid: &str) -> Result<Value, ApiError> {
    let (sid, volname) = storage::parse_volid(volid)?;
    h.layout.require(sid)?;
    if !volname.starts_with("backup/") {
        return Err(ApiError::new(
            500,
            format!("volume '{volid}' is not a backup archive"),
        ));
    }
    let bytes = archive_bytes(h, volid).map_err(|e| ApiError::new(500, e))?;
    let members = archive::read(&bytes).map_err(|e| ApiError::new(500, e))?;
    archive::config_of(&members)
        .map(Value::String)
        .map_err(|e| ApiError::new(500, e))
}

// ---------------------------------------------------------------- config text

/// The `pct.conf` vzdump archives: the config without `lock`, `parent` and snapshot
/// sections (`VZDump/LXC.pm assemble`), with a pending section if there is one.
pub fn archived_config(ct: &Ct) -> String {
    let mut out = String::new();
    if let Some(d) = ct.conf.get("description") {
        for line in d.trim_end_matches('\n').split('\n') {
            out.push('#');
            out.push_str(line);
            out.push('\n');
        }
    }
    for (k, v) in &ct.conf {
        if !matches!(k.as_str(), "description" | "lock" | "parent") {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    if !ct.pending.is_empty() {
        out.push_str("\n[pve:pending]\n");
        for (k, v) in &ct.pending {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    out
}

/// The main section of a config text (comment lines are the description).
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut conf = BTreeMap::new();
    let mut descr = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            break;
        }
        if let Some(c) = line.strip_prefix('#') {
            descr.push_str(c);
            descr.push('\n');
        } else if let Some((k, v)) = line.split_once(": ") {
            conf.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if !descr.is_empty() {
        conf.insert("description".into(), descr);
    }
    conf
}

fn mount_path(key: &str, v: &str) -> String {
    if key == "rootfs" {
        return "/".into();
    }
    v.split(',')
        .find_map(|p| p.strip_prefix("mp="))
        .unwrap_or("")
        .to_string()
}

fn volume_of(v: &str) -> String {
    let first = v.split(',').next().unwrap_or("");
    first.strip_prefix("volume=").unwrap_or(first).to_string()
}

// ---------------------------------------------------------------- vzdump

fn vzdump(
    h: &mut Host,
    params: &BTreeMap<String, String>,
    user: &str,
    may_backup: bool,
) -> Result<Value, ApiError> {
    if ["bwlimit", "ionice", "performance"]
        .iter()
        .any(|k| params.contains_key(*k))
    {
        return Err(perm("/", "Sys.Modify"));
    }
    if ["tmpdir", "dumpdir", "script", "job-id"]
        .iter()
        .any(|k| params.contains_key(*k))
    {
        return Err(ApiError::new(500, "Only root may set this option."));
    }
    for k in ["protected", "notes-template"] {
        if params.contains_key(k) && !params.contains_key("storage") {
            return Err(ApiError::params(BTreeMap::from([(
                "storage".to_string(),
                format!("missing property - '{k}' requires this property"),
            )])));
        }
    }
    let sid = params
        .get("storage")
        .cloned()
        .unwrap_or_else(|| "local".into());
    h.layout.require(&sid)?;
    if params.contains_key("prune-backups") {
        return Err(perm(&format!("/storage/{sid}"), "Datastore.Allocate"));
    }
    if params.contains_key("stop") {
        return Err(perm(&format!("/nodes/{}", h.node), "Sys.Modify"));
    }
    let all = flag(params, "all").unwrap_or(false);
    let mut wanted: Vec<u32> = Vec::new();
    if let Some(list) = params.get("vmid") {
        for p in list.split([',', ' ', ';']).filter(|p| !p.is_empty()) {
            let v = p.parse().map_err(|_| {
                ApiError::params(BTreeMap::from([(
                    "vmid".to_string(),
                    format!("value '{p}' does not look like a valid VM ID"),
                )]))
            })?;
            wanted.push(v);
        }
    }
    if all {
        wanted =
            h.p.cts
                .values()
                .filter(|c| c.node == h.node)
                .map(|c| c.vmid)
                .collect();
    } else if wanted.is_empty() {
        return Err(ApiError::new(
            500,
            "No guest specified - use 'vmid', 'pool' or 'all'.",
        ));
    }
    // Guests on other nodes are theirs; vmids of no guest stay and fail visibly later.
    let local: Vec<u32> = wanted
        .into_iter()
        .filter(|v| h.p.cts.get(v).is_none_or(|c| c.node == h.node))
        .collect();
    if local.is_empty() && !all {
        return Ok(json!("OK"));
    }
    // One vzdump per node at a time (`/var/run/vzdump.lock`).
    let other =
        h.p.tasks
            .iter()
            .filter(|t| !t.done && t.node == h.node && t.worker_type == "vzdump")
            .map(|t| t.ends_at_ms)
            .collect::<Vec<_>>();
    // A vzdump that never ends outlasts any `lockwait`; with `lockwait=0` any running one does.
    let no_wait = params.get("lockwait").is_some_and(|w| w == "0");
    let lock_timeout = other.iter().any(Option::is_none) || (no_wait && !other.is_empty());
    let behind = other
        .iter()
        .flatten()
        .max()
        .copied()
        .filter(|_| !lock_timeout);
    let mode = params
        .get("mode")
        .cloned()
        .unwrap_or_else(|| "snapshot".into());
    let job = VzdumpJob {
        vmids: local.clone(),
        storage: sid.clone(),
        mode,
        compress: params
            .get("compress")
            .cloned()
            .unwrap_or_else(|| "0".into()),
        protected: flag(params, "protected").unwrap_or(false),
        remove: flag(params, "remove").unwrap_or(true),
        notes_template: params.get("notes-template").cloned(),
        lock_timeout,
        locked: Vec::new(),
        may_backup,
    };
    let (vmid, id) = match local.as_slice() {
        [one] => (*one, one.to_string()),
        _ => (0, String::new()),
    };
    let upid = new_storage_task(h, "vzdump", vmid, &id, user, Job::Vzdump(job));
    // Queued behind a running vzdump: this one ends after it.
    if let Some(end) = behind {
        let d = h.task_duration.as_millis() as u64;
        if let Some(t) = h.p.tasks.iter_mut().find(|t| t.upid == upid)
            && t.ends_at_ms.is_some()
        {
            t.ends_at_ms = Some(end + d);
        }
    }
    let mut cmd = format!(
        "vzdump {}",
        local
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (k, v) in params {
        if !matches!(k.as_str(), "vmid" | "node") {
            let v = if v.contains(' ') || v.contains(':') {
                format!("'{v}'")
            } else {
                v.clone()
            };
            cmd.push_str(&format!(" --{k} {v}"));
        }
    }
    log(h, &upid, format!("INFO: starting new backup job: {cmd}"));
    if lock_timeout || behind.is_some() {
        log(h, &upid, "INFO: trying to get global lock - waiting...");
    }
    if lock_timeout {
        return Ok(json!(upid));
    }
    // `lock: backup` on every guest that can take it, and the temporary `vzdump` snapshot.
    let mut locked = Vec::new();
    for v in &local {
        let snapshot_mode = params.get("mode").is_none_or(|m| m == "snapshot");
        let can_snap =
            h.p.cts
                .get(v)
                .is_some_and(|c| storage::can_snapshot(h, &c.conf, true));
        if let Some(ct) = h.p.cts.get_mut(v)
            && !ct.conf.contains_key("lock")
        {
            ct.conf.insert("lock".into(), "backup".into());
            locked.push(*v);
            if snapshot_mode && ct.running && can_snap {
                let snap = Snapshot {
                    description: "vzdump backup snapshot".into(),
                    snaptime: crate::state::unix_now(),
                    conf: ct.conf.clone(),
                };
                ct.snapshots.insert("vzdump".into(), snap);
            }
        }
    }
    if let Some(t) = h.p.tasks.iter_mut().find(|t| t.upid == upid)
        && let Effect::Storage(Job::Vzdump(j)) = &mut t.effect
    {
        j.locked = locked;
    }
    Ok(json!(upid))
}

/// How one guest's backup ended.
enum GuestOutcome {
    Done {
        warnings: u32,
    },
    Failed(String),
    /// The worker died (fault `vzdump_crash`): no more lines, lock and `.dat` left.
    Crashed,
}

fn finish_vzdump(h: &mut Host, t: &Task, job: &VzdumpJob) -> String {
    let upid = t.upid.clone();
    if job.lock_timeout {
        log(
            h,
            &upid,
            "ERROR: can't acquire lock '/var/run/vzdump.lock' - got timeout",
        );
        return "unexpected status".into();
    }
    if !h
        .layout
        .get(&job.storage)
        .is_some_and(|s| s.has_content("backup"))
    {
        unlock(h, job);
        return format!("storage '{}' does not support backups", job.storage);
    }
    let mut errors = 0;
    let mut warnings = 0;
    for &vmid in &job.vmids {
        match backup_one(h, t, job, vmid) {
            GuestOutcome::Done { warnings: w } => warnings += w,
            GuestOutcome::Failed(e) => {
                errors += 1;
                log(h, &upid, format!("ERROR: Backup of VM {vmid} failed - {e}"));
                log(
                    h,
                    &upid,
                    format!("INFO: Failed at {}", log_stamp(crate::state::unix_now())),
                );
            }
            GuestOutcome::Crashed => return "unexpected status".into(),
        }
        if let Some(ct) = h.p.cts.get_mut(&vmid)
            && job.locked.contains(&vmid)
        {
            if ct.conf.get("lock").is_some_and(|l| l == "backup") {
                ct.conf.remove("lock");
            }
            if ct.snapshots.remove("vzdump").is_some() {
                log(h, &upid, "INFO: cleanup temporary 'vzdump' snapshot");
            }
        }
    }
    if errors > 0 {
        log(h, &upid, "INFO: Backup job finished with errors");
        "job errors".into()
    } else {
        log(h, &upid, "INFO: Backup job finished successfully");
        if warnings > 0 {
            format!("WARNINGS: {warnings}")
        } else {
            "OK".into()
        }
    }
}

fn unlock(h: &mut Host, job: &VzdumpJob) {
    for v in &job.locked {
        if let Some(ct) = h.p.cts.get_mut(v) {
            if ct.conf.get("lock").is_some_and(|l| l == "backup") {
                ct.conf.remove("lock");
            }
            ct.snapshots.remove("vzdump");
        }
    }
}

fn render_notes(template: &str, ct: &Ct, vmid: u32, node: &str) -> String {
    let name = ct.conf.get("hostname").cloned().unwrap_or_default();
    let mut out = template
        .replace("{{cluster}}", "")
        .replace("{{guestname}}", &name)
        .replace("{{node}}", node)
        .replace("{{vmid}}", &vmid.to_string());
    out = out.replace("\\n", "\n").replace("\\\\", "\\");
    out
}

fn backup_one(h: &mut Host, t: &Task, job: &VzdumpJob, vmid: u32) -> GuestOutcome {
    let upid = t.upid.clone();
    let Some(ct) = h.p.cts.get(&vmid).filter(|c| c.node == h.node).cloned() else {
        return GuestOutcome::Failed(format!("unable to find VM {vmid}"));
    };
    log(
        h,
        &upid,
        format!("INFO: Starting Backup of VM {vmid} (lxc)"),
    );
    log(
        h,
        &upid,
        format!("INFO: Backup started at {}", log_stamp(t.starttime)),
    );
    if !job.locked.contains(&vmid) {
        let l = ct.conf.get("lock").cloned().unwrap_or_default();
        return GuestOutcome::Failed(format!("CT is locked ({l})"));
    }
    if !job.may_backup {
        return GuestOutcome::Failed(format!("Permission check failed (/vms/{vmid}, VM.Backup)"));
    }
    if let Some(m) = &t.fail {
        return GuestOutcome::Failed(m.clone());
    }
    if let Some(reason) = h.faults.storage.vzdump_fail.get(&vmid) {
        return GuestOutcome::Failed(reason.clone());
    }
    log(
        h,
        &upid,
        format!(
            "INFO: status = {}",
            if ct.running { "running" } else { "stopped" }
        ),
    );
    log(
        h,
        &upid,
        format!(
            "INFO: CT Name: {}",
            ct.conf.get("hostname").cloned().unwrap_or_default()
        ),
    );
    // Which mount points are in the backup (`get_backup_volumes`).
    let mut included: Vec<(String, String)> = Vec::new();
    for (k, v) in ct
        .conf
        .iter()
        .filter(|(k, _)| k.as_str() == "rootfs" || storage::is_mp_key(k))
    {
        let path = mount_path(k, v);
        if k == "rootfs" {
            log(
                h,
                &upid,
                "INFO: including mount point rootfs ('/') in backup",
            );
            included.push((volume_of(v), path));
        } else if volume_of(v).starts_with('/') {
            log(
                h,
                &upid,
                format!(
                    "INFO: excluding bind mount point {k} ('{path}') from backup (not a volume)"
                ),
            );
        } else if storage::mp_backed_up(v) {
            log(
                h,
                &upid,
                format!("INFO: including mount point {k} ('{path}') in backup"),
            );
            included.push((volume_of(v), path));
        } else {
            log(
                h,
                &upid,
                format!("INFO: excluding volume mount point {k} ('{path}') from backup (disabled)"),
            );
        }
    }
    // A stopped CT is always backed up in stop mode; snapshot falls back to suspend.
    let mut mode = if ct.running {
        job.mode.clone()
    } else {
        "stop".to_string()
    };
    if mode == "snapshot" && !storage::can_snapshot(h, &ct.conf, true) {
        log(
            h,
            &upid,
            "INFO: mode failure - some volumes do not support snapshots",
        );
        log(h, &upid, "INFO: trying 'suspend' mode instead");
        mode = "suspend".into();
    }
    log(h, &upid, format!("INFO: backup mode: {mode}"));
    log(h, &upid, "INFO: ionice priority: 7");
    match mode.as_str() {
        "snapshot" => log(h, &upid, "INFO: create storage snapshot 'vzdump'"),
        "suspend" => {
            log(
                h,
                &upid,
                "INFO: starting first sync /proc/1/root/ to /var/tmp/vzdumptmp",
            );
            log(h, &upid, "INFO: suspending guest");
            log(
                h,
                &upid,
                "INFO: starting final sync /proc/1/root/ to /var/tmp/vzdumptmp",
            );
            log(h, &upid, "INFO: resuming guest");
        }
        _ if ct.running => log(h, &upid, "INFO: stopping virtual guest"),
        _ => {}
    }
    let sid = job.storage.clone();
    let Some(s) = h.layout.get(&sid).cloned() else {
        return GuestOutcome::Failed(format!("storage '{sid}' does not exist"));
    };
    // Retention checks before writing (`exec_backup_task`).
    if job.protected {
        let cap = protected_cap(h, &sid);
        if protected_count(h, &sid, vmid, "") >= cap {
            return GuestOutcome::Failed(cap_error(cap, &sid));
        }
    }
    let policy = s
        .prune_backups
        .clone()
        .unwrap_or_else(|| "keep-all=1".into());
    if !job.protected
        && !job.remove
        && let Some(limit) = backup_limit(&policy)
    {
        let count = h
            .p
            .storage
            .volumes
            .values()
            .filter(|v| {
                v.storage == sid && v.vmid == Some(vmid) && v.content == "backup" && !v.protected
            })
            .count() as u64;
        if count >= limit {
            return GuestOutcome::Failed(format!(
                "There is a max backup limit of {limit} enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups."
            ));
        }
    }
    // The archive: pct.conf first, then each included mount point's data.
    let mut files = vec![(
        archive::CONF_MEMBER.to_string(),
        archived_config(&ct).into_bytes(),
    )];
    for (vol, path) in &included {
        if let Some(d) = h.p.storage.data.get(vol) {
            files.push((archive::data_member(path), d.clone().into_bytes()));
        }
    }
    // A unique backup time per guest and storage (vzdump runs take seconds; the sim's don't).
    // A backup is always the newest of its group, so it sorts after the ones before it.
    let newest =
        h.p.storage
            .volumes
            .values()
            .filter(|v| v.storage == sid && v.vmid == Some(vmid) && v.content == "backup")
            .map(|v| v.ctime + 1)
            .max()
            .unwrap_or(0);
    let when = t.starttime.max(newest);
    let tar = archive::tar(&files, when);
    let total = tar.len();
    let compression = Compression::from_param(Some(job.compress.as_str()));
    let bytes = archive::wrap(tar, compression);
    let no_space =
        h.faults.storage.no_space.contains(&sid) || bytes.len() as u64 > storage::avail(h, &sid);
    let (volid, path, payload, format) = if s.kind == StorageType::Pbs {
        let name = format!("ct/{vmid}/{}", pbs_stamp(when));
        log(
            h,
            &upid,
            format!("INFO: creating Proxmox Backup Server archive '{name}'"),
        );
        if no_space {
            return GuestOutcome::Failed(
                "backup write data failed: command error: No space left on device (os error 28)"
                    .into(),
            );
        }
        (
            format!("{sid}:backup/{name}"),
            None,
            Some(bytes.clone()),
            "pbs-ct".to_string(),
        )
    } else {
        let name = format!(
            "vzdump-lxc-{vmid}-{}.{}",
            file_stamp(when),
            compression.ext()
        );
        let dir = h.layout.dump_dir(&sid);
        let final_path = dir.join(&name);
        let dat = dir.join(format!("vzdump-lxc-{vmid}-{}.tar.dat", file_stamp(when)));
        log(
            h,
            &upid,
            format!("INFO: creating vzdump archive '{}'", final_path.display()),
        );
        if h.faults.storage.vzdump_crash.contains(&vmid) {
            let _ = std::fs::write(&dat, &bytes[..bytes.len() / 2]);
            return GuestOutcome::Crashed;
        }
        if no_space {
            log(
                h,
                &upid,
                format!(
                    "INFO: tar: {}: Cannot write: No space left on device",
                    dat.display()
                ),
            );
            return GuestOutcome::Failed(format!(
                "command 'set -o pipefail && tar cpf - --totals --one-file-system ./etc/vzdump/pct.conf ./ | zstd' failed: exit code 2 (writing '{}': No space left on device)",
                dat.display()
            ));
        }
        if let Err(e) =
            std::fs::write(&dat, &bytes).and_then(|_| std::fs::rename(&dat, &final_path))
        {
            let _ = std::fs::remove_file(&dat);
            return GuestOutcome::Failed(format!(
                "unable to write '{}' - {e}",
                final_path.display()
            ));
        }
        (
            format!("{sid}:backup/{name}"),
            Some(final_path),
            None,
            compression.ext().to_string(),
        )
    };
    if mode == "stop" && ct.running {
        log(h, &upid, "INFO: restarting vm");
    }
    log(
        h,
        &upid,
        format!("INFO: Total bytes written: {total} ({total}B, 1.0MiB/s)"),
    );
    log(
        h,
        &upid,
        format!("INFO: archive file size: {}B", bytes.len()),
    );
    h.p.storage.volumes.insert(
        volid.clone(),
        Volume {
            volid: volid.clone(),
            storage: sid.clone(),
            content: "backup".into(),
            format,
            vmid: Some(vmid),
            subtype: Some("lxc".into()),
            size: bytes.len() as u64,
            ctime: when,
            notes: None,
            protected: false,
            path: path.clone(),
            payload,
        },
    );
    if let Some(p) = &path
        && let Some(lp) = log_path(p)
    {
        let lines =
            h.p.storage
                .task_logs
                .get(&upid)
                .cloned()
                .unwrap_or_default();
        let _ = std::fs::write(lp, lines.join("\n") + "\n");
    }
    let mut warnings = 0;
    if let Some(tmpl) = &job.notes_template {
        log(h, &upid, "INFO: adding notes to backup");
        if h.faults.storage.notes_fail.contains(&vmid) {
            warnings += 1;
            log(
                h,
                &upid,
                format!(
                    "WARN: unable to add notes - unable to open file '{volid}.notes' - Permission denied"
                ),
            );
        } else {
            let notes = render_notes(tmpl, &ct, vmid, &h.node.clone());
            set_notes(h, &volid, &notes);
        }
    }
    if job.protected {
        log(h, &upid, "INFO: marking backup as protected");
        set_protected(h, &volid, true);
    }
    if job.remove && backup_limit(&policy).is_some() {
        log(
            h,
            &upid,
            format!("INFO: prune older backups with retention: {policy}"),
        );
        let removed: Vec<String> = prune_marks(h, &sid, Some(vmid), &policy)
            .into_iter()
            .filter(|(_, m)| m == "remove")
            .map(|(v, _)| v.volid)
            .collect();
        for v in &removed {
            log(h, &upid, format!("INFO: removing backup '{v}'"));
            remove_backup(h, v);
        }
        log(
            h,
            &upid,
            format!(
                "INFO: pruned {} backup(s) not covered by keep-retention policy",
                removed.len()
            ),
        );
    }
    log(
        h,
        &upid,
        format!("INFO: Finished Backup of VM {vmid} (00:00:01)"),
    );
    log(
        h,
        &upid,
        format!(
            "INFO: Backup finished at {}",
            log_stamp(crate::state::unix_now())
        ),
    );
    GuestOutcome::Done { warnings }
}

// ---------------------------------------------------------------- restore

/// Keys of the create call that steer the restore rather than configure the CT.
const RESTORE_CONTROL: &[&str] = &[
    "vmid",
    "node",
    "ostemplate",
    "restore",
    "force",
    "unique",
    "storage",
    "start",
    "pool",
    "bwlimit",
    "ignore-unpack-errors",
    "ha-managed",
    "password",
    "ssh-public-keys",
];

/// `POST /nodes/{node}/lxc` with `restore=1`: PVE's synchronous checks (`create_vm`), then
/// `lock: create` on the (existing or new) config and a `vzrestore` task.
fn restore(
    h: &mut Host,
    params: &BTreeMap<String, String>,
    user: &str,
) -> Result<String, ApiError> {
    let vmid: u32 = params
        .get("vmid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::new(400, "vmid missing"))?;
    let archive = params.get("ostemplate").cloned().unwrap_or_default();
    let force = flag(params, "force").unwrap_or(false);
    let existing = h.p.cts.get(&vmid).cloned();
    if let Some(ct) = &existing {
        if !force || ct.node != h.node {
            return Err(ApiError::new(
                500,
                format!("CT {vmid} already exists on node '{}'", ct.node),
            ));
        }
        if ct.running {
            return Err(ApiError::new(500, "can't overwrite running container"));
        }
        if ct.conf.get("protection").is_some_and(|p| p == "1") {
            return Err(ApiError::new(
                500,
                format!("unable to restore CT {vmid} - protection mode enabled"),
            ));
        }
    }
    let (asid, _) = storage::parse_volid(&archive)?;
    h.layout.require(asid)?;
    let sid = params
        .get("storage")
        .cloned()
        .unwrap_or_else(|| "local".into());
    let mut targets = vec![sid.clone()];
    for (_, v) in params
        .iter()
        .filter(|(k, _)| k.as_str() == "rootfs" || storage::is_mp_key(k))
    {
        if let Some((s, _)) = volume_of(v).split_once(':') {
            targets.push(s.to_string());
        }
    }
    for s in targets {
        let st = h.layout.require(&s)?;
        if !st.has_content("rootdir") {
            return Err(ApiError::params(BTreeMap::from([(
                "storage".to_string(),
                format!("storage '{s}' does not support container directories"),
            )])));
        }
    }
    // `create_and_lock_config`: any lock refuses; the config (old or placeholder) gets
    // `lock: create`.
    if let Some(ct) = &existing {
        Host::check_lock(ct)?;
    }
    match h.p.cts.get_mut(&vmid) {
        Some(ct) => {
            ct.conf.insert("lock".into(), "create".into());
        }
        None => {
            h.p.cts.insert(
                vmid,
                Ct {
                    vmid,
                    node: h.node.clone(),
                    running: false,
                    conf: BTreeMap::from([("lock".to_string(), "create".to_string())]),
                    pending: BTreeMap::new(),
                    pending_delete: Default::default(),
                    snapshots: BTreeMap::new(),
                    started_at: 0,
                    pid: 0,
                },
            );
        }
    }
    let given: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| !RESTORE_CONTROL.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let job = RestoreJob {
        vmid,
        archive,
        storage: sid,
        force,
        unique: flag(params, "unique").unwrap_or(false),
        start: flag(params, "start").unwrap_or(false),
        existed: existing.is_some(),
        given,
    };
    Ok(new_storage_task(
        h,
        "vzrestore",
        vmid,
        &vmid.to_string(),
        user,
        Job::Restore(job),
    ))
}

/// The worker of a restore, in `create_vm`'s order: read the archive (a failure only drops
/// the lock), then new volumes, then the old CT's volumes freed, then extraction and the
/// merged config. Any failure from the allocation on destroys the config: the CT is gone.
fn finish_restore(h: &mut Host, t: &Task, job: &RestoreJob) -> String {
    let upid = t.upid.clone();
    let vmid = job.vmid;
    let fail_early = |h: &mut Host, e: String| -> String {
        if job.existed {
            if let Some(ct) = h.p.cts.get_mut(&vmid) {
                ct.conf.remove("lock");
            }
        } else {
            h.p.cts.remove(&vmid);
        }
        format!("unable to restore CT {vmid} - {e}")
    };
    log(
        h,
        &upid,
        format!("recovering backed-up configuration from '{}'", job.archive),
    );
    let bytes = match archive_bytes(h, &job.archive) {
        Ok(b) => b,
        Err(e) => return fail_early(h, e),
    };
    let archived = match archive::read_head(&bytes) {
        Ok((name, conf)) if name == archive::CONF_MEMBER => {
            parse_config(&String::from_utf8_lossy(&conf))
        }
        Ok(_) => {
            return fail_early(
                h,
                "unable to extract configuration: archive contains no pct.conf".into(),
            );
        }
        Err(e) => return fail_early(h, e),
    };
    let token = user_is_token(&t.user);
    // The volumes to create: the archive's (simple mode) or the given ones (advanced).
    let advanced = job.given.contains_key("rootfs");
    let mut wanted: Vec<(String, String)> = Vec::new();
    if advanced {
        for (k, v) in job
            .given
            .iter()
            .filter(|(k, _)| k.as_str() == "rootfs" || storage::is_mp_key(k))
        {
            wanted.push((k.clone(), v.clone()));
        }
    } else {
        for (k, v) in archived
            .iter()
            .filter(|(k, _)| k.as_str() == "rootfs" || storage::is_mp_key(k))
        {
            if volume_of(v).starts_with('/') {
                if token {
                    return fail_early(
                        h,
                        format!("restoring '{k}' to bind mount is only possible for root"),
                    );
                }
                continue;
            }
            let Some(size) = v.split(',').find_map(|p| p.strip_prefix("size=")) else {
                return fail_early(
                    h,
                    format!("unable to detect disk size - please specify {k} (size)"),
                );
            };
            let gib = storage::parse_size(size) as f64 / storage::GIB as f64;
            let mut spec = format!("{}:{gib}", job.storage);
            for p in v.split(',').skip(1).filter(|p| !p.starts_with("size=")) {
                spec.push(',');
                spec.push_str(p);
            }
            wanted.push((k.clone(), spec));
        }
    }
    // From here on a failure destroys the config (`$destroy_config_on_error`).
    let fail_late = |h: &mut Host, e: String| -> String {
        if let Some(ct) = h.p.cts.remove(&vmid) {
            storage::free_volumes(h, &storage::ct_volumes(&ct));
        }
        format!("unable to restore CT {vmid} - {e}")
    };
    let order: BTreeMap<String, String> = wanted.into_iter().collect();
    let mut new_conf: BTreeMap<String, String> = BTreeMap::new();
    let mut allocated: Vec<String> = Vec::new();
    for (k, v) in storage::disks_in_order(&order, "") {
        if v.is_empty() {
            continue;
        }
        let vsid = volume_of(&v).split(':').next().unwrap_or("").to_string();
        if h.faults.storage.no_space.contains(&vsid) {
            return fail_late(
                h,
                format!(
                    "lvcreate 'pve/vm-{vmid}-disk-{}' error:   Insufficient free space",
                    allocated.len()
                ),
            );
        }
        let also: Vec<&str> = allocated.iter().map(String::as_str).collect();
        match storage::allocate(h, vmid, &v, &also) {
            Ok(Some(a)) => {
                allocated.push(volume_of(&a));
                new_conf.insert(k, a);
            }
            Ok(None) => {
                new_conf.insert(k, v);
            }
            Err(e) => return fail_late(h, e.message),
        }
    }
    // The old CT's volumes (and their snapshots) go before extraction.
    if let Some(old) = h.p.cts.get(&vmid).cloned() {
        storage::free_volumes(h, &storage::ct_volumes(&old));
        if let Some(ct) = h.p.cts.get_mut(&vmid) {
            ct.conf = BTreeMap::from([("lock".to_string(), "create".to_string())]);
            ct.pending.clear();
            ct.snapshots.clear();
        }
    }
    if h.faults.storage.restore_crash.contains(&vmid) {
        return "unexpected status".into();
    }
    log(h, &upid, format!("restoring '{}' now..", job.archive));
    let shown =
        h.p.storage
            .volumes
            .get(&job.archive)
            .and_then(|v| v.path.clone())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| job.archive.clone());
    log(h, &upid, format!("extracting archive '{shown}'"));
    if h.faults.storage.restore_fail.contains(&vmid)
        || h.faults
            .storage
            .restore_fail_archives
            .contains(&job.archive)
    {
        return fail_late(
            h,
            "command 'lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- tar xpf - --zstd --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs --xattrs-include=user.* --xattrs-include=security.capability --warning=no-file-ignored --warning=no-xattr-write -C /var/lib/lxc/".to_string()
                + &format!("{vmid}/rootfs --skip-old-files --anchored --exclude './dev/*'' failed: exit code 2"),
        );
    }
    let members = match archive::read(&bytes) {
        Ok(m) => m,
        Err(e) => return fail_late(h, format!("command 'tar xpf -' failed: {e}")),
    };
    let data: BTreeMap<String, String> = members
        .iter()
        .filter(|(n, _)| n.ends_with(archive::DATA_FILE))
        .map(|(n, d)| (n.clone(), String::from_utf8_lossy(d).into_owned()))
        .collect();
    for (k, v) in &new_conf {
        let member = archive::data_member(&mount_path(k, v));
        match data.get(&member) {
            Some(d) => {
                h.p.storage.data.insert(volume_of(v), d.clone());
            }
            None => {
                h.p.storage.data.remove(&volume_of(v));
            }
        }
    }
    let total: usize = members.iter().map(|(_, d)| d.len()).sum();
    log(
        h,
        &upid,
        format!("Total bytes read: {total} ({total}B, 1.0MiB/s)"),
    );
    log(h, &upid, "merging backed-up and given configuration..");
    let mut warnings = 0;
    let mut skipped = Vec::new();
    for (k, v) in &archived {
        if k == "rootfs"
            || storage::is_disk_key(k)
            || matches!(k.as_str(), "parent" | "digest" | "lock")
        {
            continue;
        }
        if k.starts_with("lxc.") && token {
            skipped.push(format!("{k}: {v}"));
            continue;
        }
        if k == "unprivileged" && job.given.contains_key(k) {
            continue;
        }
        new_conf.insert(k.clone(), v.clone());
    }
    for (k, v) in &job.given {
        if k == "rootfs" || storage::is_mp_key(k) {
            continue;
        }
        new_conf.insert(k.clone(), crate::state::normalize(vmid, k, v));
    }
    if !skipped.is_empty() {
        warnings += 1;
        log(
            h,
            &upid,
            "WARN: skipping custom lxc options, restore manually as root:",
        );
        log(h, &upid, "WARN: --------------------------------");
        for s in skipped {
            log(h, &upid, format!("WARN: {s}"));
        }
        log(h, &upid, "WARN: --------------------------------");
    }
    if job.unique {
        let keys: Vec<String> = new_conf
            .keys()
            .filter(|k| k.starts_with("net"))
            .cloned()
            .collect();
        for k in keys {
            use rand::Rng;
            let mac = format!(
                "BC:24:11:{:02X}:{:02X}:{:02X}",
                h.rng.r#gen::<u8>(),
                h.rng.r#gen::<u8>(),
                h.rng.r#gen::<u8>()
            );
            if let Some(v) = new_conf.get_mut(&k) {
                *v = v
                    .split(',')
                    .map(|p| {
                        if p.starts_with("hwaddr=") {
                            format!("hwaddr={mac}")
                        } else {
                            p.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",");
            }
        }
    }
    match h.p.cts.get_mut(&vmid) {
        Some(ct) => {
            ct.conf = new_conf;
            ct.pending.clear();
            ct.running = job.start;
        }
        None => return format!("unable to restore CT {vmid} - configuration lost"),
    }
    if warnings > 0 {
        format!("WARNINGS: {warnings}")
    } else {
        "OK".into()
    }
}

fn user_is_token(user: &str) -> bool {
    user != "root@pam"
}

// ---------------------------------------------------------------- task end

/// Ends a storage task: its effect and its exit status (`OK`, `WARNINGS: n`, an error).
pub fn finish(h: &mut Host, t: &Task, job: &Job) -> String {
    match job {
        Job::Vzdump(j) => {
            let exit = finish_vzdump(h, t, j);
            if exit != "unexpected status" {
                unlock(h, j);
            }
            exit
        }
        Job::Restore(j) => {
            if t.fail.is_some() {
                // An injected task failure hits the extraction (after the old CT is gone).
                let mut faults = h.faults.storage.clone();
                faults.restore_fail.insert(j.vmid);
                let saved = std::mem::replace(&mut h.faults.storage, faults);
                let exit = finish_restore(h, t, j);
                h.faults.storage = saved;
                return exit;
            }
            finish_restore(h, t, j)
        }
        Job::ImgDel { volid } => {
            if let Some(m) = &t.fail {
                return m.clone();
            }
            let Some(v) = h.p.storage.volumes.get(volid).cloned() else {
                // `archive_remove` tolerates a missing file.
                return "OK".into();
            };
            if v.protected {
                let (sid, volname) = storage::parse_volid(volid).unwrap_or(("", ""));
                return match &v.path {
                    Some(p) => format!("cannot remove protected archive '{}'", p.display()),
                    None => format!("cannot remove protected volume '{volname}' on '{sid}'"),
                };
            }
            log(h, &t.upid, format!("Removed volume '{volid}'"));
            remove_backup(h, volid);
            "OK".into()
        }
        Job::Prune {
            storage,
            vmid,
            policy,
        } => {
            if let Some(m) = &t.fail {
                return m.clone();
            }
            let marks = prune_marks(h, storage, *vmid, policy);
            for (v, m) in marks {
                if m == "remove" {
                    log(h, &t.upid, format!("removing backup '{}'", v.volid));
                    remove_backup(h, &v.volid);
                }
            }
            "OK".into()
        }
    }
}
