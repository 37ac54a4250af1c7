//! Verify-and-revert (`reconcile::verify`, `safety-nets.md` §6.2) end to end: the real `drover`
//! binary against the simulator over real TLS, a real journal, and a guest "network" that is a
//! real TCP listener on 127.0.0.1, open exactly while the guest's `net0` is on `vmbr0` (what a
//! host probe of a guest on that bridge would see). Restarts are real child processes killed
//! with SIGKILL while the journal shows the window in a given phase.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Host, TEMPLATE, code, stdout};

/// A guest entry with a `verify` table.
fn entry(vmid: u32, net0: &str, memory: u32, verify: &str) -> String {
    format!(
        "[[guest]]\nvmid = {vmid}\nensure = \"running\"\nhostname = \"ct-{vmid}\"\ntemplate = \"{TEMPLATE}\"\nmemory = {memory}\nrootfs = \"local-lvm:4\"\nnet0 = \"{net0}\"\n[guest.verify]\n{verify}\n"
    )
}

const VMBR0: &str = "name=eth0,bridge=vmbr0,ip=dhcp";
const VMBR1: &str = "name=eth0,bridge=vmbr1,ip=dhcp";

/// The guest's service as the host reaches it: a real listener on a fixed loopback port,
/// bound while the simulator's CT `vmid` runs with `net0` on `vmbr0`, closed otherwise.
struct GuestNet {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// What the guest's service looks like from the host while it is cut off.
#[derive(Clone, Copy, PartialEq)]
enum Down {
    /// Nothing listens: a connect is refused at once.
    Refused,
    /// A listener whose accept queue (backlog 0) is full: a connect hangs, as to a guest whose
    /// packets are dropped.
    BlackHole,
}

impl GuestNet {
    async fn follow(h: Arc<Host>, vmid: u32) -> GuestNet {
        GuestNet::follow_with(h, vmid, Down::Refused).await
    }

    async fn follow_with(h: Arc<Host>, vmid: u32, down: Down) -> GuestNet {
        GuestNet::follow_rule(h, vmid, down, |g| {
            g.net0
                .as_deref()
                .is_some_and(|n| n.contains("bridge=vmbr0"))
        })
        .await
    }

