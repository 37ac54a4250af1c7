//! The hub source: desired state and approvals pulled over HTTPS from any static file server.
//!
//! Layout under `{url}/hosts/{host}/` (plain files, so nginx, an object store or a CDN can be
//! the hub):
//! - `desired.toml`: the document; fetched with `If-None-Match` so an unchanged poll is one
//!   conditional GET answered `304`.
//! - `desired.toml.sig`: the hub key's SSHSIG over the exact bytes, namespace
//!   `desired-state-v1@<domain>`; required whenever the trust document lists a hub key.
//! - `approvals/index.json`: a JSON array of file names in `approvals/`, e.g.
//!   `["stop-101.txt", "stop-101.txt.sig", "destroy-102.txt", "destroy-102.txt.alice.sig"]`.
//!   Names are `NAME.txt`, `NAME.txt.sig` or `NAME.txt.<signer>.sig` (ASCII letters, digits and
//!   `._-+@`, no leading dot, at most [`MAX_NAME_LEN`] bytes, at most [`MAX_INDEX_ENTRIES`]).
//! - `report.json` (optional): the agent's report ([`crate::desired::report`]), stored with a `PUT`
//!   (nginx's WebDAV module, an object store); 404/405 means a hub that takes no uploads.
//!
//! Nothing from the hub is trusted for what it is: the document only asks (classification and
//! the gate decide), its signature is checked by the gate, approvals are verified by the gate
//! after the normal approval scan picks them up. Everything is read with a size cap while
//! streaming, every request has a timeout, and transient failures are retried with exponential
//! backoff and jitter. The `backoff` crate is used here and nowhere else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backoff::ExponentialBackoffBuilder;
use gate::{Rejection, Role, TrustStore};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, HeaderValue, IF_NONE_MATCH};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::approval::files;
use crate::desired;
use crate::desired::fetched::{Fetched, SourceError, check_revision};

/// Largest index.json accepted.
pub const MAX_INDEX_BYTES: usize = 64 * 1024;
/// Most names an index may list (payloads and signatures together).
pub const MAX_INDEX_ENTRIES: usize = 512;
/// Longest approval file name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Largest `desired.toml.sig` accepted (the gate refuses signatures above 8 KiB anyway).
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;

/// How the hub's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTls {
    /// The operating system's roots (reqwest's rustls platform verifier).
    SystemRoots,
    /// Only the certificates in this PEM file are roots (chain and name still verified).
    CaFile(PathBuf),
    /// The leaf certificate's SHA-256 (`AA:BB:...`, case and colons optional); chain and name
    /// are not checked, the handshake signature still is.
    Fingerprint(String),
}

/// Everything the hub source needs; `[source]` in the config maps onto it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `https://hub.example/drover` (no trailing slash needed).
    pub url: String,
    /// This host's name in `{url}/hosts/{host}/`.
    pub host: String,
    pub tls: HubTls,
    /// A file holding a bearer token; re-read on every poll so rotation needs no restart.
    pub bearer_token_file: Option<PathBuf>,
    /// A client certificate chain and its private key (PEM files), presented in every TLS
    /// handshake so the hub can tell hosts apart without a token (read once, at start).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Per request, from connecting to the last body byte.
    pub timeout: Duration,
    /// Total time spent retrying one request before giving up.
    pub retry_budget: Duration,
    /// First retry delay (doubles, with ±50 % jitter, up to 30 s).
    pub retry_initial: Duration,
    pub max_document_bytes: usize,
    /// Per approval payload file.
    pub max_approval_bytes: usize,
    /// Per approval signature file.
    pub max_approval_signature_bytes: usize,
    /// Send `PUT .../report.json` at all.
    pub report: bool,
    /// Where the agent moves approvals it has used: a listed file identical to one there is
    /// not mirrored again (it would only be refused as replayed on every index change).
    pub used_approvals: Option<PathBuf>,
}

impl HubConfig {
    /// Defaults: system roots, 10 s timeout, 30 s retry budget, the document and approval caps
    /// the local sources use.
    pub fn new(url: impl Into<String>, host: impl Into<String>) -> HubConfig {
        HubConfig {
            url: url.into(),
            host: host.into(),
            tls: HubTls::SystemRoots,
            bearer_token_file: None,
            client_identity: None,
            timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(30),
            retry_initial: Duration::from_millis(500),
            max_document_bytes: desired::MAX_DOCUMENT_BYTES,
            max_approval_bytes: files::MAX_PAYLOAD_BYTES as usize,
            max_approval_signature_bytes: files::MAX_SIGNATURE_BYTES as usize,
            report: true,
            used_approvals: None,
        }
    }
}

