//! Requests per second the simulator serves: N concurrent keep-alive HTTPS clients doing
//! `GET status/current` for a few seconds. Run:
//! `cargo run --release -p pve-sim --example throughput [-- CLIENTS SECONDS]`.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let sim = pve_sim::start(pve_sim::SimConfig {
        guests: vec![pve_sim::SeedGuest {
            vmid: 101,
            running: true,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await?;
    let url = format!(
        "{}/api2/json/nodes/pve1/lxc/101/status/current",
        sim.base_url()
    );
    let auth = format!(
        "PVEAPIToken={}={}",
        pve_sim::DEFAULT_TOKEN_ID,
        pve_sim::DEFAULT_TOKEN_SECRET
    );
    let mut rates = Vec::new();
    for _round in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for _ in 0..clients {
            let (url, auth) = (url.clone(), auth.clone());
            handles.push(tokio::spawn(async move {
                // The simulator's self-signed certificate; this measures the server, not trust.
                let c = reqwest::Client::builder()
                    .tls_danger_accept_invalid_certs(true)
                    .build()
                    .expect("client");
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if let Ok(r) = c.get(&url).header("Authorization", &auth).send().await
                        && r.status().is_success()
                        && r.bytes().await.is_ok()
                    {
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await?;
        }
        rates.push(total as f64 / secs as f64);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "pve-sim: {clients} keep-alive HTTPS clients, GET status/current: median {:.0} requests/s (3 rounds of {secs} s: {:?})",
        rates[1],
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    sim.shutdown().await;
    Ok(())
}
