//! Admitting a connection (SPEC §3): which credential of the CONNECT auth
//! object counts, and who the socket then is: its principal, its presence
//! identity (its sender is `publish::Sender::of`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::auth::{AuthError, Authenticator, Principal, Role};
use crate::channel::{subscriber::MemberKind, Member};
use crate::socketio::Refusal;

/// Verifies the CONNECT auth object: `apiKey` first, as InsForge, then
/// `token` (a JWT or an `anon_` key). Only a bad `apiKey` is reported as
/// `AUTH_INVALID_API_KEY`; every other failure, no credential included,
/// is `AUTH_INVALID_CREDENTIALS`.
///
/// # Errors
/// The [`Refusal`] the client gets as CONNECT_ERROR.
pub(super) fn admit(auth: &Authenticator, object: Option<&Value>) -> Result<Principal, Refusal> {
    let field = |name: &str| {
        object
            .and_then(|object| object.get(name))
            .filter(|value| !value.is_null() && value.as_str() != Some(""))
    };
    let verified = match (field("apiKey"), field("token")) {
        (Some(key), _) => match key.as_str() {
            Some(key) => auth.verify_api_key(key),
            None => Err(AuthError::InvalidApiKey),
        },
        (None, Some(token)) => match token.as_str() {
            Some(token) => auth.verify(token).map_err(|err| match err {
                // An `ik_` key sent as a token is not an API-key failure.
                AuthError::InvalidApiKey => AuthError::InvalidToken("unknown key".into()),
                other => other,
            }),
            None => Err(AuthError::InvalidToken("token must be a string".into())),
        },
        (None, None) => Err(AuthError::Missing),
    };
    verified.map_err(|err| {
        let (code, message) = match &err {
            AuthError::Missing => (
                "AUTH_INVALID_CREDENTIALS",
                "missing credentials: send auth {token} or {apiKey}".to_owned(),
            ),
            AuthError::InvalidApiKey => ("AUTH_INVALID_API_KEY", "invalid api key".to_owned()),
            AuthError::UnknownAnonKey => {
                ("AUTH_INVALID_CREDENTIALS", "unknown anon key".to_owned())
            }
            AuthError::InvalidToken(reason) => (
                "AUTH_INVALID_CREDENTIALS",
                format!("invalid token: {reason}"),
            ),
        };
        Refusal {
            message,
            data: Some(json!({ "code": code })),
        }
    })
}

/// Open sockets per signed-in user, shared by every connection.
#[derive(Default)]
pub struct UserSockets {
    counts: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open socket of a user; dropping it (the connection's end) gives its
/// place back.
pub(super) struct UserSocket {
    sockets: Arc<UserSockets>,
    user: String,
}

impl UserSockets {
    /// Takes a place for one more socket of `principal`'s user, if it is a
    /// user and has fewer than `max` open.
    ///
    /// # Errors
    /// The [`Refusal`] the client gets when the user has `max` already.
    pub(super) fn admit(
        self: &Arc<Self>,
        principal: &Principal,
        max: usize,
    ) -> Result<Option<UserSocket>, Refusal> {
        let Principal::Jwt { sub, role, .. } = principal else {
            return Ok(None);
        };
        if *role == Role::Anon {
            return Ok(None);
        }
        let mut counts = self.counts.lock();
        let count = counts.entry(sub.clone()).or_default();
        if *count >= max {
            crate::metrics::METRICS.refused(crate::metrics::Limit::SocketsPerUser);
            return Err(Refusal {
                message: format!(
                    "this user has {max} sockets open, the most allowed (limits.max_sockets_per_user)"
                ),
                data: Some(json!({ "code": "RATE_LIMITED" })),
            });
        }
        *count += 1;
        Ok(Some(UserSocket {
            sockets: self.clone(),
            user: sub.clone(),
        }))
    }
}

impl Drop for UserSocket {
    fn drop(&mut self) {
        let mut counts = self.sockets.counts.lock();
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// How long until a socket admitted as `principal` is closed because its
/// token expired: at `exp`, plus a random jitter of up to a tenth of the
/// time left (at most 30 s), so that sockets whose tokens were issued
/// together do not all reconnect in the same instant. `None` for
/// credentials that do not expire.
pub(super) fn expiry_delay(principal: &Principal) -> Option<Duration> {
    let expires_at = principal.expires_at()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(expires_at).saturating_sub(now);
    let jitter_bound = (left / 10).min(Duration::from_secs(30));
    let jitter = jitter_bound.mul_f64(rand::random::<f64>());
    Some(left + jitter)
}

/// Who a socket counts as in presence: a signed-in user is one member
/// however many sockets it has; anyone else is its socket.
pub(super) fn member(principal: &Principal, socket_id: &Arc<str>) -> Member {
    match principal {
        Principal::Jwt { sub, role, .. } if *role != Role::Anon => Member {
            presence_id: sub.as_str().into(),
            kind: MemberKind::User,
        },
        _ => Member {
            presence_id: socket_id.clone(),
            kind: MemberKind::Anonymous,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthSettings;
    use crate::publish::{Sender, SenderType};
    use uuid::Uuid;

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: "a-test-secret-that-is-long-enough-000".into(),
            api_keys: vec!["ik_testtesttest".into()],
            anon_keys: vec!["anon_testtesttest".into()],
            require_exp: false,
            leeway_seconds: 0,
            disconnect_on_expiry: false,
        })
    }

    fn code(auth: Value) -> String {
        let refusal = admit(&authenticator(), Some(&auth)).unwrap_err();
        refusal.data.unwrap()["code"].as_str().unwrap().to_owned()
    }

    #[test]
    fn api_key_counts_first_and_only_it_is_an_api_key_failure() {
        let auth = authenticator();
        let both = json!({"apiKey": "ik_testtesttest", "token": "garbage"});
        assert_eq!(admit(&auth, Some(&both)), Ok(Principal::ApiKey));
        assert_eq!(
            code(json!({"apiKey": "ik_nope", "token": "anon_testtesttest"})),
            "AUTH_INVALID_API_KEY"
        );
        assert_eq!(code(json!({"apiKey": 7})), "AUTH_INVALID_API_KEY");
        for auth in [
            json!({}),
            json!({"token": ""}),
            json!({"token": "anon_unknown"}),
            json!({"token": "ik_unknown"}),
            json!({"token": "not.a.jwt"}),
            json!({"token": 5}),
        ] {
            assert_eq!(code(auth.clone()), "AUTH_INVALID_CREDENTIALS", "{auth}");
        }
        assert!(admit(&auth, None).is_err());
    }

    #[test]
    fn identity_follows_the_principal() {
        let user = Uuid::new_v4();
        let authenticator = authenticator();
        let token = authenticator.mint(Role::Authenticated, &user.to_string(), None, 60);
        let principal = authenticator.verify(&token).unwrap();
        let sock: Arc<str> = "sock".into();
        assert_eq!(
            member(&principal, &sock),
            Member {
                presence_id: user.to_string().into(),
                kind: MemberKind::User
            }
        );
        assert_eq!(Sender::of(&principal).sender_id, Some(user));
        assert_eq!(&*member(&Principal::AnonKey, &sock).presence_id, "sock");
        assert_eq!(
            Sender::of(&Principal::AnonKey).sender_type,
            SenderType::User
        );
        assert_eq!(Sender::of(&Principal::ApiKey), Sender::SYSTEM);
    }
}
