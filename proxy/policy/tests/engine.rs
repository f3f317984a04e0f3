//! The engine's contract: loading rules, hot reload, fail-closed decisions, and decisions for
//! realistic sessions against the shipped policy set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::{
    AuthInfo, Operation, Principal, PrincipalKind, SessionCtx, SqlStatement, StatementKind, TargetRef,
    Verdict,
};
use gatehouse_policy::{PolicyEngine, PolicyError, SCHEMA_FILE};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// A temporary policy directory with the shipped schema and the given policy files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(policies_dir().join(SCHEMA_FILE), dir.path().join(SCHEMA_FILE)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A temporary copy of the shipped policy directory.
fn copy_of_shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn load_err(dir: &Path) -> PolicyError {
    match PolicyEngine::load(dir) {
        Ok(_) => panic!("loaded, expected an error"),
        Err(e) => e,
    }
}

fn session(kind: PrincipalKind, id: &str, groups: &[&str], target: &str, env: &str) -> SessionCtx {
    SessionCtx {
        session_id: "0194f6c2-7d1e-7000-8000-000000000001".to_string(),
        principal: Principal {
            kind,
            id: id.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attrs: [
                ("email".to_string(), format!("{id}@example.com")),
                ("team".to_string(), "payments".to_string()),
            ]
            .into(),
            on_behalf_of: (kind == PrincipalKind::Agent).then(|| "alice".to_string()),
            actor_chain: Vec::new(),
        },
        target: TargetRef {
            name: target.to_string(),
            kind: "postgres".to_string(),
            tags: [
                ("env".to_string(), env.to_string()),
                ("region".to_string(), "eu-west-1".to_string()),
            ]
            .into(),
        },
        source_ip: "10.20.30.40".parse::<IpAddr>().unwrap(),
        auth: AuthInfo {
            method: "scram-sha-256".to_string(),
            token_age_secs: 42,
            mfa: false,
            expires_at: None,
            issuer: None,
        },
        client_app: Some("psql".to_string()),
        grant: None,
    }
}

fn stmt(kind: StatementKind, command: &str) -> SqlStatement {
    SqlStatement {
        text: "-- test".to_string(),
        kind: Some(kind),
        command: command.to_string(),
        ..SqlStatement::default()
    }
}

fn query(s: SqlStatement) -> Operation {
    Operation::Query(Arc::new(s))
}

const ALLOW_ALL: &str = r#"
// Everything is allowed.
@id("allow-all")
permit (principal, action, resource);
"#;

// ----- loading ---------------------------------------------------------------------------

#[test]
fn shipped_policies_load_with_ids() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.generation(), 1);
    let ids = engine.policy_ids();
    assert!(ids.contains(&"agents-no-ddl".to_string()), "{ids:?}");
    assert!(ids.iter().all(|id| !id.starts_with("policy")), "{ids:?}");
    assert_eq!(engine.digest().len(), 64);
}

