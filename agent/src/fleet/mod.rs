//! The hub team's tools (`drover fleet ...`): they work on a local copy of the hub's tree (a
//! git checkout that CI syncs to the server), so the same tree can be served by nginx, copied
//! to an object store or rsynced. No server of ours runs anywhere.
//!
//! Tree layout (the directory served at the agents' `[source] url`):
//! - `hosts/<host>/desired.toml`: written by the team; `fleet publish` validates it with the
//!   agent's own code and signs it (`desired.toml.sig`, `ssh-keygen -Y sign`).
//! - `hosts/<host>/published.json`: what `fleet publish` last signed (revision, sha256, time),
//!   so a later publish can refuse a revision that is not above it.
//! - `hosts/<host>/approvals/`: signed approvals and trust rotations, with `index.json`
//!   regenerated from the files present (`fleet publish`, `fleet add-approvals`).
//! - `hosts/<host>/report.json`: the agent's report, stored by the server (WebDAV `PUT`);
//!   read by `fleet status` and `fleet pending`, for display only (see [`crate::desired::report`]).
//!
//! One module per verb ([`publish`], [`pending`], [`status`]), [`tree`] for the files, [`sign`]
//! for `ssh-keygen`, [`command`] for the command line's text and JSON.

pub mod command;
pub mod pending;
pub mod publish;
pub mod sign;
pub mod status;
pub mod tree;

/// Why a fleet command could not do its work. Every variant has a stable [`FleetError::code`].
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("hub tree {path}: {message}")]
    Tree { path: String, message: String },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error("trust document {path}: {message}")]
    Trust { path: String, message: String },
    #[error("ssh-keygen: {0}")]
    SshKeygen(String),
    #[error("{0}")]
    Usage(String),
    #[error("another drover fleet command is writing this tree (it holds the lock on {0})")]
    Busy(String),
}

impl FleetError {
    pub fn code(&self) -> &'static str {
        match self {
            FleetError::Tree { .. } => "fleet_tree",
            FleetError::Write { .. } => "fleet_io",
            FleetError::Trust { .. } => "trust_store_invalid",
            FleetError::SshKeygen(_) => "ssh_keygen_failed",
            FleetError::Usage(_) => "fleet_usage",
            FleetError::Busy(_) => "fleet_busy",
        }
    }
}

/// A refusal of one host's or one file's change: a stable code (the agent's own where the
/// agent would refuse the same thing) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub code: String,
    /// For `hub_signature_invalid` and approval refusals: the gate's code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_code: Option<String>,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.to_string(),
            gate_code: None,
            message: message.into(),
        }
    }

    pub fn from_hub(e: &crate::desired::hub::HubError) -> Refusal {
        Refusal {
            code: e.code().to_string(),
            gate_code: e.gate_code().map(str::to_string),
            message: e.to_string(),
        }
    }

    pub fn from_rejection(r: &gate::Rejection) -> Refusal {
        Refusal {
            code: r.code.as_str().to_string(),
            gate_code: None,
            message: r.message.clone(),
        }
    }
}

/// Reads a trust document for the fleet tools (the one the agents use, or any version that
/// lists the same hub key): it gives the signature domain and lets the tools check signatures
/// exactly as the agents will.
pub fn load_trust(path: &std::path::Path, now: i64) -> Result<gate::TrustStore, FleetError> {
    let err = |message: String| FleetError::Trust {
        path: path.display().to_string(),
        message,
    };
    let bytes = crate::approval::files::read_capped(path, gate::trust::MAX_TRUST_BYTES as u64)
        .map_err(err)?;
    let text = String::from_utf8(bytes).map_err(|_| err("not utf-8".into()))?;
    let trust = gate::TrustStore::parse(&text).map_err(|e| err(e.to_string()))?;
    trust
        .check_window(now)
        .map_err(|r| err(format!("{}: {}", r.code.as_str(), r.message)))?;
    Ok(trust)
}

pub use crate::clock::unix_now;
