//! The control socket: HTTP/JSON on a Unix socket (`/run/drover/drover.sock`, mode 0660), so
//! operators and scripts talk to the running daemon without any network exposure.
//!
//! Routes (all JSON):
//! - `GET  /v1/status`            the status board
//! - `GET  /v1/approvals`         pending approval requests with the command to sign each
//! - `POST /v1/approvals`         `{"name","payload","signatures":[..]}`: submit a signed approval
//!   or a signed trust rotation (applied at once; answers the version in force)
//! - `GET  /v1/plan`              a fresh read of the host planned against the current document
//! - `GET  /v1/journal?in_flight=true`
//! - `POST /v1/reconcile`         `{"vmid": N}` or `{}` (all guests): now, pre-empting backoff
//! - `POST /v1/suspend`           `{"vmid": N | null, "reason": "..."}`
//! - `POST /v1/resume`            `{"vmid": N | null}`
//!
//! Every refusal is `{"code": "...", "message": "..."}` with a 4xx status.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::approval::files;
use crate::approval::requests::Approvals;
use crate::approval::standing;
use crate::reconcile::engine::Engine;

/// Default socket path (systemd's `RuntimeDirectory=drover`).
pub const DEFAULT_SOCKET: &str = "/run/drover/drover.sock";
/// Largest request body the socket accepts.
const MAX_BODY: usize = 256 * 1024;

/// Writes a submission (payload and signatures) into the approval inbox the way an operator's
/// files arrive there (`files::copy_into_inbox`), for approvals and jobs alike; a failure is
/// the status, code and message to refuse with.
fn place_in_inbox(
    c: &Ctx,
    stem: &str,
    req: &SubmitApproval,
) -> Result<PathBuf, (StatusCode, &'static str, String)> {
    let io_failed = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
    let tmp = tempfile::tempdir().map_err(io_failed)?;
    let payload_path = tmp.path().join(format!("{stem}.txt"));
    std::fs::write(&payload_path, &req.payload).map_err(io_failed)?;
    let mut sig_paths: Vec<PathBuf> = Vec::new();
    for (i, s) in req.signatures.iter().enumerate() {
        let p = tmp.path().join(format!("sig{i}"));
        std::fs::write(&p, s).map_err(io_failed)?;
        sig_paths.push(p);
    }
    files::copy_into_inbox(&c.engine.approvals().inbox_dir, &payload_path, &sig_paths)
        .map_err(|e| (StatusCode::BAD_REQUEST, "bad_approval", e))
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

#[derive(Clone)]
struct Ctx {
    engine: Engine,
}

/// At most this many connections are served at once; more are answered `busy` and closed at
/// once, so a flood of idle clients can never take the file handles PVE calls and the journal
/// need.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this time (an idle connection is closed).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// No connection lives longer (a plan reads PVE, which takes seconds, not minutes).
pub const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);
/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the control API on `path` until `shutdown` resolves: one request per connection,
/// at most [`MAX_CONNECTIONS`] at once, [`HEADER_TIMEOUT`] to send the head, bodies capped at
/// 256 KiB.
pub async fn serve(
    path: &Path,
    engine: Engine,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket from a crashed run would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    let app = router(engine);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file handles (EMFILE) or similar: wait for some to be freed
                    // rather than spinning.
                    tracing::warn!(socket = %path.display(), "control socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: say so without waiting for the client, and free the handle.
            let body = json!({
                "code": "busy",
                "message": format!("the control socket already serves {MAX_CONNECTIONS} connections; try again"),
            })
            .to_string();
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.try_write(reply.as_bytes());
            tracing::debug!("control socket busy: connection refused");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if tokio::time::timeout(CONNECTION_DEADLINE, conn)
                .await
                .is_err()
            {
                tracing::debug!("control connection closed at its deadline");
            }
            drop(slot);
        });
    }
}

fn router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/approvals", get(list_approvals).post(submit_approval))
        .route("/v1/journal", get(journal))
        .route("/v1/plan", get(plan))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/suspend", post(suspend))
        .route("/v1/resume", post(resume))
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see `drover --help` for what the daemon answers",
            )
        })
        .method_not_allowed_fallback(|| async {
            refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Ctx { engine })
}

async fn status(State(c): State<Ctx>) -> Response {
    Json(crate::operator::status::status_json(&c.engine)).into_response()
}

