//! `drover run`: boot (journal, trust, recovery, first PVE read), then the reconcile loop until
//! SIGTERM/SIGINT.
//!
//! Shutdown follows `reconcile-anchors.md` §4.3: stop taking new steps, let an outstanding call
//! return and its UPID reach the journal, then exit without waiting for PVE tasks; the next
//! start re-attaches to them. A second signal exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::approval::trust::Trust;
use crate::clock::unix_now;
use crate::desired::Desired;
use crate::desired::source::Source;
use crate::reconcile::engine::{Engine, EngineSettings};
use crate::reconcile::lanes::{BackoffPolicy, LaneOutcome, Lanes};
use crate::reconcile::pve::{Pve, WaitPolicy};
use crate::service::config::Config;
use crate::service::systemd::Systemd;
use crate::store::Store;

/// Knobs that tests, the demo and benchmarks turn; production uses `Default`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Do one pass, wait for its steps, exit.
    pub once: bool,
    pub waits: WaitPolicy,
    pub backoff: BackoffPolicy,
    /// Upper bound for `--once` to wait for lanes to drain.
    pub once_timeout: Duration,
    pub step_deadline: Duration,
    /// Show progress on stdout while `once` waits (interactive `drover run --once`).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            once: false,
            waits: WaitPolicy::production(),
            backoff: BackoffPolicy::default(),
            once_timeout: Duration::from_secs(3600),
            step_deadline: Duration::from_secs(45 * 60),
            progress: false,
        }
    }
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Everything converged (`--once`) or a clean shutdown.
    Converged,
    /// `--once` left something managed not converged: pending, waiting for approval, locked,
    /// held by a fuse, failed, or the source's newest document refused (exit 2).
    Pending,
    /// `--once` had no valid desired document in force at all (exit 1).
    NoDocument,
}

/// Why `--once` did not converge, one line per reason with its stable code (printed to
/// stderr so a script's log says why the exit code is not 0).
fn print_reasons(reasons: &[(String, String)]) {
    for (code, message) in reasons {
        eprintln!("drover: not converged: [{code}] {message}");
    }
}

/// Everything that keeps the host from matching a valid, fresh document after `--once`.
fn once_reasons(
    engine: &Engine,
    plan: Option<&crate::operator::render::ClassifiedPlan>,
) -> Vec<(String, String)> {
    use crate::reconcile::board::GuestState;
    let mut out = Vec::new();
    let snap = engine.status().snapshot();
    if let (Some(code), Some(message)) = (&snap.source.error_code, &snap.source.error) {
        out.push((code.clone(), message.clone()));
    }
    if engine.desired().is_some_and(|d| d.degraded) && snap.source.error_code.is_none() {
        out.push((
            "desired_stale".to_string(),
            "the document in force could not be verified".to_string(),
        ));
    }
    let Some(plan) = plan else {
        out.push((
            "pve_unavailable".to_string(),
            "the host could not be read again after the pass".to_string(),
        ));
        return out;
    };
    for n in &plan.plan.notes {
        if n.code != "unmanaged_guests" {
            out.push((n.code.to_string(), n.message.clone()));
        }
    }
    for g in plan.plan.guests.values() {
        for n in &g.notes {
            out.push((n.code.to_string(), n.message.clone()));
        }
        if let Some(step) = g.steps.first() {
            let line = snap.guests.get(&g.vmid);
            let (code, why) = match line.map(|l| l.state) {
                Some(GuestState::AwaitingApproval) => (
                    "approval_pending".to_string(),
                    "waits for a signed approval (drover approvals)".to_string(),
                ),
                Some(GuestState::Blocked) => (
                    line.and_then(|l| l.blocked_code.clone())
                        .unwrap_or_else(|| "blocked".into()),
                    line.and_then(|l| l.last_error.clone())
                        .unwrap_or_else(|| "blocked".into()),
                ),
                Some(GuestState::Failed) => (
                    "step_failed".to_string(),
                    line.and_then(|l| l.last_error.clone())
                        .unwrap_or_else(|| "a step failed".into()),
                ),
                Some(GuestState::Suspended) => (
                    "suspended".to_string(),
                    "reconciling is suspended".to_string(),
                ),
                _ => ("not_converged".to_string(), "steps are left".to_string()),
            };
            out.push((
                code,
                format!("CT {}: {} ({})", g.vmid, step.kind.as_str(), why),
            ));
        }
    }
    for g in snap.guests.values() {
        if let Some(v) = g.verify.as_ref().filter(|v| v.deadline_unix.is_some()) {
            out.push((
                "verify_pending".to_string(),
                format!(
                    "CT {}: the change of {} is still in its verify window ({})",
                    g.vmid,
                    v.keys.join(", "),
                    v.phase
                ),
            ));
        }
        if g.state == GuestState::Failed
            && plan
                .plan
                .guests
                .get(&g.vmid)
                .is_none_or(|p| p.steps.is_empty())
        {
            out.push((
                "step_failed".to_string(),
                format!(
                    "CT {}: {}",
                    g.vmid,
                    g.last_error
                        .clone()
                        .unwrap_or_else(|| "a step failed".into())
                ),
            ));
        }
    }
    out
}

