//! Identifiers: the names people are found by.
//!
//! An identifier is either an email address or an E.164 phone number. Both are normalized
//! on parse, so two spellings of the same address compare equal:
//!
//! - email: surrounding whitespace trimmed, the whole address lowercased
//!   (`Alice@Example.COM` → `alice@example.com`); a `mailto:` prefix is accepted;
//! - phone: parsed with libphonenumber's rules (through the `phonenumber` crate), must be
//!   given in international form with a leading `+`, and is printed in E.164
//!   (`+1 (415) 555-0100` → `+14155550100`); a `tel:` prefix is accepted.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest identifier we accept, in bytes (RFC 5321 caps a path at 256 octets).
pub const MAX_IDENTIFIER_LEN: usize = 254;

/// A normalized email address or E.164 phone number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    kind: IdentifierKind,
    normalized: String,
}

/// Which kind of identifier this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierKind {
    /// An email address; verified by a code sent by email.
    Email,
    /// A phone number in E.164 form; verified by a code sent by SMS.
    Phone,
}

/// Why a string is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// Nothing was given.
    #[error("identifier is empty")]
    Empty,
    /// Longer than [`MAX_IDENTIFIER_LEN`].
    #[error("identifier is longer than {MAX_IDENTIFIER_LEN} bytes")]
    TooLong,
    /// Looks like an email address but is not a valid one.
    #[error("'{0}' is not a valid email address")]
    InvalidEmail(String),
    /// Looks like a phone number but is not a valid one.
    #[error(
        "'{0}' is not a valid phone number: use international E.164 form with a leading +, \
         for example +14155550100"
    )]
    InvalidPhone(String),
    /// Neither an email address nor a phone number.
    #[error(
        "'{0}' is neither an email address (alice@example.com) nor a phone number in \
         international form (+14155550100)"
    )]
    Unrecognized(String),
}

impl Identifier {
    /// Parses and normalizes an email address or phone number.
    ///
    /// Accepts the URI forms `acct:`, `mailto:` and `tel:` as well.
    pub fn parse(input: &str) -> Result<Self, IdentifierError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(IdentifierError::Empty);
        }
        if s.len() > MAX_IDENTIFIER_LEN {
            return Err(IdentifierError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        let s = ["acct:", "mailto:"]
            .iter()
            .find_map(|p| lower.starts_with(p).then(|| &s[p.len()..]))
            .unwrap_or(s);
        if let Some(rest) = s.strip_prefix("tel:").or_else(|| s.strip_prefix("TEL:")) {
            return Self::parse_phone(rest);
        }
        if s.contains('@') {
            return Self::parse_email(s);
        }
        if s.starts_with('+') || s.chars().all(|c| c.is_ascii_digit() || " -().".contains(c)) {
            return Self::parse_phone(s);
        }
        Err(IdentifierError::Unrecognized(s.to_owned()))
    }

    fn parse_email(s: &str) -> Result<Self, IdentifierError> {
        let lower = s.trim().to_lowercase();
        let parsed = email_address::EmailAddress::parse_with_options(
            &lower,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|_| IdentifierError::InvalidEmail(s.to_owned()))?;
        // Require a dot in the domain part: a bare host is never a mail domain a directory
        // can verify, and accepting one invites typos (alice@example).
        if !parsed.domain().contains('.') || parsed.domain().starts_with('[') {
            return Err(IdentifierError::InvalidEmail(s.to_owned()));
        }
        Ok(Self {
            kind: IdentifierKind::Email,
            normalized: parsed.email().to_string(),
        })
    }

    fn parse_phone(s: &str) -> Result<Self, IdentifierError> {
        let s = s.trim();
        if !s.starts_with('+') {
            return Err(IdentifierError::InvalidPhone(s.to_owned()));
        }
        let number =
            phonenumber::parse(None, s).map_err(|_| IdentifierError::InvalidPhone(s.to_owned()))?;
        if !phonenumber::is_valid(&number) {
            return Err(IdentifierError::InvalidPhone(s.to_owned()));
        }
        let normalized = number.format().mode(phonenumber::Mode::E164).to_string();
        Ok(Self {
            kind: IdentifierKind::Phone,
            normalized,
        })
    }

    /// The normalized form (`alice@example.com`, `+14155550100`).
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// Email or phone.
    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

impl FromStr for Identifier {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Identifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.normalized)
    }
}

impl<'de> Deserialize<'de> for Identifier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalized() {
        let id = Identifier::parse("  Alice@Example.COM ").unwrap();
        assert_eq!(id.as_str(), "alice@example.com");
        assert_eq!(id.kind(), IdentifierKind::Email);
        assert_eq!(Identifier::parse("mailto:alice@example.com").unwrap(), id);
        assert_eq!(Identifier::parse("acct:ALICE@example.com").unwrap(), id);
    }

    #[test]
    fn phone_is_e164() {
        let id = Identifier::parse("+1 (415) 555-0100").unwrap();
        assert_eq!(id.as_str(), "+14155550100");
        assert_eq!(id.kind(), IdentifierKind::Phone);
        assert_eq!(Identifier::parse("tel:+14155550100").unwrap(), id);
        assert_eq!(
            Identifier::parse("+44 20 7946 0018").unwrap().as_str(),
            "+442079460018"
        );
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "4155550100",
            "+1",
            "+999999999999999",
            "a@b@c.com",
        ] {
            assert!(Identifier::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Identifier::parse(&"a".repeat(300)),
            Err(IdentifierError::TooLong)
        );
    }

    #[test]
    fn serde_roundtrip_normalizes() {
        let id: Identifier = serde_json::from_str("\"Bob@Example.com\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"bob@example.com\"");
        assert!(serde_json::from_str::<Identifier>("\"nope\"").is_err());
    }
}
