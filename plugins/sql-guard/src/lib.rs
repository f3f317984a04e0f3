//! `sql-guard`: rules over Gatehouse's classification of each SQL statement (`on-statement`).
//!
//! Config (every key optional; the defaults are shown):
//!
//! ```json
//! {
//!   "deny": ["update-without-where", "delete-without-where", "truncate", "drop", "alter-system"],
//!   "hold_ddl_in": {"tag": "env", "values": ["prod"], "approvers": ["dba"]}
//! }
//! ```
//!
//! - `deny`: the rules that deny a statement:
//!   - `update-without-where` / `delete-without-where`: an UPDATE / DELETE with no WHERE clause;
//!   - `truncate`: `TruncateStmt`;
//!   - `drop`: any `DROP …` (`DropStmt`, `DropdbStmt`, `DropRoleStmt`, `DropTableSpaceStmt`,
//!     `DropOwnedStmt`, `DropSubscriptionStmt`, …);
//!   - `alter-system`: `AlterSystemStmt`;
//! - `hold_ddl_in`: DDL (statement kind `ddl`) on a target whose tag `tag` has one of `values`
//!   waits for approval by one of the `approvers` groups; `null` turns it off.
//!
//! Deny rules are checked before the hold.

use gatehouse_plugin_sdk::{
    Config, OnStatement, Plugin, SessionInfo, Statement, Verdict, deny, export_plugin, hold,
};

/// The deny rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    UpdateWithoutWhere,
    DeleteWithoutWhere,
    Truncate,
    Drop,
    AlterSystem,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::UpdateWithoutWhere,
        Rule::DeleteWithoutWhere,
        Rule::Truncate,
        Rule::Drop,
        Rule::AlterSystem,
    ];

    /// The reason given when the rule denies `stmt`, if it does.
    pub fn check(self, stmt: &Statement) -> Option<&'static str> {
        let kind = stmt.kind.as_str();
        let command = stmt.command.as_str();
        let hit = match self {
            Rule::UpdateWithoutWhere => (kind == "update" || command == "UpdateStmt") && !stmt.has_where,
            Rule::DeleteWithoutWhere => (kind == "delete" || command == "DeleteStmt") && !stmt.has_where,
            Rule::Truncate => command == "TruncateStmt",
            Rule::Drop => command.starts_with("Drop") && command.ends_with("Stmt"),
            Rule::AlterSystem => command == "AlterSystemStmt",
        };
        hit.then_some(match self {
            Rule::UpdateWithoutWhere => "UPDATE without a WHERE clause is not allowed",
            Rule::DeleteWithoutWhere => "DELETE without a WHERE clause is not allowed",
            Rule::Truncate => "TRUNCATE is not allowed",
            Rule::Drop => "DROP is not allowed",
            Rule::AlterSystem => "ALTER SYSTEM is not allowed",
        })
    }
}

/// When DDL needs approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldDdl {
    #[serde(default = "default_tag")]
    pub tag: String,
    #[serde(default = "default_values")]
    pub values: Vec<String>,
    #[serde(default = "default_approvers")]
    pub approvers: Vec<String>,
}

fn default_tag() -> String {
    "env".to_owned()
}

fn default_values() -> Vec<String> {
    vec!["prod".to_owned()]
}

fn default_approvers() -> Vec<String> {
    vec!["dba".to_owned()]
}

fn default_hold() -> Option<HoldDdl> {
    Some(HoldDdl {
        tag: default_tag(),
        values: default_values(),
        approvers: default_approvers(),
    })
}

fn default_deny() -> Vec<Rule> {
    Rule::ALL.to_vec()
}

/// The plugin's JSON config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlGuard {
    #[serde(default = "default_deny")]
    pub deny: Vec<Rule>,
    #[serde(default = "default_hold")]
    pub hold_ddl_in: Option<HoldDdl>,
}

impl SqlGuard {
    pub fn verdict(&self, session: &SessionInfo, stmt: &Statement) -> Verdict {
        if let Some(reason) = self.deny.iter().find_map(|rule| rule.check(stmt)) {
            return deny(format!("sql-guard: {reason}"));
        }
        if let Some(h) = &self.hold_ddl_in
            && stmt.kind == "ddl"
            && session
                .tag(&h.tag)
                .is_some_and(|v| h.values.iter().any(|x| x == v))
        {
            let value = session.tag(&h.tag).unwrap_or_default();
            return hold(
                h.approvers.iter().cloned(),
                format!(
                    "sql-guard: DDL ({}) on a target with {}={value} needs approval",
                    stmt.command, h.tag
                ),
            );
        }
        Verdict::Allow
    }
}

impl Plugin for SqlGuard {
    const NAME: &'static str = "sql-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &Config) -> Result<Self, String> {
        let guard: SqlGuard = config.parse()?;
        if let Some(h) = &guard.hold_ddl_in
            && h.approvers.is_empty()
        {
            return Err("sql-guard: hold_ddl_in.approvers must name at least one group".to_owned());
        }
        Ok(guard)
    }
}

impl OnStatement for SqlGuard {
    fn on_statement(&self, session: &SessionInfo, stmt: &Statement) -> Result<Verdict, String> {
        Ok(self.verdict(session, stmt))
    }
}

