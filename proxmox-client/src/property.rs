//! PVE property strings (`net[n]`, `rootfs`, `mp[n]`, `features`) as typed values.
//!
//! PVE re-prints these strings (adds `hwaddr` and `type=veth`, reorders keys, turns
//! `STORAGE:8` into a volume id), so comparing text produces perpetual drift. Parse both sides
//! and compare the values. Keys this crate does not know are kept in `extra`, so nothing is lost
//! when a value is printed back.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::lenient::parse_bool;

/// Why a property string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct PropertyError {
    pub what: &'static str,
    pub input: String,
    pub reason: String,
}

fn perr(what: &'static str, input: &str, reason: impl Into<String>) -> PropertyError {
    PropertyError {
        what,
        input: input.chars().take(300).collect(),
        reason: reason.into(),
    }
}

/// Splits `k=v,k2=v2` into pairs. A part without `=` is the value of `default_key`.
/// Duplicate keys are refused, as PVE does.
pub fn parse_pairs(
    what: &'static str,
    input: &str,
    default_key: Option<&str>,
) -> Result<Vec<(String, String)>, PropertyError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in input.split(',') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match default_key {
                Some(dk) => (dk.to_owned(), part.to_owned()),
                None => return Err(perr(what, input, format!("{part:?} has no '='"))),
            },
        };
        if k.is_empty() {
            return Err(perr(what, input, "empty key"));
        }
        if out.iter().any(|(ek, _)| *ek == k) {
            return Err(perr(what, input, format!("duplicate key {k:?}")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn bool_val(what: &'static str, input: &str, key: &str, v: &str) -> Result<bool, PropertyError> {
    parse_bool(v).ok_or_else(|| perr(what, input, format!("{key}={v:?} is not a boolean")))
}

fn num_val<T: FromStr>(
    what: &'static str,
    input: &str,
    key: &str,
    v: &str,
) -> Result<T, PropertyError> {
    v.trim()
        .parse()
        .map_err(|_| perr(what, input, format!("{key}={v:?} is not a valid number")))
}

fn push_bool(out: &mut Vec<String>, key: &str, v: Option<bool>) {
    if let Some(b) = v {
        out.push(format!("{key}={}", u8::from(b)));
    }
}

fn push_str(out: &mut Vec<String>, key: &str, v: &Option<String>) {
    if let Some(s) = v {
        out.push(format!("{key}={s}"));
    }
}

/// A size as PVE's `disk-size` format: a number with an optional `K`/`M`/`G`/`T` suffix
/// (powers of 1024; no suffix means bytes). Stored in bytes so `8G` equals `8192M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskSize(pub u64);

impl DiskSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;
    pub const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    pub fn from_gib(g: u64) -> Self {
        DiskSize(g.saturating_mul(Self::GIB))
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// Size in MiB, rounded down.
    pub fn mib(self) -> u64 {
        self.0 / Self::MIB
    }
}

impl FromStr for DiskSize {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m = match c.to_ascii_uppercase() {
                    'K' => Self::KIB,
                    'M' => Self::MIB,
                    'G' => Self::GIB,
                    'T' => Self::TIB,
                    _ => return Err(perr("size", s, format!("unknown unit {c:?}"))),
                };
                (&t[..i], m)
            }
            _ => (t, 1),
        };
        if num.is_empty() {
            return Err(perr("size", s, "missing number"));
        }
        if let Ok(n) = num.parse::<u64>() {
            return n
                .checked_mul(mult)
                .map(DiskSize)
                .ok_or_else(|| perr("size", s, "too large"));
        }
        // PVE accepts fractional sizes like `0.5G`.
        match num.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 && f * (mult as f64) < 1.8e19 => {
                Ok(DiskSize((f * mult as f64).round() as u64))
            }
            _ => Err(perr("size", s, "not a size")),
        }
    }
}

impl fmt::Display for DiskSize {
    /// Largest unit that divides the size exactly, like PVE's `format_size`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [
            ("T", Self::TIB),
            ("G", Self::GIB),
            ("M", Self::MIB),
            ("K", Self::KIB),
        ] {
            if b != 0 && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}")
    }
}

