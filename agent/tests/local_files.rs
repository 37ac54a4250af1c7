//! Nothing local can stall the agent (issue 13 point 4): FIFOs and devices where the agent
//! expects a file, a flood of junk approvals, and idle connections on the control socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{DOMAIN, Host, code, eventually, guest, seed, sign, stdout};

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Waits for `child` up to `limit`; SIGKILLs it and fails when it hangs.
fn wait_or_kill(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} hung for {limit:?}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn run_limited(h: &Host, args: &[&str], limit: Duration) -> Output {
    let mut cmd = h.command(args);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let what = format!("drover {args:?}");
    let out = tokio::task::spawn_blocking(move || wait_or_kill(cmd.spawn().unwrap(), limit, &what))
        .await
        .unwrap();
    eprintln!(
        "--- drover {args:?} exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A FIFO named like an approval (beside its signature) in the inbox and in the source's
/// approvals directory: the daemon keeps reconciling, answers `status`, and stops on SIGTERM;
/// the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_among_the_approvals_stalls_nothing() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(401, true, 256), seed(402, true, 256)]).await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 401\nensure = \"absent\"\n{}",
        guest(402, "running", 512)
    ));
    // Drover did not create them: adopted first (before the FIFOs appear).
    h.adopt_all().await;
    for dir in [
        h.state().join("approvals/inbox"),
        h.source().join("approvals"),
    ] {
        mkfifo(&dir.join("401-destroy_guest.txt"));
        std::fs::write(dir.join("401-destroy_guest.txt.sig"), b"x").unwrap();
        mkfifo(&dir.join("zz.txt"));
        std::fs::write(dir.join("zz.txt.alice.sig"), b"x").unwrap();
    }
    for round in 0..2 {
        let d = h.spawn_daemon();
        // Benign work goes on beside the destructive step that waits for its approval.
        eventually(
            &d,
            Duration::from_secs(20),
            "the benign memory change",
            || h.sim.guest(402).unwrap().memory == 512,
        )
        .await;
        eventually(&d, Duration::from_secs(20), "the approval request", || {
            !h.pending_requests().is_empty()
        })
        .await;
        // Several passes over the FIFOs.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let st = run_limited(&h, &["status", "--output", "json"], Duration::from_secs(10)).await;
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        let g401 = v["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["vmid"] == 401)
            .cloned()
            .unwrap();
        assert_eq!(g401["state"], "awaiting_approval", "round {round}: {v}");
        let log = d.log_text();
        // Reported (logged and audited) once per file, not again after the restart.
        assert_eq!(
            log.contains("not a regular file"),
            round == 0,
            "round {round}: {log}"
        );
        let t = Instant::now();
        assert!(d.stop().await.success());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    assert!(h.sim.guest(401).is_some());
    assert_eq!(
        audited(&h, "not a regular file"),
        4,
        "two FIFOs in each of two directories"
    );
}

/// A FIFO as `desired.toml`, as the config, as the token secret or the trust document: the
/// command fails (or, for the trust document, warns) at once with a sentence, never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_where_a_file_belongs_fails_at_once() {
    // Created by Drover below (a seeded guest would wait for adoption).
    let h = Host::start(vec![]).await;
    mkfifo(&h.source().join("desired.toml"));
    for args in [&["plan"][..], &["run", "--once"]] {
        let out = run_limited(&h, args, Duration::from_secs(15)).await;
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a regular file")
                || stdout(&out).contains("not a regular file"),
            "{args:?}"
        );
    }
    std::fs::remove_file(h.source().join("desired.toml")).unwrap();
    h.desired(&format!("revision = 1\n{}", guest(401, "running", 256)));

    // The token secret.
    let token = h.root().join("pve-token");
    std::fs::remove_file(&token).unwrap();
    mkfifo(&token);
    let out = run_limited(&h, &["plan"], Duration::from_secs(15)).await;
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    let out = run_limited(&h, &["check-config", "--offline"], Duration::from_secs(15)).await;
    assert_eq!(code(&out), 1);
    std::fs::remove_file(&token).unwrap();
    std::fs::write(&token, pve_sim::DEFAULT_TOKEN_SECRET).unwrap();
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);

    // The trust document: destructive work is blocked, the rest goes on.
    let trust = h.root().join("trust");
    std::fs::remove_file(&trust).unwrap();
    mkfifo(&trust);
    let out = run_limited(&h, &["plan"], Duration::from_secs(15)).await;
    assert_eq!(code(&out), 0);

    // The config itself.
    let cfg = h.root().join("fifo.toml");
    mkfifo(&cfg);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        wait_or_kill(
            cmd.spawn().unwrap(),
            Duration::from_secs(10),
            "a FIFO config",
        )
    })
    .await
    .unwrap();
    assert_eq!(code(&out), 1);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("not a regular file"), "{err}");
}

