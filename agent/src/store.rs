//! The agent's use of the journal: write-ahead step records, provenance, nonces, audit and the
//! small state kept across restarts. This module is the only place that knows the journal's
//! types; it also implements the gate's `NonceLedger` and `ProvenanceSource` on the journal
//! (the "small traits" that keep `gate` and `journal` independent of each other).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use gate::{
    Approved, Classification, CreateOutcome, GuestProvenance, Incarnation, NonceClaim, NonceLedger,
    NonceRefusal, Origin, ProvenanceSource,
};
use proxmox_client::Upid;

use crate::model::step::{Step, StepKind};

/// How the agent's own create step ended (for `create_left_guest`).
pub use journal::CreateEnd;
pub use journal::JournalError as StoreError;
/// A signed job's journal record and how it ended (see `jobs`).
pub use journal::{JobEnd, JobRecord};
/// Verify windows of risky changes (`reconcile::verify`): the journal's record, as is.
pub use journal::{VerifyPhase, VerifyWindow};

/// A gate decision worth auditing: one entry of the audit log.
#[derive(Debug, Clone)]
pub struct Decision {
    /// None for decisions about the trust document itself (rotations).
    pub vmid: Option<u32>,
    pub op: String,
    pub allowed: bool,
    pub code: String,
    pub message: String,
    pub signers: Vec<String>,
    pub authenticated: bool,
    pub source: std::path::PathBuf,
}

/// A journaled step's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepId(pub journal::StepId);

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Ok,
    Warnings(u32),
    Failed(String),
    Abandoned(String),
}

/// A step the journal holds as not done.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub id: StepId,
    pub vmid: u32,
    pub kind: StepKind,
    pub params: BTreeMap<String, String>,
    pub upid: Option<Upid>,
    pub intent_unix: i64,
    pub destructive: bool,
}

/// The journal, as the agent uses it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    j: journal::Journal,
    /// Syncs running on the blocking pool for closes that returned before them.
    behind: std::sync::Arc<SyncsBehind>,
}

/// Counts the syncs `Store::done_behind` left running, so `settled` can wait for them before
/// the journal is let go.
#[derive(Default)]
struct SyncsBehind {
    running: std::sync::atomic::AtomicUsize,
    finished: tokio::sync::Notify,
}

/// One sync counted in `SyncsBehind`; uncounted on drop, also if the sync panicked (or the
/// runtime dropped it unstarted), so `settled` never waits for a sync that is gone.
struct RunningSync(std::sync::Arc<SyncsBehind>);

impl RunningSync {
    fn start(behind: std::sync::Arc<SyncsBehind>) -> RunningSync {
        behind
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RunningSync(behind)
    }
}

impl Drop for RunningSync {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.finished.notify_waiters();
    }
}

