//! The boot sweep (`safety-nets.md` §6.1, "Boot sweep for orphans"): a crash can leave a
//! manifest `creating` (the agent died while vzdump ran, or before it saw the task end) or a
//! backup with Drover's notes marker whose manifest never learnt its volid. The sweep
//! resolves every `creating` manifest from PVE's task (adopting a task that finished while the
//! agent was down), adopts marked archives of its own manifests, and records marked archives
//! no manifest knows as `orphan`: reported, never deleted.

use proxmox_client::{ContentFilter, TaskExit, TaskOutcome, TaskState, Upid};
use tracing::{info, warn};

use super::{CopyError, CopyManifest, CopyState, SafetyCopies, now_ms};
use crate::store::MANIFEST_VERSION;

/// What the sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// `(copy id, new state)`.
    pub resolved: Vec<(String, String)>,
    /// Copies whose vzdump still runs (resolved by a later sweep).
    pub running: Vec<String>,
    /// Marked archives without a manifest (recorded as `orphan`).
    pub orphans: Vec<String>,
    /// Guests started again because the copy that stopped them failed.
    pub restarted: Vec<u32>,
    /// PVE could not be asked (the sweep is retried).
    pub errors: Vec<String>,
}

impl SafetyCopies {
    /// Resolves what a crash left (see the module doc). Safe to run repeatedly. `scan`
    /// also lists the safety storage for marked backups no manifest knows (one request; the
    /// daemon does it at boot, and whenever a manifest could be adopted from its marker).
    pub async fn sweep(&self, scan: bool) -> SweepReport {
        let mut report = SweepReport::default();
        let copies = match self.store.copies() {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(format!("reading the journal: {e}"));
                return report;
            }
        };
        for m in copies {
            if m.state != CopyState::Creating || self.is_busy(&m.id) {
                continue;
            }
            let id = m.id.clone();
            let was_running = m.was_running;
            let vmid = m.vmid;
            match self.resolve_creating(m).await {
                Ok(Some(state)) => {
                    info!(copy = %id, state = %state, "boot sweep resolved a safety copy");
                    if state == "failed" && was_running && self.restart_needed(vmid).await {
                        self.restart(vmid).await;
                        report.restarted.push(vmid);
                    }
                    report.resolved.push((id, state));
                }
                Ok(None) => report.running.push(id),
                Err(e) => report.errors.push(format!("{id}: {e}")),
            }
        }
        // A crash left something to resolve: its archive may carry only the marker.
        let candidates = !report.resolved.is_empty();
        if !(scan || candidates) {
            return report;
        }
        if let Err(e) = self.adopt_marked(&mut report).await {
            report.errors.push(e.to_string());
        }
        report
    }

    /// Whether the guest still exists stopped (a destroy that already ran needs nothing).
    async fn restart_needed(&self, vmid: u32) -> bool {
        matches!(
            self.client.lxc_status(&self.node, vmid).await,
            Ok(s) if s.entry.status != proxmox_client::GuestStatus::Running
        )
    }

    /// `Some(new state)` once decided, `None` while the task still runs.
    async fn resolve_creating(&self, mut m: CopyManifest) -> Result<Option<String>, CopyError> {
        let worker = if m.method == "snapshot" {
            "vzsnapshot"
        } else {
            "vzdump"
        };
        let upid = match m.upid.as_deref().and_then(|u| u.parse::<Upid>().ok()) {
            Some(u) => Some(u),
            None => self.find_task(&m, worker).await?,
        };
        let Some(upid) = upid else {
            // The call never reached PVE (or its task is gone from the index): no copy.
            self.mark_failed(
                &mut m,
                "safety_copy_failed(no_task): the agent stopped before the copy's task started",
            )?;
            return Ok(Some("failed".into()));
        };
        if m.upid.is_none() {
            m.upid = Some(upid.to_string());
            self.store
                .put_copy(&m)
                .map_err(|e| CopyError::journal(&e))?;
        }
        let status = self
            .client
            .task_status(&upid)
            .await
            .map_err(|e| CopyError::pve(&format!("reading {upid}"), &e))?;
        if status.status == TaskState::Running {
            return Ok(None);
        }
        let outcome = match status.exit() {
            Some(TaskExit::Ok) => TaskOutcome::Ok,
            Some(TaskExit::Warnings(n)) => TaskOutcome::Warnings(n),
            Some(TaskExit::Error(message)) => TaskOutcome::Failed {
                message,
                log_tail: Vec::new(),
            },
            None => return Ok(None),
        };
        if m.method == "snapshot" {
            let verdict = match &outcome {
                TaskOutcome::Failed { message, .. } => {
                    Err(CopyError::failed("task_failed", message.clone()))
                }
                _ => super::verify::snapshot(self, &m).await,
            };
            return match verdict {
                Ok(()) => {
                    m.state = CopyState::Complete;
                    m.completed_at_ms = Some(now_ms());
                    m.warnings.push("adopted by the boot sweep".into());
                    self.store
                        .put_copy(&m)
                        .map_err(|e| CopyError::journal(&e))?;
                    Ok(Some("complete".into()))
                }
                Err(e) => {
                    self.mark_failed(&mut m, &format!("{}: {}", e.code_and_reason(), e.message))?;
                    Ok(Some("failed".into()))
                }
            };
        }
        // The archived config is compared with the guest's current one only while that is
        // still the config the copy was taken of.
        let current = match self.client.lxc_config(&self.node, m.vmid, false).await {
            Ok(c) if c.digest.is_some() && c.digest == m.config_digest => Some(c),
            _ => None,
        };
        if current.is_none() {
            m.warnings
                .push("sweep: the guest's config changed or is gone; the archived config was not compared".into());
        }
        m.warnings.push("adopted by the boot sweep".into());
        match self
            .finish_vzdump(&mut m, &upid, &outcome, current.as_ref())
            .await
        {
            Ok(()) => Ok(Some("complete".into())),
            Err(e) if e.transient => Err(e),
            Err(e) => {
                self.mark_failed(&mut m, &format!("{}: {}", e.code_and_reason(), e.message))?;
                Ok(Some("failed".into()))
            }
        }
    }

    /// The task our own token started for this copy, if the UPID was never journaled: the
    /// earliest of the guest's tasks of that kind from the copy's time on that the journal
    /// ties to nothing else (another manifest, a step, a job). Two copies of one guest can
    /// start seconds apart (a retry after a failed copy, a restart), so "the earliest in the
    /// window" alone can be the previous copy's task: this copy would then take that archive
    /// as its own, and its real archive would be left an orphan.
    async fn find_task(&self, m: &CopyManifest, worker: &str) -> Result<Option<Upid>, CopyError> {
        let claimed = self
            .store
            .claimed_upids(m.vmid)
            .map_err(|e| CopyError::journal(&e))?;
        crate::lost_task::find_unclaimed_task(
            &self.client,
            &self.node,
            worker,
            m.vmid,
            m.created_at_ms / 1000,
            &claimed,
        )
        .await
        .map_err(|e| CopyError::pve("listing tasks", &e))
    }

    fn mark_failed(&self, m: &mut CopyManifest, reason: &str) -> Result<(), CopyError> {
        m.state = CopyState::Failed {
            reason: reason.to_string(),
        };
        m.completed_at_ms = Some(now_ms());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))
    }

    /// Backups on the safety storage whose notes carry Drover's marker: those of a manifest
    /// without a volid are adopted into it; the rest become `orphan` records.
    async fn adopt_marked(&self, report: &mut SweepReport) -> Result<(), CopyError> {
        let Some(storage) = self.policy.storage.clone() else {
            return Ok(());
        };
        let listing = match self
            .client
            .storage_content(
                &self.node,
                &storage,
                &ContentFilter {
                    content: Some("backup".into()),
                    vmid: None,
                },
            )
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(CopyError::pve("listing the safety storage", &e)),
        };
        let copies = self.store.copies().map_err(|e| CopyError::journal(&e))?;
        for entry in listing {
            let Some(notes) = entry.notes.as_deref().filter(|n| n.starts_with("drover:")) else {
                continue;
            };
            if copies
                .iter()
                .any(|c| c.volid.as_deref() == Some(entry.volid.as_str()))
            {
                continue;
            }
            if let Some(own) = copies
                .iter()
                .find(|c| c.notes == notes && c.volid.is_none() && c.method == "vzdump")
            {
                let mut m = own.clone();
                m.volid = Some(entry.volid.clone());
                m.size = entry.size;
                m.ctime = entry.ctime;
                m.format = entry.format.clone();
                m.warnings
                    .push("adopted by the boot sweep from its notes marker".into());
                let path = self
                    .client
                    .volume_info(&self.node, &storage, &entry.volid)
                    .await
                    .ok()
                    .map(|i| i.path);
                if let Some(p) = path.filter(|p| p.starts_with('/')) {
                    let pb = std::path::PathBuf::from(p);
                    if let Ok(Ok((hex, _))) =
                        tokio::task::spawn_blocking(move || super::verify::sha256_file(&pb)).await
                    {
                        m.sha256 = Some(hex);
                        m.hash_source = Some("agent".into());
                    }
                }
                if !entry.is_protected() {
                    // Never leave an unprotected Drover copy: expire it now, so the next
                    // retention pass deletes it.
                    m.protect_until_ms = Some(now_ms());
                }
                m.state = CopyState::Complete;
                m.completed_at_ms = Some(now_ms());
                self.store
                    .put_copy(&m)
                    .map_err(|e| CopyError::journal(&e))?;
                report.resolved.push((m.id.clone(), "complete".into()));
                continue;
            }
            warn!(volid = %entry.volid, notes, "a backup carries Drover's marker but no manifest of this journal knows it; recording it as an orphan (never deleted)");
            let id = format!("orphan-{}", entry.volid.replace(['/', ':'], "_"));
            let m = CopyManifest {
                id: id.clone(),
                manifest_version: MANIFEST_VERSION,
                kind: notes.split(':').nth(1).unwrap_or("unknown").to_string(),
                op: String::new(),
                method: "vzdump".into(),
                host: self.node.clone(),
                vmid: entry.vmid.unwrap_or(0),
                hostname: None,
                step_id: String::new(),
                storage: storage.clone(),
                notes: notes.to_string(),
                state: CopyState::Orphan,
                created_at_ms: entry.ctime.map(|t| t * 1000).unwrap_or_else(now_ms),
                completed_at_ms: None,
                protect_until_ms: None,
                config_digest: None,
                covered: Vec::new(),
                uncovered: Vec::new(),
                was_running: false,
                upid: None,
                volid: Some(entry.volid.clone()),
                format: entry.format.clone(),
                size: entry.size,
                ctime: entry.ctime,
                total_bytes_written: None,
                sha256: None,
                hash_source: None,
                snapname: None,
                warnings: vec!["found by the boot sweep without a manifest".into()],
            };
            if copies.iter().all(|c| c.id != id) {
                self.store
                    .put_copy(&m)
                    .map_err(|e| CopyError::journal(&e))?;
            }
            report.orphans.push(entry.volid);
        }
        Ok(())
    }
}
