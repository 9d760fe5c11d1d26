//! Durable state in SQLite: accounts, devices, pending verifications, contact
//! authorizations and the key-transparency log (see `kt`). Never messages, never queued pushes.
//!
//! One connection behind a mutex, used from blocking threads (`Store::run`), in WAL mode.
//! Schema versions are applied in order, each in a transaction, tracked by
//! `PRAGMA user_version`.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey, devices::DeviceList, directory::Relation,
};
use rusqlite::{Connection, OptionalExtension, params};

/// Schema migrations; index + 1 is the version each one leads to.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE accounts (
        identifier   TEXT PRIMARY KEY,
        identity_key BLOB NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    );
    CREATE TABLE devices (
        device_id  BLOB PRIMARY KEY,
        identifier TEXT NOT NULL REFERENCES accounts(identifier) ON DELETE CASCADE,
        cert       TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX devices_by_identifier ON devices(identifier);
    CREATE TABLE pending_verifications (
        identifier   TEXT PRIMARY KEY,
        identity_key BLOB NOT NULL,
        device_cert  TEXT NOT NULL,
        code         TEXT NOT NULL,
        expires_at   INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE contacts (
        owner    TEXT NOT NULL,
        peer     TEXT NOT NULL,
        relation TEXT NOT NULL CHECK (relation IN ('outgoing', 'incoming', 'accepted', 'blocked')),
        since    INTEGER NOT NULL,
        PRIMARY KEY (owner, peer)
    );
    CREATE INDEX contacts_by_peer ON contacts(peer);",
    // 2: key transparency. akd's records (tree nodes and the AZKS root record, CBOR, keyed
    // by akd's binary id), akd's value states (one row per label and epoch), the signed
    // checkpoint log (append-only: triggers refuse UPDATE and DELETE), and the bindings
    // waiting for the next epoch. Existing accounts are queued for the first epoch.
    "CREATE TABLE akd_records (
        id   BLOB PRIMARY KEY,
        data BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE akd_values (
        label      BLOB NOT NULL,
        epoch      INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        value      BLOB NOT NULL,
        node_label BLOB NOT NULL,
        node_len   INTEGER NOT NULL,
        PRIMARY KEY (label, epoch)
    ) WITHOUT ROWID;
    CREATE INDEX akd_values_by_version ON akd_values(label, version);
    CREATE TABLE kt_checkpoints (
        epoch        INTEGER PRIMARY KEY,
        root_hash    BLOB NOT NULL,
        previous     BLOB NOT NULL,
        signature    BLOB NOT NULL,
        published_at INTEGER NOT NULL
    );
    CREATE TRIGGER kt_checkpoints_no_update BEFORE UPDATE ON kt_checkpoints
        BEGIN SELECT RAISE(ABORT, 'the checkpoint log is append-only'); END;
    CREATE TRIGGER kt_checkpoints_no_delete BEFORE DELETE ON kt_checkpoints
        BEGIN SELECT RAISE(ABORT, 'the checkpoint log is append-only'); END;
    CREATE TABLE kt_pending (
        identifier TEXT PRIMARY KEY,
        value      BLOB NOT NULL,
        queued_at  INTEGER NOT NULL
    );
    INSERT INTO kt_pending (identifier, value, queued_at)
        SELECT identifier, CAST(X'01' || identity_key AS BLOB), updated_at FROM accounts;",
    // 3: devices and the registration lock. `device_list` is the signed device list (JSON)
    // published as the account's transparency-log value; `lock_hash` the Argon2id hash of the
    // registration-lock PIN; `last_seen` when a device of the account was last online (the
    // lock lapses after a configured time without one).
    "ALTER TABLE accounts ADD COLUMN device_list TEXT;
    ALTER TABLE accounts ADD COLUMN lock_hash TEXT;
    ALTER TABLE accounts ADD COLUMN lock_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    UPDATE accounts SET last_seen = updated_at;",
];

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse.
    #[error("damaged row: {0}")]
    Corrupt(String),
    /// The blocking task failed.
    #[error("database task failed")]
    Join,
    /// Data handed in to be written is invalid (bulk provisioning).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// An account: an identifier bound to an identity key.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) identifier: Identifier,
    pub(crate) identity_key: IdentityKey,
}

