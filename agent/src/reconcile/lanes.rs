//! Per-guest lanes: at most one step in flight per guest, lanes of different guests in parallel
//! under one global cap.
//!
//! Modelled on kube-runtime's scheduler + runner: a guest is queued as "reconcile vmid", never
//! as a concrete step, and is re-planned from fresh state when its turn comes (level-triggered).
//! A request for a guest that is already queued is deduplicated (the earlier run time wins, so a
//! manual trigger pre-empts a backoff); a request for a guest that is running sets a dirty bit
//! and the guest runs again right after. Failures back off per guest with jitter; success resets.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What one turn of a lane achieved; decides when the guest runs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneOutcome {
    /// Nothing left to do.
    Converged,
    /// A step finished and more may follow: run again now.
    Progressed,
    /// Blocked on something outside the agent (an approval, a lock, another node): the periodic
    /// pass will look again.
    Waiting,
    /// Worth retrying after a backoff (lock, got timeout, 5xx, 596).
    Transient(String),
    /// Not worth retrying until the guest's desired entry changes (permission, parameters).
    Terminal(String),
    /// Look again at this time and not before (a verify window settling or probing): the lane
    /// is free meanwhile, and so is its slot under the global cap.
    RecheckAt(Instant),
}

/// Backoff policy per guest.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(120),
        }
    }
}

impl BackoffPolicy {
    /// Exponential delay for the n-th consecutive failure (n ≥ 1) with ±25 % jitter, so many
    /// guests failing together do not retry in lock-step.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let base = exp.min(self.max);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter)
    }
}

#[derive(Default)]
struct State {
    /// (due time, vmid), earliest first.
    queue: BTreeSet<(Instant, u32)>,
    /// vmid → its due time in `queue` (for dedupe and pre-emption).
    queued: HashMap<u32, Instant>,
    running: HashSet<u32>,
    /// Requested while running: run again right after.
    dirty: HashSet<u32>,
    failures: HashMap<u32, u32>,
    retries_total: u64,
    /// Times the scheduler loop woke up (a spinning loop shows here, not in a timed test).
    wakeups: u64,
    closed: bool,
}

/// Counters for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub queued: usize,
    pub active: usize,
    pub retries_total: u64,
    /// Scheduler loop iterations since start: about two per lane turn when healthy.
    pub scheduler_wakeups: u64,
}

/// The lane scheduler. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct Lanes {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    cap: Arc<Semaphore>,
    backoff: BackoffPolicy,
}

/// The work a lane does for one guest.
pub type LaneFuture = Pin<Box<dyn Future<Output = LaneOutcome> + Send>>;

impl Lanes {
    pub fn new(max_parallel: usize, backoff: BackoffPolicy) -> Lanes {
        Lanes {
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
            cap: Arc::new(Semaphore::new(max_parallel.max(1))),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state is still consistent
        // (every mutation is a single insert/remove), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a reconcile of `vmid` now.
    pub fn request(&self, vmid: u32) {
        self.request_at(vmid, Instant::now());
    }

    /// Asks for a reconcile of `vmid` at `due`. An earlier request pre-empts a later one.
    pub fn request_at(&self, vmid: u32, due: Instant) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            if s.running.contains(&vmid) {
                s.dirty.insert(vmid);
                return;
            }
            if let Some(&old) = s.queued.get(&vmid) {
                if old <= due {
                    return;
                }
                s.queue.remove(&(old, vmid));
            }
            s.queue.insert((due, vmid));
            s.queued.insert(vmid, due);
        }
        self.wake.notify_one();
    }

    /// Forgets the backoff of a guest (its desired entry changed, or an operator asked).
    pub fn reset_backoff(&self, vmid: u32) {
        self.lock().failures.remove(&vmid);
    }

    pub fn stats(&self) -> LaneStats {
        let s = self.lock();
        LaneStats {
            queued: s.queue.len(),
            active: s.running.len(),
            retries_total: s.retries_total,
            scheduler_wakeups: s.wakeups,
        }
    }

