//! How verification codes reach people. The directory calls a [`VerificationChannel`]; this
//! issue ships the file outbox (demos and tests). SMTP and SMS gateways plug in the same way.

use std::{future::Future, path::PathBuf, pin::Pin};

use dialtone_proto::Identifier;

/// Why a code could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// This channel cannot reach this kind of identifier.
    #[error("this directory cannot send codes to {0}")]
    Unsupported(String),
    /// Sending failed.
    #[error("sending the code failed: {0}")]
    Failed(String),
}

/// A boxed future, so the trait stays object safe.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ChannelError>> + Send + 'a>>;

/// Sends one-time codes.
pub trait VerificationChannel: Send + Sync + std::fmt::Debug + 'static {
    /// Short name reported to clients: `outbox`, `email`, `sms`.
    fn name(&self) -> &'static str;
    /// Sends `code` to `identifier`.
    fn send<'a>(&'a self, identifier: &'a Identifier, code: &'a str) -> SendFuture<'a>;
}

/// Writes each code to `DIR/<identifier>` (mode 0600, atomically). For demos and tests only:
/// anyone who can read the directory can read the codes.
#[derive(Debug, Clone)]
pub struct OutboxChannel {
    dir: PathBuf,
}

impl OutboxChannel {
    /// Codes go to files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl VerificationChannel for OutboxChannel {
    fn name(&self) -> &'static str {
        "outbox"
    }

    fn send<'a>(&'a self, identifier: &'a Identifier, code: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            use std::{io::Write, os::unix::fs::OpenOptionsExt};
            let dir = self.dir.clone();
            // One plain file name inside the outbox, whatever the identifier holds (an email
            // local part may contain '/').
            let name = identifier.as_str().replace('/', "%2F");
            let code = code.to_owned();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                let tmp = dir.join(format!(".{name}.tmp"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                writeln!(f, "{code}")?;
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join(name))
            })
            .await
            .map_err(|e| ChannelError::Failed(e.to_string()))?
            .map_err(|e| ChannelError::Failed(e.to_string()))
        })
    }
}

/// Sends codes by email over SMTP (`lettre`): STARTTLS (port 587) or implicit TLS (465),
/// with optional authentication. Plain SMTP is allowed only to a loopback relay.
#[derive(Debug, Clone)]
pub struct SmtpChannel {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    subject: String,
}

impl SmtpChannel {
    /// Builds the transport from the `[smtp]` configuration.
    pub fn new(c: &crate::config::SmtpConfig) -> Result<Self, ChannelError> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let bad =
            |e: &dyn std::fmt::Display| ChannelError::Failed(format!("smtp configuration: {e}"));
        let from: lettre::message::Mailbox = c.from.parse().map_err(|e| bad(&e))?;
        let mut tls = TlsParameters::builder(c.host.clone());
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).map_err(|e| bad(&format!("{}: {e}", ca.display())))?;
            tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| bad(&e))?);
        }
        let tls = tls.build_rustls().map_err(|e| bad(&e))?;
        let mut b =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(c.host.clone())
                .port(c.port)
                .timeout(Some(std::time::Duration::from_secs(20)));
        b = match c.security {
            crate::config::SmtpSecurity::Starttls => b.tls(Tls::Required(tls)),
            crate::config::SmtpSecurity::Tls => b.tls(Tls::Wrapper(tls)),
            crate::config::SmtpSecurity::None => {
                let loopback = c.host == "localhost"
                    || c.host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(bad(
                        &"security = \"none\" is allowed only for a relay on loopback",
                    ));
                }
                b.tls(Tls::None)
            }
        };
        if let Some(user) = &c.username {
            let password = match (&c.password, &c.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| bad(&format!("{}: {e}", f.display())))?
                    .trim_end_matches('\n')
                    .to_owned(),
                (None, None) => {
                    return Err(bad(&"username given without password or password_file"));
                }
            };
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user.clone(),
                password,
            ));
        }
        Ok(Self {
            transport: b.build(),
            from,
            subject: c.subject.clone(),
        })
    }
}

