//! Progress of long interactive commands (`drover run --once`): on a terminal, one line with a
//! spinner, redrawn in place below the log lines (tracing-indicatif draws it as the bar of a
//! tracing span, and its log writer clears and redraws the bar around every log line, so the
//! two never run into each other; see `service::logging`). When stderr is not a terminal,
//! plain `progress:` lines on stdout, printed only when something changed, so a pipe or a CI
//! log gets a readable record instead of control characters.

use std::io::{IsTerminal, Write};

use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

use crate::reconcile::board::{GuestState, Snapshot};

/// The look of the progress line: a spinner and the line.
pub fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("|/-\\ ")
}

pub struct Progress {
    /// The span whose bar is the line, on a terminal.
    bar: Option<tracing::Span>,
    last: String,
}

impl Progress {
    /// A redrawn line when stderr (where logs and the bar go) is a terminal, plain lines on
    /// stdout otherwise.
    pub fn for_terminal() -> Progress {
        Progress::new(std::io::stderr().is_terminal())
    }

    pub fn new(tty: bool) -> Progress {
        let bar = tty.then(|| {
            let span = tracing::info_span!("progress", indicatif.pb_show = true);
            span.pb_set_style(&bar_style());
            // A bar appears when its span is first entered.
            span.in_scope(|| {});
            span
        });
        Progress {
            bar,
            last: String::new(),
        }
    }

    /// The line for a snapshot: counts, then what is running right now.
    pub fn line(snap: &Snapshot) -> String {
        let running: Vec<String> = snap
            .guests
            .values()
            .filter(|g| g.state == GuestState::Running)
            .map(|g| format!("CT {} {}", g.vmid, g.last_step.as_deref().unwrap_or("step")))
            .collect();
        let mut line = snap.summary();
        if !running.is_empty() {
            line.push_str("; running: ");
            line.push_str(&running.join(", "));
        }
        line
    }

    /// Shows the current state: redraws on a terminal, prints a line when it changed otherwise.
    pub fn update(&mut self, snap: &Snapshot) {
        let line = Progress::line(snap);
        match &self.bar {
            Some(span) => span.pb_set_message(&line),
            None if line != self.last => {
                let _ = writeln!(std::io::stdout().lock(), "progress: {line}");
            }
            None => {}
        }
        self.last = line;
    }

    /// Ends the display: the bar goes away and the final state stays, on its own line.
    pub fn finish(&mut self, snap: &Snapshot) {
        let line = Progress::line(snap);
        if let Some(span) = self.bar.take() {
            drop(span);
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        } else if line != self.last {
            let _ = writeln!(std::io::stdout().lock(), "progress: {line}");
        }
        self.last = line;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::board::GuestStatusLine;

    #[test]
    fn the_line_names_counts_and_running_steps() {
        let mut snap = Snapshot {
            desired_revision: Some(4),
            ..Snapshot::default()
        };
        snap.guests.insert(
            101,
            GuestStatusLine {
                vmid: 101,
                state: GuestState::Running,
                last_step: Some("create".into()),
                ..Default::default()
            },
        );
        snap.guests.insert(
            102,
            GuestStatusLine {
                vmid: 102,
                state: GuestState::Converged,
                ..Default::default()
            },
        );
        let line = Progress::line(&snap);
        assert!(line.starts_with("rev 4: 1 converged, 1 pending"), "{line}");
        assert!(line.ends_with("; running: CT 101 create"), "{line}");
    }
}
