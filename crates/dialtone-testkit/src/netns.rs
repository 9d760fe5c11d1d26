//! A network-namespace lab: namespaces, veth pairs, routes and nftables NAT, built by the test
//! itself with `ip` and `nft`, and torn down when the [`Lab`] drops (also when a test panics):
//! every process still inside a namespace is killed, then the namespace is deleted.
//!
//! Every address lives inside the namespaces: "public" addresses come from the documentation
//! prefixes (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), private ones from 10.0.0.0/8.
//!
//! ```text
//!   agent a ─ [router a: NAT / firewall] ─┐                ┌─ [router b] ─ agent b
//!                                         └── pub (directory + relay, 198.51.100.10,
//!                                                  2001:db8:ff::10) ──┘
//! ```
//!
//! A NAT router drops unsolicited inbound packets in its input and forward hooks, as a home
//! router does. Without that, Linux answers them (ICMP), creates conntrack entries, and the NAT
//! picks a new port for the next outbound packet: the NAT turns symmetric and hole punching
//! fails — an artefact of the lab, not of the code under test.
//!
//! Needs root. [`unavailable`] says why the lab cannot run here, and [`skip_if_unavailable`]
//! skips a test then, counted as skipped.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{Directory, Person, wait_until};

/// Why the lab cannot run on this machine, or `None` if it can (checked once per process).
pub fn unavailable() -> Option<String> {
    static CHECKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_available).clone()
}

fn check_available() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is missing: run scripts/setup.sh"));
        }
    }
    let probe = format!("dtprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Some("`ip netns add` fails here (no CAP_SYS_ADMIN or no netns support)".into());
    }
    None
}

/// Skips the calling test, counted as skipped (see [`crate::skip`]), when the lab cannot run
/// here or `DIALTONE_FORCE_SKIP` is set. Returns `true` if the test must return at once.
pub fn skip_if_unavailable(test: &str) -> bool {
    crate::skip::skip_if(
        test,
        unavailable().map(|why| format!("the network-namespace lab cannot run: {why}")),
    )
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    etc: Vec<PathBuf>,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    /// A new lab with a unique name prefix (pid and a counter).
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("dt{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            etc: Vec::new(),
        }
    }

    /// Adds namespace `<prefix>-<short>` with loopback up; returns its full name.
    pub fn ns(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.ip(&name, "link set lo up");
        // Addresses are usable at once (no duplicate address detection delay), and nothing
        // learns routes from router advertisements.
        self.sh(
            &name,
            "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; \
             echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; \
             echo 0 > /proc/sys/net/ipv6/conf/all/accept_ra; \
             echo 0 > /proc/sys/net/ipv6/conf/default/accept_ra",
        );
        name
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        run(&[
            "ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        self.ip(a, &format!("link set {a_if} up"));
        self.ip(b, &format!("link set {b_if} up"));
    }

    /// `ip -n NS ARGS…` (split on whitespace); panics on failure.
    pub fn ip(&self, ns: &str, args: &str) {
        let mut v = vec!["ip", "-n", ns];
        v.extend(args.split_whitespace());
        run(&v);
    }

    /// Adds an address without duplicate address detection.
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        let nodad = if cidr.contains(':') { " nodad" } else { "" };
        self.ip(ns, &format!("addr add {cidr} dev {dev}{nodad}"));
    }

    /// Runs a shell snippet inside `ns`; panics on failure.
    pub fn sh(&self, ns: &str, script: &str) {
        run(&["ip", "netns", "exec", ns, "sh", "-c", script]);
    }

    /// Turns on IPv4 and IPv6 forwarding in `ns`.
    pub fn forwarding(&self, ns: &str) {
        self.sh(
            ns,
            "echo 1 > /proc/sys/net/ipv4/ip_forward; \
             echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        );
    }

    /// Switches IPv6 off in `ns` (an IPv4-only host).
    pub fn no_ipv6(&self, ns: &str) {
        self.sh(
            ns,
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        );
    }

    /// Gives `ns` its own `/etc/hosts` (removed with the lab), and a `resolv.conf` naming a
    /// DNS server on its loopback where none listens: a query for a name the hosts file
    /// lacks (an IPv6 address of an IPv4-only host, say) fails at once, as on a real network
    /// where a DNS server answers, instead of timing out towards an unreachable server.
    pub fn hosts(&mut self, ns: &str, content: &str) {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(dir.join("hosts"), content).expect("write hosts");
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .expect("write resolv.conf");
        self.etc.push(dir);
    }

    /// Loads an nftables ruleset in `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {ns} failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Kill whatever still runs inside (agents, directories), then delete.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: plain kill(2).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory's host name. Agents resolve it through `/etc/netns/<ns>/hosts`, which
/// `ip netns exec` mounts over `/etc/hosts`, to the address family the topology uses. (A
/// host name rather than an IPv6 literal: iroh 1.4's relay client rejects IPv6-literal HTTPS
/// relay URLs as an invalid TLS server name.)
pub const DIR_HOST: &str = "directory.test";
/// The directory's "public" addresses in the `pub` namespace.
pub const DIR_V4: &str = "198.51.100.10";
/// See [`DIR_V4`].
pub const DIR_V6: &str = "2001:db8:ff::10";

/// How one agent is attached to the "internet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Straight on the public network: public IPv4 and/or IPv6, no NAT, no firewall.
    Public {
        /// Public IPv4.
        v4: bool,
        /// Public IPv6.
        v6: bool,
    },
    /// Behind a home router: IPv4 NAT (symmetric or endpoint-independent mapping), and
    /// optionally routed public IPv6 (behind a stateful firewall or open).
    Router {
        /// IPv4 behind NAT.
        v4: Option<Nat>,
        /// Routed public IPv6.
        v6: Option<V6>,
    },
}

/// IPv4 NAT behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// One public port per local socket (Linux masquerade keeps the port): punchable.
    EndpointIndependent,
    /// A random public port per destination (`masquerade fully-random`): not punchable.
    Symmetric,
}

