//! The hub source against a real nginx over TLS on loopback, and against a small rustls server
//! for the answers nginx would not give (huge, stalled, failing, malformed, report).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover::desired::hub::{HubConfig, HubFetch, HubSource, HubTls, ReportOutcome};
use support::certs::TestCerts;
use support::hub_dir::HubDir;
use support::rawtls::{RawTls, respond};

const DOMAIN: &str = "agent.example.invalid";
const HOST: &str = "pve1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `drover-trust v1` listing a hub key (hub@example.invalid, TEST_hub_ed25519).
fn trust_with_hub_key() -> gate::TrustStore {
    let text = std::fs::read_to_string(repo().join("testdata/gate/trust_v1.txt")).unwrap();
    let t = gate::TrustStore::parse(&text).unwrap();
    assert!(!t.principals(gate::Role::Hub).is_empty());
    t
}

/// Signs `file` with the TEST hub key using the real `ssh-keygen -Y sign`; writes `file.sig`.
fn hub_sign(hub: &Hub, file: &Path) {
    hub.sign(file, DOMAIN);
}

fn doc(revision: u64) -> String {
    format!(
        "revision = {revision}\n\n[[guest]]\nvmid = 101\nensure = \"running\"\nhostname = \"web1\"\n"
    )
}

type Hub = HubDir;

trait HubExt {
    fn config(&self) -> HubConfig;
    fn source(&self) -> HubSource;
}

impl HubExt for HubDir {
    fn config(&self) -> HubConfig {
        let mut c = HubConfig::new(self.url(), HOST);
        c.tls = HubTls::CaFile(self.certs.ca_pem.clone());
        c.timeout = Duration::from_secs(5);
        c.retry_budget = Duration::from_secs(2);
        c.retry_initial = Duration::from_millis(50);
        c
    }

    fn source(&self) -> HubSource {
        HubSource::new(self.config()).unwrap()
    }
}

fn fresh(r: HubFetch) -> drover::desired::source::Fetched {
    match r {
        HubFetch::Fresh(f) => f,
        HubFetch::NotModified => panic!("expected a fresh document, got not-modified"),
    }
}

#[tokio::test]
async fn nginx_fetch_then_304_with_etag_then_change() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    hub.put("desired.toml", &doc(3));
    let src = hub.source();
    assert_eq!(src.last_success(), None);
    let f = fresh(src.fetch(None, None, now()).await.unwrap());
    assert_eq!(f.doc.revision, 3);
    assert_eq!(f.bytes, doc(3).as_bytes());
    assert!(f.origin.ends_with("/drover/hosts/pve1/desired.toml"));
    assert!(src.last_success().is_some());
    // Unchanged: nginx answers the conditional GET with 304.
    let r = src.fetch(Some(3), None, now()).await.unwrap();
    assert!(matches!(r, HubFetch::NotModified), "{r:?}");
    // Changed (a different size, so nginx's mtime-size ETag differs).
    hub.put("desired.toml", &doc(30));
    let f = fresh(src.fetch(Some(3), None, now()).await.unwrap());
    assert_eq!(f.doc.revision, 30);
    // A fresh source remembers nothing: full download again.
    let f = fresh(hub.source().fetch(Some(30), None, now()).await.unwrap());
    assert_eq!(f.doc.revision, 30);
}

#[tokio::test]
async fn nginx_signed_document_is_verified() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let trust = trust_with_hub_key();
    let p = hub.put("desired.toml", &doc(4));
    hub_sign(&hub, &p);
    let src = hub.source();
    let f = fresh(src.fetch(None, Some(&trust), now()).await.unwrap());
    assert_eq!(f.doc.revision, 4);
    let r = src.fetch(Some(4), Some(&trust), now()).await.unwrap();
    assert!(matches!(r, HubFetch::NotModified));
}