#[test]
fn missing_id_is_rejected_with_file_and_line() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"fine\")\npermit (principal, action, resource);\n\n// no id\npermit (principal, action, resource);\n",
    )]);
    let err = load_err(dir.path());
    assert!(matches!(err, PolicyError::MissingId { line: 5, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("a.cedar:5: policy has no `@id` annotation"), "{msg}");
}

#[test]
fn duplicate_id_is_rejected_across_files() {
    let dir = dir_with(&[
        (
            "a.cedar",
            "@id(\"same\")\npermit (principal, action, resource);\n",
        ),
        (
            "b.cedar",
            "\n\n@id(\"same\")\nforbid (principal, action, resource);\n",
        ),
    ]);
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(
        matches!(&err, PolicyError::DuplicateId { id, line: 3, first_line: 1, .. } if id == "same"),
        "{err:?}"
    );
    assert!(
        msg.contains("b.cedar:3: policy id `same` is already used at"),
        "{msg}"
    );
    assert!(msg.contains("a.cedar:1"), "{msg}");
}

#[test]
fn strict_validation_rejects_unknown_context_attribute() {
    let dir = dir_with(&[(
        "a.cedar",
        r#"@id("ok")
permit (principal, action, resource);

@id("typo")
forbid (principal, action == Gatehouse::Action::"query", resource)
when {
  context.nonexistent == "x"
};
"#,
    )]);
    let err = load_err(dir.path());
    let PolicyError::Validation { problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("a.cedar:7:"), "{}", problems[0]);
    assert!(problems[0].contains("typo"), "{}", problems[0]);
    assert!(problems[0].contains("nonexistent"), "{}", problems[0]);
}

#[test]
fn strict_validation_rejects_wrong_types_and_unknown_actions() {
    let dir = dir_with(&[(
        "a.cedar",
        r#"@id("bad-type")
permit (principal, action == Gatehouse::Action::"query", resource)
when { context.has_where == "yes" };
"#,
    )]);
    assert!(matches!(load_err(dir.path()), PolicyError::Validation { .. }));

    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"bad-action\")\npermit (principal, action == Gatehouse::Action::\"drop_everything\", resource);\n",
    )]);
    assert!(matches!(load_err(dir.path()), PolicyError::Validation { .. }));
}

#[test]
fn parse_error_names_file_and_line() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"x\")\npermit (principal, action, resource)\nwhen { context. };\n",
    )]);
    let err = load_err(dir.path());
    assert!(matches!(err, PolicyError::Parse { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("a.cedar:3:"), "{err}");
}

#[test]
fn schema_error_names_the_schema() {
    let dir = dir_with(&[("a.cedar", ALLOW_ALL)]);
    std::fs::write(
        dir.path().join(SCHEMA_FILE),
        "namespace Gatehouse {\n  entity User in [Nowhere];\n}\n",
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, PolicyError::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains(SCHEMA_FILE), "{err}");
}

#[test]
fn schema_that_cannot_take_gatehouse_requests_is_rejected() {
    // Drop `function_names` from the query context: every query would fail at run time, so
    // the load fails now.
    let dir = dir_with(&[("a.cedar", ALLOW_ALL)]);
    let schema = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
    let edited = schema.replace("    function_names: Set<String>,\n", "");
    assert_ne!(schema, edited);
    std::fs::write(dir.path().join(SCHEMA_FILE), edited).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.to_string()
            .contains("schema does not accept what gatehouse sends"),
        "{err}"
    );
}

#[test]
fn templates_and_misplaced_approvers_are_rejected() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"t\")\npermit (principal == ?principal, action, resource);\n",
    )]);
    let err = load_err(dir.path());
    assert!(err.to_string().contains("templates are not supported"), "{err}");

    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\n@approvers(\"dba\")\npermit (principal, action, resource);\n",
    )]);
    let err = load_err(dir.path());
    assert!(err.to_string().contains("only meaningful on a `forbid`"), "{err}");
}

#[test]
fn empty_directory_is_rejected() {
    let dir = dir_with(&[]);
    assert!(matches!(load_err(dir.path()), PolicyError::NoPolicies { .. }));
}

// ----- hot reload -------------------------------------------------------------------------

#[test]
fn reload_keeps_last_good_set_and_picks_up_good_changes() {
    let dir = copy_of_shipped();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let bot = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    let select = query(stmt(StatementKind::Select, "SelectStmt"));
    assert!(engine.decide(&bot, &select, false).verdict.is_allow());

    // Unchanged files: nothing to do.
    assert_eq!(engine.reload_now().unwrap(), 1);

    // A broken file: the reload fails and the old set keeps deciding.
    std::fs::write(dir.path().join("zz-broken.cedar"), "permit (principal,").unwrap();
    let err = engine.reload_now().unwrap_err();
    assert!(err.to_string().contains("zz-broken.cedar"), "{err}");
    assert_eq!(engine.generation(), 1);
    let d = engine.decide(&bot, &select, false);
    assert!(d.verdict.is_allow());
    assert_eq!(d.generation, 1);

    // A good change: forbid agents' selects too.
    std::fs::write(
        dir.path().join("zz-broken.cedar"),
        "// Agents may not read today.\n@id(\"agents-no-select\")\nforbid (principal is Gatehouse::Agent, action == Gatehouse::Action::\"query\", resource)\nwhen { context.kind == \"select\" };\n",
    )
    .unwrap();
    assert_eq!(engine.reload_now().unwrap(), 2);
    let d = engine.decide(&bot, &select, false);
    assert_eq!(d.generation, 2);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "denied by policy `agents-no-select`".to_string(),
            policy_ids: vec!["agents-no-select".to_string()],
        }
    );
}

