//! Figures for `BENCHMARKS.md` ("safety copies"), in one run:
//! 1. a destroy behind its safety copy (clean shutdown, vzdump, verification incl. sha256,
//!    then the destroy) against the destroy alone (`force=1` on the running guest), against
//!    the in-process pve-sim over real TLS with the same task time for every task;
//! 2. sha256 throughput of the archive read-back on a 1 GiB file;
//! 3. journal growth per copy (manifest written `creating`, with its UPID, `complete`).
//!
//! `cargo run --release -p drover --example safety_bench [-- ROUNDS TASK_MS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drover::safety::{CopyOp, SafetyCopies, SafetyPolicy};
use proxmox_client::{
    ApiToken, Client, ClientConfig, DestroyOptions, Fingerprint, TlsTrust, WaitOptions,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let task_ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let guests: Vec<pve_sim::SeedGuest> = (0..rounds * 2)
        .map(|i| pve_sim::SeedGuest {
            vmid: 1000 + i,
            hostname: format!("ct-{i}"),
            running: true,
            rootfs_gib: 4,
            ..pve_sim::SeedGuest::default()
        })
        .collect();
    let sim = pve_sim::start(pve_sim::SimConfig {
        task_duration: Duration::from_millis(task_ms),
        guests,
        ..pve_sim::SimConfig::default()
    })
    .await
    .unwrap();
    let fp: Fingerprint = sim.fingerprint().parse().unwrap();
    let client = Client::new(ClientConfig::new(
        sim.base_url(),
        ApiToken::new(pve_sim::DEFAULT_TOKEN_ID, pve_sim::DEFAULT_TOKEN_SECRET).unwrap(),
        TlsTrust::Fingerprint(fp),
    ))
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = drover::store::Store::open(state.path()).unwrap();
    let poll = Duration::from_millis(20);
    let safety = SafetyCopies::new(
        client.clone(),
        "pve1",
        store.clone(),
        SafetyPolicy {
            storage: Some("local".into()),
            keep_per_guest: 5,
            ..SafetyPolicy::default()
        },
        Some(poll),
    );
    let wait = WaitOptions::fast(poll, Duration::from_secs(120));
    let destroy = |vmid: u32| {
        let client = client.clone();
        let wait = wait.clone();
        async move {
            let upid = client
                .destroy_lxc(
                    "pve1",
                    vmid,
                    &DestroyOptions {
                        purge: true,
                        destroy_unreferenced_disks: true,
                        force: true,
                    },
                )
                .await
                .unwrap();
            assert!(client.wait_task(&upid, &wait).await.unwrap().is_success());
        }
    };
    let (mut with_copy, mut alone) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate the order so neither side always runs first.
        let (a, b) = (1000 + 2 * r, 1001 + 2 * r);
        for side in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
            let t = Instant::now();
            if side == 0 {
                let pre = safety.preflight(a, CopyOp::Destroy).await.unwrap();
                safety
                    .take(&pre, &format!("{r}"), &pre.binding())
                    .await
                    .unwrap();
                destroy(a).await;
                with_copy.push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                destroy(b).await;
                alone.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let (w, o) = (median(with_copy), median(alone));
    println!(
        "destroy with its safety copy: {w:.0} ms, destroy alone: {o:.0} ms, ratio {:.2} ({rounds} rounds, sim task time {task_ms} ms, medians)",
        w / o
    );

    // 2. Hashing throughput: 1 GiB of non-sparse data.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vzdump-lxc-1-2026_01_01-00_00_00.tar.zst");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1024 * 1024];
        for _ in 0..1024 {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (_, n) = drover::safety::verify::sha256_file(&path).unwrap();
        rates.push(n as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64());
    }
    println!(
        "sha256 of a 1 GiB archive: {:.0} MiB/s (median of 3, page cache warm)",
        median(rates)
    );
    drop(dir);

    // 3. Journal growth per copy.
    let jdir = tempfile::tempdir().unwrap();
    let j = drover::store::Store::open(jdir.path()).unwrap();
    let template = store.copies().unwrap().pop().unwrap();
    let before = dir_bytes(jdir.path());
    let n = 1000;
    for i in 0..n {
        let mut m = template.clone();
        m.id = format!("{}-{i}", &template.id);
        m.state = drover::store::CopyState::Creating;
        j.put_copy(&m).unwrap();
        j.put_copy(&m).unwrap();
        m.state = drover::store::CopyState::Complete;
        j.put_copy(&m).unwrap();
    }
    let after = dir_bytes(jdir.path());
    let record = serde_json::to_vec(&template).unwrap().len();
    println!(
        "journal growth: {:.0} bytes per copy on disk over {n} copies ({} → {} bytes; one manifest is {record} bytes of JSON)",
        (after.saturating_sub(before)) as f64 / f64::from(n),
        before,
        after
    );
    sim.shutdown().await;
}
