//! Connectivity checks for `dialtone doctor`, with plain UDP sockets (no iroh).
//!
//! The directory's relay runs an address echo on two UDP ports (`relay::AddrEcho`). One socket
//! probes both: the answers say which public address the probe came from. No answer: UDP is
//! blocked. The public address equal to the local one: no NAT. The same public address for
//! both ports: a NAT with endpoint-independent mapping (hole punching works). Two different
//! public addresses: a symmetric NAT (hole punching cannot work; data goes through the relay
//! unless the other side is reachable directly).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Serialize;

/// Length of a probe datagram; answers are never longer.
pub const PROBE_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"DTECHO1\n";

/// The echo's answer to a probe from `from`, if `req` is a probe.
pub(crate) fn echo_reply(req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if req.len() != PROBE_LEN || !req.starts_with(MAGIC) {
        return None;
    }
    // A dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d: answer with the plain form.
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(from.to_string().as_bytes());
    out.truncate(PROBE_LEN);
    Some(out)
}

fn parse_reply(buf: &[u8]) -> Option<SocketAddr> {
    let rest = buf.strip_prefix(MAGIC.as_slice())?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// What the probes found out about the NAT on one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// The public address is a local one: no NAT (a firewall may still filter).
    None,
    /// A NAT that keeps one public port per local socket: hole punching works.
    EndpointIndependent,
    /// A NAT that picks a new public port for each destination: hole punching fails.
    Symmetric,
    /// No answer: UDP to the relay is blocked or lost.
    NoUdp,
    /// This device has no route for this address family.
    NoRoute,
}

/// One address family's findings.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    /// The local address this device uses towards the directory's host, if it has a route.
    pub local: Option<IpAddr>,
    /// The public addresses the echo saw, one per echo port.
    pub public: Vec<SocketAddr>,
    /// The NAT kind.
    pub nat: NatKind,
    /// Round trip of the first answered probe, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// The local source address the kernel would use towards `target` (no packet is sent).
pub fn local_source(target: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(SocketAddr::new(target, 9)).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

/// Whether `ip` is an IPv6 address other devices can reach across the internet: not loopback,
/// link-local, unique-local (fc00::/7) or unspecified.
pub fn is_global_v6(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xffc0) == 0xfe80
                || (seg0 & 0xfe00) == 0xfc00
                || v6.to_ipv4_mapped().is_some())
        }
        IpAddr::V4(_) => false,
    }
}

/// Probes the echo at `target` on both `ports` from one socket, three tries each within
/// `timeout` in total.
pub async fn probe(target: IpAddr, ports: [u16; 2], timeout: Duration) -> FamilyReport {
    let Some(local) = local_source(target) else {
        return FamilyReport {
            local: None,
            public: Vec::new(),
            nat: NatKind::NoRoute,
            rtt_ms: None,
        };
    };
    let mut report = FamilyReport {
        local: Some(local),
        public: Vec::new(),
        nat: NatKind::NoUdp,
        rtt_ms: None,
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await else {
        return report;
    };
    let mut probe = [0u8; PROBE_LEN];
    probe[..MAGIC.len()].copy_from_slice(MAGIC);
    let per_try = timeout / 3;
    for port in ports {
        let dest = SocketAddr::new(target, port);
        'tries: for _ in 0..3 {
            let sent = Instant::now();
            if sock.send_to(&probe, dest).await.is_err() {
                break;
            }
            let mut buf = [0u8; 128];
            let deadline = tokio::time::Instant::now() + per_try;
            while let Ok(Ok((n, from))) =
                tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
            {
                if from == dest
                    && let Some(seen) = parse_reply(&buf[..n])
                {
                    report.public.push(seen);
                    report
                        .rtt_ms
                        .get_or_insert_with(|| sent.elapsed().as_secs_f64() * 1000.0);
                    break 'tries;
                }
            }
        }
    }
    report.nat = match report.public.as_slice() {
        [] => NatKind::NoUdp,
        [one, rest @ ..] => {
            if one.ip() == local {
                NatKind::None
            } else if rest.iter().any(|r| r != one) {
                NatKind::Symmetric
            } else {
                NatKind::EndpointIndependent
            }
        }
    };
    report
}

/// A UDP address echo beside the relay, for `dialtone doctor`: it answers a probe with the
/// address the probe came from, on two ports. A device behind a NAT that maps each destination
/// to a new port (symmetric NAT) sees two different answers; that is how the doctor tells the
/// NAT kinds apart. Answers are never longer than the probe (no amplification) and nothing is
/// kept.
#[derive(Debug)]
pub struct AddrEcho {
    ports: [u16; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AddrEcho {
    /// Binds two UDP sockets on `ip` (free ports) and answers probes until dropped.
    pub async fn spawn(ip: IpAddr) -> std::io::Result<Self> {
        let mut ports = [0u16; 2];
        let mut tasks = Vec::new();
        for port in &mut ports {
            let sock = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
            *port = sock.local_addr()?.port();
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 128];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        continue;
                    };
                    if let Some(reply) = echo_reply(&buf[..n], from) {
                        let _ = sock.send_to(&reply, from).await;
                    }
                }
            }));
        }
        Ok(Self { ports, tasks })
    }

    /// The two UDP ports.
    pub fn ports(&self) -> [u16; 2] {
        self.ports
    }
}

impl Drop for AddrEcho {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_only_probes_and_never_longer() {
        let from: SocketAddr = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert!(echo_reply(b"hello", from).is_none());
        assert!(echo_reply(&[0u8; PROBE_LEN], from).is_none());
        let mut p = [0u8; PROBE_LEN];
        p[..MAGIC.len()].copy_from_slice(MAGIC);
        let r = echo_reply(&p, from).unwrap();
        assert!(r.len() <= PROBE_LEN);
        assert_eq!(parse_reply(&r), Some(from));
    }

    #[test]
    fn global_v6() {
        let g = |s: &str| is_global_v6(&s.parse().unwrap());
        assert!(g("2001:db8::1"));
        assert!(!g("fd00::1"));
        assert!(!g("fe80::1"));
        assert!(!g("::1"));
        assert!(!g("10.0.0.1"));
    }

    #[tokio::test]
    async fn probes_a_local_echo() {
        let echo = AddrEcho::spawn("127.0.0.1".parse().unwrap()).await.unwrap();
        let r = probe(
            "127.0.0.1".parse().unwrap(),
            echo.ports(),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(r.nat, NatKind::None, "{r:?}");
        assert_eq!(r.public.len(), 2);
    }
}
