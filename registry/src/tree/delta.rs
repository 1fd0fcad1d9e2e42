//! Internal nodes stored as their difference from an earlier full record.
//!
//! A block of a few thousand updates rewrites most of the 4 096 nodes at
//! depth 3, each with up to 16 children (646 bytes), while it changes one
//! or two children of each: about half of the tree bytes a block writes
//! (`examples/level_bytes.rs`). The RocksDB store writes such a node as an
//! [`InternalDelta`]: the children that differ from a *full* record of the
//! same position at an earlier version (its base). A read resolves it with
//! one more read; deltas never chain. The store keeps a base until no
//! delta on it is readable (store/top_nodes.rs).

use super::node::{
    Child, InternalNode, Node, NodeCodecError, CHILD_LEN, KIND_INTERNAL_DELTA, NODE_FORMAT_VERSION,
};

/// Bytes before the children: format, kind, base version, three bitmaps.
const HEADER_LEN: usize = 2 + 8 + 3 * 2;

/// An internal node as the children that differ from its base's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalDelta {
    /// Version of the full record at the same path this one amends.
    pub base_version: u64,
    /// The node's occupied slots and leaf slots (as in [`InternalNode`]).
    existence: u16,
    leaves: u16,
    /// Occupied slots whose child differs from the base's (a subset of
    /// `existence`); slots the base has and `existence` lacks are removed.
    changed: u16,
    /// The children of the `changed` slots, in nibble order.
    children: Vec<Child>,
}

impl InternalDelta {
    /// `node` as a difference from `base`, the full record stored at
    /// `base_version`.
    pub fn between(base_version: u64, base: &InternalNode, node: &InternalNode) -> Self {
        let (existence, leaves) = node.bitmaps();
        let mut changed = 0u16;
        let mut children = Vec::new();
        for (nibble, child) in node.children() {
            if base.child(nibble) != Some(child) {
                changed |= 1 << nibble;
                children.push(*child);
            }
        }
        InternalDelta {
            base_version,
            existence,
            leaves,
            changed,
            children,
        }
    }

    /// How many children the delta carries.
    pub fn changed_children(&self) -> usize {
        self.children.len()
    }

    /// The node: `base` (the full record at `base_version`) amended.
    pub fn apply(&self, base: &InternalNode) -> Result<InternalNode, NodeCodecError> {
        let mut changed = self.children.iter();
        let mut children = Vec::with_capacity(self.existence.count_ones() as usize);
        for nibble in (0..16u8).filter(|n| self.existence & (1 << n) != 0) {
            let child = if self.changed & (1 << nibble) != 0 {
                changed.next()
            } else {
                base.child(nibble)
                    .filter(|kept| kept.is_leaf == (self.leaves & (1 << nibble) != 0))
            };
            children.push(*child.ok_or(NodeCodecError::DeltaBase(nibble))?);
        }
        InternalNode::from_parts(self.existence, self.leaves, children)
    }

    /// The length of the encoding [`write_bytes`](Self::write_bytes) appends.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + CHILD_LEN * self.children.len()
    }

    /// Appends the encoding: format byte, kind byte, base version (u64 LE),
    /// the children, leaf and changed bitmaps (u16 LE each), then each
    /// changed child in nibble order as in a full internal node.
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[NODE_FORMAT_VERSION, KIND_INTERNAL_DELTA]);
        out.extend_from_slice(&self.base_version.to_le_bytes());
        for bitmap in [self.existence, self.leaves, self.changed] {
            out.extend_from_slice(&bitmap.to_le_bytes());
        }
        for child in &self.children {
            child.write_bytes(out);
        }
    }

    /// Decodes what follows the format and kind bytes.
    fn from_body(body: &[u8]) -> Result<Self, NodeCodecError> {
        let length = |expected: usize| NodeCodecError::Length {
            what: "internal node delta",
            expected,
            found: body.len() + 2,
        };
        let Some((base_version, rest)) = body.split_first_chunk::<8>() else {
            return Err(length(HEADER_LEN));
        };
        let Some((bitmaps, children_bytes)) = rest.split_first_chunk::<6>() else {
            return Err(length(HEADER_LEN));
        };
        let [e0, e1, l0, l1, c0, c1] = *bitmaps;
        let (existence, leaves, changed) = (
            u16::from_le_bytes([e0, e1]),
            u16::from_le_bytes([l0, l1]),
            u16::from_le_bytes([c0, c1]),
        );
        if changed & !existence != 0 || leaves & !existence != 0 {
            return Err(NodeCodecError::Bitmaps { existence, leaves });
        }
        let count = changed.count_ones() as usize;
        if children_bytes.len() != count * CHILD_LEN {
            return Err(length(HEADER_LEN + count * CHILD_LEN));
        }
        Ok(InternalDelta {
            base_version: u64::from_le_bytes(*base_version),
            existence,
            leaves,
            changed,
            children: Child::list_from_bytes(children_bytes, changed, leaves),
        })
    }
}