#[tokio::test]
async fn nginx_unsigned_document_refused_when_a_hub_key_is_listed() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let trust = trust_with_hub_key();
    hub.put("desired.toml", &doc(4));
    let src = hub.source();
    let e = src.fetch(None, Some(&trust), now()).await.unwrap_err();
    assert_eq!(e.code(), "hub_signature_missing", "{e}");
    assert_eq!(src.last_success(), None);
    // Without a hub key in the trust document the same file is accepted unsigned ...
    let f = fresh(src.fetch(None, None, now()).await.unwrap());
    assert_eq!(f.doc.revision, 4);
    // ... and its ETag is not reused once a hub key is required.
    let e = src.fetch(Some(4), Some(&trust), now()).await.unwrap_err();
    assert_eq!(e.code(), "hub_signature_missing", "{e}");
}

#[tokio::test]
async fn nginx_wrong_signature_refused_with_the_gate_code() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let trust = trust_with_hub_key();
    // The hub key signed revision 5; the file then changed to revision 6 (same signature).
    let p = hub.put("desired.toml", &doc(5));
    hub_sign(&hub, &p);
    hub.put("desired.toml", &doc(6));
    let src = hub.source();
    let e = src.fetch(None, Some(&trust), now()).await.unwrap_err();
    assert_eq!(e.code(), "hub_signature_invalid", "{e}");
    assert_eq!(e.gate_code(), Some("bad_signature"), "{e}");
    // An operator key's signature (wrong namespace/role for a document) is refused too.
    let key = hub.scratch.join("op_key");
    std::fs::copy(repo().join("testdata/gate/TEST_operator1_ed25519"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = std::fs::remove_file(hub.host_dir.join("desired.toml.sig"));
    let out = Command::new("ssh-keygen")
        .args([
            "-Y",
            "sign",
            "-n",
            &format!("desired-state-v1@{DOMAIN}"),
            "-f",
        ])
        .arg(&key)
        .arg(hub.host_dir.join("desired.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = src.fetch(None, Some(&trust), now()).await.unwrap_err();
    assert_eq!(e.code(), "hub_signature_invalid", "{e}");
    assert_ne!(e.gate_code(), Some("bad_signature"), "{e}");
}

#[tokio::test]
async fn nginx_lower_revision_refused() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    hub.put("desired.toml", &doc(5));
    let e = hub.source().fetch(Some(10), None, now()).await.unwrap_err();
    assert_eq!(e.code(), "desired_rollback", "{e}");
    assert!(e.to_string().contains("revision 5"), "{e}");
}

#[tokio::test]
async fn nginx_missing_document_is_not_retried() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let mut cfg = hub.config();
    cfg.retry_budget = Duration::from_secs(30);
    let t = Instant::now();
    let e = HubSource::new(cfg)
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_http_status", "{e}");
    assert!(e.to_string().contains("404"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a 404 must not be retried"
    );
}

#[tokio::test]
async fn nginx_tls_pin_and_ca() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    hub.put("desired.toml", &doc(1));
    let mut c = hub.config();
    c.tls = HubTls::Fingerprint(hub.certs.leaf_fingerprint());
    let f = fresh(
        HubSource::new(c)
            .unwrap()
            .fetch(None, None, now())
            .await
            .unwrap(),
    );
    assert_eq!(f.doc.revision, 1);
    let mut c = hub.config();
    c.tls = HubTls::Fingerprint(["00"; 32].join(":"));
    let e = HubSource::new(c)
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_tls", "{e}");
    // System roots do not know the test CA.
    let mut c = hub.config();
    c.tls = HubTls::SystemRoots;
    let e = HubSource::new(c)
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_tls", "{e}");
    let mut c = hub.config();
    c.tls = HubTls::CaFile(hub.certs.leaf_key.clone());
    assert_eq!(HubSource::new(c).unwrap_err().code(), "hub_tls");
}

#[tokio::test]
async fn nginx_approvals_index_download() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    hub.put("approvals/stop-101.txt", "payload A\n");
    hub.put("approvals/stop-101.txt.sig", "SIG A\n");
    hub.put("approvals/destroy-102.txt", "payload B\n");
    hub.put("approvals/destroy-102.txt.alice.sig", "SIG B1\n");
    hub.put("approvals/destroy-102.txt.bob.sig", "SIG B2\n");
    hub.put(
        "approvals/index.json",
        r#"["stop-101.txt","stop-101.txt.sig","destroy-102.txt","destroy-102.txt.alice.sig","destroy-102.txt.bob.sig"]"#,
    );
    let local = tempfile::tempdir().unwrap();
    let dir = local.path().join("hub-approvals");
    let src = hub.source();
    let s = src.fetch_approvals(&dir).await.unwrap();
    assert!(!s.not_modified);
    assert_eq!(s.written.len(), 5, "{s:?}");
    assert!(s.problems.is_empty(), "{s:?}");
    assert_eq!(
        std::fs::read(dir.join("stop-101.txt")).unwrap(),
        b"payload A\n"
    );
    // The agent's approval scan sees them as ordinary signed approvals.
    let (cands, problems) = drover::approval::files::scan(&dir);
    assert!(problems.is_empty());
    assert_eq!(cands.len(), 2);
    assert_eq!(cands[0].signatures.len(), 2);
    // Unchanged index: 304, nothing else requested.
    assert!(src.fetch_approvals(&dir).await.unwrap().not_modified);
    // A withdrawn approval disappears locally; a listed but missing file is reported.
    hub.put(
        "approvals/index.json",
        r#"["stop-101.txt","stop-101.txt.sig","gone-103.txt"]"#,
    );
    let s = src.fetch_approvals(&dir).await.unwrap();
    assert_eq!(s.unchanged, 2, "{s:?}");
    assert_eq!(
        s.removed,
        vec![
            "destroy-102.txt",
            "destroy-102.txt.alice.sig",
            "destroy-102.txt.bob.sig"
        ]
    );
    assert_eq!(s.problems.len(), 1, "{s:?}");
    assert!(s.problems[0].contains("404"), "{s:?}");
    assert!(!dir.join("destroy-102.txt").exists());
    // A hostile index changes nothing.
    hub.put("approvals/index.json", r#"["../../etc/cron.d/x.txt"]"#);
    let e = src.fetch_approvals(&dir).await.unwrap_err();
    assert_eq!(e.code(), "hub_approvals_invalid", "{e}");
    assert!(dir.join("stop-101.txt").exists());
    hub.put("approvals/index.json", "not json");
    let e = src.fetch_approvals(&dir).await.unwrap_err();
    assert_eq!(e.code(), "hub_approvals_invalid", "{e}");
}

#[tokio::test]
async fn nginx_report_on_a_static_hub_is_fine() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    // No WebDAV location: nginx refuses the PUT (405), which a static hub may do.
    let r = hub.source().report(&sample_report()).await.unwrap();
    assert_eq!(r, ReportOutcome::NotSupported);
    assert!(!hub.host_dir.join("report.json").exists());
}

