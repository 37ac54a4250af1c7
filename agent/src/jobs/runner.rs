//! Running signed jobs on the guest's lane, in journaled phases.
//!
//! A job is accepted on its guest's lane (nothing else of that guest runs meanwhile): the
//! agent renders the job it would run now ([`plan_job`]: pre-flight from the current config),
//! the gate verifies the signed text against exactly that and consumes the nonce, and the
//! journal records the job before anything is sent to PVE. From then on every phase is
//! durable before its PVE call, and every task's UPID is durable before the agent waits:
//!
//! ```text
//! accepted → preflight_ok → quiescing(upid) → quiesced → copying(upid) → copied → rechecked
//!   → calling(upid) → task_done → verified → starting(upid) → done
//!                   ↘ (restore failed or did not verify) undoing(upid) → starting → failed
//! ```
//!
//! Recovery is the same code: a restart finds the record at its phase and continues. A phase
//! with a UPID re-attaches to the task; a phase without one (the answer was lost) looks for
//! the task its call started, and when there is none only the benign calls (shutdown, the
//! safety copy, start) are sent again. The job's own PVE call and an undo are never sent
//! twice: `call_lost` / `needs_operator` instead.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gate::{JobKind, JobPayload, Policy};
use proxmox_client::{
    ContentFilter, Error as PveError, GuestStatus, RestoreLxc, ShutdownOptions, TaskOutcome, Upid,
    VzdumpRequest, VzdumpStarted, WaitOptions,
};
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span, warn};

use crate::approval::files::Candidate;
use crate::approval::trust::Trust;
use crate::clock::unix_now;
use crate::jobs::inbox::JobDirs;
use crate::jobs::plan::{JobAsk, config_lines, plan_job};
use crate::jobs::refusal::JobRefusal;
use crate::reconcile::engine::Engine;
use crate::reconcile::job_slot::GuestJobs;
use crate::reconcile::lanes::LaneOutcome;
use crate::safety::CopyManifest;
use crate::store::{Decision, JobEnd, JobRecord};

/// Runs the signed jobs of one agent (installed into the engine as its [`GuestJobs`]).
pub struct JobRunner {
    engine: Engine,
    pub dirs: JobDirs,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The journal id of a refused job (by content: a refused text has no spent nonce).
fn refused_id(payload: &[u8]) -> String {
    format!("refused-{}", &sha256_hex(payload)[..32])
}

/// What one phase decided.
enum Next {
    Phase(&'static str),
    End(JobEnd),
    Wait(LaneOutcome),
}

/// Why a task phase did not produce a task outcome.
enum Stop {
    Wait(LaneOutcome),
    /// No UPID journaled and PVE shows no task of ours: the call may never have arrived.
    Lost,
    Call(CallError),
}

/// A call's failure: PVE's answer, or what the agent found wrong with it.
#[derive(Debug)]
enum CallError {
    Pve(PveError),
    Other(String),
}

impl CallError {
    fn already_in_state(&self) -> Option<proxmox_client::AlreadyInState> {
        match self {
            CallError::Pve(e) => e.already_in_state(),
            CallError::Other(_) => None,
        }
    }
    fn may_have_been_processed(&self) -> bool {
        matches!(self, CallError::Pve(e) if e.may_have_been_processed())
    }
}

impl From<PveError> for CallError {
    fn from(e: PveError) -> Self {
        CallError::Pve(e)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Pve(e) => write!(f, "{e}"),
            CallError::Other(m) => f.write_str(m),
        }
    }
}

/// The PVE worker type of a job kind's own call.
fn worker_of(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Snapshot => "vzsnapshot",
        JobKind::DeleteSnapshot => "vzdelsnapshot",
        JobKind::RollbackSnapshot => "vzrollback",
        JobKind::Backup => "vzdump",
        JobKind::RestoreBackup => "vzrestore",
        JobKind::Reboot => "vzreboot",
    }
}

fn deadline_of(worker: &str) -> Duration {
    match worker {
        "vzdump" | "vzrestore" => Duration::from_secs(3 * 3600),
        _ => Duration::from_secs(15 * 60),
    }
}

/// Whether a job stops a running guest first (and starts it again at the end): a restore
/// cannot overwrite a running CT, and a rollback kills it, so it is shut down cleanly first.
fn quiesces(kind: JobKind) -> bool {
    matches!(kind, JobKind::RestoreBackup | JobKind::RollbackSnapshot)
}

impl JobRunner {
    /// Builds the runner and installs it into `engine`'s lanes.
    pub fn install(engine: &Engine, state_dir: &Path) -> Arc<JobRunner> {
        let runner = Arc::new(JobRunner {
            engine: engine.clone(),
            dirs: JobDirs::new(state_dir, engine.approvals().candidate_dirs()),
        });
        let hook: Arc<dyn crate::reconcile::job_slot::GuestJobs> = runner.clone();
        engine.set_jobs(&hook);
        runner
    }

    /// Asks the lanes to look at every guest with a running job or a signed job waiting.
    pub async fn request_lanes(&self) {
        let mut vmids: std::collections::BTreeSet<u32> = self
            .engine
            .store()
            .jobs()
            .unwrap_or_default()
            .into_iter()
            .filter(|j| j.end.is_none())
            .map(|j| j.vmid)
            .collect();
        let dirs = self.dirs.clone();
        let signed = tokio::task::spawn_blocking(move || dirs.signed())
            .await
            .unwrap_or_default();
        vmids.extend(
            signed
                .iter()
                .filter_map(|c| JobPayload::parse(&c.payload).ok())
                .map(|p| p.vmid),
        );
        for v in vmids {
            self.engine.lanes().request(v);
        }
    }

