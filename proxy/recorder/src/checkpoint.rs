//! Signed checkpoints: ed25519 signatures over the chain head.
//!
//! # What is signed (checkpoint format v1)
//!
//! A checkpoint pins the chain after event `seq`: its `hash` is that event's hash. The signed
//! message is this UTF-8 text, each line ending with `\n` (no trailing spaces):
//!
//! ```text
//! gatehouse-checkpoint-v1
//! seq:<seq, decimal>
//! hash:<the event's hash, 64 lowercase hex digits>
//! time_us:<when the checkpoint was made, µs since the Unix epoch, decimal>
//! key_id:<key id>
//! ```
//!
//! The signature is plain Ed25519 (RFC 8032, not prehashed) over those bytes, stored as 128
//! hex digits. Anyone with the public key can check one without Gatehouse, e.g. with OpenSSL 3:
//! `openssl pkeyutl -verify -pubin -inkey audit.pub.pem -rawin -in msg -sigfile sig.bin`.
//!
//! # Keys
//!
//! Private keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as written by
//! `gatehouse audit keygen` or `openssl genpkey -algorithm ed25519`); public keys are SPKI PEM
//! (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`). A key's id is `ed25519:` followed by
//! the first 16 hex digits of the SHA-256 of its 32 raw public-key bytes, so it is derived, never
//! configured, and cannot disagree with the key. Rotation: configure the new private key;
//! checkpoints name the key that signed them, and verifiers are given every public key in use.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One signed checkpoint, as stored (JSON) in the log's `checkpoints` column family and in
/// bundles' `checkpoints.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last event covered.
    pub seq: u64,
    /// That event's hash (hex).
    pub hash: String,
    pub time_us: i64,
    pub key_id: String,
    /// Ed25519 signature over [`Checkpoint::message`], hex.
    pub signature: String,
}

/// Name of the checkpoint format (first line of the signed message).
pub const CHECKPOINT_FORMAT: &str = "gatehouse-checkpoint-v1";

impl Checkpoint {
    /// The exact bytes the signature covers.
    pub fn message(&self) -> Vec<u8> {
        signed_message(self.seq, &self.hash, self.time_us, &self.key_id)
    }
}

fn signed_message(seq: u64, hash: &str, time_us: i64, key_id: &str) -> Vec<u8> {
    format!("{CHECKPOINT_FORMAT}\nseq:{seq}\nhash:{hash}\ntime_us:{time_us}\nkey_id:{key_id}\n").into_bytes()
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The id of a raw 32-byte Ed25519 public key.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    format!("ed25519:{}", hex::encode(digest.get(..8).unwrap_or_default()))
}

/// Decode the single PEM block labelled `label` in `text`.
fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("not a PEM `{label}` (no `{begin}` line)"))?;
    let body_start = start + begin.len();
    let rest = text.get(body_start..).unwrap_or_default();
    let stop = rest
        .find(&end)
        .ok_or_else(|| format!("PEM `{label}` has no `{end}` line"))?;
    let b64: String = rest
        .get(..stop)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM `{label}` is not valid base64: {e}"))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The private key that signs checkpoints.
pub struct CheckpointSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Load a PKCS#8 PEM Ed25519 private key. Errors never contain key material.
    pub fn from_pem(text: &str) -> Result<CheckpointSigner, String> {
        let der = pem_decode(text, "PRIVATE KEY")?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| "the private key is not a PKCS#8 Ed25519 key".to_string())?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(CheckpointSigner { pair, key_id })
    }

    /// A new random key: `(private PKCS#8 PEM, public SPKI PEM, key id)`.
    pub fn generate() -> Result<(String, String, String), String> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| "the system random number generator failed".to_string())?;
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let private = pem_encode("PRIVATE KEY", &der);
        let signer = CheckpointSigner::from_pem(&private)?;
        Ok((private, signer.public_pem(), signer.key_id))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        pem_encode("PUBLIC KEY", &der)
    }

    /// Sign the chain head after `seq`.
    pub fn checkpoint(&self, seq: u64, hash: &[u8; 32], time_us: i64) -> Checkpoint {
        let hash = hex::encode(hash);
        let sig = self.pair.sign(&signed_message(seq, &hash, time_us, &self.key_id));
        Checkpoint {
            seq,
            hash,
            time_us,
            key_id: self.key_id.clone(),
            signature: hex::encode(sig.as_ref()),
        }
    }

    /// Sign arbitrary bytes (a bundle manifest); the signature as hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys {
    keys: BTreeMap<String, [u8; 32]>,
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No trusted key has this id.
    UnknownKey,
    /// The signature is malformed or does not match.
    Invalid,
}

impl PublicKeys {
    /// Add an SPKI PEM public key; returns its id.
    pub fn add_pem(&mut self, text: &str) -> Result<String, String> {
        let der = pem_decode(text, "PUBLIC KEY")?;
        let raw: [u8; 32] = der
            .strip_prefix(SPKI_PREFIX.as_slice())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| "the public key is not an Ed25519 SubjectPublicKeyInfo".to_string())?;
        let id = key_id(&raw);
        self.keys.insert(id.clone(), raw);
        Ok(id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Check a hex signature by key `key_id` over `message`.
    pub fn verify(&self, key_id: &str, message: &[u8], signature_hex: &str) -> Result<(), SignatureError> {
        let key = self.keys.get(key_id).ok_or(SignatureError::UnknownKey)?;
        let sig = hex::decode(signature_hex).map_err(|_| SignatureError::Invalid)?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(message, &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    /// Check a checkpoint's signature.
    pub fn verify_checkpoint(&self, cp: &Checkpoint) -> Result<(), SignatureError> {
        self.verify(&cp.key_id, &cp.message(), &cp.signature)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_name_themselves() {
        let (private, public, id) = CheckpointSigner::generate().unwrap();
        let signer = CheckpointSigner::from_pem(&private).unwrap();
        assert_eq!(signer.key_id(), id);
        assert!(id.starts_with("ed25519:") && id.len() == "ed25519:".len() + 16);
        let mut keys = PublicKeys::default();
        assert_eq!(keys.add_pem(&public).unwrap(), id);
        let cp = signer.checkpoint(42, &[9u8; 32], 1_700_000_000_000_000);
        assert_eq!(
            String::from_utf8(cp.message()).unwrap(),
            format!(
                "gatehouse-checkpoint-v1\nseq:42\nhash:{}\ntime_us:1700000000000000\nkey_id:{id}\n",
                "09".repeat(32)
            )
        );
        keys.verify_checkpoint(&cp).unwrap();

        let mut forged = cp.clone();
        forged.seq = 41;
        assert_eq!(keys.verify_checkpoint(&forged), Err(SignatureError::Invalid));
        let mut other = cp.clone();
        other.key_id = "ed25519:0000000000000000".into();
        assert_eq!(keys.verify_checkpoint(&other), Err(SignatureError::UnknownKey));
        let mut garbage = cp;
        garbage.signature = "zz".into();
        assert_eq!(keys.verify_checkpoint(&garbage), Err(SignatureError::Invalid));
    }

    #[test]
    fn bad_pem_is_refused_without_echoing_it() {
        let err =
            CheckpointSigner::from_pem("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(PublicKeys::default().add_pem("nonsense").is_err());
        let (_, public, _) = CheckpointSigner::generate().unwrap();
        assert!(CheckpointSigner::from_pem(&public).is_err());
    }
}