async fn list_approvals(State(c): State<Ctx>) -> Response {
    let domain = c.engine.trust_domain();
    // Reading the request files is blocking file I/O: off the async workers.
    let engine = c.engine.clone();
    let pending = tokio::task::spawn_blocking(move || engine.approvals().pending())
        .await
        .unwrap_or_default();
    let rows: Vec<Value> = pending
        .into_iter()
        .map(|(p, text)| {
            json!({"file": p, "text": text, "sign": Approvals::sign_command(&domain, &p)})
        })
        .collect();
    Json(json!({"pending": rows})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitApproval {
    name: String,
    payload: String,
    signatures: Vec<String>,
}

async fn submit_approval(
    State(c): State<Ctx>,
    body: Result<Json<SubmitApproval>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return json_rejection(e),
    };
    let stem = req.name.trim_end_matches(".txt");
    if stem.is_empty()
        || stem.len() > 100
        || !stem
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        || stem.starts_with('.')
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_name",
            "the approval name may only hold letters, digits, '-', '_' and '.'",
        );
    }
    if req.payload.len() as u64 > files::MAX_PAYLOAD_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            "payload_too_large",
            "the payload is too large",
        );
    }
    if req.signatures.is_empty() || req.signatures.len() > files::MAX_SIGNATURES {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_signatures",
            format!(
                "between 1 and {} signatures are accepted",
                files::MAX_SIGNATURES
            ),
        );
    }
    // Check what can be checked without a step, so the operator hears at once why a
    // signature will not do; the gate verifies again, bound to the step, before anything runs.
    let crate::approval::trust::Trust::Valid(trust) = c.engine.trust() else {
        return refuse(
            StatusCode::CONFLICT,
            "trust_store_invalid",
            "the daemon has no valid trust document, so no approval can be verified; fix it first",
        );
    };
    let sigs: Vec<&[u8]> = req.signatures.iter().map(|s| s.as_bytes()).collect();
    if gate::is_job_document(req.payload.as_bytes()) {
        return submit_job(&c, stem, &req, &trust, &sigs);
    }
    let rotation = crate::approval::files::is_trust_document(req.payload.as_bytes());
    let parsed = gate::ApprovalPayload::parse(req.payload.as_bytes()).ok();
    // (code, message, authenticated)
    let verdict: Result<(), (String, String, bool)> = if rotation {
        gate::verify_rotation(
            &trust,
            req.payload.as_bytes(),
            &sigs,
            crate::clock::unix_now(),
            crate::approval::trust::clock_floor(c.engine.store()),
        )
        .map(|_| ())
        .map_err(|r| (r.code.as_str().to_string(), r.message, r.authenticated))
    } else {
        // The gate's order: the binding to the agent's own (pending) step comes before any
        // signature is looked at, and a used nonce is never accepted again.
        let standing = match parsed.clone() {
            None => None,
            Some(p) => {
                let engine = c.engine.clone();
                let name = format!("{stem}.txt");
                tokio::task::spawn_blocking(move || {
                    let consumed = engine.store().nonce_consumed(&p.nonce).unwrap_or(false);
                    let pending = engine.approvals().pending();
                    standing::replay(&p, consumed)
                        .or_else(|| standing::binding(&p, Some(&name), &pending))
                })
                .await
                .unwrap_or(None)
            }
        };
        match standing {
            Some(r) => Err((r.code.to_string(), r.message, false)),
            None => gate::verify_offline(
                &trust,
                req.payload.as_bytes(),
                &sigs,
                crate::clock::unix_now(),
            )
            .map(|_| ())
            .map_err(|r| (r.code.as_str().to_string(), r.message, r.authenticated)),
        }
    };
    if let Err((code, message, authenticated)) = verdict {
        // Refused before it reached the inbox, but still a gate decision: audited, so an
        // attempt with a stranger's key is on record. What an unauthenticated payload names
        // is only a claim: it is filed under no guest, and the claim goes into the detail.
        let detail = match (&parsed, authenticated) {
            (Some(p), false) if !message.contains("unverified") => format!(
                "{message} (the approval claims {} of CT {}, unverified)",
                p.op.as_str(),
                p.vmid
            ),
            _ => message.clone(),
        };
        let d = crate::store::Decision {
            vmid: parsed.as_ref().filter(|_| authenticated).map(|p| p.vmid),
            op: match (&parsed, rotation) {
                (_, true) => "rotate_trust".to_string(),
                (Some(p), false) => p.op.as_str().to_string(),
                (None, false) => "approval".to_string(),
            },
            allowed: false,
            code: code.clone(),
            message: detail,
            signers: Vec::new(),
            authenticated,
            source: PathBuf::from(format!("submitted on the control socket as {stem}.txt")),
        };
        c.engine.metrics().gate_decision(&d.code);
        // The same refused submission repeated (a script retrying) is audited once.
        if c.engine
            .approvals()
            .first_report_of(req.payload.as_bytes(), &sigs, &d.code)
        {
            c.engine.store().audit(&d);
        }
        // The code travels in its own field; the message is the sentence alone.
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, &code, message);
    }
    match place_in_inbox(&c, stem, &req) {
        Ok(p) if rotation => {
            // Applied now, through the same path as a rotation found on disk (journal first).
            c.engine.rotate_trust();
            let version = match c.engine.trust() {
                crate::approval::trust::Trust::Valid(t) => Some(t.version),
                crate::approval::trust::Trust::Invalid { .. } => None,
            };
            Json(json!({"accepted_into_inbox": p, "trust_version": version})).into_response()
        }
        Ok(p) => {
            // Let the guest's lane look at it now.
            if let Ok(parsed) = gate::ApprovalPayload::parse(req.payload.as_bytes()) {
                c.engine.trigger(Some(parsed.vmid));
            }
            Json(json!({"accepted_into_inbox": p})).into_response()
        }
        Err((status, code, message)) => refuse(status, code, message),
    }
}