    async fn turn_for(&self, vmid: u32) -> Option<LaneOutcome> {
        let store = self.engine.store();
        let active = match store.active_job(vmid) {
            Ok(a) => a,
            Err(e) => return Some(LaneOutcome::Transient(format!("reading the jobs: {e}"))),
        };
        let dirs = self.dirs.clone();
        let signed = tokio::task::spawn_blocking(move || dirs.signed())
            .await
            .unwrap_or_default();
        let mut mine: Vec<(Candidate, Option<JobPayload>)> = Vec::new();
        for c in signed {
            match JobPayload::parse(&c.payload) {
                Ok(p) if p.vmid == vmid => mine.push((c, Some(p))),
                Ok(_) => {}
                Err(r) => {
                    // Cannot say which guest it is for: refused where it is found.
                    if store.job(&refused_id(&c.payload)).ok().flatten().is_none() {
                        self.refuse(&c, None, JobRefusal::from(r));
                    }
                }
            }
        }
        // Known texts: refused before, or this very job (its file not retired yet).
        let mut fresh = Vec::new();
        for (c, p) in mine {
            let Some(p) = p else { continue };
            if store.job(&refused_id(&c.payload)).ok().flatten().is_some() {
                continue;
            }
            match store.job(&p.nonce) {
                // The hub keeps listing a job after it ran; its mirror is not a resubmission.
                Ok(Some(rec))
                    if rec.payload_sha256 == sha256_hex(&c.payload)
                        && self.dirs.is_mirror(&c.payload_path) => {}
                Ok(Some(rec)) if rec.payload_sha256 == sha256_hex(&c.payload) => {
                    if rec.end.is_none() {
                        self.dirs.retire(&c, &self.dirs.used, Some(&p.nonce));
                    } else {
                        self.refuse(
                            &c,
                            Some(&p),
                            JobRefusal::new(
                                "replayed",
                                format!("job {} already ran; a job runs once", p.nonce),
                            ),
                        );
                    }
                    continue;
                }
                _ => fresh.push((c, p)),
            }
        }
        if let Some(job) = active {
            for (c, p) in fresh.iter().filter(|(_, p)| p.nonce != job.id) {
                self.refuse(
                    c,
                    Some(p),
                    JobRefusal::new(
                        "job_in_progress",
                        format!(
                            "CT {vmid} has job {} ({}) in progress; submit this one again when it has ended",
                            job.id, job.kind
                        ),
                    ),
                );
            }
            return Some(self.advance(job).await);
        }
        let (c, p) = fresh.into_iter().next()?;
        Some(self.accept(c, p).await)
    }

    /// Audits and journals a refusal, and moves the files to `jobs/refused/`.
    fn refuse(&self, c: &Candidate, p: Option<&JobPayload>, r: JobRefusal) {
        let vmid = p.map(|p| p.vmid).unwrap_or(0);
        warn!(
            vmid,
            code = r.code.as_str(),
            path = %c.payload_path.display(),
            "job refused: {}",
            r.message
        );
        let d = Decision {
            vmid: p.filter(|_| r.authenticated).map(|p| p.vmid),
            op: p
                .map(|p| format!("job:{}", p.kind))
                .unwrap_or_else(|| "job".into()),
            allowed: false,
            code: r.code.clone(),
            message: r.message.clone(),
            signers: Vec::new(),
            authenticated: r.authenticated,
            source: c.payload_path.clone(),
        };
        self.engine.metrics().gate_decision(&d.code);
        self.engine
            .metrics()
            .job_ended(p.map(|p| p.kind.as_str()).unwrap_or("unknown"), "refused");
        self.engine.store().audit(&d);
        let rec = JobRecord {
            id: refused_id(&c.payload),
            vmid,
            kind: p.map(|p| p.kind.as_str().to_string()).unwrap_or_default(),
            payload: String::from_utf8_lossy(&c.payload).into_owned(),
            payload_sha256: sha256_hex(&c.payload),
            signers: Vec::new(),
            phase: "refused".into(),
            upid: None,
            phase_at: unix_now(),
            facts: Default::default(),
            history: vec![("refused".into(), now_ms(), r.message.clone())],
            end: Some(JobEnd::Failed {
                code: r.code.clone(),
                message: r.message.clone(),
            }),
            accepted_at_ms: now_ms(),
        };
        if let Err(e) = self.engine.store().put_job(&rec) {
            warn!("journaling the refused job: {e}");
        }
        // Its request is of no use any more either: a new one must be rendered.
        self.dirs
            .retire(c, &self.dirs.refused, p.map(|p| p.nonce.as_str()));
    }

