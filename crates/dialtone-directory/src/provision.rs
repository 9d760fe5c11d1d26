//! Bulk provisioning: writes accounts and mutual contacts straight into a directory's data
//! folder, without the verification round trip.
//!
//! This is for load tests (the `dialtone-loadgen` benchmark seeds 100 000 people this way)
//! and for operators migrating an existing user base whose identifiers were verified
//! elsewhere. It must not run while a directory serves the same data folder: it bypasses the
//! sessions that would tell online contacts about the change.

use std::path::Path;

use dialtone_proto::{DeviceCertificate, Identifier, directory::Relation};

use crate::store::{Store, StoreError, q};

/// One person to provision: their identifier and one certified device.
#[derive(Debug, Clone)]
pub struct Person {
    /// The identifier (already verified by whoever provisions it).
    pub identifier: Identifier,
    /// A device certificate; its identity key becomes the person's key.
    pub device: DeviceCertificate,
}

/// Writes `people` (bound to their keys, as a confirmed registration would) and makes every
/// pair in `contacts` (indexes into `people`) mutually accepted contacts, in one transaction
/// on `DIR/directory.sqlite3` (created and migrated if needed).
///
/// # Errors
/// If the store cannot be opened, a certificate does not verify, an index is out of range, or
/// SQLite fails; nothing is written then.
pub fn provision(
    data_dir: &Path,
    people: &[Person],
    contacts: &[(usize, usize)],
) -> Result<(), StoreError> {
    let store = Store::open(data_dir)?;
    let now = crate::http::now_secs();
    store.with(|c| {
        let tx = c.transaction()?;
        for p in people {
            p.device
                .verify()
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", p.identifier)))?;
            q::bind_in(&tx, &p.identifier, &p.device.identity_key, &p.device, now)?;
        }
        for &(a, b) in contacts {
            let (Some(pa), Some(pb)) = (people.get(a), people.get(b)) else {
                return Err(StoreError::Invalid(format!(
                    "contact pair ({a}, {b}) is out of range"
                )));
            };
            q::set_relation(&tx, &pa.identifier, &pb.identifier, Relation::Accepted, now)?;
            q::set_relation(&tx, &pb.identifier, &pa.identifier, Relation::Accepted, now)?;
        }
        tx.commit()?;
        Ok(())
    })
}
