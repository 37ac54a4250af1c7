//! What `drover check-config` (the unit's ExecStartPre) checks beyond the config's grammar:
//! the PVE token secret as `run` will read it, and, when it may use the network, PVE itself
//! (the certificate pin, the token and the privileges the agent's steps need). Every finding
//! has a stable code, so the pre-start check fails for the same reasons a start would.

use std::os::unix::fs::PermissionsExt;

use crate::local_file::{self, LocalFileError};
use crate::service::config::Config;

/// Largest token secret file read (a PVE secret is a 36-character UUID).
pub const MAX_SECRET_BYTES: u64 = 4096;

/// Privileges on `/vms` every kind of step needs (deploy/pve-setup.sh grants them).
pub const REQUIRED_VM_PRIVILEGES: &[&str] = &[
    "VM.Audit",
    "VM.PowerMgmt",
    "VM.Allocate",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Disk",
    "VM.Config.Options",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// One finding: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

fn finding(code: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        code,
        message: message.into(),
    }
}

/// The token id and secret as `run` reads them: (problems, warnings).
pub fn check_token(config: &Config) -> (Vec<Finding>, Vec<Finding>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let id = &config.proxmox.token_id;
    if let Err(e) = proxmox_client::ApiToken::new(id.clone(), "placeholder") {
        problems.push(finding(
            "token_id_invalid",
            format!("proxmox.token_id: {e}"),
        ));
    }
    let path =
        crate::service::daemon::resolve_credential(&config.proxmox.token_secret_file, &config.path);
    let shown = path.display().to_string();
    let bytes = match local_file::read_regular(&path, MAX_SECRET_BYTES) {
        Ok(b) => b,
        Err(e) => {
            let code = match &e {
                LocalFileError::NotFound { .. } => "token_secret_missing",
                LocalFileError::NotRegular { .. } => "token_secret_not_a_file",
                LocalFileError::TooLarge { .. } => "token_secret_too_large",
                LocalFileError::Io { .. } => "token_secret_unreadable",
            };
            problems.push(finding(code, format!("token secret {e}")));
            return (problems, warnings);
        }
    };
    if let Ok(meta) = std::fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(finding(
                "token_secret_readable",
                format!(
                    "token secret {shown} is readable by its group or everyone (mode {mode:04o}); chmod 600 it"
                ),
            ));
        }
    }
    let Ok(text) = String::from_utf8(bytes) else {
        problems.push(finding(
            "token_secret_invalid",
            format!("token secret {shown} is binary data, not the token's secret text"),
        ));
        return (problems, warnings);
    };
    let secret = text.trim();
    if secret.is_empty() {
        problems.push(finding(
            "token_secret_invalid",
            format!("token secret {shown} is empty"),
        ));
    } else if secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        problems.push(finding(
            "token_secret_invalid",
            format!(
                "token secret {shown} holds a line break, control character or space inside the secret (one line, the secret only)"
            ),
        ));
    } else if let Err(e) = proxmox_client::ApiToken::new("check@pam!check", secret) {
        problems.push(finding(
            "token_secret_invalid",
            format!("token secret {shown}: {e}"),
        ));
    }
    (problems, warnings)
}

/// Asks PVE what a start will ask: `GET /version` (pin and token) and
/// `GET /access/permissions?path=/vms` (the privileges). Returns the problems and, when all is
/// well, a line saying what was checked.
pub async fn check_pve(config: &Config) -> Result<String, Vec<Finding>> {
    let pve = crate::service::daemon::pve_from_config(
        config,
        crate::reconcile::pve::WaitPolicy::production(),
    )
    .map_err(|e| vec![finding("pve_client_config", format!("{e:#}"))])?;
    let client = &pve.client;
    let version = client.version().await.map_err(|e| {
        let hint = match e.code() {
            "pve_tls_untrusted" => {
                "; the certificate is not the one pinned (proxmox.fingerprint / ca_file / node_cert_file)"
            }
            "pve_unauthorized" => "; check proxmox.token_id and the token secret",
            _ => "",
        };
        vec![Finding {
            code: e.code(),
            message: format!("asking PVE for its version: {e}{hint}"),
        }]
    })?;
    let perms = client.permissions("/vms").await.map_err(|e| {
        vec![Finding {
            code: e.code(),
            message: format!("asking PVE for the token's privileges: {e}"),
        }]
    })?;
    let held: std::collections::BTreeSet<&str> = perms
        .values()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let missing: Vec<&str> = REQUIRED_VM_PRIVILEGES
        .iter()
        .copied()
        .filter(|p| !held.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(vec![finding(
            "pve_privileges_missing",
            format!(
                "the token {} lacks {} on /vms (deploy/pve-setup.sh grants what the agent needs)",
                config.proxmox.token_id,
                missing.join(", ")
            ),
        )]);
    }
    Ok(format!(
        "PVE {} answered over the pinned connection; the token holds the privileges the agent uses on /vms",
        version.version
    ))
}