    /// Reachable while the CT runs and `rule` holds for it as PVE runs it.
    async fn follow_rule(
        h: Arc<Host>,
        vmid: u32,
        down: Down,
        rule: fn(&pve_sim::GuestView) -> bool,
    ) -> GuestNet {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let task = tokio::spawn(async move {
            let mut listener: Option<tokio::net::TcpListener> = None;
            let mut hole: Option<(tokio::net::TcpListener, std::net::TcpStream)> = None;
            loop {
                let up = h.sim.guest(vmid).is_some_and(|g| g.running && rule(&g));
                if up && listener.is_none() {
                    hole = None;
                    listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                        .await
                        .ok();
                } else if !up {
                    listener = None;
                    if down == Down::BlackHole && hole.is_none() {
                        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
                        let sock = tokio::net::TcpSocket::new_v4().unwrap();
                        sock.set_reuseaddr(true).unwrap();
                        if sock.bind(addr).is_ok()
                            && let Ok(l) = sock.listen(0)
                        {
                            // One queued connection fills it; every later SYN is dropped.
                            let filler = std::net::TcpStream::connect(addr).unwrap();
                            hole = Some((l, filler));
                        }
                    }
                }
                if let Some(l) = &listener {
                    // Accept whatever is waiting, so the backlog never fills.
                    while let Ok(Ok((s, _))) =
                        tokio::time::timeout(Duration::from_millis(5), l.accept()).await
                    {
                        drop(s);
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
        GuestNet { port, task }
    }

    fn verify(&self, extra: &str) -> String {
        format!("tcp = [\"127.0.0.1:{}\"]\n{extra}", self.port)
    }
}

impl Drop for GuestNet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn window(h: &Host, vmid: u32) -> Option<journal::VerifyWindow> {
    let j = journal::Journal::open_read_only(&h.state()).ok()?;
    j.verify_window(vmid).ok().flatten()
}

fn previous(h: &Host, vmid: u32) -> Option<journal::VerifyWindow> {
    let j = journal::Journal::open_read_only(&h.state()).ok()?;
    j.previous_verify_window(vmid).ok().flatten()
}

fn phases(w: &journal::VerifyWindow) -> Vec<String> {
    w.history.iter().map(|t| t.phase.clone()).collect()
}

/// `PUT config` calls that carried `net0` with `bridge`.
fn pushes(h: &Host, vmid: u32, bridge: &str) -> usize {
    h.sim
        .mutations()
        .iter()
        .filter(|m| {
            m.kind == "config"
                && m.vmid == Some(vmid)
                && m.params
                    .get("net0")
                    .is_some_and(|n| n.contains(&format!("bridge={bridge}")))
        })
        .count()
}

async fn created(h: &Arc<Host>, vmid: u32, verify: &str) {
    created_with(h, vmid, VMBR0, verify).await
}

async fn created_with(h: &Arc<Host>, vmid: u32, net0: &str, verify: &str) {
    h.desired(&format!("revision = 1\n{}", entry(vmid, net0, 512, verify)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "the guest is created and started");
    assert!(h.sim.guest(vmid).unwrap().running);
}

/// Polls the journal until the guest's window is in `phase`.
async fn until_phase(h: &Host, d: &common::Daemon, vmid: u32, phase: &str) {
    common::eventually(
        d,
        Duration::from_secs(30),
        &format!("phase {phase}"),
        || window(h, vmid).is_some_and(|w| w.phase.as_str() == phase),
    )
    .await;
}

/// Sleeps until the guest's open window is past its deadline (with a margin), read from the
/// journal rather than guessed, so a slow machine cannot wake the next agent before it.
async fn until_past_the_deadline(h: &Host, vmid: u32) {
    let deadline_ms = window(h, vmid).expect("an open window").deadline_ms;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let wait = u64::try_from(deadline_ms + 500 - now_ms).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// `GET /metrics` from the daemon's listener.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metrics listener on {port}");
}

async fn sigkill(mut d: common::Daemon) {
    d.child.kill().unwrap();
    let _ = d.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_reverts_parks_without_a_loop_and_a_document_change_unparks() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 301).await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 20\nsuccesses = 1");
    created(&h, 301, &verify).await;

    // The change cuts the guest off: the probe fails after the settle window, the old value
    // is re-applied, and the change is parked.
    h.desired(&format!(
        "revision = 2\n{}",
        entry(301, VMBR1, 512, &verify)
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "a parked change is not converged");
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(err.contains("[verify_reverted]"), "{err}");
    let g = h.sim.guest(301).unwrap();
    assert!(g.net0.as_deref().unwrap().contains("bridge=vmbr0"), "{g:?}");
    assert_eq!(pushes(&h, 301, "vmbr1"), 1);
    assert_eq!(pushes(&h, 301, "vmbr0"), 1, "one revert");
    let w = window(&h, 301).unwrap();
    assert_eq!(w.phase.as_str(), "reverted");
    assert_eq!(w.code.as_deref(), Some("probe_failed"));
    assert_eq!(
        phases(&w),
        ["armed", "settling", "probing", "reverting", "reverted"]
    );
    assert!(w.old["net0"].as_deref().unwrap().contains("bridge=vmbr0"));
    assert!(w.new["net0"].as_deref().unwrap().contains("bridge=vmbr1"));
    // The probe runs once more after the revert (its result is reported, not acted on).
    assert!(
        w.history
            .last()
            .unwrap()
            .detail
            .starts_with("reverted; baseline"),
        "{w:?}"
    );

    // No loop: the same document changes nothing, however often it runs.
    for _ in 0..2 {
        let run = h.drover_async(&["run", "--once"]).await;
        assert_eq!(code(&run), 2);
    }
    assert_eq!(
        pushes(&h, 301, "vmbr1"),
        1,
        "the parked change was pushed again"
    );
    let plan = h.drover_async(&["plan"]).await;
    assert!(
        stdout(&plan).contains("verify_reverted"),
        "{}",
        stdout(&plan)
    );

    // The document changes the guest: the park is lifted, the new change proves itself.
    let ok = "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp";
    h.desired(&format!("revision = 3\n{}", entry(301, ok, 512, &verify)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "committed");
    assert!(
        h.sim
            .guest(301)
            .unwrap()
            .net0
            .unwrap()
            .contains("firewall=1"),
        "the new change stays"
    );
    let w = window(&h, 301).unwrap();
    assert_eq!(w.phase.as_str(), "committed");
    assert_eq!(phases(&w), ["armed", "settling", "probing", "committed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_probe_commits_a_memory_decrease_and_benign_keys_go_first() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 302).await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 20\nsuccesses = 2\ninterfaces = true");
    // A static address: the interfaces probe finds it inside the CT.
    let net0 = "name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1";
    created_with(&h, 302, net0, &verify).await;
    // A memory decrease is risky, a hostname is not: the hostname is sent on its own first.
    let doc = entry(302, net0, 256, &verify).replace("ct-302", "web-302");
    h.desired(&format!("revision = 2\n{doc}"));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "committed");
    let g = h.sim.guest(302).unwrap();
    assert_eq!((g.memory, g.hostname.as_deref()), (256, Some("web-302")));
    let configs: Vec<_> = h
        .sim
        .mutations()
        .into_iter()
        .filter(|m| m.kind == "config" && m.vmid == Some(302))
        .collect();
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert!(
        configs[0].params.contains_key("hostname") && !configs[0].params.contains_key("memory")
    );
    assert!(configs[1].params.contains_key("memory"));
    let w = window(&h, 302).unwrap();
    assert_eq!(w.phase.as_str(), "committed");
    assert_eq!(w.keys, ["memory"]);
    assert_eq!(w.old["memory"].as_deref(), Some("512"));
    // A memory increase is not risky: no window.
    h.desired(&format!(
        "revision = 3\n{}",
        entry(302, net0, 1024, &verify).replace("ct-302", "web-302")
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.guest(302).unwrap().memory, 1024);
    assert_eq!(
        window(&h, 302).unwrap().history.len(),
        4,
        "the old window is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_reverts_a_change_that_is_not_confirmed_in_time() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 303).await;
    // Reachable all along, but five passing rounds cannot fit before the deadline.
    let verify = net.verify("settle_s = 1\nrevert_after_s = 2\nsuccesses = 5");
    created(&h, 303, &verify).await;
    let doc = entry(
        303,
        "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp",
        512,
        &verify,
    );
    h.desired(&format!("revision = 2\n{doc}"));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let w = window(&h, 303).unwrap();
    assert_eq!(w.phase.as_str(), "reverted");
    assert_eq!(w.code.as_deref(), Some("deadline"));
    assert!(
        !h.sim
            .guest(303)
            .unwrap()
            .net0
            .unwrap()
            .contains("firewall=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_that_already_fails_applies_without_revert() {
    let h = Arc::new(Host::start(vec![]).await);
    // Nothing listens on this port: the probe fails before the change as after it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let verify =
        format!("tcp = [\"127.0.0.1:{dead}\"]\nsettle_s = 1\nrevert_after_s = 5\nsuccesses = 1");
    created(&h, 304, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(304, VMBR1, 512, &verify)
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "applied, reported, not reverted");
    assert!(
        h.sim
            .guest(304)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr1")
    );
    let w = window(&h, 304).unwrap();
    assert_eq!(w.phase.as_str(), "unverifiable");
    assert_eq!(w.code.as_deref(), Some("baseline_failed"));
    assert_eq!(pushes(&h, 304, "vmbr1"), 1);
}

/// SIGKILL while settling, the agent back before the deadline: it resumes waiting, probes, and
/// commits, without pushing the change again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_settling_resumes_and_commits() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 311).await;
    let verify = net.verify("settle_s = 3\nrevert_after_s = 30\nsuccesses = 1");
    created(&h, 311, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(
            311,
            "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp",
            512,
            &verify
        )
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 311, "settling").await;
    sigkill(d).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    h.write_config(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 311, "committed").await;
    let metrics = scrape(port).await;
    for line in [
        "drover_verify_total{outcome=\"committed\"} 1",
        "drover_verify_total{outcome=\"reverted\"} 0",
        "drover_verify_phase_total{phase=\"probing\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let status = h.status_json(Duration::from_secs(10)).await;
    let line = status["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 311)
        .cloned()
        .unwrap();
    assert_eq!(line["verify"]["phase"], "committed", "{line}");
    let shown: Vec<&str> = line["verify"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_str().unwrap())
        .collect();
    assert_eq!(
        shown,
        ["armed", "settling", "probing", "committed"],
        "{line}"
    );
    d.stop().await;
    let configs = h
        .sim
        .mutations()
        .iter()
        .filter(|m| m.kind == "config" && m.vmid == Some(311))
        .count();
    assert_eq!(configs, 1, "pushed once, never again after the restart");
    let w = window(&h, 311).unwrap();
    assert_eq!(phases(&w), ["armed", "settling", "probing", "committed"]);
}

/// SIGKILL while settling, the agent back only after the deadline: the change was never
/// confirmed, so it is reverted (`agent_restart`) whatever the probe says now, then pushed
/// once more in a new window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_the_deadline_reverts_even_a_reachable_guest() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 312).await;
    // Settling lasts long enough to be seen between journal reads on a loaded machine.
    let verify = net.verify("settle_s = 3\nrevert_after_s = 8\nsuccesses = 1");
    created(&h, 312, &verify).await;
    let fw = "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp";
    h.desired(&format!("revision = 2\n{}", entry(312, fw, 512, &verify)));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 312, "settling").await;
    sigkill(d).await;
    until_past_the_deadline(&h, 312).await;
    // Reverted at once; the probes never judged it, so it is pushed once more (a new window)
    // and this time it proves itself.
    let d = h.spawn_daemon();
    common::eventually(
        &d,
        Duration::from_secs(30),
        "the re-applied change committed",
        || window(&h, 312).is_some_and(|w| w.phase.as_str() == "committed" && w.reapplied == 1),
    )
    .await;
    let log = d.log_text();
    d.stop().await;
    let prev = previous(&h, 312).unwrap();
    assert_eq!(prev.code.as_deref(), Some("agent_restart"), "{prev:?}");
    assert_eq!(
        phases(&prev),
        ["armed", "settling", "reverting", "reverted"],
        "decided at start from the live values, without probing"
    );
    assert!(log.contains("verify window reverted"), "{log}");
    assert!(
        h.sim
            .guest(312)
            .unwrap()
            .net0
            .unwrap()
            .contains("firewall=1")
    );
    assert_eq!(
        pushes(&h, 312, "vmbr0"),
        3,
        "push, revert, the one re-apply"
    );
}

/// The re-apply after an `agent_restart` revert happens once: reverted that way again, the
/// change stays parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_restart_revert_of_the_same_change_parks_it() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 317).await;
    let verify = net.verify("settle_s = 3\nrevert_after_s = 8\nsuccesses = 1");
    created(&h, 317, &verify).await;
    let fw = "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp";
    h.desired(&format!("revision = 2\n{}", entry(317, fw, 512, &verify)));
    let settling = |round: u32| {
        window(&h, 317).is_some_and(|w| w.phase.as_str() == "settling" && w.reapplied == round)
    };
    let d = h.spawn_daemon();
    common::eventually(&d, Duration::from_secs(30), "the first window", || {
        settling(0)
    })
    .await;
    sigkill(d).await;
    until_past_the_deadline(&h, 317).await;
    let d = h.spawn_daemon();
    common::eventually(&d, Duration::from_secs(30), "the re-applied window", || {
        settling(1)
    })
    .await;
    sigkill(d).await;
    until_past_the_deadline(&h, 317).await;
    let d = h.spawn_daemon();
    until_phase(&h, &d, 317, "reverted").await;
    d.stop().await;
    let w = window(&h, 317).unwrap();
    assert_eq!((w.code.as_deref(), w.reapplied), (Some("agent_restart"), 1));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "parked after the second unjudged revert");
    assert!(String::from_utf8_lossy(&run.stderr).contains("[verify_reverted]"));
    assert_eq!(
        pushes(&h, 317, "vmbr0"),
        4,
        "push, revert, re-apply, revert"
    );
}

/// SIGKILL while probing: the next agent keeps probing and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_probing_resumes_and_commits() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 313).await;
    // Eight probe rounds: probing lasts seconds, long enough to be seen.
    let verify = net.verify("settle_s = 1\nrevert_after_s = 30\nsuccesses = 8");
    created(&h, 313, &verify).await;
    let fw = "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp";
    h.desired(&format!("revision = 2\n{}", entry(313, fw, 512, &verify)));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 313, "probing").await;
    sigkill(d).await;
    let d = h.spawn_daemon();
    until_phase(&h, &d, 313, "committed").await;
    d.stop().await;
    assert!(
        h.sim
            .guest(313)
            .unwrap()
            .net0
            .unwrap()
            .contains("firewall=1")
    );
    assert_eq!(pushes(&h, 313, "vmbr0"), 1, "pushed once");
}

/// SIGKILL while reverting (the revert is refused: the CT is locked): the next agent finds the
/// new values still live and sends the old ones again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_reverting_finishes_the_revert() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 314).await;
    // The lock must land while the window settles, before the probe fails and the revert runs.
    let verify = net.verify("settle_s = 6\nrevert_after_s = 30\nsuccesses = 1");
    created(&h, 314, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(314, VMBR1, 512, &verify)
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 314, "settling").await;
    h.sim.edit_config(314, "lock", Some("backup"));
    until_phase(&h, &d, 314, "reverting").await;
    sigkill(d).await;
    assert!(
        h.sim
            .guest(314)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr1")
    );
    h.sim.edit_config(314, "lock", None);
    let d = h.spawn_daemon();
    until_phase(&h, &d, 314, "reverted").await;
    d.stop().await;
    assert!(
        h.sim
            .guest(314)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr0")
    );
    let w = window(&h, 314).unwrap();
    assert_eq!(w.code.as_deref(), Some("probe_failed"));
    assert_eq!(pushes(&h, 314, "vmbr1"), 1);
}

/// A window journaled as armed whose push never reached PVE (the agent died between the two):
/// the restarted agent finds the old values, closes it as never applied, and the plan pushes
/// the change in a new window. Also a window found armed whose push did reach PVE: it settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_armed_decides_from_the_live_values() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 315).await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 30\nsuccesses = 1");
    created(&h, 315, &verify).await;
    // The agent is killed at its first journal write of the window (armed), before the
    // `PUT config`: every write of the verify tree goes first, so a kill right after it is
    // a kill in `armed`. The journal left behind is rewritten here to exactly that state.
    let fw = "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp";
    h.desired(&format!("revision = 2\n{}", entry(315, fw, 512, &verify)));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    let committed = window(&h, 315).unwrap();
    // Back to the old value behind the agent's back, and the window rewound to `armed`.
    let old = committed.old["net0"].clone().unwrap();
    h.sim.edit_config(315, "net0", Some(&old));
    {
        let j = journal::Journal::open(&h.state()).unwrap();
        let mut w = committed.clone();
        w.history.truncate(1);
        w.phase = journal::VerifyPhase::Armed;
        w.code = None;
        j.put_verify(&mut w, journal::VerifyPhase::Armed, "")
            .unwrap();
    }
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "never applied, then applied and committed");
    let w = window(&h, 315).unwrap();
    assert_eq!(w.phase.as_str(), "committed");
    assert!(
        h.sim
            .guest(315)
            .unwrap()
            .net0
            .unwrap()
            .contains("firewall=1")
    );
    assert_eq!(
        pushes(&h, 315, "vmbr0"),
        2,
        "the original push and the new window's"
    );

    // Armed, and the push did reach PVE: the window settles and commits, no second push.
    {
        let j = journal::Journal::open(&h.state()).unwrap();
        let mut w = w.clone();
        w.history.truncate(1);
        w.phase = journal::VerifyPhase::Armed;
        j.put_verify(&mut w, journal::VerifyPhase::Armed, "")
            .unwrap();
    }
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    let w = window(&h, 315).unwrap();
    assert_eq!(w.phase.as_str(), "committed");
    assert!(
        w.history
            .iter()
            .any(|t| t.detail.contains("found after a restart")),
        "{w:?}"
    );
    assert_eq!(pushes(&h, 315, "vmbr0"), 2);
}

/// A third party edits the changed key during the window: neither old nor new is live, so the
/// agent touches nothing and parks the change (`revert_conflict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_edit_during_the_window_is_a_conflict_and_nothing_is_touched() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 316).await;
    // `drover status` and the edit both land while the window settles, on a loaded machine too.
    let verify = net.verify("settle_s = 8\nrevert_after_s = 30\nsuccesses = 1");
    created(&h, 316, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(316, VMBR1, 512, &verify)
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 316, "settling").await;
    let status = h.drover_async(&["status"]).await;
    assert!(
        stdout(&status).contains("verify settling net0"),
        "{}",
        stdout(&status)
    );
    let theirs = "name=eth0,bridge=vmbr7,hwaddr=BC:24:11:00:00:07,ip=dhcp,type=veth";
    h.sim.edit_config(316, "net0", Some(theirs));
    until_phase(&h, &d, 316, "conflict").await;
    d.stop().await;
    assert_eq!(h.sim.guest(316).unwrap().net0.as_deref(), Some(theirs));
    assert_eq!(
        window(&h, 316).unwrap().code.as_deref(),
        Some("revert_conflict")
    );
}

/// With one slot for all lanes, a guest waiting in its verify window does not hold it: another
/// guest's change runs while the window is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_window_does_not_hold_up_other_guests() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 321).await;
    // CT 322's whole change fits in CT 321's settle, on a loaded machine too.
    let verify = net.verify("settle_s = 15\nrevert_after_s = 40\nsuccesses = 1");
    h.desired(&format!(
        "revision = 1\n{}{}",
        entry(321, VMBR0, 512, &verify),
        common::guest(322, "running", 512)
    ));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    let text = std::fs::read_to_string(h.config()).unwrap();
    std::fs::write(
        h.config(),
        text.replace("max_parallel = 3", "max_parallel = 1"),
    )
    .unwrap();
    h.desired(&format!(
        "revision = 2\n{}{}",
        entry(
            321,
            "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp",
            512,
            &verify
        ),
        common::guest(322, "running", 512)
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 321, "settling").await;
    // Guest 322 changes while 321 settles.
    h.desired(&format!(
        "revision = 3\n{}{}",
        entry(
            321,
            "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp",
            512,
            &verify
        ),
        common::guest(322, "running", 768)
    ));
    common::eventually(&d, Duration::from_secs(20), "CT 322's change", || {
        h.sim.guest(322).is_some_and(|g| g.memory == 768)
    })
    .await;
    let still_open = window(&h, 321).is_some_and(|w| w.phase.as_str() == "settling");
    until_phase(&h, &d, 321, "committed").await;
    d.stop().await;
    assert!(still_open, "CT 322 had to wait for CT 321's window");
}

/// A probe whose connect hangs (the guest's packets are dropped) fails at its timeout; the
/// agent keeps answering meanwhile, and the change is reverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_probe_fails_at_its_timeout_and_the_agent_keeps_answering() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow_with(h.clone(), 331, Down::BlackHole).await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 30\nsuccesses = 1\ntimeout_s = 2");
    created(&h, 331, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(331, VMBR1, 512, &verify)
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 331, "probing").await;
    // The probe hangs now; the control socket answers all the same.
    let status = h.drover_async(&["status"]).await;
    assert!(
        stdout(&status).contains("verify probing net0"),
        "{}",
        stdout(&status)
    );
    until_phase(&h, &d, 331, "reverted").await;
    d.stop().await;
    let w = window(&h, 331).unwrap();
    assert_eq!(w.code.as_deref(), Some("probe_failed"));
    let reason = w.reason.unwrap_or_default();
    assert!(reason.contains("no answer within 2s"), "{reason}");
    assert!(
        h.sim
            .guest(331)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr0")
    );
}

/// A stopped guest cannot be cut off: its change is applied directly, without a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_changes_without_a_window() {
    let h = Arc::new(Host::start(vec![]).await);
    let stopped = |net0: &str| {
        entry(341, net0, 512, "settle_s = 1\nrevert_after_s = 5")
            .replace("ensure = \"running\"", "ensure = \"stopped\"")
    };
    h.desired(&format!("revision = 1\n{}", stopped(VMBR0)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    h.desired(&format!("revision = 2\n{}", stopped(VMBR1)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert!(
        h.sim
            .guest(341)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr1")
    );
    assert!(window(&h, 341).is_none());
}

/// Crash loop for verify windows: `drover run` is SIGKILLed at random moments while the
/// document moves the guest's network every round, a third of the rounds onto a bridge the
/// host cannot reach. Whatever phase a kill hits, a change that cut the guest off is never
/// committed (the outcome comes from the probes and the live values, not from a restart), and
/// the host ends on the last document's change, committed. `DROVER_VERIFY_CRASH_ROUNDS` sets
/// the number of kills (default 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_commits_a_change_that_cut_the_guest_off() {
    let rounds: u32 = std::env::var("DROVER_VERIFY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 351).await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 3\nsuccesses = 1");
    created(&h, 351, &verify).await;
    let net0 = |r: u32| match r % 3 {
        0 => "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp",
        1 => VMBR1,
        _ => VMBR0,
    };
    let never_committed_unreachable = |h: &Host, when: &str| {
        for w in [window(h, 351), previous(h, 351)].into_iter().flatten() {
            let new = w.new["net0"].clone().unwrap_or_default();
            assert!(
                !(w.phase.as_str() == "committed" && new.contains("bridge=vmbr1")),
                "{when}: a change that cut the guest off was committed: {w:?}"
            );
        }
    };
    let mut phases_hit = std::collections::BTreeSet::new();
    for r in 0..rounds {
        h.desired(&format!(
            "revision = {}\n{}",
            r + 2,
            entry(351, net0(r), 512, &verify)
        ));
        let mut child = h.command(&["run"]).spawn().expect("drover starts");
        let wait_ms = 300 + (r as u64 * 7919) % 2600;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        if let Some(w) = window(&h, 351) {
            phases_hit.insert(w.phase.as_str().to_string());
        }
        never_committed_unreachable(&h, &format!("after kill {r}"));
    }
    println!("verify crash loop: {rounds} SIGKILLs; windows found in {phases_hit:?}");
    // The last document's change is reachable: the host converges on it.
    let last = (0..rounds).rev().find(|r| r % 3 != 1).unwrap_or(0);
    h.desired(&format!(
        "revision = {}\n{}",
        rounds + 2,
        entry(351, net0(last), 512, &verify)
    ));
    let mut converged = false;
    for _ in 0..10 {
        let run = h.drover_async(&["run", "--once"]).await;
        never_committed_unreachable(&h, "while converging");
        if code(&run) == 0 {
            converged = true;
            break;
        }
    }
    assert!(converged, "the host did not converge after {rounds} kills");
    let live = h.sim.guest(351).unwrap().net0.unwrap();
    assert!(live.contains("bridge=vmbr0"), "{live}");
    assert_eq!(
        live.contains("firewall=1"),
        net0(last).contains("firewall=1"),
        "{live}"
    );
}

/// Suspending a guest does not cancel its open window: the safety net still ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_guest_still_ends_its_window() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow(h.clone(), 361).await;
    let verify = net.verify("settle_s = 2\nrevert_after_s = 30\nsuccesses = 1");
    created(&h, 361, &verify).await;
    h.desired(&format!(
        "revision = 2\n{}",
        entry(361, VMBR1, 512, &verify)
    ));
    let d = h.spawn_daemon();
    until_phase(&h, &d, 361, "settling").await;
    let out = h
        .drover_async(&["suspend", "361", "--reason", "looking at it"])
        .await;
    assert_eq!(code(&out), 0);
    until_phase(&h, &d, 361, "reverted").await;
    d.stop().await;
    assert!(
        h.sim
            .guest(361)
            .unwrap()
            .net0
            .unwrap()
            .contains("bridge=vmbr0")
    );
}

/// The DNS the guest's service depends on, as the CT runs it: reachable unless its running
/// `nameserver` is the broken resolver.
const BROKEN_DNS: &str = "10.0.0.66";

fn with_nameserver(e: String, ns: &str) -> String {
    e.replace("net0 = ", &format!("nameserver = [\"{ns}\"]\nnet0 = "))
}

/// A key a running CT only picks up at its next start (`nameserver`): the window reboots the
/// guest to apply it and judges it then; the revert puts the old value back with a reboot too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_applied_at_reboot_is_judged_after_a_reboot_and_reverted_with_one() {
    let h = Arc::new(Host::start(vec![]).await);
    let net = GuestNet::follow_rule(h.clone(), 371, Down::Refused, |g| {
        g.config.get("nameserver").is_none_or(|n| n != BROKEN_DNS)
    })
    .await;
    let verify = net.verify("settle_s = 1\nrevert_after_s = 30\nsuccesses = 1");
    let doc = |ns: &str| with_nameserver(entry(371, VMBR0, 512, &verify), ns);
    h.desired(&format!("revision = 1\n{}", doc("10.0.0.53")));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    // A working resolver: rebooted in, probed, committed.
    h.desired(&format!("revision = 2\n{}", doc("10.0.0.54")));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    let w = window(&h, 371).unwrap();
    assert_eq!(
        phases(&w),
        ["armed", "rebooting", "settling", "probing", "committed"]
    );
    let g = h.sim.guest(371).unwrap();
    assert_eq!(
        g.config.get("nameserver").map(String::as_str),
        Some("10.0.0.54")
    );
    assert!(g.pending.is_empty(), "{g:?}");
    assert_eq!(h.sim.count_mutations("reboot", 371), 1);
    // A broken one: rebooted in, the probe fails, the old value goes back with a reboot.
    h.desired(&format!("revision = 3\n{}", doc(BROKEN_DNS)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 2);
    let w = window(&h, 371).unwrap();
    assert_eq!(w.phase.as_str(), "reverted");
    assert_eq!(w.code.as_deref(), Some("probe_failed"));
    let g = h.sim.guest(371).unwrap();
    assert_eq!(
        g.config.get("nameserver").map(String::as_str),
        Some("10.0.0.54")
    );
    assert!(g.pending.is_empty(), "{g:?}");
    assert_eq!(h.sim.count_mutations("reboot", 371), 3);
}