/// What the store holds under a node key: the node, or a delta that needs
/// its base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRecord {
    Full(Node),
    Delta(InternalDelta),
}

impl NodeRecord {
    /// Decodes a stored record: an encoded [`Node`] or [`InternalDelta`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NodeCodecError> {
        match bytes {
            [NODE_FORMAT_VERSION, KIND_INTERNAL_DELTA, body @ ..] => {
                InternalDelta::from_body(body).map(NodeRecord::Delta)
            }
            _ => Node::from_bytes(bytes).map(NodeRecord::Full),
        }
    }
}

#[cfg(test)]
mod tests {
    use keyreg_consensus::crypto::Hash;
    use proptest::prelude::*;

    use super::*;

    /// A valid internal node from up to 16 optional children.
    fn internal(slots: &[Option<(u64, u8, bool)>]) -> Option<InternalNode> {
        let children: Vec<(u8, Child)> = (0u8..)
            .zip(slots)
            .filter_map(|(nibble, slot)| {
                slot.map(|(version, byte, is_leaf)| {
                    let child = Child {
                        version,
                        hash: Hash([byte; 32]),
                        is_leaf,
                    };
                    (nibble, child)
                })
            })
            .collect();
        let valid = children.len() > 1 || children.iter().all(|(_, c)| !c.is_leaf);
        (!children.is_empty() && valid).then(|| InternalNode::from_children(children))
    }

    fn slots() -> impl Strategy<Value = Vec<Option<(u64, u8, bool)>>> {
        prop::collection::vec(prop::option::of((0u64..4, 0u8..3, any::<bool>())), 16)
    }

    fn encoded(delta: &InternalDelta) -> Vec<u8> {
        let mut bytes = Vec::new();
        delta.write_bytes(&mut bytes);
        assert_eq!(bytes.len(), delta.encoded_len());
        bytes
    }

    proptest! {
        /// Any node against any base: the delta carries exactly the
        /// differing children, survives its encoding, and gives the node back.
        #[test]
        fn a_delta_gives_the_node_back_from_its_base(base in slots(), node in slots()) {
            let (Some(base), Some(node)) = (internal(&base), internal(&node)) else {
                return Ok(());
            };
            let delta = InternalDelta::between(7, &base, &node);
            let differing = node.children().filter(|(n, c)| base.child(*n) != Some(*c)).count();
            prop_assert_eq!(delta.changed_children(), differing);
            let bytes = encoded(&delta);
            prop_assert_eq!(NodeRecord::from_bytes(&bytes), Ok(NodeRecord::Delta(delta.clone())));
            prop_assert_eq!(delta.apply(&base), Ok(node));
            for cut in 0..bytes.len() {
                prop_assert!(NodeRecord::from_bytes(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_delta_is_not_a_node_on_its_own() {
        let base = internal(&[Some((1, 1, true)), Some((1, 2, true))]).unwrap();
        let node = internal(&[Some((1, 1, true)), Some((2, 3, true))]).unwrap();
        let bytes = encoded(&InternalDelta::between(1, &base, &node));
        assert_eq!(
            Node::from_bytes(&bytes),
            Err(NodeCodecError::DeltaWithoutBase)
        );
    }

    #[test]
    fn a_delta_against_the_wrong_base_is_refused() {
        let base = internal(&[Some((1, 1, true)), Some((1, 2, true))]).unwrap();
        let node = internal(&[Some((1, 1, true)), Some((2, 3, true))]).unwrap();
        let delta = InternalDelta::between(1, &base, &node);
        // Slot 0 is kept from the base: a base without it, or with an
        // internal node there, cannot be the one the delta was made on.
        let lacking = internal(&[None, Some((1, 2, true)), Some((1, 4, true))]).unwrap();
        assert_eq!(delta.apply(&lacking), Err(NodeCodecError::DeltaBase(0)));
        let other_kind = internal(&[Some((1, 1, false)), Some((1, 2, true))]).unwrap();
        assert_eq!(delta.apply(&other_kind), Err(NodeCodecError::DeltaBase(0)));
    }

    #[test]
    fn inconsistent_bitmaps_are_refused() {
        let base = internal(&[Some((1, 1, true)), Some((1, 2, true))]).unwrap();
        let node = internal(&[Some((1, 1, true)), Some((2, 3, true))]).unwrap();
        let mut bytes = encoded(&InternalDelta::between(1, &base, &node));
        // Mark slot 5 changed although the node has no child there.
        bytes[HEADER_LEN - 2] |= 1 << 5;
        assert!(matches!(
            NodeRecord::from_bytes(&bytes),
            Err(NodeCodecError::Bitmaps { .. })
        ));
    }
}