fn sample_report() -> drover::desired::report::Report {
    drover::desired::report::Report::new(
        serde_json::json!({"host": HOST, "desired": {"revision": 3, "stale": false}}),
        vec![],
        serde_json::json!([]),
        now(),
    )
}

// ---- hostile answers from the small rustls server ----

/// Timeouts generous enough that no answer the server does give is cut short on a loaded
/// machine (the tests count requests); the tests of timeouts and budgets set their own.
fn raw_config(certs: &TestCerts, srv: &RawTls) -> HubConfig {
    let mut c = HubConfig::new(srv.url("/drover"), HOST);
    c.tls = HubTls::CaFile(certs.ca_pem.clone());
    c.timeout = Duration::from_secs(10);
    c.retry_budget = Duration::from_secs(30);
    c.retry_initial = Duration::from_millis(50);
    c
}

/// A short request timeout and retry budget, for the tests of those.
fn impatient_config(certs: &TestCerts, srv: &RawTls) -> HubConfig {
    let mut c = raw_config(certs, srv);
    c.timeout = Duration::from_millis(500);
    c.retry_budget = Duration::from_millis(1200);
    c
}

fn certs() -> (tempfile::TempDir, TestCerts) {
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCerts::generate(tmp.path());
    (tmp, c)
}

#[tokio::test]
async fn huge_body_is_cut_off_at_the_cap() {
    let (_t, certs) = certs();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // No Content-Length: the body runs until the client hangs up (up to 1 GiB).
    let srv = RawTls::start(
        &certs,
        Box::new(move |_, _, w| {
            write!(w, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'#'; 64 * 1024];
            for _ in 0..16 * 1024 {
                w.write_all(&chunk)?;
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }),
    );
    let mut c = raw_config(&certs, &srv);
    c.max_document_bytes = 1024 * 1024;
    c.timeout = Duration::from_secs(20);
    let t = Instant::now();
    let e = HubSource::new(c)
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_document_too_large", "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    let total = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total < 64 * 1024 * 1024, "server pushed {total} bytes");
    assert_eq!(srv.requests().len(), 1, "too large is not retried");
}