#[test]
fn watcher_swaps_good_sets_ignores_bad_ones_and_stops_with_the_engine() {
    let dir = dir_with(&[("a.cedar", ALLOW_ALL)]);
    let engine = Arc::new(PolicyEngine::load(dir.path()).unwrap());
    let handle = engine.watch(Duration::from_millis(20)).unwrap();

    let wait_for = |generation: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.generation() != generation {
            assert!(Instant::now() < deadline, "generation {generation} never came");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Same content rewritten (mtime changes, hash does not): no new generation.
    std::fs::write(dir.path().join("a.cedar"), ALLOW_ALL).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(engine.generation(), 1);

    // A bad change is ignored. (Files are written to the side and renamed into place: the
    // watcher must never catch one half written, as an empty `b.cedar` is a valid set.)
    let side = dir.path().join("b.cedar.new");
    std::fs::write(&side, "permit (principal, action, resource);").unwrap();
    std::fs::rename(&side, dir.path().join("b.cedar")).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(engine.generation(), 1);

    // Fixing it goes live.
    std::fs::write(&side, "@id(\"second\")\npermit (principal, action, resource);").unwrap();
    std::fs::rename(&side, dir.path().join("b.cedar")).unwrap();
    wait_for(2);
    assert!(engine.policy_ids().contains(&"second".to_string()));

    drop(engine);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "watcher outlived the engine");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().unwrap();
}

// ----- fail closed ------------------------------------------------------------------------

#[test]
fn evaluation_error_fails_closed() {
    // Cedar skips a policy that errors, so plain Cedar would allow here.
    let dir = dir_with(&[
        ("a.cedar", ALLOW_ALL),
        (
            "b.cedar",
            r#"// Overflows for old tokens: a run-time error.
@id("overflowing-forbid")
forbid (principal, action == Gatehouse::Action::"query", resource)
when { context.auth.token_age_secs * 1000000000000 > 0 };
"#,
        ),
    ]);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let mut ctx = session(PrincipalKind::User, "alice", &[], "app", "prod");
    ctx.auth.token_age_secs = 100_000_000;
    let s = engine.session(&ctx).unwrap();
    let d = engine.decide(&s, &query(stmt(StatementKind::Select, "SelectStmt")), false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "access policy could not be evaluated".to_string(),
            policy_ids: vec!["overflowing-forbid".to_string()],
        }
    );
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].contains("overflow"), "{:?}", d.errors);
    assert_eq!(d.needs_approval, None);

    // `connect` does not touch the erroring policy.
    assert!(engine.decide(&s, &Operation::Connect, false).verdict.is_allow());
}

#[test]
fn request_that_does_not_fit_the_schema_fails_closed() {
    // `query` applies to databases only; an SSH session asking for it must not be allowed,
    // even by a permit-everything policy.
    let dir = dir_with(&[("a.cedar", ALLOW_ALL)]);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let mut ctx = session(PrincipalKind::User, "alice", &[], "bastion", "prod");
    ctx.target.kind = "ssh".to_string();
    let s = engine.session(&ctx).unwrap();
    assert!(engine.decide(&s, &Operation::Connect, false).verdict.is_allow());
    let d = engine.decide(&s, &query(stmt(StatementKind::Select, "SelectStmt")), false);
    assert!(!d.verdict.is_allow());
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    let Verdict::Deny { reason, .. } = &d.verdict else {
        unreachable!()
    };
    assert_eq!(reason, "access policy could not be evaluated");
}

