//! Parameter validation against Proxmox's own schema (`testdata/pve-lxc-api-schema.json`, the
//! unmodified `info` objects of `apidata.js`), so a request PVE would refuse is refused here
//! too, with PVE's 400 and its `errors` map. The checks follow pve-common's
//! `PVE/JSONSchema.pm` (`check_prop`, `check_type`, `check_format`, `parse_property_string`)
//! and `PVE/RESTHandler.pm` (`normalize_legacy_param_formats`: a repeated key of a `-list`
//! format is joined with `,`, any other repeated key is an ARRAY and fails the type check).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use serde_json::Value;

const SCHEMA: &str = include_str!("../../testdata/pve-lxc-api-schema.json");
/// The storage and backup endpoints (`safety-nets.md` §1.8), same extraction.
const BACKUP_SCHEMA: &str = include_str!("../../testdata/pve-backup-api-schema.json");

fn backup_endpoints() -> &'static serde_json::Map<String, Value> {
    static E: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    E.get_or_init(|| {
        serde_json::from_str::<Value>(BACKUP_SCHEMA)
            .ok()
            .and_then(|v| v.get("endpoints").and_then(Value::as_object).cloned())
            .unwrap_or_default()
    })
}

fn endpoints() -> &'static serde_json::Map<String, Value> {
    static E: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    E.get_or_init(|| {
        serde_json::from_str::<Value>(SCHEMA)
            .ok()
            .and_then(|v| v.get("endpoints").and_then(Value::as_object).cloned())
            .unwrap_or_default()
    })
}

/// The schema of one endpoint's parameter, e.g. (`PUT`, `/nodes/{node}/lxc/{vmid}/config`,
/// `net0`).
pub fn param_schema(method: &str, template: &str, key: &str) -> Option<&'static Value> {
    let props = endpoints()
        .get(template)?
        .get(method)?
        .get("parameters")?
        .get("properties")?
        .as_object()?;
    property(props, key)
}

/// Finds the schema property for `key` (`net0` matches `net[n]`).
fn property<'a>(props: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(p) = props.get(key) {
        return Some(p);
    }
    let stem = key.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() < key.len() {
        return props.get(&format!("{stem}[n]"));
    }
    None
}

