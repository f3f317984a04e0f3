//! What an OIDC login costs the gateway: verifying one token (parse, key lookup in the cached
//! set, signature, claims, principal) for the three signature families IdPs use. Keys are made
//! here (RSA 2048 by `openssl genpkey`, P-256 and Ed25519 by ring) and preloaded, so no IdP is
//! involved. Run: `cargo bench -p gatehouse-identity --bench verify` (release).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_core::config::OidcConfig;
use gatehouse_identity::OidcProvider;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";

fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let now = gatehouse_core::time::now_micros() / 1_000_000;
    let h = B64.encode(json!({"alg": alg, "typ": "at+jwt", "kid": kid}).to_string());
    let p = B64.encode(
        json!({"iss": ISSUER, "aud": "urn:gatehouse", "sub": "erin", "preferred_username": "erin",
               "client_id": "gatehouse-cli", "groups": ["engineering", "oncall"], "iat": now,
               "exp": now + 3600, "amr": ["pwd", "otp"]})
        .to_string(),
    );
    let sig = sign(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", B64.encode(sig))
}

fn verify(c: &mut Criterion) {
    let rng = SystemRandom::new();
    // RSA 2048 (RS256), the most common IdP key.
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let der = dir.join("rsa.der");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&der)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey failed");
    // PKCS#8 or the traditional RSAPrivateKey, depending on the OpenSSL version.
    let bytes = std::fs::read(&der).unwrap();
    let rsa = signature::RsaKeyPair::from_pkcs8(&bytes)
        .or_else(|_| signature::RsaKeyPair::from_der(&bytes))
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let strip = |b: &[u8]| b.iter().skip_while(|&&x| x == 0).copied().collect::<Vec<u8>>();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig",
        "n": B64.encode(strip(&parts.n)), "e": B64.encode(strip(&parts.e))});
    // P-256 (ES256).
    let es_pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let es = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        es_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = es.public_key().as_ref();
    let es_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "use": "sig",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])});
    // Ed25519 (EdDSA).
    let ed_pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = signature::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "use": "sig",
        "x": B64.encode(ed.public_key().as_ref())});

    let cfg: OidcConfig = toml::from_str(&format!(
        "issuer = \"{ISSUER}\"\naudience = \"urn:gatehouse\"\nusername_claim = \"preferred_username\"\n"
    ))
    .unwrap();
    let provider = OidcProvider::from_config(&[cfg]).unwrap();
    provider
        .preload_keys(ISSUER, &json!({"keys": [rsa_jwk, es_jwk, ed_jwk]}).to_string())
        .unwrap();

    let tokens = [
        (
            "RS256",
            token("RS256", "rsa", |m| {
                let mut sig = vec![0; rsa.public().modulus_len()];
                rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig).unwrap();
                sig
            }),
        ),
        (
            "ES256",
            token("ES256", "ec", |m| es.sign(&rng, m).unwrap().as_ref().to_vec()),
        ),
        ("EdDSA", token("EdDSA", "ed", |m| ed.sign(m).as_ref().to_vec())),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("oidc_verify");
    for (alg, t) in &tokens {
        // Sanity: the token is accepted before it is timed.
        let a = rt.block_on(provider.verify_token(t)).unwrap();
        assert_eq!(a.principal.id, "erin");
        g.bench_function(*alg, |b| {
            b.iter(|| rt.block_on(provider.verify_token(t)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
