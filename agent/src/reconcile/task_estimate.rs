//! How long each kind of PVE task usually takes on this node, learned from the tasks the agent
//! waited for, so the next wait's first poll lands just after the expected end: one status
//! request per task in most waits, and little time lost after the task ended.
//!
//! A wait tells the estimator an interval: the task ended after the last poll that saw it
//! running and before the answer that saw it over ([`WaitTrace`]). A task already over at the
//! first poll (made at the estimate) says only "it took at most that", so the estimate creeps
//! down (0.5 % per wait, 5 % after eight such waits in a row, to follow a node that got
//! faster);
//! a task that needed more polls was seen over within one close poll of its end, and the
//! estimate moves to just past that end. An interval too wide to trust (the growing
//! schedule's far-apart polls while a type is learned) gives its middle as the estimate and
//! its upper end as the latest end, so the next wait halves its way through it. One wait
//! at most doubles the estimate, so one slow task does not make later ones wait for it. The estimate
//! thus sits slightly above the real duration: most first polls find the task over (one
//! request per wait), and the few that come early cost one more poll or two, 1/40 of the
//! estimate apart.
//!
//! What is learned is kept in the journal ([`TaskEstimates::keep_in`]): without it every
//! `run --once` and every restart learned each task type again, several polls per wait for
//! the first rounds (8 requests per step for 10 s tasks instead of 5.5).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proxmox_client::WaitTrace;

/// Added to the end a late poll found, so the next first poll is just past it.
const MARGIN: f64 = 0.01;
/// How much one early-enough first poll shrinks the estimate...
const CREEP: f64 = 0.005;
/// ...and after this many in a row, how much the next one does; each further one in a row
/// doubles it, up to `MAX_CREEP`. In steady state a hit or two comes between misses, so only
/// an estimate left far above the real end (a stall that is over, a node that got faster)
/// sees these: from a minute down to 1 s in about twenty waits instead of eighty.
const HITS_BEFORE_FASTER: u32 = 8;
const FAST_CREEP: f64 = 0.05;
const MAX_CREEP: f64 = 0.25;
/// An interval wider than this (or a twentieth of its end: wider than the close polls, which
/// are 1/40 of the estimate apart) is narrowed to its middle instead of
/// trusted as the end (the growing schedule's far-apart polls).
const NARROW: Duration = Duration::from_millis(25);
/// One round of waits moves the estimate up at most this many times the estimate the waits
/// began with (parallel lanes reporting one burst of slow tasks raise it once): a single slow task (a big
/// container's first start, a busy storage) would otherwise set the first poll of every later
/// task of its type at its own length, and each of those polls finds its task long over (a
/// hit only creeps the estimate down). A type that really got slower is followed in a few
/// waits, each costing a few more polls instead of a late first poll.
const MAX_RISE: u32 = 2;

#[derive(Debug, Clone, Copy)]
struct Learned {
    estimate: Duration,
    /// The latest end the estimate allows: the upper end of a wide interval whose middle is
    /// the estimate (the next wait halves its way through it), else the estimate.
    latest: Duration,
    /// First polls in a row that found the task already over.
    hits: u32,
}

/// A remembered duration longer than this is not believed: no LXC task the agent waits for
/// runs a day, so a larger value is damage (the client caps a first poll at 30 s, but the
/// close polls that follow are spaced by the estimate).
const LONGEST_BELIEVED: Duration = Duration::from_secs(24 * 3600);

/// Told of every change to an estimate (the journal, see [`TaskEstimates::keep_in`]).
type Memory = Box<dyn Fn(&str, Duration, Duration) + Send + Sync>;

/// Learned durations per PVE worker type (`vzstart`, `vzcreate`, ...).
#[derive(Default)]
pub struct TaskEstimates {
    by_type: Mutex<HashMap<String, Learned>>,
    memory: std::sync::OnceLock<Memory>,
}

impl std::fmt::Debug for TaskEstimates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskEstimates")
            .field("by_type", &*self.lock())
            .field("kept", &self.memory.get().is_some())
            .finish()
    }
}

impl TaskEstimates {
    /// Starts from what earlier runs learned on this node and keeps every later change in
    /// the journal (`Store::remember_task_duration`: no sync of its own). A remembered value
    /// that is not believable is skipped and logged: the type is learned again.
    pub fn keep_in(&self, store: &crate::store::Store) {
        for (worker, estimate, latest) in store.task_durations() {
            if !self.seed(&worker, estimate, latest) {
                tracing::info!(
                    worker,
                    "ignoring a remembered task duration of {estimate:?} (latest end {latest:?}): not believable; learning it again"
                );
            }
        }
        let store = store.clone();
        let _ = self.memory.set(Box::new(move |worker, estimate, latest| {
            store.remember_task_duration(worker, estimate, latest)
        }));
    }

