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
    /// Signed jobs that ended, by (kind, outcome: done, failed, refused).
    jobs_total: Mutex<BTreeMap<(String, String), u64>>,
    /// Signed jobs accepted and not ended yet.
    pub jobs_running: AtomicU64,
    guests: Mutex<BTreeMap<String, u64>>,
    pub lane_queue_depth: AtomicU64,
    pub lanes_active: AtomicU64,
    pub lane_retries_total: AtomicU64,
    pub pending_approvals: AtomicU64,
    /// The desired-state source (`dir` or `hub`) and the Unix seconds of its last successful
    /// fetch (0: never).
    source_last_success: Mutex<(String, u64)>,
    pub journal_inflight_steps: AtomicU64,
    journal_fsync: Mutex<Histogram>,
    /// The revision of the desired state in use, once there is one.
    desired_revision: Mutex<Option<u64>>,
    trust: Mutex<Option<TrustGauges>>,
    /// Verify windows: phases entered, and how windows ended (`reconcile::verify`).
    verify_phases: Mutex<BTreeMap<String, u64>>,
    verify_outcomes: Mutex<BTreeMap<String, u64>>,
}

/// Every phase label of `drover_verify_phase_total`, shown from the start with 0.
pub const VERIFY_PHASES: &[&str] = &[
    "armed",
    "rebooting",
    "settling",
    "probing",
    "reverting",
    "committed",
    "reverted",
    "unverifiable",
    "conflict",
    "never_applied",
];

/// Every outcome label of `drover_verify_total` (`safety-nets.md` §6.2).
pub const VERIFY_OUTCOMES: &[&str] = &["committed", "reverted", "conflict", "unverifiable"];

/// What the metrics show of the trust document in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrustGauges {
    /// False when the document is invalid or missing (destructive steps are held).
    pub valid: bool,
    pub version: u64,
    /// `expires-at`, when the document has one.
    pub expires_at: Option<i64>,
}

