//! HTTPS, auth, parameter decoding and routing: the PVE API surface of the simulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::state::{ApiError, Host};
use crate::{SimError, SimTls, io_err, schema};

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The certificate in use (replaceable to test pin re-reads).
pub struct CertState {
    pub cert_pem: String,
    pub config: Arc<rustls::ServerConfig>,
    der: Vec<u8>,
}

impl CertState {
    pub fn new(tls: &SimTls) -> Result<CertState, SimError> {
        let (cert_pem, key_pem) = match tls {
            SimTls::Generate => {
                let ck = rcgen::generate_simple_self_signed(vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                    "pve1".into(),
                ])
                .map_err(|e| io_err("generating a certificate", e))?;
                (ck.cert.pem(), ck.signing_key.serialize_pem())
            }
            SimTls::Files { cert_pem, key_pem } => (
                std::fs::read_to_string(cert_pem)
                    .map_err(|e| io_err("reading the certificate", e))?,
                std::fs::read_to_string(key_pem).map_err(|e| io_err("reading the key", e))?,
            ),
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| io_err("parsing the certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| io_err("parsing the key", e))?;
        let der = certs
            .first()
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| SimError::Config("the certificate file holds no certificate".into()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io_err("tls", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| io_err("tls", e))?;
        Ok(CertState {
            cert_pem,
            config: Arc::new(config),
            der,
        })
    }

    pub fn fingerprint(&self) -> String {
        Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// pve-http-server's keep-alive idle timeout (`AnyEvent.pm`: `$self->{timeout} = 5`).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<crate::Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let config = shared
            .cert
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            shared
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    // Fault `reset_rate`: an error from the service makes hyper abort the
                    // connection without a response, as a proxy dropping it would.
                    if req.uri().path().starts_with("/api2/") && shared.lock().maybe_reset() {
                        return Err(std::io::Error::other("injected connection reset"));
                    }
                    Ok(handle(shared, req).await)
                }
            });
            // The header read timeout also bounds the idle time between keep-alive requests.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn reply(status: u16, reason: &str, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    // PVE puts the message's first line in the status line (older versions only there).
    let first = reason
        .lines()
        .next()
        .unwrap_or("")
        .replace(['\r', '\n'], " ");
    if let Ok(rp) = hyper::ext::ReasonPhrase::try_from(first.into_bytes()) {
        r.extensions_mut().insert(rp);
    }
    close_if_error(&mut r);
    r
}

