//! Typed responses. Fields PVE only sometimes sends are `Option`; numbers and booleans are
//! decoded leniently (see [`crate::lenient`]); unknown fields are ignored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::lenient;
use crate::property::{Features, MountConfig, NetConfig, PropertyError};
use crate::upid::Upid;

/// `GET /version`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub repoid: Option<String>,
}

/// Run state of a guest. PVE reports `running`/`stopped` (and `unknown` in cluster resources
/// without RRD data); anything else is kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GuestStatus {
    Running,
    Stopped,
    Other(String),
}

impl<'de> Deserialize<'de> for GuestStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "running" => GuestStatus::Running,
            "stopped" => GuestStatus::Stopped,
            _ => GuestStatus::Other(s),
        })
    }
}

impl fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestStatus::Running => "running",
            GuestStatus::Stopped => "stopped",
            GuestStatus::Other(s) => s,
        })
    }
}

/// One entry of `GET /nodes/{node}/lxc` (also the body of `status/current`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LxcListEntry {
    #[serde(deserialize_with = "lenient::u32_")]
    pub vmid: u32,
    pub status: GuestStatus,
    #[serde(default)]
    pub name: Option<String>,
    /// Only present while set (`backup`, `create`, ...).
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub template: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpus: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpu: Option<f64>,
    /// Bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxswap: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub swap: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxdisk: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub disk: Option<u64>,
    /// Seconds.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub netin: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub netout: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub diskread: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub diskwrite: Option<u64>,
}

impl LxcListEntry {
    pub fn is_running(&self) -> bool {
        self.status == GuestStatus::Running
    }
    pub fn is_template(&self) -> bool {
        self.template.unwrap_or(false)
    }
}

/// HA state in `status/current`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HaStatus {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub managed: Option<bool>,
    #[serde(default)]
    pub state: Option<String>,
}

impl HaStatus {
    /// HA owns the power state: a start/stop task OK does not prove the result.
    pub fn is_managed(&self) -> bool {
        self.managed.unwrap_or(false)
    }
}

/// `GET /nodes/{node}/lxc/{vmid}/status/current`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LxcStatus {
    #[serde(flatten)]
    pub entry: LxcListEntry,
    #[serde(default)]
    pub ha: HaStatus,
}

/// `GET /nodes/{node}/lxc/{vmid}/config`, with property strings parsed.
///
/// Keys without a typed field (e.g. `arch`, `cmode`, `timezone`, `dev0`, `unused0`, `startup`)
/// are in `extra` as text. Raw `lxc.*` keys are in `lxc`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LxcConfig {
    /// SHA-1 of the config file; send it back with `PUT config` to detect concurrent changes.
    pub digest: Option<String>,
    pub hostname: Option<String>,
    pub ostype: Option<String>,
    pub arch: Option<String>,
    pub cores: Option<u32>,
    /// Stored as a string by PVE (`"0"`, `"1.5"`).
    pub cpulimit: Option<f64>,
    pub cpuunits: Option<u64>,
    /// MiB.
    pub memory: Option<u64>,
    /// MiB.
    pub swap: Option<u64>,
    pub onboot: Option<bool>,
    pub protection: Option<bool>,
    pub unprivileged: Option<bool>,
    pub template: Option<bool>,
    /// Read back with a trailing newline per line.
    pub description: Option<String>,
    /// Raw `;`-joined text; see [`crate::property::parse_tags`].
    pub tags: Option<String>,
    pub nameserver: Option<String>,
    pub searchdomain: Option<String>,
    pub lock: Option<String>,
    /// Current snapshot.
    pub parent: Option<String>,
    pub features: Option<Features>,
    pub rootfs: Option<MountConfig>,
    pub net: BTreeMap<u32, NetConfig>,
    pub mp: BTreeMap<u32, MountConfig>,
    /// `lxc.*` keys as `[key, value]` pairs (not settable through the API).
    pub lxc: Vec<(String, String)>,
    pub extra: BTreeMap<String, String>,
}

/// Prefixes an error with the config key it belongs to.
fn at<T>(key: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("key {key:?}: {e}"))
}

