//! A test CA and a leaf for 127.0.0.1, made with the `openssl` command line tool (test tooling
//! only; the agent itself links no OpenSSL).

use std::path::{Path, PathBuf};
use std::process::Command;

/// PEM files in a directory.
pub struct TestCerts {
    pub ca_pem: PathBuf,
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

impl TestCerts {
    pub fn generate(dir: &Path) -> TestCerts {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=drover test ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
        ]);
        TestCerts {
            ca_pem: dir.join("ca.pem"),
            leaf_pem: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        }
    }

    /// A client certificate with `CN=<cn>` (clientAuth) issued by the test CA, written as
    /// `<dir>/<cn>-client.pem` and `.key`.
    pub fn client(&self, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ext = dir.join(format!("{cn}-client.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let (pem, key, csr) = (
            dir.join(format!("{cn}-client.pem")),
            dir.join(format!("{cn}-client.key")),
            dir.join(format!("{cn}-client.csr")),
        );
        let s = |p: &Path| p.to_str().unwrap().to_string();
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            &format!("/O=drover test/CN={cn}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&self.ca_pem),
            "-CAkey",
            &s(&self.ca_pem.with_file_name("ca.key")),
            "-CAcreateserial",
            "-out",
            &s(&pem),
            "-days",
            "30",
            "-extfile",
            &s(&ext),
        ]);
        (pem, key)
    }

    /// The leaf's SHA-256 as `AA:BB:...`.
    pub fn leaf_fingerprint(&self) -> String {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::pem_file_iter(&self.leaf_pem)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        proxmox_client::Fingerprint::of_der(der.as_ref()).to_string()
    }
}
