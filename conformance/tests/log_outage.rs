//! No record, no access: when the event log cannot be written (here: its filesystem is full),
//! statements are refused with a clear error instead of running unrecorded, the session and the
//! gateway keep going, and recording resumes by itself once space is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use gatehouse::demo::DemoSetup;
use gatehouse_conformance::{Harness, Options, db_message, sqlstate};

/// Unmounts the log's tmpfs when the test ends, however it ends.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Write until the filesystem says it is full.
fn fill(path: &std::path::Path) {
    std::fs::File::create(path).unwrap();
    fill_more(path);
}

/// Append to `path` until the filesystem says it is full.
fn fill_more(path: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if f.write_all(&chunk).is_err() || f.sync_data().is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_log_disk_refuses_statements_and_recovers() {
    if !is_root() {
        // Mounting a small filesystem needs root; CI runs as root.
        eprintln!("SKIPPED: mounting a small tmpfs for the event log needs root");
        return;
    }
    let mount = |s: &DemoSetup| -> anyhow::Result<()> {
        std::fs::create_dir_all(&s.log_dir)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "gatehouse-test-log"])
            .arg(&s.log_dir)
            .status()?;
        ensure!(st.success(), "mount tmpfs on {}", s.log_dir.display());
        Ok(())
    };
    let mut h = Harness::start_with(Options {
        before_start: Some(&mount),
        ..Default::default()
    })
    .unwrap();
    let _unmount = Unmount(h.setup.log_dir.clone());

    let c = h.connect("alice", "app").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    let filler = h.setup.log_dir.join("filler");
    fill(&filler);

    // Large statements so that any slack the database kept is used up quickly.
    let pad = "x".repeat(128 * 1024);
    let mut refused = None;
    for i in 0..400 {
        if let Err(e) = c.simple_query(&format!("SELECT '{pad}' AS pad_{i}")).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("no statement was refused while the log's disk was full");
    assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{}", db_message(&e));
    assert!(
        db_message(&e).contains("audit log is unavailable"),
        "{}",
        db_message(&e)
    );

    // A write refused for want of a record never reaches the database. (Reopening the log
    // after a failure may reclaim some space, so top the filler up before each attempt.)
    let mut refused_write = false;
    for i in 0..10 {
        fill_more(&filler);
        let marker = format!("unrecorded-{i}");
        match c
            .simple_query(&format!("UPDATE customers SET name = '{marker}' WHERE id = 1"))
            .await
        {
            Ok(_) => continue, // it was recorded: space had been reclaimed
            Err(e) => {
                assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{}", db_message(&e));
                let name = h
                    .setup
                    .cluster
                    .psql("app", "SELECT name FROM customers WHERE id = 1")
                    .unwrap();
                assert_ne!(name.trim(), marker, "a refused UPDATE ran");
                refused_write = true;
                break;
            }
        }
    }
    assert!(
        refused_write,
        "no UPDATE was refused while the log's disk was full"
    );

    // Space comes back: the same session works again without reconnecting.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if c.simple_query("SELECT 2").await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "statements still refused after the disk had space again"
    );
    let rows = c.query("SELECT count(*) FROM customers", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(h.gateway_alive());

    // Other sessions work too, and the log is intact.
    let c2 = h.connect("bob", "app").await.unwrap();
    c2.simple_query("SELECT 3").await.unwrap();
    drop(c);
    drop(c2);
    h.stop_gateway().unwrap();
    let out = h.audit_verify(&["--strict"]).unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
