//! Audit-side services of the server: checkpoint signing, keyed hashing of
//! secrets, and the keys both use.
//!
//! Two keys live in the data directory, created on first start, owner-only:
//! `audit-key.der` (Ed25519, signs checkpoints; separate from the token
//! issuer so rotating one does not touch the other) and `audit-hmac.key`
//! (32 random bytes; HMAC-SHA256 of secret parameters, so an auditor holding
//! the key can check a known value, as Vault's `audit-hash` allows).

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

pub const AUDIT_KEY_FILE: &str = "audit-key.der";
pub const HMAC_KEY_FILE: &str = "audit-hmac.key";

pub struct AuditKeys {
    pub signing: ed25519_dalek::SigningKey,
    pub hmac: [u8; 32],
    /// Names this log in its checkpoints.
    pub origin: String,
}

impl AuditKeys {
    /// `hmac-sha256:<hex>` of `value` under the audit HMAC key.
    pub fn hash(&self, value: &str) -> String {
        // HMAC accepts keys of any length; new_from_slice cannot fail here.
        match Hmac::<Sha256>::new_from_slice(&self.hmac) {
            Ok(mut m) => {
                m.update(value.as_bytes());
                format!("hmac-sha256:{}", hex::encode(m.finalize().into_bytes()))
            }
            Err(_) => "hmac-sha256:unavailable".into(),
        }
    }

    /// Replace the values of `sensitive` parameters with their keyed hash.
    /// Non-string values are hashed in their JSON form.
    pub fn redact(&self, params: &Map<String, Value>, sensitive: &[String]) -> Map<String, Value> {
        params
            .iter()
            .map(|(k, v)| {
                if sensitive.iter().any(|s| s == k) {
                    // Strings hash as they are (so `audit hash VALUE` matches);
                    // anything else as tagged JSON, so 5 and "5" differ.
                    let text = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("json:{v}"));
                    (k.clone(), Value::String(self.hash(&text)))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }
}