/// Routed IPv6 behind the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6 {
    /// No filtering.
    Open,
    /// A stateful firewall: replies pass, unsolicited inbound is dropped.
    Firewall,
}

/// A topology of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Name (test and benchmark label).
    pub name: &'static str,
    /// Both agents on one LAN behind one endpoint-independent NAT (IPv4 only).
    pub same_lan: bool,
    /// Agent a's access (ignored with `same_lan`).
    pub a: Access,
    /// Agent b's access (ignored with `same_lan`).
    pub b: Access,
    /// Whether agents reach the directory over IPv6 (else IPv4).
    pub directory_v6: bool,
    /// Whether a direct path is expected (else the relay).
    pub expect_direct: bool,
}

const EIM4: Access = Access::Router {
    v4: Some(Nat::EndpointIndependent),
    v6: None,
};
const SYM4: Access = Access::Router {
    v4: Some(Nat::Symmetric),
    v6: None,
};

/// The matrix: direct everywhere except where a symmetric NAT makes it impossible.
pub const MATRIX: &[Topology] = &[
    Topology {
        name: "same_lan",
        same_lan: true,
        a: EIM4,
        b: EIM4,
        directory_v6: false,
        expect_direct: true,
    },
    Topology {
        name: "public_ipv6",
        same_lan: false,
        a: Access::Router {
            v4: Some(Nat::EndpointIndependent),
            v6: Some(V6::Open),
        },
        b: Access::Router {
            v4: Some(Nat::EndpointIndependent),
            v6: Some(V6::Open),
        },
        directory_v6: true,
        expect_direct: true,
    },
    Topology {
        name: "ipv6_only",
        same_lan: false,
        a: Access::Public {
            v4: false,
            v6: true,
        },
        b: Access::Public {
            v4: false,
            v6: true,
        },
        directory_v6: true,
        expect_direct: true,
    },
    Topology {
        name: "dual_stack",
        same_lan: false,
        a: Access::Public { v4: true, v6: true },
        b: Access::Public { v4: true, v6: true },
        directory_v6: false,
        expect_direct: true,
    },
    Topology {
        name: "eim_nat_both",
        same_lan: false,
        a: EIM4,
        b: EIM4,
        directory_v6: false,
        expect_direct: true,
    },
    Topology {
        name: "symmetric_nat_one",
        same_lan: false,
        a: SYM4,
        b: EIM4,
        directory_v6: false,
        expect_direct: false,
    },
    Topology {
        name: "symmetric_nat_both",
        same_lan: false,
        a: SYM4,
        b: SYM4,
        directory_v6: false,
        expect_direct: false,
    },
    Topology {
        name: "ipv6_firewall_both",
        same_lan: false,
        a: Access::Router {
            v4: None,
            v6: Some(V6::Firewall),
        },
        b: Access::Router {
            v4: None,
            v6: Some(V6::Firewall),
        },
        directory_v6: true,
        expect_direct: true,
    },
];

