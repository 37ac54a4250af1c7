//! `drover fleet pending TREE`: every pending approval, signed-job request and unfinished
//! guest across the fleet, from the agents' reports; `--extract DIR` writes a chosen set of
//! requests (approvals and jobs alike) as `DIR/<host>/<file>` and prints the one
//! `ssh-keygen -Y sign` command that signs them all (`--key` runs it).
//! `drover fleet add-approvals TREE PATH...` places signed approvals under
//! `hosts/<host>/approvals/` and signed jobs (`drover-job v1`) under `hosts/<host>/jobs/`, and
//! regenerates those indexes.
//!
//! Reports are display only: a request is shown with its text so the operator reads what they
//! sign, and the agent binds any signature to the step it plans itself. What the fleet tools
//! check (host, expiry, names, signatures against the trust document) only spares a round
//! trip; the agent's gate decides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gate::{ApprovalPayload, JobKind, JobPayload, Op, TrustStore};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::tree::{Inbox, Tree, payload_of_signature};
use super::{FleetError, Refusal};
use crate::approval::files::{self as approval_files, Candidate, read_capped, write_atomic};
use crate::desired::hub::valid_approval_name;

/// One pending request, as a host's report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    pub host: String,
    pub vmid: Option<u32>,
    pub op: Option<String>,
    /// What running the step destroys, in words.
    pub loses: String,
    pub expires_at: Option<String>,
    pub expires_unix: Option<i64>,
    pub expired: bool,
    /// `<vmid>-<op>.txt`.
    pub file: String,
    /// The namespace the agent asks for (`destructive-op-v1@DOMAIN`), from its report.
    pub namespace: Option<String>,
    /// Already placed in the tree with a signature (waiting for the agent to pick it up).
    pub submitted: bool,
    /// Why this request cannot be extracted (it contradicts itself or its host).
    pub problem: Option<String>,
    /// It destroys or rewinds data: every approval, and the jobs whose kind does (rollback,
    /// delete_snapshot, a restore over a guest). `--extract --key` signs such a job only when
    /// `--op` names its kind.
    pub destructive: bool,
    /// Why the published document does not explain this request (e.g. a destroy of a guest
    /// the document still wants): a stale request the agent will withdraw, or a forged
    /// report. Not extracted.
    pub unexplained: Option<String>,
    pub text: String,
}

/// A guest with work left, as a host's report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub host: String,
    pub vmid: u32,
    pub state: String,
    pub step: Option<String>,
    pub error: Option<String>,
}

/// The fleet's pending work.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pending {
    pub approvals: Vec<PendingApproval>,
    /// Signed-job requests rendered on a host (`drover job new`) and waiting for a signature;
    /// `op` is the job's kind.
    pub job_requests: Vec<PendingApproval>,
    pub jobs: Vec<Job>,
    /// Hosts without a report, and unreadable reports.
    pub missing_reports: Vec<String>,
    pub report_problems: Vec<String>,
    /// When each host's report was written (its clock).
    pub report_times: BTreeMap<String, i64>,
}

/// Which requests to extract.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub hosts: Vec<String>,
    pub guests: Vec<u32>,
    pub ops: Vec<String>,
}

impl Selection {
    pub fn matches(&self, a: &PendingApproval) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&a.host))
            && (self.guests.is_empty() || a.vmid.is_some_and(|v| self.guests.contains(&v)))
            && (self.ops.is_empty() || a.op.as_ref().is_some_and(|o| self.ops.contains(o)))
    }
}