/// An account's registration lock, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Lock {
    /// Argon2id PHC string of the PIN; `None` when no lock is set.
    pub(crate) hash: Option<String>,
    /// Wrong PINs given since the last right one.
    pub(crate) failures: u32,
    /// When a device of the account was last online (seconds since the Unix epoch): written
    /// when a session opens and closes, and hourly while one is open.
    pub(crate) last_seen: u64,
}

/// What a device-list change does to the registration lock.
#[derive(Debug, Clone)]
pub(crate) enum LockChange {
    /// Leave it as it is.
    Keep,
    /// Set (or replace) the PIN hash.
    Set(String),
    /// Remove the lock.
    Clear,
}

/// A verification waiting for its code.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) identity_key: IdentityKey,
    pub(crate) device_cert: DeviceCertificate,
    pub(crate) code: String,
    pub(crate) expires_at: u64,
    pub(crate) attempts: u32,
}

/// The store handle (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Connection>>,
}

fn key_from_blob(b: Vec<u8>) -> Result<IdentityKey, StoreError> {
    let arr: [u8; 32] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("identity key".into()))?;
    IdentityKey::from_bytes(&arr).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn ident(s: String) -> Result<Identifier, StoreError> {
    Identifier::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn relation_str(r: Relation) -> &'static str {
    match r {
        Relation::Accepted => "accepted",
        Relation::Blocked => "blocked",
        Relation::Incoming => "incoming",
        Relation::Outgoing => "outgoing",
        Relation::None => "none",
    }
}

fn relation_from(s: &str) -> Relation {
    match s {
        "accepted" => Relation::Accepted,
        "blocked" => Relation::Blocked,
        "incoming" => Relation::Incoming,
        "outgoing" => Relation::Outgoing,
        _ => Relation::None,
    }
}

impl Store {
    /// Opens (creating if needed) `DIR/directory.sqlite3` and migrates it.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("directory.sqlite3"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self {
            conn: Arc::new(Mutex::new(conn)),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version in the file.
    #[cfg(test)]
    pub(crate) fn schema_version(&self) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite's state is transactional: a panic mid-use cannot leave it half-written.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` with the connection on this thread (outside the runtime).
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&mut self.lock())
    }

    /// Runs `f` with the connection on a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&mut this.lock()))
            .await
            .map_err(|_| StoreError::Join)?
    }
}

/// Queries, on a connection (call them inside [`Store::run`]).
pub(crate) mod q {
    use super::*;

