//! The simulated host: containers, tasks, the config flock, PVE's normalizations and its
//! idempotency errors (`proxmox-api.md` §3-§5). Time is evaluated lazily: every request first
//! applies the effects of tasks whose time has come, so behaviour is deterministic for a given
//! request order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// An API error as PVE sends it: status, message (first line becomes the reason phrase) and
/// for 400 the per-parameter errors.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub errors: BTreeMap<String, String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }
    pub fn params(errors: BTreeMap<String, String>) -> ApiError {
        ApiError {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors,
        }
    }
}

/// A guest to put on the simulated cluster before (or while) a test runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedGuest {
    pub vmid: u32,
    /// `None`: this node.
    pub node: Option<String>,
    pub hostname: String,
    pub running: bool,
    pub cores: u32,
    pub memory: u64,
    pub swap: u64,
    pub rootfs_gib: u64,
    pub net0: Option<String>,
    pub onboot: bool,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub protection: bool,
    /// A config lock such as `backup` (a pretend vzdump).
    pub lock: Option<String>,
}

impl Default for SeedGuest {
    fn default() -> Self {
        SeedGuest {
            vmid: 100,
            node: None,
            hostname: "ct".into(),
            running: false,
            cores: 1,
            memory: 512,
            swap: 512,
            rootfs_gib: 8,
            net0: None,
            onboot: false,
            tags: Vec::new(),
            description: None,
            protection: false,
            lock: None,
        }
    }
}

/// Faults to inject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Seed for the fault dice (deterministic runs).
    pub seed: Option<u64>,
    /// Added to every API request.
    pub latency_ms: u64,
    /// Probability that a mutating request fails: half `500 ... got timeout` (lock), half `596`.
    pub error_rate: f64,
    /// Per-endpoint override of `error_rate`, keyed by worker type or `config` (e.g. `vzstart`).
    pub error_rates: BTreeMap<String, f64>,
    /// Probability that a task ends in `TASK ERROR`.
    pub task_failure_rate: f64,
    /// Tasks of these worker types never finish.
    pub stuck_tasks: BTreeSet<String>,
    /// Tasks of these worker types always end in `TASK ERROR` (e.g. `resize`, `vzstart`).
    pub failing_tasks: BTreeSet<String>,
    /// A failed `vzcreate` leaves the guest behind, stopped and unlocked, as PVE's create does
    /// when a step after writing the config fails (e.g. adding the guest to a pool). Without
    /// it a failed create removes what it made, as PVE's error path does.
    pub failed_create_keeps_guest: bool,
    /// Probability that an API request's connection is dropped without any response
    /// (the client sees a reset / unexpected EOF; the request has no effect).
    pub reset_rate: f64,
    /// Faults of the storage tasks (vzdump, restore): failures, no space, a stuck lock.
    pub storage: crate::storage::StorageFaults,
    /// One-shot: each CT here moves to the named node right after the next CT list of its
    /// node that names it, as an HA migration between a client's list and its config read
    /// (the read then gets PVE's "Configuration file ... does not exist").
    pub migrate_after_list: BTreeMap<u32, String>,
    /// `cluster/resources` places each CT here on the named node whatever node holds it: a
    /// cluster view answered just before a migration, next to a CT list answered just after.
    pub stale_cluster_view: BTreeMap<u32, String>,
    /// One-shot: each CT here moves to the named node right after its next config read (a
    /// migration between a client's read of the host and its next look at the guest).
    pub migrate_after_config_read: BTreeMap<u32, String>,
}

/// A container as the simulator stores it: config values as PVE text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ct {
    pub vmid: u32,
    pub node: String,
    pub running: bool,
    pub conf: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
    /// Keys deleted while running that wait for the next start (`[pve:pending] delete:`).
    #[serde(default)]
    pub pending_delete: BTreeSet<String>,
    /// Snapshots by name: the config at snapshot time (proxmox-api.md snapshot endpoints).
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Unix time of the last start (uptime) and the init process id of a running CT.
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub pid: u32,
}

/// One snapshot: its description, time and the config it froze.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub description: String,
    pub snaptime: u64,
    pub conf: BTreeMap<String, String>,
}

/// What a task does when it ends successfully.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Effect {
    Create {
        conf: BTreeMap<String, String>,
        start: bool,
        /// The template volume (its file name appears in the worker's log).
        #[serde(default)]
        ostemplate: String,
    },
    Start,
    Stop,
    Reboot,
    Destroy,
    Resize {
        disk: String,
        size_gib: u64,
    },
    SnapshotCreate {
        name: String,
        description: String,
    },
    SnapshotDelete {
        name: String,
    },
    SnapshotRollback {
        name: String,
    },
    /// vzdump, vzrestore, imgdel, prunebackups: ended by `backup::finish`.
    Storage(crate::backup::Job),
}

/// One task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub upid: String,
    pub node: String,
    pub worker_type: String,
    pub vmid: u32,
    pub user: String,
    pub starttime: u64,
    pub pid: u32,
    pub pstart: u64,
    /// Milliseconds after the simulator's start when it ends; `None`: stuck or still waiting
    /// for the config flock.
    pub ends_at_ms: Option<u64>,
    pub fail: Option<String>,
    pub effect: Effect,
    pub done: bool,
    pub exitstatus: Option<String>,
    pub endtime: Option<u64>,
    /// When the request forked the worker (ms after the simulator's start).
    #[serde(default)]
    pub created_ms: u64,
    /// When the worker got the CT's config flock; `None` while it waits for it.
    #[serde(default = "started_long_ago")]
    pub started_ms: Option<u64>,
    /// When a waiting worker gives up ("got timeout").
    #[serde(default)]
    pub lock_deadline_ms: u64,
    /// How long the work takes once the flock is held; `None`: never finishes (fault).
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// The task log so far, without the closing `TASK ...` line.
    #[serde(default)]
    pub log: Vec<String>,
    /// The config `lock` this worker set while it runs (snapshot, rollback, ...).
    #[serde(default)]
    pub conf_lock: Option<String>,
}

/// Tasks persisted before the flock model had started long ago.
fn started_long_ago() -> Option<u64> {
    Some(0)
}

/// One mutating request, for "exactly one create of CT 105" assertions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mutation {
    pub seq: u64,
    pub time_ms: u64,
    pub method: String,
    pub path: String,
    pub vmid: Option<u32>,
    /// `create`, `destroy`, `start`, `stop`, `shutdown`, `reboot`, `config`, `resize`, ...
    pub kind: String,
    pub upid: Option<String>,
    pub params: BTreeMap<String, String>,
}

/// Everything that persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub cts: BTreeMap<u32, Ct>,
    pub tasks: Vec<Task>,
    pub mutations: Vec<Mutation>,
    pub next_pid: u32,
    /// Backups, templates, volume data and storage task logs (`storage.rs`).
    #[serde(default)]
    pub storage: crate::storage::StorageState,
}

