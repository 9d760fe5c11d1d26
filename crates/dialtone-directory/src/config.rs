//! The directory's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! Defaults are for local development: loopback, plain HTTP, the file outbox for codes, and
//! rate limits that a single person never meets. `config.example.toml` documents every key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:4100`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory for durable state (`directory.sqlite3`). Default `./dialtone-directory-data`.
    pub data_dir: PathBuf,
    /// Write verification codes to files in this directory (demos and tests). Default: none.
    pub verify_outbox: Option<PathBuf>,
    /// Serve HTTPS with this certificate and key. Default: none (plain HTTP, loopback only).
    pub tls: Option<TlsConfig>,
    /// Allow plain HTTP on a non-loopback address (dangerous: keys and codes in clear).
    /// Default false.
    pub insecure_http: bool,
    /// The base URL agents use, if it differs from the listen address (behind a proxy).
    /// Default: derived from `listen`.
    pub public_url: Option<String>,
    /// Sessions: heartbeat and timeouts.
    pub session: SessionConfig,
    /// Verification codes.
    pub verification: VerificationConfig,
    /// Rate limits.
    pub limits: Limits,
    /// Email verification through an SMTP relay. Default: none (no email codes unless the
    /// outbox is set).
    pub smtp: Option<SmtpConfig>,
    /// SMS verification through an HTTP gateway. Default: none.
    pub sms: Option<SmsConfig>,
    /// The relay (iroh-relay) beside the directory. Default: none — agents then get no hole
    /// punching and no relayed fallback, only direct paths to addresses they can reach.
    pub relay: Option<RelaySection>,
    /// Key transparency: epoch timing.
    pub transparency: TransparencyConfig,
}

/// `[relay]`: run a relay beside the directory and tell agents its URL (`/v1/info`).
///
/// It serves HTTPS with the directory's `[tls]` certificate (which must then also name the
/// relay's host), plus QUIC address discovery and the doctor's address echo on free UDP
/// ports. Without `[tls]` it serves plain HTTP, without address discovery, and only on
/// loopback (unless `insecure_http`). It forwards encrypted packets in real time and keeps
/// nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// The relay's address, e.g. `"[::]:3340"` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The URL agents use, if it differs from `https://HOST:PORT` where HOST is the host the
    /// agent reached the directory at and PORT the relay's port. Default: that.
    pub public_url: Option<String>,
}

/// `[transparency]`: how bindings are published in the key-transparency log.
///
/// The defaults are tuned for a small deployment and for tests: a binding is published at
/// once when nothing was published in the last second, and bindings confirmed within one
/// second of each other share an epoch.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparencyConfig {
    /// Shortest time between two epochs. Default 1 s. Longer makes fewer, larger epochs (less
    /// audit work for clients) at the cost of a longer wait before a new binding can be looked
    /// up.
    #[serde(with = "humantime_serde")]
    pub epoch_interval: Duration,
    /// How long a lookup of a binding that is still waiting for its epoch waits before it
    /// answers `not_published`. Default 5 s (the agent gives up on a session request after 10 s).
    #[serde(with = "humantime_serde")]
    pub lookup_wait: Duration,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        Self {
            epoch_interval: Duration::from_secs(1),
            lookup_wait: Duration::from_secs(5),
        }
    }
}

/// How to reach the SMTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587). The default.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on loopback.
    None,
}

/// `[smtp]`: email verification codes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Relay host name (checked against its certificate).
    pub host: String,
    /// Port. Default 587.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `starttls` (default), `tls` or `none` (loopback only).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login, if the relay wants authentication.
    pub username: Option<String>,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File whose content is the password.
    pub password_file: Option<PathBuf>,
    /// Sender, e.g. `Dialtone <no-reply@example.com>`.
    pub from: String,
    /// Subject line. Default "Your Dialtone code".
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Extra CA certificate (PEM) to trust for the relay, besides the public roots.
    pub ca_file: Option<PathBuf>,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_subject() -> String {
    "Your Dialtone code".into()
}

/// `[sms]`: SMS verification codes through an HTTP gateway. `{to}` and `{code}` are replaced
/// in `url`, header values and `body`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Gateway URL (https://; plain http only on loopback).
    pub url: String,
    /// HTTP method. Default POST.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra headers (e.g. Authorization).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Request body template.
    pub body: Option<String>,
    /// Content type of the body. Default `application/json`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Extra CA certificate (PEM) to trust for the gateway.
    pub ca_file: Option<PathBuf>,
}

fn default_method() -> String {
    "POST".into()
}

