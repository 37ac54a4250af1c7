//! A hub directory served by a real nginx over TLS: `<root>/drover/hosts/<host>/`, with a
//! scratch directory for keys and signatures made by the real `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::certs::TestCerts;
use super::nginx::{self, Nginx};

pub struct HubDir {
    _tmp: tempfile::TempDir,
    /// `None` once the test has taken the hub down.
    pub nginx: Option<Nginx>,
    pub certs: TestCerts,
    /// `<root>/drover/hosts/<host>`.
    pub host_dir: PathBuf,
    pub scratch: PathBuf,
}

impl HubDir {
    /// nginx serving the hub for `host`, or None (with a message) when nginx is missing.
    pub fn start(host: &str) -> Option<HubDir> {
        HubDir::start_with(host, &[])
    }

    /// As [`HubDir::start`], with the WebDAV report location for these hosts and tokens.
    pub fn start_with(host: &str, report_tokens: &[(&str, &str)]) -> Option<HubDir> {
        let Some(bin) = nginx::binary() else {
            // CI must never pass by skipping (see `common::skip_without`).
            assert!(
                std::env::var_os("DROVER_REQUIRE_TOOLS").is_none(),
                "nginx is not installed and DROVER_REQUIRE_TOOLS is set (run .ci/nginx-setup)"
            );
            println!("SKIPPED: nginx is not installed (run .ci/nginx-setup)");
            return None;
        };
        let tmp = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let certs = TestCerts::generate(tmp.path());
        let root = tmp.path().join("www");
        let host_dir = root.join("drover/hosts").join(host);
        std::fs::create_dir_all(host_dir.join("approvals")).unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let (http_extra, server_extra) = if report_tokens.is_empty() {
            (String::new(), String::new())
        } else {
            nginx::report_dav_config("/drover", report_tokens, Some(&certs.ca_pem))
        };
        let nginx = Nginx::start_with(
            &bin,
            &tmp.path().join("nginx"),
            &root,
            &certs,
            &http_extra,
            &server_extra,
        );
        Some(HubDir {
            _tmp: tmp,
            nginx: Some(nginx),
            certs,
            host_dir,
            scratch,
        })
    }

    /// The hub's tree on disk (`<root>/drover`, holding `hosts/`): what `drover fleet` works on.
    pub fn tree(&self) -> PathBuf {
        self.host_dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// `https://127.0.0.1:PORT/drover`: the `[source] url`.
    pub fn url(&self) -> String {
        self.nginx.as_ref().expect("the hub is up").url("/drover")
    }

    /// Writes `name` (relative to the host directory).
    pub fn put(&self, name: &str, content: &str) -> PathBuf {
        let p = self.host_dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Signs `file` with the TEST hub key in namespace `desired-state-v1@<domain>`, writing
    /// `file.sig` (replacing an old one).
    pub fn sign(&self, file: &Path, domain: &str) {
        let key = self.scratch.join("hub_key");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::copy(repo.join("testdata/gate/TEST_hub_ed25519"), &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        let _ = std::fs::remove_file(&sig);
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-Y",
                "sign",
                "-n",
                &format!("desired-state-v1@{domain}"),
                "-f",
            ])
            .arg(&key)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(sig.exists());
    }
}
