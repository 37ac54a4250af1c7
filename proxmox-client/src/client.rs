//! The HTTP core: one pinned-TLS reqwest client, requests with token auth, capped body reads,
//! and the mapping of every failure into [`Error`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::auth::ApiToken;
use crate::error::{Error, ErrorKind};
use crate::params::Params;
use crate::tls::{TlsTrust, client_config};

/// How to reach and trust one PVE API endpoint.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://localhost:8006` (a trailing `/api2/json` is accepted too).
    pub base_url: String,
    pub token: ApiToken,
    pub tls: TlsTrust,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Whole request, from connecting to the end of the body. pveproxy gives up on a proxied
    /// call after 30 s of inactivity (596), so keep this above 30 s.
    pub request_timeout: Duration,
    /// Idle pooled connections are dropped after this; pveproxy closes them after 5 s, so it
    /// is capped at 4 s.
    pub pool_idle_timeout: Duration,
    /// Largest response body read; larger bodies fail with `BodyTooLarge` without being
    /// buffered.
    pub max_body_bytes: usize,
    /// Told about every request this client sends, once it has its answer (or failed).
    pub observer: Option<RequestObserver>,
}

/// Sees every request: the method and its result's code (the HTTP status, or the error's
/// stable code when there was no HTTP answer). The caller counts them (the agent's
/// `drover_pve_api_requests_total`), so no call site can forget to.
#[derive(Clone)]
pub struct RequestObserver(pub Arc<ObserveRequest>);

/// What a [`RequestObserver`] calls: `(method, code)`.
pub type ObserveRequest = dyn Fn(&Method, &str) + Send + Sync;

impl std::fmt::Debug for RequestObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestObserver")
    }
}

impl ClientConfig {
    /// Defaults: connect 5 s, request 60 s, idle 4 s, body cap 16 MiB.
    pub fn new(base_url: impl Into<String>, token: ApiToken, tls: TlsTrust) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            token,
            tls,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
            max_body_bytes: 16 * 1024 * 1024,
            observer: None,
        }
    }
}

/// Longest idle time a pooled connection may have (pveproxy's keep-alive is 5 s).
pub const MAX_POOL_IDLE: Duration = Duration::from_secs(4);

/// Typed PVE API client. Cheap to clone; clones share the connection pool.
///
/// It holds no business logic and never retries: every call is sent once and every failure
/// is returned as an [`Error`] for the caller to classify.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// `https://host:port/api2/json`, without trailing slash.
    api_base: String,
    auth: HeaderValue,
    token_id: String,
    request_timeout: Duration,
    max_body_bytes: usize,
    observer: Option<RequestObserver>,
}

/// `{"data": T, "total": n}`.
#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
    #[serde(default, deserialize_with = "crate::lenient::opt_u64")]
    total: Option<u64>,
}

/// Characters kept verbatim in a path segment; `:`, `@` and `!` (UPIDs, token users) are legal
/// there.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@')
    .remove(b'!');

