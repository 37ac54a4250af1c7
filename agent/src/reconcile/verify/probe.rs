//! Probes: what the host can observe of a guest without a guest agent (`safety-nets.md` §4.2).
//!
//! Every probe has a timeout and runs on the async runtime without blocking it: a guest that
//! stopped answering makes only its own lane wait, for at most the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use proxmox_client::LxcConfig;

use crate::desired::verify_spec::VerifySpec;
use crate::reconcile::pve::Pve;

/// One probe, as journaled in a verify window (`tcp:ADDR`, `status`, `interfaces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect from the host.
    Tcp(SocketAddr),
    /// `status/current` says running.
    Status,
    /// `GET .../interfaces` shows each `net[n]`'s static address inside the CT.
    Interfaces,
}

impl Probe {
    pub fn to_text(&self) -> String {
        match self {
            Probe::Tcp(a) => format!("tcp:{a}"),
            Probe::Status => "status".into(),
            Probe::Interfaces => "interfaces".into(),
        }
    }

    /// The journaled text back; unknown text is `None` (a newer agent wrote it).
    pub fn from_text(s: &str) -> Option<Probe> {
        match s {
            "status" => Some(Probe::Status),
            "interfaces" => Some(Probe::Interfaces),
            _ => s.strip_prefix("tcp:")?.parse().ok().map(Probe::Tcp),
        }
    }
}

/// The probes a spec asks for.
pub fn probes_of(spec: &VerifySpec) -> Vec<Probe> {
    let mut out = Vec::new();
    if spec.status {
        out.push(Probe::Status);
    }
    if spec.interfaces {
        out.push(Probe::Interfaces);
    }
    out.extend(spec.tcp.iter().copied().map(Probe::Tcp));
    out
}

/// A probe round: every probe, concurrently, each within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// What failed, one sentence each; empty when the round passed.
    pub failures: Vec<String>,
}

impl Round {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
    pub fn summary(&self) -> String {
        if self.passed() {
            "every probe passed".into()
        } else {
            self.failures.join("; ")
        }
    }
}

/// Runs every probe against the guest as it is now; `config` is its current config (the
/// addresses the `interfaces` probe expects).
pub async fn run(
    pve: &Pve,
    vmid: u32,
    probes: &[Probe],
    config: &LxcConfig,
    timeout: Duration,
) -> Round {
    let checks = probes.iter().map(|p| async move {
        let r = tokio::time::timeout(timeout, one(pve, vmid, p, config)).await;
        match r {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(format!("{}: {why}", p.to_text())),
            Err(_) => Some(format!("{}: no answer within {timeout:?}", p.to_text())),
        }
    });
    let failures = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    Round { failures }
}

async fn one(pve: &Pve, vmid: u32, probe: &Probe, config: &LxcConfig) -> Result<(), String> {
    match probe {
        Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect failed: {e}")),
        Probe::Status => {
            let s = pve
                .client
                .lxc_status(&pve.node, vmid)
                .await
                .map_err(|e| format!("status: {e}"))?;
            if s.entry.is_running() {
                Ok(())
            } else {
                Err(format!("the CT is {:?}, not running", s.entry.status))
            }
        }
        Probe::Interfaces => {
            let got = pve
                .client
                .lxc_interfaces(&pve.node, vmid)
                .await
                .map_err(|e| format!("interfaces: {e}"))?;
            for (i, net) in &config.net {
                let name = net.name.clone();
                let Some(ip) = net.ip.as_deref().filter(|ip| ip.contains('/')) else {
                    continue; // dhcp, manual or none: no address to expect
                };
                let addr = ip.split('/').next().unwrap_or(ip);
                let iface = got.iter().find(|f| f.name == name);
                let has = iface.is_some_and(|f| {
                    f.inet
                        .as_deref()
                        .is_some_and(|a| a.split('/').next() == Some(addr))
                        || f.ip_addresses.iter().any(|a| a.ip_address == addr)
                });
                if !has {
                    return Err(format!("net{i}: {name} does not hold {ip} inside the CT"));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn journaled_text_round_trips() {
        for p in [
            Probe::Status,
            Probe::Interfaces,
            Probe::Tcp("10.0.0.5:22".parse().unwrap()),
            Probe::Tcp("[::1]:443".parse().unwrap()),
        ] {
            assert_eq!(Probe::from_text(&p.to_text()), Some(p));
        }
        assert_eq!(Probe::from_text("netns_tcp:1.2.3.4:5"), None);
    }
}