fn kind_from_str(s: &str) -> Option<StepKind> {
    Some(match s {
        "create" => StepKind::Create,
        "set_config" => StepKind::SetConfig,
        "resize" => StepKind::Resize,
        "start" => StepKind::Start,
        "shutdown" => StepKind::Shutdown,
        "stop" => StepKind::Stop,
        "reboot" => StepKind::Reboot,
        "destroy_guest" => StepKind::Destroy,
        "adopt" => StepKind::Adopt,
        "remove_mountpoint" => StepKind::Detach,
        "delete_volume" => StepKind::DeleteVolume,
        _ => return None,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn journal_outcome(outcome: StepOutcome) -> journal::Outcome {
    match outcome {
        StepOutcome::Ok => journal::Outcome::Ok,
        StepOutcome::Warnings(n) => journal::Outcome::Warnings(n),
        StepOutcome::Failed(m) => journal::Outcome::Failed(m),
        StepOutcome::Abandoned(m) => journal::Outcome::Abandoned(m),
    }
}

fn to_in_flight(r: journal::StepRecord) -> Option<InFlight> {
    let kind = kind_from_str(&r.step.kind)?;
    let upid = r.upid().and_then(|u| u.parse::<Upid>().ok());
    Some(InFlight {
        id: StepId(r.id),
        vmid: r.step.vmid,
        kind,
        params: r.step.params.clone(),
        upid,
        intent_unix: r.intent_at_ms / 1000,
        destructive: matches!(r.step.class, journal::StepClass::Destructive { .. }),
    })
}

/// Where a journal write waits for the disk. Most of a step's writes already run on the
/// blocking pool (`off_runtime`, `done_behind`); the rarer ones (provenance, approvals,
/// copies, verify windows, jobs, recovery, compaction) are made on a runtime worker, where a
/// slow fdatasync (a busy disk during backups) stopped every other task of that worker: with
/// two workers, two such writes stopped the control socket, the metrics and every lane.
/// `block_in_place` hands the worker's other tasks to another thread for the wait. On a
/// current-thread runtime (`#[tokio::test]`) or outside tokio the wait stays where it is, as
/// `block_in_place` would panic there.
fn wait_for_disk(wait: &mut dyn FnMut()) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let j = journal::Journal::open(dir)?;
        j.wait_for_disk_in(wait_for_disk);
        Ok(Store {
            j,
            behind: Default::default(),
        })
    }

    /// For read-only commands while the daemon may hold the lock.
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            j: journal::Journal::open_read_only(dir)?,
            behind: Default::default(),
        })
    }

    pub fn journal(&self) -> &journal::Journal {
        &self.j
    }

    /// Task durations earlier runs learned on this node: (worker type, estimate, latest end).
    /// An entry that does not decode is logged and skipped: the type is learned again.
    pub fn task_durations(&self) -> Vec<(String, Duration, Duration)> {
        let entries = match self.j.task_durations() {
            Ok(e) => e,
            Err(e) => {
                tracing::info!("reading the remembered task durations: {e}");
                return Vec::new();
            }
        };
        entries
            .into_iter()
            .filter_map(|entry| match entry {
                Ok(d) => Some((
                    d.worker_type,
                    Duration::from_micros(d.estimate_us),
                    Duration::from_micros(d.latest_us),
                )),
                Err(e) => {
                    tracing::info!("ignoring a remembered task duration: {e}");
                    None
                }
            })
            .collect()
    }

    /// Keeps a learned task duration for later runs, without a sync of its own (advisory: it
    /// rides along with the next durable write; a crash before it loses only learning).
    pub fn remember_task_duration(&self, worker_type: &str, estimate: Duration, latest: Duration) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let d = journal::TaskDuration {
            worker_type: worker_type.to_string(),
            estimate_us: micros(estimate),
            latest_us: micros(latest),
        };
        if let Err(e) = self.j.remember_task_duration(&d) {
            tracing::debug!(worker = worker_type, "remembering a task duration: {e}");
        }
    }

    pub fn check(dir: &Path) -> journal::CheckReport {
        journal::check(dir)
    }

    /// Moves a damaged database aside; returns where it went.
    pub fn move_aside(dir: &Path) -> Result<std::path::PathBuf, StoreError> {
        journal::move_aside(dir)
    }

    /// Runs journal calls on tokio's blocking pool. A durable write waits for the disk (an
    /// fdatasync takes milliseconds on a busy one), and on a runtime worker it would hold up
    /// every other lane's polls and timers meanwhile. A panic inside becomes an error.
    pub async fn off_runtime<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Io {
                dir: self.j.dir().to_path_buf(),
                context: "a journal call on the blocking pool".into(),
                message: e.to_string(),
            }),
        }
    }

    /// Journals the intent of a step, durably, before any PVE call. The intent of a start or
    /// reboot also marks the guest started (see `journal::Journal::intent_starting`).
    pub fn intent(
        &self,
        step: &Step,
        class: &Classification,
        approval: Option<&Approved>,
        operation: Option<&str>,
    ) -> Result<StepId, StoreError> {
        let class = match class {
            Classification::Benign => journal::StepClass::Benign,
            Classification::Destructive { reason } => journal::StepClass::Destructive {
                reason: reason.clone(),
            },
        };
        let new = journal::NewStep {
            vmid: step.vmid,
            kind: step.kind.as_str().to_string(),
            params: step.params.clone(),
            class,
            approval_sha256: approval.map(|a| a.payload_sha256.clone()),
            signers: approval
                .map(|a| {
                    a.signers
                        .iter()
                        .map(|s| format!("{} {}", s.principal, s.fingerprint))
                        .collect()
                })
                .unwrap_or_default(),
            operation: operation.map(str::to_string),
            attempt: 1,
        };
        // A start's intent carries the guest's `started` mark in the same sync.
        let id = if matches!(step.kind, StepKind::Start | StepKind::Reboot) {
            self.j.intent_starting(new)?
        } else {
            self.j.intent(new)?
        };
        Ok(StepId(id))
    }

    pub fn submitted(&self, id: &StepId, upid: &Upid) -> Result<(), StoreError> {
        self.j.submitted(id.0, &upid.to_string())
    }

    pub fn done(&self, id: &StepId, outcome: StepOutcome) -> Result<(), StoreError> {
        self.j.done(id.0, journal_outcome(outcome))
    }

    /// Closes the record of a step whose task's UPID is journaled without waiting for the
    /// disk: the record is written in place (in memory; every 1,000th close also compacts,
    /// in place), and its sync runs on the blocking pool, where it usually shares the next
    /// lane's intent sync (group commit), instead of holding this lane's slot. A close lost
    /// in a crash is rebuilt by recovery from the task's status
    /// (`journal::Journal::done_deferred`); a record without a UPID is synced before this
    /// returns. `settled` waits for the syncs started so far.
    pub fn done_behind(&self, id: &StepId, outcome: StepOutcome) -> Result<(), StoreError> {
        if !self.j.done_deferred(id.0, journal_outcome(outcome))? {
            return Ok(());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.j.sync();
        };
        let journal = self.j.clone();
        let running = RunningSync::start(self.behind.clone());
        runtime.spawn_blocking(move || {
            if let Err(e) = journal.sync() {
                // The close stays in sled's memory; the next durable write syncs it again.
                tracing::warn!("syncing a step's close failed (retried by the next write): {e}");
            }
            // The journal goes before the count does (`settled` promises it is let go).
            drop(journal);
            drop(running);
        });
        Ok(())
    }

    /// Waits until every sync `done_behind` started so far has ended (`drover run` waits for
    /// this after its lanes have stopped, before it lets go of the journal).
    pub async fn settled(&self) {
        loop {
            let finished = self.behind.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self
                .behind
                .running
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            finished.await;
        }
    }

    /// Every step not done. A record of a kind this agent does not know is left alone and
    /// reported loudly: guessing what it did could run it twice.
    pub fn in_flight(&self) -> Result<Vec<InFlight>, StoreError> {
        let mut out = Vec::new();
        for r in self.j.in_flight()? {
            let (id, kind) = (r.id, r.step.kind.clone());
            match to_in_flight(r) {
                Some(f) => out.push(f),
                None => tracing::error!(
                    op_id = %id,
                    kind = kind.as_str(),
                    "in-flight journal record of an unknown step kind; leaving it for an operator"
                ),
            }
        }
        Ok(out)
    }

    /// How many step records are not done (a gauge; unlike `in_flight` it skips nothing).
    pub fn in_flight_count(&self) -> Result<usize, StoreError> {
        Ok(self.j.in_flight()?.len())
    }

    pub fn in_flight_for(&self, vmid: u32) -> Result<Option<InFlight>, StoreError> {
        Ok(self.in_flight()?.into_iter().find(|r| r.vmid == vmid))
    }

    /// A readable listing for `drover journal`.
    pub fn listing(
        &self,
        in_flight_only: bool,
        limit: usize,
    ) -> Result<Vec<journal::StepRecord>, StoreError> {
        if in_flight_only {
            self.j.in_flight()
        } else {
            self.j.recent(limit)
        }
    }

    pub fn provenance(&self, vmid: u32) -> Option<GuestProvenance> {
        let p = self.j.provenance(vmid).ok().flatten()?;
        let origin = if p.created_by_agent && p.adopted_by.is_none() {
            Origin::Created(match p.create_outcome {
                // Older records only ever recorded successful creates.
                None | Some(journal::CreateEnd::Ok) => CreateOutcome::Succeeded,
                Some(journal::CreateEnd::Failed) => CreateOutcome::Failed,
                Some(journal::CreateEnd::Abandoned) => CreateOutcome::Abandoned,
            })
        } else {
            Origin::Adopted
        };
        Some(GuestProvenance {
            origin,
            ever_started: p.started,
            incarnation: p.config_digest.map(|config_digest| Incarnation {
                create_upid: p.create_upid,
                config_digest,
            }),
        })
    }

    /// When the journal recorded this guest's provenance (unix ms), if it knows it.
    pub fn known_since_ms(&self, vmid: u32) -> Option<i64> {
        self.j
            .provenance(vmid)
            .ok()
            .flatten()
            .map(|p| p.created_at_ms)
    }

    /// True when the journal knows where this guest came from (created or adopted): only then
    /// does Drover manage it.
    pub fn is_managed(&self, vmid: u32) -> bool {
        self.j.provenance(vmid).ok().flatten().is_some()
    }

    fn log(&self, what: &str, r: Result<(), StoreError>) {
        if let Err(e) = r {
            tracing::error!("journal: {what}: {e}");
        }
    }

    /// The agent's create task ended OK: this incarnation is the agent's and may hold data from
    /// now on (destroying it needs a signature).
    pub fn created(&self, vmid: u32, id: &StepId, upid: &Upid, digest: &str) {
        self.log(
            "recording provenance",
            self.j
                .record_created(vmid, &id.to_string(), &upid.to_string(), digest),
        );
    }

    /// The agent's create step ended `outcome` (failed or abandoned) and left a guest with
    /// `digest`: cleaning it up stays benign until it is started or its config changes.
    pub fn create_left_guest(
        &self,
        vmid: u32,
        id: &StepId,
        upid: Option<&Upid>,
        digest: &str,
        outcome: CreateEnd,
    ) {
        let upid = upid.map(Upid::to_string);
        self.log(
            "recording provenance",
            self.j
                .record_create_ended(vmid, &id.to_string(), upid.as_deref(), digest, outcome),
        );
    }

    /// The agent is about to start the guest (or saw it running): durable before the call.
    pub fn started(&self, vmid: u32) -> Result<(), StoreError> {
        self.j.record_started(vmid)
    }

    /// An operator's signed `adopt` approval made this guest managed.
    pub fn adopted(
        &self,
        vmid: u32,
        digest: &str,
        approval_sha256: &str,
    ) -> Result<(), StoreError> {
        self.j.record_adopted(vmid, digest, approval_sha256)
    }

    /// Journals (durably, before the call) that Drover detaches a volume from a mount point.
    pub fn detaching(
        &self,
        d: &crate::model::vocabulary::DetachedVolume,
    ) -> Result<(), StoreError> {
        self.j.record_detached(&journal::DetachRecord {
            vmid: d.vmid,
            key: d.key.clone(),
            volume: d.volume.clone(),
            mount: d.mount.clone(),
            at: d.detached_at,
        })
    }

    /// The volumes Drover detached from `vmid`; empty when the journal cannot say (then no
    /// deletion is planned: the safe side).
    pub fn detached(&self, vmid: u32) -> Vec<crate::model::vocabulary::DetachedVolume> {
        match self.j.detached(vmid) {
            Ok(v) => v
                .into_iter()
                .map(|r| crate::model::vocabulary::DetachedVolume {
                    vmid: r.vmid,
                    key: r.key,
                    volume: r.volume,
                    mount: r.mount,
                    detached_at: r.at,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(vmid, "reading detached volumes from the journal: {e}");
                Vec::new()
            }
        }
    }

    /// A detached volume was deleted: nothing is left to plan for it.
    pub fn forget_detached(&self, vmid: u32, volume: &str) {
        self.log(
            "forgetting a deleted volume",
            self.j.forget_detached(vmid, volume),
        );
    }

    pub fn destroyed(&self, vmid: u32) {
        self.log("forgetting a destroyed guest", self.j.forget(vmid));
        self.log("forgetting its verify window", self.j.remove_verify(vmid));
    }

    /// Moves a verify window to `phase`, durably (one journal entry per phase).
    pub fn put_verify(
        &self,
        window: &mut VerifyWindow,
        phase: VerifyPhase,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.j.put_verify(window, phase, detail)
    }

    /// The guest's verify window, open or closed.
    pub fn verify_window(&self, vmid: u32) -> Result<Option<VerifyWindow>, StoreError> {
        self.j.verify_window(vmid)
    }

    /// Every verify window (status, recovery).
    pub fn verify_windows(&self) -> Result<Vec<VerifyWindow>, StoreError> {
        self.j.verify_windows()
    }

    /// Audits a gate decision; a failure is logged (the decision stands).
    pub fn audit(&self, d: &Decision) {
        self.log("writing the audit log", self.audit_durable(d));
    }

    /// Audits a decision that must not take effect unaudited (trust changes): durable when
    /// it returns Ok.
    pub fn audit_durable(&self, d: &Decision) -> Result<(), StoreError> {
        self.j.audit(journal::AuditEntry {
            time_ms: now_ms(),
            allowed: d.allowed,
            code: d.code.clone(),
            vmid: d.vmid,
            step: Some(d.op.clone()),
            signers: d.signers.clone(),
            authenticated: d.authenticated,
            detail: format!("{} ({})", d.message, d.source.display()),
        })
    }

    /// The trust document in force as last recorded (see `trust`).
    pub fn trust_record(&self) -> Result<Option<journal::TrustRecord>, StoreError> {
        self.j.trust()
    }

    pub fn set_trust_record(&self, record: &journal::TrustRecord) -> Result<(), StoreError> {
        self.j.set_trust(record)
    }

    pub fn last_revision(&self) -> Option<u64> {
        self.j.last_revision().ok().flatten()
    }

    pub fn accept_desired(&self, revision: u64, bytes: &[u8]) -> Result<(), StoreError> {
        if self.last_revision() == Some(revision)
            && self
                .j
                .last_known_good()
                .ok()
                .flatten()
                .is_some_and(|(_, b)| b == bytes)
        {
            return Ok(()); // nothing new: no durable write on every pass
        }
        self.j.accept_desired(revision, bytes)
    }

    pub fn last_known_good(&self) -> Option<(u64, Vec<u8>)> {
        self.j.last_known_good().ok().flatten()
    }

    /// Suspends one guest or (None) the whole host, with a reason shown in `drover status`.
    pub fn suspend(&self, vmid: Option<u32>, reason: &str) -> Result<(), StoreError> {
        self.j.suspend(journal::Suspension {
            vmid,
            reason: reason.to_string(),
            since_ms: now_ms(),
        })
    }

    pub fn resume(&self, vmid: Option<u32>) -> Result<bool, StoreError> {
        self.j.resume(vmid)
    }

    pub fn suspensions(&self) -> Vec<journal::Suspension> {
        self.j.suspensions().unwrap_or_default()
    }

    /// A guest is suspended directly or through a host-wide suspension.
    pub fn is_suspended(&self, vmid: u32) -> bool {
        self.j
            .suspensions()
            .map(|s| s.iter().any(|s| s.vmid.is_none() || s.vmid == Some(vmid)))
            .unwrap_or(false)
    }
}