    /// Sets what a type is expected to take, as an earlier run learned it; false (and nothing
    /// set) when the values are not believable: zero, over a day, or a latest end before the
    /// estimate.
    pub fn seed(&self, worker_type: &str, estimate: Duration, latest: Duration) -> bool {
        if estimate.is_zero() || latest < estimate || latest > LONGEST_BELIEVED {
            return false;
        }
        self.lock().insert(
            worker_type.to_string(),
            Learned {
                estimate,
                latest,
                hits: 0,
            },
        );
        true
    }

    /// The current estimate for `worker_type`, if any task of it was seen.
    pub fn estimate(&self, worker_type: &str) -> Option<Duration> {
        self.lock().get(worker_type).map(|l| l.estimate)
    }

    /// The estimate and the latest end it allows (`WaitOptions::expecting_by`), read together
    /// (another lane may learn in between).
    pub fn expected(&self, worker_type: &str) -> (Option<Duration>, Option<Duration>) {
        match self.lock().get(worker_type) {
            Some(l) => (Some(l.estimate), Some(l.latest)),
            None => (None, None),
        }
    }

    /// Learns from one wait for a task of `worker_type` that began with the estimate `used`.
    ///
    /// A first poll that found the task over says "the estimate was not too short" only of the
    /// estimate it was made with: parallel lanes waiting with the same estimate report the
    /// same fact, and counting each would creep the estimate down once per lane per round, far
    /// below the real end. So such a hit moves the estimate only if it was made with the
    /// estimate in force (not one another lane's wait has since replaced).
    pub fn observe(&self, worker_type: &str, used: Option<Duration>, trace: &WaitTrace) {
        let mut m = self.lock();
        let hi = trace.seen_over;
        let current = m.get(worker_type).copied();
        if trace.last_running.is_none()
            && let (Some(l), Some(used)) = (current, used)
            && l.estimate != used
        {
            return;
        }
        let next = match (current, trace.last_running) {
            // Over at the first poll: it took at most that long.
            (Some(l), None) => {
                let hits = l.hits.saturating_add(1);
                let creep = if hits > HITS_BEFORE_FASTER {
                    let doublings = (hits - HITS_BEFORE_FASTER - 1).min(8);
                    (FAST_CREEP * f64::from(1u32 << doublings)).min(MAX_CREEP)
                } else {
                    CREEP
                };
                let estimate = l.estimate.mul_f64(1.0 - creep);
                Learned {
                    estimate,
                    latest: estimate,
                    hits,
                }
            }
            (None, None) => Learned {
                estimate: hi,
                latest: hi,
                hits: 0,
            },
            // Seen running, then over: the end lies between.
            (_, Some(lo)) => {
                let width = hi.saturating_sub(lo);
                if width <= NARROW.max(hi / 20) {
                    let estimate = hi.mul_f64(1.0 + MARGIN);
                    Learned {
                        estimate,
                        latest: estimate,
                        hits: 0,
                    }
                } else {
                    Learned {
                        estimate: lo + width / 2,
                        latest: hi,
                        hits: 0,
                    }
                }
            }
        };
        // Relative to the estimate this wait began with, so parallel lanes' reports of one
        // burst raise it once, not once per lane.
        let ceiling = current.map(|c| {
            let base = used.unwrap_or(c.estimate).min(c.estimate);
            (base * MAX_RISE).max(c.estimate)
        });
        let next = match ceiling {
            Some(ceiling) if next.estimate > ceiling => Learned {
                estimate: ceiling,
                // The end seen stays the latest end: the next wait halves its way to it.
                latest: next.latest.max(ceiling),
                hits: 0,
            },
            _ => next,
        };
        m.insert(worker_type.to_string(), next);
        let changed =
            current.is_none_or(|c| c.estimate != next.estimate || c.latest != next.latest);
        // Kept while the lock is held, so the journal never ends with an older value than
        // memory (a write is an in-memory sled insert, no sync).
        if changed && let Some(remember) = self.memory.get() {
            remember(worker_type, next.estimate, next.latest);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Learned>> {
        self.by_type.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proxmox_client::WaitOptions;

    /// Simulates a wait for a task that really takes `real`, on proxmox-client's production
    /// schedule with the current estimate, each poll answered `rtt` after it was sent.
    fn wait(real: Duration, est: &TaskEstimates, rtt: Duration) -> WaitTrace {
        wait_on(real, est, rtt, true)
    }

    /// `wait`, optionally without the estimate's latest end (the schedule before it existed).
    fn wait_on(real: Duration, est: &TaskEstimates, rtt: Duration, latest: bool) -> WaitTrace {
        let (expected, latest_end) = est.expected("vzstart");
        let o = WaitOptions::with_deadline(Duration::from_secs(3600))
            .expecting(expected)
            .expecting_by(latest_end.filter(|_| latest));
        let mut t = o.first_pause();
        let mut pause = t;
        let mut polls = 0;
        let mut last_running = None;
        loop {
            polls += 1;
            // The server answers halfway through the round trip.
            if t + rtt / 2 >= real {
                return WaitTrace {
                    polls,
                    last_running,
                    seen_over: t + rtt,
                };
            }
            last_running = Some(t);
            t += rtt;
            pause = o.pause_after(t, pause);
            t += pause;
        }
    }

    /// Mean polls per wait and mean lateness (seen over / real) over waits 10..n.
    fn run(est: &TaskEstimates, real: Duration, n: usize) -> (f64, f64) {
        let rtt = Duration::from_millis(2);
        let (mut polls, mut late) = (Vec::new(), Vec::new());
        for i in 0..n {
            let used = est.estimate("vzstart");
            let tr = wait(real, est, rtt);
            est.observe("vzstart", used, &tr);
            if i >= 10 {
                polls.push(f64::from(tr.polls));
                late.push(tr.seen_over.as_secs_f64() / real.as_secs_f64());
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        (mean(&polls), mean(&late))
    }

    /// One 20 s start among 1 s starts: before, the next start's first poll came at ~20 s,
    /// and every start after it was ~19 s late while hits crept the estimate down 0.5 % at a
    /// time. A type that really became slower is still followed within a few waits.
    #[test]
    fn one_slow_task_does_not_make_the_next_ones_wait_for_it() {
        let rtt = Duration::from_millis(2);
        let s = Duration::from_secs;
        let est = TaskEstimates::default();
        run(&est, s(1), 50);
        let used = est.estimate("vzstart");
        let slow = wait(s(20), &est, rtt);
        est.observe("vzstart", used, &slow);
        let used = est.estimate("vzstart");
        let next = wait(s(1), &est, rtt);
        est.observe("vzstart", used, &next);
        assert!(
            next.seen_over <= Duration::from_millis(2100),
            "the 1 s task after a 20 s one was seen over after {:?}",
            next.seen_over
        );

        // Three lanes report one burst of slow tasks: the estimate rises once, not per lane.
        let est = TaskEstimates::default();
        run(&est, s(1), 50);
        let before = est.estimate("vzstart").unwrap();
        parallel_round(&est, s(20), true);
        assert!(
            est.estimate("vzstart").unwrap() <= before * 2,
            "{:?} after one round of slow tasks from {before:?}",
            est.estimate("vzstart")
        );

        // The type really became 20 s: the estimate follows in a few waits, and after them
        // the waits are as good as ever.
        let est = TaskEstimates::default();
        run(&est, s(1), 50);
        let mut polls = 0;
        for _ in 0..6 {
            let used = est.estimate("vzstart");
            let tr = wait(s(20), &est, rtt);
            polls += tr.polls;
            est.observe("vzstart", used, &tr);
        }
        assert!(
            polls <= 6 * 16,
            "{polls} polls for six 20 s waits while following"
        );
        let (polls, late) = run(&est, s(20), 40);
        assert!(
            polls <= 1.25 && late <= 1.04,
            "{polls:.2} polls, {late:.3} late"
        );
    }

    /// An estimate left at a minute (a storage stall that is over) comes down to a 1 s type in
    /// about twenty waits: hits in a row creep it faster and faster.
    #[test]
    fn an_estimate_left_far_too_high_comes_down_in_a_few_dozen_waits() {
        let s = Duration::from_secs;
        let est = TaskEstimates::default();
        assert!(est.seed("vzstart", s(60), s(60)));
        let rtt = Duration::from_millis(2);
        let mut waits = 0;
        while est.estimate("vzstart").unwrap() > s(2) {
            let used = est.estimate("vzstart");
            let tr = wait(s(1), &est, rtt);
            est.observe("vzstart", used, &tr);
            waits += 1;
            assert!(
                waits <= 30,
                "still {:?} after {waits} waits",
                est.estimate("vzstart")
            );
        }
        let (polls, late) = run(&est, s(1), 40);
        assert!(
            polls <= 1.25 && late <= 1.05,
            "{polls:.2} polls, {late:.3} late"
        );
    }

    #[test]
    fn remembered_durations_that_are_not_believable_are_not_seeded() {
        let s = Duration::from_secs;
        let est = TaskEstimates::default();
        assert!(!est.seed("vzstart", Duration::ZERO, Duration::ZERO));
        assert!(
            !est.seed("vzstart", s(2), s(1)),
            "latest end before the estimate"
        );
        assert!(!est.seed("vzstart", s(1), s(25 * 3600)), "over a day");
        assert_eq!(est.expected("vzstart"), (None, None));
        assert!(est.seed("vzstart", s(1), s(2)));
        assert_eq!(est.expected("vzstart"), (Some(s(1)), Some(s(2))));
    }

    #[test]
    fn settles_just_past_the_real_duration_with_about_one_poll_per_wait() {
        for (ms, max_late) in [(100u64, 1.10), (1000, 1.05), (1500, 1.05), (10_000, 1.04)] {
            let est = TaskEstimates::default();
            let (polls, late) = run(&est, Duration::from_millis(ms), 200);
            assert!(
                polls <= 1.25,
                "{ms} ms tasks: {polls:.2} polls per wait (late {late:.3})"
            );
            assert!(
                late <= max_late,
                "{ms} ms tasks: seen {late:.3} × the real duration ({polls:.2} polls)"
            );
        }
    }

    /// One round of three lanes that start together with the estimate in force and report
    /// after their tasks end (`track_used: false` reports without the estimate each used,
    /// which counts every lane's hit).
    fn parallel_round(est: &TaskEstimates, real: Duration, track_used: bool) -> Vec<WaitTrace> {
        let used = est.estimate("vzstart");
        let traces: Vec<_> = (0..3)
            .map(|_| wait(real, est, Duration::from_millis(2)))
            .collect();
        for tr in &traces {
            est.observe("vzstart", used.filter(|_| track_used), tr);
        }
        traces
    }

    #[test]
    fn learning_a_new_task_type_costs_few_polls() {
        // The first wait ramps up; its far-apart last polls leave a wide interval, and the
        // second wait halves its way through that instead of stepping 1/40 of the estimate.
        let learning = |real: Duration, latest: bool| -> u32 {
            let est = TaskEstimates::default();
            (0..3)
                .map(|_| {
                    let used = est.estimate("vzstart");
                    let tr = wait_on(real, &est, Duration::from_millis(2), latest);
                    est.observe("vzstart", used, &tr);
                    tr.polls
                })
                .sum()
        };
        // (task, most polls, fewer than stepping by): a 10 s task's second wait halves the
        // ramp's last second in as many polls as stepping through it takes.
        for (ms, max_polls, saved) in [(1000u64, 11, 3), (1500, 11, 3), (10_000, 19, 0)] {
            let real = Duration::from_millis(ms);
            let (now, stepping) = (learning(real, true), learning(real, false));
            assert!(
                now <= max_polls && now + saved <= stepping,
                "{ms} ms tasks: {now} polls in the first three waits ({stepping} stepping 1/40 of the estimate)"
            );
        }
    }

    #[test]
    fn a_long_task_type_is_learned_without_waiting_long_past_its_end() {
        // Five rounds of three parallel 10 s tasks, as the benchmark runs them: the ramp's
        // last pause is a second wide, and trusting its end (plus 1 %) cost each later round
        // up to 1.1 s; halving it into the estimate costs a quarter of that.
        let est = TaskEstimates::default();
        let real = Duration::from_secs(10);
        let mut late = Duration::ZERO;
        for _ in 0..5 {
            let traces = parallel_round(&est, real, true);
            late += traces[0].seen_over.saturating_sub(real);
        }
        assert!(
            late < Duration::from_secs(2),
            "{late:?} past the ends in five rounds"
        );
    }

    #[test]
    fn parallel_lanes_waiting_with_one_estimate_count_as_one_hit() {
        let rounds = |track_used: bool| -> f64 {
            let est = TaskEstimates::default();
            let real = Duration::from_millis(1000);
            let mut polls = Vec::new();
            for round in 0..100 {
                let traces = parallel_round(&est, real, track_used);
                if round >= 5 {
                    polls.extend(traces.iter().map(|tr| f64::from(tr.polls)));
                }
            }
            polls.iter().sum::<f64>() / polls.len() as f64
        };
        let (now, every_hit) = (rounds(true), rounds(false));
        assert!(
            now <= 1.3 && now < every_hit,
            "{now:.2} polls per wait ({every_hit:.2} counting every lane's hit)"
        );
    }

    #[test]
    fn follows_a_node_that_slows_down_or_speeds_up() {
        let est = TaskEstimates::default();
        run(&est, Duration::from_millis(100), 40);
        // Slower: the first wait's late polls find the new end at once.
        run(&est, Duration::from_millis(1500), 5);
        let e = est.estimate("vzstart").unwrap();
        assert!(
            e > Duration::from_millis(1400) && e < Duration::from_millis(1700),
            "{e:?}"
        );
        // Faster: the estimate comes down within a few dozen waits.
        run(&est, Duration::from_millis(300), 60);
        let e = est.estimate("vzstart").unwrap();
        assert!(e < Duration::from_millis(400), "{e:?}");
        assert_eq!(est.estimate("vzcreate"), None, "kept per worker type");
    }
}