/// Why the hub gave nothing usable. Every variant has a stable [`HubError::code`].
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub configuration: {0}")]
    Config(String),
    #[error("hub tls: {0}")]
    Tls(String),
    #[error("hub unreachable: {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("hub answered {status} for {url}")]
    HttpStatus { url: String, status: u16 },
    #[error("hub file {url} is larger than {cap} bytes (refused while downloading)")]
    TooLarge { url: String, cap: usize },
    #[error(
        "hub document {url} has no signature ({url}.sig missing) but the trust document lists a hub key"
    )]
    SignatureMissing { url: String },
    #[error("hub document {url}: signature refused: {rejection}")]
    SignatureInvalid { url: String, rejection: Rejection },
    #[error(transparent)]
    Desired(#[from] SourceError),
    #[error("hub approvals index {url}: {message}")]
    ApprovalIndex { url: String, message: String },
    #[error("writing hub approvals to {path}: {message}")]
    LocalWrite { path: String, message: String },
}

impl HubError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Config(_) => "hub_config",
            HubError::Tls(_) => "hub_tls",
            HubError::Unreachable { .. } => "hub_unreachable",
            HubError::HttpStatus { .. } => "hub_http_status",
            HubError::TooLarge { .. } => "hub_document_too_large",
            HubError::SignatureMissing { .. } => "hub_signature_missing",
            HubError::SignatureInvalid { .. } => "hub_signature_invalid",
            HubError::Desired(e) => e.code(),
            HubError::ApprovalIndex { .. } => "hub_approvals_invalid",
            HubError::LocalWrite { .. } => "hub_local_io",
        }
    }

    /// For `hub_signature_invalid`: the gate's own code (`bad_signature`, `unknown_key`, ...).
    pub fn gate_code(&self) -> Option<&'static str> {
        match self {
            HubError::SignatureInvalid { rejection, .. } => Some(rejection.code.as_str()),
            _ => None,
        }
    }

    /// Worth another attempt within the retry budget (network trouble, 5xx, 408, 429).
    fn is_transient(&self) -> bool {
        match self {
            HubError::Unreachable { .. } => true,
            HubError::HttpStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

/// The outcome of a poll.
#[derive(Debug, Clone)]
pub enum HubFetch {
    /// The document is unchanged since the last accepted one (`304`).
    NotModified,
    /// A new document: signature verified when required, parsed, not a rollback.
    Fresh(Fetched),
}

/// What [`HubSource::fetch_approvals`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalSync {
    /// The index was unchanged (`304`); nothing else was requested.
    pub not_modified: bool,
    /// Files (re)written because they were new or changed.
    pub written: Vec<String>,
    pub unchanged: usize,
    /// Listed files the agent has already used (identical to its retired copy); not mirrored.
    pub already_used: usize,
    /// Local files no longer listed by the hub, removed.
    pub removed: Vec<String>,
    /// Listed files that could not be fetched; the others were still synced.
    pub problems: Vec<String>,
}

/// What [`HubSource::report`] got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// `report = false` in the config; nothing sent.
    Disabled,
    Accepted,
    /// 404/405: a static hub without a report endpoint.
    NotSupported,
}

