//! Identities and the per-session context handed to the guard.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Whether a principal is a human or a non-human identity. Maps to the Cedar entity types
/// `Gatehouse::User` and `Gatehouse::Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    User,
    Agent,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
        }
    }

    /// The Cedar entity type name (without namespace).
    pub fn cedar_type(self) -> &'static str {
        match self {
            PrincipalKind::User => "User",
            PrincipalKind::Agent => "Agent",
        }
    }
}

/// A verified identity. Built by the identity layer only after the secret was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// Stable identifier (config name today, OIDC `sub` later).
    pub id: String,
    pub groups: Vec<String>,
    /// Extra string attributes (e.g. `email`), exposed to Cedar as principal attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
    /// For agents acting for a human: the human's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Earlier actors in a delegation (RFC 8693 nested `act` claims), nearest first: the
    /// principal acts for `on_behalf_of` as instructed by these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actor_chain: Vec<String>,
}

impl Principal {
    /// `agent:name` / `user:name`, the form used in records and logs.
    pub fn display(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

/// How the client proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// `scram-sha-256`, `password`, `token`, …
    pub method: String,
    /// Seconds since the presented credential was issued (0 for static keys).
    pub token_age_secs: i64,
    pub mfa: bool,
    /// When the presented credential stops being valid (Unix seconds, grace included); the
    /// session ends at its first operation after it. `None`: never (static keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The issuer that vouched for the identity (OIDC `iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// The target a session is bound to, as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub name: String,
    /// `postgres`, later `ssh`, `http`.
    pub kind: String,
    /// Free-form tags from config, e.g. `env = "prod"`.
    pub tags: BTreeMap<String, String>,
}

impl TargetRef {
    /// The `env` tag, or `""`.
    pub fn env(&self) -> &str {
        self.tags.get("env").map(String::as_str).unwrap_or("")
    }
}

/// Everything the guard needs to know about a session, fixed at authentication time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCtx {
    pub session_id: String,
    pub principal: Principal,
    pub target: TargetRef,
    pub source_ip: IpAddr,
    pub auth: AuthInfo,
    /// Protocol-level user-agent, e.g. PostgreSQL's `application_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_app: Option<String>,
    /// The just-in-time access grant the principal held for this target when the session
    /// opened (Cedar: `context.grant`); the session ends at its first operation after the
    /// grant expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantRef>,
}

/// An approved access grant, as a session sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRef {
    /// The access request it came from (`gatehouse approvals show ID`).
    pub id: String,
    /// Unix seconds.
    pub expires_at: i64,
}
