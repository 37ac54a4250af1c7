//! PVE's value formats, checked strictly before anything from the desired document is sent.
//!
//! PVE's own checks are not enough to rely on: its patterns are Perl `m/^...$/`, where `$` also
//! matches before a trailing newline, and a property string's parts are split on `,` only, so
//! `bridge=vmbr0;rm -rf /` or `...,hookscript=local:snippets/x.sh` would reach PVE as they are.
//! Here every property string is parsed into its keys, each key must be one the format knows
//! (from `pve-lxc-api-schema.json`), each value must match its grammar, and no value may hold
//! a control character. The messages say which part is wrong, for the document's error report.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Refuses control characters (newline, escape, NUL, DEL, ...) anywhere in `s`.
pub fn no_control_chars(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "contains the control character {:?}, which PVE values never hold",
            c
        )),
        None => Ok(()),
    }
}

/// `[-_.A-Za-z0-9]+`, PVE's pattern for interface and bridge names (ASCII `\w`).
fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// PVE's `parse_boolean`: 1/0, yes/no, on/off, true/false, any case.
fn is_pve_bool(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "1" | "0" | "yes" | "no" | "on" | "off" | "true" | "false"
    )
}

fn int_in(s: &str, min: u64, max: u64) -> bool {
    !s.is_empty()
        && s.len() <= 10
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n))
}

/// `ADDRESS/PREFIX` with a prefix PVE's `pve_verify_cidrv4`/`v6` accepts (8..=max).
fn cidr<A: std::str::FromStr>(s: &str, max_prefix: u64) -> bool {
    s.split_once('/')
        .is_some_and(|(addr, prefix)| addr.parse::<A>().is_ok() && int_in(prefix, 8, max_prefix))
}

/// The keys of PVE's `net[n]` format, each with its value grammar.
const NET_KEYS: &[&str] = &[
    "name",
    "bridge",
    "firewall",
    "gw",
    "gw6",
    "host-managed",
    "hwaddr",
    "ip",
    "ip6",
    "link_down",
    "mtu",
    "rate",
    "tag",
    "trunks",
    "type",
];

fn net_value_ok(key: &str, v: &str) -> Result<(), String> {
    let ok = match key {
        "name" | "bridge" => is_ident(v),
        "firewall" | "link_down" | "host-managed" => is_pve_bool(v),
        "gw" => v.parse::<Ipv4Addr>().is_ok(),
        "gw6" => v.parse::<Ipv6Addr>().is_ok(),
        "hwaddr" => {
            let parts: Vec<&str> = v.split(':').collect();
            parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                // A unicast address: the I/G bit of the first octet is clear.
                && u8::from_str_radix(parts[0], 16).is_ok_and(|o| o & 1 == 0)
        }
        "ip" => matches!(v, "dhcp" | "manual") || cidr::<Ipv4Addr>(v, 32),
        "ip6" => matches!(v, "auto" | "dhcp" | "manual") || cidr::<Ipv6Addr>(v, 128),
        "mtu" => int_in(v, 64, 65535),
        "rate" => {
            !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && v.parse::<f64>().is_ok_and(|r| r.is_finite() && r >= 0.0)
        }
        "tag" => int_in(v, 1, 4094),
        "trunks" => v.split(';').all(|id| int_in(id, 1, 4094)),
        "type" => v == "veth",
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{key}={v:?} is not a valid {key} value"))
    }
}

/// Checks a `net[n]` property string against PVE's format: `name=<string>` plus known keys,
/// each once, each with a valid value.
pub fn check_net(s: &str) -> Result<(), String> {
    no_control_chars(s)?;
    let mut seen: Vec<&str> = Vec::new();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?} is not KEY=VALUE"));
        };
        if !NET_KEYS.contains(&k) {
            return Err(format!(
                "{k:?} is not a key of PVE's net format (known: {})",
                NET_KEYS.join(", ")
            ));
        }
        if seen.contains(&k) {
            return Err(format!("{k} is given more than once"));
        }
        seen.push(k);
        net_value_ok(k, v)?;
    }
    if !seen.contains(&"name") {
        return Err("name=<interface> is required".into());
    }
    Ok(())
}

/// PVE's `pve-storage-id`: `[a-z][a-z0-9\-_.]*[a-z0-9]`.
pub fn is_storage_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// Why a `template` is refused: the stable sub-reason shown with `desired_invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    /// A `backup/` volume: creating from it would restore another guest's data.
    BackupVolume(String),
    /// Anything that is not `STORAGE:vztmpl/NAME.tar.*`.
    NotAVztmpl(String),
}

