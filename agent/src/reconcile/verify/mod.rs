//! Verify-and-revert for risky changes (`safety-nets.md` §4, §6.2).
//!
//! A change that is benign by provenance but can cut a guest off (`net[n]`, mount points, a
//! memory decrease, keys applied at reboot) is pushed inside a *verify window* when the guest's
//! desired entry has a `verify` table:
//!
//! 1. baseline: the probes run against the old config (a failing baseline cannot judge the
//!    change: it is applied without automatic revert and reported `unverifiable`);
//! 2. `armed`: the window is journaled with the old and new raw values, the digest and the
//!    deadline, *before* the `PUT config` (sent with that digest);
//! 3. `rebooting` when a key went to `[pve:pending]`, then `settling` for `settle_s`;
//! 4. `probing` until `successes` consecutive passes → `committed`;
//! 5. a failed probe or the deadline → `reverting` (journaled first) → the old values are sent
//!    back with the live digest (and a reboot where a key needs one) → `reverted`, and the
//!    change is *parked*: `shape_plan` withholds it with a note until the desired entry of the
//!    guest changes, so the agent never loops apply → revert → apply.
//!
//! Every turn, and recovery after a restart, decides from PVE's live values of the changed keys
//! against the journaled old and new ones (`values::decide`), never from whether the guest
//! answers now. Each phase is a journal entry, a metric (`drover_verify_phase_total`,
//! `drover_verify_total`), a status line and a log line. A window never holds its lane's slot
//! while it waits: the turn returns `RecheckAt`, so other guests keep going; probes have
//! timeouts and never block the runtime.

pub mod probe;
pub mod risk;
pub mod values;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use gate::Classification;
use proxmox_client::{ConfigUpdate, LxcConfig, TaskOutcome};
use tracing::{Instrument, info, info_span, warn};

use crate::desired::GuestSpec;
use crate::desired::verify_spec::VerifySpec;
use crate::model::step::Change;
use crate::model::{ActualGuest, Power};
use crate::reconcile::board::VerifyLine;
use crate::reconcile::engine::{Engine, pve_failure};
use crate::reconcile::lanes::LaneOutcome;
use crate::reconcile::planner::{Step, StepKind};
use crate::store::{StepOutcome, VerifyPhase, VerifyWindow};
use probe::Probe;
use values::{Live, Next, OpenPhase};

/// How soon an open window looks again. Below a second, so `drover run --once` (which stops
/// when nothing is due within a second) waits for the window to end.
const RECHECK: Duration = Duration::from_millis(800);

/// When this process began recovering: a deadline that passed in a window last touched before
/// it passed while the agent was down (`agent_restart`).
static BOOT_MS: OnceLock<i64> = OnceLock::new();

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn recheck_at(until_ms: i64) -> LaneOutcome {
    let wait = Duration::from_millis((until_ms - now_ms()).max(0) as u64).min(RECHECK);
    LaneOutcome::RecheckAt(tokio::time::Instant::now() + wait)
}

/// The status line of a window.
pub fn status_line(w: &VerifyWindow) -> VerifyLine {
    let open = !w.phase.is_terminal();
    VerifyLine {
        phase: w.phase.as_str().to_string(),
        keys: w.keys.clone(),
        deadline_unix: open.then_some(w.deadline_ms / 1000),
        code: w.code.clone(),
        message: w
            .history
            .last()
            .map(|t| t.detail.clone())
            .unwrap_or_default(),
        parked: w.is_parked(),
        history: w
            .history
            .iter()
            .map(|t| (t.phase.clone(), t.at_ms, t.detail.clone()))
            .collect(),
    }
}

