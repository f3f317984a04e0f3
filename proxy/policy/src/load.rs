//! Reading a policy directory and turning it into a validated, id-named policy set.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use crate::error::PolicyError;

/// The schema's file name inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The annotation naming a policy.
const ID: &str = "id";
/// The annotation turning a `forbid` into "needs approval from these groups".
pub(crate) const APPROVERS: &str = "approvers";
/// The annotation choosing how a denied `read_column` masks the column.
pub(crate) const MASK: &str = "mask";
/// The action whose policies make column masking active.
pub(crate) const READ_COLUMN: &str = "read_column";

/// The raw files of a policy directory and their content hash.
pub(crate) struct Sources {
    /// Displayed path and text of the schema.
    schema: (String, String),
    /// Displayed path and text of each `*.cedar` file, sorted by file name.
    policies: Vec<(String, String)>,
    /// SHA-256 over every file name and text.
    pub(crate) digest: [u8; 32],
}

/// Read `schema.cedarschema` and every `*.cedar` file (not recursing) of `dir`.
pub(crate) fn read_sources(dir: &Path) -> Result<Sources, PolicyError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PolicyError::Io { path, source }
    };
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".cedar") && !name.starts_with('.') && path.is_file() {
            names.push((name.to_string(), path));
        }
    }
    if names.is_empty() {
        return Err(PolicyError::NoPolicies {
            dir: dir.display().to_string(),
        });
    }
    names.sort();

    let mut hasher = Sha256::new();
    let mut read = |name: &str, path: &Path| -> Result<(String, String), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        for part in [name.as_bytes(), text.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Ok((path.display().to_string(), text))
    };
    let schema = read(SCHEMA_FILE, &dir.join(SCHEMA_FILE))?;
    let policies = names
        .iter()
        .map(|(name, path)| read(name, path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sources {
        schema,
        policies,
        digest: hasher.finalize().into(),
    })
}

/// A schema and policy set that passed every check.
pub(crate) struct Compiled {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    /// Approver groups of each policy annotated `@approvers`.
    pub(crate) approvers: HashMap<PolicyId, Vec<String>>,
    /// Masking strategy of each policy annotated `@mask`.
    pub(crate) masks: HashMap<PolicyId, gatehouse_core::MaskStrategy>,
    /// Whether any policy can decide `read_column`: one naming the action, or a `forbid` on
    /// every action. Without one, results are not checked column by column at all.
    pub(crate) column_rules: bool,
    /// Where each policy was defined, for messages.
    pub(crate) locations: BTreeMap<String, Location>,
    /// SHA-256 of the schema text alone.
    pub(crate) schema_digest: [u8; 32],
}

/// A policy's file and first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) file: String,
    pub(crate) line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Parse, name, check and validate (strict mode) the sources.
pub(crate) fn compile(sources: &Sources) -> Result<Compiled, PolicyError> {
    let (schema_file, schema_text) = &sources.schema;
    let schema = parse_schema(schema_file, schema_text)?;

    let mut policies = PolicySet::new();
    let mut approvers = HashMap::new();
    let mut masks = HashMap::new();
    let mut column_rules = false;
    let mut locations: BTreeMap<String, Location> = BTreeMap::new();
    for (file, text) in &sources.policies {
        for (policy, line) in parse_file(file, text)? {
            let here = Location {
                file: file.clone(),
                line,
            };
            let Some(id) = policy.annotation(ID) else {
                return Err(PolicyError::MissingId {
                    file: file.clone(),
                    line,
                });
            };
            let id = id.to_string();
            if id.trim().is_empty() || id.trim() != id {
                return Err(policy_error(
                    &id,
                    &here,
                    "`@id` must be non-empty without spaces around it",
                ));
            }
            if let Some(first) = locations.get(&id) {
                return Err(PolicyError::DuplicateId {
                    id,
                    file: file.clone(),
                    line,
                    first_file: first.file.clone(),
                    first_line: first.line,
                });
            }
            let policy = policy.new_id(PolicyId::new(&id));
            if let Some(groups) = policy.annotation(APPROVERS) {
                if policy.effect() != cedar_policy::Effect::Forbid {
                    return Err(policy_error(
                        &id,
                        &here,
                        "`@approvers` is only meaningful on a `forbid`",
                    ));
                }
                let groups = split_groups(groups);
                if groups.is_empty() {
                    return Err(policy_error(&id, &here, "`@approvers` names no group"));
                }
                approvers.insert(policy.id().clone(), groups);
            }
            let on_read_column = match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => policy.effect() == cedar_policy::Effect::Forbid,
                cedar_policy::ActionConstraint::Eq(a) => a.id().unescaped() == READ_COLUMN,
                cedar_policy::ActionConstraint::In(list) => {
                    list.iter().any(|a| a.id().unescaped() == READ_COLUMN)
                }
            };
            column_rules |= on_read_column;
            if let Some(strategy) = policy.annotation(MASK) {
                if policy.effect() != cedar_policy::Effect::Forbid || !on_read_column {
                    return Err(policy_error(
                        &id,
                        &here,
                        "`@mask` is only meaningful on a `forbid` of `read_column`",
                    ));
                }
                let strategy = gatehouse_core::MaskStrategy::from_str(strategy.trim())
                    .map_err(|e| policy_error(&id, &here, &format!("`@mask`: {e}")))?;
                masks.insert(policy.id().clone(), strategy);
            }
            policies
                .add(policy)
                .map_err(|e| policy_error(&id, &here, &e.to_string()))?;
            locations.insert(id, here);
        }
    }

    let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    let sources_by_file: HashMap<&str, &str> = sources
        .policies
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let describe = |id: &PolicyId, diag: &dyn miette::Diagnostic, message: String| {
        let at = locations.get(AsRef::<str>::as_ref(id));
        let file = at.map(|l| l.file.as_str()).unwrap_or("?");
        let line = first_label(diag)
            .zip(sources_by_file.get(file))
            .map(|(offset, text)| line_of(text, offset))
            .or(at.map(|l| l.line))
            .unwrap_or(1);
        format!("{file}:{line}: {message}")
    };
    let mut problems: Vec<String> = result
        .validation_errors()
        .map(|e| describe(e.policy_id(), e, e.to_string()))
        .collect();
    problems.extend(
        result
            .validation_warnings()
            .map(|w| describe(w.policy_id(), w, format!("warning: {w}"))),
    );
    if !problems.is_empty() {
        return Err(PolicyError::Validation { problems });
    }

    Ok(Compiled {
        schema,
        policies,
        approvers,
        masks,
        column_rules,
        locations,
        schema_digest: Sha256::digest(schema_text.as_bytes()).into(),
    })
}

