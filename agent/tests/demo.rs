//! The README's first command, `drover demo`, end to end: the embedded default runs every
//! section against its own simulator and exits 0 (it runs several passes in one process, so a
//! journal still held by an earlier pass fails it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_runs_every_section_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("demo")
        .env("NO_COLOR", "1")
        .env_remove("DROVER_CONFIG")
        .output()
        .expect("running drover demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "drover demo exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    for section in [
        "== 1. A simulated Proxmox VE host",
        "== 5. drover run --once",
        "== 6. drover copies",
        "== 8. drover journal",
        "== Summary",
    ] {
        assert!(stdout.contains(section), "{section:?} missing:\n{stdout}");
    }
    assert!(
        stdout.contains("destroys of CT 105: 1"),
        "the approved destroy did not run exactly once:\n{stdout}"
    );
}
