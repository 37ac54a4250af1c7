//! The sd_notify protocol as the unit in `deploy/drover.service` uses it (`Type=notify`,
//! `WatchdogSec=`), over a real `NOTIFY_SOCKET` datagram socket: READY=1 after recovery and the
//! first PVE read, WATCHDOG=1 pings from the main loop at half the watchdog interval (and only
//! for the process systemd named in `WATCHDOG_PID`), STOPPING=1 on SIGTERM.
//!
//! systemd sets `WATCHDOG_PID` to the service's main pid. The test gets the same environment by
//! starting `drover run` through `sh -c 'export WATCHDOG_PID=$$; exec drover ...'`: `exec`
//! keeps the shell's pid, so the variable names the agent's own pid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Host};

/// One datagram and when it arrived.
struct Msg {
    at: Instant,
    text: String,
}

impl Msg {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

/// Receives datagrams until `done` holds for what was received, or `timeout` passes.
fn collect(sock: &UnixDatagram, timeout: Duration, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(Msg {
                at: Instant::now(),
                text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            });
        }
    }
    got
}

fn count(msgs: &[Msg], line: &str) -> usize {
    msgs.iter().filter(|m| m.has(line)).count()
}

fn texts(msgs: &[Msg]) -> Vec<&str> {
    msgs.iter().map(|m| m.text.as_str()).collect()
}

/// How `WATCHDOG_PID` is set for the child.
enum WatchdogPid {
    /// The agent's own pid, as systemd sets it.
    Own,
    /// Some other process (the agent must not ping).
    Other(u32),
}

/// A host with one running guest, a pass interval of an hour (so every WATCHDOG=1 comes from
/// the watchdog cadence, not from a reconcile pass) and `drover run` under a notify socket.
async fn start(watchdog_pid: WatchdogPid) -> (Host, UnixDatagram, Daemon) {
    let h = Host::start(vec![pve_sim::SeedGuest {
        vmid: 101,
        hostname: "web".into(),
        running: true,
        ..pve_sim::SeedGuest::default()
    }])
    .await;
    h.desired("revision = 1\n[[guest]]\nvmid = 101\nensure = \"running\"\n");
    let config = std::fs::read_to_string(h.config()).unwrap();
    assert!(config.contains("interval = \"1s\""), "{config}");
    std::fs::write(
        h.config(),
        config.replace("interval = \"1s\"", "interval = \"1h\""),
    )
    .unwrap();

    let sock_path = h.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log = h.root().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let script = match watchdog_pid {
        WatchdogPid::Own => "export WATCHDOG_PID=$$; exec \"$0\" \"$@\"".to_string(),
        WatchdogPid::Other(pid) => format!("export WATCHDOG_PID={pid}; exec \"$0\" \"$@\""),
    };
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_drover"))
        .arg("--config")
        .arg(h.config())
        .arg("run")
        .env("DROVER_LOG", "info")
        .env("NOTIFY_SOCKET", &sock_path)
        // 2 s: the agent pings every second.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("drover run starts");
    (h, sock, Daemon { child, log })
}

async fn until_ready(sock: &UnixDatagram, daemon: &Daemon) -> Vec<Msg> {
    let s = sock.try_clone().unwrap();
    let msgs = tokio::task::spawn_blocking(move || {
        collect(&s, Duration::from_secs(20), |m| {
            m.last().is_some_and(|x| x.has("READY=1"))
        })
    })
    .await
    .unwrap();
    assert_eq!(
        count(&msgs, "READY=1"),
        1,
        "{:?}\n{}",
        texts(&msgs),
        daemon.log_text()
    );
    msgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_follow_ready_at_half_the_interval_then_stopping_on_sigterm() {
    let (_h, sock, daemon) = start(WatchdogPid::Own).await;
    let boot = until_ready(&sock, &daemon).await;
    assert_eq!(
        count(&boot, "WATCHDOG=1"),
        0,
        "a ping before READY=1: {:?}",
        texts(&boot)
    );
    assert!(boot.iter().any(|m| m.text.contains("STATUS=")));
    let ready_at = boot.last().unwrap().at;

    // WatchdogSec=2s: pings every ~1 s from the main loop.
    // A fixed window, so the count also bounds the rate.
    let s = sock.try_clone().unwrap();
    let after = tokio::task::spawn_blocking(move || collect(&s, Duration::from_secs(4), |_| false))
        .await
        .unwrap();
    let pings: Vec<Instant> = after
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect();
    // About WATCHDOG_USEC/2 apart: 4 or 5 in 4 s. Not a busy loop (that is thousands), nor
    // half the interval (8), and
    // counted rather than timed one by one: pings read late by a busy test thread arrive
    // together without having been sent together.
    assert!(
        (3..=6).contains(&pings.len()),
        "expected 3 to 6 WATCHDOG=1 in the 4 s after READY=1, got {:?}\n{}",
        texts(&after),
        daemon.log_text()
    );
    // Never later than the watchdog interval (systemd would kill the agent).
    let mut last = ready_at;
    for (i, p) in pings.iter().enumerate() {
        let gap = p.duration_since(last);
        assert!(gap < Duration::from_millis(1900), "ping {i} after {gap:?}");
        last = *p;
    }

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let s = sock.try_clone().unwrap();
    let stopping = tokio::task::spawn_blocking(move || {
        collect(&s, Duration::from_secs(10), |m| {
            m.iter().any(|x| x.has("STOPPING=1"))
        })
    })
    .await
    .unwrap();
    assert_eq!(
        count(&stopping, "STOPPING=1"),
        1,
        "{:?}\n{}",
        texts(&stopping),
        daemon.log_text()
    );
    // The SIGTERM above is the only one: a second would exit at once with 130.
    let status = daemon.exited().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_when_systemd_watches_another_pid() {
    // pid 1 is never the agent: sd_watchdog_enabled(3) says the watchdog is not for us.
    let (_h, sock, daemon) = start(WatchdogPid::Other(1)).await;
    until_ready(&sock, &daemon).await;
    let s = sock.try_clone().unwrap();
    let after = tokio::task::spawn_blocking(move || {
        collect(&s, Duration::from_secs(3), |m| count(m, "WATCHDOG=1") > 0)
    })
    .await
    .unwrap();
    assert_eq!(count(&after, "WATCHDOG=1"), 0, "{:?}", texts(&after));
    let status = daemon.stop().await;
    assert!(status.success(), "{status:?}");
}
