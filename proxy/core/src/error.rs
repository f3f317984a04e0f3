//! Error kinds shared by the crates. Only [`ClientError::client_message`] text ever reaches a
//! client; everything else stays in logs and records.

use serde::{Deserialize, Serialize};

/// Who failed. Doubles as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The client sent something malformed or not allowed by the protocol.
    Protocol,
    /// The client failed authentication.
    Auth,
    /// Policy denied the operation.
    Policy,
    /// The upstream server could not be reached or failed.
    Upstream,
    /// The audit log could not be written: the operation is refused.
    Recorder,
    /// A bug or resource problem inside the gateway.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::Policy => "policy",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Recorder => "recorder",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Errors that have a deliberate, user-facing form.
pub trait ClientError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// The only text sent to the client. Must not contain addresses, secrets or policy text.
    fn client_message(&self) -> String;
}