    async fn accept(&self, c: Candidate, p: JobPayload) -> LaneOutcome {
        let vmid = p.vmid;
        let trust = match self.engine.trust() {
            Trust::Valid(t) => t,
            Trust::Invalid { code, message } => {
                self.engine.status().set_blocked(vmid, code, &message);
                return LaneOutcome::Waiting;
            }
        };
        let ask = JobAsk::from_payload(&p);
        let (planned, facts) =
            match plan_job(self.engine.pve(), self.engine.safety().as_ref(), &ask).await {
                Ok(x) => x,
                Err(r) if r.code == "pve_unavailable" => {
                    return LaneOutcome::Transient(r.message);
                }
                Err(r) => {
                    self.refuse(&c, Some(&p), r);
                    return LaneOutcome::Progressed;
                }
            };
        let ctx = self.engine.gate_context(&trust);
        let sigs: Vec<&[u8]> = c.signatures.iter().map(|(_, b)| b.as_slice()).collect();
        let verdict = gate::verify_job(
            &Policy::default(),
            &ctx,
            &trust,
            &planned,
            &c.payload,
            &sigs,
            unix_now(),
            self.engine.store(),
        );
        let approved = match verdict {
            Ok(a) => a,
            Err(r) if r.code == gate::RejectionCode::TrustStoreInvalid => {
                self.engine
                    .status()
                    .set_blocked(vmid, r.code.as_str(), &r.message);
                return LaneOutcome::Waiting;
            }
            Err(r) => {
                self.refuse(&c, Some(&p), JobRefusal::from(r));
                return LaneOutcome::Progressed;
            }
        };
        let signers: Vec<String> = approved
            .signers
            .iter()
            .map(|s| format!("{} {}", s.principal, s.fingerprint))
            .collect();
        self.engine.metrics().gate_decision("job_accepted");
        self.engine.store().audit(&Decision {
            vmid: Some(vmid),
            op: format!("job:{}", p.kind),
            allowed: true,
            code: "job_accepted".into(),
            message: format!(
                "job {} accepted (payload sha256 {})",
                p.nonce, approved.payload_sha256
            ),
            signers: signers.clone(),
            authenticated: true,
            source: c.payload_path.clone(),
        });
        let mut rec = JobRecord {
            id: p.nonce.clone(),
            vmid,
            kind: p.kind.as_str().to_string(),
            payload: String::from_utf8_lossy(&c.payload).into_owned(),
            payload_sha256: approved.payload_sha256.clone(),
            signers,
            phase: "accepted".into(),
            upid: None,
            phase_at: unix_now(),
            facts: Default::default(),
            history: vec![("accepted".into(), now_ms(), String::new())],
            end: None,
            accepted_at_ms: now_ms(),
        };
        rec.facts
            .insert("was_running".into(), (facts.running as u8).to_string());
        rec.facts
            .insert("existed".into(), (facts.exists as u8).to_string());
        if let Some(a) = facts.archive_config {
            rec.facts.insert("archive_config".into(), a);
        }
        if let Err(e) = self.engine.store().put_job(&rec) {
            // The nonce is spent and nothing ran: the operator signs the job again.
            warn!(
                vmid,
                "journaling the accepted job failed; nothing was run: {e}"
            );
            self.dirs.retire(&c, &self.dirs.refused, Some(&p.nonce));
            return LaneOutcome::Transient(format!("journaling the job: {e}"));
        }
        info!(vmid, job = %p.kind, id = %p.nonce, "signed job accepted");
        self.dirs.retire(&c, &self.dirs.used, Some(&p.nonce));
        self.advance(rec).await
    }

    fn save(&self, rec: &mut JobRecord, phase: &str, detail: &str) -> Result<(), LaneOutcome> {
        rec.phase = phase.to_string();
        rec.history
            .push((phase.to_string(), now_ms(), detail.to_string()));
        self.engine
            .store()
            .put_job(rec)
            .map_err(|e| LaneOutcome::Transient(format!("journaling job phase {phase}: {e}")))
    }

    /// Runs the job from its journaled phase until it ends or has to wait.
    async fn advance(&self, mut rec: JobRecord) -> LaneOutcome {
        let span = info_span!(
            "job",
            vmid = rec.vmid,
            job = rec.kind.as_str(),
            id = rec.id.as_str()
        );
        async move {
            let Ok(p) = JobPayload::parse(rec.payload.as_bytes()) else {
                // Only the gate's own accepted bytes are journaled; a record that no longer
                // parses is damage, never guessed at.
                let end = JobEnd::Failed {
                    code: "needs_operator".into(),
                    message: "the journaled job text no longer parses; nothing more is done".into(),
                };
                return self.finish(&mut rec, end);
            };
            loop {
                if self.engine.is_shutting_down() {
                    return LaneOutcome::Waiting;
                }
                self.engine
                    .status()
                    .set_running(rec.vmid, &format!("job {} ({})", rec.kind, rec.phase));
                let next = self.phase(&mut rec, &p).await;
                match next {
                    Next::Phase(ph) => {
                        // A new phase has no task yet (a task phase journals its own).
                        rec.upid = None;
                        if let Err(o) = self.save(&mut rec, ph, "") {
                            return o;
                        }
                    }
                    Next::End(end) => return self.finish(&mut rec, end),
                    Next::Wait(o) => return o,
                }
            }
        }
        .instrument(span)
        .await
    }

    fn finish(&self, rec: &mut JobRecord, end: JobEnd) -> LaneOutcome {
        let (label, detail) = match &end {
            JobEnd::Done { detail } => ("done", detail.clone()),
            JobEnd::Failed { code, message } => ("failed", format!("{code}: {message}")),
        };
        rec.end = Some(end.clone());
        rec.upid = None;
        if let Err(o) = self.save(rec, label, &detail) {
            return o;
        }
        self.engine.metrics().job_ended(&rec.kind, label);
        // The copy stays protected for its grace period from now on.
        if let (Some(safety), Some(id)) = (self.engine.safety(), rec.facts.get("copy_id"))
            && let Err(e) = safety.step_done(id, now_ms())
        {
            warn!("marking the safety copy's job done: {e}");
        }
        match &end {
            JobEnd::Done { .. } => info!("job done: {detail}"),
            JobEnd::Failed { .. } => warn!("job failed: {detail}"),
        }
        let hold = JobPayload::parse(rec.payload.as_bytes())
            .is_ok_and(|p| p.binds.get("hold").map(String::as_str) == Some("1"));
        if hold && matches!(end, JobEnd::Done { .. }) {
            let reason = format!(
                "held after job {} ({}): the desired state leaves it as the job left it; `drover resume {}` hands it back",
                rec.id, rec.kind, rec.vmid
            );
            if let Err(e) = self.engine.store().suspend(Some(rec.vmid), &reason) {
                warn!("holding the guest after the job: {e}");
            }
        }
        self.engine
            .status()
            .set_state(rec.vmid, crate::reconcile::board::GuestState::Pending);
        LaneOutcome::Progressed
    }