#[tokio::test]
async fn announced_huge_length_is_refused_before_reading() {
    let (_t, certs) = certs();
    let srv = RawTls::start(
        &certs,
        Box::new(|_, _, w| {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\nConnection: close\r\n\r\nrevision = 1\n"
            )
        }),
    );
    let e = HubSource::new(raw_config(&certs, &srv))
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_document_too_large", "{e}");
}

#[tokio::test]
async fn stalled_server_times_out_and_is_retried_within_budget() {
    let (_t, certs) = certs();
    // Headers and a little body, then silence.
    let srv = RawTls::start(
        &certs,
        Box::new(|_, _, w| {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nrevision = "
            )?;
            w.flush()?;
            std::thread::sleep(Duration::from_secs(10));
            Ok(())
        }),
    );
    let t = Instant::now();
    let e = HubSource::new(impatient_config(&certs, &srv))
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_unreachable", "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(srv.requests().len() >= 2, "a timeout is retried");
}

#[tokio::test]
async fn malformed_document_is_refused() {
    let (_t, certs) = certs();
    let srv = RawTls::start(
        &certs,
        Box::new(|_, _, w| respond(w, "200 OK", "", b"revision = \"seven\"\n[[guest]\n\xff\xfe")),
    );
    let src = HubSource::new(raw_config(&certs, &srv)).unwrap();
    let e = src.fetch(None, None, now()).await.unwrap_err();
    assert_eq!(e.code(), "desired_invalid", "{e}");
    assert_eq!(src.last_success(), None);
    assert_eq!(
        srv.requests().len(),
        1,
        "an invalid document is not retried"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let (_t, certs) = certs();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "s3cret-token\n").unwrap();
    let srv = RawTls::start(
        &certs,
        Box::new(|n, _, w| {
            if n < 2 {
                respond(w, "500 Internal Server Error", "", b"oops")
            } else {
                respond(w, "200 OK", "ETag: \"v7\"\r\n", doc(7).as_bytes())
            }
        }),
    );
    let mut c = raw_config(&certs, &srv);
    c.bearer_token_file = Some(token.path().to_path_buf());
    let src = HubSource::new(c).unwrap();
    let f = fresh(src.fetch(None, None, now()).await.unwrap());
    assert_eq!(f.doc.revision, 7);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r.path == "/drover/hosts/pve1/desired.toml")
    );
    assert_eq!(reqs[2].header("authorization"), Some("Bearer s3cret-token"));
    assert_eq!(reqs[2].header("if-none-match"), None);
    // The next poll sends the remembered ETag.
    let _ = src.fetch(Some(7), None, now()).await.unwrap();
    assert_eq!(srv.requests()[3].header("if-none-match"), Some("\"v7\""));
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_budget() {
    let (_t, certs) = certs();
    let srv = RawTls::start(&certs, Box::new(|_, _, w| respond(w, "503 Busy", "", b"")));
    let t = Instant::now();
    let e = HubSource::new(impatient_config(&certs, &srv))
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_http_status", "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(srv.requests().len() >= 2, "{}", srv.requests().len());
}