/// One `net[n]` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetConfig {
    /// Interface name inside the CT (`eth0`).
    pub name: String,
    pub bridge: Option<String>,
    pub firewall: Option<bool>,
    pub gw: Option<String>,
    pub gw6: Option<String>,
    /// Stored upper-case, so `bc:24:..` and `BC:24:..` compare equal.
    pub hwaddr: Option<String>,
    /// `IPv4/CIDR`, `dhcp` or `manual`.
    pub ip: Option<String>,
    /// `IPv6/CIDR`, `auto`, `dhcp` or `manual`.
    pub ip6: Option<String>,
    pub link_down: Option<bool>,
    pub host_managed: Option<bool>,
    pub mtu: Option<u32>,
    /// Rate limit in MB/s.
    pub rate: Option<f64>,
    pub tag: Option<u32>,
    /// VLAN ids, in the order given.
    pub trunks: Option<Vec<u32>>,
    /// Always `veth` today; PVE adds it when absent.
    pub type_: Option<String>,
    /// Keys this crate does not know, kept verbatim.
    pub extra: BTreeMap<String, String>,
}

impl NetConfig {
    /// Compare the meaning of two entries, ignoring what PVE fills in by itself
    /// (`hwaddr` when the other side has none, and `type=veth`).
    pub fn same_as_desired(&self, desired: &NetConfig) -> bool {
        let mut a = self.clone();
        let mut b = desired.clone();
        if b.hwaddr.is_none() {
            a.hwaddr = None;
        }
        for n in [&mut a, &mut b] {
            if n.type_.as_deref() == Some("veth") {
                n.type_ = None;
            }
        }
        a == b
    }
}

impl FromStr for NetConfig {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const W: &str = "network setting";
        let mut n = NetConfig::default();
        let mut name = None;
        for (k, v) in parse_pairs(W, s, Some("name"))? {
            match k.as_str() {
                "name" => name = Some(v),
                "bridge" => n.bridge = Some(v),
                "firewall" => n.firewall = Some(bool_val(W, s, &k, &v)?),
                "gw" => n.gw = Some(v),
                "gw6" => n.gw6 = Some(v),
                "hwaddr" => n.hwaddr = Some(v.to_ascii_uppercase()),
                "ip" => n.ip = Some(v),
                "ip6" => n.ip6 = Some(v),
                "link_down" => n.link_down = Some(bool_val(W, s, &k, &v)?),
                "host-managed" => n.host_managed = Some(bool_val(W, s, &k, &v)?),
                "mtu" => n.mtu = Some(num_val(W, s, &k, &v)?),
                "rate" => n.rate = Some(num_val(W, s, &k, &v)?),
                "tag" => n.tag = Some(num_val(W, s, &k, &v)?),
                "trunks" => {
                    n.trunks = Some(
                        v.split(';')
                            .filter(|p| !p.is_empty())
                            .map(|p| num_val(W, s, &k, p))
                            .collect::<Result<_, _>>()?,
                    )
                }
                "type" => n.type_ = Some(v),
                _ => {
                    n.extra.insert(k, v);
                }
            }
        }
        n.name = name.ok_or_else(|| perr(W, s, "missing 'name'"))?;
        Ok(n)
    }
}