    /// Ends the job with `code` once the guest runs again if it was running (a failure after
    /// the quiesce must not leave it stopped).
    fn fail_after_quiesce(&self, rec: &mut JobRecord, code: &str, message: String) -> Next {
        rec.facts.insert("end_code".into(), code.to_string());
        rec.facts.insert("end_message".into(), message.clone());
        if rec.facts.get("stopped_by_job").map(String::as_str) == Some("1") {
            Next::Phase("starting")
        } else {
            Next::End(JobEnd::Failed {
                code: code.to_string(),
                message,
            })
        }
    }

    async fn phase(&self, rec: &mut JobRecord, p: &JobPayload) -> Next {
        let pve = self.engine.pve();
        let (node, vmid) = (pve.node.clone(), rec.vmid);
        let client = pve.client.clone();
        let was_running = rec.facts.get("was_running").map(String::as_str) == Some("1");
        match rec.phase.as_str() {
            "accepted" => {
                // Pre-flight again from the current config: nothing has been done yet, so a
                // change since acceptance refuses cleanly.
                match plan_job(pve, self.engine.safety().as_ref(), &JobAsk::from_payload(p)).await {
                    Ok((planned, _)) if planned == p.planned() => Next::Phase("preflight_ok"),
                    Ok(_) => Next::End(JobEnd::Failed {
                        code: "stale_state".into(),
                        message: format!(
                            "CT {vmid} changed between the job's acceptance and its start; nothing was done"
                        ),
                    }),
                    Err(r) if r.code == "pve_unavailable" => {
                        Next::Wait(LaneOutcome::Transient(r.message))
                    }
                    Err(r) => Next::End(JobEnd::Failed {
                        code: r.code,
                        message: format!("{}; nothing was done", r.message),
                    }),
                }
            }
            "preflight_ok" | "quiescing" => {
                if !(quiesces(p.kind) && was_running) {
                    return Next::Phase("quiesced");
                }
                rec.facts.insert("stopped_by_job".into(), "1".into());
                let c = client.clone();
                let n = node.clone();
                match self
                    .task_phase(rec, "quiescing", "vzshutdown", true, move || async move {
                        c.shutdown_lxc(
                            &n,
                            vmid,
                            &ShutdownOptions {
                                timeout: Some(crate::reconcile::pve::SHUTDOWN_TIMEOUT_SECS),
                                force_stop: true,
                            },
                        )
                        .await
                        .map_err(CallError::Pve)
                    })
                    .await
                {
                    Ok(_) => Next::Phase("quiesced"),
                    Err(Stop::Call(e)) if e.already_in_state().is_some() => Next::Phase("quiesced"),
                    Err(Stop::Wait(o)) => Next::Wait(o),
                    Err(Stop::Call(e)) => {
                        Next::Wait(LaneOutcome::Transient(format!("stopping the guest: {e}")))
                    }
                    Err(Stop::Lost) => Next::Phase("quiesced"),
                }
            }
            "quiesced" | "copying" => {
                let existed = rec.facts.get("existed").map(String::as_str) == Some("1");
                if !crate::jobs::safety::needs_copy(p.kind, existed) {
                    return Next::Phase("copied");
                }
                match self.copy(rec, p).await {
                    Ok(m) => {
                        let r = crate::jobs::safety::copy_ref(&m);
                        info!(copy = r.as_str(), "pre-job safety copy taken");
                        rec.facts.insert("copy".into(), r);
                        rec.facts.insert("copy_id".into(), m.id.clone());
                        if let Some(v) = &m.volid {
                            rec.facts.insert("copy_volid".into(), v.clone());
                        }
                        Next::Phase("copied")
                    }
                    Err(r) if r.code == "transient" => {
                        Next::Wait(LaneOutcome::Transient(r.message))
                    }
                    Err(r) => self.fail_after_quiesce(
                        rec,
                        &r.code,
                        format!("{}; nothing was changed", r.message),
                    ),
                }
            }
            "copied" => {
                // Re-check just before the call: the guest still is what was signed.
                match client.lxc_config(&node, vmid, false).await {
                    Ok(c) if c.lock.is_some() => self.fail_after_quiesce(
                        rec,
                        "guest_locked",
                        format!("CT {vmid} became locked ({}) before the job's call; nothing was changed", c.lock.unwrap_or_default()),
                    ),
                    Ok(c) if p.guest_config_sha1.is_some()
                        && c.digest != p.guest_config_sha1
                        // A snapshot copy adds a snapshot section (a new digest); the guest's
                        // own config must be what it was before the copy.
                        && rec.facts.get("config_before_copy") != Some(&fingerprint(&c)) =>
                    {
                        self.fail_after_quiesce(
                            rec,
                            "stale_state",
                            format!("CT {vmid}'s config changed before the job's call; nothing was changed"),
                        )
                    }
                    Ok(_) if p.guest_config_sha1.is_none() => self.fail_after_quiesce(
                        rec,
                        "stale_state",
                        format!("CT {vmid} appeared meanwhile; the restore onto a free vmid is not run"),
                    ),
                    Err(e) if e.is_not_found() && p.guest_config_sha1.is_none() => {
                        Next::Phase("rechecked")
                    }
                    Ok(_) => Next::Phase("rechecked"),
                    Err(e) => Next::Wait(LaneOutcome::Transient(format!("re-checking the guest: {e}"))),
                }
            }
            "rechecked" | "calling" => self.call(rec, p).await,
            "task_done" => self.verify(rec, p).await,
            "undo_check" | "undoing" => self.undo(rec, p).await,
            "verified" => {
                if rec.facts.get("stopped_by_job").map(String::as_str) == Some("1") {
                    Next::Phase("starting")
                } else {
                    Next::End(JobEnd::Done {
                        detail: self.done_detail(rec, p),
                    })
                }
            }
            "starting" => {
                if let Err(e) = self.engine.store().started(vmid) {
                    return Next::Wait(LaneOutcome::Transient(format!(
                        "journaling the start: {e}"
                    )));
                }
                let c = client.clone();
                let n = node.clone();
                let started = self
                    .task_phase(rec, "starting", "vzstart", true, move || async move {
                        c.start_lxc(&n, vmid).await.map_err(CallError::Pve)
                    })
                    .await;
                let end_with = |rec: &JobRecord, extra: Option<String>| match rec
                    .facts
                    .get("end_code")
                {
                    Some(code) => JobEnd::Failed {
                        code: code.clone(),
                        message: format!(
                            "{}{}",
                            rec.facts.get("end_message").cloned().unwrap_or_default(),
                            extra.unwrap_or_default()
                        ),
                    },
                    None => match extra {
                        None => JobEnd::Done {
                            detail: self.done_detail(rec, p),
                        },
                        Some(x) => JobEnd::Failed {
                            code: "task_failed".into(),
                            message: format!("the job ran, but starting the guest again failed{x}"),
                        },
                    },
                };
                match started {
                    Ok(o) if o.is_success() => Next::End(end_with(rec, None)),
                    Ok(TaskOutcome::Failed { message, .. }) => {
                        Next::End(end_with(rec, Some(format!(" (start: {message})"))))
                    }
                    Ok(_) => Next::End(end_with(rec, None)),
                    Err(Stop::Call(e)) if e.already_in_state().is_some() => {
                        info!("the guest runs already ({e})");
                        Next::End(end_with(rec, None))
                    }
                    Err(Stop::Wait(o)) => Next::Wait(o),
                    Err(Stop::Call(e)) => {
                        Next::Wait(LaneOutcome::Transient(format!("starting the guest: {e}")))
                    }
                    Err(Stop::Lost) => unreachable_lost(),
                }
            }
            other => Next::End(JobEnd::Failed {
                code: "needs_operator".into(),
                message: format!(
                    "the journal holds an unknown job phase {other:?}; nothing more is done"
                ),
            }),
        }
    }

