//! The agent's own configuration file (`/etc/drover/drover.toml`).
//!
//! Parsed strictly: an unknown key is far more likely a typo that would silently disable a
//! safety setting than a forward-compatible extension, so it is an error that names the file,
//! the line and the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::desired::hub::{HubConfig, HubError, HubSource, HubTls};
use crate::desired::source::{DirSource, Source};

/// Where the config comes from when neither `--config` nor `DROVER_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/drover.toml";

/// A configuration error: always names the file, and the line and key where it knows them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::local_file::LocalFileError,
    },
    #[error("config {path}, line {line}{key}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// PVE node name; also the host id that approvals bind to.
    pub host: String,
    /// Fleet name that approvals and the trust document bind to.
    pub fleet: String,
    pub state_dir: PathBuf,
    pub interval: Duration,
    pub proxmox: ProxmoxConfig,
    pub source: SourceConfig,
    pub trust: TrustConfig,
    /// The control socket's path.
    pub control_socket: PathBuf,
    /// Where Prometheus metrics are served, if anywhere (loopback only).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[safety]`: safety copies before destructive steps (no storage: they are refused).
    pub safety: crate::safety::SafetyPolicy,
    /// The file this config was read from (for messages).
    pub path: PathBuf,
    /// `[guests]` host paths and devices a document may name, and `[safety] detach_grace`.
    pub rules: crate::reconcile::vocabulary::HostRules,
}

#[derive(Debug, Clone)]
pub struct ProxmoxConfig {
    pub url: String,
    pub token_id: String,
    pub token_secret_file: PathBuf,
    /// Pinned SHA-256 fingerprint of the leaf certificate; `None` pins the node's own
    /// certificate file (`/etc/pve/local/pveproxy-ssl.pem`, else `pve-ssl.pem`).
    pub fingerprint: Option<String>,
    /// Alternatively, a CA file to verify the server against.
    pub ca_file: Option<PathBuf>,
    /// Overrides where the node's own certificate is read from (tests, unusual layouts).
    pub node_cert_file: Option<PathBuf>,
    /// PVE mutations in flight at once, all guests together.
    pub max_parallel: usize,
    /// A fixed poll interval for PVE tasks instead of the default schedule (1 s for the first
    /// 10 s, then 2.5 s). Useful against fast hosts and the simulator.
    pub task_poll_interval: Option<Duration>,
    /// The PVE pool guests the agent creates join (`pve-setup.sh --pool`: the token's rights
    /// are granted on `/pool/<pool>`, and PVE lets it create a guest only into that pool).
    pub pool: Option<String>,
}

/// Where the desired state comes from: exactly one of `path` or `url`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory holding `desired.toml` (and `approvals/`).
    Dir { path: PathBuf },
    /// An HTTPS hub (`{url}/hosts/{host}/desired.toml`, ...).
    Hub(HubSourceConfig),
}

#[derive(Debug, Clone)]
pub struct HubSourceConfig {
    pub url: String,
    /// Trust only this CA file for the hub (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// Or pin the hub's leaf certificate by SHA-256.
    pub fingerprint: Option<String>,
    /// A file holding a bearer token, re-read on every poll (rotation needs no restart).
    pub bearer_token_file: Option<PathBuf>,
    /// A client certificate (PEM chain) and its key, presented to the hub (read at start).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Per request.
    pub timeout: Duration,
    /// `PUT` the agent's report to `{url}/hosts/{host}/report.json` after each pass.
    pub report: bool,
}

#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// A `drover-trust v1` document.
    pub file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    fleet: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_interval")]
    interval: String,
    proxmox: RawProxmox,
    source: RawSource,
    trust: RawTrust,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    guests: RawGuests,
    #[serde(default)]
    safety: crate::safety::config::RawSafety,
}

/// `[guests]`: what this host lets a document expose of itself (the hub can never widen it).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGuests {
    #[serde(default)]
    host_paths: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxmox {
    #[serde(default = "default_url")]
    url: String,
    token_id: String,
    token_secret_file: PathBuf,
    fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
    node_cert_file: Option<PathBuf>,
    #[serde(default = "default_max_parallel")]
    max_parallel: usize,
    task_poll_interval: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Option<PathBuf>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
    fingerprint: Option<String>,
    bearer_token_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    timeout: Option<String>,
    report: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    file: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/drover")
}
fn default_interval() -> String {
    "30s".to_string()
}
fn default_url() -> String {
    "https://localhost:8006".to_string()
}
fn default_max_parallel() -> usize {
    3
}

