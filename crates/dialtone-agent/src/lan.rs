//! LAN mode: agents on one link find each other with mDNS / DNS-SD (RFC 6762/6763), so that
//! already-known contacts (keys pinned earlier) can talk while the directory is down.
//!
//! Each agent announces `_dialtone._udp.local.`: instance = the device id's short form, SRV
//! port = the peer endpoint's IPv4 port, every interface address, and TXT `v=1`, `d=` (the
//! device id), `p6=` (the IPv6 port) and `k=` (16 hex digits of the identity key's
//! fingerprint, so a device can recognise a pinned contact without announcing an identifier).
//! Any DNS-SD browser sees it (`avahi-browse -r _dialtone._udp`). Nothing found here is
//! trusted: a connection to a LAN device still proves its certificate in the hello, and is
//! accepted only for a pinned key.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use dialtone_proto::{DeviceId, IdentityKey};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;
use tracing::{debug, warn};

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_dialtone._udp.local.";

/// A device seen on the LAN.
#[derive(Debug, Clone, Serialize)]
pub struct LanPeer {
    /// Its device id (as announced; proved only by a connection).
    pub device: DeviceId,
    /// The identity-key tag it announced (`k=`).
    pub key_tag: String,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
}

/// The running mDNS responder and browser.
pub(crate) struct Lan {
    daemon: ServiceDaemon,
    fullname: String,
    peers: Arc<Mutex<HashMap<String, LanPeer>>>,
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

/// The `k=` tag of an identity key.
pub(crate) fn key_tag(key: &IdentityKey) -> String {
    key.fingerprint()
        .to_string()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect()
}

impl Lan {
    /// Announces this device and starts browsing.
    pub(crate) fn start(
        device: DeviceId,
        identity: &IdentityKey,
        bound: &[SocketAddr],
    ) -> Result<Self, String> {
        let daemon = ServiceDaemon::new().map_err(|e| e.to_string())?;
        let port4 = bound
            .iter()
            .find(|a| a.is_ipv4())
            .map_or(0, SocketAddr::port);
        let port6 = bound
            .iter()
            .find(|a| a.is_ipv6())
            .map_or(0, SocketAddr::port);
        let instance = format!("dialtone-{}", device.short());
        let host = format!("{instance}.local.");
        let props = [
            ("v", "1".to_owned()),
            ("d", device.to_string()),
            ("p6", port6.to_string()),
            ("k", key_tag(identity)),
        ];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            "",
            if port4 != 0 { port4 } else { port6 },
            &props[..],
        )
        .map_err(|e| e.to_string())?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(|e| e.to_string())?;
        let events = daemon.browse(SERVICE_TYPE).map_err(|e| e.to_string())?;
        let peers: Arc<Mutex<HashMap<String, LanPeer>>> = Arc::default();
        let own = fullname.clone();
        let map = peers.clone();
        std::thread::Builder::new()
            .name("dialtone-mdns".into())
            .spawn(move || {
                while let Ok(ev) = events.recv() {
                    match ev {
                        ServiceEvent::ServiceResolved(s) if s.fullname != own => {
                            let Some(peer) = parse(&s) else { continue };
                            debug!(device = %peer.device.short(), "LAN peer found");
                            map.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(s.fullname.clone(), peer);
                        }
                        ServiceEvent::ServiceRemoved(_, name) => {
                            map.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .remove(&name);
                        }
                        ServiceEvent::SearchStopped(_) => break,
                        _ => {}
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            daemon,
            fullname,
            peers,
        })
    }

    /// Devices seen on the LAN now.
    pub(crate) fn peers(&self) -> Vec<LanPeer> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Says goodbye on the LAN and stops.
    pub(crate) fn shutdown(&self) {
        if let Err(e) = self.daemon.unregister(&self.fullname) {
            warn!("mDNS unregister: {e}");
        }
        let _ = self.daemon.shutdown();
    }
}

fn parse(s: &mdns_sd::ResolvedService) -> Option<LanPeer> {
    if s.get_property_val_str("v") != Some("1") {
        return None;
    }
    let hex_id = s.get_property_val_str("d")?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut bytes).ok()?;
    let device = DeviceId::from_bytes(&bytes).ok()?;
    let key_tag = s.get_property_val_str("k")?.to_owned();
    let port6: u16 = s
        .get_property_val_str("p6")
        .and_then(|p| p.parse().ok())
        .unwrap_or(s.port);
    let mut addrs: Vec<SocketAddr> = s
        .get_addresses()
        .iter()
        .map(|ip| {
            let ip = ip.to_ip_addr();
            let port = if ip.is_ipv6() { port6 } else { s.port };
            SocketAddr::new(ip, port)
        })
        // Link-local IPv6 needs a scope this record does not carry.
        .filter(|a| a.port() != 0 && !matches!(a.ip(), std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv4(), *a));
    Some(LanPeer {
        device,
        key_tag,
        addrs,
    })
}
