//! Typed request parameters, encoded the way pvesh and proxmoxer send them: form fields (query
//! string for GET/DELETE), booleans as `1`/`0` (PVE refuses `true` in forms).

use std::collections::BTreeMap;
use std::fmt;

use crate::property::{DiskSize, Features, MountConfig, NetConfig};

/// Ordered form/query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Params(Vec::new())
    }
    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: impl Into<String>, value: impl fmt::Display) -> &mut Self {
        let key = key.into();
        let value = value.to_string();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
        self
    }
    /// Sets a boolean as `1`/`0`.
    pub fn set_bool(&mut self, key: impl Into<String>, value: bool) -> &mut Self {
        self.set(key, u8::from(value))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A `PUT /nodes/{node}/lxc/{vmid}/config` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigUpdate {
    /// Keys to set, as PVE text (use the typed setters for property strings).
    pub set: BTreeMap<String, String>,
    /// Keys to delete.
    pub delete: Vec<String>,
    /// The `digest` from the `GET config` this update was planned against.
    pub digest: Option<String>,
}

impl ConfigUpdate {
    pub fn new() -> Self {
        Self::default()
    }
    /// Guard the update with the digest of the config it was planned against.
    pub fn with_digest(mut self, digest: impl Into<String>) -> Self {
        self.digest = Some(digest.into());
        self
    }
    pub fn set(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.set.insert(key.into(), value.to_string());
        self
    }
    pub fn set_bool(self, key: impl Into<String>, value: bool) -> Self {
        self.set(key, u8::from(value))
    }
    pub fn net(self, index: u32, net: &NetConfig) -> Self {
        self.set(format!("net{index}"), net)
    }
    pub fn mp(self, index: u32, mp: &MountConfig) -> Self {
        self.set(format!("mp{index}"), mp)
    }
    pub fn rootfs(self, rootfs: &MountConfig) -> Self {
        self.set("rootfs", rootfs)
    }
    pub fn features(self, features: &Features) -> Self {
        self.set("features", features)
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.delete.push(key.into());
        self
    }
    /// True when there is nothing to send (PVE answers `no options specified`).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }

    pub(crate) fn to_params(&self) -> Result<Params, String> {
        let mut p = Params::new();
        for (k, v) in &self.set {
            if matches!(k.as_str(), "digest" | "delete" | "revert" | "node" | "vmid") {
                return Err(format!("{k:?} cannot be set as a config key"));
            }
            if !valid_key(k) {
                return Err(format!("{k:?} is not a config key"));
            }
            p.set(k.clone(), v);
        }
        if !self.delete.is_empty() {
            if let Some(bad) = self.delete.iter().find(|k| !valid_key(k)) {
                return Err(format!("{bad:?} is not a config key"));
            }
            p.set("delete", self.delete.join(","));
        }
        if let Some(d) = &self.digest {
            p.set("digest", d);
        }
        Ok(p)
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `POST /nodes/{node}/lxc` request. The CT is always created with `start=0`: the agent
/// starts it as a separate, journaled step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateLxc {
    pub vmid: u32,
    /// Volume id of the template, e.g. `local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst`.
    pub ostemplate: String,
    /// Other create parameters as PVE text (`hostname`, `memory`, `net0`, `rootfs`, ...).
    pub params: BTreeMap<String, String>,
}

impl CreateLxc {
    pub fn new(vmid: u32, ostemplate: impl Into<String>) -> Self {
        CreateLxc {
            vmid,
            ostemplate: ostemplate.into(),
            params: BTreeMap::new(),
        }
    }
    pub fn param(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.params.insert(key.into(), value.to_string());
        self
    }

    pub(crate) fn to_params(&self) -> Result<Params, String> {
        let mut p = Params::new();
        p.set("vmid", self.vmid);
        p.set("ostemplate", &self.ostemplate);
        for (k, v) in &self.params {
            if matches!(k.as_str(), "vmid" | "ostemplate" | "start" | "node") {
                return Err(format!(
                    "{k:?} is set by the client and cannot be passed as a param"
                ));
            }
            if !valid_key(k) {
                return Err(format!("{k:?} is not a create parameter"));
            }
            p.set(k.clone(), v);
        }
        p.set_bool("start", false);
        Ok(p)
    }
}

/// Options of `POST .../status/shutdown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownOptions {
    /// Seconds to wait (PVE default 60).
    pub timeout: Option<u32>,
    /// Kill the CT when the timeout passes; without it the task fails ("container did not stop").
    pub force_stop: bool,
}

/// Options of `DELETE /nodes/{node}/lxc/{vmid}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyOptions {
    /// Also remove the CT from backup jobs, replication and HA.
    pub purge: bool,
    /// Also destroy disks not referenced in the config.
    pub destroy_unreferenced_disks: bool,
    /// Stop a running CT first.
    pub force: bool,
}