/// Validates the raw (possibly repeated) parameters for `method` on the schema path `template`
/// (e.g. `/nodes/{node}/lxc/{vmid}/config`) and returns them with list keys joined. An
/// endpoint missing from the schema passes its parameters through (last value wins).
pub fn validate_raw(
    method: &str,
    template: &str,
    raw: &[(String, String)],
) -> Result<BTreeMap<String, String>, BTreeMap<String, String>> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in raw {
        grouped.entry(k.clone()).or_default().push(v.clone());
    }
    let Some(info) = endpoints()
        .get(template)
        .or_else(|| backup_endpoints().get(template))
        .and_then(|m| m.get(method))
    else {
        return Ok(grouped
            .into_iter()
            .filter_map(|(k, mut v)| v.pop().map(|last| (k, last)))
            .collect());
    };
    let empty = serde_json::Map::new();
    let props = info
        .get("parameters")
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut errors = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (k, values) in grouped {
        let Some(p) = property(props, &k) else {
            errors.insert(
                k.clone(),
                "property is not defined in schema and the schema does not allow additional properties".into(),
            );
            continue;
        };
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("string");
        let format = p.get("format").and_then(Value::as_str).unwrap_or("");
        let value = if values.len() > 1 {
            if ty == "string" && format.ends_with("-list") {
                values.join(",")
            } else {
                errors.insert(k.clone(), format!("type check ('{ty}') failed - got ARRAY"));
                continue;
            }
        } else {
            values.into_iter().next().unwrap_or_default()
        };
        if let Err(e) = check_prop(p, &value, &k) {
            errors.insert(k.clone(), e);
            continue;
        }
        out.insert(k, value);
    }
    for (k, p) in props {
        let optional = p.get("optional").and_then(Value::as_i64).unwrap_or(0) == 1;
        if !optional && !k.contains("[n]") && !out.contains_key(k) && !errors.contains_key(k) {
            errors.insert(
                k.clone(),
                "property is missing and it is not optional".into(),
            );
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `check_prop` for a scalar: type, then format, pattern, lengths, range, enum.
fn check_prop(p: &Value, v: &str, path: &str) -> Result<(), String> {
    let ty = p.get("type").and_then(Value::as_str).unwrap_or("string");
    match ty {
        "integer" if !is_integer(v) => {
            return Err(format!("type check ('integer') failed - got '{v}'"));
        }
        "number" if v.parse::<f64>().is_err() => {
            return Err(format!("type check ('number') failed - got '{v}'"));
        }
        // Only `0` and `1` (JSONSchema.pm check_type); JSON true/false arrive as 1/0.
        "boolean" if !matches!(v, "0" | "1") => {
            return Err(format!("type check ('boolean') failed - got '{v}'"));
        }
        _ => {}
    }
    match p.get("format") {
        Some(Value::Object(f)) => {
            parse_property_string(f, v, path).map_err(|e| format!("invalid format - {e}"))?;
        }
        Some(Value::String(f)) => {
            check_named_format(f, v).map_err(|e| format!("invalid format - {e}\n"))?;
        }
        _ => {}
    }
    if let Some(pattern) = p.get("pattern").and_then(Value::as_str)
        && !matches_pattern(pattern, v)
    {
        return Err("value does not match the regex pattern".into());
    }
    if let Some(max) = p.get("maxLength").and_then(Value::as_u64)
        && v.len() as u64 > max
    {
        return Err(format!("value may only be {max} characters long"));
    }
    if let Some(min) = p.get("minLength").and_then(Value::as_u64)
        && (v.len() as u64) < min
    {
        return Err(format!("value must be at least {min} characters long"));
    }
    if let Ok(n) = v.parse::<f64>()
        && ty != "string"
    {
        if let Some(max) = p.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("value must have a maximum value of {max}"));
        }
        if let Some(min) = p.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("value must have a minimum value of {min}"));
        }
    }
    if let Some(e) = p.get("enum").and_then(Value::as_array)
        && !e.iter().any(|x| x.as_str() == Some(v))
    {
        let all: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
        return Err(format!(
            "value '{v}' does not have a value in the enumeration '{}'",
            all.join(", ")
        ));
    }
    Ok(())
}

fn is_integer(v: &str) -> bool {
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// `parse_boolean` inside property strings accepts the spelled-out forms too.
fn parse_boolean(v: &str) -> Option<&'static str> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some("1"),
        "0" | "false" | "no" | "off" => Some("0"),
        _ => None,
    }
}

