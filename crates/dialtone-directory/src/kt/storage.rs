//! akd's storage on the directory's SQLite file.
//!
//! Two tables (schema version 2 in `store.rs`):
//!
//! - `akd_records`: the AZKS root record and the tree nodes, keyed by akd's full binary id
//!   (a type byte and the node label), stored as CBOR of akd's serde form;
//! - `akd_values`: one row per label and epoch (the value states), with the version in its
//!   own indexed column so that akd's `ValueStateRetrievalFlag` queries are single `SELECT`s.
//!
//! Every call runs on a blocking thread through [`Store::run`]; a batch write is one SQLite
//! transaction. akd's `StorageManager` adds its cache and transactions on top.

use std::{collections::HashMap, path::Path};

use akd::{
    AkdLabel, AkdValue,
    errors::StorageError,
    storage::{
        Database, DbSetState, Storable, StorageUtil,
        types::{DbRecord, KeyData, StorageType, ValueState, ValueStateRetrievalFlag},
    },
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{Store, StoreError};

/// akd's [`Database`] on the directory's SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteAkd {
    store: Store,
}

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Connection(e.to_string())
}

fn store_err(e: StoreError) -> StorageError {
    StorageError::Connection(e.to_string())
}

fn encode(record: &DbRecord) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(record, &mut out).map_err(|e| StorageError::Other(e.to_string()))?;
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<DbRecord, StorageError> {
    ciborium::from_reader(bytes)
        .map_err(|e| StorageError::Other(format!("damaged akd record: {e}")))
}

const VALUE_COLUMNS: &str = "label, epoch, version, value, node_label, node_len";

fn value_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ValueState> {
    let label: Vec<u8> = r.get(0)?;
    let epoch: i64 = r.get(1)?;
    let version: i64 = r.get(2)?;
    let value: Vec<u8> = r.get(3)?;
    let node_label: Vec<u8> = r.get(4)?;
    let node_len: u32 = r.get(5)?;
    let mut val = [0u8; 32];
    if node_label.len() == 32 {
        val.copy_from_slice(&node_label);
    }
    Ok(DbRecord::build_user_state(
        label,
        value,
        version as u64,
        node_len,
        val,
        epoch as u64,
    ))
}

fn put_value(c: &Connection, v: &ValueState) -> Result<(), rusqlite::Error> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO akd_values (label, epoch, version, value, node_label, node_len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        &v.username.0,
        v.epoch as i64,
        v.version as i64,
        &v.value.0,
        &v.label.label_val[..],
        v.label.label_len,
    ])?;
    Ok(())
}