#[test]
fn unsupported_target_kind_is_a_session_error() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let mut ctx = session(PrincipalKind::User, "alice", &[], "web", "prod");
    ctx.target.kind = "carrier-pigeon".to_string();
    let err = engine.session(&ctx).unwrap_err();
    assert!(matches!(err, PolicyError::Session { .. }), "{err:?}");
    assert!(err.to_string().contains("`carrier-pigeon`"), "{err}");
}

// ----- decisions with the shipped set ------------------------------------------------------

#[test]
fn connect_decisions() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let alice = engine
        .session(&session(
            PrincipalKind::User,
            "alice",
            &["developers"],
            "app",
            "prod",
        ))
        .unwrap();
    let d = engine.decide(&alice, &Operation::Connect, false);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            policy_ids: vec!["users-connect-databases".to_string()]
        }
    );
    assert_eq!(d.generation, 1);
    assert!(d.errors.is_empty());
    assert_eq!(alice.principal(), r#"Gatehouse::User::"alice""#);
    assert_eq!(alice.resource(), r#"Gatehouse::Database::"app""#);

    let rogue = engine
        .session(&session(
            PrincipalKind::Agent,
            "rogue",
            &["developers"],
            "app",
            "prod",
        ))
        .unwrap();
    let d = engine.decide(&rogue, &Operation::Connect, false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "no policy permits this connection".to_string(),
            policy_ids: vec![],
        }
    );
}

#[test]
fn query_decisions_for_an_agent() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let prod = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    let staging = engine
        .session(&session(
            PrincipalKind::Agent,
            "bot",
            &["agents"],
            "app-staging",
            "staging",
        ))
        .unwrap();

    let select = SqlStatement {
        tables_read: vec!["public.orders".to_string()],
        functions: vec!["count".to_string()],
        ..stmt(StatementKind::Select, "SelectStmt")
    };
    let d = engine.decide(&prod, &query(select.clone()), false);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            policy_ids: vec!["agents-read-only".to_string()]
        }
    );

    // Qualified dangerous function: caught through `function_names`.
    let read_file = SqlStatement {
        functions: vec!["pg_catalog.pg_read_file".to_string()],
        ..select.clone()
    };
    let d = engine.decide(&prod, &query(read_file), false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "denied by policy `server-functions-dba-only`".to_string(),
            policy_ids: vec!["server-functions-dba-only".to_string()],
        }
    );

    // An unparsed statement (`kind: None`) is `unknown` and denied.
    let garbage = SqlStatement {
        text: "selec 1".to_string(),
        parse_error: Some("syntax error".to_string()),
        ..SqlStatement::default()
    };
    let d = engine.decide(&staging, &query(garbage), false);
    assert_eq!(d.verdict.policy_ids(), ["agents-no-unknown"]);

    // Several forbids: all cited.
    let sneaky = SqlStatement {
        functions: vec!["set_config".to_string()],
        sets_search_path: true,
        ..select.clone()
    };
    let d = engine.decide(&staging, &query(sneaky), false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "denied by policies `agents-no-admin-functions`, `agents-no-search-path`".to_string(),
            policy_ids: vec![
                "agents-no-admin-functions".to_string(),
                "agents-no-search-path".to_string()
            ],
        }
    );
    assert_eq!(d.needs_approval, None);

    // No permit at all.
    let insert = stmt(StatementKind::Insert, "InsertStmt");
    let d = engine.decide(&prod, &query(insert.clone()), false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "no policy permits this statement".to_string(),
            policy_ids: vec![],
        }
    );
    assert_eq!(d.needs_approval, None);
    assert!(engine.decide(&staging, &query(insert), false).verdict.is_allow());
}