    fn done_detail(&self, rec: &JobRecord, p: &JobPayload) -> String {
        let mut s = match p.kind {
            JobKind::Snapshot => format!(
                "snapshot {} taken",
                p.params.get("snapname").cloned().unwrap_or_default()
            ),
            JobKind::DeleteSnapshot => format!(
                "snapshot {} deleted",
                p.params.get("snapname").cloned().unwrap_or_default()
            ),
            JobKind::RollbackSnapshot => format!(
                "rolled back to {}",
                p.params.get("snapname").cloned().unwrap_or_default()
            ),
            JobKind::Backup => format!(
                "backup {}",
                rec.facts.get("backup").cloned().unwrap_or_default()
            ),
            JobKind::RestoreBackup => format!(
                "restored from {}",
                p.params.get("ostemplate").cloned().unwrap_or_default()
            ),
            JobKind::Reboot => "rebooted".to_string(),
        };
        if let Some(c) = rec.facts.get("copy") {
            s.push_str(&format!("; pre-job copy {c}"));
        }
        s
    }

    /// The pre-job safety copy through the safety-copy machinery (see `jobs::safety`). A
    /// restart in this phase uses the copy already verified for this job, or takes it again
    /// (a copy destroys nothing; an interrupted one is resolved by the boot sweep).
    async fn copy(&self, rec: &mut JobRecord, p: &JobPayload) -> Result<CopyManifest, JobRefusal> {
        let vmid = rec.vmid;
        let Some(safety) = self.engine.safety() else {
            return Err(JobRefusal::new(
                "safety_storage_unset",
                "restores and rollbacks need a storage for safety copies: set [safety] storage in drover.toml",
            ));
        };
        if rec.phase != "copying" {
            self.save(rec, "copying", "")
                .map_err(|_| JobRefusal::new("transient", "journaling the copy phase"))?;
        }
        match crate::jobs::safety::existing(&safety, vmid, &rec.id) {
            crate::jobs::safety::Existing::Complete(m) => return Ok(*m),
            crate::jobs::safety::Existing::Creating => {
                // Interrupted by a crash: the boot sweep resolves it (re-attaching to its
                // vzdump) before the job goes on.
                let _ = safety.sweep(false).await;
                match crate::jobs::safety::existing(&safety, vmid, &rec.id) {
                    crate::jobs::safety::Existing::Complete(m) => return Ok(*m),
                    crate::jobs::safety::Existing::Creating => {
                        return Err(JobRefusal::new(
                            "transient",
                            "the interrupted safety copy is not resolved yet",
                        ));
                    }
                    crate::jobs::safety::Existing::None => {}
                }
            }
            crate::jobs::safety::Existing::None => {}
        }
        if !rec.facts.contains_key("config_before_copy") {
            let pve = self.engine.pve();
            let c = pve
                .client
                .lxc_config(&pve.node, vmid, false)
                .await
                .map_err(|e| JobRefusal::new("transient", format!("reading the config: {e}")))?;
            if c.digest != p.guest_config_sha1 {
                return Err(JobRefusal::new(
                    "stale_state",
                    format!("CT {vmid}'s config changed before the safety copy"),
                ));
            }
            rec.facts
                .insert("config_before_copy".into(), fingerprint(&c));
            self.save(rec, "copying", "")
                .map_err(|_| JobRefusal::new("transient", "journaling the copy phase"))?;
        }
        let pre = crate::jobs::safety::preflight(Some(&safety), vmid, p.kind).await?;
        match safety
            .take(&pre, &rec.id, &crate::jobs::safety::signed_binding(p))
            .await
        {
            Ok(m) => Ok(m),
            Err(e) if e.transient => Err(JobRefusal::new("transient", e.to_string())),
            Err(e) => Err(JobRefusal::from(e)),
        }
    }