/// What an op destroys, for people deciding whether to sign.
pub fn loses(op: &Op, params: &BTreeMap<String, String>) -> String {
    let p = |k: &str| params.get(k).cloned().unwrap_or_else(|| "?".into());
    match op {
        Op::DestroyGuest => {
            if params.get("purge").map(String::as_str) == Some("1") {
                "the container, all its volumes, and its backup and replication job entries".into()
            } else {
                "the container and all its volumes".into()
            }
        }
        Op::DeleteVolume => format!("volume {} ({}) and its data", p("volume"), p("delete")),
        Op::RollbackSnapshot => format!("every change since snapshot {}", p("snapname")),
        Op::DeleteSnapshot => format!("snapshot {}", p("snapname")),
        Op::RestoreOverwrite => "the container's current disks (overwritten by a backup)".into(),
        Op::RemoveMountpoint => format!(
            "mount point {} (volume {}): detached, PVE keeps the volume as unused[n] until a later, separately signed delete",
            p("delete"),
            p("volume")
        ),
        Op::SetConfig => format!(
            "the current values of {}",
            params.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Op::Resize => format!("space on {} (shrink)", p("disk")),
        other => format!("whatever {other} overwrites"),
    }
}

/// Reads every host's report.
pub fn collect(tree: &Tree, now: i64) -> Result<Pending, FleetError> {
    let (hosts, _) = tree.hosts()?;
    let mut out = Pending::default();
    for host in hosts {
        let report = match tree.report(&host) {
            None => {
                out.missing_reports.push(host);
                continue;
            }
            Some(Err(m)) => {
                out.report_problems.push(format!("{host}: {m}"));
                continue;
            }
            Some(Ok(r)) => r,
        };
        out.report_times.insert(host.clone(), report.time_unix);
        for g in report.guests() {
            if g.state != "converged" && g.state != "unknown" {
                out.jobs.push(Job {
                    host: host.clone(),
                    vmid: g.vmid,
                    state: g.state.clone(),
                    step: g.last_step.clone().or(g.pending_approval.clone()),
                    error: g.last_error.clone().or(g.blocked_code.clone()),
                });
            }
        }
        let submitted = submitted_payloads(tree, &host, Inbox::Approvals);
        // The document in the tree (the one published, or about to be), for cross-checking.
        let doc = std::fs::read(tree.document(&host))
            .ok()
            .and_then(|b| crate::desired::parse(&b, "desired.toml").ok());
        for req in &report.pending_approvals {
            let mut a = describe(&host, Inbox::Approvals, req, &submitted, now);
            if a.problem.is_none() {
                a.unexplained = unexplained(&a, doc.as_ref());
            }
            out.approvals.push(a);
        }
        let submitted_jobs = submitted_payloads(tree, &host, Inbox::Jobs);
        for req in &report.pending_jobs {
            out.job_requests
                .push(describe(&host, Inbox::Jobs, req, &submitted_jobs, now));
        }
    }
    Ok(out)
}

/// What a job destroys or rewinds, for people deciding whether to sign.
pub fn job_loses(p: &JobPayload) -> String {
    let param = |k: &str| p.params.get(k).cloned().unwrap_or_else(|| "?".into());
    match p.kind {
        JobKind::Snapshot => "nothing (a new snapshot)".into(),
        JobKind::Backup => "nothing (a new backup)".into(),
        JobKind::Reboot => "nothing kept on disk; the guest restarts".into(),
        JobKind::DeleteSnapshot => format!("snapshot {}", param("snapname")),
        JobKind::RollbackSnapshot => format!("every change since snapshot {}", param("snapname")),
        JobKind::RestoreBackup if p.guest_config_sha1.is_some() => format!(
            "the container's current disks (overwritten by {}; a safety copy is made first)",
            param("ostemplate")
        ),
        JobKind::RestoreBackup => "nothing (a restore onto a free vmid)".into(),
    }
}

/// Whether the tree's document asks for what the request would do: a destroy needs the guest
/// listed with `ensure = "absent"`, any other step needs the guest listed at all.
fn unexplained(a: &PendingApproval, doc: Option<&crate::desired::DesiredDoc>) -> Option<String> {
    let (Some(vmid), Some(op)) = (a.vmid, a.op.as_deref()) else {
        return None;
    };
    let Some(doc) = doc else {
        return Some("the host has no valid desired.toml in the tree".into());
    };
    match doc.guests.get(&vmid) {
        None => Some(format!(
            "guest {vmid} is not in revision {} of the document",
            doc.revision
        )),
        Some(g) if op == "destroy_guest" && g.ensure != crate::desired::Ensure::Absent => {
            let wants = serde_json::to_value(g.ensure)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            Some(format!(
                "revision {} wants guest {vmid} {wants}, not absent",
                doc.revision
            ))
        }
        Some(_) => None,
    }
}

/// What a request in a report claims, whichever kind it is.
struct Claimed {
    host: String,
    vmid: u32,
    op: String,
    loses: String,
    destructive: bool,
    expires_at: i64,
    /// The file name the agent gives such a request.
    file: String,
}

fn claims_of(inbox: Inbox, text: &[u8]) -> Result<Claimed, gate::Rejection> {
    Ok(match inbox {
        Inbox::Approvals => {
            let p = ApprovalPayload::parse(text)?;
            Claimed {
                file: format!("{}-{}.txt", p.vmid, p.op.as_str()),
                loses: loses(&p.op, &p.params),
                op: p.op.as_str().to_string(),
                destructive: true,
                host: p.host,
                vmid: p.vmid,
                expires_at: p.expires_at,
            }
        }
        Inbox::Jobs => {
            let p = JobPayload::parse(text)?;
            Claimed {
                file: format!(
                    "{}-{}-{}.txt",
                    p.vmid,
                    p.kind.as_str().replace('_', "-"),
                    p.nonce.get(..8).unwrap_or(&p.nonce)
                ),
                loses: job_loses(&p),
                op: p.kind.as_str().to_string(),
                destructive: p.kind.is_destructive(p.guest_config_sha1.is_some()),
                host: p.host,
                vmid: p.vmid,
                expires_at: p.expires_at,
            }
        }
    })
}

/// A pending approval (or, from `inbox` = jobs, a job request) as a host's report shows it:
/// display only, the agent binds any signature to what it plans or verifies itself.
fn describe(
    host: &str,
    inbox: Inbox,
    req: &crate::desired::report::PendingRequest,
    submitted: &[Vec<u8>],
    now: i64,
) -> PendingApproval {
    let what = match inbox {
        Inbox::Approvals => "request",
        Inbox::Jobs => "job",
    };
    let mut a = PendingApproval {
        host: host.to_string(),
        vmid: None,
        op: None,
        loses: String::new(),
        expires_at: None,
        expires_unix: None,
        expired: false,
        file: req.file.clone(),
        namespace: namespace_of(&req.sign),
        submitted: submitted.iter().any(|p| p == req.text.as_bytes()),
        problem: None,
        destructive: true,
        unexplained: None,
        text: req.text.clone(),
    };
    match claims_of(inbox, req.text.as_bytes()) {
        Ok(c) => {
            a.vmid = Some(c.vmid);
            a.op = Some(c.op);
            a.loses = c.loses;
            a.destructive = c.destructive;
            a.expires_at = Some(gate::clock::format_utc(c.expires_at));
            a.expires_unix = Some(c.expires_at);
            a.expired = c.expires_at <= now;
            if c.host != host {
                a.problem = Some(format!("the {what} names host {:?}, not {host:?}", c.host));
            } else if req.file != c.file {
                a.problem = Some(format!(
                    "file name {:?} does not match the {what} ({})",
                    req.file, c.file
                ));
            }
        }
        Err(r) => a.problem = Some(format!("{}: {}", r.code.as_str(), r.message)),
    }
    if a.problem.is_none() && !valid_approval_name(&a.file) {
        a.problem = Some(format!("{:?} is not a {what} file name", a.file));
    }
    a
}

/// `-n NAMESPACE` from the agent's signing command.
fn namespace_of(sign: &str) -> Option<String> {
    let mut it = sign.split_whitespace();
    while let Some(w) = it.next() {
        if w == "-n" {
            return it.next().map(str::to_string);
        }
    }
    None
}

/// Payloads already in the host's `approvals/` (or `jobs/`) with a signature.
fn submitted_payloads(tree: &Tree, host: &str, inbox: Inbox) -> Vec<Vec<u8>> {
    approval_files::scan(&tree.inbox_dir(host, inbox))
        .0
        .into_iter()
        .map(|c| c.payload)
        .collect()
}

/// What `extract` wrote, and the requests it held back.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    pub files: Vec<PathBuf>,
    /// Destructive job requests left out of a run that signs (`--key`) because `--op` does not
    /// name their kind: a job is built from what its request asks, and no document explains
    /// it, so a forged report's rollback must not be signed unread.
    pub held_back: Vec<String>,
}

