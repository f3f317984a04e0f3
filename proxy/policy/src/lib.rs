//! Gatehouse's Cedar policy engine.
//!
//! A policy directory holds `schema.cedarschema` (namespace `Gatehouse`) and `*.cedar` policy
//! files. [`PolicyEngine::load`] parses them, requires a unique `@id` on every policy and
//! renames the policy to it (decisions cite ids, never `policy0`), and validates the set
//! against the schema in strict mode. [`PolicyEngine::watch`] hot-reloads the directory,
//! keeping the last good set when a change does not load.
//!
//! Per session, [`PolicyEngine::session`] builds the Cedar entities once (principal with its
//! groups, target, database); per operation, [`PolicyEngine::decide`] builds the context and
//! asks Cedar. Every failure to build or evaluate a request denies (fail closed) and is
//! reported in [`Decision::errors`].
//!
//! ```text
//! connect:  session(ctx) ──▶ decide(Connect) ──▶ Allow / Deny
//! query:    decide(Query(stmt)) per statement, same SessionPolicy
//! reload:   watch thread ─▶ read files ─▶ hash changed? ─▶ compile ─▶ swap (generation += 1)
//!                                                           └─ error ─▶ keep last good, warn
//! ```

mod cases;
mod error;
mod load;
mod names;
mod request;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use cedar_policy::{Authorizer, Entities, EntityUid, Response};
use gatehouse_core::{ColumnRule, ColumnSource, MaskStrategy, Operation, SessionCtx, Verdict};

pub use cases::{CaseOutcome, ExpectedDecision};
pub use error::PolicyError;
pub use load::SCHEMA_FILE;
pub use names::NAMESPACE;

use load::Compiled;
use names::Names;
use request::{BaseContext, SessionEntities};

/// The user-facing reason when a request could not be built or evaluated.
const EVALUATION_FAILED: &str = "access policy could not be evaluated";

/// A live, validated policy set plus everything needed to evaluate it.
struct Snapshot {
    compiled: Compiled,
    /// Content hash of the files this set was loaded from.
    digest: [u8; 32],
    generation: u64,
}

/// The policy engine: the current schema and policy set, reloadable, shared as `Arc`.
///
/// Cheap to query from many threads: [`PolicyEngine::decide`] holds a read lock only long
/// enough to clone an `Arc` of the current set.
pub struct PolicyEngine {
    dir: PathBuf,
    names: Names,
    authorizer: Authorizer,
    current: RwLock<Arc<Snapshot>>,
    /// Serializes reloads (the watcher and explicit [`PolicyEngine::reload_now`] calls).
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// The per-session half of a decision, built once at connect time by
/// [`PolicyEngine::session`].
pub struct SessionPolicy {
    ctx: SessionCtx,
    base: BaseContext,
    entities: SessionEntities,
    /// The schema the entities were checked against; rebuilt in `decide` if it changed.
    schema_digest: [u8; 32],
}

impl std::fmt::Debug for SessionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPolicy")
            .field("session_id", &self.ctx.session_id)
            .field("principal", &self.entities.principal.to_string())
            .field("resource", &self.entities.resource.to_string())
            .finish_non_exhaustive()
    }
}

impl SessionPolicy {
    /// The Cedar principal, e.g. `Gatehouse::Agent::"reporting-bot"`.
    pub fn principal(&self) -> String {
        self.entities.principal.to_string()
    }

    /// The Cedar resource, e.g. `Gatehouse::Database::"app"`.
    pub fn resource(&self) -> String {
        self.entities.resource.to_string()
    }
}

/// The engine's answer for one `read_column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDecision {
    /// `None`: the column is readable in the clear. Otherwise how it is masked and which
    /// policies said so (empty when no policy permits reading it, or evaluation failed).
    pub rule: Option<ColumnRule>,
    pub generation: u64,
    /// Request-building and evaluation errors (they mask the column fully).
    pub errors: Vec<String>,
}

/// The engine's answer for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, or deny with a user-facing reason; both cite the deciding policy ids.
    pub verdict: Verdict,
    /// Generation of the policy set that decided (1 for the first load).
    pub generation: u64,
    /// Approver groups, when the operation was denied only by `forbid` policies annotated
    /// `@approvers` (sorted, deduplicated). Never set when `approved` was already true or
    /// evaluation failed.
    pub needs_approval: Option<Vec<String>>,
    /// With `needs_approval`: each denying policy's own groups. An approval must include a
    /// member of every one of these sets, so one group's approval cannot lift a forbid that
    /// names another.
    pub approval_groups: Vec<Vec<String>>,
    /// Request-building and evaluation errors, for the record (never sent to the client).
    /// Non-empty implies a deny.
    pub errors: Vec<String>,
}