impl fmt::Display for NetConfig {
    /// `name` first, then the remaining keys in alphabetical order (as `print_property_string`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keyed: BTreeMap<&str, String> = BTreeMap::new();
        let b = |v: bool| u8::from(v).to_string();
        if let Some(v) = &self.bridge {
            keyed.insert("bridge", v.clone());
        }
        if let Some(v) = self.firewall {
            keyed.insert("firewall", b(v));
        }
        if let Some(v) = &self.gw {
            keyed.insert("gw", v.clone());
        }
        if let Some(v) = &self.gw6 {
            keyed.insert("gw6", v.clone());
        }
        if let Some(v) = self.host_managed {
            keyed.insert("host-managed", b(v));
        }
        if let Some(v) = &self.hwaddr {
            keyed.insert("hwaddr", v.clone());
        }
        if let Some(v) = &self.ip {
            keyed.insert("ip", v.clone());
        }
        if let Some(v) = &self.ip6 {
            keyed.insert("ip6", v.clone());
        }
        if let Some(v) = self.link_down {
            keyed.insert("link_down", b(v));
        }
        if let Some(v) = self.mtu {
            keyed.insert("mtu", v.to_string());
        }
        if let Some(v) = self.rate {
            keyed.insert("rate", v.to_string());
        }
        if let Some(v) = self.tag {
            keyed.insert("tag", v.to_string());
        }
        if let Some(v) = &self.trunks {
            let t: Vec<String> = v.iter().map(u32::to_string).collect();
            keyed.insert("trunks", t.join(";"));
        }
        if let Some(v) = &self.type_ {
            keyed.insert("type", v.clone());
        }
        for (k, v) in &self.extra {
            keyed.entry(k.as_str()).or_insert_with(|| v.clone());
        }
        write!(f, "name={}", self.name)?;
        for (k, v) in keyed {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

/// `rootfs` or one `mp[n]` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MountConfig {
    /// Volume id (`local-lvm:vm-101-disk-0`), a new allocation (`local-lvm:8`, in GiB), or a
    /// host path for bind mounts.
    pub volume: String,
    /// Mount path inside the CT; `None` for `rootfs`.
    pub mp: Option<String>,
    pub size: Option<DiskSize>,
    pub acl: Option<bool>,
    pub backup: Option<bool>,
    pub keepattrs: Option<bool>,
    pub mountoptions: Option<Vec<String>>,
    pub quota: Option<bool>,
    pub replicate: Option<bool>,
    pub ro: Option<bool>,
    pub shared: Option<bool>,
    /// Keys this crate does not know, kept verbatim.
    pub extra: BTreeMap<String, String>,
}

impl MountConfig {
    /// The storage part of a volume id (`local-lvm` in `local-lvm:vm-101-disk-0`); `None` for
    /// bind mounts (absolute paths).
    pub fn storage(&self) -> Option<&str> {
        if self.volume.starts_with('/') {
            return None;
        }
        self.volume.split_once(':').map(|(s, _)| s)
    }

    /// For a new allocation `STORAGE:N`, the requested size in GiB.
    pub fn new_allocation_gib(&self) -> Option<f64> {
        let (_, rest) = self.volume.split_once(':')?;
        rest.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
    }
}

impl FromStr for MountConfig {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const W: &str = "mount point";
        let mut m = MountConfig::default();
        let mut volume = None;
        for (k, v) in parse_pairs(W, s, Some("volume"))? {
            match k.as_str() {
                "volume" => volume = Some(v),
                "mp" => m.mp = Some(v),
                "size" => {
                    m.size = Some(v.parse().map_err(|e: PropertyError| perr(W, s, e.reason))?)
                }
                "acl" => m.acl = Some(bool_val(W, s, &k, &v)?),
                "backup" => m.backup = Some(bool_val(W, s, &k, &v)?),
                "keepattrs" => m.keepattrs = Some(bool_val(W, s, &k, &v)?),
                "mountoptions" => {
                    m.mountoptions = Some(
                        v.split(';')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                }
                "quota" => m.quota = Some(bool_val(W, s, &k, &v)?),
                "replicate" => m.replicate = Some(bool_val(W, s, &k, &v)?),
                "ro" => m.ro = Some(bool_val(W, s, &k, &v)?),
                "shared" => m.shared = Some(bool_val(W, s, &k, &v)?),
                _ => {
                    m.extra.insert(k, v);
                }
            }
        }
        m.volume = volume
            .filter(|v| !v.is_empty())
            .ok_or_else(|| perr(W, s, "missing volume"))?;
        Ok(m)
    }
}

impl fmt::Display for MountConfig {
    /// Volume first (without `volume=`), then `mp`, then the other keys alphabetically.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![self.volume.clone()];
        push_str(&mut parts, "mp", &self.mp);
        let mut rest = Vec::new();
        push_bool(&mut rest, "acl", self.acl);
        push_bool(&mut rest, "backup", self.backup);
        push_bool(&mut rest, "keepattrs", self.keepattrs);
        if let Some(o) = &self.mountoptions {
            rest.push(format!("mountoptions={}", o.join(";")));
        }
        push_bool(&mut rest, "quota", self.quota);
        push_bool(&mut rest, "replicate", self.replicate);
        push_bool(&mut rest, "ro", self.ro);
        push_bool(&mut rest, "shared", self.shared);
        if let Some(sz) = self.size {
            rest.push(format!("size={sz}"));
        }
        for (k, v) in &self.extra {
            rest.push(format!("{k}={v}"));
        }
        rest.sort();
        parts.extend(rest);
        f.write_str(&parts.join(","))
    }
}