/// Writes the selected requests as `dir/<host>/<file>` (not expired, no problem, explained by
/// the document, not yet submitted). With `signing` (the files are signed at once, unread), a
/// destructive job is written only when the selection names its kind.
pub fn extract(
    pending: &Pending,
    selection: &Selection,
    dir: &Path,
    signing: bool,
) -> Result<Extracted, FleetError> {
    let mut out = Extracted::default();
    let requests = (pending.approvals.iter().map(|a| (a, false)))
        .chain(pending.job_requests.iter().map(|a| (a, true)));
    for (a, job) in requests {
        if a.expired
            || a.problem.is_some()
            || a.unexplained.is_some()
            || a.submitted
            || !selection.matches(a)
        {
            continue;
        }
        if job
            && signing
            && a.destructive
            && !a.op.as_ref().is_some_and(|o| selection.ops.contains(o))
        {
            out.held_back.push(format!(
                "{}/{}: a destructive {} job; read it, or name it with --op {} to sign it with --key",
                a.host,
                a.file,
                a.op.clone().unwrap_or_default(),
                a.op.clone().unwrap_or_default()
            ));
            continue;
        }
        let path = dir.join(&a.host).join(&a.file);
        write_atomic(&path, a.text.as_bytes()).map_err(|e| FleetError::Write {
            path: path.display().to_string(),
            message: e.to_string().to_lowercase(),
        })?;
        // A signature from an earlier round would be taken for one over these bytes.
        for old in signatures_beside(&path) {
            let _ = std::fs::remove_file(old);
        }
        out.files.push(path);
    }
    Ok(out)
}