/// Refusals in the audit log whose detail names `needle`.
fn audited(h: &Host, needle: &str) -> usize {
    let j = journal::Journal::open_read_only(&h.state()).unwrap();
    j.audit_tail(100_000)
        .unwrap()
        .iter()
        .filter(|e| !e.allowed && e.detail.contains(needle))
        .count()
}

/// 300 junk `.txt`/`.sig` pairs that sort before the real approval: the approval for the
/// pending request is still found, and each junk file is audited once, across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_approvals_hide_nothing_and_are_audited_once() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(401, true, 256), seed(402, true, 256)]).await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 401\nensure = \"absent\"\n{}",
        guest(402, "running", 256)
    ));
    // Drover did not create them: adopted first.
    h.adopt_all().await;
    let first = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&first), 2);
    let request = h.pending_requests()[0].clone();
    let inbox = h.state().join("approvals/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    for i in 0..300 {
        std::fs::write(
            inbox.join(format!("000-junk-{i:03}.txt")),
            format!("junk {i}\n"),
        )
        .unwrap();
        std::fs::write(inbox.join(format!("000-junk-{i:03}.txt.sig")), b"junk").unwrap();
    }
    for _ in 0..2 {
        let again = h.drover_async(&["run", "--once"]).await;
        assert_eq!(code(&again), 2);
    }
    assert_eq!(audited(&h, "000-junk-"), 300, "each junk file once");
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    let ns = format!("destructive-op-v1@{DOMAIN}");
    let sig = sign("demo/TEST_demo_operator_ed25519", &ns, &request, &work);
    std::fs::copy(&sig, inbox.join("401-destroy_guest.txt.sig")).unwrap();
    std::fs::copy(&request, inbox.join("401-destroy_guest.txt")).unwrap();
    let done = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&done), 0, "{}", stdout(&done));
    assert!(h.sim.guest(401).is_none(), "the approval was found");
    assert_eq!(h.sim.count_mutations("destroy", 401), 1);
    assert_eq!(audited(&h, "000-junk-"), 300);
}

/// 1,100 idle connections on the control socket, under systemd's default soft limit of 1,024
/// file handles: the daemon keeps reading PVE and the desired document, and `drover status`
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_socket_connections_exhaust_nothing() {
    // Created by Drover (a seeded guest would wait for adoption).
    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 1\n{}", guest(401, "running", 256)));
    let log = h.root().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec {} --config {} run",
            env!("CARGO_BIN_EXE_drover"),
            h.config().display()
        ))
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let d = common::Daemon {
        child: cmd.spawn().unwrap(),
        log,
    };
    h.status_json(Duration::from_secs(20)).await;
    let sock = h.root().join("drover.sock");
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connecting: {e}"),
        }
    }
    // The document changes while the connections are held: the daemon must still read it
    // and PVE.
    h.desired(&format!("revision = 2\n{}", guest(401, "running", 768)));
    eventually(&d, Duration::from_secs(20), "the change applied", || {
        h.sim.guest(401).unwrap().memory == 768
    })
    .await;
    let st = h.status_json(Duration::from_secs(15)).await;
    assert_eq!(st["desired"]["revision"], 2, "{st}");
    assert!(st["source"]["error_code"].is_null(), "{st}");
    drop(idle);
    assert!(d.stop().await.success());
}
