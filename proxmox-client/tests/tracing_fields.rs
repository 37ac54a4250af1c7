//! The client's tracing carries the method, path, vmid and UPID of every call, and never the
//! token secret.
//!
//! This test has a binary of its own on purpose. It installs a thread-local subscriber
//! (`set_default`), and tracing caches each callsite's interest globally: when another test's
//! thread registers the client's `pve_call` span at the moment this subscriber is being
//! registered, the callsite can stay cached as "never" and the span is missing from the output
//! (2 of 60 runs failed that way inside `hostile.rs`, 0 of 100 alone). Alone in its binary,
//! with a current-thread runtime, no other thread touches the callsites.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Reply, Req, TEST_SECRET};
use proxmox_client::*;

fn token() -> ApiToken {
    ApiToken::new("drover@pve!agent", TEST_SECRET).unwrap()
}

fn fixture_reply(name: &str) -> Reply {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pve-fixtures")
        .join(name);
    Reply::json(&std::fs::read_to_string(p).unwrap())
}

fn route(req: &Req) -> Reply {
    let path = req.target.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("POST", "/api2/json/nodes/pve1/lxc/101/status/start") => {
            fixture_reply("upid-response-vzstart.json")
        }
        ("GET", p) if p.ends_with("/status") && p.contains("/tasks/") => {
            fixture_reply("task-status-stopped-warnings.json")
        }
        _ => Reply::Status {
            status: 501,
            reason: format!("Method '{} {}' not implemented", req.method, path),
            body: b"{\"data\":null}".to_vec(),
        },
    }
}

/// Collects formatted tracing output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tracing_carries_method_path_vmid_upid_but_never_the_secret() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = common::start(route).await;
    let mut config = ClientConfig::new(
        &server.url,
        token(),
        TlsTrust::Fingerprint(server.fingerprint),
    );
    config.request_timeout = Duration::from_secs(3);
    let c = Client::new(config).unwrap();
    let upid = c.start_lxc("pve1", 101).await.unwrap();
    c.task_status(&upid).await.unwrap();
    let _ = c
        .shutdown_lxc("pve1", 101, &ShutdownOptions::default())
        .await;
    tracing::debug!(client = ?c, token = ?token(), "debug views");

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("method=POST"), "{text}");
    assert!(
        text.contains("path=/nodes/pve1/lxc/101/status/start"),
        "{text}"
    );
    assert!(text.contains("vmid=101"), "{text}");
    assert!(text.contains(&format!("upid={upid}")), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains(TEST_SECRET), "secret leaked: {text}");
}
