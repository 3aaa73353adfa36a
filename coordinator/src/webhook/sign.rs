//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): a secret is `whsec_` and
//! the base64 of its key; a request carries `webhook-id`, `webhook-timestamp` (seconds since the
//! epoch) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per
//! secret, space-separated, so a receiver can rotate secrets without a gap.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A signing key, from its `whsec_…` text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

// Never printed: a secret in a log line is a leaked secret.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a webhook secret starts with whsec_ followed by base64 (e.g. whsec_$(head -c32 /dev/urandom | base64))")]
    NoPrefix,
    #[error("the part after whsec_ is not base64: {0}")]
    NotBase64(String),
    #[error("a webhook secret needs at least 16 bytes of key (it has {0})")]
    TooShort(usize),
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Secret, SecretError> {
        let key = s.trim().strip_prefix(PREFIX).ok_or(SecretError::NoPrefix)?;
        let key = STANDARD
            .decode(key)
            .map_err(|e| SecretError::NotBase64(e.to_string()))?;
        if key.len() < 16 {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Secret(key))
    }
}

impl Secret {
    /// `v1,<signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// `--webhook-secret`, the same on the coordinator and on `factotum run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SigningArgs {
    /// Sign every webhook (Standard Webhooks: `webhook-signature`) with this secret, `whsec_`
    /// and base64 (repeatable: each signs, for rotation; comma-separated in the variable).
    #[arg(
        long,
        env = "FACTOTUM_WEBHOOK_SECRET",
        value_name = "SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secret: Vec<Secret>,
}

/// The `webhook-signature` header for `secrets` (none: no header).
pub fn signature(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let all: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    Some(all.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector the Standard Webhooks specification publishes.
    #[test]
    fn signs_the_specifications_test_vector() {
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_sign_space_separated() {
        let a: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let b: Secret = format!("whsec_{}", STANDARD.encode([7u8; 32]))
            .parse()
            .unwrap();
        let h = signature(&[a.clone(), b], "id", 1, b"{}").unwrap();
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], a.sign("id", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
        assert!(signature(&[], "id", 1, b"{}").is_none());
    }

    #[test]
    fn bad_secrets_say_what_is_wrong_and_never_print() {
        assert_eq!("abc".parse::<Secret>(), Err(SecretError::NoPrefix));
        assert!(matches!(
            "whsec_!!".parse::<Secret>(),
            Err(SecretError::NotBase64(_))
        ));
        assert_eq!(
            "whsec_AAAA".parse::<Secret>(),
            Err(SecretError::TooShort(3))
        );
        let s: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
