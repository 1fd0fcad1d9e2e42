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

/// `H(TreeLeaf, key || value_hash)`.
pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    hash_pair(LEAF_PREFIX, key, value_hash)
}

/// `H(TreeNode, left || right)`: an inner node of the binary view.
pub fn internal_hash(left: &Hash, right: &Hash) -> Hash {
    hash_pair(NODE_PREFIX, left, right)
}

/// What `keyreg_consensus::crypto::hasher` feeds before the data, spelled
/// out so the two hot hashes below run as one-shot BLAKE3 over a stack
/// buffer instead of through the (2 KiB) incremental hasher. A test checks
/// they agree with `hash_parts`.
const LEAF_PREFIX: &[u8; 17] = b"keyreg/tree-leaf\0";
const NODE_PREFIX: &[u8; 17] = b"keyreg/tree-node\0";

fn hash_pair(prefix: &[u8; 17], first: &Hash, second: &Hash) -> Hash {
    let mut input = [0u8; 17 + 64];
    input[..17].copy_from_slice(prefix);
    input[17..49].copy_from_slice(&first.0);
    input[49..].copy_from_slice(&second.0);
    Hash(*blake3::hash(&input).as_bytes())
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
    fn pair_hashes_match_the_shared_domain_hashing() {
        use keyreg_consensus::crypto::hash_parts;
        let (a, b) = (hash(Domain::Block, b"a"), hash(Domain::Block, b"b"));
        assert_eq!(
            leaf_hash(&a, &b),
            hash_parts(Domain::TreeLeaf, &[&a.0, &b.0])
        );
        assert_eq!(
            internal_hash(&a, &b),
            hash_parts(Domain::TreeNode, &[&a.0, &b.0])
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
