//! The client against a raw TLS server that sends exactly what we choose: fixture bodies and
//! error exchanges (with PVE's reason phrases), malformed JSON, wrong types, a 1 GiB body, a
//! stalling server, a closed connection, wrong certificates. Every case must end in a typed
//! error within the timeout, never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Reply, Req, TEST_SECRET};
use proxmox_client::*;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pve-fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn fixture_reply(name: &str) -> Reply {
    Reply::json(&fixture(name).to_string())
}

fn token() -> ApiToken {
    ApiToken::new("drover@pve!agent", TEST_SECRET).unwrap()
}

fn config(url: &str, tls: TlsTrust) -> ClientConfig {
    let mut c = ClientConfig::new(url, token(), tls);
    c.request_timeout = Duration::from_secs(3);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn pinned(server: &common::RawServer) -> Client {
    Client::new(config(
        &server.url,
        TlsTrust::Fingerprint(server.fingerprint),
    ))
    .unwrap()
}

fn route(req: &Req) -> Reply {
    let path = req.target.split('?').next().unwrap_or("");
    let f = match (req.method.as_str(), path) {
        ("GET", "/api2/json/nodes/pve1/lxc") => "lxc-list.json",
        ("GET", "/api2/json/nodes/pve1/lxc/101/config") => "lxc-config.json",
        ("PUT", "/api2/json/nodes/pve1/lxc/101/config") => "null-response-put-config.json",
        ("GET", "/api2/json/nodes/pve1/lxc/101/pending") => "lxc-pending.json",
        ("GET", "/api2/json/nodes/pve1/lxc/101/status/current") => {
            "lxc-status-current-running.json"
        }
        ("GET", "/api2/json/nodes/pve1/lxc/101/snapshot") => "lxc-snapshot-list.json",
        ("GET", "/api2/json/nodes/pve1/lxc/101/interfaces") => "lxc-interfaces.json",
        ("POST", "/api2/json/nodes/pve1/lxc/101/status/start") => "upid-response-vzstart.json",
        ("POST", "/api2/json/nodes/pve1/lxc") => "upid-response-vzcreate.json",
        ("DELETE", "/api2/json/nodes/pve1/lxc/101") => "upid-response-vzstart.json",
        ("GET", "/api2/json/nodes/pve1/tasks") => "node-tasks-active.json",
        ("GET", "/api2/json/cluster/resources") => "cluster-resources-vm.json",
        ("GET", "/api2/json/cluster/nextid") => "cluster-nextid.json",
        ("GET", p) if p.ends_with("/status") && p.contains("/tasks/") => {
            "task-status-stopped-warnings.json"
        }
        ("GET", p) if p.ends_with("/log") => "task-log-vzcreate.json",
        _ => {
            return Reply::Status {
                status: 501,
                reason: format!("Method '{} {}' not implemented", req.method, path),
                body: b"{\"data\":null}".to_vec(),
            };
        }
    };
    fixture_reply(f)
}

#[tokio::test]
async fn fixture_bodies_over_tls() {
    let server = common::start(route).await;
    let c = pinned(&server);
    assert_eq!(c.list_lxc("pve1").await.unwrap().len(), 3);
    let cfg = c.lxc_config("pve1", 101, true).await.unwrap();
    assert_eq!(cfg.net[&0].bridge.as_deref(), Some("vmbr0"));
    assert_eq!(c.lxc_pending("pve1", 101).await.unwrap().len(), 7);
    assert!(c.lxc_status("pve1", 101).await.unwrap().entry.is_running());
    assert_eq!(c.list_snapshots("pve1", 101).await.unwrap().len(), 3);
    assert_eq!(c.lxc_interfaces("pve1", 101).await.unwrap().len(), 2);
    assert_eq!(c.next_free_vmid().await.unwrap(), 105);
    assert_eq!(c.cluster_vm_resources().await.unwrap().len(), 4);
    let active = c
        .list_tasks("pve1", &TaskListFilter::active_for(102))
        .await
        .unwrap();
    assert_eq!(active[0].worker_type.as_deref(), Some("vzdump"));
    let upid = c.start_lxc("pve1", 101).await.unwrap();
    assert_eq!(upid.worker_type, "vzstart");
    assert_eq!(
        c.task_status(&upid).await.unwrap().exit(),
        Some(TaskExit::Warnings(1))
    );
    let log = c.task_log(&upid, 0, 50).await.unwrap();
    assert_eq!((log.lines.len(), log.total), (11, Some(11)));
    assert_eq!(
        c.wait_task(
            &upid,
            &WaitOptions::fast(Duration::from_millis(10), Duration::from_secs(2))
        )
        .await
        .unwrap(),
        TaskOutcome::Warnings(1)
    );
    let create = CreateLxc::new(104, "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst")
        .param("hostname", "web-04")
        .param("net0", "name=eth0,bridge=vmbr0,ip=dhcp");
    assert_eq!(
        c.create_lxc("pve1", &create).await.unwrap().worker_type,
        "vzcreate"
    );
    c.destroy_lxc("pve1", 101, &DestroyOptions::default())
        .await
        .unwrap();
    c.update_lxc_config(
        "pve1",
        101,
        &ConfigUpdate::new()
            .set("memory", 1024)
            .delete("nameserver")
            .with_digest("5f6b1d9e"),
    )
    .await
    .unwrap();

    // What went over the wire.
    let seen = server.seen.lock().unwrap().clone();
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("PVEAPIToken=drover@pve!agent={TEST_SECRET}").as_str())
        );
    }
    let find = |m: &str, p: &str| {
        seen.iter()
            .find(|r| r.method == m && r.target.starts_with(p))
            .unwrap()
            .clone()
    };
    assert_eq!(
        find("GET", "/api2/json/nodes/pve1/lxc/101/config").target,
        "/api2/json/nodes/pve1/lxc/101/config?current=1"
    );
    let put = find("PUT", "/api2/json/nodes/pve1/lxc/101/config");
    assert_eq!(
        put.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8(put.body).unwrap(),
        "memory=1024&delete=nameserver&digest=5f6b1d9e"
    );
    let create = seen
        .iter()
        .find(|r| r.method == "POST" && r.target == "/api2/json/nodes/pve1/lxc")
        .unwrap();
    let post = String::from_utf8(create.body.clone()).unwrap();
    assert!(
        post.starts_with("vmid=104&ostemplate=local%3Avztmpl%2F"),
        "{post}"
    );
    assert!(post.ends_with("&start=0"), "{post}");
    assert_eq!(
        find("DELETE", "/api2/json/nodes/pve1/lxc/101").target,
        "/api2/json/nodes/pve1/lxc/101?purge=1&destroy-unreferenced-disks=1"
    );
    let status = find("GET", "/api2/json/nodes/pve1/tasks/UPID");
    assert_eq!(
        status.target,
        "/api2/json/nodes/pve1/tasks/UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:reconcile@pve!agent:/status"
    );
    assert_eq!(
        find("GET", "/api2/json/nodes/pve1/tasks?").target,
        "/api2/json/nodes/pve1/tasks?vmid=102&source=active"
    );
}

