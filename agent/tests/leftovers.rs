//! A state directory left by another setup (a test run, a copied /var/lib/drover): its journal
//! holds another fleet's trust document and a higher desired revision. `check-config` must say
//! so, not "valid", since the agent would refuse every approval (`wrong_fleet`) and the
//! document (`desired_rollback`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Host, code, guest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_notices_a_journal_from_another_fleet_and_revision() {
    let h = Host::start(vec![]).await;
    h.desired(&format!("revision = 5\n{}", guest(801, "running", 256)));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    let clean = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&clean), 0);
    let err = String::from_utf8_lossy(&clean.stderr);
    assert!(
        !err.contains("[wrong_fleet]") && !err.contains("[desired_rollback]"),
        "{err}"
    );

    // The real setup: another fleet, its own trust document v1, its own desired state.
    let config = std::fs::read_to_string(h.config()).unwrap();
    std::fs::write(
        h.config(),
        config.replace("fleet = \"demo\"", "fleet = \"prod\""),
    )
    .unwrap();
    let trust = std::fs::read_to_string(h.root().join("trust")).unwrap();
    assert!(trust.contains("fleet: demo\n"));
    std::fs::write(
        h.root().join("trust"),
        trust.replace("fleet: demo\n", "fleet: prod\n"),
    )
    .unwrap();
    h.desired(&format!("revision = 1\n{}", guest(801, "running", 256)));
    let out = h.drover_async(&["check-config"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[wrong_fleet] the journal in") && err.contains("fleet \"demo\""),
        "{err}"
    );
    assert!(err.contains("drover journal move-aside"), "{err}");
    assert!(
        err.contains("[desired_rollback]") && err.contains("revision 5"),
        "{err}"
    );
}
