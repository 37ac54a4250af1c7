//! End-to-end: the real `drover` binary (a child process) against the PVE simulator (in this
//! test process, over real TLS on loopback), with a real journal and real signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Host, code, guest, seed, sign, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_from_scratch_then_a_pass_changes_nothing() {
    let h = Host::start(vec![]).await;
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(201, "running", 512),
        guest(202, "running", 1024),
        guest(203, "stopped", 256)
    ));
    let plan = h.drover_async(&["plan"]).await;
    assert_eq!(code(&plan), 2, "changes pending");
    assert!(stdout(&plan).contains("CT 201 (ct-201): create"));

    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0, "converged");
    // Not a terminal: progress as plain lines, ending with the final state.
    let out = stdout(&run);
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("progress: rev 1: 3 converged, 0 pending")),
        "{out}"
    );
    for v in [201, 202, 203] {
        assert_eq!(
            h.sim.count_mutations("create", v),
            1,
            "exactly one create of CT {v}"
        );
    }
    assert!(h.sim.guest(201).unwrap().running);
    assert!(!h.sim.guest(203).unwrap().running);
    assert_eq!(h.sim.guest(202).unwrap().memory, 1024);

    // A converged host: plan says nothing, a pass makes no mutation at all.
    let before = h.sim.mutations().len();
    let plan = h.drover_async(&["plan"]).await;
    assert_eq!(code(&plan), 0, "{}", stdout(&plan));
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert_eq!(h.sim.mutations().len(), before, "no-op pass made mutations");
}

/// On a terminal (a real pty from `script`), `run --once` redraws one progress line in place,
/// and log lines printed meanwhile never run into it: each log line stands on a line of its
/// own, with the progress line drawn again below it. (Before, the progress line was written
/// without a newline and the next log line was appended to it on the same line.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_redraws_one_line_on_a_terminal_and_log_lines_never_collide_with_it() {
    if common::skip_without("script", "--version") {
        return;
    }
    // Tasks of a second: the line is drawn several times while the create and the start
    // run, and the lane logs "starting" and "done" between them.
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: std::time::Duration::from_secs(1),
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired(&format!("revision = 1\n{}", guest(211, "running", 512)));
    let cmd = format!(
        "{} --config {} run --once",
        env!("CARGO_BIN_EXE_drover"),
        h.config().display()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("DROVER_LOG", "info")
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{raw:?}");
    // What a terminal shows on each line: escape sequences dropped, and of a line redrawn
    // with \r only what was drawn last.
    let visible: Vec<String> = strip_escapes(&raw)
        .split('\n')
        .map(|l| {
            l.rsplit('\r')
                .find(|s| !s.is_empty())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let progress = |l: &str| l.contains("rev 1:");
    let log = |l: &str| l.contains("INFO");
    assert!(
        raw.contains("running: CT 211"),
        "the line showed the running step: {raw:?}"
    );
    assert!(
        visible.iter().filter(|l| log(l)).count() >= 2,
        "log lines were printed meanwhile: {visible:#?}"
    );
    assert!(
        !visible.iter().any(|l| progress(l) && log(l)),
        "a log line ran into the progress line: {visible:#?}"
    );
    assert!(!raw.contains("progress: "), "{raw:?}");
    assert!(
        visible.iter().any(|l| l.starts_with("rev 1: 1 converged")),
        "the final state stays on its own line: {visible:#?}"
    );
}

/// Drops ANSI escape sequences (CSI `ESC [ ... letter`, and two-byte `ESC x`).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrects_drift_and_leaves_unmanaged_guests_alone() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let mut drifted = seed(301, true, 256);
    drifted.net0 = Some("name=eth0,bridge=vmbr9,ip=dhcp".into());
    let h = Host::start(vec![drifted, seed(302, false, 512), seed(399, true, 128)]).await;
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(301, "running", 512),
        guest(302, "running", 512)
    ));
    let mac_before = h.sim.guest(301).unwrap().net0.unwrap();
    // Seeded guests have no provenance: nothing changes until they are adopted.
    h.adopt_all().await;
    assert!(h.sim.mutations().is_empty(), "changed before adoption");
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    let g = h.sim.guest(301).unwrap();
    assert_eq!(g.memory, 512);
    let net = g.net0.unwrap();
    assert!(net.contains("bridge=vmbr0"), "{net}");
    let mac = |s: &str| {
        s.split(',')
            .find(|p| p.starts_with("hwaddr="))
            .map(str::to_string)
    };
    assert_eq!(mac(&net), mac(&mac_before), "the MAC address is kept");
    assert!(h.sim.guest(302).unwrap().running);
    assert!(
        h.sim.mutations().iter().all(|m| m.vmid != Some(399)),
        "unmanaged CT 399 touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_on_another_node_is_reported_never_created() {
    let mut elsewhere = seed(401, true, 256);
    elsewhere.node = Some("pve2".into());
    let h = Host::start_with(pve_sim::SimConfig {
        guests: vec![elsewhere],
        other_nodes: vec!["pve2".into()],
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired(&format!("revision = 1\n{}", guest(401, "running", 256)));
    let plan = h.drover_async(&["plan", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(v["changes"], false);
    assert!(v.to_string().contains("exists_on_other_node"));
    h.drover_async(&["run", "--once"]).await;
    assert_eq!(h.sim.count_mutations("create", 401), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_destroy_fuse_plans_no_destroy() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(501, true, 256), seed(502, true, 256)]).await;
    h.desired("revision = 1\n[[guest]]\nvmid = 501\nensure = \"absent\"\n[[guest]]\nvmid = 502\nensure = \"absent\"\n");
    h.adopt_all().await;
    let plan = h.drover_async(&["plan"]).await;
    assert!(
        stdout(&plan).contains("fuse_mass_destroy"),
        "{}",
        stdout(&plan)
    );
    let run = h.drover_async(&["run", "--once"]).await;
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("more than half") && !l.starts_with("drover: not converged"))
            .count(),
        1,
        "the tripped fuse is logged once: {log}"
    );
    assert_eq!(code(&run), 2, "a held destroy is not converged");
    assert!(
        log.contains("drover: not converged: [fuse_mass_destroy]"),
        "{log}"
    );
    assert!(log.contains("fuse_mass_destroy"), "{log}");
    assert!(
        h.pending_requests().is_empty(),
        "no approval is even requested"
    );
    assert!(h.sim.guest(501).is_some() && h.sim.guest(502).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_through_lock_timeouts_and_596() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(601, false, 256), seed(602, false, 256)]).await;
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(601, "running", 512),
        guest(602, "running", 512),
    ));
    h.adopt_all().await;
    h.sim.set_faults(pve_sim::Faults {
        seed: Some(7),
        error_rate: 0.3,
        ..pve_sim::Faults::default()
    });
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(601, "running", 512),
        guest(602, "running", 512),
        guest(603, "running", 512)
    ));
    let mut converged = false;
    for _ in 0..15 {
        if code(&h.drover_async(&["run", "--once"]).await) == 0 {
            converged = true;
            break;
        }
    }
    assert!(converged, "did not converge under faults");
    assert_eq!(
        h.sim.count_mutations("create", 603),
        1,
        "no duplicate create after faults"
    );
}

