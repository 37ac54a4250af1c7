//! What operators see of jobs (`drover jobs`, `drover status`, the hub report): requests
//! waiting for a signature, signed jobs queued, running ones with their phase, and the ended
//! ones with their outcome or the refusal's code and reason.

use gate::JobPayload;
use serde::Serialize;

use crate::jobs::inbox::JobDirs;
use crate::store::{JobEnd, Store};

/// One job as shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobRow {
    /// The nonce (or `refused-<hash>` for a refused text).
    pub id: String,
    pub vmid: u32,
    pub kind: String,
    /// `pending_signature`, `queued`, `running`, `done`, `failed`.
    pub state: String,
    /// The phase reached (running), or the last one.
    pub phase: String,
    /// The refusal or failure code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The outcome's sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The request or signed file, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Unix ms the job was accepted or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// Every phase reached: (phase, unix ms, detail such as the task's UPID).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<(String, i64, String)>,
}

/// Every job the agent knows of, newest last.
pub fn rows(store: &Store, dirs: &JobDirs) -> Vec<JobRow> {
    let records = store.jobs().unwrap_or_default();
    let known = |nonce: &str| records.iter().any(|r| r.id == nonce);
    let mut out = Vec::new();
    for (path, text) in dirs.pending() {
        let Ok(p) = JobPayload::parse(text.as_bytes()) else {
            continue;
        };
        if known(&p.nonce) {
            continue;
        }
        out.push(JobRow {
            id: p.nonce.clone(),
            vmid: p.vmid,
            kind: p.kind.as_str().into(),
            state: "pending_signature".into(),
            phase: String::new(),
            code: None,
            message: Some(format!(
                "sign with ssh-keygen -Y sign -n destructive-op-v1@DOMAIN, then drover approve {} {}.sig",
                path.display(),
                path.display()
            )),
            file: Some(path.display().to_string()),
            at_ms: None,
            history: Vec::new(),
        });
    }
    for c in dirs.signed() {
        let Ok(p) = JobPayload::parse(&c.payload) else {
            continue;
        };
        if known(&p.nonce) {
            continue;
        }
        out.retain(|r| r.id != p.nonce);
        out.push(JobRow {
            id: p.nonce.clone(),
            vmid: p.vmid,
            kind: p.kind.as_str().into(),
            state: "queued".into(),
            phase: String::new(),
            code: None,
            message: None,
            file: Some(c.payload_path.display().to_string()),
            at_ms: None,
            history: Vec::new(),
        });
    }
    for r in records {
        let (state, code, message) = match &r.end {
            None => ("running", None, None),
            Some(JobEnd::Done { detail }) => ("done", None, Some(detail.clone())),
            Some(JobEnd::Failed { code, message }) => {
                ("failed", Some(code.clone()), Some(message.clone()))
            }
        };
        let phase = r
            .history
            .iter()
            .rev()
            .map(|(p, _, _)| p.as_str())
            .find(|p| !matches!(*p, "done" | "failed"))
            .unwrap_or("")
            .to_string();
        out.push(JobRow {
            id: r.id.clone(),
            vmid: r.vmid,
            kind: r.kind,
            state: state.into(),
            phase,
            code,
            message,
            file: None,
            at_ms: Some(r.accepted_at_ms),
            history: r.history,
        });
    }
    out
}

/// The rows as a table for people.
pub fn to_text(rows: &[JobRow]) -> String {
    if rows.is_empty() {
        return "no jobs\n".into();
    }
    let mut table = vec![[
        "VMID".to_string(),
        "JOB".into(),
        "STATE".into(),
        "PHASE".into(),
        "DETAIL".into(),
    ]];
    for r in rows {
        let detail = match (&r.code, &r.message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (None, Some(m)) => m.clone(),
            (Some(c), None) => c.clone(),
            (None, None) => r.file.clone().unwrap_or_default(),
        };
        table.push([
            r.vmid.to_string(),
            r.kind.clone(),
            r.state.clone(),
            r.phase.clone(),
            crate::output::escape_controls(&detail),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}