/// Serves one `http-*.json` exchange (status, reason phrase, body) for every request.
async fn exchange(name: &str) -> (Error, usize) {
    let f = fixture(name);
    let status = f["status"].as_u64().unwrap() as u16;
    let reason = f["reason"].as_str().unwrap().to_owned();
    let body = match &f["body"] {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    };
    let server = common::start(move |_| Reply::Status {
        status,
        reason: reason.clone(),
        body: body.clone(),
    })
    .await;
    let c = pinned(&server);
    let e = c.start_lxc("pve1", 101).await.unwrap_err();
    (e, server.request_count())
}

#[tokio::test]
async fn http_error_fixtures_are_classified() {
    let (e, _) = exchange("http-500-already-running.json").await;
    assert_eq!(e.already_in_state(), Some(AlreadyInState::Running));
    assert_eq!(e.message(), Some("CT 101 already running"));
    assert_eq!(e.path(), "/nodes/pve1/lxc/101/status/start");
    assert!(
        e.to_string()
            .starts_with("POST /nodes/pve1/lxc/101/status/start: "),
        "{e}"
    );

    let (e, _) = exchange("http-500-locked.json").await;
    assert!(e.is_lock() && !e.is_transient());
    assert_eq!(e.code(), "pve_locked");
    let (e, _) = exchange("http-500-lock-timeout.json").await;
    assert!(e.is_lock() && e.is_transient() && !e.may_have_been_processed());
    let (e, _) = exchange("http-500-digest-mismatch.json").await;
    assert!(e.is_digest_mismatch());
    let (e, _) = exchange("http-500-not-found.json").await;
    assert!(e.is_not_found());
    assert_eq!(e.already_in_state(), Some(AlreadyInState::DoesNotExist));
    let (e, _) = exchange("http-400-param.json").await;
    let errs = e.param_errors().unwrap();
    assert_eq!(errs["memory"], "value must have a minimum value of 16");
    assert!(errs.contains_key("foo"));
    assert_eq!(e.code(), "pve_bad_parameter");
    let (e, _) = exchange("http-400-no-such-task.json").await;
    assert!(e.is_not_found());
    let (e, _) = exchange("http-403-perm.json").await;
    assert!(e.is_permission());
    assert_eq!(
        e.message(),
        Some("Permission check failed (/vms/101, VM.PowerMgmt)")
    );
    let (e, _) = exchange("http-403-root-only.json").await;
    assert!(e.is_permission() && !e.is_transient());
    let (e, _) = exchange("http-596-proxy-timeout.json").await;
    assert!(e.is_transient() && e.may_have_been_processed());
    assert_eq!(e.message(), Some("Connection timed out"));
    let (e, n) = exchange("http-401.json").await;
    assert!(e.is_unauthorized() && !e.is_transient());
    assert_eq!(e.message(), Some("Authentication failed!"));
    assert_eq!(n, 1, "a 401 is never retried");
    // Older PVE: the message exists only in the reason phrase.
    let (e, _) = exchange("real-http-500-locked-legacy-telmate677.json").await;
    assert!(e.is_lock());
    assert_eq!(e.message(), Some("CT is locked (disk)"));
    let (e, _) = exchange("real-http-500-ha-no-such-resource-telmate711.json").await;
    assert!(e.is_not_found());
}

