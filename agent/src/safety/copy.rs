//! Taking a copy: preflight (every refusal, no side effect), then journal → quiesce → vzdump or
//! snapshot → verify (`safety-nets.md` §6.1). The manifest is durable as `creating` before the
//! first PVE mutation, so a crash at any point leaves a record the boot sweep resolves.

use std::collections::BTreeMap;
use std::time::Duration;

use proxmox_client::{
    BackupCompression, BackupMode, GuestStatus, LxcConfig, ShutdownOptions, TaskOutcome, Upid,
    VzdumpRequest, VzdumpStarted,
};
use tracing::{Instrument, info, info_span, warn};

use super::config::Compress;
use super::coverage::Coverage;
use super::{CopyError, CopyManifest, CopyOp, CopyState, SafetyCopies, now_ms};
use crate::store::MANIFEST_VERSION;

/// Seconds a clean shutdown may take before PVE stops the CT hard (as the engine's shutdown).
const SHUTDOWN_TIMEOUT_SECS: u32 = 60;

/// How the copy is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `POST /nodes/{node}/vzdump` to the safety storage (stop mode, after a clean shutdown).
    Vzdump { storage: String },
    /// A snapshot on the guest's own storage (rollback on lvmthin/rbd/btrfs only).
    Snapshot { storage: String },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Vzdump { .. } => "vzdump",
            Method::Snapshot { .. } => "snapshot",
        }
    }
    pub fn storage(&self) -> &str {
        match self {
            Method::Vzdump { storage } | Method::Snapshot { storage } => storage,
        }
    }
}

/// What [`SafetyCopies::preflight`] found: enough to take the copy and to bind the approval.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub vmid: u32,
    pub op: CopyOp,
    pub method: Method,
    /// PVE's config digest now: the approval's `guest-config-sha1`.
    pub digest: String,
    pub hostname: Option<String>,
    pub config: LxcConfig,
    pub coverage: Coverage,
    pub running: bool,
    /// Bytes the copy is expected to need (the last copy's size, else the covered volumes').
    pub estimate_bytes: u64,
    /// Drover's expired copies of this guest to release first, so the new one stays within
    /// `keep_per_guest`.
    pub release_first: Vec<String>,
}

impl Preflight {
    /// The `bind.*` lines the approval must carry: `safety` (where the copy goes) and, when a
    /// vzdump cannot hold every volume, `uncovered`.
    pub fn binding(&self) -> BTreeMap<String, String> {
        let mut b = BTreeMap::new();
        match &self.method {
            Method::Vzdump { storage } => {
                b.insert("safety".to_string(), format!("vzdump@{storage}"));
                if let Some(u) = self.coverage.uncovered_binding() {
                    b.insert("uncovered".to_string(), u);
                }
            }
            Method::Snapshot { .. } => {
                b.insert("safety".to_string(), "snapshot".to_string());
            }
        }
        b
    }

    /// One sentence for the approval request and the status board.
    pub fn describe(&self) -> String {
        match &self.method {
            Method::Vzdump { storage } => {
                let mut s = format!(
                    "before this step Drover takes a protected vzdump of {} to storage {storage}",
                    self.coverage.covered.join(", ")
                );
                if !self.coverage.uncovered.is_empty() {
                    s.push_str(&format!(
                        "; NOT in the copy and lost: {} (bind mounts' host directories are not deleted)",
                        self.coverage.uncovered.join(", ")
                    ));
                }
                s
            }
            Method::Snapshot { storage } => {
                format!("before this step Drover takes a snapshot on storage {storage}")
            }
        }
    }
}

/// Storage types where a CT snapshot can be rolled back to whatever snapshot (§1.6).
fn snapshot_rolls_back_freely(storage_type: &str) -> bool {
    matches!(storage_type, "lvmthin" | "rbd" | "btrfs")
}

