//! The hook through which signed jobs (`jobs/`) run on a guest's lane.
//!
//! Jobs live above `reconcile` (they use the engine), so the engine cannot name them; it holds
//! this trait object instead and asks it first in every lane turn. While a job of the guest is
//! queued or running, the turn belongs to the job and no reconcile step of that guest runs.

use std::future::Future;
use std::pin::Pin;

use crate::reconcile::lanes::LaneOutcome;

/// What the lane asks the jobs before it plans a guest.
pub trait GuestJobs: Send + Sync {
    /// `Some(outcome)`: the turn was the job's (it advanced, waits or refused one); `None`:
    /// no job of this guest is queued or running, so the lane reconciles it as usual.
    fn turn(&self, vmid: u32) -> Pin<Box<dyn Future<Output = Option<LaneOutcome>> + Send + '_>>;
}
