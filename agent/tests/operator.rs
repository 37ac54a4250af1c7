//! The operator's surface against a running daemon (real `drover run` child process, the
//! simulator over TLS): `status`, `suspend`/`resume`, `reconcile`, `approvals`/`approve`
//! through the control socket, bad requests on the socket, and the Prometheus metrics parsed
//! as the text exposition format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{DOMAIN, Host, code, eventually, guest, seed, sign, stdout};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A strict parser for what Prometheus scrapes: `# HELP`/`# TYPE` lines, then
/// `name{label="value",...} number` samples; anything else is an error.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE {line:?}"))?;
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("unknown type in {line:?}"));
            }
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .ok_or(format!("no value in {line:?}"))?;
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}').ok_or(format!("unclosed labels in {line:?}"))?;
            for pair in r[..close].split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or(format!("bad label {line:?}"))?;
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or(format!("unquoted label value in {line:?}"))?;
                labels.push((k.to_string(), v.to_string()));
            }
            rest = &r[close + 1..];
        }
        let value: f64 = rest
            .trim()
            .parse()
            .map_err(|_| format!("bad value in {line:?}"))?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        if !typed.contains(family) {
            return Err(format!("sample without a TYPE line: {line:?}"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(port: u16) -> Vec<Sample> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// `drover_pve_api_requests_total` counts every request the agent sends (it missed the config
/// reads of every pass and every task poll): checked against the simulator's own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pve_request_is_counted_in_the_metric() {
    // All three created by Drover: a seeded guest would wait for adoption, and adopting it
    // here would add requests of another process to the simulator's count.
    let h = Host::start(vec![]).await;
    let port = free_port();
    h.write_config(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(140, "running", 256),
        guest(141, "running", 256),
        guest(142, "stopped", 256)
    ));
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(30), "convergence", || {
        h.sim.guest(140).is_some_and(|g| g.running)
            && h.sim.guest(141).is_some_and(|g| g.running)
            && h.sim.guest(142).is_some()
    })
    .await;
    // A few more passes (1 s interval), each reading every config.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = h.sim.request_count() as f64;
    let counted = metric(&scrape(port).await, "drover_pve_api_requests_total", &[]);
    let after = h.sim.request_count() as f64;
    // Counted once answered: never more than the simulator saw, and short of it by at most
    // the requests in flight at that moment (reads and lanes, a handful).
    assert!(
        counted <= after,
        "counted {counted}, the simulator saw {after}"
    );
    assert!(
        before - counted <= 8.0,
        "counted {counted} of the {before} requests the simulator saw"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_suspend_resume_reconcile_and_metrics_against_a_running_daemon() {
    // Both guests are Drover's own (created here): a seeded one would wait for adoption.
    let h = Host::start(vec![]).await;
    let port = free_port();
    h.write_config(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(130, "running", 256),
        guest(131, "running", 256)
    ));
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(30), "convergence", || {
        h.sim.guest(130).is_some_and(|g| g.running) && h.sim.guest(131).is_some_and(|g| g.running)
    })
    .await;
    let s = h.status_json(Duration::from_secs(10)).await;
    assert_eq!(s["source"]["kind"], "dir", "{s}");
    assert!(s["source"]["last_success_unix"].is_i64(), "{s}");
    eventually(&d, Duration::from_secs(10), "status converged", || {
        let o = h.drover(&["status"]);
        code(&o) == 0
    })
    .await;
    let table = stdout(&h.drover(&["status"]));
    assert!(
        table.contains("VMID") && table.contains("converged"),
        "{table}"
    );
    assert!(table.contains("source dir"), "{table}");
    // `plan` asks the running daemon.
    let p = h.drover_async(&["plan"]).await;
    assert_eq!(code(&p), 0, "{}", stdout(&p));
    assert!(stdout(&p).contains("No changes"), "{}", stdout(&p));

    // Suspend 131: its drift is left alone until resumed, 130's is corrected.
    let r = h.drover_async(&["suspend", "131", "--reason", "   "]).await;
    assert_eq!(code(&r), 1, "an empty reason is refused");
    assert!(stdout(&r).contains("reason_required"), "{}", stdout(&r));
    let r = h
        .drover_async(&[
            "suspend",
            "131",
            "--reason",
            "kernel debugging",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["suspended"], 131);
    h.sim.seed(seed(131, true, 999));
    h.sim.seed(seed(130, true, 999));
    let r = h.drover_async(&["reconcile"]).await;
    assert_eq!(code(&r), 0);
    eventually(
        &d,
        Duration::from_secs(15),
        "drift on 130 corrected",
        || h.sim.guest(130).is_some_and(|g| g.memory == 256),
    )
    .await;
    assert_eq!(
        h.sim.guest(131).unwrap().memory,
        999,
        "a suspended guest was changed"
    );
    let table = stdout(&h.drover(&["status"]));
    assert!(table.contains("kernel debugging"), "{table}");
    let r = h.drover_async(&["resume", "131"]).await;
    assert_eq!(code(&r), 0);
    assert_eq!(stdout(&r).trim(), "CT 131 resumed");
    eventually(&d, Duration::from_secs(15), "resume reconciles 131", || {
        h.sim.guest(131).is_some_and(|g| g.memory == 256)
    })
    .await;

    // Metrics: strict parse, and they carry what happened.
    let m = scrape(port).await;
    assert!(metric(&m, "drover_reconcile_total", &[]) >= 3.0, "{m:?}");
    assert!(
        metric(
            &m,
            "drover_pve_task_duration_seconds_count",
            &[("type", "vzcreate")]
        ) >= 1.0
    );
    assert!(metric(&m, "drover_pve_api_requests_total", &[("method", "POST")]) >= 1.0);
    assert!(
        metric(
            &m,
            "drover_pve_api_requests_total",
            &[("method", "GET"), ("code", "200")]
        ) >= 1.0
    );
    assert!(metric(&m, "drover_journal_fsync_seconds_count", &[]) >= 1.0);
    assert_eq!(metric(&m, "drover_journal_inflight_steps", &[]), 0.0);
    assert!(metric(&m, "drover_hub_last_success_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(metric(&m, "drover_build_info", &[]), 1.0);
    assert_eq!(metric(&m, "drover_pending_approvals", &[]), 0.0);
    for name in [
        "drover_reconcile_duration_seconds_count",
        "drover_lane_queue_depth",
        "drover_lanes_active",
        "drover_lane_retries_total",
        "drover_guests",
    ] {
        assert!(m.iter().any(|s| s.name == name), "{name} missing");
    }
    // Named for the source it came from (a directory here), revision and trust as gauges,
    // a zero for every state, and the process metrics.
    assert!(
        metric(
            &m,
            "drover_desired_last_success_timestamp_seconds",
            &[("source", "dir")]
        ) > 1.7e9
    );
    assert_eq!(metric(&m, "drover_desired_revision", &[]), 1.0);
    assert_eq!(metric(&m, "drover_trust_valid", &[]), 1.0);
    assert_eq!(metric(&m, "drover_trust_version", &[]), 1.0);
    assert!(
        m.iter()
            .any(|s| s.name == "drover_guests" && s.labels == [("state".into(), "failed".into())])
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(metric(&m, name, &[]) > 0.0, "{name}");
    }

    let status = d.stop().await;
    assert!(status.success(), "{status:?}");
}

/// `drover approvals` lists the request with its text and the exact sign command;
/// `drover approve` submits through the running daemon's socket and the destroy runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_listed_and_approved_through_the_socket() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![seed(701, true, 256), seed(702, true, 256)]).await;
    h.desired(&format!(
        "revision = 1\n[[guest]]\nvmid = 701\nensure = \"absent\"\n{}",
        guest(702, "running", 256)
    ));
    // Seeded guests are adopted first (signed requests in the inbox, used by the daemon).
    h.adopt_all().await;
    let d = h.spawn_daemon();
    eventually(
        &d,
        Duration::from_secs(20),
        "a destroy approval request",
        || {
            let p = h.pending_requests();
            p.len() == 1 && p[0].to_string_lossy().ends_with("701-destroy_guest.txt")
        },
    )
    .await;
    let a = h.drover_async(&["approvals", "--output", "json"]).await;
    assert_eq!(code(&a), 2, "pending approvals exit 2");
    let rows: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let row = &rows[0];
    assert!(
        row["text"].as_str().unwrap().contains("op: destroy_guest"),
        "{rows}"
    );
    let sign_cmd = row["sign"].as_str().unwrap();
    let ns = format!("destructive-op-v1@{DOMAIN}");
    assert!(
        sign_cmd.starts_with("ssh-keygen -Y sign -f ") && sign_cmd.contains(&format!("-n {ns} ")),
        "{sign_cmd}"
    );
    let text = stdout(&h.drover_async(&["approvals"]).await);
    assert!(
        text.contains("sign with:") && text.contains("drover approve"),
        "{text}"
    );

    let request = h.pending_requests()[0].clone();
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    let sig = sign("demo/TEST_demo_operator_ed25519", &ns, &request, &work);
    let copy = work.join(request.file_name().unwrap());
    assert!(h.sim.guest(701).is_some(), "destroyed before approval");
    // A key the trust document does not list: refused at once with the gate's code.
    let strangers = h.root().join("stranger");
    std::fs::create_dir_all(&strangers).unwrap();
    let bad = sign("gate/TEST_stranger_ed25519", &ns, &request, &strangers);
    for _ in 0..3 {
        let r = h.submit("approve", &copy, &[&bad]).await;
        assert_eq!(code(&r), 1, "{}", stdout(&r));
        assert!(stdout(&r).starts_with("unknown_signer: "), "{}", stdout(&r));
    }
    // On record once, however often it is retried.
    let audit = stdout(&h.drover_async(&["journal", "--audit"]).await);
    assert_eq!(
        audit.matches("refused unknown_signer").count(),
        1,
        "{audit}"
    );
    let inbox = h.state().join("approvals/inbox");
    assert_eq!(std::fs::read_dir(&inbox).map(|r| r.count()).unwrap_or(0), 0);
    let r = h.submit("approve", &copy, &[&sig]).await;
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    eventually(&d, Duration::from_secs(20), "the approved destroy", || {
        h.sim.guest(701).is_none()
    })
    .await;
    assert_eq!(h.sim.count_mutations("destroy", 701), 1);
    // The simulator's task ends before the agent confirms the destroy with a fresh read, so
    // the board may still show the step for a moment: wait for the confirmation.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = h.status_json(Duration::from_secs(5)).await;
        let cleared = m["guests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["pending_approval"].is_null());
        if cleared {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.stop().await;
}

/// Sends raw bytes to the control socket and returns (status code, body).
fn raw_socket(path: &std::path::Path, request: &[u8]) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The agent may answer an oversized request (413/431) and close before the whole request
    // is written: a broken pipe here is that answer, read below, not a failure.
    if let Err(e) = s.write_all(request) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing the request: {e}"
        );
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: drover\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Every malformed request on the socket gets a 4xx with a stable code and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_socket_requests_are_refused_with_a_code_and_change_nothing() {
    // Created by Drover itself: a seeded guest would leave an adopt request pending.
    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 1\n{}", guest(140, "running", 256)));
    let d = h.spawn_daemon();
    let before = h.status_json(Duration::from_secs(20)).await;
    let sock = h.root().join("drover.sock");
    let huge = format!("{{\"reason\":\"{}\"}}", "x".repeat(400 * 1024));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (post("/v1/suspend", "{not json"), 400, "bad_request"),
        (
            post("/v1/suspend", r#"{"vmid":140,"reason":"x","force":true}"#),
            400,
            "bad_request",
        ),
        (
            post("/v1/suspend", r#"{"vmid":-1,"reason":"x"}"#),
            400,
            "bad_request",
        ),
        (
            post("/v1/suspend", r#"{"vmid":140}"#),
            400,
            "reason_required",
        ),
        (post("/v1/suspend", &huge), 413, "body_too_large"),
        (
            post("/v1/reconcile", r#"{"vmid":"all"}"#),
            400,
            "bad_request",
        ),
        (
            post(
                "/v1/approvals",
                r#"{"name":"../../etc/x","payload":"p","signatures":["s"]}"#,
            ),
            400,
            "bad_name",
        ),
        (
            post(
                "/v1/approvals",
                r#"{"name":"a","payload":"p","signatures":[]}"#,
            ),
            400,
            "bad_signatures",
        ),
        (
            post(
                "/v1/approvals",
                r#"{"name":"a","payload":"not an approval","signatures":["junk"]}"#,
            ),
            422,
            "malformed_payload",
        ),
        (post("/v1/nothing", "{}"), 404, "not_found"),
        (
            b"DELETE /v1/status HTTP/1.1\r\nhost: d\r\nconnection: close\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        (b"garbage\r\n\r\n".to_vec(), 400, ""),
    ];
    for (req, want_status, want_code) in cases {
        let (status, body) = raw_socket(&sock, &req);
        let shown = String::from_utf8_lossy(&req[..req.len().min(120)]).into_owned();
        assert_eq!(status, want_status, "{shown}: {body}");
        if !want_code.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{shown}: body is not json ({e}): {body}"));
            assert_eq!(v["code"], want_code, "{shown}: {body}");
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
    }
    let after = h.status_json(Duration::from_secs(5)).await;
    assert_eq!(after["suspensions"], before["suspensions"]);
    assert_eq!(after["suspensions"], serde_json::json!([]));
    assert!(h.pending_requests().is_empty());
    let inbox = h.state().join("approvals/inbox");
    let inbox_files = std::fs::read_dir(&inbox).map(|r| r.count()).unwrap_or(0);
    assert_eq!(inbox_files, 0, "a refused approval reached the inbox");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_need_the_daemon_say_it_is_not_running() {
    let h = Host::start(vec![]).await;
    for args in [
        &["status"][..],
        &["reconcile"],
        &["suspend", "--reason", "x"],
        &["resume"],
    ] {
        let o = h.drover_async(args).await;
        assert_eq!(code(&o), 1, "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not running"), "{args:?}: {err}");
    }
}

/// `drover approvals` that cannot read the request directory says so; it never reports
/// "nothing pending" for a directory it could not look into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_report_an_unreadable_request_directory() {
    let h = Host::start(vec![]).await;
    let none = h.drover_async(&["approvals"]).await;
    assert_eq!(code(&none), 0, "{}", String::from_utf8_lossy(&none.stderr));
    assert!(stdout(&none).contains("no approval requests are pending"));
    // Not a directory: unreadable even for root (a permission problem looks the same).
    std::fs::create_dir_all(h.state().join("approvals")).unwrap();
    std::fs::write(h.state().join("approvals/pending"), "").unwrap();
    let bad = h.drover_async(&["approvals"]).await;
    assert_eq!(code(&bad), 1);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("reading pending approval requests"), "{err}");
    assert!(!stdout(&bad).contains("no approval requests"));
}

/// `sudo drover approve` while the service is stopped: the inbox it creates belongs to the
/// state directory's owner (the service user), or the agent could not retire the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_without_the_daemon_leaves_the_inbox_to_the_service_user() {
    use std::os::unix::fs::MetadataExt;
    let h = Host::start(vec![]).await;
    std::fs::create_dir_all(h.state()).unwrap();
    let service_user = 65534; // nobody: not the test's user
    let as_root = std::fs::metadata(h.state()).unwrap().uid() == 0;
    if as_root {
        std::os::unix::fs::chown(h.state(), Some(service_user), Some(service_user)).unwrap();
    }
    let work = h.root().join("officer");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("req.txt"), "drover-approval v1\n").unwrap();
    std::fs::write(work.join("req.txt.sig"), "sig").unwrap();
    let r = h
        .drover_async(&[
            "approve",
            work.join("req.txt").to_str().unwrap(),
            work.join("req.txt.sig").to_str().unwrap(),
        ])
        .await;
    assert_eq!(code(&r), 0, "{}", String::from_utf8_lossy(&r.stderr));
    let inbox = h.state().join("approvals/inbox");
    let mut checked = vec![h.state().join("approvals"), inbox.clone()];
    checked.extend(
        std::fs::read_dir(&inbox)
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    assert_eq!(checked.len(), 4, "{checked:?}");
    if !as_root {
        eprintln!("not root: ownership hand-over not exercised");
        return;
    }
    for p in checked {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (service_user, service_user), "{p:?}");
    }
}

/// `drover check-config` (the unit's ExecStartPre): 0 when the agent can start, 1 with the
/// file, line and key otherwise; a broken trust document or source is a warning, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_what_would_stop_a_start() {
    let h = Host::start(vec![]).await;
    h.desired("revision = 1\n");
    let ok = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&ok), 0);
    assert!(
        stdout(&ok).contains("is valid: host pve1"),
        "{}",
        stdout(&ok)
    );

    h.write_config("\n[metrics]\nlisten = \"127.0.0.1:9464\"\nlistne = 1\n");
    let bad = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&bad), 1);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("drover.toml") && err.contains("listne"),
        "{err}"
    );

    h.write_config("");
    std::fs::remove_file(h.root().join("pve-token")).unwrap();
    let bad = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&bad), 1);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("token secret"));
    std::fs::write(h.root().join("pve-token"), pve_sim::DEFAULT_TOKEN_SECRET).unwrap();

    // A relative token path (the packaged config's `pve-token`) is found beside the config
    // file when no systemd credential directory is set, whatever the working directory.
    let abs = format!("token_secret_file = {:?}", h.root().join("pve-token"));
    let text = std::fs::read_to_string(h.config()).unwrap();
    assert!(text.contains(&abs), "{text}");
    std::fs::write(
        h.config(),
        text.replace(&abs, "token_secret_file = \"pve-token\""),
    )
    .unwrap();
    let rel = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&rel), 0, "{}", String::from_utf8_lossy(&rel.stderr));
    std::fs::rename(h.root().join("pve-token"), h.root().join("pve-token.away")).unwrap();
    let missing = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&missing), 1);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&h.root().join("pve-token").display().to_string()),
        "{err}"
    );
    std::fs::rename(h.root().join("pve-token.away"), h.root().join("pve-token")).unwrap();
    h.write_config("");

    // The PVE certificate trust is checked as `run` would build it.
    let text = std::fs::read_to_string(h.config()).unwrap();
    let fp_line = format!("fingerprint = {:?}", h.sim.fingerprint());
    let missing_ca = h.root().join("no-such-ca.pem");
    for (replacement, expected) in [
        (
            "fingerprint = \"AB:CD\"".to_string(),
            vec!["proxmox.fingerprint"],
        ),
        (
            format!("ca_file = {missing_ca:?}"),
            vec!["proxmox.ca_file", "no-such-ca.pem"],
        ),
        (
            format!("{fp_line}\nnode_cert_file = \"/etc/pve/local/pve-ssl.pem\""),
            vec!["at most one of"],
        ),
    ] {
        std::fs::write(h.config(), text.replace(&fp_line, &replacement)).unwrap();
        let bad = h.drover_async(&["check-config"]).await;
        assert_eq!(code(&bad), 1, "{replacement}");
        let err = String::from_utf8_lossy(&bad.stderr);
        for e in expected {
            assert!(err.contains(e), "{replacement}: {err}");
        }
    }
    h.write_config("");

    // A trust document of another fleet: every approval would be refused; say so now.
    std::fs::write(
        h.root().join("trust"),
        include_str!("../../testdata/demo/trust").replace("fleet: demo", "fleet: elsewhere"),
    )
    .unwrap();
    let warn = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&warn), 0);
    let err = String::from_utf8_lossy(&warn.stderr);
    assert!(
        err.contains("wrong_fleet") && err.contains("elsewhere"),
        "{err}"
    );

    std::fs::write(h.root().join("trust"), "not a trust document").unwrap();
    let warn = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&warn), 0);
    let err = String::from_utf8_lossy(&warn.stderr);
    assert!(err.contains("destructive steps will be blocked"), "{err}");

    // A hub nobody answers: a warning with its code, or nothing at all with --offline.
    let port = free_port();
    let text = std::fs::read_to_string(h.config()).unwrap().replace(
        &format!("path = {:?}", h.source()),
        &format!("url = \"https://127.0.0.1:{port}/drover\"\ntimeout = \"1s\""),
    );
    std::fs::write(h.config(), text).unwrap();
    let w = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&w), 0);
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("[hub_unreachable]"),
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );
    let quiet = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&quiet), 0);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("hub"));
}