    pub(crate) fn account(c: &Connection, id: &Identifier) -> Result<Option<Account>, StoreError> {
        let row: Option<Vec<u8>> = c
            .query_row(
                "SELECT identity_key FROM accounts WHERE identifier = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        row.map(|k| {
            Ok(Account {
                identifier: id.clone(),
                identity_key: key_from_blob(k)?,
            })
        })
        .transpose()
    }

    pub(crate) fn devices(
        c: &Connection,
        id: &Identifier,
    ) -> Result<Vec<DeviceCertificate>, StoreError> {
        let mut st =
            c.prepare_cached("SELECT cert FROM devices WHERE identifier = ?1 ORDER BY created_at")?;
        let rows = st.query_map([id.as_str()], |r| r.get::<_, String>(0))?;
        rows.map(|r| serde_json::from_str(&r?).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    /// The account and certificate of a registered device.
    pub(crate) fn device(
        c: &Connection,
        device: &DeviceId,
    ) -> Result<Option<(Account, DeviceCertificate)>, StoreError> {
        let row: Option<(String, String)> = c
            .query_row(
                "SELECT identifier, cert FROM devices WHERE device_id = ?1",
                [&device.as_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, cert)) = row else {
            return Ok(None);
        };
        let id = ident(id)?;
        let cert: DeviceCertificate =
            serde_json::from_str(&cert).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let account =
            account(c, &id)?.ok_or_else(|| StoreError::Corrupt("device without account".into()))?;
        Ok(Some((account, cert)))
    }

    pub(crate) fn put_pending(
        c: &Connection,
        id: &Identifier,
        p: &Pending,
    ) -> Result<(), StoreError> {
        let cert = serde_json::to_string(&p.device_cert)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        c.execute(
            "INSERT OR REPLACE INTO pending_verifications
             (identifier, identity_key, device_cert, code, expires_at, attempts) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            params![id.as_str(), &p.identity_key.to_bytes()[..], cert, p.code, p.expires_at as i64],
        )?;
        Ok(())
    }

    pub(crate) fn pending(c: &Connection, id: &Identifier) -> Result<Option<Pending>, StoreError> {
        let row: Option<(Vec<u8>, String, String, i64, i64)> = c
            .query_row(
                "SELECT identity_key, device_cert, code, expires_at, attempts FROM pending_verifications WHERE identifier = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((k, cert, code, exp, attempts)) = row else {
            return Ok(None);
        };
        Ok(Some(Pending {
            identity_key: key_from_blob(k)?,
            device_cert: serde_json::from_str(&cert)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            code,
            expires_at: u64::try_from(exp).unwrap_or(0),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        }))
    }

    pub(crate) fn bump_attempts(c: &Connection, id: &Identifier) -> Result<(), StoreError> {
        c.execute(
            "UPDATE pending_verifications SET attempts = attempts + 1 WHERE identifier = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    pub(crate) fn delete_pending(c: &Connection, id: &Identifier) -> Result<(), StoreError> {
        c.execute(
            "DELETE FROM pending_verifications WHERE identifier = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    /// Binds `id` to `key` with `cert` as a device and, if given, `list` as the published
    /// device list (every other registered device not on it is removed) and the lock change.
    /// Returns whether the key changed and the devices removed (their sessions must end).
    pub(crate) fn bind(
        c: &mut Connection,
        id: &Identifier,
        key: &IdentityKey,
        cert: &DeviceCertificate,
        list: Option<&DeviceList>,
        lock: LockChange,
        now: u64,
    ) -> Result<(bool, Vec<DeviceId>), StoreError> {
        let tx = c.transaction()?;
        let (replaced, mut removed) = bind_in(&tx, id, key, cert, now)?;
        seen(&tx, id, now)?;
        if let Some(list) = list {
            removed.extend(set_device_list(&tx, id, list, &[], lock, now)?);
        } else if replaced {
            tx.execute(
                "UPDATE accounts SET device_list = NULL, lock_hash = NULL, lock_failures = 0 WHERE identifier = ?1",
                [id.as_str()],
            )?;
        }
        tx.commit()?;
        Ok((replaced, removed))
    }

    /// The account's signed device list, if it published one.
    pub(crate) fn device_list(
        c: &Connection,
        id: &Identifier,
    ) -> Result<Option<DeviceList>, StoreError> {
        let row: Option<Option<String>> = c
            .query_row(
                "SELECT device_list FROM accounts WHERE identifier = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        row.flatten()
            .map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// The account's registration lock.
    pub(crate) fn lock(c: &Connection, id: &Identifier) -> Result<Option<Lock>, StoreError> {
        c.query_row(
            "SELECT lock_hash, lock_failures, last_seen FROM accounts WHERE identifier = ?1",
            [id.as_str()],
            |r| {
                Ok(Lock {
                    hash: r.get(0)?,
                    failures: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                    last_seen: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                })
            },
        )
        .optional()
        .map_err(Into::into)
    }

    /// Reserves one registration-lock PIN attempt before the PIN is checked: counts it as a
    /// wrong one, in one statement, unless `max` are counted already (then `None`, as when
    /// no lock is set). Returns the attempts counted, this one included. Concurrent guesses
    /// each take their own attempt, so at most `max` are ever checked.
    pub(crate) fn reserve_pin_attempt(
        c: &Connection,
        id: &Identifier,
        max: u32,
    ) -> Result<Option<u32>, StoreError> {
        let used: Option<i64> = c
            .query_row(
                "UPDATE accounts SET lock_failures = lock_failures + 1
                 WHERE identifier = ?1 AND lock_hash IS NOT NULL AND lock_failures < ?2
                 RETURNING lock_failures",
                params![id.as_str(), i64::from(max)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(used.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// The right PIN was given: the count of wrong ones starts again.
    pub(crate) fn pin_right(c: &Connection, id: &Identifier) -> Result<(), StoreError> {
        c.execute(
            "UPDATE accounts SET lock_failures = 0 WHERE identifier = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    /// Queues `value` as the identifier's next value in the transparency log (published at
    /// the next epoch; a value queued earlier and not yet published is replaced).
    pub(crate) fn queue_kt(
        c: &Connection,
        id: &Identifier,
        value: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO kt_pending (identifier, value, queued_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(identifier) DO UPDATE SET value = excluded.value, queued_at = excluded.queued_at",
            params![id.as_str(), value, now],
        )?;
        Ok(())
    }

    /// Records that a device of the account was online now (a session opened or closed, or
    /// one is open: see `sessions::SEEN_REFRESH`).
    pub(crate) fn seen(c: &Connection, id: &Identifier, now: u64) -> Result<(), StoreError> {
        c.execute(
            "UPDATE accounts SET last_seen = ?2 WHERE identifier = ?1",
            params![id.as_str(), now as i64],
        )?;
        Ok(())
    }

    /// Makes `list` the account's device list (checked by the caller): registers `new_certs`,
    /// removes the registered devices not on it, applies the lock change and queues the list
    /// for the transparency log. Returns the removed devices.
    pub(crate) fn set_device_list(
        tx: &Connection,
        id: &Identifier,
        list: &DeviceList,
        new_certs: &[DeviceCertificate],
        lock: LockChange,
        now: u64,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let mut removed = Vec::new();
        for d in devices(tx, id)? {
            if !list.contains(&d.device_id) {
                tx.execute(
                    "DELETE FROM devices WHERE device_id = ?1",
                    [&d.device_id.as_bytes()[..]],
                )?;
                removed.push(d.device_id);
            }
        }
        for cert in new_certs {
            let cert_json =
                serde_json::to_string(cert).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO devices (device_id, identifier, cert, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![&cert.device_id.as_bytes()[..], id.as_str(), cert_json, now],
            )?;
        }
        let json = serde_json::to_string(list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE accounts SET device_list = ?2 WHERE identifier = ?1",
            params![id.as_str(), json],
        )?;
        match lock {
            LockChange::Keep => {}
            LockChange::Set(hash) => {
                tx.execute(
                    "UPDATE accounts SET lock_hash = ?2, lock_failures = 0 WHERE identifier = ?1",
                    params![id.as_str(), hash],
                )?;
            }
            LockChange::Clear => {
                tx.execute(
                    "UPDATE accounts SET lock_hash = NULL, lock_failures = 0 WHERE identifier = ?1",
                    [id.as_str()],
                )?;
            }
        }
        queue_kt(
            tx,
            id,
            &dialtone_proto::transparency::kt_value_devices(list),
            now,
        )?;
        Ok(removed)
    }

    /// [`bind`] inside a transaction the caller commits (bulk provisioning binds many at
    /// once).
    pub(crate) fn bind_in(
        tx: &Connection,
        id: &Identifier,
        key: &IdentityKey,
        cert: &DeviceCertificate,
        now: u64,
    ) -> Result<(bool, Vec<DeviceId>), StoreError> {
        let old = account(tx, id)?;
        let replaced = old.as_ref().is_some_and(|a| a.identity_key != *key);
        let mut removed = Vec::new();
        if replaced {
            for d in devices(tx, id)? {
                removed.push(d.device_id);
            }
            tx.execute("DELETE FROM devices WHERE identifier = ?1", [id.as_str()])?;
            // The contacts accepted the old key, not this one: whoever holds the new key
            // sees their presence and addresses only once each confirms again (their agent
            // does when they trust or verify the new key). They still see this side, so
            // their agents can warn about the change.
            tx.execute(
                "UPDATE contacts SET relation = 'outgoing' WHERE owner = ?1 AND relation = 'accepted'",
                [id.as_str()],
            )?;
        }
        tx.execute(
            "INSERT INTO accounts (identifier, identity_key, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(identifier) DO UPDATE SET identity_key = excluded.identity_key, updated_at = excluded.updated_at",
            params![id.as_str(), &key.to_bytes()[..], now as i64],
        )?;
        // A device key registered under another account moves here (it proved the new key).
        tx.execute(
            "DELETE FROM devices WHERE device_id = ?1",
            [&cert.device_id.as_bytes()[..]],
        )?;
        let cert_json =
            serde_json::to_string(cert).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO devices (device_id, identifier, cert, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                &cert.device_id.as_bytes()[..],
                id.as_str(),
                cert_json,
                now as i64
            ],
        )?;
        tx.execute(
            "DELETE FROM pending_verifications WHERE identifier = ?1",
            [id.as_str()],
        )?;
        if old.is_none() || replaced {
            // The new binding goes into the transparency log at the next epoch.
            queue_kt(
                tx,
                id,
                &dialtone_proto::transparency::kt_value(key),
                now as i64,
            )?;
        }
        Ok((replaced, removed))
    }

    pub(crate) fn relation(
        c: &Connection,
        owner: &Identifier,
        peer: &Identifier,
    ) -> Result<Relation, StoreError> {
        let r: Option<String> = c
            .query_row(
                "SELECT relation FROM contacts WHERE owner = ?1 AND peer = ?2",
                [owner.as_str(), peer.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(r.as_deref().map_or(Relation::None, relation_from))
    }

    pub(crate) fn set_relation(
        c: &Connection,
        owner: &Identifier,
        peer: &Identifier,
        rel: Relation,
        now: u64,
    ) -> Result<(), StoreError> {
        if rel == Relation::None {
            c.execute(
                "DELETE FROM contacts WHERE owner = ?1 AND peer = ?2",
                [owner.as_str(), peer.as_str()],
            )?;
        } else {
            c.execute(
                "INSERT INTO contacts (owner, peer, relation, since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(owner, peer) DO UPDATE SET relation = excluded.relation, since = excluded.since",
                params![owner.as_str(), peer.as_str(), relation_str(rel), now as i64],
            )?;
        }
        Ok(())
    }

    /// Every relation `owner` has, with the other side's key.
    pub(crate) fn relations(
        c: &Connection,
        owner: &Identifier,
    ) -> Result<Vec<(Account, Relation)>, StoreError> {
        let mut st = c.prepare_cached(
            "SELECT c.peer, c.relation, a.identity_key FROM contacts c JOIN accounts a ON a.identifier = c.peer
             WHERE c.owner = ?1 ORDER BY c.peer",
        )?;
        let rows = st.query_map([owner.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (peer, rel, key) = r?;
            Ok((
                Account {
                    identifier: ident(peer)?,
                    identity_key: key_from_blob(key)?,
                },
                relation_from(&rel),
            ))
        })
        .collect()
    }

    /// Who has `subject` as an accepted contact.
    pub(crate) fn accepted_of(
        c: &Connection,
        subject: &Identifier,
    ) -> Result<Vec<Identifier>, StoreError> {
        let mut st = c.prepare_cached(
            "SELECT owner FROM contacts WHERE peer = ?1 AND relation = 'accepted'",
        )?;
        let rows = st.query_map([subject.as_str()], |r| r.get::<_, String>(0))?;
        rows.map(|r| ident(r?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that ran before key transparency: its accounts are queued for the first
    /// epoch by the migration, so that they are provable after the upgrade.
    #[test]
    fn upgrade_queues_existing_accounts_for_the_transparency_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("directory.sqlite3")).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO accounts VALUES ('alice@example.com', ?1, 1, 2)",
                [&[7u8; 32][..]],
            )
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let rows: Vec<(String, Vec<u8>)> = {
            let c = s.lock();
            let mut st = c
                .prepare("SELECT identifier, value FROM kt_pending")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let mut want = vec![1u8];
        want.extend_from_slice(&[7u8; 32]);
        assert_eq!(rows, vec![("alice@example.com".to_owned(), want)]);
        // The checkpoint log refuses to be rewritten.
        let c = s.lock();
        c.execute(
            "INSERT INTO kt_checkpoints VALUES (0, x'00', x'00', x'00', 0)",
            [],
        )
        .unwrap();
        assert!(
            c.execute("UPDATE kt_checkpoints SET root_hash = x'01'", [])
                .is_err()
        );
        assert!(c.execute("DELETE FROM kt_checkpoints", []).is_err());
    }

    #[test]
    fn migrations_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
    }
}
