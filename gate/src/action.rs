//! The planned step as the gate sees it, the agent's local identity, roles and namespaces.
//!
//! These are the agent's own values: the gate never takes op, guest, params, host or fleet from
//! an approval to decide what to do; it only compares.

use std::collections::BTreeMap;
use std::fmt;

/// What a step does. Closed set; anything else is `Unknown` and always classifies destructive
/// (and can never be approved: its name is refused as `unknown_op`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Create,
    Start,
    Stop,
    Shutdown,
    Reboot,
    SetConfig,
    Resize,
    DestroyGuest,
    DeleteVolume,
    RollbackSnapshot,
    DeleteSnapshot,
    RestoreOverwrite,
    RemoveMountpoint,
    /// Take over a guest the agent did not create (no PVE call: the journal records it).
    Adopt,
    Unknown(String),
}

impl Op {
    /// Every known op, in a fixed order.
    pub const KNOWN: [Op; 14] = [
        Op::Create,
        Op::Start,
        Op::Stop,
        Op::Shutdown,
        Op::Reboot,
        Op::SetConfig,
        Op::Resize,
        Op::DestroyGuest,
        Op::DeleteVolume,
        Op::RollbackSnapshot,
        Op::DeleteSnapshot,
        Op::RestoreOverwrite,
        Op::RemoveMountpoint,
        Op::Adopt,
    ];

    /// The payload's `op` spelling (the same names as the agent's step kinds).
    pub fn as_str(&self) -> &str {
        match self {
            Op::Create => "create",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Shutdown => "shutdown",
            Op::Reboot => "reboot",
            Op::SetConfig => "set_config",
            Op::Resize => "resize",
            Op::DestroyGuest => "destroy_guest",
            Op::DeleteVolume => "delete_volume",
            Op::RollbackSnapshot => "rollback_snapshot",
            Op::DeleteSnapshot => "delete_snapshot",
            Op::RestoreOverwrite => "restore_overwrite",
            Op::RemoveMountpoint => "remove_mountpoint",
            Op::Adopt => "adopt",
            Op::Unknown(s) => s,
        }
    }

    /// Maps a name to an op; names outside the closed set become `Unknown`.
    pub fn from_name(s: &str) -> Op {
        Op::KNOWN
            .iter()
            .find(|o| o.as_str() == s)
            .cloned()
            .unwrap_or_else(|| Op::Unknown(s.to_string()))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned step: exactly what the agent will send to PVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAction {
    pub op: Op,
    pub vmid: u32,
    /// PVE's config `digest` of the guest as the agent read it just now (None if the guest does
    /// not exist yet).
    pub guest_config_sha1: Option<String>,
    /// API parameters, exactly as they will be sent.
    pub params: BTreeMap<String, String>,
    /// Facts bound besides the parameters (`bind.*` lines): e.g. `uncovered`, the volumes the
    /// pre-destructive safety copy cannot cover, which the operator must acknowledge by
    /// signing them. Empty for most steps.
    pub bind: BTreeMap<String, String>,
}

/// The agent's own identity and state epoch: local configuration, never from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateContext {
    pub fleet: String,
    pub host: String,
    /// The namespace domain (`agent.example.invalid` in tests).
    pub domain: String,
    /// The nonce store's state epoch (16 lowercase hex).
    pub epoch: String,
}

/// The authority a key holds, given by the single namespace its trust line allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Signs destructive-op approvals (never trust rotations).
    Operational,
    /// Signs trust rotations only.
    Recovery,
    /// Signs desired-state documents only.
    Hub,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operational => "operational",
            Role::Recovery => "recovery",
            Role::Hub => "hub",
        }
    }

    /// The namespace prefix (before `@domain`) a key of this role signs with.
    pub fn namespace_prefix(self) -> &'static str {
        match self {
            Role::Operational => "destructive-op-v1",
            Role::Recovery => "trust-rotation-v1",
            Role::Hub => "desired-state-v1",
        }
    }

    /// `<prefix>@<domain>`.
    pub fn namespace(self, domain: &str) -> String {
        format!("{}@{domain}", self.namespace_prefix())
    }

    pub(crate) fn from_namespace(ns: &str, domain: &str) -> Option<Role> {
        [Role::Operational, Role::Recovery, Role::Hub]
            .into_iter()
            .find(|r| r.namespace(domain) == ns)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Renders 16 caller-supplied random bytes (from the OS CSPRNG) as a payload nonce. The crate
/// holds no RNG so it stays pure and deterministic under test.
pub fn nonce_hex(bytes: [u8; 16]) -> String {
    hex::encode(bytes)
}