/// How the PVE API's certificate is trusted (`check-config` checks the same).
pub fn tls_from_config(config: &Config) -> anyhow::Result<proxmox_client::TlsTrust> {
    use proxmox_client::{Fingerprint, TlsTrust};
    Ok(if let Some(fp) = &config.proxmox.fingerprint {
        let fp: Fingerprint = fp.parse().map_err(|e| {
            anyhow::anyhow!("config {}: proxmox.fingerprint: {e}", config.path.display())
        })?;
        TlsTrust::Fingerprint(fp)
    } else if let Some(ca) = &config.proxmox.ca_file {
        TlsTrust::CaFile(ca.clone())
    } else if let Some(cert) = &config.proxmox.node_cert_file {
        TlsTrust::NodeCertificate {
            paths: vec![cert.clone()],
            reload_interval: proxmox_client::tls::DEFAULT_CERT_RELOAD_INTERVAL,
        }
    } else {
        TlsTrust::node_certificate()
    })
}

/// Builds the PVE client from the config.
pub fn pve_from_config(config: &Config, waits: WaitPolicy) -> anyhow::Result<Pve> {
    use proxmox_client::{ApiToken, Client, ClientConfig};
    let secret_path = resolve_credential(&config.proxmox.token_secret_file, &config.path);
    let token = ApiToken::from_secret_file(config.proxmox.token_id.clone(), &secret_path)
        .with_context(|| format!("reading the PVE token secret {}", secret_path.display()))?;
    let tls = tls_from_config(config)?;
    let metrics = std::sync::Arc::new(crate::reconcile::metrics::Metrics::default());
    let mut client_config = ClientConfig::new(config.proxmox.url.clone(), token, tls);
    let counted = metrics.clone();
    client_config.observer = Some(proxmox_client::RequestObserver(std::sync::Arc::new(
        move |method, code| counted.pve_request(method.as_str(), code),
    )));
    let client = Client::new(client_config).context("building the PVE client")?;
    Ok(Pve::new(client, config.host.clone(), waits, metrics)
        .with_pool(config.proxmox.pool.clone())
        .with_rules(config.rules.clone()))
}

