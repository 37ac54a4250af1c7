//! The desired-state document (`desired.toml`): what the hub (or a local directory) asks this
//! host to run.
//!
//! The document is validated as a whole before anything uses it, so a single bad field changes
//! nothing at all and is reported with file, guest and field. Fields a guest entry leaves out are
//! not managed: Drover only converges what the document states.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::pve_format;

/// What a guest entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    Running,
    Stopped,
    Absent,
}

/// One guest as the document wants it. `None` means "not managed by this document".
#[derive(Debug, Clone, PartialEq)]
pub struct GuestSpec {
    pub vmid: u32,
    pub ensure: Ensure,
    pub hostname: Option<String>,
    /// `ostemplate` for create; never compared against an existing guest.
    pub template: Option<String>,
    pub cores: Option<u32>,
    /// MiB.
    pub memory: Option<u64>,
    /// MiB.
    pub swap: Option<u64>,
    /// `STORAGE:SIZE_GB` as PVE's create accepts it.
    pub rootfs: Option<String>,
    /// `net0`..`net9`, parsed once here so planning compares values, not text.
    pub nets: crate::model::Nets,
    pub onboot: Option<bool>,
    /// Normalized as PVE stores them (lower-case, deduplicated, sorted).
    pub tags: Option<Vec<String>>,
    pub description: Option<String>,
    /// Mount points, features, DNS, boot order, ... (`desired::vocabulary`).
    pub more: super::vocabulary::Vocabulary,
    /// How a risky change proves itself (`desired::verify_spec`); `None`: not verified.
    pub verify: Option<super::verify_spec::VerifySpec>,
}

/// A validated desired-state document.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDoc {
    pub revision: u64,
    /// Boxed: a B-tree node holds room for eleven values inline, and a `GuestSpec` is over
    /// 500 bytes, so unboxed half-full nodes cost a host of 5,000 guests megabytes.
    pub guests: BTreeMap<u32, Box<GuestSpec>>,
}

/// Why a document was refused. Carries where it came from, the guest and the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("desired state {source_name}{}{}: {message}",
    .vmid.map(|v| format!(", guest {v}")).unwrap_or_default(),
    .field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
pub struct DesiredError {
    pub source_name: String,
    pub vmid: Option<u32>,
    pub field: Option<String>,
    pub message: String,
}

impl DesiredError {
    /// Stable machine-readable code for reports.
    pub fn code(&self) -> &'static str {
        "desired_invalid"
    }
}

/// The sub-code (in the message of a `desired_invalid` refusal) of a `template` that names a
/// backup volume: creating from it would restore another guest's data.
pub const TEMPLATE_IS_BACKUP: &str = "template_is_backup";

/// The largest document accepted: a host has at most a few thousand guests.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
const MAX_GUESTS: usize = 10_000;

/// Reads `<dir>/desired.toml`.
pub fn load_dir(dir: &Path) -> Result<(DesiredDoc, Vec<u8>), DesiredError> {
    let path: PathBuf = dir.join("desired.toml");
    let name = path.display().to_string();
    // A FIFO or device here must not hang the agent; the cap comes before any allocation.
    let bytes = crate::local_file::read_regular(&path, MAX_DOCUMENT_BYTES as u64).map_err(|e| {
        DesiredError {
            source_name: name.clone(),
            vmid: None,
            field: None,
            message: format!("cannot read: {e}"),
        }
    })?;
    let doc = parse(&bytes, &name)?;
    Ok((doc, bytes))
}

