//! The desired-state vocabulary beyond sizing and networking: mount points, device
//! passthrough and `startup`, as values both sides of the comparison share.
//!
//! PVE re-prints what it is given (a new volume `local-lvm:8` becomes
//! `local-lvm:vm-101-disk-1,mp=/srv,size=8G`, booleans become `1`/`0`, absent flags mean their
//! defaults), so the planner compares these parsed values and never text. Each type says which
//! of its fields are managed: `None` is "whatever the guest has".

use std::collections::BTreeMap;

pub use proxmox_client::{DiskSize, MountConfig};

/// Where a mount point's data lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountSource {
    /// A volume PVE allocates on `storage` (`STORAGE:SIZE` at create), grown by resizes.
    Volume { storage: String, size_gib: u64 },
    /// A bind mount of a host directory, or a device mount (`/dev/...`): root-only in PVE, and
    /// allowed in a document only for paths the host's own `drover.toml` lists.
    Host { path: String },
}

/// One `mp[n]` as the document wants it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MountSpec {
    pub source: MountSource,
    /// The path inside the guest (`mp=`).
    pub path: String,
    pub backup: Option<bool>,
    pub ro: Option<bool>,
    pub acl: Option<bool>,
    pub quota: Option<bool>,
    pub replicate: Option<bool>,
    pub shared: Option<bool>,
    /// Sorted and deduplicated (PVE keeps the order given; the meaning does not depend on it).
    pub mountoptions: Option<Vec<String>>,
}

/// The defaults PVE assumes for an absent mount point flag (`pve-lxc-api-schema.json`, `mp[n]`):
/// `acl` has none (absent means the storage's default), so it is compared as given.
fn flag_default(key: &str) -> Option<bool> {
    match key {
        "backup" | "ro" | "quota" | "shared" => Some(false),
        "replicate" => Some(true),
        _ => None,
    }
}

impl MountSpec {
    pub fn is_volume(&self) -> bool {
        matches!(self.source, MountSource::Volume { .. })
    }

    /// The managed flags as `(key, wanted)`, in PVE's key order.
    fn flags(&self) -> Vec<(&'static str, bool)> {
        [
            ("acl", self.acl),
            ("backup", self.backup),
            ("quota", self.quota),
            ("replicate", self.replicate),
            ("ro", self.ro),
            ("shared", self.shared),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// True when every managed option of `self` (path, flags, mount options; not the size or
    /// the storage, which are planned on their own) matches `actual`.
    pub fn options_match(&self, actual: &MountConfig) -> bool {
        if actual.mp.as_deref() != Some(self.path.as_str()) {
            return false;
        }
        for (key, want) in self.flags() {
            let have = match key {
                "acl" => actual.acl,
                "backup" => actual.backup,
                "quota" => actual.quota,
                "replicate" => actual.replicate,
                "ro" => actual.ro,
                _ => actual.shared,
            }
            .or(flag_default(key));
            if have != Some(want) {
                return false;
            }
        }
        if let Some(want) = &self.mountoptions {
            let mut have = actual.mountoptions.clone().unwrap_or_default();
            have.sort();
            have.dedup();
            if &have != want {
                return false;
            }
        }
        true
    }

    /// The value that creates this mount point with a new volume: `STORAGE:GIB,mp=PATH,...`
    /// (PVE allocates the volume and re-prints it with its volume id and size).
    pub fn new_volume_value(&self) -> Option<String> {
        let MountSource::Volume { storage, size_gib } = &self.source else {
            return None;
        };
        let mut m = MountConfig {
            volume: format!("{storage}:{size_gib}"),
            ..MountConfig::default()
        };
        self.apply_options(&mut m);
        Some(m.to_string())
    }

    /// `actual` with this spec's path, flags and mount options: the value that changes the
    /// options of an existing mount point and keeps its volume and size.
    pub fn changed_value(&self, actual: &MountConfig) -> String {
        let mut m = actual.clone();
        self.apply_options(&mut m);
        m.to_string()
    }

    fn apply_options(&self, m: &mut MountConfig) {
        m.mp = Some(self.path.clone());
        for (key, want) in self.flags() {
            let slot = match key {
                "acl" => &mut m.acl,
                "backup" => &mut m.backup,
                "quota" => &mut m.quota,
                "replicate" => &mut m.replicate,
                "ro" => &mut m.ro,
                _ => &mut m.shared,
            };
            *slot = Some(want);
        }
        if let Some(o) = &self.mountoptions {
            m.mountoptions = if o.is_empty() { None } else { Some(o.clone()) };
        }
    }

    /// How people read it in a plan: `local-lvm 32G at /srv/data (backup=1)`.
    pub fn describe(&self) -> String {
        let mut s = match &self.source {
            MountSource::Volume { storage, size_gib } => {
                format!("{storage} {size_gib}G at {}", self.path)
            }
            MountSource::Host { path } => format!("host {path} at {}", self.path),
        };
        let flags: Vec<String> = self
            .flags()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", u8::from(v)))
            .collect();
        if !flags.is_empty() {
            s.push_str(&format!(" ({})", flags.join(",")));
        }
        s
    }
}

/// Whether a mount point (as PVE reports it) is a bind or device mount rather than a volume.
pub fn is_host_mount(m: &MountConfig) -> bool {
    m.volume.starts_with('/')
}

/// One `dev[n]` passthrough as the document declares it (`path`, optional `mode`, `uid`,
/// `gid`, `deny-write`). Root-only in PVE: Drover never sends it, it only checks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DevSpec {
    pub path: String,
    pub mode: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub deny_write: Option<bool>,
}

impl DevSpec {
    /// Parses PVE's `dev[n]` value (`[path=]PATH[,mode=0660][,uid=N][,gid=N][,deny-write=1]`).
    pub fn parse(s: &str) -> Result<DevSpec, String> {
        let mut d = DevSpec {
            path: String::new(),
            mode: None,
            uid: None,
            gid: None,
            deny_write: None,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or(("path", part));
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("{k}={v:?} is not a number"))
            };
            match k {
                "path" => d.path = v.to_string(),
                "mode" => d.mode = Some(v.to_string()),
                "uid" => d.uid = Some(num(v)?),
                "gid" => d.gid = Some(num(v)?),
                "deny-write" => d.deny_write = Some(matches!(v, "1" | "true" | "yes" | "on")),
                other => return Err(format!("{other:?} is not a key of PVE's dev format")),
            }
        }
        if d.path.is_empty() {
            return Err("the device path is missing".into());
        }
        Ok(d)
    }

    /// Same device with the same managed settings (absent ones in `self` are not compared;
    /// `deny-write` absent means 0).
    pub fn matches(&self, actual: &DevSpec) -> bool {
        self.path == actual.path
            && self
                .mode
                .as_ref()
                .is_none_or(|m| actual.mode.as_ref() == Some(m))
            && self.uid.is_none_or(|u| actual.uid == Some(u))
            && self.gid.is_none_or(|g| actual.gid == Some(g))
            && self
                .deny_write
                .is_none_or(|w| actual.deny_write.unwrap_or(false) == w)
    }
}

