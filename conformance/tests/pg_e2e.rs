//! PostgreSQL through Gatehouse, end to end: real server, real gateway binary, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gatehouse_conformance::{Harness, db_message, sqlstate};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_and_extended_queries() {
    let h = Harness::start().unwrap();
    let c = h.connect("alice", "app").await.unwrap();
    // Simple protocol, multi-statement string.
    let msgs = c
        .simple_query("SELECT 1 AS one; SELECT count(*) FROM customers")
        .await
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "200"]);
    // Extended protocol with parameters, a named prepared statement reused.
    let stmt = c
        .prepare("SELECT name, email FROM customers WHERE id = $1")
        .await
        .unwrap();
    for id in [1i64, 2, 3] {
        let row = c.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("Customer {id}"));
    }
    // Pipelining: several queries in flight on one connection.
    let (a, b, d) = tokio::join!(
        c.query_one("SELECT $1::int + 1", &[&1i32]),
        c.query(
            "SELECT id FROM orders WHERE customer_id = $1 ORDER BY id",
            &[&5i64]
        ),
        c.query_one("SELECT current_user", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 2);
    assert_eq!(b.unwrap().len(), 5);
    // The upstream credential is Gatehouse's own.
    assert_eq!(d.unwrap().get::<_, String>(0), "gatehouse_app");
    // A transaction with a rollback.
    c.batch_execute("BEGIN; UPDATE orders SET status = 'x' WHERE id = 1; ROLLBACK")
        .await
        .unwrap();
    let s: String = c
        .query_one("SELECT status FROM orders WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(s, "x");
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_ddl_then_select_in_same_session() {
    let h = Harness::start().unwrap();
    let c = h.connect("ai-agent", "app").await.unwrap();
    let e = c.batch_execute("DROP TABLE orders").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let msg = db_message(&e);
    assert!(msg.starts_with("gatehouse: denied by policy `"), "{msg}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000, "table must still exist");
    // Extended protocol denial, then the session goes on.
    let e = c
        .execute("DELETE FROM customers WHERE id = $1", &[&1i64])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
    // Unparseable text is `unknown` and fails closed for agents.
    let e = c.batch_execute("SELEC garbage").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    // Server-file functions are denied.
    let e = c
        .query("SELECT pg_read_file('/etc/passwd')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");

    // The record shows every decision with the policy id.
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sessions = h.audit_sessions().unwrap();
    let s = sessions
        .iter()
        .find(|s| s["principal"].as_str() == Some("agent:ai-agent"))
        .expect("agent session");
    let id = s["session_id"].as_str().unwrap();
    let transcript = h.audit_show(id).unwrap();
    assert!(transcript.contains("DROP TABLE orders"), "{transcript}");
    assert!(transcript.contains("SELECT count(*) FROM orders"), "{transcript}");
    assert!(transcript.to_lowercase().contains("deny"), "{transcript}");
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_statement_inside_pipeline_and_transaction() {
    let h = Harness::start().unwrap();
    let c = h.connect("ai-agent", "app").await.unwrap();
    // Three statements in flight at once; only the denied one fails.
    let (a, b, d) = tokio::join!(
        c.query_one("SELECT count(*) FROM customers", &[]),
        c.execute("UPDATE customers SET name = 'x'", &[]),
        c.query_one("SELECT count(*) FROM orders", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i64>(0), 200);
    assert_eq!(sqlstate(&b.unwrap_err()).as_deref(), Some("42501"));
    assert_eq!(d.unwrap().get::<_, i64>(0), 1000);
    // Inside an explicit transaction a denial aborts it, exactly as a server error would.
    c.batch_execute("BEGIN").await.unwrap();
    c.query("SELECT 1", &[]).await.unwrap();
    let e = c.batch_execute("DELETE FROM orders").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("25P02"),
        "transaction must be aborted: {e}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    // A multi-statement simple query with one denied statement runs none of it.
    let e = c
        .batch_execute("SELECT 1; DROP TABLE orders; SELECT 2")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_tls_multistatement_and_copy_both_ways() {
    let h = Harness::start().unwrap();
    let o = h
        .psql(
            "alice",
            "app",
            &[
                "-A",
                "-t",
                "-c",
                "SELECT 40 + 2; SELECT current_setting('ssl_library', true) IS NOT NULL",
            ],
        )
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().next(), Some("42"));
    // \copy out and back in.
    let csv = h.dir.path().join("orders.csv");
    let csv_s = csv.display().to_string();
    let o = h
        .psql(
            "alice",
            "app",
            &[
                "-c",
                &format!("\\copy (SELECT * FROM orders ORDER BY id) TO '{csv_s}' CSV"),
            ],
        )
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1000);
    let o = h
        .psql(
            "alice",
            "app",
            &[
                "-c",
                "CREATE TABLE orders_copy (LIKE orders)",
                "-c",
                &format!("\\copy orders_copy FROM '{csv_s}' CSV"),
                "-A",
                "-t",
                "-c",
                "SELECT count(*), sum(amount) = (SELECT sum(amount) FROM orders) FROM orders_copy",
            ],
        )
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1000|t"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_and_backend_pid_reach_the_client() {
    let h = Harness::start().unwrap();
    let conn = format!(
        "host=127.0.0.1 port={} user=alice dbname=app sslmode=require options='-c intervalstyle=iso_8601' application_name=gh-test",
        h.addr.port()
    );
    let o = std::process::Command::new(h.setup.cluster.bindir.join("psql"))
        .args(["-X", "-A", "-t", &conn])
        .args([
            "-c",
            "SHOW intervalstyle",
            "-c",
            "SHOW application_name",
            "-c",
            "LISTEN gh_test",
            "-c",
            "SELECT pg_backend_pid()",
            "-c",
            "NOTIFY gh_test",
        ])
        .env("PGPASSWORD", h.key("alice"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"iso_8601"), "{out}");
    assert_eq!(lines.get(1), Some(&"gh-test"), "{out}");
    let pid = lines
        .iter()
        .find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .unwrap()
        .to_string();
    // psql reports the notifying backend's pid: it must be the real upstream pid.
    let notice = format!("{out}{}", stderr(&o));
    assert!(
        notice.contains(&format!("server process with PID {pid}")),
        "{notice}"
    );

    // Startup errors from the server reach the client as the server raised them.
    let conn = format!(
        "host=127.0.0.1 port={} user=alice dbname=app sslmode=require options='-c no_such_setting=1'",
        h.addr.port()
    );
    let o = std::process::Command::new(h.setup.cluster.bindir.join("psql"))
        .args(["-X", &conn, "-c", "SELECT 1"])
        .env("PGPASSWORD", h.key("alice"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unrecognized configuration parameter \"no_such_setting\""),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connection_is_indistinguishable_from_fresh() {
    let h = Harness::start().unwrap();
    let c = h.connect("alice", "app").await.unwrap();
    let pid1: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute(
        "SET statement_timeout = '5s'; PREPARE p AS SELECT 1; SET application_name = 'changed'; LISTEN chan",
    )
    .await
    .unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = h.connect("alice", "app").await.unwrap();
    let pid2: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(pid1, pid2, "the idle upstream connection should have been reused");
    let st: String = c.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
    assert_eq!(st, "0");
    let app: String = c.query_one("SHOW application_name", &[]).await.unwrap().get(0);
    assert_ne!(app, "changed");
    let e = c.batch_execute("EXECUTE p").await.unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("26000"),
        "prepared statement must be gone"
    );
    let listening: i64 = c
        .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0);

    // A backend that created its temporary schema cannot look fresh again (DISCARD ALL keeps
    // the schema): it is closed, not reused.
    c.batch_execute("CREATE TEMP TABLE t(x int)").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = h.connect("alice", "app").await.unwrap();
    let pid3: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_ne!(
        pid3, pid2,
        "a connection with a temporary schema must not be reused"
    );
    let e = c.batch_execute("SELECT * FROM t").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "temp table must be gone");
    let temp: bool = c
        .query_one("SELECT pg_my_temp_schema() <> 0", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!temp);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_request_reaches_the_right_backend() {
    let h = Harness::start().unwrap();
    let c = h.connect("alice", "app").await.unwrap();
    let token = c.cancel_token();
    let q = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_through_gatehouse() {
    let h = Harness::start().unwrap();
    let pgbench = h.setup.cluster.bindir.join("pgbench");
    let conn = |user: &str| {
        let mut cmd = std::process::Command::new(&pgbench);
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", h.addr.port().to_string())
            .env("PGUSER", user)
            .env("PGPASSWORD", h.key(user))
            .env("PGDATABASE", "app")
            .env("PGSSLMODE", "require");
        cmd
    };
    let o = conn("alice").args(["-i", "-s", "1", "-q"]).output().unwrap();
    assert!(o.status.success(), "pgbench -i: {}", stderr(&o));
    for mode in ["simple", "extended", "prepared"] {
        let o = conn("alice")
            .args(["-S", "-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n"])
            .output()
            .unwrap();
        assert!(o.status.success(), "pgbench -M {mode}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("number of failed transactions: 0"), "{out}");
        let processed = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 0, "{out}");
    }
    // The agent may read the pgbench tables but not write them.
    let o = conn("ai-agent")
        .args(["-S", "-M", "prepared", "-c", "2", "-T", "1", "-n"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Its UPDATE on prod is held for a DBA's approval; denied, pgbench fails.
    let held = conn("ai-agent")
        .args(["-N", "-c", "1", "-t", "1", "-n"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let out = h.approvals("dana", &["list", "--json"]).unwrap();
        let pending: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(r) = pending.first() {
            assert!(
                r["operation"]
                    .as_str()
                    .unwrap()
                    .starts_with("UPDATE pgbench_accounts"),
                "{r}"
            );
            break r["id"].as_str().unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pgbench's UPDATE was not held"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = h.approvals("dana", &["deny", &id]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let o = held.wait_with_output().unwrap();
    assert!(
        !o.status.success(),
        "agent writes on prod must not run unapproved"
    );
    assert!(
        stderr(&o).contains(&format!("approval request {id} was denied")),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_targets_are_refused_and_recorded() {
    let mut h = Harness::start().unwrap();
    let port = h.addr.port();
    let psql = h.setup.cluster.bindir.join("psql");
    let try_conn = |user: &str, db: &str, pw: &str| {
        std::process::Command::new(&psql)
            .args([
                "-X",
                &format!("host=127.0.0.1 port={port} user={user} dbname={db} sslmode=require"),
                "-c",
                "SELECT 1",
            ])
            .env("PGPASSWORD", pw)
            .output()
            .unwrap()
    };
    let o = try_conn("alice", "app", "wrong-key");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("password authentication failed for user \"alice\""),
        "{}",
        stderr(&o)
    );
    let o = try_conn("mallory", "app", "whatever");
    assert!(
        stderr(&o).contains("password authentication failed for user \"mallory\""),
        "{}",
        stderr(&o)
    );
    let o = try_conn("alice", "nope", h.key("alice"));
    assert!(
        stderr(&o).contains("target \"nope\" does not exist"),
        "{}",
        stderr(&o)
    );

    // Truncated startup packet, oversized startup packet, garbage after the TLS request.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3, 0]).unwrap();
    drop(s);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(&100_000u32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(
        resp.first(),
        Some(&b'E'),
        "oversized startup must get an ErrorResponse"
    );
    assert!(String::from_utf8_lossy(&resp).contains("08P01"));
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"S");
    s.write_all(b"this is not a TLS client hello at all\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut resp);

    // The gateway keeps serving.
    assert!(h.gateway_alive());
    let c = h.connect("alice", "app").await.unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Failures are in the record.
    let log = h.setup.log_dir.display().to_string();
    let out = h.gatehouse(&["audit", "failures", "--log", &log]).unwrap();
    let text = stdout(&out);
    assert!(text.contains("mallory"), "{text}");
    assert!(text.contains("unknown target"), "{text}");
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("invalid startup packet"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnecting_mid_copy_loses_nothing() {
    let mut h = Harness::start().unwrap();
    let c = h.connect("alice", "app").await.unwrap();
    c.batch_execute("CREATE TABLE copy_target (x int)").await.unwrap();
    // A real psql in the middle of COPY FROM STDIN, killed before it sends CopyDone.
    let conn = format!(
        "host=127.0.0.1 port={} user=alice dbname=app sslmode=require",
        h.addr.port()
    );
    let mut child = std::process::Command::new(h.setup.cluster.bindir.join("psql"))
        .args(["-X", &conn, "-c", "COPY copy_target FROM STDIN"])
        .env("PGPASSWORD", h.key("alice"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..1000 {
        writeln!(stdin, "{i}").unwrap();
    }
    stdin.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM copy_target", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a half-finished COPY must not commit");
    // Gateway still serving; the record has the COPY and how it ended (recorded once the
    // gateway reads the closed connection: on a loaded machine that can take a while, so it
    // is waited for, not timed).
    assert!(h.gateway_alive());
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let copy_session = h
            .audit_sessions()
            .unwrap()
            .iter()
            .map(|s| h.audit_show(s["session_id"].as_str().unwrap()).unwrap())
            .find(|t| t.contains("COPY copy_target FROM STDIN"));
        match copy_session {
            Some(t) if t.contains("client disconnected") => break,
            found if std::time::Instant::now() > deadline => {
                panic!("the COPY session's end is not recorded: {found:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