#[tokio::test]
async fn unauthorized_is_not_retried_even_while_waiting() {
    let server = common::start(|_| Reply::Status {
        status: 401,
        reason: "Authentication failed!".into(),
        body: Vec::new(),
    })
    .await;
    let c = pinned(&server);
    let upid: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:drover@pve!agent:"
        .parse()
        .unwrap();
    let e = c
        .wait_task(
            &upid,
            &WaitOptions::fast(Duration::from_millis(5), Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(e.is_unauthorized(), "{e}");
    assert_eq!(server.request_count(), 1);
    assert!(!format!("{e:?}").contains(TEST_SECRET));
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_decode_errors() {
    for body in [
        "{\"data\":",
        "<html>502 bad gateway</html>",
        "",
        "{\"data\":{\"vmid\":\"abc\",\"status\":\"running\"}}",
        "{\"data\":{\"vmid\":101,\"status\":[1,2]}}",
        "{\"nodata\":1}",
        "{\"data\":null}",
        "[1,2,3]",
        "{\"data\":{\"vmid\":101,\"status\":\"running\",\"maxmem\":-5}}",
    ] {
        let b = body.to_owned();
        let server = common::start(move |_| Reply::json(&b)).await;
        let e = pinned(&server).lxc_status("pve1", 101).await.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Decode { .. }), "{body}: {e}");
        assert_eq!(e.code(), "pve_bad_response");
    }
    // A UPID that is not one.
    let server = common::start(|_| Reply::json("{\"data\":\"UPID:garbage\"}")).await;
    let e = pinned(&server).start_lxc("pve1", 101).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Decode { .. }), "{e}");
    // Property strings PVE would never print.
    let server =
        common::start(|_| Reply::json("{\"data\":{\"net0\":\"bridge=vmbr0\",\"digest\":\"x\"}}"))
            .await;
    let e = pinned(&server)
        .lxc_config("pve1", 101, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("net0"), "{e}");
}

#[tokio::test]
async fn a_1_gib_body_is_refused_without_buffering_it() {
    for declare_length in [true, false] {
        let server = common::start(move |_| Reply::Huge {
            len: 1 << 30,
            declare_length,
        })
        .await;
        let mut cfg = config(&server.url, TlsTrust::Fingerprint(server.fingerprint));
        cfg.request_timeout = Duration::from_secs(20);
        let c = Client::new(cfg).unwrap();
        let t = Instant::now();
        let e = c.list_lxc("pve1").await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BodyTooLarge { limit } if *limit == 16 * 1024 * 1024),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

#[tokio::test]
async fn a_stalling_server_gives_a_timeout_within_the_limit() {
    for stall in [0, 1] {
        let server = common::start(move |_| {
            if stall == 0 {
                Reply::Stall
            } else {
                Reply::HeadersThenStall
            }
        })
        .await;
        let mut cfg = config(&server.url, TlsTrust::Fingerprint(server.fingerprint));
        cfg.request_timeout = Duration::from_millis(800);
        let c = Client::new(cfg).unwrap();
        let t = Instant::now();
        let e = c.start_lxc("pve1", 101).await.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Timeout { .. }), "{e}");
        assert!(e.is_transient() && e.may_have_been_processed());
        // A hang guard: the timeout is 800 ms.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

#[tokio::test]
async fn closed_connection_and_refused_connection() {
    let server = common::start(|_| Reply::Close).await;
    let e = pinned(&server).start_lxc("pve1", 101).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Transport { .. }), "{e}");
    assert!(e.may_have_been_processed() && e.is_transient());

    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(config(
        &format!("https://127.0.0.1:{port}"),
        TlsTrust::Fingerprint(server.fingerprint),
    ))
    .unwrap();
    let e = c.start_lxc("pve1", 101).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Connect { .. }), "{e}");
    assert!(e.is_transient() && !e.may_have_been_processed());
}

