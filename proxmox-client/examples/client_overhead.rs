//! Client overhead per call over real TLS on loopback.
//!
//! Sequential `GET /nodes/{node}/lxc/{vmid}/status/current`: the typed client versus a bare
//! reqwest call to the same URL (same rustls config, same keep-alive connection, same auth
//! header, body parsed into a `serde_json::Value`). The two are interleaved in rounds within one
//! run so machine noise hits both alike; the difference is what the client adds (typed
//! decoding, capped body read, error mapping, span).
//!
//! Server: `--server=sim` (default) is pve-sim with one seeded CT; `--server=raw` is the tests'
//! minimal HTTPS/1.1 responder serving the `status/current` fixture, which isolates the client
//! from any server-side cost.
//!
//! Run: `cargo run --release -p proxmox-client --example client_overhead [-- --server=raw]`
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use proxmox_client::{ApiToken, Client, ClientConfig, TlsTrust};
use reqwest::header::AUTHORIZATION;

const CALLS_PER_ROUND: usize = 100;
const ROUNDS: usize = 41;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/pve-fixtures/lxc-status-current-running.json"),
    )
    .unwrap();
    // A CA and a leaf, so the bare reqwest baseline verifies exactly like the client.
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let use_raw = std::env::args().any(|a| a == "--server=raw");
    // Keep the server alive for the whole run.
    let (base, _raw, _sim) = if use_raw {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let server = common::start_with(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            key,
            leaf.pem(),
            Arc::new(move |_req: &common::Req| common::Reply::json(&body)),
        )
        .await;
        let port = server.url.rsplit(':').next().unwrap().to_owned();
        (format!("https://localhost:{port}"), Some(server), None)
    } else {
        let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_pem, leaf.pem()).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        let sim = pve_sim::start(pve_sim::SimConfig {
            tls: pve_sim::SimTls::Files { cert_pem, key_pem },
            guests: vec![pve_sim::SeedGuest {
                vmid: 101,
                running: true,
                ..pve_sim::SeedGuest::default()
            }],
            ..pve_sim::SimConfig::default()
        })
        .await
        .unwrap();
        let port = sim.addr().port();
        (format!("https://localhost:{port}"), None, Some(sim))
    };
    let secret = if use_raw {
        common::TEST_SECRET
    } else {
        pve_sim::DEFAULT_TOKEN_SECRET
    };
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let token = ApiToken::new("drover@pve!agent", secret).unwrap();
    let client = Client::new(ClientConfig::new(&base, token, TlsTrust::CaFile(ca_file))).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let bare = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("{base}/api2/json/nodes/pve1/lxc/101/status/current");
    let auth = format!("PVEAPIToken=drover@pve!agent={secret}");

    // Warm up both connections.
    for _ in 0..50 {
        client.lxc_status("pve1", 101).await.unwrap();
        let r = bare
            .get(&url)
            .header(AUTHORIZATION, &auth)
            .send()
            .await
            .unwrap();
        let _: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    }

    let (mut typed, mut raw, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate the order so drift in machine load does not favour one side.
        let mut pair = [0.0f64; 2];
        for side in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            for _ in 0..CALLS_PER_ROUND {
                if side == 0 {
                    let s = client.lxc_status("pve1", 101).await.unwrap();
                    std::hint::black_box(s);
                } else {
                    let r = bare
                        .get(&url)
                        .header(AUTHORIZATION, &auth)
                        .send()
                        .await
                        .unwrap();
                    let v: serde_json::Value =
                        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                    std::hint::black_box(v);
                }
            }
            pair[side] = t.elapsed().as_secs_f64() * 1e6 / CALLS_PER_ROUND as f64;
        }
        typed.push(pair[0]);
        raw.push(pair[1]);
        diff.push(pair[0] - pair[1]);
    }
    let d = median(&mut diff);
    let (t, r) = (median(&mut typed), median(&mut raw));
    println!(
        "{} server, calls={} rounds={ROUNDS}: proxmox-client median {t:.1} µs/call, bare reqwest median {r:.1} µs/call, overhead (median of paired round differences) {d:+.1} µs/call ({:+.1} %)",
        if use_raw { "raw" } else { "pve-sim" },
        CALLS_PER_ROUND * ROUNDS,
        d / r * 100.0
    );
}