impl Store {
    /// Whether a nonce was already consumed (answers only; the gate's `consume` decides).
    pub fn nonce_consumed(&self, nonce: &str) -> Result<bool, StoreError> {
        self.j.nonce_consumed(nonce)
    }
}

impl Store {
    /// Writes a signed job's record (a phase reached), durably.
    pub fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.j.put_job(job)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.j.job(id)
    }

    /// Every job record, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.j.jobs()
    }

    /// The PVE tasks of `vmid` the journal already ties to something: its recent steps, its
    /// safety copies and its jobs. Looking for the task a lost answer started, a task one of
    /// these names is not it, however close in time (two starts a second apart are both "a
    /// start of this guest by our token").
    pub fn claimed_upids(
        &self,
        vmid: u32,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut claimed: std::collections::BTreeSet<String> = self
            .j
            .recent_for_vmid(vmid, 64)?
            .iter()
            .filter_map(|r| r.upid().map(str::to_string))
            .collect();
        claimed.extend(
            self.copies()?
                .into_iter()
                .filter(|c| c.vmid == vmid)
                .filter_map(|c| c.upid),
        );
        for job in self.jobs()?.into_iter().filter(|j| j.vmid == vmid) {
            claimed.extend(job.upid);
            claimed.extend(
                job.history
                    .into_iter()
                    .map(|(_, _, detail)| detail)
                    .filter(|d| d.starts_with("UPID:")),
            );
        }
        Ok(claimed)
    }

    /// The job of `vmid` that has not ended, if any (at most one runs per guest).
    pub fn active_job(&self, vmid: u32) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .jobs()?
            .into_iter()
            .find(|j| j.vmid == vmid && j.end.is_none()))
    }
}