/// Every result label of `drover_reconcile_total`, shown from the start with 0.
pub const RECONCILE_RESULTS: &[&str] = &[
    "converged",
    "progressed",
    "waiting",
    "transient_error",
    "terminal_error",
    "verifying",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_total: Mutex::default(),
            reconcile_duration: Mutex::default(),
            pve_task_duration: Mutex::default(),
            pve_api_requests: Mutex::default(),
            gate_decisions: Mutex::default(),
            jobs_total: Mutex::default(),
            jobs_running: AtomicU64::default(),
            guests: Mutex::default(),
            lane_queue_depth: AtomicU64::default(),
            lanes_active: AtomicU64::default(),
            lane_retries_total: AtomicU64::default(),
            pending_approvals: AtomicU64::default(),
            source_last_success: Mutex::new((String::new(), 0)),
            journal_inflight_steps: AtomicU64::default(),
            journal_fsync: Mutex::new(Histogram::with_buckets(FSYNC_BUCKETS)),
            desired_revision: Mutex::default(),
            trust: Mutex::default(),
            verify_phases: Mutex::default(),
            verify_outcomes: Mutex::default(),
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

    /// A signed job ended (`done`, `failed`) or was refused.
    pub fn job_ended(&self, kind: &str, outcome: &str) {
        *lock(&self.jobs_total)
            .entry((kind.to_string(), outcome.to_string()))
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

    /// A fetch of the desired state from a source of `kind` (`dir`, `hub`) succeeded.
    pub fn desired_fetched(&self, kind: &str, unix: u64) {
        *lock(&self.source_last_success) = (kind.to_string(), unix);
    }

    pub fn set_desired_revision(&self, revision: Option<u64>) {
        *lock(&self.desired_revision) = revision;
    }

    pub fn set_trust(&self, trust: TrustGauges) {
        *lock(&self.trust) = Some(trust);
    }

    /// A verify window entered `phase`; a terminal phase also counts as an outcome.
    pub fn verify_phase(&self, phase: &str) {
        *lock(&self.verify_phases)
            .entry(phase.to_string())
            .or_default() += 1;
        if VERIFY_OUTCOMES.contains(&phase) {
            *lock(&self.verify_outcomes)
                .entry(phase.to_string())
                .or_default() += 1;
        }
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
        let mut results = lock(&self.reconcile_total).clone();
        for r in RECONCILE_RESULTS {
            results.entry((*r).to_string()).or_default();
        }
        counter(
            "drover_reconcile_total",
            "Lane turns by result.",
            results
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
        counter(
            "drover_jobs_total",
            "Signed jobs that ended, by kind and outcome (done, failed, refused).",
            lock(&self.jobs_total)
                .iter()
                .map(|((k, o), v)| {
                    (
                        format!("{{kind=\"{}\",outcome=\"{}\"}}", esc(k), esc(o)),
                        *v,
                    )
                })
                .collect(),
        );
        let labelled = |m: &Mutex<BTreeMap<String, u64>>, all: &[&str], label: &str| {
            let mut rows = lock(m).clone();
            for l in all {
                rows.entry((*l).to_string()).or_default();
            }
            rows.iter()
                .map(|(k, v)| (format!("{{{label}=\"{}\"}}", esc(k)), *v))
                .collect::<Vec<_>>()
        };
        counter(
            "drover_verify_phase_total",
            "Verify windows of risky changes entering each phase.",
            labelled(&self.verify_phases, VERIFY_PHASES, "phase"),
        );
        counter(
            "drover_verify_total",
            "Verify windows by how they ended.",
            labelled(&self.verify_outcomes, VERIFY_OUTCOMES, "outcome"),
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
            "drover_jobs_running",
            "Signed jobs accepted and not ended yet.",
            vec![(String::new(), self.jobs_running.load(Ordering::Relaxed))],
        );
        gauge(
            "drover_pending_approvals",
            "Destructive steps waiting for a signed approval.",
            vec![(
                String::new(),
                self.pending_approvals.load(Ordering::Relaxed),
            )],
        );
        let mut guests = lock(&self.guests).clone();
        for state in crate::reconcile::board::GuestState::ALL {
            guests.entry(state.as_str().to_string()).or_default();
        }
        gauge(
            "drover_guests",
            "Managed guests by sync state.",
            guests
                .iter()
                .map(|(s, v)| (format!("{{state=\"{}\"}}", esc(s)), *v))
                .collect(),
        );
        let (source_kind, last_success) = lock(&self.source_last_success).clone();
        let source_label = if source_kind.is_empty() {
            String::new()
        } else {
            format!("{{source=\"{}\"}}", esc(&source_kind))
        };
        gauge(
            "drover_desired_last_success_timestamp_seconds",
            "Unix time of the last successful desired-state fetch (0: none yet), by source kind (dir or hub).",
            vec![(source_label, last_success)],
        );
        gauge(
            "drover_hub_last_success_timestamp_seconds",
            "Deprecated, same value as drover_desired_last_success_timestamp_seconds (whatever the source kind); kept for existing dashboards.",
            vec![(String::new(), last_success)],
        );
        if let Some(r) = *lock(&self.desired_revision) {
            gauge(
                "drover_desired_revision",
                "Revision of the desired-state document in use.",
                vec![(String::new(), r)],
            );
        }
        if let Some(t) = *lock(&self.trust) {
            gauge(
                "drover_trust_valid",
                "1 when the trust document in force is valid; 0 holds every destructive step.",
                vec![(String::new(), u64::from(t.valid))],
            );
            if t.valid {
                gauge(
                    "drover_trust_version",
                    "Version of the trust document in force.",
                    vec![(String::new(), t.version)],
                );
            }
            if let Some(e) = t.expires_at {
                gauge(
                    "drover_trust_expiry_timestamp_seconds",
                    "Unix time the trust document in force expires (expires-at).",
                    vec![(String::new(), u64::try_from(e).unwrap_or(0))],
                );
            }
        }
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
        render_process(&mut out);
        out
    }
}

/// Linux's USER_HZ, the unit of the CPU times in `/proc/<pid>/stat`: 100 on every
/// architecture Proxmox runs on (the kernel fixes it for userspace).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The standard `process_*` metrics every Prometheus client library exports, from `/proc`:
/// CPU time, resident and virtual memory, open and maximum file descriptors, start time.
/// A value that cannot be read is left out rather than reported as 0.
fn render_process(out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // proc(5): utime is field 14, stime 15, starttime 22, vsize 23; `fields[0]` is field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) / CLOCK_TICKS_PER_SECOND,
        );
    }
    if let Some(vsize) = field(23) {
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        });
    if let Some(kib) = rss_kib {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib * 1024.0,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let n = dir.count().saturating_sub(1);
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            n as f64,
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(m) = max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            m,
        );
    }
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(btime), Some(start)) = (boot_time, field(22)) {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            btime + start / CLOCK_TICKS_PER_SECOND,
        );
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
        m.job_ended("restore_backup", "done");
        m.job_ended("snapshot", "refused");
        m.jobs_running.store(1, Ordering::Relaxed);
        let t = m.render();
        assert!(t.contains("drover_jobs_total{kind=\"restore_backup\",outcome=\"done\"} 1"));
        assert!(t.contains("drover_jobs_total{kind=\"snapshot\",outcome=\"refused\"} 1"));
        assert!(t.contains("drover_jobs_running 1"));
        m.journal_sync(0.0003);
        let t = m.render();
        assert!(t.contains("drover_journal_fsync_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(t.contains("drover_journal_fsync_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(t.contains("drover_build_info{version=\""));
        assert!(t.contains("drover_verify_total{outcome=\"reverted\"} 0"));
        m.verify_phase("settling");
        m.verify_phase("reverted");
        let t = m.render();
        assert!(t.contains("drover_verify_phase_total{phase=\"settling\"} 1"));
        assert!(t.contains("drover_verify_total{outcome=\"reverted\"} 1"));
        assert!(t.contains("drover_verify_total{outcome=\"committed\"} 0"));
    }

    fn populated() -> Metrics {
        let m = Metrics::default();
        m.reconcile("progressed", 0.2);
        m.pve_task("vzcreate", 12.0);
        m.pve_request("POST", "200");
        m.gate_decision("approved");
        m.job_ended("backup", "done");
        m.journal_sync(0.001);
        m.set_guests([("converged".to_string(), 2)].into());
        m.desired_fetched("dir", 1_800_000_000);
        m.set_desired_revision(Some(7));
        m.set_trust(TrustGauges {
            valid: true,
            version: 3,
            expires_at: Some(1_900_000_000),
        });
        m
    }

    /// Rates need every series from the start: a state or result nobody reached yet is 0,
    /// not missing.
    #[test]
    fn every_state_and_result_has_a_series_from_the_start() {
        let t = Metrics::default().render();
        for state in crate::reconcile::board::GuestState::ALL {
            let line = format!("drover_guests{{state=\"{}\"}} 0\n", state.as_str());
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        for r in RECONCILE_RESULTS {
            let line = format!("drover_reconcile_total{{result=\"{r}\"}} 0\n");
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        // Nothing known yet: no revision, no trust gauges, last success 0 without a label.
        assert!(!t.contains("drover_desired_revision "), "{t}");
        assert!(!t.contains("drover_trust_version"), "{t}");
        assert!(
            t.contains("drover_desired_last_success_timestamp_seconds 0\n"),
            "{t}"
        );
    }

    #[test]
    fn revision_trust_source_and_process_gauges() {
        let t = populated().render();
        for line in [
            "drover_desired_revision 7\n",
            "drover_trust_valid 1\n",
            "drover_trust_version 3\n",
            "drover_trust_expiry_timestamp_seconds 1900000000\n",
            "drover_desired_last_success_timestamp_seconds{source=\"dir\"} 1800000000\n",
            // The old name stays for dashboards, with the same value whatever the source.
            "drover_hub_last_success_timestamp_seconds 1800000000\n",
            "drover_guests{state=\"converged\"} 2\n",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        let value = |name: &str| -> f64 {
            t.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{t}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = crate::clock::unix_now() as f64;
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );

        let invalid = Metrics::default();
        invalid.set_trust(TrustGauges::default());
        let t = invalid.render();
        assert!(t.contains("drover_trust_valid 0\n"), "{t}");
        assert!(!t.contains("drover_trust_version"), "{t}");
    }

    /// Prometheus' own linter over the whole exposition (`promtool check metrics`: syntax,
    /// HELP and TYPE, naming conventions such as `_total` counters and base units).
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            assert!(
                std::env::var_os("DROVER_REQUIRE_TOOLS").is_none(),
                "promtool is not installed and DROVER_REQUIRE_TOOLS is set (sh .ci/promtool-setup)"
            );
            println!("SKIPPED: promtool is not installed");
            return;
        };
        let text = populated().render();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