/// `NAME.txt.sig` and `NAME.txt.*.sig` in the same directory.
fn signatures_beside(payload: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        payload.parent(),
        payload.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| payload_of_signature(n).as_deref() == Some(name))
                .map(|n| dir.join(n))
                .collect()
        })
        .unwrap_or_default()
}

/// One signed approval handed to `add-approvals`.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// Where it came from.
    pub source: String,
    pub host: Option<String>,
    pub vmid: Option<u32>,
    pub op: Option<String>,
    /// Where it went (`hosts/<host>/approvals/<file>`), with its signature files.
    pub placed: Option<String>,
    pub signatures: Vec<String>,
    /// Signers the trust document names (when one was given).
    pub signers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// Placed, but something is still missing (a destructive job's further signatures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What `add-approvals` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AddOutcome {
    pub approvals: Vec<Added>,
    /// Hosts whose `approvals/index.json` was rewritten.
    pub indexes_written: Vec<String>,
    /// Hosts whose `jobs/index.json` was rewritten.
    pub job_indexes_written: Vec<String>,
}

impl AddOutcome {
    pub fn refused(&self) -> usize {
        self.approvals
            .iter()
            .filter(|a| a.refusal.is_some())
            .count()
    }
}

/// Finds the signed approvals in `paths` (payload files, or directories searched two levels
/// deep, as `--extract` lays them out).
pub fn find_candidates(paths: &[PathBuf]) -> (Vec<Candidate>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let scan_dir = |d: &Path, found: &mut Vec<Candidate>, problems: &mut Vec<String>| {
        let (c, p) = approval_files::scan(d);
        found.extend(c);
        problems.extend(
            p.into_iter()
                .map(|p| format!("{}: {}", p.path.display(), p.message)),
        );
    };
    for p in paths {
        if p.is_dir() {
            scan_dir(p, &mut found, &mut problems);
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut subs: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                for s in subs {
                    scan_dir(&s, &mut found, &mut problems);
                }
            }
        } else {
            let dir = p.parent().unwrap_or(Path::new("."));
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let (c, _) = approval_files::scan(dir);
            let name = p.file_name();
            match c.into_iter().find(|c| c.payload_path.file_name() == name) {
                Some(c) => found.push(c),
                None => problems.push(format!(
                    "{}: no such request with a signature beside it (NAME.txt.sig or NAME.txt.SIGNER.sig)",
                    p.display()
                )),
            }
        }
    }
    (found, problems)
}