impl NonceLedger for Store {
    fn state_epoch(&self) -> String {
        self.j.state_epoch()
    }
    fn clock_high_water(&self) -> Option<i64> {
        self.j.clock_high_water()
    }
    fn is_consumed(&self, nonce: &str) -> bool {
        // Unreadable counts as used: the worst case is a fresh request to sign.
        self.j.nonce_consumed(nonce).unwrap_or(true)
    }
    fn consume(&self, claim: &NonceClaim) -> Result<(), NonceRefusal> {
        self.j
            .consume(&journal::NonceClaim {
                nonce: claim.nonce.clone(),
                payload_sha256: claim.payload_sha256.clone(),
                signers: claim.signer_fingerprints.clone(),
                op: claim.op.clone(),
                vmid: claim.vmid,
                expires_at: claim.expires_at,
                now: claim.now,
            })
            .map_err(|e| match e {
                journal::NonceError::Replayed(_) => NonceRefusal::Replayed,
                journal::NonceError::ExpiredForever => NonceRefusal::ExpiredForever,
                journal::NonceError::Storage(m) => NonceRefusal::Unavailable(m),
            })
    }
}

impl ProvenanceSource for Store {
    fn provenance(&self, vmid: u32) -> Option<GuestProvenance> {
        Store::provenance(self, vmid)
    }
}

