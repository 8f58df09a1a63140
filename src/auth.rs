//! Who is calling: API keys, anon keys and HS256 JWTs.
//!
//! [`Authenticator::verify`] is pure: a credential goes in, a [`Principal`]
//! or an [`AuthError`] comes out. The REST extractor (`api::auth`) and, later,
//! the Socket.IO CONNECT handler are thin adapters over it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
#[derive(Clone, Debug, PartialEq)]
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
        /// Every claim of the token, as signed: the permission layer hands
        /// them to PostgreSQL as `request.jwt.claims`.
        claims: Arc<Map<String, Value>>,
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

    /// When the credential expires (a JWT's `exp`), in Unix seconds.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::Jwt { claims, .. } => claims.get("exp")?.as_u64(),
            _ => None,
        }
    }
}

/// Why a credential was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error("no credentials provided")]
    Missing,
    /// An API key (`ik_…`, or whatever came as one) that is not one of ours.
    #[error("invalid api key")]
    InvalidApiKey,
    /// An `anon_…` key that is not one of ours.
    #[error("unknown anon key")]
    UnknownAnonKey,
    /// A JWT that does not verify: bad signature, expired, malformed.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// Checks credentials against the configured secret and keys.
pub struct Authenticator {
    decoding_key: DecodingKey,
    encoding_key: EncodingKey,
    validation: Validation,
    /// SHA-256 digests of the keys: a presented key is hashed and compared
    /// with each in constant time, so the time taken tells nothing of how
    /// much of a key was right.
    api_keys: Vec<[u8; 32]>,
    anon_keys: Vec<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// Whether `key`'s digest is one of `digests`, comparing with every one
/// and every byte whatever the outcome.
fn is_one_of(key: &str, digests: &[[u8; 32]]) -> bool {
    let presented = digest(key);
    let mut found = 0u8;
    for known in digests {
        let difference = known
            .iter()
            .zip(&presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= u8::from(difference == 0);
    }
    found == 1
}

impl Authenticator {
    /// Builds the authenticator from the `[auth]` settings.
    pub fn new(settings: &AuthSettings) -> Self {
        // HS256 only: a token signed with any other algorithm (`none`, RS256
        // with our secret as a "public key") is refused by the header check.
        let mut validation = Validation::new(Algorithm::HS256);
        // InsForge's own anon and project-admin tokens carry no `exp`; it
        // accepts them, so we do unless the operator asks for `exp`.
        if settings.require_exp {
            validation.set_required_spec_claims(&["exp", "sub"]);
        } else {
            validation.set_required_spec_claims(&["sub"]);
        }
        validation.validate_nbf = true;
        // No audience is configured, so an `aud` claim is not ours to judge.
        validation.validate_aud = false;
        // Clock skew allowed on `exp` and `nbf`.
        validation.leeway = settings.leeway_seconds;
        Authenticator {
            decoding_key: DecodingKey::from_secret(settings.jwt_secret.as_bytes()),
            encoding_key: EncodingKey::from_secret(settings.jwt_secret.as_bytes()),
            validation,
            api_keys: settings.api_keys.iter().map(|key| digest(key)).collect(),
            anon_keys: settings.anon_keys.iter().map(|key| digest(key)).collect(),
        }
    }

    /// Verifies a credential that can only be an admin API key (the
    /// `x-api-key` header, the socket's `apiKey`).
    ///
    /// # Errors
    /// [`AuthError::Missing`] when empty, else [`AuthError::InvalidApiKey`].
    pub fn verify_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let key = key.trim();
        if key.is_empty() {
            Err(AuthError::Missing)
        } else if is_one_of(key, &self.api_keys) {
            Ok(Principal::ApiKey)
        } else {
            Err(AuthError::InvalidApiKey)
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
            return self.verify_api_key(credential);
        }
        if credential.starts_with("anon_") {
            return if is_one_of(credential, &self.anon_keys) {
                Ok(Principal::AnonKey)
            } else {
                Err(AuthError::UnknownAnonKey)
            };
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(
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
            claims: Arc::new(claims),
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

    fn settings(require_exp: bool) -> AuthSettings {
        AuthSettings {
            jwt_secret: "a-test-secret-that-is-long-enough-000".into(),
            api_keys: vec!["ik_testtesttest".into()],
            anon_keys: vec!["anon_testtesttest".into()],
            require_exp,
            leeway_seconds: 0,
            disconnect_on_expiry: false,
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&settings(false))
    }

    fn sign(auth: &Authenticator, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &auth.encoding_key).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn api_and_anon_keys_verify() {
        let auth = authenticator();
        assert_eq!(auth.verify("ik_testtesttest"), Ok(Principal::ApiKey));
        assert_eq!(auth.verify("anon_testtesttest"), Ok(Principal::AnonKey));
        assert_eq!(auth.verify("ik_other"), Err(AuthError::InvalidApiKey));
        assert_eq!(auth.verify("anon_other"), Err(AuthError::UnknownAnonKey));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn api_key_slot_takes_only_api_keys() {
        let auth = authenticator();
        assert_eq!(
            auth.verify_api_key("ik_testtesttest"),
            Ok(Principal::ApiKey)
        );
        assert_eq!(
            auth.verify_api_key("anon_testtesttest"),
            Err(AuthError::InvalidApiKey)
        );
        let token = auth.mint(Role::ProjectAdmin, "admin", None, 60);
        assert_eq!(auth.verify_api_key(&token), Err(AuthError::InvalidApiKey));
        assert_eq!(auth.verify_api_key(" "), Err(AuthError::Missing));
    }

    #[test]
    fn token_without_exp_is_accepted_unless_required() {
        let claims = serde_json::json!({"sub": "u", "role": "anon", "iat": now()});
        let token = sign(&authenticator(), claims);
        assert!(matches!(
            authenticator().verify(&token),
            Ok(Principal::Jwt {
                role: Role::Anon,
                ..
            })
        ));
        let strict = Authenticator::new(&settings(true));
        assert!(matches!(
            strict.verify(&token),
            Err(AuthError::InvalidToken(reason)) if reason.contains("exp")
        ));
    }

    #[test]
    fn token_not_yet_valid_is_refused() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "role": "anon", "nbf": now() + 3600});
        assert!(matches!(
            auth.verify(&sign(&auth, claims)),
            Err(AuthError::InvalidToken(reason)) if reason.contains("immature")
        ));
        let claims = serde_json::json!({"sub": "u", "role": "anon", "nbf": now() - 10});
        assert!(auth.verify(&sign(&auth, claims)).is_ok());
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        use base64::Engine as _;
        use hmac::Mac;
        let encode = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let secret = settings(false).jwt_secret;
        let body = encode(serde_json::json!({"sub": "u", "role": "project_admin"}));
        // Headers naming another algorithm, each signed with HMAC-SHA256
        // over the HS256 secret (what an attacker who treats the secret as a
        // "public key" would send).
        for alg in ["RS256", "ES256", "PS256", "HS512", "EdDSA", "none", "NONE"] {
            let header = encode(serde_json::json!({"alg": alg, "typ": "JWT"}));
            let signing_input = format!("{header}.{body}");
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(signing_input.as_bytes());
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(mac.finalize().into_bytes());
            let token = format!("{signing_input}.{signature}");
            assert!(
                matches!(
                    authenticator().verify(&token),
                    Err(AuthError::InvalidToken(_))
                ),
                "{alg} was accepted"
            );
        }
        // The same body with the right header verifies: the test can fail.
        let header = encode(serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        let signing_input = format!("{header}.{body}");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        let signature =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert!(authenticator()
            .verify(&format!("{signing_input}.{signature}"))
            .is_ok());
    }

    #[test]
    fn clock_skew_is_allowed_up_to_the_leeway() {
        let auth = Authenticator::new(&AuthSettings {
            leeway_seconds: 10,
            ..settings(false)
        });
        let token = |claims: serde_json::Value| sign(&auth, claims);
        let ok = |claims| auth.verify(&token(claims)).is_ok();
        assert!(ok(
            serde_json::json!({"sub": "u", "role": "anon", "exp": now() - 5})
        ));
        assert!(!ok(
            serde_json::json!({"sub": "u", "role": "anon", "exp": now() - 30})
        ));
        assert!(ok(
            serde_json::json!({"sub": "u", "role": "anon", "nbf": now() + 5})
        ));
        assert!(!ok(
            serde_json::json!({"sub": "u", "role": "anon", "nbf": now() + 30})
        ));
    }

    #[test]
    fn keys_are_matched_whole() {
        let auth = authenticator();
        for near_miss in [
            "ik_testtesttes",
            "ik_testtesttestt",
            "ik_testtesttesT",
            "ik_",
        ] {
            assert_eq!(
                auth.verify_api_key(near_miss),
                Err(AuthError::InvalidApiKey)
            );
        }
        for near_miss in ["anon_testtesttes", "anon_testtesttestx"] {
            assert_eq!(auth.verify(near_miss), Err(AuthError::UnknownAnonKey));
        }
    }

    #[test]
    fn unsigned_token_is_refused() {
        use base64::Engine as _;
        let encode = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let header = encode(serde_json::json!({"alg": "none", "typ": "JWT"}));
        let body = encode(serde_json::json!({"sub": "u", "role": "project_admin"}));
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(matches!(
                authenticator().verify(&token),
                Err(AuthError::InvalidToken(_))
            ));
        }
    }

    #[test]
    fn claims_are_kept_whole() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "role": "authenticated", "org": {"id": 7}});
        let Ok(Principal::Jwt { claims, .. }) = auth.verify(&sign(&auth, claims)) else {
            panic!("token refused");
        };
        assert_eq!(claims["org"], serde_json::json!({"id": 7}));
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = authenticator();
        let token = auth.mint(Role::Authenticated, "user-1", Some("a@b.c"), 60);
        let principal = auth.verify(&token).unwrap();
        let Principal::Jwt {
            sub, role, email, ..
        } = &principal
        else {
            panic!("not a JWT principal: {principal:?}");
        };
        assert_eq!(
            (sub.as_str(), *role, email.as_deref()),
            ("user-1", Role::Authenticated, Some("a@b.c"))
        );
        assert!(!principal.is_admin());
    }

    #[test]
    fn expired_token_is_refused() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "role": "authenticated", "exp": 1});
        let token = sign(&auth, claims);
        assert!(
            matches!(auth.verify(&token), Err(AuthError::InvalidToken(reason)) if reason.contains("expired"))
        );
    }

    #[test]
    fn token_without_role_is_refused() {
        let auth = authenticator();
        let claims = serde_json::json!({"sub": "u", "exp": u64::MAX / 2});
        let token = sign(&auth, claims);
        assert_eq!(
            auth.verify(&token),
            Err(AuthError::InvalidToken("missing role claim".into()))
        );
    }

    #[test]
    fn token_with_other_secret_is_refused() {
        let other = Authenticator::new(&AuthSettings {
            jwt_secret: "another-secret-that-is-long-enough-0000".into(),
            ..settings(false)
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
