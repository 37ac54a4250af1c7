//! Logging setup: quiet, journald-friendly by default.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald adds timestamps and the unit name, so lines carry
//! neither, and never ANSI colours. `DROVER_LOG` (or `RUST_LOG`) sets the filter;
//! `--log-format json` (or `DROVER_LOG_FORMAT=json`) switches to JSON lines for log shippers,
//! with the span fields (vmid, step, op id, UPID) on every line.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

pub fn init(default_filter: &str, json: bool) {
    let filter = std::env::var("DROVER_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let _ = registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init();
    } else if under_journald {
        let _ = registry
            .with(
                fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    } else {
        let _ = registry
            .with(
                fmt::layer()
                    .with_ansi(is_tty)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    }
}
