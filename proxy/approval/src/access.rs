//! Just-in-time access grants (`gatehouse access request`).
//!
//! A principal asks for access to a target for a while, with a reason; the request is an
//! ordinary approval request (same approvers' rules, same `gatehouse approvals` commands,
//! action `access`). Once approved, a [`Grant`] exists until it expires: sessions opened while
//! it is active carry it (Cedar's `context.grant`, so policies can require one), and end at
//! their first operation after it expired.
//!
//! Active grants are kept in a [`GrantStore`]: a JSON file (written whole, fsynced, renamed into
//! place) so that a restart does not take away access someone was given, or a PostgreSQL
//! database several gateways share. Expired grants are handed out once for recording their
//! expiry ([`Grants::claim_expired`]). Every step is also in the audit log, which is the
//! history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// An approved access grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The access request it came from.
    pub id: String,
    /// `user:name` / `agent:name` it was given to.
    pub principal: String,
    /// For an agent acting for a human: that human. The grant is theirs together: the same
    /// agent acting for someone else (or for itself) does not hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    pub target: String,
    pub reason: String,
    pub granted_us: i64,
    pub expires_us: i64,
    /// `user:name` of each approver.
    pub approvers: Vec<String>,
}

impl Grant {
    pub fn as_ref(&self) -> gatehouse_core::GrantRef {
        gatehouse_core::GrantRef {
            id: self.id.clone(),
            expires_at: self.expires_us.div_euclid(1_000_000),
        }
    }
}

/// Where grants are kept: a file of this gateway's ([`Grants::open`]) or a database several
/// gateways share ([`PgStore`](crate::pgstore::PgStore)).
#[async_trait]
pub trait GrantStore: Send + Sync + 'static {
    /// Keep `grant` durably; it is in effect only once this succeeded.
    async fn add(&self, grant: &Grant, now_us: i64) -> Result<(), StoreError>;

    /// The principal's active grant for `target` that lasts longest; for an agent acting for
    /// someone, only a grant given to it acting for the same someone.
    async fn active(
        &self,
        principal: &str,
        on_behalf_of: Option<&str>,
        target: &str,
        now_us: i64,
    ) -> Result<Option<Grant>, StoreError>;

    /// Active grants, soonest expiry first (then by id); only `principal`'s when given.
    async fn list(&self, principal: Option<&str>, now_us: i64) -> Result<Vec<Grant>, StoreError>;

    /// Grants expired by `now_us` whose expiry is not recorded yet. Each is returned once, to
    /// one caller (also among gateways sharing the store), which records it.
    async fn claim_expired(&self, now_us: i64) -> Result<Vec<Grant>, StoreError>;
}

/// The gateway's grants.
#[derive(Clone)]
pub struct Grants {
    store: Arc<dyn GrantStore>,
}

impl Grants {
    /// Grants kept in memory only (tests).
    pub fn in_memory() -> Grants {
        Self::shared(Arc::new(FileStore {
            inner: Mutex::new(HashMap::new()),
            path: None,
        }))
    }

    /// Grants kept in `path`; a missing file is no grants, an unreadable one is an error (a
    /// gateway must not start believing nobody has access when the file says otherwise).
    /// Grants that expired while the gateway was not running stay until
    /// [`claim_expired`](Self::claim_expired) hands them out for recording.
    pub fn open(path: &Path) -> Result<Grants, String> {
        let mut map = HashMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                let f: File =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                if f.format != FORMAT {
                    return Err(format!("{}: unknown format `{}`", path.display(), f.format));
                }
                for g in f.grants {
                    map.insert(g.id.clone(), g);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        Ok(Self::shared(Arc::new(FileStore {
            inner: Mutex::new(map),
            path: Some(path.to_path_buf()),
        })))
    }

    /// Grants kept in `store`.
    pub fn shared(store: Arc<dyn GrantStore>) -> Grants {
        Grants { store }
    }

    /// Add a grant and make it durable; it is in effect only once that succeeded.
    pub async fn add(&self, grant: Grant, now_us: i64) -> Result<(), StoreError> {
        self.store.add(&grant, now_us).await
    }

    /// See [`GrantStore::active`].
    pub async fn active(
        &self,
        principal: &str,
        on_behalf_of: Option<&str>,
        target: &str,
        now_us: i64,
    ) -> Result<Option<Grant>, StoreError> {
        self.store.active(principal, on_behalf_of, target, now_us).await
    }

    /// See [`GrantStore::list`].
    pub async fn list(&self, principal: Option<&str>, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        self.store.list(principal, now_us).await
    }

    /// See [`GrantStore::claim_expired`].
    pub async fn claim_expired(&self, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        self.store.claim_expired(now_us).await
    }
}

/// Grants in this process, kept in a JSON file (written whole, fsynced, renamed into place).
struct FileStore {
    inner: Mutex<HashMap<String, Grant>>,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    grants: Vec<Grant>,
}

const FORMAT: &str = "gatehouse-grants-v1";

impl FileStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        crate::lock(&self.inner)
    }

    fn persist(&self, map: &HashMap<String, Grant>) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut grants: Vec<Grant> = map.values().cloned().collect();
        grants.sort_by(|a, b| a.id.cmp(&b.id));
        let body = serde_json::to_vec_pretty(&File {
            format: FORMAT.into(),
            grants,
        })
        .map_err(|e| StoreError(e.to_string()))?;
        write_durably(path, &body).map_err(|e| StoreError(format!("{}: {e}", path.display())))
    }
}

