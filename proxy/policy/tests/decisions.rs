//! Runs every decision test case in `policies/tests/*.json` (cedar-policy-cli `run-tests`
//! format) against the shipped policy set, loaded the way the gateway loads it: `@id` names,
//! strict validation against `policies/schema.cedarschema`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeSet;
use std::path::PathBuf;

use gatehouse_policy::{ExpectedDecision, PolicyEngine};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn every_decision_case_passes_and_every_policy_is_exercised() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap_or_else(|e| panic!("{e}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(policies_dir().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no decision test files");

    let mut total = 0;
    let mut failures = Vec::new();
    let mut allowed_by = BTreeSet::new();
    let mut denied_by = BTreeSet::new();
    for file in &files {
        let outcomes = engine.run_test_file(file).unwrap_or_else(|e| panic!("{e}"));
        for outcome in outcomes {
            total += 1;
            if let Some(why) = &outcome.failure {
                failures.push(format!("{}: {}: {why}", file.display(), outcome.name));
                continue;
            }
            let seen = match outcome.decision {
                ExpectedDecision::Allow => &mut allowed_by,
                ExpectedDecision::Deny => &mut denied_by,
            };
            seen.extend(outcome.reason);
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
    assert!(total >= 25, "only {total} decision cases");

    for id in engine.policy_ids() {
        let permit = engine.is_permit(&id).unwrap();
        let (seen, what) = if permit {
            (&allowed_by, "an allow")
        } else {
            (&denied_by, "a deny")
        };
        assert!(
            seen.contains(&id),
            "policy `{id}` is not the reason of {what} in any decision case"
        );
    }
}

#[test]
fn a_case_with_a_wrong_expectation_fails() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policies_dir().join("tests/connect.json")).unwrap())
            .unwrap();
    let mut case = cases[0].clone();
    case["decision"] = "deny".into();
    let path = dir.path().join("wrong.json");
    std::fs::write(&path, serde_json::to_string(&[case]).unwrap()).unwrap();
    let outcomes = engine.run_test_file(&path).unwrap();
    let failure = outcomes[0].failure.as_deref().unwrap();
    assert!(failure.contains("expected Deny, got Allow"), "{failure}");
}

#[test]
fn a_case_that_does_not_match_the_schema_is_an_error() {
    let engine = PolicyEngine::load(&policies_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policies_dir().join("tests/connect.json")).unwrap())
            .unwrap();
    let mut case = cases[0].clone();
    case["request"]["context"]["approved"] = "yes".into();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, serde_json::to_string(&[case]).unwrap()).unwrap();
    let err = engine.run_test_file(&path).unwrap_err().to_string();
    assert!(err.contains("is not valid for"), "{err}");
}