/// Places each signed approval under its host's `approvals/` (a signed job under `jobs/`)
/// and regenerates those indexes.
/// Each approval is checked on its own; a refused one is reported and the others still go in.
/// A signed trust rotation (`drover-trust v1`) names no host: it goes to `rotation_hosts`, or
/// to every host in the tree when that is empty.
pub fn add_approvals(
    tree: &Tree,
    candidates: &[Candidate],
    trust: Option<&TrustStore>,
    now: i64,
    rotation_hosts: &[String],
) -> Result<AddOutcome, FleetError> {
    let mut out = AddOutcome::default();
    let mut touched = std::collections::BTreeSet::new();
    for c in candidates {
        if crate::approval::files::is_trust_document(&c.payload) {
            add_rotation(tree, c, trust, now, rotation_hosts, &mut out, &mut touched)?;
            continue;
        }
        let mut a = Added {
            source: c.payload_path.display().to_string(),
            host: None,
            vmid: None,
            op: None,
            placed: None,
            signatures: Vec::new(),
            signers: Vec::new(),
            refusal: None,
            note: None,
        };
        let inbox = Inbox::of_payload(&c.payload);
        let checked = check(tree, inbox, c, trust, now, &mut a).and_then(|sigs| {
            let host = a.host.clone().unwrap_or_default();
            fits_in_index(tree, &host, inbox, &file_name(c), &sigs).map(|()| sigs)
        });
        match checked {
            Ok(sigs) => {
                let host = a.host.clone().unwrap_or_default();
                let name = file_name(c);
                place(tree, &host, inbox, &name, c, &sigs)?;
                a.placed = Some(tree.name_of(&host, &format!("{}/{name}", inbox.dir_name())));
                a.signatures = sigs.into_iter().map(|(n, _)| n).collect();
                touched.insert((host, inbox));
            }
            Err(r) => a.refusal = Some(r),
        }
        out.approvals.push(a);
    }
    for (host, inbox) in touched {
        let plan = tree.index_plan(&host, inbox);
        if let Err(r) = tree.check_index(&host, inbox, &plan) {
            return Err(FleetError::Write {
                path: tree.name_of(&host, &format!("{}/index.json", inbox.dir_name())),
                message: r.message,
            });
        }
        if plan.write {
            tree.write_index(&host, inbox, &plan)?;
            match inbox {
                Inbox::Approvals => out.indexes_written.push(host),
                Inbox::Jobs => out.job_indexes_written.push(host),
            }
        }
    }
    Ok(out)
}

/// Signature files as they go into the tree: (file name, armored bytes).
type NamedSignatures = Vec<(String, Vec<u8>)>;

