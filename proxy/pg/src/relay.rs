//! Relaying a live session. Two tasks per session:
//!
//! * client → upstream ([`client_to_upstream`]): reads client messages, classifies statements
//!   and asks the guard about each one *before* forwarding it. A denied statement is replaced
//!   by a message the upstream is certain to reject (a syntax error, or an Execute of a portal
//!   that cannot exist), named with this session's secret nonce. The upstream's own error
//!   handling then gives exactly PostgreSQL's semantics: the transaction is aborted, the rest of
//!   an extended-protocol batch is skipped until Sync, and ReadyForQuery carries the right
//!   status.
//! * upstream → client ([`upstream_to_client`]): forwards upstream messages untouched except
//!   the error carrying the nonce, which becomes the client-facing denial (SQLSTATE 42501,
//!   naming the deciding policy), and records each operation's outcome.
//!
//! The client→upstream side tells the other side what responses to expect through an ordered
//! channel of [`Pending`] items, pushed before the corresponding message is written upstream.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::results::Capture;
use bytes::{Buf, BytesMut};
use gatehouse_core::{
    BehindViews, Checked, ColumnSource, Finding, GuardError, MaskFault, MaskStrategy, Masked, OpOutcome,
    Operation, RelationKind, RowMasker, SessionGuard, SqlStatement, StatementKind, Verdict, Withdrawal,
};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc};

use crate::classify::{ClassifyCache, classify};
use crate::mask::{self, ColumnShape, ExecShape};
use crate::proto::{self, Severity};
use crate::stream::Stream;
use crate::upstream::{PgTarget, Upstream, track_param};

type ClientWriter = Arc<Mutex<WriteHalf<Stream>>>;

/// How long an abandoned session may take to finish what the upstream is still doing, so its
/// outcome is recorded, before the upstream connection is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct RelayEnd {
    /// The upstream connection, when it is idle and may be pooled.
    pub upstream: Option<Upstream>,
    pub reason: String,
}