    /// Whether nothing is queued or running (for `run --once`).
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.queue.is_empty() && s.running.is_empty()
    }

    /// Whether nothing is due before `horizon` and nothing runs.
    pub fn idle_until(&self, horizon: Instant) -> bool {
        let s = self.lock();
        s.running.is_empty() && s.queue.first().is_none_or(|(due, _)| *due > horizon)
    }

    /// Stops taking new work; `run` returns once running lanes finish.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Runs lanes until `close()`. `work(vmid)` does one turn for a guest; `on_done` observes
    /// each outcome (metrics, status). A panic inside `work` becomes a transient error for that
    /// guest, never a dead agent.
    pub async fn run<W, D>(&self, work: W, on_done: D)
    where
        W: Fn(u32) -> LaneFuture,
        D: Fn(u32, &LaneOutcome),
    {
        let mut tasks: JoinSet<(u32, LaneOutcome)> = JoinSet::new();
        let mut task_vmids: HashMap<tokio::task::Id, u32> = HashMap::new();
        loop {
            // Start every due guest we have capacity for.
            loop {
                let next = {
                    let s = self.lock();
                    if s.closed {
                        None
                    } else {
                        s.queue.first().copied()
                    }
                };
                let Some((due, vmid)) = next else { break };
                if due > Instant::now() {
                    break;
                }
                let Ok(permit) = self.cap.clone().try_acquire_owned() else {
                    break;
                };
                {
                    let mut s = self.lock();
                    s.queue.remove(&(due, vmid));
                    s.queued.remove(&vmid);
                    s.running.insert(vmid);
                }
                let fut = work(vmid);
                let handle = tasks.spawn(async move {
                    let out = fut.await;
                    drop(permit);
                    (vmid, out)
                });
                task_vmids.insert(handle.id(), vmid);
            }

            let (closed, next_due) = {
                let s = self.lock();
                (s.closed, s.queue.first().map(|(d, _)| *d))
            };
            if closed && tasks.is_empty() {
                return;
            }
            // At the cap, a due guest cannot start until a lane finishes (or a request wakes
            // us): arming a timer for a due time already past would spin the loop.
            let at_cap = self.cap.available_permits() == 0;
            let sleep_until = match next_due {
                Some(due) if !at_cap => due,
                _ => Instant::now() + Duration::from_secs(3600),
            };
            self.lock().wakeups += 1;
            tokio::select! {
                joined = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (vmid, outcome) = match joined {
                        Some(Ok((id, (vmid, out)))) => { task_vmids.remove(&id); (vmid, out) }
                        Some(Err(e)) => {
                            let vmid = task_vmids.remove(&e.id()).unwrap_or(0);
                            let what = if e.is_panic() { "panicked" } else { "was cancelled" };
                            (vmid, LaneOutcome::Transient(format!("the lane for CT {vmid} {what}")))
                        }
                        None => continue,
                    };
                    on_done(vmid, &outcome);
                    self.finish(vmid, &outcome);
                }
                _ = tokio::time::sleep_until(sleep_until) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Book-keeping after a lane turn: decides when the guest runs next.
    fn finish(&self, vmid: u32, outcome: &LaneOutcome) {
        let mut s = self.lock();
        s.running.remove(&vmid);
        let dirty = s.dirty.remove(&vmid);
        let now = Instant::now();
        let next = match outcome {
            LaneOutcome::Progressed => {
                s.failures.remove(&vmid);
                Some(now)
            }
            LaneOutcome::Converged | LaneOutcome::Waiting => {
                s.failures.remove(&vmid);
                dirty.then_some(now)
            }
            LaneOutcome::Transient(_) => {
                let n = s.failures.entry(vmid).or_insert(0);
                *n += 1;
                let n = *n;
                s.retries_total += 1;
                Some(now + self.backoff.delay(n))
            }
            LaneOutcome::Terminal(_) => None,
            LaneOutcome::RecheckAt(at) => {
                s.failures.remove(&vmid);
                Some(*at)
            }
        };
        if let Some(due) = next
            && !s.closed
        {
            // Dedupe against a request that arrived meanwhile: keep the earlier.
            let due = match s.queued.get(&vmid) {
                Some(&old) if old <= due => return,
                Some(&old) => {
                    s.queue.remove(&(old, vmid));
                    due
                }
                None => due,
            };
            s.queue.insert((due, vmid));
            s.queued.insert(vmid, due);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn one_step_per_guest_at_a_time_and_a_global_cap() {
        let lanes = Lanes::new(3, fast());
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let per_guest: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        for v in 100..120 {
            lanes.request(v);
            lanes.request(v); // deduplicated
        }
        let l2 = lanes.clone();
        let (a, p, pg, d) = (
            active.clone(),
            peak.clone(),
            per_guest.clone(),
            done.clone(),
        );
        let runner = tokio::spawn(async move {
            l2.run(
                move |vmid| {
                    let (a, p, pg, d) = (a.clone(), p.clone(), pg.clone(), d.clone());
                    Box::pin(async move {
                        {
                            let mut m = pg.lock().unwrap();
                            let c = m.entry(vmid).or_insert(0);
                            *c += 1;
                        }
                        let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        a.fetch_sub(1, Ordering::SeqCst);
                        d.fetch_add(1, Ordering::SeqCst);
                        LaneOutcome::Converged
                    })
                },
                |_, _| {},
            )
            .await
        });
        while done.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lanes.close();
        runner.await.unwrap();
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "the cap is reached and never exceeded"
        );
        let m = per_guest.lock().unwrap();
        assert!(m.values().all(|&c| c == 1), "deduplicated: {m:?}");
    }

    #[tokio::test]
    async fn request_while_running_sets_dirty_and_runs_again() {
        let lanes = Lanes::new(2, fast());
        let runs = Arc::new(AtomicUsize::new(0));
        lanes.request(101);
        let l2 = lanes.clone();
        let r = runs.clone();
        let runner = tokio::spawn(async move {
            let l3 = l2.clone();
            l2.run(
                move |vmid| {
                    let r = r.clone();
                    let l3 = l3.clone();
                    Box::pin(async move {
                        let n = r.fetch_add(1, Ordering::SeqCst);
                        if n == 0 {
                            l3.request(vmid); // arrives while running
                        }
                        LaneOutcome::Converged
                    })
                },
                |_, _| {},
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        lanes.close();
        runner.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn transient_backs_off_terminal_stops_and_panics_are_contained() {
        let lanes = Lanes::new(2, fast());
        let calls: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let outcomes: Arc<Mutex<Vec<(u32, LaneOutcome)>>> = Arc::default();
        lanes.request(1);
        lanes.request(2);
        lanes.request(3);
        let l2 = lanes.clone();
        let (c, o) = (calls.clone(), outcomes.clone());
        let runner = tokio::spawn(async move {
            l2.run(
                move |vmid| {
                    let c = c.clone();
                    Box::pin(async move {
                        c.lock().unwrap().push((vmid, Instant::now()));
                        match vmid {
                            1 => LaneOutcome::Transient("lock".into()),
                            2 => LaneOutcome::Terminal("permission".into()),
                            _ => panic!("boom"),
                        }
                    })
                },
                move |vmid, out| o.lock().unwrap().push((vmid, out.clone())),
            )
            .await
        });
        // Wait for what the test is about, not for a fixed time: a panic captures a backtrace
        // (slow with RUST_BACKTRACE=1, and on a busy machine) on the runtime's only thread, so
        // how many retries fit into a given wall time is not a property of the lanes.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let retried = calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(v, _)| *v == 1)
                .count()
                >= 3;
            let panicked = outcomes.lock().unwrap().iter().any(|(v, _)| *v == 3);
            if retried && panicked && lanes.stats().retries_total >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the lanes made no progress in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lanes.close();
        runner.await.unwrap();
        let calls = calls.lock().unwrap();
        let one: Vec<Instant> = calls
            .iter()
            .filter(|(v, _)| *v == 1)
            .map(|(_, t)| *t)
            .collect();
        let two = calls.iter().filter(|(v, _)| *v == 2).count();
        assert!(one.len() >= 3, "transient retried: {}", one.len());
        assert!(one[1] - one[0] >= Duration::from_millis(14), "backed off");
        assert_eq!(two, 1, "terminal not retried");
        let outs = outcomes.lock().unwrap();
        assert!(
            outs.iter().any(|(v, o)| *v == 3
                && matches!(o, LaneOutcome::Transient(m) if m.contains("panicked")))
        );
        assert!(lanes.stats().retries_total >= 2);
    }

    /// More guests due than the cap allows: the scheduler must wait for a lane to finish, not
    /// re-arm a timer that has already expired (which burned a core during every rollout).
    #[tokio::test]
    async fn a_full_cap_does_not_spin_the_scheduler() {
        let lanes = Lanes::new(1, fast());
        let done = Arc::new(AtomicUsize::new(0));
        for v in 1..=5 {
            lanes.request(v);
        }
        let l2 = lanes.clone();
        let d = done.clone();
        let runner = tokio::spawn(async move {
            l2.run(
                move |_| {
                    let d = d.clone();
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                        LaneOutcome::Converged
                    })
                },
                |_, _| {},
            )
            .await
        });
        while done.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lanes.close();
        runner.await.unwrap();
        let wakeups = lanes.stats().scheduler_wakeups;
        // Five turns need about ten wake-ups (a start and a finish each, plus the close); a
        // spinning loop makes tens of thousands in the 250 ms this takes.
        assert!(
            wakeups <= 30,
            "the scheduler woke {wakeups} times for 5 turns"
        );
    }

    #[tokio::test]
    async fn earlier_request_preempts_a_backoff() {
        let lanes = Lanes::new(1, fast());
        let far = Instant::now() + Duration::from_secs(3600);
        lanes.request_at(7, far);
        lanes.request(7);
        let s = lanes.lock();
        assert_eq!(s.queue.len(), 1);
        assert!(s.queued[&7] < far);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = BackoffPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert!(p.delay(1) <= Duration::from_millis(2500));
        assert!(p.delay(3) >= Duration::from_secs(6));
        assert!(p.delay(30) <= Duration::from_secs(75));
    }
}