/// `token_secret_file` may name a systemd credential (`LoadCredential=pve-token:...`): a
/// relative path is looked up in `$CREDENTIALS_DIRECTORY` first, then beside the config file,
/// so `drover plan` from a root shell finds `/etc/drover/pve-token` the way the service does.
pub fn resolve_credential(
    path: &std::path::Path,
    config_path: &std::path::Path,
) -> std::path::PathBuf {
    if !path.is_relative() {
        return path.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = std::path::Path::new(&dir).join(path);
        if p.exists() {
            return p;
        }
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Fetches the desired state; on failure falls back to the journal's last-known-good copy in
/// degraded mode (benign convergence only). Also mirrors a hub's approval files and records
/// the source's freshness for `drover status` and the metrics.
pub async fn refresh_desired(engine: &Engine, source: &Source) {
    let store = engine.store();
    let now = unix_now();
    let trust = match engine.trust() {
        Trust::Valid(t) => Some(t),
        Trust::Invalid { .. } => None,
    };
    let result = source
        .fetch(store.last_revision(), trust.as_deref(), now)
        .await;
    let previous_error = engine.status().snapshot().source.error_code;
    match &result {
        Ok(_) => engine
            .status()
            .source_attempt(source.kind(), &source.location(), now, Ok(())),
        Err(e) => engine.status().source_attempt(
            source.kind(),
            &source.location(),
            now,
            Err((e.code(), e.to_string())),
        ),
    }
    if result.is_ok() {
        engine
            .metrics()
            .desired_fetched(source.kind(), u64::try_from(now).unwrap_or(0));
    }
    match result {
        Ok(Some(f)) => {
            let changed = engine
                .desired()
                .is_none_or(|d| d.doc.revision != f.doc.revision || d.degraded || *d.doc != f.doc);
            if let Err(e) = store.accept_desired(f.doc.revision, &f.bytes) {
                warn!("keeping the desired state in the journal failed: {e}");
                // Hand the same document out again next pass, so the journal write is retried.
                source.forget_last();
            }
            if changed {
                info!(revision = f.doc.revision, origin = %f.origin, "desired state accepted");
            }
            if previous_error.is_some() {
                info!(origin = %f.origin, "desired-state source is healthy again");
            }
            // Without a readable trust document a hub signature cannot be checked: the
            // document may steer benign convergence, never a destructive step.
            let unverifiable = trust.is_none() && matches!(source, Source::Hub { .. });
            engine.set_desired(Desired {
                doc: Arc::new(f.doc),
                origin: f.origin,
                degraded: unverifiable,
            });
        }
        Ok(None) => {
            // 304, or a directory's file with the bytes already in force: the document this
            // process accepted is still the source's current one (nothing parsed, nothing
            // journaled). A hub's document is verifiable again only with a trust document.
            if let Some(mut d) = engine.desired()
                && d.degraded
                && d.origin == source.location()
                && (trust.is_some() || !matches!(source, Source::Hub { .. }))
            {
                info!(origin = %d.origin, "desired-state source is healthy again");
                d.degraded = false;
                engine.set_desired(d);
            }
        }
        Err(e) => {
            // Loud once per distinct problem, quiet while it lasts.
            if previous_error.as_deref() != Some(e.code()) {
                warn!(code = e.code(), "desired state refused: {e}");
            } else {
                debug!(code = e.code(), "desired state still refused: {e}");
            }
            if engine.desired().is_some_and(|d| !d.degraded) {
                // Keep what we have, but stop destructive work until the source is healthy.
                if let Some(mut d) = engine.desired() {
                    d.degraded = true;
                    engine.set_desired(d);
                }
            } else if engine.desired().is_none()
                && let Some((rev, bytes)) = store.last_known_good()
            {
                match crate::desired::parse(&bytes, "journal last-known-good copy") {
                    Ok(doc) => {
                        info!(
                            revision = rev,
                            "using the last-known-good desired state (benign steps only)"
                        );
                        engine.set_desired(Desired {
                            doc: Arc::new(doc),
                            origin: "journal".into(),
                            degraded: true,
                        });
                    }
                    Err(e) => error!("the journal's last-known-good desired state is invalid: {e}"),
                }
            }
        }
    }
    if let Err(e) = source.sync_approvals().await {
        warn!(code = e.code(), "hub approvals not synced: {e}");
    }
}

/// Sends the hub a status report (`report::Report`: revision applied, trust version, pending
/// approvals with their text, recent steps). Best effort: a failure is logged and the next
/// pass sends a newer one.
pub async fn report(engine: &Engine, source: &Source) {
    if !matches!(source, Source::Hub { .. }) {
        return;
    }
    let domain = engine.trust_domain();
    let pending: Vec<crate::desired::report::PendingRequest> = engine
        .approvals()
        .pending()
        .into_iter()
        .map(|(p, text)| crate::desired::report::PendingRequest {
            file: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text,
            sign: crate::approval::requests::Approvals::sign_command(&domain, &p),
            loses: crate::approval::requests::Approvals::words(&p),
        })
        .collect();
    let recent = engine.store().listing(false, 50).unwrap_or_default();
    let job_dirs = crate::jobs::inbox::JobDirs::new(
        engine.store().journal().dir(),
        engine.approvals().candidate_dirs(),
    );
    let pending_jobs: Vec<crate::desired::report::PendingRequest> = job_dirs
        .pending()
        .into_iter()
        .filter(|(_, text)| {
            gate::JobPayload::parse(text.as_bytes())
                .is_ok_and(|p| !engine.store().nonce_consumed(&p.nonce).unwrap_or(true))
        })
        .map(|(p, text)| crate::desired::report::PendingRequest {
            file: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text,
            sign: crate::approval::requests::Approvals::sign_command(&domain, &p),
            loses: None,
        })
        .collect();
    let mut body = crate::desired::report::Report::new(
        crate::operator::status::status_json(engine),
        pending,
        serde_json::to_value(recent).unwrap_or_default(),
        unix_now(),
    );
    body.pending_jobs = pending_jobs;
    if let Err(e) = source.report(&body).await {
        debug!(code = e.code(), "status report to the hub failed: {e}");
    }
}

/// Runs the agent until a signal (or, with `once`, until the pass's work is done).
pub async fn run(config: Config, opts: RunOptions, systemd: Systemd) -> anyhow::Result<RunResult> {
    let store = Store::open(&config.state_dir)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let result = run_on(store.clone(), config, opts, systemd).await;
    // Closes synced behind their lanes are durable before `run` returns (and lets go of the
    // journal's lock).
    store.settled().await;
    result
}

async fn run_on(
    store: Store,
    config: Config,
    opts: RunOptions,
    systemd: Systemd,
) -> anyhow::Result<RunResult> {
    let pve = pve_from_config(&config, opts.waits.clone())?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let lanes = Lanes::new(config.proxmox.max_parallel, opts.backoff);
    let source = Source::from_config(&config).context("setting up the desired-state source")?;
    let approvals =
        crate::approval::requests::Approvals::new(&config.state_dir, Some(source.approvals_dir()));
    let trust = crate::approval::trust::establish(&config.trust.file, &store);
    match &trust {
        Trust::Invalid { message, .. } => {
            warn!("{message}; destructive steps are blocked until it is fixed");
        }
        Trust::Valid(t) if t.fleet != config.fleet => warn!(
            "the trust document is for fleet {:?} but this host's config says fleet {:?}; every approval will be refused (wrong_fleet)",
            t.fleet, config.fleet
        ),
        Trust::Valid(_) => {}
    }
    let safety = crate::safety::SafetyCopies::new(
        pve.client.clone(),
        config.host.clone(),
        store.clone(),
        config.safety.clone(),
        opts.waits.poll_interval,
    );
    if config.safety.storage.is_none() {
        warn!(
            "[safety] storage is not set: destructive steps are refused (safety_storage_unset) until a storage for safety copies is configured"
        );
    }
    let engine = Engine::new(
        EngineSettings {
            host: config.host.clone(),
            fleet: config.fleet.clone(),
            step_deadline: opts.step_deadline,
        },
        pve,
        store,
        approvals,
        trust,
        lanes.clone(),
        shutdown_rx,
    );
    engine.set_safety(safety);

    // Signed jobs run on the guests' lanes (asked first in every turn).
    let jobs = crate::jobs::JobRunner::install(&engine, &config.state_dir);

    // Signals: the first one stops taking steps; the second exits at once.
    let signal_task = {
        let lanes = lanes.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("stopping: no new steps; in-flight UPIDs are journaled");
            systemd.stopping();
            let _ = shutdown_tx.send(true);
            lanes.close();
            wait_for_signal().await;
            warn!("second signal: exiting now");
            std::process::exit(130);
        })
    };

    // Boot: recovery is queued first, then the first PVE read must succeed before READY=1.
    let recovered = engine
        .recover()
        .await
        .context("reading in-flight steps from the journal")?;
    if recovered > 0 {
        info!(
            recovered,
            "re-attaching to in-flight steps from the journal"
        );
    }
    // Jobs the journal has in progress continue in their lanes (recovery is their own code:
    // each phase re-attaches or resolves); signed jobs waiting are looked at there too.
    jobs.request_lanes().await;
    // SIGTERM while a hub hangs (timeouts and retries can take a minute) stops at once: a
    // refresh and a pass only read and plan; steps run on the lanes, which journal first.
    // A stop before the first pass is a clean shutdown for the service; `--once` did not
    // get its pass.
    let stopped_early = if opts.once {
        RunResult::Pending
    } else {
        RunResult::Converged
    };
    tokio::select! {
        _ = refresh_desired(&engine, &source) => {}
        _ = engine.wait_shutdown() => return Ok(stopped_early),
    }
    if opts.once && engine.desired().is_none() {
        // Nothing to converge to: the source's document was refused and the journal has no
        // verified copy. Not a success, whatever PVE says.
        let snap = engine.status().snapshot();
        print_reasons(&[(
            snap.source
                .error_code
                .clone()
                .unwrap_or_else(|| "desired_missing".into()),
            snap.source
                .error
                .clone()
                .unwrap_or_else(|| "no desired document".into()),
        )]);
        return Ok(RunResult::NoDocument);
    }
    let mut delay = Duration::from_secs(2);
    let mut attempts = 0u32;
    let first = loop {
        match engine.pass().await {
            Ok(p) => break p,
            Err(e) if e.is_unauthorized() => {
                return Err(anyhow::anyhow!(e)).context(
                    "[pve_unauthorized] the PVE token was refused (401); check token_id and the secret file",
                );
            }
            Err(e) => {
                attempts += 1;
                // `--once` is a script's question: a wrong pin or any other error that will
                // not go away by itself is answered at once, a passing one after a few tries.
                if opts.once && (!e.is_transient() || attempts >= 4) {
                    return Err(anyhow::anyhow!("[{}] reading PVE: {e}", e.code()));
                }
                warn!(
                    code = e.code(),
                    "first read of PVE failed, retrying in {delay:?}: {e}"
                );
                systemd.status(&format!(
                    "waiting for PVE: [{}] {e}; retrying in {}s",
                    e.code(),
                    delay.as_secs()
                ));
                if engine.is_shutting_down() {
                    return Ok(stopped_early);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = engine.wait_shutdown() => return Ok(stopped_early),
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    // The operator's surface: control socket and (optionally) metrics.
    let control_task =
        {
            let engine = engine.clone();
            let path = config.control_socket.clone();
            tokio::spawn(async move {
                let e2 = engine.clone();
                if let Err(err) = crate::operator::control::serve(&path, engine, async move {
                    e2.wait_shutdown().await
                })
                .await
                {
                    warn!(socket = %path.display(), "control socket unavailable: {err}");
                }
            })
        };
    let metrics_task = config.metrics_listen.map(|addr| {
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(err) = serve_metrics(addr, engine).await {
                warn!(%addr, "metrics listener unavailable: {err}");
            }
        })
    });
    // Copies a crash left are resolved (adopted, failed, reported) before any lane runs.
    engine.safety_housekeeping(!opts.once).await;
    info!(steps = first.plan.step_count(), "ready");
    systemd.ready(&engine.status().snapshot().summary());

    // How many lane turns ran: `--once` re-reads the host only if one did (a converged host
    // costs one full read, N + 2 requests, not two).
    let turns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let runner = {
        let engine = engine.clone();
        let lanes = lanes.clone();
        let turns = turns.clone();
        tokio::spawn(async move {
            let e2 = engine.clone();
            lanes
                .run(
                    move |vmid| {
                        let e = e2.clone();
                        turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Box::pin(async move { e.turn(vmid).await })
                    },
                    |vmid, outcome| {
                        if let LaneOutcome::Terminal(e) | LaneOutcome::Transient(e) = outcome {
                            warn!(vmid, "{e}");
                        }
                    },
                )
                .await
        })
    };

    let result = if opts.once {
        let deadline = tokio::time::Instant::now() + opts.once_timeout;
        let mut progress = opts
            .progress
            .then(crate::operator::progress::Progress::for_terminal);
        let mut last_draw = tokio::time::Instant::now();
        while !lanes.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(p) = progress.as_mut()
                && last_draw.elapsed() >= Duration::from_millis(200)
            {
                p.update(&engine.status().snapshot());
                last_draw = tokio::time::Instant::now();
            }
            if !lanes.idle_until(tokio::time::Instant::now() + Duration::from_secs(1)) {
                continue;
            }
            // Only backoffs far in the future remain.
            break;
        }
        lanes.close();
        let _ = runner.await;
        let snap = engine.status().snapshot();
        if let Some(p) = progress.as_mut() {
            p.finish(&snap);
        }
        let _ = snap;
        // No turn ran (nothing was due, or everything due was suspended or terminal): the
        // first pass's read is the host as it is now, as far as this agent is concerned.
        // Otherwise read it again to verify what the steps did.
        let plan = if turns.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            Some(first)
        } else {
            engine.pass_plan_only().await.ok()
        };
        let reasons = once_reasons(&engine, plan.as_ref());
        if reasons.is_empty() {
            RunResult::Converged
        } else {
            print_reasons(&reasons);
            RunResult::Pending
        }
    } else {
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + jitter(config.interval),
            config.interval,
        );
        // After a pass that overran its interval, or a ping held up, one tick comes at once
        // and the next a whole period later: never one tick per missed period in a burst.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ping = systemd.ping_interval().unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(ping);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let housekeeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let pass = async {
                        refresh_desired(&engine, &source).await;
                        engine.pass().await
                    };
                    // Cancelled at an await point by SIGTERM, as at boot: nothing half-done.
                    let outcome = tokio::select! {
                        r = pass => r,
                        _ = engine.wait_shutdown() => break,
                    };
                    match outcome {
                        Ok(_) => systemd.status(&engine.status().snapshot().summary()),
                        Err(e) => warn!("pass failed: {e}"),
                    }
                    jobs.request_lanes().await;
                    // Retention and late sweeps of safety copies, one at a time, off the loop.
                    if !housekeeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        let (engine, busy) = (engine.clone(), housekeeping.clone());
                        tokio::spawn(async move {
                            engine.safety_housekeeping(!opts.once).await;
                            busy.store(false, std::sync::atomic::Ordering::Release);
                        });
                    }
                    systemd.watchdog_ping();
                    // Off the loop: a slow hub must not delay the next pass or the watchdog.
                    let (engine, source) = (engine.clone(), source.clone());
                    tokio::spawn(async move { report(&engine, &source).await });
                }
                _ = watchdog.tick() => {
                    // Progress, not a free-running timer: the lanes' scheduler is responsive.
                    let _ = lanes.stats();
                    systemd.watchdog_ping();
                }
                _ = engine.wait_shutdown() => break,
            }
        }
        let _ = runner.await;
        RunResult::Converged
    };
    signal_task.abort();
    control_task.abort();
    let _ = std::fs::remove_file(&config.control_socket);
    if let Some(t) = metrics_task {
        t.abort();
    }
    Ok(result)
}

/// `GET /metrics` in the Prometheus text format.
async fn serve_metrics(addr: std::net::SocketAddr, engine: Engine) -> std::io::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let e2 = engine.clone();
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let e = engine.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    e.render_metrics(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { e2.wait_shutdown().await })
        .await
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>() * 0.2)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still be killed; never return spuriously.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
