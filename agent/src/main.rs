//! `drover`: the reconcile agent for Proxmox VE hosts (command line).

fn main() {}
