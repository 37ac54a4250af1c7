//! Exit codes a script can trust (issue 13 point 6): `run --once` says 0 only when the host
//! matches a valid document, 2 when anything managed is not converged, 1 when no valid
//! document is in force or PVE cannot be used; the reason's code is printed. Usage errors are
//! 64 (EX_USAGE), never 0 or 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Host, code, guest, seed};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_fails_run_once_within_seconds() {
    let h = Host::start(vec![seed(501, true, 256)]).await;
    h.desired(&format!("revision = 1\n{}", guest(501, "running", 256)));
    let cfg = std::fs::read_to_string(h.config()).unwrap();
    let wrong = format!("fingerprint = \"{}\"", ["AB"; 32].join(":"));
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("fingerprint = ") {
                wrong.clone()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(h.config(), cfg).unwrap();
    let t = Instant::now();
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 1);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        stderr(&out).contains("pve_tls_untrusted"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_says_0_only_when_the_host_matches_a_valid_document() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![
        seed(501, true, 256),
        seed(502, true, 256),
        seed(503, true, 256),
    ])
    .await;
    // An invalid document and nothing in force: 1, with the code, and nothing applied.
    h.desired("revision = 1\n[[guest]]\nvmid = \"x\"\n");
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("desired_invalid"), "{}", stderr(&out));
    assert_eq!(h.sim.mutations().len(), 0);

    let doc = |rev: u32, mem: u32| {
        format!(
            "revision = {rev}\n{}{}{}",
            guest(501, "running", 256),
            guest(502, "running", 256),
            guest(503, "running", mem)
        )
    };
    // The seeded guests are adopted first (Drover did not create them).
    h.desired(&doc(2, 256));
    h.adopt_all().await;
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);

    // A locked guest the document changes: 2 with guest_locked.
    assert!(h.sim.alter(503, |ct| {
        ct.conf.insert("lock".into(), "backup".into());
    }));
    h.desired(&doc(3, 512));
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("guest_locked"), "{}", stderr(&out));

    // The backup ends (the lock clears); matching: 0.
    assert!(h.sim.alter(503, |ct| {
        ct.conf.remove("lock");
    }));
    h.desired(&doc(4, 256));
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // A rollback is refused: the host still matches the last document, but not the source's.
    h.desired(&doc(3, 256));
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("desired_rollback"),
        "{}",
        stderr(&out)
    );

    // A mass destroy held by the fuse is not "converged".
    h.desired(&format!(
        "revision = 5\n[[guest]]\nvmid = 501\nensure = \"absent\"\n[[guest]]\nvmid = 502\nensure = \"absent\"\n{}",
        guest(503, "running", 256)
    ));
    let out = h.drover_async(&["run", "--once"]).await;
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("fuse_mass_destroy"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_guests_exit_1_and_usage_errors_64() {
    let h = Host::start(vec![seed(501, true, 256)]).await;
    h.desired(&format!("revision = 1\n{}", guest(501, "running", 256)));
    let d = h.spawn_daemon();
    h.status_json(Duration::from_secs(20)).await;
    let out = h.drover_async(&["reconcile", "999"]).await;
    assert_eq!(code(&out), 1);
    assert!(common::stdout(&out).contains("unknown_guest"));
    let ok = h.drover_async(&["reconcile", "501"]).await;
    assert_eq!(code(&ok), 0);
    for args in [
        &["reconcile", "x"][..],
        &["no-such-verb"],
        &["status", "--bogus"],
    ] {
        let out = h.drover_async(args).await;
        assert_eq!(code(&out), 64, "{args:?}");
    }
    // --help and --version are answers, not errors.
    assert_eq!(code(&h.drover_async(&["--help"]).await), 0);
    assert_eq!(code(&h.drover_async(&["--version"]).await), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_type_errors_name_the_key() {
    let h = Host::start(vec![]).await;
    let cfg = std::fs::read_to_string(h.config())
        .unwrap()
        .replace("max_parallel = 3", "max_parallel = \"three\"");
    std::fs::write(h.config(), cfg).unwrap();
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("proxmox.max_parallel"), "{err}");
    assert!(err.contains("whole number"), "{err}");
}

/// The daemon with a wrong pin keeps trying (it must not exit: the pin may be fixed by a
/// certificate renewal), with the code in `STATUS=`, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_shows_a_pin_mismatch_in_status_and_keeps_trying() {
    use std::os::unix::net::UnixDatagram;
    let h = Host::start(vec![]).await;
    h.desired("revision = 1\n");
    let cfg = std::fs::read_to_string(h.config()).unwrap();
    let cfg: Vec<String> = cfg
        .lines()
        .map(|l| {
            if l.starts_with("fingerprint = ") {
                format!("fingerprint = \"{}\"", ["AB"; 32].join(":"))
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(h.config(), cfg.join("\n")).unwrap();
    let sock_path = h.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = h.command(&["run"]);
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut child = cmd.spawn().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        let mut msgs = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.contains("pve_tls_untrusted");
                msgs.push(m);
                if done {
                    break;
                }
            }
        }
        msgs
    })
    .await
    .unwrap();
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=waiting for PVE: [pve_tls_untrusted]")),
        "{got:?}"
    );
    assert!(!got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon keeps trying"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
