//! Engine figures against the in-process simulator, in one run (ratios are what matter on a
//! shared 2-core machine):
//! 1. a no-change pass over 1,000 guests: time and PVE API calls (goal ≤ 1 s, ≤ 1,002 calls);
//! 2. converging 200 guests that need a start, 100 ms tasks, max_parallel = 3
//!    (goal ≤ 1.15 × the ideal ⌈200/3⌉ × 100 ms);
//! 3. peak RSS of `drover run` over 100 passes of 200 guests (goal < 30 MiB) — only with
//!    `--rss` (it takes ~100 s).
//!
//! 4. `--pveproxy`: against the simulator shaped like pveproxy (3 workers, 10 ms per request):
//!    a no-change `run --once` over 1,000 guests and the 200 × 100 ms converge at the
//!    production poll schedule, next to the ideal the model implies;
//! 5. `--peer`: Drover against the proxmoxer peer (`benches/peer/`, 1 s task polling, 3 in
//!    parallel) on 50 × 100 ms tasks (goal Drover / peer ≤ 0.25);
//! 6. `--rss-scale`: the daemon's peak RSS at 1,000 and 5,000 guests (release binary).
//!
//! Run: `cargo bench -p drover --bench engine [-- --rss | --production-only | --short | --pveproxy |
//! --peer | --rss-scale]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drover::reconcile::lanes::BackoffPolicy;
use drover::reconcile::pve::WaitPolicy;
use drover::service::config::Config;
use drover::service::daemon::{self, RunOptions};
use drover::service::systemd::Systemd;

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

fn seed(vmid: u32, running: bool) -> pve_sim::SeedGuest {
    pve_sim::SeedGuest {
        vmid,
        hostname: format!("ct-{vmid}"),
        running,
        cores: 1,
        memory: 256,
        swap: 0,
        rootfs_gib: 4,
        net0: Some("name=eth0,bridge=vmbr0,ip=dhcp".into()),
        ..pve_sim::SeedGuest::default()
    }
}

fn doc(n: u32) -> String {
    let mut d = String::from("revision = 1\n");
    for i in 0..n {
        let v = 1000 + i;
        d.push_str(&format!(
            "[[guest]]\nvmid = {v}\nensure = \"running\"\nhostname = \"ct-{v}\"\ntemplate = \"{TEMPLATE}\"\ncores = 1\nmemory = 256\nswap = 0\nrootfs = \"local-lvm:4\"\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\n"
        ));
    }
    d
}

struct Setup {
    sim: pve_sim::RunningSim,
    _dir: tempfile::TempDir,
    config: Config,
    config_path: std::path::PathBuf,
}

async fn setup(n: u32, running: bool, task_ms: u64, poll_ms: u64) -> Setup {
    setup_model(n, running, task_ms, poll_ms, None).await
}

