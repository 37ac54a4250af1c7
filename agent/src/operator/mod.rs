//! What operators see and touch while the agent runs: the control socket (server and client),
//! `terraform plan`-like rendering and the progress line of `drover run --once`.
//!
//! These surfaces read the reconciler's state; they never plan or execute anything themselves.

pub mod control;
pub mod copies;
pub mod help;
pub mod progress;
pub mod render;
pub mod status;