/// Looks a topology up by name.
pub fn topology(name: &str) -> &'static Topology {
    MATRIX
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no topology {name}"))
}

/// A built topology: the namespaces of the directory and of both agents.
#[derive(Debug)]
pub struct Net {
    /// Owns the namespaces (declared first among the owner's locals, it is dropped last).
    pub lab: Lab,
    /// One lab at a time per process (plain `cargo test` runs tests on threads).
    _serial: std::sync::MutexGuard<'static, ()>,
    /// The "public" namespace with the directory and relay.
    pub public: String,
    /// Agent a's namespace.
    pub a: String,
    /// Agent b's namespace.
    pub b: String,
    /// The router both agents share in the same-LAN topology.
    pub lan_router: Option<String>,
    /// The directory URL agents use.
    pub directory_url: String,
}

fn router_rules(nat: Option<Nat>, v6: Option<V6>) -> String {
    let masq = match nat {
        Some(Nat::EndpointIndependent) => "masquerade",
        Some(Nat::Symmetric) => "masquerade fully-random",
        None => "",
    };
    let nat_table = if masq.is_empty() {
        String::new()
    } else {
        format!(
            "table ip nat {{\n  chain post {{ type nat hook postrouting priority srcnat; \
             oifname \"wan\" {masq}; }}\n}}\n"
        )
    };
    // Inbound from the WAN: replies pass; nothing unsolicited reaches the router or the LAN
    // (silently dropped, no ICMP). Neighbour discovery to the router itself must pass.
    let v6_forward = match v6 {
        Some(V6::Open) => "iifname \"wan\" meta nfproto ipv6 accept;",
        _ => "",
    };
    format!(
        "{nat_table}table inet filter {{\n\
         chain input {{ type filter hook input priority filter; policy accept;\n\
           iifname \"wan\" ct state established,related accept;\n\
           iifname \"wan\" meta l4proto ipv6-icmp accept;\n\
           iifname \"wan\" drop; }}\n\
         chain forward {{ type filter hook forward priority filter; policy accept;\n\
           iifname \"wan\" ct state established,related accept;\n\
           {v6_forward}\n\
           iifname \"wan\" drop; }}\n\
         }}\n"
    )
}