impl SafetyCopies {
    /// Every refusal, read from CURRENT PVE state, before any side effect.
    pub async fn preflight(&self, vmid: u32, op: CopyOp) -> Result<Preflight, CopyError> {
        let Some(storage) = self.policy.storage.clone() else {
            return Err(CopyError::new(
                "safety_storage_unset",
                "destructive steps need a storage for safety copies: set [safety] storage in drover.toml (Drover never falls back to `local`)",
            ));
        };
        let node = &self.node;
        let config = self
            .client
            .lxc_config(node, vmid, false)
            .await
            .map_err(|e| CopyError::pve("reading the guest's config", &e))?;
        if let Some(lock) = &config.lock {
            return Err(CopyError::new(
                "guest_locked",
                format!("CT {vmid} is locked ({lock}); no copy is taken while PVE holds a lock (a stale lock needs `pct unlock {vmid}` on the node)"),
            )
            .transient());
        }
        if config.protection == Some(true) && matches!(op, CopyOp::Destroy | CopyOp::Restore) {
            return Err(CopyError::new(
                "guest_protected",
                format!(
                    "CT {vmid} has protection=1; PVE would refuse the step, so nothing is stopped or copied"
                ),
            ));
        }
        let status = self
            .client
            .lxc_status(node, vmid)
            .await
            .map_err(|e| CopyError::pve("reading the guest's status", &e))?;
        let running = status.entry.status == GuestStatus::Running;
        let coverage = Coverage::of(&config);
        let mut method = Method::Vzdump {
            storage: storage.clone(),
        };
        if op == CopyOp::Rollback
            && let Some(rootfs_storage) = config.rootfs.as_ref().and_then(|r| r.storage())
        {
            let storages = self
                .client
                .list_storages(node, None)
                .await
                .map_err(|e| CopyError::pve("listing storages", &e))?;
            let kind = storages
                .iter()
                .find(|s| s.storage.as_deref() == Some(rootfs_storage))
                .map(|s| s.storage_type.clone())
                .unwrap_or_default();
            // ZFS rolls back only to the newest snapshot: a safety snapshot would break the
            // rollback itself (§3 item 11), so ZFS (and anything unknown) gets a vzdump.
            if snapshot_rolls_back_freely(&kind)
                && self
                    .client
                    .lxc_has_feature(node, vmid, "snapshot", None)
                    .await
                    .map_err(|e| CopyError::pve("asking for the snapshot feature", &e))?
            {
                method = Method::Snapshot {
                    storage: rootfs_storage.to_string(),
                };
            }
        }
        let mut estimate_bytes = 0;
        let mut release_first = Vec::new();
        if let Method::Vzdump { storage } = &method {
            let st = match self.client.storage_status(node, storage).await {
                Ok(s) => s,
                Err(e)
                    if e.is_not_found()
                        || e.is_permission()
                        || e.to_string().contains("does not exist") =>
                {
                    return Err(CopyError::new(
                        "safety_storage_unusable",
                        format!("safety storage {storage:?} cannot be used on node {node}: {e}"),
                    ));
                }
                Err(e) => return Err(CopyError::pve("reading the safety storage", &e)),
            };
            if !st.supports("backup") {
                return Err(CopyError::new(
                    "safety_storage_unusable",
                    format!(
                        "safety storage {storage:?} does not hold backups (its content is {:?}); add `backup` to its content types",
                        st.content
                    ),
                ));
            }
            if st.active == Some(false) || st.enabled == Some(false) {
                return Err(CopyError::new(
                    "safety_storage_unusable",
                    format!("safety storage {storage:?} is not active on node {node}"),
                )
                .transient());
            }
            let copies = self.store.copies().map_err(|e| CopyError::journal(&e))?;
            let last_size = copies
                .iter()
                .rev()
                .filter(|c| c.vmid == vmid && c.state == CopyState::Complete)
                .find_map(|c| c.size);
            estimate_bytes = last_size.unwrap_or(coverage.covered_bytes);
            let need = (estimate_bytes as f64 * self.policy.min_free_ratio) as u64;
            let avail = st.avail.unwrap_or(0);
            if avail < need {
                return Err(CopyError::new(
                    "safety_copy_no_space",
                    format!(
                        "safety storage {storage:?} has {avail} bytes free; the copy of CT {vmid} needs about {estimate_bytes} × {} = {need}",
                        self.policy.min_free_ratio
                    ),
                ));
            }
            release_first = self.releases_needed(&copies, vmid, storage)?;
        }
        Ok(Preflight {
            vmid,
            op,
            method,
            digest: config.digest.clone().unwrap_or_default(),
            hostname: config.hostname.clone(),
            config,
            coverage,
            running,
            estimate_bytes,
            release_first,
        })
    }