fn indexed(key: &str, prefix: &str) -> Option<u32> {
    let rest = key.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 4 {
        return None;
    }
    rest.parse().ok()
}

impl LxcConfig {
    /// Builds the typed config from the raw JSON object, naming the key on any error.
    pub fn from_map(map: serde_json::Map<String, Value>) -> Result<Self, String> {
        use lenient::Scalar;
        let mut c = LxcConfig::default();
        let scalar = |k: &str, v: Value| -> Result<Scalar, String> {
            serde_json::from_value::<Scalar>(v).map_err(|e| format!("key {k:?}: {e}"))
        };
        let text =
            |k: &str, v: Value| -> Result<Option<String>, String> { Ok(scalar(k, v)?.into_text()) };
        let prop = |k: &str, e: PropertyError| format!("key {k:?}: {e}");
        for (k, v) in map {
            let key = k.as_str();
            if v.is_null() {
                continue;
            }
            match key {
                "digest" => c.digest = text(key, v)?,
                "hostname" => c.hostname = text(key, v)?,
                "ostype" => c.ostype = text(key, v)?,
                "arch" => c.arch = text(key, v)?,
                "description" => c.description = text(key, v)?,
                "tags" => c.tags = text(key, v)?,
                "nameserver" => c.nameserver = text(key, v)?,
                "searchdomain" => c.searchdomain = text(key, v)?,
                "lock" => c.lock = text(key, v)?,
                "parent" => c.parent = text(key, v)?,
                "cores" => {
                    let n = at(key, scalar(key, v)?.to_u64())?;
                    c.cores =
                        Some(u32::try_from(n).map_err(|_| format!("key {key:?}: out of range"))?);
                }
                "cpulimit" => c.cpulimit = Some(at(key, scalar(key, v)?.to_f64())?),
                "cpuunits" => c.cpuunits = Some(at(key, scalar(key, v)?.to_u64())?),
                "memory" => c.memory = Some(at(key, scalar(key, v)?.to_u64())?),
                "swap" => c.swap = Some(at(key, scalar(key, v)?.to_u64())?),
                "onboot" => c.onboot = Some(at(key, scalar(key, v)?.to_bool())?),
                "protection" => c.protection = Some(at(key, scalar(key, v)?.to_bool())?),
                "unprivileged" => c.unprivileged = Some(at(key, scalar(key, v)?.to_bool())?),
                "template" => c.template = Some(at(key, scalar(key, v)?.to_bool())?),
                "features" => {
                    if let Some(s) = text(key, v)? {
                        c.features = Some(s.parse().map_err(|e| prop(key, e))?);
                    }
                }
                "rootfs" => {
                    if let Some(s) = text(key, v)? {
                        c.rootfs = Some(s.parse().map_err(|e| prop(key, e))?);
                    }
                }
                "lxc" => {
                    let pairs: Vec<(String, String)> = serde_json::from_value(v)
                        .map_err(|e| format!("key \"lxc\": expected [[key, value], ...]: {e}"))?;
                    c.lxc = pairs;
                }
                _ => {
                    if let Some(i) = indexed(key, "net") {
                        if let Some(s) = text(key, v)? {
                            c.net.insert(i, s.parse().map_err(|e| prop(key, e))?);
                        }
                    } else if let Some(i) = indexed(key, "mp") {
                        if let Some(s) = text(key, v)? {
                            c.mp.insert(i, s.parse().map_err(|e| prop(key, e))?);
                        }
                    } else if let Some(s) = match v {
                        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
                        other => text(key, other)?,
                    } {
                        c.extra.insert(k, s);
                    }
                }
            }
        }
        Ok(c)
    }
}

impl<'de> Deserialize<'de> for LxcConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, Value>::deserialize(d)?;
        LxcConfig::from_map(map).map_err(serde::de::Error::custom)
    }
}

