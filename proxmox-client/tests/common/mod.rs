//! A tiny raw HTTPS/1.1 server for hostile-response tests: it can send exactly the bytes we
//! want (custom reason phrases, broken JSON, endless bodies, stalls), which a well-behaved
//! simulator never would.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxmox_client::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub enum Reply {
    /// Status line with this reason phrase, a body with Content-Length.
    Status {
        status: u16,
        reason: String,
        body: Vec<u8>,
    },
    /// Read the request, never answer.
    Stall,
    /// Send headers announcing 1000 bytes, send 10, then hang.
    HeadersThenStall,
    /// Stream `len` bytes of a JSON string body, with or without a Content-Length.
    Huge { len: u64, declare_length: bool },
    /// Close the connection without answering.
    Close,
}

impl Reply {
    pub fn json(body: &str) -> Reply {
        Reply::Status {
            status: 200,
            reason: "OK".into(),
            body: body.as_bytes().to_vec(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

pub struct RawServer {
    pub url: String,
    pub fingerprint: Fingerprint,
    pub cert_pem: String,
    /// Requests fully read (after a successful TLS handshake).
    pub requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Req>>>,
}

impl RawServer {
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Self-signed certificate for localhost / 127.0.0.1.
pub fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    (ck.cert.der().clone(), key, ck.cert.pem())
}

pub async fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> RawServer {
    let (cert, key, pem) = self_signed();
    start_with(vec![cert], key, pem, Arc::new(handler)).await
}

pub async fn start_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    leaf_pem: String,
    handler: Handler,
) -> RawServer {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let fingerprint = Fingerprint::of_der(chain[0].as_ref());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (rq, sn) = (requests.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (handler, rq, sn) = (handler.clone(), rq.clone(), sn.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    let Some(req) = read_request(&mut tls, &mut buf).await else {
                        return;
                    };
                    rq.fetch_add(1, Ordering::SeqCst);
                    sn.lock().unwrap().push(req.clone());
                    let keep = match handler(&req) {
                        Reply::Status {
                            status,
                            reason,
                            body,
                        } => {
                            let close = status >= 400;
                            let head = format!(
                                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n{}\r\n",
                                body.len(),
                                if close { "Connection: close\r\n" } else { "" }
                            );
                            let mut msg = head.into_bytes();
                            msg.extend_from_slice(&body);
                            if tls.write_all(&msg).await.is_err() {
                                return;
                            }
                            let _ = tls.flush().await;
                            !close
                        }
                        Reply::Stall => {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            false
                        }
                        Reply::HeadersThenStall => {
                            let _ = tls
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"data\":\"",
                                )
                                .await;
                            let _ = tls.flush().await;
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            false
                        }
                        Reply::Huge {
                            len,
                            declare_length,
                        } => {
                            let head = if declare_length {
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                            } else {
                                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
                            };
                            if tls.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let _ = tls.write_all(b"{\"data\":\"").await;
                            let chunk = vec![b'a'; 64 * 1024];
                            let mut sent = 9u64;
                            while sent < len {
                                if tls.write_all(&chunk).await.is_err() {
                                    return; // the client hung up, as it should
                                }
                                sent += chunk.len() as u64;
                            }
                            false
                        }
                        Reply::Close => false,
                    };
                    if !keep {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    RawServer {
        url: format!("https://127.0.0.1:{}", addr.port()),
        fingerprint,
        cert_pem: leaf_pem,
        requests,
        seen,
    }
}

async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<Req> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    Some(Req {
        method,
        target,
        headers,
        body,
    })
}

pub const TEST_SECRET: &str = "5d1c9a46-0f3e-4b52-9a7e-3c2b1a0f9e8d";
