//! Who is calling: API keys, anon keys and HS256 JWTs.
//!
//! [`Authenticator::verify`] is pure: a credential goes in, a [`Principal`]
//! or an [`AuthError`] comes out. The REST extractor (`api::auth`) and, later,
//! the Socket.IO CONNECT handler are thin adapters over it.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;

/// The roles InsForge gives its database users; a JWT must carry one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A signed-in user.
    Authenticated,
    /// A client without a user.
    Anon,
    /// The project's administrator (also what an `ik_` API key stands for).
    ProjectAdmin,
}

impl Role {
    /// The role's name as it appears in JWTs and PostgreSQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Authenticated => "authenticated",
            Role::Anon => "anon",
            Role::ProjectAdmin => "project_admin",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "authenticated" => Some(Role::Authenticated),
            "anon" => Some(Role::Anon),
            "project_admin" => Some(Role::ProjectAdmin),
            _ => None,
        }
    }
}

/// The claims this server reads from and writes into JWTs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// One of `authenticated`, `anon`, `project_admin`.
    pub role: String,
    /// The user's e-mail, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Holder of an `ik_` admin API key.
    ApiKey,
    /// Holder of an `anon_` key.
    AnonKey,
    /// Bearer of a valid JWT.
    Jwt {
        /// The `sub` claim.
        sub: String,
        /// The `role` claim.
        role: Role,
        /// The `email` claim, if any.
        email: Option<String>,
    },
}

impl Principal {
    /// The role the principal acts with.
    pub fn role(&self) -> Role {
        match self {
            Principal::ApiKey => Role::ProjectAdmin,
            Principal::AnonKey => Role::Anon,
            Principal::Jwt { role, .. } => *role,
        }
    }

    /// Whether the principal may use the admin REST API.
    pub fn is_admin(&self) -> bool {
        self.role() == Role::ProjectAdmin
    }
}

/// Why a credential was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error("no credentials provided")]
    Missing,
    /// Something shaped like an API key that is not one of ours.
    #[error("invalid api key")]
    InvalidApiKey,
    /// A JWT that does not verify: bad signature, expired, malformed.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// Checks credentials against the configured secret and keys.
pub struct Authenticator {
    decoding_key: DecodingKey,
    encoding_key: EncodingKey,
    validation: Validation,
    api_keys: HashSet<String>,
    anon_keys: HashSet<String>,
}

impl Authenticator {
    /// Builds the authenticator from the `[auth]` settings.
    pub fn new(settings: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Authenticator {
            decoding_key: DecodingKey::from_secret(settings.jwt_secret.as_bytes()),
            encoding_key: EncodingKey::from_secret(settings.jwt_secret.as_bytes()),
            validation,
            api_keys: settings.api_keys.iter().cloned().collect(),
            anon_keys: settings.anon_keys.iter().cloned().collect(),
        }
    }

    /// Verifies one credential: an `ik_` key, an `anon_` key or a JWT.
    ///
    /// # Errors
    /// [`AuthError`] says which kind of credential failed and why.
    pub fn verify(&self, credential: &str) -> Result<Principal, AuthError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        if credential.starts_with("ik_") {
            return if self.api_keys.contains(credential) {
                Ok(Principal::ApiKey)
            } else {
                Err(AuthError::InvalidApiKey)
            };
        }
        if credential.starts_with("anon_") {
            return if self.anon_keys.contains(credential) {
                Ok(Principal::AnonKey)
            } else {
                Err(AuthError::InvalidApiKey)
            };
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(
            credential,
            &self.decoding_key,
            &self.validation,
        )
        .map_err(|err| AuthError::InvalidToken(err.to_string().to_lowercase()))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|sub| sub.as_str())
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| {
                AuthError::InvalidToken("sub claim must be a non-empty string".into())
            })?;
        let role = claims
            .get("role")
            .and_then(|role| role.as_str())
            .ok_or_else(|| AuthError::InvalidToken("missing role claim".into()))?;
        let role = Role::parse(role)
            .ok_or_else(|| AuthError::InvalidToken(format!("unknown role {role:?}")))?;
        let email = claims
            .get("email")
            .and_then(|email| email.as_str())
            .map(str::to_owned);
        Ok(Principal::Jwt {
            sub: sub.to_owned(),
            role,
            email,
        })
    }

    /// Signs a JWT for `role` and `sub`, valid for `ttl_seconds` from now.
    /// Used by `realtime token` and by tests.
    pub fn mint(&self, role: Role, sub: &str, email: Option<&str>, ttl_seconds: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: sub.to_owned(),
            role: role.as_str().to_owned(),
            email: email.map(str::to_owned),
            exp: now + ttl_seconds,
        };
        // unwrap: HS256 signing of a serializable struct with a byte secret cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key).unwrap()
    }
}

/// Makes a new random key with `prefix` (`ik_` or `anon_`): 32 hex characters
/// of randomness from the operating system's generator.
pub fn generate_key(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: "a-test-secret-that-is-long-enough-000".into(),
            api_keys: vec!["ik_testtesttest".into()],
            anon_keys: vec!["anon_testtesttest".into()],
        })
    }

    #[test]
    fn api_and_anon_keys_verify() {
        let auth = authenticator();
        assert_eq!(auth.verify("ik_testtesttest"), Ok(Principal::ApiKey));
        assert_eq!(auth.verify("anon_testtesttest"), Ok(Principal::AnonKey));
        assert_eq!(auth.verify("ik_other"), Err(AuthError::InvalidApiKey));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = authenticator();
        let token = auth.mint(Role::Authenticated, "user-1", Some("a@b.c"), 60);
        let principal = auth.verify(&token).unwrap();
        assert_eq!(
            principal,
            Principal::Jwt {
                sub: "user-1".into(),
                role: Role::Authenticated,
                email: Some("a@b.c".into())
            }
        );
        assert!(!principal.is_admin());
    }

    #[test]
    fn expired_token_is_refused() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "role": "authenticated", "exp": 1});
        let token = jsonwebtoken::encode(&Header::default(), &claims, &auth.encoding_key).unwrap();
        assert!(
            matches!(auth.verify(&token), Err(AuthError::InvalidToken(reason)) if reason.contains("expired"))
        );
    }

    #[test]
    fn token_without_role_is_refused() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "exp": u64::MAX / 2});
        let token = jsonwebtoken::encode(&Header::default(), &claims, &auth.encoding_key).unwrap();
        assert_eq!(
            auth.verify(&token),
            Err(AuthError::InvalidToken("missing role claim".into()))
        );
    }

    #[test]
    fn token_with_other_secret_is_refused() {
        let other = Authenticator::new(&AuthSettings {
            jwt_secret: "another-secret-that-is-long-enough-0000".into(),
            api_keys: vec![],
            anon_keys: vec![],
        });
        let token = other.mint(Role::ProjectAdmin, "admin", None, 60);
        assert!(matches!(
            authenticator().verify(&token),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn generated_keys_have_prefix_and_entropy() {
        let first = generate_key("ik_");
        assert!(first.starts_with("ik_") && first.len() == 35);
        assert_ne!(first, generate_key("ik_"));
    }
}