/// A daemon that closes connections unanswered (at its connection cap, at a header timeout, or
/// restarting) makes every client call end with an error, never wait forever. hyper can leave a
/// request queued on a connection that is closing, and its answer then never comes: the client
/// watches the connection itself. Many short races, each given 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_closing_connections_unanswered_never_hangs_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("drover.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut n = 0u32;
            for s in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { break };
                n += 1;
                if n.is_multiple_of(2) {
                    let body = r#"{"code":"busy","message":"x"}"#;
                    let _ = write!(
                        s,
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Vary the moment of the close against the client's write.
                if n % 3 == 1 {
                    std::thread::sleep(Duration::from_micros(u64::from(n % 7) * 50));
                }
                drop(s);
            }
        }
    });
    let mut hung = 0;
    let mut answered = 0;
    for _ in 0..500 {
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let sock = sock.clone();
                tokio::spawn(async move {
                    let call =
                        drover::operator::control::client::call(&sock, "GET", "/v1/status", None);
                    tokio::time::timeout(Duration::from_secs(10), call).await
                })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                Err(_) => hung += 1,
                Ok(Ok((503, _))) => answered += 1,
                Ok(Ok(other)) => panic!("{other:?}"),
                Ok(Err(e)) => assert!(e.to_string().contains(&sock.display().to_string()), "{e}"),
            }
        }
    }
    // Wake the closer so it sees the stop.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::os::unix::net::UnixStream::connect(&sock);
    closer.join().unwrap();
    assert_eq!(
        hung, 0,
        "every call ends, {answered} with the daemon's answer"
    );
}

/// A daemon that accepts and never answers (stopped with SIGSTOP, wedged) is reported as such
/// once the call's deadline passes, with the socket named; the CLI does not wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_never_answers_is_reported_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("drover.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let call = drover::operator::control::client::call_within(
        &sock,
        "GET",
        "/v1/status",
        None,
        Duration::from_secs(1),
    );
    let e = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call ends at its own deadline")
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("did not answer within 1 s"), "{msg}");
    assert!(msg.contains(&sock.display().to_string()), "{msg}");
    drop(holder.join().unwrap());
}
