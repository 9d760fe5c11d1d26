//! Exit codes, and the error that carries one (README.md, "Exit codes of `dialtone`").
//!
//! A failure is sorted by its cause ([`Cause`]), and the cause alone picks the exit code: the
//! typed errors of the agent crate, the local API's error codes and the directory's error
//! codes decide, never the text of a message.

use dialtone_agent::{
    DirectoryError, HomeError, StartError,
    api::{ClientError, RpcError, codes},
    doctor::DoctorError,
    link::LinkError,
};
use dialtone_proto::{
    Refusal,
    directory::{ErrorBody, ErrorCode},
};

/// Why a command failed; each cause has its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The directory refused, or could not be reached (4).
    Directory,
    /// Anything else (1); the message says what to do.
    Error,
    /// The agent is not running (3).
    NotRunning,
    /// A message (or a contact request, or a key) was refused (10–19).
    Refused(Refusal),
    /// Bad arguments, identifier, state or code (2).
    Usage,
}

impl Cause {
    /// The process's exit code.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Self::Error => 1,
            Self::Usage => 2,
            Self::NotRunning => 3,
            Self::Directory => 4,
            Self::Refused(r) => r.exit_code(),
        }
    }
}

/// A failed command: its cause and a sentence for the person.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) cause: Cause,
    pub(crate) message: String,
}

impl Fail {
    /// A failure of `cause`.
    pub(crate) fn new(cause: Cause, message: impl Into<String>) -> Self {
        Self {
            cause,
            message: message.into(),
        }
    }

    /// Bad arguments, identifier, state or code.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Cause::Usage, message)
    }

    /// The process's exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        self.cause.exit_code()
    }
}

/// Every error a command meets with `?` is sorted here by its type; what is not recognised is
/// an error (1).
impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        let known = if let Some(c) = e.downcast_ref::<ClientError>() {
            Some(client_cause(c))
        } else if let Some(d) = e.downcast_ref::<DirectoryError>() {
            Some(directory_cause(d))
        } else if let Some(l) = e.downcast_ref::<LinkError>() {
            Some(link_cause(l))
        } else if let Some(s) = e.downcast_ref::<StartError>() {
            Some(start_cause(s))
        } else if let Some(d) = e.downcast_ref::<DoctorError>() {
            Some(doctor_cause(d))
        } else {
            e.downcast_ref::<HomeError>().map(home_cause)
        };
        match known {
            Some(cause) if is_unreachable(&e) => Self::new(
                cause,
                format!("{e}; check the URL and that the directory is up, then try again"),
            ),
            // The agent's own sentence (it names its cause already).
            Some(cause) => Self::new(cause, e.to_string()),
            // Ours, with its context.
            None => Self::new(Cause::Error, format!("{e:#}")),
        }
    }
}

/// Whether `e` is a directory that did not answer (as opposed to one that refused).
fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<DirectoryError>(),
        Some(DirectoryError::Unreachable { .. })
    )
}

/// A failed call of the local API, as a [`Fail`].
pub(crate) fn client_fail(e: &ClientError) -> Fail {
    Fail::new(client_cause(e), e.to_string())
}

fn client_cause(e: &ClientError) -> Cause {
    match e {
        ClientError::NotRunning(_) => Cause::NotRunning,
        ClientError::Rpc(rpc) => rpc_cause(rpc),
        _ => Cause::Error,
    }
}

/// The cause of an error answer of the local API (docs/local-api.md, "Errors").
fn rpc_cause(rpc: &RpcError) -> Cause {
    if let Some(r) = rpc.refusal() {
        return Cause::Refused(r);
    }
    match rpc.code {
        codes::DIRECTORY => {
            let body: Option<ErrorBody> = rpc
                .data
                .clone()
                .and_then(|d| serde_json::from_value(d).ok());
            match body.map(|b| b.error) {
                // A contact request to someone offline: refused like a message would be.
                Some(ErrorCode::Offline) => Cause::Refused(Refusal::Offline),
                _ => Cause::Directory,
            }
        }
        codes::NOT_CONNECTED => Cause::Directory,
        codes::INVALID_PARAMS => Cause::Usage,
        _ => Cause::Error,
    }
}