    /// Takes a verified copy for `step_id` (the caller's journal step or job id). `signed` is
    /// the approval's `bind.*` map: it must equal [`Preflight::binding`], so uncovered volumes
    /// are never lost without the operator's signature on their names.
    pub async fn take(
        &self,
        pre: &Preflight,
        step_id: &str,
        signed: &BTreeMap<String, String>,
    ) -> Result<CopyManifest, CopyError> {
        let vmid = pre.vmid;
        let want = pre.binding();
        if signed != &want {
            return Err(CopyError::new(
                "safety_copy_incomplete",
                format!(
                    "the approval binds {:?}, the copy needs {:?}: the uncovered volumes ({}) must be named in the signed request",
                    signed,
                    want,
                    if pre.coverage.uncovered.is_empty() {
                        "none".to_string()
                    } else {
                        pre.coverage.uncovered.join(", ")
                    }
                ),
            ));
        }
        for id in &pre.release_first {
            self.release(id).await?;
        }
        let epoch = gate::NonceLedger::state_epoch(&self.store);
        let id = format!("{epoch}-{step_id}");
        let notes = format!("drover:{}:{id}", pre.op.kind());
        let mut m = CopyManifest {
            id: id.clone(),
            manifest_version: MANIFEST_VERSION,
            kind: pre.op.kind().into(),
            op: pre.op.op_name().into(),
            method: pre.method.name().into(),
            host: self.node.clone(),
            vmid,
            hostname: pre.hostname.clone(),
            step_id: step_id.into(),
            storage: pre.method.storage().into(),
            notes,
            state: CopyState::Creating,
            created_at_ms: now_ms(),
            completed_at_ms: None,
            protect_until_ms: None,
            config_digest: Some(pre.digest.clone()).filter(|d| !d.is_empty()),
            covered: pre.coverage.covered.clone(),
            uncovered: pre.coverage.uncovered.clone(),
            was_running: pre.running,
            upid: None,
            volid: None,
            format: None,
            size: None,
            ctime: None,
            total_bytes_written: None,
            sha256: None,
            hash_source: None,
            snapname: None,
            warnings: Vec::new(),
        };
        // Durable before any PVE mutation: no copy without a record, and a crash after the
        // shutdown still knows the guest ran.
        self.store
            .put_copy(&m)
            .map_err(|e| CopyError::journal(&e))?;
        self.busy_insert(&id);
        let span = info_span!("safety_copy", vmid, copy = %id, method = pre.method.name());
        let result = self.quiesce_copy_verify(pre, &mut m).instrument(span).await;
        self.busy_remove(&id);
        match result {
            Ok(()) => Ok(m),
            Err(e) => {
                warn!(vmid, copy = %id, "safety copy failed: {e}");
                m.state = CopyState::Failed {
                    reason: format!("{}: {}", e.code_and_reason(), e.message),
                };
                m.completed_at_ms = Some(now_ms());
                if let Err(je) = self.store.put_copy(&m) {
                    warn!(vmid, "journaling the failed copy: {je}");
                }
                if m.was_running {
                    self.restart(vmid).await;
                }
                Err(e)
            }
        }
    }

    async fn quiesce_copy_verify(
        &self,
        pre: &Preflight,
        m: &mut CopyManifest,
    ) -> Result<(), CopyError> {
        let vmid = pre.vmid;
        if pre.running {
            info!(vmid, "quiescing: clean shutdown before the copy");
            let upid = self
                .client
                .shutdown_lxc(
                    &self.node,
                    vmid,
                    &ShutdownOptions {
                        timeout: Some(SHUTDOWN_TIMEOUT_SECS),
                        force_stop: true,
                    },
                )
                .await
                .map_err(|e| {
                    CopyError::failed("quiesce_failed", format!("shutting down CT {vmid}: {e}"))
                })?;
            self.wait_ok(
                &upid,
                Duration::from_secs(u64::from(SHUTDOWN_TIMEOUT_SECS) + 60),
                "quiesce_failed",
            )
            .await?;
        }
        match &pre.method {
            Method::Vzdump { storage } => self.vzdump(pre, storage, m).await,
            Method::Snapshot { .. } => self.snapshot(pre, m).await,
        }
    }

