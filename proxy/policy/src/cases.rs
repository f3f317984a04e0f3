//! Decision test files in cedar-policy-cli's `run-tests` format:
//!
//! ```json
//! [{ "name": "…",
//!    "request": { "principal": "Gatehouse::Agent::\"bot\"", "action": "Gatehouse::Action::\"query\"",
//!                 "resource": "Gatehouse::Database::\"app\"", "context": { … } },
//!    "entities": [ … ] | "relative/entities.json",
//!    "decision": "allow" | "deny", "reason": ["policy-id", …], "num_errors": 0 }]
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Schema};
use serde::Deserialize;

use crate::error::PolicyError;

/// The decision a test case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedDecision {
    /// `"allow"`.
    Allow,
    /// `"deny"`.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseJson {
    name: String,
    request: RequestJson,
    entities: serde_json::Value,
    decision: ExpectedDecision,
    reason: Vec<String>,
    num_errors: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    principal: String,
    action: String,
    resource: String,
    context: serde_json::Value,
}

/// The result of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case's `name`.
    pub name: String,
    /// What Cedar decided.
    pub decision: ExpectedDecision,
    /// The determining policy ids Cedar reported, sorted.
    pub reason: Vec<String>,
    /// Evaluation errors Cedar reported.
    pub errors: Vec<String>,
    /// `None` when the case passed, else what differed.
    pub failure: Option<String>,
}

/// Run every case of `path` against `policies`.
pub(crate) fn run_file(
    authorizer: &Authorizer,
    schema: &Schema,
    policies: &PolicySet,
    path: &Path,
) -> Result<Vec<CaseOutcome>, PolicyError> {
    let file = path.display().to_string();
    let bad = |message: String| PolicyError::TestFile {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: file.clone(),
        source,
    })?;
    let cases: Vec<CaseJson> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a list of test cases: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        if !names.insert(case.name.clone()) {
            return Err(bad(format!("test name `{}` is used twice", case.name)));
        }
        let in_case = |message: String| bad(format!("test `{}`: {message}", case.name));
        let (request, entities) = build(schema, dir, &case).map_err(in_case)?;
        let response = authorizer.is_authorized(&request, policies, &entities);
        let mut reason: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        reason.sort();
        let errors: Vec<String> = response.diagnostics().errors().map(ToString::to_string).collect();
        let decision = match response.decision() {
            cedar_policy::Decision::Allow => ExpectedDecision::Allow,
            cedar_policy::Decision::Deny => ExpectedDecision::Deny,
        };
        let mut expected_reason = case.reason.clone();
        expected_reason.sort();
        let mut problems = Vec::new();
        if decision != case.decision {
            problems.push(format!("expected {:?}, got {decision:?}", case.decision));
        }
        if reason != expected_reason {
            problems.push(format!("expected reason {expected_reason:?}, got {reason:?}"));
        }
        if errors.len() != case.num_errors {
            problems.push(format!(
                "expected {} error(s), got {}: {errors:?}",
                case.num_errors,
                errors.len()
            ));
        }
        out.push(CaseOutcome {
            name: case.name,
            decision,
            reason,
            errors,
            failure: (!problems.is_empty()).then(|| problems.join("; ")),
        });
    }
    Ok(out)
}

fn build(schema: &Schema, dir: &Path, case: &CaseJson) -> Result<(Request, Entities), String> {
    let uid = |what: &str, s: &str| EntityUid::from_str(s).map_err(|e| format!("bad {what} `{s}`: {e}"));
    let principal = uid("principal", &case.request.principal)?;
    let action = uid("action", &case.request.action)?;
    let resource = uid("resource", &case.request.resource)?;
    let context = Context::from_json_value(case.request.context.clone(), Some((schema, &action)))
        .map_err(|e| format!("bad context: {e}"))?;
    let request = Request::new(principal, action, resource, context, Some(schema))
        .map_err(|e| format!("bad request: {e}"))?;
    let entities = match &case.entities {
        serde_json::Value::String(rel) => {
            let path = dir.join(rel);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            Entities::from_json_str(&text, Some(schema))
        }
        other => Entities::from_json_value(other.clone(), Some(schema)),
    }
    .map_err(|e| format!("bad entities: {e}"))?;
    Ok((request, entities))
}
