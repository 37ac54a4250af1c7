//! Retention of Drover's own copies (`safety-nets.md` §6.1, §7 item 3): a copy stays
//! protected until its step is done plus the op's grace period, at most `keep_per_guest`
//! protected copies per guest, and only copies with a manifest in this journal are ever
//! unprotected or deleted. Release is "unprotect, then delete at once": an unprotected Drover
//! copy left for the storage's prune would take one of the operator's keep slots.

use std::time::Duration;

use proxmox_client::{TaskOutcome, VolumeUpdate};
use tracing::{info, warn};

use super::{CopyError, CopyManifest, CopyOp, CopyState, SafetyCopies, now_ms};

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Copies whose protection window was set (their step ended).
    pub dated: Vec<String>,
    pub released: Vec<String>,
    /// `(copy id, code: message)`.
    pub failed: Vec<(String, String)>,
}

/// PVE says the volume is not there (500 "volume ... does not exist", or a 404): a release
/// that an earlier, interrupted one finished.
fn gone(e: &proxmox_client::Error) -> bool {
    e.is_not_found() || e.to_string().contains("does not exist")
}

fn expired(c: &CopyManifest, now: i64) -> bool {
    c.protect_until_ms.is_some_and(|t| t <= now)
}

impl SafetyCopies {
    /// The expired copies to release so that one more copy of `vmid` on `storage` stays
    /// within `keep_per_guest`; `safety_copy_cap` when the cap is reached and none expired.
    pub(crate) fn releases_needed(
        &self,
        copies: &[CopyManifest],
        vmid: u32,
        storage: &str,
    ) -> Result<Vec<String>, CopyError> {
        let now = now_ms();
        let live: Vec<&CopyManifest> = copies
            .iter()
            .filter(|c| {
                c.vmid == vmid
                    && c.storage == storage
                    && c.method == "vzdump"
                    && matches!(c.state, CopyState::Creating | CopyState::Complete)
            })
            .collect();
        let keep = self.policy.keep_per_guest as usize;
        if live.len() < keep {
            return Ok(Vec::new());
        }
        let need = live.len() + 1 - keep;
        let mut candidates: Vec<&&CopyManifest> = live
            .iter()
            .filter(|c| c.state == CopyState::Complete && expired(c, now))
            .collect();
        candidates.sort_by_key(|c| c.created_at_ms);
        if candidates.len() < need {
            return Err(CopyError::new(
                "safety_copy_cap",
                format!(
                    "CT {vmid} already has {} protected safety copies on {storage} (safety.keep_per_guest = {keep}) and none is past its grace period; release one with `drover copies` guidance or wait",
                    live.len()
                ),
            ));
        }
        Ok(candidates
            .into_iter()
            .take(need)
            .map(|c| c.id.clone())
            .collect())
    }

    /// The copy's step ended: it stays protected for the op's grace period from `done_ms`.
    pub fn step_done(&self, copy_id: &str, done_ms: i64) -> Result<(), CopyError> {
        let Some(mut m) = self
            .store
            .copy(copy_id)
            .map_err(|e| CopyError::journal(&e))?
        else {
            return Ok(());
        };
        if m.protect_until_ms.is_some() {
            return Ok(());
        }
        let grace = CopyOp::from_kind(&m.kind)
            .map(|op| op.grace(&self.policy))
            .unwrap_or(self.policy.destroy_grace);
        m.protect_until_ms = Some(done_ms.saturating_add(grace.as_millis() as i64));
        self.store.put_copy(&m).map_err(|e| CopyError::journal(&e))
    }

    /// The copy's step ended without its destructive call (a refusal after the copy, a
    /// crash before the call): nothing was destroyed, so the copy expires now and the next
    /// retention pass (or the next copy of the guest) releases it.
    pub fn step_abandoned(&self, copy_id: &str) -> Result<(), CopyError> {
        let Some(mut m) = self
            .store
            .copy(copy_id)
            .map_err(|e| CopyError::journal(&e))?
        else {
            return Ok(());
        };
        m.protect_until_ms = Some(now_ms());
        m.warnings
            .push("its step ended without the destructive call; not kept".into());
        self.store.put_copy(&m).map_err(|e| CopyError::journal(&e))
    }