/// `setup` against a simulator shaped like pveproxy (`model`), or the ideal one (None).
async fn setup_model(
    n: u32,
    running: bool,
    task_ms: u64,
    poll_ms: u64,
    model: Option<pve_sim::PveProxyModel>,
) -> Setup {
    let sim = pve_sim::start(pve_sim::SimConfig {
        task_duration: Duration::from_millis(task_ms),
        guests: (0..n).map(|i| seed(1000 + i, running)).collect(),
        pveproxy: model,
        ..pve_sim::SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("desired")).unwrap();
    std::fs::write(root.join("desired/desired.toml"), doc(n)).unwrap();
    std::fs::write(root.join("pve-token"), pve_sim::DEFAULT_TOKEN_SECRET).unwrap();
    std::fs::write(
        root.join("trust"),
        include_str!("../../testdata/demo/trust"),
    )
    .unwrap();
    let text = format!(
        "host = \"pve1\"\nfleet = \"demo\"\nstate_dir = {:?}\ninterval = \"1s\"\n[proxmox]\nurl = {:?}\ntoken_id = {:?}\ntoken_secret_file = {:?}\nfingerprint = {:?}\nmax_parallel = 3\ntask_poll_interval = \"{poll_ms}ms\"\n[source]\npath = {:?}\n[trust]\nfile = {:?}\n[control]\nsocket = {:?}\n",
        root.join("state"),
        sim.base_url(),
        pve_sim::DEFAULT_TOKEN_ID,
        root.join("pve-token"),
        sim.fingerprint(),
        root.join("desired"),
        root.join("trust"),
        root.join("drover.sock"),
    );
    let config_path = root.join("drover.toml");
    std::fs::write(&config_path, text).unwrap();
    let config = Config::load(&config_path).unwrap();
    // The seeded guests stand for guests Drover already manages: this benchmark measures
    // convergence, not adoption (which needs an operator's signature per guest), so setup
    // records them as adopted, as a signed adoption would have.
    {
        let store = drover::store::Store::open(&config.state_dir).unwrap();
        for i in 0..n {
            store.adopted(1000 + i, "", "bench-setup").unwrap();
        }
    }
    Setup {
        sim,
        _dir: dir,
        config,
        config_path,
    }
}

fn once(poll: Duration) -> RunOptions {
    RunOptions {
        once: true,
        waits: WaitPolicy {
            poll_interval: Some(poll),
        },
        backoff: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        once_timeout: Duration::from_secs(600),
        step_deadline: Duration::from_secs(600),
        progress: false,
    }
}

/// User + system CPU seconds of this process so far (/proc/self/stat, clock ticks of 1/100 s).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; index 0 here is field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rss = std::env::args().any(|a| a == "--rss");
    let production_only = std::env::args().any(|a| a == "--production-only");
    let only = |flag: &str| std::env::args().any(|a| a == flag);

    // Single sections: `--peer` (Drover against the proxmoxer peer), `--pveproxy` (against
    // the simulator shaped like pveproxy), `--rss-scale` (the daemon's RSS at 1,000 and 5,000
    // guests; needs `cargo build --release -p drover`).
    // `--hold N`: a converged host of N guests in the in-process simulator, its drover.toml
    // printed, kept for 10 minutes: for profiling the daemon by hand (heaptrack, perf).
    if let Some(n) = std::env::args()
        .skip_while(|a| a != "--hold")
        .nth(1)
        .and_then(|n| n.parse::<u32>().ok())
    {
        let s = setup(n, true, 10, 10).await;
        println!("config {}", s.config_path.display());
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    if only("--peer") || only("--pveproxy") || only("--rss-scale") {
        if only("--pveproxy") {
            pveproxy().await;
        }
        if only("--peer") {
            peer().await;
        }
        if only("--rss-scale") {
            rss_scale().await;
        }
        return;
    }

    if !production_only && !only("--short") {
        classic().await;
    }

    // 2b. The same converge at the production poll schedule (adaptive, no test interval), and
    // longer tasks; CPU time of the whole process (agent and in-process simulator) against
    // wall-clock; the last row with 10,000 step records kept in the journal. Requests per
    // step: everything but the two full reads (boot and the final verification), per guest.
    // `--production-only` skips everything else.
    // `--short`: only the two 200 × 100 ms rows (a quick A/B of the per-step overhead).
    let rows: &[(u32, u64, usize, u32)] = if only("--short") {
        &[(200, 100, 3, 0), (200, 100, 3, 10_000)]
    } else {
        &[
            (200, 100, 3, 0),
            (60, 1500, 1, 0),
            (60, 1000, 1, 0),
            (15, 10_000, 1, 0),
            (200, 100, 3, 10_000),
        ]
    };
    for &(n, task_ms, rounds, kept) in rows {
        let mut ratios = Vec::new();
        let mut cpu = Vec::new();
        let mut per_step = Vec::new();
        for _ in 0..rounds {
            let s = setup(n, false, task_ms, 10).await;
            if kept > 0 {
                keep_records(&s, kept);
            }
            let requests_before = s.sim.request_count();
            let cpu_before = process_cpu_seconds();
            let t = Instant::now();
            let mut opts = once(Duration::from_millis(10));
            opts.waits = WaitPolicy::production();
            let r = daemon::run(s.config.clone(), opts, Systemd::default())
                .await
                .unwrap();
            let took = t.elapsed().as_secs_f64();
            let used = process_cpu_seconds() - cpu_before;
            let ideal = (n as f64 / 3.0).ceil() * task_ms as f64 / 1000.0;
            let requests = (s.sim.request_count() - requests_before) as f64;
            let step = (requests - 2.0 * f64::from(n + 2)) / f64::from(n);
            println!(
                "  converge {n} × {task_ms} ms, production polling, {kept} records kept: wall {took:.2} s ({r:?}), ideal {ideal:.2} s, ratio {:.3}, cpu {used:.2} s ({:.1} % of wall), {:.1} API requests per started guest incl. the two full reads, {step:.2} per step",
                took / ideal,
                100.0 * used / took,
                requests / n as f64
            );
            ratios.push(took / ideal);
            cpu.push(100.0 * used / took);
            per_step.push(step);
        }
        println!(
            "converge {n} guests (start, {task_ms} ms tasks, max_parallel 3, production polling, {kept} step records kept): median ratio {:.3} × ideal wall-clock, process CPU {:.1} % of wall, {:.2} requests per step",
            median(ratios),
            median(cpu),
            median(per_step)
        );
    }

    // 3. Peak RSS of `drover run` over 100 passes of 200 guests.
    if rss {
        let s = setup(200, true, 10, 10).await;
        let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/drover");
        let mut child = std::process::Command::new(&exe)
            .arg("--config")
            .arg(&s.config_path)
            .arg("run")
            .env("DROVER_LOG", "warn")
            .spawn()
            .expect("build the release binary first: cargo build --release -p drover");
        tokio::time::sleep(Duration::from_secs(102)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?")
            .to_string();
        let _ = child.kill();
        let _ = child.wait();
        println!("drover run, ~100 passes of 200 guests: peak RSS {hwm} (goal < 30 MiB)");
    }
}

/// Fills the journal with `n` closed step records of guests outside the document (20 per
/// guest, so the automatic compaction, which keeps 20 per guest and 10,000 in all, keeps
/// them): what a host that has run for a long time carries.
fn keep_records(s: &Setup, n: u32) {
    let store = drover::store::Store::open(&s.config.state_dir).unwrap();
    for i in 0..n {
        let step = drover::model::step::Step {
            vmid: 50_000 + i / 20,
            kind: drover::model::step::StepKind::Start,
            params: Default::default(),
            changes: Vec::new(),
        };
        let id = store
            .intent(&step, &gate::Classification::Benign, None, None)
            .unwrap();
        store.done(&id, drover::store::StepOutcome::Ok).unwrap();
    }
}

/// The figures measured with the test-only 10 ms poll interval (kept for comparison).
async fn classic() {
    // 1. No-change pass over 1,000 converged guests.
    let s = setup(1000, true, 10, 10).await;
    let mut times = Vec::new();
    let mut calls = Vec::new();
    // The first run creates the journal and may settle; measure the following ones.
    daemon::run(
        s.config.clone(),
        once(Duration::from_millis(10)),
        Systemd::default(),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let engine_calls_before = s.sim.request_count();
        let t = Instant::now();
        let store = drover::store::Store::open_read_only(&s.config.state_dir).unwrap();
        let pve = daemon::pve_from_config(&s.config, WaitPolicy::production()).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let engine = drover::reconcile::engine::Engine::new(
            drover::reconcile::engine::EngineSettings {
                host: "pve1".into(),
                fleet: "demo".into(),
                step_deadline: Duration::from_secs(60),
            },
            pve,
            store,
            drover::approval::requests::Approvals::new(&s.config.state_dir, None),
            drover::approval::trust::load_file(&s.config.trust.file),
            drover::reconcile::lanes::Lanes::new(3, BackoffPolicy::default()),
            rx,
        );
        daemon::refresh_desired(
            &engine,
            &drover::desired::source::Source::from_config(&s.config).unwrap(),
        )
        .await;
        let plan = engine.pass().await.unwrap();
        assert!(plan.plan.is_empty(), "the host should be converged");
        times.push(t.elapsed().as_secs_f64());
        calls.push((s.sim.request_count() - engine_calls_before) as f64);
    }
    println!(
        "no-change pass, 1000 guests: median {:.3} s, {} API calls (goal ≤ 1 s, ≤ 1002 calls)",
        median(times),
        median(calls)
    );
    drop(s);

    // 2. Converge 200 stopped guests with 100 ms tasks at max_parallel = 3.
    let mut ratios = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..3 {
        let s = setup(200, false, 100, 10).await;
        let t = Instant::now();
        let r = daemon::run(
            s.config.clone(),
            once(Duration::from_millis(10)),
            Systemd::default(),
        )
        .await
        .unwrap();
        let took = t.elapsed().as_secs_f64();
        let ideal = (200f64 / 3.0).ceil() * 0.1;
        // The execution window: first start sent → last start's task done (excludes the agent's
        // boot, the first full read and the final verification pass).
        let m = s.sim.mutations();
        let first = m.iter().map(|m| m.time_ms).min().unwrap_or(0);
        let last = m.iter().map(|m| m.time_ms).max().unwrap_or(0);
        let window = (last - first) as f64 / 1000.0 + 0.1;
        println!(
            "  converge 200: wall {took:.2} s ({r:?}), execution window {window:.2} s, ideal {ideal:.2} s, ratio wall {:.3}, window {:.3}",
            took / ideal,
            window / ideal
        );
        ratios.push(took / ideal);
        windows.push(window / ideal);
    }
    println!(
        "converge 200 guests (start, 100 ms tasks, max_parallel 3): median ratio {:.3} × ideal wall-clock incl. boot and final check, {:.3} × ideal execution window (goal ≤ 1.15)",
        median(ratios),
        median(windows)
    );
}

/// Runs `drover run --once` at the production poll schedule; returns (seconds, requests, result).
async fn converge_production(s: &Setup) -> (f64, u64, daemon::RunResult) {
    // A previous run's aborted tasks drop their handles on the journal (its process lock)
    // shortly after it returned; a process running `drover run --once` again would have exited.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests_before = s.sim.request_count();
    let t = Instant::now();
    let mut opts = once(Duration::from_millis(10));
    opts.waits = WaitPolicy::production();
    let r = daemon::run(s.config.clone(), opts, Systemd::default())
        .await
        .unwrap();
    (
        t.elapsed().as_secs_f64(),
        s.sim.request_count() - requests_before,
        r,
    )
}

/// Section 4, against the simulator shaped like pveproxy (3 workers, 10 ms per request, 5 s
/// keep-alive): a no-change `run --once` over 1,000 guests and the 200 × 100 ms converge at the
/// production poll schedule, each next to the ideal that model implies.
async fn pveproxy() {
    let model = pve_sim::PveProxyModel::pveproxy();
    let ms = model.service_time.as_millis();
    // No-change: the host read once, N + 2 requests, 3 workers at a time.
    let n = 1000u32;
    let s = setup_model(n, true, 10, 10, Some(model)).await;
    converge_production(&s).await; // journals the document
    let mut times = Vec::new();
    let mut reqs = Vec::new();
    for _ in 0..3 {
        let (took, requests, r) = converge_production(&s).await;
        println!(
            "  no-change run --once, {n} guests, pveproxy model: {took:.2} s, {requests} requests ({r:?})"
        );
        times.push(took);
        reqs.push(requests as f64);
    }
    let ideal = model.ideal(u64::from(n) + 2).as_secs_f64();
    let t = median(times);
    println!(
        "no-change run --once over {n} guests against pveproxy ({} workers, {ms} ms per request): median {t:.2} s, {} requests; ideal {ideal:.2} s ({} requests / {} workers × {ms} ms); ratio {:.3}",
        model.workers,
        median(reqs),
        n + 2,
        model.workers,
        t / ideal
    );
    drop(s);

    // Converge: 200 stopped guests, 100 ms tasks, max_parallel 3.
    let (n, task_ms) = (200u32, 100u64);
    let mut ratios = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..3 {
        let s = setup_model(n, false, task_ms, 10, Some(model)).await;
        let (took, requests, r) = converge_production(&s).await;
        // The least this model allows: two full reads (boot, verification) through 3 workers,
        // and per guest on its lane the start call, the task, and one status poll that sees
        // it stopped (3 lanes side by side).
        let read = model.ideal(u64::from(n) + 2).as_secs_f64();
        let per_guest = (task_ms as f64 + 2.0 * ms as f64) / 1000.0;
        let ideal = 2.0 * read + (f64::from(n) / 3.0).ceil() * per_guest;
        let task_ideal = (f64::from(n) / 3.0).ceil() * task_ms as f64 / 1000.0;
        println!(
            "  converge {n} × {task_ms} ms, pveproxy model, production polling: {took:.2} s ({r:?}), {requests} requests ({:.1} per guest), model ideal {ideal:.2} s (ratio {:.3}), task-only ideal {task_ideal:.2} s (ratio {:.3})",
            requests as f64 / f64::from(n),
            took / ideal,
            took / task_ideal
        );
        ratios.push(took / ideal);
        lines.push(took / task_ideal);
    }
    println!(
        "converge {n} × {task_ms} ms against pveproxy ({} workers, {ms} ms per request), production polling: median ratio {:.3} × the model's ideal, {:.3} × the task-only ideal",
        model.workers,
        median(ratios),
        median(lines)
    );
}

/// Section 5, Drover against the peer (agent/benches/peer: proxmoxer, bpg-style 1 s task polling, 3
/// in parallel) on 50 guests that need a start, 100 ms tasks, the same simulator setup for
/// both, alternating in one run. Goal: Drover / peer ≤ 0.25.
async fn peer() {
    let (n, task_ms, rounds) = (50u32, 100u64, 3usize);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/run.sh");
    let mut ratios = Vec::new();
    let mut drovers = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..rounds {
        let s = setup(n, false, task_ms, 10).await;
        let (drover, drover_requests, r) = converge_production(&s).await;
        assert!(
            (0..n).all(|i| s.sim.guest(1000 + i).is_some_and(|g| g.running)),
            "drover converged: {r:?}"
        );
        drop(s);

        let s = setup(n, false, task_ms, 10).await;
        let ca = s._dir.path().join("sim-ca.pem");
        std::fs::write(&ca, s.sim.cert_pem()).unwrap();
        let before = s.sim.request_count();
        let out = tokio::process::Command::new(&script)
            .arg(s.sim.addr().port().to_string())
            .arg(&ca)
            .arg("pve1")
            .arg(pve_sim::DEFAULT_TOKEN_ID)
            .arg(pve_sim::DEFAULT_TOKEN_SECRET)
            .arg("3")
            .output()
            .await
            .expect("running agent/benches/peer/run.sh");
        assert!(
            out.status.success(),
            "peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
        let peer = report["seconds"].as_f64().unwrap();
        assert!(
            (0..n).all(|i| s.sim.guest(1000 + i).is_some_and(|g| g.running))
                && report["failed"] == 0,
            "the peer converged: {report}"
        );
        let peer_requests = s.sim.request_count() - before;
        println!(
            "  {n} × {task_ms} ms: drover {drover:.2} s ({drover_requests} requests), peer {peer:.2} s ({peer_requests} requests), drover / peer {:.3}",
            drover / peer
        );
        ratios.push(drover / peer);
        drovers.push(drover);
        peers.push(peer);
    }
    println!(
        "drover vs the proxmoxer peer (1 s polling, 3 in parallel), {n} × {task_ms} ms tasks: drover median {:.2} s, peer median {:.2} s, median ratio drover / peer {:.3} (goal ≤ 0.25)",
        median(drovers),
        median(peers),
        median(ratios)
    );
}

/// Section 6, peak RSS of the `drover run` daemon (the release binary) over converged hosts of 1,000
/// and 5,000 guests, after 30 s of passes (interval 1 s).
/// The `Environment=` lines of `deploy/drover.service`: the daemon is measured with the
/// environment the unit gives it (`MALLOC_ARENA_MAX`).
fn unit_environment() -> Vec<(String, String)> {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/drover.service");
    std::fs::read_to_string(unit)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn rss_scale() {
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/drover");
    let env = unit_environment();
    println!("the unit's environment: {env:?}");
    for n in [1000u32, 5000] {
        let s = setup(n, true, 10, 10).await;
        let mut child = std::process::Command::new(&exe)
            .arg("--config")
            .arg(&s.config_path)
            .arg("run")
            .env("DROVER_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .expect("build the release binary first: cargo build --release -p drover");
        let before = s.sim.request_count();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        let passes = (s.sim.request_count() - before) as f64 / f64::from(n + 2);
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "drover run, {n} guests, 30 s (~{passes:.0} full reads): peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB (goal ≤ {} MiB)",
            field("VmHWM:"),
            field("VmRSS:"),
            if n == 1000 { 30 } else { 60 }
        );
    }
}