impl Default for DestroyOptions {
    /// `purge=1`, `destroy-unreferenced-disks=1`, `force=0`: a full cleanup of a stopped CT.
    fn default() -> Self {
        DestroyOptions {
            purge: true,
            destroy_unreferenced_disks: true,
            force: false,
        }
    }
}

/// The `size` of a resize: absolute, or growth by an amount (`+1G`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeSize {
    Absolute(DiskSize),
    Grow(DiskSize),
}

impl fmt::Display for ResizeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeSize::Absolute(s) => write!(f, "{s}"),
            ResizeSize::Grow(s) => write!(f, "+{s}"),
        }
    }
}

/// Which tasks `GET /nodes/{node}/tasks` lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskSource {
    /// Running tasks only: use this to detect someone else's operation on a CT.
    Active,
    /// Finished tasks (PVE's default).
    #[default]
    Archive,
    All,
}

/// Filters of `GET /nodes/{node}/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskListFilter {
    pub vmid: Option<u32>,
    /// Worker type, e.g. `vzdump`.
    pub typefilter: Option<String>,
    /// Only tasks started at or after this epoch second.
    pub since: Option<i64>,
    pub source: TaskSource,
    /// PVE's default is 50.
    pub limit: Option<u32>,
}

impl TaskListFilter {
    /// Running tasks of one CT.
    pub fn active_for(vmid: u32) -> Self {
        TaskListFilter {
            vmid: Some(vmid),
            source: TaskSource::Active,
            ..Self::default()
        }
    }

    pub(crate) fn to_params(&self) -> Params {
        let mut p = Params::new();
        if let Some(v) = self.vmid {
            p.set("vmid", v);
        }
        if let Some(t) = &self.typefilter {
            p.set("typefilter", t);
        }
        if let Some(s) = self.since {
            p.set("since", s);
        }
        p.set(
            "source",
            match self.source {
                TaskSource::Active => "active",
                TaskSource::Archive => "archive",
                TaskSource::All => "all",
            },
        );
        if let Some(l) = self.limit {
            p.set("limit", l);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_update_encoding() {
        let net: NetConfig = "name=eth0,bridge=vmbr0,ip=dhcp".parse().unwrap();
        let u = ConfigUpdate::new()
            .set("memory", 1024)
            .set_bool("onboot", true)
            .net(0, &net)
            .delete("nameserver")
            .delete("mp1")
            .with_digest("abc");
        let p = u.to_params().unwrap();
        assert_eq!(p.get("memory"), Some("1024"));
        assert_eq!(p.get("onboot"), Some("1"));
        assert_eq!(p.get("net0"), Some("name=eth0,bridge=vmbr0,ip=dhcp"));
        assert_eq!(p.get("delete"), Some("nameserver,mp1"));
        assert_eq!(p.get("digest"), Some("abc"));
        assert!(ConfigUpdate::new().set("digest", "x").to_params().is_err());
        assert!(ConfigUpdate::new().set("a b", "x").to_params().is_err());
        assert!(ConfigUpdate::new().delete("x,y").to_params().is_err());
    }

    #[test]
    fn create_forces_start_0() {
        let c = CreateLxc::new(105, "local:vztmpl/x.tar.zst").param("hostname", "web");
        let p = c.to_params().unwrap();
        assert_eq!(p.get("start"), Some("0"));
        assert_eq!(p.get("vmid"), Some("105"));
        assert!(c.clone().param("start", 1).to_params().is_err());
    }

    #[test]
    fn resize_and_tasks() {
        assert_eq!(ResizeSize::Grow(DiskSize::from_gib(1)).to_string(), "+1G");
        assert_eq!(
            ResizeSize::Absolute(DiskSize::from_gib(10)).to_string(),
            "10G"
        );
        let p = TaskListFilter::active_for(101).to_params();
        assert_eq!(p.get("source"), Some("active"));
        assert_eq!(p.get("vmid"), Some("101"));
    }
}

// ---------------------------------------------------------------- storage and backups

/// vzdump's `mode`. A stopped CT is always backed up in `stop` mode; `snapshot` falls back to
/// `suspend` where a volume cannot snapshot (`safety-nets.md` §3 item 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupMode {
    #[default]
    Snapshot,
    Suspend,
    Stop,
}

impl fmt::Display for BackupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupMode::Snapshot => "snapshot",
            BackupMode::Suspend => "suspend",
            BackupMode::Stop => "stop",
        })
    }
}