impl VerificationChannel for SmtpChannel {
    fn name(&self) -> &'static str {
        "email"
    }

    fn send<'a>(&'a self, identifier: &'a Identifier, code: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            use lettre::AsyncTransport;
            if identifier.kind() != dialtone_proto::ids::IdentifierKind::Email {
                return Err(ChannelError::Unsupported(identifier.to_string()));
            }
            let to: lettre::message::Mailbox = identifier
                .as_str()
                .parse()
                .map_err(|e| ChannelError::Failed(format!("recipient: {e}")))?;
            let body = format!(
                "Your Dialtone verification code is {code}\n\n\
                 Enter it with: dialtone verify {code}\n\n\
                 If you did not ask for this code, ignore this mail: nothing happens without it.\n"
            );
            let msg = lettre::Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(&self.subject)
                .header(lettre::message::header::ContentType::TEXT_PLAIN)
                .body(body)
                .map_err(|e| ChannelError::Failed(e.to_string()))?;
            self.transport
                .send(msg)
                .await
                .map(|_| ())
                .map_err(|e| ChannelError::Failed(e.to_string()))
        })
    }
}

/// Sends codes by SMS through an HTTP gateway, with a request template the operator fills in:
/// `{to}` (E.164 number) and `{code}` are replaced in the URL, the headers and the body.
#[derive(Debug, Clone)]
pub struct SmsChannel {
    http: reqwest::Client,
    config: crate::config::SmsConfig,
}

impl SmsChannel {
    /// Builds the client from the `[sms]` configuration.
    pub fn new(c: &crate::config::SmsConfig) -> Result<Self, ChannelError> {
        let bad =
            |e: &dyn std::fmt::Display| ChannelError::Failed(format!("sms configuration: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &c.ca_file {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(20))
            .no_proxy()
            .build()
            .map_err(|e| bad(&e))?;
        if !(c.url.starts_with("https://")
            || c.url.starts_with("http://127.")
            || c.url.starts_with("http://localhost"))
        {
            return Err(bad(
                &"the gateway url must be https:// (plain http only on loopback)",
            ));
        }
        Ok(Self {
            http,
            config: c.clone(),
        })
    }
}

impl VerificationChannel for SmsChannel {
    fn name(&self) -> &'static str {
        "sms"
    }

    fn send<'a>(&'a self, identifier: &'a Identifier, code: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            if identifier.kind() != dialtone_proto::ids::IdentifierKind::Phone {
                return Err(ChannelError::Unsupported(identifier.to_string()));
            }
            let fill = |t: &str| {
                t.replace("{to}", identifier.as_str())
                    .replace("{code}", code)
            };
            let method = reqwest::Method::from_bytes(self.config.method.as_bytes())
                .map_err(|e| ChannelError::Failed(e.to_string()))?;
            let mut req = self.http.request(method, fill(&self.config.url));
            for (k, v) in &self.config.headers {
                req = req.header(k.as_str(), fill(v));
            }
            if let Some(body) = &self.config.body {
                req = req
                    .header("content-type", &self.config.content_type)
                    .body(fill(body));
            }
            let resp = req
                .send()
                .await
                // Not the URL: it carries the number and the code, and the error is logged.
                .map_err(|e| ChannelError::Failed(format!("sms gateway: {}", e.without_url())))?;
            if !resp.status().is_success() {
                return Err(ChannelError::Failed(format!(
                    "sms gateway answered {}",
                    resp.status()
                )));
            }
            Ok(())
        })
    }
}

/// Which channel serves which kind of identifier.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    /// For email addresses.
    pub email: Option<std::sync::Arc<dyn VerificationChannel>>,
    /// For phone numbers.
    pub phone: Option<std::sync::Arc<dyn VerificationChannel>>,
}

impl Channels {
    /// The channel for `identifier`'s kind.
    pub fn for_identifier(
        &self,
        identifier: &Identifier,
    ) -> Option<&std::sync::Arc<dyn VerificationChannel>> {
        match identifier.kind() {
            dialtone_proto::ids::IdentifierKind::Email => self.email.as_ref(),
            dialtone_proto::ids::IdentifierKind::Phone => self.phone.as_ref(),
        }
    }

    /// Builds the channels a configuration asks for: the outbox serves both kinds; otherwise
    /// `[smtp]` serves email and `[sms]` serves phone numbers.
    pub fn from_config(c: &crate::Config) -> Result<Self, ChannelError> {
        if let Some(dir) = &c.verify_outbox {
            let outbox: std::sync::Arc<dyn VerificationChannel> =
                std::sync::Arc::new(OutboxChannel::new(dir.clone()));
            return Ok(Self {
                email: Some(outbox.clone()),
                phone: Some(outbox),
            });
        }
        let email = c.smtp.as_ref().map(SmtpChannel::new).transpose()?;
        let phone = c.sms.as_ref().map(SmsChannel::new).transpose()?;
        Ok(Self {
            email: email.map(|e| std::sync::Arc::new(e) as std::sync::Arc<dyn VerificationChannel>),
            phone: phone.map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn VerificationChannel>),
        })
    }
}
