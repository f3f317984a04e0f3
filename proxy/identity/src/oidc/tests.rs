//! Token checks against a key set served over HTTP by the test (Ed25519 keys made here). The
//! conformance suite runs the same provider against a real OpenID Provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

struct Key {
    kid: String,
    pair: Ed25519KeyPair,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Key {
            kid: kid.into(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())})
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}), claims)
    }

    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = self.pair.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// A minimal issuer: discovery and a key set the test can change, counting key-set requests.
struct Idp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Idp {
    async fn start(keys: &[&Key]) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        });
        let (j, f, u) = (jwks.clone(), fetches.clone(), up.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (j, f, u, discovery) = (j.clone(), f.clone(), u.clone(), discovery.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (status, body) = if !u.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "{}".to_string())
                    } else if path == "/.well-known/openid-configuration" {
                        ("200 OK", discovery.to_string())
                    } else if path == "/jwks" {
                        f.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", j.lock().unwrap().to_string())
                    } else {
                        ("404 Not Found", "{}".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Idp {
            issuer,
            jwks,
            fetches,
            up,
        }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.jwks.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }

    fn provider(&self, tweak: impl FnOnce(&mut OidcConfig)) -> OidcProvider {
        let mut cfg: OidcConfig = toml::from_str(&format!(
            "issuer = \"{}\"\naudience = \"gatehouse\"\nallow_http = true\nusername_claim = \"preferred_username\"\njwks_min_refresh_secs = 1\n",
            self.issuer
        ))
        .unwrap();
        tweak(&mut cfg);
        OidcProvider::from_config(&[cfg]).unwrap()
    }

    fn claims(&self, extra: Value) -> Value {
        let now = now_secs();
        let mut c = json!({"iss": self.issuer, "aud": "gatehouse", "sub": "u-123",
            "preferred_username": "alice", "groups": ["dba", "oncall"], "iat": now, "exp": now + 300,
            "email": "alice@example.com", "amr": ["pwd", "otp"]});
        if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
            for (k, v) in e {
                if v.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, v);
                }
            }
        }
        c
    }
}

fn why(r: Result<Authenticated, AuthError>) -> String {
    match r {
        Ok(a) => panic!("accepted: {:?}", a.principal),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_valid_user_token_names_the_user_with_groups_and_expiry() {
    let k = Key::new("k1");
    let idp = Idp::start(&[&k]).await;
    let p = idp.provider(|c| c.expiry_grace_secs = 60);
    let claims = idp.claims(json!({}));
    let a = p.verify_bearer("alice", &k.sign(&claims)).await.unwrap();
    assert_eq!(a.principal.kind, PrincipalKind::User);
    assert_eq!(a.principal.id, "alice");
    assert_eq!(a.principal.groups, vec!["dba", "oncall"]);
    assert_eq!(
        a.principal.attrs.get("email").map(String::as_str),
        Some("alice@example.com")
    );
    assert_eq!(a.auth.method, "oidc");
    assert!(a.auth.mfa, "pwd + otp: two factors");
    let one = p
        .verify_token(&k.sign(&idp.claims(json!({"amr": ["otp"]}))))
        .await
        .unwrap();
    assert!(!one.auth.mfa, "one method alone is one factor");
    assert_eq!(a.auth.issuer.as_deref(), Some(idp.issuer.as_str()));
    let exp = claims["exp"].as_i64().unwrap();
    assert_eq!(a.auth.expires_at, Some(exp + 30 + 60), "exp + skew + grace");
    // The token names alice; it does not let anyone connect as bob.
    assert!(why(p.verify_bearer("bob", &k.sign(&claims)).await).contains("identifies `alice`, not `bob`"));
    // A missing groups claim is no groups, not an error.
    let a = p
        .verify_token(&k.sign(&idp.claims(json!({"groups": null}))))
        .await
        .unwrap();
    assert!(a.principal.groups.is_empty());
    // A space-separated string is a list too.
    let a = p
        .verify_token(&k.sign(&idp.claims(json!({"groups": "a b"}))))
        .await
        .unwrap();
    assert_eq!(a.principal.groups, vec!["a", "b"]);
}

#[tokio::test]
async fn client_tokens_are_agents_and_act_makes_a_delegated_agent() {
    let k = Key::new("k1");
    let idp = Idp::start(&[&k]).await;
    let p = idp.provider(|_| {});
    let a = p
        .verify_token(
            &k.sign(&idp.claims(json!({"sub": "report-bot", "client_id": "report-bot",
            "preferred_username": null, "groups": ["agents"]}))),
        )
        .await
        .unwrap();
    assert_eq!(
        (a.principal.kind, a.principal.id.as_str()),
        (PrincipalKind::Agent, "report-bot")
    );
    assert_eq!(a.principal.groups, vec!["agents"]);

    let a = p
        .verify_token(
            &k.sign(&idp.claims(json!({"act": {"sub": "copilot", "act": {"sub": "orchestrator"}}}))),
        )
        .await
        .unwrap();
    assert_eq!(a.principal.kind, PrincipalKind::Agent);
    assert_eq!(a.principal.id, "copilot");
    assert_eq!(a.principal.on_behalf_of.as_deref(), Some("alice"));
    assert_eq!(a.principal.actor_chain, vec!["orchestrator"]);
    assert!(
        a.principal.groups.is_empty(),
        "the human's groups are not lent to the agent"
    );
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"act": {"client": "x"}}))))
            .await)
        .contains("`act` claim without `sub`")
    );
}