impl Net {
    /// Builds `topo`: `pub` with the directory's addresses on its loopback, forwarding
    /// between the sides, and each side as its [`Access`] says.
    pub fn build(topo: &Topology) -> Self {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lab = Lab::new();
        let public = lab.ns("pub");
        lab.forwarding(&public);
        // The directory's addresses live on pub's loopback (no dummy module needed).
        lab.addr(&public, "lo", &format!("{DIR_V4}/32"));
        lab.addr(&public, "lo", &format!("{DIR_V6}/128"));
        let mut lan_router = None;
        let (a, b) = if topo.same_lan {
            let router = lab.ns("r1");
            lan_router = Some(router.clone());
            let a = lab.ns("a");
            let b = lab.ns("b");
            Self::wan(&lab, &public, &router, 1, true, false);
            lab.forwarding(&router);
            lab.no_ipv6(&a);
            lab.no_ipv6(&b);
            lab.ip(&router, "link add br0 type bridge");
            lab.ip(&router, "link set br0 up");
            lab.addr(&router, "br0", "10.0.1.1/24");
            for (ns, port, host) in [(&a, "pa", 2), (&b, "pb", 3)] {
                lab.veth(&router, port, ns, "eth0");
                lab.ip(&router, &format!("link set {port} master br0"));
                lab.addr(ns, "eth0", &format!("10.0.1.{host}/24"));
                lab.ip(ns, "route add default via 10.0.1.1");
            }
            lab.nft(&router, &router_rules(Some(Nat::EndpointIndependent), None));
            (a, b)
        } else {
            let a = Self::side(&mut lab, &public, 1, topo.a);
            let b = Self::side(&mut lab, &public, 2, topo.b);
            (a, b)
        };
        // Both addresses, as public DNS would give: a family the namespace lacks fails at
        // once (no route), the other one works. The preferred family comes first.
        let (first, second) = if topo.directory_v6 {
            (DIR_V6, DIR_V4)
        } else {
            (DIR_V4, DIR_V6)
        };
        for ns in [&a, &b] {
            lab.hosts(
                ns,
                &format!("127.0.0.1 localhost\n{first} {DIR_HOST}\n{second} {DIR_HOST}\n"),
            );
        }
        let directory_url = format!("https://{DIR_HOST}:443");
        Self {
            lab,
            _serial: serial,
            public,
            a,
            b,
            lan_router,
            directory_url,
        }
    }

    /// Drops every UDP packet between the two sides where `pub` forwards them (not those to or
    /// from `pub` itself, where the directory and its relay live): the agents can reach each
    /// other only through the relay, and hole punching fails, silently, as behind a firewall
    /// that blocks UDP. [`Net::allow_direct`] lifts it. Not for the same-LAN topology (its agents
    /// meet in their own router).
    pub fn block_direct(&self) {
        assert!(self.lan_router.is_none(), "block_direct: same-LAN topology");
        self.lab.nft(
            &self.public,
            "table inet dtblock {\n\
             chain gate { type filter hook forward priority -10; policy accept;\n\
               iifname \"to1\" oifname \"to2\" meta l4proto udp drop;\n\
               iifname \"to2\" oifname \"to1\" meta l4proto udp drop; }\n\
             }\n",
        );
    }

    /// Lifts [`Net::block_direct`].
    pub fn allow_direct(&self) {
        self.lab.nft(&self.public, "delete table inet dtblock\n");
    }

    /// Links `ns` (interface `wan`) to `pub` (interface `to{i}`) with side `i`'s public
    /// addresses and a default route.
    fn wan(lab: &Lab, public: &str, ns: &str, i: u8, v4: bool, v6: bool) {
        let to = format!("to{i}");
        lab.veth(public, &to, ns, "wan");
        // pub answers from the directory's address, as a single-homed server would (a UDP
        // socket bound to a wildcard address replies from the route's source address).
        if v4 {
            lab.addr(public, &to, &format!("203.0.113.{}/28", 16 * i + 1));
            lab.ip(
                public,
                &format!(
                    "route replace 203.0.113.{}/28 dev {to} src {DIR_V4}",
                    16 * i
                ),
            );
            lab.addr(ns, "wan", &format!("203.0.113.{}/28", 16 * i + 2));
            lab.ip(
                ns,
                &format!("route add default via 203.0.113.{}", 16 * i + 1),
            );
        }
        if v6 {
            lab.addr(public, &to, &format!("2001:db8:{i}::1/64"));
            lab.ip(
                public,
                // Metric 1 wins over the kernel's on-link route (metric 256).
                &format!("-6 route add 2001:db8:{i}::/64 dev {to} src {DIR_V6} metric 1"),
            );
            lab.addr(ns, "wan", &format!("2001:db8:{i}::2/64"));
            lab.ip(ns, &format!("-6 route add default via 2001:db8:{i}::1"));
        } else {
            lab.no_ipv6(ns);
        }
    }