/// `parse_property_string`: `key=value` parts (the default key may stand alone), each key known
/// to the format, each value checked by its own schema, required keys present. Returns the
/// parsed map (booleans as `0`/`1`). Errors end with a newline, as PVE's `die` texts do.
pub fn parse_property_string(
    format: &serde_json::Map<String, Value>,
    data: &str,
    path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let default_key = format
        .iter()
        .find(|(_, s)| s.get("default_key").and_then(Value::as_i64) == Some(1))
        .map(|(k, _)| k.clone());
    let mut res: BTreeMap<String, String> = BTreeMap::new();
    for part in data.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = part.split_once('=') {
            if k.is_empty() || v.is_empty() {
                return Err("missing key in comma-separated list property\n".into());
            }
            if res.contains_key(k) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {k}\n"
                ));
            }
            let Some(schema) = format.get(k) else {
                return Err(format!(
                    "invalid key in comma-separated list property: {k}\n"
                ));
            };
            let v = if schema.get("type").and_then(Value::as_str) == Some("boolean") {
                parse_boolean(v)
                    .map(str::to_string)
                    .unwrap_or(v.to_string())
            } else {
                v.to_string()
            };
            res.insert(k.to_string(), v);
        } else {
            let Some(dk) = &default_key else {
                return Err("value without key, but schema does not define a default key\n".into());
            };
            if res.contains_key(dk) {
                return Err(format!(
                    "duplicate key in comma-separated list property: {dk}\n"
                ));
            }
            res.insert(dk.clone(), part.to_string());
        }
    }
    let mut errors: Vec<String> = Vec::new();
    for (k, schema) in format {
        let sub = format!("{path}.{k}");
        match res.get(k) {
            Some(v) => {
                if let Err(e) = check_prop(schema, v, &sub) {
                    errors.push(format!("{sub}: {e}"));
                }
            }
            None => {
                if schema.get("optional").and_then(Value::as_i64).unwrap_or(0) != 1 {
                    errors.push(format!("{sub}: property is missing and it is not optional"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(res)
    } else {
        Err(format!("format error\n{}\n", errors.join("\n")))
    }
}

/// [`validate_raw`] for parameters already merged into a map (one value per key).
pub fn validate(
    method: &str,
    template: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), BTreeMap<String, String>> {
    let raw: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    validate_raw(method, template, &raw).map(|_| ())
}

/// The property-string format of a config key (`net0` → the `net[n]` format), from `PUT config`.
pub fn config_format(key: &str) -> Option<&'static serde_json::Map<String, Value>> {
    param_schema("PUT", "/nodes/{node}/lxc/{vmid}/config", key)?
        .get("format")?
        .as_object()
}

/// The registered formats the LXC schema names (pve-common `register_format`), each with PVE's
/// `die` text. Formats this simulator does not know are accepted.
fn check_named_format(format: &str, v: &str) -> Result<(), String> {
    let (name, list) = match format.strip_suffix("-list") {
        Some(n) => (n, true),
        None => (format, false),
    };
    if list {
        for item in split_list(v) {
            check_one_format(name, item)?;
        }
        return Ok(());
    }
    if let Some(n) = format.strip_suffix("-opt") {
        if v.is_empty() {
            return Ok(());
        }
        return check_one_format(n, v);
    }
    check_one_format(name, v)
}

/// `PVE::Tools::split_list`: `,`, `;` and whitespace separate items.
pub fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ';', ' ', '\t', '\n'])
        .filter(|s| !s.is_empty())
}

fn check_one_format(name: &str, v: &str) -> Result<(), String> {
    let err = match name {
        "pve-configid" if !is_configid(v) => format!("invalid configuration ID '{v}'"),
        "dns-name" if !is_dns_name(v) => "value does not look like a valid DNS name".into(),
        "pve-tag" if !is_tag(v) => "invalid characters in tag".into(),
        "lxc-ip-with-ll-iface" if !is_ip(v.split_once('%').map_or(v, |(a, _)| a)) => {
            "value does not look like a valid IP address".into()
        }
        "ipv4" if v.parse::<Ipv4Addr>().is_err() => {
            "value does not look like a valid IPv4 address".into()
        }
        "ipv6" if v.parse::<Ipv6Addr>().is_err() => {
            "value does not look like a valid IPv6 address".into()
        }
        "pve-ipv4-config" if !matches!(v, "dhcp" | "manual") && !is_cidr(v, false) => {
            "value does not look like a valid ipv4 network configuration".into()
        }
        "pve-ipv6-config" if !matches!(v, "auto" | "dhcp" | "manual") && !is_cidr(v, true) => {
            "value does not look like a valid ipv6 network configuration".into()
        }
        "mac-addr" if !is_unicast_mac(v) => {
            "value does not look like a valid unicast MAC address".into()
        }
        "disk-size" if parse_size(v).is_none() => {
            format!("value does not look like a valid disk size: {v}")
        }
        "pve-volume-id"
            if !v
                .split_once(':')
                .is_some_and(|(s, rest)| is_storage_id(s) && !rest.is_empty()) =>
        {
            format!("unable to parse volume ID '{v}'")
        }
        "pve-storage-id" if !is_storage_id(v) => {
            format!("storage ID '{v}' contains illegal characters")
        }
        "pve-node" if !is_dns_label(v) => {
            format!("value '{v}' does not look like a valid node name")
        }
        "pve-startup-order" if !is_startup_order(v) => "unable to parse startup options".into(),
        _ => return Ok(()),
    };
    Err(err)
}

