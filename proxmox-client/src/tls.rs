//! How the client trusts the PVE server: three modes, none of them "insecure".
//!
//! In the two pinned modes only chain and name validation are replaced by the pin; the
//! handshake signature is always verified with the crypto provider, so a peer that merely
//! replays the pinned certificate without its key is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Where pveproxy's certificate lives, in the order PVE itself prefers them
/// (`pve-cluster Cluster.pm get_node_fingerprint`).
pub const DEFAULT_NODE_CERT_PATHS: [&str; 2] = [
    "/etc/pve/local/pveproxy-ssl.pem",
    "/etc/pve/local/pve-ssl.pem",
];

/// PVE's own interval for re-reading certificates after a mismatch (`CertCache.pm`).
pub const DEFAULT_CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// How the server certificate is trusted.
#[derive(Clone, Debug)]
pub enum TlsTrust {
    /// The leaf certificate's SHA-256 must equal this fingerprint. Breaks when the certificate
    /// is renewed; prefer [`TlsTrust::NodeCertificate`] on the node itself.
    Fingerprint(Fingerprint),
    /// The leaf must equal the first certificate of the first existing file in `paths`.
    /// On a mismatch the files are re-read, at most once per `reload_interval`, so certificate
    /// renewal does not break the client.
    NodeCertificate {
        paths: Vec<PathBuf>,
        reload_interval: Duration,
    },
    /// Normal WebPKI verification (chain and name) with the certificates in this file as the
    /// only roots, e.g. `/etc/pve/pve-root-ca.pem`.
    CaFile(PathBuf),
}

impl TlsTrust {
    /// Pin to `/etc/pve/local/pveproxy-ssl.pem`, else `pve-ssl.pem`, re-read at most once a minute.
    pub fn node_certificate() -> Self {
        TlsTrust::NodeCertificate {
            paths: DEFAULT_NODE_CERT_PATHS.iter().map(PathBuf::from).collect(),
            reload_interval: DEFAULT_CERT_RELOAD_INTERVAL,
        }
    }
}

/// A SHA-256 certificate fingerprint, printed as PVE does (`AA:BB:...`, upper case).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Fingerprint of the first certificate in a PEM file, as `get_certificate_fingerprint`.
    pub fn of_pem_file(path: &Path) -> Result<Self, Error> {
        let ctx = || format!("reading certificate {}", path.display());
        let data = crate::local_file::read_regular(path, crate::local_file::MAX_PEM_BYTES)
            .map_err(|e| Error::config(ctx(), e.to_string()))?;
        Self::of_pem(&data).map_err(|m| Error::config(ctx(), m))
    }

    fn of_pem(data: &[u8]) -> Result<Self, String> {
        match CertificateDer::pem_slice_iter(data).next() {
            Some(Ok(c)) => Ok(Self::of_der(c.as_ref())),
            Some(Err(e)) => Err(format!("invalid pem: {e}")),
            None => Err("no certificate in file".into()),
        }
    }
}

