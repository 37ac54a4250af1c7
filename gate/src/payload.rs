//! The approval payload `drover-approval v1`: a fixed, line-based ASCII text an operator reads
//! before signing (signing-gate.md §4, §5.2).
//!
//! One spelling per meaning: the parser is strict and then re-renders the parsed value, so a
//! payload is accepted only if it is byte-for-byte what the renderer would produce. Rendering
//! validates every field with the same grammar, so the agent can never emit a request it would
//! refuse to read back.

use std::collections::BTreeMap;

use crate::action::{GateContext, Op, PlannedAction, Role};
use crate::clock::{format_utc, parse_utc};
use crate::rejection::{Rejection, RejectionCode};

/// First line of every v1 payload.
pub const PAYLOAD_MAGIC: &str = "drover-approval v1";
/// Largest payload accepted (bytes).
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Most `param.*` lines in a payload.
pub const MAX_PARAMS: usize = 32;
/// Most `bind.*` lines in a payload.
pub const MAX_BINDS: usize = 16;

/// A parsed (or to-be-rendered) approval payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPayload {
    pub fleet: String,
    pub host: String,
    pub state_epoch: String,
    pub op: Op,
    pub vmid: u32,
    pub guest_config_sha1: Option<String>,
    pub params: BTreeMap<String, String>,
    /// Facts the agent re-reads before acting that are not API parameters (`bind.<name>`
    /// lines, e.g. `bind.uncovered: mp1,unused0`: the volumes a safety copy cannot cover).
    /// Same grammar as `param.*`; sorted; bound like the params.
    pub bind: BTreeMap<String, String>,
    /// The authority the operator claims; never trusted, only compared with the keys' roles.
    pub role: Role,
    pub nonce: String,
    pub not_before: i64,
    pub expires_at: i64,
    /// Audit only, never bound.
    pub ticket: Option<String>,
}

/// The envelope every signed text shares (`drover-approval v1`, `drover-job v1`): the size cap
/// before anything else, printable ASCII and LF only, exactly one final newline, the version
/// line (`family` names another version of the same format: `unsupported_version`), then
/// `key: value` lines in order. `what` names the text in messages ("payload", "job").
pub(crate) fn signed_text_fields<'a>(
    bytes: &'a [u8],
    magic: &str,
    family: &str,
    what: &str,
) -> Result<Vec<(&'a str, &'a str)>, Rejection> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::new(
            RejectionCode::PayloadTooLarge,
            format!(
                "the {what} is {} bytes; at most {MAX_PAYLOAD_BYTES} are allowed",
                bytes.len()
            ),
        ));
    }
    if let Some(pos) = bytes
        .iter()
        .position(|&c| c != b'\n' && !(0x20..=0x7e).contains(&c))
    {
        return Err(malformed(format!(
            "byte {pos} is not printable ASCII (no CR, TAB or non-ASCII characters are allowed)"
        )));
    }
    // Only ASCII from here on.
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not ASCII"))?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(malformed(format!(
            "the {what} must end with exactly one newline"
        )));
    };
    let mut lines = body.split('\n');
    let first = lines.next().unwrap_or_default();
    if first != magic {
        if first.starts_with(family) {
            return Err(Rejection::new(
                RejectionCode::UnsupportedVersion,
                format!("{what} version line {first:?} is not {magic:?}"),
            ));
        }
        return Err(malformed(format!("the first line must be {magic:?}")));
    }
    lines
        .map(|l| {
            l.split_once(": ")
                .ok_or_else(|| malformed(format!("line {l:?} is not `key: value`")))
        })
        .collect()
}

pub(crate) fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(RejectionCode::MalformedPayload, msg)
}

pub(crate) fn all(s: &str, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(ok)
}

fn is_name(s: &str) -> bool {
    all(s, 63, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    })
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn is_param_name(s: &str) -> bool {
    all(s, 40, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    })
}

/// `[A-Za-z0-9._:/,=@+-]{0,256}`.
pub fn is_param_value(s: &str) -> bool {
    s.len() <= 256
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:/,=@+-".contains(&c))
}

fn is_ticket(s: &str) -> bool {
    all(s, 64, |c| c.is_ascii_alphanumeric() || b"._/-".contains(&c))
}

fn is_op_name(s: &str) -> bool {
    all(s, 40, |c| c.is_ascii_lowercase() || c == b'_')
}

fn vmid_ok(v: u32) -> bool {
    (100..=999_999_999).contains(&v)
}

fn parse_role(s: &str) -> Option<Role> {
    match s {
        "operational" => Some(Role::Operational),
        "recovery" => Some(Role::Recovery),
        _ => None,
    }
}