#[test]
fn approvers_policy_asks_for_approval_and_approval_allows() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let prod = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    let update = SqlStatement {
        tables_written: vec!["public.orders".to_string()],
        has_where: true,
        ..stmt(StatementKind::Update, "UpdateStmt")
    };

    // Today: a deny, with the approver group named for the guard.
    let d = engine.decide(&prod, &query(update.clone()), false);
    assert_eq!(
        d.verdict,
        Verdict::Deny {
            reason: "denied by policy `agents-prod-update-needs-approval`".to_string(),
            policy_ids: vec!["agents-prod-update-needs-approval".to_string()],
        }
    );
    assert_eq!(d.needs_approval, Some(vec!["dba".to_string()]));
    assert_eq!(d.approval_groups, vec![vec!["dba".to_string()]]);

    // Re-evaluated after approval.
    let d = engine.decide(&prod, &query(update.clone()), true);
    assert_eq!(
        d.verdict,
        Verdict::Allow {
            policy_ids: vec!["agents-prod-update-approved".to_string()]
        }
    );

    // A deny that is not only by `@approvers` policies cannot be approved.
    let unqualified = SqlStatement {
        has_where: false,
        ..update
    };
    let d = engine.decide(&prod, &query(unqualified), false);
    assert_eq!(
        d.verdict.policy_ids(),
        [
            "agents-no-unqualified-writes",
            "agents-prod-update-needs-approval"
        ]
    );
    assert_eq!(d.needs_approval, None);
}

#[test]
fn dba_and_users() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let dora = engine
        .session(&session(PrincipalKind::User, "dora", &["dba"], "app", "prod"))
        .unwrap();
    let alice = engine
        .session(&session(
            PrincipalKind::User,
            "alice",
            &["developers"],
            "app",
            "prod",
        ))
        .unwrap();
    let copy_program = SqlStatement {
        copy_program: true,
        tables_read: vec!["public.orders".to_string()],
        ..stmt(StatementKind::Copy, "CopyStmt")
    };
    assert!(
        engine
            .decide(&dora, &query(copy_program.clone()), false)
            .verdict
            .is_allow()
    );
    assert_eq!(
        engine
            .decide(&alice, &query(copy_program), false)
            .verdict
            .policy_ids(),
        ["copy-program-dba-only"]
    );
    let ddl = stmt(StatementKind::Ddl, "CreateStmt");
    assert!(
        engine
            .decide(&dora, &query(ddl.clone()), false)
            .verdict
            .is_allow()
    );
    assert!(!engine.decide(&alice, &query(ddl), false).verdict.is_allow());
}

#[test]
fn sessions_survive_a_schema_change() {
    let dir = copy_of_shipped();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let bot = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    // Add an optional attribute to Group: a schema change the session was not built with.
    let schema = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
    let edited = schema.replace("entity Group;", "entity Group { display?: String };");
    assert_ne!(schema, edited);
    std::fs::write(dir.path().join(SCHEMA_FILE), edited).unwrap();
    assert_eq!(engine.reload_now().unwrap(), 2);
    let d = engine.decide(&bot, &query(stmt(StatementKind::Select, "SelectStmt")), false);
    assert!(d.verdict.is_allow(), "{d:?}");
    assert_eq!(d.generation, 2);
}

/// Rough cost of one `decide` for a query. Informative (run with `--nocapture`, ideally
/// `--release`); the assertion is only a generous ceiling.
#[test]
fn decide_cost() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let bot = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    let op = query(SqlStatement {
        tables_read: vec!["public.orders".to_string(), "public.customers".to_string()],
        functions: vec!["count".to_string(), "pg_catalog.now".to_string()],
        ..stmt(StatementKind::Select, "SelectStmt")
    });
    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        assert!(engine.decide(&bot, &op, false).verdict.is_allow());
    }
    let per = started.elapsed() / n;
    println!("decide(query): {per:?} per call over {n} calls");
    assert!(per < Duration::from_millis(5), "{per:?}");
}

fn column(schema: &str, table: &str, name: &str) -> gatehouse_core::ColumnSource {
    gatehouse_core::ColumnSource {
        schema: schema.to_string(),
        table: table.to_string(),
        column: name.to_string(),
        relation: gatehouse_core::RelationKind::Table,
    }
}

