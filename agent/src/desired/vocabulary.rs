//! The guest keys beyond sizing and networking: mount points, device passthrough, features,
//! privilege, SSH keys, DNS, time zone, boot order, CPU weight, console, protection; and the
//! keys a document may never carry.
//!
//! Each refusal carries a stable sub-code at the start of its message (inside the document's
//! `desired_invalid`), so the hub team can tell "Drover will never do this" (a root-only or
//! host-takeover key) from a typo. What the host itself allows (bind mounts, devices) is not
//! decided here: the document cannot know the host's `drover.toml`, so the planner refuses
//! those per guest with their own codes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::pve_format;
use crate::model::{DevSpec, MountSource, MountSpec, Startup};

/// Feature flags PVE lets only `root@pam` change: refused, never sent (PVE would answer 403).
pub const FEATURE_ROOT_ONLY: &str = "feature_root_only";
/// A root password in a document the hub serves is a secret in transit and at rest: refused.
pub const PASSWORD_REFUSED: &str = "password_refused";
/// `hookscript` runs host code as root on every start: root-only in PVE, refused.
pub const HOOKSCRIPT_REFUSED: &str = "hookscript_refused";
/// Raw `lxc.*` keys can grant any host capability; PVE's API has no parameter for them.
pub const RAW_LXC_REFUSED: &str = "raw_lxc_refused";
/// Pool membership is an ACL change (pool permissions propagate to members), so it is the
/// host's setting (`[proxmox] pool`), never the document's.
pub const POOL_IS_HOST_SETTING: &str = "pool_is_host_setting";

/// The keys this module parses (for the document's unknown-key check).
pub fn is_vocabulary_key(key: &str) -> bool {
    matches!(
        key,
        "features"
            | "unprivileged"
            | "ssh-public-keys"
            | "ostype"
            | "arch"
            | "nameserver"
            | "searchdomain"
            | "timezone"
            | "startup"
            | "cpulimit"
            | "cpuunits"
            | "console"
            | "tty"
            | "cmode"
            | "protection"
            | "mp"
    ) || mp_index(key).is_some()
        || dev_index(key).is_some()
}

/// Keys refused with their code, before anything else is read.
pub fn refused_key(key: &str) -> Option<String> {
    let (code, why) = match key {
        "password" => (
            PASSWORD_REFUSED,
            "a root password does not belong in a document served by the hub; use ssh-public-keys",
        ),
        "hookscript" => (
            HOOKSCRIPT_REFUSED,
            "a hookscript runs host code as root on every start; PVE lets only root@pam set it",
        ),
        "pool" => (
            POOL_IS_HOST_SETTING,
            "pool membership changes who may act on the guest (pool ACLs propagate); new guests join the host's [proxmox] pool",
        ),
        k if k == "lxc" || k.starts_with("lxc.") => (
            RAW_LXC_REFUSED,
            "raw lxc.* keys can give the guest any host capability; PVE's API does not accept them",
        ),
        _ => return None,
    };
    Some(format!("{code}: {why}"))
}

/// `mp0`..`mp255` → index.
pub fn mp_index(key: &str) -> Option<u8> {
    index_of(key, "mp").and_then(|n| u8::try_from(n).ok())
}

/// `dev0`..`dev255` → index.
pub fn dev_index(key: &str) -> Option<u16> {
    index_of(key, "dev").filter(|n| *n <= 255)
}

/// `PREFIX` followed by a decimal number without leading zeros.
fn index_of(key: &str, prefix: &str) -> Option<u16> {
    let n = key.strip_prefix(prefix)?;
    if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if n.len() > 1 && n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// What this module adds to a guest entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vocabulary {
    pub mounts: BTreeMap<u8, MountSpec>,
    pub mounts_managed: bool,
    pub devices: BTreeMap<u16, DevSpec>,
    pub nesting: Option<bool>,
    pub unprivileged: Option<bool>,
    pub ssh_public_keys: Option<String>,
    pub ostype: Option<String>,
    pub arch: Option<String>,
    pub nameserver: Option<Vec<String>>,
    pub searchdomain: Option<Vec<String>>,
    pub timezone: Option<String>,
    pub startup: Option<Startup>,
    pub cpulimit: Option<f64>,
    pub cpuunits: Option<u64>,
    pub console: Option<bool>,
    pub tty: Option<u8>,
    pub cmode: Option<String>,
    pub protection: Option<bool>,
}

