//! Parameter validation against Proxmox's own schema (`testdata/pve-lxc-api-schema.json`, the
//! unmodified `info` objects of `apidata.js`), so a request PVE would refuse is refused here
//! too, with PVE's 400 and its `errors` map.

use std::collections::BTreeMap;
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

/// Validates `params` for `method` on the schema path `template` (e.g.
/// `/nodes/{node}/lxc/{vmid}/config`). Returns PVE's per-parameter errors.
pub fn validate(
    method: &str,
    template: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), BTreeMap<String, String>> {
    let Some(info) = endpoints()
        .get(template)
        .or_else(|| backup_endpoints().get(template))
        .and_then(|m| m.get(method))
    else {
        return Ok(());
    };
    let empty = serde_json::Map::new();
    let props = info
        .get("parameters")
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut errors = BTreeMap::new();
    for (k, v) in params {
        let Some(p) = property(props, k) else {
            errors.insert(
                k.clone(),
                "property is not defined in schema and the schema does not allow additional properties".into(),
            );
            continue;
        };
        if let Err(e) = check_value(p, v) {
            errors.insert(k.clone(), e);
        }
    }
    for (k, p) in props {
        let optional = p.get("optional").and_then(Value::as_i64).unwrap_or(0) == 1;
        if !optional && !k.contains("[n]") && !params.contains_key(k) {
            errors.insert(
                k.clone(),
                "property is missing and it is not optional".into(),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_value(p: &Value, v: &str) -> Result<(), String> {
    let ty = p.get("type").and_then(Value::as_str).unwrap_or("string");
    match ty {
        "integer" => {
            let n: i64 = v
                .parse()
                .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?;
            if let Some(min) = p.get("minimum").and_then(Value::as_f64)
                && (n as f64) < min
            {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if let Some(max) = p.get("maximum").and_then(Value::as_f64)
                && (n as f64) > max
            {
                return Err(format!("value must have a maximum value of {max}"));
            }
        }
        "number" => {
            let n: f64 = v
                .parse()
                .map_err(|_| format!("type check ('number') failed - got '{v}'"))?;
            if let Some(min) = p.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                return Err(format!("value must have a minimum value of {min}"));
            }
        }
        "boolean" => {
            if !matches!(
                v,
                "0" | "1" | "true" | "false" | "yes" | "no" | "on" | "off"
            ) {
                return Err(format!("type check ('boolean') failed - got '{v}'"));
            }
        }
        _ => {
            if let Some(e) = p.get("enum").and_then(Value::as_array)
                && !e.iter().any(|x| x.as_str() == Some(v))
            {
                return Err(format!(
                    "value '{v}' does not have a value in the enumeration"
                ));
            }
            if let Some(max) = p.get("maxLength").and_then(Value::as_u64)
                && v.len() as u64 > max
            {
                return Err(format!("value may only be {max} characters long"));
            }
            // PVE's `pve-configid` format (PVE/JSONSchema.pm `$CONFIGID_RE`), used by snapname.
            if p.get("format").and_then(Value::as_str) == Some("pve-configid") {
                let mut chars = v.chars();
                let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && v.len() >= 2
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(format!("invalid configuration ID '{v}'"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refuses_unknown_and_ill_typed_parameters() {
        let t = "/nodes/{node}/lxc/{vmid}/config";
        assert!(
            validate(
                "PUT",
                t,
                &m(&[("node", "pve1"), ("vmid", "101"), ("memory", "512")])
            )
            .is_ok()
        );
        let e = validate(
            "PUT",
            t,
            &m(&[("node", "pve1"), ("vmid", "101"), ("start", "1")]),
        )
        .unwrap_err();
        assert!(e["start"].contains("not defined in schema"));
        let e = validate(
            "PUT",
            t,
            &m(&[("node", "pve1"), ("vmid", "101"), ("memory", "lots")]),
        )
        .unwrap_err();
        assert!(e["memory"].contains("integer"));
        let e = validate(
            "PUT",
            t,
            &m(&[("node", "pve1"), ("vmid", "101"), ("memory", "1")]),
        )
        .unwrap_err();
        assert!(e["memory"].contains("minimum"));
        let e = validate(
            "PUT",
            t,
            &m(&[("node", "pve1"), ("vmid", "101"), ("onboot", "true!")]),
        )
        .unwrap_err();
        assert!(e["onboot"].contains("boolean"));
        assert!(
            validate(
                "PUT",
                t,
                &m(&[("node", "pve1"), ("vmid", "101"), ("net0", "name=eth0")])
            )
            .is_ok()
        );
    }
}
