//! PVE task identifiers (UPIDs), parsed and printed exactly as `pve-common PVE::UPID` does.
//!
//! Format: `UPID:<node>:<pid %08X>:<pstart %08X>:<starttime %08X>:<type>:<id>:<user>:`.
//! `pstart` may have 9 hex digits (after ~497 days of uptime), `id` may be empty and `user` may
//! be a token (`user@realm!token`). PBS UPIDs (with an extra task-id field) are *not* accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed PVE UPID. `Display` re-encodes it the way pve-common does (uppercase hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upid {
    /// Node that runs the task; task status and log must be queried on this node.
    pub node: String,
    pub pid: u32,
    /// Process start time in clock ticks (8 or 9 hex digits).
    pub pstart: u64,
    /// Task start, seconds since the epoch.
    pub starttime: u32,
    /// Worker type, e.g. `vzstart`, `vzcreate`.
    pub worker_type: String,
    /// Worker id, usually the vmid; may be empty.
    pub id: String,
    /// `user@realm` or `user@realm!tokenid`.
    pub user: String,
}

/// Why a string is not a UPID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid upid {input:?}: {reason}")]
pub struct UpidParseError {
    /// The offending input, truncated to 200 characters.
    pub input: String,
    pub reason: &'static str,
}

impl Upid {
    /// The vmid this task works on, when its id is one (e.g. `vzstart:101`).
    pub fn vmid(&self) -> Option<u32> {
        if self.id.is_empty() || !self.id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.id.parse().ok()
    }
}

fn fail(input: &str, reason: &'static str) -> UpidParseError {
    UpidParseError {
        input: input.chars().take(200).collect(),
        reason,
    }
}

/// `[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?`
fn valid_node(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// `[^:\s/]` for every character (Perl `\s` covers ASCII and Unicode whitespace).
fn valid_field_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c != ':' && c != '/' && !c.is_whitespace())
}

fn parse_hex(s: &str, min: usize, max: usize) -> Option<u64> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

impl FromStr for Upid {
    type Err = UpidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("UPID:")
            .ok_or_else(|| fail(s, "does not start with 'UPID:'"))?;
        let rest = rest
            .strip_suffix(':')
            .ok_or_else(|| fail(s, "does not end with ':'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, worker_type, id, user] = parts.as_slice() else {
            return Err(fail(
                s,
                "expected 7 fields between 'UPID:' and the final ':'",
            ));
        };
        if !valid_node(node) {
            return Err(fail(s, "invalid node name"));
        }
        let pid = parse_hex(pid, 8, 8).ok_or_else(|| fail(s, "pid is not 8 hex digits"))?;
        let pstart =
            parse_hex(pstart, 8, 9).ok_or_else(|| fail(s, "pstart is not 8 or 9 hex digits"))?;
        let starttime =
            parse_hex(starttime, 8, 8).ok_or_else(|| fail(s, "starttime is not 8 hex digits"))?;
        if worker_type.is_empty() || !valid_field_chars(worker_type) {
            return Err(fail(s, "invalid worker type"));
        }
        if !valid_field_chars(id) {
            return Err(fail(s, "invalid worker id"));
        }
        if user.is_empty() || !valid_field_chars(user) {
            return Err(fail(s, "invalid user"));
        }
        Ok(Upid {
            node: (*node).to_owned(),
            // 8 hex digits always fit in u32.
            pid: u32::try_from(pid).map_err(|_| fail(s, "pid out of range"))?,
            pstart,
            starttime: u32::try_from(starttime).map_err(|_| fail(s, "starttime out of range"))?,
            worker_type: (*worker_type).to_owned(),
            id: (*id).to_owned(),
            user: (*user).to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.worker_type, self.id, self.user
        )
    }
}

impl Serialize for Upid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Upid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_user_and_vmid() {
        let u: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:reconcile@pve!agent:"
            .parse()
            .unwrap();
        assert_eq!(u.user, "reconcile@pve!agent");
        assert_eq!(u.vmid(), Some(101));
        assert_eq!(u.pid, 0x0003A2B1);
    }

    #[test]
    fn rejects_pbs_format_and_bad_fields() {
        for bad in [
            "UPID:pve1:0003A2B1:01C8E2F0:00000001:6734A1B2:vzstart:101:root@pam:",
            "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:root@pam",
            "UPID:-pve:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:root@pam:",
            "UPID:pve1:3A2B1:01C8E2F0:6734A1B2:vzstart:101:root@pam:",
            "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2::101:root@pam:",
            "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101::",
            "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vz/start:101:root@pam:",
            "UPID:pve1:0003A2B1:0001C8E2F0:6734A1B2:vzstart:101:root@pam:",
            "",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lowercase_hex_is_accepted_and_printed_uppercase() {
        let u: Upid = "UPID:n:0003a2b1:01c8e2f0:6734a1b2:vzstart:101:root@pam:"
            .parse()
            .unwrap();
        assert_eq!(
            u.to_string(),
            "UPID:n:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:root@pam:"
        );
    }
}