    /// The volid a vzdump task wrote, read from its log and confirmed in the listing.
    async fn backup_volid(
        &self,
        upid: &Upid,
        storage: &str,
        vmid: u32,
    ) -> Result<String, CallError> {
        let pve = self.engine.pve();
        let log = pve.client.task_log(upid, 0, 5000).await?;
        let volid = proxmox_client::types::backup_volid_from_log(storage, &log.lines);
        let listing = pve
            .client
            .storage_content(&pve.node, storage, &ContentFilter::backups_of(vmid))
            .await?;
        match volid {
            Some(v) if listing.iter().any(|e| e.volid == v) => Ok(v),
            other => Err(CallError::Other(format!(
                "the backup task ended but its archive {} is not in the listing of {storage}",
                other.unwrap_or_else(|| "(no volid in the log)".into())
            ))),
        }
    }

    /// The job's own PVE call (never sent twice).
    async fn call(&self, rec: &mut JobRecord, p: &JobPayload) -> Next {
        let pve = self.engine.pve();
        let (c, n, vmid) = (pve.client.clone(), pve.node.clone(), rec.vmid);
        let param = |k: &str| p.params.get(k).cloned().unwrap_or_default();
        if matches!(p.kind, JobKind::Reboot | JobKind::RestoreBackup)
            && let Err(e) = self.engine.store().started(vmid)
        {
            return Next::Wait(LaneOutcome::Transient(format!("journaling the start: {e}")));
        }
        let kind = p.kind;
        let (snap, desc, storage, volid) = (
            param("snapname"),
            p.params.get("description").cloned(),
            param("storage"),
            param("ostemplate"),
        );
        let force = p.params.get("force").is_some_and(|v| v == "1");
        let unique = p.params.get("unique").is_some_and(|v| v == "1");
        let protected = p.params.get("protected").is_some_and(|v| v == "1");
        let outcome = self
            .task_phase(rec, "calling", worker_of(kind), false, move || async move {
                match kind {
                    JobKind::Snapshot => c
                        .create_snapshot(&n, vmid, &snap, desc.as_deref())
                        .await
                        .map_err(CallError::Pve),
                    JobKind::DeleteSnapshot => c
                        .delete_snapshot(&n, vmid, &snap, false)
                        .await
                        .map_err(CallError::Pve),
                    JobKind::RollbackSnapshot => c
                        .rollback_snapshot(&n, vmid, &snap, false)
                        .await
                        .map_err(CallError::Pve),
                    JobKind::Reboot => c
                        .reboot_lxc(&n, vmid, Some(60))
                        .await
                        .map_err(CallError::Pve),
                    JobKind::Backup => {
                        let mut req = VzdumpRequest::new(vmid, storage);
                        req.mode = Some(proxmox_client::BackupMode::Snapshot);
                        req.compress = Some(proxmox_client::BackupCompression::Zstd);
                        req.protected = protected;
                        req.remove = Some(false);
                        match c.vzdump(&n, &req).await.map_err(CallError::Pve)? {
                            VzdumpStarted::Task(u) => Ok(u),
                            VzdumpStarted::NotOnNode => Err(CallError::Other(format!(
                                "vzdump answered OK: CT {vmid} is not on this node"
                            ))),
                        }
                    }
                    JobKind::RestoreBackup => {
                        let mut r = RestoreLxc::new(vmid, volid, storage);
                        r.force = force;
                        r.unique = unique;
                        c.restore_lxc(&n, &r).await.map_err(CallError::Pve)
                    }
                }
            })
            .await;
        match outcome {
            Ok(o) if o.is_success() => {
                if let Some(u) = &rec.upid {
                    rec.facts.insert("call_upid".into(), u.clone());
                }
                Next::Phase("task_done")
            }
            Ok(o) => {
                let msg = task_error(&o).to_string();
                rec.facts.insert("task_error".into(), msg.clone());
                if p.kind == JobKind::RestoreBackup {
                    Next::Phase("undo_check")
                } else {
                    self.fail_after_quiesce(rec, "task_failed", format!("the {} task failed: {msg}", worker_of(p.kind)))
                }
            }
            Err(Stop::Wait(o)) => Next::Wait(o),
            Err(Stop::Lost) if p.kind == JobKind::RestoreBackup => {
                rec.facts.insert("task_error".into(), "the restore call's answer was lost and PVE shows no task".into());
                Next::Phase("undo_check")
            }
            Err(Stop::Lost) => self.fail_after_quiesce(
                rec,
                "call_lost",
                format!("the {} call's answer was lost and PVE shows no task of it; it is not sent again (sign a new job if it is still wanted)", worker_of(p.kind)),
            ),
            Err(Stop::Call(e)) if p.kind == JobKind::RestoreBackup && e.may_have_been_processed() => {
                rec.facts.insert("task_error".into(), e.to_string());
                Next::Phase("undo_check")
            }
            Err(Stop::Call(e)) => self.fail_after_quiesce(
                rec,
                "task_failed",
                format!("PVE refused the {} call: {e}", worker_of(p.kind)),
            ),
        }
    }