impl Engine {
    /// Moves a window to `phase`: the journal entry (durable), the metric, the status line and
    /// the log line of that phase.
    fn transition(
        &self,
        w: &mut VerifyWindow,
        phase: VerifyPhase,
        detail: &str,
    ) -> Result<(), crate::store::StoreError> {
        let name = phase.as_str();
        let changed = phase != w.phase || w.history.is_empty();
        self.inner.store.put_verify(w, phase, detail)?;
        if changed {
            self.metrics().verify_phase(name);
            let keys = w.keys.join(",");
            match name {
                "reverting" | "reverted" | "conflict" | "unverifiable" => warn!(
                    vmid = w.vmid,
                    step = "set_config",
                    phase = name,
                    keys,
                    code = w.code.as_deref().unwrap_or(""),
                    "verify window {name}: {detail}"
                ),
                _ => info!(
                    vmid = w.vmid,
                    step = "set_config",
                    phase = name,
                    keys,
                    "verify window {name}: {detail}"
                ),
            }
        }
        self.inner.status.set_verify(w.vmid, Some(status_line(w)));
        Ok(())
    }

    /// The same, for a phase whose record must exist before anything else happens: a failed
    /// journal write stops the turn.
    fn must(
        &self,
        w: &mut VerifyWindow,
        phase: VerifyPhase,
        detail: &str,
    ) -> Result<(), LaneOutcome> {
        self.transition(w, phase, detail)
            .map_err(|e| LaneOutcome::Transient(format!("journaling the verify window: {e}")))
    }

