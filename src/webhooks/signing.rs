//! Standard Webhooks signatures (standardwebhooks.com): receivers verify
//! them with the published `standardwebhooks` or `svix` libraries.
//!
//! A request carries `webhook-id` (stable across retries and restarts),
//! `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature`: `v1,` then the base64 HMAC-SHA256, keyed with the
//! secret's bytes, of `"{id}.{timestamp}.{body}"`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `v1,<base64 signature>` of one request.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // unwrap: HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's test vectors
    /// (secret, id, timestamp, body and the signature they give).
    #[test]
    fn matches_the_specification_example() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_have_the_prefix_and_32_bytes() {
        let secret = generate_secret();
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(secret, generate_secret());
    }
}