#[tokio::test]
async fn wrong_pin_is_refused_before_anything_is_sent() {
    let server = common::start(route).await;
    let other = common::self_signed();
    let wrong = Fingerprint::of_der(other.0.as_ref());
    let c = Client::new(config(&server.url, TlsTrust::Fingerprint(wrong))).unwrap();
    let e = c.start_lxc("pve1", 101).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    assert_eq!(e.code(), "pve_tls_untrusted");
    assert!(!e.may_have_been_processed() && !e.is_transient());
    assert_eq!(server.request_count(), 0);
    // Lower-case pin without colons is the same pin.
    let lenient: Fingerprint = server
        .fingerprint
        .to_string()
        .replace(':', "")
        .to_lowercase()
        .parse()
        .unwrap();
    let c = Client::new(config(&server.url, TlsTrust::Fingerprint(lenient))).unwrap();
    c.list_lxc("pve1").await.unwrap();
}

#[tokio::test]
async fn node_certificate_file_is_reread_after_renewal() {
    let server = common::start(route).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = dir.path().join("pveproxy-ssl.pem");
    let fallback = dir.path().join("pve-ssl.pem");
    // The file on disk still holds the old certificate.
    let old = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&fallback, old.cert.pem()).unwrap();
    let c = Client::new(config(
        &server.url,
        TlsTrust::NodeCertificate {
            paths: vec![proxy.clone(), fallback.clone()],
            reload_interval: Duration::from_millis(300),
        },
    ))
    .unwrap();
    let e = c.list_lxc("pve1").await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    // Renewal writes the new certificate; once the re-read interval has passed the client
    // picks it up (the rate limit itself is unit-tested in `tls.rs`).
    std::fs::write(&fallback, &server.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    c.list_lxc("pve1").await.unwrap();
    // pveproxy-ssl.pem takes precedence once it exists.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&proxy, other.cert.pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Pooled connection: the handshake is not redone, so force a new client view.
    let c2 = Client::new(config(
        &server.url,
        TlsTrust::NodeCertificate {
            paths: vec![proxy, fallback],
            reload_interval: Duration::from_millis(300),
        },
    ))
    .unwrap();
    assert!(c2.list_lxc("pve1").await.is_err());
    // Missing files are a setup error, not a runtime surprise.
    let e = Client::new(config(
        &server.url,
        TlsTrust::NodeCertificate {
            paths: vec![dir.path().join("nope.pem")],
            reload_interval: Duration::from_secs(60),
        },
    ))
    .unwrap_err();
    assert_eq!(e.code(), "pve_client_config");
}

#[tokio::test]
async fn ca_file_mode_verifies_chain_and_name() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Proxmox Virtual Environment");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = common::start_with(
        vec![leaf.der().clone(), ca_cert.der().clone()],
        key,
        leaf.pem(),
        Arc::new(route),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    for host in ["localhost", "127.0.0.1"] {
        let c = Client::new(config(
            &format!("https://{host}:{port}"),
            TlsTrust::CaFile(ca_file.clone()),
        ))
        .unwrap();
        c.list_lxc("pve1").await.unwrap();
    }
    // Another CA is refused.
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other.cert.pem()).unwrap();
    let c = Client::new(config(&server.url, TlsTrust::CaFile(other_file))).unwrap();
    let e = c.list_lxc("pve1").await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tls { .. }), "{e}");
    assert_eq!(server.request_count(), 2);
    // An empty CA file is a setup error.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(Client::new(config(&server.url, TlsTrust::CaFile(empty))).is_err());
}