/// The `features` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub force_rw_sys: Option<bool>,
    pub fuse: Option<bool>,
    pub keyctl: Option<bool>,
    pub mknod: Option<bool>,
    /// Allowed file system types, in the order given.
    pub mount: Option<Vec<String>>,
    pub nesting: Option<bool>,
    pub extra: BTreeMap<String, String>,
}

impl Features {
    /// True when the flag is set; all flags default to off.
    pub fn nesting(&self) -> bool {
        self.nesting.unwrap_or(false)
    }

    /// Same meaning: an absent flag equals `0`.
    pub fn same_as(&self, other: &Features) -> bool {
        let norm = |f: &Features| {
            let mut f = f.clone();
            for b in [
                &mut f.force_rw_sys,
                &mut f.fuse,
                &mut f.keyctl,
                &mut f.mknod,
                &mut f.nesting,
            ] {
                if *b == Some(false) {
                    *b = None;
                }
            }
            if f.mount.as_ref().is_some_and(Vec::is_empty) {
                f.mount = None;
            }
            f
        };
        norm(self) == norm(other)
    }
}

impl FromStr for Features {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const W: &str = "features";
        let mut f = Features::default();
        for (k, v) in parse_pairs(W, s, None)? {
            match k.as_str() {
                "force_rw_sys" => f.force_rw_sys = Some(bool_val(W, s, &k, &v)?),
                "fuse" => f.fuse = Some(bool_val(W, s, &k, &v)?),
                "keyctl" => f.keyctl = Some(bool_val(W, s, &k, &v)?),
                "mknod" => f.mknod = Some(bool_val(W, s, &k, &v)?),
                "nesting" => f.nesting = Some(bool_val(W, s, &k, &v)?),
                "mount" => {
                    f.mount = Some(
                        v.split(';')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                }
                _ => {
                    f.extra.insert(k, v);
                }
            }
        }
        Ok(f)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        push_bool(&mut parts, "force_rw_sys", self.force_rw_sys);
        push_bool(&mut parts, "fuse", self.fuse);
        push_bool(&mut parts, "keyctl", self.keyctl);
        push_bool(&mut parts, "mknod", self.mknod);
        if let Some(m) = &self.mount {
            parts.push(format!("mount={}", m.join(";")));
        }
        push_bool(&mut parts, "nesting", self.nesting);
        for (k, v) in &self.extra {
            parts.push(format!("{k}={v}"));
        }
        parts.sort();
        f.write_str(&parts.join(","))
    }
}

