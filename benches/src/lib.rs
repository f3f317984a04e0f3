//! Gatehouse benchmarks.
//!
//! - `benches/*.rs`: criterion micro-benches of the per-statement hot paths (SQL
//!   classification, the Cedar decision, the recorder append, PostgreSQL message framing).
//! - `src/bin/loadbench.rs`: the load-bench harness. It runs `pgbench` against a throwaway
//!   PostgreSQL directly and through the real `gatehouse` binary, interleaved, and reports the
//!   through/direct ratio per query mode and recorder durability.
//!
//! This library holds the harness's pieces that are worth testing on their own: parsing
//! `pgbench` output and per-transaction logs, the statistics, and process/host CPU accounting.

pub mod gateway;
pub mod pgbench;
pub mod procstat;
pub mod stats;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use gatehouse_core::{AuthInfo, Principal, PrincipalKind, SessionCtx, TargetRef};

/// A session of `id` (in `groups`) on target `app` (env `prod`) from 10.20.30.40, for the
/// micro-benches that need policy entities.
pub fn session_ctx(kind: PrincipalKind, id: &str, groups: &[&str], on_behalf_of: Option<&str>) -> SessionCtx {
    SessionCtx {
        session_id: format!("bench-{id}"),
        principal: Principal {
            kind,
            id: id.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attrs: BTreeMap::new(),
            on_behalf_of: on_behalf_of.map(str::to_string),
            actor_chain: Vec::new(),
        },
        target: TargetRef {
            name: "app".to_string(),
            kind: "postgres".to_string(),
            tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        },
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 20, 30, 40)),
        auth: AuthInfo {
            method: "scram-sha-256".to_string(),
            token_age_secs: 0,
            mfa: false,
            expires_at: None,
            issuer: None,
        },
        client_app: Some("bench".to_string()),
        grant: None,
    }
}