/// Largest config file read: a real one is a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = crate::local_file::read_regular(path, MAX_CONFIG_BYTES).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read_err(crate::local_file::LocalFileError::Io {
                path: path.display().to_string(),
                message: "not UTF-8 text".into(),
            })
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` is only used in messages and to resolve nothing else.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if !is_node_name(&raw.host) {
            return Err(invalid(
                "host",
                format!(
                    "{:?} is not a PVE node name (letters, digits and '-', not at either end)",
                    raw.host
                ),
            ));
        }
        if !is_fleet_name(&raw.fleet) {
            return Err(invalid(
                "fleet",
                format!("{:?} must be 1-63 of [a-z0-9-]", raw.fleet),
            ));
        }
        let interval = humantime::parse_duration(&raw.interval)
            .map_err(|e| invalid("interval", format!("{:?}: {e}", raw.interval)))?;
        if interval < Duration::from_secs(1) {
            return Err(invalid("interval", "must be at least 1s".to_string()));
        }
        if !(1..=64).contains(&raw.proxmox.max_parallel) {
            return Err(invalid(
                "proxmox.max_parallel",
                format!("{} is outside 1..=64", raw.proxmox.max_parallel),
            ));
        }
        if !raw.proxmox.url.starts_with("https://") {
            return Err(invalid(
                "proxmox.url",
                format!("{:?} must be an https:// URL", raw.proxmox.url),
            ));
        }
        if !raw.proxmox.token_id.contains('!') || !raw.proxmox.token_id.contains('@') {
            return Err(invalid(
                "proxmox.token_id",
                format!(
                    "{:?} must look like USER@REALM!TOKENID",
                    raw.proxmox.token_id
                ),
            ));
        }
        let tls_choices = [
            raw.proxmox.fingerprint.is_some(),
            raw.proxmox.ca_file.is_some(),
            raw.proxmox.node_cert_file.is_some(),
        ];
        if tls_choices.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                "proxmox.fingerprint",
                "set at most one of fingerprint, ca_file and node_cert_file (each is a different way to trust the PVE certificate)".to_string(),
            ));
        }
        let task_poll_interval = match &raw.proxmox.task_poll_interval {
            None => None,
            Some(t) => {
                let d = humantime::parse_duration(t)
                    .map_err(|e| invalid("proxmox.task_poll_interval", format!("{t:?}: {e}")))?;
                if d < Duration::from_millis(10) || d > Duration::from_secs(4) {
                    return Err(invalid(
                        "proxmox.task_poll_interval",
                        "must be between 10ms and 4s (pveproxy closes idle connections after 5 s)"
                            .into(),
                    ));
                }
                Some(d)
            }
        };
        // PVE's pool id rule (`pve-access-control`: `[A-Za-z0-9\.\-_]+`).
        let pool = match raw.proxmox.pool {
            Some(p)
                if p.is_empty()
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
            {
                return Err(invalid(
                    "proxmox.pool",
                    format!("{p:?} is not a PVE pool name (letters, digits, '.', '-', '_')"),
                ));
            }
            p => p,
        };
        let source = source_config(raw.source, &invalid)?;
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(l) => {
                let addr: std::net::SocketAddr = l
                    .parse()
                    .map_err(|e| invalid("metrics.listen", format!("{l:?}: {e}")))?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        "metrics.listen",
                        format!(
                            "{l:?} is not a loopback address; metrics are served on loopback only (use a reverse proxy to expose them)"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        let safety = crate::safety::SafetyPolicy::from_raw(raw.safety)
            .map_err(|(key, message)| invalid(key, message))?;
        let rules = host_rules(&raw.guests, safety.detach_grace, &invalid)?;
        Ok(Config {
            safety,
            control_socket: raw
                .control
                .socket
                .unwrap_or_else(|| PathBuf::from(crate::operator::control::DEFAULT_SOCKET)),
            metrics_listen,
            rules,
            host: raw.host,
            fleet: raw.fleet,
            state_dir: raw.state_dir,
            interval,
            proxmox: ProxmoxConfig {
                url: raw.proxmox.url.trim_end_matches('/').to_string(),
                token_id: raw.proxmox.token_id,
                token_secret_file: raw.proxmox.token_secret_file,
                fingerprint: raw.proxmox.fingerprint,
                ca_file: raw.proxmox.ca_file,
                node_cert_file: raw.proxmox.node_cert_file,
                max_parallel: raw.proxmox.max_parallel,
                task_poll_interval,
                pool,
            },
            source,
            trust: TrustConfig {
                file: raw.trust.file,
            },
            path: path.to_path_buf(),
        })
    }
}

fn source_config(
    raw: RawSource,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<SourceConfig, ConfigError> {
    match (raw.path, raw.url) {
        (Some(_), Some(_)) => Err(invalid(
            "source",
            "set either path (a local directory) or url (a hub), not both".into(),
        )),
        (None, None) => Err(invalid(
            "source",
            "set path (a local directory) or url (an https hub)".into(),
        )),
        (Some(path), None) => {
            let hub_only = [
                ("source.ca_file", raw.ca_file.is_some()),
                ("source.fingerprint", raw.fingerprint.is_some()),
                ("source.bearer_token_file", raw.bearer_token_file.is_some()),
                ("source.client_cert_file", raw.client_cert_file.is_some()),
                ("source.client_key_file", raw.client_key_file.is_some()),
                ("source.timeout", raw.timeout.is_some()),
                ("source.report", raw.report.is_some()),
            ];
            if let Some((key, _)) = hub_only.iter().find(|(_, set)| *set) {
                return Err(invalid(key, "only applies to a hub (source.url)".into()));
            }
            Ok(SourceConfig::Dir { path })
        }
        (None, Some(url)) => {
            let parsed = reqwest::Url::parse(&url)
                .map_err(|e| invalid("source.url", format!("{url:?}: {e}")))?;
            if parsed.scheme() != "https" {
                return Err(invalid(
                    "source.url",
                    format!("{url:?} must be an https:// URL"),
                ));
            }
            if raw.ca_file.is_some() && raw.fingerprint.is_some() {
                return Err(invalid(
                    "source.fingerprint",
                    "set either fingerprint or ca_file, not both".into(),
                ));
            }
            match (&raw.client_cert_file, &raw.client_key_file) {
                (Some(_), None) => {
                    return Err(invalid(
                        "source.client_key_file",
                        "client_cert_file needs client_key_file (the certificate's private key)"
                            .into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "source.client_cert_file",
                        "client_key_file needs client_cert_file".into(),
                    ));
                }
                _ => {}
            }
            if let Some(fp) = &raw.fingerprint
                && let Err(e) = fp.parse::<proxmox_client::Fingerprint>()
            {
                return Err(invalid("source.fingerprint", format!("{fp:?}: {e}")));
            }
            let timeout = match &raw.timeout {
                None => Duration::from_secs(10),
                Some(t) => {
                    let d = humantime::parse_duration(t)
                        .map_err(|e| invalid("source.timeout", format!("{t:?}: {e}")))?;
                    if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
                        return Err(invalid(
                            "source.timeout",
                            "must be between 100ms and 5m".into(),
                        ));
                    }
                    d
                }
            };
            Ok(SourceConfig::Hub(HubSourceConfig {
                url: url.trim_end_matches('/').to_string(),
                ca_file: raw.ca_file,
                fingerprint: raw.fingerprint,
                bearer_token_file: raw.bearer_token_file,
                client_cert_file: raw.client_cert_file,
                client_key_file: raw.client_key_file,
                timeout,
                report: raw.report.unwrap_or(true),
            }))
        }
    }
}

/// Turns a TOML/serde error into file + line + key, the three things an operator needs.
pub(crate) fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(0);
    let key = e
        .span()
        .and_then(|s| text.get(s.clone()))
        .map(|k| k.lines().next().unwrap_or("").trim().to_string())
        .filter(|k| !k.is_empty() && k.len() < 80)
        .map(|k| format!(", at `{k}`"))
        .unwrap_or_default();
    let message = e.message().trim().to_string();
    // A value of the wrong type: name the key (with its section) in the operator's words.
    if let Some(start) = e.span().map(|s| s.start.min(text.len()))
        && let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((got, want)) = rest.split_once(", expected ")
    {
        let before = &text[..start];
        let line_text = before.rsplit('\n').next().unwrap_or("");
        if let Some((k, _)) = line_text.split_once('=') {
            let section = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('[') && l.ends_with(']'))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            let k = k.trim();
            let full = match section {
                Some(sec) if !sec.is_empty() => format!("{sec}.{k}"),
                _ => k.to_string(),
            };
            return ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                key: format!(", key {full}"),
                message: format!("expected {}, got {got}", operator_type(want)),
            };
        }
    }
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        key,
        message,
    }
}

/// serde's type names in words an operator uses.
fn operator_type(want: &str) -> String {
    match want {
        "usize" | "u64" | "u32" | "u16" | "u8" | "i64" | "i32" => "a whole number".to_string(),
        "a boolean" | "bool" => "true or false".to_string(),
        "a string" | "string" => "a quoted string".to_string(),
        other => other.to_string(),
    }
}

/// PVE's node name rule (pve-common `pve-node` format).
pub fn is_node_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The approval payload's fleet grammar (`[a-z0-9-]{1,63}`).
pub fn is_fleet_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// `[source]` as a [`Source`]: the config knows the settings, the source knows how to fetch.
impl Source {
    /// Builds the source `[source]` names. The hub's approvals are mirrored into
    /// `<state_dir>/hub-approvals`.
    pub fn from_config(config: &Config) -> Result<Source, HubError> {
        match &config.source {
            SourceConfig::Dir { path } => Ok(Source::Dir(DirSource::new(path))),
            SourceConfig::Hub(h) => {
                let mut cfg = HubConfig::new(h.url.clone(), config.host.clone());
                cfg.tls = match (&h.ca_file, &h.fingerprint) {
                    (Some(ca), _) => HubTls::CaFile(ca.clone()),
                    (None, Some(fp)) => HubTls::Fingerprint(fp.clone()),
                    (None, None) => HubTls::SystemRoots,
                };
                cfg.bearer_token_file = h.bearer_token_file.clone();
                cfg.client_identity = h.client_cert_file.clone().zip(h.client_key_file.clone());
                cfg.timeout = h.timeout;
                cfg.report = h.report;
                cfg.used_approvals = Some(config.state_dir.join("approvals").join("used"));
                // Retrying longer than half an interval would only delay benign convergence
                // from the last verified document; the next pass tries again anyway.
                cfg.retry_budget = (config.interval / 2)
                    .clamp(std::time::Duration::from_secs(1), cfg.retry_budget);
                Ok(Source::Hub {
                    hub: Arc::new(HubSource::new(cfg)?),
                    approvals: config.state_dir.join("hub-approvals"),
                })
            }
        }
    }
}

/// `[guests]` and `[safety] detach_grace` (parsed with the rest of `[safety]`) as the planner's
/// host rules. Paths must be absolute and canonical, devices under `/dev/`. The deletion after
/// the grace needs its own signature anyway.
fn host_rules(
    g: &RawGuests,
    detach_grace: Duration,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<crate::reconcile::vocabulary::HostRules, ConfigError> {
    let canonical = |p: &str| {
        p.starts_with('/')
            && p.len() > 1
            && !p.ends_with('/')
            && !p
                .chars()
                .any(|c| c.is_control() || matches!(c, ',' | ';' | '=' | ' '))
            && p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
    };
    for p in &g.host_paths {
        if !canonical(p) {
            return Err(invalid(
                "guests.host_paths",
                format!("{p:?} must be an absolute path without '.', '..' or a trailing '/'"),
            ));
        }
    }
    for d in &g.devices {
        if !canonical(d) || !d.starts_with("/dev/") {
            return Err(invalid(
                "guests.devices",
                format!("{d:?} must be a device path under /dev/"),
            ));
        }
    }
    let detach_grace_secs = i64::try_from(detach_grace.as_secs()).unwrap_or(i64::MAX);
    Ok(crate::reconcile::vocabulary::HostRules {
        host_paths: g.host_paths.clone(),
        devices: g.devices.clone(),
        detach_grace_secs,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
host = "pve1"
fleet = "example"
state_dir = "/var/lib/drover"
interval = "30s"

[proxmox]
url = "https://localhost:8006"
token_id = "drover@pve!agent"
token_secret_file = "/etc/drover/pve-token"
max_parallel = 3

[source]
path = "/etc/drover/desired"

[trust]
file = "/etc/drover/trust"
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD, Path::new("drover.toml")).unwrap();
        assert_eq!(c.host, "pve1");
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.proxmox.max_parallel, 3);
        assert_eq!(c.proxmox.fingerprint, None);
    }

    #[test]
    fn host_rules_come_from_guests_and_safety() {
        let c = Config::parse(GOOD, Path::new("d.toml")).unwrap();
        assert!(c.rules.host_paths.is_empty() && c.rules.devices.is_empty());
        assert_eq!(c.rules.detach_grace_secs, 14 * 24 * 3600);
        let text = format!(
            "{GOOD}\n[guests]\nhost_paths = [\"/srv/shared\"]\ndevices = [\"/dev/dri/renderD128\"]\n\n[safety]\ndetach_grace = \"36h\"\n"
        );
        let c = Config::parse(&text, Path::new("d.toml")).unwrap();
        assert!(c.rules.allows_host_path("/srv/shared/x"));
        assert!(c.rules.allows_device("/dev/dri/renderD128"));
        assert_eq!(c.rules.detach_grace_secs, 36 * 3600);
        for (extra, key) in [
            ("[guests]\nhost_paths = [\"srv\"]\n", "guests.host_paths"),
            (
                "[guests]\nhost_paths = [\"/srv/../etc\"]\n",
                "guests.host_paths",
            ),
            ("[guests]\ndevices = [\"/etc/passwd\"]\n", "guests.devices"),
            ("[safety]\ndetach_grace = \"soon\"\n", "safety.detach_grace"),
        ] {
            let e = Config::parse(&format!("{GOOD}\n{extra}"), Path::new("d.toml")).unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
        let e = Config::parse(
            &format!("{GOOD}\n[guests]\nhost_path = []\n"),
            Path::new("d.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("host_path"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("max_parallel = 3", "max_paralel = 3");
        let e = Config::parse(&text, Path::new("/etc/drover/drover.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/drover/drover.toml"), "{msg}");
        assert!(msg.contains("line 11"), "{msg}");
        assert!(msg.contains("max_paralel"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let text = GOOD.replace("max_parallel = 3", "max_parallel = \"three\"");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 11"), "{msg}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = GOOD.replace("token_id = \"drover@pve!agent\"\n", "");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("token_id"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let text = GOOD.replace("interval = \"30s\"", "interval = \"soon\"");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`interval`"), "{msg}");
        let text = GOOD.replace("https://localhost:8006", "http://localhost:8006");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("proxmox.url"), "{msg}");
    }

    #[test]
    fn source_is_a_directory_or_a_hub() {
        let hub = GOOD.replace(
            "path = \"/etc/drover/desired\"",
            "url = \"https://hub.example/drover/\"\nbearer_token_file = \"/etc/drover/hub-token\"\nfingerprint = \"aa\"",
        );
        let msg = Config::parse(&hub, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("source.fingerprint"), "{msg}");
        let hub = hub.replace("fingerprint = \"aa\"", "timeout = \"5s\"");
        match Config::parse(&hub, Path::new("c.toml")).unwrap().source {
            SourceConfig::Hub(h) => {
                assert_eq!(h.url, "https://hub.example/drover");
                assert_eq!(h.timeout, Duration::from_secs(5));
                assert!(h.report);
            }
            other => panic!("{other:?}"),
        }
        for (text, key) in [
            (
                GOOD.replace("[source]\n", "[source]\nurl = \"https://h\"\n"),
                "`source`",
            ),
            (
                GOOD.replace("path = \"/etc/drover/desired\"", ""),
                "`source`",
            ),
            (
                GOOD.replace("path = \"/etc/drover/desired\"", "url = \"http://hub\""),
                "source.url",
            ),
            (
                GOOD.replace("[source]\n", "[source]\nreport = false\n"),
                "source.report",
            ),
            (
                GOOD.replace("[source]\n", "[source]\nclient_cert_file = \"/c.pem\"\n"),
                "source.client_cert_file",
            ),
            (
                hub.replace("timeout = \"5s\"", "client_cert_file = \"/c.pem\""),
                "source.client_key_file",
            ),
            (
                hub.replace("timeout = \"5s\"", "client_key_file = \"/c.key\""),
                "source.client_cert_file",
            ),
        ] {
            let msg = Config::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{key}: {msg}");
        }
    }
}