/// A signed trust rotation, for every chosen host.
#[allow(clippy::too_many_arguments)]
fn add_rotation(
    tree: &Tree,
    c: &Candidate,
    trust: Option<&TrustStore>,
    now: i64,
    rotation_hosts: &[String],
    out: &mut AddOutcome,
    touched: &mut std::collections::BTreeSet<(String, Inbox)>,
) -> Result<(), FleetError> {
    let mut a = Added {
        source: c.payload_path.display().to_string(),
        host: None,
        vmid: None,
        op: Some("trust_rotation".into()),
        placed: None,
        signatures: Vec::new(),
        signers: Vec::new(),
        refusal: None,
        note: None,
    };
    let name = file_name(c);
    let checked = (|| -> Result<(Vec<String>, NamedSignatures), Refusal> {
        if !valid_approval_name(&name) {
            return Err(Refusal::new(
                "bad_name",
                format!("{name:?} is not an approval file name (NAME.txt)"),
            ));
        }
        let hosts: Vec<String> = if rotation_hosts.is_empty() {
            tree.hosts()
                .map(|(h, _)| h)
                .map_err(|e| Refusal::new(e.code(), e.to_string()))?
        } else {
            rotation_hosts.to_vec()
        };
        if let Some(h) = hosts.iter().find(|h| !tree.has_host(h)) {
            return Err(Refusal::new(
                "unknown_host",
                format!("{h:?} has no directory in the tree"),
            ));
        }
        if let Some(t) = trust {
            let sigs: Vec<&[u8]> = c.signatures.iter().map(|(_, b)| b.as_slice()).collect();
            // Offline: each agent checks its own clock and chain again when it applies it.
            gate::verify_rotation(t, &c.payload, &sigs, now, None)
                .map_err(|r| Refusal::from_rejection(&r))?;
        }
        let mut names = Vec::new();
        for (sig_name, sig) in &c.signatures {
            let key = signer_key(sig).map_err(|r| {
                let mut r = Refusal::from_rejection(&r);
                r.message = format!("{sig_name}: {}", r.message);
                r
            })?;
            let mut label = format!("k{}", &hex::encode(Sha256::digest(&key))[..16]);
            if let Some(t) = trust
                && let Ok(signer) =
                    gate::verify_signature(t, gate::Role::Recovery, &c.payload, sig, now)
            {
                label = safe_label(&signer.principal).unwrap_or(label);
                a.signers.push(signer.principal);
            }
            names.push((format!("{name}.{label}.sig"), sig.clone()));
        }
        names.sort_by(|x, y| x.0.cmp(&y.0));
        names.dedup_by(|x, y| x.0 == y.0);
        Ok((hosts, names))
    })();
    match checked {
        Err(r) => {
            a.refusal = Some(r);
            out.approvals.push(a);
        }
        Ok((hosts, sigs)) => {
            for host in hosts {
                place(tree, &host, Inbox::Approvals, &name, c, &sigs)?;
                let mut each = a.clone();
                each.placed = Some(tree.name_of(&host, &format!("approvals/{name}")));
                each.host = Some(host.clone());
                each.signatures = sigs.iter().map(|(n, _)| n.clone()).collect();
                out.approvals.push(each);
                touched.insert((host, Inbox::Approvals));
            }
        }
    }
    Ok(())
}

