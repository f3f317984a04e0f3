//! Operations (what a session asks to do) and verdicts (what the guard answered).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Classification of one SQL statement, produced by the PostgreSQL parser (libpg_query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Ddl,
    Dcl,
    Copy,
    Transaction,
    Set,
    Utility,
    Unknown,
}

impl StatementKind {
    pub const ALL: [StatementKind; 12] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Merge,
        StatementKind::Ddl,
        StatementKind::Dcl,
        StatementKind::Copy,
        StatementKind::Transaction,
        StatementKind::Set,
        StatementKind::Utility,
        StatementKind::Unknown,
    ];

    /// The string Cedar policies compare `context.kind` against.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Ddl => "ddl",
            StatementKind::Dcl => "dcl",
            StatementKind::Copy => "copy",
            StatementKind::Transaction => "transaction",
            StatementKind::Set => "set",
            StatementKind::Utility => "utility",
            StatementKind::Unknown => "unknown",
        }
    }

    /// Whether statements of this kind change data or schema by themselves.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            StatementKind::Insert
                | StatementKind::Update
                | StatementKind::Delete
                | StatementKind::Merge
                | StatementKind::Ddl
                | StatementKind::Dcl
        )
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One classified SQL statement. Table names are schema-qualified and lower-cased as
/// PostgreSQL folds them (`public.customers`); unqualified names are qualified with `public`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlStatement {
    /// The statement text as sent (one statement of a multi-statement string).
    pub text: String,
    pub kind: Option<StatementKind>,
    /// A finer tag for records and policies: `SelectStmt`, `CreateStmt`, `VariableSetStmt`, …
    pub command: String,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// For UPDATE/DELETE (and MERGE): whether a WHERE/ON qualification is present.
    pub has_where: bool,
    /// Called functions, schema-qualified when written so (`pg_read_file`, `pg_catalog.now`).
    pub functions: Vec<String>,
    /// Column names the statement refers to (the last part of each reference, as parsed;
    /// `*` for a star). Masking uses them to tell whether computed values may derive from a
    /// masked column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// `COPY … PROGRAM`.
    pub copy_program: bool,
    /// `COPY … FROM/TO 'file'` (server-side file, not STDIN/STDOUT).
    pub copy_server_file: bool,
    /// Whether the statement changes `search_path` (SET/RESET search_path, set_config).
    pub sets_search_path: bool,
    /// Parser error, when `kind` is `Unknown` because the text did not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    /// What the views among the relations it reads or (outside DDL) writes are defined over,
    /// when the protocol crate looked it up for the recorder's classified-column rule (see [`SessionGuard::redacts_by_name`]). Not part of
    /// what policies, plugins or the record see.
    ///
    /// [`SessionGuard::redacts_by_name`]: crate::SessionGuard::redacts_by_name
    #[serde(skip)]
    pub behind_views: BehindViews,
}

/// The table columns a statement uses through the views it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BehindViews {
    /// Not looked up, or the statement names no view.
    #[default]
    Nothing,
    /// The column names (lower case) of the tables the views read, following views over views.
    Columns(Vec<String>),
    /// Not known: the lookup failed (or the catalog is backing off after a failure), or a
    /// relation's name did not resolve. Any column may be behind them (rules fail closed).
    Unknown,
}

impl SqlStatement {
    pub fn kind(&self) -> StatementKind {
        self.kind.unwrap_or(StatementKind::Unknown)
    }

    /// FETCH from a cursor or SQL-level EXECUTE of a prepared statement: the rows (and
    /// parameters) belong to a query this statement does not show.
    pub fn runs_an_unseen_query(&self) -> bool {
        self.command == "FetchStmt" || self.command.starts_with("ExecuteStmt")
    }
}

/// What a session asks to do. The guard decides on these, protocol crates produce them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Open a session to the target.
    Connect,
    /// Run one SQL statement (shared: the classification is cached per statement text).
    Query(Arc<SqlStatement>),
}

impl Operation {
    pub fn action(&self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Query(_) => "query",
        }
    }
}

/// The guard's answer for one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Verdict {
    Allow {
        /// `@id`s of the policies that permitted the operation.
        policy_ids: Vec<String>,
    },
    Deny {
        /// User-facing reason (never policy text or internal detail).
        reason: String,
        /// `@id`s of the policies that determined the denial (empty: no permit matched).
        policy_ids: Vec<String>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    pub fn policy_ids(&self) -> &[String] {
        match self {
            Verdict::Allow { policy_ids } | Verdict::Deny { policy_ids, .. } => policy_ids,
        }
    }
}
