use super::*;

fn principal(kind: PrincipalKind, id: &str, groups: &[&str]) -> Principal {
    Principal {
        kind,
        id: id.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attrs: Default::default(),
        on_behalf_of: None,
        actor_chain: Vec::new(),
    }
}

fn agent() -> Principal {
    Principal {
        on_behalf_of: Some("carol".to_string()),
        ..principal(PrincipalKind::Agent, "ai-agent", &["agents"])
    }
}

fn request(min: u32) -> NewRequest {
    NewRequest {
        session_id: "s1".into(),
        op: 3,
        requester: agent(),
        target: "app".into(),
        action: "query".into(),
        operation: "UPDATE accounts SET balance = 0 WHERE id = 1".into(),
        kind: "update".into(),
        approvers: vec!["dba".into()],
        required_groups: Vec::new(),
        reason: "policy `agents-prod-update-needs-approval`".into(),
        policy_ids: vec!["agents-prod-update-needs-approval".into()],
        min_approvals: min,
        timeout_secs: 60,
    }
}

#[tokio::test]
async fn one_approval_from_the_group_approves() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    let (req, rx) = a.open(id.clone(), request(1)).await;
    assert_eq!(req.state, State::Pending);
    assert!(req.expires_us > req.created_us);
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    let after = a.vote(&id, &alice, true, "looks right").await.unwrap();
    assert_eq!(after.state, State::Approved);
    assert_eq!(after.votes.len(), 1);
    assert_eq!(after.votes[0].approver, "user:alice");
    assert_eq!(rx.borrow().as_ref().map(|r| r.state), Some(State::Approved));
    assert_eq!(a.get(&id).await.unwrap().unwrap().state, State::Approved);
    assert_eq!(a.pending(), 0);
    // Decided: no more votes.
    let bob = principal(PrincipalKind::User, "bob", &["dba"]);
    assert_eq!(
        a.vote(&id, &bob, false, "").await,
        Err(VoteError::NotPending(id.clone(), "approved"))
    );
}

#[tokio::test]
async fn approver_rules() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    a.open(id.clone(), request(2)).await;
    // The requester, the human it acts for, agents and outsiders cannot vote.
    assert_eq!(a.vote(&id, &agent(), true, "").await, Err(VoteError::NotHuman));
    let carol = principal(PrincipalKind::User, "carol", &["dba"]);
    assert_eq!(a.vote(&id, &carol, true, "").await, Err(VoteError::SelfApproval));
    let mallory = principal(PrincipalKind::User, "mallory", &["dev"]);
    assert_eq!(
        a.vote(&id, &mallory, true, "").await,
        Err(VoteError::NotAnApprover("dba".into()))
    );
    let ai_as_user = principal(PrincipalKind::User, "ai-agent", &["dba"]);
    // Same id but a different kind is a different principal.
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    assert_eq!(a.vote(&id, &alice, true, "").await.unwrap().state, State::Pending);
    assert_eq!(a.vote(&id, &alice, true, "").await, Err(VoteError::AlreadyVoted));
    assert_eq!(
        a.vote(&id, &ai_as_user, true, "").await.unwrap().state,
        State::Approved
    );
    assert_eq!(
        a.vote("ap-000000000000", &alice, true, "").await,
        Err(VoteError::NotFound("ap-000000000000".into()))
    );
}

#[tokio::test]
async fn one_denial_denies() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    let (_, rx) = a.open(id.clone(), request(2)).await;
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    let bob = principal(PrincipalKind::User, "bob", &["dba", "dev"]);
    a.vote(&id, &alice, true, "").await.unwrap();
    let r = a
        .vote(&id, &bob, false, "no WHERE on the big table")
        .await
        .unwrap();
    assert_eq!(r.state, State::Denied);
    assert_eq!(r.votes[1].comment, "no WHERE on the big table");
    assert_eq!(rx.borrow().as_ref().map(|r| r.state), Some(State::Denied));
}

#[tokio::test]
async fn every_asking_policy_needs_an_approver_from_its_own_groups() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    // Two forbids asked: one names dba, the other security.
    a.open(
        id.clone(),
        NewRequest {
            approvers: vec!["dba".into(), "security".into()],
            required_groups: vec![vec!["dba".into()], vec!["security".into()]],
            ..request(1)
        },
    )
    .await;
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    let bob = principal(PrincipalKind::User, "bob", &["dba"]);
    let sam = principal(PrincipalKind::User, "sam", &["security"]);
    assert_eq!(
        a.vote(&id, &alice, true, "").await.unwrap().state,
        State::Pending,
        "dba alone is not enough"
    );
    assert_eq!(
        a.vote(&id, &bob, true, "").await.unwrap().state,
        State::Pending,
        "nor are two DBAs"
    );
    let r = a.vote(&id, &sam, true, "").await.unwrap();
    assert_eq!(r.state, State::Approved);
    assert_eq!(r.votes[2].groups, vec!["security".to_string()]);
}