/// One entry of `GET /nodes/{node}/lxc/{vmid}/pending`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PendingEntry {
    pub key: String,
    /// Current value, as text.
    #[serde(default, deserialize_with = "lenient::opt_text")]
    pub value: Option<String>,
    /// Value that applies at the next start/reboot, as text.
    #[serde(default, deserialize_with = "lenient::opt_text")]
    pub pending: Option<String>,
    /// The key is scheduled for deletion (PVE sends `1`, or `2` for a forced delete).
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub delete: Option<bool>,
}

impl PendingEntry {
    /// True when this key has a change waiting for the next start/reboot.
    pub fn has_pending_change(&self) -> bool {
        self.pending.is_some() || self.delete.unwrap_or(false)
    }
}

impl LxcConfig {
    /// The config `GET .../config` returns by default (pending values merged in, keys pending
    /// deletion left out), rebuilt from the entries of `GET .../pending`, which carry every
    /// key's current and pending value and the digest. Errors name the key.
    pub fn from_pending(entries: &[PendingEntry]) -> Result<LxcConfig, String> {
        let mut map = serde_json::Map::new();
        for e in entries {
            if e.delete.unwrap_or(false) {
                continue;
            }
            if let Some(v) = e.pending.as_ref().or(e.value.as_ref()) {
                map.insert(e.key.clone(), Value::String(v.clone()));
            }
        }
        LxcConfig::from_map(map)
    }
}

/// One entry of `GET /nodes/{node}/lxc/{vmid}/snapshot` (includes the synthetic `current`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SnapshotEntry {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub snaptime: Option<i64>,
    /// Set on incomplete snapshots (`prepare`, `delete`).
    #[serde(default)]
    pub snapstate: Option<String>,
    /// Only on `current`.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub running: Option<bool>,
    /// Only on `current`.
    #[serde(default)]
    pub digest: Option<String>,
}

/// `running` or `stopped`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Stopped,
}

/// How a stopped task ended, classified like `PVE::UPID::status_is_error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskExit {
    Ok,
    /// `WARNINGS: n`: a success with warnings.
    Warnings(u32),
    /// Any other exit status text is an error.
    Error(String),
}

impl TaskExit {
    pub fn from_exitstatus(s: &str) -> Self {
        if s == "OK" {
            return TaskExit::Ok;
        }
        if let Some(n) = s.strip_prefix("WARNINGS: ")
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            return TaskExit::Warnings(n.parse().unwrap_or(u32::MAX));
        }
        TaskExit::Error(s.to_owned())
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub upid: Upid,
    pub status: TaskState,
    /// Only when stopped: `OK`, `WARNINGS: n` or the error text.
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default, rename = "type")]
    pub worker_type: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    /// `user@realm` (the token part is split off into `tokenid`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tokenid: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pstart: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub starttime: Option<i64>,
}

impl TaskStatus {
    /// `None` while running.
    pub fn exit(&self) -> Option<TaskExit> {
        match self.status {
            TaskState::Running => None,
            TaskState::Stopped => Some(TaskExit::from_exitstatus(
                self.exitstatus.as_deref().unwrap_or("unexpected status"),
            )),
        }
    }
}

/// One line of `GET /nodes/{node}/tasks/{upid}/log`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TaskLogLine {
    #[serde(deserialize_with = "lenient::u64_")]
    pub n: u64,
    pub t: String,
}

/// A page of a task log plus the total line count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLog {
    pub lines: Vec<TaskLogLine>,
    pub total: Option<u64>,
}

/// One entry of `GET /nodes/{node}/tasks`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TaskListEntry {
    pub upid: Upid,
    #[serde(default, rename = "type")]
    pub worker_type: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tokenid: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub starttime: Option<i64>,
    /// Only for finished tasks.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub endtime: Option<i64>,
    /// `RUNNING` for active tasks; the exit status text for archived ones.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub pstart: Option<u64>,
}

impl TaskListEntry {
    pub fn is_running(&self) -> bool {
        self.endtime.is_none() && self.status.as_deref().is_none_or(|s| s == "RUNNING")
    }
}

/// One address in `GET .../interfaces`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct InterfaceAddress {
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    /// `inet` or `inet6`.
    #[serde(rename = "ip-address-type")]
    pub ip_address_type: String,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub prefix: Option<u32>,
}