impl PolicyEngine {
    /// Load `schema.cedarschema` and every `*.cedar` file in `dir` (sorted by name), parse,
    /// require a unique `@id` on every policy and rename each policy to its `@id`, and validate
    /// the set in strict mode against the schema. Errors name the file and the line or id.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let names = Names::new()?;
        let sources = load::read_sources(dir)?;
        let compiled = load::compile(&sources)?;
        self_check(&names, &compiled)?;
        tracing::info!(
            dir = %dir.display(),
            policies = compiled.policies.num_of_policies(),
            generation = 1,
            "policy set loaded"
        );
        Ok(PolicyEngine {
            dir: dir.to_path_buf(),
            names,
            authorizer: Authorizer::new(),
            current: RwLock::new(Arc::new(Snapshot {
                compiled,
                digest: sources.digest,
                generation: 1,
            })),
            reload_lock: Mutex::new(()),
        })
    }

    /// Spawn a background thread (`gatehouse-policy-watch`) that checks the directory every
    /// `interval` by content hash of its files. A change that loads is swapped in (the
    /// generation increments, logged at info); one that does not keeps the last good set and is
    /// logged at warn,
    /// once per distinct content. The thread holds only a `Weak` and ends after the engine is
    /// dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<JoinHandle<()>> {
        let engine: Weak<PolicyEngine> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("gatehouse-policy-watch".to_string())
            .spawn(move || {
                let mut last_warned: Option<String> = None;
                loop {
                    std::thread::sleep(interval);
                    let Some(engine) = engine.upgrade() else {
                        tracing::debug!("policy engine dropped, watcher stops");
                        return;
                    };
                    engine.poll(&mut last_warned);
                }
            })
    }

    /// One watcher tick.
    fn poll(&self, last_warned: &mut Option<String>) {
        let sources = match load::read_sources(&self.dir) {
            Ok(sources) => sources,
            Err(e) => {
                let key = e.to_string();
                if last_warned.as_deref() != Some(key.as_str()) {
                    self.warn_kept(&e);
                    *last_warned = Some(key);
                }
                return;
            }
        };
        if sources.digest == self.snapshot().digest {
            *last_warned = None;
            return;
        }
        let key = hex(&sources.digest);
        if last_warned.as_deref() == Some(key.as_str()) {
            return;
        }
        match self.install(sources) {
            Ok(_) => *last_warned = None,
            Err(e) => {
                self.warn_kept(&e);
                *last_warned = Some(key);
            }
        }
    }

    /// The watcher handles a failed reload by logging it here, once per distinct failure.
    fn warn_kept(&self, error: &PolicyError) {
        tracing::warn!(
            %error,
            generation = self.generation(),
            "policy reload failed, keeping the last good set"
        );
    }

    /// Reload the directory now. Returns the generation in force afterwards: unchanged when
    /// the files are identical to the live set's, one more when a new set was swapped in. On
    /// error the last good set stays live.
    pub fn reload_now(&self) -> Result<u64, PolicyError> {
        let sources = load::read_sources(&self.dir)?;
        self.install(sources)
    }

    fn install(&self, sources: load::Sources) -> Result<u64, PolicyError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.snapshot();
        if sources.digest == old.digest {
            return Ok(old.generation);
        }
        let compiled = load::compile(&sources)?;
        self_check(&self.names, &compiled)?;
        let generation = old.generation + 1;
        let policies = compiled.policies.num_of_policies();
        let next = Arc::new(Snapshot {
            compiled,
            digest: sources.digest,
            generation,
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        tracing::info!(dir = %self.dir.display(), policies, generation, "policy set reloaded");
        Ok(generation)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Generation of the live policy set: 1 after [`PolicyEngine::load`], one more per
    /// successful reload.
    pub fn generation(&self) -> u64 {
        self.snapshot().generation
    }

    /// Hex SHA-256 of the files the live set was loaded from, for records.
    pub fn digest(&self) -> String {
        hex(&self.snapshot().digest)
    }

    /// The `@id`s of the live policies, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        self.snapshot().compiled.locations.keys().cloned().collect()
    }

    /// Whether the live policy `id` is a `permit` (`Some(true)`), a `forbid` (`Some(false)`),
    /// or unknown (`None`).
    pub fn is_permit(&self, id: &str) -> Option<bool> {
        let snap = self.snapshot();
        let policy = snap.compiled.policies.policy(&cedar_policy::PolicyId::new(id))?;
        Some(policy.effect() == cedar_policy::Effect::Permit)
    }

    /// Build the per-session part once at connect time: the principal entity with its groups
    /// as parents (and the `on_behalf_of` user), the target, and the resource (`Database` for
    /// `postgres` targets, `Host` for `ssh`) with `env`, `target` and the target's tags, all
    /// checked against the schema.
    pub fn session(&self, ctx: &SessionCtx) -> Result<SessionPolicy, PolicyError> {
        let snap = self.snapshot();
        let entities = request::session_entities(&self.names, &snap.compiled.schema, ctx)?;
        Ok(SessionPolicy {
            ctx: ctx.clone(),
            base: BaseContext::new(ctx),
            entities,
            schema_digest: snap.compiled.schema_digest,
        })
    }

    /// Decide `connect` or `query` for this session with the live policy set. `approved` feeds
    /// `context.approved` (true only when re-evaluating after an approval). Any error building
    /// or evaluating the request denies.
    pub fn decide(&self, session: &SessionPolicy, op: &Operation, approved: bool) -> Decision {
        self.decide_as(session, op, approved, None, gatehouse_core::time::now_micros())
    }

    /// Decide as [`PolicyEngine::decide`] would have at `now_us` (µs since the Unix epoch):
    /// `context.now` is that instant. For re-deciding recorded operations (policy what-if).
    pub fn decide_at(
        &self,
        session: &SessionPolicy,
        op: &Operation,
        approved: bool,
        now_us: i64,
    ) -> Decision {
        self.decide_as(session, op, approved, None, now_us)
    }

    /// Decide again after an approval: `context.approved` is true and `context.approver` is
    /// `approver` (`user:name` of the approver whose vote completed the approval).
    pub fn decide_approved(&self, session: &SessionPolicy, op: &Operation, approver: &str) -> Decision {
        self.decide_as(
            session,
            op,
            true,
            Some(approver),
            gatehouse_core::time::now_micros(),
        )
    }

    fn decide_as(
        &self,
        session: &SessionPolicy,
        op: &Operation,
        approved: bool,
        approver: Option<&str>,
        now_us: i64,
    ) -> Decision {
        let snap = self.snapshot();
        let generation = snap.generation;
        let response = match self.evaluate(&snap, session, op, approved, approver, now_us) {
            Ok(response) => response,
            Err(error) => {
                return Decision {
                    verdict: Verdict::Deny {
                        reason: EVALUATION_FAILED.to_string(),
                        policy_ids: Vec::new(),
                    },
                    generation,
                    needs_approval: None,
                    approval_groups: Vec::new(),
                    errors: vec![error],
                };
            }
        };
        let diagnostics = response.diagnostics();
        let mut ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        ids.sort();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();

        if !errors.is_empty() {
            // Cedar skips a policy that errors; a skipped forbid must not turn into an allow.
            let mut erroring: Vec<String> = diagnostics
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id().to_string(),
                })
                .collect();
            erroring.sort();
            erroring.dedup();
            return Decision {
                verdict: Verdict::Deny {
                    reason: EVALUATION_FAILED.to_string(),
                    policy_ids: erroring,
                },
                generation,
                needs_approval: None,
                approval_groups: Vec::new(),
                errors,
            };
        }

        match response.decision() {
            cedar_policy::Decision::Allow => Decision {
                verdict: Verdict::Allow { policy_ids: ids },
                generation,
                needs_approval: None,
                approval_groups: Vec::new(),
                errors,
            },
            cedar_policy::Decision::Deny => {
                let reason = if ids.is_empty() {
                    match op {
                        Operation::Connect => "no policy permits this connection".to_string(),
                        Operation::Query(_) => "no policy permits this statement".to_string(),
                    }
                } else {
                    let quoted: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
                    let noun = if ids.len() == 1 { "policy" } else { "policies" };
                    format!("denied by {noun} {}", quoted.join(", "))
                };
                let (needs_approval, approval_groups) = if approved || ids.is_empty() {
                    (None, Vec::new())
                } else {
                    match approvers_of(&snap.compiled, &ids) {
                        Some(per_policy) => {
                            let union: BTreeSet<String> = per_policy.iter().flatten().cloned().collect();
                            (Some(union.into_iter().collect()), per_policy)
                        }
                        None => (None, Vec::new()),
                    }
                };
                Decision {
                    verdict: Verdict::Deny {
                        reason,
                        policy_ids: ids,
                    },
                    generation,
                    needs_approval,
                    approval_groups,
                    errors,
                }
            }
        }
    }

    fn evaluate(
        &self,
        snap: &Snapshot,
        session: &SessionPolicy,
        op: &Operation,
        approved: bool,
        approver: Option<&str>,
        now_us: i64,
    ) -> Result<Response, String> {
        let schema = &snap.compiled.schema;
        let rebuilt;
        let entities: &Entities = if session.schema_digest == snap.compiled.schema_digest {
            &session.entities.entities
        } else {
            // The schema changed since connect: re-check the session against it.
            rebuilt =
                request::session_entities(&self.names, schema, &session.ctx).map_err(|e| e.to_string())?;
            &rebuilt.entities
        };
        let now = gatehouse_core::time::rfc3339_micros(now_us);
        let (action, context): (&EntityUid, _) = match op {
            Operation::Connect => (
                &self.names.connect,
                session.base.connect(&now, approved, approver)?,
            ),
            Operation::Query(stmt) => (
                &self.names.query,
                session.base.query(&now, approved, approver, stmt)?,
            ),
        };
        let request = request::request(
            &session.entities.principal,
            action,
            &session.entities.resource,
            context,
            Some(schema),
        )?;
        Ok(self
            .authorizer
            .is_authorized(&request, &snap.compiled.policies, entities))
    }

    /// Whether the live policy set can mask columns: some policy names `read_column` (or a
    /// `forbid` applies to every action). When false, sessions do not check results column by
    /// column at all (with no policy on `read_column`, Cedar's default deny would otherwise
    /// mask every column).
    pub fn has_column_rules(&self) -> bool {
        self.snapshot().compiled.column_rules
    }

    /// Decide `read_column` for one table column. A deny masks the column with the strongest
    /// `@mask` strategy among the denying policies (`full` when none is annotated, when no
    /// policy permits reading, or when evaluation fails).
    pub fn decide_column(&self, session: &SessionPolicy, col: &ColumnSource) -> ColumnDecision {
        let snap = self.snapshot();
        let generation = snap.generation;
        let full = |policy_ids: Vec<String>, errors: Vec<String>| ColumnDecision {
            rule: Some(ColumnRule {
                strategy: MaskStrategy::Full,
                policy_ids,
            }),
            generation,
            errors,
        };
        let response = match self.evaluate_column(&snap, session, col) {
            Ok(r) => r,
            Err(e) => return full(Vec::new(), vec![e]),
        };
        let diagnostics = response.diagnostics();
        let mut ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        ids.sort();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            return full(ids, errors);
        }
        match response.decision() {
            cedar_policy::Decision::Allow => ColumnDecision {
                rule: None,
                generation,
                errors,
            },
            cedar_policy::Decision::Deny => {
                let strategy = ids
                    .iter()
                    .map(|id| {
                        snap.compiled
                            .masks
                            .get(&cedar_policy::PolicyId::new(id))
                            .copied()
                            .unwrap_or(MaskStrategy::Full)
                    })
                    .reduce(MaskStrategy::max)
                    .unwrap_or(MaskStrategy::Full);
                ColumnDecision {
                    rule: Some(ColumnRule {
                        strategy,
                        policy_ids: ids,
                    }),
                    generation,
                    errors,
                }
            }
        }
    }

    fn evaluate_column(
        &self,
        snap: &Snapshot,
        session: &SessionPolicy,
        col: &ColumnSource,
    ) -> Result<Response, String> {
        let schema = &snap.compiled.schema;
        let rebuilt;
        let base: &request::SessionEntities = if session.schema_digest == snap.compiled.schema_digest {
            &session.entities
        } else {
            rebuilt =
                request::session_entities(&self.names, schema, &session.ctx).map_err(|e| e.to_string())?;
            &rebuilt
        };
        let (column, entities) = request::column_entities(&self.names, schema, base, col)?;
        let now = gatehouse_core::time::rfc3339_micros(gatehouse_core::time::now_micros());
        let context = session.base.connect(&now, false, None)?;
        let request = request::request(
            &base.principal,
            &self.names.read_column,
            &column,
            context,
            Some(schema),
        )?;
        Ok(self
            .authorizer
            .is_authorized(&request, &snap.compiled.policies, &entities))
    }

    /// Run a decision test file (cedar-policy-cli `run-tests` format) against the live set.
    /// Each case's request, context and entities are checked against the schema. A case
    /// passes when the decision matches, its `reason` equals the determining policy ids (as a
    /// set; stricter than the CLI, which accepts a subset) and the error count matches.
    pub fn run_test_file(&self, path: &Path) -> Result<Vec<CaseOutcome>, PolicyError> {
        let snap = self.snapshot();
        cases::run_file(
            &self.authorizer,
            &snap.compiled.schema,
            &snap.compiled.policies,
            path,
        )
    }
}

