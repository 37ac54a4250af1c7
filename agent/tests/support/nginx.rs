//! A real nginx (Debian's package) serving `root` over TLS on 127.0.0.1, started and killed by
//! the test. nginx cannot listen on port 0, so a free port is found by binding 127.0.0.1:0
//! first; a lost race is retried with a new port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::TestCerts;

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
    pub dir: PathBuf,
}

/// The nginx binary, or None when it is not installed (`.ci/nginx-setup` installs it).
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Nginx {
    /// Starts nginx serving `root` (a directory) with the leaf certificate in `certs`.
    /// `dir` holds the config, logs and temp paths.
    pub fn start(bin: &Path, dir: &Path, root: &Path, certs: &TestCerts) -> Nginx {
        Nginx::start_with(bin, dir, root, certs, "", "")
    }

    /// As [`Nginx::start`], with extra directives for the `http` block (maps) and the
    /// `server` block (locations): see [`report_dav_config`].
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        root: &Path,
        certs: &TestCerts,
        http_extra: &str,
        server_extra: &str,
    ) -> Nginx {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.join("nginx.conf");
            let user = if is_root() { "user root root;\n" } else { "" };
            std::fs::create_dir_all(dir.join("tmp")).unwrap();
            std::fs::write(
                &conf,
                format!(
                    "{user}daemon off;\nmaster_process off;\nworker_processes 1;\n\
                     pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{\n  access_log off;\n  types {{ text/plain toml txt sig; application/json json; }}\n\
                     default_type application/octet-stream;\n\
                     client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
                     fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
                     keepalive_requests 100000;\n{http_extra}\n\
                     server {{\n    listen 127.0.0.1:{port} ssl;\n\
                     ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                     root {root};\n    etag on;\n{server_extra}\n  }}\n}}\n",
                    d = dir.display(),
                    cert = certs.leaf_pem.display(),
                    key = certs.leaf_key.display(),
                    root = root.display(),
                ),
            )
            .unwrap();
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        root: root.to_path_buf(),
                        dir: dir.to_path_buf(),
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    last_err = format!("nginx exited {status}: {err} {log}");
                    break;
                }
                assert!(Instant::now() < deadline, "nginx did not start listening");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx would not start: {last_err}");
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The WebDAV location that receives the agents' reports, as deploy/HUB.md documents it:
/// only `PUT`, only `<prefix>/hosts/<host>/report.json`, and only with that host's bearer
/// token (`tokens`: host and token) or, with `client_ca`, a client certificate issued by that
/// CA whose CN is the host. Returns the `http` and `server` parts.
pub fn report_dav_config(
    prefix: &str,
    tokens: &[(&str, &str)],
    client_ca: Option<&Path>,
) -> (String, String) {
    let mut http = String::from(
        "map \"$drover_report_host:$http_authorization\" $drover_report_token_ok {\n    default 0;\n",
    );
    for (host, token) in tokens {
        http.push_str(&format!("    \"{host}:Bearer {token}\" 1;\n"));
    }
    http.push_str(
        "}\n\
         map \"$ssl_client_verify:$ssl_client_s_dn\" $drover_cert_host {\n    default \"\";\n    \"~^SUCCESS:(.*,)?CN=(?<drover_cn>[^,]+)(,|$)\" $drover_cn;\n}\n\
         map \"$drover_report_host:$drover_cert_host\" $drover_report_cert_ok {\n    default 0;\n    \"~^([^:]+):\\1$\" 1;\n}\n\
         map \"$drover_report_token_ok$drover_report_cert_ok\" $drover_report_allowed {\n    default 0;\n    \"~1\" 1;\n}\n",
    );
    let mut server = String::new();
    if let Some(ca) = client_ca {
        server.push_str(&format!(
            "ssl_client_certificate {};\nssl_verify_client optional;\n",
            ca.display()
        ));
    }
    server.push_str(&format!(
        "location ~ ^{prefix}/hosts/(?<drover_report_host>[A-Za-z0-9_][A-Za-z0-9._-]*)/report\\.json$ {{\n\
         limit_except PUT {{ deny all; }}\n\
         if ($drover_report_allowed != 1) {{ return 401; }}\n\
         dav_methods PUT;\n\
         create_full_put_path off;\n\
         dav_access user:rw group:r;\n\
         client_max_body_size 4m;\n\
         }}\n"
    ));
    (http, server)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // master_process off: a single process, so SIGKILL leaves nothing behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
