//! Log levels reach journald as priorities, and the step's vmid, op id and UPID as fields.
//!
//! Against a real `systemd-journald` (started in a private mount namespace, so that it owns
//! its own `/run/systemd/journal` and the machine's journal is untouched), the binary run the
//! way systemd runs it: stdout and stderr on a journal stream (`systemd-cat`) and
//! `JOURNAL_STREAM` naming that stream. And without a journal socket, the `<N>` priority
//! prefixes journald's stream reader understands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{Host, guest};

const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";

/// A broken trust document (a warning: destructive steps are blocked) and a guest to create
/// (info lines inside the step's span, with its UPID).
async fn host() -> Host {
    let h = Host::start_with(pve_sim::SimConfig {
        task_duration: std::time::Duration::from_millis(50),
        ..pve_sim::SimConfig::default()
    })
    .await;
    std::fs::write(h.root().join("trust"), "not a trust document\n").unwrap();
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(701, "running", 256),
        guest(702, "running", 256)
    ));
    h
}

/// Root, `unshare` and journald are needed; without them the test is skipped (a failure under
/// `DROVER_REQUIRE_TOOLS`).
fn can_run_journald() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let ok = root && Path::new(JOURNALD).exists() && !common::skip_without("unshare", "--help");
    if !ok {
        assert!(
            std::env::var_os("DROVER_REQUIRE_TOOLS").is_none(),
            "the journald test needs root, unshare and {JOURNALD} (apt-get install systemd)"
        );
        println!("SKIPPED: needs root, unshare and {JOURNALD}");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_and_step_fields_reach_a_real_journald() {
    if !can_run_journald() || common::skip_without("systemd-cat", "--help") {
        return;
    }
    let h = host().await;
    let out_file = h.root().join("journal.json");
    // In the namespace: a private /run/systemd and /run/log, journald listening there, drover
    // on a journal stream with JOURNAL_STREAM set as systemd sets it, then the journal as JSON.
    let script = format!(
        r#"set -eu
mount -t tmpfs tmpfs /run/systemd 2>/dev/null || {{ mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; }}
mkdir -p /run/systemd/journal /run/log
mount -t tmpfs tmpfs /run/log
{journald} >/dev/null 2>&1 &
jpid=$!
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
systemd-cat -t drover-stream sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@"' \
    {drover} --config {config} run --once
sleep 1
journalctl -D /run/log/journal --no-pager -o json > {out}
kill $jpid
"#,
        journald = JOURNALD,
        drover = env!("CARGO_BIN_EXE_drover"),
        config = h.config().display(),
        out = out_file.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("DROVER_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.sim.count_mutations("create", 702), 1, "the pass ran");

    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "drover")
        .collect();
    let dump = || {
        ours.iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["PRIORITY"],
                    e["MESSAGE"],
                    e.get("UPID").unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!ours.is_empty(), "no native entries: {entries:?}");
    // The native protocol, not the stream (which would carry _TRANSPORT=stdout).
    assert!(
        ours.iter().all(|e| e["_TRANSPORT"] == "journal"),
        "{}",
        dump()
    );
    // The broken trust document is a warning (4).
    let warning = ours
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("destructive steps are blocked"))
        })
        .unwrap_or_else(|| panic!("no trust warning:\n{}", dump()));
    assert_eq!(warning["PRIORITY"], "4", "{warning}");
    // Routine lines are informational (6), and a line inside the step's span carries the
    // step's vmid, op id and UPID as fields.
    let in_step = ours
        .iter()
        .find(|e| e["VMID"].is_string() && e["OP_ID"].is_string() && e["UPID"].is_string())
        .unwrap_or_else(|| panic!("no entry with VMID, OP_ID and UPID:\n{}", dump()));
    assert_eq!(in_step["PRIORITY"], "6", "{in_step}");
    assert!(
        in_step["VMID"] == "701" || in_step["VMID"] == "702",
        "{in_step}"
    );
    assert!(
        in_step["UPID"].as_str().unwrap().starts_with("UPID:pve1:"),
        "{in_step}"
    );
    // Nothing of ours went through the stream as well (no duplicates at priority 6).
    assert!(
        !entries
            .iter()
            .any(|e| e["SYSLOG_IDENTIFIER"] == "drover-stream"
                && e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("destructive steps"))),
        "log lines were also written to the stream"
    );
}

/// Without a journal socket (a sandbox), lines go to the stream with `<N>` prefixes. Here the
/// "stream" is a file, named by `JOURNAL_STREAM` exactly as systemd names a journal stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_journal_socket_lines_carry_syslog_priority_prefixes() {
    if Path::new("/run/systemd/journal/socket").exists() {
        // This machine runs journald: the native protocol would be used. The test above covers
        // that; this one needs a machine (or CI container) without it.
        assert!(
            std::env::var_os("DROVER_REQUIRE_TOOLS").is_none() || can_run_journald(),
            "unreachable"
        );
        println!("SKIPPED: a journal socket exists here, so the prefix fallback is not used");
        return;
    }
    let h = host().await;
    let err_path = h.root().join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let meta = err.metadata().unwrap();
    let mut cmd = h.command(&["run", "--once"]);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(err);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&err_path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with("<3>")
                || l.starts_with("<4>")
                || l.starts_with("<6>")
                || l.starts_with("<7>")
                || l.starts_with(' '),
            "a line without a priority prefix: {l:?}\n{text}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("destructive steps are blocked")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<6>")
            && l.contains("vmid=702")
            && l.contains("op_id=")
            && l.contains("upid=")),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "ANSI colours: {text:?}");

    // A JOURNAL_STREAM that names some other file (inherited from a unit by a child whose
    // stderr was redirected) is not taken for the journal: no prefixes.
    let err_path = h.root().join("stderr2");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut cmd = h.command(&["plan"]);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("DROVER_LOG", "debug")
        .stderr(err);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&err_path).unwrap();
    assert!(!text.is_empty(), "plan logged nothing at debug");
    assert!(!text.starts_with('<'), "{text}");
}
