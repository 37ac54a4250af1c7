//! Destructive steps guarded by a safety copy (`safety-nets.md` §6.1, order of operations):
//! every refusal before any side effect (the preflight, before the approval lookup); then
//! journal the intent → quiesce → copy → verify → re-check the config digest → consume the
//! nonce → the destructive call. A copy that fails blocks the step, restarts a guest that was
//! running and leaves the approval unspent (its files stay, its nonce is not consumed), so the
//! same signature works once the cause is fixed.

use gate::{Approved, Classification, NonceClaim, PlannedAction};
use tracing::{Instrument, info, info_span, warn};

use crate::approval::files::Candidate;
use crate::clock::unix_now_ms;
use crate::reconcile::engine::Engine;
use crate::reconcile::lanes::LaneOutcome;
use crate::reconcile::planner::Step;
use crate::reconcile::pve::Submission;
use crate::safety::{CopyError, CopyOp, Preflight, SafetyCopies};
use crate::store::StepOutcome;

impl Engine {
    /// Installs the safety copies (the daemon does, from `[safety]`).
    pub fn set_safety(&self, safety: SafetyCopies) {
        *self.inner.safety.write().unwrap_or_else(|p| p.into_inner()) = Some(safety);
    }

    pub fn safety(&self) -> Option<SafetyCopies> {
        self.inner
            .safety
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The refusals of a destroy's safety copy, before anything is stopped or requested.
    pub(super) async fn safety_preflight(&self, vmid: u32) -> Result<Preflight, CopyError> {
        let Some(safety) = self.safety() else {
            return Err(CopyError::new(
                "safety_storage_unset",
                "destructive steps need a storage for safety copies: set [safety] storage in drover.toml (Drover never falls back to `local`)",
            ));
        };
        safety.preflight(vmid, CopyOp::Destroy).await
    }

    /// Runs an approved destroy behind its safety copy (see the module doc).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute_guarded(
        &self,
        step: &Step,
        class: &Classification,
        approval: Approved,
        candidate: Option<Candidate>,
        claim: Option<NonceClaim>,
        action: PlannedAction,
        pre: Preflight,
    ) -> LaneOutcome {
        let vmid = step.vmid;
        let kind = step.kind;
        let (Some(safety), Some(claim)) = (self.safety(), claim) else {
            return LaneOutcome::Terminal(
                "a guarded step without its safety copies or nonce claim".into(),
            );
        };
        let inner = &self.inner;
        // Write-ahead, as every step: a crash from here on leaves an in-flight record without
        // a UPID, which recovery abandons (nothing destroyed; the nonce is still unspent).
        let id = match inner.store.intent(step, class, Some(&approval), None) {
            Ok(id) => id,
            Err(e) => return LaneOutcome::Transient(format!("journaling the intent: {e}")),
        };
        let span = info_span!("step", vmid, step = kind.as_str(), op_id = %id);
        async move {
            inner.status.set_running(vmid, "safety_copy");
            info!("taking the safety copy before {}", kind.as_str());
            let manifest = match safety
                .take(&pre, &id.to_string(), &approval.payload.bind)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    self.close(
                        &id,
                        StepOutcome::Abandoned(format!(
                            "no verified safety copy, nothing destroyed, approval not spent: {e}"
                        )),
                    );
                    if e.transient {
                        return LaneOutcome::Transient(format!("safety copy: {e}"));
                    }
                    // Parked until the operator fixes the cause and asks again (`drover
                    // reconcile VMID`) or the desired entry changes: retrying by itself would
                    // stop and start the guest again and again.
                    self.mark_terminal(vmid);
                    return LaneOutcome::Terminal(format!(
                        "{e}; fix it, then `drover reconcile {vmid}` (the approval is still valid)"
                    ));
                }
            };
            let copy_id = manifest.id.clone();
            // The config must still be the one the operator approved (the copy's shutdown and
            // vzdump's lock leave the digest as it was).
            let now_digest = match inner
                .pve
                .client
                .lxc_config(&inner.pve.node, vmid, false)
                .await
            {
                Ok(c) => c.digest.unwrap_or_default(),
                Err(e) => {
                    self.close(
                        &id,
                        StepOutcome::Abandoned(format!("re-reading the config: {e}")),
                    );
                    let _ = safety.step_abandoned(&copy_id);
                    return LaneOutcome::Transient(format!("re-reading the config: {e}"));
                }
            };
            if Some(now_digest.as_str()) != action.guest_config_sha1.as_deref() {
                warn!("the config changed while the copy was taken; not destroying");
                self.close(
                    &id,
                    StepOutcome::Abandoned(
                        "stale_state: the config changed during the safety copy".into(),
                    ),
                );
                let _ = safety.step_abandoned(&copy_id);
                return LaneOutcome::Progressed;
            }
            // Only now is the approval spent.
            if let Err(r) = inner.store.consume_deferred(&claim) {
                self.close(
                    &id,
                    StepOutcome::Abandoned(format!("the approval could not be consumed: {r:?}")),
                );
                let _ = safety.step_abandoned(&copy_id);
                return LaneOutcome::Transient(format!("consuming the nonce: {r:?}"));
            }
            if let Some(c) = &candidate {
                inner.approvals.finish(&action, c);
            }
            let digest = action.guest_config_sha1.clone();
            let intent_unix = crate::clock::unix_now();
            inner.status.set_running(vmid, kind.as_str());
            let outcome = match inner.pve.submit(step, digest.as_deref()).await {
                Ok(Submission::Task(upid)) => {
                    if let Err(e) = inner.store.submitted(&id, &upid) {
                        return LaneOutcome::Transient(format!("journaling the task {upid}: {e}"));
                    }
                    self.wait_and_finish(id, kind, vmid, upid).await
                }
                Ok(Submission::Done) => LaneOutcome::Progressed,
                Err(e) => self.submit_failed(id, step, intent_unix, e).await,
            };
            if let Err(e) = safety.step_done(&copy_id, unix_now_ms()) {
                warn!(copy = %copy_id, "dating the safety copy: {e}");
            }
            outcome
        }
        .instrument(span)
        .await
    }

    /// Sweep and retention of safety copies: at boot before the lanes run (`scan`: also look
    /// for marked backups no manifest knows), then after passes.
    pub async fn safety_housekeeping(&self, scan: bool) {
        let Some(safety) = self.safety() else {
            return;
        };
        let swept = safety.sweep(scan).await;
        for (id, state) in &swept.resolved {
            info!(copy = %id, state = %state, "safety copy resolved by the sweep");
        }
        for volid in &swept.orphans {
            warn!(%volid, "safety_copy_orphan: a backup with Drover's marker has no manifest here; it is kept and reported");
        }
        for e in &swept.errors {
            warn!("safety sweep: {e}");
        }
        let kept = safety.retention().await;
        for (id, e) in &kept.failed {
            warn!(copy = %id, "safety retention: {e}");
        }
    }
}