    /// Unprotects and deletes one of Drover's own copies (its manifest must exist). A copy
    /// without a manifest is never touched: the operator's backups are not Drover's business.
    pub async fn release(&self, copy_id: &str) -> Result<(), CopyError> {
        let Some(mut m) = self
            .store
            .copy(copy_id)
            .map_err(|e| CopyError::journal(&e))?
        else {
            return Err(CopyError::new(
                "safety_copy_unknown",
                format!(
                    "no manifest {copy_id} in this journal; Drover releases only copies it made"
                ),
            ));
        };
        if m.state == CopyState::Orphan {
            return Err(CopyError::new(
                "safety_copy_orphan",
                format!(
                    "{copy_id} was found on PVE without a manifest of this journal; Drover never deletes it (remove it with pvesm if it is not needed)"
                ),
            ));
        }
        match (m.method.as_str(), m.volid.clone(), m.snapname.clone()) {
            ("vzdump", Some(volid), _) => {
                self.client
                    .update_volume(
                        &self.node,
                        &m.storage,
                        &volid,
                        &VolumeUpdate {
                            protected: Some(false),
                            notes: None,
                        },
                    )
                    .await
                    .or_else(|e| if gone(&e) { Ok(()) } else { Err(e) })
                    .map_err(|e| CopyError::pve(&format!("unprotecting {volid}"), &e))?;
                let upid = match self
                    .client
                    .delete_volume(&self.node, &m.storage, &volid)
                    .await
                {
                    Ok(u) => Some(u),
                    Err(e) if gone(&e) => None,
                    Err(e) => {
                        // Unprotected but not deleted: record it, so the next pass retries.
                        m.state = CopyState::Released { delete_upid: None };
                        let _ = self.store.put_copy(&m);
                        return Err(CopyError::pve(&format!("deleting {volid}"), &e));
                    }
                };
                m.state = CopyState::Released {
                    delete_upid: upid.as_ref().map(|u| u.to_string()),
                };
                self.store
                    .put_copy(&m)
                    .map_err(|e| CopyError::journal(&e))?;
                if let Some(upid) = &upid {
                    match self
                        .client
                        .wait_task(upid, &self.wait_options(Duration::from_secs(300)))
                        .await
                    {
                        Ok(TaskOutcome::Ok | TaskOutcome::Warnings(_)) => {}
                        Ok(TaskOutcome::Failed { message, .. }) => {
                            return Err(CopyError::failed(
                                "delete_failed",
                                format!("deleting {volid}: {message}"),
                            ));
                        }
                        Err(e) => return Err(CopyError::pve(&format!("waiting for {upid}"), &e)),
                    }
                }
                m.state = CopyState::Deleted {
                    delete_upid: upid.map(|u| u.to_string()),
                };
            }
            ("snapshot", _, Some(name)) => {
                let upid = self
                    .client
                    .delete_snapshot(&self.node, m.vmid, &name, false)
                    .await
                    .map_err(|e| CopyError::pve(&format!("deleting snapshot {name}"), &e))?;
                m.state = CopyState::Released {
                    delete_upid: Some(upid.to_string()),
                };
                self.store
                    .put_copy(&m)
                    .map_err(|e| CopyError::journal(&e))?;
                if let Ok(TaskOutcome::Failed { message, .. }) = self
                    .client
                    .wait_task(&upid, &self.wait_options(Duration::from_secs(300)))
                    .await
                {
                    return Err(CopyError::failed("delete_failed", message));
                }
                m.state = CopyState::Deleted {
                    delete_upid: Some(upid.to_string()),
                };
            }
            // Nothing on PVE (failed before an archive existed).
            _ => m.state = CopyState::Deleted { delete_upid: None },
        }
        self.store
            .put_copy(&m)
            .map_err(|e| CopyError::journal(&e))?;
        info!(vmid = m.vmid, copy = %m.id, "safety copy released");
        Ok(())
    }

    /// One retention pass: date copies whose step ended, release the expired ones. Never
    /// touches a backup without a manifest.
    pub async fn retention(&self) -> RetentionReport {
        let mut report = RetentionReport::default();
        let Ok(copies) = self.store.copies() else {
            return report;
        };
        let now = now_ms();
        for c in copies {
            if c.state == CopyState::Complete
                && c.protect_until_ms.is_none()
                && !self.is_busy(&c.id)
            {
                // The step's end decides the window. A step that ended without reaching
                // PVE destroyed nothing: the guest still holds the data, so its copy is not
                // kept (released by the next pass, freeing the slot for the next attempt).
                let end = c
                    .step_id
                    .parse::<u64>()
                    .ok()
                    .map(|id| self.store.step_end(id));
                let dated = match end {
                    Some(Ok(Some((at, true)))) => self.step_done(&c.id, at),
                    Some(Ok(Some((_, false)))) => self.step_abandoned(&c.id),
                    Some(Ok(None)) | Some(Err(_)) => continue,
                    // Not an engine step (a job's id): from now.
                    None => self.step_done(&c.id, now),
                };
                if dated.is_ok() {
                    report.dated.push(c.id.clone());
                }
                continue;
            }
            let releasable = match &c.state {
                CopyState::Complete => expired(&c, now),
                // A release interrupted between unprotect and delete.
                CopyState::Released { .. } => true,
                _ => false,
            };
            if !releasable || self.is_busy(&c.id) {
                continue;
            }
            match self.release(&c.id).await {
                Ok(()) => report.released.push(c.id.clone()),
                Err(e) => {
                    warn!(copy = %c.id, "releasing an expired safety copy: {e}");
                    report.failed.push((c.id.clone(), e.to_string()));
                }
            }
        }
        let _ = self.store.prune_copies(20);
        report
    }
}
