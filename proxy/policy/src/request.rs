//! Turning a session and an operation into Cedar entities, contexts and requests.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use cedar_policy::{Context, Entities, Entity, EntityUid, Request, RestrictedExpression, Schema};
use gatehouse_core::{ColumnSource, PrincipalKind, SessionCtx, SqlStatement};

use crate::error::PolicyError;
use crate::names::Names;

/// Principal attributes from [`gatehouse_core::Principal::attrs`] that the schema declares as
/// entity attributes; every attribute is also exposed as a tag.
const PRINCIPAL_ATTRS: [&str; 2] = ["email", "name"];

/// The per-session Cedar entities: who, on what.
pub(crate) struct SessionEntities {
    pub(crate) principal: EntityUid,
    pub(crate) resource: EntityUid,
    pub(crate) entities: Entities,
}

/// Build and schema-check the principal (with its groups), the target and the resource.
pub(crate) fn session_entities(
    names: &Names,
    schema: &Schema,
    ctx: &SessionCtx,
) -> Result<SessionEntities, PolicyError> {
    let principal = &ctx.principal;
    let mut out: Vec<Entity> = Vec::new();

    let groups: BTreeSet<&str> = principal.groups.iter().map(String::as_str).collect();
    let mut parents = HashSet::new();
    for group in groups {
        let uid = Names::uid(&names.group, group);
        out.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
        parents.insert(uid);
    }

    let mut attrs: BTreeMap<String, RestrictedExpression> = PRINCIPAL_ATTRS
        .iter()
        .filter_map(|&k| {
            let v = principal.attrs.get(k)?;
            Some((k.to_string(), RestrictedExpression::new_string(v.clone())))
        })
        .collect();
    let tags = string_tags(&principal.attrs);
    let principal_type = match principal.kind {
        PrincipalKind::User => &names.user,
        PrincipalKind::Agent => {
            if let Some(human) = &principal.on_behalf_of {
                let uid = Names::uid(&names.user, human);
                out.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
                attrs.insert(
                    "on_behalf_of".to_string(),
                    RestrictedExpression::new_entity_uid(uid),
                );
            }
            &names.agent
        }
    };
    let principal_uid = Names::uid(principal_type, &principal.id);
    out.push(entity(principal_uid.clone(), attrs, parents, tags)?);

    let target = &ctx.target;
    let target_uid = Names::uid(&names.target, &target.name);
    out.push(entity(
        target_uid.clone(),
        [
            (
                "kind".to_string(),
                RestrictedExpression::new_string(target.kind.clone()),
            ),
            (
                "env".to_string(),
                RestrictedExpression::new_string(target.env().to_string()),
            ),
        ]
        .into(),
        HashSet::new(),
        string_tags(&target.tags),
    )?);
    let resource_type = match target.kind.as_str() {
        "postgres" => &names.database,
        "ssh" => &names.host,
        other => {
            return Err(PolicyError::Session {
                message: format!("target kind `{other}` has no policy resource type yet"),
            });
        }
    };
    let resource_uid = Names::uid(resource_type, &target.name);
    out.push(entity(
        resource_uid.clone(),
        [
            (
                "env".to_string(),
                RestrictedExpression::new_string(target.env().to_string()),
            ),
            (
                "target".to_string(),
                RestrictedExpression::new_string(target.name.clone()),
            ),
        ]
        .into(),
        HashSet::from([target_uid]),
        string_tags(&target.tags),
    )?);

    let entities = Entities::from_entities(out, Some(schema)).map_err(|e| PolicyError::Session {
        message: e.to_string(),
    })?;
    Ok(SessionEntities {
        principal: principal_uid,
        resource: resource_uid,
        entities,
    })
}

/// The session's entities plus a `Column` in its `Table` in the session's `Database`, checked
/// against the schema. Returns the column's uid.
pub(crate) fn column_entities(
    names: &Names,
    schema: &Schema,
    session: &SessionEntities,
    col: &ColumnSource,
) -> Result<(EntityUid, Entities), String> {
    let table_uid = Names::uid(&names.table, &col.qualified_table());
    let column_uid = Names::uid(&names.column, &col.qualified());
    let s = |v: &str| RestrictedExpression::new_string(v.to_string());
    let table = Entity::new(
        table_uid.clone(),
        [
            ("schema".to_string(), s(&col.schema)),
            ("name".to_string(), s(&col.table)),
        ]
        .into(),
        HashSet::from([session.resource.clone()]),
    )
    .map_err(|e| e.to_string())?;
    let column = Entity::new(
        column_uid.clone(),
        [
            ("schema".to_string(), s(&col.schema)),
            ("table".to_string(), s(&col.table)),
            ("name".to_string(), s(&col.column)),
            ("relation".to_string(), s(col.relation.as_str())),
        ]
        .into(),
        HashSet::from([table_uid]),
    )
    .map_err(|e| e.to_string())?;
    let entities = session
        .entities
        .clone()
        .add_entities([table, column], Some(schema))
        .map_err(|e| e.to_string())?;
    Ok((column_uid, entities))
}

fn entity(
    uid: EntityUid,
    attrs: BTreeMap<String, RestrictedExpression>,
    parents: HashSet<EntityUid>,
    tags: Vec<(String, RestrictedExpression)>,
) -> Result<Entity, PolicyError> {
    Entity::new_with_tags(uid, attrs, parents, tags).map_err(|e| PolicyError::Session {
        message: e.to_string(),
    })
}

fn string_tags(map: &BTreeMap<String, String>) -> Vec<(String, RestrictedExpression)> {
    map.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
        .collect()
}