impl ApprovalPayload {
    /// Checks every field against its grammar; the error names the first bad field.
    pub fn validate(&self) -> Result<(), Rejection> {
        if !is_name(&self.fleet) {
            return Err(malformed("fleet must be 1-63 characters of a-z, 0-9 and -"));
        }
        if !is_name(&self.host) {
            return Err(malformed("host must be 1-63 characters of a-z, 0-9 and -"));
        }
        if !is_lower_hex(&self.state_epoch, 16) {
            return Err(malformed("state-epoch must be 16 lowercase hex digits"));
        }
        if let Op::Unknown(name) = &self.op {
            return Err(Rejection::new(
                RejectionCode::UnknownOp,
                format!("op {name:?} is not an operation the gate knows"),
            ));
        }
        if !vmid_ok(self.vmid) {
            return Err(malformed(
                "guest must be lxc/<vmid> with vmid 100-999999999",
            ));
        }
        if let Some(d) = &self.guest_config_sha1
            && !is_lower_hex(d, 40)
        {
            return Err(malformed(
                "guest-config-sha1 must be 40 lowercase hex digits",
            ));
        }
        if self.params.len() > MAX_PARAMS {
            return Err(malformed(format!("more than {MAX_PARAMS} params")));
        }
        for (k, v) in &self.params {
            if !is_param_name(k) {
                return Err(malformed(format!(
                    "param name {k:?} must be 1-40 characters of a-z, 0-9 and -"
                )));
            }
            if !is_param_value(v) {
                return Err(malformed(format!(
                    "param.{k} has a value outside [A-Za-z0-9._:/,=@+-] or longer than 256"
                )));
            }
        }
        if self.bind.len() > MAX_BINDS {
            return Err(malformed(format!("more than {MAX_BINDS} bind lines")));
        }
        for (k, v) in &self.bind {
            if !is_param_name(k) {
                return Err(malformed(format!(
                    "bind name {k:?} must be 1-40 characters of a-z, 0-9 and -"
                )));
            }
            if v.is_empty() || !is_param_value(v) {
                return Err(malformed(format!(
                    "bind.{k} must be 1-256 characters of [A-Za-z0-9._:/,=@+-]"
                )));
            }
        }
        if self.role == Role::Hub {
            return Err(malformed("role must be operational or recovery"));
        }
        if !is_lower_hex(&self.nonce, 32) {
            return Err(malformed("nonce must be 32 lowercase hex digits"));
        }
        if parse_utc(&format_utc(self.not_before)) != Some(self.not_before)
            || parse_utc(&format_utc(self.expires_at)) != Some(self.expires_at)
        {
            return Err(malformed("not-before and expires-at must lie in 1970-9999"));
        }
        if self.expires_at <= self.not_before {
            return Err(malformed("expires-at must be later than not-before"));
        }
        if let Some(t) = &self.ticket
            && !is_ticket(t)
        {
            return Err(malformed(
                "ticket must be 1-64 characters of A-Z, a-z, 0-9, . _ / -",
            ));
        }
        Ok(())
    }