/// One entry of `GET /nodes/{node}/lxc/{vmid}/interfaces` (running CTs only).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct InterfaceInfo {
    pub name: String,
    #[serde(default)]
    pub hwaddr: Option<String>,
    #[serde(default)]
    pub inet: Option<String>,
    #[serde(default)]
    pub inet6: Option<String>,
    #[serde(default, rename = "ip-addresses")]
    pub ip_addresses: Vec<InterfaceAddress>,
}

/// One entry of `GET /cluster/resources?type=vm`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClusterResource {
    /// `lxc/101`, `qemu/200`.
    pub id: String,
    /// `lxc` or `qemu`.
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub vmid: Option<u32>,
    #[serde(default)]
    pub node: Option<String>,
    /// `unknown` while pvestatd has no data.
    #[serde(default)]
    pub status: Option<GuestStatus>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub template: Option<bool>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub hastate: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub maxcpu: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cpu: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxmem: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxdisk: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub disk: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_exit_classification() {
        assert_eq!(TaskExit::from_exitstatus("OK"), TaskExit::Ok);
        assert_eq!(
            TaskExit::from_exitstatus("WARNINGS: 3"),
            TaskExit::Warnings(3)
        );
        assert_eq!(
            TaskExit::from_exitstatus("WARNINGS: x"),
            TaskExit::Error("WARNINGS: x".into())
        );
        assert_eq!(
            TaskExit::from_exitstatus("unexpected status"),
            TaskExit::Error("unexpected status".into())
        );
    }
}

// ---------------------------------------------------------------- storage and backups

/// One entry of `GET /nodes/{node}/storage`, or `GET .../storage/{storage}/status` (which
/// has no `storage` key).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StorageStatus {
    #[serde(default)]
    pub storage: Option<String>,
    /// `dir`, `lvmthin`, `zfspool`, `rbd`, `btrfs`, `pbs`, ...
    #[serde(rename = "type")]
    pub storage_type: String,
    /// Comma-separated content types (`backup,iso,vztmpl`).
    #[serde(default)]
    pub content: String,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub shared: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub used: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub avail: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub used_fraction: Option<f64>,
}

impl StorageStatus {
    /// Whether the storage holds content of this type (`backup`, `rootdir`, ...).
    pub fn supports(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == content)
    }
}

/// PBS's last verification of a backup.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub state: String,
    #[serde(default)]
    pub upid: Option<String>,
}

/// One entry of `GET /nodes/{node}/storage/{storage}/content`. For backups `ctime` is what
/// PVE reports (node local time parsed from the file name, or PBS's UTC backup time): compare
/// it as given, never recompute it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StorageContentEntry {
    pub volid: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    /// Missing where the exact size is costly (then `approximate_size`).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    #[serde(
        default,
        rename = "approximate-size",
        deserialize_with = "lenient::opt_u64"
    )]
    pub approximate_size: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub used: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub ctime: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub vmid: Option<u32>,
    /// `lxc` or `qemu` for backups.
    #[serde(default)]
    pub subtype: Option<String>,
    /// The first line of the notes only.
    #[serde(default)]
    pub notes: Option<String>,
    /// Present (and true) only when set.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub protected: Option<bool>,
    #[serde(default)]
    pub encrypted: Option<String>,
    #[serde(default)]
    pub verification: Option<Verification>,
    #[serde(default)]
    pub parent: Option<String>,
}

impl StorageContentEntry {
    pub fn is_protected(&self) -> bool {
        self.protected.unwrap_or(false)
    }
}

/// `GET /nodes/{node}/storage/{storage}/content/{volume}`. For file storages `path` is the
/// archive on the host (hashable by a reader of the mount); for PBS an artificial `pbs://`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VolumeInfo {
    pub path: String,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub used: Option<u64>,
    #[serde(default)]
    pub format: Option<String>,
    /// The full notes.
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub protected: Option<bool>,
}

