//! Shared types for every Gatehouse crate: who is connecting ([`Principal`]), to what
//! ([`TargetRef`]), what they want to do ([`Operation`]), what the guard said ([`Verdict`]),
//! and the validated configuration ([`config`]).
//!
//! This crate is a leaf: it depends on nothing else in the workspace.

pub mod config;
pub mod error;
pub mod guard;
pub mod op;
pub mod principal;
pub mod rows;
pub mod time;

pub use error::{ClientError, ErrorKind};
pub use gatehouse_mask::Strategy as MaskStrategy;
pub use guard::{Checked, Guard, GuardError, Hold, OpOutcome, RecordedRows, SessionGuard, Withdrawal};
pub use op::{BehindViews, Operation, SqlStatement, StatementKind, Verdict};
pub use principal::{AuthInfo, GrantRef, Principal, PrincipalKind, SessionCtx, TargetRef};
pub use rows::{
    CellEdit, ColumnDesc, ColumnRule, ColumnSource, Finding, MaskFault, Masked, RelationKind, RowBatch,
    RowMasker,
};
