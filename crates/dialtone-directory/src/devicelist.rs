//! The device-list policy, in one place: what a signed device list must be for the directory
//! to publish it, whether it comes with a registration (`register_confirm`) or from a session
//! (`publish_devices`). The callers add only what differs between the two (which devices may
//! be new, how a PIN is given).

use dialtone_proto::{DeviceId, Identifier, IdentityKey, devices::DeviceList};

/// Why a device list is refused (each is a `bad_device_list` answer, in these words).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListRefusal {
    /// Its signature or content does not verify.
    #[error("the device list is invalid: {0}")]
    Invalid(String),
    /// It is for another identifier.
    #[error("the device list is for {list}, not {account}")]
    OtherIdentifier {
        /// Whom the list names.
        list: Identifier,
        /// Whose it should be.
        account: Identifier,
    },
    /// It is signed by another key than the one being bound or bound already.
    #[error("the device list is not signed by this account's identity key")]
    OtherKey,
    /// It leaves out the device that sends it.
    #[error(
        "the device list does not name the device that sends it (a device cannot remove itself: revoke it from another device)"
    )]
    WithoutSender,
    /// Its version does not move forward.
    #[error(
        "the device list's version {offered} is not newer than the published {published}: fetch the current list and try again"
    )]
    NotNewer {
        /// The list's version.
        offered: u64,
        /// The published list's.
        published: u64,
    },
    /// It says its key was bound with a registration-lock PIN, and that is not so.
    #[error("the device list says its key was bound with a registration-lock PIN, and it was not")]
    UnlockedWithoutPin,
    /// It changes how its key was bound.
    #[error("the device list must keep how its key was bound (unlocked_with_pin)")]
    BindingChanged,
}

/// A list signed by `key` for `identifier` that names `sender`.
pub(crate) fn check_owned(
    list: &DeviceList,
    identifier: &Identifier,
    key: &IdentityKey,
    sender: &DeviceId,
) -> Result<(), ListRefusal> {
    list.verify()
        .map_err(|e| ListRefusal::Invalid(e.to_string()))?;
    if list.identifier != *identifier {
        return Err(ListRefusal::OtherIdentifier {
            list: list.identifier.clone(),
            account: identifier.clone(),
        });
    }
    if list.identity_key != *key {
        return Err(ListRefusal::OtherKey);
    }
    if !list.contains(sender) {
        return Err(ListRefusal::WithoutSender);
    }
    Ok(())
}

/// `list` may follow `published` (the list of the same key published now, if any): its
/// version moves forward, and it says truly how its key was bound. `pin_opened` says that a
/// registration-lock PIN opened the lock of another key just now (a registration only).
pub(crate) fn check_successor(
    published: Option<&DeviceList>,
    list: &DeviceList,
    pin_opened: bool,
) -> Result<(), ListRefusal> {
    if let Some(p) = published
        && p.version >= list.version
    {
        return Err(ListRefusal::NotNewer {
            offered: list.version,
            published: p.version,
        });
    }
    // A PIN that opened a lock just now must be said; without one, only a key that was
    // bound with one may say so.
    if pin_opened && !list.unlocked_with_pin {
        return Err(ListRefusal::BindingChanged);
    }
    if list.unlocked_with_pin && !pin_opened && !published.is_some_and(|p| p.unlocked_with_pin) {
        return Err(ListRefusal::UnlockedWithoutPin);
    }
    Ok(())
}