    /// Boot: every window is shown in `status`, and every open one resumes in its lane (which
    /// decides from the live values, like any turn).
    pub(super) fn recover_verify(&self) -> usize {
        let _ = BOOT_MS.set(now_ms());
        let windows = match self.inner.store.verify_windows() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("journal: reading verify windows: {e}");
                return 0;
            }
        };
        let mut open = 0;
        for w in windows {
            self.inner.status.set_verify(w.vmid, Some(status_line(&w)));
            if !w.phase.is_terminal() {
                info!(
                    vmid = w.vmid,
                    phase = w.phase.as_str(),
                    "verify window open at start; resuming it from the live config"
                );
                self.inner.lanes.request(w.vmid);
                open += 1;
            }
        }
        open
    }

    /// A lane turn's first question: does the guest have an open window? Then the window's next
    /// move is the whole turn.
    pub(super) async fn verify_turn(&self, vmid: u32) -> Option<LaneOutcome> {
        let w = match self.inner.store.verify_window(vmid) {
            Ok(Some(w)) if !w.phase.is_terminal() => w,
            Ok(_) => return None,
            Err(e) => {
                return Some(LaneOutcome::Transient(format!(
                    "reading the verify window: {e}"
                )));
            }
        };
        let span = info_span!("verify", vmid, step = "set_config");
        Some(self.advance(w).instrument(span).await)
    }

    async fn read_config(&self, vmid: u32) -> Result<Option<LxcConfig>, proxmox_client::Error> {
        match self
            .inner
            .pve
            .client
            .lxc_config(&self.inner.pve.node, vmid, false)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.is_not_found() || e.already_in_state().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One move of an open window, from the live config.
    async fn advance(&self, mut w: VerifyWindow) -> LaneOutcome {
        let vmid = w.vmid;
        let cfg = match self.read_config(vmid).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                w.code = Some("guest_gone".into());
                w.reason = Some("the guest no longer exists".into());
                if let Err(o) = self.must(&mut w, VerifyPhase::NeverApplied, "the guest is gone") {
                    return o;
                }
                return LaneOutcome::Progressed;
            }
            Err(e) => return pve_failure(&e, "reading the config of a verify window"),
        };
        if let VerifyPhase::Rebooting { upid } = &w.phase {
            let upid = match upid.parse::<proxmox_client::Upid>() {
                Ok(u) => u,
                Err(_) => {
                    // Unreadable: judge the change as it stands.
                    w.settle_until_ms = now_ms() + w.settle_ms as i64;
                    if let Err(o) = self.must(&mut w, VerifyPhase::Settling, "reboot not tracked") {
                        return o;
                    }
                    return recheck_at(w.settle_until_ms);
                }
            };
            match self.inner.pve.client.task_status(&upid).await {
                Ok(st) if st.exit().is_none() => return recheck_at(now_ms() + 1000),
                Err(e) if !e.is_not_found() => {
                    return pve_failure(&e, "reading the reboot of a verify window");
                }
                // Ended (however: the probes judge the guest), or PVE no longer knows it.
                Ok(_) | Err(_) => {
                    w.settle_until_ms = now_ms() + w.settle_ms as i64;
                    let detail = format!("rebooted ({upid}); settling");
                    if let Err(o) = self.must(&mut w, VerifyPhase::Settling, &detail) {
                        return o;
                    }
                }
            }
        }
        let live = values::classify(&values::live_values(&cfg, &w.keys), &w.old, &w.new);
        if w.phase == VerifyPhase::Armed && live == Live::New && w.baseline_ok {
            // The push reached PVE before the agent could record it: settle from now.
            w.settle_until_ms = now_ms() + w.settle_ms as i64;
            w.digest_after = cfg.digest.clone();
            if let Err(o) = self.must(
                &mut w,
                VerifyPhase::Settling,
                "the change is live (found after a restart); settling",
            ) {
                return o;
            }
        }
        let open = match w.phase {
            VerifyPhase::Armed => OpenPhase::Armed,
            VerifyPhase::Reverting => OpenPhase::Reverting,
            _ => OpenPhase::Waiting,
        };
        let now = now_ms();
        match values::decide(
            open,
            live,
            w.baseline_ok,
            now,
            w.settle_until_ms,
            w.deadline_ms,
        ) {
            Next::WaitUntil(t) => recheck_at(t),
            Next::Probe => self.probe_round(w, &cfg).await,
            Next::Revert => {
                if w.phase != VerifyPhase::Reverting {
                    let restarted = w
                        .history
                        .last()
                        .zip(BOOT_MS.get())
                        .is_some_and(|(t, boot)| t.at_ms < *boot && *boot >= w.deadline_ms);
                    if restarted {
                        w.code = Some("agent_restart".into());
                        w.reason = Some(
                            "the deadline passed while the agent was down; the change was never confirmed"
                                .into(),
                        );
                    } else {
                        w.code = Some("deadline".into());
                        w.reason = Some(format!(
                            "no {} consecutive passing probe round(s) before the deadline",
                            w.successes_needed
                        ));
                    }
                }
                self.revert(w, &cfg).await
            }
            Next::Unverifiable => {
                w.code = Some("baseline_failed".into());
                w.reason = Some(
                    "the probes failed before the change; it was applied without automatic revert"
                        .into(),
                );
                if let Err(o) = self.must(
                    &mut w,
                    VerifyPhase::Unverifiable,
                    "applied; the baseline had failed, so the change cannot be judged",
                ) {
                    return o;
                }
                LaneOutcome::Progressed
            }
            Next::FoundReverted => {
                if w.phase != VerifyPhase::Reverting {
                    w.code = Some("found_reverted".into());
                    w.reason =
                        Some("the old values are live again (reverted outside Drover)".into());
                }
                let detail = format!(
                    "the old values are live ({})",
                    w.code.as_deref().unwrap_or("-")
                );
                if let Err(o) = self.must(&mut w, VerifyPhase::Reverted, &detail) {
                    return o;
                }
                LaneOutcome::Progressed
            }
            Next::NeverApplied => {
                w.code = Some("never_applied".into());
                w.reason = Some("the change never reached PVE; the plan decides again".into());
                if let Err(o) = self.must(
                    &mut w,
                    VerifyPhase::NeverApplied,
                    "the old values are live and no push was recorded",
                ) {
                    return o;
                }
                LaneOutcome::Progressed
            }
            Next::Conflict => {
                w.code = Some("revert_conflict".into());
                w.reason = Some(
                    "the live values are neither the old nor the new ones: someone else edited the guest; nothing was touched"
                        .into(),
                );
                if let Err(o) = self.must(&mut w, VerifyPhase::Conflict, "third-party edit") {
                    return o;
                }
                LaneOutcome::Progressed
            }
        }
    }

    async fn probe_round(&self, mut w: VerifyWindow, cfg: &LxcConfig) -> LaneOutcome {
        if w.phase != VerifyPhase::Probing
            && let Err(o) = self.must(&mut w, VerifyPhase::Probing, "settled; probing")
        {
            return o;
        }
        let probes: Vec<Probe> = w
            .probes
            .iter()
            .filter_map(|p| Probe::from_text(p))
            .collect();
        let timeout = Duration::from_millis(w.probe_timeout_ms.max(100));
        let round = probe::run(&self.inner.pve, w.vmid, &probes, cfg, timeout).await;
        if !round.passed() {
            w.code = Some("probe_failed".into());
            w.reason = Some(round.summary());
            return self.revert(w, cfg).await;
        }
        w.successes += 1;
        if w.successes >= w.successes_needed {
            w.code = None;
            w.reason = Some(format!("{} consecutive probe round(s) passed", w.successes));
            let detail = format!("committed after {} passing round(s)", w.successes);
            if let Err(o) = self.must(&mut w, VerifyPhase::Committed, &detail) {
                return o;
            }
            return LaneOutcome::Converged;
        }
        // The count is kept (a rewrite without a history entry); a crash only starts it over.
        if let Err(o) = self.must(&mut w, VerifyPhase::Probing, "") {
            return o;
        }
        recheck_at(now_ms() + RECHECK.as_millis() as i64)
    }

    /// Sends the old values back: `reverting` is journaled first, then the `PUT config` (with
    /// the live digest, so a concurrent edit makes PVE refuse instead of being overwritten),
    /// a reboot where a key only applies at start, a baseline probe, `reverted`.
    async fn revert(&self, mut w: VerifyWindow, cfg: &LxcConfig) -> LaneOutcome {
        let vmid = w.vmid;
        if w.phase != VerifyPhase::Reverting {
            let detail = format!(
                "{}: {}",
                w.code.as_deref().unwrap_or("-"),
                w.reason.as_deref().unwrap_or("-")
            );
            if let Err(o) = self.must(&mut w, VerifyPhase::Reverting, &detail) {
                return o;
            }
        }
        let node = self.inner.pve.node.clone();
        let running = match self.inner.pve.client.lxc_status(&node, vmid).await {
            Ok(s) => s.entry.is_running(),
            Err(e) => return pve_failure(&e, "reading the status before a revert"),
        };
        // Keys still waiting in [pve:pending] are dropped from there; the running CT never saw
        // them.
        let pending: Vec<String> = if running {
            match self.inner.pve.client.lxc_pending(&node, vmid).await {
                Ok(p) => p
                    .into_iter()
                    .filter(|e| e.has_pending_change() && w.keys.contains(&e.key))
                    .map(|e| e.key)
                    .collect(),
                Err(e) => return pve_failure(&e, "reading pending changes before a revert"),
            }
        } else {
            Vec::new()
        };
        let mut update = ConfigUpdate::new();
        if let Some(d) = &cfg.digest {
            update = update.with_digest(d.clone());
        }
        let mut params = BTreeMap::new();
        let mut changes = Vec::new();
        if !pending.is_empty() {
            update = update.set("revert", pending.join(","));
            params.insert("revert".to_string(), pending.join(","));
        }
        let mut deleted = Vec::new();
        for k in w.keys.iter().filter(|k| !pending.contains(k)) {
            match w.old.get(k).cloned().flatten() {
                Some(v) => {
                    update = update.set(k.clone(), &v);
                    params.insert(k.clone(), v.clone());
                }
                None => {
                    update = update.delete(k.clone());
                    deleted.push(k.clone());
                }
            }
        }
        if !deleted.is_empty() {
            params.insert("delete".to_string(), deleted.join(","));
        }
        for k in &w.keys {
            changes.push(Change {
                key: k.clone(),
                old: w.new.get(k).cloned().flatten(),
                new: w.old.get(k).cloned().flatten(),
            });
        }
        let step = Step {
            vmid,
            kind: StepKind::SetConfig,
            params,
            changes,
        };
        let id = match self.inner.store.intent(
            &step,
            &Classification::Benign,
            None,
            Some("verify_revert"),
        ) {
            Ok(id) => id,
            Err(e) => return LaneOutcome::Transient(format!("journaling the revert: {e}")),
        };
        if let Err(e) = self
            .inner
            .pve
            .client
            .update_lxc_config(&node, vmid, &update)
            .await
        {
            // Whatever happened, the next turn reads the live values again and decides: the old
            // ones → reverted; still the new ones → revert again; anything else → conflict.
            self.close(
                &id,
                StepOutcome::Abandoned(format!("revert not applied: {e}")),
            );
            return LaneOutcome::Transient(format!("reverting the risky change: {e}"));
        }
        self.close(&id, StepOutcome::Ok);
        let applied_keys = w.keys.iter().any(|k| !pending.contains(k));
        if running
            && w.needs_reboot
            && applied_keys
            && let Err(o) = self.reboot_inline(vmid, "verify_revert").await
        {
            return o;
        }
        // The baseline again, against the old config: how the guest is after the revert.
        let after = match self.read_config(vmid).await {
            Ok(Some(c)) => c,
            _ => cfg.clone(),
        };
        let probes: Vec<Probe> = w
            .probes
            .iter()
            .filter_map(|p| Probe::from_text(p))
            .collect();
        let timeout = Duration::from_millis(w.probe_timeout_ms.max(100));
        let round = probe::run(&self.inner.pve, vmid, &probes, &after, timeout).await;
        let detail = if round.passed() {
            "reverted; baseline ok".to_string()
        } else {
            format!("reverted; baseline failed: {}", round.summary())
        };
        if let Err(o) = self.must(&mut w, VerifyPhase::Reverted, &detail) {
            return o;
        }
        LaneOutcome::Progressed
    }

    /// A reboot inside a window (pending keys applied, or reverted), journaled like any step
    /// and waited for in the turn.
    async fn reboot_inline(&self, vmid: u32, operation: &str) -> Result<(), LaneOutcome> {
        let step = Step {
            vmid,
            kind: StepKind::Reboot,
            params: BTreeMap::new(),
            changes: Vec::new(),
        };
        let id = self
            .inner
            .store
            .intent(&step, &Classification::Benign, None, Some(operation))
            .map_err(|e| LaneOutcome::Transient(format!("journaling the reboot: {e}")))?;
        let upid = match self.inner.pve.submit(&step, None).await {
            Ok(crate::reconcile::pve::Submission::Task(u)) => u,
            Ok(_) => {
                self.close(&id, StepOutcome::Ok);
                return Ok(());
            }
            Err(e) => {
                self.close(&id, StepOutcome::Abandoned(format!("not rebooted: {e}")));
                return Err(LaneOutcome::Transient(format!("rebooting: {e}")));
            }
        };
        if let Err(e) = self.inner.store.submitted(&id, &upid) {
            return Err(LaneOutcome::Transient(format!("journaling {upid}: {e}")));
        }
        let outcome = tokio::select! {
            o = self.inner.pve.wait(&upid, StepKind::Reboot) => o,
            // The reboot's UPID is journaled: the next start re-attaches, and the window (still
            // `reverting`) finds the old values live.
            _ = self.wait_shutdown() => return Err(LaneOutcome::Waiting),
        };
        match outcome {
            Ok(TaskOutcome::Ok | TaskOutcome::Warnings(_)) => {
                self.close(&id, StepOutcome::Ok);
                Ok(())
            }
            Ok(TaskOutcome::Failed { message, .. }) => {
                self.close(&id, StepOutcome::Failed(message.clone()));
                Err(LaneOutcome::Transient(format!("reboot failed: {message}")))
            }
            Err(e) => Err(LaneOutcome::Transient(format!("waiting for {upid}: {e}"))),
        }
    }

    /// Runs a risky step inside a verify window (see the module doc). `actual` and `digest` are
    /// the turn's fresh read the step was planned on.
    pub(super) async fn execute_verified(
        &self,
        step: &Step,
        spec: &GuestSpec,
        vspec: &VerifySpec,
        actual: &ActualGuest,
    ) -> LaneOutcome {
        let vmid = step.vmid;
        let span = info_span!("verify", vmid, step = step.kind.as_str());
        async move {
            let cfg = match self.read_config(vmid).await {
                Ok(Some(c)) => c,
                Ok(None) => return LaneOutcome::Progressed,
                Err(e) => return pve_failure(&e, "reading the config before a risky change"),
            };
            if cfg.digest.as_deref() != Some(actual.digest.as_str()) {
                return LaneOutcome::Progressed; // changed since the plan: plan again
            }
            let keys: Vec<String> = step.params.keys().cloned().collect();
            let old = values::live_values(&cfg, &keys);
            let new: BTreeMap<String, Option<String>> = step
                .params
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            let probes = probe::probes_of(vspec);
            let timeout = Duration::from_secs(vspec.timeout_s);
            // 1. Baseline, against the config as it is.
            let baseline = probe::run(&self.inner.pve, vmid, &probes, &cfg, timeout).await;
            if !baseline.passed() {
                warn!(
                    "baseline probes fail before the change ({}); it cannot be judged and is applied without automatic revert",
                    baseline.summary()
                );
            }
            // 2. The step record and the armed window, both before the call.
            let intent_unix = crate::clock::unix_now();
            let id = match self
                .inner
                .store
                .intent(step, &Classification::Benign, None, Some("verify"))
            {
                Ok(id) => id,
                Err(e) => return LaneOutcome::Transient(format!("journaling the intent: {e}")),
            };
            let now = now_ms();
            let mut w = VerifyWindow {
                vmid,
                step_id: Some(id.0),
                phase: VerifyPhase::Armed,
                keys: keys.clone(),
                old,
                new,
                digest_before: actual.digest.clone(),
                digest_after: None,
                needs_reboot: keys.iter().any(|k| risk::applies_at_reboot(k)),
                probes: probes.iter().map(Probe::to_text).collect(),
                probe_timeout_ms: vspec.timeout_s * 1000,
                settle_ms: vspec.settle_s * 1000,
                successes_needed: vspec.successes,
                successes: 0,
                baseline_ok: baseline.passed(),
                armed_at_ms: now,
                settle_until_ms: now + (vspec.settle_s * 1000) as i64,
                deadline_ms: now + (vspec.revert_after_s * 1000) as i64,
                spec_fingerprint: risk::fingerprint(spec),
                code: None,
                reason: None,
                reapplied: 0,
                history: Vec::new(),
            };
            // The one automatic re-apply of a change the agent's downtime reverted unjudged.
            // A window that never reached PVE passes its count on, so no restart resets it.
            if let Ok(Some(prev)) = self.inner.store.verify_window(vmid)
                && prev.spec_fingerprint == w.spec_fingerprint
            {
                if prev.may_reapply() {
                    w.reapplied = prev.reapplied + 1;
                    info!("re-applying once: the last window was reverted unjudged (agent_restart)");
                } else if prev.phase == VerifyPhase::NeverApplied {
                    w.reapplied = prev.reapplied;
                }
            }
            let detail = format!(
                "old {}; baseline {}",
                w.old
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(unset)")))
                    .collect::<Vec<_>>()
                    .join(" "),
                baseline.summary()
            );
            if let Err(e) = self.inner.store.put_verify(&mut w, VerifyPhase::Armed, &detail) {
                self.close(&id, StepOutcome::Abandoned(format!("not sent: {e}")));
                return LaneOutcome::Transient(format!("journaling the verify window: {e}"));
            }
            self.metrics().verify_phase("armed");
            info!(keys = keys.join(","), "verify window armed: {detail}");
            self.inner.status.set_verify(vmid, Some(status_line(&w)));
            self.inner.status.set_running(vmid, step.kind.as_str());
            // 3. The push, guarded by the digest the old values were read with.
            if let Err(e) = self.inner.pve.submit(step, Some(&actual.digest)).await {
                if !e.may_have_been_processed() {
                    w.code = Some("not_applied".into());
                    w.reason = Some(format!("PVE refused the change: {e}"));
                    let _ = self.transition(&mut w, VerifyPhase::NeverApplied, "PVE refused the change");
                }
                // Else the window stays armed: the next turn finds the old or the new values.
                return self.submit_failed(id, step, intent_unix, e).await;
            }
            self.close(&id, StepOutcome::Ok);
            let now = now_ms();
            w.settle_until_ms = now + w.settle_ms as i64;
            w.deadline_ms = now + (vspec.revert_after_s * 1000) as i64;
            let after = self.read_config(vmid).await.ok().flatten();
            w.digest_after = after.as_ref().and_then(|c| c.digest.clone());
            if !w.baseline_ok {
                w.code = Some("baseline_failed".into());
                w.reason = Some(format!(
                    "the probes failed before the change ({}); applied without automatic revert",
                    baseline.summary()
                ));
                let _ = self.transition(
                    &mut w,
                    VerifyPhase::Unverifiable,
                    "applied; the baseline had failed, so the change cannot be judged",
                );
                return LaneOutcome::Progressed;
            }
            // Keys PVE could not apply to the running CT wait in [pve:pending]: reboot now, so
            // the window judges the change that was asked for.
            let pending = if actual.power == Power::Running {
                match self.inner.pve.client.lxc_pending(&self.inner.pve.node, vmid).await {
                    Ok(p) => p.iter().any(|e| e.has_pending_change() && keys.contains(&e.key)),
                    Err(_) => w.needs_reboot,
                }
            } else {
                false
            };
            if pending {
                w.needs_reboot = true;
                let reboot = Step {
                    vmid,
                    kind: StepKind::Reboot,
                    params: BTreeMap::new(),
                    changes: Vec::new(),
                };
                let rid = match self
                    .inner
                    .store
                    .intent(&reboot, &Classification::Benign, None, Some("verify"))
                {
                    Ok(id) => id,
                    Err(e) => return LaneOutcome::Transient(format!("journaling the reboot: {e}")),
                };
                match self.inner.pve.submit(&reboot, None).await {
                    Ok(crate::reconcile::pve::Submission::Task(upid)) => {
                        let _ = self.inner.store.submitted(&rid, &upid);
                        let detail = format!("keys wait for a start; rebooting ({upid})");
                        if let Err(o) = self.must(
                            &mut w,
                            VerifyPhase::Rebooting { upid: upid.to_string() },
                            &detail,
                        ) {
                            return o;
                        }
                        // The reboot's record stays in flight: the next turn re-attaches to its
                        // task like any step's, then the window settles.
                        return recheck_at(now_ms() + 1000);
                    }
                    Ok(_) => self.close(&rid, StepOutcome::Ok),
                    Err(e) => {
                        self.close(&rid, StepOutcome::Abandoned(format!("not rebooted: {e}")));
                    }
                }
            }
            let detail = format!(
                "the change is live; settling {} s (deadline in {} s)",
                vspec.settle_s, vspec.revert_after_s
            );
            if let Err(o) = self.must(&mut w, VerifyPhase::Settling, &detail) {
                return o;
            }
            recheck_at(w.settle_until_ms)
        }
        .instrument(span)
        .await
    }
}
