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
