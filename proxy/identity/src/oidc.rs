//! OpenID Connect: signed tokens from configured issuers become principals.
//!
//! A token (an ID token or an RFC 9068 JWT access token) is accepted when, in this order:
//! it is a compact JWS (an encrypted token or one with `crit` extensions is refused), its
//! `alg` is an asymmetric signature algorithm (`none` and the HMAC family never are: a key set
//! is public), its `iss` is a configured issuer, a key from that issuer's key set with the
//! token's `kid` verifies the signature, `aud` names the configured audience, and `exp`, `nbf`
//! and `iat` hold within the configured clock skew.
//!
//! Key sets come from discovery (`<issuer>/.well-known/openid-configuration`, whose `issuer`
//! must equal the configured one) and are cached. A token naming a key the cache does not hold
//! makes the provider fetch the set again (at most once per `jwks_min_refresh_secs`: a flood of
//! made-up key ids cannot turn into a flood of requests to the IdP), which is how a key
//! rotation is picked up without a restart. The set is also fetched again when older than
//! `jwks_max_age_secs`, so a key the IdP removed stops verifying. When the IdP cannot be
//! reached, cached keys keep working for one more `jwks_max_age_secs` and then nothing does:
//! a token is never accepted without a key the IdP published recently.
//!
//! Principals: a token whose subject is the client it was issued to (`client_id == sub`, as in
//! a client-credentials grant) is an `Agent` named by `sub`; any other is a `User` named by the
//! configured username claim. An RFC 8693 `act` claim makes the actor the principal: an
//! `Agent` acting `on_behalf_of` the token's subject, with nested actors kept as the actor
//! chain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::config::OidcConfig;
use gatehouse_core::{AuthInfo, Principal, PrincipalKind};
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata};
use openidconnect::{JsonWebKey, JsonWebKeyId};
use serde_json::{Map, Value};

use crate::{AuthError, Authenticated, Credential, IdentityProvider};

/// Largest discovery document or key set read from an IdP.
const MAX_DOCUMENT: usize = 1 << 20;
/// Largest token considered at all.
const MAX_TOKEN: usize = 16 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Every configured issuer (`[[oidc]]`).
pub struct OidcProvider {
    issuers: Vec<Arc<Issuer>>,
}

struct Issuer {
    cfg: OidcConfig,
    http: reqwest::Client,
    keys: Mutex<KeyCache>,
    /// One fetch at a time; tokens waiting on it then read the fresh cache.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CoreJsonWebKey>,
    /// When `keys` was fetched successfully.
    fetched: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    attempted: Option<Instant>,
    last_error: Option<String>,
}

/// The parts of a compact JWS, decoded.
struct Jws<'a> {
    alg: CoreJwsSigningAlgorithm,
    kid: Option<JsonWebKeyId>,
    signed: &'a [u8],
    signature: Vec<u8>,
    claims: Map<String, Value>,
}

fn invalid(why: impl Into<String>) -> AuthError {
    AuthError::InvalidToken(why.into())
}

