//! The `verify` tree: one verify window per guest (`ct/<vmid>`), rewritten durably on every
//! phase so a restart finds exactly the phase the agent reached; the window it replaced is kept
//! as `prev/<vmid>` (a re-applied change still shows why it was reverted).

use super::{Journal, now_ms, sled_err};
use crate::JournalError;
use crate::verify::{MAX_HISTORY, VerifyPhase, VerifyTransition, VerifyWindow};

fn key(vmid: u32) -> String {
    format!("ct/{vmid}")
}

fn prev_key(vmid: u32) -> String {
    format!("prev/{vmid}")
}

impl Journal {
    fn verify_tree(&self) -> Result<sled::Tree, JournalError> {
        self.inner
            .db
            .open_tree("verify")
            .map_err(|e| sled_err(&self.inner.dir, e))
    }

    /// Writes a window in `phase`, appending the transition to its history (a rewrite in the
    /// same phase with an empty `detail`, such as a probe count, adds none); durable when it
    /// returns.
    pub fn put_verify(
        &self,
        window: &mut VerifyWindow,
        phase: VerifyPhase,
        detail: &str,
    ) -> Result<(), JournalError> {
        if phase != window.phase || !detail.is_empty() || window.history.is_empty() {
            window.history.push(VerifyTransition {
                phase: phase.as_str().to_string(),
                at_ms: now_ms(),
                detail: detail.to_string(),
            });
        }
        if window.history.len() > MAX_HISTORY {
            let drop = window.history.len() - MAX_HISTORY;
            window.history.drain(..drop);
        }
        window.phase = phase;
        let tree = self.verify_tree()?;
        if let Some(stored) = tree
            .get(key(window.vmid))
            .map_err(|e| sled_err(&self.inner.dir, e))?
            && let Ok(old) = self.dec::<VerifyWindow>("verify window", &stored)
            && (old.armed_at_ms, old.step_id) != (window.armed_at_ms, window.step_id)
        {
            tree.insert(prev_key(window.vmid), stored)
                .map_err(|e| sled_err(&self.inner.dir, e))?;
        }
        self.put(&tree, key(window.vmid), self.enc(window)?)
    }

    /// The window the guest's current one replaced, if any.
    pub fn previous_verify_window(&self, vmid: u32) -> Result<Option<VerifyWindow>, JournalError> {
        let tree = self.verify_tree()?;
        match tree
            .get(prev_key(vmid))
            .map_err(|e| sled_err(&self.inner.dir, e))?
        {
            Some(v) => Ok(Some(self.dec("verify window", &v)?)),
            None => Ok(None),
        }
    }

    /// The guest's window, open or closed.
    pub fn verify_window(&self, vmid: u32) -> Result<Option<VerifyWindow>, JournalError> {
        let tree = self.verify_tree()?;
        match tree
            .get(key(vmid))
            .map_err(|e| sled_err(&self.inner.dir, e))?
        {
            Some(v) => Ok(Some(self.dec("verify window", &v)?)),
            None => Ok(None),
        }
    }

    /// Every guest's window.
    pub fn verify_windows(&self) -> Result<Vec<VerifyWindow>, JournalError> {
        let tree = self.verify_tree()?;
        let mut out = Vec::new();
        for kv in tree.scan_prefix("ct/") {
            let (_, v) = kv.map_err(|e| sled_err(&self.inner.dir, e))?;
            out.push(self.dec("verify window", &v)?);
        }
        Ok(out)
    }

    /// Forgets a guest's window (the guest is gone).
    pub fn remove_verify(&self, vmid: u32) -> Result<(), JournalError> {
        let tree = self.verify_tree()?;
        for k in [key(vmid), prev_key(vmid)] {
            tree.remove(k).map_err(|e| sled_err(&self.inner.dir, e))?;
        }
        self.durable()
    }

    /// Undecodable windows, for `check`.
    pub(super) fn check_verify(&self, report: &mut crate::CheckReport) {
        let Ok(tree) = self.verify_tree() else {
            return;
        };
        for (k, v) in tree.iter().flatten() {
            if let Err(e) = self.dec::<VerifyWindow>("verify window", &v) {
                report.undecodable.push((
                    format!("verify {}", String::from_utf8_lossy(&k)),
                    e.to_string(),
                ));
            }
        }
    }
}
