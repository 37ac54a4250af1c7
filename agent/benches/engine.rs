//! Engine figures against the in-process simulator, in one run (ratios are what matter on a
//! shared 2-core machine):
//! 1. a no-change pass over 1,000 guests: time and PVE API calls (goal ≤ 1 s, ≤ 1,002 calls);
//! 2. converging 200 guests that need a start, 100 ms tasks, max_parallel = 3
//!    (goal ≤ 1.15 × the ideal ⌈200/3⌉ × 100 ms);
//! 3. peak RSS of `drover run` over 100 passes of 200 guests (goal < 30 MiB) — only with
//!    `--rss` (it takes ~100 s).
//!
//! Run: `cargo bench -p drover --bench engine [-- --rss]`.
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
    let sim = pve_sim::start(pve_sim::SimConfig {
        task_duration: Duration::from_millis(task_ms),
        guests: (0..n).map(|i| seed(1000 + i, running)).collect(),
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

    if !production_only {
        classic().await;
    }

    // 2b. The same converge at the production poll schedule (adaptive, no test interval), and
    // longer tasks; CPU time of the whole process (agent and in-process simulator) against
    // wall-clock. `--production-only` skips everything else.
    for (n, task_ms, rounds) in [(200u32, 100u64, 3usize), (60, 1500, 1)] {
        let mut ratios = Vec::new();
        let mut cpu = Vec::new();
        let mut per_step = Vec::new();
        for _ in 0..rounds {
            let s = setup(n, false, task_ms, 10).await;
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
            println!(
                "  converge {n} × {task_ms} ms, production polling: wall {took:.2} s ({r:?}), ideal {ideal:.2} s, ratio {:.3}, cpu {used:.2} s ({:.1} % of wall), {:.1} API requests per started guest (incl. the two full reads)",
                took / ideal,
                100.0 * used / took,
                requests / n as f64
            );
            ratios.push(took / ideal);
            cpu.push(100.0 * used / took);
            per_step.push(requests / n as f64);
        }
        println!(
            "converge {n} guests (start, {task_ms} ms tasks, max_parallel 3, production polling): median ratio {:.3} × ideal wall-clock, process CPU {:.1} % of wall, {:.1} requests per guest",
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