export_plugin!(SqlGuard);

#[cfg(test)]
mod tests {
    use gatehouse_plugin_sdk::testing::{session, session_with_tags, statement};
    use gatehouse_plugin_sdk::{HoldRequest, Hook};

    use super::*;

    fn guard(json: &str) -> SqlGuard {
        SqlGuard::new(&Config::from_json(json)).unwrap()
    }

    fn stmt(text: &str, kind: &str, command: &str, has_where: bool) -> Statement {
        Statement {
            has_where,
            ..statement(text, kind, command)
        }
    }

    fn is_deny(v: &Verdict) -> bool {
        matches!(v, Verdict::Deny(_))
    }

    #[test]
    fn defaults_deny_the_dangerous_statements() {
        let g = guard("{}");
        let s = session();
        assert!(is_deny(&g.verdict(
            &s,
            &stmt("UPDATE t SET a = 1", "update", "UpdateStmt", false)
        )));
        assert!(is_deny(
            &g.verdict(&s, &stmt("DELETE FROM t", "delete", "DeleteStmt", false))
        ));
        assert!(is_deny(
            &g.verdict(&s, &stmt("TRUNCATE t", "ddl", "TruncateStmt", false))
        ));
        assert!(is_deny(
            &g.verdict(&s, &stmt("DROP TABLE t", "ddl", "DropStmt", false))
        ));
        assert!(is_deny(
            &g.verdict(&s, &stmt("DROP DATABASE d", "ddl", "DropdbStmt", false))
        ));
        assert!(is_deny(&g.verdict(
            &s,
            &stmt("ALTER SYSTEM SET x = 1", "utility", "AlterSystemStmt", false)
        )));
        assert_eq!(
            g.verdict(
                &s,
                &stmt("UPDATE t SET a = 1 WHERE id = 2", "update", "UpdateStmt", true)
            ),
            Verdict::Allow
        );
        assert_eq!(
            g.verdict(
                &s,
                &stmt("DELETE FROM t WHERE id = 2", "delete", "DeleteStmt", true)
            ),
            Verdict::Allow
        );
        assert_eq!(
            g.verdict(&s, &stmt("SELECT 1", "select", "SelectStmt", false)),
            Verdict::Allow
        );
        assert_eq!(
            g.verdict(&s, &stmt("CREATE TABLE t (a int)", "ddl", "CreateStmt", false)),
            Verdict::Allow
        );
        let Verdict::Deny(reason) = g.verdict(&s, &stmt("TRUNCATE t", "ddl", "TruncateStmt", false)) else {
            panic!("not denied")
        };
        assert!(reason.contains("TRUNCATE"), "{reason}");
    }

    #[test]
    fn holds_ddl_in_prod() {
        let g = guard("{}");
        let prod = session_with_tags(&[("env", "prod")]);
        let v = g.verdict(&prod, &stmt("CREATE INDEX i ON t (a)", "ddl", "IndexStmt", false));
        let Verdict::Hold(HoldRequest { approvers, reason }) = v else {
            panic!("not held: {v:?}")
        };
        assert_eq!(approvers, ["dba"]);
        assert!(reason.contains("env=prod"), "{reason}");
        // Deny rules come first; non-DDL is not held.
        assert!(is_deny(
            &g.verdict(&prod, &stmt("DROP TABLE t", "ddl", "DropStmt", false))
        ));
        assert_eq!(
            g.verdict(&prod, &stmt("SELECT 1", "select", "SelectStmt", false)),
            Verdict::Allow
        );
    }

    #[test]
    fn configurable() {
        let g = guard(
            r#"{"deny": ["truncate"], "hold_ddl_in": {"tag": "tier", "values": ["critical"], "approvers": ["ops", "dba"]}}"#,
        );
        let s = session_with_tags(&[("tier", "critical")]);
        assert!(matches!(
            g.verdict(&s, &stmt("DROP TABLE t", "ddl", "DropStmt", false)),
            Verdict::Hold(_)
        ));
        assert_eq!(
            g.verdict(&s, &stmt("DELETE FROM t", "delete", "DeleteStmt", false)),
            Verdict::Allow
        );
        assert!(is_deny(
            &g.verdict(&s, &stmt("TRUNCATE t", "ddl", "TruncateStmt", false))
        ));
        let off = guard(r#"{"deny": [], "hold_ddl_in": null}"#);
        let prod = session_with_tags(&[("env", "prod")]);
        assert_eq!(
            off.verdict(&prod, &stmt("DROP TABLE t", "ddl", "DropStmt", false)),
            Verdict::Allow
        );
        assert!(SqlGuard::new(&Config::from_json(r#"{"deny": ["nope"]}"#)).is_err());
        assert!(SqlGuard::new(&Config::from_json(r#"{"hold_ddl_in": {"approvers": []}}"#)).is_err());
        assert!(SqlGuard::new(&Config::from_json(r#"{"extra": 1}"#)).is_err());
    }

    #[test]
    fn describes_on_statement_only() {
        let info = gatehouse_plugin_sdk::describe!(SqlGuard);
        assert_eq!(info.name, "sql-guard");
        assert_eq!(info.hooks, [Hook::OnStatement]);
    }
}