impl OidcProvider {
    pub fn from_config(configs: &[OidcConfig]) -> Result<OidcProvider, String> {
        let mut issuers = Vec::with_capacity(configs.len());
        for cfg in configs {
            let mut builder = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                // Fetches are rare and run on whichever runtime asks; a pooled connection
                // would belong to the runtime that opened it.
                .pool_max_idle_per_host(0)
                // Discovery and keys come from the issuer itself; a redirect elsewhere is not
                // followed.
                .redirect(reqwest::redirect::Policy::none());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    format!(
                        "oidc `{}`: cannot read ca_file {}: {e}",
                        cfg.issuer.get_ref(),
                        ca.display()
                    )
                })?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| format!("oidc `{}`: ca_file {}: {e}", cfg.issuer.get_ref(), ca.display()))?;
                builder = builder.add_root_certificate(cert);
            }
            let http = builder
                .build()
                .map_err(|e| format!("oidc `{}`: {e}", cfg.issuer.get_ref()))?;
            issuers.push(Arc::new(Issuer {
                cfg: cfg.clone(),
                http,
                keys: Mutex::new(KeyCache::default()),
                fetching: tokio::sync::Mutex::new(()),
            }));
        }
        Ok(OidcProvider { issuers })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Put a key set (JWKS JSON) in an issuer's cache as if just fetched: for the benchmark of
    /// verification without an IdP. The set is refetched as usual once it is old.
    #[doc(hidden)]
    pub fn preload_keys(&self, issuer: &str, jwks: &str) -> Result<(), String> {
        let set: CoreJsonWebKeySet = serde_json::from_str(jwks).map_err(|e| format!("key set: {e}"))?;
        let i = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer.get_ref() == issuer)
            .ok_or_else(|| format!("no issuer `{issuer}`"))?;
        let mut cache = i.keys.lock().map_err(|_| "key cache poisoned".to_string())?;
        cache.keys = set.keys().clone();
        cache.fetched = Some(Instant::now());
        cache.attempted = cache.fetched;
        cache.last_error = None;
        Ok(())
    }

    /// Fetch every issuer's keys once (at start), so the first connection does not wait for
    /// it. Failures are returned for logging; tokens from such an issuer are refused until a
    /// fetch succeeds.
    pub async fn warm(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for i in &self.issuers {
            if let Err(e) = i.refresh(true).await {
                errors.push(format!("{}: {e}", i.cfg.issuer.get_ref()));
            }
        }
        errors
    }

    /// Verify a token whoever it names (the admin API's bearer tokens).
    pub async fn verify_token(&self, token: &str) -> Result<Authenticated, AuthError> {
        self.verify_at(token, now_secs()).await
    }

    async fn verify_at(&self, token: &str, now: i64) -> Result<Authenticated, AuthError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN {
            return Err(invalid("token too long"));
        }
        let jws = decode(token)?;
        let iss = jws
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `iss` claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer.get_ref() == iss)
            .ok_or_else(|| invalid(format!("issuer `{}` is not trusted", truncate(iss))))?;
        issuer.verify_signature(&jws).await?;
        issuer.check_claims(&jws.claims, now)?;
        issuer.principal(&jws.claims, now)
    }
}

#[async_trait]
impl IdentityProvider for OidcProvider {
    fn lookup(&self, _user: &str) -> Option<Credential> {
        // Any name not claimed by an earlier provider may present a token; the token must
        // then name that user (checked in `verify_bearer`).
        (!self.issuers.is_empty()).then_some(Credential::Bearer)
    }

    async fn verify_bearer(&self, user: &str, secret: &str) -> Result<Authenticated, AuthError> {
        let a = self.verify_token(secret).await?;
        if a.principal.id != user {
            return Err(invalid(format!(
                "the token identifies `{}`, not `{}`",
                a.principal.id,
                truncate(user)
            )));
        }
        Ok(a)
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        return s.to_string();
    }
    let mut t: String = s.chars().take(80).collect();
    t.push('…');
    t
}

fn now_secs() -> i64 {
    gatehouse_core::time::now_micros() / 1_000_000
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| invalid(format!("malformed token: {what} is not base64url")))
}

