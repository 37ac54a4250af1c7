//! Signed jobs, `drover-job v1`: one-off operations an operator asks for (snapshot, rollback,
//! backup, restore, reboot) that no desired document can express.
//!
//! A job request is rendered by the agent from the host's *current* state, so its text binds
//! what the operator saw (config digest, the backup's ctime and size, the snapshot's time);
//! the operator signs it with `ssh-keygen -Y sign -n destructive-op-v1@<domain>` like an
//! approval (the magic first line keeps the two apart inside the signed bytes). The grammar is
//! the approval's (signing-gate.md §4): fixed field order, one spelling per meaning, strict
//! parse followed by a canonical re-render that must give the same bytes. Two line families:
//! `param.*` are exactly the API parameters the agent will send, `bind.*` are facts it
//! re-reads before acting and choices that are not API parameters (`hold`).
//!
//! Verification ([`verify_job`]) runs in the approval's order and through the same code for
//! scope, signatures, threshold, time and the nonce (`verify.rs`): the agent renders the job it
//! would run *now* ([`PlannedJob`]) and the signed text must be exactly that.

use std::collections::BTreeMap;
use std::fmt;

use crate::action::{GateContext, Role};
use crate::clock::{format_utc, parse_utc};
use crate::payload::{
    MAX_PARAMS, MAX_PAYLOAD_BYTES, all, is_param_value, malformed, signed_text_fields,
};
use crate::rejection::{Rejection, RejectionCode, SignatureProblem};
use crate::signature::SignerInfo;
use crate::trust::TrustStore;
use crate::verify::{
    NonceLedger, Policy, Signed, authenticate, authenticate_and_consume, compare_lines, scope,
    size_limits, stale, trust_usable,
};

/// First line of every v1 job.
pub const JOB_MAGIC: &str = "drover-job v1";
/// Most `bind.*` lines in a job.
pub const MAX_BINDS: usize = 16;

