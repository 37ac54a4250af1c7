//! Reconciling: read the host, plan per guest, classify each step by the journal's provenance,
//! run it on the guest's serial lane and wait for its PVE task.
//!
//! The planner is pure; the engine owns the pass and the lane turn; lanes serialize per guest;
//! `pve` is the only place that turns steps into API calls; the board records what happened
//! for `status` and metrics.

pub mod adoption;
pub mod board;
pub mod classified;
pub mod engine;
pub mod guarded;
pub mod job_slot;
pub mod lane_reads;
pub mod lanes;
pub mod loss;
pub mod metrics;
pub mod planner;
pub mod privileges;
pub mod pve;
pub mod recovery;
pub mod task_estimate;
pub mod verify;
pub mod vocabulary;