    /// Checks that the job did what it says (a fresh read), before the guest runs again.
    async fn verify(&self, rec: &mut JobRecord, p: &JobPayload) -> Next {
        let pve = self.engine.pve();
        let (node, vmid) = (pve.node.as_str(), rec.vmid);
        let snap = p.params.get("snapname").cloned().unwrap_or_default();
        let transient =
            |what: &str, e: PveError| Next::Wait(LaneOutcome::Transient(format!("{what}: {e}")));
        let bad = |rec: &mut JobRecord, m: String| self.fail_after_quiesce(rec, "verify_failed", m);
        match p.kind {
            JobKind::Snapshot | JobKind::DeleteSnapshot => {
                let list = match pve.client.list_snapshots(node, vmid).await {
                    Ok(l) => l,
                    Err(e) => return transient("listing snapshots", e),
                };
                let has = list.iter().any(|s| s.name == snap);
                if has == (p.kind == JobKind::Snapshot) {
                    Next::Phase("verified")
                } else {
                    bad(
                        rec,
                        format!(
                            "the task ended OK but snapshot {snap} is {}",
                            if has { "still there" } else { "not there" }
                        ),
                    )
                }
            }
            JobKind::RollbackSnapshot => match pve.client.lxc_config(node, vmid, false).await {
                Ok(c) if c.lock.is_none() => Next::Phase("verified"),
                Ok(c) => bad(
                    rec,
                    format!(
                        "CT {vmid} is still locked ({}) after the rollback",
                        c.lock.unwrap_or_default()
                    ),
                ),
                Err(e) => transient("reading the rolled-back config", e),
            },
            JobKind::Reboot => match pve.client.lxc_status(node, vmid).await {
                Ok(s) if s.entry.status == GuestStatus::Running => Next::Phase("verified"),
                Ok(_) => bad(rec, format!("CT {vmid} is not running after the reboot")),
                Err(e) => transient("reading the guest's status", e),
            },
            JobKind::Backup => {
                let Some(upid) = rec
                    .facts
                    .get("call_upid")
                    .and_then(|u| u.parse::<Upid>().ok())
                else {
                    return Next::Phase("verified");
                };
                let storage = p.params.get("storage").cloned().unwrap_or_default();
                match self.backup_volid(&upid, &storage, vmid).await {
                    Ok(v) => {
                        rec.facts.insert("backup".into(), v);
                        Next::Phase("verified")
                    }
                    Err(e) => bad(rec, e.to_string()),
                }
            }
            JobKind::RestoreBackup => {
                let c = match pve.client.lxc_config(node, vmid, false).await {
                    Ok(c) => c,
                    Err(e) if e.is_not_found() => {
                        rec.facts.insert(
                            "task_error".into(),
                            "the restore ended OK but the guest is gone".into(),
                        );
                        return Next::Phase("undo_check");
                    }
                    Err(e) => return transient("reading the restored config", e),
                };
                let archived = config_lines(
                    rec.facts
                        .get("archive_config")
                        .map(String::as_str)
                        .unwrap_or(""),
                );
                let mut differs = Vec::new();
                let actual: [(&str, Option<String>); 6] = [
                    ("hostname", c.hostname.clone()),
                    ("memory", c.memory.map(|v| v.to_string())),
                    ("swap", c.swap.map(|v| v.to_string())),
                    ("cores", c.cores.map(|v| v.to_string())),
                    ("arch", c.arch.clone()),
                    ("ostype", c.ostype.clone()),
                ];
                for (k, v) in actual {
                    if let Some(want) = archived.get(k)
                        && v.as_deref() != Some(want.as_str())
                    {
                        differs.push(format!(
                            "{k} is {} (backup: {want})",
                            v.unwrap_or_else(|| "unset".into())
                        ));
                    }
                }
                if c.lock.is_some() {
                    differs.push(format!("lock {}", c.lock.clone().unwrap_or_default()));
                }
                if c.rootfs.is_none() {
                    differs.push("no rootfs".into());
                }
                if differs.is_empty() {
                    Next::Phase("verified")
                } else {
                    let m = format!(
                        "the restored config does not match the backup's: {}",
                        differs.join(", ")
                    );
                    rec.facts.insert("task_error".into(), m);
                    Next::Phase("undo_check")
                }
            }
        }
    }

    /// A failed restore is undone from the pre-restore copy (restore onto a free vmid has
    /// nothing to undo). An undo whose answer is lost is not sent again: `needs_operator`.
    async fn undo(&self, rec: &mut JobRecord, _p: &JobPayload) -> Next {
        let pve = self.engine.pve();
        let (node, vmid) = (pve.node.clone(), rec.vmid);
        let why = rec.facts.get("task_error").cloned().unwrap_or_default();
        let Some(copy) = rec.facts.get("copy_volid").cloned() else {
            return Next::End(JobEnd::Failed {
                code: "task_failed".into(),
                message: format!(
                    "the restore failed ({why}); it was onto a free vmid, so there is nothing to undo"
                ),
            });
        };
        if rec.phase == "undo_check" {
            // First time here: what did the failed restore leave?
            match pve.client.lxc_config(&node, vmid, false).await {
                Ok(c) if c.lock.as_deref() == Some("create") => {
                    return Next::End(JobEnd::Failed {
                        code: "needs_operator".into(),
                        message: format!(
                            "the restore failed ({why}) and left CT {vmid} locked (create); run `pct unlock {vmid}`, then restore the pre-restore copy {copy}"
                        ),
                    });
                }
                Ok(c) if c.digest == _p.guest_config_sha1 => {
                    // PVE failed before touching the guest (its early checks): nothing to undo.
                    return self.fail_after_quiesce(rec, "task_failed", format!("the restore failed before changing CT {vmid} ({why}); the guest is unchanged, the pre-restore copy {copy} is kept"));
                }
                Ok(_) => {
                    rec.facts.insert("undo_force".into(), "1".into());
                }
                Err(e) if e.is_not_found() => {
                    rec.facts.insert("undo_force".into(), "0".into());
                }
                Err(e) => {
                    return Next::Wait(LaneOutcome::Transient(format!(
                        "reading what the restore left: {e}"
                    )));
                }
            }
        }
        let force = rec.facts.get("undo_force").map(String::as_str) == Some("1");
        let storage = rec
            .facts
            .get("undo_storage")
            .cloned()
            .unwrap_or_else(|| _p.params.get("storage").cloned().unwrap_or_default());
        let (c, n, copy2) = (pve.client.clone(), node.clone(), copy.clone());
        let outcome = self
            .task_phase(rec, "undoing", "vzrestore", false, move || async move {
                let mut r = RestoreLxc::new(vmid, copy2, storage);
                r.force = force;
                c.restore_lxc(&n, &r).await.map_err(CallError::Pve)
            })
            .await;
        match outcome {
            Ok(o) if o.is_success() => self.fail_after_quiesce(
                rec,
                "restore_undone",
                format!("the restore failed ({why}); CT {vmid} was restored from the pre-restore copy {copy}"),
            ),
            Ok(o) => Next::End(JobEnd::Failed {
                code: "needs_operator".into(),
                message: format!("the restore failed ({why}) and restoring the pre-restore copy {copy} failed too ({}); restore it by hand", task_error(&o)),
            }),
            Err(Stop::Wait(o)) => Next::Wait(o),
            Err(Stop::Lost) | Err(Stop::Call(_)) => Next::End(JobEnd::Failed {
                code: "needs_operator".into(),
                message: format!("the restore failed ({why}) and the undo from the pre-restore copy {copy} could not be confirmed; check CT {vmid} and restore the copy by hand if needed"),
            }),
        }
    }