/// What a job does. Closed set: anything else is `unknown_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Snapshot,
    DeleteSnapshot,
    RollbackSnapshot,
    Backup,
    RestoreBackup,
    Reboot,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Snapshot,
        JobKind::DeleteSnapshot,
        JobKind::RollbackSnapshot,
        JobKind::Backup,
        JobKind::RestoreBackup,
        JobKind::Reboot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Snapshot => "snapshot",
            JobKind::DeleteSnapshot => "delete_snapshot",
            JobKind::RollbackSnapshot => "rollback_snapshot",
            JobKind::Backup => "backup",
            JobKind::RestoreBackup => "restore_backup",
            JobKind::Reboot => "reboot",
        }
    }

    pub fn from_name(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the job destroys or rewinds data of an existing guest, so it needs the trust
    /// document's `threshold.destructive-op` distinct principals (every other job needs one).
    /// A restore onto a free vmid (`guest-config-sha1: none`) destroys nothing.
    pub fn is_destructive(self, guest_exists: bool) -> bool {
        match self {
            JobKind::DeleteSnapshot | JobKind::RollbackSnapshot => true,
            JobKind::RestoreBackup => guest_exists,
            JobKind::Snapshot | JobKind::Backup | JobKind::Reboot => false,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job the agent would run now: kind, guest, the current config digest (None: the vmid is
/// free), the exact API parameters and the bound facts. Built by the agent from its own reads,
/// never from a received job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub kind: JobKind,
    pub vmid: u32,
    pub guest_config_sha1: Option<String>,
    pub params: BTreeMap<String, String>,
    pub binds: BTreeMap<String, String>,
}

/// A parsed (or to-be-rendered) job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPayload {
    pub fleet: String,
    pub host: String,
    pub state_epoch: String,
    pub kind: JobKind,
    pub vmid: u32,
    pub guest_config_sha1: Option<String>,
    pub params: BTreeMap<String, String>,
    pub binds: BTreeMap<String, String>,
    /// The authority the operator claims; only compared with the keys' roles.
    pub role: Role,
    pub nonce: String,
    pub not_before: i64,
    pub expires_at: i64,
    /// Audit only, never bound.
    pub ticket: Option<String>,
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

fn is_line_name(s: &str) -> bool {
    all(s, 40, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    })
}

fn is_ticket(s: &str) -> bool {
    all(s, 64, |c| c.is_ascii_alphanumeric() || b"._/-".contains(&c))
}

/// A job's text starts with the job magic line (whatever its version): how files and hub
/// entries are told apart from approvals and trust rotations.
pub fn is_job_document(bytes: &[u8]) -> bool {
    bytes.starts_with(b"drover-job ")
}

impl JobPayload {
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
        if !(100..=999_999_999).contains(&self.vmid) {
            return Err(malformed(
                "guest must be lxc/<vmid> with vmid 100-999999999",
            ));
        }
        if let Some(d) = &self.guest_config_sha1
            && !is_lower_hex(d, 40)
        {
            return Err(malformed(
                "guest-config-sha1 must be 40 lowercase hex digits or none",
            ));
        }
        for (family, lines, max) in [
            ("param", &self.params, MAX_PARAMS),
            ("bind", &self.binds, MAX_BINDS),
        ] {
            if lines.len() > max {
                return Err(malformed(format!("more than {max} {family} lines")));
            }
            for (k, v) in lines {
                if !is_line_name(k) {
                    return Err(malformed(format!(
                        "{family} name {k:?} must be 1-40 characters of a-z, 0-9 and -"
                    )));
                }
                if !is_param_value(v) {
                    return Err(malformed(format!(
                        "{family}.{k} has a value outside [A-Za-z0-9._:/,=@+-] or longer than 256"
                    )));
                }
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
        let mut s = String::with_capacity(768);
        let mut line = |k: &str, v: &str| {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        };
        line("fleet", &self.fleet);
        line("host", &self.host);
        line("state-epoch", &self.state_epoch);
        line("job", self.kind.as_str());
        line("guest", &format!("lxc/{}", self.vmid));
        line(
            "guest-config-sha1",
            self.guest_config_sha1.as_deref().unwrap_or("none"),
        );
        for (k, v) in &self.params {
            line(&format!("param.{k}"), v);
        }
        for (k, v) in &self.binds {
            line(&format!("bind.{k}"), v);
        }
        line("role", self.role.as_str());
        line("nonce", &self.nonce);
        line("not-before", &format_utc(self.not_before));
        line("expires-at", &format_utc(self.expires_at));
        if let Some(t) = &self.ticket {
            line("ticket", t);
        }
        let out = format!("{JOB_MAGIC}\n{s}");
        if out.len() > MAX_PAYLOAD_BYTES {
            return Err(Rejection::new(
                RejectionCode::PayloadTooLarge,
                format!(
                    "the job would be {} bytes; at most {MAX_PAYLOAD_BYTES} are allowed",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// Strict parse followed by the canonical round trip.
    pub fn parse(bytes: &[u8]) -> Result<JobPayload, Rejection> {
        let fields = signed_text_fields(bytes, JOB_MAGIC, "drover-job ", "job")?;
        let mut it = fields.into_iter().peekable();
        macro_rules! take {
            ($key:expr) => {
                match it.next() {
                    Some((k, v)) if k == $key => v,
                    Some((k, _)) => {
                        return Err(malformed(format!("expected field {:?}, found {k:?}", $key)));
                    }
                    None => return Err(malformed(format!("field {:?} is missing", $key))),
                }
            };
        }
        let fleet = take!("fleet").to_string();
        let host = take!("host").to_string();
        let state_epoch = take!("state-epoch").to_string();
        let kind_name = take!("job");
        if !all(kind_name, 40, |c| c.is_ascii_lowercase() || c == b'_') {
            return Err(malformed("job must be 1-40 characters of a-z and _"));
        }
        let kind = JobKind::from_name(kind_name).ok_or_else(|| {
            Rejection::new(
                RejectionCode::UnknownOp,
                format!("job {kind_name:?} is not a job the agent knows"),
            )
        })?;
        let guest = take!("guest");
        let vmid = guest
            .strip_prefix("lxc/")
            .filter(|v| v.len() >= 3 && v.len() <= 9 && !v.starts_with('0'))
            .filter(|v| v.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| malformed("guest must be lxc/<vmid> with vmid 100-999999999"))?;
        let guest_config_sha1 = match take!("guest-config-sha1") {
            "none" => None,
            d => Some(d.to_string()),
        };
        let mut families: [BTreeMap<String, String>; 2] = Default::default();
        for (i, prefix) in ["param.", "bind."].into_iter().enumerate() {
            while let Some((k, v)) = it.peek() {
                let Some(name) = k.strip_prefix(prefix) else {
                    break;
                };
                if families[i]
                    .insert(name.to_string(), v.to_string())
                    .is_some()
                {
                    return Err(malformed(format!("{prefix}{name} appears twice")));
                }
                it.next();
            }
        }
        let [params, binds] = families;
        let role = match take!("role") {
            "operational" => Role::Operational,
            "recovery" => Role::Recovery,
            _ => return Err(malformed("role must be operational or recovery")),
        };
        let nonce = take!("nonce").to_string();
        let not_before = parse_utc(take!("not-before"))
            .ok_or_else(|| malformed("not-before must be YYYY-MM-DDTHH:MM:SSZ"))?;
        let expires_at = parse_utc(take!("expires-at"))
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
        let p = JobPayload {
            fleet,
            host,
            state_epoch,
            kind,
            vmid,
            guest_config_sha1,
            params,
            binds,
            role,
            nonce,
            not_before,
            expires_at,
            ticket,
        };
        let canonical = p.render()?;
        if canonical.as_bytes() != bytes {
            return Err(malformed(
                "the job is not in canonical form (field order, line order or spacing)",
            ));
        }
        Ok(p)
    }

    /// The job this text describes, as the agent would plan it (for re-rendering).
    pub fn planned(&self) -> PlannedJob {
        PlannedJob {
            kind: self.kind,
            vmid: self.vmid,
            guest_config_sha1: self.guest_config_sha1.clone(),
            params: self.params.clone(),
            binds: self.binds.clone(),
        }
    }
}

/// Renders the job request for `job` (the bytes an operator signs with
/// `ssh-keygen -Y sign -n destructive-op-v1@<domain>`).
pub fn render_job_request(
    ctx: &GateContext,
    job: &PlannedJob,
    nonce: &str,
    not_before: i64,
    expires_at: i64,
    ticket: Option<&str>,
) -> Result<String, Rejection> {
    job_payload(
        ctx,
        job,
        nonce,
        not_before,
        expires_at,
        Role::Operational,
        ticket,
    )
    .render()
}

fn job_payload(
    ctx: &GateContext,
    job: &PlannedJob,
    nonce: &str,
    not_before: i64,
    expires_at: i64,
    role: Role,
    ticket: Option<&str>,
) -> JobPayload {
    JobPayload {
        fleet: ctx.fleet.clone(),
        host: ctx.host.clone(),
        state_epoch: ctx.epoch.clone(),
        kind: job.kind,
        vmid: job.vmid,
        guest_config_sha1: job.guest_config_sha1.clone(),
        params: job.params.clone(),
        binds: job.binds.clone(),
        role,
        nonce: nonce.to_string(),
        not_before,
        expires_at,
        ticket: ticket.map(str::to_string),
    }
}

/// A verified job; its nonce is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedJob {
    pub payload_sha256: String,
    pub signers: Vec<SignerInfo>,
    pub job: JobPayload,
    /// Extra signatures that did not count.
    pub ignored: Vec<SignatureProblem>,
}

/// Verifies `payload` + `signatures` as a job the agent would run exactly as `planned` (its
/// own rendering from current state), at the agent's clock `now`, consuming the nonce on
/// success. The order is the approval's (signing-gate.md §5.6): sizes and the trust document,
/// grammar, scope, binding (`job`, `guest`, `param.*`, `bind.*`, then `stale_state`, then byte
/// equality), signatures and threshold (destructive jobs: `threshold.destructive-op`, others
/// one operational principal), role claim, time, and the nonce last.
#[allow(clippy::too_many_arguments)]
pub fn verify_job(
    policy: &Policy,
    ctx: &GateContext,
    trust: &TrustStore,
    planned: &PlannedJob,
    payload: &[u8],
    signatures: &[&[u8]],
    now: i64,
    ledger: &dyn NonceLedger,
) -> Result<ApprovedJob, Rejection> {
    size_limits(payload, signatures)?;
    trust_usable(ctx, trust, now)?;
    let p = JobPayload::parse(payload)?;
    scope("job", &p.fleet, &p.host, &p.state_epoch, ctx, ledger)?;
    if p.kind != planned.kind {
        return Err(Rejection::binding(
            "job",
            format!(
                "the job is {}, the agent would run {}",
                p.kind, planned.kind
            ),
        ));
    }
    if p.vmid != planned.vmid {
        return Err(Rejection::binding(
            "guest",
            format!(
                "the job is for CT {}, the agent's job is for CT {}",
                p.vmid, planned.vmid
            ),
        ));
    }
    compare_lines("param", "job", "agent's job", &p.params, &planned.params)?;
    compare_lines(
        "bind",
        "job",
        "host's current state",
        &p.binds,
        &planned.binds,
    )?;
    if p.guest_config_sha1 != planned.guest_config_sha1 {
        return Err(stale(
            planned.vmid,
            p.guest_config_sha1.as_deref(),
            planned.guest_config_sha1.as_deref(),
        ));
    }
    let expected = job_payload(
        ctx,
        planned,
        &p.nonce,
        p.not_before,
        p.expires_at,
        p.role,
        p.ticket.as_deref(),
    )
    .render()?;
    if expected.as_bytes() != payload {
        return Err(Rejection::binding(
            "payload",
            "the job differs from the request the agent renders from the host's current state",
        ));
    }
    let destructive = planned
        .kind
        .is_destructive(planned.guest_config_sha1.is_some());
    let signed = Signed {
        what: "job",
        payload,
        signatures,
        threshold: if destructive {
            trust.threshold_destructive_op
        } else {
            1
        },
        role_claim: p.role,
        nonce: &p.nonce,
        not_before: p.not_before,
        expires_at: p.expires_at,
        op: p.kind.as_str(),
        vmid: p.vmid,
    };
    let (payload_sha256, t) = authenticate_and_consume(policy, trust, &signed, now, ledger)?;
    Ok(ApprovedJob {
        payload_sha256,
        signers: t.valid,
        job: p,
        ignored: t.problems,
    })
}

/// Offline check for people and for the control socket's early answer: sizes, the trust
/// document's window, grammar, fleet, signatures and the threshold the job's kind needs, the
/// role claim and the window. It binds to no state and consumes no nonce, so success here is
/// *not* a verified job; only [`verify_job`] is.
pub fn verify_job_offline(
    trust: &TrustStore,
    payload: &[u8],
    signatures: &[&[u8]],
    now: i64,
) -> Result<Vec<SignerInfo>, Rejection> {
    size_limits(payload, signatures)?;
    trust.check_window(now)?;
    let p = JobPayload::parse(payload)?;
    if p.fleet != trust.fleet {
        return Err(Rejection::new(
            RejectionCode::WrongFleet,
            format!(
                "the job is for fleet {:?}, the trust document for {:?}",
                p.fleet, trust.fleet
            ),
        ));
    }
    let destructive = p.kind.is_destructive(p.guest_config_sha1.is_some());
    let signed = Signed {
        what: "job",
        payload,
        signatures,
        threshold: if destructive {
            trust.threshold_destructive_op
        } else {
            1
        },
        role_claim: p.role,
        nonce: &p.nonce,
        not_before: p.not_before,
        expires_at: p.expires_at,
        op: p.kind.as_str(),
        vmid: p.vmid,
    };
    Ok(authenticate(&Policy::default(), trust, &signed, now, None)?.valid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn sample() -> JobPayload {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        JobPayload {
            fleet: "test-fleet-1".into(),
            host: "pve-test-01".into(),
            state_epoch: "5b0c2f9e7d4a4c1e".into(),
            kind: JobKind::RestoreBackup,
            vmid: 101,
            guest_config_sha1: Some("6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c".into()),
            params: m(&[
                ("force", "1"),
                (
                    "ostemplate",
                    "local:backup/vzdump-lxc-101-2026_11_22-21_00_01.tar.zst",
                ),
                ("restore", "1"),
                ("storage", "local-lvm"),
            ]),
            binds: m(&[
                ("archive-ctime", "1795381201"),
                ("archive-size", "432013312"),
                ("hold", "0"),
            ]),
            role: Role::Operational,
            nonce: "7f3c9a1e5b2d4f6081a2c3d4e5f60718".into(),
            not_before: parse_utc("2026-11-22T21:00:00Z").unwrap(),
            expires_at: parse_utc("2026-11-22T22:00:00Z").unwrap(),
            ticket: Some("CHG-4711".into()),
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let p = sample();
        let s = p.render().unwrap();
        assert!(s.starts_with("drover-job v1\nfleet: test-fleet-1\n"), "{s}");
        assert!(s.contains("job: restore_backup\nguest: lxc/101\nguest-config-sha1: 6c1f"));
        assert!(s.contains("param.storage: local-lvm\nbind.archive-ctime: 1795381201\n"));
        assert_eq!(JobPayload::parse(s.as_bytes()).unwrap(), p);
        let mut q = p.clone();
        q.ticket = None;
        q.guest_config_sha1 = None;
        q.params.clear();
        q.binds.clear();
        let s = q.render().unwrap();
        assert!(s.contains("guest-config-sha1: none\n"));
        assert_eq!(JobPayload::parse(s.as_bytes()).unwrap(), q);
        assert!(is_job_document(s.as_bytes()));
    }

    fn code(bytes: &[u8]) -> RejectionCode {
        JobPayload::parse(bytes).unwrap_err().code
    }

    #[test]
    fn non_canonical_jobs_are_malformed() {
        let s = sample().render().unwrap();
        for bad in [
            s.replace(
                "param.force: 1\nparam.ostemplate",
                "param.ostemplate: x\nparam.force: 1\nparam.ostemplate",
            ),
            s.replace("bind.hold: 0\n", "bind.hold: 0\nbind.hold: 0\n"),
            // a bind line before the params
            s.replace(
                "param.force: 1\n",
                "bind.archive-size: 432013312\nparam.force: 1\n",
            ),
            s.replace("role: ", "colour: red\nrole: "),
            s.replace(
                "guest-config-sha1: 6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c\n",
                "",
            ),
            s.replace("6c1f0ad1", "6C1F0AD1"),
            s.replace("bind.hold: 0", "bind.hold: zero one"),
            s.replace('\n', "\r\n"),
            format!("{s}\n"),
            s.trim_end().to_string(),
            s.replace("expires-at: 2026-11-22T22", "expires-at: 2026-11-22T20"),
        ] {
            assert_eq!(
                code(bad.as_bytes()),
                RejectionCode::MalformedPayload,
                "{bad:?}"
            );
        }
        assert_eq!(
            code(s.replace("drover-job v1", "drover-job v2").as_bytes()),
            RejectionCode::UnsupportedVersion
        );
        assert_eq!(
            code(
                s.replace("job: restore_backup", "job: format_disk")
                    .as_bytes()
            ),
            RejectionCode::UnknownOp
        );
        // An approval is not a job (and vice versa).
        assert_eq!(
            code(s.replace("drover-job v1", "drover-approval v1").as_bytes()),
            RejectionCode::MalformedPayload
        );
        assert_eq!(
            crate::ApprovalPayload::parse(s.as_bytes())
                .unwrap_err()
                .code,
            RejectionCode::MalformedPayload
        );
    }

    #[test]
    fn destructive_kinds() {
        assert!(JobKind::RestoreBackup.is_destructive(true));
        assert!(!JobKind::RestoreBackup.is_destructive(false));
        assert!(JobKind::RollbackSnapshot.is_destructive(true));
        assert!(JobKind::DeleteSnapshot.is_destructive(true));
        assert!(!JobKind::Snapshot.is_destructive(true));
        assert!(!JobKind::Backup.is_destructive(true));
        assert!(!JobKind::Reboot.is_destructive(true));
    }
}
