//! Waiting for PVE tasks: poll the status until the task stops or a deadline passes. A deadline
//! never kills the task; the caller keeps the UPID and re-attaches later.
//!
//! The production schedule adapts: with the caller's estimate of how long this kind of task
//! takes, the first poll is at the estimate and the next ones are close together around it
//! (halving the rest of the interval first when the estimate gives a latest end);
//! without one, pauses grow from 50 ms by 1.5× up to 1 s (2.5 s after the first 10 s, under
//! pveproxy's 5 s keep-alive). A fixed 1 s poll made a 100 ms task cost a whole second.

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
    /// The caller's estimate of how long the task takes (learned from earlier tasks of the
    /// same type); `None` polls on the growing schedule from the start.
    pub expected: Option<Duration>,
    /// The latest the estimate allows the end to be (an estimate learned from far-apart polls
    /// is the middle of a wide interval): polls between `expected` and this halve the rest of
    /// the interval instead of stepping through it 1/40 of the estimate at a time.
    pub expected_latest: Option<Duration>,
    /// A fixed interval (tests against the simulator): every poll `fast_interval` apart.
    pub fixed: bool,
}

/// First pause of the growing schedule.
const RAMP_START: Duration = Duration::from_millis(50);
/// Shortest pause near an expected end.
const MIN_NEAR_PAUSE: Duration = Duration::from_millis(5);
/// The first poll never waits longer than this for an estimate (a task that fails early is
/// still noticed reasonably soon).
const MAX_FIRST_PAUSE: Duration = Duration::from_secs(30);

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
            expected: None,
            expected_latest: None,
            fixed: false,
        }
    }

    /// The same, with an estimate of the task's duration.
    pub fn expecting(mut self, expected: Option<Duration>) -> Self {
        self.expected = expected.filter(|e| !e.is_zero());
        self
    }

    /// The latest end the estimate allows (see `expected_latest`); ignored below the estimate.
    pub fn expecting_by(mut self, latest: Option<Duration>) -> Self {
        self.expected_latest = latest;
        self
    }

    /// A fast schedule for tests: every `interval`, until `deadline`.
    pub fn fast(interval: Duration, deadline: Duration) -> Self {
        WaitOptions {
            fast_interval: interval,
            slow_interval: interval,
            not_found_grace: deadline,
            fixed: true,
            ..Self::with_deadline(deadline)
        }
    }

    /// How long to wait before the first status poll.
    pub fn first_pause(&self) -> Duration {
        if self.fixed {
            return Duration::ZERO;
        }
        match self.expected {
            Some(e) => e.min(MAX_FIRST_PAUSE),
            None => RAMP_START,
        }
    }

    /// The pause after a poll that found the task still running, `elapsed` since submission,
    /// `last` the previous pause.
    pub fn pause_after(&self, elapsed: Duration, last: Duration) -> Duration {
        if self.fixed {
            return self.fast_interval;
        }
        let cap = if elapsed < self.fast_phase {
            self.fast_interval
        } else {
            self.slow_interval
        };
        // Close polls (1/40 of the estimate apart, about ten) for a quarter of the estimate
        // past it, then the ramp. Close, because the estimate sits just past the usual end:
        // a poll that finds the task still running comes only a little too early.
        if let Some(e) = self.expected {
            let near = (e / 40).max(MIN_NEAR_PAUSE);
            let latest = self.expected_latest.unwrap_or(e).max(e);
            // Inside a wide estimate, halve what is left of it: a few polls, not dozens.
            if elapsed < latest {
                return ((latest - elapsed) / 2).max(near).min(cap);
            }
            if elapsed < latest + e / 4 {
                return near.min(cap);
            }
        }
        last.mul_f64(1.5).max(RAMP_START).min(cap)
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

/// What one wait saw of a task, for a caller that learns how long tasks take: the task ended
/// after `last_running` (when a poll saw it still running) and at or before `seen_over`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTrace {
    /// Status polls sent.
    pub polls: u32,
    /// Since the wait began, when the last poll that found the task still running was sent;
    /// `None` when the first poll already found it over.
    pub last_running: Option<Duration>,
    /// Since the wait began, the answer that found it over.
    pub seen_over: Duration,
}

impl Client {
    /// Polls the task until it stops. Transient errors and a briefly unknown UPID are
    /// tolerated while polling; 401, 403 and undecodable answers end the wait with that error.
    /// The deadline yields [`ErrorKind::WaitDeadline`] and leaves the task running.
    pub async fn wait_task(&self, upid: &Upid, opts: &WaitOptions) -> Result<TaskOutcome, Error> {
        self.wait_task_traced(upid, opts).await.map(|(o, _)| o)
    }