fn put(c: &Connection, record: &DbRecord) -> Result<(), StorageError> {
    match record {
        DbRecord::ValueState(v) => put_value(c, v).map_err(db_err),
        other => {
            let data = encode(other)?;
            c.prepare_cached("INSERT OR REPLACE INTO akd_records (id, data) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![other.get_full_binary_id(), data]))
                .map_err(db_err)?;
            Ok(())
        }
    }
}

fn get_one<St: Storable>(c: &Connection, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
    let bin = St::get_full_binary_key_id(id);
    if St::data_type() == StorageType::ValueState {
        let key = ValueState::key_from_full_binary(&bin).map_err(StorageError::Other)?;
        let row = c
            .prepare_cached(&format!(
                "SELECT {VALUE_COLUMNS} FROM akd_values WHERE label = ?1 AND epoch = ?2"
            ))
            .and_then(|mut st| {
                st.query_row(params![key.0, key.1 as i64], value_row)
                    .optional()
            })
            .map_err(db_err)?;
        return row
            .map(DbRecord::ValueState)
            .ok_or_else(|| StorageError::NotFound(format!("ValueState {id:?}")));
    }
    let data: Option<Vec<u8>> = c
        .prepare_cached("SELECT data FROM akd_records WHERE id = ?1")
        .and_then(|mut st| st.query_row([&bin], |r| r.get(0)).optional())
        .map_err(db_err)?;
    match data {
        Some(d) => decode(&d),
        None => Err(StorageError::NotFound(format!(
            "{:?} {id:?}",
            St::data_type()
        ))),
    }
}

fn user_state(
    c: &Connection,
    label: &[u8],
    flag: ValueStateRetrievalFlag,
) -> Result<Option<ValueState>, rusqlite::Error> {
    let (cond, arg): (&str, Option<i64>) = match flag {
        ValueStateRetrievalFlag::SpecificVersion(v) => {
            ("AND version = ?2 ORDER BY epoch DESC", Some(v as i64))
        }
        ValueStateRetrievalFlag::SpecificEpoch(e) => ("AND epoch = ?2", Some(e as i64)),
        ValueStateRetrievalFlag::LeqEpoch(e) => {
            ("AND epoch <= ?2 ORDER BY epoch DESC", Some(e as i64))
        }
        ValueStateRetrievalFlag::MaxEpoch => ("ORDER BY epoch DESC", None),
        ValueStateRetrievalFlag::MinEpoch => ("ORDER BY epoch ASC", None),
    };
    let sql = format!("SELECT {VALUE_COLUMNS} FROM akd_values WHERE label = ?1 {cond} LIMIT 1");
    let mut st = c.prepare_cached(&sql)?;
    match arg {
        Some(a) => st.query_row(params![label, a], value_row).optional(),
        None => st.query_row(params![label], value_row).optional(),
    }
}

impl SqliteAkd {
    /// Opens (creating and migrating if needed) `DIR/directory.sqlite3`, the directory's own
    /// database file.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Store::open(dir)?,
        })
    }

    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl Database for SqliteAkd {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.store
            .run(move |c| {
                let tx = c.transaction()?;
                let r = records.iter().try_for_each(|rec| put(&tx, rec));
                match r {
                    Ok(()) => {
                        tx.commit()?;
                        Ok(Ok(()))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
            .await
            .map_err(store_err)?
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let id = id.clone();
        self.store
            .run(move |c| Ok(get_one::<St>(c, &id)))
            .await
            .map_err(store_err)?
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        let ids = ids.to_vec();
        self.store
            .run(move |c| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    match get_one::<St>(c, id) {
                        Ok(r) => out.push(r),
                        Err(StorageError::NotFound(_)) => {}
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(out))
            })
            .await
            .map_err(store_err)?
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let label = username.0.clone();
        let states = self
            .store
            .run(move |c| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {VALUE_COLUMNS} FROM akd_values WHERE label = ?1 ORDER BY epoch"
                ))?;
                let rows = st.query_map([&label], value_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .map_err(store_err)?;
        if states.is_empty() {
            return Err(StorageError::NotFound(format!("ValueState {username:?}")));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let label = username.0.clone();
        self.store
            .run(move |c| Ok(user_state(c, &label, flag)?))
            .await
            .map_err(store_err)?
            .ok_or_else(|| StorageError::NotFound(format!("ValueState {username:?}")))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let labels = usernames.to_vec();
        self.store
            .run(move |c| {
                let mut map = HashMap::with_capacity(labels.len());
                for l in labels {
                    if let Some(s) = user_state(c, &l.0, flag)? {
                        map.insert(l, (s.version, s.value));
                    }
                }
                Ok(map)
            })
            .await
            .map_err(store_err)
    }
}

#[async_trait::async_trait]
impl StorageUtil for SqliteAkd {
    async fn batch_get_type_direct<St: Storable>(&self) -> Result<Vec<DbRecord>, StorageError> {
        let ty = St::data_type();
        let all = self.batch_get_all_direct().await?;
        Ok(all
            .into_iter()
            .filter(|r| {
                matches!(
                    (r, ty),
                    (DbRecord::Azks(_), StorageType::Azks)
                        | (DbRecord::TreeNode(_), StorageType::TreeNode)
                        | (DbRecord::ValueState(_), StorageType::ValueState)
                )
            })
            .collect())
    }

    async fn batch_get_all_direct(&self) -> Result<Vec<DbRecord>, StorageError> {
        self.store
            .run(move |c| {
                let mut out = Vec::new();
                let mut st = c.prepare("SELECT data FROM akd_records")?;
                let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
                for r in rows {
                    match decode(&r?) {
                        Ok(rec) => out.push(rec),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                let mut st = c.prepare(&format!("SELECT {VALUE_COLUMNS} FROM akd_values"))?;
                let rows = st.query_map([], value_row)?;
                for r in rows {
                    out.push(DbRecord::ValueState(r?));
                }
                Ok(Ok(out))
            })
            .await
            .map_err(store_err)?
    }
}
