//! Masking strategies, shared by the gateway (column rules from Cedar `@mask`) and the plugin
//! SDK (content maskers), so both produce the same output for the same value and key.
//!
//! - [`Strategy::Full`]: the value becomes `****` (a fixed string: the length is not revealed).
//! - [`Strategy::Partial`]: every letter and digit but the last 4 becomes `*`, punctuation and
//!   spaces are kept (`4111-1111-1111-1234` → `****-****-****-1234`). Values with fewer than 8
//!   letters and digits are masked completely (keeping 4 of them would reveal too much).
//!   A non-ASCII character counts as one letter and is masked as one `*`.
//! - [`Strategy::Hash`]: a keyed deterministic token, `tok_` followed by 16 lowercase base32
//!   characters (the first 80 bits of HMAC-SHA256(key, value)). The same value under the same
//!   key always gives the same token, so equality joins and `GROUP BY` on masked values still
//!   work, but the value cannot be recovered or brute-forced without the key.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What full masking replaces a value with.
pub const FULL_MASK: &str = "****";
/// The prefix of hash tokens.
pub const TOKEN_PREFIX: &str = "tok_";
/// Number of base32 characters after the prefix (80 bits).
pub const TOKEN_CHARS: usize = 16;

/// A masking strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Full,
    Partial,
    Hash,
}

impl Strategy {
    /// How much of the value a strategy hides: `full` > `hash` > `partial`. When several rules
    /// apply to one value, the one that hides most wins.
    pub fn strength(self) -> u8 {
        match self {
            Strategy::Partial => 1,
            Strategy::Hash => 2,
            Strategy::Full => 3,
        }
    }

    /// The stronger of two strategies.
    pub fn max(self, other: Strategy) -> Strategy {
        if other.strength() > self.strength() {
            other
        } else {
            self
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Full => "full",
            Strategy::Partial => "partial",
            Strategy::Hash => "hash",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Strategy::Full),
            "partial" => Ok(Strategy::Partial),
            "hash" => Ok(Strategy::Hash),
            other => Err(format!(
                "unknown masking strategy `{other}` (expected full, partial or hash)"
            )),
        }
    }
}

/// `****`.
pub fn full() -> Vec<u8> {
    FULL_MASK.as_bytes().to_vec()
}

/// Partial masking (keep the last 4 letters/digits), appended to `out`.
pub fn partial_into(value: &[u8], out: &mut Vec<u8>) {
    // Count maskable characters: ASCII letters/digits and non-ASCII characters (by their
    // leading byte; continuation bytes 0x80..=0xBF are not counted).
    let maskable = |b: u8| b.is_ascii_alphanumeric() || b >= 0xC0;
    let total = value.iter().filter(|&&b| maskable(b)).count();
    let keep = if total >= 8 { 4 } else { 0 };
    let mask_first = total - keep;
    let mut seen = 0;
    out.reserve(value.len());
    for &b in value {
        if (0x80..0xC0).contains(&b) {
            // Continuation byte: belongs to the previous character.
            if seen > mask_first {
                out.push(b);
            }
            continue;
        }
        if maskable(b) {
            seen += 1;
            if seen > mask_first {
                out.push(b);
            } else {
                out.push(b'*');
            }
        } else {
            out.push(b);
        }
    }
}

/// Partial masking (keep the last 4 letters/digits).
pub fn partial(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    partial_into(value, &mut out);
    out
}

/// Keyed deterministic tokens (HMAC-SHA256), for [`Strategy::Hash`].
#[derive(Clone)]
pub struct Tokenizer {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokenizer { key: <redacted> }")
    }
}