    /// The canonical bytes (what the operator signs).
    pub fn render(&self) -> Result<String, Rejection> {
        self.validate()?;
        let mut s = String::with_capacity(512);
        let mut line = |k: &str, v: &str| {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        };
        line("fleet", &self.fleet);
        line("host", &self.host);
        line("state-epoch", &self.state_epoch);
        line("op", self.op.as_str());
        line("guest", &format!("lxc/{}", self.vmid));
        if let Some(d) = &self.guest_config_sha1 {
            line("guest-config-sha1", d);
        }
        for (k, v) in &self.params {
            line(&format!("param.{k}"), v);
        }
        for (k, v) in &self.bind {
            line(&format!("bind.{k}"), v);
        }
        line("role", self.role.as_str());
        line("nonce", &self.nonce);
        line("not-before", &format_utc(self.not_before));
        line("expires-at", &format_utc(self.expires_at));
        if let Some(t) = &self.ticket {
            line("ticket", t);
        }
        let out = format!("{PAYLOAD_MAGIC}\n{s}");
        if out.len() > MAX_PAYLOAD_BYTES {
            return Err(Rejection::new(
                RejectionCode::PayloadTooLarge,
                format!(
                    "the payload would be {} bytes; at most {MAX_PAYLOAD_BYTES} are allowed",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// Strict parse followed by the canonical round trip.
    pub fn parse(bytes: &[u8]) -> Result<ApprovalPayload, Rejection> {
        let fields = signed_text_fields(bytes, PAYLOAD_MAGIC, "drover-approval ", "payload")?;
        let mut it = fields.into_iter().peekable();
        let mut take = |key: &str| -> Result<&str, Rejection> {
            match it.next() {
                Some((k, v)) if k == key => Ok(v),
                Some((k, _)) => Err(malformed(format!("expected field {key:?}, found {k:?}"))),
                None => Err(malformed(format!("field {key:?} is missing"))),
            }
        };
        let fleet = take("fleet")?.to_string();
        let host = take("host")?.to_string();
        let state_epoch = take("state-epoch")?.to_string();
        let op_name = take("op")?;
        if !is_op_name(op_name) {
            return Err(malformed("op must be 1-40 characters of a-z and _"));
        }
        let op = Op::from_name(op_name);
        let guest = take("guest")?;
        let vmid = guest
            .strip_prefix("lxc/")
            .filter(|v| v.len() >= 3 && v.len() <= 9 && !v.starts_with('0'))
            .filter(|v| v.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| malformed("guest must be lxc/<vmid> with vmid 100-999999999"))?;
        let mut guest_config_sha1 = None;
        if let Some(("guest-config-sha1", v)) = it.peek() {
            guest_config_sha1 = Some(v.to_string());
            it.next();
        }
        let mut params = BTreeMap::new();
        while let Some((k, v)) = it.peek() {
            let Some(name) = k.strip_prefix("param.") else {
                break;
            };
            if params.insert(name.to_string(), v.to_string()).is_some() {
                return Err(malformed(format!("param.{name} appears twice")));
            }
            it.next();
        }
        let mut bind = BTreeMap::new();
        while let Some((k, v)) = it.peek() {
            let Some(name) = k.strip_prefix("bind.") else {
                break;
            };
            if bind.insert(name.to_string(), v.to_string()).is_some() {
                return Err(malformed(format!("bind.{name} appears twice")));
            }
            it.next();
        }
        let mut take = |key: &str| -> Result<&str, Rejection> {
            match it.next() {
                Some((k, v)) if k == key => Ok(v),
                Some((k, _)) => Err(malformed(format!("expected field {key:?}, found {k:?}"))),
                None => Err(malformed(format!("field {key:?} is missing"))),
            }
        };
        let role = parse_role(take("role")?)
            .ok_or_else(|| malformed("role must be operational or recovery"))?;
        let nonce = take("nonce")?.to_string();
        let not_before = parse_utc(take("not-before")?)
            .ok_or_else(|| malformed("not-before must be YYYY-MM-DDTHH:MM:SSZ"))?;
        let expires_at = parse_utc(take("expires-at")?)
            .ok_or_else(|| malformed("expires-at must be YYYY-MM-DDTHH:MM:SSZ"))?;
        let ticket = match it.next() {
            None => None,
            Some(("ticket", v)) => Some(v.to_string()),
            Some((k, _)) => return Err(malformed(format!("unexpected field {k:?}"))),
        };
        if let Some((k, _)) = it.next() {
            return Err(malformed(format!(
                "unexpected field {k:?} after the last field"
            )));
        }
        let p = ApprovalPayload {
            fleet,
            host,
            state_epoch,
            op,
            vmid,
            guest_config_sha1,
            params,
            bind,
            role,
            nonce,
            not_before,
            expires_at,
            ticket,
        };
        let canonical = p.render()?;
        if canonical.as_bytes() != bytes {
            return Err(malformed(
                "the payload is not in canonical form (field order, param order or spacing)",
            ));
        }
        Ok(p)
    }
}

/// Renders the approval request for `action` (the bytes an operator signs with
/// `ssh-keygen -Y sign -n destructive-op-v1@<domain>`).
pub fn render_request(
    ctx: &GateContext,
    action: &PlannedAction,
    nonce: &str,
    not_before: i64,
    expires_at: i64,
    role: Role,
    ticket: Option<&str>,
) -> Result<String, Rejection> {
    ApprovalPayload {
        fleet: ctx.fleet.clone(),
        host: ctx.host.clone(),
        state_epoch: ctx.epoch.clone(),
        op: action.op.clone(),
        vmid: action.vmid,
        guest_config_sha1: action.guest_config_sha1.clone(),
        params: action.params.clone(),
        bind: action.bind.clone(),
        role,
        nonce: nonce.to_string(),
        not_before,
        expires_at,
        ticket: ticket.map(str::to_string),
    }
    .render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> ApprovalPayload {
        ApprovalPayload {
            fleet: "test-fleet-1".into(),
            host: "pve-test-01".into(),
            state_epoch: "5b0c2f9e7d4a4c1e".into(),
            op: Op::DestroyGuest,
            vmid: 9101,
            guest_config_sha1: Some("6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c".into()),
            params: [("force", "1"), ("purge", "1")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            bind: BTreeMap::new(),
            role: Role::Operational,
            nonce: "7f3c9a1e5b2d4f6081a2c3d4e5f60718".into(),
            not_before: parse_utc("2026-11-22T21:00:00Z").unwrap(),
            expires_at: parse_utc("2026-11-22T22:00:00Z").unwrap(),
            ticket: Some("CHG-4711".into()),
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let s = p.render().unwrap();
        assert!(s.starts_with("drover-approval v1\nfleet: test-fleet-1\n"));
        assert_eq!(ApprovalPayload::parse(s.as_bytes()).unwrap(), p);
        let mut q = p.clone();
        q.ticket = None;
        q.guest_config_sha1 = None;
        q.params.clear();
        let s = q.render().unwrap();
        assert_eq!(ApprovalPayload::parse(s.as_bytes()).unwrap(), q);
    }

    fn code(bytes: &[u8]) -> RejectionCode {
        ApprovalPayload::parse(bytes).unwrap_err().code
    }

    #[test]
    fn m38_non_canonical_payloads_are_malformed() {
        let s = sample().render().unwrap();
        let swapped = s.replace(
            "param.force: 1\nparam.purge: 1\n",
            "param.purge: 1\nparam.force: 1\n",
        );
        let dup = s.replace("param.force: 1\n", "param.force: 1\nparam.force: 1\n");
        let unknown = s.replace("role: ", "colour: red\nrole: ");
        let trailing = s.replace("host: pve-test-01\n", "host: pve-test-01 \n");
        let cr = s.replace('\n', "\r\n");
        let tab = s.replace("host: ", "host:\t");
        let cyrillic = s.replace("pve-test-01", "pve-t\u{0430}st-01");
        let blank = s.replace("role:", "\nrole:");
        let no_final_lf = s.trim_end().to_string();
        let two_lf = format!("{s}\n");
        let missing = s.replace("state-epoch: 5b0c2f9e7d4a4c1e\n", "");
        let upper_hex = s.replace("7f3c9a1e", "7F3C9A1E");
        let times = s.replace(
            "expires-at: 2026-11-22T22:00:00Z",
            "expires-at: 2026-11-22T20:00:00Z",
        );
        for bad in [
            swapped,
            dup,
            unknown,
            trailing,
            cr,
            tab,
            cyrillic,
            blank,
            no_final_lf,
            two_lf,
            missing,
            upper_hex,
            times,
        ] {
            assert_eq!(
                code(bad.as_bytes()),
                RejectionCode::MalformedPayload,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bind_lines_follow_the_params_sorted_and_strict() {
        let mut p = sample();
        p.bind.insert("uncovered".into(), "mp1,unused0".into());
        p.bind.insert("safety".into(), "vzdump@safety".into());
        let s = p.render().unwrap();
        assert!(
            s.contains(
                "param.purge: 1\nbind.safety: vzdump@safety\nbind.uncovered: mp1,unused0\nrole: "
            ),
            "{s}"
        );
        assert_eq!(ApprovalPayload::parse(s.as_bytes()).unwrap(), p);
        let swapped = s.replace(
            "bind.safety: vzdump@safety\nbind.uncovered: mp1,unused0\n",
            "bind.uncovered: mp1,unused0\nbind.safety: vzdump@safety\n",
        );
        let before_params = s.replace("bind.safety: vzdump@safety\n", "").replace(
            "param.force: 1\n",
            "bind.safety: vzdump@safety\nparam.force: 1\n",
        );
        let dup = s.replace(
            "bind.safety: vzdump@safety\n",
            "bind.safety: vzdump@safety\nbind.safety: vzdump@safety\n",
        );
        let empty = s.replace("bind.safety: vzdump@safety", "bind.safety: ");
        let upper = s.replace("bind.safety:", "bind.Safety:");
        for bad in [swapped, before_params, dup, empty, upper] {
            assert_eq!(
                code(bad.as_bytes()),
                RejectionCode::MalformedPayload,
                "{bad:?}"
            );
        }
        let mut q = sample();
        q.bind.insert("uncovered".into(), "has space".into());
        assert_eq!(
            q.render().unwrap_err().code,
            RejectionCode::MalformedPayload
        );
    }

    #[test]
    fn version_and_op_codes() {
        let s = sample().render().unwrap();
        assert_eq!(
            code(s.replace(" v1\n", " v2\n").as_bytes()),
            RejectionCode::UnsupportedVersion
        );
        assert_eq!(
            code(
                s.replace("drover-approval", "pve-agent-approval")
                    .as_bytes()
            ),
            RejectionCode::MalformedPayload
        );
        assert_eq!(
            code(s.replace("destroy_guest", "format_disk").as_bytes()),
            RejectionCode::UnknownOp
        );
        let big = format!("{s}{}", "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(code(big.as_bytes()), RejectionCode::PayloadTooLarge);
    }

    #[test]
    fn render_refuses_what_parse_would_refuse() {
        let mut p = sample();
        p.params.insert("description".into(), "has spaces".into());
        assert_eq!(
            p.render().unwrap_err().code,
            RejectionCode::MalformedPayload
        );
        let mut p = sample();
        p.op = Op::Unknown("mystery".into());
        assert_eq!(p.render().unwrap_err().code, RejectionCode::UnknownOp);
    }
}