/// Parses and validates a whole document.
pub fn parse(bytes: &[u8], source_name: &str) -> Result<DesiredDoc, DesiredError> {
    let err = |vmid: Option<u32>, field: Option<&str>, message: String| DesiredError {
        source_name: source_name.to_string(),
        vmid,
        field: field.map(str::to_string),
        message,
    };
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(err(
            None,
            None,
            format!(
                "document is {} bytes, more than the limit of {MAX_DOCUMENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| err(None, None, format!("not UTF-8: {e}")))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        err(None, None, format!("line {line}: {}", e.message().trim()))
    })?;

    let mut revision = None;
    let mut guests_raw: Vec<toml::Value> = Vec::new();
    for (k, v) in &table {
        match k.as_str() {
            "revision" => {
                revision = Some(v.as_integer().filter(|r| *r >= 0).ok_or_else(|| {
                    err(
                        None,
                        Some("revision"),
                        "must be a non-negative integer".into(),
                    )
                })? as u64);
            }
            "guest" => {
                guests_raw = v
                    .as_array()
                    .ok_or_else(|| {
                        err(
                            None,
                            Some("guest"),
                            "must be an array of tables ([[guest]])".into(),
                        )
                    })?
                    .clone();
            }
            other => return Err(err(None, Some(other), "unknown top-level key".into())),
        }
    }
    let revision =
        revision.ok_or_else(|| err(None, Some("revision"), "missing required key".into()))?;
    if guests_raw.len() > MAX_GUESTS {
        return Err(err(
            None,
            Some("guest"),
            format!("{} guests, more than {MAX_GUESTS}", guests_raw.len()),
        ));
    }

    let mut guests = BTreeMap::new();
    for (i, g) in guests_raw.iter().enumerate() {
        let t = g.as_table().ok_or_else(|| {
            err(
                None,
                Some("guest"),
                format!("entry {} is not a table", i + 1),
            )
        })?;
        let spec = parse_guest(t, i, &err)?;
        let vmid = spec.vmid;
        if guests.insert(vmid, Box::new(spec)).is_some() {
            return Err(err(
                Some(vmid),
                Some("vmid"),
                "listed more than once".into(),
            ));
        }
    }
    Ok(DesiredDoc { revision, guests })
}

type ErrFn<'a> = dyn Fn(Option<u32>, Option<&str>, String) -> DesiredError + 'a;

fn parse_guest(t: &toml::Table, index: usize, err: &ErrFn<'_>) -> Result<GuestSpec, DesiredError> {
    let vmid_v = t.get("vmid").ok_or_else(|| {
        err(
            None,
            Some("vmid"),
            format!("guest entry {} has no vmid", index + 1),
        )
    })?;
    let vmid = vmid_v
        .as_integer()
        .filter(|v| (100..=999_999_999).contains(v))
        .ok_or_else(|| {
            err(
                None,
                Some("vmid"),
                format!(
                    "guest entry {}: vmid must be an integer in 100..=999999999",
                    index + 1
                ),
            )
        })? as u32;
    let e = |field: &str, message: String| err(Some(vmid), Some(field), message);

    let string = |field: &str| -> Result<Option<String>, DesiredError> {
        match t.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| e(field, "must be a string".into())),
        }
    };
    let int = |field: &str, min: i64, max: i64| -> Result<Option<i64>, DesiredError> {
        match t.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| e(field, format!("must be an integer in {min}..={max}"))),
        }
    };

    let mut spec = GuestSpec {
        vmid,
        ensure: Ensure::Running,
        hostname: None,
        template: None,
        cores: None,
        memory: None,
        swap: None,
        rootfs: None,
        nets: BTreeMap::new(),
        onboot: None,
        tags: None,
        description: None,
        more: Default::default(),
        verify: None,
    };
    for key in t.keys() {
        if let Some(why) = super::vocabulary::refused_key(key) {
            return Err(e(key, why));
        }
        let known = matches!(
            key.as_str(),
            "vmid"
                | "ensure"
                | "hostname"
                | "template"
                | "cores"
                | "memory"
                | "swap"
                | "rootfs"
                | "onboot"
                | "tags"
                | "description"
                | "verify"
        ) || net_index(key).is_some()
            || super::vocabulary::is_vocabulary_key(key);
        if !known {
            return Err(e(key, "unknown field".into()));
        }
    }
    spec.ensure = match string("ensure")?.as_deref() {
        None | Some("running") => Ensure::Running,
        Some("stopped") => Ensure::Stopped,
        Some("absent") => Ensure::Absent,
        Some(other) => {
            return Err(e(
                "ensure",
                format!("{other:?} is not one of running, stopped, absent"),
            ));
        }
    };
    if let Some(h) = string("hostname")? {
        if !is_dns_name(&h) {
            return Err(e("hostname", format!("{h:?} is not a valid DNS name")));
        }
        spec.hostname = Some(h);
    }
    if let Some(tpl) = string("template")? {
        match pve_format::check_template(&tpl) {
            Ok(()) => {}
            Err(p @ pve_format::TemplateProblem::BackupVolume(_)) => {
                return Err(e(
                    "template",
                    format!("{TEMPLATE_IS_BACKUP}: {}", p.message()),
                ));
            }
            Err(p) => return Err(e("template", p.message().to_string())),
        }
        spec.template = Some(tpl);
    }
    spec.cores = int("cores", 1, 8192)?.map(|n| n as u32);
    spec.memory = int("memory", 16, 1 << 30)?.map(|n| n as u64);
    spec.swap = int("swap", 0, 1 << 30)?.map(|n| n as u64);
    if let Some(r) = string("rootfs")? {
        parse_rootfs_spec(&r).map_err(|m| e("rootfs", m))?;
        spec.rootfs = Some(r);
    }
    for (key, v) in t {
        if let Some(idx) = net_index(key) {
            let s = v
                .as_str()
                .ok_or_else(|| e(key, "must be a string".into()))?;
            pve_format::check_net(s).map_err(|m| e(key, m))?;
            let net = crate::model::parse_net(s).map_err(|m| e(key, m))?;
            spec.nets.insert(idx, Box::new(net));
        }
    }
    if let Some(v) = t.get("onboot") {
        spec.onboot = Some(
            v.as_bool()
                .ok_or_else(|| e("onboot", "must be true or false".into()))?,
        );
    }
    if let Some(v) = t.get("tags") {
        let arr = v
            .as_array()
            .ok_or_else(|| e("tags", "must be an array of strings".into()))?;
        let mut tags = Vec::new();
        for tag in arr {
            let s = tag
                .as_str()
                .ok_or_else(|| e("tags", "must be an array of strings".into()))?;
            if s.is_empty()
                || s.len() > 64
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
                || s.starts_with(['-', '+', '.'])
            {
                return Err(e("tags", format!("{s:?} is not a valid PVE tag")));
            }
            tags.push(s.to_string());
        }
        spec.tags = Some(crate::model::normalize_tags(tags));
    }
    if let Some(d) = string("description")? {
        if d.chars().count() > 8192 {
            return Err(e("description", "longer than 8192 characters".into()));
        }
        // Free text for PVE (any character); `plan` and `status` show control characters
        // escaped.
        spec.description = Some(d);
    }
    spec.more = super::vocabulary::parse(t, &e)?;
    if let Some(v) = t.get("verify") {
        spec.verify = Some(super::verify_spec::parse(v).map_err(|(f, m)| e(&f, m))?);
    }
    Ok(spec)
}