impl Tokenizer {
    /// A tokenizer with this key. The key must not be empty.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.is_empty() {
            return Err("the hash key is empty".to_owned());
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| format!("bad hash key: {e}"))?;
        Ok(Tokenizer { mac })
    }

    /// The token of `value`, appended to `out`: `tok_` + 16 base32 characters.
    pub fn token_into(&self, value: &[u8], out: &mut Vec<u8>) {
        let mut mac = self.mac.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        out.extend_from_slice(TOKEN_PREFIX.as_bytes());
        base32_into(&digest[..TOKEN_CHARS * 5 / 8], out);
    }

    /// The token of `value`.
    pub fn token(&self, value: &[u8]) -> String {
        let mut out = Vec::with_capacity(TOKEN_PREFIX.len() + TOKEN_CHARS);
        self.token_into(value, &mut out);
        // Only ASCII was written.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// RFC 4648 base32, lowercase, no padding, appended to `out`.
pub fn base32_into(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize]);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize]);
    }
}

/// Applies any of the strategies; [`Strategy::Hash`] needs a key (see [`Masker::new`]).
#[derive(Debug, Clone)]
pub struct Masker {
    tokenizer: Option<Tokenizer>,
}

impl Masker {
    /// A masker; `hash_key` is required if the hash strategy will be used.
    pub fn new(hash_key: Option<&[u8]>) -> Result<Self, String> {
        let tokenizer = hash_key.map(Tokenizer::new).transpose()?;
        Ok(Masker { tokenizer })
    }

    /// Whether [`Strategy::Hash`] is available.
    pub fn can_hash(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// Masks `value` with `strategy`, appending the result to `out`. Without a key, `Hash`
    /// falls back to `Full` (never to the clear value).
    pub fn mask_into(&self, strategy: Strategy, value: &[u8], out: &mut Vec<u8>) {
        match (strategy, &self.tokenizer) {
            (Strategy::Partial, _) => partial_into(value, out),
            (Strategy::Hash, Some(t)) => t.token_into(value, out),
            (Strategy::Full, _) | (Strategy::Hash, None) => out.extend_from_slice(FULL_MASK.as_bytes()),
        }
    }

    /// Masks `value` with `strategy`.
    pub fn mask(&self, strategy: Strategy, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len().max(TOKEN_PREFIX.len() + TOKEN_CHARS));
        self.mask_into(strategy, value, &mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn partial_keeps_last_four_and_punctuation() {
        assert_eq!(partial(b"4111-1111-1111-1234"), b"****-****-****-1234");
        assert_eq!(partial(b"123-45-6789"), b"***-**-6789");
        assert_eq!(partial(b"short"), b"*****");
        assert_eq!(partial(b"10.0.0.1"), b"**.*.*.*");
        assert_eq!(partial("Jos\u{e9}Mar\u{ed}aXYZW".as_bytes()), b"*********XYZW");
        assert_eq!(partial("abcdefgh\u{e9}".as_bytes()), "*****fgh\u{e9}".as_bytes());
    }

    #[test]
    fn tokens_are_deterministic_and_keyed() {
        let a = Tokenizer::new(b"k1").unwrap();
        let b = Tokenizer::new(b"k2").unwrap();
        let t = a.token(b"alice@example.com");
        assert_eq!(t, a.token(b"alice@example.com"));
        assert_ne!(t, a.token(b"bob@example.com"));
        assert_ne!(t, b.token(b"alice@example.com"));
        assert!(t.starts_with("tok_"));
        assert_eq!(t.len(), 4 + 16);
        assert!(
            t[4..]
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        assert!(Tokenizer::new(b"").is_err());
    }

    #[test]
    fn base32_matches_rfc4648() {
        let enc = |s: &[u8]| {
            let mut o = Vec::new();
            base32_into(s, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(enc(b"f"), "my");
        assert_eq!(enc(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn masker_without_key_never_reveals() {
        let m = Masker::new(None).unwrap();
        assert_eq!(m.mask(Strategy::Hash, b"secret"), b"****");
        assert_eq!(m.mask(Strategy::Full, b"secret"), b"****");
        assert_eq!("hash".parse::<Strategy>().unwrap(), Strategy::Hash);
        assert!("nope".parse::<Strategy>().is_err());
    }
}