impl TemplateProblem {
    pub fn message(&self) -> &str {
        match self {
            TemplateProblem::BackupVolume(m) | TemplateProblem::NotAVztmpl(m) => m,
        }
    }
}

/// Template file endings PVE's storage layer lists as `vztmpl` content.
const TEMPLATE_ENDINGS: &[&str] = &[".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2", ".tgz", ".tar"];

/// `template` must name a `vztmpl` volume: `STORAGE:vztmpl/NAME.tar.{gz,xz,zst,...}`. A
/// `backup/` volume holds another guest's data and is refused on its own.
pub fn check_template(s: &str) -> Result<(), TemplateProblem> {
    let not = |why: String| {
        TemplateProblem::NotAVztmpl(format!(
            "{s:?} {why}; it must name a vztmpl volume like local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
        ))
    };
    no_control_chars(s).map_err(not)?;
    let Some((storage, volume)) = s.split_once(':') else {
        return Err(not("has no STORAGE: part".into()));
    };
    if !is_storage_id(storage) {
        return Err(not(format!(
            "names the storage {storage:?}, which is not a storage id"
        )));
    }
    if volume.starts_with("backup/") || volume.contains("vzdump-") {
        return Err(TemplateProblem::BackupVolume(format!(
            "{s:?} is a backup volume: creating from it would restore another guest's data onto this one; name a vztmpl volume instead"
        )));
    }
    let Some(name) = volume.strip_prefix("vztmpl/") else {
        return Err(not("is not a vztmpl volume".into()));
    };
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
        && TEMPLATE_ENDINGS.iter().any(|e| name.ends_with(e));
    if !name_ok {
        return Err(not(format!(
            "has the file name {name:?}, which is not a template archive ({})",
            TEMPLATE_ENDINGS.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_net_strings_pass() {
        for s in [
            "name=eth0,bridge=vmbr0,ip=dhcp",
            "name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,firewall=1",
            "name=eth1,bridge=vmbr1,ip6=auto,tag=20,mtu=1500,rate=12.5,trunks=10;20;30",
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,type=veth,link_down=0",
            "name=eth0,bridge=vnet-a_1.2,ip6=fd00::5/64,gw6=fd00::1,host-managed=yes",
        ] {
            assert_eq!(check_net(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn hostile_net_strings_are_refused() {
        for s in [
            "name=eth0,bridge=vmbr0;rm -rf /",
            "name=eth0,bridge=vmbr0,hookscript=local:snippets/x.sh",
            "name=eth0,bridge=vmbr0\nhookscript: local:snippets/x.sh",
            "name=eth0,bridge=vmbr0\n",
            "name=eth0,bridge=vmbr0,ip=dhcp\u{1b}[2J",
            "name=eth0,bridge=vmbr0,ip=dhcp,ip=manual",
            "name=eth0,bridge=vmbr0,",
            "bridge=vmbr0",
            "eth0",
            "name=eth 0",
            "name=eth0,bridge=",
            "name=eth0,firewall=maybe",
            "name=eth0,ip=10.0.0.5",
            "name=eth0,ip=10.0.0.5/33",
            "name=eth0,ip=300.0.0.5/24",
            "name=eth0,gw=fd00::1",
            "name=eth0,hwaddr=01:00:5E:00:00:01",
            "name=eth0,hwaddr=BC:24:11:AA:BB",
            "name=eth0,mtu=63",
            "name=eth0,tag=4095",
            "name=eth0,trunks=10;x",
            "name=eth0,rate=-1",
            "name=eth0,type=macvlan",
        ] {
            assert!(check_net(s).is_err(), "{s:?} passed");
        }
    }

    #[test]
    fn templates_must_be_vztmpl_volumes() {
        assert_eq!(
            check_template("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"),
            Ok(())
        );
        assert_eq!(
            check_template("nfs-tpl:vztmpl/alpine-3.20-default_amd64.tar.xz"),
            Ok(())
        );
        for s in [
            "local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst",
            "pbs:backup/ct/101/2026-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(check_template(s), Err(TemplateProblem::BackupVolume(_))),
                "{s}"
            );
        }
        for s in [
            "local:iso/debian.iso",
            "local:vztmpl/../../etc/passwd.tar.gz",
            "local:vztmpl/x.tar.zst\n",
            "local:vztmpl/",
            "/var/lib/vz/template/cache/x.tar.zst",
            "Local:vztmpl/x.tar.zst",
            "local:vztmpl/x.tar.zst,force=1",
            "local:vztmpl/x.img",
        ] {
            assert!(
                matches!(check_template(s), Err(TemplateProblem::NotAVztmpl(_))),
                "{s}"
            );
        }
    }
}
