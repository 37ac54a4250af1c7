//! Drover, the reconcile agent for Proxmox VE hosts: the library behind the `drover` binary.
//!
//! The binary (`main.rs`) is only the command line; everything it does lives here so that
//! integration tests and benchmarks exercise the same code. See `ARCHITECTURE.md` for the map.

pub mod approval_files;
pub mod approvals;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod desired;
pub mod engine;
pub mod hub;
pub mod lanes;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod progress;
pub mod pve;
pub mod pve_format;
pub mod render;
pub mod sim;
pub mod source;
pub mod status;
pub mod store;
pub mod systemd;
pub mod trust;
