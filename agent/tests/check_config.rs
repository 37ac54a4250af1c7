//! `drover check-config` checks what the start needs (issue 13 point 7): the token secret's
//! content and size (and its mode), the token id, and (without `--offline`) PVE itself: the
//! pin, the token and the privileges the agent uses, each failure with its code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Host, code};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn set_config_line(h: &Host, prefix: &str, line: &str) {
    let cfg = std::fs::read_to_string(h.config()).unwrap();
    let cfg: Vec<String> = cfg
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(h.config(), cfg.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_run_would_refuse_fails_check_config() {
    let h = Host::start(vec![]).await;
    h.desired("revision = 1\n");
    let token = h.root().join("pve-token");
    let ok = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));

    let secret = pve_sim::DEFAULT_TOKEN_SECRET;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"".to_vec(), "token_secret_invalid"),
        ("blank", b"  \n".to_vec(), "token_secret_invalid"),
        ("binary", vec![0, 0xff, 0xfe, 7], "token_secret_invalid"),
        (
            "crlf inside",
            format!("{}\r\n{}", &secret[..8], &secret[8..]).into_bytes(),
            "token_secret_invalid",
        ),
        ("too large", vec![b'a'; 10_000], "token_secret_too_large"),
    ];
    for (what, bytes, want) in cases {
        std::fs::write(&token, &bytes).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = h.drover_async(&["check-config", "--offline"]).await;
        assert_eq!(code(&out), 1, "{what}");
        assert!(stderr(&out).contains(want), "{what}: {}", stderr(&out));
    }
    // A directory and /dev/zero where the secret belongs.
    std::fs::remove_file(&token).unwrap();
    std::fs::create_dir(&token).unwrap();
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("token_secret_not_a_file"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&token).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &token).unwrap();
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("token_secret_not_a_file"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&token).unwrap();

    // World-readable: a warning, not a failure.
    std::fs::write(&token, secret).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 0);
    assert!(
        stderr(&out).contains("token_secret_readable"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A token id with CRLF.
    set_config_line(
        &h,
        "token_id = ",
        &format!("token_id = \"{}\\r\\n\"", pve_sim::DEFAULT_TOKEN_ID),
    );
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("token_id_invalid"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_asks_pve_for_the_pin_the_token_and_the_privileges() {
    let h = Host::start_with(pve_sim::SimConfig {
        token_privileges: Some(vec!["VM.Audit".into(), "VM.PowerMgmt".into()]),
        ..pve_sim::SimConfig::default()
    })
    .await;
    h.desired("revision = 1\n");
    // Offline, nothing is asked.
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("pve_privileges_missing"), "{err}");
    assert!(err.contains("VM.Allocate"), "{err}");

    let token = h.root().join("pve-token");
    std::fs::write(&token, "00000000-0000-0000-0000-000000000000").unwrap();
    let out = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("pve_unauthorized"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&token, pve_sim::DEFAULT_TOKEN_SECRET).unwrap();

    set_config_line(
        &h,
        "fingerprint = ",
        &format!("fingerprint = \"{}\"", ["AB"; 32].join(":")),
    );
    let out = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("pve_tls_untrusted"),
        "{}",
        stderr(&out)
    );
    // --offline checks the pin's form only: a start must not wait on PVE.
    let out = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_every_privilege_passes() {
    let h = Host::start(vec![]).await;
    h.desired("revision = 1\n");
    let out = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        common::stdout(&out).contains("privileges"),
        "{}",
        common::stdout(&out)
    );
}

/// `[safety]`: without a storage check-config says destructive steps will be refused; with a
/// storage that holds no backups (online) it says so too. Neither stops a start: benign work
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_warns_about_an_unset_or_unusable_safety_storage() {
    let h = Host::start(vec![]).await;
    h.desired("revision = 1\n");
    let ok = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert!(!stderr(&ok).contains("safety_storage"), "{}", stderr(&ok));
    h.write_config("\n[safety]\nkeep_per_guest = 3\n");
    let unset = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&unset), 0, "{}", stderr(&unset));
    assert!(
        stderr(&unset).contains("[safety_storage_unset]"),
        "{}",
        stderr(&unset)
    );
    h.write_config("\n[safety]\nstorage = \"local-lvm\"\n");
    let disks = h.drover_async(&["check-config"]).await;
    assert_eq!(code(&disks), 0, "{}", stderr(&disks));
    assert!(
        stderr(&disks).contains("[safety_storage_unusable]"),
        "{}",
        stderr(&disks)
    );
    h.write_config("\n[safety]\nstorage = \"Local\"\n");
    let bad = h.drover_async(&["check-config", "--offline"]).await;
    assert_eq!(code(&bad), 1);
    assert!(stderr(&bad).contains("safety.storage"), "{}", stderr(&bad));
}