#[tokio::test]
async fn report_is_put_and_405_is_tolerated() {
    let (_t, certs) = certs();
    let srv = RawTls::start(
        &certs,
        Box::new(|_, r, w| {
            if r.method == "PUT" && r.path == "/drover/hosts/pve1/report.json" {
                respond(w, "204 No Content", "", b"")
            } else {
                respond(w, "404 Not Found", "", b"")
            }
        }),
    );
    let src = HubSource::new(raw_config(&certs, &srv)).unwrap();
    let status = sample_report();
    assert_eq!(src.report(&status).await.unwrap(), ReportOutcome::Accepted);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    let got = drover::desired::report::Report::parse(&reqs[0].body).unwrap();
    assert_eq!(got.revision_applied, Some(3));
    assert_eq!(got.time_unix, status.time_unix);

    let srv405 = RawTls::start(
        &certs,
        Box::new(|_, _, w| respond(w, "405 Not Allowed", "", b"")),
    );
    let src = HubSource::new(raw_config(&certs, &srv405)).unwrap();
    assert_eq!(
        src.report(&status).await.unwrap(),
        ReportOutcome::NotSupported
    );

    let srv500 = RawTls::start(&certs, Box::new(|_, _, w| respond(w, "500 Oops", "", b"")));
    let src = HubSource::new(raw_config(&certs, &srv500)).unwrap();
    assert_eq!(
        src.report(&status).await.unwrap_err().code(),
        "hub_http_status"
    );

    let mut c = raw_config(&certs, &srv500);
    c.report = false;
    let src = HubSource::new(c).unwrap();
    assert_eq!(src.report(&status).await.unwrap(), ReportOutcome::Disabled);
    assert!(srv500.requests().len() == 1);
}

/// A hub document carrying a root-only or host-takeover key is refused as a whole, with the
/// key's own code, and never replaces the document in force (the refused class of the gate's
/// table; the agent then keeps converging the last good one).
#[tokio::test]
async fn a_hub_document_with_a_refused_key_is_refused_with_its_code() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let src = hub.source();
    hub.put("desired.toml", &doc(3));
    fresh(src.fetch(None, None, now()).await.unwrap());
    for (i, (line, code)) in [
        ("features = { keyctl = true }", "feature_root_only"),
        ("password = \"hunter22\"", "password_refused"),
        ("hookscript = \"local:snippets/x.sh\"", "hookscript_refused"),
        ("\"lxc.cap.drop\" = \"\"", "raw_lxc_refused"),
        ("pool = \"admins\"", "pool_is_host_setting"),
    ]
    .into_iter()
    .enumerate()
    {
        hub.put("desired.toml", &format!("{}{line}\n", doc(4 + i as u64)));
        let e = src.fetch(Some(3), None, now()).await.unwrap_err();
        assert_eq!(e.code(), "desired_invalid", "{line}: {e}");
        assert!(e.to_string().contains(code), "{line}: {e}");
    }
}

/// Jobs are mirrored like approvals; a hub whose `jobs/` is gone (404) withdraws what an
/// earlier poll mirrored, so a job not yet run cannot run from the old copy.
#[tokio::test]
async fn nginx_jobs_are_mirrored_and_withdrawn_when_jobs_is_gone() {
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    let dir = local.path().join("hub-jobs");
    let src = hub.source();
    let s = src.fetch_jobs(&dir).await.unwrap();
    assert!(
        s.written.is_empty() && s.removed.is_empty(),
        "no jobs/: none"
    );
    hub.put("jobs/101-snapshot-0a0b0c0d.txt", "drover-job v1\n");
    hub.put("jobs/101-snapshot-0a0b0c0d.txt.sig", "SIG\n");
    hub.put(
        "jobs/index.json",
        r#"["101-snapshot-0a0b0c0d.txt","101-snapshot-0a0b0c0d.txt.sig"]"#,
    );
    let s = src.fetch_jobs(&dir).await.unwrap();
    assert_eq!(s.written.len(), 2, "{s:?}");
    std::fs::write(dir.join("notes"), "not the mirror's").unwrap();
    std::fs::remove_dir_all(hub.host_dir.join("jobs")).unwrap();
    let s = src.fetch_jobs(&dir).await.unwrap();
    assert_eq!(
        s.removed,
        vec!["101-snapshot-0a0b0c0d.txt", "101-snapshot-0a0b0c0d.txt.sig"]
    );
    assert!(!dir.join("101-snapshot-0a0b0c0d.txt").exists());
    assert!(
        dir.join("notes").exists(),
        "only mirrored names are removed"
    );
}
