//! One error type for every client call, with the classification the engine needs.
//!
//! Classification follows `proxmox-api.md` §5: the text comes from the body's `message`
//! (libpve-http-server-perl >= 5.2.0) or, for older servers, from the status line's reason
//! phrase. The engine decides about retries; this crate never retries a call by itself.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::upid::Upid;

/// An error from a PVE call, with the method and path it happened on.
#[derive(Clone, Debug)]
pub struct Error {
    method: Option<reqwest::Method>,
    path: String,
    kind: ErrorKind,
}

/// What went wrong.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 401: the token is wrong, expired or disabled. Never retried (PVE delays every 401 ~3 s).
    #[error("authentication failed (http 401): {message}")]
    Unauthorized { message: String },

    /// Any other HTTP error status from PVE (400, 403, 500, 501, 595, 596, 599, ...).
    #[error("{message} (http {status})")]
    Api {
        status: u16,
        /// First line of the body's `message` or of the reason phrase, without the newline.
        message: String,
        /// Per-parameter errors of a 400 (`{"errors":{"memory":"..."}}`).
        errors: BTreeMap<String, String>,
    },

    /// The connection could not be set up (refused, DNS, connect timeout). Nothing was sent.
    #[error("cannot connect: {message}")]
    Connect { message: String },

    /// The TLS handshake failed: the server's certificate does not match the pin/CA.
    /// Nothing was sent.
    #[error("tls: server certificate not trusted: {message}")]
    Tls { message: String },

    /// The request timed out after it may have reached the server.
    #[error("timed out after {timeout:?} (the request may have been processed)")]
    Timeout { timeout: Duration },

    /// The connection broke after the request was sent (reset, closed, bad framing).
    #[error("connection failed after sending (the request may have been processed): {message}")]
    Transport { message: String },

    /// The response body was larger than the configured cap; reading stopped at the cap.
    #[error("response body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    /// The response was not the JSON shape this endpoint returns.
    #[error("unexpected response: {message}")]
    Decode { message: String },

    /// `wait_task` reached its deadline; the task keeps running and can be re-attached to.
    #[error("task {upid} still running after {waited:?}")]
    WaitDeadline { upid: Box<Upid>, waited: Duration },

    /// The client could not be built or a caller passed an invalid value.
    #[error("{message}")]
    Config { message: String },
}

/// The "already in the target state" conditions of `proxmox-api.md` §5, which the engine treats
/// as convergence signals rather than failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlreadyInState {
    /// `CT 101 already running` (start).
    Running,
    /// `CT 101 not running` / `VM 101 not running` (stop, shutdown, reboot).
    NotRunning,
    /// `CT 101 already exists on node 'pve1'` (create).
    Exists,
    /// `Configuration file '...' does not exist` (any call on a missing CT).
    DoesNotExist,
}

impl Error {
    pub(crate) fn new(
        method: Option<reqwest::Method>,
        path: impl Into<String>,
        kind: ErrorKind,
    ) -> Self {
        Error {
            method,
            path: path.into(),
            kind,
        }
    }

