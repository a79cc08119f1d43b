//! Streaming verification of a whole log against its signed checkpoints.
//!
//! One pass, constant memory apart from the O(log n) Merkle right edge:
//! every entry's content hash and link are checked, and whenever the number
//! of entries reaches a checkpoint's size, the Merkle root is compared with
//! the signed one. What it catches and how it names it:
//! - an entry modified in place → `Content { seq }`
//! - an entry deleted, inserted or reordered → `Gap` or `Link { seq }`
//! - a consistent rewrite (every later hash recomputed) → the next signed
//!   checkpoint's root does not match: `CheckpointMismatch`
//! - entries removed from the end behind a checkpoint → `Truncated`

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::merkle::{leaf_hash, CompactRange};
use crate::{AuditEntry, GENESIS};
use ed25519_dalek::VerifyingKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error(transparent)]
    Chain(#[from] crate::VerifyError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("entries {after}..={size} do not match the signed checkpoint of size {size}: entries in that range were rewritten")]
    CheckpointMismatch { after: u64, size: u64 },
    #[error("the log ends at entry {have} but a signed checkpoint covers {size} entries: it was truncated")]
    Truncated { have: u64, size: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub root_hash: [u8; 32],
    pub checkpoints_verified: usize,
}

pub struct LogVerifier {
    next_seq: u64,
    prev: [u8; 32],
    range: CompactRange,
    /// Checkpoints still to reach, ascending by size.
    pending: Vec<Checkpoint>,
    verified: usize,
    last_good: u64,
}

impl LogVerifier {
    /// Check the checkpoints' signatures up front against the trusted key.
    pub fn new(mut checkpoints: Vec<Checkpoint>, key: &VerifyingKey) -> Result<Self, LogError> {
        for cp in &checkpoints {
            cp.verify(key)?;
        }
        checkpoints.sort_by_key(|c| std::cmp::Reverse(c.tree_size));
        Ok(Self {
            next_seq: 1,
            prev: GENESIS,
            range: CompactRange::default(),
            pending: checkpoints,
            verified: 0,
            last_good: 0,
        })
    }

    pub fn push(&mut self, e: &AuditEntry) -> Result<(), LogError> {
        (self.next_seq, self.prev) =
            crate::verify_run(self.next_seq, self.prev, std::iter::once(e))?;
        self.range.push(leaf_hash(&e.hash));
        while let Some(cp) = self.pending.last() {
            if cp.tree_size == 0 {
                self.pending.pop();
                continue;
            }
            if cp.tree_size != self.range.size() {
                break;
            }
            if hex::encode(self.range.root()) != cp.root_hash {
                return Err(LogError::CheckpointMismatch {
                    after: self.last_good + 1,
                    size: cp.tree_size,
                });
            }
            self.last_good = cp.tree_size;
            self.verified += 1;
            self.pending.pop();
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Report, LogError> {
        let have = self.range.size();
        if let Some(cp) = self.pending.iter().find(|c| c.tree_size > have) {
            return Err(LogError::Truncated {
                have,
                size: cp.tree_size,
            });
        }
        Ok(Report {
            entries: have,
            root_hash: self.range.root(),
            checkpoints_verified: self.verified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{chain, AuditEvent};
    use ed25519_dalek::SigningKey;

    fn log(n: usize) -> Vec<AuditEntry> {
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let e = chain(
                    i as u64 + 1,
                    prev,
                    AuditEvent::new(i as i64, "decision", "a").task(format!("t{}", i % 3)),
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn checkpoint(l: &[AuditEntry], size: usize, key: &SigningKey) -> Checkpoint {
        let leaves: Vec<_> = l[..size].iter().map(|e| leaf_hash(&e.hash)).collect();
        Checkpoint::sign("test", size as u64, &crate::merkle::root(&leaves), 0, key)
    }

    fn run(l: &[AuditEntry], cps: Vec<Checkpoint>, key: &SigningKey) -> Result<Report, LogError> {
        let mut v = LogVerifier::new(cps, &key.verifying_key())?;
        for e in l {
            v.push(e)?;
        }
        v.finish()
    }

    #[test]
    fn detects_each_kind_of_tampering_precisely() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let l = log(50);
        let cps = vec![checkpoint(&l, 20, &key), checkpoint(&l, 50, &key)];
        let r = run(&l, cps.clone(), &key).unwrap();
        assert_eq!((r.entries, r.checkpoints_verified), (50, 2));

        let mut edited = l.clone();
        edited[9].event.actor = "mallory".into();
        assert_eq!(
            run(&edited, cps.clone(), &key),
            Err(LogError::Chain(crate::VerifyError::Content { seq: 10 }))
        );

        let mut deleted = l.clone();
        deleted.remove(30);
        assert_eq!(
            run(&deleted, cps.clone(), &key),
            Err(LogError::Chain(crate::VerifyError::Gap {
                seq: 32,
                expected: 31
            }))
        );

        // A careful forger rewrites entry 30 and recomputes every later hash:
        // the chain is consistent again, but the signed root at 50 is not.
        let mut rewritten = l.clone();
        rewritten[29].event.outcome = Some("allow".into());
        let mut prev = rewritten[28].hash;
        for e in rewritten.iter_mut().skip(29) {
            *e = chain(e.seq, prev, e.event.clone());
            prev = e.hash;
        }
        assert_eq!(
            run(&rewritten, cps.clone(), &key),
            Err(LogError::CheckpointMismatch {
                after: 21,
                size: 50
            })
        );

        assert_eq!(
            run(&l[..40], cps.clone(), &key),
            Err(LogError::Truncated { have: 40, size: 50 })
        );

        let mut forged_cp = cps.clone();
        forged_cp[1].tree_size = 40;
        assert!(matches!(
            run(&l, forged_cp, &key),
            Err(LogError::Checkpoint(_))
        ));
    }
}