/// Safety-copy manifests (`safety/`): the journal's record, under the agent's names.
pub use journal::{CopyState, MANIFEST_VERSION, SafetyCopy as CopyManifest};

impl Store {
    /// Writes a manifest durably (before the PVE call it describes).
    pub fn put_copy(&self, m: &CopyManifest) -> Result<(), StoreError> {
        self.j.put_copy(m)
    }

    pub fn copy(&self, id: &str) -> Result<Option<CopyManifest>, StoreError> {
        self.j.copy_record(id)
    }

    /// Every manifest, oldest first.
    pub fn copies(&self) -> Result<Vec<CopyManifest>, StoreError> {
        self.j.copy_records()
    }

    /// Forgets manifests of deleted/failed copies beyond the newest `keep` per guest.
    pub fn prune_copies(&self, keep: usize) -> Result<u64, StoreError> {
        self.j.prune_copy_records(keep)
    }

    /// How a journaled step ended, for a safety copy's protection window: `None` while it
    /// is not done; `Some((done_at_ms, reached_pve))`, where `reached_pve` says whether its
    /// destructive call was submitted (an abandoned step that never was destroyed nothing).
    /// `Err` only for an unreadable journal; a step compacted away reads as done now.
    pub fn step_end(&self, id: u64) -> Result<Option<(i64, bool)>, StoreError> {
        Ok(match self.j.get(journal::StepId(id))? {
            None => Some((now_ms(), true)),
            Some(r) => match &r.phase {
                journal::Phase::Done { upid, .. } => {
                    Some((r.done_at_ms.unwrap_or_else(now_ms), upid.is_some()))
                }
                _ => None,
            },
        })
    }

