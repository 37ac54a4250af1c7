//! Waiting for PVE tasks: poll the status (fast at first, then slower but under pveproxy's
//! 5 s keep-alive) until the task stops or a deadline passes. A deadline never kills the task;
//! the caller keeps the UPID and re-attaches later.

use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::types::TaskExit;
use crate::upid::Upid;

/// Poll schedule and deadline for [`Client::wait_task`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// Give up waiting (not the task) after this long.
    pub deadline: Duration,
    /// Interval during the first `fast_phase`.
    pub fast_interval: Duration,
    pub fast_phase: Duration,
    /// Interval afterwards (keep it under 5 s so the connection is reused).
    pub slow_interval: Duration,
    /// How long a `no such task` answer is tolerated (a fresh UPID may not be visible yet).
    pub not_found_grace: Duration,
    /// How many log lines a failure carries.
    pub log_tail_lines: u64,
}

impl WaitOptions {
    /// 1 s for the first 10 s, then 2.5 s, until `deadline`.
    pub fn with_deadline(deadline: Duration) -> Self {
        WaitOptions {
            deadline,
            fast_interval: Duration::from_secs(1),
            fast_phase: Duration::from_secs(10),
            slow_interval: Duration::from_millis(2500),
            not_found_grace: Duration::from_secs(10),
            log_tail_lines: 20,
        }
    }

    /// A fast schedule for tests: every `interval`, until `deadline`.
    pub fn fast(interval: Duration, deadline: Duration) -> Self {
        WaitOptions {
            fast_interval: interval,
            slow_interval: interval,
            not_found_grace: deadline,
            ..Self::with_deadline(deadline)
        }
    }

    fn interval_at(&self, elapsed: Duration) -> Duration {
        if elapsed < self.fast_phase {
            self.fast_interval
        } else {
            self.slow_interval
        }
    }
}

/// How a finished task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    Ok,
    /// Succeeded with `n` warnings.
    Warnings(u32),
    /// The task's exit status text, and the last lines of its log (empty if the log could not
    /// be read).
    Failed {
        message: String,
        log_tail: Vec<String>,
    },
}

impl TaskOutcome {
    pub fn is_success(&self) -> bool {
        !matches!(self, TaskOutcome::Failed { .. })
    }
}

impl Client {
    /// Polls the task until it stops. Transient errors and a briefly unknown UPID are
    /// tolerated while polling; 401, 403 and undecodable answers end the wait with that error.
    /// The deadline yields [`ErrorKind::WaitDeadline`] and leaves the task running.
    pub async fn wait_task(&self, upid: &Upid, opts: &WaitOptions) -> Result<TaskOutcome, Error> {
        let started = Instant::now();
        loop {
            match self.task_status(upid).await {
                Ok(st) => {
                    if let Some(exit) = st.exit() {
                        tracing::debug!(upid = %upid, exitstatus = ?st.exitstatus, "task finished");
                        return Ok(match exit {
                            TaskExit::Ok => TaskOutcome::Ok,
                            TaskExit::Warnings(n) => TaskOutcome::Warnings(n),
                            TaskExit::Error(message) => TaskOutcome::Failed {
                                log_tail: self.log_tail(upid, opts.log_tail_lines).await,
                                message,
                            },
                        });
                    }
                }
                Err(e) if e.is_not_found() && started.elapsed() < opts.not_found_grace => {
                    tracing::debug!(upid = %upid, error = %e, "task not visible yet");
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(upid = %upid, error = %e, "polling task status failed; will retry");
                }
                Err(e) => return Err(e),
            }
            let elapsed = started.elapsed();
            if elapsed >= opts.deadline {
                return Err(Error::new(
                    Some(reqwest::Method::GET),
                    format!("/nodes/{}/tasks/{upid}/status", upid.node),
                    ErrorKind::WaitDeadline {
                        upid: Box::new(upid.clone()),
                        waited: elapsed,
                    },
                ));
            }
            let pause = opts.interval_at(elapsed).min(opts.deadline - elapsed);
            tokio::time::sleep(pause).await;
        }
    }

    /// The last `n` lines of the task log, best effort.
    async fn log_tail(&self, upid: &Upid, n: u64) -> Vec<String> {
        if n == 0 {
            return Vec::new();
        }
        let first = match self.task_log(upid, 0, n).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(upid = %upid, error = %e, "reading the failed task's log");
                return Vec::new();
            }
        };
        let total = first.total.unwrap_or(first.lines.len() as u64);
        let lines = if total > n {
            match self.task_log(upid, total - n, n).await {
                Ok(l) => l.lines,
                Err(e) => {
                    tracing::warn!(upid = %upid, error = %e, "reading the failed task's log");
                    first.lines
                }
            }
        } else {
            first.lines
        };
        lines.into_iter().map(|l| l.t).collect()
    }
}
