//! The `drover fleet ...` verbs behind `main.rs`: run a verb, print text or JSON, choose the
//! exit code (0 done / nothing to do, 2 changes or work pending, 1 refused or error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::pending::{self, Selection};
use super::publish::{self, Action};
use super::sign::{self, SshKeygen};
use super::tree::Tree;
use super::{FleetError, load_trust, status, unix_now};

/// A verb's failure with its stable code. `main` prints it on stderr as `code: message`, and
/// with `--output json` also as `{"error": {"code", "message"}}` on stdout, so a hub's
/// pipeline reads the code the way it reads every other answer.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FleetFailure {
    pub code: &'static str,
    pub message: String,
}

impl FleetFailure {
    /// The JSON form of any error a fleet verb returned (`fleet_error` for one without a code).
    pub fn json(e: &anyhow::Error) -> serde_json::Value {
        let (code, message) = match e.downcast_ref::<FleetFailure>() {
            Some(f) => (f.code, f.message.clone()),
            None => ("fleet_error", format!("{e:#}")),
        };
        serde_json::json!({ "error": { "code": code, "message": message } })
    }
}

fn fail(e: FleetError) -> anyhow::Error {
    FleetFailure {
        code: e.code(),
        message: e.to_string(),
    }
    .into()
}

fn json_line(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn revision(r: Option<u64>) -> String {
    r.map(|r| r.to_string()).unwrap_or_else(|| "-".into())
}

/// `drover fleet publish TREE --key KEY --trust TRUST [--dry-run]`.
pub fn publish(
    tree: &Path,
    key: &Path,
    trust: &Path,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let tree = Tree::open(tree).map_err(fail)?;
    let trust = load_trust(trust, now).map_err(fail)?;
    // A dry run writes nothing, so it needs no lock.
    let _lock = if dry_run {
        None
    } else {
        Some(tree.lock().map_err(fail)?)
    };
    let opts = publish::Options {
        key: key.to_path_buf(),
        trust,
        dry_run,
        now,
    };
    let out = publish::publish(&tree, &opts).map_err(fail)?;
    if json {
        json_line(&out);
    } else {
        for w in &out.warnings {
            eprintln!("warning: {w}");
        }
        let width = out
            .hosts
            .iter()
            .map(|h| h.host.len())
            .max()
            .unwrap_or(4)
            .max(4);
        println!(
            "{:width$}  {:11}  {:12}  {:16}  NOTE",
            "HOST", "ACTION", "REVISION", "APPROVALS INDEX"
        );
        for h in &out.hosts {
            let rev = match h.action {
                Action::Sign => format!(
                    "{} -> {}",
                    revision(h.published_revision),
                    revision(h.revision)
                ),
                _ => revision(h.revision.or(h.published_revision)),
            };
            let index = if h.index.write {
                format!("+{} -{}", h.index.added.len(), h.index.removed.len())
            } else {
                "unchanged".into()
            };
            let mut note: Vec<String> = Vec::new();
            if let Some(r) = &h.refusal {
                note.push(match &r.gate_code {
                    Some(g) => format!("{} [{g}]: {}", r.code, r.message),
                    None => format!("{}: {}", r.code, r.message),
                });
            }
            note.extend(h.notes.iter().cloned());
            println!(
                "{:width$}  {:11}  {:12}  {:16}  {}",
                h.host,
                h.action.as_str(),
                rev,
                index,
                note.join("; ")
            );
        }
        for d in &out.ignored_dirs {
            println!("ignored: hosts/{d}/ (not a host name an agent can ask for)");
        }
        let signed = out.count(Action::Sign) + out.count(Action::Resign);
        let refused = out.count(Action::Refused);
        if out.refused {
            println!(
                "refused: {refused} host(s); nothing was signed or written (fix them and publish again)"
            );
        } else if dry_run {
            println!(
                "dry run: would sign {signed} document(s) with {}, {} unchanged; nothing written",
                out.namespace,
                out.count(Action::Unchanged)
            );
        } else {
            println!(
                "published: signed {signed} document(s), {} unchanged, {} approvals and {} jobs index(es) written",
                out.count(Action::Unchanged),
                out.hosts.iter().filter(|h| h.index.write).count(),
                out.hosts.iter().filter(|h| h.jobs_index.write).count()
            );
        }
    }
    Ok(ExitCode::from(if out.refused {
        1
    } else if dry_run && out.changes {
        2
    } else {
        0
    }))
}

/// `drover fleet pending TREE [--host H] [--guest V] [--op OP] [--extract DIR [--key KEY]]`.
pub fn pending(
    tree: &Path,
    selection: &Selection,
    extract: Option<&Path>,
    key: Option<&Path>,
    trust: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let tree = Tree::open(tree).map_err(fail)?;
    let trust = trust
        .map(|t| load_trust(t, now))
        .transpose()
        .map_err(fail)?;
    let all = pending::collect(&tree, now).map_err(fail)?;
    let shown: Vec<&pending::PendingApproval> = all
        .approvals
        .iter()
        .filter(|a| selection.matches(a))
        .collect();
    let shown_jobs: Vec<&pending::PendingApproval> = all
        .job_requests
        .iter()
        .filter(|a| selection.matches(a))
        .collect();
    let mut extracted: Vec<PathBuf> = Vec::new();
    let mut held_back: Vec<String> = Vec::new();
    let mut command = None;
    if let Some(dir) = extract {
        let out = pending::extract(&all, selection, dir, key.is_some()).map_err(fail)?;
        extracted = out.files;
        held_back = out.held_back;
        let namespace = trust
            .as_ref()
            .map(|t| gate::Role::Operational.namespace(&t.domain))
            .or_else(|| {
                shown
                    .iter()
                    .chain(&shown_jobs)
                    .find_map(|a| a.namespace.clone())
            })
            .unwrap_or_else(|| "destructive-op-v1@YOUR_DOMAIN".into());
        if !extracted.is_empty() {
            let key_text = key
                .map(|k| k.display().to_string())
                .unwrap_or_else(|| "~/.ssh/YOUR_OPERATOR_KEY".into());
            command = Some(sign::command_line(&key_text, &namespace, &extracted));
            if let Some(k) = key {
                SshKeygen::new(k)
                    .sign(&namespace, &extracted)
                    .map_err(fail)?;
            }
        }
    }
    if json {
        json_line(&serde_json::json!({
            "approvals": shown,
            "job_requests": shown_jobs,
            "jobs": all.jobs.iter().filter(|j| selection.hosts.is_empty() || selection.hosts.contains(&j.host)).collect::<Vec<_>>(),
            "missing_reports": all.missing_reports,
            "report_problems": all.report_problems,
            "extracted": extracted,
            "held_back": held_back,
            "sign_command": command,
            "signed": key.is_some() && !extracted.is_empty(),
        }));
    } else {
        if shown.is_empty() {
            println!("no pending approvals in the reports");
        } else {
            print_requests(&shown, "OP");
        }
        if !shown_jobs.is_empty() {
            println!();
            print_requests(&shown_jobs, "JOB");
        }
        let jobs: Vec<_> = all
            .jobs
            .iter()
            .filter(|j| selection.hosts.is_empty() || selection.hosts.contains(&j.host))
            .collect();
        if !jobs.is_empty() {
            println!();
            println!(
                "{:16}  {:9}  {:18}  {:28}  ERROR",
                "HOST", "GUEST", "STATE", "STEP"
            );
            for j in jobs {
                println!(
                    "{:16}  {:9}  {:18}  {:28}  {}",
                    j.host,
                    format!("lxc/{}", j.vmid),
                    j.state,
                    j.step.clone().unwrap_or_default(),
                    j.error.clone().unwrap_or_default()
                );
            }
        }
        for h in &all.missing_reports {
            println!("no report: {h}");
        }
        for p in &all.report_problems {
            println!("unreadable report: {p}");
        }
        if let Some(dir) = extract {
            for h in &held_back {
                println!("held back: {h}");
            }
            if extracted.is_empty() {
                println!(
                    "nothing extracted (expired, invalid, unexplained or already submitted requests are left out)"
                );
            } else {
                println!(
                    "\nwrote {} request(s) under {}; read each one, then sign them all with:\n  {}",
                    extracted.len(),
                    dir.display(),
                    command.clone().unwrap_or_default()
                );
                if key.is_some() {
                    println!("signed.");
                }
                println!(
                    "then place them on the hub:\n  drover fleet add-approvals {} {}",
                    tree.root().display(),
                    dir.display()
                );
            }
        }
    }
    let waiting = shown
        .iter()
        .chain(&shown_jobs)
        .any(|a| !a.expired && a.problem.is_none() && a.unexplained.is_none());
    Ok(ExitCode::from(if waiting { 2 } else { 0 }))
}

/// The table of pending requests (approvals, or job requests with `what` = "JOB").
fn print_requests(requests: &[&pending::PendingApproval], what: &str) {
    println!(
        "{:16}  {:9}  {:18}  {:20}  {:10}  LOSES",
        "HOST", "GUEST", what, "EXPIRES", "STATE"
    );
    for a in requests {
        let state = if let Some(p) = &a.problem {
            format!("invalid: {p}")
        } else if let Some(u) = &a.unexplained {
            format!("unexplained: {u}")
        } else if a.expired {
            "expired".into()
        } else if a.submitted {
            "submitted".into()
        } else {
            "pending".into()
        };
        println!(
            "{:16}  {:9}  {:18}  {:20}  {:10}  {}",
            a.host,
            a.vmid.map(|v| format!("lxc/{v}")).unwrap_or_default(),
            a.op.clone().unwrap_or_default(),
            a.expires_at.clone().unwrap_or_default(),
            state,
            a.loses
        );
    }
}

/// `drover fleet add-approvals TREE PATH... [--trust TRUST]`.
pub fn add_approvals(
    tree: &Path,
    paths: &[PathBuf],
    trust: Option<&Path>,
    rotation_hosts: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let tree = Tree::open(tree).map_err(fail)?;
    let trust = trust
        .map(|t| load_trust(t, now))
        .transpose()
        .map_err(fail)?;
    let _lock = tree.lock().map_err(fail)?;
    let (candidates, problems) = pending::find_candidates(paths);
    let out = pending::add_approvals(&tree, &candidates, trust.as_ref(), now, rotation_hosts)
        .map_err(fail)?;
    if json {
        json_line(&serde_json::json!({
            "approvals": out.approvals,
            "indexes_written": out.indexes_written,
            "job_indexes_written": out.job_indexes_written,
            "problems": problems,
        }));
    } else {
        for a in &out.approvals {
            match (&a.placed, &a.refusal) {
                (Some(p), _) => {
                    println!(
                        "placed {p} ({} signature(s){})",
                        a.signatures.len(),
                        if a.signers.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.signers.join(", "))
                        }
                    );
                    if let Some(n) = &a.note {
                        println!("  note: {n}");
                    }
                }
                (None, Some(r)) => println!("refused {}: {}: {}", a.source, r.code, r.message),
                (None, None) => {}
            }
        }
        for p in &problems {
            println!("skipped: {p}");
        }
        if !out.indexes_written.is_empty() {
            println!(
                "approvals/index.json rewritten for: {}",
                out.indexes_written.join(", ")
            );
        }
        if !out.job_indexes_written.is_empty() {
            println!(
                "jobs/index.json rewritten for: {}",
                out.job_indexes_written.join(", ")
            );
        }
        if out.approvals.is_empty() {
            println!("no signed approvals found");
        }
    }
    Ok(ExitCode::from(
        if out.refused() > 0 || !problems.is_empty() || out.approvals.is_empty() {
            1
        } else {
            0
        },
    ))
}

