//! The engine: one pass over the host, and one lane turn per guest.
//!
//! A pass reads the desired document and the whole host (N + 2 API calls), plans, and asks the
//! lanes to reconcile every guest that has something to do. A lane turn re-reads its guest,
//! re-plans it (level-triggered: never a stale plan) and executes at most the first step:
//! journal `intent` → PVE call → journal `submitted(upid)` → wait for the task → confirm with a
//! fresh read → journal `done`. A guest with a step still in flight in the journal is never
//! planned again until that step is resolved, which is what makes "never run twice" hold across
//! timeouts, crashes and restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gate::{Classification, GateContext, Op, PlannedAction, TrustStore};
use proxmox_client::{AlreadyInState, Error as PveError, TaskOutcome, Upid};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::approval::requests::{Approvals, Lookup};
use crate::approval::trust::{Trust, TrustInForce};
use crate::clock::unix_now;
use crate::desired::{Desired, DesiredDoc, GuestSpec};
use crate::model::{ActualGuest, Power};
use crate::reconcile::adoption;
use crate::reconcile::board::{GuestState, StatusBoard};
use crate::reconcile::classified::{ClassifiedPlan, StepClass};
use crate::reconcile::lanes::{LaneOutcome, Lanes};
use crate::reconcile::planner::{self, Plan, Step, StepKind};
use crate::reconcile::pve::{Pve, Submission, worker_type};
use crate::store::Decision;
use crate::store::{StepOutcome, Store};

/// Fixed settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub host: String,
    pub fleet: String,
    /// Overall deadline of one step (call + wait), beyond the task's own deadline.
    pub step_deadline: Duration,
}

/// Shared state of a running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    settings: EngineSettings,
    pub(super) pve: Pve,
    pub(super) store: Store,
    pub(super) approvals: Approvals,
    trust: TrustInForce,
    /// Host-wide plan notes (the fuses) already logged, so a tripped fuse is logged when it
    /// trips, not on every pass.
    logged_notes: Mutex<Vec<String>>,
    desired: RwLock<Option<Desired>>,
    /// Where the last pass found the guests (a lane turn reads only its own guest).
    last_read: RwLock<LastRead>,
    /// Guests whose destroy the last host plan's fuse withheld (a lane turn plans one guest
    /// and cannot see the whole document, so it keeps to the host's verdict).
    fused: RwLock<std::collections::BTreeSet<u32>>,
    /// Guests that failed terminally, with the desired entry they failed on: not retried until
    /// the entry changes.
    terminal: Mutex<HashMap<u32, GuestSpec>>,
    pub status: StatusBoard,
    /// What each lane turn read of its guest (`lane_reads`: fewer requests per step).
    pub(super) lane_reads: crate::reconcile::lane_reads::LaneReads,
    metrics: std::sync::Arc<crate::reconcile::metrics::Metrics>,
    pub(super) lanes: Lanes,
    shutdown: watch::Receiver<bool>,
    /// Signed jobs, asked first in every lane turn (see `job_slot`).
    /// Weak: the runner holds the engine, so a strong reference here would be a cycle that
    /// keeps the journal (and its lock) alive after `run` returned.
    jobs: RwLock<Option<std::sync::Weak<dyn crate::reconcile::job_slot::GuestJobs>>>,
    /// Safety copies before destructive steps (`safety/`); `None` refuses every step that
    /// needs one (`safety_storage_unset`).
    pub(super) safety: RwLock<Option<crate::safety::SafetyCopies>>,
}