fn file_name(c: &Candidate) -> String {
    c.payload_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What `add-approvals` checks of a signed file, whichever kind it is.
struct Claims {
    fleet: String,
    host: String,
    role: gate::Role,
    expires_at: i64,
    /// "approval" or "job", for messages.
    what: &'static str,
}

/// Checks one signed approval or job; the names its signatures get in the tree. A job is
/// also checked offline as the agent's control socket does (`gate::verify_job_offline`:
/// fleet, window, the threshold its kind needs) when a trust document is given.
fn check(
    tree: &Tree,
    inbox: Inbox,
    c: &Candidate,
    trust: Option<&TrustStore>,
    now: i64,
    a: &mut Added,
) -> Result<NamedSignatures, Refusal> {
    let claims = match inbox {
        Inbox::Approvals => {
            let p = ApprovalPayload::parse(&c.payload).map_err(|r| Refusal::from_rejection(&r))?;
            a.vmid = Some(p.vmid);
            a.op = Some(p.op.as_str().to_string());
            Claims {
                fleet: p.fleet,
                host: p.host,
                role: p.role,
                expires_at: p.expires_at,
                what: "approval",
            }
        }
        Inbox::Jobs => {
            let p = JobPayload::parse(&c.payload).map_err(|r| Refusal::from_rejection(&r))?;
            a.vmid = Some(p.vmid);
            a.op = Some(p.kind.as_str().to_string());
            Claims {
                fleet: p.fleet,
                host: p.host,
                role: p.role,
                expires_at: p.expires_at,
                what: "job",
            }
        }
    };
    a.host = Some(claims.host.clone());
    let what = claims.what;
    if !tree.has_host(&claims.host) {
        return Err(Refusal::new(
            "unknown_host",
            format!(
                "the {what} is for host {:?}, which has no directory in the tree",
                claims.host
            ),
        ));
    }
    let name = file_name(c);
    if !valid_approval_name(&name) {
        return Err(Refusal::new(
            "bad_name",
            format!(
                "{name:?} is not an {} file name (NAME.txt)",
                inbox.dir_name()
            ),
        ));
    }
    if claims.expires_at <= now {
        return Err(Refusal::new(
            "expired",
            format!(
                "the request expired at {}; sign the one the agent offers now",
                gate::clock::format_utc(claims.expires_at)
            ),
        ));
    }
    if c.signatures.len() > approval_files::MAX_SIGNATURES {
        return Err(Refusal::new(
            "too_many_signatures",
            format!("at most {} signatures", approval_files::MAX_SIGNATURES),
        ));
    }
    if let Some(t) = trust
        && t.fleet != claims.fleet
    {
        return Err(Refusal::new(
            "wrong_fleet",
            format!(
                "the {what} is for fleet {:?}, the trust document for {:?}",
                claims.fleet, t.fleet
            ),
        ));
    }
    if inbox == Inbox::Jobs
        && let Some(t) = trust
    {
        // The agent counts every signature beside the job in its copy of `jobs/`, so those
        // already placed for the same bytes (an earlier signer's run) count here too; a job
        // still short of its kind's threshold is placed for the next signer, with a note.
        let placed = placed_signatures(tree, &claims.host, &name, &c.payload);
        let sigs: Vec<&[u8]> = c
            .signatures
            .iter()
            .map(|(_, b)| b.as_slice())
            .chain(placed.iter().map(Vec::as_slice))
            .collect();
        match gate::verify_job_offline(t, &c.payload, &sigs, now) {
            Ok(_) => {}
            Err(r) if r.code == gate::RejectionCode::ThresholdNotMet && r.authenticated => {
                a.note = Some(format!(
                    "placed, but the agent will not run it yet: {}; the next signer adds theirs with add-approvals",
                    r.message
                ));
            }
            Err(r) => return Err(Refusal::from_rejection(&r)),
        }
    }
    let mut names = Vec::new();
    for (sig_name, sig) in &c.signatures {
        let key = signer_key(sig).map_err(|r| {
            let mut r = Refusal::from_rejection(&r);
            r.message = format!("{sig_name}: {}", r.message);
            r
        })?;
        let mut label = format!("k{}", &hex::encode(Sha256::digest(&key))[..16]);
        if let Some(t) = trust {
            let signer =
                gate::verify_signature(t, claims.role, &c.payload, sig, now).map_err(|r| {
                    let mut r = Refusal::from_rejection(&r);
                    r.message = format!("{sig_name}: {}", r.message);
                    r
                })?;
            label = safe_label(&signer.principal).unwrap_or(label);
            a.signers.push(signer.principal);
        }
        names.push((format!("{name}.{label}.sig"), sig.clone()));
    }
    // The same signer twice counts once anyway; keep one file.
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names.dedup_by(|a, b| a.0 == b.0);
    Ok(names)
}

/// Refuses (`hub_approvals_invalid`, before anything is written) a file whose placing would
/// make the host's index longer than the agents accept.
fn fits_in_index(
    tree: &Tree,
    host: &str,
    inbox: Inbox,
    name: &str,
    sigs: &NamedSignatures,
) -> Result<(), Refusal> {
    let mut plan = tree.index_plan(host, inbox);
    let mut names: std::collections::BTreeSet<String> = plan.names.into_iter().collect();
    names.insert(name.to_string());
    names.extend(sigs.iter().map(|(n, _)| n.clone()));
    plan.names = names.into_iter().collect();
    tree.check_index(host, inbox, &plan)
}

/// The signatures already beside `name` in the host's `jobs/`, if what is there is `payload`.
fn placed_signatures(tree: &Tree, host: &str, name: &str, payload: &[u8]) -> Vec<Vec<u8>> {
    let path = tree.inbox_dir(host, Inbox::Jobs).join(name);
    if !read_capped(&path, approval_files::MAX_PAYLOAD_BYTES).is_ok_and(|b| b == payload) {
        return Vec::new();
    }
    signatures_beside(&path)
        .into_iter()
        .filter_map(|p| read_capped(&p, approval_files::MAX_SIGNATURE_BYTES).ok())
        .collect()
}

/// The signer's public key blob as the signature states it (only to name the file).
fn signer_key(armored: &[u8]) -> Result<Vec<u8>, gate::Rejection> {
    let blob = gate::armor::decode_armor(armored)?;
    let parsed = gate::sshsig::parse_blob(&blob)?;
    Ok(parsed.public_key.to_vec())
}

/// A principal as a file name part (`alice@example.org`), if it only has safe characters.
fn safe_label(principal: &str) -> Option<String> {
    let ok = !principal.is_empty()
        && principal.len() <= 64
        && !principal.contains("..")
        && !principal.starts_with('.')
        && principal
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-+@.".contains(c));
    ok.then(|| principal.to_string())
}

/// Writes the signatures, then the payload (atomically each), so the agent never mirrors a
/// payload without them. A different payload under the same name (a renewed request) takes
/// the place of the old one together with all of its signatures.
fn place(
    tree: &Tree,
    host: &str,
    inbox: Inbox,
    name: &str,
    c: &Candidate,
    sigs: &[(String, Vec<u8>)],
) -> Result<(), FleetError> {
    let dir = tree.inbox_dir(host, inbox);
    let target = dir.join(name);
    let werr = |p: &Path, e: std::io::Error| FleetError::Write {
        path: p.display().to_string(),
        message: e.to_string().to_lowercase(),
    };
    let same =
        read_capped(&target, approval_files::MAX_PAYLOAD_BYTES).is_ok_and(|b| b == c.payload);
    if !same {
        for old in signatures_beside(&target) {
            std::fs::remove_file(&old).map_err(|e| werr(&old, e))?;
        }
    }
    for (sig_name, sig) in sigs {
        let p = dir.join(sig_name);
        write_atomic(&p, sig).map_err(|e| werr(&p, e))?;
    }
    if !same {
        write_atomic(&target, &c.payload).map_err(|e| werr(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_comes_from_the_sign_command() {
        assert_eq!(
            namespace_of("ssh-keygen -Y sign -f ~/.ssh/K -n destructive-op-v1@x.example /p"),
            Some("destructive-op-v1@x.example".into())
        );
        assert_eq!(namespace_of(""), None);
        assert_eq!(
            safe_label("alice@example.org").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(safe_label("a/b"), None);
        let mut params = BTreeMap::new();
        params.insert("purge".to_string(), "1".to_string());
        assert!(loses(&Op::DestroyGuest, &params).contains("backup"));
    }
}