fn default_content_type() -> String {
    "application/json".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4100)),
            data_dir: PathBuf::from("dialtone-directory-data"),
            verify_outbox: None,
            tls: None,
            insecure_http: false,
            public_url: None,
            session: SessionConfig::default(),
            verification: VerificationConfig::default(),
            limits: Limits::default(),
            smtp: None,
            sms: None,
            relay: None,
            transparency: TransparencyConfig::default(),
        }
    }
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Session timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Interval between WebSocket pings. Default 30 s. They find agents whose process hangs
    /// while their machine still answers; dead links are the kernel's job (`dead_link`), which
    /// costs the directory no wake-ups: at 100 000 sessions, pings every 2 s would keep both
    /// cores of a small server busy doing nothing else.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A session with no frame and no pong for this long is closed and its device is offline.
    /// Default 75 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A connection whose other end is gone (machine off, cable out, network changed) is
    /// closed within this time, by TCP keepalive probes and a TCP user timeout that the kernel
    /// runs. Default 8 s: an agent killed behind a dead link shows offline within 10 s. An
    /// agent that exits or is killed on a live link closes its socket and is offline at once.
    #[serde(with = "humantime_serde")]
    pub dead_link: Duration,
    /// How long a device whose link went silent (found dead by `dead_link` or `timeout`, not
    /// closed by the device) is still shown as it was, so that a cut of a few seconds (Wi-Fi
    /// roaming, a mobile hand-over) does not flap its presence: if it logs in again meanwhile,
    /// its session resumes and its contacts see no change. Its pushes are dropped meanwhile and
    /// peers that try it find it unreachable, as during the cut itself. Default 10 s: a cut of
    /// up to 10 s shows nothing, a silent loss shows offline within `dead_link` + `grace`
    /// (under 20 s). A clean close or a killed agent (its socket closes) shows at once. `0s`:
    /// no grace.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Lifetime of a session challenge. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub challenge_ttl: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            timeout: Duration::from_secs(75),
            dead_link: Duration::from_secs(8),
            grace: Duration::from_secs(10),
            challenge_ttl: Duration::from_secs(60),
        }
    }
}

/// Verification codes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// How long a code stays valid. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// Wrong codes allowed before the attempt is void. Default 5.
    pub max_attempts: u32,
    /// Wrong registration-lock PINs allowed (in total, until the right one) before the lock
    /// refuses every PIN until it lapses. Default 10.
    pub max_pin_attempts: u32,
    /// A registration lock lapses when no device of its account was online for this long
    /// (counted from the end of the last session), so someone who lost every device and the
    /// PIN can register again. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub lock_lapse: Duration,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(600),
            max_attempts: 5,
            max_pin_attempts: 10,
            lock_lapse: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One rate limit: `burst` requests at once, one more every `every`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests allowed at once.
    pub burst: u32,
    /// Time to regain one request.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Limit {
    const fn new(burst: u32, secs: u64) -> Self {
        Self {
            burst,
            every: Duration::from_secs(secs),
        }
    }

    pub(crate) fn rule(self) -> dialtone_proto::rules::RateRule {
        dialtone_proto::rules::RateRule::new(self.burst, self.every)
    }
}

/// Rate limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Registrations (codes sent) per identifier. Default 3, then one per minute.
    pub register_per_identifier: Limit,
    /// Registrations per client IP. Default 20, then one per 10 s.
    pub register_per_ip: Limit,
    /// Registrations overall. Default 200, then 20 per second.
    pub register_global: Limit,
    /// Code confirmations per client IP. Default 30, then one per 2 s.
    pub confirm_per_ip: Limit,
    /// Session challenges and public lookups per client IP. Default 200, then 50 per second.
    pub requests_per_ip: Limit,
    /// Requests per session (everything but pings). Default 100, then 20 per second.
    pub session_requests: Limit,
    /// Contact requests per requesting account, over all its sessions. Default 20, then one
    /// per 30 s: enough for a person adding their contacts, not for sweeping a list of
    /// identifiers.
    pub contact_requests_per_account: Limit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            register_per_identifier: Limit::new(3, 60),
            register_per_ip: Limit::new(20, 10),
            register_global: Limit {
                burst: 200,
                every: Duration::from_millis(50),
            },
            confirm_per_ip: Limit::new(30, 2),
            requests_per_ip: Limit {
                burst: 200,
                every: Duration::from_millis(20),
            },
            session_requests: Limit {
                burst: 100,
                every: Duration::from_millis(50),
            },
            contact_requests_per_account: Limit::new(20, 30),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// Values that parse but do not make sense together.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML configuration and checks that its values make sense together.
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(s)?;
        c.session.check().map_err(ConfigError::Invalid)?;
        Ok(c)
    }
}

impl SessionConfig {
    /// The heartbeat must be positive and shorter than the timeout (a session is closed when
    /// no pong came within `timeout`, so pings must come more often than that).
    fn check(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() {
            return Err("[session] heartbeat must be more than 0 s (default 30 s)".into());
        }
        if self.heartbeat >= self.timeout {
            return Err(format!(
                "[session] heartbeat ({:?}) must be shorter than timeout ({:?}), or live sessions would time out",
                self.heartbeat, self.timeout
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let s = include_str!("../config.example.toml");
        let c = Config::from_toml(s).unwrap();
        assert_eq!(c.session.heartbeat, Duration::from_secs(30));
        assert!(c.tls.is_some());
        assert_eq!(c.limits.register_per_identifier.burst, 3);
        let smtp = c.smtp.unwrap();
        assert_eq!((smtp.port, smtp.security), (587, SmtpSecurity::Starttls));
        assert!(c.sms.unwrap().body.unwrap().contains("{code}"));
        assert_eq!(c.transparency.epoch_interval, Duration::from_secs(1));
    }

    #[test]
    fn heartbeat_must_be_positive_and_below_the_timeout() {
        let e = Config::from_toml("[session]\nheartbeat = \"0s\"").unwrap_err();
        assert!(e.to_string().contains("more than 0 s"), "{e}");
        let e = Config::from_toml("[session]\nheartbeat = \"80s\"").unwrap_err();
        assert!(e.to_string().contains("shorter than timeout"), "{e}");
        assert!(Config::from_toml("[session]\nheartbeat = \"5s\"\ntimeout = \"20s\"").is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("listn = \"127.0.0.1:1\"").is_err());
    }
}
