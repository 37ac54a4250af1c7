//! Logging setup: quiet, journald-friendly by default.
//!
//! Under systemd (`JOURNAL_STREAM` names our stderr) the agent talks journald's native
//! protocol: each level becomes its syslog priority (`journalctl -p warning -u drover` shows
//! warnings and errors only) and the span fields become journal fields (`VMID`, `STEP`,
//! `OP_ID`, `UPID`: `journalctl -u drover VMID=101`). If the journal socket cannot be reached
//! (a sandbox without it), lines go to stderr with a `<N>` syslog priority prefix, which
//! journald's stream reader turns into the priority (`SyslogLevelPrefix=`, on by default).
//! Neither case carries timestamps (journald adds them) or ANSI colours.
//!
//! `DROVER_LOG` (or `RUST_LOG`) sets the filter; `--log-format json` (or
//! `DROVER_LOG_FORMAT=json`) switches to JSON lines for log shippers, with the span fields
//! (vmid, step, op id, UPID) on every line.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{self, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The syslog priority of a level, as journald and `journalctl -p` know it. INFO is
/// "informational" (6), not "notice": most of the agent's lines are routine.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when stderr is the journal stream systemd connected us to: `JOURNAL_STREAM` holds its
/// `device:inode`. Checked (as `systemd.exec(5)` advises) so that a child started from a unit,
/// with stderr redirected, does not send its lines to the journal.
fn stderr_is_journal_stream() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Prefixes each line with `<N>`, its syslog priority, for journald's stream reader.
struct SyslogPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The native journald layer with our priorities and unprefixed field names.
fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("drover".into())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

pub fn init(default_filter: &str, json: bool) {
    let filter = std::env::var("DROVER_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let under_journald = stderr_is_journal_stream();
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if is_tty && !json && !under_journald {
        // A person at a terminal: log lines and the progress line of `run --once` share it.
        // The progress line is a tracing span's bar (`operator::progress`), drawn by
        // tracing-indicatif, whose writer clears the bar, prints the log line and redraws the
        // bar below it, so neither ever overwrites the other. The filter applies to the log
        // lines only; the bar's span is shown whatever `DROVER_LOG` says.
        let indicatif = tracing_indicatif::IndicatifLayer::new()
            .with_progress_style(crate::operator::progress::bar_style());
        let writer = indicatif.get_stderr_writer();
        let _ = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .with_ansi(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
                    .with_target(false)
                    .fmt_fields(tracing_indicatif::filter::hide_indicatif_span_fields(
                        fmt::format::DefaultFields::new(),
                    ))
                    .with_writer(writer)
                    .with_filter(filter),
            )
            .with(indicatif.with_filter(tracing_indicatif::filter::IndicatifFilter::new(false)))
            .try_init();
        return;
    }
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let _ = registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init();
    } else if under_journald {
        match journald_layer() {
            Ok(layer) => {
                let _ = registry.with(layer).try_init();
            }
            Err(_) => {
                let format = fmt::format()
                    .without_time()
                    .with_ansi(false)
                    .with_target(false);
                let _ = registry
                    .with(
                        fmt::layer()
                            .event_format(SyslogPrefix(format))
                            .with_ansi(false)
                            .with_writer(std::io::stderr),
                    )
                    .try_init();
            }
        }
    } else {
        let _ = registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