pub struct Host {
    pub node: String,
    pub p: Persisted,
    pub epoch: Instant,
    pub task_duration: Duration,
    /// How long a worker (or `PUT config`, create) waits for the config flock (PVE: 10 s).
    pub lock_wait: Duration,
    pub faults: Faults,
    pub rng: rand::rngs::StdRng,
    /// The node's storages and where file storages live.
    pub layout: crate::storage::Layout,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keys PVE applies to a running CT at once (hot-plugged or plain); the rest go to pending.
const HOT: &[&str] = &[
    "description",
    "onboot",
    "startup",
    "protection",
    "hostname",
    "hookscript",
    "cores",
    "tags",
    "lock",
    "cpulimit",
    "cpuunits",
    "memory",
    "swap",
];

fn is_hot(key: &str) -> bool {
    HOT.contains(&key) || (key.starts_with("net") && key[3..].chars().all(|c| c.is_ascii_digit()))
}

/// PVE's normalization of a `net[n]` value: hwaddr generated when absent, `type=veth` added,
/// `name` first then the other keys sorted.
pub fn normalize_net(vmid: u32, index: &str, v: &str) -> String {
    let mut kv: BTreeMap<String, String> = BTreeMap::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, val)) => {
                kv.insert(k.to_string(), val.to_string());
            }
            None => {
                kv.insert("name".into(), part.to_string());
            }
        }
    }
    kv.entry("hwaddr".into()).or_insert_with(|| {
        let idx: u32 = index.parse().unwrap_or(0);
        format!(
            "BC:24:11:{:02X}:{:02X}:{:02X}",
            (vmid >> 8) & 0xff,
            vmid & 0xff,
            idx & 0xff
        )
    });
    if let Some(h) = kv.get_mut("hwaddr") {
        *h = h.to_ascii_uppercase();
    }
    kv.entry("type".into()).or_insert_with(|| "veth".into());
    let name = kv.remove("name").unwrap_or_default();
    let mut out = vec![format!("name={name}")];
    out.extend(kv.into_iter().map(|(k, v)| format!("{k}={v}")));
    out.join(",")
}

/// Tags as PVE stores them: deduplicated, lower-cased, sorted, `;`-joined.
pub fn normalize_tags(v: &str) -> String {
    let set: BTreeSet<String> = v
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    set.into_iter().collect::<Vec<_>>().join(";")
}

pub(crate) fn normalize(vmid: u32, key: &str, v: &str) -> String {
    if let Some(idx) = key.strip_prefix("net")
        && !idx.is_empty()
        && idx.chars().all(|c| c.is_ascii_digit())
    {
        return normalize_net(vmid, idx, v);
    }
    match key {
        "tags" => normalize_tags(v),
        "description" => {
            // Stored as comment lines; read back with a newline per line.
            let mut d = v.trim_end_matches('\n').to_string();
            d.push('\n');
            d
        }
        "onboot" | "protection" | "unprivileged" => if matches!(v, "1" | "true" | "yes" | "on") {
            "1"
        } else {
            "0"
        }
        .into(),
        _ => v.to_string(),
    }
}

pub fn rootfs_gib(v: &str) -> Option<u64> {
    v.split(',')
        .find_map(|p| p.strip_prefix("size="))
        .and_then(|s| s.trim_end_matches('G').parse().ok())
}

