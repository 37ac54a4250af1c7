//! `drover`: the reconcile agent for Proxmox VE hosts.

mod config;
mod desired;
mod model;
mod planner;

fn main() {}