#[tokio::test]
async fn wait_task_outcomes_log_tail_and_deadline() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let server = common::start(move |req| {
        let path = req.target.split('?').next().unwrap_or("").to_owned();
        if path.ends_with("/log") {
            let start: usize = req
                .target
                .split("start=")
                .nth(1)
                .and_then(|s| s.split('&').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let lines: Vec<Value> = (start..(start + 20).min(100))
                .map(|i| serde_json::json!({"n": i + 1, "t": format!("line {}", i + 1)}))
                .collect();
            return Reply::json(&serde_json::json!({"data": lines, "total": 100}).to_string());
        }
        if path.contains(":vzstart:") {
            // running twice, then failed
            let n = p.fetch_add(1, Ordering::SeqCst);
            let mut st = fixture("task-status-running.json");
            if n >= 2 {
                st = fixture("task-status-stopped-error.json");
            }
            return Reply::json(&st.to_string());
        }
        if path.contains(":vzcreate:") {
            // never visible: "no such task"
            return Reply::Status {
                status: 400,
                reason: "Parameter verification failed.".into(),
                body: br#"{"data":null,"errors":{"upid":"no such task"}}"#.to_vec(),
            };
        }
        if path.contains(":vzshutdown:") {
            // a pveproxy hiccup, then OK
            if p.fetch_add(1, Ordering::SeqCst) == 0 {
                return Reply::Status {
                    status: 596,
                    reason: "Connection timed out".into(),
                    body: Vec::new(),
                };
            }
            return fixture_reply("task-status-stopped-ok.json");
        }
        fixture_reply("task-status-running.json")
    })
    .await;
    let c = pinned(&server);
    let fast = WaitOptions::fast(Duration::from_millis(10), Duration::from_secs(3));
    let upid: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:reconcile@pve!agent:"
        .parse()
        .unwrap();
    match c.wait_task(&upid, &fast).await.unwrap() {
        TaskOutcome::Failed { message, log_tail } => {
            assert_eq!(message, "startup for container '101' failed");
            assert_eq!(log_tail.len(), 20);
            assert_eq!(log_tail.last().unwrap(), "line 100");
            assert_eq!(log_tail[0], "line 81");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(polls.load(Ordering::SeqCst), 3);

    polls.store(0, Ordering::SeqCst);
    let upid: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzshutdown:101:reconcile@pve!agent:"
        .parse()
        .unwrap();
    assert_eq!(c.wait_task(&upid, &fast).await.unwrap(), TaskOutcome::Ok);

    // Running forever: the deadline is its own error and the task is left alone.
    let upid: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstop:101:reconcile@pve!agent:"
        .parse()
        .unwrap();
    let t = Instant::now();
    let e = c
        .wait_task(
            &upid,
            &WaitOptions::fast(Duration::from_millis(50), Duration::from_millis(400)),
        )
        .await
        .unwrap_err();
    assert!(e.is_wait_deadline(), "{e}");
    assert_eq!(e.code(), "pve_task_wait_deadline");
    // At the deadline, and (a hang guard) not long after it.
    assert!(t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(10));
    assert!(
        !server
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.method == "DELETE")
    );

    // Unknown task: tolerated for the grace period, then reported as not found.
    let upid: Upid = "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzcreate:104:reconcile@pve!agent:"
        .parse()
        .unwrap();
    let mut opts = WaitOptions::fast(Duration::from_millis(20), Duration::from_secs(5));
    opts.not_found_grace = Duration::from_millis(100);
    let e = c.wait_task(&upid, &opts).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn plain_http_and_bad_urls_are_refused_at_setup() {
    let fp: Fingerprint = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99"
        .parse()
        .unwrap();
    for url in ["http://localhost:8006", "localhost:8006", "not a url"] {
        let e = Client::new(config(url, TlsTrust::Fingerprint(fp))).unwrap_err();
        assert_eq!(e.code(), "pve_client_config", "{url}: {e}");
    }
    let c = Client::new(config(
        "https://localhost:8006/api2/json/",
        TlsTrust::Fingerprint(fp),
    ))
    .unwrap();
    assert_eq!(c.token_id(), "drover@pve!agent");
}

/// vzdump answers a UPID or the plain "OK"; anything else is a decode error naming both,
/// never a panic or a made-up task.
#[tokio::test]
async fn vzdump_answers_other_than_a_upid_or_ok_are_decode_errors() {
    let server = common::start(|r| {
        if r.target.starts_with("/api2/json/nodes/pve1/vzdump") {
            Reply::json(r#"{"data":"queued"}"#)
        } else {
            Reply::json(
                r#"{"data":[{"storage":"local","type":"dir","content":"backup","avail":"5"}]}"#,
            )
        }
    })
    .await;
    let c = pinned(&server);
    let e = c
        .vzdump("pve1", &VzdumpRequest::new(101, "local"))
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Decode { .. }), "{e}");
    assert!(e.to_string().contains("neither a UPID nor \"OK\""), "{e}");
    let s = c.list_storages("pve1", Some("backup")).await.unwrap();
    assert_eq!(s[0].avail, Some(5));
}
