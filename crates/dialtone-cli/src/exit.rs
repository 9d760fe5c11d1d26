//! Exit codes, and the error that carries one (README.md, "Exit codes of `dialtone`").

use dialtone_agent::{
    DirectoryError,
    api::{ClientError, RpcError, codes},
};
use serde_json::Value;

/// Exit code: the agent is not running.
pub(crate) const EXIT_NOT_RUNNING: u8 = 3;
/// Exit code: the directory refused or is unreachable.
pub(crate) const EXIT_DIRECTORY: u8 = 4;

/// An error with its exit code.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        if let Some(c) = e.downcast_ref::<ClientError>() {
            return client_fail(c);
        }
        if let Some(d) = e.downcast_ref::<DirectoryError>() {
            return Self {
                code: EXIT_DIRECTORY,
                message: d.to_string(),
            };
        }
        Self {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

pub(crate) fn client_fail(e: &ClientError) -> Fail {
    let code = match e {
        ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
        ClientError::Rpc(rpc) => rpc_exit_code(rpc),
        _ => 1,
    };
    Fail {
        code,
        message: e.to_string(),
    }
}

pub(crate) fn rpc_exit_code(rpc: &RpcError) -> u8 {
    if let Some(r) = rpc.refusal() {
        return r.exit_code();
    }
    let directory_code = rpc
        .data
        .as_ref()
        .and_then(|d| d.get("error"))
        .and_then(Value::as_str);
    if rpc.code == codes::DIRECTORY && directory_code == Some("offline") {
        // A contact request to someone offline: refused like a message would be.
        return dialtone_proto::Refusal::Offline.exit_code();
    }
    match rpc.code {
        codes::NOT_CONNECTED | codes::DIRECTORY => EXIT_DIRECTORY,
        codes::INVALID_PARAMS => 2,
        _ => 1,
    }
}

pub(crate) type Result<T = ()> = std::result::Result<T, Fail>;