    fn side(lab: &mut Lab, public: &str, i: u8, access: Access) -> String {
        match access {
            Access::Public { v4, v6 } => {
                let agent = lab.ns(&format!("h{i}"));
                Self::wan(lab, public, &agent, i, v4, v6);
                agent
            }
            Access::Router { v4, v6 } => {
                let router = lab.ns(&format!("r{i}"));
                let agent = lab.ns(&format!("h{i}"));
                Self::wan(lab, public, &router, i, v4.is_some(), v6.is_some());
                lab.forwarding(&router);
                lab.veth(&router, "lan", &agent, "eth0");
                if v4.is_some() {
                    lab.addr(&router, "lan", &format!("10.0.{i}.1/24"));
                    lab.addr(&agent, "eth0", &format!("10.0.{i}.2/24"));
                    lab.ip(&agent, &format!("route add default via 10.0.{i}.1"));
                }
                if v6.is_some() {
                    lab.addr(&router, "lan", &format!("2001:db8:{i}:1::1/64"));
                    lab.addr(&agent, "eth0", &format!("2001:db8:{i}:1::2/64"));
                    lab.ip(
                        &agent,
                        &format!("-6 route add default via 2001:db8:{i}:1::1"),
                    );
                    lab.ip(
                        public,
                        &format!(
                            "-6 route add 2001:db8:{i}:1::/64 via 2001:db8:{i}::2 src {DIR_V6}"
                        ),
                    );
                } else {
                    lab.no_ipv6(&agent);
                }
                lab.nft(&router, &router_rules(v4, v6));
                agent
            }
        }
    }
}

/// Runs Avahi inside `ns` — its own D-Bus system bus and avahi-daemon, in a private mount
/// namespace so their sockets under /run never meet the host's — and returns what
/// `avahi-browse --resolve --parsable --terminate SERVICE` prints (`=` lines are resolved
/// services). Everything it started is gone when it returns.
pub fn avahi_browse(ns: &str, service: &str) -> String {
    let script = format!(
        "set -e\n         mkdir -p /run/dbus /run/avahi-daemon\n         mount -t tmpfs tmpfs /run/dbus\n         mount -t tmpfs tmpfs /run/avahi-daemon\n         dbus-daemon --system --fork --nopidfile --print-pid > /run/avahi-daemon/dbus.pid\n         avahi-daemon --daemonize --no-drop-root --no-chroot --no-rlimits\n         sleep 2\n         timeout 10 avahi-browse --resolve --parsable --terminate {service} || true\n         avahi-daemon --kill || true\n         kill $(cat /run/avahi-daemon/dbus.pid) || true\n"
    );
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "unshare", "--mount", "sh", "-c", &script,
        ])
        .output()
        .expect("avahi");
    assert!(
        out.status.success(),
        "avahi in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private CA and a certificate for the directory's addresses (PEM files in `dir`):
/// `(ca, cert, key)`.
pub fn lab_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    crate::private_ca(dir, &[DIR_HOST, DIR_V4, DIR_V6])
}

/// A topology with a directory + relay and two registered, befriended agents online.
#[derive(Debug)]
pub struct Scene {
    // Field order is drop order: people and directory first, the namespaces last.
    /// Agent a (alice).
    pub alice: Person,
    /// Agent b (bob).
    pub bob: Person,
    /// The directory with its relay, in `pub`.
    pub directory: Directory,
    /// The namespaces.
    pub net: Net,
    /// The CA file agents trust.
    pub ca: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Alice's identifier in a [`Scene`].
pub const ALICE: &str = "alice@example.com";
/// Bob's identifier in a [`Scene`].
pub const BOB: &str = "bob@example.com";

impl Scene {
    /// Builds `topo`, starts the directory with its relay, registers alice (in a) and bob (in
    /// b), brings both online with `up_args` and makes them contacts.
    pub fn start(topo: &Topology, up_args: &[&str]) -> Self {
        let net = Net::build(topo);
        let tmp = tempfile::tempdir().unwrap();
        let (ca, cert, key) = lab_certificates(tmp.path());
        let directory = Directory::start_in(
            &net.public,
            "[::]:443",
            &net.directory_url,
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--relay",
                "[::]:3340",
            ],
        );
        let alice = Person::new_in(&net.a, ALICE);
        let bob = Person::new_in(&net.b, BOB);
        for p in [&alice, &bob] {
            p.register_with(&directory, &["--directory-ca", ca.to_str().unwrap()]);
            let mut args = vec!["up", "--detach", "--no-portmapper"];
            args.extend_from_slice(up_args);
            p.run(&args).ok();
        }
        alice.befriend(&bob);
        Self {
            alice,
            bob,
            directory,
            net,
            ca,
            _tmp: tmp,
        }
    }