/// `keep_alive = 0 if $code >= 400` (AnyEvent.pm): every error response ends the connection.
fn close_if_error(r: &mut Response<Full<Bytes>>) {
    if r.status().as_u16() >= 400 {
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
}

fn error_reply(e: ApiError) -> Response<Full<Bytes>> {
    let mut body = json!({"data": null, "message": format!("{}\n", e.message)});
    if !e.errors.is_empty() {
        body["errors"] = json!(e.errors);
    }
    reply(e.status, &e.message, body)
}

/// A successful answer: `data`, plus `total` where PVE adds it (task list, task log).
pub struct Reply {
    data: Value,
    total: Option<usize>,
}

impl From<Value> for Reply {
    fn from(data: Value) -> Reply {
        Reply { data, total: None }
    }
}

fn ok(r: Reply) -> Response<Full<Bytes>> {
    let mut body = json!({ "data": r.data });
    if let Some(t) = r.total {
        body["total"] = t.into();
    }
    reply(200, "OK", body)
}

/// Query string plus form or JSON body, as PVE merges them, keeping repeated keys (the schema
/// joins `-list` keys and refuses the others, as RESTHandler does).
fn parse_params(
    query: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    let mut form = |s: &str| {
        for (k, v) in url::form_urlencoded::parse(s.as_bytes()) {
            out.push((k.into_owned(), v.into_owned()));
        }
    };
    if let Some(q) = query {
        form(q);
    }
    if body.is_empty() {
        return Ok(out);
    }
    if ctype.starts_with("application/json") {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, format!("malformed JSON body: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ApiError::new(400, "JSON body must be an object"))?;
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        for (k, v) in obj {
            match v {
                Value::Array(items) => {
                    out.extend(items.iter().filter_map(scalar).map(|s| (k.clone(), s)));
                }
                other => {
                    if let Some(s) = scalar(other) {
                        out.push((k.clone(), s));
                    }
                }
            }
        }
    } else {
        let s = std::str::from_utf8(body).map_err(|_| ApiError::new(400, "body is not UTF-8"))?;
        form(s);
    }
    Ok(out)
}

/// PVE's 401: no body, reason `No ticket` when no credential was sent, `Authentication failed!`
/// when one was wrong (HTTPServer.pm), after the configured delay.
async fn unauthorized(shared: &crate::Shared, sent_credentials: bool) -> Response<Full<Bytes>> {
    tokio::time::sleep(shared.config.auth_fail_delay).await;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    let reason: &[u8] = if sent_credentials {
        b"Authentication failed!"
    } else {
        b"No ticket"
    };
    if let Ok(rp) = hyper::ext::ReasonPhrase::try_from(reason.to_vec()) {
        r.extensions_mut().insert(rp);
    }
    close_if_error(&mut r);
    r
}

async fn handle(shared: Arc<crate::Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_reply(ApiError::new(413, "request entity too large")),
    };
    // Token auth: `PVEAPIToken=USER@REALM!TOKENID=SECRET`, split at the last '='.
    let token = auth.strip_prefix("PVEAPIToken=");
    let user = token
        .and_then(|t| t.rsplit_once('='))
        .and_then(|(id, secret)| {
            shared
                .config
                .tokens
                .iter()
                .find(|t| t.id == id && t.secret == secret)
                .map(|t| t.id.clone())
        });
    let Some(user) = user else {
        return unauthorized(&shared, token.is_some()).await;
    };
    let raw = match parse_params(query.as_deref(), &ctype, &body) {
        Ok(p) => p,
        Err(e) => return error_reply(e),
    };
    if let Some(admin) = path.strip_prefix("/_sim/") {
        return admin_route(&shared, &method, admin, &body);
    }
    let Some(api) = path.strip_prefix("/api2/json") else {
        return error_reply(ApiError::new(
            501,
            format!("Method '{method} {path}' not implemented"),
        ));
    };
    shared.requests.fetch_add(1, Ordering::Relaxed);
    // pveproxy's workers: wait for a free one, which is busy for the service time.
    let _worker = match &shared.workers {
        Some(w) => w.acquire().await.ok(),
        None => None,
    };
    if let Some(model) = shared.config.pveproxy {
        tokio::time::sleep(model.service_time).await;
    }
    let latency = shared.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    match route(&shared, &method, api, raw, &user).await {
        Ok(v) => ok(v),
        Err(e) => error_reply(e),
    }
}

fn admin_route(
    shared: &crate::Shared,
    method: &str,
    path: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let bad = |m: String| error_reply(ApiError::new(400, m));
    match (method, path) {
        ("GET", "mutations") => ok(json!(shared.lock().p.mutations).into()),
        ("GET", "requests") => ok(json!(shared.requests.load(Ordering::Relaxed)).into()),
        ("GET", "faults") => ok(json!(shared.lock().faults).into()),
        ("PUT", "faults") => match serde_json::from_slice::<crate::Faults>(body) {
            Ok(f) => {
                shared.lock().faults = f;
                ok(Value::Null.into())
            }
            Err(e) => bad(format!("faults: {e}")),
        },
        // Pretend contents of CT volumes (`storage.rs`): `{"volid": "...", "data": "..."}`.
        ("GET", "volume-data") => reply(200, "OK", json!({ "data": shared.lock().p.storage.data })),
        ("PUT", "volume-data") => match serde_json::from_slice::<BTreeMap<String, String>>(body) {
            Ok(m) => match (m.get("volid"), m.get("data")) {
                (Some(v), Some(d)) => {
                    let mut h = shared.lock();
                    h.p.storage.data.insert(v.clone(), d.clone());
                    shared.persist(&h);
                    reply(200, "OK", json!({ "data": null }))
                }
                _ => bad("volume-data: needs \"volid\" and \"data\"".into()),
            },
            Err(e) => bad(format!("volume-data: {e}")),
        },
        ("POST", "guests") => match serde_json::from_slice::<crate::SeedGuest>(body) {
            Ok(g) => {
                let mut h = shared.lock();
                h.seed(&g);
                shared.persist(&h);
                ok(Value::Null.into())
            }
            Err(e) => bad(format!("guest: {e}")),
        },
        _ => error_reply(ApiError::new(
            501,
            format!("no admin route {method} {path}"),
        )),
    }
}

/// A synchronous `lock_config` (`PUT config`, create): waits for the CT's config flock up to
/// `lock_wait` (PVE: 10 s), then "got timeout".
pub(crate) async fn wait_flock(shared: &crate::Shared, vmid: u32) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + shared.config.lock_wait;
    loop {
        {
            let mut h = shared.lock();
            h.advance();
            if h.holder(vmid).is_none() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                500,
                format!("can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn vmid_of(s: &str) -> Result<u32, ApiError> {
    s.parse().map_err(|_| {
        ApiError::params(
            [(
                "vmid".to_string(),
                format!("type check ('integer') failed - got '{s}'"),
            )]
            .into(),
        )
    })
}

fn not_implemented(method: &str, path: &str) -> ApiError {
    ApiError::new(501, format!("Method '{method} {path}' not implemented"))
}

/// pve-common's UPID regex (UPID.pm `upid_decode`).
fn upid_parses(upid: &str) -> bool {
    let Some(rest) = upid.strip_prefix("UPID:") else {
        return false;
    };
    let f: Vec<&str> = rest.split(':').collect();
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    let field = |s: &str, empty_ok: bool| {
        (empty_ok || !s.is_empty()) && !s.contains(|c: char| c.is_whitespace() || c == '/')
    };
    f.len() == 8
        && crate::schema::is_dns_name(f[0])
        && !f[0].contains('.')
        && hex(f[1], &[8])
        && hex(f[2], &[8, 9])
        && hex(f[3], &[8])
        && field(f[4], false)
        && field(f[5], true)
        && field(f[6], false)
        && f[7].is_empty()
}

/// Paging of a listing (`start`, `limit`) with the count before paging as `total`.
fn page(rows: Vec<Value>, params: &BTreeMap<String, String>, default_limit: usize) -> Reply {
    let start: usize = params
        .get("start")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_limit);
    let total = rows.len();
    Reply {
        data: Value::Array(rows.into_iter().skip(start).take(limit).collect()),
        total: Some(total),
    }
}

async fn route(
    shared: &crate::Shared,
    method: &str,
    path: &str,
    raw: Vec<(String, String)>,
    user: &str,
) -> Result<Reply, ApiError> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let node = shared.config.node.clone();
    let shown = format!("/{}", path.trim_start_matches('/'));
    let mut path_params: Vec<(String, String)> = Vec::new();
    // Storage, backup and restore endpoints live in `storage_routes` (one value per key).
    let flat: BTreeMap<String, String> = raw.iter().cloned().collect();
    if let Some(r) = crate::storage_routes::route(shared, method, &seg, &flat, user).await {
        return r.map(Reply::from);
    }
    // Schema template and path parameters.
    let (template, vmid): (String, Option<u32>) = match seg.as_slice() {
        ["version"] => ("/version".into(), None),
        ["nodes"] => ("/nodes".into(), None),
        ["access", "permissions"] => ("/access/permissions".into(), None),
        ["cluster", "resources"] => ("/cluster/resources".into(), None),
        ["cluster", "nextid"] => ("/cluster/nextid".into(), None),
        ["nodes", n, rest @ ..] => {
            // `proxyto` treats `localhost` as this node (HTTPServer.pm).
            if *n != node && *n != "localhost" {
                if shared.config.other_nodes.iter().any(|o| o == n) {
                    return Err(ApiError::new(595, format!("no such node '{n}'")));
                }
                // pve-cluster remote_node_ip → get_ip_from_hostname.
                return Err(ApiError::new(
                    500,
                    format!(
                        "hostname lookup '{n}' failed - failed to get address info for: {n}: Name or service not known"
                    ),
                ));
            }
            path_params.push(("node".into(), node.clone()));
            match rest {
                [] => ("/nodes/{node}".into(), None),
                ["lxc"] => ("/nodes/{node}/lxc".into(), None),
                ["lxc", v, tail @ ..] => {
                    let vmid = vmid_of(v)?;
                    path_params.push(("vmid".into(), vmid.to_string()));
                    let t = if tail.is_empty() {
                        "/nodes/{node}/lxc/{vmid}".to_string()
                    } else if let ["snapshot", snap, more @ ..] = tail {
                        path_params.push(("snapname".into(), snap.to_string()));
                        let mut t = "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}".to_string();
                        for m in more {
                            t.push('/');
                            t.push_str(m);
                        }
                        t
                    } else {
                        format!("/nodes/{{node}}/lxc/{{vmid}}/{}", tail.join("/"))
                    };
                    (t, Some(vmid))
                }
                ["tasks"] => ("/nodes/{node}/tasks".into(), None),
                ["tasks", upid, tail @ ..] => {
                    path_params.push(("upid".into(), upid.to_string()));
                    let t = if tail.is_empty() {
                        "/nodes/{node}/tasks/{upid}".to_string()
                    } else {
                        format!("/nodes/{{node}}/tasks/{{upid}}/{}", tail.join("/"))
                    };
                    (t, None)
                }
                _ => return Err(not_implemented(method, &shown)),
            }
        }
        _ => return Err(not_implemented(method, &shown)),
    };
    // Path parameters win over body parameters of the same name (RESTHandler merges the URI
    // parameters last); ansible sends `vmid` and `node` in the body of `PUT config` too.
    let mut raw: Vec<(String, String)> = raw
        .into_iter()
        .filter(|(k, _)| !path_params.iter().any(|(p, _)| p == k))
        .collect();
    raw.extend(path_params);
    let params = if template == "/version"
        || template == "/nodes"
        || template == "/nodes/{node}"
        || template == "/access/permissions"
    {
        raw.into_iter().collect::<BTreeMap<_, _>>()
    } else {
        schema::validate_raw(method, &template, &raw).map_err(ApiError::params)?
    };
    if method == "GET" && template == "/access/permissions" {
        // Outside the LXC schema the simulator validates against; answered without state.
        return Ok(crate::permissions::answer(
            shared.config.token_privileges.as_deref(),
            params.get("path").map(String::as_str),
        )
        .into());
    }
    let flag = |k: &str| params.get(k).is_some_and(|v| v == "1");
    let mutating = method != "GET";
    // Only `PUT config` and create lock the config synchronously (with PVE's wait); every
    // worker takes the flock inside its task.
    if method == "PUT" && template == "/nodes/{node}/lxc/{vmid}/config" {
        let options = params
            .keys()
            .filter(|k| !matches!(k.as_str(), "node" | "vmid" | "digest"))
            .count();
        if options == 0 {
            return Err(ApiError::new(500, "no options specified"));
        }
    }
    if (method == "PUT" && template == "/nodes/{node}/lxc/{vmid}/config")
        || (method == "POST" && template == "/nodes/{node}/lxc")
    {
        let v = vmid.or_else(|| params.get("vmid").and_then(|s| s.parse().ok()));
        if let Some(v) = v {
            wait_flock(shared, v).await?;
        }
    }
    let mut h = shared.lock();
    h.advance();
    let result: Result<Reply, ApiError> = match (method, template.as_str()) {
        ("GET", "/version") => {
            Ok(json!({"version": "9.2.11", "release": "9.2", "repoid": "14a22df3"}).into())
        }
        ("GET", "/nodes") => {
            let mut nodes = vec![node.clone()];
            nodes.extend(shared.config.other_nodes.iter().cloned());
            let fingerprint = shared
                .cert
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fingerprint();
            Ok(Value::Array(
                nodes
                    .into_iter()
                    .map(|n| {
                        json!({
                            "node": n, "id": format!("node/{n}"), "type": "node",
                            "status": "online", "level": "", "ssl_fingerprint": fingerprint,
                            "cpu": 0.02, "maxcpu": 2, "mem": 2_147_483_648u64,
                            "maxmem": 8_589_934_592u64, "disk": 5_368_709_120u64,
                            "maxdisk": 107_374_182_400u64, "uptime": 86_400,
                        })
                    })
                    .collect(),
            )
            .into())
        }
        ("GET", "/nodes/{node}") => {
            let dirs = [
                "aplinfo",
                "apt",
                "capabilities",
                "certificates",
                "config",
                "disks",
                "dns",
                "firewall",
                "hardware",
                "hosts",
                "journal",
                "lxc",
                "netstat",
                "network",
                "qemu",
                "replication",
                "report",
                "rrd",
                "rrddata",
                "scan",
                "sdn",
                "services",
                "status",
                "storage",
                "subscription",
                "syslog",
                "tasks",
                "time",
                "version",
                "vzdump",
                "wakeonlan",
            ];
            Ok(Value::Array(dirs.iter().map(|d| json!({ "name": d })).collect()).into())
        }
        ("GET", "/nodes/{node}/lxc") => {
            let h2: &Host = &h;
            let listed: Vec<Value> =
                h2.p.cts
                    .values()
                    .filter(|c| c.node == node)
                    .map(|c| h2.status_json(c))
                    .collect();
            let moving: Vec<u32> = h2
                .faults
                .migrate_after_list
                .keys()
                .filter(|v| h2.p.cts.get(v).is_some_and(|c| c.node == node))
                .copied()
                .collect();
            for vmid in &moving {
                if let (Some(to), Some(ct)) = (
                    h.faults.migrate_after_list.remove(vmid),
                    h.p.cts.get_mut(vmid),
                ) {
                    ct.node = to;
                }
            }
            if !moving.is_empty() {
                shared.persist(&h);
            }
            Ok(Value::Array(listed).into())
        }
        ("GET", "/nodes/{node}/lxc/{vmid}") => {
            h.local(vmid.unwrap_or(0))?;
            let dirs = [
                "config",
                "status",
                "vncproxy",
                "termproxy",
                "vncwebsocket",
                "spiceproxy",
                "migrate",
                "clone",
                "rrd",
                "rrddata",
                "firewall",
                "snapshot",
                "resize",
                "pending",
                "interfaces",
                "feature",
            ];
            Ok(Value::Array(dirs.iter().map(|d| json!({ "subdir": d })).collect()).into())
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/status") => {
            h.local(vmid.unwrap_or(0))?;
            let dirs = [
                "current", "start", "stop", "shutdown", "reboot", "suspend", "resume",
            ];
            Ok(Value::Array(dirs.iter().map(|d| json!({ "subdir": d })).collect()).into())
        }
        ("GET", "/cluster/resources") => {
            let h2: &Host = &h;
            let ty = params.get("type").map(String::as_str);
            let mut rows = Vec::new();
            if ty.is_none() || ty == Some("node") {
                let mut nodes = vec![node.clone()];
                nodes.extend(shared.config.other_nodes.iter().cloned());
                for n in nodes {
                    rows.push(json!({
                        "id": format!("node/{n}"), "type": "node", "node": n,
                        "status": "online", "level": "", "cgroup-mode": 2,
                        "cpu": 0.02, "maxcpu": 2, "mem": 2_147_483_648u64,
                        "maxmem": 8_589_934_592u64, "disk": 5_368_709_120u64,
                        "maxdisk": 107_374_182_400u64, "uptime": 86_400,
                    }));
                }
            }
            if ty.is_none() || ty == Some("vm") {
                rows.extend(h2.p.cts.values().map(|c| {
                    let mut row = h2.resource_json(c);
                    if let Some(node) = h2.faults.stale_cluster_view.get(&c.vmid) {
                        row["node"] = json!(node);
                    }
                    row
                }));
            }
            Ok(Value::Array(rows).into())
        }
        ("GET", "/cluster/nextid") => match params.get("vmid") {
            Some(v) => {
                let id: u32 = v.parse().unwrap_or(0);
                if h.p.cts.contains_key(&id) {
                    Err(ApiError::params(
                        [("vmid".to_string(), format!("VM {id} already exists"))].into(),
                    ))
                } else {
                    Ok(json!(id.to_string()).into())
                }
            }
            None => {
                let mut id = 100;
                while h.p.cts.contains_key(&id) {
                    id += 1;
                }
                Ok(json!(id.to_string()).into())
            }
        },
        ("GET", "/nodes/{node}/lxc/{vmid}/config") => {
            if params.contains_key("snapshot") && flag("current") {
                let m = "cannot use 'snapshot' parameter with 'current'".to_string();
                return Err(ApiError::params(
                    [
                        ("snapshot".to_string(), m.clone()),
                        ("current".to_string(), m),
                    ]
                    .into(),
                ));
            }
            let answer = h
                .config_json(
                    vmid.unwrap_or(0),
                    flag("current"),
                    params.get("snapshot").map(String::as_str),
                )
                .map(Reply::from);
            let v = vmid.unwrap_or(0);
            if answer.is_ok()
                && let Some(to) = h.faults.migrate_after_config_read.remove(&v)
                && let Some(ct) = h.p.cts.get_mut(&v)
            {
                ct.node = to;
                shared.persist(&h);
            }
            answer
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/pending") => {
            h.pending_json(vmid.unwrap_or(0)).map(Reply::from)
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/status/current") => {
            let ct = h.local(vmid.unwrap_or(0))?.clone();
            let mut s = h.status_json(&ct);
            s["ha"] = json!({"managed": 0});
            Ok(s.into())
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/interfaces") => {
            h.interfaces_json(vmid.unwrap_or(0)).map(Reply::from)
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/feature") => {
            crate::storage::feature(&h, vmid.unwrap_or(0), &params).map(Reply::from)
        }
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("config", v)?;
            h.put_config(v, &params)?;
            h.record(method, path, Some(v), "config", None, &params);
            Ok(Value::Null.into())
        }
        ("POST", "/nodes/{node}/lxc") => {
            let v = params
                .get("vmid")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            h.maybe_fault("vzcreate", v)?;
            // A privileged container needs `Sys.Modify` on `/` (API2/LXC.pm create_vm).
            let privileged = params.get("unprivileged").is_none_or(|u| u != "1");
            if privileged
                && shared
                    .config
                    .token_privileges
                    .as_ref()
                    .is_some_and(|p| !p.iter().any(|x| x == "Sys.Modify"))
            {
                return Err(ApiError::new(
                    403,
                    "Permission check failed (/, Sys.Modify)",
                ));
            }
            let upid = h.create(&params, user)?;
            h.record(method, path, Some(v), "create", Some(upid.clone()), &params);
            Ok(json!(upid).into())
        }
        ("POST", t) if t.starts_with("/nodes/{node}/lxc/{vmid}/status/") => {
            let action = t.rsplit('/').next().unwrap_or("");
            let v = vmid.unwrap_or(0);
            h.maybe_fault(&format!("vz{action}"), v)?;
            let upid = h.power(v, action, user)?;
            if action == "stop" && flag("overrule-shutdown") {
                h.overrule_shutdowns(v, &upid);
            }
            h.record(method, path, Some(v), action, Some(upid.clone()), &params);
            Ok(json!(upid).into())
        }
        ("DELETE", "/nodes/{node}/lxc/{vmid}") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("vzdestroy", v)?;
            let upid = h.destroy(v, &params, user)?;
            h.record(
                method,
                path,
                Some(v),
                "destroy",
                Some(upid.clone()),
                &params,
            );
            Ok(json!(upid).into())
        }
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("resize", v)?;
            let upid = h.resize(v, &params, user)?;
            h.record(method, path, Some(v), "resize", Some(upid.clone()), &params);
            Ok(json!(upid).into())
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/snapshot") => {
            h.snapshot_list_json(vmid.unwrap_or(0)).map(Reply::from)
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}") => {
            h.local(vmid.unwrap_or(0))?;
            Ok(json!([{"cmd": "rollback"}, {"cmd": "config"}]).into())
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/config") => {
            let name = params.get("snapname").cloned().unwrap_or_default();
            h.config_json(vmid.unwrap_or(0), false, Some(&name))
                .map(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("digest");
                    }
                    v
                })
                .map(Reply::from)
        }
        ("PUT", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/config") => {
            let v = vmid.unwrap_or(0);
            let name = params.get("snapname").cloned().unwrap_or_default();
            let d = params.get("description").cloned().unwrap_or_default();
            h.snapshot_set_description(v, &name, &d)?;
            h.record(method, path, Some(v), "snapshot-config", None, &params);
            Ok(Value::Null.into())
        }
        ("POST", "/nodes/{node}/lxc/{vmid}/snapshot") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("vzsnapshot", v)?;
            let upid = h.snapshot_create(v, &params, user)?;
            h.record(
                method,
                path,
                Some(v),
                "snapshot",
                Some(upid.clone()),
                &params,
            );
            Ok(json!(upid).into())
        }
        ("DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}")
        | ("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback") => {
            let v = vmid.unwrap_or(0);
            let rollback = method == "POST";
            let kind = if rollback { "rollback" } else { "delsnapshot" };
            h.maybe_fault(kind, v)?;
            let name = params.get("snapname").cloned().unwrap_or_default();
            let upid = h.snapshot_change(v, &name, rollback, user)?;
            h.record(method, path, Some(v), kind, Some(upid.clone()), &params);
            Ok(json!(upid).into())
        }
        ("GET", "/nodes/{node}/tasks") => {
            // Tasks.pm node_tasks: filters first, then `start`/`limit`; `total` counts the
            // matches.
            let vm = params.get("vmid").cloned();
            let tf = params.get("typefilter").cloned();
            let uf = params.get("userfilter").map(|u| u.to_ascii_lowercase());
            let errors = flag("errors");
            let since: u64 = params
                .get("since")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let until: u64 = params
                .get("until")
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            let source = params
                .get("source")
                .cloned()
                .unwrap_or_else(|| "archive".into());
            let rows: Vec<Value> =
                h.p.tasks
                    .iter()
                    .rev()
                    .filter(|t| vm.as_ref().is_none_or(|v| *v == t.vmid.to_string()))
                    .filter(|t| tf.as_ref().is_none_or(|f| *f == t.worker_type))
                    .filter(|t| {
                        uf.as_ref()
                            .is_none_or(|u| t.user.to_ascii_lowercase().contains(u.as_str()))
                    })
                    .filter(|t| !errors || t.exitstatus.as_deref().is_some_and(|e| e != "OK"))
                    .filter(|t| t.starttime >= since && t.starttime <= until)
                    .filter(|t| match source.as_str() {
                        "active" => !t.done,
                        "all" => true,
                        _ => t.done,
                    })
                    .map(|t| {
                        let mut o = h.task_status_json(t);
                        if let Some(m) = o.as_object_mut() {
                            m.remove("exitstatus");
                        }
                        o["status"] = match &t.exitstatus {
                            Some(e) => e.clone().into(),
                            None => "RUNNING".into(),
                        };
                        if let Some(e) = t.endtime {
                            o["endtime"] = e.into();
                        }
                        o
                    })
                    .collect();
            Ok(page(rows, &params, 50))
        }
        ("GET", "/nodes/{node}/tasks/{upid}")
        | ("GET", "/nodes/{node}/tasks/{upid}/status")
        | ("GET", "/nodes/{node}/tasks/{upid}/log") => {
            let upid = params.get("upid").cloned().unwrap_or_default();
            if !upid_parses(&upid) {
                return Err(ApiError::params(
                    [(
                        "upid".to_string(),
                        "unable to parse worker upid".to_string(),
                    )]
                    .into(),
                ));
            }
            let Some(t) = h.p.tasks.iter().find(|t| t.upid == upid) else {
                return Err(ApiError::params(
                    [("upid".to_string(), "no such task".to_string())].into(),
                ));
            };
            if template.ends_with("{upid}") {
                Ok(json!([{"name": "log"}, {"name": "status"}]).into())
            } else if template.ends_with("status") {
                Ok(h.task_status_json(t).into())
            } else {
                let lines: Vec<Value> = h
                    .task_log(t)
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| json!({"n": i + 1, "t": l}))
                    .collect();
                Ok(page(lines, &params, 50))
            }
        }
        _ => Err(not_implemented(method, &shown)),
    };
    if mutating && result.is_ok() {
        shared.persist(&h);
    }
    result
}
