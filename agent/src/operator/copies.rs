//! `drover copies [VMID]`: the safety copies Drover made (its manifests), as text or JSON.
//! What an operator needs to find and restore one: the volid, its state and protection
//! window, the sha256 to check it against, and what it does not hold.

use crate::safety::{CopyManifest, CopyState};

fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// One line per copy, newest last.
pub fn render_text(copies: &[CopyManifest]) -> String {
    if copies.is_empty() {
        return "no safety copies in the journal\n".to_string();
    }
    let mut out = String::new();
    for c in copies {
        let state = match &c.state {
            CopyState::Failed { reason } => format!("failed ({reason})"),
            s => s.as_str().to_string(),
        };
        out.push_str(&format!(
            "{} CT {} {} {} {}\n",
            c.id,
            c.vmid,
            c.kind,
            c.method,
            crate::output::escape_controls(&state)
        ));
        if let Some(v) = &c.volid {
            out.push_str(&format!("    volid:      {v}\n"));
        }
        if let Some(s) = &c.snapname {
            out.push_str(&format!("    snapshot:   {s} on {}\n", c.storage));
        }
        if let Some(size) = c.size {
            out.push_str(&format!("    size:       {size} bytes"));
            if let Some(t) = c.total_bytes_written {
                out.push_str(&format!(" ({t} uncompressed)"));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "    sha256:     {} ({})\n",
            c.sha256.as_deref().unwrap_or("-"),
            c.hash_source.as_deref().unwrap_or("not hashed")
        ));
        out.push_str(&format!(
            "    taken:      {}{}\n",
            when(c.created_at_ms),
            if c.step_id.is_empty() {
                String::new()
            } else {
                format!(" for step {}", c.step_id)
            }
        ));
        match c.protect_until_ms {
            Some(t) => out.push_str(&format!("    protected:  until {}\n", when(t))),
            None if c.state == CopyState::Complete => {
                out.push_str("    protected:  until its step ends, plus the grace period\n")
            }
            None => {}
        }
        if !c.covered.is_empty() {
            out.push_str(&format!("    holds:      {}\n", c.covered.join(", ")));
        }
        if !c.uncovered.is_empty() {
            out.push_str(&format!("    NOT held:   {}\n", c.uncovered.join(", ")));
        }
        for w in &c.warnings {
            out.push_str(&format!(
                "    warning:    {}\n",
                crate::output::escape_controls(w)
            ));
        }
        if let (CopyState::Complete, Some(v)) = (&c.state, &c.volid) {
            out.push_str(&format!(
                "    restore:    pct restore {} {v} --storage <storage>   (or a signed restore job)\n",
                c.vmid
            ));
        }
    }
    out
}

/// The manifests as JSON (an array, oldest first).
pub fn render_json(copies: &[CopyManifest]) -> serde_json::Value {
    serde_json::to_value(copies).unwrap_or_default()
}
