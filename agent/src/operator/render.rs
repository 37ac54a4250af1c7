//! Renders a plan for people (`terraform plan`-like) and for machines (`--output json`).

use std::fmt::Write as _;

pub use crate::reconcile::classified::{ClassifiedPlan, StepClass};
use crate::reconcile::planner::{GuestPlan, Step, StepKind};

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
                serde_json::json!({ "vmid": g.vmid, "name": g.name, "steps": steps, "notes": g.notes })
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

    /// The human form, without colour.
    pub fn to_text(&self) -> String {
        self.to_text_styled(Style::plain())
    }

    /// The human form, coloured like `terraform plan` when `style` says so: `+` green, `~`
    /// yellow, `-` and "needs a signed approval" red, notes yellow; with a legend of the
    /// symbols when there is anything to do.
    pub fn to_text_styled(&self, style: Style) -> String {
        self.to_text_with(style, None)
    }

    /// [`ClassifiedPlan::to_text_styled`], and under every destructive step the whole way to
    /// its approval (`drover plan` on the host): the request file, the exact `ssh-keygen`
    /// command, the `drover approve` that submits it, and where else the signed files may go.
    pub fn to_text_with(&self, style: Style, approvals: Option<&ApprovalPath>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Drover plan for host {} (desired revision {})\n",
            self.host, self.plan.revision
        );
        if !self.plan.is_empty() {
            let _ = writeln!(
                out,
                "Steps are marked: {} create, {} change in place, {} destroy, = adopt, {} a note (nothing is done)\n",
                style.paint(GREEN, "+"),
                style.paint(YELLOW, "~"),
                style.paint(RED, "-"),
                style.paint(YELLOW, "!"),
            );
        }
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
                let colour = match s.kind {
                    StepKind::Create => GREEN,
                    StepKind::Destroy => RED,
                    _ => YELLOW,
                };
                let _ = writeln!(
                    out,
                    "  {} {}: {}  [{}]",
                    style.paint(colour, &symbol(s).to_string()),
                    guest_label(g),
                    style.bold(s.kind.as_str()),
                    match class {
                        Some(StepClass::Destructive { reason }) => style.paint(
                            RED,
                            &format!("destructive: {reason}; needs a signed approval")
                        ),
                        _ => "benign".to_string(),
                    }
                );
                let width = s
                    .changes
                    .iter()
                    .map(|c| c.key.chars().count())
                    .max()
                    .unwrap_or(0);
                for c in &s.changes {
                    let pad = " ".repeat(width - c.key.chars().count());
                    let _ = writeln!(
                        out,
                        "      {}:{pad} {} → {}",
                        c.key,
                        c.old
                            .as_deref()
                            .map(|v| shown(&c.key, v))
                            .unwrap_or("(none)".into()),
                        c.new
                            .as_deref()
                            .map(|v| shown(&c.key, v))
                            .unwrap_or("(none)".into())
                    );
                }
                if destructive && let Some(a) = approvals {
                    out.push_str(&a.describe(s, style));
                }
            }
            for n in &g.notes {
                let _ = writeln!(
                    out,
                    "  {} {}: {} ({})",
                    style.paint(YELLOW, "!"),
                    guest_label(g),
                    crate::output::escape_controls(&n.message),
                    n.code
                );
            }
        }
        for n in &self.plan.notes {
            let _ = writeln!(
                out,
                "  {} {} ({})",
                style.paint(YELLOW, "!"),
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

/// Where a destructive step's approval comes from on this host, for [`ClassifiedPlan::to_text_with`].
#[derive(Debug, Clone)]
pub struct ApprovalPath {
    /// `<state_dir>/approvals/pending`: the agent writes each request there.
    pub pending_dir: std::path::PathBuf,
    /// The trust document's domain (the signing namespace is `destructive-op-v1@DOMAIN`).
    pub domain: String,
    /// Besides `drover approve`: where the request and its signatures may be put instead
    /// (the directory source's `approvals/`, or the hub's `hosts/<host>/approvals/`).
    pub elsewhere: Option<String>,
}

impl ApprovalPath {
    /// The indented block under a destructive step: request, sign, submit, in aligned columns.
    fn describe(&self, s: &Step, style: Style) -> String {
        let name = format!(
            "{}-{}.txt",
            s.vmid,
            crate::reconcile::engine::op_of(s.kind).as_str()
        );
        let request = self.pending_dir.join(&name);
        let when = if request.is_file() {
            "pending now: read it before signing"
        } else {
            "not written yet: the agent writes it when it reaches this step, on its next pass"
        };
        let mut rows: Vec<[String; 2]> = vec![
            ["request".into(), format!("{} ({when})", request.display())],
            [
                "sign".into(),
                format!(
                    "ssh-keygen -Y sign -f ~/.ssh/YOUR_OPERATOR_KEY -n destructive-op-v1@{} {name}   (writes {name}.sig)",
                    self.domain
                ),
            ],
            [
                "check".into(),
                format!("drover verify-approval {name} {name}.sig"),
            ],
            ["submit".into(), format!("drover approve {name} {name}.sig")],
        ];
        if let Some(e) = &self.elsewhere {
            rows.push(["or put".into(), format!("{name} and {name}.sig into {e}")]);
        }
        let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let mut out = format!("      {}\n", style.dim("approval:"));
        for [k, v] in rows {
            let _ = writeln!(out, "        {k:<width$}  {v}");
        }
        out
    }
}

/// `CT 101 (web-1)`: the vmid and, where the plan knows it, the guest's name.
fn guest_label(g: &GuestPlan) -> String {
    match &g.name {
        Some(name) => format!("CT {} ({name})", g.vmid),
        None => format!("CT {}", g.vmid),
    }
}

const GREEN: &str = "32";
const YELLOW: &str = "33";
const RED: &str = "31";

/// Whether text gets ANSI colours: only on a terminal, never with `NO_COLOR` set (no-color.org)
/// or `TERM=dumb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    pub fn plain() -> Style {
        Style { colour: false }
    }

    /// For what goes to stdout now.
    pub fn for_stdout() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Style {
            colour: !no_color && !dumb && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        }
    }

    pub fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{colour}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
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

/// A value as the plan shows it: free text (descriptions, SSH keys) shortened to one line,
/// everything else whole, so a change at the end of a long mount point value is visible.
fn shown(key: &str, v: &str) -> String {
    if matches!(key, "description" | "ssh-public-keys") {
        short(v)
    } else {
        crate::output::escape_controls(v)
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
