//! The crate's one error type.

use gatehouse_core::{ClientError, ErrorKind};

/// Why a policy directory could not be loaded, a session could not be expressed in Cedar, or a
/// decision test file could not be run.
///
/// Messages follow Cedar's style: lowercase, no trailing period, user input in backticks.
/// File names are displayed as given; lines are 1-based.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file or the policy directory could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The policy directory holds no `*.cedar` file.
    #[error("`{dir}` has no `*.cedar` policy files")]
    NoPolicies {
        /// The policy directory.
        dir: String,
    },
    /// `schema.cedarschema` did not parse or does not define a consistent schema.
    #[error("{file}:{line}: {message}")]
    Schema {
        /// The schema file.
        file: String,
        /// Line of the first problem (1 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A policy file did not parse.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The policy file.
        file: String,
        /// Line of the first problem (1 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A policy has no `@id` annotation.
    #[error("{file}:{line}: policy has no `@id` annotation")]
    MissingId {
        /// The policy file.
        file: String,
        /// Line where the policy starts.
        line: usize,
    },
    /// Two policies share one `@id`.
    #[error("{file}:{line}: policy id `{id}` is already used at {first_file}:{first_line}")]
    DuplicateId {
        /// The shared id.
        id: String,
        /// The file of the second policy.
        file: String,
        /// Line where the second policy starts.
        line: usize,
        /// The file of the first policy.
        first_file: String,
        /// Line where the first policy starts.
        first_line: usize,
    },
    /// A policy is well-formed Cedar but not acceptable to Gatehouse (a template, a bad
    /// annotation).
    #[error("{file}:{line}: policy `{id}`: {message}")]
    Policy {
        /// The policy's `@id`.
        id: String,
        /// The policy file.
        file: String,
        /// Line where the policy starts.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Strict validation against the schema failed; one entry per problem, each naming file,
    /// line and policy id.
    #[error("policy validation failed: {}", .problems.join("; "))]
    Validation {
        /// `file:line: policy `id`: message` for each problem.
        problems: Vec<String>,
    },
    /// The session's principal or target cannot be expressed as schema-valid Cedar entities.
    #[error("cannot describe the session to policy: {message}")]
    Session {
        /// What is wrong.
        message: String,
    },
    /// A decision test file is malformed.
    #[error("{file}: {message}")]
    TestFile {
        /// The test file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl ClientError for PolicyError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }

    fn client_message(&self) -> String {
        "the gateway could not evaluate its access policy".to_string()
    }
}