fn is_tag(v: &str) -> bool {
    let mut c = v.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphanumeric() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || "_-+.".contains(x))
}

fn is_ip(v: &str) -> bool {
    v.parse::<Ipv4Addr>().is_ok() || v.parse::<Ipv6Addr>().is_ok()
}

/// Six hex pairs, and unicast: the lowest bit of the first octet is clear.
fn is_unicast_mac(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// `[[order=]N][,up=N][,down=N]`.
fn is_startup_order(v: &str) -> bool {
    v.split(',').filter(|p| !p.is_empty()).all(|p| {
        let n = p
            .strip_prefix("order=")
            .or_else(|| p.strip_prefix("up="))
            .or_else(|| p.strip_prefix("down="))
            .unwrap_or(p);
        is_integer(n) && !n.starts_with('-')
    })
}

/// `$CONFIGID_RE = qr/[a-z][a-z0-9_-]+/i` (JSONSchema.pm): `pre-upgrade` is valid.
pub fn is_configid(v: &str) -> bool {
    let mut c = v.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && v.len() >= 2
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == '-')
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// `pve_verify_dns_name`: dot-separated labels of letters, digits and inner hyphens.
pub fn is_dns_name(v: &str) -> bool {
    v.split('.').all(is_dns_label)
}

fn is_storage_id(v: &str) -> bool {
    let mut c = v.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && v.len() >= 2
        && v.chars()
            .all(|x| x.is_ascii_alphanumeric() || "-_.".contains(x))
        && v.chars().last().is_some_and(|l| l.is_ascii_alphanumeric())
}

fn is_cidr(v: &str, v6: bool) -> bool {
    let Some((ip, prefix)) = v.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    if v6 {
        ip.parse::<Ipv6Addr>().is_ok() && prefix <= 128
    } else {
        ip.parse::<Ipv4Addr>().is_ok() && prefix <= 32
    }
}

/// `parse_size`: `N[.M][K|M|G|T][iB]` in bytes.
pub fn parse_size(v: &str) -> Option<f64> {
    let unit_at = v.find(|c: char| !c.is_ascii_digit() && c != '.');
    let (num, unit) = match unit_at {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

/// The few regex patterns the LXC schema uses, written out (no regex engine in the simulator).
/// An unknown pattern accepts.
fn matches_pattern(pattern: &str, v: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    match pattern {
        // bridge, net name
        r"[-_.\w\d]+" => !v.is_empty() && v.chars().all(|c| word(c) || c == '-' || c == '.'),
        // trunks
        r"(?^:\d+(?:;\d+)*)" => {
            !v.is_empty()
                && v.split(';')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        }
        // features mount
        r"(?^:[a-zA-Z0-9_; ]+)" => {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ';' || c == ' ')
        }
        p if p.contains("discard|lazytime|noatime") => v.split(';').all(|o| {
            matches!(
                o,
                "discard" | "lazytime" | "noatime" | "nodev" | "noexec" | "nosuid"
            )
        }),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PUT: &str = "/nodes/{node}/lxc/{vmid}/config";

    fn put(pairs: &[(&str, &str)]) -> Result<BTreeMap<String, String>, BTreeMap<String, String>> {
        let mut all = m(&[("node", "pve1"), ("vmid", "101")]);
        all.extend(m(pairs));
        validate_raw("PUT", PUT, &all)
    }

    #[test]
    fn refuses_unknown_and_ill_typed_parameters() {
        assert!(put(&[("memory", "512")]).is_ok());
        let e = put(&[("start", "1")]).unwrap_err();
        assert!(e["start"].contains("not defined in schema"));
        let e = put(&[("memory", "lots")]).unwrap_err();
        assert!(e["memory"].contains("integer"));
        let e = put(&[("memory", "1")]).unwrap_err();
        assert!(e["memory"].contains("minimum"));
        assert!(put(&[("net0", "name=eth0")]).is_ok());
    }

    #[test]
    fn booleans_are_only_zero_or_one() {
        assert!(put(&[("onboot", "1")]).is_ok());
        assert!(put(&[("onboot", "0")]).is_ok());
        for bad in ["true", "yes", "on", "false"] {
            let e = put(&[("onboot", bad)]).unwrap_err();
            assert_eq!(
                e["onboot"],
                format!("type check ('boolean') failed - got '{bad}'")
            );
        }
        // Inside a property string `parse_boolean` accepts the spelled-out forms.
        assert!(put(&[("net0", "name=eth0,firewall=true")]).is_ok());
    }

    #[test]
    fn property_strings_and_formats_are_checked() {
        let e = put(&[("net0", "name=eth0,bogus=1")]).unwrap_err();
        assert_eq!(
            e["net0"],
            "invalid format - invalid key in comma-separated list property: bogus\n"
        );
        let e = put(&[("net0", "bridge=vmbr0")]).unwrap_err();
        assert!(
            e["net0"].contains("net0.name: property is missing"),
            "{e:?}"
        );
        let e = put(&[("net0", "name=eth0,ip=10.0.0.300/24")]).unwrap_err();
        assert!(e["net0"].contains("ipv4 network configuration"), "{e:?}");
        assert!(put(&[("net0", "name=eth0,bridge=vmbr0,ip=10.0.0.3/24,gw=10.0.0.1")]).is_ok());
        let e = put(&[("hostname", "bad name!")]).unwrap_err();
        assert_eq!(
            e["hostname"],
            "invalid format - value does not look like a valid DNS name\n"
        );
        assert!(put(&[("hostname", "web-1.example")]).is_ok());
        assert!(put(&[("mp0", "local-lvm:16,mp=/srv/data")]).is_ok());
        let e = put(&[("mp0", "local-lvm:16")]).unwrap_err();
        assert!(e["mp0"].contains("mp0.mp: property is missing"), "{e:?}");
        let e = put(&[("features", "nesting=1,bogus=1")]).unwrap_err();
        assert!(e["features"].contains("invalid key"), "{e:?}");
        let e = put(&[("delete", "1x")]).unwrap_err();
        assert_eq!(
            e["delete"],
            "invalid format - invalid configuration ID '1x'\n"
        );
        let e = put(&[("cmode", "default")]).unwrap_err();
        assert_eq!(
            e["cmode"],
            "value 'default' does not have a value in the enumeration 'shell, console, tty'"
        );
        let e = put(&[("tags", "a b!")]).unwrap_err();
        assert!(e["tags"].contains("invalid characters in tag"));
    }

    #[test]
    fn configids_allow_hyphens() {
        assert!(is_configid("pre-upgrade"));
        assert!(is_configid("before_upgrade2"));
        assert!(!is_configid("1x"));
        assert!(!is_configid("a"));
        assert!(!is_configid("a.b"));
    }

    #[test]
    fn repeated_keys_join_for_lists_and_fail_otherwise() {
        let ok = put(&[("tags", "web"), ("tags", "prod")]).unwrap();
        assert_eq!(ok["tags"], "web,prod");
        let e = put(&[("hostname", "a1"), ("hostname", "b2")]).unwrap_err();
        assert_eq!(e["hostname"], "type check ('string') failed - got ARRAY");
    }
}
