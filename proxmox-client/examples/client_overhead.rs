//! Client overhead per call over real TLS on loopback.
//!
//! Sequential `GET /nodes/{node}/lxc/{vmid}/status/current`: the typed client versus a bare
//! reqwest call to the same URL (same rustls config, same keep-alive connection, same auth
//! header, body parsed into a `serde_json::Value`). The two are interleaved in rounds within one
//! run so machine noise hits both alike; the difference is what the client adds (typed
//! decoding, capped body read, error mapping, span).
//!
//! Server: the tests' minimal HTTPS/1.1 responder serving the `status/current` fixture, which
//! isolates the client from any server-side cost.
//!
//! Run: `cargo run --release -p proxmox-client --example client_overhead`
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use proxmox_client::{ApiToken, Client, ClientConfig, TlsTrust};
use reqwest::header::AUTHORIZATION;

const CALLS_PER_ROUND: usize = 200;
const ROUNDS: usize = 15;

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
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = common::start_with(
        vec![leaf.der().clone(), ca_cert.der().clone()],
        key,
        leaf.pem(),
        Arc::new(move |_req: &common::Req| common::Reply::json(&body)),
    )
    .await;
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let base = format!("https://localhost:{port}");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let token = ApiToken::new("drover@pve!agent", common::TEST_SECRET).unwrap();
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
    let auth = format!("PVEAPIToken=drover@pve!agent={}", common::TEST_SECRET);

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

    let (mut typed, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CALLS_PER_ROUND {
            let s = client.lxc_status("pve1", 101).await.unwrap();
            std::hint::black_box(s);
        }
        typed.push(t.elapsed().as_secs_f64() * 1e6 / CALLS_PER_ROUND as f64);

        let t = Instant::now();
        for _ in 0..CALLS_PER_ROUND {
            let r = bare
                .get(&url)
                .header(AUTHORIZATION, &auth)
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            std::hint::black_box(v);
        }
        raw.push(t.elapsed().as_secs_f64() * 1e6 / CALLS_PER_ROUND as f64);
    }
    let (t, r) = (median(&mut typed), median(&mut raw));
    println!(
        "raw server, calls={} rounds={ROUNDS}: proxmox-client median {t:.1} µs/call, bare reqwest median {r:.1} µs/call, overhead {:.1} µs/call ({:+.1} %)",
        CALLS_PER_ROUND * ROUNDS,
        t - r,
        (t - r) / r * 100.0
    );
}