/// What the upstream will answer, in order.
enum Pending {
    /// A statement (or Execute) that was allowed and forwarded.
    Exec {
        op: Option<u64>,
        start: Instant,
        rows: u64,
        /// Where the rows' description comes from (extended protocol; sessions that mask or record results).
        shape: Option<ExecShape>,
        /// Column rule for result columns without a plain-table source (expressions, views):
        /// the strongest rule among the tables the statement reads.
        derived: Option<MaskStrategy>,
        /// The statement changes the schema: cached catalog names are stale once it ran.
        ddl: bool,
    },
    /// A Describe (sessions that mask or record results): the RowDescription or NoData that answers it
    /// describes the statement or portal with this id.
    Describe(u64),
    /// A denied operation: the nonce-carrying upstream error is rewritten to this.
    Denied { code: &'static str, message: String },
    /// A Query or Sync: a ReadyForQuery ends the batch.
    Sync,
}

struct Shared {
    nonce: String,
    syncs_sent: AtomicU64,
    copy_in: AtomicBool,
}

enum ClientEnd {
    /// Terminate message.
    Terminated,
    Disconnected,
    ProtocolError(String),
    UpstreamWriteFailed,
    /// The session's token or access grant expired; the client was told (the message).
    CredentialExpired(String),
}

pub(crate) async fn run(
    client: Stream,
    client_buf: BytesMut,
    up: Upstream,
    sg: Arc<dyn SessionGuard>,
    cache: Arc<ClassifyCache>,
    target: Arc<PgTarget>,
    cancel: Arc<CancelSignal>,
) -> RelayEnd {
    let Upstream {
        stream,
        mut params,
        pid,
        secret,
        startup_notices,
        key,
        reused,
    } = up;
    let (crd, cwr) = tokio::io::split(client);
    let (urd, uwr) = tokio::io::split(stream);
    let cw: ClientWriter = Arc::new(Mutex::new(cwr));
    let mut raw = [0u8; 12];
    rand::rng().fill_bytes(&mut raw);
    let shared = Arc::new(Shared {
        nonce: format!("gatehouse_denied_{}", hex::encode(raw)),
        syncs_sent: AtomicU64::new(0),
        copy_in: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let masker = sg.row_masker();
    let result_limit = sg.result_limit();
    let c2u = tokio::spawn(client_to_upstream(
        crd,
        client_buf,
        uwr,
        cw.clone(),
        sg.clone(),
        cache,
        shared.clone(),
        tx,
        masker.clone(),
        target.clone(),
        cancel,
    ));
    let mut u2c = UpstreamSide {
        cw,
        sg,
        shared,
        rx,
        queue: VecDeque::new(),
        params: &mut params,
        status: b'I',
        rfq_seen: 0,
        client_alive: true,
        masker,
        target,
        descs: BTreeMap::new(),
        current: None,
        plan: None,
        ddl_done: false,
        findings: Vec::new(),
        faults: Vec::new(),
        result_limit,
        capture: None,
    };
    let (urd, uwr, reason) = u2c.run(urd, c2u).await;
    let upstream = match (urd, uwr) {
        (Some(r), Some(w)) => Some(Upstream {
            stream: r.unsplit(w),
            params,
            pid,
            secret,
            startup_notices,
            key,
            reused,
        }),
        _ => None,
    };
    RelayEnd { upstream, reason }
}

fn unknown_statement(command: &str) -> Arc<SqlStatement> {
    Arc::new(SqlStatement {
        text: String::new(),
        kind: Some(StatementKind::Unknown),
        command: command.to_string(),
        ..SqlStatement::default()
    })
}

/// `stmt` with [`SqlStatement::behind_views`] filled in, when the session's record redacts by
/// column name: the names of the table columns the views it reads or writes are defined over
/// (cached catalog lookups, views over views followed). A view renaming `customers.ssn` to
/// `tax_ref` then counts as naming `ssn`. It is [`BehindViews::Unknown`] (the record
/// redacts: fail closed) when the lookup fails, or the catalog connection failed less than
/// [`CATALOG_RETRY`] ago, and when a relation's name does not resolve for the target's role:
/// a temporary view, one on the session's own `search_path`, or one created in a transaction
/// or string that has not run yet. Statements whose relations are all tables are returned as
/// they are.
async fn with_behind_views(
    sg: &dyn SessionGuard,
    target: &Arc<PgTarget>,
    stmt: Arc<SqlStatement>,
) -> Arc<SqlStatement> {
    // The relations a DDL statement writes are the objects it defines, not data.
    let writes = stmt.kind() != StatementKind::Ddl && !stmt.tables_written.is_empty();
    if (stmt.tables_read.is_empty() && !writes) || !sg.redacts_by_name() {
        return stmt;
    }
    let behind = if target.catalog_failed_within(CATALOG_RETRY) {
        BehindViews::Unknown
    } else {
        let found = if writes {
            let mut all = stmt.tables_read.clone();
            all.extend(stmt.tables_written.iter().cloned());
            behind_views(target, &all).await
        } else {
            // (No copy of the names for a statement that only reads: the hot path.)
            behind_views(target, &stmt.tables_read).await
        };
        match found {
            Ok(None) => return stmt,
            Ok(Some(b)) => b,
            Err(e) => {
                // Only an unreachable or timed-out catalog connection is remembered: views
                // nested too deep fail the lookup of their own statements only.
                if matches!(e, crate::catalog::CatalogError::Upstream(_)) {
                    target.note_catalog_failure();
                }
                tracing::debug!(error = %e, "the relations a statement uses are unknown: its record is redacted");
                BehindViews::Unknown
            }
        }
    };
    let mut s = (*stmt).clone();
    s.behind_views = behind;
    Arc::new(s)
}

/// After the catalog connection failed, statements are redacted without trying again for
/// this long (a down catalog connection must not cost every statement a connection attempt).
const CATALOG_RETRY: Duration = Duration::from_secs(5);

/// See [`with_behind_views`]; `None`: every name is a relation that is no view.
async fn behind_views(
    target: &Arc<PgTarget>,
    names: &[String],
) -> Result<Option<BehindViews>, crate::catalog::CatalogError> {
    let (rels, all_resolved) = target.relations_named_all(names).await?;
    if !all_resolved {
        return Ok(Some(BehindViews::Unknown));
    }
    let views: Vec<_> = rels
        .into_iter()
        .filter(|r| r.kind == RelationKind::View)
        .collect();
    if views.is_empty() {
        return Ok(None);
    }
    let columns = target.view_reads(&views).await?;
    let mut names: Vec<String> = columns.iter().map(|c| c.column.to_lowercase()).collect();
    names.sort_unstable();
    names.dedup();
    Ok(Some(BehindViews::Columns(names)))
}

/// Results that would reach the client without passing the masking stage: COPY ... TO
/// STDOUT (COPY data is not rows). Refused on sessions whose results are masked.
fn bypasses_masking(s: &SqlStatement) -> bool {
    s.kind() == StatementKind::Copy && s.tables_written.is_empty()
}

const UNMASKABLE: &str = "gatehouse: refused: this target's results are masked, and COPY TO / \
                          fast-path function results cannot pass the masking stage; use SELECT";

/// How an allowed statement's results will be masked: `Ok(derived)` (see [`Pending::Exec`]),
/// or `Err(message)` when they could not be (the statement is refused).
///
/// With column rules, the relations the statement reads are looked up (cached) and their
/// columns decided (cached per session): values computed from a masked column (`upper(ssn)`,
/// a view over it) carry no table source in the RowDescription, so text-like columns without
/// one are masked with the strongest rule among the tables read. COPY TO cannot be masked at
/// all: it runs only when no column it could read is masked and no plugin inspects content.
async fn mask_plan(
    masker: &dyn RowMasker,
    target: &Arc<PgTarget>,
    stmt: &SqlStatement,
) -> Result<Option<MaskStrategy>, String> {
    let copy_out = bypasses_masking(stmt);
    if copy_out && masker.inspects_content() {
        return Err(UNMASKABLE.to_string());
    }
    if !masker.has_column_rules() {
        return Ok(None);
    }
    // Rows of a cursor or of an SQL-level prepared statement come from a query this statement
    // does not show: their computed columns are masked in full. (Columns with a table source
    // are still named by the row description and get their own rule.)
    if stmt.runs_an_unseen_query() {
        return Ok(Some(MaskStrategy::Full));
    }
    if stmt.tables_read.is_empty() {
        return Ok(None);
    }
    let rels = match target.relations_named(&stmt.tables_read).await {
        Ok(r) => r,
        Err(e) if copy_out => {
            return Err(copy_unchecked(&e));
        }
        Err(_) => return Ok(Some(MaskStrategy::Full)),
    };
    // Columns of the tables read, and the table columns the views read (transitively).
    let columns: Vec<_> = rels.iter().flat_map(|r| r.all_columns()).collect();
    let views: Vec<_> = rels
        .iter()
        .filter(|r| r.kind == RelationKind::View)
        .cloned()
        .collect();
    let behind_views = if views.is_empty() {
        Vec::new()
    } else {
        match target.view_reads(&views).await {
            Ok(c) => c,
            Err(e) if copy_out => {
                return Err(copy_unchecked(&e));
            }
            Err(_) => return Ok(Some(MaskStrategy::Full)),
        }
    };
    let rules = masker.column_rules(&columns);
    let view_rules = masker.column_rules(&behind_views);
    let masked: Vec<&ColumnSource> = columns
        .iter()
        .zip(&rules)
        .chain(behind_views.iter().zip(&view_rules))
        .filter(|(_, r)| r.is_some())
        .map(|(c, _)| &**c)
        .collect();
    if masked.is_empty() {
        return Ok(None);
    }
    if copy_out {
        let mut names: Vec<String> = masked.iter().map(|c| c.qualified()).collect();
        names.dedup();
        return Err(format!(
            "gatehouse: refused: COPY TO cannot mask column(s) {}; use SELECT",
            names.join(", ")
        ));
    }
    // Computed values can carry a masked column's data only if the statement refers to a
    // masked column, a star, or a name that is no column of the tables it reads (an alias,
    // a whole-row reference, a subquery's output). `count(*)` over the table does not. A
    // view whose definition reads a masked column taints everything read through it.
    let known: HashSet<&str> = columns.iter().map(|c| c.column.as_str()).collect();
    let through_view = view_rules.iter().any(Option::is_some);
    let tainted = through_view
        || stmt
            .columns
            .iter()
            .any(|r| r == "*" || !known.contains(r.as_str()) || masked.iter().any(|c| c.column == *r));
    Ok(tainted
        .then(|| {
            rules
                .into_iter()
                .chain(view_rules)
                .flatten()
                .map(|r| r.strategy)
                .reduce(MaskStrategy::max)
        })
        .flatten())
}

/// The client hears that the COPY was refused, not the catalog's error (server internals);
/// the operator log has it.
fn copy_unchecked(e: &crate::catalog::CatalogError) -> String {
    tracing::warn!(error = %e, "COPY refused: its columns could not be checked against column rules");
    "gatehouse: refused: this COPY's columns could not be checked against column rules".to_string()
}

/// Refuse an allowed operation whose results could not be masked, and record why.
fn unmaskable_refusal(sg: &dyn SessionGuard, op: u64, message: String) -> String {
    sg.outcome(
        op,
        OpOutcome {
            error: Some(("42501".to_string(), message.clone())),
            skipped: true,
            ..OpOutcome::default()
        },
    );
    message
}

fn denial(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Deny { reason, .. } => format!("gatehouse: {reason}"),
        Verdict::Allow { .. } => String::new(),
    }
}

fn refusal(e: &GuardError) -> (&'static str, String) {
    match e {
        // What PostgreSQL itself says for a canceled statement.
        GuardError::Canceled => ("57014", "canceling statement due to user request".to_string()),
        _ => ("58000", format!("gatehouse: {e}; statement refused")),
    }
}

/// Most client bytes buffered while a statement is held; past this the client is no longer
/// read (so a disconnect is noticed only when the request ends).
const HELD_BUFFER_MAX: usize = 1 << 20;

/// What a held statement's wait needs from the client side of the relay.
struct ClientSide<'a> {
    cw: &'a ClientWriter,
    crd: &'a mut ReadHalf<Stream>,
    buf: &'a mut BytesMut,
    cancel: &'a CancelSignal,
}

impl<'a> ClientSide<'a> {
    fn new(
        cw: &'a ClientWriter,
        crd: &'a mut ReadHalf<Stream>,
        buf: &'a mut BytesMut,
        cancel: &'a CancelSignal,
    ) -> Self {
        ClientSide { cw, crd, buf, cancel }
    }
}

/// Ask the guard about `op`. When it is held for approval, tell the client (a NoticeResponse
/// naming the request), then wait for the decision while reading the client: more messages are
/// buffered for later, a disconnect withdraws the request (`Err`), a CancelRequest withdraws
/// it and fails the statement with SQLSTATE 57014 as PostgreSQL would.
async fn check(
    sg: &dyn SessionGuard,
    op: Operation,
    params: Option<Vec<String>>,
    io: &mut ClientSide<'_>,
) -> Result<Result<Checked, GuardError>, ClientEnd> {
    // A cancel from here on is meant for this statement.
    let seen = io.cancel.generation();
    let checked = match params {
        Some(p) => sg.check_bound(op.clone(), p).await,
        None => sg.check(op.clone()).await,
    };
    let checked = match checked {
        Ok(c) => c,
        Err(GuardError::CredentialExpired(m)) => return Err(expired(io.cw, &m).await),
        Err(e) => return Ok(Err(e)),
    };
    let Some(hold) = checked.hold.clone() else {
        return Ok(Ok(checked));
    };
    let _holding = io.cancel.hold();
    let mut out = BytesMut::new();
    let detail = format!("An approver runs: gatehouse approvals approve {}", hold.id);
    proto::error_msg(
        &mut out,
        Severity::Notice,
        "00000",
        &hold.waiting_message(),
        Some(&detail),
    );
    let told = tokio::time::timeout(hold.timeout, async {
        let mut w = io.cw.lock().await;
        w.write_all(&out).await?;
        w.flush().await
    })
    .await;
    if !matches!(told, Ok(Ok(()))) {
        // Gone, or not reading at all: either way it cannot wait for a decision.
        sg.withdraw(checked.op, &hold, Withdrawal::Disconnected);
        return Err(ClientEnd::Disconnected);
    }
    let wait = sg.await_approval(checked.op, op, &hold);
    tokio::pin!(wait);
    let mut reading = true;
    loop {
        tokio::select! {
            // A decision that is already there wins over a cancel or a disconnect.
            biased;
            decided = &mut wait => return match decided {
                Err(GuardError::CredentialExpired(m)) => Err(expired(io.cw, &m).await),
                d => Ok(d),
            },
            () = io.cancel.fired_since(seen) => {
                sg.withdraw(checked.op, &hold, Withdrawal::Canceled);
                return Ok(Err(GuardError::Canceled));
            }
            read = io.crd.read_buf(io.buf), if reading => match read {
                Ok(n) if n > 0 => reading = io.buf.len() < HELD_BUFFER_MAX,
                _ => {
                    sg.withdraw(checked.op, &hold, Withdrawal::Disconnected);
                    return Err(ClientEnd::Disconnected);
                }
            },
        }
    }
}

/// A client's CancelRequest for this session, as a signal a held statement can wait on.
/// Counts cancels so that one arriving before a hold began does not cancel it.
#[derive(Default)]
pub(crate) struct CancelSignal {
    fired: AtomicU64,
    notify: tokio::sync::Notify,
    /// A statement is held (nothing of this session runs upstream).
    holding: AtomicBool,
}

/// Marks the session as holding a statement while it lives.
struct Holding<'a>(&'a CancelSignal);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.holding.store(false, Ordering::Release);
    }
}

