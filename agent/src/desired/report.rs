//! The agent's report to the hub: `PUT {url}/hosts/{host}/report.json` after each pass.
//!
//! A plain `PUT` of a whole file, so any server that can store one answers it (nginx's own
//! WebDAV module with `dav_methods PUT`, an object store's signed PUT); no server of ours.
//! The hub team's `drover fleet status` and `drover fleet pending` read these files from their
//! copy of the hub's tree.
//!
//! A report is **display only**. Anyone holding a host's upload credential can write anything
//! into it, so nothing decides on it: `fleet publish` never refuses or signs because of a
//! report, and a request text shown by `fleet pending` is only something an operator reads and
//! may sign; the agent binds every approval to the step *it* plans (fleet, host, epoch, guest,
//! config digest, parameters) and ignores anything else.

use serde::{Deserialize, Serialize};

/// The first line of the format, so a future change is recognised rather than misread.
pub const FORMAT: &str = "drover-report v1";
/// Largest report the fleet tools read (a host with thousands of guests stays well below).
pub const MAX_REPORT_BYTES: u64 = 4 * 1024 * 1024;

/// One pending approval request, as the agent wrote it in `approvals/pending/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PendingRequest {
    /// `<vmid>-<op>.txt`.
    pub file: String,
    /// The exact bytes to sign (`drover-approval v1 ...`).
    pub text: String,
    /// The signing command for an operator on the host itself.
    pub sign: String,
    /// What the step loses, in words (beside the signed text, never part of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loses: Option<String>,
}

/// What the agent tells the hub. Every field defaults, so a report from an older or newer
/// agent still shows what it has.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// [`FORMAT`].
    pub format: String,
    pub host: String,
    /// `drover/<version>`.
    pub agent: String,
    /// The agent's version alone (`0.1.0`).
    pub agent_version: String,
    /// When the agent wrote it (its clock).
    pub time_unix: i64,
    /// The revision of the desired document the agent works from.
    pub revision_applied: Option<u64>,
    /// True while that document is the last verified one and the source is failing.
    pub desired_stale: bool,
    /// The source's refusal code while it lasts (`hub_signature_invalid`, ...).
    pub source_error_code: Option<String>,
    /// The trust document in force.
    pub trust_version: Option<u64>,
    pub pending_approvals: Vec<PendingRequest>,
    /// Signed-job requests rendered on this host and waiting for a signature (`drover job
    /// new`); the jobs themselves, queued, running and ended, are in `status.jobs`.
    #[serde(default)]
    pub pending_jobs: Vec<PendingRequest>,
    /// As `drover status --output json`.
    pub status: serde_json::Value,
    pub recent_steps: serde_json::Value,
}

impl Report {
    /// Builds the report from what `drover status --output json` shows.
    pub fn new(
        status: serde_json::Value,
        pending_approvals: Vec<PendingRequest>,
        recent_steps: serde_json::Value,
        now: i64,
    ) -> Report {
        Report {
            format: FORMAT.to_string(),
            host: status["host"].as_str().unwrap_or_default().to_string(),
            agent: concat!("drover/", env!("CARGO_PKG_VERSION")).to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            time_unix: now,
            revision_applied: status["desired"]["revision"].as_u64(),
            desired_stale: status["desired"]["stale"].as_bool().unwrap_or(false),
            source_error_code: status["source"]["error_code"].as_str().map(str::to_string),
            trust_version: status["trust"]["version"].as_u64(),
            pending_approvals,
            pending_jobs: Vec::new(),
            status,
            recent_steps,
        }
    }

    /// Reads a report (display only; see the module documentation).
    pub fn parse(bytes: &[u8]) -> Result<Report, String> {
        let r: Report =
            serde_json::from_slice(bytes).map_err(|e| format!("not a drover report: {e}"))?;
        if r.format != FORMAT {
            return Err(format!(
                "format {:?} is not {FORMAT:?} (a newer agent?)",
                r.format
            ));
        }
        Ok(r)
    }

    /// The guests' lines from the embedded status.
    pub fn guests(&self) -> Vec<GuestLine> {
        self.status["guests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| serde_json::from_value(g.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A guest's line as the report shows it (`status::GuestStatusLine`, read leniently).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestLine {
    pub vmid: u32,
    pub state: String,
    pub last_step: Option<String>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub pending_approval: Option<String>,
    pub blocked_code: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let status = serde_json::json!({
            "host": "pve1",
            "desired": {"revision": 7, "stale": false},
            "source": {"error_code": null},
            "trust": {"valid": true, "version": 2},
            "guests": [{"vmid": 101, "state": "awaiting_approval", "pending_approval": "x"}],
        });
        let r = Report::new(status, vec![], serde_json::json!([]), 1_700_000_000);
        let bytes = serde_json::to_vec(&r).unwrap();
        let back = Report::parse(&bytes).unwrap();
        assert_eq!(back.host, "pve1");
        assert_eq!(back.revision_applied, Some(7));
        assert_eq!(back.trust_version, Some(2));
        assert_eq!(back.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(back.guests()[0].state, "awaiting_approval");
        assert!(Report::parse(br#"{"format":"drover-report v2"}"#).is_err());
        assert!(Report::parse(b"[]").is_err());
    }
}