#[tokio::test]
async fn expired_requests_take_no_votes() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    a.open(
        id.clone(),
        NewRequest {
            timeout_secs: 0,
            ..request(1)
        },
    )
    .await;
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    assert_eq!(
        a.vote(&id, &alice, true, "").await,
        Err(VoteError::Expired(id.clone()))
    );
    assert_eq!(
        a.check_vote(&id, &alice).await,
        Err(VoteError::Expired(id.clone()))
    );
}

#[tokio::test]
async fn finish_only_ends_pending_requests() {
    let a = Approvals::new(100);
    let id = Approvals::new_id();
    a.open(id.clone(), request(1)).await;
    let r = a
        .finish(&id, State::TimedOut, "no decision within 60s")
        .await
        .unwrap();
    assert_eq!(r.state, State::TimedOut);
    assert_eq!(r.end_reason.as_deref(), Some("no decision within 60s"));
    assert!(a.finish(&id, State::Withdrawn, "x").await.is_none());
    let alice = principal(PrincipalKind::User, "alice", &["dba"]);
    assert_eq!(
        a.vote(&id, &alice, true, "").await,
        Err(VoteError::NotPending(id.clone(), "timed_out"))
    );
}

#[tokio::test]
async fn session_end_withdraws_and_history_is_bounded() {
    let a = Approvals::new(2);
    let ids: Vec<String> = (0..3).map(|_| Approvals::new_id()).collect();
    for id in &ids {
        a.open(id.clone(), request(1)).await;
    }
    let other = Approvals::new_id();
    a.open(
        other.clone(),
        NewRequest {
            session_id: "s2".into(),
            ..request(1)
        },
    )
    .await;
    let ended = a.finish_session("s1", "session ended").await;
    assert_eq!(ended.len(), 3);
    assert!(ended.iter().all(|r| r.state == State::Withdrawn));
    assert_eq!(a.pending(), 1);
    assert_eq!(a.list(Some(State::Pending)).await.unwrap()[0].id, other);
    // Only the two newest decided requests are kept.
    assert_eq!(a.list(Some(State::Withdrawn)).await.unwrap().len(), 2);
    assert_eq!(State::parse("timed_out"), Some(State::TimedOut));
    assert_eq!(State::parse("nope"), None);
}

mod notify {
    use super::*;
    use crate::notify::{Format, Step, backoff, body, redact_url, signature};

    #[test]
    fn urls_are_redacted_to_scheme_host_and_port() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:9000/h?token=x"),
            "http://127.0.0.1:9000"
        );
    }

    #[tokio::test]
    async fn bodies_carry_the_request_and_slack_text_is_escaped() {
        let a = Approvals::new(10);
        let id = Approvals::new_id();
        let mut new = request(1);
        new.operation = "UPDATE t SET a = 1 WHERE b < 2 AND c > 3 & 4".into();
        let (req, _) = a.open(id.clone(), new).await;
        let json: serde_json::Value =
            serde_json::from_slice(&body(Format::Json, Step::Requested, &req)).unwrap();
        assert_eq!(json["event"], "approval.requested");
        assert_eq!(json["request"]["id"], id.as_str());
        assert_eq!(
            json["approve"],
            format!("gatehouse approvals approve {id}").as_str()
        );
        let slack: serde_json::Value =
            serde_json::from_slice(&body(Format::Slack, Step::Requested, &req)).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("b &lt; 2 AND c &gt; 3 &amp; 4"), "{text}");
        assert!(text.contains(&id));
        let alice = principal(PrincipalKind::User, "alice", &["dba"]);
        let ended = a.vote(&id, &alice, false, "no <way>").await.unwrap();
        let slack: serde_json::Value =
            serde_json::from_slice(&body(Format::Slack, Step::Ended, &ended)).unwrap();
        assert_eq!(
            slack["text"],
            format!("*Approval request* `{id}` *denied*: denied by user:alice: no &lt;way&gt;").as_str()
        );
    }

    #[test]
    fn signatures_and_backoff() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