/// vzdump's `compress` (PVE's default is none: a plain `.tar`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupCompression {
    None,
    Lzo,
    Gzip,
    Zstd,
}

impl fmt::Display for BackupCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupCompression::None => "0",
            BackupCompression::Lzo => "lzo",
            BackupCompression::Gzip => "gzip",
            BackupCompression::Zstd => "zstd",
        })
    }
}

/// A `POST /nodes/{node}/vzdump` of one CT. `storage` is required here: PVE drops
/// `protected` and `notes-template` without it, and its default (`local`) is rarely the
/// place for a safety copy. `remove` is sent only when set (PVE's default `1` prunes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VzdumpRequest {
    pub vmid: u32,
    pub storage: String,
    pub mode: Option<BackupMode>,
    pub compress: Option<BackupCompression>,
    pub protected: bool,
    pub remove: Option<bool>,
    /// One line, ≤ 1024 characters; variables `{{cluster}} {{guestname}} {{node}} {{vmid}}`.
    pub notes_template: Option<String>,
    /// Minutes to wait for the node's global vzdump lock (PVE default 180).
    pub lockwait: Option<u32>,
    /// Minutes to wait for the CT to stop in stop mode (PVE default 10).
    pub stopwait: Option<u32>,
}

impl VzdumpRequest {
    pub fn new(vmid: u32, storage: impl Into<String>) -> Self {
        VzdumpRequest {
            vmid,
            storage: storage.into(),
            mode: None,
            compress: None,
            protected: false,
            remove: None,
            notes_template: None,
            lockwait: None,
            stopwait: None,
        }
    }

    pub(crate) fn to_params(&self) -> Result<Params, String> {
        if self.storage.is_empty() || !valid_key(&self.storage) {
            return Err(format!("{:?} is not a storage id", self.storage));
        }
        let mut p = Params::new();
        p.set("vmid", self.vmid);
        p.set("storage", &self.storage);
        if let Some(m) = self.mode {
            p.set("mode", m);
        }
        if let Some(c) = self.compress {
            p.set("compress", c);
        }
        if self.protected {
            p.set_bool("protected", true);
        }
        if let Some(r) = self.remove {
            p.set_bool("remove", r);
        }
        if let Some(n) = &self.notes_template {
            if n.contains(['\n', '\r']) {
                return Err("notes-template must be a single line (escape newlines as \\n)".into());
            }
            if n.chars().count() > 1024 {
                return Err("notes-template is longer than 1024 characters".into());
            }
            p.set("notes-template", n);
        }
        if let Some(w) = self.lockwait {
            p.set("lockwait", w);
        }
        if let Some(w) = self.stopwait {
            p.set("stopwait", w);
        }
        Ok(p)
    }
}

/// Filters of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentFilter {
    /// `backup`, `vztmpl`, `rootdir`, `images`, `iso`, ...
    pub content: Option<String>,
    pub vmid: Option<u32>,
}

impl ContentFilter {
    /// The backups of one guest.
    pub fn backups_of(vmid: u32) -> Self {
        ContentFilter {
            content: Some("backup".into()),
            vmid: Some(vmid),
        }
    }

    pub(crate) fn to_params(&self) -> Params {
        let mut p = Params::new();
        if let Some(c) = &self.content {
            p.set("content", c);
        }
        if let Some(v) = self.vmid {
            p.set("vmid", v);
        }
        p
    }
}

/// A `PUT .../content/{volume}`: protection and/or notes of a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeUpdate {
    pub protected: Option<bool>,
    /// The new notes (empty removes them).
    pub notes: Option<String>,
}

