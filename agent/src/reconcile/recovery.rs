//! Resolving steps the journal says are still in flight: at boot (before the first pass) and
//! in a lane turn whose guest has one. A step is re-attached to its task, or to the task its
//! lost call started, or marked abandoned so the next plan decides; the call is never re-sent.
//! This is what makes "never run twice" hold across timeouts, crashes and restarts.

use tracing::{Instrument, info, info_span, warn};

use crate::reconcile::engine::{Engine, pve_failure};
use crate::reconcile::lanes::LaneOutcome;
use crate::reconcile::planner::StepKind;
use crate::store::{InFlight, StepOutcome};

impl Engine {
    /// The task a step's lost call started (see `Pve::find_task_for`), never one the journal
    /// already ties to another step, copy or job of the guest. Without the journal's answer
    /// nothing is adopted (the earliest task alone can be another step's): a transient
    /// outcome, and the record stays in flight.
    pub(super) async fn find_lost_task(
        &self,
        kind: StepKind,
        vmid: u32,
        intent_unix: i64,
    ) -> Result<Option<proxmox_client::Upid>, LaneOutcome> {
        let claimed = self.inner.store.claimed_upids(vmid).map_err(|e| {
            LaneOutcome::Transient(format!(
                "reading the tasks the journal holds for CT {vmid}: {e}"
            ))
        })?;
        self.inner
            .pve
            .find_task_for(kind, vmid, intent_unix, &claimed)
            .await
            .map_err(|e| pve_failure(&e, "searching the task list"))
    }

    /// Resolves a journaled step that is still in flight (boot recovery, or a step whose wait
    /// was interrupted): re-attach to its task, or find the task it started, or mark it
    /// abandoned and let the plan decide. Never re-sends the call.
    pub async fn resolve(&self, rec: InFlight, attach_running: bool) -> LaneOutcome {
        let span =
            info_span!("recover", vmid = rec.vmid, step = rec.kind.as_str(), op_id = %rec.id);
        async move {
            let upid = match &rec.upid {
                Some(u) => Some(u.clone()),
                None => match self.find_lost_task(rec.kind, rec.vmid, rec.intent_unix).await {
                    Ok(Some(u)) => {
                        info!(upid = %u, "found the task the interrupted call started; adopting it");
                        if let Err(e) = self.inner.store.submitted(&rec.id, &u) {
                            return LaneOutcome::Transient(format!("journaling the adopted task: {e}"));
                        }
                        Some(u)
                    }
                    Ok(None) => None,
                    Err(outcome) => return outcome,
                },
            };
            match upid {
                Some(u) => {
                    match self.inner.pve.client.task_status(&u).await {
                        Ok(st) if !attach_running && st.exit().is_none() => {
                            // Still running: its lane re-attaches, so boot is not held up.
                            info!(upid = %u, "task still running; re-attaching in its lane");
                            self.inner.lanes.request(rec.vmid);
                            LaneOutcome::Waiting
                        }
                        Ok(_) => self.wait_and_finish(rec.id, rec.kind, rec.vmid, u).await,
                        Err(e) if e.is_not_found() => {
                            if rec.kind == StepKind::Create {
                                self.note_failed_create(rec.vmid, &rec.id, Some(&u), crate::store::CreateEnd::Abandoned).await;
                            }
                            self.close(&rec.id, StepOutcome::Abandoned(format!("PVE does not know task {u}")));
                            LaneOutcome::Progressed
                        }
                        Err(e) => pve_failure(&e, "reading the task status"),
                    }
                }
                None => {
                    let why = if crate::reconcile::pve::worker_type(rec.kind).is_none() {
                        "interrupted before PVE answered; the next plan re-checks the config"
                    } else {
                        "the call never started a task"
                    };
                    info!("{why}");
                    self.close(&rec.id, StepOutcome::Abandoned(why.into()));
                    LaneOutcome::Progressed
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Boot recovery, before the first pass: every in-flight record whose task has ended (or
    /// never started) is resolved now; records whose task still runs are re-attached in their
    /// lane, so a 30-minute create does not hold up readiness. Returns how many were found.
    pub async fn recover(&self) -> Result<usize, crate::store::StoreError> {
        let records = self.inner.store.in_flight()?;
        let n = records.len();
        for rec in records {
            let vmid = rec.vmid;
            match self.resolve(rec, false).await {
                LaneOutcome::Transient(e) | LaneOutcome::Terminal(e) => {
                    warn!(vmid, "recovery deferred to the guest's lane: {e}");
                    self.inner.lanes.request(vmid);
                }
                _ => {}
            }
        }
        // Verify windows of risky changes resume in their lanes, from the live values.
        self.recover_verify();
        Ok(n)
    }
}