impl CancelSignal {
    /// Deliver a cancel. Returns whether a held statement took it: then there is nothing to
    /// cancel upstream, and forwarding it could hit the client's next statement instead.
    pub(crate) fn fire(&self) -> bool {
        self.fired.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
        self.holding.load(Ordering::Acquire)
    }

    fn hold(&self) -> Holding<'_> {
        self.holding.store(true, Ordering::Release);
        Holding(self)
    }

    fn generation(&self) -> u64 {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once a cancel arrived after `seen` was read.
    async fn fired_since(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.generation() != seen {
                return;
            }
            notified.await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_to_upstream(
    mut crd: ReadHalf<Stream>,
    mut buf: BytesMut,
    mut uwr: WriteHalf<Stream>,
    cw: ClientWriter,
    sg: Arc<dyn SessionGuard>,
    cache: Arc<ClassifyCache>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Pending>,
    masker: Option<Arc<dyn RowMasker>>,
    target: Arc<PgTarget>,
    cancel: Arc<CancelSignal>,
) -> (WriteHalf<Stream>, ClientEnd) {
    let masking = masker.is_some();
    // Describe/Bind are followed to know the shape of each Execute's rows: for masking them,
    // and for naming the columns of recorded results.
    let describe = masking || sg.result_limit() > 0;
    let mut statements: HashMap<String, Arc<SqlStatement>> = HashMap::new();
    let mut portals: HashMap<String, Arc<SqlStatement>> = HashMap::new();
    let mut portal_params: HashMap<String, Vec<String>> = HashMap::new();
    // Masking sessions only: ids of prepared statements and portals, so the other side can
    // tell which RowDescription applies to an Execute's rows.
    let mut next_id = 1u64;
    let mut statement_ids: HashMap<String, u64> = HashMap::new();
    let mut portal_shapes: HashMap<String, ExecShape> = HashMap::new();
    let mut out = BytesMut::with_capacity(8192);
    let send = |p: Pending| {
        // The receiver lives as long as the session; a send error means it is ending anyway.
        let _ = tx.send(p);
    };
    loop {
        loop {
            let frame = match proto::peek_frame(&buf, proto::MAX_MESSAGE_LEN) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let end = protocol_error(&cw, &format!("invalid message: {e}")).await;
                    return (uwr, end);
                }
            };
            let msg = buf.split_to(frame.len);
            let body = proto::body(&msg);
            match frame.tag {
                b'Q' => {
                    let Ok(text) = proto::parse_query(body) else {
                        return (uwr, protocol_error(&cw, "malformed Query message").await);
                    };
                    if !flush(&mut uwr, &mut out).await {
                        return (uwr, ClientEnd::UpstreamWriteFailed);
                    }
                    let stmts = classify(&text);
                    let mut allowed = Vec::with_capacity(stmts.len());
                    let mut denied = None;
                    for s in stmts {
                        let s = with_behind_views(&*sg, &target, Arc::new(s)).await;
                        let ddl = s.kind() == StatementKind::Ddl;
                        let mut io = ClientSide::new(&cw, &mut crd, &mut buf, &cancel);
                        let checked = match check(&*sg, Operation::Query(s.clone()), None, &mut io).await {
                            Ok(c) => c,
                            Err(end) => return (uwr, end),
                        };
                        match checked {
                            Ok(c) if c.is_allow() => match &masker {
                                Some(m) => match mask_plan(&**m, &target, &s).await {
                                    Ok(derived) => allowed.push((c.op, derived, ddl)),
                                    Err(message) => {
                                        denied = Some(("42501", unmaskable_refusal(&*sg, c.op, message)));
                                        break;
                                    }
                                },
                                None => allowed.push((c.op, None, ddl)),
                            },
                            Ok(c) => {
                                denied = Some(("42501", denial(&c.verdict)));
                                break;
                            }
                            Err(e) => {
                                denied = Some(refusal(&e));
                                break;
                            }
                        }
                    }
                    if let Some((code, message)) = denied {
                        for (op, _, _) in allowed {
                            sg.outcome(
                                op,
                                OpOutcome {
                                    skipped: true,
                                    ..OpOutcome::default()
                                },
                            );
                        }
                        send(Pending::Denied { code, message });
                        send(Pending::Sync);
                        proto::query(&mut out, &shared.nonce);
                    } else {
                        let now = Instant::now();
                        if allowed.is_empty() {
                            send(Pending::Exec {
                                op: None,
                                start: now,
                                rows: 0,
                                shape: None,
                                derived: None,
                                ddl: false,
                            });
                        }
                        for (op, derived, ddl) in allowed {
                            send(Pending::Exec {
                                op: Some(op),
                                start: now,
                                rows: 0,
                                shape: None,
                                derived,
                                ddl,
                            });
                        }
                        send(Pending::Sync);
                        out.extend_from_slice(&msg);
                    }
                    shared.syncs_sent.fetch_add(1, Ordering::Release);
                }
                b'P' => {
                    let Ok((name, sql)) = proto::parse_parse(body) else {
                        return (uwr, protocol_error(&cw, "malformed Parse message").await);
                    };
                    if describe {
                        statement_ids.insert(name.clone(), next_id);
                        next_id += 1;
                    }
                    statements.insert(name, cache.classify_one(&sql));
                    out.extend_from_slice(&msg);
                }
                b'B' => {
                    let Ok((portal, stmt)) = proto::parse_bind(body) else {
                        return (uwr, protocol_error(&cw, "malformed Bind message").await);
                    };
                    let c = statements
                        .get(&stmt)
                        .cloned()
                        .unwrap_or_else(|| unknown_statement("UnknownPreparedStatement"));
                    if describe {
                        let Ok(formats) = proto::bind_result_formats(body) else {
                            return (uwr, protocol_error(&cw, "malformed Bind message").await);
                        };
                        let shape = ExecShape {
                            stmt: statement_ids.get(&stmt).copied().unwrap_or(0),
                            portal: next_id,
                            formats: formats.into(),
                        };
                        next_id += 1;
                        portal_shapes.insert(portal.clone(), shape);
                    }
                    // Bound values of statements that may be held, for the approvers; SELECTs
                    // (the hot path) are spared the parse.
                    if c.kind() == StatementKind::Select {
                        portal_params.remove(&portal);
                    } else {
                        let Ok(params) = proto::bind_parameters(body) else {
                            return (uwr, protocol_error(&cw, "malformed Bind message").await);
                        };
                        portal_params.insert(portal.clone(), params);
                    }
                    portals.insert(portal, c);
                    out.extend_from_slice(&msg);
                }
                b'E' => {
                    let Ok(portal) = proto::parse_execute(body) else {
                        return (uwr, protocol_error(&cw, "malformed Execute message").await);
                    };
                    let stmt = portals
                        .get(&portal)
                        .cloned()
                        .unwrap_or_else(|| unknown_statement("UnknownPortal"));
                    // Let the upstream work on what came before while the decision is recorded.
                    if !flush(&mut uwr, &mut out).await {
                        return (uwr, ClientEnd::UpstreamWriteFailed);
                    }
                    let stmt = with_behind_views(&*sg, &target, stmt).await;
                    let ddl = stmt.kind() == StatementKind::Ddl;
                    let mut io = ClientSide::new(&cw, &mut crd, &mut buf, &cancel);
                    let checked = match check(
                        &*sg,
                        Operation::Query(stmt.clone()),
                        portal_params.get(&portal).cloned(),
                        &mut io,
                    )
                    .await
                    {
                        Ok(c) => c,
                        Err(end) => return (uwr, end),
                    };
                    let plan = match (&checked, &masker) {
                        (Ok(c), Some(m)) if c.is_allow() => mask_plan(&**m, &target, &stmt).await,
                        _ => Ok(None),
                    };
                    match checked {
                        Ok(c) if c.is_allow() => match plan {
                            Ok(derived) => {
                                send(Pending::Exec {
                                    op: Some(c.op),
                                    start: Instant::now(),
                                    rows: 0,
                                    shape: portal_shapes.get(&portal).cloned(),
                                    derived,
                                    ddl,
                                });
                                out.extend_from_slice(&msg);
                            }
                            Err(message) => {
                                send(Pending::Denied {
                                    code: "42501",
                                    message: unmaskable_refusal(&*sg, c.op, message),
                                });
                                proto::execute(&mut out, &shared.nonce, 0);
                            }
                        },
                        Ok(c) => {
                            send(Pending::Denied {
                                code: "42501",
                                message: denial(&c.verdict),
                            });
                            proto::execute(&mut out, &shared.nonce, 0);
                        }
                        Err(e) => {
                            let (code, message) = refusal(&e);
                            send(Pending::Denied { code, message });
                            proto::execute(&mut out, &shared.nonce, 0);
                        }
                    }
                }
                b'C' => {
                    match proto::parse_target(body, "Close") {
                        Ok((b'S', name)) => {
                            statement_ids.remove(&name);
                            statements.remove(&name);
                        }
                        Ok((_, name)) => {
                            portal_shapes.remove(&name);
                            portal_params.remove(&name);
                            portals.remove(&name);
                        }
                        Err(_) => return (uwr, protocol_error(&cw, "malformed Close message").await),
                    }
                    out.extend_from_slice(&msg);
                }
                b'S' if shared.copy_in.load(Ordering::Acquire) => {
                    // PostgreSQL ignores Sync during COPY IN; so must the bookkeeping.
                    out.extend_from_slice(&msg);
                }
                b'S' => {
                    send(Pending::Sync);
                    shared.syncs_sent.fetch_add(1, Ordering::Release);
                    out.extend_from_slice(&msg);
                }
                b'F' => {
                    // Fast-path function call: runs a function by OID, bypassing SQL.
                    if !flush(&mut uwr, &mut out).await {
                        return (uwr, ClientEnd::UpstreamWriteFailed);
                    }
                    let mut io = ClientSide::new(&cw, &mut crd, &mut buf, &cancel);
                    let checked = match check(
                        &*sg,
                        Operation::Query(unknown_statement("FunctionCall")),
                        None,
                        &mut io,
                    )
                    .await
                    {
                        Ok(c) => c,
                        Err(end) => return (uwr, end),
                    };
                    match checked {
                        // A fast-path result is not rows: nothing could mask it.
                        Ok(c) if c.is_allow() && masking => {
                            send(Pending::Denied {
                                code: "42501",
                                message: unmaskable_refusal(&*sg, c.op, UNMASKABLE.to_string()),
                            });
                            proto::query(&mut out, &shared.nonce);
                        }
                        Ok(c) if c.is_allow() => {
                            send(Pending::Exec {
                                op: Some(c.op),
                                start: Instant::now(),
                                rows: 0,
                                shape: None,
                                derived: None,
                                ddl: false,
                            });
                            out.extend_from_slice(&msg);
                        }
                        other => {
                            let (code, message) = match other {
                                Ok(c) => ("42501", denial(&c.verdict)),
                                Err(e) => refusal(&e),
                            };
                            send(Pending::Denied { code, message });
                            proto::query(&mut out, &shared.nonce);
                        }
                    }
                    send(Pending::Sync);
                    shared.syncs_sent.fetch_add(1, Ordering::Release);
                }
                b'D' if describe => {
                    let id = match proto::parse_target(body, "Describe") {
                        Ok((b'S', name)) => statement_ids.get(&name).copied().unwrap_or(0),
                        Ok((_, name)) => portal_shapes.get(&name).map(|p| p.portal).unwrap_or(0),
                        Err(_) => return (uwr, protocol_error(&cw, "malformed Describe message").await),
                    };
                    send(Pending::Describe(id));
                    out.extend_from_slice(&msg);
                }
                b'D' | b'H' | b'd' | b'c' | b'f' => out.extend_from_slice(&msg),
                b'X' => {
                    let ok = flush(&mut uwr, &mut out).await;
                    return (
                        uwr,
                        if ok {
                            ClientEnd::Terminated
                        } else {
                            ClientEnd::UpstreamWriteFailed
                        },
                    );
                }
                other => {
                    let m = format!("invalid frontend message type {}", other as char);
                    return (uwr, protocol_error(&cw, &m).await);
                }
            }
        }
        if !flush(&mut uwr, &mut out).await {
            return (uwr, ClientEnd::UpstreamWriteFailed);
        }
        buf.reserve(8192);
        match crd.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => {
                if shared.copy_in.load(Ordering::Acquire) {
                    // Abort the upstream COPY cleanly so nothing half-copied is committed.
                    proto::copy_fail(&mut out, "client disconnected during COPY");
                    proto::sync(&mut out);
                    shared.syncs_sent.fetch_add(1, Ordering::Release);
                    send(Pending::Sync);
                    let _ = flush(&mut uwr, &mut out).await;
                }
                return (uwr, ClientEnd::Disconnected);
            }
        }
    }
}