#[tokio::test]
async fn time_audience_and_issuer_are_checked() {
    let k = Key::new("k1");
    let idp = Idp::start(&[&k]).await;
    let p = idp.provider(|c| c.clock_skew_secs = 30);
    let now = now_secs();
    let expired = k.sign(&idp.claims(json!({"exp": now - 31})));
    assert!(matches!(p.verify_token(&expired).await, Err(AuthError::Expired)));
    // Within the skew it still counts.
    assert!(
        p.verify_token(&k.sign(&idp.claims(json!({"exp": now - 20}))))
            .await
            .is_ok()
    );
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"nbf": now + 120}))))
            .await)
        .contains("not valid yet")
    );
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"iat": now + 120}))))
            .await)
        .contains("in the future")
    );
    assert!(why(p.verify_token(&k.sign(&idp.claims(json!({"exp": null})))).await).contains("no `exp`"));
    assert!(why(p.verify_token(&k.sign(&idp.claims(json!({"exp": "soon"})))).await).contains("not a number"));
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"aud": "other"}))))
            .await)
        .contains("audience")
    );
    assert!(
        p.verify_token(&k.sign(&idp.claims(json!({"aud": ["other", "gatehouse"]}))))
            .await
            .is_ok()
    );
    assert!(why(p.verify_token(&k.sign(&idp.claims(json!({"aud": null})))).await).contains("audience"));
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"iss": "https://evil.example"}))))
            .await)
        .contains("not trusted")
    );
    assert!(
        why(p
            .verify_token(&k.sign(&idp.claims(json!({"preferred_username": null}))))
            .await)
        .contains("no `preferred_username` claim")
    );
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let k = Key::new("k1");
    let idp = Idp::start(&[&k]).await;
    let p = idp.provider(|_| {});
    let good = k.sign(&idp.claims(json!({})));
    assert!(p.verify_token(&good).await.is_ok());
    let parts: Vec<&str> = good.split('.').collect();

    // alg none, with and without a signature.
    let none = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string());
    for t in [
        format!("{none}.{}.", parts[1]),
        format!("{none}.{}.{}", parts[1], parts[2]),
    ] {
        assert!(why(p.verify_token(&t).await).contains("`none` is not accepted"));
    }
    // HS256 keyed with the public key (algorithm confusion).
    let hs = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "k1"}).to_string());
    assert!(
        why(p.verify_token(&format!("{hs}.{}.{}", parts[1], parts[2])).await)
            .contains("`HS256` is not accepted")
    );
    // A changed payload (another user) under the original signature.
    let mut forged = idp.claims(json!({}));
    forged["preferred_username"] = json!("root");
    let body = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert!(
        why(p.verify_token(&format!("{}.{body}.{}", parts[0], parts[2])).await)
            .contains("signature does not verify")
    );
    // Signed by a key the issuer never published, claiming a published kid.
    let stranger = Key::new("k1");
    assert!(
        why(p.verify_token(&stranger.sign(&idp.claims(json!({})))).await)
            .contains("signature does not verify")
    );
    // Encrypted, critical extensions, garbage.
    assert!(why(p.verify_token("a.b.c.d.e").await).contains("JWE"));
    let crit = k.sign_with_header(
        &json!({"alg": "EdDSA", "kid": "k1", "crit": ["exp"]}),
        &idp.claims(json!({})),
    );
    assert!(why(p.verify_token(&crit).await).contains("critical"));
    assert!(why(p.verify_token("not a token").await).contains("not a signed JWT"));
    assert!(why(p.verify_token("!!.??.**").await).contains("base64url"));
    assert!(why(p.verify_token(&"a.".repeat(10_000)).await).contains("too long"));
}

