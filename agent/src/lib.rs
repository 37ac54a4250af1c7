//! Drover, the reconcile agent for Proxmox VE hosts: the library behind the `drover` binary.
//!
//! The binary (`main.rs`) is only the command line; everything it does lives here so that
//! integration tests and benchmarks exercise the same code. See `ARCHITECTURE.md` for the map.
//!
//! The data's path: desired → plan → classify → gate → lane → journal → PVE, i.e.
//! [`desired`] → [`reconcile::planner`] → [`reconcile::engine`] (classification by
//! [`store`]'s provenance) → [`approval`] (the gate's verdict) → [`reconcile::lanes`] →
//! [`store`] (write-ahead) → [`reconcile::pve`].
//!
//! Folders depend only downwards, in this order (a folder may use any folder below it):
//! `cli`/`demo`/`sim`/[`fleet`] (the front doors) → [`service`] → [`operator`] → [`reconcile`] →
//! [`safety`] → [`desired`] → [`approval`] → [`store`] → [`model`], [`clock`].

pub mod approval;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod desired;
pub mod fleet;
pub mod job_cli;
pub mod jobs;
pub mod local_file;
pub mod lost_task;
pub mod model;
pub mod operator;
pub mod output;
pub mod reconcile;
pub mod safety;
pub mod service;
pub mod sim;
pub mod store;