/// The whole approval path with real ssh-keygen signatures: held, wrong key refused, accepted,
/// executed once, replay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_waits_for_a_valid_signature_and_runs_once() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![
        seed(701, true, 256),
        seed(702, true, 256),
        seed(703, true, 256),
    ])
    .await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 701\nensure = \"absent\"\n{}{}",
        guest(702, "running", 256),
        guest(703, "running", 256)
    ));
    h.adopt_all().await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "a destroy is pending");
    assert!(h.sim.guest(701).is_some(), "destroyed without approval");
    let requests = h.pending_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = requests[0].clone();
    let text = std::fs::read_to_string(&request).unwrap();
    assert!(text.starts_with("drover-approval v1\n") && text.contains("op: destroy_guest"));

    let ns = format!("destructive-op-v1@{DOMAIN}");
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    // A key the trust document does not list.
    let bad = sign("gate/TEST_stranger_ed25519", &ns, &request, &work);
    let copy = work.join(request.file_name().unwrap());
    let v = h.submit("verify-approval", &copy, &[&bad]).await;
    assert_eq!(code(&v), 1);
    assert!(stdout(&v).contains("unknown_signer"), "{}", stdout(&v));
    h.submit("approve", &copy, &[&bad]).await;
    h.drover_async(&["run", "--once"]).await;
    assert!(
        h.sim.guest(701).is_some(),
        "a stranger's signature destroyed the guest"
    );

    // The operator's key.
    let work2 = h.root().join("operator2");
    std::fs::create_dir_all(&work2).unwrap();
    let request = h.pending_requests()[0].clone();
    let good = sign("demo/TEST_demo_operator_ed25519", &ns, &request, &work2);
    let copy2 = work2.join(request.file_name().unwrap());
    let v = h.submit("verify-approval", &copy2, &[&good]).await;
    assert_eq!(code(&v), 0, "{}", stdout(&v));
    h.submit("approve", &copy2, &[&good]).await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 0);
    assert!(h.sim.guest(701).is_none(), "approved destroy did not run");
    assert_eq!(h.sim.count_mutations("destroy", 701), 1);

    // Replay: the same approval again, after the vmid is re-used by someone else.
    h.sim.seed(seed(701, true, 999));
    h.submit("approve", &copy2, &[&good]).await;
    h.drover_async(&["run", "--once"]).await;
    assert!(
        h.sim.guest(701).is_some(),
        "a replayed approval destroyed the new CT 701"
    );
    assert_eq!(h.sim.count_mutations("destroy", 701), 1);
}

