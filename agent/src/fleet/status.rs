//! `drover fleet status TREE`: one row per host from the publish record and the agent's last
//! report (display only): revision published and applied, last report, state, trust version,
//! agent version.

use serde::Serialize;

use super::FleetError;
use super::tree::Tree;

/// A host's state as the fleet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// The applied revision is the published one and every guest is converged.
    Converged,
    /// Work left: an older revision, steps running, approvals awaited.
    Pending,
    /// The source is failing on the host (e.g. `hub_signature_invalid`), or a guest failed
    /// or is blocked.
    Failed,
    /// The last report is older than the staleness limit: the agent may be down.
    Stale,
    NoReport,
    /// `report.json` does not parse.
    ReportInvalid,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Converged => "converged",
            HostState::Pending => "pending",
            HostState::Failed => "failed",
            HostState::Stale => "stale",
            HostState::NoReport => "no_report",
            HostState::ReportInvalid => "report_invalid",
        }
    }
}

/// One host's row.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    pub host: String,
    pub state: HostState,
    pub published_revision: Option<u64>,
    pub revision_applied: Option<u64>,
    pub desired_stale: bool,
    pub last_report_unix: Option<i64>,
    pub report_age_secs: Option<i64>,
    pub trust_version: Option<u64>,
    pub agent_version: Option<String>,
    pub pending_approvals: usize,
    pub guests: usize,
    pub guests_converged: usize,
    /// Why the host is not converged, in a few words.
    pub detail: Option<String>,
}

/// Every host's row, sorted by host.
pub fn rows(tree: &Tree, now: i64, stale_after_secs: i64) -> Result<Vec<HostRow>, FleetError> {
    let (hosts, _) = tree.hosts()?;
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let published = tree.record(&host).ok().flatten().map(|r| r.revision);
        let mut row = HostRow {
            host: host.clone(),
            state: HostState::NoReport,
            published_revision: published,
            revision_applied: None,
            desired_stale: false,
            last_report_unix: None,
            report_age_secs: None,
            trust_version: None,
            agent_version: None,
            pending_approvals: 0,
            guests: 0,
            guests_converged: 0,
            detail: None,
        };
        let report = match tree.report(&host) {
            None => {
                out.push(row);
                continue;
            }
            Some(Err(m)) => {
                row.state = HostState::ReportInvalid;
                row.detail = Some(m);
                out.push(row);
                continue;
            }
            Some(Ok(r)) => r,
        };
        row.revision_applied = report.revision_applied;
        row.desired_stale = report.desired_stale;
        row.last_report_unix = Some(report.time_unix);
        row.report_age_secs = Some((now - report.time_unix).max(0));
        row.trust_version = report.trust_version;
        row.agent_version = Some(report.agent_version.clone()).filter(|v| !v.is_empty());
        row.pending_approvals = report.pending_approvals.len();
        let guests = report.guests();
        row.guests = guests.len();
        row.guests_converged = guests.iter().filter(|g| g.state == "converged").count();
        let failed = guests
            .iter()
            .filter(|g| matches!(g.state.as_str(), "failed" | "blocked"))
            .count();
        (row.state, row.detail) = if now - report.time_unix > stale_after_secs {
            (
                HostState::Stale,
                Some(format!(
                    "last report {} ago",
                    humantime::format_duration(std::time::Duration::from_secs(
                        (now - report.time_unix).max(0) as u64
                    ))
                )),
            )
        } else if let Some(code) = &report.source_error_code {
            (HostState::Failed, Some(format!("source: {code}")))
        } else if failed > 0 {
            (
                HostState::Failed,
                Some(format!("{failed} guest(s) failed or blocked")),
            )
        } else if published.is_some_and(|p| report.revision_applied.is_none_or(|a| a < p)) {
            (
                HostState::Pending,
                Some(format!(
                    "revision {} published, {} applied",
                    published.unwrap_or_default(),
                    report
                        .revision_applied
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "none".into())
                )),
            )
        } else if row.pending_approvals > 0 {
            (
                HostState::Pending,
                Some(format!("{} approval(s) awaited", row.pending_approvals)),
            )
        } else if row.guests_converged < row.guests {
            (
                HostState::Pending,
                Some(format!(
                    "{} of {} guests converged",
                    row.guests_converged, row.guests
                )),
            )
        } else {
            (HostState::Converged, None)
        };
        out.push(row);
    }
    Ok(out)
}