/// Percent-encodes one path segment.
pub(crate) fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Client {
    /// Builds the client. Fails when the URL is not https, or the TLS material (certificate
    /// file, CA file) cannot be read.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let url = url::Url::parse(&config.base_url).map_err(|e| {
            Error::config(format!("pve base url {:?}", config.base_url), e.to_string())
        })?;
        if url.scheme() != "https" {
            return Err(Error::config(
                format!("pve base url {:?}", config.base_url),
                "must use https",
            ));
        }
        let mut base = config.base_url.trim_end_matches('/').to_owned();
        if !base.ends_with("/api2/json") {
            base.push_str("/api2/json");
        }
        let tls = client_config(&config.tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(config.pool_idle_timeout.min(MAX_POOL_IDLE))
            .pool_max_idle_per_host(8)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("drover-proxmox-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::config("building the http client", error_chain(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                api_base: base,
                auth: config.token.header_value()?,
                token_id: config.token.token_id().to_owned(),
                request_timeout: config.request_timeout,
                max_body_bytes: config.max_body_bytes,
                observer: config.observer,
            }),
        })
    }

    /// The token id this client authenticates as (`user@realm!tokenid`).
    pub fn token_id(&self) -> &str {
        &self.inner.token_id
    }

    /// Sends one request and decodes `data` as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &Params,
        vmid: Option<u32>,
    ) -> Result<(T, Option<u64>), Error> {
        let span = tracing::debug_span!("pve_call", method = %method, path = %path, vmid);
        let result = self
            .call_inner(method.clone(), path, params)
            .instrument(span)
            .await;
        if let Some(observer) = &self.inner.observer {
            let code = match &result {
                Ok(_) => "200".to_string(),
                Err(e) => e
                    .status()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.code().to_string()),
            };
            (observer.0)(&method, &code);
        }
        result
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &Params,
    ) -> Result<(T, Option<u64>), Error> {
        let err = |kind: ErrorKind| Error::new(Some(method.clone()), path, kind);
        let url = format!("{}{}", self.inner.api_base, path);
        let mut req = self
            .inner
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(ACCEPT, "application/json");
        if !params.is_empty() {
            req = if method == Method::GET || method == Method::DELETE {
                req.query(params.pairs())
            } else {
                req.form(params.pairs())
            };
        }
        let started = Instant::now();
        let mut resp = req.send().await.map_err(|e| err(self.map_send_error(&e)))?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pve response"
        );

        if status.as_u16() == 401 {
            let message = reason.unwrap_or_else(|| "authentication failed".to_owned());
            return Err(err(ErrorKind::Unauthorized { message }));
        }
        if !status.is_success() {
            // Error bodies are small; if one is not, fall back to the reason phrase.
            let body = read_capped(&mut resp, self.inner.max_body_bytes.min(64 * 1024))
                .await
                .unwrap_or_default();
            let (message, errors) = parse_error_body(&body);
            let message = message
                .or(reason)
                .or_else(|| status.canonical_reason().map(str::to_owned))
                .unwrap_or_else(|| "http error".to_owned());
            return Err(err(ErrorKind::Api {
                status: status.as_u16(),
                message,
                errors,
            }));
        }
        let body = read_capped(&mut resp, self.inner.max_body_bytes)
            .await
            .map_err(|k| err(self.map_body_error(k)))?;
        let env: Envelope<T> = serde_json::from_slice(&body).map_err(|e| {
            err(ErrorKind::Decode {
                message: format!("{e} (body starts with {:?})", preview(&body)),
            })
        })?;
        Ok((env.data, env.total))
    }

    fn map_send_error(&self, e: &reqwest::Error) -> ErrorKind {
        if let Some(tls) = find_rustls_error(e) {
            return ErrorKind::Tls {
                message: tls.to_string(),
            };
        }
        let chain = error_chain(e);
        if chain.contains("invalid peer certificate") {
            return ErrorKind::Tls { message: chain };
        }
        if e.is_connect() {
            return ErrorKind::Connect {
                message: error_chain(e),
            };
        }
        if e.is_timeout() {
            return ErrorKind::Timeout {
                timeout: self.inner.request_timeout,
            };
        }
        ErrorKind::Transport {
            message: error_chain(e),
        }
    }

    fn map_body_error(&self, e: BodyError) -> ErrorKind {
        match e {
            BodyError::TooLarge(limit) => ErrorKind::BodyTooLarge { limit },
            BodyError::Read(e) if e.is_timeout() => ErrorKind::Timeout {
                timeout: self.inner.request_timeout,
            },
            BodyError::Read(e) => ErrorKind::Transport {
                message: error_chain(&e),
            },
        }
    }
}

enum BodyError {
    TooLarge(usize),
    Read(reqwest::Error),
}

/// Reads the body chunk by chunk and stops as soon as it would exceed `limit`, so a huge body
/// is never buffered.
async fn read_capped(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf = Vec::with_capacity(
        resp.content_length()
            .map_or(8192, |l| l as usize)
            .min(limit),
    );
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `{"message": "...\n", "errors": {...}}` from PVE >= 5.2.0 of the http server.
fn parse_error_body(body: &[u8]) -> (Option<String>, BTreeMap<String, String>) {
    #[derive(Deserialize)]
    struct ErrBody {
        #[serde(default)]
        message: Option<serde_json::Value>,
        #[serde(default)]
        errors: Option<serde_json::Value>,
    }
    let Ok(b) = serde_json::from_slice::<ErrBody>(body) else {
        return (None, BTreeMap::new());
    };
    let message = b
        .message
        .and_then(|m| m.as_str().map(|s| s.trim_end().to_owned()))
        .filter(|m| !m.is_empty());
    let mut errors = BTreeMap::new();
    if let Some(serde_json::Value::Object(map)) = b.errors {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.trim_end().to_owned(),
                other => other.to_string(),
            };
            errors.insert(k, text);
        }
    }
    (message, errors)
}

fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned()
}

/// The rustls error behind a failed handshake, if any. It sits inside an `io::Error`
/// (whose `source()` skips the wrapped error, hence the explicit `get_ref`).
fn find_rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r.clone());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(r) = find_rustls_error(inner)
    {
        return Some(r);
    }
    e.source().and_then(find_rustls_error)
}

/// The error and its sources as one line, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_parsing() {
        let (m, e) = parse_error_body(
            br#"{"data":null,"errors":{"memory":"value must have a minimum value of 16\n"},"message":"Parameter verification failed.\n"}"#,
        );
        assert_eq!(m.as_deref(), Some("Parameter verification failed."));
        assert_eq!(
            e.get("memory").map(String::as_str),
            Some("value must have a minimum value of 16")
        );
        let (m, e) = parse_error_body(br#"{"data":null}"#);
        assert!(m.is_none() && e.is_empty());
        let (m, _) = parse_error_body(b"<html>");
        assert!(m.is_none());
    }

    #[test]
    fn segments_keep_upid_characters() {
        assert_eq!(
            seg("UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:drover@pve!agent:"),
            "UPID:pve1:0003A2B1:01C8E2F0:6734A1B2:vzstart:101:drover@pve!agent:"
        );
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