async fn flush(uwr: &mut WriteHalf<Stream>, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = uwr.write_all(out).await.is_ok();
    out.clear();
    ok
}

/// End the session because its credential expired: FATAL with SQLSTATE 28000
/// (invalid_authorization_specification), as for a failed login.
async fn expired(cw: &ClientWriter, message: &str) -> ClientEnd {
    fatal(cw, "28000", message).await;
    ClientEnd::CredentialExpired(message.trim_start_matches("gatehouse: ").to_string())
}

async fn protocol_error(cw: &ClientWriter, message: &str) -> ClientEnd {
    fatal(cw, "08P01", message).await;
    ClientEnd::ProtocolError(message.to_string())
}

/// Tell the client why its session ends (an ErrorResponse of severity FATAL) and close.
async fn fatal(cw: &ClientWriter, code: &str, message: &str) {
    let mut out = BytesMut::new();
    proto::error_msg(&mut out, Severity::Fatal, code, message, None);
    let mut w = cw.lock().await;
    let _ = w.write_all(&out).await;
    let _ = w.shutdown().await;
}

struct UpstreamSide<'a> {
    cw: ClientWriter,
    sg: Arc<dyn SessionGuard>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Pending>,
    queue: VecDeque<Pending>,
    params: &'a mut BTreeMap<String, String>,
    status: u8,
    rfq_seen: u64,
    client_alive: bool,
    /// The session's masking stage; `None`: rows are forwarded untouched.
    masker: Option<Arc<dyn RowMasker>>,
    target: Arc<PgTarget>,
    /// RowDescriptions answering Describe messages, by statement/portal id (bounded).
    descs: BTreeMap<u64, Arc<[proto::FieldDesc]>>,
    /// Shape of the rows now streaming, as described (until the operation completes).
    current: Option<Arc<[ColumnShape]>>,
    /// The same with column sources resolved, and whether its rows need masking at all; made
    /// at the first row.
    plan: Option<Plan>,
    /// DDL completed in the current transaction: the catalog cache is dropped again when it
    /// ends (a concurrent lookup may have cached what the transaction was changing).
    ddl_done: bool,
    /// What masking found and which maskers faulted, for the operation now streaming.
    findings: Vec<Finding>,
    faults: Vec<MaskFault>,
    /// Bytes of result values recorded per operation (0: none).
    result_limit: usize,
    /// The rows of the operation now streaming, as the client receives them, for the record.
    capture: Option<Capture>,
}