/// The context fields every action carries, fixed per session.
#[derive(Debug, Clone)]
pub(crate) struct BaseContext {
    source_ip: String,
    auth_method: String,
    token_age_secs: i64,
    mfa: bool,
    session_id: String,
    /// The session's access grant: its id and expiry (RFC 3339).
    grant: Option<(String, String)>,
}

impl BaseContext {
    pub(crate) fn new(ctx: &SessionCtx) -> BaseContext {
        BaseContext {
            source_ip: ctx.source_ip.to_string(),
            auth_method: ctx.auth.method.clone(),
            token_age_secs: ctx.auth.token_age_secs,
            mfa: ctx.auth.mfa,
            session_id: ctx.session_id.clone(),
            grant: ctx.grant.as_ref().map(|g| {
                (
                    g.id.clone(),
                    gatehouse_core::time::rfc3339_micros(g.expires_at.saturating_mul(1_000_000)),
                )
            }),
        }
    }

    /// The base pairs; `now` is an RFC 3339 UTC instant.
    fn pairs(
        &self,
        now: &str,
        approved: bool,
        approver: Option<&str>,
        capacity: usize,
    ) -> Result<Vec<(String, RestrictedExpression)>, String> {
        let auth = RestrictedExpression::new_record([
            (
                "method".to_string(),
                RestrictedExpression::new_string(self.auth_method.clone()),
            ),
            (
                "token_age_secs".to_string(),
                RestrictedExpression::new_long(self.token_age_secs),
            ),
            ("mfa".to_string(), RestrictedExpression::new_bool(self.mfa)),
        ])
        .map_err(|e| e.to_string())?;
        let mut pairs = Vec::with_capacity(6 + capacity);
        pairs.extend([
            (
                "source_ip".to_string(),
                RestrictedExpression::new_ip(&self.source_ip),
            ),
            ("now".to_string(), RestrictedExpression::new_datetime(now)),
            ("auth".to_string(), auth),
            (
                "session_id".to_string(),
                RestrictedExpression::new_string(self.session_id.clone()),
            ),
            ("approved".to_string(), RestrictedExpression::new_bool(approved)),
        ]);
        if let Some(a) = approver {
            pairs.push((
                "approver".to_string(),
                RestrictedExpression::new_string(a.to_string()),
            ));
        }
        if let Some((id, expires)) = &self.grant {
            let grant = RestrictedExpression::new_record([
                ("id".to_string(), RestrictedExpression::new_string(id.clone())),
                ("expires".to_string(), RestrictedExpression::new_datetime(expires)),
            ])
            .map_err(|e| e.to_string())?;
            pairs.push(("grant".to_string(), grant));
        }
        Ok(pairs)
    }

    /// Context for `connect` (and every action without extra fields).
    pub(crate) fn connect(
        &self,
        now: &str,
        approved: bool,
        approver: Option<&str>,
    ) -> Result<Context, String> {
        Context::from_pairs(self.pairs(now, approved, approver, 0)?).map_err(|e| e.to_string())
    }

    /// Context for `query`: the base fields plus the statement's classification.
    pub(crate) fn query(
        &self,
        now: &str,
        approved: bool,
        approver: Option<&str>,
        stmt: &SqlStatement,
    ) -> Result<Context, String> {
        let mut pairs = self.pairs(now, approved, approver, 11)?;
        pairs.extend([
            (
                "kind".to_string(),
                RestrictedExpression::new_string(stmt.kind().as_str().to_string()),
            ),
            (
                "command".to_string(),
                RestrictedExpression::new_string(stmt.command.clone()),
            ),
            ("tables_read".to_string(), string_set(&stmt.tables_read)),
            ("tables_written".to_string(), string_set(&stmt.tables_written)),
            (
                "has_where".to_string(),
                RestrictedExpression::new_bool(stmt.has_where),
            ),
            ("functions".to_string(), string_set(&stmt.functions)),
            (
                "function_names".to_string(),
                RestrictedExpression::new_set(
                    function_names(&stmt.functions).map(RestrictedExpression::new_string),
                ),
            ),
            (
                "copy_program".to_string(),
                RestrictedExpression::new_bool(stmt.copy_program),
            ),
            (
                "copy_server_file".to_string(),
                RestrictedExpression::new_bool(stmt.copy_server_file),
            ),
            (
                "sets_search_path".to_string(),
                RestrictedExpression::new_bool(stmt.sets_search_path),
            ),
        ]);
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }
}

fn string_set(values: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().cloned().map(RestrictedExpression::new_string))
}

/// Called functions without schema qualification or quotes, lower-cased:
/// `"pg_catalog"."PG_READ_FILE"` → `pg_read_file`.
pub(crate) fn function_names(functions: &[String]) -> impl Iterator<Item = String> + '_ {
    functions.iter().map(|f| {
        let base = f.rsplit('.').next().unwrap_or(f);
        base.trim_matches('"').to_lowercase()
    })
}

/// A schema-checked request.
pub(crate) fn request(
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    context: Context,
    schema: Option<&Schema>,
) -> Result<Request, String> {
    Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        schema,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn function_names_drop_schema_quotes_and_case() {
        let f = [
            "pg_read_file".to_string(),
            "pg_catalog.pg_read_file".to_string(),
            "\"pg_catalog\".\"PG_LS_DIR\"".to_string(),
            "public.dblink".to_string(),
        ];
        let names: Vec<String> = function_names(&f).collect();
        assert_eq!(names, ["pg_read_file", "pg_read_file", "pg_ls_dir", "dblink"]);
    }
}
