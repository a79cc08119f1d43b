//! RFC 6962 / RFC 9162 Merkle trees over audit entries.
//!
//! Leaf hash = SHA-256(0x00 || entry hash); interior node =
//! SHA-256(0x01 || left || right). The tree of n leaves splits at the
//! largest power of two smaller than n. Proof algorithms follow RFC 9162
//! §2.1.3 (inclusion) and §2.1.4 (consistency).

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

fn split(n: usize) -> usize {
    // Largest power of two strictly smaller than n (n >= 2).
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Merkle tree hash of leaf hashes (already leaf-hashed).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Audit path for leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return vec![];
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(index, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(index - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// RFC 9162 §2.1.3.2: verify an inclusion proof.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.1: consistency proof between the first `m` leaves and all of `leaves`.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete { vec![] } else { vec![root(leaves)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = subproof(m, &leaves[..k], complete);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(root(&leaves[..k]));
            p
        }
    }
    if m == 0 || m >= leaves.len() {
        return vec![];
    }
    subproof(m, leaves, true)
}

/// RFC 9162 §2.1.4.2: verify that the tree of size `m` with `first_root` is
/// a prefix of the tree of size `n` with `second_root`.
pub fn verify_consistency(
    m: u64,
    n: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if m == n {
        return proof.is_empty() && first_root == second_root;
    }
    if m == 0 || m > n {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, *first_root);
    }
    if path.is_empty() {
        return false;
    }
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *first_root && sr == *second_root
}

/// The right edge of a growing tree: the roots of its perfect subtrees,
/// largest first. Appending is O(log n) and the root of the current size
/// is O(log n), so a verifier or a store can follow a log of millions of
/// entries and produce the root at any checkpoint size as it streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (height, hash) of each perfect subtree, largest first.
    peaks: Vec<(u32, Hash)>,
}

impl CompactRange {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// The peaks' hashes, largest subtree first: with [`Self::size`], all a
    /// store needs to keep the right edge outside memory (the heights follow
    /// from the size's bits).
    pub fn peak_hashes(&self) -> impl Iterator<Item = &Hash> {
        self.peaks.iter().map(|(_, h)| h)
    }

    /// The inverse of [`Self::size`] and [`Self::peak_hashes`]; `None` unless
    /// there is exactly one hash per set bit of `size`.
    pub fn from_peaks(size: u64, hashes: &[Hash]) -> Option<Self> {
        if hashes.len() != size.count_ones() as usize {
            return None;
        }
        // Set bits from the highest down: the largest perfect subtree first.
        let heights = (0..64u32).rev().filter(|b| size & (1u64 << b) != 0);
        Some(Self {
            size,
            peaks: heights.zip(hashes.iter().copied()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    #[test]
    fn compact_range_matches_the_recursive_root() {
        let l = leaves(300);
        let mut c = CompactRange::default();
        assert_eq!(c.root(), empty_root());
        for (i, leaf) in l.iter().enumerate() {
            c.push(*leaf);
            assert_eq!(c.root(), root(&l[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn compact_range_round_trips_through_its_peaks() {
        let mut c = CompactRange::default();
        for leaf in leaves(70) {
            let hashes: Vec<Hash> = c.peak_hashes().copied().collect();
            assert_eq!(CompactRange::from_peaks(c.size(), &hashes), Some(c.clone()));
            c.push(leaf);
        }
        // One hash per set bit of the size, no more, no fewer.
        assert_eq!(CompactRange::from_peaks(3, &[[0u8; 32]]), None);
        assert_eq!(CompactRange::from_peaks(0, &[[0u8; 32]]), None);
    }

    proptest! {
        #[test]
        fn inclusion_proofs_verify_and_tampering_fails(n in 1usize..200, i in 0usize..200, flip in 0usize..32) {
            let l = leaves(n);
            let i = i % n;
            let r = root(&l);
            let p = inclusion_proof(i, &l);
            prop_assert!(verify_inclusion(i as u64, n as u64, &l[i], &p, &r));
            // Another leaf, a wrong index, a changed proof or root: refused.
            let other = leaf_hash(&[7u8; 32]);
            prop_assert!(!verify_inclusion(i as u64, n as u64, &other, &p, &r));
            if n > 1 {
                prop_assert!(!verify_inclusion(((i + 1) % n) as u64, n as u64, &l[i], &p, &r) || l[(i + 1) % n] == l[i]);
                let mut bad = p.clone();
                let at = flip % bad.len();
                bad[at][flip] ^= 1;
                prop_assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &r));
            }
            let mut bad_root = r;
            bad_root[flip] ^= 1;
            prop_assert!(!verify_inclusion(i as u64, n as u64, &l[i], &p, &bad_root));
        }

        #[test]
        fn consistency_proofs_verify_and_tampering_fails(n in 1usize..150, m in 1usize..150, flip in 0usize..32) {
            let l = leaves(n);
            let m = 1 + (m - 1) % n;
            let (r1, r2) = (root(&l[..m]), root(&l));
            let p = consistency_proof(m, &l);
            prop_assert!(verify_consistency(m as u64, n as u64, &r1, &r2, &p));
            let mut bad = r1;
            bad[flip] ^= 1;
            prop_assert!(!verify_consistency(m as u64, n as u64, &bad, &r2, &p));
            if !p.is_empty() {
                let mut badp = p.clone();
                badp[0][flip] ^= 1;
                prop_assert!(!verify_consistency(m as u64, n as u64, &r1, &r2, &badp));
            }
            // A rewritten history (different first leaf) is not consistent.
            if m < n {
                let mut forged = l.clone();
                forged[0] = leaf_hash(&[9u8; 32]);
                prop_assert!(!verify_consistency(m as u64, n as u64, &root(&forged[..m]), &r2, &p));
            }
        }
    }
}
