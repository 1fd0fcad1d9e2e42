//! The tree's hash functions. Each kind of hash has its own domain, so a
//! leaf can never pass for an inner node, an inner node for a leaf, or
//! either for the empty subtree.

use keyreg_consensus::crypto::{hash, Domain, Hash};

/// Hash of an empty subtree: `H(TreeEmpty, "")` (checked by a test).
pub const EMPTY_SUBTREE_HASH: Hash = Hash([
    0x4d, 0x11, 0xc2, 0x99, 0xb5, 0x48, 0x62, 0x11, 0xc3, 0x6e, 0x5c, 0x1c, 0x35, 0x41, 0x93, 0x16,
    0x1e, 0x55, 0x32, 0x30, 0xf9, 0x94, 0x1f, 0x59, 0xf7, 0xf9, 0xeb, 0x59, 0x91, 0xbf, 0xb3, 0x74,
]);

/// `H(TreeValue, value)`: what a leaf commits to and a proof carries.
pub fn value_hash(value: &[u8]) -> Hash {
    hash(Domain::TreeValue, value)
}

/// `K(TreeLeaf, key || value_hash)`.
pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    hash_pair(&LEAF_KEY, key, value_hash)
}

/// `K(TreeNode, left || right)`: an inner node of the binary view.
pub fn internal_hash(left: &Hash, right: &Hash) -> Hash {
    hash_pair(&NODE_KEY, left, right)
}

/// The keys of the two hot pair hashes: BLAKE3's `derive_key` with the
/// context `"keyreg/" || tag` and no key material (a test pins them). Keyed
/// mode separates these domains from each other and from every prefixed
/// `H(domain, ..)` without a prefix in the input, so the 64-byte input is a
/// single BLAKE3 block: one compression per hash instead of two.
const LEAF_KEY: [u8; 32] = [
    0x5c, 0xbb, 0xbf, 0x63, 0x2f, 0x4f, 0x62, 0x80, 0x6e, 0x8e, 0x39, 0x41, 0x98, 0xaa, 0xca, 0x1d,
    0xd9, 0x08, 0x05, 0x66, 0x84, 0x23, 0x48, 0x19, 0xd8, 0x4c, 0x55, 0x23, 0xdf, 0x92, 0x4d, 0x60,
];
const NODE_KEY: [u8; 32] = [
    0x10, 0x9b, 0xd7, 0x6a, 0xdb, 0x95, 0x6f, 0x12, 0x1d, 0xa0, 0xee, 0x13, 0xa8, 0x70, 0x1a, 0x77,
    0xf0, 0x89, 0x1f, 0xaa, 0xf2, 0x85, 0x60, 0xbc, 0x97, 0x0f, 0x6f, 0x8a, 0xec, 0x10, 0x6f, 0xc6,
];

fn hash_pair(key: &[u8; 32], first: &Hash, second: &Hash) -> Hash {
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(&first.0);
    input[32..].copy_from_slice(&second.0);
    Hash(*blake3::keyed_hash(key, &input).as_bytes())
}

/// Bit `index` of `key` (0 = most significant bit of the first byte).
pub fn key_bit(key: &Hash, index: usize) -> bool {
    assert!(index < 256, "bit index {index} out of range");
    key.0
        .get(index / 8)
        .is_some_and(|byte| byte & (0x80 >> (index % 8)) != 0)
}

/// Whether `a` and `b` agree on their first `bits` bits.
pub fn share_prefix(a: &Hash, b: &Hash, bits: usize) -> bool {
    assert!(bits <= 256, "prefix of {bits} bits is too long");
    let whole = bits / 8;
    if a.0.get(..whole) != b.0.get(..whole) {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = !(0xffu8 >> rest);
    a.0.get(whole).map(|x| x & mask) == b.0.get(whole).map(|x| x & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_subtree_constant_is_the_domain_hash_of_nothing() {
        assert_eq!(EMPTY_SUBTREE_HASH, hash(Domain::TreeEmpty, b""));
    }

    #[test]
    fn pair_hashes_are_keyed_by_their_domains() {
        for (key, domain) in [(LEAF_KEY, Domain::TreeLeaf), (NODE_KEY, Domain::TreeNode)] {
            let context = format!("keyreg/{}", domain.tag());
            assert_eq!(key, blake3::derive_key(&context, b""), "{context}");
        }
        let (a, b) = (hash(Domain::Block, b"a"), hash(Domain::Block, b"b"));
        let mut input = [0u8; 64];
        input[..32].copy_from_slice(&a.0);
        input[32..].copy_from_slice(&b.0);
        assert_eq!(
            internal_hash(&a, &b).0,
            *blake3::keyed_hash(&NODE_KEY, &input).as_bytes()
        );
        assert_eq!(
            leaf_hash(&a, &b).0,
            *blake3::keyed_hash(&LEAF_KEY, &input).as_bytes()
        );
        // Distinct from each other and from the prefixed domain hashes.
        assert_ne!(leaf_hash(&a, &b), internal_hash(&a, &b));
        assert_ne!(
            internal_hash(&a, &b),
            keyreg_consensus::crypto::hash_parts(Domain::TreeNode, &[&a.0, &b.0])
        );
    }

    #[test]
    fn prefix_comparison_is_bitwise() {
        let a = Hash([0b1010_0000; 32]);
        let mut b = a;
        b.0[3] = 0b1011_0000;
        assert!(share_prefix(&a, &b, 27));
        assert!(!share_prefix(&a, &b, 28));
        assert!(share_prefix(&a, &a, 256));
        assert!(key_bit(&a, 0) && !key_bit(&a, 1) && key_bit(&a, 2));
    }
}
