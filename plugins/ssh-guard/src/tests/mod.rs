//! Native tests of `ssh-guard`: the plugin's verdicts and config, a labelled corpus of
//! dangerous and benign command lines (`corpus.rs`), and the shell parser (`parser.rs`).

mod corpus;
mod parser;

use gatehouse_plugin_sdk::testing::{session, session_with_tags};
use gatehouse_plugin_sdk::{HoldRequest, Hook};

use super::*;

fn guard(json: &str) -> SshGuard {
    SshGuard::new(&Config::from_json(json)).unwrap()
}

fn exec(line: &str) -> Command {
    Command {
        kind: "exec".to_owned(),
        line: line.to_owned(),
    }
}

fn reason(v: Verdict) -> String {
    match v {
        Verdict::Deny(r) => r,
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn denies_with_the_rule_id_in_the_reason() {
    let g = guard("{}");
    let s = session();
    let r = reason(g.verdict(&s, &exec("sudo rm -rf --no-preserve-root /")));
    assert!(r.starts_with("ssh-guard/rm-root: "), "{r}");
    let r = reason(g.verdict(&s, &exec("curl -s https://x.example/i.sh | sudo bash")));
    assert_eq!(
        r,
        "ssh-guard/download-exec: `curl` piped into `bash` runs what it downloads"
    );
    let r = reason(g.verdict(&s, &exec("echo 'unterminated")));
    assert_eq!(
        r,
        "ssh-guard/unparseable: the command line could not be parsed (unterminated single quote), so it cannot be checked"
    );
    let r = reason(g.verdict(&s, &exec("cd / && rm -rf *")));
    assert_eq!(
        r,
        "ssh-guard/rm-root: recursive delete of `*` in `/` (`rm -rf *`)"
    );
    assert_eq!(g.verdict(&s, &exec("ls -la /")), Verdict::Allow);
}

#[test]
fn checks_shell_kinds_only() {
    let g = guard("{}");
    let s = session();
    for kind in ["exec", "shell-line", "something-new"] {
        let cmd = Command {
            kind: kind.to_owned(),
            line: "reboot".to_owned(),
        };
        assert!(matches!(g.verdict(&s, &cmd), Verdict::Deny(_)), "{kind}");
    }
    for kind in ["sftp", "scp"] {
        let cmd = Command {
            kind: kind.to_owned(),
            line: "rm -rf /".to_owned(),
        };
        assert_eq!(g.verdict(&s, &cmd), Verdict::Allow, "{kind}");
    }
    assert_eq!(g.on_command(&s, &exec("uptime")), Ok(Verdict::Allow));
}

#[test]
fn disable_and_hold() {
    let g = guard(r#"{"disable": ["power"], "hold": ["rm-root"], "approvers": ["sre", "ops"]}"#);
    let s = session();
    assert_eq!(g.verdict(&s, &exec("sudo reboot")), Verdict::Allow);
    let Verdict::Hold(HoldRequest { approvers, reason }) = g.verdict(&s, &exec("rm -rf /etc")) else {
        panic!("not held")
    };
    assert_eq!(approvers, ["sre", "ops"]);
    assert_eq!(
        reason,
        "ssh-guard/rm-root: recursive delete of `/etc` (`rm -rf /etc`) needs approval"
    );
    // A deny anywhere in the line wins over a hold.
    assert!(matches!(
        g.verdict(&s, &exec("rm -rf /etc; mkfs.ext4 /dev/sda1")),
        Verdict::Deny(r) if r.starts_with("ssh-guard/disk-wipe: ")
    ));
    // Default approvers.
    let g = guard(r#"{"hold": ["fork-bomb"]}"#);
    assert!(matches!(
        g.verdict(&s, &exec(":(){ :|:& };:")),
        Verdict::Hold(HoldRequest { approvers, .. }) if approvers == ["ops"]
    ));
    // The unparseable rule can be held or turned off like any other.
    let g = guard(r#"{"disable": ["unparseable"]}"#);
    assert_eq!(g.verdict(&s, &exec("echo 'a")), Verdict::Allow);
    assert!(matches!(g.verdict(&s, &exec("rm -rf / 'a")), Verdict::Deny(_)));
}

#[test]
fn hold_in_tagged_targets() {
    let g = guard(r#"{"hold_in": {"tag": "env", "values": ["staging"], "approvers": ["leads"]}}"#);
    let staging = session_with_tags(&[("env", "staging")]);
    let Verdict::Hold(HoldRequest { approvers, reason }) = g.verdict(&staging, &exec("shutdown -r now"))
    else {
        panic!("not held")
    };
    assert_eq!(approvers, ["leads"]);
    assert!(
        reason.ends_with("needs approval on a target with env=staging"),
        "{reason}"
    );
    let prod = session_with_tags(&[("env", "prod")]);
    assert!(matches!(
        g.verdict(&prod, &exec("shutdown -r now")),
        Verdict::Deny(_)
    ));
    assert_eq!(g.verdict(&staging, &exec("uptime")), Verdict::Allow);
    // The keys' defaults: env = prod, approvers ops.
    let g = guard(r#"{"hold_in": {}}"#);
    assert!(matches!(
        g.verdict(&prod, &exec("reboot")),
        Verdict::Hold(HoldRequest { approvers, .. }) if approvers == ["ops"]
    ));
    assert!(matches!(g.verdict(&session(), &exec("reboot")), Verdict::Deny(_)));
    // `hold` takes precedence (its approvers).
    let g = guard(
        r#"{"hold": ["power"], "approvers": ["a"], "hold_in": {"values": ["prod"], "approvers": ["b"]}}"#,
    );
    assert!(matches!(
        g.verdict(&prod, &exec("reboot")),
        Verdict::Hold(HoldRequest { approvers, .. }) if approvers == ["a"]
    ));
}

#[test]
fn extra_rules() {
    let g = guard(
        r#"{"extra": [{"id": "kubectl-delete", "words": ["kubectl", "delete"]},
                      {"id": "drop-db", "words": ["/usr/bin/dropdb"]}],
            "hold": ["kubectl-delete"]}"#,
    );
    let s = session();
    for line in [
        "kubectl delete pod web-1",
        "kubectl -n prod delete deploy web",
        "sudo -u deploy kubectl delete ns x",
        "bash -c 'kubectl delete pod x'",
    ] {
        let Verdict::Hold(HoldRequest { reason, .. }) = g.verdict(&s, &exec(line)) else {
            panic!("not held: {line}")
        };
        assert!(
            reason.starts_with("ssh-guard/kubectl-delete: `kubectl delete` is not allowed"),
            "{reason}"
        );
    }
    assert_eq!(g.verdict(&s, &exec("kubectl get pods")), Verdict::Allow);
    assert_eq!(g.verdict(&s, &exec("echo kubectl delete")), Verdict::Allow);
    assert!(reason(g.verdict(&s, &exec("dropdb app"))).starts_with("ssh-guard/drop-db: "));
    assert!(
        reason(g.verdict(&s, &exec("nohup /usr/local/bin/dropdb app &"))).starts_with("ssh-guard/drop-db: ")
    );
}

#[test]
fn invalid_configs_fail_init() {
    for (json, wanted) in [
        (r#"{"disable": ["nope"]}"#, "unknown rule id `nope` in disable"),
        (r#"{"hold": ["rm"]}"#, "unknown rule id `rm` in hold"),
        (r#"{"approvers": []}"#, "approvers must name at least one group"),
        (
            r#"{"hold_in": {"approvers": []}}"#,
            "hold_in.approvers must name at least one group",
        ),
        (r#"{"hold_in": {"tags": "env"}}"#, "unknown field"),
        (
            r#"{"extra": [{"id": "power", "words": ["x"]}]}"#,
            "`power` is already taken",
        ),
        (
            r#"{"extra": [{"id": "a", "words": ["x"]}, {"id": "a", "words": ["y"]}]}"#,
            "`a` is already taken",
        ),
        (r#"{"extra": [{"id": "Bad Id", "words": ["x"]}]}"#, "lowercase"),
        (r#"{"extra": [{"id": "x", "words": []}]}"#, "non-empty"),
        (r#"{"extra": [{"id": "x", "words": ["a", ""]}]}"#, "non-empty"),
        (r#"{"extra": [{"id": "x"}]}"#, "missing field `words`"),
        (r#"{"deny": []}"#, "unknown field"),
        (r#"{"disable": "power"}"#, "invalid type"),
        ("[1]", "invalid"),
    ] {
        let err = SshGuard::new(&Config::from_json(json)).unwrap_err();
        assert!(err.contains(wanted), "{json}: {err}");
    }
    // Extra ids may be held and disabled.
    guard(r#"{"extra": [{"id": "x", "words": ["a"]}], "hold": ["x"], "disable": ["x"]}"#);
    // Every built-in id is accepted.
    let all: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    guard(&format!(r#"{{"disable": {all:?}}}"#));
    assert_eq!(
        guard("").verdict(&session(), &exec("rm -rf ~")),
        guard("{}").verdict(&session(), &exec("rm -rf ~"))
    );
}

#[test]
fn describes_on_command_only() {
    let info = gatehouse_plugin_sdk::describe!(SshGuard);
    assert_eq!(info.name, "ssh-guard");
    assert_eq!(info.hooks, [Hook::OnCommand]);
}

#[test]
fn long_and_hostile_lines_are_bounded() {
    let g = guard("{}");
    let s = session();
    // Long, but fine.
    let long = "echo a; ".repeat(10_000);
    assert_eq!(g.verdict(&s, &exec(&long)), Verdict::Allow);
    let too_long = "echo a; ".repeat(20_000);
    let r = reason(g.verdict(&s, &exec(&too_long)));
    assert!(
        r.starts_with("ssh-guard/unparseable: the command line is too long to check"),
        "{r}"
    );
    // Deep nesting and brace bombs fail closed.
    for line in [
        "$(".repeat(10_000),
        format!("echo {}", "{a,b}".repeat(30)),
        "eval ".repeat(10_000) + "ls",
        "eval ".repeat(40) + &"x".repeat(4_000),
        "sudo ".repeat(10_000) + "eval " + &"env ".repeat(10_000) + "rm -rf /",
    ] {
        let r = reason(g.verdict(&s, &exec(&line)));
        assert!(
            r.starts_with("ssh-guard/unparseable: ") || r.starts_with("ssh-guard/rm-root: "),
            "{r}"
        );
    }
    // `bash -c` inside `bash -c` inside …: each level is parsed and checked.
    let mut line = "rm -rf /".to_owned();
    for _ in 0..6 {
        line = format!("bash -c {}", shell_quote(&line));
    }
    assert!(reason(g.verdict(&s, &exec(&line))).starts_with("ssh-guard/rm-root: "));
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
