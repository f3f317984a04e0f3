//! Column masking from Cedar (`read_column` + `@mask`, `policies/masking.cedar`) on the
//! PostgreSQL path, end to end with real clients: the agent sees SSNs fully masked, card
//! numbers partially, customer e-mails as tokens; the human sees everything; computed values
//! and views over masked columns are masked too; what was masked is recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use gatehouse_conformance::{Harness, db_message, sqlstate};
use tokio_postgres::SimpleQueryMessage;

async fn simple_row(c: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    let msgs = c.simple_query(sql).await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row for {sql}"))
}

fn transcripts(h: &Harness) -> String {
    let sessions = h.audit_sessions().unwrap();
    sessions
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .map(|id| h.audit_show(id).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn column_rules_mask_per_principal_in_every_protocol_flavour() {
    let h = Harness::start().unwrap();
    let agent = h.connect("ai-agent", "app").await.unwrap();
    let human = h.connect("alice", "app").await.unwrap();

    // The human sees the data as stored.
    let clear = simple_row(
        &human,
        "SELECT name, email, card_number, ssn FROM customers WHERE id = 1",
    )
    .await;
    let (email1, card1, ssn1) = (
        clear[1].clone().unwrap(),
        clear[2].clone().unwrap(),
        clear[3].clone().unwrap(),
    );
    assert_eq!(email1, "customer1@example.com");

    // Simple protocol: each strategy, other columns untouched.
    let row = simple_row(
        &agent,
        "SELECT name, email, card_number, ssn FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(row[0].as_deref(), Some("Customer 1"));
    let token = row[1].clone().unwrap();
    assert!(token.starts_with("tok_") && token.len() == 20, "{token}");
    let card = row[2].clone().unwrap();
    assert_eq!(card.len(), card1.len());
    assert!(card.starts_with("**** **** **** "), "{card}");
    assert_eq!(card[card.len() - 4..], card1[card1.len() - 4..]);
    assert_eq!(row[3].as_deref(), Some("****"));
    assert_ne!(row[3].as_deref(), Some(ssn1.as_str()));

    // Extended protocol, binary results (tokio-postgres asks for binary): same masks.
    let r = agent
        .query_one(
            "SELECT id, email, ssn, phone FROM customers WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1);
    assert_eq!(r.get::<_, String>(1), token, "hash tokens are deterministic");
    assert_eq!(r.get::<_, String>(2), "****");
    assert!(r.get::<_, String>(3).starts_with("tok_"));

    // Tokens are stable across sessions and distinct per value: client-side joins still match.
    let other = h.connect("ai-agent", "app").await.unwrap();
    let rows = other
        .query(
            "SELECT id, email FROM customers WHERE id IN (1, 2) ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), token);
    assert_ne!(rows[1].get::<_, String>(1), token);
    // Grouping by a masked column on the server groups by the real values.
    let n = other
        .query("SELECT email, count(*) FROM customers GROUP BY email", &[])
        .await
        .unwrap();
    assert_eq!(n.len(), 200);
    assert!(n.iter().all(|r| r.get::<_, String>(0).starts_with("tok_")));

    // Values computed from a masked column are masked; aggregates that read none are not.
    let row = simple_row(
        &agent,
        "SELECT upper(ssn) AS s, ssn || '' AS t FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(row, vec![Some("****".to_string()), Some("****".to_string())]);
    let row = simple_row(
        &agent,
        "SELECT replace(ssn, '-', '')::bigint AS n FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(
        row,
        vec![None],
        "a number derived from a masked column becomes NULL"
    );
    let row = simple_row(
        &agent,
        "SELECT x FROM (SELECT ssn AS x FROM customers WHERE id = 1) s",
    )
    .await;
    assert_eq!(row, vec![Some("****".to_string())]);
    let row = simple_row(
        &agent,
        "SELECT row_to_json(c)::text FROM customers c WHERE id = 1",
    )
    .await;
    assert!(!row[0].as_deref().unwrap_or("").contains(&ssn1), "{row:?}");
    let row = simple_row(&agent, "SELECT count(*), max(id) FROM customers").await;
    assert_eq!(row, vec![Some("200".to_string()), Some("200".to_string())]);
    let row = simple_row(&agent, "SELECT upper(name) FROM customers WHERE id = 1").await;
    assert_eq!(row, vec![Some("CUSTOMER 1".to_string())]);

    // Views: one whose definition reads a masked column masks everything read through it
    // (text by the strongest rule, other types as NULL); one that reads none is clear.
    human
        .batch_execute(
            "CREATE VIEW customer_contacts AS SELECT id, ssn AS tax_id, lower(email) AS mail FROM customers; \
             CREATE VIEW customer_names AS SELECT id, upper(name) AS name FROM customers; \
             CREATE VIEW contacts_again AS SELECT * FROM customer_contacts",
        )
        .await
        .unwrap();
    let row = simple_row(
        &agent,
        "SELECT id, tax_id, mail FROM customer_contacts WHERE id = 1",
    )
    .await;
    assert_eq!(
        row,
        vec![None, Some("****".to_string()), Some("****".to_string())]
    );
    let row = simple_row(&agent, "SELECT tax_id FROM contacts_again WHERE id = 1").await;
    assert_eq!(
        row,
        vec![Some("****".to_string())],
        "views over views are followed"
    );
    let row = simple_row(&agent, "SELECT id, name FROM customer_names WHERE id = 1").await;
    assert_eq!(row, vec![Some("1".to_string()), Some("CUSTOMER 1".to_string())]);
    let row = simple_row(&human, "SELECT tax_id FROM customer_contacts WHERE id = 1").await;
    assert_eq!(row, vec![Some(ssn1.clone())]);

    // psql, over TLS, sees the same.
    let out = h
        .psql(
            "ai-agent",
            "app",
            &["-At", "-c", "SELECT ssn, card_number FROM customers WHERE id = 1"],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("****|**** **** **** "), "{text}");

    // A renamed column is masked under its new name at once (the catalog cache is dropped
    // when DDL completes through the gateway).
    human
        .batch_execute("ALTER TABLE orders RENAME COLUMN status TO ssn")
        .await
        .unwrap();
    let row = simple_row(&agent, "SELECT ssn FROM orders WHERE id = 1").await;
    assert_eq!(row, vec![Some("****".to_string())]);
    human
        .batch_execute("ALTER TABLE orders RENAME COLUMN ssn TO status")
        .await
        .unwrap();
    let row = simple_row(&agent, "SELECT status FROM orders WHERE id = 1").await;
    assert_ne!(row, vec![Some("****".to_string())]);

    // COPY TO cannot be masked: refused only where a column it reads is masked (the human has
    // none, so theirs runs).
    let out = h
        .psql(
            "alice",
            "app",
            &[
                "-At",
                "-c",
                "COPY (SELECT id, ssn FROM customers WHERE id = 1) TO STDOUT",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ssn1));

    // The masked values never reach the record; what was masked does.
    drop((agent, human, other));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = transcripts(&h);
    assert!(
        t.contains("masked column/full x1 in `public.customers.ssn` (by agents-mask-ssn)"),
        "{t}"
    );
    assert!(
        t.contains("masked column/hash x200 in `public.customers.email`"),
        "{t}"
    );
    assert!(
        t.contains("masked derived/full x1 in `s` (by masked tables read)"),
        "{t}"
    );
    assert!(!t.contains(&ssn1), "a value reached the record");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_of_masked_columns_is_refused_and_the_session_goes_on() {
    // The agent may COPY here (an extra permit), but COPY output cannot pass the masking stage.
    let dir = tempfile::tempdir().unwrap();
    let policies = gatehouse_conformance::repo_policies_with(
        &dir.path().join("policies"),
        "agent-copy.cedar",
        r#"
@id("agents-copy-out")
permit (
  principal is Gatehouse::Agent,
  action == Gatehouse::Action::"query",
  resource
)
when { context.kind == "copy" && context.tables_written.isEmpty() };

@id("alice-mask-ssn")
@mask("full")
forbid (
  principal == Gatehouse::User::"alice",
  action == Gatehouse::Action::"read_column",
  resource
)
when { resource.name == "ssn" };
"#,
    )
    .unwrap();
    let h = Harness::start_with(gatehouse_conformance::Options {
        policies: policies.clone(),
        ..Default::default()
    })
    .unwrap();
    let agent = h.connect("ai-agent", "app").await.unwrap();
    let e = agent.simple_query("COPY customers TO STDOUT").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let m = db_message(&e);
    assert!(
        m.contains("public.customers.ssn") && m.contains("use SELECT"),
        "{m}"
    );
    // A COPY of a table without masked columns runs; the session is intact.
    let out = h
        .psql(
            "ai-agent",
            "app",
            &[
                "-At",
                "-c",
                "COPY (SELECT id FROM orders WHERE id < 3 ORDER BY id) TO STDOUT",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
    // Cursors and SQL-level prepared statements, for a human whose SSN column is masked here.
    let dba = h.connect("alice", "app").await.unwrap();
    let msgs = dba
        .simple_query(
            "BEGIN; DECLARE c CURSOR FOR SELECT ssn, upper(ssn) AS u, name FROM customers WHERE id = 1; \
             FETCH ALL FROM c; COMMIT",
        )
        .await
        .unwrap();
    let fetched: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(
        fetched,
        vec![vec![
            Some("****".to_string()),
            Some("****".to_string()),
            Some("Customer 1".to_string())
        ]]
    );
    let msgs = dba
        .simple_query("PREPARE p AS SELECT lower(ssn) FROM customers WHERE id = 1; EXECUTE p; DEALLOCATE p")
        .await
        .unwrap();
    let executed: Vec<Option<String>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect();
    assert_eq!(executed, vec![Some("****".to_string())]);

    let n: i64 = agent
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
}