#[async_trait]
impl GrantStore for FileStore {
    async fn add(&self, grant: &Grant, _now_us: i64) -> Result<(), StoreError> {
        let mut map = self.lock();
        let mut next = map.clone();
        next.insert(grant.id.clone(), grant.clone());
        self.persist(&next)?;
        *map = next;
        Ok(())
    }

    async fn active(
        &self,
        principal: &str,
        on_behalf_of: Option<&str>,
        target: &str,
        now_us: i64,
    ) -> Result<Option<Grant>, StoreError> {
        Ok(self
            .lock()
            .values()
            .filter(|g| {
                g.principal == principal
                    && g.on_behalf_of.as_deref() == on_behalf_of
                    && g.target == target
                    && g.expires_us > now_us
            })
            .max_by_key(|g| g.expires_us)
            .cloned())
    }

    async fn list(&self, principal: Option<&str>, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        let mut out: Vec<Grant> = self
            .lock()
            .values()
            .filter(|g| g.expires_us > now_us && principal.is_none_or(|p| g.principal == p))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.expires_us.cmp(&b.expires_us).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn claim_expired(&self, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        let mut map = self.lock();
        let mut expired: Vec<Grant> = map.values().filter(|g| g.expires_us <= now_us).cloned().collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        let mut next = map.clone();
        next.retain(|_, g| g.expires_us > now_us);
        // Dropped from the file first, so each expiry is handed out once.
        self.persist(&next)?;
        *map = next;
        expired.sort_by(|a, b| a.expires_us.cmp(&b.expires_us).then_with(|| a.id.cmp(&b.id)));
        Ok(expired)
    }
}

fn write_durably(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `30m`, `2h`, `90s`, `1h30m`, `1d` (or plain seconds) → seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("`{text}`: unknown unit `{c}` (use s, m, h, d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}`: a number must come before `{c}`"))?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too long"))?;
    }
    if !num.is_empty() {
        return Err(format!("`{text}`: the last number has no unit"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant(id: &str, principal: &str, target: &str, expires_us: i64) -> Grant {
        Grant {
            id: id.into(),
            principal: principal.into(),
            on_behalf_of: None,
            target: target.into(),
            reason: "INC-1".into(),
            granted_us: 0,
            expires_us,
            approvers: vec!["user:dana".into()],
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("45").unwrap(), 45);
        assert_eq!(parse_duration("2d").unwrap(), 172_800);
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5h3").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn ids(v: &[Grant]) -> Vec<&str> {
        v.iter().map(|g| g.id.as_str()).collect()
    }

    #[test]
    fn active_grants_survive_a_restart_and_each_expiry_is_handed_out_once() {
        block(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("access/grants.json");
            let g = Grants::open(&path).unwrap();
            g.add(grant("a1", "user:bob", "app", 1_000), 0).await.unwrap();
            g.add(grant("a2", "user:bob", "app", 5_000), 0).await.unwrap();
            g.add(grant("a3", "user:eve", "app", 9_000), 0).await.unwrap();
            let mut delegated = grant("a4", "agent:copilot", "app", 9_000);
            delegated.on_behalf_of = Some("bob".into());
            g.add(delegated, 0).await.unwrap();
            let active = |p: &'static str, obo: Option<&'static str>, t: &'static str, now| {
                let g = g.clone();
                async move { g.active(p, obo, t, now).await.unwrap().map(|g| g.id) }
            };
            assert_eq!(
                active("user:bob", None, "app", 500).await.as_deref(),
                Some("a2"),
                "the longest-lasting"
            );
            assert!(active("user:bob", None, "other", 500).await.is_none());
            assert!(
                active("user:bob", None, "app", 5_000).await.is_none(),
                "expired at its instant"
            );
            assert_eq!(g.list(Some("user:bob"), 2_000).await.unwrap().len(), 1);
            // The agent holds it only acting for bob.
            assert!(active("agent:copilot", Some("bob"), "app", 500).await.is_some());
            assert!(
                active("agent:copilot", Some("mallory"), "app", 500)
                    .await
                    .is_none()
            );
            assert!(active("agent:copilot", None, "app", 500).await.is_none());

            let again = Grants::open(&path).unwrap();
            assert_eq!(ids(&again.list(None, 2_000).await.unwrap()), ["a2", "a3", "a4"]);
            assert_eq!(
                ids(&again.claim_expired(2_000).await.unwrap()),
                ["a1"],
                "expired while down"
            );
            assert!(
                again.claim_expired(2_000).await.unwrap().is_empty(),
                "handed out once"
            );
            let third = Grants::open(&path).unwrap();
            assert_eq!(
                ids(&third.claim_expired(6_000).await.unwrap()),
                ["a2"],
                "a1 stays claimed"
            );
            std::fs::write(&path, b"{not json").unwrap();
            assert!(
                Grants::open(&path).is_err(),
                "a damaged file stops the start, it is not read as empty"
            );
        })
    }
}