impl VolumeUpdate {
    pub(crate) fn to_params(&self) -> Result<Params, String> {
        let mut p = Params::new();
        if let Some(v) = self.protected {
            p.set_bool("protected", v);
        }
        if let Some(n) = &self.notes {
            p.set("notes", n);
        }
        if p.is_empty() {
            return Err("nothing to change".into());
        }
        Ok(p)
    }
}

/// A restore: `POST /nodes/{node}/lxc` with `restore=1` and the backup volid as
/// `ostemplate`. `storage` is required (PVE's default `local` usually holds no CTs). Giving
/// `rootfs` in `params` switches PVE to advanced mode (only the given volumes are created).
/// Like [`CreateLxc`] it always sends `start=0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreLxc {
    pub vmid: u32,
    /// The backup volid, e.g. `local:backup/vzdump-lxc-101-2026_01_02-03_04_05.tar.zst`.
    pub archive: String,
    pub storage: String,
    /// Overwrite an existing CT: PVE destroys it (and its snapshots) before extracting, and a
    /// failed extraction then leaves no CT (`safety-nets.md` §3 item 1).
    pub force: bool,
    /// New MACs for every `net[n]`: only for a copy next to the original.
    pub unique: bool,
    /// Config keys that override the archive's, as PVE text.
    pub params: BTreeMap<String, String>,
}

impl RestoreLxc {
    pub fn new(vmid: u32, archive: impl Into<String>, storage: impl Into<String>) -> Self {
        RestoreLxc {
            vmid,
            archive: archive.into(),
            storage: storage.into(),
            force: false,
            unique: false,
            params: BTreeMap::new(),
        }
    }
    pub fn param(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.params.insert(key.into(), value.to_string());
        self
    }

    pub(crate) fn to_params(&self) -> Result<Params, String> {
        if !self.archive.contains(":backup/") {
            return Err(format!("{:?} is not a backup volume id", self.archive));
        }
        if self.storage.is_empty() || !valid_key(&self.storage) {
            return Err(format!("{:?} is not a storage id", self.storage));
        }
        let mut p = Params::new();
        p.set("vmid", self.vmid);
        p.set("ostemplate", &self.archive);
        p.set_bool("restore", true);
        p.set("storage", &self.storage);
        if self.force {
            p.set_bool("force", true);
        }
        if self.unique {
            p.set_bool("unique", true);
        }
        for (k, v) in &self.params {
            if matches!(
                k.as_str(),
                "vmid"
                    | "ostemplate"
                    | "restore"
                    | "storage"
                    | "force"
                    | "unique"
                    | "start"
                    | "node"
            ) {
                return Err(format!(
                    "{k:?} is set by the client and cannot be passed as a param"
                ));
            }
            if !valid_key(k) {
                return Err(format!("{k:?} is not a create parameter"));
            }
            p.set(k.clone(), v);
        }
        p.set_bool("start", false);
        Ok(p)
    }
}

#[cfg(test)]
mod storage_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vzdump_and_restore_encoding() {
        let mut v = VzdumpRequest::new(101, "safety");
        v.mode = Some(BackupMode::Snapshot);
        v.compress = Some(BackupCompression::Zstd);
        v.protected = true;
        v.remove = Some(false);
        v.notes_template = Some("drover:pre-destroy:{{vmid}}".into());
        v.lockwait = Some(10);
        let p = v.to_params().unwrap();
        assert_eq!(
            p.pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            [
                "vmid=101",
                "storage=safety",
                "mode=snapshot",
                "compress=zstd",
                "protected=1",
                "remove=0",
                "notes-template=drover:pre-destroy:{{vmid}}",
                "lockwait=10"
            ]
        );
        v.notes_template = Some("a\nb".into());
        assert!(v.to_params().is_err());
        assert!(VzdumpRequest::new(1, "").to_params().is_err());

        let r = RestoreLxc::new(101, "safety:backup/vzdump-lxc-101-x.tar.zst", "local-lvm");
        let p = r.clone().to_params().unwrap();
        assert_eq!(p.get("restore"), Some("1"));
        assert_eq!(p.get("start"), Some("0"));
        assert_eq!(p.get("force"), None);
        assert!(r.clone().param("force", 1).to_params().is_err());
        assert!(
            RestoreLxc::new(101, "local:vztmpl/x.tar.zst", "local-lvm")
                .to_params()
                .is_err()
        );
        assert!(VolumeUpdate::default().to_params().is_err());
    }
}