/// What `POST /nodes/{node}/vzdump` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VzdumpStarted {
    /// A `vzdump` task; its outcome is in the task status and log.
    Task(Upid),
    /// PVE's plain `"OK"`: none of the vmids is on this node, so nothing ran and nothing
    /// was backed up.
    NotOnNode,
}

/// `GET /nodes/{node}/vzdump/defaults`: the effective options for a storage (typed where the
/// agent reads them; everything else in `other`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VzdumpDefaults {
    #[serde(default)]
    pub storage: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_text")]
    pub compress: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub remove: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub lockwait: Option<u64>,
    /// The storage's retention (`keep-all=1`, `keep-last=3,...`).
    #[serde(default, rename = "prune-backups")]
    pub prune_backups: Option<String>,
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// One entry of `GET .../prunebackups` (a dry run).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PruneEntry {
    pub volid: String,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub ctime: Option<i64>,
    /// `keep`, `remove`, `protected` or `renamed`.
    pub mark: String,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub vmid: Option<u32>,
    #[serde(default, rename = "type")]
    pub guest_type: Option<String>,
}

/// The backup volid a vzdump log names (the API does not return it, `safety-nets.md` §1.1):
/// `<storage>:backup/<basename>` of `INFO: creating vzdump archive '<path>'`, or
/// `<storage>:backup/<name>` of `INFO: creating Proxmox Backup Server archive '<name>'`.
/// Confirm it in the content listing before relying on it.
pub fn backup_volid_from_log(storage: &str, lines: &[TaskLogLine]) -> Option<String> {
    lines.iter().find_map(|l| {
        let t = l.t.strip_prefix("INFO: ").unwrap_or(&l.t);
        if let Some(rest) = t.strip_prefix("creating vzdump archive '") {
            let path = rest.strip_suffix('\'')?;
            let base = path.rsplit('/').next().filter(|b| !b.is_empty())?;
            return Some(format!("{storage}:backup/{base}"));
        }
        let name = t
            .strip_prefix("creating Proxmox Backup Server archive '")?
            .strip_suffix('\'')?;
        (!name.is_empty()).then(|| format!("{storage}:backup/{name}"))
    })
}

#[cfg(test)]
mod storage_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(n: u64, t: &str) -> TaskLogLine {
        TaskLogLine { n, t: t.into() }
    }

    #[test]
    fn volid_from_the_log_lines_of_pve() {
        // The lines of `safety-nets.md` §1.1.
        let log = [
            line(
                1,
                "INFO: starting new backup job: vzdump 101 --storage safety",
            ),
            line(
                2,
                "INFO: creating vzdump archive '/mnt/pve/safety/dump/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst'",
            ),
        ];
        assert_eq!(
            backup_volid_from_log("safety", &log).as_deref(),
            Some("safety:backup/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst")
        );
        let pbs = [line(
            1,
            "INFO: creating Proxmox Backup Server archive 'ct/101/2026-01-02T03:04:05Z'",
        )];
        assert_eq!(
            backup_volid_from_log("pbs", &pbs).as_deref(),
            Some("pbs:backup/ct/101/2026-01-02T03:04:05Z")
        );
        assert_eq!(backup_volid_from_log("x", &[line(1, "TASK OK")]), None);
        assert_eq!(
            backup_volid_from_log("x", &[line(1, "INFO: creating vzdump archive '")]),
            None
        );
    }

    #[test]
    fn content_entries_decode_as_pve_sends_them() {
        let e: StorageContentEntry = serde_json::from_str(
            r#"{"volid":"local:backup/vzdump-lxc-101-2026_01_02-03_04_05.tar.zst","content":"backup","format":"tar.zst","size":"1234","ctime":1767322800,"vmid":"101","subtype":"lxc","notes":"drover","protected":1}"#,
        )
        .unwrap();
        assert!(e.is_protected());
        assert_eq!(e.size, Some(1234));
        assert_eq!(e.vmid, Some(101));
        let s: StorageStatus = serde_json::from_str(
            r#"{"type":"dir","content":"backup,iso,vztmpl","active":1,"total":100,"used":"40","avail":60}"#,
        )
        .unwrap();
        assert!(s.supports("backup") && !s.supports("rootdir"));
    }
}
