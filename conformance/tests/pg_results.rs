//! Result rows in the audit log (`[recorder.results]`): recorded as the client received them,
//! after masking, named by column in both protocol flavours, and capped with the truncation
//! marked; real PostgreSQL, the real gateway, `tokio-postgres` clients, `gatehouse audit show`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use gatehouse_conformance::{Harness, Options};
use tokio_postgres::SimpleQueryMessage;

fn transcripts(h: &Harness) -> String {
    transcripts_of(h, None)
}

/// The transcripts of `principal`'s sessions (every session's when `None`).
fn transcripts_of(h: &Harness, principal: Option<&str>) -> String {
    h.audit_sessions()
        .unwrap()
        .iter()
        .filter(|s| principal.is_none_or(|p| s["principal"].as_str() == Some(p)))
        .filter_map(|s| s["session_id"].as_str())
        .map(|id| h.audit_show(id).unwrap())
        .collect()
}

/// The first column of the first row of a simple query.
async fn first(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn results_are_recorded_as_the_client_saw_them_and_capped() {
    let h = Harness::start_with(Options {
        // Values kept as the client saw them (the default redacts classified columns, below).
        extra_config: "\n[recorder.results]\nmax_bytes = 4096\n\n[recorder.literals]\nmode = \"keep\"\n",
        ..Options::default()
    })
    .unwrap();
    let human = h.connect("alice", "app").await.unwrap();
    let agent = h.connect("ai-agent", "app").await.unwrap();
    let ssn = first(&human, "SELECT ssn FROM customers WHERE id = 1").await;

    // Simple protocol, a masking session: the masked value is what is recorded.
    let seen = agent
        .simple_query("SELECT name, ssn FROM customers WHERE id = 1")
        .await
        .unwrap();
    let masked = seen
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert_ne!(masked, ssn);
    // Extended protocol (binary results): columns named from the Describe, text as text,
    // numbers as their bytes.
    let row = agent
        .query_one(
            "SELECT id, name, card_number FROM customers WHERE id = $1",
            &[&2i64],
        )
        .await
        .unwrap();
    let card: String = row.get(2);
    // More than the limit: counted, recorded up to it, marked.
    let n = agent
        .simple_query("SELECT g, repeat('x', 50) FROM generate_series(1, 1000) AS g")
        .await
        .unwrap()
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 1000);
    // Two refusals, for the SIEM export below.
    assert!(agent.batch_execute("DELETE FROM orders").await.is_err());
    assert!(agent.batch_execute("DROP TABLE orders").await.is_err());
    drop((human, agent));

    let t = transcripts_of(&h, Some("agent:ai-agent"));
    assert!(t.contains("| name | ssn |"), "{t}");
    assert!(t.contains(&format!("| Customer 1 | {masked} |")), "{t}");
    assert!(
        !t.contains(&ssn),
        "the agent's record holds what the agent saw:\n{t}"
    );
    assert!(t.contains("| id | name | card_number |"), "{t}");
    assert!(
        t.contains(&format!("| \\x0000000000000002 | Customer 2 | {card} |")),
        "{t}"
    );
    assert!(t.contains("| g | repeat |"), "{t}");
    assert!(t.contains("| 1 | xxxxxxxxxx"), "{t}");
    assert!(t.contains("1000 rows"), "{t}");
    assert!(!t.contains("| 1000 | "), "rows past the limit are not recorded");
    assert!(t.contains("further rows not recorded"), "{t}");
    let alice = transcripts_of(&h, Some("user:alice"));
    assert!(
        alice.contains(&format!("| {ssn} |")),
        "alice saw it in the clear: {alice}"
    );

    // Every event of the agent says whom it acted for (the demo agent acts for alice).
    let log = h.setup.log_dir.display().to_string();
    let out = h
        .gatehouse(&[
            "audit",
            "search",
            "--log",
            &log,
            "--principal",
            "agent:ai-agent",
            "--json",
        ])
        .unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() > 5, "{events:?}");
    for e in &events {
        assert_eq!(e["on_behalf_of"], "alice", "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["body"]["kind"] == "op_result" && e["body"]["result"]["rows"].is_array()),
        "results are in the JSON too"
    );

    // The same log for a SIEM: OCSF 1.3.0 lines (`gatehouse audit events --format ocsf`).
    let out = h
        .gatehouse(&["audit", "events", "--log", &log, "--format", "ocsf"])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ocsf: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut last_seq = 0u64;
    for e in &ocsf {
        let class = e["class_uid"].as_u64().unwrap();
        let activity = e["activity_id"].as_u64().unwrap();
        assert_eq!(e["type_uid"].as_u64().unwrap(), class * 100 + activity, "{e}");
        assert_eq!(e["category_uid"].as_u64().unwrap(), class / 1000, "{e}");
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert!(
            e["time"].as_i64().unwrap() > 1_600_000_000_000,
            "milliseconds: {e}"
        );
        let seq: u64 = e["metadata"]["uid"].as_str().unwrap().parse().unwrap();
        assert!(seq > last_seq, "in log order");
        last_seq = seq;
    }
    let find = |class: u64, activity: u64, pred: &dyn Fn(&serde_json::Value) -> bool| {
        ocsf.iter()
            .find(|e| e["class_uid"] == class && e["activity_id"] == activity && pred(e))
            .unwrap_or_else(|| panic!("no OCSF {class}/{activity} event as expected in {ocsf:#?}"))
            .clone()
    };
    let logon = find(3002, 1, &|e| e["user"]["uid"] == "agent:ai-agent");
    assert_eq!(logon["status_id"], 1);
    assert_eq!(logon["service"]["name"], "app");
    assert_eq!(logon["unmapped"]["gatehouse"]["on_behalf_of"], "alice");
    let query = find(6005, 4, &|e| {
        e["query_info"]["query_string"]
            .as_str()
            .is_some_and(|q| q.contains("SELECT name, ssn FROM customers"))
    });
    assert_eq!(query["disposition_id"], 1);
    assert_eq!(query["database"]["name"], "app");
    assert_eq!(query["actor"]["user"]["name"], "ai-agent");
    let delete = find(6005, 7, &|e| {
        e["query_info"]["query_string"] == "DELETE FROM orders"
    });
    assert_eq!(delete["disposition_id"], 2);
    assert_eq!(delete["status_id"], 2);
    let drop = find(6005, 99, &|e| {
        e["query_info"]["query_string"] == "DROP TABLE orders"
    });
    assert_eq!(drop["policy"]["uid"], "agents-no-ddl");
    find(3002, 2, &|e| e["user"]["uid"] == "agent:ai-agent");
    // The stored form, every kind, hash-chained.
    let out = h.gatehouse(&["audit", "events", "--log", &log]).unwrap();
    let stored: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(stored.len() > ocsf.len());
    assert!(
        stored
            .iter()
            .all(|e| e["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
}

/// By default the values of classified columns are not kept, whoever read them, even under
/// another name: the record says what was read, not the value.
#[tokio::test(flavor = "multi_thread")]
async fn classified_columns_are_redacted_in_recorded_results_by_default() {
    let h = Harness::start().unwrap();
    let human = h.connect("alice", "app").await.unwrap();
    let ssn = first(&human, "SELECT ssn FROM customers WHERE id = 1").await;
    let aliased = first(&human, "SELECT ssn AS x FROM customers WHERE id = 1").await;
    assert_eq!(ssn, aliased);
    assert_eq!(
        first(&human, "SELECT name FROM customers WHERE id = 1").await,
        "Customer 1"
    );
    // Values computed from a classified column have no source column to go by: a statement
    // naming one has them redacted too.
    let derived = first(
        &human,
        "SELECT lower(ssn) || '#' AS derived FROM customers WHERE id = 1",
    )
    .await;
    assert!(derived.contains(&ssn.to_lowercase()), "{derived}");
    assert_eq!(
        first(&human, "SELECT upper(name) AS shout FROM customers WHERE id = 1").await,
        "CUSTOMER 1"
    );
    drop(human);
    let t = transcripts(&h);
    assert!(!t.contains(&ssn), "the clear SSN is nowhere in the record:\n{t}");
    assert!(!t.contains(&derived), "nor anything computed from it:\n{t}");
    assert!(t.contains("| ssn |\n    | ? |"), "{t}");
    assert!(t.contains("| x |\n    | ? |"), "found by its source column: {t}");
    assert!(t.contains("| derived |\n    | ? |"), "{t}");
    assert!(t.contains("| name |\n    | Customer 1 |"), "{t}");
    assert!(
        t.contains("| shout |\n    | CUSTOMER 1 |"),
        "no classified column named: {t}"
    );
}

/// A view over a classified column counts as naming it: the statements that read or write
/// through it keep no constants, and the values read through it (directly or by a cursor)
/// are not kept, whatever the view calls them, in both protocol flavours and for masked
/// sessions too. A view over other columns is kept. EXECUTE of an SQL-level prepared
/// statement keeps no constants either: its query is not in sight.
#[tokio::test(flavor = "multi_thread")]
async fn views_over_classified_columns_are_classified_in_the_record() {
    let h = Harness::start().unwrap();
    let human = h.connect("alice", "app").await.unwrap();
    human
        .batch_execute(
            "CREATE VIEW customer_refs AS SELECT id, ssn AS tax_ref, name FROM customers; \
             CREATE VIEW refs_again AS SELECT * FROM customer_refs; \
             CREATE VIEW customer_shouts AS SELECT id, upper(name) AS shout FROM customers",
        )
        .await
        .unwrap();
    let ssn = first(&human, "SELECT ssn FROM customers WHERE id = 2").await;
    // Constants compared with the renamed column, and the values read through the view.
    let named = first(
        &human,
        &format!("SELECT name FROM customer_refs WHERE tax_ref = '{ssn}'"),
    )
    .await;
    assert_eq!(named, "Customer 2");
    assert_eq!(
        first(&human, "SELECT tax_ref, name FROM refs_again WHERE id = 2").await,
        ssn,
        "views over views are followed"
    );
    // Extended protocol (a prepared statement, its rows described by Describe).
    let rows = human
        .query("SELECT tax_ref AS r FROM customer_refs WHERE id = $1", &[&2i64])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), ssn);
    // Writes through the view, a cursor over it, and an SQL-level prepared statement (whose
    // EXECUTE shows neither the query nor its columns).
    human
        .batch_execute(&format!(
            "UPDATE customer_refs SET name = 'Customer 2' WHERE tax_ref = '{ssn}'"
        ))
        .await
        .unwrap();
    human
        .batch_execute("BEGIN; DECLARE refs CURSOR FOR SELECT tax_ref FROM customer_refs WHERE id = 2")
        .await
        .unwrap();
    // (Masking shows a cursor's rows through a view masked, even to a human: whatever the
    // client saw, the record keeps `?`.)
    assert!(!first(&human, "FETCH ALL FROM refs").await.is_empty());
    human.batch_execute("COMMIT").await.unwrap();
    human
        .batch_execute("PREPARE by_ssn(text) AS SELECT name FROM customers WHERE ssn = $1")
        .await
        .unwrap();
    assert_eq!(
        first(&human, &format!("EXECUTE by_ssn('{ssn}')")).await,
        "Customer 2"
    );
    // A view over no classified column is recorded as any other statement.
    assert_eq!(
        first(
            &human,
            "SELECT shout FROM customer_shouts WHERE shout = 'CUSTOMER 3'"
        )
        .await,
        "CUSTOMER 3"
    );
    // A masked session: the view's column has a source (the view), not a classified name.
    let agent = h.connect("ai-agent", "app").await.unwrap();
    let masked = first(&agent, "SELECT tax_ref FROM customer_refs WHERE id = 2").await;
    assert_ne!(masked, ssn);
    drop(agent);
    drop(human);
    let t = transcripts(&h);
    assert!(!t.contains(&ssn), "the clear SSN is nowhere in the record:\n{t}");
    assert!(!t.contains(&masked), "nor its masked form:\n{t}");
    assert!(
        t.contains("SELECT name FROM customer_refs WHERE tax_ref = ?"),
        "{t}"
    );
    assert!(
        t.contains("SELECT tax_ref, name FROM refs_again WHERE id = ?"),
        "{t}"
    );
    assert!(t.contains("| name |\n    | ? |"), "{t}");
    assert!(t.contains("| tax_ref | name |\n    | ? | ? |"), "{t}");
    assert!(t.contains("| r |\n    | ? |"), "{t}");
    assert!(
        t.contains("UPDATE customer_refs SET name = ? WHERE tax_ref = ?"),
        "{t}"
    );
    assert!(t.contains("FETCH ALL FROM refs"), "{t}");
    assert!(t.contains("| tax_ref |\n    | ? |"), "the cursor's rows: {t}");
    assert!(t.contains("EXECUTE by_ssn(?)"), "{t}");
    assert!(
        t.contains("SELECT shout FROM customer_shouts WHERE shout = 'CUSTOMER 3'"),
        "{t}"
    );
    assert!(t.contains("| shout |\n    | CUSTOMER 3 |"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_rows_are_recorded_with_a_zero_limit() {
    let h = Harness::start_with(Options {
        extra_config: "\n[recorder.results]\nmax_bytes = 0\n",
        ..Options::default()
    })
    .unwrap();
    let agent = h.connect("ai-agent", "app").await.unwrap();
    assert_eq!(
        first(&agent, "SELECT name FROM customers WHERE id = 3").await,
        "Customer 3"
    );
    drop(agent);
    let t = transcripts(&h);
    assert!(t.contains("SELECT 1"), "{t}");
    assert!(!t.contains("Customer 3"), "{t}");
}