enum Got {
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// The remembered ETag of the last accepted document, and whether it was signature-verified.
#[derive(Debug, Clone)]
struct Remembered {
    etag: String,
    verified: bool,
}

/// A hub for one host. Cheap to share (`&self` everywhere); keeps one connection pool.
#[derive(Debug)]
pub struct HubSource {
    cfg: HubConfig,
    base: String,
    client: reqwest::Client,
    doc_etag: Mutex<Option<Remembered>>,
    index_etag: Mutex<Option<String>>,
    /// The ETag of `jobs/index.json` (signed jobs travel like approvals).
    jobs_index_etag: Mutex<Option<String>>,
    last_success: AtomicI64,
}

/// Removes the mirrored files of `dir` the index no longer lists (only names a hub could
/// have given: anything else in the directory is not the mirror's); the removed names, sorted.
fn prune_unlisted(dir: &Path, listed: &BTreeSet<&str>) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if valid_approval_name(&name) && !listed.contains(name.as_str()) {
            std::fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

impl HubSource {
    /// Validates the config and builds the HTTPS client (aws-lc-rs only).
    pub fn new(cfg: HubConfig) -> Result<HubSource, HubError> {
        let url = cfg.url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| HubError::Config(format!("url {:?}: {e}", cfg.url)))?;
        if parsed.scheme() != "https" {
            return Err(HubError::Config(format!(
                "url {:?} must start with https://",
                cfg.url
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(HubError::Config(format!(
                "url {:?} must not have a query or fragment",
                cfg.url
            )));
        }
        if !valid_host_name(&cfg.host) {
            return Err(HubError::Config(format!(
                "host {:?} must be 1-64 letters, digits, '.', '-' or '_'",
                cfg.host
            )));
        }
        let base = format!("{url}/hosts/{}", cfg.host);
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().scheme() != "https" {
                attempt.error("hub redirected to a non-https url")
            } else if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else {
                attempt.follow()
            }
        });
        let builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(redirects)
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")));
        let identity = cfg
            .client_identity
            .as_ref()
            .map(|(cert, key)| load_identity(cert, key))
            .transpose()?;
        let builder = match (&cfg.tls, identity) {
            (HubTls::SystemRoots, None) => builder,
            (HubTls::SystemRoots, Some(id)) => {
                let mut pem = std::fs::read(&id.cert_path).unwrap_or_default();
                pem.push(b'\n');
                pem.extend(std::fs::read(&id.key_path).unwrap_or_default());
                builder.identity(reqwest::Identity::from_pem(&pem).map_err(|e| {
                    HubError::Tls(format!(
                        "client certificate {}: {e}",
                        id.cert_path.display()
                    ))
                })?)
            }
            (other, id) => builder.tls_backend_preconfigured(tls_config(other, id)?),
        };
        let client = builder
            .build()
            .map_err(|e| HubError::Tls(format!("building the https client: {e}")))?;
        Ok(HubSource {
            cfg,
            base,
            client,
            doc_etag: Mutex::new(None),
            index_etag: Mutex::new(None),
            jobs_index_etag: Mutex::new(None),
            last_success: AtomicI64::new(0),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// `{url}/hosts/{host}/desired.toml`.
    pub fn document_url(&self) -> String {
        format!("{}/desired.toml", self.base)
    }

    /// Unix time of the last poll that gave a usable answer (a verified document or `304`).
    pub fn last_success(&self) -> Option<i64> {
        match self.last_success.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Forgets the remembered ETags so the next poll downloads everything again (e.g. after
    /// the trust document changed).
    pub fn forget_etags(&self) {
        *lock(&self.doc_etag) = None;
        *lock(&self.index_etag) = None;
        *lock(&self.jobs_index_etag) = None;
    }

    /// Polls the document. `trust`: the current trust document; when it lists a hub key the
    /// signature is required and verified by the gate at `now` (unix seconds).
    pub async fn fetch(
        &self,
        last_accepted: Option<u64>,
        trust: Option<&TrustStore>,
        now: i64,
    ) -> Result<HubFetch, HubError> {
        let token = self.token()?;
        let url = self.document_url();
        let required = trust.is_some_and(|t| !t.principals(Role::Hub).is_empty());
        // A document accepted unsigned is re-downloaded once a hub key appears.
        let etag = lock(&self.doc_etag)
            .clone()
            .filter(|r| r.verified || !required)
            .map(|r| r.etag);
        let got = self
            .get_retrying(&url, self.cfg.max_document_bytes, etag.as_deref(), &token)
            .await?;
        let (bytes, new_etag) = match got {
            Got::NotModified => {
                self.last_success.store(now, Ordering::Relaxed);
                tracing::debug!(%url, "hub document not modified");
                return Ok(HubFetch::NotModified);
            }
            Got::Body { bytes, etag } => (bytes, etag),
        };
        if let (true, Some(trust)) = (required, trust) {
            let sig_url = format!("{url}.sig");
            let sig = match self
                .get_retrying(&sig_url, MAX_SIGNATURE_BYTES, None, &token)
                .await
            {
                Ok(Got::Body { bytes, .. }) => bytes,
                Ok(Got::NotModified) | Err(HubError::HttpStatus { status: 404, .. }) => {
                    return Err(HubError::SignatureMissing { url });
                }
                Err(e) => return Err(e),
            };
            let principal = verify_document_signature(trust, &url, &bytes, &sig, now)?;
            tracing::debug!(%url, %principal, "hub document signature verified");
        }
        let doc = accept_document(&url, &bytes, self.cfg.max_document_bytes, last_accepted)?;
        *lock(&self.doc_etag) = new_etag.map(|etag| Remembered {
            etag,
            verified: required,
        });
        self.last_success.store(now, Ordering::Relaxed);
        tracing::info!(%url, revision = doc.revision, signed = required, "hub document fetched");
        Ok(HubFetch::Fresh(Fetched {
            doc,
            bytes,
            origin: url,
        }))
    }

    /// Mirrors `{url}/hosts/{host}/approvals/` (as listed by `index.json`) into `dir`, which
    /// must be a directory used for nothing else: files the index no longer lists are removed.
    /// Signatures are written before payloads, every file atomically, so the agent's approval
    /// scan never sees half a set. The files are verified later, by the gate, like any other.
    pub async fn fetch_approvals(&self, dir: &Path) -> Result<ApprovalSync, HubError> {
        self.mirror("approvals", dir, &self.index_etag).await
    }

    /// Mirrors `{url}/hosts/{host}/jobs/` (signed jobs, `drover-job v1`, listed by its
    /// `index.json`) into `dir`, as [`HubSource::fetch_approvals`] does approvals. A hub
    /// without a `jobs/` directory (404) has no jobs: what an earlier poll mirrored is
    /// withdrawn, as an empty index would withdraw it (a team that deletes `jobs/` means
    /// "no jobs", and a job not yet run must not run from the old copy).
    pub async fn fetch_jobs(&self, dir: &Path) -> Result<ApprovalSync, HubError> {
        match self.mirror("jobs", dir, &self.jobs_index_etag).await {
            Err(HubError::HttpStatus { status: 404, .. }) => {
                *lock(&self.jobs_index_etag) = None;
                let removed = match prune_unlisted(dir, &BTreeSet::new()) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => {
                        return Err(HubError::LocalWrite {
                            path: dir.display().to_string(),
                            message: e.to_string().to_lowercase(),
                        });
                    }
                };
                Ok(ApprovalSync {
                    removed,
                    ..ApprovalSync::default()
                })
            }
            other => other,
        }
    }

    async fn mirror(
        &self,
        sub: &str,
        dir: &Path,
        index_etag: &Mutex<Option<String>>,
    ) -> Result<ApprovalSync, HubError> {
        let token = self.token()?;
        let index_url = format!("{}/{sub}/index.json", self.base);
        let etag = lock(index_etag).clone();
        let got = self
            .get_retrying(&index_url, MAX_INDEX_BYTES, etag.as_deref(), &token)
            .await?;
        let (bytes, new_etag) = match got {
            Got::NotModified => {
                return Ok(ApprovalSync {
                    not_modified: true,
                    ..ApprovalSync::default()
                });
            }
            Got::Body { bytes, etag } => (bytes, etag),
        };
        let names = parse_index(&bytes).map_err(|message| HubError::ApprovalIndex {
            url: index_url.clone(),
            message,
        })?;
        let local_err = |e: std::io::Error| HubError::LocalWrite {
            path: dir.display().to_string(),
            message: e.to_string().to_lowercase(),
        };
        std::fs::create_dir_all(dir).map_err(local_err)?;
        let mut sync = ApprovalSync::default();
        // Signatures first: a payload appears only once its signatures are in place.
        let mut ordered: Vec<&String> = names.iter().filter(|n| n.ends_with(".sig")).collect();
        ordered.extend(names.iter().filter(|n| n.ends_with(".txt")));
        for name in ordered {
            let cap = if name.ends_with(".sig") {
                self.cfg.max_approval_signature_bytes
            } else {
                self.cfg.max_approval_bytes
            };
            let url = format!("{}/{sub}/{name}", self.base);
            let bytes = match self.get_retrying(&url, cap, None, &token).await {
                Ok(Got::Body { bytes, .. }) => bytes,
                Ok(Got::NotModified) => continue,
                Err(e) => {
                    tracing::warn!(%url, code = e.code(), error = %e, "hub approval file skipped");
                    sync.problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let path = dir.join(name);
            let same = files::read_capped(&path, cap as u64).is_ok_and(|old| old == bytes);
            let used = self.cfg.used_approvals.as_ref().is_some_and(|u| {
                files::read_capped(&u.join(name), cap as u64).is_ok_and(|old| old == bytes)
            });
            if used {
                sync.already_used += 1;
            } else if same {
                sync.unchanged += 1;
            } else {
                files::write_atomic(&path, &bytes).map_err(local_err)?;
                sync.written.push(name.clone());
            }
        }
        let listed: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        sync.removed = prune_unlisted(dir, &listed).map_err(local_err)?;
        if sync.problems.is_empty() {
            *lock(index_etag) = new_etag;
        }
        Ok(sync)
    }

    /// `{url}/hosts/{host}/report.json`.
    pub fn report_url(&self) -> String {
        format!("{}/report.json", self.base)
    }

    /// Stores the agent's report as `{url}/hosts/{host}/report.json` with a plain `PUT` (one
    /// attempt, no retry: the next cycle sends a newer one), which nginx's WebDAV module or an
    /// object store accept. 404 and 405 mean a hub that takes no uploads and are fine.
    pub async fn report(
        &self,
        report: &crate::desired::report::Report,
    ) -> Result<ReportOutcome, HubError> {
        if !self.cfg.report {
            return Ok(ReportOutcome::Disabled);
        }
        let token = self.token()?;
        let url = self.report_url();
        let body = serde_json::to_vec(report)
            .map_err(|e| HubError::Config(format!("encoding the report: {e}")))?;
        let mut req = self
            .client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &token {
            req = req.header(AUTHORIZATION, t.clone());
        }
        let resp = req.send().await.map_err(|e| classify(&url, &e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(ReportOutcome::Accepted)
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            Ok(ReportOutcome::NotSupported)
        } else {
            Err(HubError::HttpStatus {
                url,
                status: status.as_u16(),
            })
        }
    }

    /// `Authorization: Bearer <token>` from the token file, if configured.
    fn token(&self) -> Result<Option<HeaderValue>, HubError> {
        let Some(path) = &self.cfg.bearer_token_file else {
            return Ok(None);
        };
        let ctx = |m: String| HubError::Config(format!("bearer token {}: {m}", path.display()));
        let raw = files::read_capped(path, 8192).map_err(ctx)?;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| ctx("not utf-8".into()))?
            .trim();
        if text.is_empty() {
            return Err(ctx("the file is empty".into()));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {text}"))
            .map_err(|_| ctx("contains characters not allowed in a header".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// One GET with retries (exponential backoff with ±50 % jitter within the retry budget);
    /// 4xx other than 408/429, size and TLS problems are final at once.
    async fn get_retrying(
        &self,
        url: &str,
        cap: usize,
        etag: Option<&str>,
        token: &Option<HeaderValue>,
    ) -> Result<Got, HubError> {
        let policy = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.cfg.retry_initial)
            .with_randomization_factor(0.5)
            .with_multiplier(2.0)
            .with_max_interval(Duration::from_secs(30))
            .with_max_elapsed_time(Some(self.cfg.retry_budget))
            .build();
        backoff::future::retry_notify(
            policy,
            || async {
                self.get_once(url, cap, etag, token).await.map_err(|e| {
                    if e.is_transient() {
                        backoff::Error::transient(e)
                    } else {
                        backoff::Error::permanent(e)
                    }
                })
            },
            |e: HubError, wait: Duration| {
                tracing::warn!(%url, code = e.code(), error = %e, retry_in_ms = wait.as_millis() as u64, "hub request failed; retrying");
            },
        )
        .await
    }

    async fn get_once(
        &self,
        url: &str,
        cap: usize,
        etag: Option<&str>,
        token: &Option<HeaderValue>,
    ) -> Result<Got, HubError> {
        let mut req = self.client.get(url);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, t.clone());
        }
        if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
            req = req.header(IF_NONE_MATCH, tag);
        }
        let mut resp = req.send().await.map_err(|e| classify(url, &e))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(Got::NotModified);
        }
        if status != StatusCode::OK {
            return Err(HubError::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let too_large = || HubError::TooLarge {
            url: url.to_string(),
            cap,
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let new_etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let hint = resp.content_length().unwrap_or(0).min(64 * 1024) as usize;
        let mut bytes = Vec::with_capacity(hint);
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(url, &e))? {
            if bytes.len() + chunk.len() > cap {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Got::Body {
            bytes,
            etag: new_etag,
        })
    }
}

/// The checks a hub document gets once its bytes are in (the signature aside): the size cap,
/// the whole-document validation and the rollback rule. `drover fleet publish` runs this same
/// function on every host's file, so it refuses exactly what the agents would, with the same
/// codes (`hub_document_too_large`, `desired_invalid`, `desired_rollback`).
pub fn accept_document(
    url: &str,
    bytes: &[u8],
    cap: usize,
    last_accepted: Option<u64>,
) -> Result<desired::DesiredDoc, HubError> {
    if bytes.len() > cap {
        return Err(HubError::TooLarge {
            url: url.to_string(),
            cap,
        });
    }
    let doc = desired::parse(bytes, url).map_err(SourceError::from)?;
    check_revision(url, doc.revision, last_accepted)?;
    Ok(doc)
}

/// The hub key's signature over a document, checked by the gate as the agent checks it
/// (`hub_signature_invalid` with the gate's code); the signer's principal on success.
pub fn verify_document_signature(
    trust: &TrustStore,
    url: &str,
    bytes: &[u8],
    sig: &[u8],
    now: i64,
) -> Result<String, HubError> {
    gate::verify_signature(trust, Role::Hub, bytes, sig, now)
        .map(|signer| signer.principal)
        .map_err(|rejection| HubError::SignatureInvalid {
            url: url.to_string(),
            rejection,
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another poll panicked; the remembered value is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// TLS failures are final and reported as `hub_tls`; everything else is network trouble.
fn classify(url: &str, e: &reqwest::Error) -> HubError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = rustls_error(err) {
            return HubError::Tls(format!("{url}: {t}"));
        }
        cur = err.source();
    }
    let message = if e.is_timeout() {
        "timed out".to_string()
    } else {
        let mut m = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            m.push_str(": ");
            m.push_str(&s.to_string());
            src = s.source();
        }
        m
    };
    HubError::Unreachable {
        url: url.to_string(),
        message,
    }
}

/// The rustls error in `err`, looking through nested `io::Error`s (whose `source()` skips the
/// error they wrap).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// A host name usable as one path segment of the hub (`hosts/<host>/`).
pub fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && !h.starts_with('.')
        && !h.contains("..")
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `NAME.txt`, `NAME.txt.sig` or `NAME.txt.<signer>.sig`; no path separators, no leading dot,
/// no `..`, a short safe alphabet.
pub fn valid_approval_name(n: &str) -> bool {
    let safe = !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && !n.starts_with('.')
        && !n.contains("..")
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@".contains(c));
    if !safe {
        return false;
    }
    if let Some(stem) = n.strip_suffix(".txt") {
        return !stem.is_empty();
    }
    match n.strip_suffix(".sig") {
        Some(stem) if stem.ends_with(".txt") => stem.len() > 4,
        Some(stem) => stem
            .rfind(".txt.")
            .is_some_and(|i| i > 0 && i + 5 < stem.len()),
        None => false,
    }
}

/// Parses `index.json`: a JSON array of distinct, valid approval file names.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<String>, String> {
    let names: Vec<String> = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a json array of file names: {e}"))?;
    if names.len() > MAX_INDEX_ENTRIES {
        return Err(format!(
            "lists {} files; at most {MAX_INDEX_ENTRIES} are accepted",
            names.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for n in &names {
        if !valid_approval_name(n) {
            return Err(format!(
                "{n:?} is not an approval file name (NAME.txt, NAME.txt.sig or NAME.txt.SIGNER.sig)"
            ));
        }
        if !seen.insert(n.as_str()) {
            return Err(format!("{n:?} is listed twice"));
        }
    }
    Ok(names)
}

/// A client certificate chain and key, loaded and checked at start.
struct Identity {
    cert_path: PathBuf,
    key_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn load_identity(cert: &Path, key: &Path) -> Result<Identity, HubError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            HubError::Tls(format!(
                "client certificate {}: {}",
                cert.display(),
                e.to_string().to_lowercase()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            HubError::Tls(format!(
                "client certificate {}: invalid pem: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(HubError::Tls(format!(
            "client certificate {}: no certificate in file",
            cert.display()
        )));
    }
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
        HubError::Tls(format!(
            "client key {}: {}",
            key.display(),
            e.to_string().to_lowercase()
        ))
    })?;
    Ok(Identity {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        chain,
        key: private,
    })
}

fn tls_config(tls: &HubTls, identity: Option<Identity>) -> Result<rustls::ClientConfig, HubError> {
    let finish =
        |b: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>| {
            match identity {
                None => Ok(b.with_no_client_auth()),
                Some(id) => {
                    let path = id.cert_path.display().to_string();
                    b.with_client_auth_cert(id.chain, id.key)
                        .map_err(|e| HubError::Tls(format!("client certificate {path}: {e}")))
                }
            }
        };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Tls(format!("setting up tls: {e}")))?;
    match tls {
        HubTls::SystemRoots => Err(HubError::Tls(
            "system roots use reqwest's platform verifier".into(),
        )),
        HubTls::CaFile(path) => {
            let ctx = |m: String| HubError::Tls(format!("ca file {}: {m}", path.display()));
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ctx(e.to_string().to_lowercase()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ctx(format!("invalid pem: {e}")))?;
            if certs.is_empty() {
                return Err(ctx("no certificate in file".into()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ctx(format!("unusable ca certificate: {e}")))?;
            }
            finish(builder.with_root_certificates(roots))
        }
        HubTls::Fingerprint(text) => {
            let pin = proxmox_client::Fingerprint::from_str(text)
                .map_err(|e| HubError::Tls(e.to_string()))?;
            finish(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider })),
            )
        }
    }
}

/// Accepts exactly the pinned leaf; the handshake signature is still verified, so a peer
/// replaying the certificate without its key is refused.
#[derive(Debug)]
struct PinVerifier {
    pin: proxmox_client::Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if proxmox_client::Fingerprint::of_der(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn approval_names_are_checked() {
        for ok in [
            "a.txt",
            "a.txt.sig",
            "stop-101.txt.alice@example.sig",
            "x.txt.s1.sig",
        ] {
            assert!(valid_approval_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".a.txt",
            "../a.txt",
            "a/b.txt",
            "a\\b.txt",
            "a..txt",
            ".txt",
            "a.sig",
            "a.txt..sig",
            "a.txt.sig.sig2",
            "a b.txt",
            "a.TXT",
            ".txt.sig",
        ] {
            assert!(!valid_approval_name(bad), "{bad}");
        }
        assert!(!valid_approval_name(&format!("{}.txt", "a".repeat(200))));
    }

    #[test]
    fn index_format() {
        assert_eq!(
            parse_index(br#"["a.txt","a.txt.sig"]"#).unwrap(),
            vec!["a.txt", "a.txt.sig"]
        );
        assert!(parse_index(br#"{"files":[]}"#).is_err());
        assert!(parse_index(br#"["a.txt","a.txt"]"#).is_err());
        assert!(parse_index(br#"["../etc/passwd.txt"]"#).is_err());
        let many: Vec<String> = (0..=MAX_INDEX_ENTRIES)
            .map(|i| format!("{i}.txt"))
            .collect();
        assert!(parse_index(&serde_json::to_vec(&many).unwrap()).is_err());
    }

    #[test]
    fn config_is_validated() {
        let bad = |url: &str, host: &str| {
            HubSource::new(HubConfig::new(url, host))
                .unwrap_err()
                .code()
        };
        assert_eq!(bad("http://hub.example/drover", "pve1"), "hub_config");
        assert_eq!(bad("https://hub.example/drover", "../x"), "hub_config");
        assert_eq!(bad("https://hub.example/drover", "a/b"), "hub_config");
        assert_eq!(bad("not a url", "pve1"), "hub_config");
        let mut c = HubConfig::new("https://hub.example/drover/", "pve1");
        c.tls = HubTls::Fingerprint("zz".into());
        assert_eq!(HubSource::new(c).unwrap_err().code(), "hub_tls");
        let s = HubSource::new(HubConfig::new("https://hub.example/drover/", "pve1")).unwrap();
        assert_eq!(
            s.document_url(),
            "https://hub.example/drover/hosts/pve1/desired.toml"
        );
        assert_eq!(s.last_success(), None);
    }
}
