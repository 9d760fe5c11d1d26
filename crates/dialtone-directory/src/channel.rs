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
            let name = identifier.as_str().to_owned();
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
