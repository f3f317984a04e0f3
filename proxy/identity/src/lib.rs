//! Who is connecting. Turns a presented secret into a verified [`Principal`].
//!
//! Protocol crates never check secrets themselves: they ask an [`IdentityProvider`] how a user
//! must authenticate ([`IdentityProvider::lookup`]) and either run the SCRAM exchange from
//! [`scram`] against the returned verifier, or hand a cleartext secret (a bearer token) to
//! [`IdentityProvider::verify_bearer`]. OIDC plugs in as another provider without touching
//! protocol code.

pub mod login;
pub mod oidc;
pub mod scram;
mod static_keys;

use async_trait::async_trait;
use gatehouse_core::{AuthInfo, Principal};

pub use oidc::OidcProvider;
pub use static_keys::StaticKeys;

/// How a user must prove who they are.
#[derive(Debug, Clone)]
pub enum Credential {
    /// SCRAM-SHA-256 against a stored verifier; the principal is who they become on success.
    Scram {
        verifier: scram::ScramVerifier,
        principal: Box<Principal>,
    },
    /// A secret sent in cleartext over TLS (a bearer token), checked by
    /// [`IdentityProvider::verify_bearer`].
    Bearer,
}

/// A verified identity with the way it was verified.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub auth: AuthInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown identity")]
    UnknownIdentity,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("credential expired")]
    Expired,
    /// A token that is malformed, untrusted or not for this gateway; says why.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

/// A source of identities. Implementations must be cheap to query per connection.
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// How `user` must authenticate; `None` if this provider does not know the user.
    fn lookup(&self, user: &str) -> Option<Credential>;

    /// Verify a cleartext secret (bearer token) presented for `user`.
    async fn verify_bearer(&self, user: &str, secret: &str) -> Result<Authenticated, AuthError>;
}

/// Several providers asked in order; the first that knows a user answers for it.
pub struct ChainProvider {
    providers: Vec<std::sync::Arc<dyn IdentityProvider>>,
}

impl ChainProvider {
    pub fn new(providers: Vec<std::sync::Arc<dyn IdentityProvider>>) -> Self {
        ChainProvider { providers }
    }
}

#[async_trait]
impl IdentityProvider for ChainProvider {
    fn lookup(&self, user: &str) -> Option<Credential> {
        self.providers.iter().find_map(|p| p.lookup(user))
    }

    async fn verify_bearer(&self, user: &str, secret: &str) -> Result<Authenticated, AuthError> {
        for p in &self.providers {
            if matches!(p.lookup(user), Some(Credential::Bearer)) {
                return p.verify_bearer(user, secret).await;
            }
        }
        Err(AuthError::UnknownIdentity)
    }
}
