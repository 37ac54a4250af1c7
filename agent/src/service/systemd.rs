//! systemd integration: readiness, watchdog, status and stopping notifications.
//!
//! Everything here is a no-op when the agent does not run under systemd (`NOTIFY_SOCKET` unset),
//! so the same binary works from a terminal, in tests and in the demo. Failures to notify are
//! logged, never fatal: systemd being unreachable must not stop convergence.

use std::time::Duration;

use sd_notify::NotifyState;

/// A handle for talking to the service manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct Systemd {
    /// The watchdog interval systemd expects pings within, if enabled.
    pub watchdog: Option<Duration>,
}

impl Systemd {
    /// Reads the environment systemd gave us.
    pub fn from_env() -> Systemd {
        Systemd {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }

    /// READY=1: sent only after journal recovery and the first successful PVE read.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// WATCHDOG=1: sent from the main loop's progress, so a hung loop gets restarted.
    pub fn watchdog_ping(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// STATUS=...: one line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// STOPPING=1.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often the main loop should ping: half the watchdog interval, as sd_watchdog_enabled(3)
    /// recommends.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }
}
