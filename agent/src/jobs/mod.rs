//! Signed jobs: one-off operations an operator (or the hub) asks for and signs, which no
//! desired document can say: `snapshot`, `delete_snapshot`, `rollback_snapshot`, `backup`,
//! `restore_backup` (over the same vmid or onto a free one) and `reboot`.
//!
//! - [`plan`]: the job as it would be *now* (pre-flight from the current config; the facts the
//!   signature binds), shared by `drover job new` and the lane.
//! - [`inbox`]: where requests wait for a signature and signed jobs arrive.
//! - [`runner`]: accepting a job on its guest's lane (the gate's `verify_job`, nonce last) and
//!   running it in journaled phases; recovery is the same code.
//! - [`safety`]: the pre-job copy (the seam to the safety-copy machinery).
//! - [`listing`]: what `drover jobs`, `status`, metrics and the hub report show.
//! - [`refusal`]: stable codes.
//!
//! After a job the desired state applies to the guest again (benign drift is converged, a
//! destructive difference still needs its approval), unless the job was signed with
//! `bind.hold: 1` (the default for restore and rollback): then the guest is suspended with a
//! reason naming the job until `drover resume VMID`.

pub mod inbox;
pub mod listing;
pub mod plan;
pub mod refusal;
pub mod runner;
pub mod safety;

pub use runner::JobRunner;
