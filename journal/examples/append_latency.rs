//! Durable append latency and throughput: `cargo run --release -p journal --example append_latency`.
//! Each `intent` is flushed and fdatasynced before it returns.

use std::collections::BTreeMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("journal-bench-{}", std::process::id()));
    let j = journal::Journal::open(&dir)?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for i in 0..1000u32 {
        let t = Instant::now();
        j.intent(journal::NewStep {
            vmid: 100 + i % 50,
            kind: "start".into(),
            params: BTreeMap::new(),
            class: journal::StepClass::Benign,
            approval_sha256: None,
            signers: vec![],
            operation: None,
            attempt: 1,
        })?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "durable append: p50 {:.2} ms, p99 {:.2} ms, {:.0} appends/s (1000 appends)",
        lat[500],
        lat[990],
        1000.0 / total
    );
    // Recovery scan: reopen a store of 100,000 records and list what is in flight.
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    for i in 1000..n {
        let id = j.intent(journal::NewStep {
            vmid: 100 + i % 500,
            kind: "start".into(),
            params: BTreeMap::new(),
            class: journal::StepClass::Benign,
            approval_sha256: None,
            signers: vec![],
            operation: None,
            attempt: 1,
        })?;
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
    let size = |d: &std::path::Path| -> u64 {
        std::fs::read_dir(d.join("db"))
            .map(|r| {
                r.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    println!(
        "database size with {n} records: {:.1} MiB",
        size(&dir) as f64 / 1048576.0
    );
    let removed = j.compact(20, 10_000)?;
    println!("compaction removed {removed} done records");
    drop(j);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
