//! The `drover job new` and `drover jobs` verbs (the front door of `jobs/`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::approval::trust::Trust;
use crate::clock::unix_now;
use crate::jobs::inbox::JobDirs;
use crate::jobs::plan::{JobAsk, plan_job};
use crate::reconcile::pve::WaitPolicy;
use crate::service::config::Config;
use crate::store::Store;

/// Default validity of a job request.
pub const DEFAULT_JOB_TTL_SECS: i64 = 3600;

fn dirs(config: &Config) -> anyhow::Result<JobDirs> {
    let source = crate::desired::source::Source::from_config(config)?;
    let approvals =
        crate::approval::requests::Approvals::new(&config.state_dir, Some(source.approvals_dir()));
    Ok(JobDirs::new(&config.state_dir, approvals.candidate_dirs()))
}

/// `drover job new KIND --vmid N ...`: renders the job from the host's current state into
/// `jobs/pending/` and prints it with the commands to sign and submit it (0 rendered, 1
/// refused with the job's code).
pub async fn job_new(
    path: &Path,
    ask: JobAsk,
    ticket: Option<&str>,
    ttl_secs: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    if !config.state_dir.join("db").exists() {
        // A request binds the journal's state epoch; without a journal there is none yet.
        anyhow::bail!(
            "[no_journal] there is no journal in {} yet: start the agent once (`drover run --once` or the service) before rendering a job",
            config.state_dir.display()
        );
    }
    let store = Store::open_read_only(&config.state_dir)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let domain =
        match crate::approval::trust::effective_read_only(&config.trust.file, &config.state_dir) {
            Trust::Valid(t) => t.domain.clone(),
            Trust::Invalid { code, message } => {
                anyhow::bail!(
                    "[{code}] {message}: a job cannot be verified without a trust document"
                )
            }
        };
    let pve = crate::service::daemon::pve_from_config(&config, WaitPolicy::production())?;
    let safety = crate::safety::SafetyCopies::new(
        pve.client.clone(),
        config.host.clone(),
        store.clone(),
        config.safety.clone(),
        None,
    );
    let (planned, _) = match plan_job(&pve, Some(&safety), &ask).await {
        Ok(x) => x,
        Err(r) => {
            if json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"rendered": false, "code": r.code, "message": r.message})
                );
            } else {
                crate::outln!("{}: {}", r.code, r.message);
            }
            return Ok(ExitCode::from(1));
        }
    };
    let ctx = gate::GateContext {
        fleet: config.fleet.clone(),
        host: config.host.clone(),
        domain: domain.clone(),
        epoch: gate::NonceLedger::state_epoch(&store),
    };
    let now = unix_now();
    let nonce = gate::nonce_hex(rand::random::<[u8; 16]>());
    let text = gate::render_job_request(
        &ctx,
        &planned,
        &nonce,
        now,
        now + ttl_secs.clamp(60, 24 * 3600),
        ticket,
    )
    .map_err(|r| anyhow::anyhow!("[{}] {}", r.code, r.message))?;
    let payload = gate::JobPayload::parse(text.as_bytes())
        .map_err(|r| anyhow::anyhow!("[{}] {}", r.code, r.message))?;
    let dirs = dirs(&config)?;
    let file = dirs
        .write_pending(&payload, &text)
        .with_context(|| format!("writing the request into {}", dirs.pending.display()))?;
    crate::approval::files::give_to_state_owner(&config.state_dir, &[&dirs.pending]);
    let sign = format!(
        "ssh-keygen -Y sign -f ~/.ssh/YOUR_OPERATOR_KEY -n destructive-op-v1@{domain} {}",
        file.display()
    );
    let approve = format!("drover approve {} {}.sig", file.display(), file.display());
    let after = if payload.binds.get("hold").map(String::as_str) == Some("1") {
        format!(
            "after the job CT {} is held (suspended) until `drover resume {}`",
            payload.vmid, payload.vmid
        )
    } else {
        "after the job the desired state applies again (benign drift is converged)".to_string()
    };
    if json {
        crate::outln!(
            "{}",
            serde_json::json!({"rendered": true, "file": file, "text": text, "sign": sign, "approve": approve, "after": after})
        );
    } else {
        crate::outln!(
            "== {}\n{text}\n{after}\nsign with:\n  {sign}\nthen submit with:\n  {approve}",
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover jobs`: pending signature, queued, running with its phase, done, failed with the
/// reason (0 nothing pending or running, 2 something is).
pub fn jobs(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let store = Store::open_read_only(&config.state_dir)
        .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?;
    let rows = crate::jobs::listing::rows(&store, &dirs(&config)?);
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        crate::out!("{}", crate::jobs::listing::to_text(&rows));
    }
    let open = rows
        .iter()
        .any(|r| matches!(r.state.as_str(), "pending_signature" | "queued" | "running"));
    Ok(if open {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
