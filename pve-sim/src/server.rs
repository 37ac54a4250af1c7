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
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
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
    r
}

fn error_reply(e: ApiError) -> Response<Full<Bytes>> {
    let mut body = json!({"data": null, "message": format!("{}\n", e.message)});
    if !e.errors.is_empty() {
        body["errors"] = json!(e.errors);
    }
    reply(e.status, &e.message, body)
}

fn ok(data: Value) -> Response<Full<Bytes>> {
    reply(200, "OK", json!({ "data": data }))
}

/// Query string plus form or JSON body, as PVE merges them.
fn parse_params(
    query: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let mut form = |s: &str| {
        for (k, v) in url::form_urlencoded::parse(s.as_bytes()) {
            out.insert(k.into_owned(), v.into_owned());
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
        for (k, v) in obj {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                Value::Null => continue,
                other => other.to_string(),
            };
            out.insert(k.clone(), s);
        }
    } else {
        let s = std::str::from_utf8(body).map_err(|_| ApiError::new(400, "body is not UTF-8"))?;
        form(s);
    }
    Ok(out)
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
    let user = auth
        .strip_prefix("PVEAPIToken=")
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
        tokio::time::sleep(shared.config.auth_fail_delay).await;
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        if let Ok(rp) = hyper::ext::ReasonPhrase::try_from(b"authentication failure".to_vec()) {
            r.extensions_mut().insert(rp);
        }
        return r;
    };
    let params = match parse_params(query.as_deref(), &ctype, &body) {
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
    let latency = shared.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    match route(&shared, &method, api, params, &user).await {
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
        ("GET", "mutations") => ok(json!(shared.lock().p.mutations)),
        ("GET", "requests") => ok(json!(shared.requests.load(Ordering::Relaxed))),
        ("GET", "faults") => ok(json!(shared.lock().faults)),
        ("PUT", "faults") => match serde_json::from_slice::<crate::Faults>(body) {
            Ok(f) => {
                shared.lock().faults = f;
                ok(Value::Null)
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
                ok(Value::Null)
            }
            Err(e) => bad(format!("guest: {e}")),
        },
        _ => error_reply(ApiError::new(
            501,
            format!("no admin route {method} {path}"),
        )),
    }
}

/// Waits for the CT's config flock like `lock_config` (`proxmox-api.md` §5): a mutation while a
/// task holds it fails with "got timeout" after `lock_wait`.
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

