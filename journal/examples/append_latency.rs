//! Journal figures for BENCHMARKS.md:
//!
//! - `cargo run --release -p journal --example append_latency`: durable append latency and
//!   throughput (with the flush and the fdatasync parts split), then the open + in-flight scan
//!   of a 100,000-record store.
//! - `cargo run --release -p journal --example append_latency -- size 1000000 /dev/shm/j`:
//!   database size while running that many steps (intent, submitted, done: three durable writes
//!   each) with the default automatic compaction. On tmpfs the fdatasync is free, which only
//!   speeds the run up: the size does not depend on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn step(vmid: u32) -> journal::NewStep {
    journal::NewStep {
        vmid,
        kind: "start".into(),
        params: BTreeMap::from([("node".to_string(), "pve1".to_string())]),
        class: journal::StepClass::Benign,
        approval_sha256: None,
        signers: vec![],
        operation: None,
        attempt: 1,
    }
}

fn db_size(dir: &Path) -> u64 {
    fn walk(d: &Path) -> u64 {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join("db"))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("size") {
        let n: u64 = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        let dir = args.get(2).map(Into::into).unwrap_or_else(|| {
            std::env::temp_dir().join(format!("journal-size-{}", std::process::id()))
        });
        return size_run(n, &dir);
    }
    latency_run()
}

fn latency_run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("journal-bench-{}", std::process::id()));
    let j = journal::Journal::open(&dir)?;
    let timings = Arc::new(Mutex::new(Vec::new()));
    let sink = timings.clone();
    j.on_sync(move |t| {
        if let Ok(mut v) = sink.lock() {
            v.push(t);
        }
    });
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for i in 0..1000u32 {
        let t = Instant::now();
        j.intent(step(100 + i % 50))?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t0.elapsed().as_secs_f64();
    println!(
        "durable append: p50 {:.2} ms, p99 {:.2} ms, {:.0} appends/s (1000 appends)",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        1000.0 / total
    );
    let t = timings.lock().map(|v| v.clone()).unwrap_or_default();
    let mut flush: Vec<f64> = t.iter().map(|t| t.flush.as_secs_f64() * 1e3).collect();
    let mut sync: Vec<f64> = t.iter().map(|t| t.fdatasync.as_secs_f64() * 1e3).collect();
    println!(
        "  of which sled flush: p50 {:.2} ms, p99 {:.2} ms; fdatasync: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut flush, 0.5),
        pct(&mut flush, 0.99),
        pct(&mut sync, 0.5),
        pct(&mut sync, 0.99)
    );
    // Recovery scan: reopen a store of 100,000 records and list what is in flight.
    j.set_retention(journal::Retention {
        every: 0,
        ..journal::Retention::default()
    });
    let n: u32 = 100_000;
    for i in 1000..n {
        let id = j.intent(step(100 + i % 500))?;
        if i % 100 != 0 {
            j.done(id, journal::Outcome::Ok)?;
        }
    }
    drop(j);
    let t = Instant::now();
    let j = journal::Journal::open(&dir)?;
    let inflight = j.in_flight()?;
    println!(
        "open + in-flight scan of {n} records: {:.0} ms ({} in flight)",
        t.elapsed().as_secs_f64() * 1e3,
        inflight.len()
    );
    println!(
        "database size with {n} records: {:.1} MiB",
        db_size(&dir) as f64 / 1048576.0
    );
    drop(j);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn size_run(n: u64, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    let j = journal::Journal::open(dir)?;
    let t0 = Instant::now();
    let mut max = 0u64;
    for i in 0..n {
        let id = j.intent(step(100 + (i % 200) as u32))?;
        j.submitted(
            id,
            &format!("UPID:pve1:{i:08X}:00000000:6560A000:vzstart:101:root@pam:"),
        )?;
        j.done(id, journal::Outcome::Ok)?;
        if (i + 1) % (n / 10).max(1) == 0 {
            let s = db_size(dir);
            max = max.max(s);
            println!(
                "{:>8} steps: {:6.1} MiB on disk, {:.0} s",
                i + 1,
                s as f64 / 1048576.0,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    drop(j);
    let j = journal::Journal::open(dir)?;
    println!(
        "after {n} steps: {:.1} MiB (max seen {:.1} MiB), {} records kept",
        db_size(dir) as f64 / 1048576.0,
        max as f64 / 1048576.0,
        j.recent(usize::MAX)?.len()
    );
    drop(j);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
