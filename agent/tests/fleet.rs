//! The hub team's tools (`drover fleet ...`) on a hub tree served by a real nginx over TLS,
//! with the agents' reports stored by nginx's own WebDAV module: publish → a running agent
//! picks it up → an approval extracted with `fleet pending`, signed by the real `ssh-keygen`,
//! placed with `fleet add-approvals` runs; refusals carry the agent's own codes; dry runs and
//! unchanged publishes write nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{Host, eventually, guest};
use drover::desired::hub::{HubConfig, HubFetch, HubSource, HubTls, ReportOutcome};
use drover::desired::report::Report;
use support::hub_dir::HubDir;

const HOST: &str = "pve1";
const DOMAIN: &str = "agent.example.invalid";
const TOKEN: &str = "pve1-report-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn trust_file() -> PathBuf {
    repo().join("testdata/gate/trust_v1.txt")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A TEST key from testdata copied to a 0600 file (ssh-keygen refuses readable keys).
fn key(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let k = dir.join(name);
    std::fs::copy(repo().join("testdata/gate").join(name), &k).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    k
}

/// `drover fleet ARGS` as a child process (blocking).
fn fleet(args: &[&str]) -> Output {
    fleet_env(args, &[])
}

fn fleet_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.arg("fleet")
        .args(args)
        .env_remove("DROVER_FLEET_TRUST")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("drover runs");
    eprintln!(
        "--- drover fleet {args:?} exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn fleet_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fleet(&refs)
    })
    .await
    .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not json ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn publish(tree: &Path, keyfile: &Path, extra: &[&str]) -> Output {
    let trust = trust_file();
    let mut args = vec![
        "publish",
        p(tree),
        "--key",
        p(keyfile),
        "--trust",
        p(&trust),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    fleet(&args)
}

fn host_line<'a>(v: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no line for {host}: {v}"))
}

/// Every file under `dir` with the sha256 of its bytes and its modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let m = e.metadata().unwrap().modified().unwrap();
                use sha2::Digest;
                let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
                out.push((path.clone(), hash, m));
            }
        }
    }
    out.sort();
    out
}

fn skip() -> bool {
    common::skip_without("ssh-keygen", "-?")
}

fn hub_source(hub: &HubDir) -> HubSource {
    let mut c = HubConfig::new(hub.url(), HOST);
    c.tls = HubTls::CaFile(hub.certs.ca_pem.clone());
    c.timeout = Duration::from_secs(5);
    c.retry_budget = Duration::from_secs(1);
    c.retry_initial = Duration::from_millis(50);
    HubSource::new(c).unwrap()
}