async fn route(
    shared: &crate::Shared,
    method: &str,
    path: &str,
    mut params: BTreeMap<String, String>,
    user: &str,
) -> Result<Value, ApiError> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let node = shared.config.node.clone();
    // Storage, backup and restore endpoints live in `storage_routes`.
    if let Some(r) = crate::storage_routes::route(shared, method, &seg, &params, user).await {
        return r;
    }
    // Schema template and path parameters.
    let (template, vmid): (String, Option<u32>) = match seg.as_slice() {
        ["version"] => ("/version".into(), None),
        ["cluster", "resources"] => ("/cluster/resources".into(), None),
        ["cluster", "nextid"] => ("/cluster/nextid".into(), None),
        ["nodes", n, rest @ ..] => {
            if *n != node {
                return Err(ApiError::new(595, format!("no such node '{n}'")));
            }
            params.insert("node".into(), n.to_string());
            match rest {
                ["lxc"] => ("/nodes/{node}/lxc".into(), None),
                ["lxc", v, tail @ ..] => {
                    let vmid = vmid_of(v)?;
                    params.insert("vmid".into(), vmid.to_string());
                    let t = if tail.is_empty() {
                        "/nodes/{node}/lxc/{vmid}".to_string()
                    } else if let ["snapshot", snap, more @ ..] = tail {
                        params.insert("snapname".into(), snap.to_string());
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
                    params.insert("upid".into(), upid.to_string());
                    let t = if tail.is_empty() {
                        "/nodes/{node}/tasks/{upid}".to_string()
                    } else {
                        format!("/nodes/{{node}}/tasks/{{upid}}/{}", tail.join("/"))
                    };
                    (t, None)
                }
                _ => {
                    return Err(ApiError::new(
                        501,
                        format!("Method '{method} /{path}' not implemented"),
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::new(
                501,
                format!("Method '{method} /{path}' not implemented"),
            ));
        }
    };
    if template != "/version" {
        schema::validate(method, &template, &params).map_err(ApiError::params)?;
    }
    let flag = |k: &str| {
        params
            .get(k)
            .is_some_and(|v| matches!(v.as_str(), "1" | "true"))
    };
    let mutating = method != "GET";
    if mutating && let Some(v) = vmid {
        wait_flock(shared, v).await?;
    }
    let mut h = shared.lock();
    h.advance();
    let result = match (method, template.as_str()) {
        ("GET", "/version") => {
            Ok(json!({"version": "9.2.11", "release": "9.2", "repoid": "14a22df3"}))
        }
        ("GET", "/nodes/{node}/lxc") => {
            let h2: &Host = &h;
            Ok(Value::Array(
                h2.p.cts
                    .values()
                    .filter(|c| c.node == node)
                    .map(|c| h2.status_json(c))
                    .collect(),
            ))
        }
        ("GET", "/cluster/resources") => {
            let h2: &Host = &h;
            Ok(Value::Array(
                h2.p.cts
                    .values()
                    .map(|c| {
                        let mut s = h2.status_json(c);
                        s["id"] = format!("lxc/{}", c.vmid).into();
                        s["node"] = c.node.clone().into();
                        s["maxcpu"] = s["cpus"].clone();
                        s
                    })
                    .collect(),
            ))
        }
        ("GET", "/cluster/nextid") => {
            let mut id = 100;
            while h.p.cts.contains_key(&id) {
                id += 1;
            }
            Ok(json!(id.to_string()))
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/config") => {
            h.config_json(vmid.unwrap_or(0), flag("current"))
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/pending") => h.pending_json(vmid.unwrap_or(0)),
        ("GET", "/nodes/{node}/lxc/{vmid}/status/current") => {
            let ct = h.local(vmid.unwrap_or(0))?.clone();
            let mut s = h.status_json(&ct);
            s["ha"] = json!({"managed": 0});
            Ok(s)
        }
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("config", v)?;
            h.put_config(v, &params)?;
            h.record(method, path, Some(v), "config", None, &params);
            Ok(Value::Null)
        }
        ("POST", "/nodes/{node}/lxc") => {
            let v = params
                .get("vmid")
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            h.maybe_fault("vzcreate", v)?;
            let upid = h.create(&params, user)?;
            h.record(method, path, Some(v), "create", Some(upid.clone()), &params);
            Ok(json!(upid))
        }
        ("POST", t) if t.starts_with("/nodes/{node}/lxc/{vmid}/status/") => {
            let action = t.rsplit('/').next().unwrap_or("");
            let v = vmid.unwrap_or(0);
            h.maybe_fault(&format!("vz{action}"), v)?;
            let upid = h.power(v, action, user)?;
            h.record(method, path, Some(v), action, Some(upid.clone()), &params);
            Ok(json!(upid))
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
            Ok(json!(upid))
        }
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => {
            let v = vmid.unwrap_or(0);
            h.maybe_fault("resize", v)?;
            let upid = h.resize(v, &params, user)?;
            h.record(method, path, Some(v), "resize", Some(upid.clone()), &params);
            Ok(json!(upid))
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/snapshot") => {
            let ct = h.local(vmid.unwrap_or(0))?;
            let mut list: Vec<Value> = ct
                .snapshots
                .iter()
                .map(|(name, s)| {
                    json!({"name": name, "description": s.description, "snaptime": s.snaptime})
                })
                .collect();
            let running = u8::from(ct.running);
            list.push(
                json!({"name": "current", "description": "You are here!", "running": running}),
            );
            Ok(Value::Array(list))
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
            Ok(json!(upid))
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
            Ok(json!(upid))
        }
        ("GET", "/nodes/{node}/tasks") => {
            let vm = params.get("vmid").cloned();
            let tf = params.get("typefilter").cloned();
            let since: u64 = params
                .get("since")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let source = params
                .get("source")
                .cloned()
                .unwrap_or_else(|| "archive".into());
            let limit: usize = params
                .get("limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(50);
            let rows: Vec<Value> =
                h.p.tasks
                    .iter()
                    .rev()
                    .filter(|t| vm.as_ref().is_none_or(|v| *v == t.vmid.to_string()))
                    .filter(|t| tf.as_ref().is_none_or(|f| *f == t.worker_type))
                    .filter(|t| t.starttime >= since)
                    .filter(|t| match source.as_str() {
                        "active" => !t.done,
                        "all" => true,
                        _ => t.done,
                    })
                    .take(limit)
                    .map(|t| {
                        let mut o = h.task_status_json(t);
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
            Ok(Value::Array(rows))
        }
        ("GET", "/nodes/{node}/tasks/{upid}/status")
        | ("GET", "/nodes/{node}/tasks/{upid}/log") => {
            let upid = params.get("upid").cloned().unwrap_or_default();
            let Some(t) = h.p.tasks.iter().find(|t| t.upid == upid) else {
                return Err(ApiError::params(
                    [("upid".to_string(), "no such task".to_string())].into(),
                ));
            };
            if template.ends_with("status") {
                Ok(h.task_status_json(t))
            } else {
                let lines: Vec<Value> = h
                    .task_log(t)
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| json!({"n": i + 1, "t": l}))
                    .collect();
                Ok(Value::Array(lines))
            }
        }
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /{path}' not implemented"),
        )),
    };
    if mutating && result.is_ok() {
        shared.persist(&h);
    }
    result
}