    async fn vzdump(
        &self,
        pre: &Preflight,
        storage: &str,
        m: &mut CopyManifest,
    ) -> Result<(), CopyError> {
        let vmid = pre.vmid;
        // Every parameter explicit, so /etc/vzdump.conf cannot change what the copy is:
        // protected before pruning, no pruning of the operator's backups, Drover's marker.
        let mut req = VzdumpRequest::new(vmid, storage);
        req.mode = Some(BackupMode::Stop);
        req.compress = Some(match self.policy.compress {
            Compress::Zstd => BackupCompression::Zstd,
            Compress::Gzip => BackupCompression::Gzip,
            Compress::None => BackupCompression::None,
        });
        req.protected = true;
        req.remove = Some(false);
        req.notes_template = Some(m.notes.clone());
        req.lockwait = Some(self.policy.lockwait_min);
        req.stopwait = Some(10);
        let started = self.client.vzdump(&self.node, &req).await.map_err(|e| {
            CopyError::failed("vzdump_refused", format!("vzdump of CT {vmid}: {e}"))
        })?;
        let upid = match started {
            VzdumpStarted::Task(u) => u,
            VzdumpStarted::NotOnNode => {
                return Err(CopyError::failed(
                    "not_on_node",
                    format!(
                        "vzdump answered \"OK\" without a task: CT {vmid} is not on node {} and nothing was backed up",
                        self.node
                    ),
                ));
            }
        };
        m.upid = Some(upid.to_string());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))?;
        info!(vmid, upid = %upid, "vzdump started");
        let deadline = Duration::from_secs(u64::from(self.policy.lockwait_min) * 60 + 3600);
        let outcome = self
            .client
            .wait_task(&upid, &self.wait_options(deadline))
            .await
            .map_err(|e| CopyError::pve(&format!("waiting for {upid}"), &e))?;
        self.finish_vzdump(m, &upid, &outcome, Some(&pre.config))
            .await
    }

    /// Turns a finished vzdump task into a complete manifest, or the reason it is not one.
    pub(crate) async fn finish_vzdump(
        &self,
        m: &mut CopyManifest,
        upid: &Upid,
        outcome: &TaskOutcome,
        current: Option<&LxcConfig>,
    ) -> Result<(), CopyError> {
        match outcome {
            TaskOutcome::Ok => {}
            TaskOutcome::Warnings(n) => {
                m.warnings.push(format!("vzdump ended with {n} warning(s)"))
            }
            TaskOutcome::Failed { message, log_tail } => {
                let reason = if message.contains("unexpected status") {
                    "lock_timeout"
                } else if message.contains("job errors") {
                    "job_errors"
                } else {
                    "task_failed"
                };
                let why = log_tail
                    .iter()
                    .rev()
                    .find(|l| l.contains("ERROR") || l.contains("can't acquire lock"))
                    .cloned()
                    .unwrap_or_default();
                let err = CopyError::failed(
                    reason,
                    format!("vzdump task {upid} ended {message:?} {why}")
                        .trim_end()
                        .to_string(),
                );
                // Another backup held the node's vzdump lock: it ends by itself.
                return Err(if reason == "lock_timeout" {
                    err.transient()
                } else {
                    err
                });
            }
        }
        let evidence = super::verify::vzdump_archive(self, m, upid, current).await?;
        m.volid = Some(evidence.volid);
        m.format = evidence.format;
        m.size = evidence.size;
        m.ctime = evidence.ctime;
        m.total_bytes_written = evidence.total_bytes_written;
        m.sha256 = evidence.sha256;
        m.hash_source = Some(evidence.hash_source);
        m.warnings.extend(evidence.warnings);
        m.state = CopyState::Complete;
        m.completed_at_ms = Some(now_ms());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))?;
        info!(
            vmid = m.vmid,
            volid = m.volid.as_deref().unwrap_or(""),
            sha256 = m.sha256.as_deref().unwrap_or("none"),
            "safety copy verified"
        );
        Ok(())
    }

    async fn snapshot(&self, pre: &Preflight, m: &mut CopyManifest) -> Result<(), CopyError> {
        let vmid = pre.vmid;
        let short: String = m.id.chars().take(8).collect();
        let name = format!("drover-prerb-{}-{short}", m.step_id)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect::<String>()
            .to_ascii_lowercase();
        m.snapname = Some(name.clone());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))?;
        let upid = self
            .client
            .create_snapshot(&self.node, vmid, &name, Some(&m.notes))
            .await
            .map_err(|e| {
                CopyError::failed("snapshot_refused", format!("snapshot of CT {vmid}: {e}"))
            })?;
        m.upid = Some(upid.to_string());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))?;
        self.wait_ok(&upid, Duration::from_secs(600), "task_failed")
            .await?;
        super::verify::snapshot(self, m).await?;
        m.state = CopyState::Complete;
        m.completed_at_ms = Some(now_ms());
        self.store.put_copy(m).map_err(|e| CopyError::journal(&e))
    }

    async fn wait_ok(
        &self,
        upid: &Upid,
        deadline: Duration,
        reason: &'static str,
    ) -> Result<(), CopyError> {
        match self
            .client
            .wait_task(upid, &self.wait_options(deadline))
            .await
            .map_err(|e| CopyError::pve(&format!("waiting for {upid}"), &e))?
        {
            TaskOutcome::Ok | TaskOutcome::Warnings(_) => Ok(()),
            TaskOutcome::Failed { message, .. } => Err(CopyError::failed(
                reason,
                format!("task {upid} failed: {message}"),
            )),
        }
    }

    /// Compensation: a guest the copy stopped is started again (best effort, logged).
    pub(crate) async fn restart(&self, vmid: u32) {
        match self.client.lxc_status(&self.node, vmid).await {
            Ok(s) if s.entry.status == GuestStatus::Running => return,
            Ok(_) => {}
            Err(e) => {
                warn!(vmid, "cannot read the guest to restart it: {e}");
                return;
            }
        }
        info!(vmid, "restarting the guest the failed copy stopped");
        match self.client.start_lxc(&self.node, vmid).await {
            Ok(upid) => {
                if let Err(e) = self
                    .wait_ok(&upid, Duration::from_secs(120), "restart_failed")
                    .await
                {
                    warn!(vmid, "restarting after the failed copy: {e}");
                }
            }
            Err(e) => warn!(vmid, "restarting after the failed copy: {e}"),
        }
    }
}
