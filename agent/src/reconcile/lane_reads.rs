//! The reads a lane turn makes of its guest, and how few requests they take.
//!
//! A turn reads its guest before planning (status and `pending`: two requests that carry the
//! power state, the whole config with its digest and what is pending) and again after a step
//! to confirm it. Two rules keep a step at about five requests (read, call, one poll at the
//! learned task duration, confirm) without ever planning on stale state:
//! - a power step (start, stop, shutdown, reboot) changes the power state and nothing a plan
//!   reads from the config (a start or reboot applies what was pending, and the read before
//!   already showed the config with pending values merged in), so its confirmation reads the
//!   status only and plans on the config read just before the step;
//! - a full confirmation read (after a create, config change, resize or destroy) is handed to
//!   the guest's next turn if that turn starts within [`HANDOVER_MAX_AGE`], instead of reading
//!   the same state again a moment later. Such a read was made after the step ended, so it is
//!   as fresh as the one it replaces; an older one is dropped and the turn reads afresh.
//!
//! A confirmation built from the status and the earlier config carries the earlier digest: it
//! is only used to decide whether the lane has more to do, never handed on, and a step the
//! next turn plans is always planned on a real read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proxmox_client::Error as PveError;

use crate::model::{ActualGuest, Power};
use crate::reconcile::engine::Engine;
use crate::reconcile::planner::StepKind;

/// How long a confirmation read may serve as the next turn's read.
pub const HANDOVER_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Kept {
    /// The read this turn's step was planned on (taken by the confirmation).
    PlannedOn(ActualGuest),
    /// A confirmation read made after a step ended, for the next turn.
    Confirmed(Instant, Option<ActualGuest>),
}

/// Per guest, the last read its lane keeps (at most one entry per guest with a turn going).
#[derive(Debug, Default)]
pub struct LaneReads {
    kept: Mutex<HashMap<u32, Kept>>,
}

impl LaneReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A turn starts: the confirmation read the previous turn handed over, if it is recent
    /// (`Some(None)`: it found the guest gone). Anything else kept is dropped.
    pub fn take_handed_over(&self, vmid: u32) -> Option<Option<ActualGuest>> {
        match self.lock().remove(&vmid) {
            Some(Kept::Confirmed(at, g)) if at.elapsed() <= HANDOVER_MAX_AGE => Some(g),
            _ => None,
        }
    }

    /// The turn planned its step on `guest`.
    pub fn planned_on(&self, vmid: u32, guest: &ActualGuest) {
        self.lock().insert(vmid, Kept::PlannedOn(guest.clone()));
    }

    fn take_planned_on(&self, vmid: u32) -> Option<ActualGuest> {
        match self.lock().remove(&vmid) {
            Some(Kept::PlannedOn(g)) => Some(g),
            _ => None,
        }
    }

    /// Keeps a full confirmation read for the guest's next turn.
    pub fn hand_over(&self, vmid: u32, guest: Option<ActualGuest>) {
        self.lock()
            .insert(vmid, Kept::Confirmed(Instant::now(), guest));
    }

    /// Forgets what is kept for `vmid` (its lane has nothing more to do now).
    pub fn forget(&self, vmid: u32) {
        self.lock().remove(&vmid);
    }
}

/// A confirmation read, and whether it is a full read (one that may be handed on).
pub struct Confirmation {
    pub guest: Option<ActualGuest>,
    pub full: bool,
}

/// Steps whose effect is the power state only.
fn is_power_step(kind: StepKind) -> bool {
    matches!(
        kind,
        StepKind::Start | StepKind::Stop | StepKind::Shutdown | StepKind::Reboot
    )
}

impl Engine {
    /// The read a turn plans on: the previous turn's recent confirmation, or a fresh read.
    pub(super) async fn read_for_turn(&self, vmid: u32) -> Result<Option<ActualGuest>, PveError> {
        let reads = &self.inner.lane_reads;
        let actual = match reads.take_handed_over(vmid) {
            Some(g) => g,
            None => self.inner.pve.read_guest(vmid).await?,
        };
        if let Some(a) = &actual {
            reads.planned_on(vmid, a);
        }
        Ok(actual)
    }

    /// The read that confirms a step of `kind` that PVE reported done: the status only for a
    /// power step planned on a read of this turn (that read's config with the new power state),
    /// a full read otherwise.
    pub(super) async fn confirmation_read(
        &self,
        kind: StepKind,
        vmid: u32,
    ) -> Result<Confirmation, PveError> {
        let planned_on = self.inner.lane_reads.take_planned_on(vmid);
        if is_power_step(kind)
            && let Some(mut g) = planned_on
        {
            let Some((power, lock)) = self.inner.pve.read_power(vmid).await? else {
                return Ok(Confirmation {
                    guest: None,
                    full: false,
                });
            };
            // Starting or rebooting applies what was pending; a stopped CT has nothing
            // pending as far as the planner is concerned (it applies at the next start).
            if power != Power::Running || matches!(kind, StepKind::Start | StepKind::Reboot) {
                g.pending.clear();
            }
            g.power = power;
            g.lock = lock;
            return Ok(Confirmation {
                guest: Some(g),
                full: false,
            });
        }
        Ok(Confirmation {
            guest: self.inner.pve.read_guest(vmid).await?,
            full: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recent_confirmation_is_handed_over_and_only_once() {
        let r = LaneReads::default();
        r.hand_over(101, None);
        assert_eq!(r.take_handed_over(101).map(|g| g.is_none()), Some(true));
        assert!(r.take_handed_over(101).is_none(), "taken once");
        let g = ActualGuest {
            vmid: 102,
            power: Power::Stopped,
            lock: None,
            config: Default::default(),
            digest: "d".into(),
            pending: Default::default(),
            template: false,
        };
        r.planned_on(102, &g);
        assert!(
            r.take_handed_over(102).is_none(),
            "the read a step was planned on is never a next turn's read"
        );
        r.lock().insert(
            103,
            Kept::Confirmed(Instant::now() - 2 * HANDOVER_MAX_AGE, None),
        );
        assert!(r.take_handed_over(103).is_none(), "too old");
        assert!(r.lock().is_empty(), "nothing is kept after a take");
    }
}
