//! Progress of long interactive commands (`drover run --once`): one redrawn line with a
//! spinner when stdout is a terminal, plain lines (printed only when something changed) when it
//! is not, so a pipe or a CI log gets a readable record instead of control characters.

use std::io::{IsTerminal, Write};

use crate::reconcile::board::{GuestState, Snapshot};

const SPINNER: &[char] = &['|', '/', '-', '\\'];

pub struct Progress {
    tty: bool,
    tick: usize,
    last: String,
}

impl Progress {
    /// Decides the style from whether stdout is a terminal.
    pub fn for_stdout() -> Progress {
        Progress::new(std::io::stdout().is_terminal())
    }

    pub fn new(tty: bool) -> Progress {
        Progress {
            tty,
            tick: 0,
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
        let mut out = std::io::stdout().lock();
        if self.tty {
            self.tick += 1;
            let spin = SPINNER[self.tick % SPINNER.len()];
            // \r and "erase line": redraw in place.
            let _ = write!(out, "\r\x1b[2K{spin} {line}");
            let _ = out.flush();
        } else if line != self.last {
            let _ = writeln!(out, "progress: {line}");
        }
        self.last = line;
    }

    /// Ends the display with the final state on its own line.
    pub fn finish(&mut self, snap: &Snapshot) {
        let line = Progress::line(snap);
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = writeln!(out, "\r\x1b[2K{line}");
        } else if line != self.last {
            let _ = writeln!(out, "progress: {line}");
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