    /// Consumes a nonce the gate verified through a deferred ledger (`safety::deferred`).
    pub fn consume_deferred(&self, claim: &NonceClaim) -> Result<(), NonceRefusal> {
        NonceLedger::consume(self, claim)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Durable writes made on both of the runtime's workers while the disk takes 1.5 s per
    /// sync: the runtime still runs its other tasks (a short timer here; the control socket,
    /// the metrics and the other lanes in the daemon) while the writes wait, instead of only
    /// after them. Decided by order, not by a time limit: no write can finish before its
    /// sync, so the timer must be done while every write is still waiting.
    #[test]
    fn a_slow_disk_under_writes_on_both_workers_does_not_stop_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .journal()
            .on_sync(|_| std::thread::sleep(Duration::from_millis(1500)));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // More writers than workers, so that each worker holds one whichever way tokio
            // spreads the tasks.
            let writers: Vec<_> = (101..105)
                .map(|vmid| {
                    let store = store.clone();
                    tokio::spawn(async move { store.suspend(Some(vmid), "maintenance") })
                })
                .collect();
            tokio::spawn(tokio::time::sleep(Duration::from_millis(10)))
                .await
                .unwrap();
            let finished = writers.iter().filter(|w| w.is_finished()).count();
            for w in writers {
                w.await.unwrap().unwrap();
            }
            assert_eq!(
                finished, 0,
                "the timer's task ran only after {finished} write(s) had their sync"
            );
        });
        assert!((101..105).all(|vmid| store.is_suspended(vmid)));
    }
}