#[test]
fn column_rules_pick_the_strongest_mask_and_fail_closed() {
    use gatehouse_core::MaskStrategy;
    let dir = dir_with(&[(
        "cols.cedar",
        r#"
@id("read-all")
permit (principal, action == Gatehouse::Action::"read_column", resource);

@id("partial-card")
@mask("partial")
forbid (principal is Gatehouse::Agent, action == Gatehouse::Action::"read_column", resource)
when { resource.name == "card" };

@id("hash-card-in-payments")
@mask("hash")
forbid (principal is Gatehouse::Agent, action == Gatehouse::Action::"read_column", resource in Gatehouse::Table::"pay.cards")
when { resource.name == "card" };

@id("unannotated")
forbid (principal is Gatehouse::Agent, action == Gatehouse::Action::"read_column", resource)
when { resource.name == "secret" };
"#,
    )]);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    assert!(engine.has_column_rules());
    let agent = engine
        .session(&session(PrincipalKind::Agent, "bot", &["agents"], "app", "prod"))
        .unwrap();
    let user = engine
        .session(&session(PrincipalKind::User, "ann", &[], "app", "prod"))
        .unwrap();

    assert_eq!(
        engine.decide_column(&agent, &column("public", "t", "name")).rule,
        None
    );
    let r = engine
        .decide_column(&agent, &column("public", "t", "card"))
        .rule
        .unwrap();
    assert_eq!(
        (r.strategy, r.policy_ids),
        (MaskStrategy::Partial, vec!["partial-card".to_string()])
    );
    // Two forbids: the stronger mask wins, both are cited.
    let r = engine
        .decide_column(&agent, &column("pay", "cards", "card"))
        .rule
        .unwrap();
    assert_eq!(r.strategy, MaskStrategy::Hash);
    assert_eq!(r.policy_ids, ["hash-card-in-payments", "partial-card"]);
    // A forbid without @mask masks fully.
    let r = engine
        .decide_column(&agent, &column("public", "t", "secret"))
        .rule
        .unwrap();
    assert_eq!(r.strategy, MaskStrategy::Full);
    assert_eq!(
        engine.decide_column(&user, &column("pay", "cards", "card")).rule,
        None
    );

    // No permit for read_column at all: every column is masked, citing no policy.
    let dir = dir_with(&[(
        "cols.cedar",
        r#"
@id("mask-secret")
forbid (principal, action == Gatehouse::Action::"read_column", resource)
when { resource.name == "secret" };
"#,
    )]);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let s = engine
        .session(&session(PrincipalKind::User, "ann", &[], "app", "prod"))
        .unwrap();
    let r = engine
        .decide_column(&s, &column("public", "t", "name"))
        .rule
        .unwrap();
    assert_eq!((r.strategy, r.policy_ids.len()), (MaskStrategy::Full, 0));
}

#[test]
fn mask_annotation_is_checked_at_load() {
    let bad_value = dir_with(&[(
        "a.cedar",
        r#"@id("x") @mask("blur") forbid (principal, action == Gatehouse::Action::"read_column", resource);"#,
    )]);
    assert!(load_err(bad_value.path()).to_string().contains("blur"));
    let on_permit = dir_with(&[(
        "a.cedar",
        r#"@id("x") @mask("full") permit (principal, action == Gatehouse::Action::"read_column", resource);"#,
    )]);
    assert!(load_err(on_permit.path()).to_string().contains("@mask"));
    let wrong_action = dir_with(&[(
        "a.cedar",
        r#"@id("x") @mask("full") forbid (principal, action == Gatehouse::Action::"query", resource);"#,
    )]);
    assert!(load_err(wrong_action.path()).to_string().contains("@mask"));
    // Without any read_column policy, column rules are off.
    let none = dir_with(&[("a.cedar", r#"@id("x") permit (principal, action, resource);"#)]);
    assert!(!PolicyEngine::load(none.path()).unwrap().has_column_rules());
}