/// A volume Drover detached from a mount point, as its journal remembers it: the deletion is
/// planned only after the grace period, and only for volumes Drover itself detached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetachedVolume {
    pub vmid: u32,
    /// The mount point it was (`mp1`).
    pub key: String,
    /// The volume id (`local-lvm:vm-101-disk-1`), as `unusedN` shows it.
    pub volume: String,
    /// The whole mount point value before the detach (to re-attach it by hand).
    pub mount: String,
    /// Unix time the detach was journaled (before the call).
    pub detached_at: i64,
}

impl DetachedVolume {
    /// The path it was mounted at, when the old value names one.
    pub fn mount_path(&self) -> String {
        self.mount
            .parse::<MountConfig>()
            .ok()
            .and_then(|m| m.mp)
            .map(|p| format!("at {p}"))
            .unwrap_or_default()
    }
}

/// `startup`: boot order and delays (`[[order=]N][,up=N][,down=N]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Startup {
    pub order: Option<u32>,
    pub up: Option<u32>,
    pub down: Option<u32>,
}

impl Startup {
    pub fn parse(s: &str) -> Result<Startup, String> {
        let mut st = Startup::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or(("order", part));
            let n: u32 = v
                .parse()
                .map_err(|_| format!("{k}={v:?} is not a whole number"))?;
            match k {
                "order" => st.order = Some(n),
                "up" => st.up = Some(n),
                "down" => st.down = Some(n),
                other => return Err(format!("{other:?} is not a key of startup")),
            }
        }
        Ok(st)
    }
}

impl std::fmt::Display for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("order", self.order), ("up", self.up), ("down", self.down)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `nameserver`/`searchdomain` lists as PVE stores them: one string, entries split on spaces,
/// commas or semicolons (`PVE::Tools::split_list`).
pub fn split_list(s: &str) -> Vec<String> {
    s.split([' ', ',', ';', '\t'])
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The `dev[n]` entries of a config's untyped keys.
pub fn devices_of(extra: &BTreeMap<String, String>) -> BTreeMap<u16, DevSpec> {
    extra
        .iter()
        .filter_map(|(k, v)| {
            let n: u16 = k.strip_prefix("dev")?.parse().ok()?;
            Some((n, DevSpec::parse(v).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> MountSpec {
        MountSpec {
            source: MountSource::Volume {
                storage: "local-lvm".into(),
                size_gib: 8,
            },
            path: "/srv/data".into(),
            backup: Some(true),
            ro: Some(false),
            acl: None,
            quota: None,
            replicate: Some(true),
            shared: None,
            mountoptions: Some(vec!["noatime".into()]),
        }
    }

    #[test]
    fn pve_normalisation_is_not_drift() {
        let s = spec();
        assert_eq!(
            s.new_volume_value().unwrap(),
            "local-lvm:8,mp=/srv/data,backup=1,mountoptions=noatime,replicate=1,ro=0"
        );
        // What PVE stores: a volume id, size appended, absent defaults.
        let actual: MountConfig =
            "local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,mountoptions=noatime,size=8G"
                .parse()
                .unwrap();
        assert!(s.options_match(&actual));
        let mut other = s.clone();
        other.ro = Some(true);
        assert!(!other.options_match(&actual));
        let changed: MountConfig = other.changed_value(&actual).parse().unwrap();
        assert_eq!(changed.volume, "local-lvm:vm-101-disk-1");
        assert_eq!(changed.size, Some(DiskSize::from_gib(8)));
        assert!(other.options_match(&changed));
    }

    #[test]
    fn devices_and_startup_parse() {
        let d = DevSpec::parse("/dev/dri/renderD128,gid=44,mode=0660").unwrap();
        assert_eq!(d.gid, Some(44));
        let want = DevSpec::parse("path=/dev/dri/renderD128").unwrap();
        assert!(want.matches(&d));
        assert!(DevSpec::parse("gid=1").is_err());
        let st = Startup::parse("order=2,up=30").unwrap();
        assert_eq!(st.to_string(), "order=2,up=30");
        assert_eq!(Startup::parse("3").unwrap().order, Some(3));
        assert_eq!(
            split_list("1.1.1.1 8.8.8.8,9.9.9.9"),
            ["1.1.1.1", "8.8.8.8", "9.9.9.9"]
        );
    }
}