/// A directory that refused or cannot be reached, and a directory URL or CA file that cannot
/// be used, are all the directory's exit code.
fn directory_cause(e: &DirectoryError) -> Cause {
    match e {
        DirectoryError::BadUrl(_)
        | DirectoryError::Ca { .. }
        | DirectoryError::Unreachable { .. }
        | DirectoryError::Refused { .. } => Cause::Directory,
        _ => Cause::Error,
    }
}

/// Joining an account (`dialtone device link CODE` on the new device).
pub(crate) fn link_cause(e: &LinkError) -> Cause {
    match e {
        LinkError::Directory(d) => directory_cause(d),
        LinkError::Session(_) => Cause::Directory,
        LinkError::Home(h) => home_cause(h),
        // The other device refused or broke the protocol, or could not be reached, or gave
        // up: nothing the directory did.
        _ => Cause::Error,
    }
}

/// `dialtone up`.
fn start_cause(e: &StartError) -> Cause {
    match e {
        StartError::Directory(d) => directory_cause(d),
        StartError::Home(h) => home_cause(h),
        _ => Cause::Error,
    }
}

/// `dialtone doctor`.
fn doctor_cause(e: &DoctorError) -> Cause {
    match e {
        DoctorError::Directory(d) => directory_cause(d),
        DoctorError::Home(h) => home_cause(h),
        DoctorError::NoDirectory => Cause::Usage,
        _ => Cause::Error,
    }
}

/// Keys and settings: their errors keep exit code 1 (the message says what to do).
fn home_cause(_: &HomeError) -> Cause {
    Cause::Error
}

/// The result of a command.
pub(crate) type Result<T = ()> = std::result::Result<T, Fail>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rpc(code: i64, data: Option<serde_json::Value>) -> RpcError {
        RpcError {
            code,
            message: "m".into(),
            data,
        }
    }

    #[test]
    fn exit_codes_are_the_readmes() {
        assert_eq!(Cause::Error.exit_code(), 1);
        assert_eq!(Cause::Usage.exit_code(), 2);
        assert_eq!(Cause::NotRunning.exit_code(), 3);
        assert_eq!(Cause::Directory.exit_code(), 4);
        for r in Refusal::ALL {
            assert_eq!(Cause::Refused(r).exit_code(), r.exit_code());
        }
    }

    #[test]
    fn local_api_errors_are_sorted_by_code_not_text() {
        // An outage is the directory's code, whatever the message says.
        assert_eq!(
            rpc_cause(&rpc(codes::NOT_CONNECTED, None)),
            Cause::Directory
        );
        let offline = json!({"error": "offline", "message": "invalid"});
        assert_eq!(
            rpc_cause(&rpc(codes::DIRECTORY, Some(offline))),
            Cause::Refused(Refusal::Offline)
        );
        let limited = json!({"error": "rate_limited", "message": "offline"});
        assert_eq!(
            rpc_cause(&rpc(codes::DIRECTORY, Some(limited))),
            Cause::Directory
        );
        assert_eq!(rpc_cause(&rpc(codes::DIRECTORY, None)), Cause::Directory);
        assert_eq!(rpc_cause(&rpc(codes::INVALID_PARAMS, None)), Cause::Usage);
        assert_eq!(rpc_cause(&rpc(codes::AGENT, None)), Cause::Error);
        let refused = json!({"refusal": "key-changed"});
        assert_eq!(
            rpc_cause(&rpc(-32016, Some(refused))),
            Cause::Refused(Refusal::KeyChanged)
        );
    }

    #[test]
    fn a_directory_out_of_reach_is_not_a_usage_error() {
        let down = DirectoryError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(Fail::from(down).exit_code(), 4);
        let not_running = ClientError::NotRunning("/tmp/x".into());
        assert_eq!(client_fail(&not_running).exit_code(), 3);
    }
}