/// How the rows now streaming are masked.
struct Plan {
    shape: Arc<[ColumnShape]>,
    derived: Option<MaskStrategy>,
    /// `false`: no column rule and no content masker applies; rows are forwarded untouched.
    needed: bool,
}

/// Row descriptions kept per session for Describe/Execute pairing.
const MAX_DESCS: usize = 512;

type C2U = tokio::task::JoinHandle<(WriteHalf<Stream>, ClientEnd)>;

impl UpstreamSide<'_> {
    fn front(&mut self) -> Option<&mut Pending> {
        if self.queue.is_empty() {
            while let Ok(p) = self.rx.try_recv() {
                self.queue.push_back(p);
            }
        }
        self.queue.front_mut()
    }

    fn pop(&mut self) -> Option<Pending> {
        self.front()?;
        self.queue.pop_front()
    }

    /// Pop the front item if it is an allowed operation: (op, start, rows so far, the rows
    /// recorded).
    fn pop_exec(&mut self) -> Option<(Option<u64>, Instant, u64, Option<gatehouse_core::RecordedRows>)> {
        if !matches!(self.front(), Some(Pending::Exec { .. })) {
            return None;
        }
        match self.queue.pop_front() {
            Some(Pending::Exec {
                op, start, rows, ddl, ..
            }) => {
                if ddl {
                    self.target.invalidate_catalog();
                    self.ddl_done = true;
                }
                if let Some(op) = op {
                    self.masking_done(op);
                }
                let result = self.capture.take().map(Capture::into_rows);
                Some((op, start, rows, result))
            }
            _ => None,
        }
    }

    /// Keep a DataRow (its body, as the client receives it) for the record, while the
    /// operation's recorded values stay within the limit.
    fn capture_row(&mut self, body: &[u8]) {
        if self.result_limit == 0 || self.capture.as_ref().is_some_and(Capture::is_full) {
            return;
        }
        if self.capture.is_none() {
            // A view's column is named by its source too, and flagged: the recorder treats it
            // as computed as well (redacted when the statement reads a classified column,
            // which includes one behind the view).
            let (sources, from_view) = match &self.plan {
                Some(p) => p
                    .shape
                    .iter()
                    .map(|c| match &c.desc.source {
                        Some(s) => (Some(s.column.clone()), s.relation == RelationKind::View),
                        None => (None, false),
                    })
                    .unzip(),
                None => (Vec::new(), Vec::new()),
            };
            let capture = match self.row_shape() {
                Some(s) => Capture::new(
                    s.iter().map(|c| c.desc.name.clone()).collect(),
                    sources,
                    s.iter().map(|c| c.binary && !c.text_like).collect(),
                ),
                None => Capture::new(Vec::new(), sources, Vec::new()),
            };
            self.capture = Some(capture.with_view_sources(from_view));
        }
        let limit = self.result_limit;
        if let Some(cap) = self.capture.as_mut() {
            cap.push(body, limit);
        }
    }

    /// Record what masking did to an operation's results, once it has completed.
    fn masking_done(&mut self, op: u64) {
        self.current = None;
        self.plan = None;
        if !self.findings.is_empty() || !self.faults.is_empty() {
            let findings = merge_findings(std::mem::take(&mut self.findings));
            let faults = std::mem::take(&mut self.faults);
            self.sg.masked(op, findings, faults);
        }
    }

    /// How the rows the front operation is returning are masked: made at its first row by
    /// naming the columns' source tables (catalog, cached) and asking the masking stage.
    /// `None`: the rows' shape is unknown (they must be masked whole).
    async fn plan(
        &mut self,
        masker: &Arc<dyn RowMasker>,
    ) -> Option<(Arc<[ColumnShape]>, Option<MaskStrategy>, bool)> {
        if let Some(p) = &self.plan {
            return Some((p.shape.clone(), p.derived, p.needed));
        }
        let derived = match self.front() {
            Some(Pending::Exec { derived, .. }) => *derived,
            _ => None,
        };
        let described = self.row_shape()?;
        let shape: Arc<[ColumnShape]> = if masker.has_column_rules() {
            let oids: Vec<u32> = described
                .iter()
                .map(|c| c.desc.table_oid)
                .filter(|&o| o != 0)
                .collect();
            // A failed lookup leaves sources unset: column rules then mask those columns.
            let rels = if oids.is_empty() {
                Default::default()
            } else {
                self.target.relations(&oids).await.unwrap_or_default()
            };
            described
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c.desc.source = rels
                        .get(&c.desc.table_oid)
                        .and_then(|r| r.columns.get(&c.desc.column_number))
                        .cloned();
                    c
                })
                .collect()
        } else {
            described
        };
        let descs: Vec<_> = shape.iter().map(|c| c.desc.clone()).collect();
        let needed = masker.needs(&descs, derived);
        self.plan = Some(Plan {
            shape: shape.clone(),
            derived,
            needed,
        });
        Some((shape, derived, needed))
    }

    /// The shape of the rows the front operation is returning, if known.
    fn row_shape(&mut self) -> Option<Arc<[ColumnShape]>> {
        if let Some(s) = &self.current {
            return Some(s.clone());
        }
        let es = match self.front() {
            Some(Pending::Exec { shape: Some(es), .. }) => es.clone(),
            _ => return None,
        };
        let shape = if let Some(f) = self.descs.get(&es.portal) {
            mask::shape(f, None)
        } else {
            mask::shape(self.descs.get(&es.stmt)?, Some(&es.formats))
        };
        self.current = Some(shape.clone());
        Some(shape)
    }

    /// Mask a run of DataRow messages (`raw`: whole messages) and write the result to `out`.
    async fn mask_rows(
        &mut self,
        masker: &Arc<dyn RowMasker>,
        shape: Option<Arc<[ColumnShape]>>,
        derived: Option<MaskStrategy>,
        raw: &[&[u8]],
        out: &mut BytesMut,
    ) {
        let bodies: Vec<&[u8]> = raw.iter().map(|m| proto::body(m)).collect();
        let op = match self.front() {
            Some(Pending::Exec { op: Some(op), .. }) => *op,
            _ => 0,
        };
        let batch = shape.as_deref().and_then(|s| mask::batch(s, &bodies));
        let masked = match batch {
            Some(b) => masker.mask(op, &b, derived).await,
            None => {
                // Rows we cannot lay out cannot be inspected: fail closed.
                let fault = MaskFault {
                    plugin: "gatehouse".into(),
                    hash: String::new(),
                    kind: "unknown-row-description".into(),
                    message: "rows arrived without a description matching them; all values masked".into(),
                };
                Masked {
                    mask_all: Some(fault),
                    ..Masked::default()
                }
            }
        };
        let usable = if masked.mask_all.is_some() {
            None
        } else {
            shape.as_deref()
        };
        mask::rewrite(usable.or(shape.as_deref()), raw, &bodies, &masked, out);
        self.findings.extend(masked.findings);
        self.faults.extend(masked.faults);
        if let Some(f) = masked.mask_all
            && !self
                .faults
                .iter()
                .any(|x| x.plugin == f.plugin && x.kind == f.kind)
        {
            self.faults.push(f);
        }
    }

    fn idle(&self) -> bool {
        self.shared.syncs_sent.load(Ordering::Acquire) == self.rfq_seen
    }

    async fn run(
        &mut self,
        mut urd: ReadHalf<Stream>,
        mut c2u: C2U,
    ) -> (Option<ReadHalf<Stream>>, Option<WriteHalf<Stream>>, String) {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut client_end: Option<(WriteHalf<Stream>, ClientEnd)> = None;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if let Some((_, end)) = &client_end
                && self.idle()
            {
                let clean = matches!(end, ClientEnd::Terminated) && self.status == b'I';
                let reason = describe(end);
                let Some((uwr, _)) = client_end.take() else {
                    return (None, None, reason);
                };
                return if clean && buf.is_empty() {
                    (Some(urd), Some(uwr), reason)
                } else {
                    (None, None, reason)
                };
            }
            let read = tokio::select! {
                r = urd.read_buf(&mut buf) => r,
                j = &mut c2u, if client_end.is_none() => {
                    match j {
                        Ok((uwr, end)) => {
                            if !matches!(end, ClientEnd::Terminated) {
                                self.client_alive = false;
                            }
                            client_end = Some((uwr, end));
                        }
                        Err(_) => return (None, None, "internal error in session task".into()),
                    }
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                    continue;
                }
                _ = sleep_until(drain_deadline) => {
                    let reason = client_end.as_ref().map(|(_, e)| describe(e)).unwrap_or_default();
                    return (None, None, reason);
                }
            };
            match read {
                Ok(n) if n > 0 => {}
                _ => {
                    c2u.abort();
                    let reason = match &client_end {
                        Some((_, e)) => describe(e),
                        None => {
                            self.sg.notice("error", "upstream closed the connection".into());
                            "upstream closed the connection".into()
                        }
                    };
                    let mut w = self.cw.lock().await;
                    let _ = w.shutdown().await;
                    return (None, None, reason);
                }
            }
            if !self.process(&mut buf).await {
                // Upstream sent something unframeable: nothing safe can follow.
                c2u.abort();
                self.sg.notice("error", "malformed message from upstream".into());
                let mut out = BytesMut::new();
                proto::error_msg(
                    &mut out,
                    Severity::Fatal,
                    "08P01",
                    "gatehouse: protocol error from the upstream server",
                    None,
                );
                let mut w = self.cw.lock().await;
                let _ = w.write_all(&out).await;
                let _ = w.shutdown().await;
                return (None, None, "protocol error from upstream".into());
            }
        }
    }

    /// Handle every whole message in `buf`, forward them, keep any partial tail.
    async fn process(&mut self, buf: &mut BytesMut) -> bool {
        let mut pos = 0usize;
        let mut written = 0usize;
        let mut out = BytesMut::new();
        let mut chunks: Vec<(usize, usize, Option<BytesMut>)> = Vec::new();
        loop {
            let frame = match proto::peek_frame(buf.get(pos..).unwrap_or(&[]), proto::MAX_MESSAGE_LEN) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return false,
            };
            let start = pos;
            pos += frame.len;
            let body = buf.get(start + 5..pos).unwrap_or(&[]);
            match frame.tag {
                b'D' if self.masker.is_some() => {
                    let Some(masker) = self.masker.clone() else {
                        continue;
                    };
                    let plan = self.plan(&masker).await;
                    if let Some((_, _, false)) = plan {
                        // Nothing masks these rows: forward them as received.
                        if let Some(Pending::Exec { rows, .. }) = self.front() {
                            *rows += 1;
                        }
                        self.capture_row(body);
                        continue;
                    }
                    let (shape, derived) = match plan {
                        Some((shape, derived, _)) => (Some(shape), derived),
                        None => (None, None),
                    };
                    // The run of DataRows that arrived together is one batch.
                    let mut raw: Vec<&[u8]> = vec![buf.get(start..pos).unwrap_or(&[])];
                    while let Ok(Some(f)) =
                        proto::peek_frame(buf.get(pos..).unwrap_or(&[]), proto::MAX_MESSAGE_LEN)
                    {
                        if f.tag != b'D' {
                            break;
                        }
                        raw.push(buf.get(pos..pos + f.len).unwrap_or(&[]));
                        pos += f.len;
                    }
                    let n = raw.len() as u64;
                    if let Some(Pending::Exec { rows, .. }) = self.front() {
                        *rows += n;
                    }
                    out.clear();
                    self.mask_rows(&masker, shape, derived, &raw, &mut out).await;
                    if self.result_limit > 0 && !self.capture.as_ref().is_some_and(Capture::is_full) {
                        // What the client receives: the masked rows (not re-read once the
                        // operation's recorded rows are full).
                        let mut at = 0;
                        while let Ok(Some(f)) =
                            proto::peek_frame(out.get(at..).unwrap_or(&[]), proto::MAX_MESSAGE_LEN)
                        {
                            if f.tag == b'D' {
                                self.capture_row(out.get(at + 5..at + f.len).unwrap_or(&[]));
                            }
                            at += f.len;
                        }
                    }
                    chunks.push((written, start, Some(out.split())));
                    written = pos;
                }
                b'D' => {
                    if let Some(Pending::Exec { rows, .. }) = self.front() {
                        *rows += 1;
                    }
                    self.capture_row(body);
                }
                b'T' if self.masker.is_some() || self.result_limit > 0 => {
                    let fields: Arc<[proto::FieldDesc]> = match proto::parse_row_description(body) {
                        Ok(f) => f.into(),
                        Err(_) => return false,
                    };
                    if let Some(Pending::Describe(id)) = self.front() {
                        let id = *id;
                        self.pop();
                        self.descs.insert(id, fields);
                        while self.descs.len() > MAX_DESCS {
                            self.descs.pop_first();
                        }
                    } else {
                        self.current = Some(mask::shape(&fields, None));
                        self.plan = None;
                    }
                }
                b'n' => {
                    if let Some(Pending::Describe(_)) = self.front() {
                        self.pop();
                    }
                }
                b'C' | b'I' | b's' | b'V' => {
                    let tag = (frame.tag == b'C').then(|| {
                        let mut b = body;
                        proto::read_cstr(&mut b).unwrap_or_default()
                    });
                    if let Some((Some(op), start, rows, result)) = self.pop_exec() {
                        let rows = tag
                            .as_deref()
                            .map(proto::tag_rows)
                            .filter(|&n| n > 0)
                            .unwrap_or(rows);
                        self.sg.outcome(
                            op,
                            OpOutcome {
                                tag,
                                rows,
                                duration_us: start.elapsed().as_micros() as u64,
                                error: None,
                                skipped: false,
                                result,
                            },
                        );
                    }
                    if frame.tag == b'C' {
                        self.shared.copy_in.store(false, Ordering::Release);
                    }
                }
                b'E' => {
                    self.shared.copy_in.store(false, Ordering::Release);
                    let fields = proto::error_fields(body);
                    let ours = fields.iter().any(|(_, v)| v.contains(&self.shared.nonce));
                    if ours {
                        // Find the denial this error stands for.
                        let mut replacement = None;
                        while let Some(p) = self.front() {
                            match p {
                                Pending::Denied { .. } => {
                                    if let Some(Pending::Denied { code, message }) = self.pop() {
                                        replacement = Some((code, message));
                                    }
                                    break;
                                }
                                Pending::Sync => break,
                                Pending::Exec { .. } | Pending::Describe(_) => {
                                    self.pop();
                                }
                            }
                        }
                        let (code, message) =
                            replacement.unwrap_or(("42501", "gatehouse: statement denied".into()));
                        out.clear();
                        proto::error_msg(&mut out, Severity::Error, code, &message, None);
                        chunks.push((written, start, Some(out.split())));
                        written = pos;
                    } else if let Some((Some(op), start, rows, result)) = self.pop_exec() {
                        let code = proto::error_field(&fields, b'C').unwrap_or("").to_string();
                        let message = proto::error_field(&fields, b'M').unwrap_or("").to_string();
                        self.sg.outcome(
                            op,
                            OpOutcome {
                                tag: None,
                                rows,
                                duration_us: start.elapsed().as_micros() as u64,
                                error: Some((code, message)),
                                skipped: false,
                                result,
                            },
                        );
                    }
                }
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    self.current = None;
                    self.plan = None;
                    self.capture = None;
                    if self.ddl_done && self.status == b'I' {
                        self.target.invalidate_catalog();
                        self.ddl_done = false;
                    }
                    while let Some(p) = self.pop() {
                        match p {
                            Pending::Sync => break,
                            Pending::Exec { op: Some(op), .. } => {
                                self.sg.outcome(
                                    op,
                                    OpOutcome {
                                        skipped: true,
                                        ..OpOutcome::default()
                                    },
                                );
                            }
                            Pending::Exec { .. } | Pending::Denied { .. } | Pending::Describe(_) => {}
                        }
                    }
                    self.rfq_seen += 1;
                }
                b'S' => track_param(self.params, body),
                b'G' => self.shared.copy_in.store(true, Ordering::Release),
                _ => {}
            }
        }
        chunks.push((written, pos, None));
        if self.client_alive {
            let mut w = self.cw.lock().await;
            for (from, to, replacement) in &chunks {
                let seg = buf.get(*from..*to).unwrap_or(&[]);
                if !seg.is_empty() && w.write_all(seg).await.is_err() {
                    self.client_alive = false;
                    break;
                }
                if let Some(r) = replacement
                    && w.write_all(r).await.is_err()
                {
                    self.client_alive = false;
                    break;
                }
            }
        }
        buf.advance(pos);
        true
    }
}

/// One finding per (entity, field, source) for an operation, however many batches it took.
fn merge_findings(findings: Vec<Finding>) -> Vec<Finding> {
    let mut merged: Vec<Finding> = Vec::new();
    for f in findings {
        match merged
            .iter_mut()
            .find(|m| m.entity == f.entity && m.field == f.field && m.source == f.source)
        {
            Some(m) => m.count = m.count.saturating_add(f.count),
            None => merged.push(f),
        }
    }
    merged
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn describe(end: &ClientEnd) -> String {
    match end {
        ClientEnd::Terminated => "client terminated".into(),
        ClientEnd::Disconnected => "client disconnected".into(),
        ClientEnd::ProtocolError(m) => format!("protocol error: {m}"),
        ClientEnd::UpstreamWriteFailed => "upstream connection lost".into(),
        ClientEnd::CredentialExpired(m) => m.clone(),
    }
}
