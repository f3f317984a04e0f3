//! Identities declared in the config file, each with a SCRAM verifier of its access key.

use std::collections::HashMap;

use async_trait::async_trait;
use gatehouse_core::Principal;
use gatehouse_core::config::IdentityConfig;

use crate::scram::ScramVerifier;
use crate::{AuthError, Authenticated, Credential, IdentityProvider};

/// Named users and agents with hashed access keys (`[[identity]]` in the config).
pub struct StaticKeys {
    by_name: HashMap<String, (ScramVerifier, Principal)>,
}

impl StaticKeys {
    pub fn from_config(identities: &[IdentityConfig]) -> Result<StaticKeys, String> {
        let mut by_name = HashMap::new();
        for id in identities {
            let name = id.name.get_ref().clone();
            let verifier = ScramVerifier::parse(id.key_verifier.get_ref())
                .map_err(|e| format!("identity `{name}`: {e}"))?;
            let principal = Principal {
                kind: id.kind,
                id: name.clone(),
                groups: id.groups.clone(),
                attrs: id.attrs.clone(),
                on_behalf_of: id.on_behalf_of.clone(),
                actor_chain: Vec::new(),
            };
            by_name.insert(name, (verifier, principal));
        }
        Ok(StaticKeys { by_name })
    }
}

impl StaticKeys {
    /// Check an access key presented in the clear (the admin API). Unknown names cost the same
    /// PBKDF2 run as known ones, so timing does not tell which names exist.
    pub fn verify_key(&self, name: &str, key: &str) -> Result<Principal, AuthError> {
        match self.by_name.get(name) {
            Some((verifier, principal)) if verifier.matches(key) => Ok(principal.clone()),
            Some(_) => Err(AuthError::InvalidCredentials),
            None => {
                let _ = ScramVerifier::mock(name, &[0u8; 32]).matches(key);
                Err(AuthError::UnknownIdentity)
            }
        }
    }
}

#[async_trait]
impl IdentityProvider for StaticKeys {
    fn lookup(&self, user: &str) -> Option<Credential> {
        self.by_name.get(user).map(|(v, p)| Credential::Scram {
            verifier: v.clone(),
            principal: Box::new(p.clone()),
        })
    }

    async fn verify_bearer(&self, _user: &str, _secret: &str) -> Result<Authenticated, AuthError> {
        // Static identities authenticate with SCRAM only; a key is never sent in cleartext.
        Err(AuthError::InvalidCredentials)
    }
}