/// When every id carries `@approvers`, each one's groups.
fn approvers_of(compiled: &Compiled, ids: &[String]) -> Option<Vec<Vec<String>>> {
    ids.iter()
        .map(|id| compiled.approvers.get(&cedar_policy::PolicyId::new(id)).cloned())
        .collect()
}

/// Prove at load time that the schema accepts the entities and requests this engine builds,
/// so a schema edit cannot make every decision fail closed at run time.
fn self_check(names: &Names, compiled: &Compiled) -> Result<(), PolicyError> {
    use gatehouse_core::{AuthInfo, Principal, PrincipalKind, SqlStatement, TargetRef};
    let schema = &compiled.schema;
    let fail = |message: String| PolicyError::Schema {
        file: SCHEMA_FILE.to_string(),
        line: 1,
        message: format!("schema does not accept what gatehouse sends: {message}"),
    };
    let ctx = |kind: PrincipalKind, target_kind: &str| SessionCtx {
        session_id: "self-check".to_string(),
        principal: Principal {
            kind,
            id: "self-check".to_string(),
            groups: vec!["self-check".to_string()],
            attrs: [("email".to_string(), "a@example.com".to_string())].into(),
            on_behalf_of: Some("self-check-human".to_string()),
            actor_chain: Vec::new(),
        },
        target: TargetRef {
            name: "self-check".to_string(),
            kind: target_kind.to_string(),
            tags: [("env".to_string(), "prod".to_string())].into(),
        },
        source_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        auth: AuthInfo {
            method: "self-check".to_string(),
            token_age_secs: 0,
            mfa: false,
            expires_at: None,
            issuer: None,
        },
        client_app: None,
        grant: None,
    };
    let stmt = SqlStatement {
        text: "select 1".to_string(),
        command: "SelectStmt".to_string(),
        tables_read: vec!["public.t".to_string()],
        functions: vec!["pg_catalog.now".to_string()],
        ..SqlStatement::default()
    };
    let now = gatehouse_core::time::rfc3339_micros(0);
    for kind in [PrincipalKind::User, PrincipalKind::Agent] {
        for target_kind in ["postgres", "ssh"] {
            let ctx = ctx(kind, target_kind);
            let entities = request::session_entities(names, schema, &ctx).map_err(|e| fail(e.to_string()))?;
            let base = BaseContext::new(&ctx);
            let connect = base.connect(&now, false, None).map_err(&fail)?;
            request::request(
                &entities.principal,
                &names.connect,
                &entities.resource,
                connect,
                Some(schema),
            )
            .map_err(&fail)?;
            if target_kind == "postgres" {
                let col = ColumnSource {
                    schema: "public".to_string(),
                    table: "t".to_string(),
                    column: "c".to_string(),
                    relation: gatehouse_core::RelationKind::Table,
                };
                let (column, _) = request::column_entities(names, schema, &entities, &col).map_err(&fail)?;
                let read = base.connect(&now, false, None).map_err(&fail)?;
                request::request(
                    &entities.principal,
                    &names.read_column,
                    &column,
                    read,
                    Some(schema),
                )
                .map_err(&fail)?;
                let query = base.query(&now, false, None, &stmt).map_err(&fail)?;
                request::request(
                    &entities.principal,
                    &names.query,
                    &entities.resource,
                    query,
                    Some(schema),
                )
                .map_err(&fail)?;
            }
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PolicyEngine>();
        check::<SessionPolicy>();
        check::<Decision>();
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}