    /// One task phase: journal the phase, send the call, journal its UPID, wait. Entered again
    /// after a restart it re-attaches to the journaled UPID, or finds the task the lost call
    /// started; without one, `resend` says whether the call may be sent again.
    async fn task_phase<F, Fut>(
        &self,
        rec: &mut JobRecord,
        phase: &str,
        worker: &str,
        resend: bool,
        call: F,
    ) -> Result<TaskOutcome, Stop>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Upid, CallError>>,
    {
        let vmid = rec.vmid;
        let entering = rec.phase != phase;
        if entering {
            rec.upid = None;
            rec.phase_at = unix_now();
            self.save(rec, phase, "").map_err(Stop::Wait)?;
        }
        let journaled = rec.upid.as_deref().and_then(|u| u.parse::<Upid>().ok());
        let upid = match journaled {
            Some(u) => u,
            None => {
                let found = if entering {
                    None
                } else {
                    self.find_task(worker, vmid, rec.phase_at)
                        .await
                        .map_err(|e| {
                            Stop::Wait(LaneOutcome::Transient(format!(
                                "searching the task list: {e}"
                            )))
                        })?
                };
                match found {
                    Some(u) => {
                        info!(upid = %u, "found the task the interrupted call started; re-attaching");
                        u
                    }
                    None if entering || resend => match call().await {
                        Ok(u) => u,
                        Err(e) if e.may_have_been_processed() => {
                            match self.find_task(worker, vmid, rec.phase_at).await {
                                Ok(Some(u)) => u,
                                Ok(None) => return Err(Stop::Lost),
                                Err(_) => {
                                    return Err(Stop::Wait(LaneOutcome::Transient(e.to_string())));
                                }
                            }
                        }
                        Err(e) => return Err(Stop::Call(e)),
                    },
                    None => return Err(Stop::Lost),
                }
            }
        };
        if rec.upid.as_deref() != Some(upid.to_string().as_str()) {
            rec.upid = Some(upid.to_string());
            self.save(rec, phase, &upid.to_string())
                .map_err(Stop::Wait)?;
        }
        let span = info_span!("task", upid = %upid);
        let pve = self.engine.pve();
        let deadline = deadline_of(worker);
        let opts = match pve.waits.poll_interval {
            Some(i) => WaitOptions::fast(i, deadline),
            None => WaitOptions::with_deadline(deadline),
        };
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            o = pve.client.wait_task(&upid, &opts).instrument(span) => o,
            _ = self.engine.wait_shutdown() => return Err(Stop::Wait(LaneOutcome::Waiting)),
        };
        match outcome {
            Ok(o) => {
                self.engine
                    .metrics()
                    .pve_task(&upid.worker_type, started.elapsed().as_secs_f64());
                Ok(o)
            }
            Err(e) if e.is_not_found() => Err(Stop::Lost),
            Err(e) => Err(Stop::Wait(LaneOutcome::Transient(format!(
                "waiting for {upid}: {e}"
            )))),
        }
    }

    /// The task of `worker` for `vmid` our token started since `since` (a lost answer's),
    /// never one the journal ties to a step, a copy or another phase, however close in time
    /// (a safety copy's vzdump and a backup job's). Without the journal's answer nothing is
    /// adopted: an error, and the job waits.
    async fn find_task(&self, worker: &str, vmid: u32, since: i64) -> Result<Option<Upid>, String> {
        let claimed = self
            .engine
            .store()
            .claimed_upids(vmid)
            .map_err(|e| format!("reading the tasks the journal holds for CT {vmid}: {e}"))?;
        let pve = self.engine.pve();
        crate::lost_task::find_unclaimed_task(&pve.client, &pve.node, worker, vmid, since, &claimed)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The guest's own config, without what a snapshot changes (its digest and `parent`), as
/// a comparable text.
fn fingerprint(c: &proxmox_client::LxcConfig) -> String {
    let mut c = c.clone();
    c.digest = None;
    c.parent = None;
    sha256_hex(format!("{c:?}").as_bytes())
}

fn unreachable_lost() -> Next {
    // Calls that may be re-sent never report `Lost`; fail closed all the same.
    Next::End(JobEnd::Failed {
        code: "needs_operator".into(),
        message: "a task phase could not be re-attached; check the guest".into(),
    })
}

fn task_error(o: &TaskOutcome) -> CallError {
    CallError::Other(match o {
        TaskOutcome::Failed { message, .. } => message.clone(),
        other => format!("{other:?}"),
    })
}

impl GuestJobs for JobRunner {
    fn turn(&self, vmid: u32) -> Pin<Box<dyn Future<Output = Option<LaneOutcome>> + Send + '_>> {
        Box::pin(self.turn_for(vmid))
    }
}
