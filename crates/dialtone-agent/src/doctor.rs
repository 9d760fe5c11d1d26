//! `dialtone doctor`: what this device's network allows, in plain words.
//!
//! It asks the directory for its relay (`/v1/info`), probes the address echo beside the relay
//! on each address family (see `dialtone_net::doctor`), times a TCP connection to the relay,
//! and concludes whether direct connections to others are likely to work. It needs no running
//! agent and sends nothing to anyone but the directory's host.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use dialtone_net::doctor::{FamilyReport, NatKind};
use serde::Serialize;

use crate::{DirectoryClient, Home, HomeError};

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// The directory asked.
    pub directory: String,
    /// Whether it answered `/v1/info`.
    pub directory_reachable: bool,
    /// The relay it names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Best of three TCP connects to the relay, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_latency_ms: Option<f64>,
    /// Whether this device has an IPv6 address others can reach (not link- or unique-local).
    pub ipv6: bool,
    /// IPv6 findings (towards the directory's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v6: Option<FamilyReport>,
    /// IPv4 findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4: Option<FamilyReport>,
    /// `likely`, `ipv6-only`, `relay-needed` or `unknown`.
    pub direct: &'static str,
    /// The findings as sentences.
    pub summary: Vec<String>,
}

/// Why the doctor could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoctorError {
    /// The home has no settings or is not registered.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// No directory is configured.
    #[error(
        "no directory configured yet: run `dialtone register IDENTIFIER --directory URL` first"
    )]
    NoDirectory,
    /// The directory URL or CA file is unusable.
    #[error(transparent)]
    Directory(#[from] crate::DirectoryError),
}

/// Runs every check (about 3 s when everything answers, at most about 15 s).
pub async fn run(home: &Home) -> Result<DoctorReport, DoctorError> {
    let settings = home.settings()?;
    let directory = settings.directory.ok_or(DoctorError::NoDirectory)?;
    let dir = DirectoryClient::new(&directory, settings.directory_ca.as_deref())?;
    let info = dir.info(Duration::from_secs(5)).await;
    let host_ips = resolve_host(dir.base()).await;
    let mut report = DoctorReport {
        directory: dir.base().to_owned(),
        directory_reachable: info.is_ok(),
        relay: None,
        relay_latency_ms: None,
        ipv6: false,
        v6: None,
        v4: None,
        direct: "unknown",
        summary: Vec::new(),
    };
    let echo_ports = info
        .as_ref()
        .ok()
        .and_then(|i| <[u16; 2]>::try_from(i.echo_ports.as_slice()).ok());
    if let Ok(info) = &info {
        report.relay = info.relay_url.clone();
        if let Some(url) = &info.relay_url {
            report.relay_latency_ms = relay_latency(url).await;
        }
    }
    for ip in host_ips {
        let slot = if ip.is_ipv6() {
            &mut report.v6
        } else {
            &mut report.v4
        };
        if slot.is_some() {
            continue;
        }
        *slot = Some(match echo_ports {
            Some(ports) => dialtone_net::doctor::probe(ip, ports, Duration::from_secs(3)).await,
            None => FamilyReport {
                local: dialtone_net::doctor::local_source(ip),
                public: Vec::new(),
                nat: NatKind::NoUdp,
                rtt_ms: None,
            },
        });
    }
    // IPv6 at all, even if the directory's host has none: ask the kernel for a route to a
    // global address (no packet is sent).
    let v6_local = report
        .v6
        .as_ref()
        .and_then(|r| r.local)
        .or_else(|| dialtone_net::doctor::local_source("2001:4860:4860::8888".parse().ok()?));
    report.ipv6 = v6_local.is_some_and(|ip| dialtone_net::doctor::is_global_v6(&ip));
    summarize(&mut report);
    Ok(report)
}

async fn resolve_host(base: &str) -> Vec<IpAddr> {
    let Some(rest) = base.split("://").nth(1) else {
        return Vec::new();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        let port = if base.starts_with("https") { 443 } else { 80 };
        format!("{authority}:{port}")
    } else {
        authority.to_owned()
    };
    let mut ips: Vec<IpAddr> = match tokio::net::lookup_host(with_port).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(_) => Vec::new(),
    };
    ips.sort_by_key(|ip| ip.is_ipv4());
    ips.dedup();
    ips
}

async fn relay_latency(url: &str) -> Option<f64> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority).await.ok()?.collect();
    let addr = *addrs.first()?;
    let mut best: Option<f64> = None;
    for _ in 0..3 {
        let t = Instant::now();
        if let Ok(Ok(_s)) =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await
        {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            best = Some(best.map_or(ms, |b: f64| b.min(ms)));
        }
    }
    best
}

fn nat_words(r: &FamilyReport, family: &str) -> String {
    match r.nat {
        NatKind::NoRoute => format!("{family}: no route to the directory's host"),
        NatKind::NoUdp => format!(
            "{family}: UDP to the relay got no answer — a firewall may block UDP, so data would \
             go through the relay"
        ),
        NatKind::None => format!(
            "{family}: public address {} — no NAT",
            r.public
                .first()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
        NatKind::EndpointIndependent => format!(
            "{family}: behind a NAT that keeps one public port per socket ({} seen from outside) \
             — hole punching works",
            r.public
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
        NatKind::Symmetric => format!(
            "{family}: behind a symmetric NAT (a new public port for each destination) — hole \
             punching cannot work through it"
        ),
    }
}

fn summarize(r: &mut DoctorReport) {
    let mut s = Vec::new();
    if r.directory_reachable {
        s.push(format!("directory {} answers", r.directory));
    } else {
        s.push(format!(
            "directory {} does NOT answer: you cannot come online (check the network or the URL)",
            r.directory
        ));
    }
    s.push(if r.ipv6 {
        "IPv6: yes, this device has a global IPv6 address".to_owned()
    } else {
        "IPv6: no global IPv6 address".to_owned()
    });
    match (&r.relay, r.relay_latency_ms) {
        (Some(url), Some(ms)) => s.push(format!("relay {url}: reachable, {ms:.1} ms")),
        (Some(url), None) => s.push(format!(
            "relay {url}: NOT reachable — hole punching and the relayed fallback will fail"
        )),
        (None, _) if r.directory_reachable => s.push(
            "relay: the directory runs none — only direct paths to reachable addresses".to_owned(),
        ),
        (None, _) => {}
    }
    if let Some(v6) = &r.v6 {
        s.push(nat_words(v6, "IPv6"));
    }
    if let Some(v4) = &r.v4 {
        s.push(nat_words(v4, "IPv4"));
    }
    let ok = |f: &Option<FamilyReport>| {
        f.as_ref()
            .is_some_and(|f| matches!(f.nat, NatKind::None | NatKind::EndpointIndependent))
    };
    r.direct = if ok(&r.v4) {
        "likely"
    } else if ok(&r.v6) {
        "ipv6-only"
    } else if r
        .v4
        .as_ref()
        .or(r.v6.as_ref())
        .is_some_and(|f| f.nat == NatKind::Symmetric)
    {
        "relay-needed"
    } else {
        "unknown"
    };
    s.push(match r.direct {
        "likely" => "direct connections: likely to work (data goes through the relay only if the \
                     other side cannot be reached)"
            .to_owned(),
        "ipv6-only" => "direct connections: likely with people who have IPv6; with others, \
                        data goes through the relay"
            .to_owned(),
        "relay-needed" => "direct connections: unlikely except to people with a public address; \
                           expect the relay to carry your data (it sees only encrypted packets)"
            .to_owned(),
        _ => "direct connections: could not tell".to_owned(),
    });
    r.summary = s;
}