/// What the last pass's host read said of where each guest is, for the lane turns after it.
#[derive(Debug, Default)]
struct LastRead {
    /// vmids held by other nodes.
    elsewhere: BTreeMap<u32, String>,
    /// Guests the read could not pin down (`ActualHost::vanished`): a lane turn that finds
    /// one gone plans nothing for it either, until a pass reads it again.
    vanished: std::collections::BTreeSet<u32>,
    /// The guests read on this node. One that a lane turn then finds gone moved or was
    /// destroyed in between: the turn plans no create for it (PVE would refuse a vmid that
    /// lives on another node, and the failure would park the guest as terminally failed);
    /// the next pass decides.
    present: std::collections::BTreeSet<u32>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: EngineSettings,
        pve: Pve,
        store: Store,
        approvals: Approvals,
        trust: Trust,
        lanes: Lanes,
        shutdown: watch::Receiver<bool>,
    ) -> Engine {
        let metrics = pve.metrics.clone();
        store
            .journal()
            .on_sync(move |t| metrics.journal_sync((t.flush + t.fdatasync).as_secs_f64()));
        // Task durations learned by earlier runs, and kept for later ones.
        pve.estimates.keep_in(&store);
        Engine {
            inner: Arc::new(Inner {
                settings,
                metrics: pve.metrics.clone(),
                pve,
                store,
                approvals,
                trust: TrustInForce::new(trust),
                logged_notes: Mutex::new(Vec::new()),
                desired: RwLock::new(None),
                last_read: RwLock::new(LastRead::default()),
                fused: RwLock::new(std::collections::BTreeSet::new()),
                terminal: Mutex::new(HashMap::new()),
                status: StatusBoard::default(),
                lane_reads: Default::default(),
                lanes,
                shutdown,
                jobs: RwLock::new(None),
                safety: RwLock::new(None),
            }),
        }
    }

    /// Installs the signed-job runner the lanes ask before planning a guest.
    /// The caller keeps the runner alive for as long as jobs should run (the daemon, for the
    /// whole of `run`).
    pub fn set_jobs(&self, jobs: &Arc<dyn crate::reconcile::job_slot::GuestJobs>) {
        *self.inner.jobs.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(jobs));
    }

    pub fn lanes(&self) -> &Lanes {
        &self.inner.lanes
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn pve(&self) -> &Pve {
        &self.inner.pve
    }
    pub fn metrics(&self) -> &crate::reconcile::metrics::Metrics {
        &self.inner.metrics
    }

    /// Prometheus text with the gauges refreshed from the lanes and the status board.
    pub fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.inner.metrics;
        let lanes = self.inner.lanes.stats();
        m.lane_queue_depth.store(lanes.queued as u64, Relaxed);
        m.lanes_active.store(lanes.active as u64, Relaxed);
        m.lane_retries_total.store(lanes.retries_total, Relaxed);
        m.pending_approvals
            .store(self.inner.approvals.pending().len() as u64, Relaxed);
        let snap = self.inner.status.snapshot();
        let mut by_state = BTreeMap::new();
        for g in snap.guests.values() {
            *by_state.entry(g.state.as_str().to_string()).or_insert(0u64) += 1;
        }
        m.set_guests(by_state);
        m.set_desired_revision(snap.desired_revision);
        m.set_trust(match self.trust() {
            Trust::Valid(t) => crate::reconcile::metrics::TrustGauges {
                valid: true,
                version: t.version,
                expires_at: t.expires_at,
            },
            Trust::Invalid { .. } => crate::reconcile::metrics::TrustGauges::default(),
        });
        if let Ok(jobs) = self.inner.store.jobs() {
            m.jobs_running.store(
                jobs.iter().filter(|j| j.end.is_none()).count() as u64,
                Relaxed,
            );
        }
        if let Ok(n) = self.inner.store.in_flight_count() {
            m.journal_inflight_steps.store(n as u64, Relaxed);
        }
        m.render()
    }

    pub fn status(&self) -> &StatusBoard {
        &self.inner.status
    }
    pub fn approvals(&self) -> &Approvals {
        &self.inner.approvals
    }

    /// Asks for a reconcile now, pre-empting any backoff: one guest, or every managed guest.
    pub fn trigger(&self, vmid: Option<u32>) {
        let vmids: Vec<u32> = match vmid {
            Some(v) => vec![v],
            None => self
                .desired()
                .map(|d| d.doc.guests.keys().copied().collect())
                .unwrap_or_default(),
        };
        for v in vmids {
            self.inner
                .terminal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&v);
            self.inner.lanes.reset_backoff(v);
            self.inner.lanes.request(v);
        }
    }

    /// The namespace domain of the trust document (for sign commands).
    pub fn trust_domain(&self) -> String {
        match self.trust() {
            Trust::Valid(t) => t.domain.clone(),
            Trust::Invalid { .. } => "DOMAIN".to_string(),
        }
    }

    /// The host this engine reconciles (`drover.toml`'s `host`).
    pub fn host(&self) -> &str {
        &self.inner.settings.host
    }

    /// Applies signed trust rotations waiting beside the approvals (see
    /// [`TrustInForce::rotate`]); true when the document in force changed.
    pub fn rotate_trust(&self) -> bool {
        let store = &self.inner.store;
        let metrics = &self.inner.metrics;
        let audit = |d: Decision| {
            metrics.gate_decision(&d.code);
            match store.audit_durable(&d) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("journal: writing the audit log: {e}");
                    false
                }
            }
        };
        self.inner
            .trust
            .rotate(&self.inner.approvals, store, &audit)
    }

    pub fn set_trust(&self, trust: Trust) {
        self.inner.trust.set(trust);
    }

    pub fn trust(&self) -> Trust {
        self.inner.trust.get()
    }

    /// Installs a desired document (from a source or the journal's last-known-good copy).
    pub fn set_desired(&self, desired: Desired) {
        self.inner
            .status
            .set_desired(desired.doc.revision, desired.degraded);
        *self
            .inner
            .desired
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(desired);
    }

    pub fn desired(&self) -> Option<Desired> {
        self.inner
            .desired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down()
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutdown(&self) {
        let mut rx = self.inner.shutdown.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Plans the host without queueing anything (what is left after `run --once`).
    pub async fn pass_plan_only(&self) -> Result<ClassifiedPlan, PveError> {
        let Some(desired) = self.desired() else {
            return Ok(ClassifiedPlan {
                host: self.inner.settings.host.clone(),
                plan: Plan::default(),
                classes: BTreeMap::new(),
            });
        };
        Ok(self.plan_host(&desired.doc).await?.0)
    }

    /// The gate's view of the agent: local identity and the nonce store's epoch.
    pub fn gate_context(&self, trust: &TrustStore) -> GateContext {
        GateContext {
            fleet: self.inner.settings.fleet.clone(),
            host: self.inner.settings.host.clone(),
            domain: trust.domain.clone(),
            epoch: gate::NonceLedger::state_epoch(&self.inner.store),
        }
    }

    /// The gate's view of a planned step.
    pub fn planned_action(&self, step: &Step, digest: Option<&str>) -> PlannedAction {
        PlannedAction {
            op: op_of(step.kind),
            vmid: step.vmid,
            guest_config_sha1: digest.filter(|d| !d.is_empty()).map(str::to_string),
            params: step.params.clone(),
            bind: Default::default(),
        }
    }

    /// The step as an approval binds it: [`Engine::planned_action`] with free-text values
    /// (spaces, `;`) replaced by their SHA-256, which the payload grammar can hold.
    pub fn bound_action(&self, step: &Step, digest: Option<&str>) -> PlannedAction {
        let mut a = self.planned_action(step, digest);
        for v in a.params.values_mut() {
            *v = bound_value(v);
        }
        a
    }

    /// Classifies a step by the journal's provenance (never by the document). A guest seen
    /// running counts as started, whoever started it: it may hold data.
    pub fn classify(&self, step: &Step, actual: Option<&ActualGuest>) -> Classification {
        let action = self.planned_action(step, actual.map(|a| a.digest.as_str()));
        let mut provenance = self.inner.store.provenance(step.vmid);
        if let Some(p) = provenance.as_mut()
            && actual.is_some_and(|a| a.power != Power::Stopped)
        {
            p.ever_started = true;
        }
        gate::classify(&action, provenance.as_ref())
    }

    /// Reads the host and plans it (no side effects): `drover plan` and each pass.
    pub async fn plan_host(
        &self,
        doc: &DesiredDoc,
    ) -> Result<(ClassifiedPlan, crate::model::ActualHost), PveError> {
        let actual = self.inner.pve.read_host().await?;
        let ctx = self.plan_context(doc.guests.keys().copied());
        let mut plan = planner::plan_with(doc, &actual, &ctx);
        for (vmid, spec) in &doc.guests {
            let Some(g) = actual.guests.get(vmid) else {
                continue;
            };
            let mut gp = plan.guests.remove(vmid).unwrap_or(planner::GuestPlan {
                vmid: *vmid,
                name: g.config.hostname.clone(),
                steps: Vec::new(),
                notes: Vec::new(),
            });
            self.shape_for_verify(&mut gp, spec, Some(g));
            let gp = adoption::require_adoption(gp, Some(g), self.inner.store.is_managed(*vmid));
            if !gp.steps.is_empty() || !gp.notes.is_empty() {
                plan.guests.insert(*vmid, gp);
            }
        }
        *self.inner.fused.write().unwrap_or_else(|p| p.into_inner()) = plan
            .guests
            .values()
            .filter(|g| g.notes.iter().any(|n| n.code == "fuse_mass_destroy"))
            .map(|g| g.vmid)
            .collect();
        let classified = self.classify_plan(plan, &actual);
        Ok((classified, actual))
    }

    /// The host's rules, the clock and the journal's detached volumes for these guests.
    fn plan_context(&self, vmids: impl IntoIterator<Item = u32>) -> planner::PlanContext {
        planner::PlanContext {
            rules: self.inner.pve.rules.clone(),
            now: unix_now(),
            detached: vmids
                .into_iter()
                .map(|v| (v, self.inner.store.detached(v)))
                .filter(|(_, d)| !d.is_empty())
                .collect(),
        }
    }

    /// The plan of one guest from fresh state, with adoption required for a guest the journal
    /// does not know.
    /// Plans one guest in a lane turn, from its fresh read and where the last pass found it.
    fn plan_one(&self, spec: &GuestSpec, actual: Option<&ActualGuest>) -> planner::GuestPlan {
        let vmid = spec.vmid;
        let (elsewhere, gone_since_the_pass) = {
            let last = self
                .inner
                .last_read
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let elsewhere = last.elsewhere.get(&vmid).cloned();
            let gone = actual.is_none()
                && elsewhere.is_none()
                && (last.vanished.contains(&vmid)
                    || (spec.ensure != crate::desired::Ensure::Absent
                        && last.present.contains(&vmid)));
            (elsewhere, gone)
        };
        if gone_since_the_pass {
            return planner::vanished_guest(spec);
        }
        let ctx = self.plan_context([vmid]);
        let mut gp = planner::plan_guest_with(spec, actual, elsewhere.as_ref(), &ctx);
        self.shape_for_verify(&mut gp, spec, actual);
        let fused = self
            .inner
            .fused
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&spec.vmid);
        if fused && gp.steps.iter().any(|s| s.kind == StepKind::Destroy) {
            gp.steps.retain(|s| s.kind != StepKind::Destroy);
            gp.notes.push(planner::Note {
                code: "fuse_mass_destroy",
                vmid: Some(spec.vmid),
                message: "destroy withheld: the document would destroy more than half of the managed guests".into(),
            });
        }
        adoption::require_adoption(gp, actual, self.inner.store.is_managed(spec.vmid))
    }

    /// Risky keys of a verified guest become a step of their own, withheld while a reverted
    /// change is parked (`verify::risk::shape_plan`).
    fn shape_for_verify(
        &self,
        gp: &mut planner::GuestPlan,
        spec: &GuestSpec,
        actual: Option<&ActualGuest>,
    ) {
        if spec.verify.is_none() {
            return;
        }
        let window = self.inner.store.verify_window(spec.vmid).ok().flatten();
        crate::reconcile::verify::risk::shape_plan(gp, spec, actual, window.as_ref());
    }

    /// A resolved step of a guest whose verify window is still open keeps its lane going.
    fn keep_verify_lane(&self, vmid: u32, outcome: LaneOutcome) -> LaneOutcome {
        let open = matches!(outcome, LaneOutcome::Converged | LaneOutcome::Waiting)
            && !self.is_shutting_down()
            && self
                .inner
                .store
                .verify_window(vmid)
                .ok()
                .flatten()
                .is_some_and(|w| !w.phase.is_terminal());
        if open {
            LaneOutcome::RecheckAt(tokio::time::Instant::now())
        } else {
            outcome
        }
    }

    pub fn classify_plan(&self, plan: Plan, actual: &crate::model::ActualHost) -> ClassifiedPlan {
        let mut classes = BTreeMap::new();
        for g in plan.guests.values() {
            let guest = actual.guests.get(&g.vmid).map(|g| &**g);
            let c: Vec<StepClass> = g
                .steps
                .iter()
                .map(|s| match self.classify(s, guest) {
                    Classification::Benign => StepClass::Benign,
                    Classification::Destructive { reason } => StepClass::Destructive { reason },
                })
                .collect();
            classes.insert(g.vmid, c);
        }
        ClassifiedPlan {
            host: self.inner.settings.host.clone(),
            plan,
            classes,
        }
    }

    /// One full pass: plan the host and queue every guest that has work. Returns the plan.
    pub async fn pass(&self) -> Result<ClassifiedPlan, PveError> {
        self.rotate_trust();
        let Some(desired) = self.desired() else {
            return Ok(ClassifiedPlan {
                host: self.inner.settings.host.clone(),
                plan: Plan::default(),
                classes: BTreeMap::new(),
            });
        };
        let read_from_ms = unix_now_ms();
        let (classified, actual) = self.plan_host(&desired.doc).await?;
        for g in actual.guests.values() {
            self.remember_if_running(g);
        }
        self.forget_vanished(&desired.doc, &actual, read_from_ms);
        *self
            .inner
            .last_read
            .write()
            .unwrap_or_else(|p| p.into_inner()) = LastRead {
            elsewhere: actual.elsewhere.clone(),
            vanished: actual.vanished.clone(),
            present: actual.guests.keys().copied().collect(),
        };
        let store = &self.inner.store;
        self.inner
            .status
            .observe_pass(&desired.doc, &actual, &classified.plan, &|vmid| {
                store.is_suspended(vmid)
            });
        self.log_new_host_notes(&classified.plan);
        let in_flight: Vec<u32> = self
            .inner
            .store
            .in_flight()
            .unwrap_or_default()
            .iter()
            .map(|r| r.vmid)
            .collect();
        let planned_destructive: std::collections::HashSet<(u32, String)> = classified
            .plan
            .guests
            .values()
            .flat_map(|g| {
                g.steps
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        matches!(
                            classified.class_of(g.vmid, *i),
                            Some(StepClass::Destructive { .. })
                        )
                    })
                    .map(|(_, s)| (g.vmid, op_of(s.kind).as_str().to_string()))
            })
            .collect();
        // Blocking file I/O (requests and approval files), off the async workers.
        let engine = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let inner = &engine.inner;
            inner.approvals.withdraw_unplanned(&planned_destructive);
            let audit = |d: Decision| {
                inner.metrics.gate_decision(&d.code);
                inner.store.audit(&d)
            };
            inner
                .approvals
                .report_unclaimed(&planned_destructive, &audit);
        })
        .await;
        for vmid in desired.doc.guests.keys() {
            let has_steps = classified
                .plan
                .guests
                .get(vmid)
                .is_some_and(|g| !g.steps.is_empty());
            if !(has_steps || in_flight.contains(vmid)) {
                continue;
            }
            if self.is_terminal_for(*vmid, &desired.doc) || self.inner.store.is_suspended(*vmid) {
                continue;
            }
            self.inner.lanes.request(*vmid);
        }
        Ok(classified)
    }

    /// Logs host-wide notes (a tripped fuse: the document would destroy most guests, or lists
    /// none) once when they appear; `drover plan` and `drover status` show them every time.
    fn log_new_host_notes(&self, plan: &Plan) {
        let now: Vec<String> = plan
            .notes
            .iter()
            .filter(|n| n.code.starts_with("fuse_"))
            .map(|n| format!("{}: {}", n.code, n.message))
            .collect();
        let mut logged = self
            .inner
            .logged_notes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (note, n) in now
            .iter()
            .zip(plan.notes.iter().filter(|n| n.code.starts_with("fuse_")))
        {
            if !logged.contains(note) {
                tracing::warn!(code = n.code, revision = plan.revision, "{}", n.message);
            }
        }
        *logged = now;
    }

    /// A guest the journal knows, seen running (whoever started it), counts as started from
    /// now on: it may hold data, so cleaning it up is never benign again.
    fn remember_if_running(&self, g: &ActualGuest) {
        if g.power != Power::Stopped
            && let Some(p) = self.inner.store.provenance(g.vmid)
            && !p.ever_started
            && let Err(e) = self.inner.store.started(g.vmid)
        {
            warn!(vmid = g.vmid, "journaling that the guest ran: {e}");
        }
    }

    /// A guest the journal knows that is gone from the host (and from the cluster) with no step
    /// in flight was destroyed behind the agent's back: its provenance is forgotten, so a
    /// guest someone creates later under that vmid is unmanaged until adopted.
    /// Only provenance recorded before `read_from_ms` counts: a create that ended while the
    /// host was being read is simply not in that read yet. A guest that was listed but gone
    /// at its config read is not known to be destroyed (the cluster view, read at the same
    /// time, may predate a migration): it is kept until a pass sees where it went.
    fn forget_vanished(
        &self,
        doc: &DesiredDoc,
        actual: &crate::model::ActualHost,
        read_from_ms: i64,
    ) {
        let in_flight: Vec<u32> = match self.inner.store.in_flight() {
            Ok(r) => r.iter().map(|r| r.vmid).collect(),
            Err(_) => return,
        };
        for vmid in doc.guests.keys() {
            if !actual.guests.contains_key(vmid)
                && !actual.elsewhere.contains_key(vmid)
                && !actual.vanished.contains(vmid)
                && !in_flight.contains(vmid)
                && self
                    .inner
                    .store
                    .known_since_ms(*vmid)
                    .is_some_and(|t| t < read_from_ms)
            {
                info!(vmid, "the guest is gone; forgetting its provenance");
                self.inner.store.destroyed(*vmid);
            }
        }
    }

    fn is_terminal_for(&self, vmid: u32, doc: &DesiredDoc) -> bool {
        let mut t = self
            .inner
            .terminal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (t.get(&vmid), doc.guests.get(&vmid)) {
            (Some(failed_on), Some(now)) if failed_on == &**now => true,
            (Some(_), _) => {
                // The entry changed: try again from a clean backoff.
                t.remove(&vmid);
                self.inner.lanes.reset_backoff(vmid);
                false
            }
            _ => false,
        }
    }

    /// One lane turn for a guest (see the module doc).
    pub async fn turn(&self, vmid: u32) -> LaneOutcome {
        let span = info_span!("reconcile", vmid);
        let deadline = self.inner.settings.step_deadline;
        let fut = self.turn_inner(vmid).instrument(span);
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(deadline, fut).await {
            Ok(outcome) => outcome,
            Err(_) => LaneOutcome::Transient(format!(
                "the step did not finish within its deadline of {deadline:?}; it stays journaled and is re-attached"
            )),
        };
        self.inner.status.record_outcome(vmid, &outcome);
        if outcome != LaneOutcome::Progressed {
            // Only a turn that continues right away may use what this one read.
            self.inner.lane_reads.forget(vmid);
        }
        let label = match &outcome {
            LaneOutcome::Converged => "converged",
            LaneOutcome::Progressed => "progressed",
            LaneOutcome::Waiting => "waiting",
            LaneOutcome::Transient(_) => "transient_error",
            LaneOutcome::Terminal(_) => "terminal_error",
            LaneOutcome::RecheckAt(_) => "verifying",
        };
        self.inner
            .metrics
            .reconcile(label, started.elapsed().as_secs_f64());
        outcome
    }

    async fn turn_inner(&self, vmid: u32) -> LaneOutcome {
        if self.shutting_down() {
            return LaneOutcome::Waiting;
        }
        // 1. A step still in flight is resolved before anything new is planned.
        match self.inner.store.in_flight_for(vmid) {
            Ok(Some(rec)) => {
                // Resolved from fresh reads, never from what an earlier turn kept.
                self.inner.lane_reads.forget(vmid);
                let outcome = self.resolve(rec, true).await;
                return self.keep_verify_lane(vmid, outcome);
            }
            Ok(None) => {}
            Err(e) => return LaneOutcome::Transient(format!("reading the journal: {e}")),
        }
        // 1a. An open verify window of a risky change decides the turn (`reconcile::verify`):
        // it ends by its deadline, and a job must not act on a guest whose change is still
        // unconfirmed.
        if let Some(outcome) = self.verify_turn(vmid).await {
            return outcome;
        }
        // 1b. A signed job of this guest owns the lane until it ends (`job_slot`).
        let jobs = self
            .inner
            .jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(jobs) = jobs
            && let Some(outcome) = jobs.turn(vmid).await
        {
            return outcome;
        }
        if self.inner.store.is_suspended(vmid) {
            self.inner.status.set_state(vmid, GuestState::Suspended);
            return LaneOutcome::Waiting;
        }
        let Some(desired) = self.desired() else {
            return LaneOutcome::Waiting;
        };
        let Some(spec) = desired.doc.guests.get(&vmid).cloned() else {
            return LaneOutcome::Converged;
        };
        // 2. Fresh state (or the previous turn's confirmation read of a moment ago), fresh plan.
        let actual = match self.read_for_turn(vmid).await {
            Ok(a) => a,
            Err(e) => return pve_failure(&e, "reading the guest"),
        };
        if let Some(a) = actual.as_ref() {
            self.remember_if_running(a);
        }
        let gp = self.plan_one(&spec, actual.as_ref());
        let Some(step) = gp.steps.first().cloned() else {
            self.inner.status.set_notes(vmid, &gp.notes);
            return if gp.notes.iter().any(|n| n.code == "guest_locked") {
                LaneOutcome::Waiting
            } else {
                LaneOutcome::Converged
            };
        };
        let digest = actual.as_ref().map(|a| a.digest.clone());
        // 3. Classify by provenance; destructive steps need the gate.
        let class = self.classify(&step, actual.as_ref());
        let mut approval = None;
        if let Classification::Destructive { reason } = &class {
            if desired.degraded {
                self.inner.status.set_blocked(
                    vmid,
                    "desired_stale",
                    "destructive step held: the desired state is not fresh (source unavailable)",
                );
                return LaneOutcome::Waiting;
            }
            let trust = match self.trust() {
                Trust::Valid(t) => t,
                Trust::Invalid { code, message } => {
                    self.inner.status.set_blocked(vmid, code, &message);
                    return LaneOutcome::Waiting;
                }
            };
            let mut action = self.bound_action(&step, digest.as_deref());
            // A destroy needs a verified safety copy first: every refusal is checked now,
            // before anything is stopped, and what the copy cannot hold is bound into the
            // approval (`bind.safety`, `bind.uncovered`).
            let guard = if step.kind == StepKind::Destroy {
                match self.safety_preflight(vmid).await {
                    Ok(pre) => {
                        action.bind = pre.binding();
                        Some(pre)
                    }
                    Err(e) => {
                        self.inner.status.set_blocked(vmid, e.code, &e.to_string());
                        return if e.transient {
                            LaneOutcome::Transient(e.to_string())
                        } else {
                            LaneOutcome::Waiting
                        };
                    }
                }
            } else {
                None
            };
            let ctx = self.gate_context(&trust);
            let now = unix_now();
            // Reading approval files is blocking file I/O: off the async workers, so a slow
            // or hostile directory never holds up other lanes, the socket or SIGTERM.
            let engine = self.clone();
            let domain = trust.domain.clone();
            let deferred = guard.is_some();
            let looked_up = action.clone();
            let found = tokio::task::spawn_blocking(move || {
                let inner = &engine.inner;
                let audit = |d: Decision| {
                    inner.metrics.gate_decision(&d.code);
                    inner.store.audit(&d)
                };
                if deferred {
                    // The nonce is consumed only after the copy is verified.
                    let ledger = crate::safety::deferred::DeferredLedger::new(&inner.store);
                    let (lookup, candidate) = inner
                        .approvals
                        .lookup_deferred(&ctx, &trust, &looked_up, now, &ledger, &audit)?;
                    Ok((lookup, candidate, ledger.take_claim()))
                } else {
                    inner
                        .approvals
                        .lookup(&ctx, &trust, &looked_up, now, &inner.store, &audit)
                        .map(|l| (l, None, None))
                }
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("approval lookup: {e}"))));
            match found {
                Ok((Lookup::Approved(a), candidate, claim)) => {
                    if let Some(pre) = guard {
                        return self
                            .execute_guarded(&step, &class, *a, candidate, claim, action, pre)
                            .await;
                    }
                    approval = Some(*a)
                }
                Ok((Lookup::Pending { request, new }, _, _)) => {
                    let grace = crate::reconcile::vocabulary::grace_words(
                        self.inner.pve.rules.detach_grace_secs,
                    );
                    let size = match (step.kind, step.params.get("volume")) {
                        (StepKind::DeleteVolume, Some(v)) => self.inner.pve.volume_size(v).await,
                        _ => None,
                    };
                    let words =
                        crate::reconcile::loss::describe(&step, actual.as_ref(), &grace, size);
                    if let Err(e) = self.inner.approvals.describe(&request, &words) {
                        warn!(vmid, "writing what the step loses beside its request: {e}");
                    }
                    if new {
                        info!(
                            vmid,
                            step = step.kind.as_str(),
                            request = %request.display(),
                            "destructive step needs a signed approval ({reason}); it {}; sign with: {}",
                            words.lines().next().unwrap_or(""),
                            Approvals::sign_command(&domain, &request)
                        );
                        if let Some(pre) = &guard {
                            info!(vmid, "{}", pre.describe());
                        }
                    }
                    self.inner
                        .status
                        .set_pending_approval(vmid, step.kind.as_str(), &request);
                    return LaneOutcome::Waiting;
                }
                Err(e) => {
                    return LaneOutcome::Transient(format!("writing the approval request: {e}"));
                }
            }
        }
        // 4. Execute: a risky change of a verified guest inside its verify window.
        if approval.is_none()
            && let (Some(vspec), Some(a)) = (&spec.verify, actual.as_ref())
            && crate::reconcile::verify::risk::needs_window(&step, &spec, Some(a))
        {
            return self.execute_verified(&step, &spec, vspec, a).await;
        }
        self.execute(&step, &class, approval.as_ref(), digest.as_deref())
            .await
    }

    async fn execute(
        &self,
        step: &Step,
        class: &Classification,
        approval: Option<&gate::Approved>,
        digest: Option<&str>,
    ) -> LaneOutcome {
        let vmid = step.vmid;
        let kind = step.kind;
        let intent_unix = unix_now();
        if kind == StepKind::Detach
            && let Err(e) = self.journal_detach(step)
        {
            // Durable before the call: the volume's deletion waits out the grace period from
            // here, and is only ever planned for a detach the journal knows.
            return LaneOutcome::Transient(format!("journaling the detach: {e}"));
        }
        // The intent of a start or reboot marks the guest started in the same sync: a crash
        // after PVE started the guest must not leave a journal that calls its cleanup benign.
        let journaled = {
            let (step, class, approval) = (step.clone(), class.clone(), approval.cloned());
            self.inner
                .store
                .off_runtime(move |s| s.intent(&step, &class, approval.as_ref(), None))
                .await
        };
        let id = match journaled {
            Ok(id) => id,
            Err(e) => return LaneOutcome::Transient(format!("journaling the intent: {e}")),
        };
        if kind == StepKind::Adopt {
            return self.adopt(&id, vmid, approval, digest);
        }
        let span = info_span!("step", vmid, step = kind.as_str(), op_id = %id);
        async move {
            info!("starting");
            self.inner.status.set_running(vmid, kind.as_str());
            match self.inner.pve.submit(step, digest).await {
                Ok(Submission::Task(upid)) => {
                    // The UPID's sync runs beside the first part of the wait, which has no
                    // side effect; the close after the wait is written behind it.
                    let journaled = {
                        let (id, upid) = (id.clone(), upid.clone());
                        self.inner
                            .store
                            .off_runtime(move |s| s.submitted(&id, &upid))
                    };
                    self.wait_journaled_and_finish(id, kind, vmid, upid, journaled)
                        .await
                }
                Ok(Submission::Done) => {
                    if kind == StepKind::DeleteVolume
                        && let Some(v) = step.params.get("volume")
                    {
                        // A later volume with the same id is not one Drover detached.
                        self.inner.store.forget_detached(vmid, v);
                    }
                    self.confirm_and_close(id, kind, vmid, None, StepOutcome::Ok)
                        .await
                }
                Err(e) => self.submit_failed(id, step, intent_unix, e).await,
            }
        }
        .instrument(span)
        .await
    }

    /// The call failed: decide between "already done", "maybe happened", retry later and stop.
    pub(super) async fn submit_failed(
        &self,
        id: crate::store::StepId,
        step: &Step,
        intent_unix: i64,
        e: PveError,
    ) -> LaneOutcome {
        let vmid = step.vmid;
        let kind = step.kind;
        if let Some(already) = e.already_in_state()
            && already_means_done(kind, already)
        {
            info!("already in the desired state ({e})");
            return self
                .confirm_and_close(id, kind, vmid, None, StepOutcome::Ok)
                .await;
        }
        if e.may_have_been_processed() {
            // The call may have started a task: look for it instead of guessing.
            match self.find_lost_task(kind, vmid, intent_unix).await {
                Ok(Some(upid)) => {
                    warn!(%upid, "the answer was lost but the task exists; adopting it");
                    if self.inner.store.submitted(&id, &upid).is_ok() {
                        return self.wait_and_finish(id, kind, vmid, upid).await;
                    }
                }
                Ok(None) if worker_type(kind).is_some() => {
                    self.close(
                        &id,
                        StepOutcome::Abandoned(format!("no task was started: {e}")),
                    );
                    return LaneOutcome::Transient(e.to_string());
                }
                // A synchronous call (or an unreadable task list): leave the record in flight;
                // the next turn resolves it from fresh state.
                _ => return LaneOutcome::Transient(e.to_string()),
            }
        }
        if e.is_digest_mismatch() {
            self.close(
                &id,
                StepOutcome::Abandoned("the config changed meanwhile; re-planning".into()),
            );
            return LaneOutcome::Progressed;
        }
        if e.is_transient() || e.is_lock() {
            self.close(&id, StepOutcome::Abandoned(format!("not applied: {e}")));
            return LaneOutcome::Transient(e.to_string());
        }
        self.close(&id, StepOutcome::Failed(e.to_string()));
        self.mark_terminal(vmid);
        LaneOutcome::Terminal(e.to_string())
    }

    pub(super) fn mark_terminal(&self, vmid: u32) {
        if let Some(d) = self.desired()
            && let Some(spec) = d.doc.guests.get(&vmid)
        {
            self.inner
                .terminal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(vmid, (**spec).clone());
        }
    }

    /// Journals a detach before its call (see `execute`).
    fn journal_detach(&self, step: &Step) -> Result<(), crate::store::StoreError> {
        let key = step.params.get("delete").cloned().unwrap_or_default();
        let volume = step.params.get("volume").cloned().unwrap_or_default();
        let mount = step
            .changes
            .first()
            .and_then(|c| c.old.clone())
            .unwrap_or_default();
        self.inner
            .store
            .detaching(&crate::model::vocabulary::DetachedVolume {
                vmid: step.vmid,
                key,
                volume,
                mount,
                detached_at: unix_now(),
            })
    }

    /// Records an adoption the gate approved: from now on the guest is managed, bound to the
    /// digest the approval was verified against. Nothing is sent to PVE.
    fn adopt(
        &self,
        id: &crate::store::StepId,
        vmid: u32,
        approval: Option<&gate::Approved>,
        digest: Option<&str>,
    ) -> LaneOutcome {
        let (Some(approval), Some(digest)) = (approval, digest) else {
            // Never without a verified approval: `adopt` always classifies destructive.
            self.close(
                id,
                StepOutcome::Failed("adopt without a verified approval".into()),
            );
            return LaneOutcome::Terminal("adopt without a verified approval".into());
        };
        if let Err(e) = self
            .inner
            .store
            .adopted(vmid, digest, &approval.payload_sha256)
        {
            self.close(id, StepOutcome::Abandoned(format!("not recorded: {e}")));
            return LaneOutcome::Transient(format!("journaling the adoption: {e}"));
        }
        self.close(id, StepOutcome::Ok);
        info!(vmid, "adopted: the guest is managed from now on");
        LaneOutcome::Progressed
    }

    /// The agent's create task ended without success. If it left a guest behind (its config
    /// written before the failing step), the journal records it with the digest it has now:
    /// cleaning that guest up stays benign until it is started or changed. Only a create with
    /// a task of our own can have left it; a guest that appears without one is someone else's.
    pub(super) async fn note_failed_create(
        &self,
        vmid: u32,
        id: &crate::store::StepId,
        upid: Option<&Upid>,
        outcome: crate::store::CreateEnd,
    ) {
        match self.inner.pve.read_guest(vmid).await {
            Ok(Some(g)) => {
                info!(
                    vmid,
                    "the failed create left the guest behind; recording it as the agent's own"
                );
                self.inner
                    .store
                    .create_left_guest(vmid, id, upid, &g.digest, outcome);
            }
            Ok(None) => {}
            Err(e) => warn!(vmid, "reading the guest after a failed create: {e}"),
        }
    }

    pub(super) fn close(&self, id: &crate::store::StepId, outcome: StepOutcome) {
        if let Err(e) = self.inner.store.done(id, outcome) {
            warn!(op_id = %id, "journaling the outcome failed: {e}");
        }
    }

    /// Waits for a task whose UPID is journaled; on shutdown returns at once (the next start
    /// re-attaches).
    pub(super) async fn wait_and_finish(
        &self,
        id: crate::store::StepId,
        kind: StepKind,
        vmid: u32,
        upid: Upid,
    ) -> LaneOutcome {
        self.wait_journaled_and_finish(id, kind, vmid, upid, std::future::ready(Ok(())))
            .await
    }

    /// Waits for a task while `journaled` (the write of its UPID) completes beside the wait;
    /// nothing is closed before that write is durable. A failed write ends the turn without a
    /// close: the next turn resolves the record in flight (by the UPID if the write reached
    /// sled's memory, else by the task list), and sends nothing again.
    async fn wait_journaled_and_finish(
        &self,
        id: crate::store::StepId,
        kind: StepKind,
        vmid: u32,
        upid: Upid,
        journaled: impl std::future::Future<Output = Result<(), crate::store::StoreError>>,
    ) -> LaneOutcome {
        let span = info_span!("task", upid = %upid);
        async move {
            let mut shutdown = self.inner.shutdown.clone();
            let started = std::time::Instant::now();
            let waited = async {
                tokio::select! {
                    o = self.inner.pve.wait(&upid, kind) => Some(o),
                    _ = shutdown.wait_for(|s| *s) => None,
                }
            };
            let (outcome, journaled) = tokio::join!(waited, journaled);
            if let Err(e) = journaled {
                return LaneOutcome::Transient(format!("journaling the task {upid}: {e}"));
            }
            let Some(outcome) = outcome else {
                info!("shutting down; the task keeps running and is re-attached on start");
                return LaneOutcome::Waiting;
            };
            if outcome.is_ok() {
                self.inner
                    .metrics
                    .pve_task(&upid.worker_type, started.elapsed().as_secs_f64());
            }
            match outcome {
                Ok(TaskOutcome::Ok) => {
                    self.confirm_and_close(id, kind, vmid, Some(&upid), StepOutcome::Ok)
                        .await
                }
                Ok(TaskOutcome::Warnings(n)) => {
                    self.confirm_and_close(id, kind, vmid, Some(&upid), StepOutcome::Warnings(n))
                        .await
                }
                Ok(TaskOutcome::Failed { message, log_tail }) => {
                    warn!(log = ?log_tail, "task failed: {message}");
                    if kind == StepKind::Create {
                        self.note_failed_create(
                            vmid,
                            &id,
                            Some(&upid),
                            crate::store::CreateEnd::Failed,
                        )
                        .await;
                    }
                    self.close(&id, StepOutcome::Failed(message.clone()));
                    if task_failure_is_transient(&message) {
                        LaneOutcome::Transient(format!("task failed: {message}"))
                    } else {
                        self.mark_terminal(vmid);
                        LaneOutcome::Terminal(format!("task failed: {message}"))
                    }
                }
                // Deadline or PVE unreachable: the record stays in flight with its UPID.
                Err(e) => LaneOutcome::Transient(format!("waiting for {upid}: {e}")),
            }
        }
        .instrument(span)
        .await
    }

    /// A step reported success: confirm with a fresh read, update provenance, close the record.
    async fn confirm_and_close(
        &self,
        id: crate::store::StepId,
        kind: StepKind,
        vmid: u32,
        upid: Option<&Upid>,
        outcome: StepOutcome,
    ) -> LaneOutcome {
        let (fresh, full_read) = match self.confirmation_read(kind, vmid).await {
            Ok(c) => (c.guest, c.full),
            // Leave the record in flight; the next turn confirms.
            Err(e) => return pve_failure(&e, "confirming the result"),
        };
        let confirmed = match kind {
            StepKind::Create => fresh.is_some(),
            StepKind::Destroy => fresh.is_none(),
            // HA-managed guests: a task OK does not prove the power state; the re-plan checks.
            _ => fresh.is_some(),
        };
        if !confirmed {
            self.close(
                &id,
                StepOutcome::Failed(
                    "the task succeeded but the guest is not in the expected state".into(),
                ),
            );
            return LaneOutcome::Transient("result not confirmed by a fresh read".into());
        }
        match kind {
            StepKind::Create => {
                if let (Some(upid), Some(g)) = (upid, fresh.as_ref()) {
                    self.inner.store.created(vmid, &id, upid, &g.digest);
                }
            }
            StepKind::Destroy => self.inner.store.destroyed(vmid),
            _ => {}
        }
        // Durable behind the lane: the slot goes to the next guest while the close syncs.
        if let Err(e) = self.inner.store.done_behind(&id, outcome) {
            warn!(op_id = %id, "journaling the outcome failed: {e}");
        }
        info!("done");
        // The fresh read doubles as the next plan: if nothing is left, the lane is done now
        // instead of spending another turn (and a slot under the global cap) to find out.
        let spec = self
            .desired()
            .and_then(|d| d.doc.guests.get(&vmid).cloned());
        match spec {
            Some(spec) if kind != StepKind::Destroy => {
                let next = self.plan_one(&spec, fresh.as_ref());
                if next.steps.is_empty() {
                    LaneOutcome::Converged
                } else {
                    if full_read {
                        self.inner.lane_reads.hand_over(vmid, fresh);
                    }
                    LaneOutcome::Progressed
                }
            }
            _ => {
                if full_read {
                    self.inner.lane_reads.hand_over(vmid, fresh);
                }
                LaneOutcome::Progressed
            }
        }
    }
}

