//! A running `drover` daemon pulling from a real nginx hub over TLS: signed documents, an
//! approval delivered through the hub, a refused document and an unreachable hub (benign
//! convergence continues from the last verified document, destructive work is held).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Host, eventually, guest, seed, sign};
use support::hub_dir::HubDir;

const HOST: &str = "pve1";
const DOMAIN: &str = "agent.example.invalid";
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

trait Publish {
    fn publish_signed(&self, text: &str);
}

impl Publish for HubDir {
    /// Publishes a document signed with the TEST hub key (real `ssh-keygen -Y sign`).
    fn publish_signed(&self, text: &str) {
        let doc = self.put("desired.toml", text);
        self.sign(&doc, DOMAIN);
    }
}

fn write_config(h: &Host, hub: &HubDir) {
    let text = format!(
        "host = \"{HOST}\"\nfleet = \"test-fleet-1\"\nstate_dir = {state:?}\ninterval = \"1s\"\n\n\
         [proxmox]\nurl = {url:?}\ntoken_id = {tok:?}\ntoken_secret_file = {secret:?}\nfingerprint = {fp:?}\ntask_poll_interval = \"20ms\"\n\n\
         [source]\nurl = {hub:?}\nca_file = {ca:?}\ntimeout = \"2s\"\n\n\
         [trust]\nfile = {trust:?}\n\n[control]\nsocket = {sock:?}\n\n[safety]\nstorage = \"local\"\n",
        state = h.state(),
        url = h.sim.base_url(),
        tok = pve_sim::DEFAULT_TOKEN_ID,
        secret = h.root().join("pve-token"),
        fp = h.sim.fingerprint(),
        hub = hub.url(),
        ca = hub.certs.ca_pem,
        trust = repo().join("testdata/gate/trust_v1.txt"),
        sock = h.root().join("drover.sock"),
    );
    std::fs::write(h.config(), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_follows_a_signed_hub_and_holds_destructive_work_when_it_cannot_verify() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let Some(mut hub) = HubDir::start(HOST) else {
        return;
    };
    let h = Host::start(vec![
        seed(101, false, 256),
        seed(102, true, 256),
        seed(103, true, 256),
    ])
    .await;
    write_config(&h, &hub);
    hub.publish_signed(&format!(
        "revision = 1\n{}{}{}",
        guest(101, "running", 256),
        guest(102, "running", 256),
        guest(103, "running", 256)
    ));
    // The seeded guests are adopted first (one signature run over all requests).
    h.adopt_all_with("gate/TEST_operator1_ed25519", DOMAIN)
        .await;
    let d = h.spawn_daemon();
    eventually(
        &d,
        Duration::from_secs(30),
        "CT 101 started from the hub document",
        || h.sim.guest(101).is_some_and(|g| g.running),
    )
    .await;
    let s = h.status_json(Duration::from_secs(10)).await;
    assert_eq!(s["source"]["kind"], "hub", "{s}");
    assert!(s["source"]["error_code"].is_null(), "{s}");
    assert!(s["source"]["last_success_unix"].is_i64(), "{s}");
    assert_eq!(s["desired"]["stale"], false, "{s}");

    // Revision 2 asks to destroy 102: held for a signature, which arrives through the hub.
    hub.publish_signed(&format!(
        "revision = 2\n{}\n[[guest]]\nvmid = 102\nensure = \"absent\"\n{}",
        guest(101, "running", 256),
        guest(103, "running", 256)
    ));
    eventually(
        &d,
        Duration::from_secs(20),
        "an approval request for 102",
        || !h.pending_requests().is_empty(),
    )
    .await;
    assert!(h.sim.guest(102).is_some(), "destroyed without a signature");
    let request = h.pending_requests()[0].clone();
    let name = request.file_name().unwrap().to_str().unwrap().to_string();
    let sig = sign(
        "gate/TEST_operator1_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &request,
        &hub.scratch,
    );
    let approvals = hub.host_dir.join("approvals");
    std::fs::copy(&sig, approvals.join(format!("{name}.sig"))).unwrap();
    std::fs::copy(&request, approvals.join(&name)).unwrap();
    std::fs::write(
        approvals.join("index.json"),
        format!("[\"{name}\", \"{name}.sig\"]"),
    )
    .unwrap();
    eventually(
        &d,
        Duration::from_secs(20),
        "the hub-approved destroy",
        || h.sim.guest(102).is_none(),
    )
    .await;
    assert_eq!(h.sim.count_mutations("destroy", 102), 1);
    // The mirrored approval was used, then moved out of the scan's way.
    assert!(h.state().join("approvals/used").join(&name).exists());
    // The index changes (another file is listed): the used approval is not mirrored again.
    std::fs::write(approvals.join("other.txt"), "not an approval\n").unwrap();
    std::fs::write(
        approvals.join("index.json"),
        format!("[\"{name}\", \"{name}.sig\", \"other.txt\"]"),
    )
    .unwrap();
    let mirror = h.state().join("hub-approvals");
    eventually(
        &d,
        Duration::from_secs(10),
        "the new index mirrored",
        || mirror.join("other.txt").exists(),
    )
    .await;
    assert!(
        !mirror.join(&name).exists(),
        "a used approval was mirrored again"
    );

    // A trust rotation published beside the approvals, signed by both recovery keys of v1
    // (threshold 2): the agent applies it from the hub's mirror.
    let v1 = std::fs::read_to_string(repo().join("testdata/gate/trust_v1.txt")).unwrap();
    let op5 =
        std::fs::read_to_string(repo().join("testdata/gate/TEST_operator5_ed25519.pub")).unwrap();
    let op5: Vec<&str> = op5.split_whitespace().take(2).collect();
    let v2 = common::successor(
        &v1,
        2,
        &format!(
            "operator5@example.invalid namespaces=\"destructive-op-v1@{DOMAIN}\",valid-before=\"20991231235959Z\" {}\n",
            op5.join(" ")
        ),
    );
    let v2_path = hub.scratch.join("trust-v2.txt");
    std::fs::write(&v2_path, &v2).unwrap();
    let rot_ns = format!("trust-rotation-v1@{DOMAIN}");
    for who in ["recovery1", "recovery2"] {
        let dir = hub.scratch.join(who);
        std::fs::create_dir_all(&dir).unwrap();
        let sig = sign(&format!("gate/TEST_{who}_ed25519"), &rot_ns, &v2_path, &dir);
        std::fs::copy(&sig, approvals.join(format!("trust-v2.txt.{who}.sig"))).unwrap();
    }
    std::fs::copy(&v2_path, approvals.join("trust-v2.txt")).unwrap();
    std::fs::write(
        approvals.join("index.json"),
        format!(
            "[\"{name}\", \"{name}.sig\", \"other.txt\", \"trust-v2.txt\", \"trust-v2.txt.recovery1.sig\", \"trust-v2.txt.recovery2.sig\"]"
        ),
    )
    .unwrap();
    let mut trust = serde_json::Value::Null;
    for _ in 0..100 {
        trust = h.status_json(Duration::from_secs(5)).await["trust"].clone();
        if trust["version"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(trust["version"], 2, "{trust}\n{}", d.log_text());
    assert_eq!(trust["origin"], "rotation", "{trust}");

    // A document with a wrong signature (signed, then changed): refused with the gate's code;
    // its destroy of 103 never runs, but benign drift on 101 is still corrected.
    hub.publish_signed(&format!("revision = 3\n{}", guest(101, "running", 256)));
    std::fs::write(
        hub.host_dir.join("desired.toml"),
        format!(
            "revision = 3\n{}\n[[guest]]\nvmid = 103\nensure = \"absent\"\n",
            guest(101, "running", 256)
        ),
    )
    .unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        last = h.status_json(Duration::from_secs(5)).await;
        if last["source"]["error_code"] == "hub_signature_invalid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last["source"]["error_code"], "hub_signature_invalid",
        "{last}"
    );
    assert_eq!(last["desired"]["stale"], true, "{last}");
    assert_eq!(last["desired"]["revision"], 2, "{last}");
    h.sim.seed(seed(101, false, 256));
    eventually(
        &d,
        Duration::from_secs(20),
        "benign drift corrected while stale",
        || h.sim.guest(101).is_some_and(|g| g.running),
    )
    .await;
    assert!(
        h.sim.guest(103).is_some(),
        "an unverified document destroyed 103"
    );
    let table = h.drover_async(&["status"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("FAILING [hub_signature_invalid]"), "{table}");
    assert!(table.contains("STALE"), "{table}");

    // The hub goes away: reported as unreachable; convergence from revision 2 goes on.
    drop(hub.nginx.take());
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        last = h.status_json(Duration::from_secs(5)).await;
        if last["source"]["error_code"] == "hub_unreachable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["source"]["error_code"], "hub_unreachable", "{last}");
    h.sim.seed(seed(101, false, 256));
    eventually(
        &d,
        Duration::from_secs(20),
        "benign drift corrected while unreachable",
        || h.sim.guest(101).is_some_and(|g| g.running),
    )
    .await;
    assert!(h.sim.guest(103).is_some());
    let status = d.stop().await;
    assert!(status.success(), "{status:?}");

    // A restart while the hub is still down: the journal's last verified document (revision 2)
    // steers benign convergence, marked stale.
    h.sim.seed(seed(101, false, 256));
    let d = h.spawn_daemon();
    eventually(
        &d,
        Duration::from_secs(30),
        "benign convergence after a restart",
        || h.sim.guest(101).is_some_and(|g| g.running),
    )
    .await;
    let s = h.status_json(Duration::from_secs(10)).await;
    assert_eq!(s["desired"]["origin"], "journal", "{s}");
    assert_eq!(s["desired"]["revision"], 2, "{s}");
    assert_eq!(s["desired"]["stale"], true, "{s}");
    assert_eq!(s["source"]["error_code"], "hub_unreachable", "{s}");
    assert!(h.sim.guest(103).is_some());
    d.stop().await;
}

/// A signed job delivered through the hub (`hosts/<host>/jobs/`, listed in its `index.json`)
/// runs once; the hub keeps listing it afterwards without it being run or refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_job_travels_through_the_hub_and_runs_once() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let Some(hub) = HubDir::start(HOST) else {
        return;
    };
    let h = Host::start(vec![seed(101, true, 256)]).await;
    write_config(&h, &hub);
    hub.publish_signed("revision = 1\n");
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let out = h
        .drover_async(&[
            "job",
            "new",
            "snapshot",
            "--vmid",
            "101",
            "--snapshot",
            "from-the-hub",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(common::code(&out), 0, "{}", common::stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let request = PathBuf::from(v["file"].as_str().unwrap());
    let name = request.file_name().unwrap().to_str().unwrap().to_string();
    let sig = sign(
        "gate/TEST_operator1_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &request,
        &hub.scratch,
    );
    let jobs = hub.host_dir.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::copy(&sig, jobs.join(format!("{name}.sig"))).unwrap();
    std::fs::copy(&request, jobs.join(&name)).unwrap();
    std::fs::write(
        jobs.join("index.json"),
        format!("[\"{name}\", \"{name}.sig\"]"),
    )
    .unwrap();
    let done = || {
        let out = h.command(&["jobs", "--output", "json"]).output().unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter().any(|r| r["state"] == "done")
    };
    eventually(&d, Duration::from_secs(30), "the hub's job to run", done).await;
    // Several more passes: still listed by the hub, never run or refused again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.sim.count_mutations("snapshot", 101), 1);
    let out = h.command(&["jobs", "--output", "json"]).output().unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    d.stop().await;
}
