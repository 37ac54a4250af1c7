//! A directory source on every pass: an unchanged `desired.toml` is neither parsed nor
//! journaled again (the hub's `304` for a file); an edit is picked up at the next pass. Runs
//! the daemon's own `refresh_desired` against the simulator and a real sled journal.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Host, guest, seed};
use drover::desired::source::Source;
use drover::reconcile::lanes::BackoffPolicy;
use drover::reconcile::pve::WaitPolicy;
use drover::service::config::Config;
use drover::service::daemon;

fn fsyncs(engine: &drover::reconcile::engine::Engine) -> u64 {
    engine
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("drover_journal_fsync_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_document_is_not_parsed_or_journaled_again_and_an_edit_is_picked_up() {
    let h = Host::start((0..3).map(|i| seed(1000 + i, true, 256)).collect()).await;
    let doc: String = (0..3).map(|i| guest(1000 + i, "running", 256)).collect();
    h.desired(&format!("revision = 1\n{doc}"));
    let config = Config::load(&h.config()).unwrap();
    let store = drover::store::Store::open(&config.state_dir).unwrap();
    let pve = daemon::pve_from_config(&config, WaitPolicy::production()).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let engine = drover::reconcile::engine::Engine::new(
        drover::reconcile::engine::EngineSettings {
            host: "pve1".into(),
            fleet: "demo".into(),
            step_deadline: Duration::from_secs(60),
        },
        pve,
        store,
        drover::approval::requests::Approvals::new(&config.state_dir, None),
        drover::approval::trust::load_file(&config.trust.file),
        drover::reconcile::lanes::Lanes::new(3, BackoffPolicy::default()),
        rx,
    );
    let source = Source::from_config(&config).unwrap();
    let Source::Dir(dir) = &source else {
        panic!("a directory source")
    };

    daemon::refresh_desired(&engine, &source).await;
    assert_eq!(engine.desired().unwrap().doc.revision, 1);
    assert_eq!(engine.store().last_revision(), Some(1));
    assert_eq!(dir.parses(), 1);
    let synced = fsyncs(&engine);

    for _ in 0..5 {
        daemon::refresh_desired(&engine, &source).await;
    }
    assert_eq!(dir.parses(), 1, "an unchanged file is not parsed again");
    assert_eq!(fsyncs(&engine), synced, "nor written to the journal again");
    let d = engine.desired().unwrap();
    assert_eq!(d.doc.revision, 1);
    assert!(!d.degraded);
    assert!(engine.status().snapshot().source.error_code.is_none());

    // An edit is picked up by the next pass and journaled as the last-known-good copy.
    h.desired(&format!("revision = 2\n{doc}"));
    daemon::refresh_desired(&engine, &source).await;
    assert_eq!(dir.parses(), 2);
    assert_eq!(engine.desired().unwrap().doc.revision, 2);
    assert_eq!(engine.store().last_revision(), Some(2));

    // A broken file degrades (the last document stays in force, benign only); the same good
    // bytes again make the source healthy.
    h.desired("revision = x");
    daemon::refresh_desired(&engine, &source).await;
    assert!(engine.desired().unwrap().degraded);
    assert_eq!(
        engine.status().snapshot().source.error_code.as_deref(),
        Some("desired_invalid")
    );
    h.desired(&format!("revision = 2\n{doc}"));
    daemon::refresh_desired(&engine, &source).await;
    let d = engine.desired().unwrap();
    assert!(!d.degraded, "healthy again");
    assert_eq!(d.doc.revision, 2);
    assert!(engine.status().snapshot().source.error_code.is_none());
}