/// A parameter value as an approval binds it: as sent when the payload grammar can hold it,
/// otherwise (free text with spaces: a description, SSH keys, a DNS list) its SHA-256, so the
/// signature still covers exactly those bytes. The gate classifies keys and simple values,
/// which are never hashed.
fn bound_value(v: &str) -> String {
    if gate::payload::is_param_value(v) {
        v.to_string()
    } else {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(v.as_bytes())))
    }
}

/// How a failed read maps to a lane outcome.
pub(super) fn pve_failure(e: &PveError, what: &str) -> LaneOutcome {
    if e.is_unauthorized() || e.is_permission() {
        LaneOutcome::Terminal(format!("{what}: {e}"))
    } else {
        LaneOutcome::Transient(format!("{what}: {e}"))
    }
}

/// "Already in that state" answers that count as success for a step.
fn already_means_done(kind: StepKind, already: AlreadyInState) -> bool {
    matches!(
        (kind, already),
        (StepKind::Start, AlreadyInState::Running)
            | (
                StepKind::Stop | StepKind::Shutdown,
                AlreadyInState::NotRunning
            )
            | (StepKind::Destroy, AlreadyInState::DoesNotExist)
    )
}

/// Task failures worth retrying later (locks and timeouts inside the worker).
fn task_failure_is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("is locked") || m.contains("got timeout") || m.contains("no quorum")
}

/// The gate's name for a step kind.
pub fn op_of(kind: StepKind) -> Op {
    match kind {
        StepKind::Create => Op::Create,
        StepKind::SetConfig => Op::SetConfig,
        StepKind::Resize => Op::Resize,
        StepKind::Start => Op::Start,
        StepKind::Shutdown => Op::Shutdown,
        StepKind::Stop => Op::Stop,
        StepKind::Reboot => Op::Reboot,
        StepKind::Destroy => Op::DestroyGuest,
        StepKind::Adopt => Op::Adopt,
        StepKind::Detach => Op::RemoveMountpoint,
        StepKind::DeleteVolume => Op::DeleteVolume,
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
