//! A guest's `verify` table: how a risky change to it proves itself (`safety-nets.md` §6.2).
//!
//! ```toml
//! [[guest]]
//! vmid = 101
//! net0 = "name=eth0,bridge=vmbr0,ip=10.0.10.5/24,gw=10.0.10.1"
//! [guest.verify]
//! tcp = ["10.0.10.5:22"]   # TCP connects from the host
//! status = true            # the CT must be running (default)
//! interfaces = true        # the static addresses of net[n] must be inside the CT
//! settle_s = 60            # time the guest gets before it is judged
//! revert_after_s = 90      # the revert deadline, measured from the change
//! successes = 3            # consecutive passes needed
//! timeout_s = 3            # per probe
//! ```
//!
//! Verification is opt-in per guest: a guest without the table converges as before. A change
//! a guest can be cut off by (its network, mount points, a memory decrease, keys applied at
//! reboot) is then pushed inside a verify window and reverted unless the probes pass.
//! Addresses are IP literals: resolving a name could block the agent and answer differently
//! later.

use std::net::SocketAddr;

/// The parsed `verify` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySpec {
    pub tcp: Vec<SocketAddr>,
    pub status: bool,
    pub interfaces: bool,
    pub settle_s: u64,
    pub revert_after_s: u64,
    pub successes: u32,
    pub timeout_s: u64,
}

/// `safety-nets.md` §4.4: seed B's timings carry over as defaults.
pub const DEFAULT_SETTLE_S: u64 = 60;
pub const DEFAULT_REVERT_AFTER_S: u64 = 90;
pub const DEFAULT_SUCCESSES: u32 = 3;
pub const DEFAULT_TIMEOUT_S: u64 = 3;
const MAX_TCP_PROBES: usize = 16;

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            tcp: Vec::new(),
            status: true,
            interfaces: false,
            settle_s: DEFAULT_SETTLE_S,
            revert_after_s: DEFAULT_REVERT_AFTER_S,
            successes: DEFAULT_SUCCESSES,
            timeout_s: DEFAULT_TIMEOUT_S,
        }
    }
}

/// Parses the `verify` value of a guest entry; errors are `(field, message)`.
pub fn parse(v: &toml::Value) -> Result<VerifySpec, (String, String)> {
    let field = |k: &str| format!("verify.{k}");
    let t = v.as_table().ok_or_else(|| {
        (
            "verify".to_string(),
            "must be a table ([guest.verify] or verify = { ... })".to_string(),
        )
    })?;
    let mut spec = VerifySpec::default();
    for (k, val) in t {
        let int = |min: i64, max: i64| -> Result<i64, (String, String)> {
            val.as_integer()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| (field(k), format!("must be an integer in {min}..={max}")))
        };
        let boolean = || -> Result<bool, (String, String)> {
            val.as_bool()
                .ok_or_else(|| (field(k), "must be true or false".to_string()))
        };
        match k.as_str() {
            "tcp" => {
                let arr = val.as_array().ok_or_else(|| {
                    (
                        field(k),
                        "must be an array of \"IP:PORT\" strings".to_string(),
                    )
                })?;
                if arr.len() > MAX_TCP_PROBES {
                    return Err((field(k), format!("at most {MAX_TCP_PROBES} probes")));
                }
                for a in arr {
                    let s = a.as_str().ok_or_else(|| {
                        (
                            field(k),
                            "must be an array of \"IP:PORT\" strings".to_string(),
                        )
                    })?;
                    let addr: SocketAddr = s.parse().map_err(|_| {
                        (
                            field(k),
                            format!("{s:?} is not IP:PORT (an IP literal; names are not resolved)"),
                        )
                    })?;
                    if addr.port() == 0 {
                        return Err((field(k), format!("{s:?}: port 0 cannot be probed")));
                    }
                    spec.tcp.push(addr);
                }
            }
            "status" => spec.status = boolean()?,
            "interfaces" => spec.interfaces = boolean()?,
            "settle_s" => spec.settle_s = int(0, 3600)? as u64,
            "revert_after_s" => spec.revert_after_s = int(1, 7200)? as u64,
            "successes" => spec.successes = int(1, 100)? as u32,
            "timeout_s" => spec.timeout_s = int(1, 60)? as u64,
            other => return Err((field(other), "unknown field".to_string())),
        }
    }
    if spec.revert_after_s <= spec.settle_s {
        return Err((
            field("revert_after_s"),
            format!(
                "must be longer than settle_s ({}): the deadline is measured from the change, and a change is judged only after it settled",
                spec.settle_s
            ),
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Result<VerifySpec, (String, String)> {
        let t: toml::Table = toml::from_str(s).unwrap();
        parse(&toml::Value::Table(t))
    }

    #[test]
    fn defaults_and_values() {
        let d = p("").unwrap();
        assert_eq!(d, VerifySpec::default());
        let s = p("tcp = [\"10.0.0.5:22\", \"[::1]:443\"]\nsettle_s = 1\nrevert_after_s = 5\nsuccesses = 1\ninterfaces = true").unwrap();
        assert_eq!(s.tcp.len(), 2);
        assert_eq!((s.settle_s, s.revert_after_s, s.successes), (1, 5, 1));
        assert!(s.interfaces && s.status);
    }

    #[test]
    fn the_example_document_verifies_its_web_guest() {
        let doc = include_str!("../../../deploy/desired.example/desired.toml");
        let d = crate::desired::parse(doc.as_bytes(), "desired.example").unwrap();
        let v = d.guests[&102].verify.as_ref().unwrap();
        assert_eq!(v.tcp, vec!["10.0.10.12:443".parse::<SocketAddr>().unwrap()]);
        assert!(v.interfaces);
        assert!(d.guests[&101].verify.is_none());
    }

    #[test]
    fn refusals_name_the_field() {
        for (doc, field) in [
            ("tcp = [\"web:22\"]", "verify.tcp"),
            ("tcp = [\"10.0.0.1\"]", "verify.tcp"),
            ("tcp = [\"10.0.0.1:0\"]", "verify.tcp"),
            ("tcp = \"10.0.0.1:22\"", "verify.tcp"),
            ("settle_s = -1", "verify.settle_s"),
            (
                "settle_s = 10\nrevert_after_s = 10",
                "verify.revert_after_s",
            ),
            ("successes = 0", "verify.successes"),
            ("probe = 1", "verify.probe"),
            ("status = \"yes\"", "verify.status"),
        ] {
            assert_eq!(p(doc).unwrap_err().0, field, "{doc}");
        }
        assert_eq!(parse(&toml::Value::Integer(1)).unwrap_err().0, "verify");
    }
}