/// A signed job submitted on the socket: what can be told without the guest's lane (the
/// signatures and window offline, a spent nonce, another job of the guest in progress) is
/// answered at once; the lane verifies it against the host's current state before it runs.
fn submit_job(
    c: &Ctx,
    stem: &str,
    req: &SubmitApproval,
    trust: &gate::TrustStore,
    sigs: &[&[u8]],
) -> Response {
    let payload = req.payload.as_bytes();
    let now = crate::clock::unix_now();
    let store = c.engine.store();
    let verdict: Result<gate::JobPayload, (String, String, bool)> = match gate::verify_job_offline(
        trust, payload, sigs, now,
    ) {
        Err(r) => Err((r.code.as_str().to_string(), r.message, r.authenticated)),
        Ok(_) => match gate::JobPayload::parse(payload) {
            Err(r) => Err((r.code.as_str().to_string(), r.message, false)),
            Ok(p) => {
                let spent = store.nonce_consumed(&p.nonce).unwrap_or(false)
                    || store.job(&p.nonce).ok().flatten().is_some();
                let busy = store.active_job(p.vmid).ok().flatten();
                if spent {
                    Err((
                        "replayed".into(),
                        format!("job {} was already accepted; a job runs once", p.nonce),
                        true,
                    ))
                } else if let Some(j) = busy {
                    Err((
                        "job_in_progress".into(),
                        format!(
                            "CT {} has job {} ({}) in progress (phase {}); submit this one when it has ended",
                            p.vmid, j.id, j.kind, j.phase
                        ),
                        true,
                    ))
                } else {
                    Ok(p)
                }
            }
        },
    };
    let p = match verdict {
        Ok(p) => p,
        Err((code, message, authenticated)) => {
            let d = crate::store::Decision {
                vmid: None,
                op: "job".into(),
                allowed: false,
                code: code.clone(),
                message: message.clone(),
                signers: Vec::new(),
                authenticated,
                source: PathBuf::from(format!("submitted on the control socket as {stem}.txt")),
            };
            c.engine.metrics().gate_decision(&d.code);
            if c.engine.approvals().first_report_of(payload, sigs, &d.code) {
                store.audit(&d);
            }
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, &code, message);
        }
    };
    match place_in_inbox(c, stem, req) {
        Ok(path) => {
            c.engine.trigger(Some(p.vmid));
            Json(json!({"accepted_into_inbox": path, "job": p.kind.as_str(), "vmid": p.vmid}))
                .into_response()
        }
        Err((status, code, message)) => refuse(status, code, message),
    }
}

async fn plan(State(c): State<Ctx>) -> Response {
    match c.engine.pass_plan_only().await {
        Ok(p) => Json(json!({
            "plan": p.to_json(),
            "text": p.to_text(),
            "changes": !p.plan.is_empty(),
            "stale": c.engine.desired().is_some_and(|d| d.degraded),
        }))
        .into_response(),
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            "pve_unavailable",
            format!("reading the host from PVE: {e}"),
        ),
    }
}

#[derive(Deserialize)]
struct JournalQuery {
    #[serde(default)]
    in_flight: bool,
}