type Fail<'a> = dyn Fn(&str, String) -> super::DesiredError + 'a;

fn boolean(t: &toml::Table, key: &str, e: &Fail<'_>) -> Result<Option<bool>, super::DesiredError> {
    t.get(key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| e(key, "must be true or false".into()))
        })
        .transpose()
}

fn int(
    t: &toml::Table,
    key: &str,
    min: i64,
    max: i64,
    e: &Fail<'_>,
) -> Result<Option<i64>, super::DesiredError> {
    t.get(key)
        .map(|v| {
            v.as_integer()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| e(key, format!("must be an integer in {min}..={max}")))
        })
        .transpose()
}

fn string<'t>(
    t: &'t toml::Table,
    key: &str,
    e: &Fail<'_>,
) -> Result<Option<&'t str>, super::DesiredError> {
    t.get(key)
        .map(|v| v.as_str().ok_or_else(|| e(key, "must be a string".into())))
        .transpose()
}

/// An absolute path PVE stores as given: no `.`/`..` parts, no empty parts, no trailing `/`,
/// nothing PVE's property strings would split on (`,` `;` `=`), no control characters or
/// spaces. Canonical form is required so the stored path compares equal forever.
fn check_abs_path(p: &str) -> Result<(), String> {
    pve_format::no_control_chars(p)?;
    if !p.starts_with('/') || p.len() > 4096 {
        return Err(format!("{p:?} must be an absolute path"));
    }
    if p.len() > 1 && p.ends_with('/') {
        return Err(format!("{p:?} must not end with '/'"));
    }
    if p.contains([',', ';', '=', ' ', '"', '\'', '\\']) {
        return Err(format!(
            "{p:?} contains a character PVE's property strings cannot hold"
        ));
    }
    if p[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        && p != "/"
    {
        return Err(format!("{p:?} must not contain empty, '.' or '..' parts"));
    }
    Ok(())
}

const MOUNT_OPTIONS: &[&str] = &[
    "discard", "lazytime", "noatime", "nodev", "noexec", "nosuid",
];
const MP_KEYS: &[&str] = &[
    "storage",
    "size",
    "host_path",
    "path",
    "backup",
    "ro",
    "acl",
    "quota",
    "replicate",
    "shared",
    "mountoptions",
];

fn parse_mount(key: &str, v: &toml::Value, e: &Fail<'_>) -> Result<MountSpec, super::DesiredError> {
    let t = v.as_table().ok_or_else(|| {
        e(
            key,
            "must be a table, e.g. { storage = \"local-lvm\", size = 8, path = \"/srv/data\" }"
                .into(),
        )
    })?;
    for k in t.keys() {
        if !MP_KEYS.contains(&k.as_str()) {
            return Err(e(
                &format!("{key}.{k}"),
                format!("unknown field (known: {})", MP_KEYS.join(", ")),
            ));
        }
    }
    let sub = |k: &str, m: String| e(&format!("{key}.{k}"), m);
    let path = string(t, "path", &|_, m| sub("path", m))?
        .ok_or_else(|| sub("path", "missing: the path inside the guest".into()))?;
    check_abs_path(path).map_err(|m| sub("path", m))?;
    if path == "/" {
        return Err(sub("path", "\"/\" is the rootfs; use `rootfs`".into()));
    }
    let storage = string(t, "storage", &|_, m| sub("storage", m))?;
    let host = string(t, "host_path", &|_, m| sub("host_path", m))?;
    let size = int(t, "size", 1, 1 << 20, &|_, m| {
        sub("size", format!("{m} (GiB)"))
    })?;
    let source = match (storage, host) {
        (Some(s), None) => {
            if !pve_format::is_storage_id(s) {
                return Err(sub("storage", format!("{s:?} is not a storage id")));
            }
            let size_gib = size
                .ok_or_else(|| sub("size", "missing: the size in GiB to allocate".into()))?
                as u64;
            MountSource::Volume {
                storage: s.to_string(),
                size_gib,
            }
        }
        (None, Some(h)) => {
            check_abs_path(h).map_err(|m| sub("host_path", m))?;
            if size.is_some() {
                return Err(sub("size", "a host path has no size".into()));
            }
            MountSource::Host {
                path: h.to_string(),
            }
        }
        _ => {
            return Err(e(
                key,
                "needs exactly one of `storage` (a new volume, with `size`) or `host_path` (a bind or device mount)".into(),
            ));
        }
    };
    let flag = |k: &str| boolean(t, k, &|_, m| sub(k, m));
    let mountoptions = match t.get("mountoptions") {
        None => None,
        Some(v) => {
            let arr = v
                .as_array()
                .ok_or_else(|| sub("mountoptions", "must be an array of strings".into()))?;
            let mut opts = Vec::new();
            for o in arr {
                let s = o
                    .as_str()
                    .filter(|s| MOUNT_OPTIONS.contains(s))
                    .ok_or_else(|| {
                        sub(
                            "mountoptions",
                            format!("each must be one of {}", MOUNT_OPTIONS.join(", ")),
                        )
                    })?;
                opts.push(s.to_string());
            }
            opts.sort();
            opts.dedup();
            Some(opts)
        }
    };
    Ok(MountSpec {
        source,
        path: path.to_string(),
        backup: flag("backup")?,
        ro: flag("ro")?,
        acl: flag("acl")?,
        quota: flag("quota")?,
        replicate: flag("replicate")?,
        shared: flag("shared")?,
        mountoptions,
    })
}

fn parse_dev(key: &str, v: &toml::Value, e: &Fail<'_>) -> Result<DevSpec, super::DesiredError> {
    let t = v.as_table().ok_or_else(|| {
        e(
            key,
            "must be a table, e.g. { path = \"/dev/dri/renderD128\", gid = 44 }".into(),
        )
    })?;
    const KEYS: &[&str] = &["path", "mode", "uid", "gid", "deny_write"];
    for k in t.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(e(
                &format!("{key}.{k}"),
                format!("unknown field (known: {})", KEYS.join(", ")),
            ));
        }
    }
    let sub = |k: &str, m: String| e(&format!("{key}.{k}"), m);
    let path = string(t, "path", &|_, m| sub("path", m))?
        .ok_or_else(|| sub("path", "missing: the device on the host".into()))?;
    check_abs_path(path).map_err(|m| sub("path", m))?;
    if !path.starts_with("/dev/") {
        return Err(sub("path", format!("{path:?} is not under /dev/")));
    }
    let mode = string(t, "mode", &|_, m| sub("mode", m))?;
    if let Some(m) = mode
        && !(m.len() == 4 && m.starts_with('0') && m.bytes().all(|b| (b'0'..=b'7').contains(&b)))
    {
        return Err(sub("mode", format!("{m:?} is not an octal mode like 0660")));
    }
    let id =
        |k: &str| int(t, k, 0, i64::from(u32::MAX), &|_, m| sub(k, m)).map(|v| v.map(|n| n as u32));
    Ok(DevSpec {
        path: path.to_string(),
        mode: mode.map(str::to_string),
        uid: id("uid")?,
        gid: id("gid")?,
        deny_write: boolean(t, "deny_write", &|_, m| sub("deny_write", m))?,
    })
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// `authorized_keys` lines: `TYPE BASE64 [comment]`, no options (no `command=`), no blank
/// tricks; at most 64 keys.
fn check_ssh_keys(s: &str) -> Result<(), String> {
    if s.len() > 64 * 1024 {
        return Err("longer than 64 KiB".into());
    }
    let mut n = 0;
    for (i, line) in s.lines().enumerate() {
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("line {} contains a control character", i + 1));
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        n += 1;
        let mut parts = line.split_whitespace();
        let ty = parts.next().unwrap_or("");
        let blob = parts.next().unwrap_or("");
        if !KEY_TYPES.contains(&ty) {
            return Err(format!(
                "line {} does not start with a key type ({}); authorized_keys options are not accepted",
                i + 1,
                KEY_TYPES.join(", ")
            ));
        }
        if blob.len() < 16
            || !blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(format!("line {}: the key is not base64", i + 1));
        }
    }
    if n == 0 {
        return Err("holds no key".into());
    }
    if n > 64 {
        return Err(format!("{n} keys, more than 64"));
    }
    Ok(())
}