fn push_section(out: &mut String, conf: &BTreeMap<String, String>) {
    if let Some(d) = conf.get("description") {
        for line in d.trim_end_matches('\n').split('\n') {
            out.push('#');
            out.push_str(line);
            out.push('\n');
        }
    }
    for (k, v) in conf {
        if k != "description" {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
}

/// The config file text PVE would write (the digest is its SHA-1): the current section with
/// `parent`, `[pve:pending]` (with `delete:`), then one section per snapshot with `snaptime`.
pub fn config_text(ct: &Ct) -> String {
    let mut out = String::new();
    push_section(&mut out, &ct.conf);
    if !ct.pending.is_empty() || !ct.pending_delete.is_empty() {
        out.push_str("\n[pve:pending]\n");
        push_section(&mut out, &ct.pending);
        if !ct.pending_delete.is_empty() {
            let keys: Vec<&str> = ct.pending_delete.iter().map(String::as_str).collect();
            out.push_str(&format!("delete: {}\n", keys.join(",")));
        }
    }
    for (name, snap) in &ct.snapshots {
        out.push_str(&format!("\n[{name}]\n"));
        let mut conf = snap.conf.clone();
        if !snap.description.is_empty() {
            conf.insert("description".into(), snap.description.clone());
        }
        push_section(&mut out, &conf);
        out.push_str(&format!("snaptime: {}\n", snap.snaptime));
    }
    out
}

pub fn digest(ct: &Ct) -> String {
    hex::encode(Sha1::digest(config_text(ct).as_bytes()))
}

fn missing(node: &str, vmid: u32) -> ApiError {
    ApiError::new(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
}

/// A PVE permission exception (`raise_perm_exc`).
fn perm(msg: &str) -> ApiError {
    ApiError::new(403, format!("Permission check failed ({msg})"))
}

fn parse_features(v: &str) -> BTreeMap<String, String> {
    crate::schema::config_format("features")
        .and_then(|f| crate::schema::parse_property_string(f, v, "features").ok())
        .unwrap_or_default()
}

/// `check_ct_modify_config_perm` for what an API token (never `root@pam`) can never do:
/// feature flags other than `nesting` (any flag on a privileged CT), the hookscript, device
/// passthrough, bind and device mount points.
pub fn check_root_only(
    old: Option<&BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
    delete: &[String],
    unprivileged: bool,
) -> Result<(), ApiError> {
    let features_changed = |deleting: bool| -> (bool, bool) {
        // (nesting changed, something else changed)
        let old_f = old
            .and_then(|o| o.get("features"))
            .map(|v| parse_features(v))
            .unwrap_or_default();
        let only_nesting = |f: &BTreeMap<String, String>| f.len() == 1 && f.contains_key("nesting");
        if deleting {
            return (
                only_nesting(&old_f),
                !old_f.is_empty() && !only_nesting(&old_f),
            );
        }
        let new_f = parse_features(new.get("features").map(String::as_str).unwrap_or(""));
        if old_f.is_empty() {
            return (
                only_nesting(&new_f),
                !new_f.is_empty() && !only_nesting(&new_f),
            );
        }
        let keys: BTreeSet<&String> = old_f.keys().chain(new_f.keys()).collect();
        let mut nesting = false;
        for k in keys {
            if old_f.get(k) != new_f.get(k) {
                if k == "nesting" {
                    nesting = true;
                } else {
                    return (nesting, true);
                }
            }
        }
        (nesting, false)
    };
    let check = |opt: &str, deleting: bool| -> Result<(), ApiError> {
        if opt == "rootfs" || (opt.starts_with("mp") && opt[2..].parse::<u32>().is_ok()) {
            if deleting {
                return Ok(());
            }
            let vol = new
                .get(opt)
                .and_then(|v| {
                    v.split(',')
                        .find(|p| !p.contains('=') || p.starts_with("volume="))
                })
                .map(|p| p.trim_start_matches("volume="))
                .unwrap_or("");
            if vol.starts_with("/dev/") {
                return Err(perm("mount point type device is only allowed for root@pam"));
            }
            if vol.starts_with('/') {
                return Err(perm("mount point type bind is only allowed for root@pam"));
            }
        } else if opt.starts_with("dev") && opt[3..].parse::<u32>().is_ok() {
            return Err(perm(
                "configuring device passthrough is only allowed for root@pam",
            ));
        } else if opt == "features" {
            if !unprivileged {
                return Err(perm(
                    "changing feature flags for privileged container is only allowed for root@pam",
                ));
            }
            if features_changed(deleting).1 {
                return Err(perm(
                    "changing feature flags (except nesting) is only allowed for root@pam",
                ));
            }
        } else if opt == "hookscript" {
            return Err(perm("changing the hookscript is only allowed for root@pam"));
        }
        Ok(())
    };
    for k in new.keys() {
        check(k, false)?;
    }
    for k in delete {
        check(k, true)?;
    }
    Ok(())
}

/// Keys that are not config options of a CT (create/PUT control parameters).
const CONTROL_KEYS: &[&str] = &[
    "vmid",
    "node",
    "digest",
    "delete",
    "revert",
    "ostemplate",
    "start",
    "storage",
    "password",
    "ssh-public-keys",
    "pool",
    "force",
    "restore",
    "unique",
    "ignore-unpack-errors",
    "bwlimit",
    "ha-managed",
];

/// The ostype a template's name announces (`alpine-3.22-default_...` → `alpine`); PVE reads it
/// from the unpacked files, which name the same distribution.
fn ostype_of_template(ostemplate: &str) -> String {
    let file = ostemplate.rsplit(['/', ':']).next().unwrap_or("");
    let distro = file.split(['-', '_']).next().unwrap_or("");
    const KNOWN: &[&str] = &[
        "debian",
        "devuan",
        "ubuntu",
        "centos",
        "fedora",
        "opensuse",
        "archlinux",
        "alpine",
        "gentoo",
        "nixos",
    ];
    match distro {
        "rockylinux" | "almalinux" => "centos".into(),
        d if KNOWN.contains(&d) => d.into(),
        _ => "unmanaged".into(),
    }
}

impl Host {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Unix time at simulator millisecond `ms` (for tasks that ended between requests).
    fn unix_at(&self, ms: u64) -> u64 {
        let behind = self.now_ms().saturating_sub(ms) / 1000;
        unix_now().saturating_sub(behind)
    }

    /// Plays every task event whose time has come, in time order: a holder ending frees the
    /// CT's config flock for the next waiting worker, which runs its checks at that moment; a
    /// worker that waited longer than `lock_wait` fails with PVE's "got timeout".
    pub fn advance(&mut self) {
        let now = self.now_ms();
        loop {
            let end = self
                .p
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.done && t.started_ms.is_some())
                .filter_map(|(i, t)| t.ends_at_ms.filter(|e| *e <= now).map(|e| (e, i)))
                .min();
            let timeout = self
                .p
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.done && t.started_ms.is_none() && t.lock_deadline_ms <= now)
                .map(|(i, t)| (t.lock_deadline_ms, i))
                .min();
            match (end, timeout) {
                (Some((at, i)), t) if t.is_none_or(|(d, _)| at <= d) => {
                    let vmid = self.p.tasks[i].vmid;
                    self.finish(i, at);
                    self.start_waiters(vmid, at);
                }
                (_, Some((at, i))) => {
                    let vmid = self.p.tasks[i].vmid;
                    let msg = format!(
                        "can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout"
                    );
                    self.end_task(i, at, Some(msg));
                }
                _ => break,
            }
        }
    }

    /// Gives the flock to waiting workers of `vmid` in the order they were forked, as long as
    /// nobody holds it (a snapshot worker releases it after its checks).
    fn start_waiters(&mut self, vmid: u32, at: u64) {
        while self.holder(vmid).is_none() {
            let Some(i) = self
                .p
                .tasks
                .iter()
                .position(|t| t.vmid == vmid && !t.done && t.started_ms.is_none())
            else {
                return;
            };
            self.start_task(i, at);
        }
    }

    /// The worker has the flock: it loads the config and runs its checks (`check_lock`, ...),
    /// failing at once with PVE's message, or sets its config lock and starts working.
    fn start_task(&mut self, i: usize, at: u64) {
        let waited = at > self.p.tasks[i].created_ms;
        let t = self.p.tasks[i].clone();
        if waited {
            self.p.tasks[i]
                .log
                .push("trying to acquire lock... OK".into());
        }
        self.p.tasks[i].started_ms = Some(at);
        if let Err(msg) = self.worker_checks(&t) {
            self.end_task(i, at, Some(msg));
            return;
        }
        let conf_lock = match &t.effect {
            Effect::SnapshotCreate { .. } => Some("snapshot"),
            Effect::SnapshotDelete { .. } => Some("snapshot-delete"),
            Effect::SnapshotRollback { .. } => Some("rollback"),
            Effect::Destroy => Some("destroyed"),
            _ => None,
        };
        if let Some(l) = conf_lock
            && let Some(ct) = self.p.cts.get_mut(&t.vmid)
        {
            ct.conf.insert("lock".into(), l.into());
            self.p.tasks[i].conf_lock = Some(l.into());
        }
        self.p.tasks[i].ends_at_ms = t.duration_ms.map(|d| at + d);
    }

    /// What a worker checks once it holds the flock (Status.pm / AbstractConfig.pm
    /// snapshot_*): these failures end the task, they are never HTTP errors.
    fn worker_checks(&self, t: &Task) -> Result<(), String> {
        let Some(ct) = self.p.cts.get(&t.vmid) else {
            return Err(format!(
                "Configuration file 'nodes/{}/lxc/{}.conf' does not exist",
                self.node, t.vmid
            ));
        };
        let lock = ct.conf.get("lock");
        let locked = || match lock {
            Some(l) => Err(format!("CT is locked ({l})")),
            None => Ok(()),
        };
        match &t.effect {
            Effect::Start => {
                if ct.conf.get("template").is_some_and(|v| v == "1") {
                    return Err("you can't start a CT if it's a template".into());
                }
                if lock.is_some_and(|l| l != "mounted") {
                    locked()?;
                }
            }
            Effect::Stop | Effect::Reboot => {
                if lock.is_some_and(|l| l != "mounted") {
                    locked()?;
                }
            }
            Effect::SnapshotCreate { name, .. } => {
                if ct.conf.get("template").is_some_and(|v| v == "1") {
                    return Err("you can't take a snapshot if it's a template".into());
                }
                locked()?;
                if ct.snapshots.contains_key(name) {
                    return Err(format!("snapshot name '{name}' already used"));
                }
                // Storage decides (`snapshot_prepare` → `has_feature`): dir/lvm volumes or a
                // bind mount make it fail.
                if !crate::storage::can_snapshot(self, &ct.conf, false) {
                    return Err("snapshot feature is not available".into());
                }
            }
            Effect::SnapshotDelete { name } => {
                locked()?;
                if !ct.snapshots.contains_key(name) {
                    return Err(format!("snapshot '{name}' does not exist"));
                }
            }
            Effect::SnapshotRollback { name } => {
                if !ct.snapshots.contains_key(name) {
                    return Err(format!("snapshot '{name}' does not exist"));
                }
                locked()?;
                // ZFS rolls back only to its newest snapshot.
                if let Some(msg) = crate::storage::rollback_blocker(self, ct, name) {
                    return Err(msg);
                }
            }
            Effect::Create { .. }
            | Effect::Destroy
            | Effect::Resize { .. }
            | Effect::Storage(_) => {}
        }
        Ok(())
    }

    /// A task ends at `at`: with `fail` (or its injected failure) it has no effect, otherwise
    /// its effect is applied; the config lock it set is released either way.
    fn end_task(&mut self, i: usize, at: u64, fail: Option<String>) {
        let t = self.p.tasks[i].clone();
        if let Effect::Storage(job) = &t.effect {
            let exit = crate::backup::finish(self, &t, job);
            let task = &mut self.p.tasks[i];
            task.done = true;
            task.exitstatus = Some(exit);
            task.endtime = Some(unix_now());
            return;
        }
        let vmid = t.vmid;
        let fail = fail.or(t.fail.clone());
        if let Some(l) = &t.conf_lock
            && let Some(ct) = self.p.cts.get_mut(&vmid)
            && ct.conf.get("lock") == Some(l)
        {
            ct.conf.remove("lock");
        }
        let exit = match &fail {
            Some(m) => m.clone(),
            None => {
                let lines = self.apply(vmid, &t.effect);
                self.p.tasks[i].log.extend(lines);
                "OK".to_string()
            }
        };
        if fail.is_some() {
            if let Effect::Create { conf, .. } = &t.effect {
                if self.faults.failed_create_keeps_guest {
                    // The config was written before the step that failed; no lock is left.
                    if let Some(ct) = self.p.cts.get_mut(&vmid) {
                        ct.conf = conf.clone();
                        ct.running = false;
                    }
                } else {
                    // A failed create removes what it made, freeing the vmid.
                    self.p.cts.remove(&vmid);
                }
            }
            if let Some(ct) = self.p.cts.get_mut(&vmid)
                && matches!(
                    ct.conf.get("lock").map(String::as_str),
                    Some("create") | Some("destroyed")
                )
            {
                ct.conf.remove("lock");
            }
        }
        let endtime = self.unix_at(at);
        let task = &mut self.p.tasks[i];
        task.done = true;
        task.exitstatus = Some(exit);
        task.endtime = Some(endtime.max(task.starttime));
        task.ends_at_ms = Some(at);
    }

    fn finish(&mut self, i: usize, at: u64) {
        self.end_task(i, at, None);
    }

    /// Applies a task's effect; returns the log lines PVE's worker prints for it.
    fn apply(&mut self, vmid: u32, effect: &Effect) -> Vec<String> {
        let now = unix_now();
        let mut log = Vec::new();
        match effect {
            Effect::Create {
                conf,
                start,
                ostemplate,
            } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.conf = conf.clone();
                    ct.running = *start;
                    if *start {
                        ct.started_at = now;
                        ct.pid = 100_000 + vmid;
                    }
                }
                for (k, v) in conf {
                    if (k == "rootfs" || k.starts_with("mp"))
                        && let Some(vol) = v.split(',').next()
                        && let Some((_, name)) = vol.split_once(':')
                        && self.is_lvm(vol)
                    {
                        log.push(format!("  Logical volume \"{name}\" created."));
                    }
                }
                log.push("Creating filesystem with 2097152 4k blocks and 524288 inodes".into());
                // `local:vztmpl/X` lives in the storage's template cache directory.
                let file = ostemplate.rsplit('/').next().unwrap_or("template.tar.zst");
                log.push(format!(
                    "extracting archive '/var/lib/vz/template/cache/{file}'"
                ));
                log.push("Total bytes read: 529643520 (506MiB, 211MiB/s)".into());
                log.push(format!(
                    "Detected container architecture: {}",
                    conf.get("arch").map(String::as_str).unwrap_or("amd64")
                ));
            }
            Effect::Start | Effect::Reboot => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.running = true;
                    ct.started_at = now;
                    ct.pid = 100_000 + vmid;
                    let pending = std::mem::take(&mut ct.pending);
                    ct.conf.extend(pending);
                    for k in std::mem::take(&mut ct.pending_delete) {
                        ct.conf.remove(&k);
                    }
                }
            }
            Effect::Stop => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.running = false;
                    ct.pid = 0;
                }
            }
            Effect::Destroy => {
                if let Some(ct) = self.p.cts.remove(&vmid) {
                    for (k, v) in &ct.conf {
                        if (k == "rootfs" || k.starts_with("mp") || k.starts_with("unused"))
                            && let Some(vol) = v.split(',').next()
                            && let Some((_, name)) = vol.split_once(':')
                            && self.is_lvm(vol)
                        {
                            log.push(format!("  Logical volume \"{name}\" successfully removed."));
                        }
                    }
                }
            }
            Effect::SnapshotCreate { name, description } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    let mut frozen = ct.conf.clone();
                    frozen.remove("lock");
                    frozen.remove("description");
                    let snap = Snapshot {
                        description: description.clone(),
                        snaptime: now,
                        conf: frozen,
                    };
                    ct.snapshots.insert(name.clone(), snap);
                    ct.conf.insert("parent".into(), name.clone());
                }
            }
            Effect::SnapshotDelete { name } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid)
                    && let Some(gone) = ct.snapshots.remove(name)
                {
                    // Children of the deleted snapshot (and the current state) now descend
                    // from its parent (AbstractConfig.pm snapshot_delete).
                    let grand = gone.conf.get("parent").cloned();
                    let fix = |c: &mut BTreeMap<String, String>| {
                        if c.get("parent") == Some(name) {
                            match &grand {
                                Some(g) => c.insert("parent".into(), g.clone()),
                                None => c.remove("parent"),
                            };
                        }
                    };
                    fix(&mut ct.conf);
                    for s in ct.snapshots.values_mut() {
                        fix(&mut s.conf);
                    }
                }
            }
            Effect::SnapshotRollback { name } => {
                // PVE stops a running CT before rolling back (`start` is not modelled).
                if let Some(ct) = self.p.cts.get_mut(&vmid)
                    && let Some(snap) = ct.snapshots.get(name)
                {
                    let description = ct.conf.get("description").cloned();
                    ct.conf = snap.conf.clone();
                    if let Some(d) = description {
                        ct.conf.insert("description".into(), d);
                    }
                    ct.conf.insert("parent".into(), name.clone());
                    ct.pending.clear();
                    ct.pending_delete.clear();
                    if ct.running {
                        log.push(format!("stopping CT {vmid}"));
                    }
                    ct.running = false;
                    ct.pid = 0;
                }
            }
            Effect::Storage(_) => {}
            Effect::Resize { disk, size_gib } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid)
                    && let Some(v) = ct.conf.get(disk).cloned()
                {
                    let old = rootfs_gib(&v).unwrap_or(0);
                    let parts: Vec<String> = v
                        .split(',')
                        .map(|p| {
                            if p.starts_with("size=") {
                                format!("size={size_gib}G")
                            } else {
                                p.to_string()
                            }
                        })
                        .collect();
                    ct.conf.insert(disk.clone(), parts.join(","));
                    let lv = v
                        .split(',')
                        .next()
                        .and_then(|x| x.split_once(':'))
                        .map(|(_, n)| n.to_string())
                        .unwrap_or_default();
                    log.push(format!(
                        "  Size of logical volume pve/{lv} changed from {old}.00 GiB ({} extents) to {size_gib}.00 GiB ({} extents).",
                        old * 256,
                        size_gib * 256
                    ));
                    log.push(format!("  Logical volume pve/{lv} successfully resized."));
                }
            }
        }
        log
    }

    /// Whether a volume lives on LVM (its worker prints `Logical volume ...` lines).
    fn is_lvm(&self, vol: &str) -> bool {
        crate::storage::storage_of(self, vol)
            .is_some_and(|s| matches!(s.kind.as_str(), "lvm" | "lvmthin"))
    }

    /// The task holding this CT's config flock, if any (a snapshot worker only holds it for its
    /// checks; its `lock: snapshot` keeps others out meanwhile).
    pub fn holder(&self, vmid: u32) -> Option<&Task> {
        self.p.tasks.iter().find(|t| {
            t.vmid == vmid
                && !t.done
                && t.node == self.node
                && t.started_ms.is_some()
                // Storage workers (vzdump, restore, imgdel) guard the CT with its config
                // `lock` (`backup`, `create`), not by holding the flock (`backup.rs`).
                && !matches!(t.effect, Effect::Storage(_))
                && !matches!(
                    t.effect,
                    Effect::SnapshotCreate { .. }
                        | Effect::SnapshotDelete { .. }
                        | Effect::SnapshotRollback { .. }
                )
        })
    }

    pub fn local(&self, vmid: u32) -> Result<&Ct, ApiError> {
        self.p
            .cts
            .get(&vmid)
            .filter(|c| c.node == self.node)
            .ok_or_else(|| missing(&self.node, vmid))
    }

    fn dice(&mut self, p: f64) -> bool {
        use rand::Rng;
        p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    /// Whether to drop this API request's connection (fault `reset_rate`).
    pub fn maybe_reset(&mut self) -> bool {
        let rate = self.faults.reset_rate;
        self.dice(rate)
    }

    /// Injected failure of a mutating request (before it has any effect).
    pub fn maybe_fault(&mut self, kind: &str, vmid: u32) -> Result<(), ApiError> {
        let rate = self
            .faults
            .error_rates
            .get(kind)
            .copied()
            .unwrap_or(self.faults.error_rate);
        if self.dice(rate) {
            if self.dice(0.5) {
                return Err(ApiError::new(
                    500,
                    format!("can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout"),
                ));
            }
            return Err(ApiError::new(596, "Connection timed out"));
        }
        Ok(())
    }

    pub fn seed(&mut self, g: &SeedGuest) {
        let node = g.node.clone().unwrap_or_else(|| self.node.clone());
        let mut conf = BTreeMap::new();
        conf.insert("arch".into(), "amd64".into());
        conf.insert("ostype".into(), "debian".into());
        conf.insert("hostname".into(), g.hostname.clone());
        conf.insert("cores".into(), g.cores.to_string());
        conf.insert("memory".into(), g.memory.to_string());
        conf.insert("swap".into(), g.swap.to_string());
        conf.insert(
            "rootfs".into(),
            format!("local-lvm:vm-{}-disk-0,size={}G", g.vmid, g.rootfs_gib),
        );
        if let Some(n) = &g.net0 {
            conf.insert("net0".into(), normalize_net(g.vmid, "0", n));
        }
        if g.onboot {
            conf.insert("onboot".into(), "1".into());
        }
        if !g.tags.is_empty() {
            conf.insert("tags".into(), normalize_tags(&g.tags.join(";")));
        }
        if let Some(d) = &g.description {
            conf.insert("description".into(), normalize(g.vmid, "description", d));
        }
        if g.protection {
            conf.insert("protection".into(), "1".into());
        }
        if let Some(l) = &g.lock {
            conf.insert("lock".into(), l.clone());
        }
        conf.insert("unprivileged".into(), "1".into());
        self.p.cts.insert(
            g.vmid,
            Ct {
                vmid: g.vmid,
                node,
                running: g.running,
                conf,
                pending: BTreeMap::new(),
                pending_delete: BTreeSet::new(),
                snapshots: BTreeMap::new(),
                started_at: if g.running { unix_now() } else { 0 },
                pid: if g.running { 100_000 + g.vmid } else { 0 },
            },
        );
    }

    /// Forks a worker: it gets a UPID at once and waits (inside the task) for the CT's config
    /// flock, like `fork_worker(... lock_config ...)`.
    pub(crate) fn new_task(
        &mut self,
        worker_type: &str,
        vmid: u32,
        user: &str,
        effect: Effect,
    ) -> String {
        self.p.next_pid = self.p.next_pid.wrapping_add(1).max(1000);
        let pid = self.p.next_pid;
        let pstart = 4_000_000 + u64::from(pid);
        let starttime = unix_now();
        let upid = format!(
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, pid, pstart, starttime, worker_type, vmid, user
        );
        let fail = if self.faults.failing_tasks.contains(worker_type) {
            Some(format!("{worker_type} of CT {vmid} failed: exit code 1"))
        } else if self.dice(self.faults.task_failure_rate) {
            Some(format!("command 'lxc-start -n {vmid}' failed: exit code 1"))
        } else {
            None
        };
        let duration_ms = if self.faults.stuck_tasks.contains(worker_type) {
            None
        } else {
            Some(self.task_duration.as_millis() as u64)
        };
        let now = self.now_ms();
        self.p.tasks.push(Task {
            upid: upid.clone(),
            node: self.node.clone(),
            worker_type: worker_type.to_string(),
            vmid,
            user: user.to_string(),
            starttime,
            pid,
            pstart,
            ends_at_ms: None,
            fail,
            effect,
            done: false,
            exitstatus: None,
            endtime: None,
            created_ms: now,
            started_ms: None,
            lock_deadline_ms: now + self.lock_wait.as_millis() as u64,
            duration_ms,
            log: Vec::new(),
            conf_lock: None,
        });
        if matches!(
            self.p.tasks.last().map(|t| &t.effect),
            Some(Effect::Storage(_))
        ) {
            // Storage workers run at once (they lock the CT through its config `lock`).
            let i = self.p.tasks.len() - 1;
            self.p.tasks[i].started_ms = Some(now);
            self.p.tasks[i].ends_at_ms = duration_ms.map(|d| now + d);
        } else {
            self.start_waiters(vmid, now);
        }
        // Keep the task list bounded on long runs.
        if self.p.tasks.len() > 5000 {
            let keep_from = self.p.tasks.len() - 4000;
            let mut i = 0;
            self.p.tasks.retain(|t| {
                i += 1;
                i > keep_from || !t.done
            });
        }
        upid
    }

    /// Makes a task that has not ended fail with `msg` (decided by the storage layer).
    #[allow(dead_code)] // storage checks now run inside the worker (`worker_checks`)
    pub(crate) fn fail_task(&mut self, upid: &str, msg: &str) {
        if let Some(t) = self.p.tasks.iter_mut().find(|t| t.upid == upid && !t.done) {
            t.fail = Some(msg.to_string());
        }
    }

    pub fn record(
        &mut self,
        method: &str,
        path: &str,
        vmid: Option<u32>,
        kind: &str,
        upid: Option<String>,
        params: &BTreeMap<String, String>,
    ) {
        let seq = self.p.mutations.len() as u64 + 1;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.p.mutations.push(Mutation {
            seq,
            time_ms,
            method: method.to_string(),
            path: path.to_string(),
            vmid,
            kind: kind.to_string(),
            upid,
            params: params.clone(),
        });
    }

    // ------------------------------------------------------------------ operations

    pub fn create(
        &mut self,
        params: &BTreeMap<String, String>,
        user: &str,
    ) -> Result<String, ApiError> {
        let vmid: u32 = params
            .get("vmid")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::new(400, "vmid missing"))?;
        if let Some(ct) = self.p.cts.get(&vmid) {
            return Err(ApiError::new(
                500,
                format!("CT {vmid} already exists on node '{}'", ct.node),
            ));
        }
        let options: BTreeMap<String, String> = params
            .iter()
            .filter(|(k, _)| !CONTROL_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The API's default is a privileged container (`unprivileged` default 0 in the
        // schema; the GUI and pct send 1).
        let unprivileged = params.get("unprivileged").is_some_and(|u| u == "1");
        check_root_only(None, &options, &[], unprivileged)?;
        let storage = params
            .get("storage")
            .cloned()
            .unwrap_or_else(|| "local".into());
        let mut conf = BTreeMap::new();
        conf.insert("arch".into(), "amd64".into());
        conf.insert(
            "ostype".into(),
            ostype_of_template(params.get("ostemplate").map(String::as_str).unwrap_or("")),
        );
        conf.insert("unprivileged".into(), u8::from(unprivileged).to_string());
        conf.insert("hostname".into(), format!("CT{vmid}"));
        conf.insert("memory".into(), "512".into());
        conf.insert("swap".into(), "512".into());
        // Disks get their own volumes on their storages (`storage.rs`); without `rootfs`
        // PVE allocates `<storage>:4` on `storage` (default `local`).
        let mut disks: BTreeMap<String, String> = BTreeMap::new();
        let mut allocated: Vec<String> = Vec::new();
        let default_rootfs = format!("{storage}:4");
        for (k, v) in crate::storage::disks_in_order(params, &default_rootfs) {
            let also: Vec<&str> = allocated.iter().map(String::as_str).collect();
            if let Some(a) = crate::storage::allocate(self, vmid, &v, &also)? {
                allocated.push(a.split(',').next().unwrap_or("").to_string());
                disks.insert(k, a);
            }
        }
        conf.extend(disks.clone());
        for (k, v) in &options {
            let v = if let Some(a) = disks.get(k) {
                a.clone()
            } else {
                normalize(vmid, k, v)
            };
            conf.insert(k.clone(), v);
        }
        let start = params.get("start").is_some_and(|s| s == "1");
        // The config exists at once, locked for the create (`create_and_lock_config`).
        let mut placeholder = BTreeMap::new();
        placeholder.insert("lock".to_string(), "create".to_string());
        self.p.cts.insert(
            vmid,
            Ct {
                vmid,
                node: self.node.clone(),
                running: false,
                conf: placeholder,
                pending: BTreeMap::new(),
                pending_delete: BTreeSet::new(),
                snapshots: BTreeMap::new(),
                started_at: 0,
                pid: 0,
            },
        );
        let ostemplate = params.get("ostemplate").cloned().unwrap_or_default();
        Ok(self.new_task(
            "vzcreate",
            vmid,
            user,
            Effect::Create {
                conf,
                start,
                ostemplate,
            },
        ))
    }

    pub(crate) fn check_lock(ct: &Ct) -> Result<(), ApiError> {
        match ct.conf.get("lock") {
            Some(l) => Err(ApiError::new(500, format!("CT is locked ({l})"))),
            None => Ok(()),
        }
    }

    /// `stop overrule-shutdown=1`: the stop worker first aborts the CT's running `vzshutdown`
    /// tasks (`abort_guest_tasks`), which frees the flock for it.
    pub fn overrule_shutdowns(&mut self, vmid: u32, stop_upid: &str) {
        let now = self.now_ms();
        let victims: Vec<usize> = self
            .p
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.vmid == vmid && !t.done && t.worker_type == "vzshutdown")
            .map(|(i, _)| i)
            .collect();
        let mut names = Vec::new();
        for i in victims {
            names.push(self.p.tasks[i].upid.clone());
            self.end_task(i, now, Some("interrupted by signal".into()));
        }
        if let Some(i) = self.p.tasks.iter().position(|t| t.upid == stop_upid) {
            if !names.is_empty() {
                self.p.tasks[i]
                    .log
                    .push(format!("overruled vzshutdown tasks: {}", names.join(", ")));
            }
            if self.p.tasks[i].started_ms.is_none() {
                self.start_waiters(vmid, now);
            }
        }
    }

    /// Power actions: only the running state is checked before forking (Status.pm); the lock
    /// and template checks run inside the worker.
    pub fn power(&mut self, vmid: u32, action: &str, user: &str) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        let (wt, effect) = match action {
            "start" => {
                if ct.running {
                    return Err(ApiError::new(500, format!("CT {vmid} already running")));
                }
                ("vzstart", Effect::Start)
            }
            "stop" | "shutdown" => {
                if !ct.running {
                    return Err(ApiError::new(500, format!("CT {vmid} not running")));
                }
                (
                    if action == "stop" {
                        "vzstop"
                    } else {
                        "vzshutdown"
                    },
                    Effect::Stop,
                )
            }
            "reboot" => {
                if !ct.running {
                    // Status.pm vm_reboot says "VM".
                    return Err(ApiError::new(500, format!("VM {vmid} not running")));
                }
                ("vzreboot", Effect::Reboot)
            }
            _ => {
                return Err(ApiError::new(
                    501,
                    format!("Method '{action}' not implemented"),
                ));
            }
        };
        Ok(self.new_task(wt, vmid, user, effect))
    }

    pub fn destroy(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
        user: &str,
    ) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        if ct.conf.get("protection").is_some_and(|p| p == "1") {
            return Err(ApiError::new(
                500,
                format!("can't remove CT {vmid} - protection mode enabled"),
            ));
        }
        Self::check_lock(&ct)?;
        let force = params.get("force").is_some_and(|f| f == "1");
        if ct.running && !force {
            return Err(ApiError::new(
                500,
                format!("unable to destroy CT {vmid} - container is running"),
            ));
        }
        Ok(self.new_task("vzdestroy", vmid, user, Effect::Destroy))
    }

    /// `POST .../snapshot`: only the reserved names are refused before forking (Snapshot.pm);
    /// the lock and an existing name fail the `vzsnapshot` task.
    pub fn snapshot_create(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
        user: &str,
    ) -> Result<String, ApiError> {
        self.local(vmid)?;
        let name = params.get("snapname").cloned().unwrap_or_default();
        if name == "current" || name == "vzdump" {
            return Err(ApiError::new(
                500,
                format!("unable to use snapshot name '{name}' (reserved name)"),
            ));
        }
        let description = params.get("description").cloned().unwrap_or_default();
        Ok(self.new_task(
            "vzsnapshot",
            vmid,
            user,
            Effect::SnapshotCreate { name, description },
        ))
    }

    /// `DELETE .../snapshot/{snapname}` (`vzdelsnapshot`) or `POST .../rollback` (`vzrollback`):
    /// a missing snapshot or a lock fails the task.
    pub fn snapshot_change(
        &mut self,
        vmid: u32,
        name: &str,
        rollback: bool,
        user: &str,
    ) -> Result<String, ApiError> {
        self.local(vmid)?;
        let name = name.to_string();
        Ok(if rollback {
            self.new_task("vzrollback", vmid, user, Effect::SnapshotRollback { name })
        } else {
            self.new_task("vzdelsnapshot", vmid, user, Effect::SnapshotDelete { name })
        })
    }

    pub fn resize(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
        user: &str,
    ) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        Self::check_lock(&ct)?;
        if let Some(d) = params.get("digest")
            && *d != digest(&ct)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let disk = params
            .get("disk")
            .cloned()
            .unwrap_or_else(|| "rootfs".into());
        let cur = ct
            .conf
            .get(&disk)
            .and_then(|v| rootfs_gib(v))
            .ok_or_else(|| ApiError::new(500, format!("no such disk '{disk}'")))?;
        let size = params.get("size").cloned().unwrap_or_default();
        let (grow, num) = match size.strip_prefix('+') {
            Some(n) => (true, n),
            None => (false, size.as_str()),
        };
        let gib: u64 = num.trim_end_matches('G').parse().map_err(|_| {
            ApiError::params([("size".to_string(), "invalid format".to_string())].into())
        })?;
        let target = if grow { cur + gib } else { gib };
        if target < cur {
            return Err(ApiError::new(500, "unable to shrink disk size"));
        }
        if target == cur {
            return Err(ApiError::new(500, "disk is already at specified size"));
        }
        Ok(self.new_task(
            "resize",
            vmid,
            user,
            Effect::Resize {
                disk,
                size_gib: target,
            },
        ))
    }

    /// `PUT config` (API2/LXC/Config.pm update_vm + Config.pm update_pct_config), run while the
    /// caller holds the flock: check_lock, digest, root-only options, delete/revert, then each
    /// key applied, or left pending on a running CT.
    pub fn put_config(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let ct = self.local(vmid)?.clone();
        Self::check_lock(&ct)?;
        if let Some(d) = params.get("digest")
            && *d != digest(&ct)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let list = |k: &str| -> Vec<String> {
            params
                .get(k)
                .map(|v| crate::schema::split_list(v).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let delete = list("delete");
        let revert = list("revert");
        let options: BTreeMap<String, String> = params
            .iter()
            .filter(|(k, _)| !CONTROL_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let unprivileged = ct.conf.get("unprivileged").is_some_and(|u| u == "1");
        check_root_only(Some(&ct.conf), &BTreeMap::new(), &delete, unprivileged)?;
        check_root_only(Some(&ct.conf), &BTreeMap::new(), &revert, unprivileged)?;
        let schema_has = |k: &str| {
            crate::schema::param_schema("PUT", "/nodes/{node}/lxc/{vmid}/config", k).is_some()
        };
        for opt in &revert {
            if !schema_has(opt) {
                return Err(ApiError::params(
                    [("revert".into(), format!("unknown option '{opt}'"))].into(),
                ));
            }
            if options.contains_key(opt) {
                return Err(ApiError::params(
                    [(
                        "revert".into(),
                        format!("you can't use '-{opt}' and '-revert {opt}' at the same time"),
                    )]
                    .into(),
                ));
            }
        }
        for opt in &delete {
            if !schema_has(opt) {
                return Err(ApiError::params(
                    [("delete".into(), format!("unknown option '{opt}'"))].into(),
                ));
            }
            if options.contains_key(opt) {
                return Err(ApiError::params(
                    [(
                        "delete".into(),
                        format!("you can't use '-{opt}' and -delete {opt}' at the same time"),
                    )]
                    .into(),
                ));
            }
            if revert.contains(opt) {
                return Err(ApiError::params(
                    [(
                        "delete".into(),
                        format!(
                            "you can't use '-delete {opt}' and '-revert {opt}' at the same time"
                        ),
                    )]
                    .into(),
                ));
            }
        }
        check_root_only(Some(&ct.conf), &options, &[], unprivileged)?;
        // New mount point volumes get their own disk numbers (`storage.rs`); a replaced or
        // deleted volume mount point stays as `unusedN`.
        let mut allocated: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in options.iter().filter(|(k, _)| crate::storage::is_mp_key(k)) {
            let also: Vec<&str> = allocated
                .values()
                .map(|a| a.split(',').next().unwrap_or(""))
                .collect();
            if let Some(a) = crate::storage::allocate(self, vmid, v, &also)? {
                allocated.insert(k.clone(), a);
            }
        }
        let detached = crate::storage::detach_volumes(&ct, params);
        // Work on a copy: an error leaves the config file untouched.
        let mut next = ct.clone();
        for opt in &revert {
            next.pending.remove(opt);
            next.pending_delete.remove(opt);
        }
        let protected = ct.conf.get("protection").is_some_and(|p| p == "1");
        for opt in &delete {
            if !next.conf.contains_key(opt) && !next.pending.contains_key(opt) {
                // PVE warns "cannot delete '...' - not set in current configuration!".
                continue;
            }
            if matches!(opt.as_str(), "memory" | "rootfs" | "ostype") {
                return Err(ApiError::new(
                    500,
                    format!("unable to delete required option '{opt}'"),
                ));
            }
            if opt == "unprivileged" {
                return Err(ApiError::new(
                    500,
                    format!("unable to delete read-only option: '{opt}'"),
                ));
            }
            if protected && (opt.starts_with("mp") || opt.starts_with("unused")) {
                return Err(ApiError::new(
                    500,
                    format!("can't remove CT {vmid} drive '{opt}' - protection mode enabled"),
                ));
            }
            next.pending.remove(opt);
            // A detached volume (`unusedN`) is deleted at once even on a running CT
            // (`vmconfig_hotplug_pending`: `delete_mountpoint_volume`).
            if next.running && !is_hot(opt) && !opt.starts_with("unused") {
                next.pending_delete.insert(opt.clone());
            } else {
                next.conf.remove(opt);
            }
        }
        for (k, v) in &options {
            if k == "unprivileged" {
                return Err(ApiError::new(
                    500,
                    format!("unable to modify read-only option: '{k}'"),
                ));
            }
            if protected && (k == "rootfs" || k.starts_with("mp")) {
                return Err(ApiError::new(
                    500,
                    format!("can't update CT {vmid} drive '{k}' - protection mode enabled"),
                ));
            }
            let v = match allocated.get(k) {
                Some(a) => a.clone(),
                None => normalize(vmid, k, v),
            };
            next.pending_delete.remove(k);
            // A *new* mount point is hot-plugged into a running CT; changing an existing one
            // waits for the reboot (`vmconfig_hotplug_pending`: "don't try to hotplug over
            // existing mp").
            let new_mount_point = crate::storage::is_mp_key(k) && !ct.conf.contains_key(k);
            if next.running && !is_hot(k) && !new_mount_point {
                next.pending.insert(k.clone(), v);
            } else {
                next.conf.insert(k.clone(), v);
            }
        }
        for (k, vol) in detached {
            if let Some(size) = ct
                .conf
                .values()
                .find(|v| v.split(',').next() == Some(vol.as_str()))
                .map(|v| {
                    crate::storage::parse_size(
                        v.split(',')
                            .find_map(|p| p.strip_prefix("size="))
                            .unwrap_or("0"),
                    )
                })
                .filter(|s| *s > 0)
            {
                self.p.storage.detached_sizes.insert(vol.clone(), size);
            }
            next.conf.insert(k, vol);
        }
        self.p.cts.insert(vmid, next);
        Ok(())
    }

    /// A config value typed as PVE returns it: integers and booleans as JSON numbers, `number`
    /// keys (`cpulimit`) and everything else as strings.
    fn typed(key: &str, v: &str) -> serde_json::Value {
        let ty = crate::schema::param_schema("PUT", "/nodes/{node}/lxc/{vmid}/config", key)
            .or_else(|| crate::schema::param_schema("GET", "/nodes/{node}/lxc/{vmid}/config", key))
            .and_then(|p| p.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("string");
        match ty {
            "integer" | "boolean" => v
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| v.into()),
            _ => v.into(),
        }
    }

    /// The merged (default) or current view of a config, with `digest`; `snapshot` reads a
    /// snapshot's section instead.
    pub fn config_json(
        &self,
        vmid: u32,
        current: bool,
        snapshot: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        let mut conf = ct.conf.clone();
        if let Some(name) = snapshot {
            let snap = ct
                .snapshots
                .get(name)
                .ok_or_else(|| ApiError::new(500, format!("snapshot '{name}' does not exist")))?;
            conf = snap.conf.clone();
            if !snap.description.is_empty() {
                conf.insert("description".into(), snap.description.clone());
            }
            conf.insert("snaptime".into(), snap.snaptime.to_string());
        } else if !current {
            conf.extend(ct.pending.clone());
            for k in &ct.pending_delete {
                conf.remove(k);
            }
        }
        let mut m = serde_json::Map::new();
        for (k, v) in conf {
            let val = if k == "snaptime" {
                v.parse::<u64>()
                    .map(Into::into)
                    .unwrap_or_else(|_| v.clone().into())
            } else {
                Self::typed(&k, &v)
            };
            m.insert(k, val);
        }
        m.insert("digest".into(), digest(ct).into());
        Ok(serde_json::Value::Object(m))
    }

    /// `GET pending` (`config_with_pending_array`): every key with its typed value, pending
    /// value and `delete: 1`, and the config's `digest` as a row.
    pub fn pending_json(&self, vmid: u32) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        let mut keys: BTreeSet<&String> = ct.conf.keys().collect();
        keys.extend(ct.pending.keys());
        keys.extend(ct.pending_delete.iter());
        let mut rows: Vec<serde_json::Value> = keys
            .into_iter()
            .filter(|k| k.as_str() != "lock" || ct.conf.contains_key("lock"))
            .map(|k| {
                let mut o = serde_json::Map::new();
                o.insert("key".into(), k.clone().into());
                if let Some(v) = ct.conf.get(k) {
                    o.insert("value".into(), Self::typed(k, v));
                }
                if let Some(v) = ct.pending.get(k) {
                    o.insert("pending".into(), Self::typed(k, v));
                }
                if ct.pending_delete.contains(k) {
                    o.insert("delete".into(), 1.into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        rows.push(serde_json::json!({"key": "digest", "value": digest(ct)}));
        Ok(serde_json::Value::Array(rows))
    }

    /// `vmstatus` of one CT: always the base fields; `pid` and the pressure stall figures only
    /// while it runs; `lock`, `tags`, `template` only when set.
    pub fn status_json(&self, ct: &Ct) -> serde_json::Value {
        let mem: u64 = ct
            .conf
            .get("memory")
            .and_then(|m| m.parse().ok())
            .unwrap_or(512);
        let swap: u64 = ct
            .conf
            .get("swap")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let disk = ct
            .conf
            .get("rootfs")
            .and_then(|r| rootfs_gib(r))
            .unwrap_or(0);
        let uptime = if ct.running {
            unix_now().saturating_sub(ct.started_at)
        } else {
            0
        };
        let mut o = serde_json::json!({
            "vmid": ct.vmid,
            "type": "lxc",
            "status": if ct.running { "running" } else { "stopped" },
            "name": ct.conf.get("hostname").cloned().unwrap_or_else(|| format!("CT{}", ct.vmid)),
            "cpus": ct.conf.get("cores").and_then(|c| c.parse::<u64>().ok()).unwrap_or(1),
            "maxmem": mem * 1024 * 1024,
            "maxswap": swap * 1024 * 1024,
            "maxdisk": disk * 1024 * 1024 * 1024,
            "mem": if ct.running { mem * 1024 * 300 } else { 0 },
            "swap": 0,
            "disk": if ct.running { disk * 1024 * 1024 * 150 } else { 0 },
            "cpu": if ct.running { 0.0123 } else { 0.0 },
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
            "uptime": uptime,
        });
        if ct.running {
            o["pid"] = ct.pid.max(1).into();
            for k in [
                "pressurecpusome",
                "pressurecpufull",
                "pressureiosome",
                "pressureiofull",
                "pressurememorysome",
                "pressurememoryfull",
            ] {
                o[k] = 0.into();
            }
        }
        if let Some(l) = ct.conf.get("lock") {
            o["lock"] = l.clone().into();
        }
        if let Some(t) = ct.conf.get("tags") {
            o["tags"] = t.clone().into();
        }
        if ct.conf.get("template").is_some_and(|t| t == "1") {
            o["template"] = 1.into();
        }
        o
    }

    /// An entry of `cluster/resources` (`API2Tools.pm extract_vm_stats`): `maxcpu` instead of
    /// `cpus`, `template` always, no swap figures.
    pub fn resource_json(&self, ct: &Ct) -> serde_json::Value {
        let s = self.status_json(ct);
        let mut o = serde_json::json!({
            "id": format!("lxc/{}", ct.vmid),
            "type": "lxc",
            "vmid": ct.vmid,
            "node": ct.node,
            "status": s["status"],
            "name": s["name"],
            "template": u8::from(ct.conf.get("template").is_some_and(|t| t == "1")),
            "uptime": s["uptime"],
            "maxcpu": s["cpus"],
            "cpu": s["cpu"],
            "maxmem": s["maxmem"],
            "mem": s["mem"],
            "maxdisk": s["maxdisk"],
            "disk": s["disk"],
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
        });
        for k in ["tags", "lock"] {
            if let Some(v) = s.get(k) {
                o[k] = v.clone();
            }
        }
        o
    }

    /// `GET .../snapshot`: the snapshots (with `parent` when they have one) and the synthetic
    /// `current` entry with `digest`, `running` and `parent`.
    pub fn snapshot_list_json(&self, vmid: u32) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        let mut list: Vec<serde_json::Value> = ct
            .snapshots
            .iter()
            .map(|(name, s)| {
                let mut o = serde_json::json!({
                    "name": name,
                    "description": s.description,
                    "snaptime": s.snaptime,
                });
                if let Some(p) = s.conf.get("parent") {
                    o["parent"] = p.clone().into();
                }
                o
            })
            .collect();
        let mut current = serde_json::json!({
            "name": "current",
            "description": "You are here!",
            "running": u8::from(ct.running),
            "digest": digest(ct),
        });
        if let Some(p) = ct.conf.get("parent") {
            current["parent"] = p.clone().into();
        }
        list.push(current);
        Ok(serde_json::Value::Array(list))
    }

    /// `PUT .../snapshot/{name}/config`: only the description changes.
    pub fn snapshot_set_description(
        &mut self,
        vmid: u32,
        name: &str,
        description: &str,
    ) -> Result<(), ApiError> {
        self.local(vmid)?;
        let ct = self.p.cts.get_mut(&vmid).ok_or_else(|| missing("", vmid))?;
        let snap = ct
            .snapshots
            .get_mut(name)
            .ok_or_else(|| ApiError::new(500, format!("snapshot '{name}' does not exist")))?;
        snap.description = description.to_string();
        Ok(())
    }

    /// `GET .../interfaces` of a running CT: `lo` and one entry per `net[n]` with its address.
    pub fn interfaces_json(&self, vmid: u32) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        if !ct.running {
            return Err(ApiError::new(500, format!("CT {vmid} not running")));
        }
        let mut out = vec![serde_json::json!({
            "name": "lo", "hwaddr": "00:00:00:00:00:00", "hardware-address": "00:00:00:00:00:00",
            "inet": "127.0.0.1/8", "inet6": "::1/128",
            "ip-addresses": [
                {"ip-address": "127.0.0.1", "ip-address-type": "inet", "prefix": 8},
                {"ip-address": "::1", "ip-address-type": "inet6", "prefix": 128},
            ],
        })];
        for (k, v) in &ct.conf {
            if !(k.starts_with("net") && k[3..].parse::<u32>().is_ok()) {
                continue;
            }
            let field = |name: &str| {
                v.split(',')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .map(str::to_string)
            };
            let hw = field("hwaddr").unwrap_or_default().to_ascii_lowercase();
            let mut o = serde_json::json!({
                "name": field("name").unwrap_or_else(|| "eth0".into()),
                "hwaddr": hw, "hardware-address": hw, "ip-addresses": [],
            });
            if let Some(ip) = field("ip").filter(|i| i.contains('/'))
                && let Some((addr, prefix)) = ip.split_once('/')
            {
                o["inet"] = ip.clone().into();
                o["ip-addresses"] = serde_json::json!([{
                    "ip-address": addr, "ip-address-type": "inet",
                    "prefix": prefix.parse::<u32>().unwrap_or(24),
                }]);
            }
            out.push(o);
        }
        Ok(serde_json::Value::Array(out))
    }

    pub fn task_status_json(&self, t: &Task) -> serde_json::Value {
        let (user, tokenid) = match t.user.split_once('!') {
            Some((u, tok)) => (u.to_string(), Some(tok.to_string())),
            None => (t.user.clone(), None),
        };
        let mut o = serde_json::json!({
            "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
            "starttime": t.starttime, "type": t.worker_type,
            // The UPID's id field (`101`, `101@local`, or empty for a multi-guest vzdump).
            "id": t.upid.split(':').nth(6).unwrap_or_default(),
            "user": user, "status": if t.done { "stopped" } else { "running" },
        });
        if let Some(tok) = tokenid {
            o["tokenid"] = tok.into();
        }
        if let Some(e) = &t.exitstatus {
            o["exitstatus"] = e.clone().into();
        }
        o
    }

    /// The task log: what the worker printed, a waiting worker's "trying to acquire lock...",
    /// and the closing `TASK OK` / `TASK ERROR: ...` once it ended.
    pub fn task_log(&self, t: &Task) -> Vec<String> {
        if let Some(lines) = crate::backup::task_log(self, t) {
            return lines;
        }
        let mut lines = t.log.clone();
        if t.started_ms.is_none() && !t.done {
            lines.push("trying to acquire lock...".into());
        }
        if t.done {
            match t.exitstatus.as_deref() {
                Some("OK") => lines.push("TASK OK".into()),
                Some(e) => {
                    if e.ends_with("got timeout") && t.log.is_empty() {
                        lines.push("trying to acquire lock...".into());
                    }
                    lines.push(format!("TASK ERROR: {e}"));
                }
                None => {}
            }
        }
        lines
    }
}