    /// [`Client::wait_task`], also saying when the task was seen running and seen over.
    pub async fn wait_task_traced(
        &self,
        upid: &Upid,
        opts: &WaitOptions,
    ) -> Result<(TaskOutcome, WaitTrace), Error> {
        let started = Instant::now();
        let mut pause = opts.first_pause().min(opts.deadline);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut polls = 0u32;
        let mut last_running = None;
        loop {
            let polled_at = started.elapsed();
            polls += 1;
            match self.task_status(upid).await {
                Ok(st) => {
                    if let Some(exit) = st.exit() {
                        tracing::debug!(upid = %upid, exitstatus = ?st.exitstatus, polls, "task finished");
                        let trace = WaitTrace {
                            polls,
                            last_running,
                            seen_over: started.elapsed(),
                        };
                        let outcome = match exit {
                            TaskExit::Ok => TaskOutcome::Ok,
                            TaskExit::Warnings(n) => TaskOutcome::Warnings(n),
                            TaskExit::Error(message) => TaskOutcome::Failed {
                                log_tail: self.log_tail(upid, opts.log_tail_lines).await,
                                message,
                            },
                        };
                        return Ok((outcome, trace));
                    }
                    last_running = Some(polled_at);
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
            pause = opts
                .pause_after(elapsed, pause)
                .min(opts.deadline - elapsed);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The poll times (since submission) of a task that never ends, up to `until`.
    fn polls(o: &WaitOptions, until: Duration) -> Vec<Duration> {
        let mut t = o.first_pause();
        let mut pause = t;
        let mut out = Vec::new();
        while t < until {
            out.push(t);
            pause = o.pause_after(t, pause);
            t += pause;
        }
        out
    }

    #[test]
    fn without_an_estimate_pauses_grow_from_50_ms_to_the_caps() {
        let o = WaitOptions::with_deadline(Duration::from_secs(600));
        let p = polls(&o, Duration::from_secs(30));
        assert_eq!(p[0], ms(50));
        assert_eq!(p[1], ms(125));
        // A 1 s task is seen after at most 6 polls; pauses never exceed 1 s in the first 10 s
        // and 2.5 s afterwards.
        assert!(p.iter().position(|t| *t >= ms(1000)).unwrap() <= 6, "{p:?}");
        for w in p.windows(2) {
            let gap = w[1] - w[0];
            let cap = if w[0] < Duration::from_secs(10) {
                ms(1000)
            } else {
                ms(2500)
            };
            assert!(gap <= cap, "{w:?}");
        }
        assert_eq!(*p.last().unwrap() - p[p.len() - 2], ms(2500));
    }

    #[test]
    fn with_an_estimate_the_first_poll_is_at_it_and_the_next_close_by() {
        let o = WaitOptions::with_deadline(Duration::from_secs(600)).expecting(Some(ms(1500)));
        let p = polls(&o, Duration::from_secs(4));
        assert_eq!(p[0], ms(1500));
        assert_eq!(
            p[1] - p[0],
            Duration::from_micros(37_500),
            "1/40 of the estimate"
        );
        // A quarter of the estimate past it, the growing schedule takes over.
        let near = p
            .iter()
            .filter(|t| **t >= ms(1500) && **t < ms(1875))
            .count();
        assert_eq!(near, 10, "{p:?}");
        assert!(
            p.len() < 20,
            "a task longer than expected costs few polls: {p:?}"
        );
        let short = WaitOptions::with_deadline(Duration::from_secs(60)).expecting(Some(ms(100)));
        assert_eq!(
            short.pause_after(ms(100), ms(100)),
            ms(5),
            "at least 5 ms apart"
        );
        let long = WaitOptions::with_deadline(Duration::from_secs(3600))
            .expecting(Some(Duration::from_secs(600)));
        assert_eq!(long.first_pause(), Duration::from_secs(30));
        assert_eq!(
            long.pause_after(Duration::from_secs(30), ms(0)),
            ms(2500),
            "capped"
        );
    }

    #[test]
    fn inside_a_wide_estimate_the_polls_halve_what_is_left_of_it() {
        // Learned from polls 659 ms and 1,039 ms after submission: expected in the middle.
        let o = WaitOptions::with_deadline(Duration::from_secs(60))
            .expecting(Some(ms(849)))
            .expecting_by(Some(ms(1039)));
        let p = polls(&o, Duration::from_secs(2));
        assert_eq!(p[0], ms(849));
        assert_eq!(p[1], ms(944), "half of the 190 ms left");
        assert_eq!(p[2], ms(991) + Duration::from_micros(500));
        let until_latest = p.iter().filter(|t| **t <= ms(1039)).count();
        assert!(
            until_latest <= 5,
            "stepping 1/40 of the estimate apart took 9: {p:?}"
        );
        // Past the latest end, the close polls as for a narrow estimate.
        assert_eq!(
            o.pause_after(ms(1040), ms(21)),
            Duration::from_micros(21_225)
        );
        // No latest end (or one below the estimate): as before.
        let narrow = WaitOptions::with_deadline(Duration::from_secs(60))
            .expecting(Some(ms(849)))
            .expecting_by(Some(ms(500)));
        assert_eq!(
            narrow.pause_after(ms(849), ms(849)),
            Duration::from_micros(21_225)
        );
    }

    #[test]
    fn the_fixed_test_schedule_polls_at_once_and_evenly() {
        let o = WaitOptions::fast(ms(10), Duration::from_secs(5));
        assert_eq!(o.first_pause(), Duration::ZERO);
        assert_eq!(o.pause_after(Duration::from_secs(3), ms(10)), ms(10));
        let z = WaitOptions::with_deadline(Duration::from_secs(5)).expecting(Some(Duration::ZERO));
        assert_eq!(z.first_pause(), ms(50), "a zero estimate is no estimate");
    }
}
