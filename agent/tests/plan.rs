//! Seeing what will happen: `drover plan` previews the document on disk while the agent runs
//! (and says which revision the agent has), colours like `terraform plan` on a real terminal
//! only, and `drover status [VMID]` shows names, one guest, and suspended guests as such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Host, code, eventually, guest, stdout};

/// A host whose agent passes once an hour: whatever changes after its first pass, it has not
/// seen yet.
async fn quiet_host() -> (Host, common::Daemon) {
    // The agent creates both guests itself (seeded ones would wait for adoption first).
    let h = Host::start(vec![]).await;
    let config = std::fs::read_to_string(h.config()).unwrap();
    std::fs::write(
        h.config(),
        config.replace("interval = \"1s\"", "interval = \"1h\""),
    )
    .unwrap();
    h.desired(&format!(
        "revision = 1\n{}{}",
        guest(130, "running", 256),
        guest(131, "running", 256)
    ));
    let d = h.spawn_daemon();
    eventually(&d, Duration::from_secs(30), "status converged", || {
        code(&h.drover(&["status"])) == 0
    })
    .await;
    (h, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_previews_the_edited_document_while_the_agent_runs() {
    let (h, d) = quiet_host().await;
    // The same document: no changes, and it says the agent has it too.
    let p = h.drover_async(&["plan"]).await;
    assert_eq!(code(&p), 0, "{}", stdout(&p));
    assert!(
        stdout(&p).contains("the running agent has the same revision (1)"),
        "{}",
        stdout(&p)
    );

    // The operator edits desired.toml; the agent has not looked yet.
    h.desired(&format!(
        "revision = 2\n{}{}",
        guest(130, "running", 512),
        guest(131, "running", 256)
    ));
    let p = h.drover_async(&["plan"]).await;
    let text = stdout(&p);
    assert_eq!(code(&p), 2, "the edit is a change: {text}");
    assert!(text.contains("Comparing desired revision 2"), "{text}");
    assert!(
        text.contains("the running agent has revision 1; it takes revision 2 on its next pass"),
        "{text}"
    );
    assert!(text.contains("CT 130 (ct-130): set_config"), "{text}");
    assert!(text.contains("memory: 256 → 512"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal: {text:?}"
    );

    let p = h.drover_async(&["plan", "--output", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(v["revision"], 2);
    assert_eq!(v["agent_revision"], 1);
    assert_eq!(v["agent_running"], true);
    assert_eq!(v["guests"][0]["name"], "ct-130");
    // Planning changed nothing: the agent still has revision 1 and the guest its memory.
    assert_eq!(h.sim.guest(130).unwrap().memory, 256);
    d.stop().await;

    // Without the agent it says so.
    let p = h.drover_async(&["plan"]).await;
    assert!(
        stdout(&p).contains("the agent is not running here"),
        "{}",
        stdout(&p)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_one_guest_with_names_and_suspension_shown() {
    let (h, d) = quiet_host().await;
    let all = stdout(&h.drover(&["status"]));
    let header = all.lines().next().unwrap();
    assert!(header.starts_with("VMID  NAME    STATE"), "{all}");
    // Columns line up: every row's STATE starts where the header's does.
    let state_col = header.find("STATE").unwrap();
    for row in all.lines().skip(1).take(2) {
        assert_eq!(
            row.get(state_col..state_col + 9),
            Some("converged"),
            "{all}"
        );
    }
    let one = h.drover(&["status", "131"]);
    assert_eq!(code(&one), 0);
    let text = stdout(&one);
    assert!(text.contains("131   ct-131  converged"), "{text}");
    assert!(!text.contains("ct-130"), "{text}");
    let missing = h.drover(&["status", "999"]);
    assert_eq!(code(&missing), 1);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unknown_guest"));

    // Suspended shows as suspended at once and after the next pass (was: converged).
    let s = h.drover(&["suspend", "131", "--reason", "restoring by hand"]);
    assert_eq!(code(&s), 0);
    let one = h.drover(&["status", "131"]);
    assert!(stdout(&one).contains("suspended"), "{}", stdout(&one));
    assert_eq!(code(&one), 2, "a suspended guest is not converged");
    assert_eq!(code(&h.drover(&["reconcile"])), 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let one = h.drover(&["status", "131", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(v["guests"][0]["state"], "suspended", "{v}");
    assert_eq!(v["guests"][0]["name"], "ct-131", "{v}");
    assert_eq!(v["guests"].as_array().unwrap().len(), 1);

    assert_eq!(code(&h.drover(&["resume", "131"])), 0);
    eventually(
        &d,
        Duration::from_secs(10),
        "converged after resume",
        || code(&h.drover(&["status", "131"])) == 0,
    )
    .await;
}

/// On a real terminal (`script`), the plan is coloured and has a legend; `NO_COLOR` turns the
/// colour off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_colours_on_a_terminal_unless_no_color() {
    if common::skip_without("script", "--version") {
        return;
    }
    // Three guests the agent created, then one to destroy (below the mass-destroy fuse) and
    // one to create.
    let h = Host::start(vec![]).await;
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(140, "running", 256),
        guest(142, "running", 256),
        guest(143, "running", 256)
    ));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    h.desired(&format!(
        "revision = 2\n{}{}{}[[guest]]\nvmid = 140\nensure = \"absent\"\n",
        guest(141, "running", 256),
        guest(142, "running", 256),
        guest(143, "running", 256)
    ));
    let run = |no_color: bool| {
        let cmd = format!(
            "{} --config {} plan",
            env!("CARGO_BIN_EXE_drover"),
            h.config().display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("DROVER_LOG", "error")
            .env("TERM", "xterm");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        c
    };
    let mut coloured = run(false);
    let mut plain = run(true);
    let (coloured, plain) =
        tokio::task::spawn_blocking(move || (coloured.output().unwrap(), plain.output().unwrap()))
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&coloured.stdout);
    assert_eq!(coloured.status.code(), Some(2), "{text}");
    assert!(
        text.contains("\x1b[32m+\x1b[0m CT 141 (ct-141)"),
        "create in green: {text:?}"
    );
    assert!(
        text.contains("\x1b[31m-\x1b[0m CT 140 (ct-140)"),
        "destroy in red: {text:?}"
    );
    assert!(text.contains("Steps are marked:"), "a legend: {text:?}");
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(!text.contains('\x1b'), "NO_COLOR: {text:?}");
    assert!(text.contains("+ CT 141 (ct-141)"), "{text:?}");
}

/// `drover plan` shows the whole approval path under a destructive step, and following it
/// literally works: the request file (written by the agent's next run), the printed
/// `ssh-keygen` command run as shown in the request's directory, then the printed
/// `drover approve`; the next run destroys the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_whole_approval_path_and_following_it_works() {
    if common::skip_without("ssh-keygen", "-?") {
        return;
    }
    let h = Host::start(vec![]).await;
    h.desired(&format!(
        "revision = 1\n{}{}{}",
        guest(150, "running", 256),
        guest(151, "running", 256),
        guest(152, "running", 256)
    ));
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    h.desired(&format!(
        "revision = 2\n{}{}[[guest]]\nvmid = 150\nensure = \"absent\"\n",
        guest(151, "running", 256),
        guest(152, "running", 256)
    ));
    let request = h.state().join("approvals/pending/150-destroy_guest.txt");
    let rows = |text: &str| -> Vec<(String, String)> {
        let block = text
            .split("approval:")
            .nth(1)
            .unwrap_or_else(|| panic!("no approval block: {text}"));
        block
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("        "))
            .map(|l| {
                let (k, v) = l.trim_start().split_once("  ").unwrap();
                (k.to_string(), v.trim_start().to_string())
            })
            .collect()
    };
    let p = h.drover_async(&["plan"]).await;
    let text = stdout(&p);
    assert_eq!(code(&p), 2, "{text}");
    let r = rows(&text);
    let keys: Vec<&str> = r.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["request", "sign", "check", "submit", "or put"],
        "{text}"
    );
    assert!(
        r[0].1
            .starts_with(&format!("{} (not written yet", request.display())),
        "{text}"
    );
    // Aligned: every value starts in the same column.
    let column = |l: &str| {
        l.len()
            - l.trim_start()
                .split_once("  ")
                .unwrap()
                .1
                .trim_start()
                .len()
    };
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("approval:"))
        .skip(1)
        .take(5)
        .collect();
    assert!(
        lines.windows(2).all(|w| column(w[0]) == column(w[1])),
        "{lines:#?}"
    );
    assert!(r[4].1.contains("desired/approvals/"), "{text}");

    // The agent's run writes the request; the plan says it is pending now.
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 2);
    assert!(request.is_file());
    let text = stdout(&h.drover_async(&["plan"]).await);
    let r = rows(&text);
    assert!(r[0].1.contains("(pending now"), "{text}");

    // Follow it: the operator's key stands in for ~/.ssh/YOUR_OPERATOR_KEY.
    let key = h.root().join("operator_key");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/demo/TEST_demo_operator_ed25519"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sign = r[1]
        .1
        .split("   (writes")
        .next()
        .unwrap()
        .replace("~/.ssh/YOUR_OPERATOR_KEY", key.to_str().unwrap());
    assert!(
        sign.contains(&format!("-n destructive-op-v1@{}", common::DOMAIN)),
        "{sign}"
    );
    let work = h.root().join("operator");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(&request, work.join("150-destroy_guest.txt")).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&sign)
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sign}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approve: Vec<String> = r[3].1.split_whitespace().map(String::from).collect();
    assert_eq!(approve[..2], ["drover", "approve"], "{approve:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--config")
        .arg(h.config())
        .args(&approve[1..])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(code(&h.drover_async(&["run", "--once"]).await), 0);
    assert!(h.sim.guest(150).is_none(), "destroyed with the approval");
}
