//! The recorder's one error type.

use gatehouse_core::{ClientError, ErrorKind};

/// Everything that can go wrong while writing or reading the event log.
///
/// For [`crate::Recorder::append`], any error means the event is **not** durable and the
/// caller must refuse the operation ("no record, no access").
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecorderError {
    /// The log directory could not be created or opened.
    #[error("cannot open the event log at {path}: {message}")]
    Open { path: String, message: String },
    /// There is no event log at this path.
    #[error("no event log at {path}")]
    NotFound { path: String },
    /// The batch holding this event could not be written; nothing of it is durable.
    #[error("event log write failed: {0}")]
    Write(String),
    /// Reading the log failed.
    #[error("event log read failed: {0}")]
    Read(String),
    /// The recorder was shut down (or its writer stopped); nothing more can be appended.
    #[error("the recorder is shut down")]
    Closed,
    /// The event cannot be recorded as given (e.g. a session id containing a NUL byte).
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The event could not be encoded.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// The stored log is inconsistent (e.g. the chain head does not match the last event).
    #[error("corrupt event log: {0}")]
    Corrupt(String),
}

impl RecorderError {
    pub(crate) fn read(e: impl std::fmt::Display) -> Self {
        RecorderError::Read(e.to_string())
    }
}

impl ClientError for RecorderError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Recorder
    }

    fn client_message(&self) -> String {
        "the audit log is unavailable, so the operation was not performed".to_string()
    }
}