/// Split and decode a compact JWS. Nothing here is trusted yet.
fn decode(token: &str) -> Result<Jws<'_>, AuthError> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(invalid("encrypted tokens (JWE) are not accepted")),
        _ => return Err(invalid("not a signed JWT")),
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&b64(parts[0], "header")?).map_err(|_| invalid("malformed token header"))?;
    if header.contains_key("crit") {
        return Err(invalid(
            "token header has critical extensions this gateway does not implement",
        ));
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("token header has no `alg`"))?;
    let alg: CoreJwsSigningAlgorithm =
        serde_json::from_value(Value::String(alg_name.to_string())).map_err(|_| {
            invalid(format!(
                "unsupported signature algorithm `{}`",
                truncate(alg_name)
            ))
        })?;
    if matches!(
        alg,
        CoreJwsSigningAlgorithm::None
            | CoreJwsSigningAlgorithm::HmacSha256
            | CoreJwsSigningAlgorithm::HmacSha384
            | CoreJwsSigningAlgorithm::HmacSha512
    ) {
        return Err(invalid(format!(
            "signature algorithm `{alg_name}` is not accepted"
        )));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(JsonWebKeyId::new(k.clone())),
        Some(_) => return Err(invalid("token header `kid` is not a string")),
    };
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(parts[1], "payload")?).map_err(|_| invalid("malformed token payload"))?;
    let signature = b64(parts[2], "signature")?;
    let signed_len = parts[0].len() + 1 + parts[1].len();
    Ok(Jws {
        alg,
        kid,
        signed: &token.as_bytes()[..signed_len],
        signature,
        claims,
    })
}

fn num(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| invalid(format!("claim `{name}` is not a number"))),
    }
}

