//! How long each kind of PVE task usually takes on this node, learned from the tasks the agent
//! waited for, so the next wait polls near the expected end instead of on a fixed clock.
//!
//! What the agent observes is when it *saw* a task end, which is at or after the real end. A
//! task already over at the first poll (made at the estimate) says only "it took at most
//! that", so the estimate shrinks by a tenth; a task that needed more polls says "about this
//! long", and the estimate moves halfway towards it. The estimate thus settles just around the
//! real duration, and a change of the node's speed is followed within a few tasks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Learned durations per PVE worker type (`vzstart`, `vzcreate`, ...).
#[derive(Debug, Default)]
pub struct TaskEstimates {
    by_type: Mutex<HashMap<String, Duration>>,
}

impl TaskEstimates {
    /// The current estimate for `worker_type`, if any task of it was seen.
    pub fn estimate(&self, worker_type: &str) -> Option<Duration> {
        self.lock().get(worker_type).copied()
    }

    /// Learns from one wait: the task of `worker_type` was seen over after `seen_after`, the
    /// wait's first poll having been made after `first_pause`.
    pub fn observe(&self, worker_type: &str, seen_after: Duration, first_pause: Duration) {
        let mut m = self.lock();
        let next = match m.get(worker_type).copied() {
            None => seen_after,
            // Over at the first poll: it took at most that long.
            Some(e) if seen_after <= first_pause + first_pause / 20 + Duration::from_millis(5) => {
                e.mul_f64(0.9)
            }
            Some(e) => (e + seen_after) / 2,
        };
        m.insert(worker_type.to_string(), next);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Duration>> {
        self.by_type.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Simulates waits for a task that really takes `real`, polling as proxmox-client's
    /// schedule does near an estimate (first poll at it, then every 1/20 of it).
    fn seen_after(real: Duration, estimate: Option<Duration>) -> (Duration, Duration) {
        let Some(e) = estimate else {
            // The growing schedule from 50 ms.
            let mut t = Duration::from_millis(50);
            let mut pause = t;
            while t < real {
                pause = pause.mul_f64(1.5);
                t += pause;
            }
            return (t, Duration::from_millis(50));
        };
        let step = (e / 20).max(Duration::from_millis(10));
        let mut t = e;
        while t < real {
            t += step;
        }
        (t, e)
    }

    #[test]
    fn settles_near_the_real_duration_and_follows_a_change() {
        let est = TaskEstimates::default();
        let real = Duration::from_millis(100);
        let mut late = Vec::new();
        for _ in 0..40 {
            let (seen, first) = seen_after(real, est.estimate("vzstart"));
            late.push(seen.as_secs_f64() / real.as_secs_f64());
            est.observe("vzstart", seen, first);
        }
        // After a few tasks, a task is seen within 15 % of its end on average.
        let tail = &late[10..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        assert!(mean <= 1.15, "seen {mean:.3}× the real duration: {late:?}");
        // The node slows down: the estimate follows.
        let slow = Duration::from_millis(1500);
        for _ in 0..10 {
            let (seen, first) = seen_after(slow, est.estimate("vzstart"));
            est.observe("vzstart", seen, first);
        }
        let e = est.estimate("vzstart").unwrap();
        assert!(
            e > Duration::from_millis(1200) && e < Duration::from_millis(1800),
            "{e:?}"
        );
        assert_eq!(est.estimate("vzcreate"), None, "kept per worker type");
    }
}
