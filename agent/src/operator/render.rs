//! Renders a plan for people (`terraform plan`-like) and for machines (`--output json`).

use std::fmt::Write as _;

pub use crate::reconcile::classified::{ClassifiedPlan, StepClass};
use crate::reconcile::planner::{Step, StepKind};

impl ClassifiedPlan {
    /// The JSON form: stable field names for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        let guests: Vec<serde_json::Value> = self
            .plan
            .guests
            .values()
            .map(|g| {
                let steps: Vec<serde_json::Value> = g
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let class = self.class_of(g.vmid, i);
                        serde_json::json!({
                            "kind": s.kind.as_str(),
                            "params": s.params,
                            "changes": s.changes,
                            "class": match class { Some(StepClass::Destructive{..}) => "destructive", _ => "benign" },
                            "reason": match class { Some(StepClass::Destructive{reason}) => Some(reason.as_str()), _ => None },
                        })
                    })
                    .collect();
                serde_json::json!({ "vmid": g.vmid, "steps": steps, "notes": g.notes })
            })
            .collect();
        serde_json::json!({
            "host": self.host,
            "revision": self.plan.revision,
            "changes": !self.plan.is_empty(),
            "guests": guests,
            "notes": self.plan.notes,
            "unmanaged": self.plan.unmanaged,
        })
    }

    /// The human form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Drover plan for host {} (desired revision {})\n",
            self.host, self.plan.revision
        );
        let (mut create, mut change, mut destroy, mut adopt, mut approval) = (0, 0, 0, 0, 0);
        for g in self.plan.guests.values() {
            for (i, s) in g.steps.iter().enumerate() {
                let class = self.class_of(g.vmid, i);
                let destructive = matches!(class, Some(StepClass::Destructive { .. }));
                match s.kind {
                    StepKind::Create => create += 1,
                    StepKind::Destroy => destroy += 1,
                    StepKind::Adopt => adopt += 1,
                    _ => change += 1,
                }
                if destructive {
                    approval += 1;
                }
                let _ = writeln!(
                    out,
                    "  {} CT {}: {}  [{}]",
                    symbol(s),
                    g.vmid,
                    s.kind.as_str(),
                    match class {
                        Some(StepClass::Destructive { reason }) =>
                            format!("destructive: {reason}; needs a signed approval"),
                        _ => "benign".to_string(),
                    }
                );
                for c in &s.changes {
                    let _ = writeln!(
                        out,
                        "      {}: {} → {}",
                        c.key,
                        c.old.as_deref().map(short).unwrap_or("(none)".into()),
                        c.new.as_deref().map(short).unwrap_or("(none)".into())
                    );
                }
            }
            for n in &g.notes {
                let _ = writeln!(
                    out,
                    "  ! CT {}: {} ({})",
                    g.vmid,
                    crate::output::escape_controls(&n.message),
                    n.code
                );
            }
        }
        for n in &self.plan.notes {
            let _ = writeln!(
                out,
                "  ! {} ({})",
                crate::output::escape_controls(&n.message),
                n.code
            );
        }
        if self.plan.is_empty() {
            let _ = writeln!(out, "No changes. The host matches the desired state.");
        } else {
            let _ = writeln!(
                out,
                "\nPlan: {create} to create, {change} to change, {destroy} to destroy{} ({approval} need a signed approval).",
                if adopt > 0 {
                    format!(", {adopt} to adopt")
                } else {
                    String::new()
                }
            );
        }
        out
    }
}

fn symbol(s: &Step) -> char {
    match s.kind {
        StepKind::Create => '+',
        StepKind::Destroy => '-',
        StepKind::Adopt => '=',
        _ => '~',
    }
}

/// Keeps long values (descriptions) on one readable line, control characters escaped (the
/// value comes from the hub's document or PVE, and is read by an operator before signing).
fn short(s: &str) -> String {
    let one_line = crate::output::escape_controls(&s.replace('\n', "\\n"));
    if one_line.chars().count() > 72 {
        format!("{}…", one_line.chars().take(71).collect::<String>())
    } else {
        one_line
    }
}