#[tokio::test]
async fn rotation_is_picked_up_and_unknown_kids_are_rate_limited() {
    let k1 = Key::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let p = idp.provider(|c| c.jwks_min_refresh_secs = 2);
    assert!(p.warm().await.is_empty());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    // Made-up key ids within the interval after a fetch cost no fetch at all; after it, the
    // first costs one and the rest none.
    let bogus = Key::new("nope");
    for _ in 0..20 {
        assert!(
            why(p.verify_token(&bogus.sign(&idp.claims(json!({})))).await)
                .contains("`nope` is not published")
        );
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..20 {
        assert!(
            why(p.verify_token(&bogus.sign(&idp.claims(json!({})))).await)
                .contains("`nope` is not published")
        );
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    // The IdP rotates to k2 and drops k1: after the interval a k2 token is accepted and
    // k1 tokens are not.
    let k2 = Key::new("k2");
    idp.publish(&[&k2]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let a = p.verify_token(&k2.sign(&idp.claims(json!({})))).await.unwrap();
    assert_eq!(a.principal.id, "alice");
    assert!(why(p.verify_token(&k1.sign(&idp.claims(json!({})))).await).contains("`k1` is not published"));
}

#[tokio::test]
async fn an_unreachable_idp_lets_no_unverifiable_token_in() {
    let k1 = Key::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let p = idp.provider(|c| {
        c.jwks_min_refresh_secs = 1;
        c.jwks_max_age_secs = 2;
    });
    // Never fetched and the IdP is down: unavailable, not accepted.
    idp.up.store(false, Ordering::SeqCst);
    let r = p.verify_token(&k1.sign(&idp.claims(json!({})))).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
    idp.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(p.verify_token(&k1.sign(&idp.claims(json!({})))).await.is_ok());

    // Down again: the cached key works while the cache is younger than two max ages, then
    // nothing does.
    idp.up.store(false, Ordering::SeqCst);
    let k2 = Key::new("k2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(p.verify_token(&k1.sign(&idp.claims(json!({})))).await.is_ok());
    let r = p.verify_token(&k2.sign(&idp.claims(json!({})))).await;
    assert!(
        matches!(r, Err(AuthError::Unavailable(_) | AuthError::InvalidToken(_))),
        "{r:?}"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = p.verify_token(&k1.sign(&idp.claims(json!({})))).await;
    assert!(matches!(r, Err(AuthError::Unavailable(_))), "{r:?}");
}