/// `drover fleet status TREE [--stale-after DURATION]`.
pub fn status(tree: &Path, stale_after: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let now = unix_now();
    let tree = Tree::open(tree).map_err(fail)?;
    let rows = status::rows(&tree, now, stale_after.as_secs() as i64).map_err(fail)?;
    if json {
        json_line(&rows);
    } else {
        let width = rows.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
        println!(
            "{:width$}  {:14}  {:9}  {:7}  {:20}  {:5}  {:8}  DETAIL",
            "HOST", "STATE", "PUBLISHED", "APPLIED", "LAST REPORT", "TRUST", "AGENT"
        );
        for r in &rows {
            println!(
                "{:width$}  {:14}  {:9}  {:7}  {:20}  {:5}  {:8}  {}",
                r.host,
                r.state.as_str(),
                revision(r.published_revision),
                format!(
                    "{}{}",
                    revision(r.revision_applied),
                    if r.desired_stale { "*" } else { "" }
                ),
                r.last_report_unix
                    .map(gate::clock::format_utc)
                    .unwrap_or_else(|| "-".into()),
                r.trust_version
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "-".into()),
                r.agent_version.clone().unwrap_or_else(|| "-".into()),
                r.detail.clone().unwrap_or_default()
            );
        }
        if rows.iter().any(|r| r.desired_stale) {
            println!("* the agent works from its last verified document (its source is failing)");
        }
    }
    let all_converged = rows.iter().all(|r| r.state == status::HostState::Converged);
    Ok(ExitCode::from(if all_converged { 0 } else { 2 }))
}
