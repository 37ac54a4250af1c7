//! Figures for the hub team's tools (needs nginx and ssh-keygen: .ci/nginx-setup).
//!
//! 1. `drover fleet publish` over a tree of 1,000 hosts (40 guests each), with the real
//!    `ssh-keygen -Y sign` and the gate checking every new signature: first publish (all
//!    signed), a publish with nothing changed, a dry run with every host changed, and a
//!    publish of 10 changed hosts. Medians of ROUNDS.
//! 2. What one agent's poll costs the hub on the wire: a TCP proxy in front of nginx counts
//!    every byte (TLS records included) of polls on a kept-alive connection. A no-change poll
//!    is the daemon's two conditional GETs (`desired.toml` and `approvals/index.json`, both
//!    answered `304`); the report `PUT` (WebDAV) is counted separately.
//!
//! Run: `cargo run --release -p drover --example fleet_bench [-- HOSTS ROUNDS]`
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover::desired::hub::{HubConfig, HubSource, HubTls};
use drover::fleet::publish::{self, Action, Options};
use drover::fleet::tree::Tree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn doc(revision: u64, host: usize) -> String {
    let mut d = format!("revision = {revision}\n");
    for i in 0..40 {
        d.push_str(&format!(
            "\n[[guest]]\nvmid = {}\nensure = \"running\"\nhostname = \"h{host}-ct{i}\"\ncores = 2\nmemory = 1024\nnet0 = \"name=eth0,bridge=vmbr0,ip=dhcp\"\n",
            200 + i
        ));
    }
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn publish_figures(hosts: usize, rounds: usize) {
    let trust = gate::TrustStore::parse(
        &std::fs::read_to_string(repo().join("testdata/gate/trust_v1.txt")).unwrap(),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let key = scratch.path().join("hub_key");
    std::fs::copy(repo().join("testdata/gate/TEST_hub_ed25519"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let opts = |dry_run| Options {
        key: key.clone(),
        trust: trust.clone(),
        dry_run,
        now: now(),
    };
    let (mut first, mut unchanged, mut dry, mut ten) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0usize;
    for _ in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        for h in 0..hosts {
            let d = dir.path().join(format!("hosts/pve{h:04}"));
            std::fs::create_dir_all(&d).unwrap();
            let text = doc(1, h);
            bytes = text.len();
            std::fs::write(d.join("desired.toml"), text).unwrap();
        }
        let tree = Tree::open(dir.path()).unwrap();
        let t = Instant::now();
        let out = publish::publish(&tree, &opts(false)).unwrap();
        first.push(t.elapsed());
        assert_eq!(out.count(Action::Sign), hosts, "{:?}", out.hosts.first());
        let t = Instant::now();
        let out = publish::publish(&tree, &opts(false)).unwrap();
        unchanged.push(t.elapsed());
        assert_eq!(out.count(Action::Unchanged), hosts);
        for h in 0..hosts {
            std::fs::write(
                dir.path().join(format!("hosts/pve{h:04}/desired.toml")),
                doc(2, h),
            )
            .unwrap();
        }
        let t = Instant::now();
        let out = publish::publish(&tree, &opts(true)).unwrap();
        dry.push(t.elapsed());
        assert_eq!(out.count(Action::Sign), hosts);
        // Back to revision 1's records for all but 10: publish revision 2 everywhere first.
        publish::publish(&tree, &opts(false)).unwrap();
        for h in 0..10.min(hosts) {
            std::fs::write(
                dir.path().join(format!("hosts/pve{h:04}/desired.toml")),
                doc(3, h),
            )
            .unwrap();
        }
        let t = Instant::now();
        let out = publish::publish(&tree, &opts(false)).unwrap();
        ten.push(t.elapsed());
        assert_eq!(out.count(Action::Sign), 10.min(hosts));
    }
    println!("publish, {hosts} hosts x 40 guests ({bytes} B per document), median of {rounds}:");
    println!(
        "  first publish (validate, one ssh-keygen run signing {hosts} files, verify each, write .sig + record + index): {}",
        secs(median(first))
    );
    println!(
        "  nothing changed (validate, verify {hosts} existing signatures, write nothing): {}",
        secs(median(unchanged))
    );
    println!("  --dry-run, every host changed: {}", secs(median(dry)));
    println!("  10 hosts changed: {}", secs(median(ten)));
}

/// Counts bytes both ways between clients and `upstream`.
async fn counting_proxy(upstream: u16, up: Arc<AtomicU64>, down: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                .await
                .unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (up, down) = (up.clone(), down.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    up.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    down.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    port
}

async fn poll_figures(polls: u64) {
    let token = "bench-token";
    let Some(hub) = support::hub_dir::HubDir::start_with("pve1", &[("pve1", token)]) else {
        eprintln!("nginx is not installed (run .ci/nginx-setup)");
        std::process::exit(2);
    };
    let p = hub.put("desired.toml", &doc(1, 1));
    hub.sign(&p, "agent.example.invalid");
    hub.put("approvals/index.json", "[]\n");
    let token_file = hub.scratch.join("token");
    std::fs::write(&token_file, token).unwrap();
    let trust = gate::TrustStore::parse(
        &std::fs::read_to_string(repo().join("testdata/gate/trust_v1.txt")).unwrap(),
    )
    .unwrap();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = counting_proxy(hub.nginx.as_ref().unwrap().port, up.clone(), down.clone()).await;
    let mut c = HubConfig::new(format!("https://127.0.0.1:{port}/drover"), "pve1");
    c.tls = HubTls::CaFile(hub.certs.ca_pem.clone());
    c.bearer_token_file = Some(token_file);
    let src = HubSource::new(c).unwrap();
    let mirror = tempfile::tempdir().unwrap();
    let total = || up.load(Ordering::SeqCst) + down.load(Ordering::SeqCst);
    // First poll: TLS handshake, the document, its signature, the index.
    src.fetch(None, Some(&trust), now()).await.unwrap();
    src.fetch_approvals(mirror.path()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst));
    for _ in 0..polls {
        src.fetch(Some(1), Some(&trust), now()).await.unwrap();
        src.fetch_approvals(mirror.path()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst));
    let per_up = (after.0 - first.0) as f64 / polls as f64;
    let per_down = (after.1 - first.1) as f64 / polls as f64;
    // A report of a 40-guest host, as the daemon sends after each pass.
    let guests: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"vmid": 200 + i, "state": "converged", "notes": []}))
        .collect();
    let report = drover::desired::report::Report::new(
        serde_json::json!({"host": "pve1", "desired": {"revision": 1, "stale": false},
            "trust": {"valid": true, "version": 1}, "guests": guests}),
        vec![],
        serde_json::json!([]),
        now(),
    );
    let before = total();
    let n = 50u64;
    for _ in 0..n {
        src.report(&report).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let per_report = (total() - before) as f64 / n as f64;
    println!("hub bytes per agent poll (TCP payload incl. TLS records, kept-alive connection):");
    println!(
        "  first poll (TLS handshake, {} B document + signature + index): {} B up, {} B down",
        doc(1, 1).len(),
        first.0,
        first.1
    );
    println!(
        "  no-change poll (2 conditional GETs -> 304), mean of {polls}: {per_up:.0} B up + {per_down:.0} B down = {:.0} B",
        per_up + per_down
    );
    println!(
        "  report PUT ({} B JSON, 40 guests), mean of {n}: {per_report:.0} B",
        serde_json::to_vec(&report).unwrap().len()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    poll_figures(1000).await;
    tokio::task::spawn_blocking(move || publish_figures(hosts, rounds))
        .await
        .unwrap();
}