#[tokio::test]
async fn publish_refuses_what_the_agent_refuses_and_writes_nothing() {
    if skip() {
        return;
    }
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let tree = hub.tree();
    let hub_key = key(&hub.scratch, "TEST_hub_ed25519");
    hub.put(
        "desired.toml",
        &format!("revision = 5\n{}", guest(101, "running", 256)),
    );
    let bad = "revision = 3\n[[guest]]\nvmid = 201\ncores = \"two\"\n";
    std::fs::create_dir_all(tree.join("hosts/pve2")).unwrap();
    std::fs::write(tree.join("hosts/pve2/desired.toml"), bad).unwrap();

    // The bad document of pve2 is refused with the agent's code; nothing is signed for pve1.
    let before = snapshot(&tree);
    let out = publish(&tree, &hub_key, &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let pve2 = host_line(&v, "pve2");
    assert_eq!(pve2["action"], "refused", "{v}");
    assert_eq!(pve2["refusal"]["code"], "desired_invalid", "{v}");
    assert!(
        pve2["refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("hosts/pve2/desired.toml, guest 201, field `cores`"),
        "{v}"
    );
    assert_eq!(host_line(&v, "pve1")["action"], "sign", "{v}");
    assert_eq!(snapshot(&tree), before, "a refused publish wrote something");
    // The agent, fetching the same file from nginx, refuses it with the same code.
    let mut c = HubConfig::new(hub.url(), "pve2");
    c.tls = HubTls::CaFile(hub.certs.ca_pem.clone());
    let e = HubSource::new(c)
        .unwrap()
        .fetch(None, None, now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "desired_invalid", "{e}");

    // Too large: the agent's hub_document_too_large.
    let mut huge = String::from("revision = 3\n");
    while huge.len() <= drover::desired::MAX_DOCUMENT_BYTES {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(tree.join("hosts/pve2/desired.toml"), &huge).unwrap();
    let v = json(&publish(&tree, &hub_key, &[]));
    assert_eq!(
        host_line(&v, "pve2")["refusal"]["code"],
        "hub_document_too_large",
        "{v}"
    );

    // Fixed: both are signed, the signatures verify as the agent checks them, indexes appear.
    std::fs::write(
        tree.join("hosts/pve2/desired.toml"),
        format!("revision = 3\n{}", guest(201, "running", 256)),
    )
    .unwrap();
    let before = snapshot(&tree);
    let dry = publish(&tree, &hub_key, &["--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "dry run with changes exits 2");
    let v = json(&dry);
    assert_eq!(host_line(&v, "pve1")["action"], "sign", "{v}");
    assert_eq!(host_line(&v, "pve1")["revision"], 5, "{v}");
    assert_eq!(host_line(&v, "pve2")["index"]["write"], true, "{v}");
    assert_eq!(snapshot(&tree), before, "a dry run wrote something");
    let out = publish(&tree, &hub_key, &[]);
    assert_eq!(out.status.code(), Some(0));
    let trust = gate::TrustStore::parse(&std::fs::read_to_string(trust_file()).unwrap()).unwrap();
    let f = match hub_source(&hub)
        .fetch(None, Some(&trust), now())
        .await
        .unwrap()
    {
        HubFetch::Fresh(f) => f,
        HubFetch::NotModified => unreachable!(),
    };
    assert_eq!(f.doc.revision, 5);
    assert_eq!(
        std::fs::read(tree.join("hosts/pve2/approvals/index.json")).unwrap(),
        b"[]\n"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tree.join("hosts/pve1/published.json")).unwrap())
            .unwrap();
    assert_eq!(record["revision"], 5);

    // Publishing again changes nothing, not even a modification time (ETags stay, polls 304).
    let published = snapshot(&tree);
    std::thread::sleep(Duration::from_millis(20));
    let again = publish(&tree, &hub_key, &[]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(host_line(&json(&again), "pve1")["action"], "unchanged");
    assert_eq!(snapshot(&tree), published);
    let dry = publish(&tree, &hub_key, &["--dry-run"]);
    assert_eq!(
        dry.status.code(),
        Some(0),
        "a dry run without changes exits 0"
    );

    // A revision not above the published one: equal with other content, or lower (the
    // agent's desired_rollback).
    hub.put(
        "desired.toml",
        &format!("revision = 5\n{}", guest(101, "stopped", 256)),
    );
    let v = json(&publish(&tree, &hub_key, &[]));
    assert_eq!(
        host_line(&v, "pve1")["refusal"]["code"],
        "desired_revision_not_above",
        "{v}"
    );
    hub.put(
        "desired.toml",
        &format!("revision = 4\n{}", guest(101, "stopped", 256)),
    );
    let v = json(&publish(&tree, &hub_key, &[]));
    assert_eq!(
        host_line(&v, "pve1")["refusal"]["code"],
        "desired_rollback",
        "{v}"
    );
    let e = hub_source(&hub)
        .fetch(Some(5), None, now())
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        "desired_rollback",
        "the agent's code for the same file"
    );

    // Signed with a key the trust document does not list for the hub: refused with the
    // gate's code, and no signature is replaced.
    hub.put(
        "desired.toml",
        &format!("revision = 6\n{}", guest(101, "stopped", 256)),
    );
    let sig_before = std::fs::read(tree.join("hosts/pve1/desired.toml.sig")).unwrap();
    let op_key = key(&hub.scratch, "TEST_operator1_ed25519");
    let out = publish(&tree, &op_key, &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let line = host_line(&v, "pve1");
    assert_eq!(line["refusal"]["code"], "hub_signature_invalid", "{v}");
    assert!(line["refusal"]["gate_code"].is_string(), "{v}");
    assert_eq!(
        std::fs::read(tree.join("hosts/pve1/desired.toml.sig")).unwrap(),
        sig_before
    );
    // With the hub key it goes out, and the text output names the change.
    let out = fleet(&[
        "publish",
        p(&tree),
        "--key",
        p(&hub_key),
        "--trust",
        p(&trust_file()),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pve1") && text.contains("5 -> 6"), "{text}");
}

/// A private `ssh-agent` (killed by pid when dropped).
struct Agent {
    child: std::process::Child,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_agent(dir: &Path) -> Agent {
    let sock = dir.join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent runs");
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent { child, sock }
}

#[tokio::test]
async fn publish_signs_with_a_hub_key_held_in_ssh_agent() {
    if skip() || common::skip_without("ssh-agent", "-h") {
        return;
    }
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let tree = hub.tree();
    hub.put(
        "desired.toml",
        &format!("revision = 1\n{}", guest(101, "running", 256)),
    );
    // The private key lives elsewhere (ssh-keygen would find it beside the public key).
    let private_dir = hub.scratch.join("private");
    std::fs::create_dir_all(&private_dir).unwrap();
    let private = key(&private_dir, "TEST_hub_ed25519");
    let public = hub.scratch.join("TEST_hub_ed25519.pub");
    std::fs::copy(repo().join("testdata/gate/TEST_hub_ed25519.pub"), &public).unwrap();
    let trust_path = trust_file();
    let args = [
        "publish",
        p(&tree),
        "--key",
        p(&public),
        "--trust",
        p(&trust_path),
        "--output",
        "json",
    ];
    // Only the public key, no agent: ssh-keygen cannot sign; nothing is written.
    let out = fleet(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ssh_keygen_failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!tree.join("hosts/pve1/desired.toml.sig").exists());
    // The private key in ssh-agent, the public key named with --key: signed by the agent.
    let agent = ssh_agent(&hub.scratch);
    let add = Command::new("ssh-add")
        .arg(&private)
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    std::fs::remove_file(&private).unwrap();
    let out = fleet_env(&args, &[("SSH_AUTH_SOCK", &agent.sock)]);
    assert_eq!(out.status.code(), Some(0));
    let trust = gate::TrustStore::parse(&std::fs::read_to_string(trust_file()).unwrap()).unwrap();
    let f = hub_source(&hub)
        .fetch(None, Some(&trust), now())
        .await
        .unwrap();
    assert!(
        matches!(f, HubFetch::Fresh(ref f) if f.doc.revision == 1),
        "{f:?}"
    );
}

#[tokio::test]
async fn reports_land_through_nginx_webdav_and_nothing_else_can_be_written() {
    let Some(hub) = HubDir::start_with(HOST, &[(HOST, TOKEN), ("pve2", "pve2-token")]) else {
        return;
    };
    std::fs::create_dir_all(hub.tree().join("hosts/pve2")).unwrap();
    let token = hub.scratch.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut c = HubConfig::new(hub.url(), HOST);
    c.tls = HubTls::CaFile(hub.certs.ca_pem.clone());
    c.bearer_token_file = Some(token.clone());
    let src = HubSource::new(c.clone()).unwrap();
    let report = Report::new(
        serde_json::json!({"host": HOST, "desired": {"revision": 9, "stale": false},
                           "trust": {"valid": true, "version": 1}, "guests": []}),
        vec![],
        serde_json::json!([]),
        now(),
    );
    assert_eq!(src.report(&report).await.unwrap(), ReportOutcome::Accepted);
    let landed = std::fs::read(hub.host_dir.join("report.json")).unwrap();
    let back = Report::parse(&landed).unwrap();
    assert_eq!(back.revision_applied, Some(9));
    assert_eq!(back.agent_version, env!("CARGO_PKG_VERSION"));
    // A second report replaces the first.
    let mut newer = report.clone();
    newer.revision_applied = Some(10);
    assert_eq!(src.report(&newer).await.unwrap(), ReportOutcome::Accepted);
    let back = Report::parse(&std::fs::read(hub.host_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(back.revision_applied, Some(10));

    // fleet status shows it (read before the certificate checks below replace the report).
    let out = fleet(&["status", p(&hub.tree()), "--output", "json"]);
    let rows = json(&out);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == HOST)
        .unwrap();
    assert_eq!(row["revision_applied"], 10, "{rows}");
    assert_eq!(row["trust_version"], 1, "{rows}");
    assert_eq!(row["agent_version"], env!("CARGO_PKG_VERSION"), "{rows}");
    let pve2 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "pve2")
        .unwrap();
    assert_eq!(pve2["state"], "no_report", "{rows}");

    // No token, another host's token, another host's path: refused, nothing written.
    let mut anon = c.clone();
    anon.bearer_token_file = None;
    let e = HubSource::new(anon)
        .unwrap()
        .report(&report)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hub_http_status");
    assert!(e.to_string().contains("401"), "{e}");
    let other = hub.scratch.join("pve2-token");
    std::fs::write(&other, "pve2-token").unwrap();
    let mut wrong = c.clone();
    wrong.bearer_token_file = Some(other.clone());
    let e = HubSource::new(wrong)
        .unwrap()
        .report(&report)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("401"),
        "pve2's token wrote pve1's report: {e}"
    );
    let mut as_pve2 = c.clone();
    as_pve2.host = "pve2".into();
    let e = HubSource::new(as_pve2)
        .unwrap()
        .report(&report)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    assert!(!hub.tree().join("hosts/pve2/report.json").exists());

    // A client certificate whose CN is the host, without a token: accepted; another host's
    // certificate is not.
    for tls in [
        HubTls::CaFile(hub.certs.ca_pem.clone()),
        HubTls::Fingerprint(hub.certs.leaf_fingerprint()),
    ] {
        let mut by_cert = HubConfig::new(hub.url(), HOST);
        by_cert.tls = tls;
        by_cert.client_identity = Some(hub.certs.client(&hub.scratch, HOST));
        let mut r = report.clone();
        r.revision_applied = Some(11);
        assert_eq!(
            HubSource::new(by_cert.clone())
                .unwrap()
                .report(&r)
                .await
                .unwrap(),
            ReportOutcome::Accepted
        );
        let back =
            Report::parse(&std::fs::read(hub.host_dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(back.revision_applied, Some(11));
        by_cert.client_identity = Some(hub.certs.client(&hub.scratch, "pve2"));
        let e = HubSource::new(by_cert)
            .unwrap()
            .report(&report)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("401"),
            "pve2's certificate wrote pve1's report: {e}"
        );
    }
    let mut bad = HubConfig::new(hub.url(), HOST);
    bad.client_identity = Some((hub.scratch.join("missing.pem"), hub.scratch.join("k")));
    assert_eq!(HubSource::new(bad).unwrap_err().code(), "hub_tls");

    // The PUT location takes nothing but report.json: the document itself is not writable.
    hub.put("desired.toml", "revision = 1\n");
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&hub.certs.ca_pem).unwrap()).unwrap(),
        )
        .build();
    if let Ok(client) = client {
        for (method, path) in [
            (reqwest::Method::PUT, "desired.toml"),
            (reqwest::Method::PUT, "approvals/index.json"),
            (reqwest::Method::DELETE, "report.json"),
            (reqwest::Method::GET, "report.json"),
        ] {
            let r = client
                .request(method.clone(), format!("{}/hosts/{HOST}/{path}", hub.url()))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body("revision = 999\n")
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error(),
                "{method} {path} answered {}",
                r.status()
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(hub.host_dir.join("desired.toml")).unwrap(),
        "revision = 1\n"
    );
    assert!(hub.host_dir.join("report.json").exists());
}

fn write_config(h: &Host, hub: &HubDir, token: &Path) {
    let text = format!(
        "host = \"{HOST}\"\nfleet = \"test-fleet-1\"\nstate_dir = {state:?}\ninterval = \"1s\"\n\n\
         [proxmox]\nurl = {url:?}\ntoken_id = {tok:?}\ntoken_secret_file = {secret:?}\nfingerprint = {fp:?}\ntask_poll_interval = \"20ms\"\n\n\
         [source]\nurl = {hub:?}\nca_file = {ca:?}\ntimeout = \"2s\"\nbearer_token_file = {token:?}\n\n\
         [trust]\nfile = {trust:?}\n\n[control]\nsocket = {sock:?}\n\n[safety]\nstorage = \"local\"\n",
        state = h.state(),
        url = h.sim.base_url(),
        tok = pve_sim::DEFAULT_TOKEN_ID,
        secret = h.root().join("pve-token"),
        fp = h.sim.fingerprint(),
        hub = hub.url(),
        ca = hub.certs.ca_pem,
        trust = trust_file(),
        sock = h.root().join("drover.sock"),
    );
    std::fs::write(h.config(), text).unwrap();
}

fn report_of(hub: &HubDir) -> Option<Report> {
    std::fs::read(hub.host_dir.join("report.json"))
        .ok()
        .and_then(|b| Report::parse(&b).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_the_agent_follows_and_a_fleet_signed_approval_runs() {
    if skip() {
        return;
    }
    let Some(hub) = HubDir::start_with(HOST, &[(HOST, TOKEN)]) else {
        return;
    };
    let tree = hub.tree();
    let hub_key = key(&hub.scratch, "TEST_hub_ed25519");
    let token = hub.scratch.join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    // Both created by Drover from the published document (seeded guests would wait for
    // adoption).
    let h = Host::start(vec![]).await;
    write_config(&h, &hub, &token);
    hub.put(
        "desired.toml",
        &format!(
            "revision = 1\n{}{}",
            guest(101, "running", 256),
            guest(102, "running", 256)
        ),
    );
    // A hand-written, wrong index is replaced by the generated one.
    hub.put("approvals/index.json", "[\"gone.txt\"]");
    assert_eq!(publish(&tree, &hub_key, &[]).status.code(), Some(0));
    assert_eq!(
        std::fs::read(hub.host_dir.join("approvals/index.json")).unwrap(),
        b"[]\n"
    );
    let d = h.spawn_daemon();
    eventually(
        &d,
        Duration::from_secs(30),
        "CT 101 started from the published document",
        || h.sim.guest(101).is_some_and(|g| g.running),
    )
    .await;
    eventually(
        &d,
        Duration::from_secs(20),
        "a report of revision 1 via WebDAV",
        || report_of(&hub).is_some_and(|r| r.revision_applied == Some(1)),
    )
    .await;
    let st = fleet_async(&["status", p(&tree), "--output", "json"]).await;
    let rows = json(&st);
    assert_eq!(rows[0]["published_revision"], 1, "{rows}");
    assert_eq!(rows[0]["revision_applied"], 1, "{rows}");
    assert_eq!(rows[0]["trust_version"], 1, "{rows}");

    // Revision 2 destroys 102: the agent holds it and reports the request.
    hub.put(
        "desired.toml",
        &format!(
            "revision = 2\n{}[[guest]]\nvmid = 102\nensure = \"absent\"\n",
            guest(101, "running", 256)
        ),
    );
    assert_eq!(publish(&tree, &hub_key, &[]).status.code(), Some(0));
    eventually(
        &d,
        Duration::from_secs(30),
        "the destroy request in the report",
        || report_of(&hub).is_some_and(|r| !r.pending_approvals.is_empty()),
    )
    .await;
    assert!(h.sim.guest(102).is_some(), "destroyed without a signature");
    let out = fleet_async(&["pending", p(&tree), "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(2), "pending work exits 2");
    let v = json(&out);
    let a = &v["approvals"][0];
    assert_eq!(a["host"], HOST, "{v}");
    assert_eq!(a["vmid"], 102, "{v}");
    assert_eq!(a["op"], "destroy_guest", "{v}");
    assert!(a["loses"].as_str().unwrap().contains("volumes"), "{v}");
    assert_eq!(a["expired"], false, "{v}");
    assert!(a["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");
    let st = json(&fleet_async(&["status", p(&tree), "--output", "json"]).await);
    assert_eq!(st[0]["state"], "pending", "{st}");

    // A selection that matches nothing extracts nothing.
    let none = hub.scratch.join("none");
    let v = json(
        &fleet_async(&[
            "pending",
            p(&tree),
            "--op",
            "rollback_snapshot",
            "--extract",
            p(&none),
            "--output",
            "json",
        ])
        .await,
    );
    assert!(v["approvals"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["extracted"].as_array().unwrap().is_empty(), "{v}");
    // Extract and sign with the real ssh-keygen in one run, then place on the hub.
    let work = hub.scratch.join("to-sign");
    let op_key = key(&hub.scratch, "TEST_operator1_ed25519");
    let out = fleet_async(&[
        "pending",
        p(&tree),
        "--extract",
        p(&work),
        "--key",
        p(&op_key),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ])
    .await;
    let v = json(&out);
    assert_eq!(v["extracted"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["sign_command"]
            .as_str()
            .unwrap()
            .contains(&format!("-n destructive-op-v1@{DOMAIN}")),
        "{v}"
    );
    assert!(work.join(HOST).join("102-destroy_guest.txt.sig").exists());
    let out = fleet_async(&[
        "add-approvals",
        p(&tree),
        p(&work),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(
        v["approvals"][0]["signers"][0], "operator1@example.invalid",
        "{v}"
    );
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(hub.host_dir.join("approvals/index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index,
        vec![
            "102-destroy_guest.txt".to_string(),
            "102-destroy_guest.txt.operator1@example.invalid.sig".to_string()
        ]
    );
    eventually(
        &d,
        Duration::from_secs(30),
        "the fleet-approved destroy",
        || h.sim.guest(102).is_none(),
    )
    .await;
    assert_eq!(h.sim.count_mutations("destroy", 102), 1);
    eventually(&d, Duration::from_secs(20), "a converged report", || {
        report_of(&hub).is_some_and(|r| {
            r.pending_approvals.is_empty()
                && r.revision_applied == Some(2)
                && r.guests().iter().all(|g| g.state == "converged")
        })
    })
    .await;
    let out = fleet_async(&["status", p(&tree)]).await;
    assert_eq!(out.status.code(), Some(0), "everything converged");
    assert!(String::from_utf8_lossy(&out.stdout).contains("converged"));
    d.stop().await;
}

/// A fresh request for `host`, as an agent renders it.
fn request(host: &str, vmid: u32, expires_in: i64) -> String {
    let ctx = gate::GateContext {
        fleet: "test-fleet-1".into(),
        host: host.into(),
        domain: DOMAIN.into(),
        epoch: "0123456789abcdef".into(),
    };
    let action = gate::PlannedAction {
        op: gate::Op::DestroyGuest,
        vmid,
        guest_config_sha1: Some("6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c".into()),
        params: [("purge".to_string(), "1".to_string())].into(),
        bind: Default::default(),
    };
    let t = now();
    gate::render_request(
        &ctx,
        &action,
        &gate::nonce_hex([7; 16]),
        t - 60,
        t + expires_in,
        gate::Role::Operational,
        None,
    )
    .unwrap()
}

/// The refusal code `add-approvals --output json` gave the file for `vmid` (null: placed).
fn refusal_code(v: &serde_json::Value, vmid: u32) -> serde_json::Value {
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["vmid"] == vmid)
        .map(|a| a["refusal"]["code"].clone())
        .unwrap()
}

#[test]
fn add_approvals_checks_each_file_and_keeps_the_others() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("hosts/pve1")).unwrap();
    let work = tmp.path().join("work");
    let keys = tmp.path().join("keys");
    for d in [&work, &keys] {
        std::fs::create_dir_all(d).unwrap();
    }
    let ns = format!("destructive-op-v1@{DOMAIN}");
    let put = |name: &str, text: &str, key_name: &str, namespace: &str| {
        let f = work.join(name);
        std::fs::write(&f, text).unwrap();
        let sig = common::sign(key_name, namespace, &f, &keys);
        std::fs::rename(sig, work.join(format!("{name}.sig"))).unwrap();
    };
    put(
        "101-destroy_guest.txt",
        &request("pve1", 101, 3600),
        "gate/TEST_operator1_ed25519",
        &ns,
    );
    put(
        "102-destroy_guest.txt",
        &request("pve1", 102, -10),
        "gate/TEST_operator1_ed25519",
        &ns,
    );
    put(
        "103-destroy_guest.txt",
        &request("pve9", 103, 3600),
        "gate/TEST_operator1_ed25519",
        &ns,
    );
    put(
        "104-destroy_guest.txt",
        &request("pve1", 104, 3600),
        "gate/TEST_operator1_ed25519",
        "file@example.invalid",
    );
    put(
        "105-destroy_guest.txt",
        &request("pve1", 105, 3600),
        "gate/TEST_stranger_ed25519",
        &ns,
    );
    let trust_path = trust_file();
    let out = fleet(&[
        "add-approvals",
        p(&tree),
        p(&work),
        "--trust",
        p(&trust_path),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "refusals exit 1");
    let v = json(&out);
    let code_of = |vmid: u32| refusal_code(&v, vmid);
    assert!(code_of(101).is_null(), "{v}");
    assert_eq!(code_of(102), "expired", "{v}");
    assert_eq!(code_of(103), "unknown_host", "{v}");
    assert_eq!(code_of(104), "wrong_namespace", "{v}");
    assert_eq!(code_of(105), "unknown_signer", "{v}");
    let approvals = tree.join("hosts/pve1/approvals");
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(approvals.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index,
        vec![
            "101-destroy_guest.txt".to_string(),
            "101-destroy_guest.txt.operator1@example.invalid.sig".to_string()
        ]
    );
    // Without a trust document only the structure is checked; the signature file is named
    // by its key. A renewed request under the same name replaces the old one and its
    // signatures.
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let renewed = request("pve1", 101, 1800);
    put(
        "101-destroy_guest.txt",
        &renewed,
        "gate/TEST_operator2_ecdsa_p256",
        &ns,
    );
    let out = fleet(&[
        "add-approvals",
        p(&tree),
        p(&work.join("101-destroy_guest.txt")),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let names: Vec<String> =
        serde_json::from_slice(&std::fs::read(approvals.join("index.json")).unwrap()).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[1].starts_with("101-destroy_guest.txt.k") && names[1].ends_with(".sig"));
    assert_eq!(
        std::fs::read_to_string(approvals.join("101-destroy_guest.txt")).unwrap(),
        renewed
    );
    assert!(
        !approvals
            .join("101-destroy_guest.txt.operator1@example.invalid.sig")
            .exists()
    );
}

#[test]
fn publish_adopts_a_hand_signed_tree_resigns_a_lost_signature_and_respects_index_limits() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let host = tree.join("hosts/pve1");
    std::fs::create_dir_all(&host).unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let doc = host.join("desired.toml");
    std::fs::write(
        &doc,
        format!("revision = 7\n{}", guest(101, "running", 256)),
    )
    .unwrap();
    // Signed by hand with the hub key, as before the fleet tools.
    let sig = common::sign(
        "gate/TEST_hub_ed25519",
        &format!("desired-state-v1@{DOMAIN}"),
        &doc,
        &scratch,
    );
    std::fs::copy(&sig, host.join("desired.toml.sig")).unwrap();
    let hub_key = key(&scratch, "TEST_hub_ed25519");
    let sig_bytes = std::fs::read(host.join("desired.toml.sig")).unwrap();
    let v = json(&publish(&tree, &hub_key, &[]));
    assert_eq!(host_line(&v, "pve1")["action"], "unchanged", "{v}");
    assert_eq!(
        std::fs::read(host.join("desired.toml.sig")).unwrap(),
        sig_bytes
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.join("published.json")).unwrap()).unwrap();
    assert_eq!(record["revision"], 7, "the hand-signed revision is adopted");
    // The signature is lost: the same bytes are signed again (same revision, no refusal).
    std::fs::remove_file(host.join("desired.toml.sig")).unwrap();
    let v = json(&publish(&tree, &hub_key, &[]));
    assert_eq!(host_line(&v, "pve1")["action"], "resign", "{v}");
    assert!(host.join("desired.toml.sig").exists());
    // More approval files than an agent accepts in one index: refused, nothing written.
    let approvals = host.join("approvals");
    std::fs::create_dir_all(&approvals).unwrap();
    for i in 0..300 {
        std::fs::write(approvals.join(format!("{i}-stop.txt")), "x").unwrap();
        std::fs::write(approvals.join(format!("{i}-stop.txt.sig")), "s").unwrap();
    }
    let index_before = std::fs::read(approvals.join("index.json")).unwrap();
    let out = publish(&tree, &hub_key, &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(
        host_line(&v, "pve1")["refusal"]["code"],
        "hub_approvals_invalid",
        "{v}"
    );
    assert_eq!(
        std::fs::read(approvals.join("index.json")).unwrap(),
        index_before
    );
}

#[test]
fn add_approvals_places_a_signed_trust_rotation_for_every_host() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for h in ["pve1", "pve2"] {
        std::fs::create_dir_all(tree.join("hosts").join(h)).unwrap();
    }
    if skip() {
        return;
    }
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    let v1 = std::fs::read_to_string(trust_file()).unwrap();
    let v2 = common::successor(&v1, 2, "");
    let ns = format!("trust-rotation-v1@{DOMAIN}");
    for d in [&good, &bad] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("trust-v2.txt"), &v2).unwrap();
    }
    for who in ["recovery1", "recovery2"] {
        let keys = tmp.path().join(who);
        std::fs::create_dir_all(&keys).unwrap();
        let sig = common::sign(
            &format!("gate/TEST_{who}_ed25519"),
            &ns,
            &good.join("trust-v2.txt"),
            &keys,
        );
        std::fs::rename(sig, good.join(format!("trust-v2.txt.{who}.sig"))).unwrap();
    }
    let keys = tmp.path().join("op");
    std::fs::create_dir_all(&keys).unwrap();
    let sig = common::sign(
        "gate/TEST_operator1_ed25519",
        &ns,
        &bad.join("trust-v2.txt"),
        &keys,
    );
    std::fs::rename(sig, bad.join("trust-v2.txt.sig")).unwrap();
    let trust_path = trust_file();
    let args = |dir: &Path| {
        fleet(&[
            "add-approvals",
            p(&tree),
            p(dir),
            "--trust",
            p(&trust_path),
            "--output",
            "json",
        ])
    };
    // Signed by an operator only: refused with the gate's code, nothing placed.
    let out = args(&bad);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert!(v["approvals"][0]["refusal"]["code"].is_string(), "{v}");
    assert!(!tree.join("hosts/pve1/approvals/trust-v2.txt").exists());
    // Both recovery keys: placed for every host, signatures named by principal.
    let out = args(&good);
    assert_eq!(out.status.code(), Some(0));
    for h in ["pve1", "pve2"] {
        let index: Vec<String> = serde_json::from_slice(
            &std::fs::read(tree.join("hosts").join(h).join("approvals/index.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            index,
            vec![
                "trust-v2.txt".to_string(),
                "trust-v2.txt.recovery1@example.invalid.sig".to_string(),
                "trust-v2.txt.recovery2@example.invalid.sig".to_string()
            ],
            "{h}"
        );
    }
}

#[test]
fn pending_flags_requests_the_document_does_not_explain_and_never_extracts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let host = tree.join("hosts/pve1");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(
        host.join("desired.toml"),
        format!(
            "revision = 4\n{}[[guest]]\nvmid = 102\nensure = \"absent\"\n",
            guest(101, "running", 256)
        ),
    )
    .unwrap();
    // A report (anyone with the upload credential can write one) asking to destroy 101,
    // which the document wants running, and 102, which it wants absent.
    let pending = |vmid: u32| drover::desired::report::PendingRequest {
        file: format!("{vmid}-destroy_guest.txt"),
        text: request("pve1", vmid, 3600),
        sign: format!("ssh-keygen -Y sign -f K -n destructive-op-v1@{DOMAIN} x"),
        loses: None,
    };
    let report = Report::new(
        serde_json::json!({"host": "pve1", "desired": {"revision": 4}}),
        vec![pending(101), pending(102)],
        serde_json::json!([]),
        now(),
    );
    std::fs::write(
        host.join("report.json"),
        serde_json::to_vec(&report).unwrap(),
    )
    .unwrap();
    let dir = tmp.path().join("to-sign");
    let out = fleet(&[
        "pending",
        p(&tree),
        "--extract",
        p(&dir),
        "--output",
        "json",
    ]);
    let v = json(&out);
    let by_vmid = |vmid: u32| {
        v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["vmid"] == vmid)
            .unwrap()
            .clone()
    };
    assert!(
        by_vmid(101)["unexplained"]
            .as_str()
            .unwrap()
            .contains("wants guest 101 running"),
        "{v}"
    );
    assert!(by_vmid(102)["unexplained"].is_null(), "{v}");
    assert_eq!(v["extracted"].as_array().unwrap().len(), 1, "{v}");
    assert!(dir.join("pve1/102-destroy_guest.txt").exists());
    assert!(!dir.join("pve1/101-destroy_guest.txt").exists());
    let text = fleet(&["pending", p(&tree)]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("unexplained"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

/// A verb that fails with `--output json` answers JSON too: `{"error": {"code", "message"}}`
/// on stdout (exit 1), so a hub pipeline reads the code without parsing prose; stderr keeps
/// the text line. Without `--output json` stdout stays empty.
#[test]
fn a_failing_verb_with_json_output_answers_a_json_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-tree");
    let out = fleet(&["status", p(&missing), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["code"], "fleet_tree", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no-tree"),
        "the message names the tree: {v}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fleet_tree: "), "{stderr}");

    let trust = tmp.path().join("trust");
    std::fs::write(&trust, "not a trust document\n").unwrap();
    std::fs::create_dir_all(tmp.path().join("tree/hosts")).unwrap();
    let tree = tmp.path().join("tree");
    let key = tmp.path().join("key");
    let out = fleet(&[
        "publish",
        p(&tree),
        "--key",
        p(&key),
        "--trust",
        p(&trust),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["code"], "trust_store_invalid");

    let out = fleet(&["status", p(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "text mode prints nothing on stdout");
}

/// A signed job goes the hub team's way: the agent reports the request `drover job new`
/// rendered, `fleet pending --extract --key` writes and signs it as it does approvals, and
/// `fleet add-approvals` places it under `hosts/<host>/jobs/` with its index. The agent
/// mirrors it from nginx and runs it once, and a later `fleet publish` keeps that index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_request_is_extracted_signed_and_placed_by_the_fleet_tools_and_runs_once() {
    if skip() {
        return;
    }
    let Some(hub) = HubDir::start_with(HOST, &[(HOST, TOKEN)]) else {
        return;
    };
    let tree = hub.tree();
    let hub_key = key(&hub.scratch, "TEST_hub_ed25519");
    let token = hub.scratch.join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let h = Host::start(vec![]).await;
    write_config(&h, &hub, &token);
    hub.put(
        "desired.toml",
        &format!("revision = 1\n{}", guest(101, "running", 256)),
    );
    assert_eq!(publish(&tree, &hub_key, &[]).status.code(), Some(0));
    assert!(
        !hub.host_dir.join("jobs").exists(),
        "no jobs/ is written for a host without jobs (the agent reads the 404 as none)"
    );
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(30), "CT 101 started", || {
        h.sim.guest(101).is_some_and(|g| g.running)
    })
    .await;
    let out = h
        .drover_async(&[
            "job",
            "new",
            "snapshot",
            "--vmid",
            "101",
            "--snapshot",
            "via-fleet",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        &d,
        Duration::from_secs(30),
        "the job request in the report",
        || report_of(&hub).is_some_and(|r| !r.pending_jobs.is_empty()),
    )
    .await;

    let work = hub.scratch.join("to-sign");
    let op_key = key(&hub.scratch, "TEST_operator1_ed25519");
    let out = fleet_async(&[
        "pending",
        p(&tree),
        "--op",
        "snapshot",
        "--extract",
        p(&work),
        "--key",
        p(&op_key),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "a job waits for a signature");
    let v = json(&out);
    let r = &v["job_requests"][0];
    assert_eq!(r["host"], HOST, "{v}");
    assert_eq!(r["vmid"], 101, "{v}");
    assert_eq!(r["op"], "snapshot", "{v}");
    assert!(r["loses"].as_str().unwrap().starts_with("nothing"), "{v}");
    assert!(r["problem"].is_null(), "{v}");
    assert_eq!(v["extracted"].as_array().unwrap().len(), 1, "{v}");

    let out = fleet_async(&[
        "add-approvals",
        p(&tree),
        p(&work),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json(&out);
    let placed = v["approvals"][0]["placed"].as_str().unwrap().to_string();
    assert!(placed.starts_with(&format!("hosts/{HOST}/jobs/")), "{v}");
    assert_eq!(
        v["approvals"][0]["signers"][0], "operator1@example.invalid",
        "{v}"
    );
    assert_eq!(v["job_indexes_written"][0], HOST, "{v}");
    let index_path = hub.host_dir.join("jobs/index.json");
    let index: Vec<String> = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let name = placed.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        index,
        vec![
            name.clone(),
            format!("{name}.operator1@example.invalid.sig")
        ]
    );
    // A later publish keeps the jobs index byte for byte, and does not even touch it (its
    // mtime is nginx's ETag: the agents' polls stay 304).
    let bytes = std::fs::read(&index_path).unwrap();
    let mtime = std::fs::metadata(&index_path).unwrap().modified().unwrap();
    assert_eq!(publish(&tree, &hub_key, &[]).status.code(), Some(0));
    assert_eq!(std::fs::read(&index_path).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&index_path).unwrap().modified().unwrap(),
        mtime
    );

    eventually(
        &d,
        Duration::from_secs(30),
        "the fleet-placed job ran",
        || h.sim.count_mutations("snapshot", 101) == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.sim.count_mutations("snapshot", 101), 1, "once");
    d.stop().await;
}

/// A signed job for `host`, as `drover job new` renders it (a snapshot of `vmid`).
fn job_request(host: &str, vmid: u32, expires_in: i64, nonce_byte: u8) -> (String, String) {
    job_of(gate::JobKind::Snapshot, host, vmid, expires_in, nonce_byte)
}

/// A job of `kind` on snapshot `before-upgrade` of `vmid` (an existing guest), and its file
/// name as the agent gives it.
fn job_of(
    kind: gate::JobKind,
    host: &str,
    vmid: u32,
    expires_in: i64,
    nonce_byte: u8,
) -> (String, String) {
    let ctx = gate::GateContext {
        fleet: "test-fleet-1".into(),
        host: host.into(),
        domain: DOMAIN.into(),
        epoch: "0123456789abcdef".into(),
    };
    let job = gate::PlannedJob {
        kind,
        vmid,
        guest_config_sha1: Some("6c1f0ad1c7d64e1e0a7b2a4f0b8f2e3c9d1a2b3c".into()),
        params: [("snapname".to_string(), "before-upgrade".to_string())].into(),
        binds: Default::default(),
    };
    let nonce = gate::nonce_hex([nonce_byte; 16]);
    let t = now();
    let text = gate::render_job_request(&ctx, &job, &nonce, t - 60, t + expires_in, None).unwrap();
    let kind = kind.as_str().replace('_', "-");
    (format!("{vmid}-{kind}-{}.txt", &nonce[..8]), text)
}

/// `add-approvals` checks a signed job as the agent's control socket does before placing it
/// under `jobs/`: host, expiry, fleet and signers against the trust document; a refused one
/// is reported with its code and the others still go in.
#[test]
fn add_approvals_checks_signed_jobs_and_places_them_under_jobs() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("hosts/pve1")).unwrap();
    let work = tmp.path().join("work");
    let keys = tmp.path().join("keys");
    for d in [&work, &keys] {
        std::fs::create_dir_all(d).unwrap();
    }
    let ns = format!("destructive-op-v1@{DOMAIN}");
    let put = |(name, text): (String, String), key_name: &str| {
        let f = work.join(&name);
        std::fs::write(&f, text).unwrap();
        let sig = common::sign(key_name, &ns, &f, &keys);
        std::fs::rename(sig, work.join(format!("{name}.sig"))).unwrap();
        name
    };
    let good = put(
        job_request("pve1", 101, 3600, 1),
        "gate/TEST_operator1_ed25519",
    );
    let expired = put(
        job_request("pve1", 102, -10, 2),
        "gate/TEST_operator1_ed25519",
    );
    let elsewhere = put(
        job_request("pve9", 103, 3600, 3),
        "gate/TEST_operator1_ed25519",
    );
    let stranger = put(
        job_request("pve1", 104, 3600, 4),
        "gate/TEST_stranger_ed25519",
    );
    let out = fleet(&[
        "add-approvals",
        p(&tree),
        p(&work),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "refusals exit 1");
    let v = json(&out);
    let code_of = |vmid: u32| refusal_code(&v, vmid);
    assert!(code_of(101).is_null(), "{v}");
    assert_eq!(code_of(102), "expired", "{v}");
    assert_eq!(code_of(103), "unknown_host", "{v}");
    assert_eq!(code_of(104), "unknown_signer", "{v}");
    let jobs = tree.join("hosts/pve1/jobs");
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(jobs.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index,
        vec![
            good.clone(),
            format!("{good}.operator1@example.invalid.sig")
        ]
    );
    for refused in [expired, elsewhere, stranger] {
        assert!(!jobs.join(&refused).exists(), "{refused} was placed");
    }
    assert!(
        !tree.join("hosts/pve1/approvals").join(&good).exists(),
        "a job never lands among the approvals"
    );
}

/// A destructive job under a trust document that wants two signers: the first signer's
/// `add-approvals` places it with a note (the agent counts every signature beside it), the
/// second one's completes it; before, the first was refused and the job could never gather
/// its signatures in the tree.
#[test]
fn a_destructive_job_gathers_its_signers_across_add_approvals_runs() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("hosts/pve1")).unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let trust = tmp.path().join("trust");
    let text = std::fs::read_to_string(trust_file())
        .unwrap()
        .replace("threshold.destructive-op: 1", "threshold.destructive-op: 2");
    std::fs::write(&trust, text).unwrap();
    let ns = format!("destructive-op-v1@{DOMAIN}");
    let (name, job) = job_of(gate::JobKind::RollbackSnapshot, "pve1", 101, 3600, 9);
    let round = |signer: &str| {
        let work = tmp
            .path()
            .join(format!("work-{}", signer.replace('/', "-")));
        std::fs::create_dir_all(&work).unwrap();
        let f = work.join(&name);
        std::fs::write(&f, &job).unwrap();
        let sig = common::sign(signer, &ns, &f, &keys);
        std::fs::rename(sig, work.join(format!("{name}.sig"))).unwrap();
        let out = fleet(&[
            "add-approvals",
            p(&tree),
            p(&work),
            "--trust",
            p(&trust),
            "--output",
            "json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        json(&out)["approvals"][0].clone()
    };
    let first = round("gate/TEST_operator1_ed25519");
    assert!(first["refusal"].is_null(), "{first}");
    assert!(
        first["note"]
            .as_str()
            .unwrap()
            .contains("2 distinct principal"),
        "{first}"
    );
    let second = round("gate/TEST_operator2_ecdsa_p256");
    assert!(
        second["refusal"].is_null() && second["note"].is_null(),
        "{second}"
    );
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(tree.join("hosts/pve1/jobs/index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index,
        vec![
            name.clone(),
            format!("{name}.operator1@example.invalid.sig"),
            format!("{name}.operator2@example.invalid.sig"),
        ]
    );
}

/// Job requests in a report: one whose file name does not match the job (`../`, another
/// nonce) is invalid and never extracted; with `--key` (signed unread) a destructive job is
/// held back unless `--op` names its kind, and a snapshot is extracted.
#[test]
fn job_requests_with_bad_names_are_not_extracted_and_destructive_ones_are_not_signed_unread() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let host = tree.join("hosts/pve1");
    std::fs::create_dir_all(&host).unwrap();
    let req = |(file, text): (String, String)| drover::desired::report::PendingRequest {
        file,
        text,
        sign: format!("ssh-keygen -Y sign -f K -n destructive-op-v1@{DOMAIN} x"),
        loses: None,
    };
    let snapshot = job_of(gate::JobKind::Snapshot, "pve1", 101, 3600, 1);
    let rollback = job_of(gate::JobKind::RollbackSnapshot, "pve1", 102, 3600, 2);
    let traversal = (
        "../../evil.txt".to_string(),
        job_of(gate::JobKind::Snapshot, "pve1", 103, 3600, 3).1,
    );
    let renamed = (
        "104-snapshot-ffffffff.txt".to_string(),
        job_of(gate::JobKind::Snapshot, "pve1", 104, 3600, 4).1,
    );
    let mut report = Report::new(
        serde_json::json!({"host": "pve1", "desired": {"revision": 1}}),
        Vec::new(),
        serde_json::json!([]),
        now(),
    );
    report.pending_jobs = vec![
        req(snapshot.clone()),
        req(rollback.clone()),
        req(traversal),
        req(renamed),
    ];
    std::fs::write(
        host.join("report.json"),
        serde_json::to_vec(&report).unwrap(),
    )
    .unwrap();
    let work = tmp.path().join("to-sign");
    let op_key = key(tmp.path(), "TEST_operator1_ed25519");
    let out = fleet(&[
        "pending",
        p(&tree),
        "--extract",
        p(&work),
        "--key",
        p(&op_key),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ]);
    let v = json(&out);
    let by_vmid = |vmid: u32| {
        v["job_requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["vmid"] == vmid)
            .unwrap()
            .clone()
    };
    assert!(
        by_vmid(103)["problem"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{v}"
    );
    assert!(
        by_vmid(104)["problem"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{v}"
    );
    assert_eq!(by_vmid(102)["destructive"], true, "{v}");
    assert_eq!(by_vmid(101)["destructive"], false, "{v}");
    let extracted: Vec<String> = v["extracted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        extracted,
        vec![p(&work.join("pve1").join(&snapshot.0)).to_string()],
        "{v}"
    );
    assert!(
        v["held_back"][0].as_str().unwrap().contains(&rollback.0),
        "{v}"
    );
    assert!(!tmp.path().join("evil.txt").exists());
    assert!(
        work.join("pve1")
            .join(format!("{}.sig", snapshot.0))
            .exists(),
        "signed"
    );

    // Named with --op, the rollback is extracted and signed too.
    let out = fleet(&[
        "pending",
        p(&tree),
        "--op",
        "rollback_snapshot",
        "--extract",
        p(&work),
        "--key",
        p(&op_key),
        "--trust",
        p(&trust_file()),
        "--output",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["extracted"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["held_back"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        work.join("pve1")
            .join(format!("{}.sig", rollback.0))
            .exists()
    );
}

/// A job whose placing would make `jobs/index.json` longer than the agents accept is refused
/// with `hub_approvals_invalid` before anything is written, and the rest still goes in.
#[test]
fn a_job_that_would_overfill_the_index_is_refused_before_it_is_placed() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let jobs = tree.join("hosts/pve1/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    // Old jobs fill the index to the agents' limit (a payload and its signature each).
    let limit = drover::desired::hub::MAX_INDEX_ENTRIES;
    for i in 0..limit / 2 {
        std::fs::write(jobs.join(format!("old-{i}.txt")), "drover-job v1\n").unwrap();
        std::fs::write(jobs.join(format!("old-{i}.txt.sig")), "S").unwrap();
    }
    let work = tmp.path().join("work");
    let keys = tmp.path().join("keys");
    for d in [&work, &keys] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (name, text) = job_request("pve1", 101, 3600, 5);
    let f = work.join(&name);
    std::fs::write(&f, text).unwrap();
    let sig = common::sign(
        "gate/TEST_operator1_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &f,
        &keys,
    );
    std::fs::rename(sig, work.join(format!("{name}.sig"))).unwrap();
    let out = fleet(&["add-approvals", p(&tree), p(&work), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(
        v["approvals"][0]["refusal"]["code"], "hub_approvals_invalid",
        "{v}"
    );
    assert!(!jobs.join(&name).exists(), "nothing placed");
}