fn check_timezone(s: &str) -> Result<(), String> {
    let ok = s == "host"
        || (!s.is_empty()
            && s.len() <= 64
            && !s.starts_with('/')
            && s.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not `host` or a zone name like Europe/Berlin"
        ))
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn list(
    t: &toml::Table,
    key: &str,
    max: usize,
    check: fn(&str) -> bool,
    what: &str,
    e: &Fail<'_>,
) -> Result<Option<Vec<String>>, super::DesiredError> {
    let Some(v) = t.get(key) else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| e(key, format!("must be an array of {what}s")))?;
    if arr.len() > max {
        return Err(e(key, format!("more than {max} entries")));
    }
    let mut out = Vec::new();
    for x in arr {
        let s = x
            .as_str()
            .filter(|s| check(s))
            .ok_or_else(|| e(key, format!("{x} is not a {what}")))?;
        out.push(s.to_string());
    }
    Ok(Some(out))
}

/// Reads this module's keys of one guest entry (the entry's unknown and refused keys were
/// checked before).
pub fn parse(t: &toml::Table, e: &Fail<'_>) -> Result<Vocabulary, super::DesiredError> {
    let mut v = Vocabulary::default();
    for (key, val) in t {
        if let Some(i) = mp_index(key) {
            v.mounts.insert(i, parse_mount(key, val, e)?);
            v.mounts_managed = true;
        } else if let Some(i) = dev_index(key) {
            v.devices.insert(i, parse_dev(key, val, e)?);
        }
    }
    if let Some(m) = t.get("mp") {
        if !m.as_array().is_some_and(|a| a.is_empty()) {
            return Err(e(
                "mp",
                "only `mp = []` (this guest has no mount points) is accepted; list mount points as mp0..mp255".into(),
            ));
        }
        v.mounts_managed = true;
    }
    let mut paths = std::collections::BTreeSet::new();
    for (i, m) in &v.mounts {
        if !paths.insert(m.path.as_str()) {
            return Err(e(
                &format!("mp{i}.path"),
                format!("{:?} is mounted twice", m.path),
            ));
        }
    }
    if let Some(f) = t.get("features") {
        let ft = f.as_table().ok_or_else(|| {
            e(
                "features",
                "must be a table, e.g. { nesting = true }".into(),
            )
        })?;
        for k in ft.keys() {
            match k.as_str() {
                "nesting" => {}
                "keyctl" | "fuse" | "mknod" | "mount" | "force_rw_sys" => {
                    return Err(e(
                        &format!("features.{k}"),
                        format!(
                            "{FEATURE_ROOT_ONLY}: PVE lets only root@pam change {k}; an API token may change nesting only"
                        ),
                    ));
                }
                other => return Err(e(&format!("features.{other}"), "unknown feature".into())),
            }
        }
        v.nesting = boolean(ft, "nesting", &|_, m| e("features.nesting", m))?;
    }
    v.unprivileged = boolean(t, "unprivileged", e)?;
    if let Some(k) = string(t, "ssh-public-keys", e)? {
        check_ssh_keys(k).map_err(|m| e("ssh-public-keys", m))?;
        v.ssh_public_keys = Some(k.to_string());
    }
    const OSTYPES: &[&str] = &[
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
        "unmanaged",
    ];
    const ARCHES: &[&str] = &["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"];
    const CMODES: &[&str] = &["shell", "console", "tty"];
    let one_of = |key: &str, allowed: &[&str]| -> Result<Option<String>, super::DesiredError> {
        match string(t, key, e)? {
            None => Ok(None),
            Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
            Some(s) => Err(e(
                key,
                format!("{s:?} is not one of {}", allowed.join(", ")),
            )),
        }
    };
    v.ostype = one_of("ostype", OSTYPES)?;
    v.arch = one_of("arch", ARCHES)?;
    v.cmode = one_of("cmode", CMODES)?;
    v.nameserver = list(
        t,
        "nameserver",
        8,
        |s| s.parse::<IpAddr>().is_ok(),
        "IP address",
        e,
    )?;
    v.searchdomain = list(t, "searchdomain", 8, is_dns_name, "DNS name", e)?;
    if let Some(tz) = string(t, "timezone", e)? {
        check_timezone(tz).map_err(|m| e("timezone", m))?;
        v.timezone = Some(tz.to_string());
    }
    if let Some(s) = t.get("startup") {
        let st = s.as_table().ok_or_else(|| {
            e(
                "startup",
                "must be a table, e.g. { order = 1, up = 30, down = 60 }".into(),
            )
        })?;
        for k in st.keys() {
            if !matches!(k.as_str(), "order" | "up" | "down") {
                return Err(e(
                    &format!("startup.{k}"),
                    "unknown field (known: order, up, down)".into(),
                ));
            }
        }
        let n = |k: &str| {
            int(st, k, 0, 1_000_000, &|_, m| e(&format!("startup.{k}"), m))
                .map(|v| v.map(|n| n as u32))
        };
        v.startup = Some(Startup {
            order: n("order")?,
            up: n("up")?,
            down: n("down")?,
        });
    }
    if let Some(c) = t.get("cpulimit") {
        let f = c
            .as_float()
            .or_else(|| c.as_integer().map(|i| i as f64))
            .filter(|f| f.is_finite() && (0.0..=8192.0).contains(f))
            .ok_or_else(|| {
                e(
                    "cpulimit",
                    "must be a number in 0..=8192 (0: no limit)".into(),
                )
            })?;
        // PVE stores what it is sent; two decimals are all the kernel's quota uses.
        v.cpulimit = Some((f * 100.0).round() / 100.0);
    }
    v.cpuunits = int(t, "cpuunits", 0, 500_000, e)?.map(|n| n as u64);
    v.console = boolean(t, "console", e)?;
    v.tty = int(t, "tty", 0, 6, e)?.map(|n| n as u8);
    v.protection = boolean(t, "protection", e)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn indexes() {
        assert_eq!(mp_index("mp0"), Some(0));
        assert_eq!(mp_index("mp255"), Some(255));
        assert_eq!(mp_index("mp256"), None);
        assert_eq!(mp_index("mp01"), None);
        assert_eq!(dev_index("dev7"), Some(7));
        assert_eq!(dev_index("dev256"), None);
        assert!(
            refused_key("lxc.apparmor.profile")
                .unwrap()
                .starts_with(RAW_LXC_REFUSED)
        );
    }

    #[test]
    fn paths_must_be_canonical() {
        for p in ["/srv/data", "/a/b.c", "/x-y_z"] {
            assert_eq!(check_abs_path(p), Ok(()), "{p}");
        }
        for p in [
            "srv", "/srv/", "/a//b", "/a/../b", "/a/./b", "/a,b", "/a b", "/a\nb",
        ] {
            assert!(check_abs_path(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn ssh_keys_and_timezones() {
        assert!(check_ssh_keys("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx me@host\n").is_ok());
        assert!(
            check_ssh_keys("command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx").is_err()
        );
        assert!(check_ssh_keys("\n\n").is_err());
        assert!(check_timezone("Europe/Berlin").is_ok());
        assert!(check_timezone("host").is_ok());
        assert!(check_timezone("../etc/passwd").is_err());
    }
}
