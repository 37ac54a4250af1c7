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
}

/// A container as the simulator stores it: config values as PVE text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ct {
    pub vmid: u32,
    pub node: String,
    pub running: bool,
    pub conf: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
    /// Snapshots by name: the config at snapshot time (proxmox-api.md snapshot endpoints).
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
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
    /// Milliseconds after the simulator's start when it ends; `None`: stuck.
    pub ends_at_ms: Option<u64>,
    pub fail: Option<String>,
    pub effect: Effect,
    pub done: bool,
    pub exitstatus: Option<String>,
    pub endtime: Option<u64>,
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
}

pub struct Host {
    pub node: String,
    pub p: Persisted,
    pub epoch: Instant,
    pub task_duration: Duration,
    pub faults: Faults,
    pub rng: rand::rngs::StdRng,
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

fn normalize(vmid: u32, key: &str, v: &str) -> String {
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

/// `STORAGE:N` (create syntax) → `STORAGE:vm-VMID-disk-0,size=NG`.
fn allocate_rootfs(vmid: u32, v: &str) -> String {
    let (volume, rest) = v
        .split_once(',')
        .map(|(a, b)| (a, Some(b)))
        .unwrap_or((v, None));
    if let Some((storage, size)) = volume.split_once(':')
        && let Ok(gib) = size.parse::<u64>()
    {
        let mut s = format!("{storage}:vm-{vmid}-disk-0,size={gib}G");
        if let Some(r) = rest {
            s.push(',');
            s.push_str(r);
        }
        return s;
    }
    v.to_string()
}

pub fn rootfs_gib(v: &str) -> Option<u64> {
    v.split(',')
        .find_map(|p| p.strip_prefix("size="))
        .and_then(|s| s.trim_end_matches('G').parse().ok())
}

/// The config file text PVE would write (the digest is its SHA-1).
pub fn config_text(ct: &Ct) -> String {
    let mut out = String::new();
    if let Some(d) = ct.conf.get("description") {
        for line in d.trim_end_matches('\n').split('\n') {
            out.push('#');
            out.push_str(line);
            out.push('\n');
        }
    }
    for (k, v) in &ct.conf {
        if k != "description" {
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

pub fn digest(ct: &Ct) -> String {
    hex::encode(Sha1::digest(config_text(ct).as_bytes()))
}

fn missing(node: &str, vmid: u32) -> ApiError {
    ApiError::new(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
}

impl Host {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Applies the effects of every task whose end has come.
    pub fn advance(&mut self) {
        let now = self.now_ms();
        let due: Vec<usize> = self
            .p
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.done && t.ends_at_ms.is_some_and(|e| e <= now))
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.finish(i);
        }
    }

    fn finish(&mut self, i: usize) {
        let t = self.p.tasks[i].clone();
        let vmid = t.vmid;
        let exit = match &t.fail {
            Some(m) => m.clone(),
            None => {
                self.apply(vmid, &t.effect);
                "OK".to_string()
            }
        };
        if t.fail.is_some()
            && let Effect::Create { conf, .. } = &t.effect
        {
            if self.faults.failed_create_keeps_guest {
                // The config was written before the step that failed; the lock is released.
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
            && t.fail.is_some()
        {
            ct.conf.remove("lock");
        }
        let task = &mut self.p.tasks[i];
        task.done = true;
        task.exitstatus = Some(exit);
        task.endtime = Some(unix_now());
    }

    fn apply(&mut self, vmid: u32, effect: &Effect) {
        match effect {
            Effect::Create { conf, start } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.conf = conf.clone();
                    ct.running = *start;
                }
            }
            Effect::Start | Effect::Reboot => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.running = true;
                    let pending = std::mem::take(&mut ct.pending);
                    ct.conf.extend(pending);
                }
            }
            Effect::Stop => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.running = false;
                }
            }
            Effect::Destroy => {
                self.p.cts.remove(&vmid);
            }
            Effect::SnapshotCreate { name, description } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    let snap = Snapshot {
                        description: description.clone(),
                        snaptime: unix_now(),
                        conf: ct.conf.clone(),
                    };
                    ct.snapshots.insert(name.clone(), snap);
                }
            }
            Effect::SnapshotDelete { name } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid) {
                    ct.snapshots.remove(name);
                }
            }
            Effect::SnapshotRollback { name } => {
                // PVE stops a running CT before rolling back (`start` is not modelled).
                if let Some(ct) = self.p.cts.get_mut(&vmid)
                    && let Some(snap) = ct.snapshots.get(name)
                {
                    ct.conf = snap.conf.clone();
                    ct.pending.clear();
                    ct.running = false;
                }
            }
            Effect::Resize { disk, size_gib } => {
                if let Some(ct) = self.p.cts.get_mut(&vmid)
                    && let Some(v) = ct.conf.get(disk).cloned()
                {
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
                }
            }
        }
    }

    /// The task holding this CT's config flock, if any.
    pub fn holder(&self, vmid: u32) -> Option<&Task> {
        self.p
            .tasks
            .iter()
            .find(|t| t.vmid == vmid && !t.done && t.node == self.node)
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
                snapshots: BTreeMap::new(),
            },
        );
    }

    fn new_task(&mut self, worker_type: &str, vmid: u32, user: &str, effect: Effect) -> String {
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
        let ends_at_ms = if self.faults.stuck_tasks.contains(worker_type) {
            None
        } else {
            Some(self.now_ms() + self.task_duration.as_millis() as u64)
        };
        self.p.tasks.push(Task {
            upid: upid.clone(),
            node: self.node.clone(),
            worker_type: worker_type.to_string(),
            vmid,
            user: user.to_string(),
            starttime,
            pid,
            pstart,
            ends_at_ms,
            fail,
            effect,
            done: false,
            exitstatus: None,
            endtime: None,
        });
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
        let mut conf = BTreeMap::new();
        conf.insert("arch".into(), "amd64".into());
        conf.insert("ostype".into(), "debian".into());
        conf.insert("unprivileged".into(), "1".into());
        conf.insert("hostname".into(), format!("CT{vmid}"));
        conf.insert("memory".into(), "512".into());
        conf.insert("swap".into(), "512".into());
        conf.insert("cores".into(), "1".into());
        conf.insert("rootfs".into(), format!("local:vm-{vmid}-disk-0,size=4G"));
        for (k, v) in params {
            if matches!(
                k.as_str(),
                "vmid"
                    | "ostemplate"
                    | "start"
                    | "node"
                    | "storage"
                    | "password"
                    | "ssh-public-keys"
                    | "pool"
                    | "force"
                    | "restore"
                    | "unique"
                    | "ignore-unpack-errors"
                    | "bwlimit"
            ) {
                continue;
            }
            let v = if k == "rootfs" || k.starts_with("mp") {
                allocate_rootfs(vmid, v)
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
                snapshots: BTreeMap::new(),
            },
        );
        Ok(self.new_task("vzcreate", vmid, user, Effect::Create { conf, start }))
    }

    fn check_lock(ct: &Ct) -> Result<(), ApiError> {
        match ct.conf.get("lock") {
            Some(l) => Err(ApiError::new(500, format!("CT is locked ({l})"))),
            None => Ok(()),
        }
    }

    pub fn power(&mut self, vmid: u32, action: &str, user: &str) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        Self::check_lock(&ct)?;
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
                    return Err(ApiError::new(500, format!("CT {vmid} not running")));
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

    /// `POST .../snapshot`: a `vzsnapshot` task that freezes the current config.
    pub fn snapshot_create(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
        user: &str,
    ) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        Self::check_lock(&ct)?;
        let name = params.get("snapname").cloned().unwrap_or_default();
        if ct.snapshots.contains_key(&name) || name == "current" {
            return Err(ApiError::new(
                500,
                format!("snapshot name '{name}' already used"),
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

    /// `DELETE .../snapshot/{snapname}` (`vzdelsnapshot`) or `POST .../rollback` (`vzrollback`).
    pub fn snapshot_change(
        &mut self,
        vmid: u32,
        name: &str,
        rollback: bool,
        user: &str,
    ) -> Result<String, ApiError> {
        let ct = self.local(vmid)?.clone();
        Self::check_lock(&ct)?;
        if !ct.snapshots.contains_key(name) {
            return Err(ApiError::new(
                500,
                format!("snapshot '{name}' does not exist"),
            ));
        }
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

    pub fn put_config(
        &mut self,
        vmid: u32,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let ct = self.local(vmid)?.clone();
        if let Some(d) = params.get("digest")
            && *d != digest(&ct)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let only_lock_change = params.keys().all(|k| k == "lock" || k == "digest");
        if !only_lock_change {
            Self::check_lock(&ct)?;
        }
        let ct = self.p.cts.get_mut(&vmid).ok_or_else(|| missing("", vmid))?;
        for (k, v) in params {
            if matches!(k.as_str(), "digest" | "delete" | "revert" | "node" | "vmid") {
                continue;
            }
            let v = if k.starts_with("mp") && !v.contains("vm-") {
                allocate_rootfs(vmid, v)
            } else {
                normalize(vmid, k, v)
            };
            if ct.running && !is_hot(k) {
                ct.pending.insert(k.clone(), v);
            } else {
                ct.conf.insert(k.clone(), v);
            }
        }
        if let Some(del) = params.get("delete") {
            for k in del.split([',', ';', ' ']).filter(|k| !k.is_empty()) {
                ct.conf.remove(k);
                ct.pending.remove(k);
            }
        }
        Ok(())
    }

    /// The merged (default) or current view of a config, with `digest`.
    pub fn config_json(&self, vmid: u32, current: bool) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        let mut m = serde_json::Map::new();
        let mut conf = ct.conf.clone();
        if !current {
            conf.extend(ct.pending.clone());
        }
        for (k, v) in conf {
            let val = match k.as_str() {
                "cores" | "memory" | "swap" | "cpuunits" | "onboot" | "protection"
                | "unprivileged" | "tty" => v
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or(serde_json::Value::String(v)),
                // `number` keys come back as strings, as PVE does.
                _ => serde_json::Value::String(v),
            };
            m.insert(k, val);
        }
        m.insert("digest".into(), digest(ct).into());
        Ok(serde_json::Value::Object(m))
    }

    pub fn pending_json(&self, vmid: u32) -> Result<serde_json::Value, ApiError> {
        let ct = self.local(vmid)?;
        let mut keys: BTreeSet<&String> = ct.conf.keys().collect();
        keys.extend(ct.pending.keys());
        let rows: Vec<serde_json::Value> = keys
            .into_iter()
            .map(|k| {
                let mut o = serde_json::Map::new();
                o.insert("key".into(), k.clone().into());
                if let Some(v) = ct.conf.get(k) {
                    o.insert("value".into(), v.clone().into());
                }
                if let Some(v) = ct.pending.get(k) {
                    o.insert("pending".into(), v.clone().into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        Ok(serde_json::Value::Array(rows))
    }

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
            "swap": 0, "disk": 0, "cpu": 0, "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
            "uptime": if ct.running { 100 } else { 0 },
        });
        if let Some(l) = ct.conf.get("lock") {
            o["lock"] = l.clone().into();
        }
        if let Some(t) = ct.conf.get("tags") {
            o["tags"] = t.clone().into();
        }
        o
    }

    pub fn task_status_json(&self, t: &Task) -> serde_json::Value {
        let (user, tokenid) = match t.user.split_once('!') {
            Some((u, tok)) => (u.to_string(), Some(tok.to_string())),
            None => (t.user.clone(), None),
        };
        let mut o = serde_json::json!({
            "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
            "starttime": t.starttime, "type": t.worker_type, "id": t.vmid.to_string(),
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

    pub fn task_log(&self, t: &Task) -> Vec<String> {
        let mut lines = vec![format!("starting {} for CT {}", t.worker_type, t.vmid)];
        if t.done {
            match t.exitstatus.as_deref() {
                Some("OK") => lines.push("TASK OK".into()),
                Some(e) => lines.push(format!("TASK ERROR: {e}")),
                None => {}
            }
        }
        lines
    }
}
