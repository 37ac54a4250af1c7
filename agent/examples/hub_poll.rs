//! Hub poll benchmark against a real nginx over TLS on loopback (needs nginx: .ci/nginx-setup).
//!
//! 1. One agent, nothing changed: the cost of a poll that is one conditional GET answered 304
//!    (kept-alive connection), median and p99 over many polls. Also a full fetch of a signed
//!    document (download, SSHSIG verify by the gate, parse) for comparison.
//! 2. 100 agents (100 separate clients and connections) polling one nginx at 1 s intervals for
//!    20 s: success rate, latency p50/p99, and the CPU time nginx and the agents used.
//!
//! Run: `cargo run --release -p drover --example hub_poll [-- AGENTS SECONDS]`
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover::desired::hub::{HubConfig, HubFetch, HubSource, HubTls};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// utime + stime of a process, in seconds (from /proc).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let Some(hub) = support::hub_dir::HubDir::start("pve1") else {
        eprintln!("nginx is not installed (run .ci/nginx-setup)");
        std::process::exit(2);
    };
    // A realistic document: 40 guests.
    let mut doc = String::from("revision = 42\n");
    for i in 0..40 {
        doc.push_str(&format!(
            "\n[[guest]]\nvmid = {}\nensure = \"running\"\nhostname = \"ct{i}\"\ncores = 2\nmemory = 1024\n",
            200 + i
        ));
    }
    let doc_path = hub.put("desired.toml", &doc);
    hub.sign(&doc_path, "agent.example.invalid");
    let trust = gate::TrustStore::parse(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/gate/trust_v1.txt"),
        )
        .unwrap(),
    )
    .unwrap();
    let config = || {
        let mut c = HubConfig::new(hub.url(), "pve1");
        c.tls = HubTls::CaFile(hub.certs.ca_pem.clone());
        c
    };

    // 1. Single agent, unchanged document.
    let src = HubSource::new(config()).unwrap();
    match src.fetch(None, Some(&trust), now()).await.unwrap() {
        HubFetch::Fresh(f) => assert_eq!(f.doc.revision, 42),
        HubFetch::NotModified => panic!("first poll must download"),
    }
    let mut lat = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        let r = src.fetch(Some(42), Some(&trust), now()).await.unwrap();
        lat.push(t.elapsed());
        assert!(matches!(r, HubFetch::NotModified));
    }
    lat.sort();
    println!(
        "unchanged poll (conditional GET -> 304, kept-alive TLS): median {} p99 {} (n={})",
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99)),
        lat.len()
    );
    let mut full = Vec::new();
    for _ in 0..300 {
        src.forget_etags();
        let t = Instant::now();
        let r = src.fetch(Some(42), Some(&trust), now()).await.unwrap();
        full.push(t.elapsed());
        assert!(matches!(r, HubFetch::Fresh(_)));
    }
    full.sort();
    println!(
        "changed poll ({} B document + .sig, gate verify, parse): median {} p99 {} (n={})",
        doc.len(),
        us(pct(&full, 0.5)),
        us(pct(&full, 0.99)),
        full.len()
    );

    // 2. Many agents, one hub.
    let nginx_pid = hub.nginx.as_ref().unwrap().pid().to_string();
    let nginx_cpu0 = cpu_seconds(&nginx_pid);
    let self_cpu0 = cpu_seconds("self");
    let trust = Arc::new(trust);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..agents {
        let src = HubSource::new(config()).unwrap();
        let trust = trust.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the fleet over the first second, like jittered timers.
            let offset = Duration::from_millis((i as u64 * 1000) / agents as u64);
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut ok, mut failed, mut lat) = (0usize, 0usize, Vec::new());
            let mut accepted = None;
            while Instant::now() < deadline {
                tick.tick().await;
                let t = Instant::now();
                match src.fetch(accepted, Some(&trust), now()).await {
                    Ok(HubFetch::Fresh(f)) => {
                        accepted = Some(f.doc.revision);
                        ok += 1;
                    }
                    Ok(HubFetch::NotModified) => ok += 1,
                    Err(e) => {
                        eprintln!("agent {i}: {e}");
                        failed += 1;
                    }
                }
                lat.push(t.elapsed());
            }
            (ok, failed, lat)
        }));
    }
    let (mut ok, mut failed, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (o, f, l) = t.await.unwrap();
        ok += o;
        failed += f;
        lat.extend(l);
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort();
    let nginx_cpu = cpu_seconds(&nginx_pid) - nginx_cpu0;
    let self_cpu = cpu_seconds("self") - self_cpu0;
    println!(
        "{agents} agents x 1 s for {seconds} s: {} polls, {ok} ok, {failed} failed ({:.2} % success); latency p50 {} p99 {} max {}",
        ok + failed,
        100.0 * ok as f64 / (ok + failed).max(1) as f64,
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99)),
        us(*lat.last().unwrap()),
    );
    println!(
        "cpu over {wall:.1} s: nginx {:.2} s ({:.1} % of one core), {agents} agents in this process {:.2} s ({:.1} % of one core, {:.0} µs per poll incl. first downloads)",
        nginx_cpu,
        100.0 * nginx_cpu / wall,
        self_cpu,
        100.0 * self_cpu / wall,
        1e6 * self_cpu / (ok + failed).max(1) as f64,
    );
}
