//! The command line's verbs (everything `main.rs` dispatches to). Each returns the exit code it
//! documents; errors become exit code 1 with a one-line reason.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::approval::files;
use crate::approval::requests::Approvals;
use crate::approval::trust::Trust;
use crate::clock::unix_now;
use crate::desired::source::Source;
use crate::reconcile::engine::{Engine, EngineSettings};
use crate::reconcile::lanes::{BackoffPolicy, Lanes};
use crate::reconcile::pve::WaitPolicy;
use crate::service::config::Config;
use crate::service::daemon::{self, RunOptions, RunResult};
use crate::service::systemd::Systemd;
use crate::store::Store;

/// `drover check-config`: the file, the token secret, the trust document and the source
/// (a hub is asked for the document once).
pub async fn check_config(path: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let mut problems = Vec::new();
    // The secret and id exactly as `run` will read them.
    let (token_problems, token_warnings) = crate::service::preflight::check_token(&config);
    for w in &token_warnings {
        eprintln!("drover: warning: {w}");
    }
    problems.extend(token_problems.iter().map(ToString::to_string));
    const MAX_PEM: u64 = 1024 * 1024;
    let mut tls_ok = true;
    match daemon::tls_from_config(&config) {
        Err(e) => {
            tls_ok = false;
            problems.push(format!("{e:#}"))
        }
        Ok(proxmox_client::TlsTrust::CaFile(p)) => {
            if let Err(e) = crate::local_file::read_regular(&p, MAX_PEM) {
                tls_ok = false;
                problems.push(format!("[{}] proxmox.ca_file {e}", e.code()));
            }
        }
        Ok(proxmox_client::TlsTrust::NodeCertificate { paths, .. })
            if config.proxmox.node_cert_file.is_some() =>
        {
            for p in paths {
                if let Err(e) = crate::local_file::read_regular(&p, MAX_PEM) {
                    tls_ok = false;
                    problems.push(format!("[{}] proxmox.node_cert_file {e}", e.code()));
                }
            }
        }
        Ok(_) => {}
    }
    // Without --offline, PVE itself: the pin, the token, the privileges.
    let mut pve_checked = None;
    if !offline && tls_ok && token_problems.is_empty() {
        match crate::service::preflight::check_pve(&config).await {
            Ok(line) => pve_checked = Some(line),
            Err(found) => problems.extend(found.iter().map(ToString::to_string)),
        }
    }
    match crate::approval::trust::load_file(&config.trust.file) {
        // Not fatal for the agent (benign work continues) but worth saying.
        Trust::Invalid { message, .. } => {
            eprintln!("drover: warning: {message}; destructive steps will be blocked")
        }
        Trust::Valid(t) if t.fleet != config.fleet => eprintln!(
            "drover: warning: the trust document {} is for fleet {:?}, but fleet = {:?}: every approval would be refused (wrong_fleet)",
            config.trust.file.display(),
            t.fleet,
            config.fleet
        ),
        Trust::Valid(_) => {}
    }
    match &config.safety.storage {
        None => eprintln!(
            "drover: warning: [safety_storage_unset] [safety] storage is not set: destructive steps will be refused (no safety copy, no destruction)"
        ),
        Some(storage) if pve_checked.is_some() => {
            // The storage must exist here, be active and hold backups.
            let checked = match daemon::pve_from_config(&config, WaitPolicy::production()) {
                Ok(pve) => pve
                    .client
                    .storage_status(&config.host, storage)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|st| {
                        if !st.supports("backup") {
                            Err(format!("its content is {:?}, without `backup`", st.content))
                        } else if st.active == Some(false) {
                            Err("it is not active".to_string())
                        } else {
                            Ok(())
                        }
                    }),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = checked {
                eprintln!(
                    "drover: warning: [safety_storage_unusable] safety storage {storage:?}: {why}; destructive steps will be refused"
                );
            }
        }
        Some(_) => {}
    }
    match Source::from_config(&config) {
        Err(e) => problems.push(format!("source: {e}")),
        Ok(Source::Hub { .. }) if offline => {}
        Ok(source) => {
            let trust = match crate::approval::trust::effective_read_only(
                &config.trust.file,
                &config.state_dir,
            ) {
                Trust::Valid(t) => Some(t),
                Trust::Invalid { .. } => None,
            };
            if let Err(e) = source.fetch(None, trust.as_deref(), unix_now()).await {
                eprintln!("drover: warning: [{}] {e}", e.code());
            }
        }
    }
    for w in crate::service::leftovers::journal_warnings(&config).await {
        eprintln!("drover: warning: {w}");
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("drover: {p}");
        }
        anyhow::bail!(
            "config {}: {} problem(s) above would stop a start",
            path.display(),
            problems.len()
        );
    }
    crate::outln!(
        "config {} is valid: host {}, fleet {}",
        path.display(),
        config.host,
        config.fleet
    );
    if let Some(line) = pve_checked {
        crate::outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover run [--once]`.
pub async fn run(path: &Path, once: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let opts = RunOptions {
        once,
        progress: once,
        waits: WaitPolicy {
            poll_interval: config.proxmox.task_poll_interval,
        },
        ..RunOptions::default()
    };
    let result = daemon::run(config, opts, Systemd::from_env()).await?;
    Ok(match result {
        RunResult::Converged => ExitCode::SUCCESS,
        RunResult::Pending => ExitCode::from(2),
        RunResult::NoDocument => ExitCode::from(1),
    })
}

/// Builds an engine for one-shot commands (plan), without lanes running.
fn one_shot_engine(config: &Config) -> anyhow::Result<Engine> {
    let store = Store::open_read_only(&config.state_dir)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let pve = daemon::pve_from_config(config, WaitPolicy::production())?;
    let (_tx, rx) = watch::channel(false);
    let source = Source::from_config(config)?;
    let trust = crate::approval::trust::effective(&config.trust.file, &store);
    Ok(Engine::new(
        EngineSettings {
            host: config.host.clone(),
            fleet: config.fleet.clone(),
            step_deadline: std::time::Duration::from_secs(60),
        },
        pve,
        store,
        Approvals::new(&config.state_dir, Some(source.approvals_dir())),
        trust,
        Lanes::new(1, BackoffPolicy::default()),
        rx,
    ))
}

/// `drover plan`: 0 no changes, 2 changes, 1 error.
///
/// It previews the document the source has now (the file on disk, or the hub's newest), not
/// the one the running agent accepted: that is the question after an edit. When the agent
/// runs, it says which revision the agent has, so "No changes" is never mistaken for "the
/// agent will not change anything".
pub async fn plan(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let agent_revision = match crate::operator::control::client::call(
        &config.control_socket,
        "GET",
        "/v1/status",
        None,
    )
    .await
    {
        Ok((200, status)) => Some(status["desired"]["revision"].as_u64()),
        _ => None,
    };
    let engine = one_shot_engine(&config)?;
    let source = Source::from_config(&config)?;
    let trust = match engine.trust() {
        Trust::Valid(t) => Some(t),
        Trust::Invalid { .. } => None,
    };
    let origin;
    let doc = match source.fetch(None, trust.as_deref(), unix_now()).await {
        Ok(Some(f)) => {
            origin = f.origin;
            f.doc
        }
        Ok(None) => anyhow::bail!("the source answered 'not modified' to a first request"),
        Err(e) => {
            // What the daemon would do: plan from the last-known-good copy (benign only).
            let Some((rev, bytes)) = engine.store().last_known_good() else {
                return Err(anyhow::anyhow!(e).context("fetching the desired state"));
            };
            eprintln!(
                "drover: warning: [{}] {e}; planning from the journal's last-known-good revision {rev} (the daemon would hold destructive steps)",
                e.code()
            );
            origin = "the journal's last-known-good copy".into();
            crate::desired::parse(&bytes, "journal last-known-good copy")?
        }
    };
    let (plan, _) = engine
        .plan_host(&doc)
        .await
        .context("reading the host from PVE")?;
    let agent_line = match agent_revision {
        None => "the agent is not running here".to_string(),
        Some(None) => "the running agent has no desired state yet".to_string(),
        Some(Some(r)) if r == doc.revision => {
            format!("the running agent has the same revision ({r})")
        }
        Some(Some(r)) => format!(
            "the running agent has revision {r}; it takes revision {} on its next pass (drover reconcile: now)",
            doc.revision
        ),
    };
    if json {
        let mut v = plan.to_json();
        v["origin"] = serde_json::json!(origin);
        v["agent_revision"] = serde_json::json!(agent_revision.flatten());
        v["agent_running"] = serde_json::json!(agent_revision.is_some());
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let style = crate::operator::render::Style::for_stdout();
        crate::outln!(
            "{}",
            style.dim(&format!(
                "Comparing desired revision {} ({origin}) with the host as PVE reports it now; {agent_line}.",
                doc.revision
            ))
        );
        let approvals = crate::operator::render::ApprovalPath {
            pending_dir: engine.approvals().pending_dir.clone(),
            domain: trust
                .as_ref()
                .map(|t| t.domain.clone())
                .unwrap_or_else(|| "DOMAIN".into()),
            elsewhere: Some(match &source {
                Source::Dir(d) => format!(
                    "{}/ (the desired directory's approvals)",
                    d.approvals_dir().display()
                ),
                Source::Hub { .. } => format!(
                    "hosts/{}/approvals/ on the hub, listed in its index.json (drover fleet add-approvals)",
                    config.host
                ),
            }),
        };
        crate::out!("{}", plan.to_text_with(style, Some(&approvals)));
    }
    Ok(if plan.plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `drover journal check`: 0 healthy, 1 damaged (with a report and what to do).
pub fn journal_check(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let report = Store::check(state_dir);
    crate::out!("{report}");
    Ok(if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `drover journal move-aside`: 0 moved, 1 refused (e.g. the daemon holds the store).
pub fn journal_move_aside(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let moved = Store::move_aside(state_dir)?;
    crate::outln!(
        "moved the journal aside to {}; the next start begins a new store with a new state epoch (outstanding approvals must be signed again)",
        moved.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `drover journal [--in-flight]`.
pub fn journal_show(state_dir: &Path, in_flight: bool, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open_read_only(state_dir)
        .with_context(|| format!("opening the journal in {}", state_dir.display()))?;
    let rows = store.listing(in_flight, 200)?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        crate::outln!(
            "{}",
            if in_flight {
                "no step in flight"
            } else {
                "the journal holds no steps"
            }
        );
    } else {
        for r in rows {
            crate::outln!("{}", describe_record(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover trust`: the trust document in force, byte for byte (the journal's, which may be a
/// signed rotation newer than `/etc/drover/trust`), so the next rotation can start from it and
/// name its hash: `drover trust > current.txt && sha256sum current.txt`.
pub fn trust(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    // One snapshot for both answers: a rotation applied in between cannot mislabel them.
    let store = crate::approval::trust::open_read_only(&config.state_dir);
    let trust = match &store {
        Ok(store) => crate::approval::trust::effective(&config.trust.file, store),
        Err(t) => t.clone(),
    };
    let t = match trust {
        Trust::Valid(t) => t,
        Trust::Invalid { code, message } => {
            if json {
                crate::outln!("{}", serde_json::json!({"code": code, "message": message}));
            } else {
                eprintln!("drover: {code}: {message}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let record = store.ok().and_then(|s| s.trust_record().ok().flatten());
    let origin = match &record {
        Some(r) if r.sha256 == t.sha256() => r.origin.clone(),
        // The file differs from what the running agent uses: it takes the file at its next
        // start (and audits the replacement).
        Some(_) => "local_replacement_pending".to_string(),
        None => "file".to_string(),
    };
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "version": t.version,
                "fleet": t.fleet,
                "sha256": t.sha256(),
                "origin": origin,
                "file": config.trust.file,
                "document": t.text(),
            }))?
        );
    } else {
        eprintln!(
            "drover: trust document v{} ({origin}), sha256 {}",
            t.version,
            t.sha256()
        );
        crate::out!("{}", t.text());
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover journal --audit`: the most recent gate decisions, oldest first.
pub fn journal_audit(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open_read_only(state_dir)
        .with_context(|| format!("opening the journal in {}", state_dir.display()))?;
    let rows = store
        .journal()
        .audit_tail(200)
        .with_context(|| format!("reading the audit log in {}", state_dir.display()))?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        crate::outln!("the audit log is empty");
    } else {
        for r in rows {
            crate::outln!("{}", describe_audit(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One audit entry on one line: time, verdict, code, subject, signers and detail.
fn describe_audit(r: &journal::AuditEntry) -> String {
    let subject = match (r.vmid, r.step.as_deref()) {
        (Some(v), Some(step)) => format!("CT {v} {step}"),
        (Some(v), None) => format!("CT {v}"),
        (None, Some(step)) => step.to_string(),
        (None, None) => "-".to_string(),
    };
    let signers = if r.signers.is_empty() {
        String::new()
    } else {
        format!(" [{}]", r.signers.join(", "))
    };
    format!(
        "{}  {:<7} {:<30} {}{}: {}",
        rfc3339(r.time_ms),
        if r.allowed { "allowed" } else { "refused" },
        r.code,
        subject,
        signers,
        r.detail
    )
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `drover copies [VMID]`: the journal's safety-copy manifests (read-only snapshot, so it
/// works while the daemon runs).
pub fn copies(path: &Path, vmid: Option<u32>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let store = Store::open_read_only(&config.state_dir)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let copies: Vec<_> = store
        .copies()?
        .into_iter()
        .filter(|c| vmid.is_none_or(|v| c.vmid == v))
        .collect();
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&crate::operator::copies::render_json(&copies))?
        );
    } else {
        crate::out!("{}", crate::operator::copies::render_text(&copies));
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover approvals`.
pub fn approvals(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let source = Source::from_config(&config)?;
    let a = Approvals::new(&config.state_dir, Some(source.approvals_dir()));
    // A directory we may not read is not "nothing pending".
    if let Err(e) = std::fs::read_dir(&a.pending_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        anyhow::bail!(
            "reading pending approval requests in {}: {e} (run as root or as the service user)",
            a.pending_dir.display()
        );
    }
    let domain = match crate::approval::trust::load_file(&config.trust.file) {
        Trust::Valid(t) => t.domain.clone(),
        Trust::Invalid { .. } => "DOMAIN".to_string(),
    };
    let pending = a.pending();
    if json {
        let rows: Vec<serde_json::Value> = pending
            .iter()
            .map(|(p, text)| {
                serde_json::json!({
                    "file": p,
                    "text": text,
                    "loses": Approvals::words(p),
                    "sign": Approvals::sign_command(&domain, p),
                })
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else if pending.is_empty() {
        crate::outln!("no approval requests are pending");
    } else {
        for (p, text) in &pending {
            let words = Approvals::words(p)
                .map(|w| format!("what this step loses (not part of the signed text):\n{w}\n\n"))
                .unwrap_or_default();
            crate::outln!(
                "== {}\n{words}{text}\nsign with:\n  {}\nthen submit with:\n  drover approve {} {}.sig\n",
                p.display(),
                Approvals::sign_command(&domain, p),
                p.display(),
                p.display()
            );
        }
    }
    Ok(if pending.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `drover approve FILE SIG...`: submits through the control socket when the daemon runs,
/// otherwise copies into the inbox, where the agent picks it up on its next start.
pub async fn approve(
    path: &Path,
    file: &Path,
    signatures: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let payload = files::read_capped(file, files::MAX_PAYLOAD_BYTES)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let mut sigs = Vec::new();
    for s in signatures {
        let b = files::read_capped(s, files::MAX_SIGNATURE_BYTES)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", s.display()))?;
        sigs.push(String::from_utf8_lossy(&b).into_owned());
    }
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("approval.txt")
        .to_string();
    let body = serde_json::json!({
        "name": name,
        "payload": String::from_utf8_lossy(&payload),
        "signatures": sigs,
    });
    match crate::operator::control::client::call(
        &config.control_socket,
        "POST",
        "/v1/approvals",
        Some(body),
    )
    .await
    {
        Ok((200, answer)) => {
            let rotated = &answer["trust_version"];
            if json {
                let mut out = serde_json::json!({"accepted": true, "via": "socket"});
                if rotated.is_u64() {
                    out["trust_version"] = rotated.clone();
                }
                crate::outln!("{out}");
            } else if rotated.is_u64() {
                crate::outln!(
                    "trust rotation accepted; the running agent now uses trust document v{}",
                    s_or(rotated)
                );
            } else {
                if gate::is_job_document(&payload) {
                    crate::outln!(
                        "job submitted to the running agent; `drover jobs` shows how it goes"
                    );
                } else {
                    crate::outln!("approval submitted to the running agent");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok((_, answer)) => {
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"accepted": false, "code": answer["code"], "message": answer["message"]})
                );
            } else {
                crate::outln!("{}: {}", s_or(&answer["code"]), s_or(&answer["message"]));
            }
            Ok(ExitCode::from(1))
        }
        Err(crate::operator::control::client::ControlError::NotRunning(_)) => {
            let approvals = config.state_dir.join("approvals");
            let inbox = approvals.join("inbox");
            let target = files::copy_into_inbox(&inbox, file, signatures)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            files::give_to_state_owner(&config.state_dir, &[&approvals, &inbox]);
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"accepted": true, "via": "inbox", "path": target})
                );
            } else {
                crate::outln!(
                    "the agent is not running; approval placed in its inbox: {}",
                    target.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

/// `drover verify-approval FILE SIG...`: checks signatures, trust and payload grammar offline
/// (no nonce is consumed and no step is bound): prints `ok` or the gate's code.
pub fn verify_approval(
    path: &Path,
    file: &Path,
    signatures: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let trust =
        match crate::approval::trust::effective_read_only(&config.trust.file, &config.state_dir) {
            Trust::Valid(t) => t,
            Trust::Invalid { code, message } => {
                if json {
                    crate::outln!(
                        "{}",
                        serde_json::json!({"valid": false, "code": code, "message": message})
                    );
                } else {
                    crate::outln!("{code}: {message}");
                }
                return Ok(ExitCode::from(1));
            }
        };
    let payload = files::read_capped(file, files::MAX_PAYLOAD_BYTES)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let mut sigs = Vec::new();
    for s in signatures {
        sigs.push(
            files::read_capped(s, files::MAX_SIGNATURE_BYTES)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", s.display()))?,
        );
    }
    let sig_refs: Vec<&[u8]> = sigs.iter().map(Vec::as_slice).collect();
    if crate::approval::files::is_trust_document(&payload) {
        // A trust rotation: checked against the document in force (the journal's, when a
        // signed rotation already moved past the file).
        return Ok(
            match gate::verify_rotation(
                &trust,
                &payload,
                &sig_refs,
                unix_now(),
                // Offline: the running agent checks its clock again when it applies it.
                None,
            ) {
                Ok(next) => {
                    if json {
                        crate::outln!(
                            "{}",
                            serde_json::json!({"valid": true, "rotation": {"from": trust.version, "to": next.version}})
                        );
                    } else {
                        crate::outln!(
                            "ok: a valid rotation of trust document v{} to v{}",
                            trust.version,
                            next.version
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(r) => {
                    if json {
                        crate::outln!(
                            "{}",
                            serde_json::json!({"valid": false, "code": r.code.as_str(), "message": r.message})
                        );
                    } else {
                        crate::outln!("{}: {}", r.code.as_str(), r.message);
                    }
                    ExitCode::from(1)
                }
            },
        );
    }
    // Would the running agent accept it now? Its state (journal, pending requests) answers
    // what signatures cannot: already used, no longer matching the guest, no such step.
    // A signed job is checked the same way offline; the lane binds it to the host's state.
    let verdict = if gate::is_job_document(&payload) {
        gate::verify_job_offline(&trust, &payload, &sig_refs, unix_now())
    } else {
        gate::verify_offline(&trust, &payload, &sig_refs, unix_now())
    };
    if let Ok(signers) = &verdict
        && let Ok(p) = gate::ApprovalPayload::parse(&payload)
    {
        let names: Vec<&str> = signers.iter().map(|s| s.principal.as_str()).collect();
        let source = Source::from_config(&config)?;
        let pending = Approvals::new(&config.state_dir, Some(source.approvals_dir())).pending();
        let name = file.file_name().and_then(|n| n.to_str());
        let consumed = Store::open_read_only(&config.state_dir)
            .map_err(|e| e.to_string())
            .and_then(|s| s.nonce_consumed(&p.nonce).map_err(|e| e.to_string()));
        let refusal = match &consumed {
            Ok(c) => crate::approval::standing::replay(&p, *c),
            Err(_) => None,
        }
        .or_else(|| crate::approval::standing::binding(&p, name, &pending));
        if let Some(r) = refusal {
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"valid": false, "code": r.code, "message": r.message, "signers": names})
                );
            } else {
                crate::outln!("{}: {} (signed by {})", r.code, r.message, names.join(", "));
            }
            return Ok(ExitCode::from(1));
        }
        let request = crate::approval::standing::request_for(&p, name, &pending)
            .map(|(path, _)| path.display().to_string())
            .unwrap_or_default();
        let checked = match &consumed {
            Ok(_) => format!("matches the pending request {request} and its nonce is unused"),
            Err(e) => format!(
                "matches the pending request {request}; NOT checked whether it was already used (the journal is unreadable: {e})"
            ),
        };
        if json {
            crate::outln!(
                "{}",
                serde_json::json!({"valid": true, "signers": names, "request": request, "nonce_checked": consumed.is_ok(), "checked": checked})
            );
        } else {
            crate::outln!("ok: signed by {}; {checked}", names.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    match verdict {
        Ok(signers) if json => {
            let names: Vec<&str> = signers.iter().map(|s| s.principal.as_str()).collect();
            crate::outln!("{}", serde_json::json!({"valid": true, "signers": names}));
            Ok(ExitCode::SUCCESS)
        }
        Err(r) if json => {
            let per: Vec<serde_json::Value> = r
                .per_signature
                .iter()
                .map(|p| serde_json::json!({"signature": p.index + 1, "code": p.code.as_str(), "message": p.message}))
                .collect();
            crate::outln!(
                "{}",
                serde_json::json!({"valid": false, "code": r.code.as_str(), "message": r.message, "per_signature": per})
            );
            Ok(ExitCode::from(1))
        }
        Ok(signers) => {
            crate::outln!(
                "ok: signed by {}",
                signers
                    .iter()
                    .map(|s| s.principal.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            crate::outln!("{}: {}", r.code.as_str(), r.message);
            for p in &r.per_signature {
                crate::outln!(
                    "  signature {}: {}: {}",
                    p.index + 1,
                    p.code.as_str(),
                    p.message
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// One journal record on one line: id, time, guest, step, phase and outcome.
fn describe_record(r: &journal::StepRecord) -> String {
    let when = rfc3339(r.intent_at_ms);
    let phase = match &r.phase {
        journal::Phase::Intent => "intent (no task yet)".to_string(),
        journal::Phase::Submitted { upid } => format!("running {upid}"),
        journal::Phase::Done { outcome, .. } => match outcome {
            journal::Outcome::Ok => "ok".to_string(),
            journal::Outcome::Warnings(n) => format!("ok with {n} warnings"),
            journal::Outcome::Failed(m) => format!("failed: {m}"),
            journal::Outcome::Abandoned(m) => format!("abandoned: {m}"),
        },
    };
    let class = match &r.step.class {
        journal::StepClass::Benign => "benign".to_string(),
        journal::StepClass::Destructive { .. } => match &r.step.approval_sha256 {
            Some(h) => format!("destructive, approved {}", &h[..h.len().min(12)]),
            None => "destructive".to_string(),
        },
    };
    format!(
        "#{:<6} {when}  CT {:<6} {:<12} [{class}]  {phase}",
        r.id, r.step.vmid, r.step.kind
    )
}

/// `drover status`: asks the daemon over the control socket.
pub async fn status(path: &Path, json: bool, vmid: Option<u32>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let (code, mut body) =
        crate::operator::control::client::call(&config.control_socket, "GET", "/v1/status", None)
            .await?;
    if code != 200 {
        anyhow::bail!("the daemon refused: {body}");
    }
    // One guest: the same document with only its line (and the exit code for it alone).
    if let Some(vmid) = vmid {
        let one: Vec<serde_json::Value> = body["guests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["vmid"] == vmid)
            .cloned()
            .collect();
        if one.is_empty() {
            anyhow::bail!(
                "[unknown_guest] CT {vmid} is not in this host's desired state (drover status lists the managed guests)"
            );
        }
        body["guests"] = serde_json::Value::Array(one);
    }
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        crate::out!("{}", status_table(&body));
    }
    let all_converged = body["guests"]
        .as_array()
        .is_some_and(|g| g.iter().all(|g| g["state"] == "converged"));
    Ok(if all_converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Rows as columns padded to their widest cell (two spaces apart; the last column is not
/// padded), so every table lines up whatever the names and messages are.
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[i] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `flux get`-like table.
pub fn status_table(body: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Every value may carry text from the hub or an operator: control characters escaped.
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(x) => crate::output::escape_controls(x),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "VMID".to_string(),
        "NAME".into(),
        "STATE".into(),
        "LAST STEP".into(),
        "RESULT".into(),
        "PENDING APPROVAL".into(),
        "MESSAGE".into(),
    ]];
    for g in body["guests"].as_array().into_iter().flatten() {
        // A verify window (`reconcile::verify`): "verify settling net0: ..."; an open one first.
        let v = &g["verify"];
        let verify = (!v.is_null()).then(|| {
            let keys: Vec<String> = v["keys"].as_array().into_iter().flatten().map(s).collect();
            format!(
                "verify {} {}: {}",
                s(&v["phase"]),
                keys.join(","),
                s(&v["message"])
            )
        });
        let open = !v.is_null() && !v["deadline_unix"].is_null();
        let message = if !g["last_error"].is_null() {
            s(&g["last_error"])
        } else if let Some(line) = verify.clone().filter(|_| open) {
            line
        } else {
            g["notes"]
                .as_array()
                .and_then(|n| n.first())
                .map(s)
                .or(verify)
                .unwrap_or_default()
        };
        rows.push([
            s(&g["vmid"]),
            s(&g["name"]),
            s(&g["state"]),
            s(&g["last_step"]),
            s(&g["last_result"]),
            s(&g["pending_approval"]),
            message,
        ]);
    }
    out.push_str(&aligned(&rows));
    let d = &body["desired"];
    let _ = writeln!(
        out,
        "\ndesired revision {} from {}{}; last pass {}; lanes: {} queued, {} active",
        s(&d["revision"]),
        s(&d["origin"]),
        if d["stale"] == true {
            " (STALE: source unavailable, destructive steps held)"
        } else {
            ""
        },
        body["last_pass_unix"]
            .as_i64()
            .map(|t| format!("{} s ago", unix_now() - t))
            .unwrap_or_else(|| "never".into()),
        s(&body["lanes"]["queued"]),
        s(&body["lanes"]["active"]),
    );
    let src = &body["source"];
    if src["kind"].is_string() {
        let ago = |v: &serde_json::Value| {
            v.as_i64()
                .map(|t| format!("{} s ago", (unix_now() - t).max(0)))
                .unwrap_or_else(|| "never".into())
        };
        let _ = writeln!(
            out,
            "source {} {}: last success {}{}",
            s(&src["kind"]),
            s(&src["location"]),
            ago(&src["last_success_unix"]),
            if src["error_code"].is_string() {
                format!(
                    "; FAILING [{}]: {}",
                    s(&src["error_code"]),
                    s(&src["error"])
                )
            } else {
                String::new()
            }
        );
    }
    // Signed jobs that are not over yet (`drover jobs` lists them all).
    for j in body["jobs"].as_array().into_iter().flatten() {
        let state = s(&j["state"]);
        if matches!(state.as_str(), "pending_signature" | "queued" | "running") {
            let _ = writeln!(
                out,
                "job {} of CT {}: {state}{}",
                s(&j["kind"]),
                s(&j["vmid"]),
                if state == "running" {
                    format!(" ({})", s(&j["phase"]))
                } else {
                    String::new()
                }
            );
        }
    }
    if body["trust"]["valid"] == false {
        let _ = writeln!(
            out,
            "trust document INVALID: {}",
            s(&body["trust"]["message"])
        );
    } else if body["trust"]["version"].is_u64() {
        let origin = match body["trust"]["origin"].as_str() {
            Some("rotation") => " (signed rotation)",
            Some("local_replacement") => " (replaced locally)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "trust document v{}{origin}, sha256 {}",
            s(&body["trust"]["version"]),
            s(&body["trust"]["sha256"]).get(..12).unwrap_or("?")
        );
    }
    match body["safety"]["storage"].as_str() {
        Some(storage) => {
            let counts: Vec<String> = body["safety"]["copies"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{} {k}", s(v)))
                .collect();
            let _ = writeln!(
                out,
                "safety copies on {storage}: {}",
                if counts.is_empty() {
                    "none yet".to_string()
                } else {
                    counts.join(", ")
                }
            );
            for c in body["safety"]["live"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  CT {} {} {} {}",
                    s(&c["vmid"]),
                    s(&c["kind"]),
                    s(&c["state"]),
                    c["volid"].as_str().unwrap_or("-")
                );
            }
        }
        None if body["safety"].is_object() => {
            let _ = writeln!(
                out,
                "safety copies: [safety] storage not set; destructive steps are refused (safety_storage_unset)"
            );
        }
        None => {}
    }
    for sus in body["suspensions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "suspended: {} ({})",
            if sus["vmid"].is_null() {
                "whole host".to_string()
            } else {
                format!("CT {}", s(&sus["vmid"]))
            },
            s(&sus["reason"])
        );
    }
    out
}

/// `drover reconcile|suspend|resume`: one POST to the daemon.
pub async fn control(
    path: &Path,
    route: &str,
    body: serde_json::Value,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let (code, answer) =
        crate::operator::control::client::call(&config.control_socket, "POST", route, Some(body))
            .await?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&answer)?);
    }
    if code != 200 {
        if !json {
            crate::outln!("{}: {}", s_or(&answer["code"]), s_or(&answer["message"]));
        }
        return Ok(ExitCode::from(1));
    }
    if !json {
        let target = |v: &serde_json::Value| match v.as_u64() {
            Some(n) => format!("CT {n}"),
            None => "every managed guest".to_string(),
        };
        let host_or = |v: &serde_json::Value| match v.as_u64() {
            Some(n) => format!("CT {n}"),
            None => "the whole host".to_string(),
        };
        let line = match route {
            "/v1/reconcile" => format!("reconcile requested for {}", target(&answer["triggered"])),
            "/v1/suspend" => format!(
                "{} suspended: {}",
                host_or(&answer["suspended"]),
                s_or(&answer["reason"])
            ),
            "/v1/resume" if answer["was_suspended"] == false => {
                format!("{} was not suspended", host_or(&answer["resumed"]))
            }
            "/v1/resume" => format!("{} resumed", host_or(&answer["resumed"])),
            _ => answer.to_string(),
        };
        crate::outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as one line of text, control characters escaped (it may be an operator's
/// reason or a daemon message quoting hub text).
fn s_or(v: &serde_json::Value) -> String {
    v.as_str()
        .map(crate::output::escape_controls)
        .unwrap_or_else(|| v.to_string())
}