/// Why a fingerprint text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid sha-256 fingerprint: expected 32 hex bytes like AA:BB:..., {0}")]
pub struct FingerprintParseError(&'static str);

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;
    /// Accepts upper or lower case, with or without `:` separators.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return Err(FingerprintParseError("wrong length"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex, &mut out).map_err(|_| FingerprintParseError("not hex"))?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Builds the rustls configuration for a trust mode (aws-lc-rs only, TLS 1.2 and 1.3,
/// no ALPN so the connection is HTTP/1.1).
pub(crate) fn client_config(trust: &TlsTrust) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("setting up tls", e.to_string()))?;
    let config = match trust {
        TlsTrust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: PinSource::Fixed(*fp),
                provider,
            }))
            .with_no_client_auth(),
        TlsTrust::NodeCertificate {
            paths,
            reload_interval,
        } => {
            let node = NodeCertPin::load(paths.clone(), *reload_interval)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: PinSource::NodeFile(node),
                    provider,
                }))
                .with_no_client_auth()
        }
        TlsTrust::CaFile(path) => {
            let ctx = || format!("reading ca file {}", path.display());
            let mut roots = rustls::RootCertStore::empty();
            let pem = crate::local_file::read_regular(path, crate::local_file::MAX_PEM_BYTES)
                .map_err(|e| Error::config(ctx(), e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .map(|c| c.map(|c| c.into_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| Error::config(ctx(), format!("invalid pem: {e}")))?;
            if certs.is_empty() {
                return Err(Error::config(ctx(), "no certificate in file"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::config(ctx(), format!("unusable ca certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// The node-certificate pin: expected fingerprint plus when the files were last read.
#[derive(Debug)]
struct NodeCertPin {
    paths: Vec<PathBuf>,
    reload_interval: Duration,
    state: Mutex<NodeCertState>,
}

#[derive(Debug)]
struct NodeCertState {
    expected: Fingerprint,
    read_at: Instant,
}

impl NodeCertPin {
    fn load(paths: Vec<PathBuf>, reload_interval: Duration) -> Result<Self, Error> {
        let expected = read_first_existing(&paths)
            .map_err(|m| Error::config("loading the node certificate pin", m))?;
        Ok(NodeCertPin {
            paths,
            reload_interval,
            state: Mutex::new(NodeCertState {
                expected,
                read_at: Instant::now(),
            }),
        })
    }

    fn check(&self, presented: Fingerprint) -> bool {
        // A poisoned lock only means another handshake panicked; the state is still usable.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.expected == presented {
            return true;
        }
        if st.read_at.elapsed() < self.reload_interval {
            return false;
        }
        st.read_at = Instant::now();
        match read_first_existing(&self.paths) {
            Ok(fp) => {
                if fp != st.expected {
                    tracing::info!(old = %st.expected, new = %fp, "node certificate changed on disk; pin updated");
                    st.expected = fp;
                }
                st.expected == presented
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the node certificate failed; keeping the old pin");
                false
            }
        }
    }
}

/// Fingerprint of the first certificate in the first existing file, like PVE's
/// `get_node_fingerprint` (pveproxy-ssl.pem if present, else pve-ssl.pem).
fn read_first_existing(paths: &[PathBuf]) -> Result<Fingerprint, String> {
    for p in paths {
        match crate::local_file::read_regular(p, crate::local_file::MAX_PEM_BYTES) {
            Ok(data) => {
                return Fingerprint::of_pem(&data).map_err(|m| format!("{}: {m}", p.display()));
            }
            Err(crate::local_file::ReadError::NotFound) => continue,
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "none of these certificate files exists: {}",
        list.join(", ")
    ))
}

#[derive(Debug)]
enum PinSource {
    Fixed(Fingerprint),
    NodeFile(NodeCertPin),
}

/// Accepts exactly the pinned leaf; still verifies the handshake signature.
#[derive(Debug)]
struct PinVerifier {
    pin: PinSource,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity.as_ref());
        let ok = match &self.pin {
            PinSource::Fixed(fp) => *fp == presented,
            PinSource::NodeFile(node) => node.check(presented),
        };
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(presented = %presented, "server certificate does not match the pin");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
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
    fn fingerprint_parse_and_print() {
        let upper = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99";
        let fp: Fingerprint = upper.parse().unwrap();
        assert_eq!(fp.to_string(), upper);
        let lower: Fingerprint = upper.to_lowercase().replace(':', "").parse().unwrap();
        assert_eq!(lower, fp);
        assert!("AA:BB".parse::<Fingerprint>().is_err());
        assert!(upper.replace("AA", "ZZ").parse::<Fingerprint>().is_err());
    }

    #[test]
    fn node_pin_reload_is_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let primary = dir.path().join("pveproxy-ssl.pem");
        let fallback = dir.path().join("pve-ssl.pem");
        std::fs::write(&fallback, a.cert.pem()).unwrap();
        let fa = Fingerprint::of_der(a.cert.der());
        let fb = Fingerprint::of_der(b.cert.der());

        let interval = Duration::from_secs(60);
        let pin = NodeCertPin::load(vec![primary.clone(), fallback.clone()], interval).unwrap();
        assert!(pin.check(fa));
        // pveproxy-ssl.pem appears (custom certificate): refused while the interval runs ...
        std::fs::write(&primary, b.cert.pem()).unwrap();
        assert!(!pin.check(fb));
        // ... and accepted once it has passed (the clock is moved, not waited for).
        let past = |pin: &NodeCertPin| {
            let mut st = pin.state.lock().unwrap();
            st.read_at = Instant::now().checked_sub(interval).unwrap();
        };
        past(&pin);
        assert!(pin.check(fb));
        assert!(!pin.check(fa));
        // A failed re-read keeps the old pin.
        std::fs::write(&primary, "garbage").unwrap();
        past(&pin);
        assert!(!pin.check(fa));
        assert!(pin.check(fb));

        assert!(NodeCertPin::load(vec![dir.path().join("nope")], Duration::ZERO).is_err());
        std::fs::write(&fallback, "not a pem").unwrap();
        assert!(NodeCertPin::load(vec![fallback], Duration::ZERO).is_err());
    }
}
