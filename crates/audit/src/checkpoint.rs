//! Signed checkpoints: a commitment to the first `tree_size` entries.
//!
//! The signed body is plain text, one field a line, in the spirit of
//! transparency-log checkpoints (C2SP signed notes), so an auditor can check
//! one with any Ed25519 tool:
//!
//! ```text
//! tollgate-audit-checkpoint/v1
//! origin <origin>
//! size <tree size>
//! root <hex Merkle root>
//! time <unix seconds>
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    /// Lowercase hex Merkle root of the first `tree_size` entries.
    pub root_hash: String,
    pub timestamp: i64,
    pub key_id: String,
    /// Base64 Ed25519 signature over [`Checkpoint::body`].
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint at size {0} is signed by key {1}, not the trusted key {2}")]
    WrongKey(u64, String, String),
    #[error("checkpoint at size {0} has an invalid signature")]
    BadSignature(u64),
}

/// Short stable id of a verifying key: hex of the first 8 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "tollgate-audit-checkpoint/v1\norigin {}\nsize {}\nroot {}\ntime {}\n",
            self.origin, self.tree_size, self.root_hash, self.timestamp
        )
    }

    pub fn sign(
        origin: &str,
        tree_size: u64,
        root: &[u8; 32],
        timestamp: i64,
        key: &SigningKey,
    ) -> Self {
        let mut cp = Self {
            origin: origin.to_string(),
            tree_size,
            root_hash: hex::encode(root),
            timestamp,
            key_id: key_id(&key.verifying_key()),
            signature: String::new(),
        };
        cp.signature = B64.encode(key.sign(cp.body().as_bytes()).to_bytes());
        cp
    }

    pub fn verify(&self, key: &VerifyingKey) -> Result<(), CheckpointError> {
        let kid = key_id(key);
        if self.key_id != kid {
            return Err(CheckpointError::WrongKey(
                self.tree_size,
                self.key_id.clone(),
                kid,
            ));
        }
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(CheckpointError::BadSignature(self.tree_size))?;
        key.verify(self.body().as_bytes(), &sig)
            .map_err(|_| CheckpointError::BadSignature(self.tree_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoints_verify_and_any_change_breaks_them() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let cp = Checkpoint::sign("tollgate test", 42, &[3u8; 32], 1_800_000_000, &key);
        cp.verify(&key.verifying_key()).unwrap();
        assert!(cp
            .body()
            .starts_with("tollgate-audit-checkpoint/v1\norigin tollgate test\nsize 42\n"));
        let mut bigger = cp.clone();
        bigger.tree_size = 43;
        assert_eq!(
            bigger.verify(&key.verifying_key()),
            Err(CheckpointError::BadSignature(43))
        );
        let mut other_root = cp.clone();
        other_root.root_hash = hex::encode([4u8; 32]);
        assert!(other_root.verify(&key.verifying_key()).is_err());
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        assert!(matches!(
            cp.verify(&other.verifying_key()),
            Err(CheckpointError::WrongKey(..))
        ));
    }
}
