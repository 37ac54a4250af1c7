//! Drover as a systemd service: its configuration (`drover.toml`), the daemon's boot order and
//! loop, sd_notify and journald-friendly logging.
//!
//! This is the outermost layer of the library: it wires the other rooms together.

pub mod config;
pub mod daemon;
pub mod logging;
pub mod preflight;
pub mod systemd;