/// Tags as PVE stores them: split on `;`, `,` or spaces, deduplicated and sorted.
/// (PVE lower-cases unless the datacenter's tag style is case-sensitive; this keeps case.)
pub fn parse_tags(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn net_from_fixture_round_trips_by_meaning() {
        let s = "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:5A:3E:01,ip=10.0.20.41/24,gw=10.0.20.1,type=veth";
        let n: NetConfig = s.parse().unwrap();
        assert_eq!(n.name, "eth0");
        assert_eq!(n.firewall, Some(true));
        assert_eq!(n.gw.as_deref(), Some("10.0.20.1"));
        let printed = n.to_string();
        assert_eq!(
            printed,
            "name=eth0,bridge=vmbr0,firewall=1,gw=10.0.20.1,hwaddr=BC:24:11:5A:3E:01,ip=10.0.20.41/24,type=veth"
        );
        assert_eq!(printed.parse::<NetConfig>().unwrap(), n);
    }

    #[test]
    fn net_normalization_is_not_drift() {
        let desired: NetConfig = "name=eth0,bridge=vmbr0,ip=dhcp".parse().unwrap();
        let actual: NetConfig = "name=eth0,bridge=vmbr0,hwaddr=8e:3c:eb:6f:a8:63,ip=dhcp,type=veth"
            .parse()
            .unwrap();
        assert!(actual.same_as_desired(&desired));
        let other: NetConfig = "name=eth0,bridge=vmbr1,ip=dhcp".parse().unwrap();
        assert!(!actual.same_as_desired(&other));
        // default key, trunks, unknown keys preserved
        let n: NetConfig = "eth1,trunks=10;20,tag=5,mtu=1400,rate=12.5,future=x"
            .parse()
            .unwrap();
        assert_eq!(n.name, "eth1");
        assert_eq!(n.trunks, Some(vec![10, 20]));
        assert_eq!(n.extra.get("future").map(String::as_str), Some("x"));
        assert_eq!(n.to_string().parse::<NetConfig>().unwrap(), n);
    }

    #[test]
    fn net_rejects_bad_input() {
        for bad in [
            "bridge=vmbr0",
            "name=eth0,firewall=maybe",
            "name=eth0,tag=x",
            "name=a,name=b",
            "name=eth0,=x",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts_and_sizes() {
        let r: MountConfig = "local-lvm:vm-101-disk-0,size=8G".parse().unwrap();
        assert_eq!(r.volume, "local-lvm:vm-101-disk-0");
        assert_eq!(r.storage(), Some("local-lvm"));
        assert_eq!(r.size, Some(DiskSize::from_gib(8)));
        assert_eq!(r.size.unwrap().mib(), 8192);
        assert_eq!(r.to_string(), "local-lvm:vm-101-disk-0,size=8G");
        let m: MountConfig = "volume=local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,size=32768M"
            .parse()
            .unwrap();
        assert_eq!(m.mp.as_deref(), Some("/srv/data"));
        assert_eq!(m.size, Some(DiskSize::from_gib(32)));
        assert_eq!(
            m.to_string(),
            "local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,size=32G"
        );
        let new: MountConfig = "local-zfs:8,mp=/x,mountoptions=noatime;nodev"
            .parse()
            .unwrap();
        assert_eq!(new.new_allocation_gib(), Some(8.0));
        assert_eq!(
            new.mountoptions,
            Some(vec!["noatime".to_owned(), "nodev".to_owned()])
        );
        assert_eq!(new.to_string().parse::<MountConfig>().unwrap(), new);
        let bind: MountConfig = "/srv/host,mp=/data".parse().unwrap();
        assert_eq!(bind.storage(), None);
        assert!("size=8G".parse::<MountConfig>().is_err());
        assert!("local:1,size=8X".parse::<MountConfig>().is_err());
    }

    #[test]
    fn disk_size_units() {
        for (s, b) in [
            ("8G", 8 * DiskSize::GIB),
            ("512M", 512 * DiskSize::MIB),
            ("1T", DiskSize::TIB),
            ("4k", 4096),
            ("100", 100),
            ("0.5G", 512 * DiskSize::MIB),
        ] {
            assert_eq!(s.parse::<DiskSize>().unwrap().bytes(), b, "{s}");
        }
        assert_eq!(DiskSize(1536 * DiskSize::MIB).to_string(), "1536M");
        assert_eq!(DiskSize(0).to_string(), "0");
        assert!("".parse::<DiskSize>().is_err());
        assert!("G".parse::<DiskSize>().is_err());
        assert!("99999999999999999999T".parse::<DiskSize>().is_err());
    }

    #[test]
    fn features_and_tags() {
        let f: Features = "keyctl=1,nesting=1".parse().unwrap();
        assert!(f.nesting());
        assert_eq!(f.to_string(), "keyctl=1,nesting=1");
        let g: Features = "nesting=1,keyctl=1,fuse=0".parse().unwrap();
        assert!(f.same_as(&g));
        let m: Features = "mount=nfs;cifs".parse().unwrap();
        assert_eq!(m.mount, Some(vec!["nfs".into(), "cifs".into()]));
        assert!("nesting".parse::<Features>().is_err());
        assert_eq!(parse_tags("web;prod;web"), vec!["prod", "web"]);
        assert_eq!(parse_tags(""), Vec::<String>::new());
    }
}
