//! Adoption end to end: a guest Drover did not create is unmanaged until an operator signs an
//! `adopt` approval for it (bound to host, guest, config digest and nonce). Until then its entry
//! plans nothing but the pending `adopt` request, shown by `plan`, `status` and `approvals`.
//! Real `drover` child processes, pve-sim over real TLS, real ssh-keygen signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{DOMAIN, Host, code, eventually, guest, seed, sign, sign_all, stdout};

const OPERATOR: &str = "demo/TEST_demo_operator_ed25519";

fn ns() -> String {
    format!("destructive-op-v1@{DOMAIN}")
}

/// What a hub could ask of a customer's CT: stop it, 16 MiB, another bridge, no firewall.
fn hostile_entry(vmid: u32) -> String {
    guest(vmid, "stopped", 16).replace(
        "name=eth0,bridge=vmbr0,ip=dhcp",
        "name=eth0,bridge=vmbr9,firewall=0,ip=dhcp",
    )
}

fn customer_ct(vmid: u32) -> pve_sim::SeedGuest {
    let mut g = seed(vmid, true, 2048);
    g.net0 = Some("name=eth0,bridge=vmbr0,firewall=1,ip=dhcp".into());
    g
}

fn plan_of(h: &Host, json: &serde_json::Value, vmid: u32) -> serde_json::Value {
    let _ = h;
    json["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == vmid)
        .cloned()
        .unwrap_or_else(|| panic!("no plan for CT {vmid}: {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_drover_did_not_create_is_untouched_until_an_operator_adopts_it() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![customer_ct(301)]).await;
    h.desired(&format!("revision = 1\n{}", hostile_entry(301)));

    // plan: nothing but the adopt step, destructive (needs a signature).
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    assert_eq!(code(&plan), 2);
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let g = plan_of(&h, &v, 301);
    let steps = g["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{g}");
    assert_eq!(steps[0]["kind"], "adopt", "{g}");
    assert_eq!(steps[0]["class"], "destructive", "{g}");
    assert!(
        g["notes"].to_string().contains("unmanaged_until_adopted"),
        "{g}"
    );
    let text = stdout(&h.drover_async(&["plan"]).await);
    assert!(text.contains("CT 301: adopt"), "{text}");
    assert!(text.contains("1 to adopt"), "{text}");

    // run: no mutation at all, one pending adopt request bound to the guest's digest.
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert!(
        h.sim.mutations().is_empty(),
        "an unadopted guest was changed: {:?}",
        h.sim.mutations()
    );
    let pending = h.pending_requests();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].ends_with("301-adopt.txt"), "{pending:?}");
    let request = std::fs::read_to_string(&pending[0]).unwrap();
    for line in [
        "op: adopt\n",
        "guest: lxc/301\n",
        "host: pve1\n",
        "guest-config-sha1: ",
        "nonce: ",
    ] {
        assert!(request.contains(line), "{line:?} missing in {request}");
    }
    assert!(!request.contains("param."), "{request}");

    // approvals lists it with the sign command.
    let a = h.drover_async(&["approvals", "--output", "json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(
        rows[0]["text"].as_str().unwrap().contains("op: adopt"),
        "{rows}"
    );

    // status (a running daemon) shows it as awaiting approval; still nothing changes.
    let d = h.spawn_daemon();
    let mut shown = serde_json::Value::Null;
    for _ in 0..100 {
        shown = h.status_json(Duration::from_secs(10)).await;
        if shown.to_string().contains("adopt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown.to_string().contains("adopt"), "{shown}");
    let table = stdout(&h.drover_async(&["status"]).await);
    assert!(table.contains("adopt"), "{table}");

    // A stranger's signature adopts nothing.
    let request = h.pending_requests()[0].clone();
    std::fs::create_dir_all(h.root().join("stranger")).unwrap();
    let bad = sign(
        "gate/TEST_stranger_ed25519",
        &ns(),
        &request,
        &h.root().join("stranger"),
    );
    let copy_bad = h.root().join("stranger").join("301-adopt.txt");
    let r = h.submit("approve", &copy_bad, &[&bad]).await;
    assert_eq!(code(&r), 1, "{}", stdout(&r));

    // The operator signs, but the CT changes before the approval arrives: stale, refused.
    std::fs::create_dir_all(h.root().join("op1")).unwrap();
    let sig = sign(OPERATOR, &ns(), &request, &h.root().join("op1"));
    let copy = h.root().join("op1").join("301-adopt.txt");
    assert!(h.sim.alter(301, |ct| {
        ct.conf.insert("cores".into(), "2".into());
    }));
    h.submit("approve", &copy, &[&sig]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.sim.mutations().is_empty(),
        "adopted with a stale approval: {:?}",
        h.sim.mutations()
    );
    assert_eq!(h.sim.guest(301).unwrap().memory, 2048);

    // Signed again for the CT as it is now: adopted, then managed like Drover's own.
    let mut fresh = None;
    eventually(
        &d,
        Duration::from_secs(20),
        "a renewed adopt request",
        || {
            fresh = h
                .pending_requests()
                .into_iter()
                .find(|p| p.ends_with("301-adopt.txt"))
                .filter(|p| std::fs::read(p).ok() != std::fs::read(&copy).ok());
            fresh.is_some()
        },
    )
    .await;
    let fresh = fresh.unwrap();
    std::fs::create_dir_all(h.root().join("op2")).unwrap();
    let sig = sign(OPERATOR, &ns(), &fresh, &h.root().join("op2"));
    let copy = h.root().join("op2").join("301-adopt.txt");
    let r = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    eventually(
        &d,
        Duration::from_secs(30),
        "the adopted CT managed",
        || {
            h.sim
                .guest(301)
                .is_some_and(|g| !g.running && g.memory == 16 && g.cores == 1)
        },
    )
    .await;
    let net = h.sim.guest(301).unwrap().net0.unwrap();
    assert!(
        net.contains("bridge=vmbr9") && net.contains("firewall=0"),
        "{net}"
    );
    let audit = stdout(&h.drover_async(&["journal", "--audit"]).await);
    assert!(
        audit.contains("CT 301 adopt [operator@demo.invalid"),
        "{audit}"
    );
    assert!(d.stop().await.success());
}

/// After adoption the guest is managed like one Drover created, and destroying it still needs
/// its own signature; one `ssh-keygen -Y sign ... a.txt b.txt c.txt` signs all the adopt
/// requests of a host at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_an_adopted_guest_still_needs_its_own_signature() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![
        seed(311, true, 256),
        seed(312, true, 256),
        seed(313, true, 256),
    ])
    .await;
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(311, "running", 512),
        guest(312, "running", 256),
        guest(313, "running", 256)
    ));
    let mut adopted = h.adopt_all().await;
    adopted.sort();
    assert_eq!(
        adopted,
        vec![311, 312, 313],
        "one signing run for all three"
    );
    assert!(h.sim.mutations().is_empty());
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "adopted and converged");
    assert_eq!(
        h.sim.guest(311).unwrap().memory,
        512,
        "managed after adoption"
    );
    let kept_adopt = h.root().join("adopt-signing").join("311-adopt.txt");

    h.desired(&format!(
        "revision = 2\n[[guest]]\nvmid = 311\nensure = \"absent\"\n{}{}",
        guest(312, "running", 256),
        guest(313, "running", 256)
    ));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let g = plan_of(&h, &v, 311);
    assert_eq!(g["steps"][0]["kind"], "destroy_guest", "{g}");
    assert_eq!(g["steps"][0]["class"], "destructive", "{g}");
    // The adopt approval, offered again, does not approve the destroy.
    let sig = std::path::PathBuf::from(format!("{}.sig", kept_adopt.display()));
    h.submit("approve", &kept_adopt, &[&sig]).await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    assert_eq!(h.sim.count_mutations("destroy", 311), 0);
    let pending = h.pending_requests();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].ends_with("311-destroy_guest.txt"));
    // Its own signature destroys it.
    let signed = sign_all(OPERATOR, &ns(), &pending, &h.root().join("destroy"));
    h.submit("approve", &signed[0].0, &[&signed[0].1]).await;
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert_eq!(h.sim.count_mutations("destroy", 311), 1);
}

/// A guest that disappears behind the agent's back is forgotten: a new guest under its vmid is
/// someone else's and waits for adoption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_recreated_under_a_forgotten_vmid_must_be_adopted_again() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(321, true, 256)]).await;
    h.desired(&format!("revision = 1\n{}", guest(321, "running", 256)));
    h.adopt_all().await;
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    h.sim.remove(321);
    // A pass sees it gone (and would create it: the entry has a template) ...
    h.sim.set_faults(pve_sim::Faults {
        error_rates: [("vzcreate".to_string(), 1.0)].into(),
        ..pve_sim::Faults::default()
    });
    h.drover_async(&["run", "--once"]).await;
    h.sim.set_faults(pve_sim::Faults::default());
    // ... then someone else creates a CT 321.
    h.sim.seed(seed(321, true, 4096));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan_of(&h, &v, 321)["steps"][0]["kind"], "adopt", "{v}");
    let before = h.sim.mutations().len();
    h.drover_async(&["run", "--once"]).await;
    assert_eq!(
        h.sim.mutations().len(),
        before,
        "the new CT 321 was changed"
    );
    assert_eq!(h.sim.guest(321).unwrap().memory, 4096);
}