/// `net0`..`net9` → index.
fn net_index(key: &str) -> Option<u8> {
    let n = key.strip_prefix("net")?;
    if n.len() == 1 {
        n.parse::<u8>().ok()
    } else {
        None
    }
}

/// `STORAGE:SIZE` (size in GiB, PVE's create syntax) → (storage, GiB).
pub fn parse_rootfs_spec(s: &str) -> Result<(String, u64), String> {
    let (storage, size) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} must be STORAGE:SIZE_GIB, e.g. local-lvm:8"))?;
    if !pve_format::is_storage_id(storage) {
        return Err(format!(
            "{storage:?} is not a storage id (lower-case letters, digits, '-', '_', '.')"
        ));
    }
    let gib: u64 = size
        .parse()
        .ok()
        .filter(|g| (1..=1 << 20).contains(g))
        .ok_or_else(|| format!("size {size:?} must be a whole number of GiB (1..)"))?;
    Ok((storage.to_string(), gib))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = r#"
revision = 7
[[guest]]
vmid = 201
ensure = "running"
hostname = "web-1"
template = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
cores = 2
memory = 1024
swap = 512
rootfs = "local-lvm:8"
net0 = "name=eth0,bridge=vmbr0,ip=dhcp"
onboot = true
tags = ["web"]
description = "managed by drover"
"#;

    #[test]
    fn parses_the_documented_example() {
        let d = parse(DOC.as_bytes(), "desired.toml").unwrap();
        assert_eq!(d.revision, 7);
        let g = &d.guests[&201];
        assert_eq!(g.ensure, Ensure::Running);
        assert_eq!(g.memory, Some(1024));
        assert_eq!(g.nets[&0].to_string(), "name=eth0,bridge=vmbr0,ip=dhcp");
        assert_eq!(g.tags.as_deref(), Some(&["web".to_string()][..]));
    }

    #[test]
    fn errors_name_file_guest_and_field() {
        let bad = DOC.replace("cores = 2", "cores = \"two\"");
        let e = parse(bad.as_bytes(), "hub/desired.toml").unwrap_err();
        assert_eq!(e.vmid, Some(201));
        assert_eq!(e.field.as_deref(), Some("cores"));
        let msg = e.to_string();
        assert!(
            msg.contains("hub/desired.toml") && msg.contains("201"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_unknown_fields_duplicates_and_bad_values() {
        for (from, to, field) in [
            ("cores = 2", "cpus = 2", "cpus"),
            ("ensure = \"running\"", "ensure = \"up\"", "ensure"),
            (
                "rootfs = \"local-lvm:8\"",
                "rootfs = \"local-lvm\"",
                "rootfs",
            ),
            (
                "net0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"",
                "net0 = \"name=eth0,mtu=big\"",
                "net0",
            ),
            ("tags = [\"web\"]", "tags = [\"we b\"]", "tags"),
            (
                "net0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"",
                "net0 = \"name=eth0,bridge=vmbr0;rm -rf /\"",
                "net0",
            ),
            (
                "net0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"",
                "net0 = \"name=eth0,bridge=vmbr0,hookscript=local:snippets/x.sh\"",
                "net0",
            ),
            (
                "net0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"",
                "net0 = \"name=eth0,bridge=vmbr0\\nlxc.hook.pre-start: /x\"",
                "net0",
            ),
            (
                "template = \"local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst\"",
                "template = \"local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst\"",
                "template",
            ),
            (
                "template = \"local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst\"",
                "template = \"local:iso/x.iso\"",
                "template",
            ),
            (
                "hostname = \"web-1\"",
                "hostname = \"web-1\\n\"",
                "hostname",
            ),
            (
                "rootfs = \"local-lvm:8\"",
                "rootfs = \"Local-LVM:8\"",
                "rootfs",
            ),
            (
                "rootfs = \"local-lvm:8\"",
                "rootfs = \"local-lvm:8\\n\"",
                "rootfs",
            ),
            ("hostname = \"web-1\"", "hostname = \"-web\"", "hostname"),
        ] {
            let bad = DOC.replace(from, to);
            assert_ne!(bad, DOC, "{from} not found");
            let e = parse(bad.as_bytes(), "d").unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert_eq!(e.vmid, Some(201), "{e}");
            assert_eq!(e.code(), "desired_invalid");
        }
        let dup = format!("{DOC}\n[[guest]]\nvmid = 201\n");
        assert_eq!(
            parse(dup.as_bytes(), "d").unwrap_err().field.as_deref(),
            Some("vmid")
        );
        assert!(
            parse(b"[[guest]]\nvmid=101\n", "d").is_err(),
            "revision is required"
        );
        assert!(parse(b"revision = 1\nfoo = 2\n", "d").is_err());
        assert!(parse(&[0xff, 0xfe], "d").is_err());
        assert!(parse(b"revision = ", "d").is_err());
    }

    #[test]
    fn the_shipped_example_parses_with_every_field() {
        let text = include_str!("../../../deploy/desired.example/desired.toml");
        let d = parse(text.as_bytes(), "desired.example").unwrap();
        let g = &d.guests[&104];
        let m = &g.more;
        assert_eq!(m.nesting, Some(true));
        assert_eq!(m.unprivileged, Some(true));
        assert_eq!(m.mounts.len(), 2);
        assert!(m.mounts_managed);
        assert_eq!(m.startup.unwrap().order, Some(2));
        assert_eq!(m.cpulimit, Some(1.5));
        assert!(
            m.ssh_public_keys
                .as_deref()
                .unwrap()
                .starts_with("ssh-ed25519 ")
        );
        assert_eq!(m.nameserver.as_deref().unwrap().len(), 2);
    }

    #[test]
    fn vocabulary_values_are_checked_with_file_guest_and_field() {
        let base = "revision = 1\n[[guest]]\nvmid = 201\n";
        for (line, field) in [
            (
                "mp0 = { storage = \"local-lvm\", path = \"/srv\" }",
                "mp0.size",
            ),
            (
                "mp0 = { storage = \"local-lvm\", size = 2, path = \"srv\" }",
                "mp0.path",
            ),
            (
                "mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv/\" }",
                "mp0.path",
            ),
            (
                "mp0 = { storage = \"local-lvm\", size = 2, path = \"/a/../b\" }",
                "mp0.path",
            ),
            ("mp0 = { size = 2, path = \"/srv\" }", "mp0"),
            (
                "mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv\", bogus = 1 }",
                "mp0.bogus",
            ),
            (
                "mp0 = { storage = \"local-lvm\", size = 2, path = \"/srv\", mountoptions = [\"exec\"] }",
                "mp0.mountoptions",
            ),
            (
                "mp0 = { host_path = \"/srv\", size = 2, path = \"/srv\" }",
                "mp0.size",
            ),
            ("mp = [1]", "mp"),
            ("dev0 = { path = \"/etc/passwd\" }", "dev0.path"),
            ("features = { nesting = 1 }", "features.nesting"),
            ("features = { keyctl = true }", "features.keyctl"),
            ("nameserver = [\"dns.example\"]", "nameserver"),
            ("searchdomain = [\"-bad\"]", "searchdomain"),
            ("timezone = \"../../etc/shadow\"", "timezone"),
            ("startup = { order = -1 }", "startup.order"),
            ("startup = { first = 1 }", "startup.first"),
            ("cpulimit = 9000", "cpulimit"),
            ("cpuunits = 600000", "cpuunits"),
            ("tty = 7", "tty"),
            ("cmode = \"serial\"", "cmode"),
            ("ostype = \"windows\"", "ostype"),
            ("arch = \"sparc\"", "arch"),
            (
                "ssh-public-keys = \"from=\\\"x\\\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\"",
                "ssh-public-keys",
            ),
            ("password = \"x\"", "password"),
            ("hookscript = \"local:snippets/a.sh\"", "hookscript"),
            (
                "\"lxc.cgroup2.devices.allow\" = \"a\"",
                "lxc.cgroup2.devices.allow",
            ),
            ("pool = \"p\"", "pool"),
            ("mp256 = {}", "mp256"),
            ("dev256 = {}", "dev256"),
        ] {
            let e = parse(format!("{base}{line}\n").as_bytes(), "hub/desired.toml").unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{line}: {e}");
            assert_eq!(e.vmid, Some(201), "{line}");
            assert!(e.to_string().contains("hub/desired.toml"), "{e}");
        }
        let two = format!(
            "{base}mp0 = {{ storage = \"a1\", size = 1, path = \"/x\" }}\nmp1 = {{ storage = \"a1\", size = 1, path = \"/x\" }}\n"
        );
        assert_eq!(
            parse(two.as_bytes(), "d").unwrap_err().field.as_deref(),
            Some("mp1.path")
        );
        let empty = parse(format!("{base}mp = []\n").as_bytes(), "d").unwrap();
        assert!(
            empty.guests[&201].more.mounts_managed && empty.guests[&201].more.mounts.is_empty()
        );
    }

    #[test]
    fn empty_document_is_valid() {
        let d = parse(b"revision = 3\n", "d").unwrap();
        assert!(d.guests.is_empty());
    }
}