/// An approval signed for one incarnation of a vmid does not destroy the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmid_reuse_makes_the_approval_stale() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![
        seed(801, true, 256),
        seed(802, true, 256),
        seed(803, true, 256),
    ])
    .await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 801\nensure = \"absent\"\n{}{}",
        guest(802, "running", 256),
        guest(803, "running", 256)
    ));
    h.adopt_all().await;
    h.drover_async(&["run", "--once"]).await;
    let request = h.pending_requests()[0].clone();
    let work = h.root().join("op");
    std::fs::create_dir_all(&work).unwrap();
    let sig = sign(
        "demo/TEST_demo_operator_ed25519",
        &format!("destructive-op-v1@{DOMAIN}"),
        &request,
        &work,
    );
    // Meanwhile someone destroys CT 801 and creates another one with that vmid.
    h.sim.remove(801);
    h.sim.seed(seed(801, true, 4096));
    let copy = work.join(request.file_name().unwrap());
    h.submit("approve", &copy, &[&sig]).await;
    h.drover_async(&["run", "--once"]).await;
    assert!(
        h.sim.guest(801).is_some(),
        "the new incarnation was destroyed"
    );
    assert_eq!(h.sim.count_mutations("destroy", 801), 0);
}

/// `--log-format json`: every log line is a JSON object, and step lines carry the span fields
/// (vmid, step, op id, UPID) a log shipper needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_vmid_step_and_upid() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(221, false, 256)]).await;
    h.desired(&format!("revision = 1\n{}", guest(221, "running", 256)));
    h.adopt_all().await;
    let run = h
        .drover_async(&["--log-format", "json", "run", "--once"])
        .await;
    assert_eq!(code(&run), 0);
    let err = String::from_utf8_lossy(&run.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not json ({e}): {l}")))
        .collect();
    let step_line = lines
        .iter()
        .find(|l| l["span"]["upid"].is_string())
        .unwrap_or_else(|| panic!("no line inside a task span: {err}"));
    let spans = step_line["spans"].as_array().unwrap();
    assert!(
        spans
            .iter()
            .any(|s| s["vmid"] == 221 && s["step"] == "start"),
        "{step_line}"
    );
    // Step 1 is the adoption (no task), step 2 the start.
    assert!(spans.iter().any(|s| s["op_id"] == "2"), "{step_line}");
}

/// Junk in the approvals directory (garbage, oversized, a symlink, a real request with a
/// garbage signature) is refused with reasons and destroys nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_approval_files_are_refused_and_change_nothing() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![
        seed(711, true, 256),
        seed(712, true, 256),
        seed(713, true, 256),
    ])
    .await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 711\nensure = \"absent\"\n{}{}",
        guest(712, "running", 256),
        guest(713, "running", 256)
    ));
    h.adopt_all().await;
    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2);
    let request = h.pending_requests()[0].clone();
    let dir = h.source().join("approvals");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("junk.txt"), "drover-approval v9\nnonsense\n").unwrap();
    std::fs::write(dir.join("junk.txt.sig"), "not a signature").unwrap();
    std::fs::write(dir.join("big.txt"), vec![b'a'; 64 * 1024 + 1]).unwrap();
    std::fs::write(dir.join("big.txt.sig"), "x").unwrap();
    std::fs::copy(&request, dir.join("real.txt")).unwrap();
    std::fs::write(
        dir.join("real.txt.sig"),
        "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link.txt")).unwrap();
    std::fs::write(dir.join("link.txt.sig"), "x").unwrap();
    std::fs::write(dir.join("binary.txt"), [0xff, 0xfe, 0x00, 0x01]).unwrap();
    std::fs::write(dir.join("binary.txt.alice.sig"), [0x00; 10]).unwrap();

    let run = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&run), 2, "the destroy is still pending");
    assert!(h.sim.guest(711).is_some(), "junk destroyed the guest");
    assert_eq!(h.sim.count_mutations("destroy", 711), 0);
    let log = String::from_utf8_lossy(&run.stderr);
    for needle in ["malformed_payload", "malformed_signature", "larger than"] {
        assert!(log.contains(needle), "no {needle} in: {log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    // Still pending, with the same request (the junk did not replace it).
    assert_eq!(h.pending_requests(), vec![request.clone()]);
}