    pub(crate) fn config(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::new(
            None,
            context,
            ErrorKind::Config {
                message: message.into(),
            },
        )
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
    /// HTTP method of the failed call (`None` for setup errors and task waiting).
    pub fn method(&self) -> Option<&reqwest::Method> {
        self.method.as_ref()
    }
    /// API path of the failed call (below `/api2/json`), or what was being done.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// HTTP status, when PVE answered.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ErrorKind::Unauthorized { .. } => Some(401),
            ErrorKind::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// PVE's message text, when PVE answered.
    pub fn message(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Unauthorized { message } | ErrorKind::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    fn api_message(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// A stable machine-readable code for logs, refusals and metrics.
    pub fn code(&self) -> &'static str {
        match &self.kind {
            ErrorKind::Unauthorized { .. } => "pve_unauthorized",
            ErrorKind::Connect { .. } => "pve_connect",
            ErrorKind::Tls { .. } => "pve_tls_untrusted",
            ErrorKind::Timeout { .. } => "pve_timeout",
            ErrorKind::Transport { .. } => "pve_transport",
            ErrorKind::BodyTooLarge { .. } => "pve_body_too_large",
            ErrorKind::Decode { .. } => "pve_bad_response",
            ErrorKind::WaitDeadline { .. } => "pve_task_wait_deadline",
            ErrorKind::Config { .. } => "pve_client_config",
            ErrorKind::Api { .. } => {
                if self.is_lock() {
                    "pve_locked"
                } else if self.is_digest_mismatch() {
                    "pve_digest_mismatch"
                } else if let Some(a) = self.already_in_state() {
                    match a {
                        AlreadyInState::Running => "pve_already_running",
                        AlreadyInState::NotRunning => "pve_not_running",
                        AlreadyInState::Exists => "pve_already_exists",
                        AlreadyInState::DoesNotExist => "pve_does_not_exist",
                    }
                } else if self.is_permission() {
                    "pve_permission"
                } else if self.param_errors().is_some() {
                    "pve_bad_parameter"
                } else if self.is_not_found() {
                    "pve_not_found"
                } else if self.is_transient() {
                    "pve_transient"
                } else {
                    "pve_api_error"
                }
            }
        }
    }

    /// Worth retrying later (with backoff): PVE-side timeouts (`got timeout`), no quorum,
    /// `got no worker upid`, the proxy pseudo-statuses 595/596/599, connection failures and
    /// client-side timeouts. Never true for 401, 403, 400 or decode errors.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            ErrorKind::Connect { .. } | ErrorKind::Timeout { .. } | ErrorKind::Transport { .. } => {
                true
            }
            ErrorKind::Api {
                status, message, ..
            } => {
                matches!(status, 595 | 596 | 599)
                    || (*status >= 500
                        && (message.contains("got timeout")
                            || message.contains("got no worker upid")
                            || message.contains("no quorum")))
            }
            _ => false,
        }
    }

    /// False only when PVE certainly did not act on the request: it was never sent (connect or
    /// TLS failure, bad configuration) or PVE answered with a synchronous error (4xx/5xx other
    /// than the proxy pseudo-statuses). After a client timeout, a broken connection or a
    /// 596 the operation may still complete server-side: re-read state before re-sending.
    pub fn may_have_been_processed(&self) -> bool {
        match &self.kind {
            ErrorKind::Connect { .. } | ErrorKind::Tls { .. } | ErrorKind::Config { .. } => false,
            ErrorKind::Unauthorized { .. } => false,
            ErrorKind::Api { status, .. } => matches!(status, 596 | 597 | 599),
            ErrorKind::Timeout { .. }
            | ErrorKind::Transport { .. }
            | ErrorKind::BodyTooLarge { .. }
            | ErrorKind::Decode { .. }
            | ErrorKind::WaitDeadline { .. } => true,
        }
    }

    /// `CT is locked (...)` (config `lock` property) or `can't lock file ... got timeout`
    /// (config flock held by another worker): retry later, never unlock.
    pub fn is_lock(&self) -> bool {
        self.api_message().is_some_and(|m| {
            m.contains("is locked (")
                || (m.contains("can't lock file") && m.contains("got timeout"))
        })
    }

    /// `detected modified configuration - file changed by other user? Try again.`: re-read the
    /// config, re-plan, retry.
    pub fn is_digest_mismatch(&self) -> bool {
        self.api_message()
            .is_some_and(|m| m.contains("detected modified configuration"))
    }

    /// Which "already in that state" condition this is, if any.
    pub fn already_in_state(&self) -> Option<AlreadyInState> {
        let m = self.api_message()?;
        if m.contains("already running") {
            Some(AlreadyInState::Running)
        } else if m.ends_with(" not running") || m.contains(" not running ") {
            Some(AlreadyInState::NotRunning)
        } else if m.contains("already exists") {
            Some(AlreadyInState::Exists)
        } else if m.starts_with("Configuration file") && m.contains("does not exist") {
            Some(AlreadyInState::DoesNotExist)
        } else {
            None
        }
    }

    /// 403 `Permission check failed (...)`, including root-only restrictions for tokens.
    pub fn is_permission(&self) -> bool {
        matches!(&self.kind, ErrorKind::Api { status: 403, .. })
    }

    /// The per-parameter errors of a 400 parameter verification failure.
    pub fn param_errors(&self) -> Option<&BTreeMap<String, String>> {
        match &self.kind {
            ErrorKind::Api {
                status: 400,
                errors,
                ..
            } if !errors.is_empty() => Some(errors),
            _ => None,
        }
    }

    /// The object does not exist: HTTP 404, a missing CT config, `no such task`, or
    /// `no such resource`.
    pub fn is_not_found(&self) -> bool {
        match &self.kind {
            ErrorKind::Api {
                status,
                message,
                errors,
            } => {
                *status == 404
                    || self.already_in_state() == Some(AlreadyInState::DoesNotExist)
                    || message.contains("no such resource")
                    || errors.values().any(|e| e.contains("no such task"))
            }
            _ => false,
        }
    }

    pub fn is_unauthorized(&self) -> bool {
        matches!(self.kind, ErrorKind::Unauthorized { .. })
    }

    pub fn is_wait_deadline(&self) -> bool {
        matches!(self.kind, ErrorKind::WaitDeadline { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}: {}", self.path, self.kind),
            None => write!(f, "{}: {}", self.path, self.kind),
        }
    }
}

/// The kind is part of this error's own message, so it is not reported again as a source.
impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> Error {
        Error::new(
            Some(reqwest::Method::POST),
            "/nodes/pve1/lxc/101/status/start",
            ErrorKind::Api {
                status,
                message: message.into(),
                errors: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn classification() {
        let e = api(500, "CT 101 already running");
        assert_eq!(e.already_in_state(), Some(AlreadyInState::Running));
        assert_eq!(e.code(), "pve_already_running");
        assert!(!e.is_transient() && !e.may_have_been_processed());
        assert_eq!(
            e.to_string(),
            "POST /nodes/pve1/lxc/101/status/start: CT 101 already running (http 500)"
        );
        assert_eq!(
            api(500, "VM 101 not running").already_in_state(),
            Some(AlreadyInState::NotRunning)
        );
        assert_eq!(
            api(500, "CT 101 already exists on node 'pve1'").already_in_state(),
            Some(AlreadyInState::Exists)
        );
        let nf = api(
            500,
            "Configuration file 'nodes/pve1/lxc/999.conf' does not exist",
        );
        assert!(nf.is_not_found());
        assert_eq!(nf.already_in_state(), Some(AlreadyInState::DoesNotExist));
        assert!(api(500, "CT is locked (backup)").is_lock());
        let lt = api(
            500,
            "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout",
        );
        assert!(lt.is_lock() && lt.is_transient());
        assert!(api(500, "cluster not ready - no quorum?").is_transient());
        let p = api(596, "Connection timed out");
        assert!(p.is_transient() && p.may_have_been_processed());
        assert!(api(595, "Connection refused").is_transient());
        assert!(!api(595, "Connection refused").may_have_been_processed());
        assert!(api(403, "Permission check failed (/vms/101, VM.PowerMgmt)").is_permission());
        assert!(
            api(
                500,
                "detected modified configuration - file changed by other user? Try again."
            )
            .is_digest_mismatch()
        );
        assert!(!api(500, "snapshot feature is not available").is_transient());
    }
}
