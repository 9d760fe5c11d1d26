//! Parsing a local API request line, without IO: the JSON-RPC envelope, then each method's
//! parameters.
//!
//! It needs only `serde`, `serde_json` and `dialtone-proto`, so the fuzz target
//! `local_api_line` (`fuzz/`) compiles this file alone instead of the whole agent.

use dialtone_proto::Identifier;
use serde::Deserialize;
use serde_json::Value;

/// A JSON object read from a request line, before its fields are checked.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRequest {
    pub(crate) jsonrpc: Option<String>,
    #[serde(default)]
    pub(crate) id: Value,
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) params: Value,
}

impl RawRequest {
    /// The method to call, if this is a JSON-RPC 2.0 request.
    pub(crate) fn method(&self) -> Option<&str> {
        match (self.jsonrpc.as_deref(), self.method.as_deref()) {
            (Some("2.0"), Some(method)) => Some(method),
            _ => None,
        }
    }

    /// Whether the caller expects an answer: a request without an id is a notification.
    /// (The agent checks the id itself; the fuzz target `local_api_line` checks this.)
    #[allow(dead_code)]
    pub(crate) fn wants_answer(&self) -> bool {
        !(self.id.is_null() && self.method.is_some() && self.jsonrpc.is_some())
    }
}

/// What one line of the local API is.
#[derive(Debug)]
pub(crate) enum Line {
    /// Nothing but whitespace: no answer.
    Blank,
    /// A JSON object with the envelope's fields (each still to be checked).
    Request(RawRequest),
    /// Not JSON at all (JSON-RPC's parse error), with why.
    NotJson(String),
    /// JSON, but not a request object (JSON-RPC's invalid request), with why.
    NotRequest(String),
}

/// Parses one request line (its newline included or not).
pub(crate) fn parse_line(line: &[u8]) -> Line {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Line::Blank;
    }
    match serde_json::from_slice(trimmed) {
        Ok(r) => Line::Request(r),
        Err(e) if serde_json::from_slice::<Value>(trimmed).is_ok() => {
            Line::NotRequest(e.to_string())
        }
        Err(e) => Line::NotJson(e.to_string()),
    }
}

/// The parameter `name` of `params` (missing is `null`), or why it is not a `T`.
pub(crate) fn param<T: serde::de::DeserializeOwned>(
    params: &Value,
    name: &str,
) -> Result<T, String> {
    let v = params.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| format!("parameter '{name}': {e}"))
}

/// The parameter `name`, an identifier, normalized.
pub(crate) fn identifier_param(params: &Value, name: &str) -> Result<Identifier, String> {
    let raw: String = param(params, name)?;
    Identifier::parse(&raw).map_err(|e| e.to_string())
}