/// A claim as a list of strings: an array of strings, or one string split on spaces.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl Issuer {
    fn skew(&self) -> i64 {
        i64::try_from(self.cfg.clock_skew_secs).unwrap_or(i64::MAX / 4)
    }

    async fn verify_signature(self: &Arc<Self>, jws: &Jws<'_>) -> Result<(), AuthError> {
        let keys = self.keys_for(jws.kid.as_ref(), &jws.alg).await?;
        if keys
            .iter()
            .any(|k| k.verify_signature(&jws.alg, jws.signed, &jws.signature).is_ok())
        {
            Ok(())
        } else {
            Err(invalid("signature does not verify"))
        }
    }

    /// The cached keys that fit `kid` and `alg`, and the cache's age.
    fn cached(
        &self,
        kid: Option<&JsonWebKeyId>,
        alg: &CoreJwsSigningAlgorithm,
    ) -> Result<(Vec<CoreJsonWebKey>, Option<Duration>), AuthError> {
        let cache = self
            .keys
            .lock()
            .map_err(|_| AuthError::Unavailable("key cache poisoned".into()))?;
        let found = cache
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.key_id() == kid)
            .filter(|k| usable_for(k, alg))
            .cloned()
            .collect();
        Ok((found, cache.fetched.map(|t| t.elapsed())))
    }

    /// The keys that may have signed a token with `kid` and `alg` (all fitting keys when the
    /// token names none). A `kid` the cache does not know makes it fetch the set again (rate
    /// limited) before answering; an old cache that still has the key answers at once and is
    /// refreshed in the background, so logins do not wait on a slow IdP.
    async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&JsonWebKeyId>,
        alg: &CoreJwsSigningAlgorithm,
    ) -> Result<Vec<CoreJsonWebKey>, AuthError> {
        let max_age = Duration::from_secs(self.cfg.jwks_max_age_secs);
        let too_old = max_age.saturating_mul(2);
        let (mut found, mut age) = self.cached(kid, alg)?;
        let stale = age.is_none_or(|a| a >= max_age);
        if found.is_empty() {
            match self.refresh(false).await {
                // Fetched now, or by another task while this one waited: read it again.
                Ok(()) | Err(FetchError::TooSoon) => (found, age) = self.cached(kid, alg)?,
                Err(FetchError::Failed(e)) => {
                    return Err(AuthError::Unavailable(format!(
                        "cannot fetch the signing keys of `{}`: {e}",
                        self.cfg.issuer.get_ref()
                    )));
                }
            }
        } else if stale && age.is_some_and(|a| a < too_old) {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.refresh(false).await;
            });
        } else if stale {
            // Older than two max ages: refresh before trusting it.
            if self.refresh(false).await.is_ok() {
                (found, age) = self.cached(kid, alg)?;
            }
        }
        match age {
            None => Err(AuthError::Unavailable(format!(
                "the signing keys of `{}` could not be fetched yet",
                self.cfg.issuer.get_ref()
            ))),
            Some(a) if a >= too_old => Err(AuthError::Unavailable(format!(
                "the signing keys of `{}` could not be refreshed for {}s",
                self.cfg.issuer.get_ref(),
                a.as_secs()
            ))),
            Some(_) if found.is_empty() => Err(match kid {
                Some(k) => invalid(format!(
                    "signing key `{}` is not published by the issuer",
                    truncate(k.as_str())
                )),
                None => invalid("no published key fits the token's algorithm"),
            }),
            Some(_) => Ok(found),
        }
    }

    /// Fetch discovery and the key set. `force` skips the rate limit (the first fetch).
    async fn refresh(&self, force: bool) -> Result<(), FetchError> {
        let min = Duration::from_secs(self.cfg.jwks_min_refresh_secs);
        let before = self.attempted();
        let _one = self.fetching.lock().await;
        // Someone else fetched while this task waited: use theirs.
        if self.attempted() != before && !force {
            return match self.keys.lock().map(|c| c.last_error.clone()) {
                Ok(None) => Ok(()),
                Ok(Some(e)) => Err(FetchError::Failed(e)),
                Err(_) => Err(FetchError::Failed("key cache poisoned".into())),
            };
        }
        if !force && before.is_some_and(|t| t.elapsed() < min) {
            return Err(FetchError::TooSoon);
        }
        let result = self.fetch().await;
        let mut cache = self
            .keys
            .lock()
            .map_err(|_| FetchError::Failed("key cache poisoned".into()))?;
        cache.attempted = Some(Instant::now());
        match result {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched = cache.attempted;
                cache.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.issuer.get_ref(), "cannot refresh signing keys: {e}");
                cache.last_error = Some(e.clone());
                Err(FetchError::Failed(e))
            }
        }
    }

    fn attempted(&self) -> Option<Instant> {
        self.keys.lock().ok().and_then(|c| c.attempted)
    }

    async fn fetch(&self) -> Result<Vec<CoreJsonWebKey>, String> {
        let issuer = self.cfg.issuer.get_ref();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let meta: CoreProviderMetadata =
            serde_json::from_slice(&self.get(&url).await?).map_err(|e| format!("discovery document: {e}"))?;
        if meta.issuer().as_str() != issuer {
            return Err(format!(
                "discovery names issuer `{}`, configured `{issuer}`",
                truncate(meta.issuer().as_str())
            ));
        }
        let jwks = meta.jwks_uri().url();
        let loopback = matches!(jwks.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if jwks.scheme() != "https" && !(self.cfg.allow_http && jwks.scheme() == "http" && loopback) {
            return Err(format!("the key set URL `{jwks}` is not https"));
        }
        let jwks_url = jwks.as_str().to_string();
        let set: CoreJsonWebKeySet =
            serde_json::from_slice(&self.get(&jwks_url).await?).map_err(|e| format!("key set: {e}"))?;
        let keys: Vec<CoreJsonWebKey> = set.keys().clone();
        if keys.is_empty() {
            return Err("the key set holds no key this gateway can use".into());
        }
        Ok(keys)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("GET {url}: response larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn check_claims(&self, c: &Map<String, Value>, now: i64) -> Result<(), AuthError> {
        let skew = self.skew();
        let exp = num(c, "exp")?.ok_or_else(|| invalid("no `exp` claim"))?;
        // RFC 7519: acceptable only before `exp` (plus the tolerated skew).
        if now >= exp.saturating_add(skew) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = num(c, "nbf")?
            && now.saturating_add(skew) < nbf
        {
            return Err(invalid("token is not valid yet (`nbf`)"));
        }
        if let Some(iat) = num(c, "iat")?
            && now.saturating_add(skew) < iat
        {
            return Err(invalid("token is issued in the future (`iat`)"));
        }
        let aud = strings(c.get("aud"));
        if !matches!(c.get("aud"), Some(Value::String(_) | Value::Array(_)))
            || !aud.contains(&self.cfg.audience)
        {
            return Err(invalid(format!(
                "token is not for audience `{}`",
                self.cfg.audience
            )));
        }
        Ok(())
    }

    fn principal(&self, c: &Map<String, Value>, now: i64) -> Result<Authenticated, AuthError> {
        let prefix = &self.cfg.name_prefix;
        let sub = c
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("no `sub` claim"))?;
        let client = c.get("client_id").and_then(Value::as_str);
        let self_issued = client == Some(sub);
        // The subject's own name: a client for itself, or a human by the username claim.
        let subject = if self_issued {
            sub.to_string()
        } else {
            c.get(&self.cfg.username_claim)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid(format!("no `{}` claim naming the user", self.cfg.username_claim)))?
                .to_string()
        };
        let mut actors = Vec::new();
        let mut act = c.get("act");
        while let Some(a) = act {
            let name = a
                .get("sub")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("`act` claim without `sub`"))?;
            actors.push(format!("{prefix}{name}"));
            if actors.len() > 8 {
                return Err(invalid("`act` chain deeper than 8"));
            }
            act = a.get("act");
        }
        let groups = strings(c.get(&self.cfg.groups_claim));
        let mut attrs = BTreeMap::new();
        for name in ["email", "name"] {
            if let Some(v) = c.get(name).and_then(Value::as_str) {
                attrs.insert(name.to_string(), v.to_string());
            }
        }
        let principal = if actors.is_empty() {
            Principal {
                kind: if self_issued {
                    PrincipalKind::Agent
                } else {
                    PrincipalKind::User
                },
                id: format!("{prefix}{subject}"),
                groups,
                attrs,
                on_behalf_of: None,
                actor_chain: Vec::new(),
            }
        } else {
            // The current actor acts; the subject is whom it acts for. The groups in the token
            // are the subject's and are not lent to the agent.
            let id = actors.remove(0);
            Principal {
                kind: PrincipalKind::Agent,
                id,
                groups: Vec::new(),
                attrs,
                on_behalf_of: Some(format!("{prefix}{subject}")),
                actor_chain: actors,
            }
        };
        let iat = num(c, "iat")?;
        let exp = num(c, "exp")?.unwrap_or(now);
        // RFC 8176: `mfa` says so outright; otherwise two distinct methods were used.
        let mut amr = strings(c.get("amr"));
        amr.sort();
        amr.dedup();
        let mfa = amr.iter().any(|m| m == "mfa") || amr.len() >= 2;
        let grace = i64::try_from(self.cfg.expiry_grace_secs).unwrap_or(i64::MAX / 4);
        Ok(Authenticated {
            principal,
            auth: AuthInfo {
                method: "oidc".into(),
                token_age_secs: iat.map(|t| (now - t).max(0)).unwrap_or(0),
                mfa,
                expires_at: Some(exp.saturating_add(self.skew()).saturating_add(grace)),
                issuer: Some(self.cfg.issuer.get_ref().clone()),
            },
        })
    }
}

fn usable_for(k: &CoreJsonWebKey, alg: &CoreJwsSigningAlgorithm) -> bool {
    use openidconnect::{JsonWebKeyAlgorithm, JsonWebKeyUse as _, JwsSigningAlgorithm as _};
    if k.key_use().is_some_and(|u| !u.allows_signature()) {
        return false;
    }
    if alg.key_type().as_ref() != Some(k.key_type()) {
        return false;
    }
    match k.signing_alg() {
        JsonWebKeyAlgorithm::Unspecified => true,
        JsonWebKeyAlgorithm::Algorithm(a) => a == alg,
        JsonWebKeyAlgorithm::Unsupported => false,
    }
}

enum FetchError {
    TooSoon,
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::TooSoon => f.write_str("fetched too recently"),
            FetchError::Failed(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
mod tests;
