//! The planner's normalized view of a guest, desired or actual.
//!
//! PVE re-prints what it is given (adds `hwaddr` and `type=veth` to `net[n]`, sorts tags, turns
//! `local-lvm:8` into a volume id, appends a newline to descriptions). Comparing text would
//! plan the same change forever, so both sides are brought into these types first and compared
//! by meaning.

use std::collections::{BTreeMap, BTreeSet};

pub use proxmox_client::NetConfig;

/// Renders the desired `net[n]` value for a PUT, keeping the guest's current MAC address so a
/// config change does not also change the guest's DHCP lease.
pub fn render_net_keeping_hwaddr(desired: &NetConfig, actual: Option<&NetConfig>) -> String {
    let mut n = desired.clone();
    if n.hwaddr.is_none() {
        n.hwaddr = actual.and_then(|a| a.hwaddr.clone());
    }
    n.to_string()
}

/// Parses a desired `net[n]` value, with a message fit for the document's error report.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    s.parse::<NetConfig>().map_err(|e| e.to_string())
}

/// The root filesystem as the planner compares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootfsState {
    pub storage: String,
    /// Size in MiB, when known.
    pub size_mib: Option<u64>,
}

/// Power state as PVE reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Running,
    Stopped,
    Other(String),
}

/// `net[n]` entries by index. Each entry is boxed: a B-tree leaf reserves room for eleven
/// values, and a `NetConfig` is about 280 bytes, so an unboxed map of one interface took 3 KiB;
/// with thousands of guests (the document and the host read both hold one per guest) that
/// was most of the daemon's memory.
pub type Nets = BTreeMap<u8, Box<NetConfig>>;

/// The managed keys of an existing guest, normalized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActualConfig {
    pub hostname: Option<String>,
    pub cores: Option<u32>,
    pub memory: Option<u64>,
    pub swap: Option<u64>,
    pub rootfs: Option<RootfsState>,
    pub nets: Nets,
    pub onboot: bool,
    pub tags: Vec<String>,
    /// Without PVE's trailing newline.
    pub description: Option<String>,
    pub protection: bool,
    /// `mp[n]` as PVE reports them (volume id, size, flags).
    pub mounts: BTreeMap<u8, proxmox_client::MountConfig>,
    /// `unused[n]`: volumes detached from a mount point, kept by PVE until deleted.
    pub unused: BTreeMap<u8, String>,
    /// `dev[n]` passthrough entries (set by root only).
    pub devices: BTreeMap<u16, crate::model::DevSpec>,
    pub features: proxmox_client::Features,
    /// PVE's default when absent is privileged (`0`); Drover creates unprivileged guests.
    pub unprivileged: bool,
    pub nameserver: Vec<String>,
    pub searchdomain: Vec<String>,
    pub timezone: Option<String>,
    pub startup: Option<crate::model::Startup>,
    pub cpulimit: Option<f64>,
    pub cpuunits: Option<u64>,
    pub console: Option<bool>,
    pub tty: Option<u8>,
    pub cmode: Option<String>,
    pub hookscript: Option<String>,
}

/// One guest on this node as read from PVE.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualGuest {
    pub vmid: u32,
    pub power: Power,
    /// The config `lock` (`create`, `backup`, `snapshot`, ...), when set.
    pub lock: Option<String>,
    pub config: ActualConfig,
    /// PVE's config digest (SHA-1), for optimistic concurrency and approval binding.
    pub digest: String,
    /// Keys with changes PVE holds until the next start/reboot.
    pub pending: BTreeSet<String>,
    pub template: bool,
}

/// Everything the planner knows about the host.
#[derive(Debug, Clone, Default)]
pub struct ActualHost {
    /// CTs on this node. Boxed, like the document's guests: an `ActualGuest` is ~600 bytes,
    /// and a B-tree node holds room for eleven values inline.
    pub guests: BTreeMap<u32, Box<ActualGuest>>,
    /// vmids that exist elsewhere in the cluster (qemu or lxc), with the node holding them.
    pub elsewhere: BTreeMap<u32, String>,
    /// CTs the list named but that were gone when their config was read (migrated away or
    /// destroyed in between). Nothing is known of them this pass: nothing is planned for
    /// them, and what the journal knows of them is kept until a pass sees where they went.
    pub vanished: BTreeSet<u32>,
}

/// Normalizes tags the way PVE stores them (deduplicated, lower-cased, sorted).
pub fn normalize_tags<I: IntoIterator<Item = S>, S: AsRef<str>>(tags: I) -> Vec<String> {
    let set: BTreeSet<String> = tags
        .into_iter()
        .map(|t| t.as_ref().trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    set.into_iter().collect()
}

/// PVE's `tags` value (`a;b`, also accepting `,` and spaces as older versions did).
pub fn split_tags(s: &str) -> Vec<String> {
    normalize_tags(s.split([';', ',', ' ']))
}

/// Strips the newline PVE appends to each description line.
pub fn normalize_description(s: &str) -> String {
    s.trim_end_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn net_comparison_ignores_generated_fields_and_render_keeps_the_mac() {
        let want = parse_net("name=eth0,bridge=vmbr0,ip=dhcp").unwrap();
        let got =
            parse_net("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth").unwrap();
        assert!(got.same_as_desired(&want));
        let other = parse_net("name=eth0,bridge=vmbr1,ip=dhcp,type=veth").unwrap();
        assert!(!other.same_as_desired(&want));
        let want = parse_net("name=eth0,bridge=vmbr1,ip=dhcp").unwrap();
        assert_eq!(
            render_net_keeping_hwaddr(&want, Some(&got)),
            "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:01,ip=dhcp"
        );
        assert!(parse_net("bridge=vmbr0").is_err());
    }

    #[test]
    fn tags_normalize_like_pve() {
        assert_eq!(split_tags("web;DB;web"), vec!["db", "web"]);
        assert_eq!(normalize_tags(["b", "a"]), vec!["a", "b"]);
    }
}
