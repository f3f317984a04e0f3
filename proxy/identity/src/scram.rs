//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: verifiers in PostgreSQL's
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` format, the server side of the
//! exchange (clients authenticating to Gatehouse) and the client side (Gatehouse authenticating
//! to an upstream server).
//!
//! Passwords are used as given. PostgreSQL's clients apply SASLprep, which leaves ASCII
//! unchanged; non-ASCII keys must already be in normalized form.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM verifier")]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
    #[error("invalid proof")]
    InvalidProof,
    #[error("server signature mismatch")]
    ServerSignature,
}

/// A stored SCRAM-SHA-256 verifier: enough to check a proof, not enough to log in elsewhere.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut out = [0u8; 32];
    if let Ok(mut mac) = HmacSha256::new_from_slice(key) {
        mac.update(msg);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

fn b64_32(s: &str) -> Result<[u8; 32], ScramError> {
    let v = B64.decode(s).map_err(|_| ScramError::BadVerifier)?;
    v.try_into().map_err(|_| ScramError::BadVerifier)
}

impl ScramVerifier {
    /// Derive a verifier for `password` with a random salt.
    pub fn generate(password: &str) -> ScramVerifier {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::derive(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        }
    }

    /// Whether `password` is the secret this verifier was derived from (constant-time compare;
    /// costs one PBKDF2 run of `iterations`). For secrets presented in the clear over a
    /// protected channel, e.g. the admin API's Basic authentication.
    pub fn matches(&self, password: &str) -> bool {
        let other = Self::derive(password, &self.salt, self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key) & other.server_key.ct_eq(&self.server_key))
    }

    /// Parse PostgreSQL's verifier text.
    pub fn parse(s: &str) -> Result<ScramVerifier, ScramError> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        Ok(ScramVerifier {
            iterations,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: b64_32(stored)?,
            server_key: b64_32(server)?,
        })
    }

    /// A verifier for an unknown user, derived from the name and a per-process secret, so a
    /// failed exchange for an unknown user looks like one for a known user with a wrong key.
    pub fn mock(user: &str, secret: &[u8; 32]) -> ScramVerifier {
        let salt = hmac(secret, user.as_bytes());
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..16).map(<[u8]>::to_vec).unwrap_or_default(),
            stored_key: hmac(secret, b"stored"),
            server_key: hmac(secret, b"server"),
        }
    }
}

impl std::fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

fn attr(part: Option<&str>, key: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Protocol("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(key) || chars.next() != Some('=') {
        return Err(ScramError::Protocol("unexpected attribute"));
    }
    Ok(part.get(2..).unwrap_or(""))
}

/// Server side of one exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// `false` for a mocked exchange: always fails at the proof check.
    real: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier, real: bool) -> Self {
        ScramServer {
            verifier,
            real,
            client_first_bare: String::new(),
            server_first: String::new(),
            nonce: String::new(),
        }
    }

    /// Handle client-first-message; returns server-first-message.
    pub fn client_first(&mut self, msg: &str) -> Result<String, ScramError> {
        // gs2-header: "n,," (no channel binding) or "y,," (client supports it, server doesn't).
        let mut parts = msg.splitn(3, ',');
        let cbind = parts.next().ok_or(ScramError::Protocol("empty message"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Protocol("bad gs2 header")),
        }
        let authzid = parts.next().ok_or(ScramError::Protocol("bad gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Protocol("authorization identity not supported"));
        }
        let bare = parts
            .next()
            .ok_or(ScramError::Protocol("missing client-first-bare"))?;
        let mut attrs = bare.split(',');
        // PostgreSQL ignores the SCRAM user name (the startup packet names the user).
        let _user = attr(attrs.next(), 'n')?;
        let cnonce = attr(attrs.next(), 'r')?;
        if cnonce.is_empty() || !cnonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(ScramError::Protocol("bad client nonce"));
        }
        self.client_first_bare = bare.to_string();
        self.nonce = format!("{cnonce}{}", nonce());
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone())
    }

    /// Handle client-final-message; returns server-final-message on success.
    pub fn client_final(&mut self, msg: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attr(attrs.next(), 'c')?;
        if cbind != "biws" && cbind != "eSws" {
            // "n,," or "y,," base64-encoded; anything else claims channel binding.
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attr(attrs.next(), 'r')?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Protocol("bad proof encoding"))?;
        if proof.len() != 32 {
            return Err(ScramError::Protocol("bad proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (i, k) in client_key.iter_mut().enumerate() {
            *k = proof.get(i).copied().unwrap_or(0) ^ client_signature.get(i).copied().unwrap_or(0);
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let ok: bool = computed.ct_eq(&self.verifier.stored_key).into();
        if !ok || !self.real {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Client side of one exchange (Gatehouse → upstream PostgreSQL).
pub struct ScramClient {
    password: String,
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        let client_nonce = nonce();
        ScramClient {
            password: password.to_string(),
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            expected_server_signature: None,
        }
    }

    /// client-first-message (no channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Handle server-first-message; returns client-final-message.
    pub fn server_first(&mut self, msg: &str) -> Result<String, ScramError> {
        let mut attrs = msg.split(',');
        let nonce = attr(attrs.next(), 'r')?;
        let salt = B64
            .decode(attr(attrs.next(), 's')?)
            .map_err(|_| ScramError::Protocol("bad salt"))?;
        let iterations: u32 = attr(attrs.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Protocol("bad iteration count"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Nonce);
        }
        if iterations == 0 {
            return Err(ScramError::Protocol("bad iteration count"));
        }
        let salted = salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for (i, p) in proof.iter_mut().enumerate() {
            *p = client_key.get(i).copied().unwrap_or(0) ^ client_signature.get(i).copied().unwrap_or(0);
        }
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Check server-final-message.
    pub fn server_final(&self, msg: &str) -> Result<(), ScramError> {
        let sig = msg
            .strip_prefix("v=")
            .ok_or(ScramError::Protocol("server error or bad final message"))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| ScramError::Protocol("bad signature"))?;
        match &self.expected_server_signature {
            Some(expected) if bool::from(expected.as_slice().ct_eq(&sig)) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn verifier_roundtrip() {
        let v = ScramVerifier::generate("s3cret");
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
        assert!(ScramVerifier::parse("md5abc").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AAAA$AAAA:AAAA").is_err());
    }

    #[test]
    fn client_and_server_agree() {
        let v = ScramVerifier::generate("pencil");
        let mut server = ScramServer::new(v, true);
        let mut client = ScramClient::new("pencil");
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        let fin = server.client_final(&cf).unwrap();
        client.server_final(&fin).unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        let v = ScramVerifier::generate("pencil");
        let mut server = ScramServer::new(v, true);
        let mut client = ScramClient::new("crayon");
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        assert_eq!(server.client_final(&cf), Err(ScramError::InvalidProof));
    }

    #[test]
    fn mock_exchange_always_fails() {
        let v = ScramVerifier::mock("nobody", &[7u8; 32]);
        let mut server = ScramServer::new(v, false);
        let mut client = ScramClient::new("anything");
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        assert_eq!(server.client_final(&cf), Err(ScramError::InvalidProof));
    }

    #[test]
    fn rfc7677_vector() {
        // RFC 7677 §3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::derive("pencil", &salt, 4096);
        let mut server = ScramServer::new(v, true);
        server.client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        // Force the RFC's server nonce so the vector applies.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let fin = server
            .client_final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(fin, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn rejects_channel_binding_and_garbage() {
        let mut server = ScramServer::new(ScramVerifier::generate("x"), true);
        assert_eq!(
            server.client_first("p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        assert!(server.client_first("garbage").is_err());
        assert!(server.client_first("n,,n=,r=").is_err());
        assert!(server.client_final("c=biws,r=x").is_err());
    }
}
