//! Prometheus metrics, rendered in the text exposition format on an optional loopback listener.
//!
//! A handful of counters and gauges do not justify a metrics framework: this module keeps them
//! in atomics and maps, and renders them by hand. Names follow Prometheus conventions
//! (`_total` counters, `_seconds` units) and `reconcile-anchors.md` §5.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histogram buckets in seconds: from a fast API call to a slow container create.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Buckets for the journal's fdatasync: sub-millisecond on an SSD, tens of ms on a busy disk.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_buckets(BUCKETS)
    }
}

impl Histogram {
    fn with_buckets(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// All of the agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    reconcile_total: Mutex<BTreeMap<String, u64>>,
    reconcile_duration: Mutex<Histogram>,
    pve_task_duration: Mutex<BTreeMap<String, Histogram>>,
    pve_api_requests: Mutex<BTreeMap<(String, String), u64>>,
    gate_decisions: Mutex<BTreeMap<String, u64>>,
    guests: Mutex<BTreeMap<String, u64>>,
    pub lane_queue_depth: AtomicU64,
    pub lanes_active: AtomicU64,
    pub lane_retries_total: AtomicU64,
    pub pending_approvals: AtomicU64,
    /// Unix seconds of the last successful desired-state fetch (0: never).
    pub hub_last_success: AtomicU64,
    pub journal_inflight_steps: AtomicU64,
    journal_fsync: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_total: Mutex::default(),
            reconcile_duration: Mutex::default(),
            pve_task_duration: Mutex::default(),
            pve_api_requests: Mutex::default(),
            gate_decisions: Mutex::default(),
            guests: Mutex::default(),
            lane_queue_depth: AtomicU64::default(),
            lanes_active: AtomicU64::default(),
            lane_retries_total: AtomicU64::default(),
            pending_approvals: AtomicU64::default(),
            hub_last_success: AtomicU64::default(),
            journal_inflight_steps: AtomicU64::default(),
            journal_fsync: Mutex::new(Histogram::with_buckets(FSYNC_BUCKETS)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Escapes a label value (backslash, quote, newline), as the exposition format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn reconcile(&self, result: &str, seconds: f64) {
        *lock(&self.reconcile_total)
            .entry(result.to_string())
            .or_default() += 1;
        lock(&self.reconcile_duration).observe(seconds);
    }

    pub fn pve_task(&self, worker_type: &str, seconds: f64) {
        lock(&self.pve_task_duration)
            .entry(worker_type.to_string())
            .or_default()
            .observe(seconds);
    }

    pub fn pve_request(&self, method: &str, code: &str) {
        *lock(&self.pve_api_requests)
            .entry((method.to_string(), code.to_string()))
            .or_default() += 1;
    }

    pub fn gate_decision(&self, code: &str) {
        *lock(&self.gate_decisions)
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// One journal write reaching stable storage (sled flush + fdatasync).
    pub fn journal_sync(&self, seconds: f64) {
        lock(&self.journal_fsync).observe(seconds);
    }

    /// Replaces the per-state guest gauge.
    pub fn set_guests(&self, by_state: BTreeMap<String, u64>) {
        *lock(&self.guests) = by_state;
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "drover_reconcile_total",
            "Lane turns by result.",
            lock(&self.reconcile_total)
                .iter()
                .map(|(r, v)| (format!("{{result=\"{}\"}}", esc(r)), *v))
                .collect(),
        );
        counter(
            "drover_lane_retries_total",
            "Lane turns that ended in a transient failure and were retried with backoff.",
            vec![(
                String::new(),
                self.lane_retries_total.load(Ordering::Relaxed),
            )],
        );
        counter(
            "drover_pve_api_requests_total",
            "PVE API requests by method and HTTP status code.",
            lock(&self.pve_api_requests)
                .iter()
                .map(|((m, c), v)| (format!("{{method=\"{}\",code=\"{}\"}}", esc(m), esc(c)), *v))
                .collect(),
        );
        counter(
            "drover_gate_decisions_total",
            "Gate decisions on approvals by code (approved or the refusal code).",
            lock(&self.gate_decisions)
                .iter()
                .map(|(c, v)| (format!("{{code=\"{}\"}}", esc(c)), *v))
                .collect(),
        );
        let mut gauge = |name: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        gauge(
            "drover_lane_queue_depth",
            "Guests queued for a lane turn.",
            vec![(String::new(), self.lane_queue_depth.load(Ordering::Relaxed))],
        );
        gauge(
            "drover_lanes_active",
            "Lanes running a step now.",
            vec![(String::new(), self.lanes_active.load(Ordering::Relaxed))],
        );
        gauge(
            "drover_pending_approvals",
            "Destructive steps waiting for a signed approval.",
            vec![(
                String::new(),
                self.pending_approvals.load(Ordering::Relaxed),
            )],
        );
        gauge(
            "drover_guests",
            "Managed guests by sync state.",
            lock(&self.guests)
                .iter()
                .map(|(s, v)| (format!("{{state=\"{}\"}}", esc(s)), *v))
                .collect(),
        );
        gauge(
            "drover_hub_last_success_timestamp_seconds",
            "Unix time of the last successful desired-state fetch.",
            vec![(String::new(), self.hub_last_success.load(Ordering::Relaxed))],
        );
        gauge(
            "drover_journal_inflight_steps",
            "Journal step records not yet done (what recovery would re-attach to).",
            vec![(
                String::new(),
                self.journal_inflight_steps.load(Ordering::Relaxed),
            )],
        );
        gauge(
            "drover_build_info",
            "Always 1; the labels say which drover this is.",
            vec![(
                format!("{{version=\"{}\"}}", esc(env!("CARGO_PKG_VERSION"))),
                1,
            )],
        );
        let _ = writeln!(
            out,
            "# HELP drover_journal_fsync_seconds Time for a journal write to reach stable storage (flush and fdatasync).\n# TYPE drover_journal_fsync_seconds histogram"
        );
        lock(&self.journal_fsync).render(&mut out, "drover_journal_fsync_seconds", "");
        let _ = writeln!(
            out,
            "# HELP drover_reconcile_duration_seconds Duration of lane turns.\n# TYPE drover_reconcile_duration_seconds histogram"
        );
        lock(&self.reconcile_duration).render(&mut out, "drover_reconcile_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP drover_pve_task_duration_seconds Duration of PVE tasks the agent waited for, by worker type.\n# TYPE drover_pve_task_duration_seconds histogram"
        );
        for (t, h) in lock(&self.pve_task_duration).iter() {
            h.render(
                &mut out,
                "drover_pve_task_duration_seconds",
                &format!("type=\"{}\"", esc(t)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.reconcile("progressed", 0.2);
        m.reconcile("progressed", 3.0);
        m.pve_task("vzstart", 1.5);
        m.gate_decision("unknown_signer");
        m.pve_request("GET", "200");
        m.set_guests([("converged".to_string(), 3)].into());
        let t = m.render();
        assert!(t.contains("drover_reconcile_total{result=\"progressed\"} 2"));
        assert!(t.contains("drover_reconcile_duration_seconds_bucket{le=\"0.25\"} 1"));
        assert!(t.contains("drover_reconcile_duration_seconds_count 2"));
        assert!(
            t.contains("drover_pve_task_duration_seconds_bucket{type=\"vzstart\",le=\"2.5\"} 1")
        );
        assert!(t.contains("drover_gate_decisions_total{code=\"unknown_signer\"} 1"));
        assert!(t.contains("drover_guests{state=\"converged\"} 3"));
        assert!(t.contains("drover_pve_api_requests_total{method=\"GET\",code=\"200\"} 1"));
        m.journal_sync(0.0003);
        let t = m.render();
        assert!(t.contains("drover_journal_fsync_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(t.contains("drover_journal_fsync_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(t.contains("drover_build_info{version=\""));
    }
}