fn parse_schema(file: &str, text: &str) -> Result<Schema, PolicyError> {
    match Schema::from_cedarschema_str(text) {
        Ok((schema, warnings)) => {
            for warning in warnings {
                tracing::warn!(file, %warning, "schema warning");
            }
            Ok(schema)
        }
        Err(e) => Err(PolicyError::Schema {
            file: file.to_string(),
            line: first_label(&e).map(|o| line_of(text, o)).unwrap_or(1),
            message: e.to_string(),
        }),
    }
}

/// Parse one policy file; each static policy with the line it starts on, in file order.
fn parse_file(file: &str, text: &str) -> Result<Vec<(Policy, usize)>, PolicyError> {
    let set = PolicySet::from_str(text).map_err(|e| {
        let offset = e.iter().find_map(|e| first_label(e));
        let message = e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        PolicyError::Parse {
            file: file.to_string(),
            line: offset.map(|o| line_of(text, o)).unwrap_or(1),
            message,
        }
    })?;
    if let Some(template) = set.templates().next() {
        let at = Location {
            file: file.to_string(),
            line: template
                .annotation(ID)
                .and_then(|id| text.find(id))
                .map(|o| line_of(text, o))
                .unwrap_or(1),
        };
        let id = template.annotation(ID).unwrap_or("?");
        return Err(policy_error(id, &at, "templates are not supported"));
    }
    // The parser names policies `policy0`, `policy1`, … in file order.
    let mut in_order: Vec<(usize, &Policy)> = set
        .policies()
        .map(|p| {
            let n = AsRef::<str>::as_ref(p.id())
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    in_order.sort_by_key(|(n, _)| *n);
    let mut cursor = 0;
    let mut out = Vec::with_capacity(in_order.len());
    for (_, policy) in in_order {
        // The policy's own text is a slice of the file; find it after the previous one.
        let offset = policy
            .to_cedar()
            .and_then(|src| {
                let rest = text.get(cursor..)?;
                rest.find(src.as_str()).map(|o| (cursor + o, src.len()))
            })
            .map(|(start, len)| {
                cursor = start + len;
                start
            });
        out.push((policy.clone(), offset.map(|o| line_of(text, o)).unwrap_or(1)));
    }
    Ok(out)
}

fn policy_error(id: &str, at: &Location, message: &str) -> PolicyError {
    PolicyError::Policy {
        id: id.to_string(),
        file: at.file.clone(),
        line: at.line,
        message: message.to_string(),
    }
}

/// `@approvers("dba, security")` → `["dba", "security"]`.
fn split_groups(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

/// Byte offset of a diagnostic's first labelled span.
fn first_label(diag: &dyn miette::Diagnostic) -> Option<usize> {
    diag.labels()?.next().map(|l| l.offset())
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .unwrap_or(text)
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }

    #[test]
    fn approver_groups_are_split() {
        assert_eq!(split_groups("dba"), vec!["dba"]);
        assert_eq!(split_groups(" dba , security ,"), vec!["dba", "security"]);
        assert!(split_groups(" , ").is_empty());
    }
}
