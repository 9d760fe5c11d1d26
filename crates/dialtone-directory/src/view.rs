//! What the directory shows whoever asks: the seam between its state and its answers.
//!
//! The honest directory ([`Honest`], the default) shows everyone the same transparency log
//! and every contact entry as stored. A [`View`] given to [`crate::ServerBuilder::view`] may
//! answer otherwise, for one viewer or for all, and hears of every epoch the log publishes.
//! The seam exists so that the malicious-directory tests can run a directory that lies (the
//! `publish = false` crate `dialtone-directory-malicious`) with no line of the lie in this
//! crate; nothing else in the directory knows who is asking a transparency question.

use std::sync::Arc;

use akd::{AkdLabel, AkdValue};
use dialtone_proto::{
    Identifier,
    directory::ContactEntry,
    transparency::{Checkpoint, KtAudit, KtHistory, KtLookup},
};

use crate::kt::{KtError, Transparency};

/// Who asks: the account of the session that asks, or `None` over anonymous HTTP.
pub type Viewer<'a> = Option<&'a Identifier>;

/// How the directory answers transparency requests and shows contact entries. Every method
/// has the honest answer as its default.
#[async_trait::async_trait]
pub trait View: Send + Sync + std::fmt::Debug + 'static {
    /// The log is open at `latest`, before the publisher starts.
    async fn opened(&self, log: &Arc<Transparency>, latest: &Checkpoint) -> Result<(), KtError> {
        let _ = (log, latest);
        Ok(())
    }

    /// An epoch was published with `updates` and signed as `checkpoint`. Called while the
    /// log is still locked for writing: it must not ask the log for proofs or checkpoints.
    async fn published(
        &self,
        log: &Transparency,
        updates: &[(AkdLabel, AkdValue)],
        checkpoint: &Checkpoint,
    ) -> Result<(), KtError> {
        let _ = (log, updates, checkpoint);
        Ok(())
    }

    /// The latest checkpoint, as `viewer` is shown it.
    async fn checkpoint(
        &self,
        log: &Transparency,
        viewer: Viewer<'_>,
    ) -> Result<Checkpoint, KtError> {
        let _ = viewer;
        log.checkpoint().await
    }

    /// A lookup proof for `id`, as `viewer` is shown it.
    async fn lookup(
        &self,
        log: &Transparency,
        id: &Identifier,
        viewer: Viewer<'_>,
    ) -> Result<KtLookup, KtError> {
        let _ = viewer;
        log.lookup(id).await
    }

    /// The key history of `id`, as `viewer` is shown it.
    async fn history(
        &self,
        log: &Transparency,
        id: &Identifier,
        viewer: Viewer<'_>,
    ) -> Result<KtHistory, KtError> {
        let _ = viewer;
        log.history(id).await
    }

    /// Checkpoints `from..=to` and the append-only proof, as `viewer` is shown them.
    async fn audit(
        &self,
        log: &Transparency,
        from: u64,
        to: u64,
        viewer: Viewer<'_>,
    ) -> Result<KtAudit, KtError> {
        let _ = viewer;
        log.audit(from, to).await
    }

    /// A contact entry as it is sent (in a lookup, the contact list or a push).
    fn contact_entry(&self, entry: ContactEntry) -> ContactEntry {
        entry
    }
}

/// The honest view: everyone sees the same log and the entries as stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Honest;

impl View for Honest {}

/// The view a server runs with (honest unless a builder said otherwise).
#[derive(Debug, Clone)]
pub(crate) struct ViewHandle(pub(crate) Arc<dyn View>);

impl Default for ViewHandle {
    fn default() -> Self {
        Self(Arc::new(Honest))
    }
}

impl std::ops::Deref for ViewHandle {
    type Target = dyn View;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