async fn journal(State(c): State<Ctx>, Query(q): Query<JournalQuery>) -> Response {
    match c.engine.store().listing(q.in_flight, 200) {
        Ok(rows) => Json(json!({"steps": rows})).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "journal", e.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    vmid: Option<u32>,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_target(
    body: Result<Json<Target>, axum::extract::rejection::JsonRejection>,
) -> Result<Target, Box<Response>> {
    body.map(|Json(t)| t)
        .map_err(|e| Box::new(json_rejection(e)))
}

/// A body that is not the JSON a route takes: 413 `body_too_large` past the cap, else 400
/// `bad_request` with serde's sentence (which names the field).
fn json_rejection(e: axum::extract::rejection::JsonRejection) -> Response {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    } else {
        refuse(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

async fn reconcile(
    State(c): State<Ctx>,
    body: Result<Json<Target>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let t = match parse_target(body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if let Some(vmid) = t.vmid {
        let managed = c
            .engine
            .desired()
            .is_some_and(|d| d.doc.guests.contains_key(&vmid));
        if !managed {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown_guest",
                format!("CT {vmid} is not in the desired document; there is nothing to reconcile"),
            );
        }
    }
    c.engine.trigger(t.vmid);
    Json(json!({"triggered": t.vmid})).into_response()
}

async fn suspend(
    State(c): State<Ctx>,
    body: Result<Json<Target>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let t = match parse_target(body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(reason) = t.reason.filter(|r| !r.trim().is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "a suspension needs a reason (--reason)",
        );
    };
    match c.engine.store().suspend(t.vmid, &reason) {
        Ok(()) => {
            c.engine.status().mark_suspended(t.vmid);
            Json(json!({"suspended": t.vmid, "reason": reason})).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "journal", e.to_string()),
    }
}

async fn resume(
    State(c): State<Ctx>,
    body: Result<Json<Target>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let t = match parse_target(body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match c.engine.store().resume(t.vmid) {
        Ok(found) => {
            c.engine.trigger(t.vmid);
            Json(json!({"resumed": t.vmid, "was_suspended": found})).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "journal", e.to_string()),
    }
}

/// A minimal HTTP/1.1 client for the socket (the CLI side).
pub mod client {
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper_util::rt::TokioIo;

    /// How long a call waits for the daemon's whole answer. Every route the CLI asks answers
    /// from memory or a few local reads in well under a second; a daemon that takes this long
    /// is stopped (SIGSTOP, a debugger) or wedged, and the operator is told so instead of
    /// waiting forever.
    pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

    /// After the connection ended, how long an answer it delivered may take to be read out.
    const READ_OUT_AFTER_CLOSE: Duration = Duration::from_secs(1);

    /// Why the daemon could not be asked.
    #[derive(Debug, thiserror::Error)]
    pub enum ControlError {
        #[error("the drover daemon is not running (no control socket at {0})")]
        NotRunning(String),
        #[error("talking to the daemon at {path}: {message}")]
        Io { path: String, message: String },
        #[error(
            "the drover daemon at {path} did not answer within {} s; it may still act on the request (is it stopped or overloaded? see `systemctl status drover`)",
            .within.as_secs()
        )]
        NoAnswer { path: String, within: Duration },
    }

    /// Sends one request and returns (status, JSON body), within [`ANSWER_WITHIN`].
    pub async fn call(
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ControlError> {
        call_within(socket, method, path, body, ANSWER_WITHIN).await
    }

    /// [`call`] with its own deadline for the whole exchange: connect, request and answer.
    pub async fn call_within(
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        within: Duration,
    ) -> Result<(u16, serde_json::Value), ControlError> {
        match tokio::time::timeout(within, exchange(socket, method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::NoAnswer {
                path: socket.display().to_string(),
                within,
            }),
        }
    }

    async fn exchange(
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ControlError> {
        let sp = socket.display().to_string();
        let io_err = |m: String| ControlError::Io {
            path: sp.clone(),
            message: m,
        };
        let stream = match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning(sp));
            }
            Err(e) => return Err(io_err(e.to_string())),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io_err(e.to_string()))?;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "drover")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| io_err(e.to_string()))?;
        let answer = async {
            sender.ready().await.map_err(|e| io_err(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| io_err(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| io_err(e.to_string()))?
                .to_bytes();
            Ok::<_, ControlError>((status, body))
        };
        // The connection is driven here, beside the request, not in a task of its own: when
        // the daemon closes it (at its connection cap, a header timeout, a restart) at the
        // moment the request is queued, hyper can end the connection with the request still
        // in its queue, and that request's answer never comes. Seeing the connection end is
        // what ends the call then.
        tokio::pin!(conn, answer);
        let (status, body) = tokio::select! {
            biased;
            r = &mut answer => r?,
            ended = &mut conn => {
                match tokio::time::timeout(READ_OUT_AFTER_CLOSE, &mut answer).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io_err(match ended {
                            Ok(()) => "the daemon closed the connection without answering".into(),
                            Err(e) => format!("the connection ended without an answer: {e}"),
                        }));
                    }
                }
            }
        };
        let json = serde_json::from_slice(&body)
            .map_err(|e| io_err(format!("the answer is not JSON: {e}")))?;
        Ok((status, json))
    }
}