    /// Alice's view of her connection to bob (`status --connections --json`), if open.
    pub fn path(&self) -> Option<serde_json::Value> {
        self.alice
            .run(&["status", "--connections", "--json"])
            .ok()
            .json()
            .as_array()?
            .iter()
            .find(|c| c["identifier"] == BOB)
            .cloned()
    }

    /// Waits (up to `timeout`) until alice's connection to bob is on a `kind` path
    /// (`direct` or `relayed`); returns the connection.
    pub fn wait_path(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        let mut last = None;
        wait_until(timeout, &format!("a {kind} path to bob"), || {
            last = self.path();
            last.as_ref().is_some_and(|c| c["path"] == kind)
        });
        last.unwrap()
    }
}

/// Measured figures of one topology run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Topology name.
    pub name: &'static str,
    /// `direct` or `relayed`: the path once settled.
    pub path: String,
    /// The remote address of that path.
    pub remote: String,
    /// First message: connect + hellos + delivery + acknowledgement, as `dialtone send` saw it.
    pub first_send: Duration,
    /// Time until the connection was on its final path, from the start of the first send.
    pub settled: Duration,
    /// iroh's round-trip estimate on the final path, in ms.
    pub rtt_ms: f64,
    /// Median of further `dialtone send` runs on the open connection (includes process start).
    pub warm_send: Duration,
    /// `dialtone doctor --json` as alice ran it before the first message.
    pub doctor: serde_json::Value,
}

/// Runs the matrix scenario on `topo`: a first message (delivered, acknowledged, seen by bob),
/// the path it settles on (asserted against the expectation), further messages.
pub fn run_scenario(topo: &Topology, warm_sends: usize) -> Outcome {
    let scene = Scene::start(topo, &[]);
    let doctor = scene.alice.run(&["doctor", "--json"]).ok().json();
    let mut watch = scene.bob.watch();
    let started = Instant::now();
    let first = scene.alice.run(&["send", BOB, "hello over the lab"]);
    first.ok();
    let first_send = first.elapsed;
    watch.expect("bob to get the message", Duration::from_secs(10), |e| {
        e["event"] == "message" && e["body"] == "hello over the lab"
    });
    let conn = if topo.expect_direct {
        scene.wait_path("direct", Duration::from_secs(15))
    } else {
        // Hole punching cannot succeed here: give it a generous window, then the connection
        // must still be relayed (and must not have closed).
        let c = scene.wait_path("relayed", Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(6));
        let now = scene.path().expect("the relayed connection closed");
        assert_eq!(
            now["path"], "relayed",
            "{}: expected to stay relayed, got {now}",
            topo.name
        );
        c
    };
    let settled = started.elapsed();
    let mut warm = Vec::new();
    for i in 0..warm_sends {
        let body = format!("warm {i}");
        let r = scene.alice.run(&["send", BOB, &body]);
        r.ok();
        warm.push(r.elapsed);
    }
    warm.sort();
    let conn_now = scene.path().unwrap_or(conn);
    Outcome {
        name: topo.name,
        path: conn_now["path"].as_str().unwrap_or("").to_owned(),
        remote: conn_now["remote_addr"].as_str().unwrap_or("").to_owned(),
        first_send,
        settled,
        rtt_ms: conn_now["rtt_ms"].as_f64().unwrap_or(f64::NAN),
        warm_send: warm.get(warm.len() / 2).copied().unwrap_or_default(),
        doctor,
    }
}
