use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use keyreg_consensus::codec::{self, Canonical};
use keyreg_consensus::crypto::{hash, Domain, Hash};
use proptest::prelude::*;

use super::hashing::key_bit;
use super::*;

type Entries = BTreeMap<Hash, Vec<u8>>;

/// The root by definition: the compressed binary sparse Merkle tree over the
/// set, computed without any of the 16-ary machinery.
fn reference_root(entries: &Entries) -> Hash {
    fn subtree(leaves: &[(Hash, Hash)], depth: usize) -> Hash {
        match leaves {
            [] => EMPTY_SUBTREE_HASH,
            [(_, leaf)] => *leaf,
            _ => {
                let split = leaves.partition_point(|(k, _)| !key_bit(k, depth));
                internal_hash(
                    &subtree(&leaves[..split], depth + 1),
                    &subtree(&leaves[split..], depth + 1),
                )
            }
        }
    }
    let leaves: Vec<(Hash, Hash)> = entries
        .iter()
        .map(|(k, v)| (*k, leaf_hash(k, &value_hash(v))))
        .collect();
    subtree(&leaves, 0)
}

fn key(n: u64) -> Hash {
    hash(Domain::DeviceName, &n.to_le_bytes())
}

/// Keys crowded into a few prefixes, so that paths share many nibbles.
fn crowded_key(class: u8, n: u16) -> Hash {
    let mut k = hash(Domain::DeviceName, &n.to_le_bytes());
    k.0[0] = [0x00, 0x01, 0x80, 0xff][usize::from(class % 4)];
    if class >= 4 {
        k.0[1] = 0x5a;
        k.0[2] &= 0x0f;
    }
    k
}

fn inserts(entries: &Entries) -> Vec<Update> {
    entries.iter().map(|(k, v)| (*k, Some(v.clone()))).collect()
}

/// Applies `updates` on top of `base` into `store` and returns the new root.
fn commit(store: &mut MemNodeStore, base: Option<u64>, version: u64, updates: &[Update]) -> Hash {
    let batch = StateTree::new(&*store)
        .apply(base, version, updates)
        .unwrap();
    let root = batch.root;
    // Each new node has its own key under the new version; each stale node
    // is an existing node of an older version.
    let new_keys: BTreeSet<NodeKey> = batch.new_nodes.iter().map(|(k, _)| *k).collect();
    assert_eq!(new_keys.len(), batch.new_nodes.len());
    assert!(new_keys.iter().all(|k| k.version == version));
    assert!(new_keys.contains(&NodeKey::root(version)));
    for stale in &batch.stale_nodes {
        assert_eq!(stale.stale_since_version, version);
        assert!(stale.node_key.version < version);
        assert!(store.get_node(&stale.node_key).unwrap().is_some());
    }
    store.write_owned(batch);
    assert_eq!(StateTree::new(&*store).root(version).unwrap(), root);
    root
}

/// Every node reachable from `version`'s root.
fn reachable(store: &MemNodeStore, version: u64) -> usize {
    fn walk(store: &MemNodeStore, node_key: NodeKey) -> usize {
        match store.get_node(&node_key).unwrap().unwrap() {
            Node::Internal(internal) => {
                1 + internal
                    .children()
                    .map(|(n, c)| {
                        walk(
                            store,
                            NodeKey {
                                version: c.version,
                                path: node_key.path.child(n),
                            },
                        )
                    })
                    .sum::<usize>()
            }
            Node::Empty | Node::Leaf(_) => 1,
        }
    }
    walk(store, NodeKey::root(version))
}

/// Checks every key of `present` and of `absent` at `version`: get, proof,
/// and that the proof verifies exactly the true claim.
fn check_version(store: &MemNodeStore, version: u64, present: &Entries, absent: &[Hash]) {
    let tree = StateTree::new(store);
    let root = tree.root(version).unwrap();
    assert_eq!(root, reference_root(present));
    for (k, v) in present {
        assert_eq!(tree.get(version, k).unwrap().as_ref(), Some(v));
        let (value, proof) = tree.get_with_proof(version, k).unwrap();
        assert_eq!(value.as_ref(), Some(v));
        assert_eq!(proof.verify(&root, k, Some(v)), Ok(()));
        let mut wrong = v.clone();
        wrong.push(0);
        assert!(matches!(
            proof.verify(&root, k, Some(&wrong)),
            Err(ProofError::ValueMismatch { .. })
        ));
        assert!(matches!(
            proof.verify(&root, k, None),
            Err(ProofError::KeyPresent(_))
        ));
    }
    for k in absent.iter().filter(|k| !present.contains_key(*k)) {
        assert_eq!(tree.get(version, k).unwrap(), None);
        let (value, proof) = tree.get_with_proof(version, k).unwrap();
        assert_eq!(value, None);
        assert_eq!(proof.verify(&root, k, None), Ok(()));
        assert!(matches!(
            proof.verify(&root, k, Some(b"x")),
            Err(ProofError::KeyAbsentEmptySubtree | ProofError::KeyAbsentOtherLeaf(_))
        ));
    }
}

fn entries_strategy(max: usize) -> impl Strategy<Value = Entries> {
    prop::collection::btree_map(
        (0u8..8, any::<u16>()).prop_map(|(c, n)| crowded_key(c, n)),
        prop::collection::vec(any::<u8>(), 0..40),
        0..max,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn proofs_verify_exactly_the_true_claims(
        entries in entries_strategy(80),
        absent in prop::collection::vec((0u8..8, any::<u16>()).prop_map(|(c, n)| crowded_key(c, n)), 0..30),
    ) {
        let mut store = MemNodeStore::new();
        commit(&mut store, None, 1, &inserts(&entries));
        check_version(&store, 1, &entries, &absent);
    }

    #[test]
    fn root_ignores_insertion_order_and_batch_split(
        entries in entries_strategy(80),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        shuffle_seed in any::<u64>(),
    ) {
        let all = inserts(&entries);
        let mut one_batch = MemNodeStore::new();
        let expected = commit(&mut one_batch, None, 1, &all);
        prop_assert_eq!(expected, reference_root(&entries));

        // Same set in a shuffled order, cut into batches at random points.
        let mut order: Vec<usize> = (0..all.len()).collect();
        let mut state = shuffle_seed | 1;
        for i in (1..order.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut cuts: Vec<usize> = splits.iter().map(|s| s.index(all.len() + 1)).collect();
        cuts.push(0);
        cuts.push(all.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut split_store = MemNodeStore::new();
        let mut version = None;
        let mut root = EMPTY_SUBTREE_HASH;
        for (n, pair) in cuts.windows(2).enumerate() {
            let mut batch: Vec<Update> = order[pair[0]..pair[1]].iter().map(|&i| all[i].clone()).collect();
            batch.sort_by_key(|update| update.0);
            root = commit(&mut split_store, version, n as u64 + 1, &batch);
            version = Some(n as u64 + 1);
        }
        prop_assert_eq!(root, expected);
    }

    #[test]
    fn random_update_sequences_match_the_reference_at_every_version(
        steps in prop::collection::vec(
            prop::collection::btree_map(
                (0u8..8, 0u16..64).prop_map(|(c, n)| crowded_key(c, n)),
                prop::option::weighted(0.6, prop::collection::vec(any::<u8>(), 0..20)),
                0..24,
            ),
            1..8,
        ),
        prune_at in any::<prop::sample::Index>(),
    ) {
        let mut store = MemNodeStore::new();
        let mut states: Vec<Entries> = Vec::new();
        let mut current = Entries::new();
        for (i, step) in steps.iter().enumerate() {
            let updates: Vec<Update> = step.iter().map(|(k, v)| (*k, v.clone())).collect();
            for (k, v) in step {
                match v {
                    Some(v) => { current.insert(*k, v.clone()); }
                    None => { current.remove(k); }
                }
            }
            let version = i as u64 + 1;
            let root = commit(&mut store, (i > 0).then_some(i as u64), version, &updates);
            prop_assert_eq!(root, reference_root(&current));
            states.push(current.clone());
        }
        let probes: Vec<Hash> = (0..8).flat_map(|c| (0..64).map(move |n| crowded_key(c, n))).step_by(7).collect();
        for (i, state) in states.iter().enumerate() {
            check_version(&store, i as u64 + 1, state, &probes);
        }
        // Prune: every version from the cut on stays intact.
        let latest = states.len() as u64;
        let keep_from = prune_at.index(states.len()) as u64 + 1;
        store.prune(keep_from);
        for version in keep_from..=latest {
            check_version(&store, version, &states[version as usize - 1], &probes);
        }
        // Pruning up to the latest leaves exactly the latest tree: no leaks.
        store.prune(latest);
        prop_assert_eq!(store.node_count(), reachable(&store, latest));
        prop_assert_eq!(store.stale_count(), 0);
    }
}

#[test]
fn empty_tree_proves_absence() {
    let mut store = MemNodeStore::new();
    let root = commit(&mut store, None, 0, &[]);
    assert_eq!(root, EMPTY_SUBTREE_HASH);
    check_version(&store, 0, &Entries::new(), &[key(1), key(2)]);
    // Deleting an absent key changes nothing.
    assert_eq!(commit(&mut store, Some(0), 1, &[(key(1), None)]), root);
}

#[test]
fn single_leaf_is_the_root() {
    let mut store = MemNodeStore::new();
    let root = commit(&mut store, None, 1, &[(key(1), Some(b"v".to_vec()))]);
    assert_eq!(root, leaf_hash(&key(1), &value_hash(b"v")));
    let (_, proof) = StateTree::new(&store).get_with_proof(1, &key(1)).unwrap();
    assert!(proof.siblings.is_empty());
    let entries = Entries::from([(key(1), b"v".to_vec())]);
    check_version(&store, 1, &entries, &[key(2), key(3)]);
}

#[test]
fn delete_then_reinsert_round_trips_the_root() {
    let entries: Entries = (0..300).map(|i| (key(i), vec![i as u8; 10])).collect();
    let mut store = MemNodeStore::new();
    let full = commit(&mut store, None, 1, &inserts(&entries));
    let deleted: Vec<Update> = entries.keys().step_by(3).map(|k| (*k, None)).collect();
    let partial = commit(&mut store, Some(1), 2, &deleted);
    assert_ne!(partial, full);
    let reinserted: Vec<Update> = deleted
        .iter()
        .map(|(k, _)| (*k, Some(entries[k].clone())))
        .collect();
    assert_eq!(commit(&mut store, Some(2), 3, &reinserted), full);
    let all_deleted: Vec<Update> = entries.keys().map(|k| (*k, None)).collect();
    assert_eq!(
        commit(&mut store, Some(3), 4, &all_deleted),
        EMPTY_SUBTREE_HASH
    );
    store.prune(4);
    assert_eq!(store.node_count(), 1, "only the empty root is left");
    check_version(&store, 4, &Entries::new(), &[key(1)]);
}

#[test]
fn deepest_possible_leaves_have_256_siblings() {
    let a = Hash([0u8; 32]);
    let mut b = a;
    b.0[31] = 1; // differs only in the last bit
    let entries = Entries::from([(a, b"a".to_vec()), (b, b"b".to_vec())]);
    let mut store = MemNodeStore::new();
    commit(&mut store, None, 1, &inserts(&entries));
    let (_, proof) = StateTree::new(&store).get_with_proof(1, &a).unwrap();
    assert_eq!(proof.siblings.len(), MAX_PROOF_SIBLINGS);
    let decoded = SparseMerkleProof::from_bytes(&proof.to_bytes()).unwrap();
    assert_eq!(decoded, proof);
    check_version(&store, 1, &entries, &[Hash([0xff; 32])]);
    // Deleting one floats the other back up to the root.
    let root = commit(&mut store, Some(1), 2, &[(b, None)]);
    assert_eq!(root, leaf_hash(&a, &value_hash(b"a")));
    store.prune(2);
    assert_eq!(store.node_count(), 1);
}

/// A reader that counts the nodes it serves.
struct CountingReader<'a> {
    inner: &'a MemNodeStore,
    reads: Cell<usize>,
}

impl NodeReader for CountingReader<'_> {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get_node(key)
    }
}

#[test]
fn updates_touch_only_their_paths() {
    let entries: Entries = (0..5000).map(|i| (key(i), vec![1; 8])).collect();
    let mut store = MemNodeStore::new();
    commit(&mut store, None, 1, &inserts(&entries));
    let counting = CountingReader {
        inner: &store,
        reads: Cell::new(0),
    };
    let mut updates = vec![(key(17), Some(vec![2; 8])), (key(10_001), Some(vec![3]))];
    updates.sort();
    let batch = StateTree::new(&counting)
        .apply(Some(1), 2, &updates)
        .unwrap();
    // 5000 random keys sit about 4 nibbles deep: a handful of nodes per key.
    assert!(counting.reads.get() <= 12, "{} reads", counting.reads.get());
    assert!(
        batch.new_nodes.len() <= 12,
        "{} new nodes",
        batch.new_nodes.len()
    );
    assert!(batch.stale_nodes.len() <= batch.new_nodes.len());
    let get_reads = counting.reads.get();
    StateTree::new(&counting)
        .get_with_proof(1, &key(3))
        .unwrap();
    assert!(counting.reads.get() - get_reads <= 6);
}

/// A reader that records the keys it is asked for.
struct RecordingReader<'a> {
    inner: &'a MemNodeStore,
    asked: std::cell::RefCell<Vec<NodeKey>>,
}

impl NodeReader for RecordingReader<'_> {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        self.asked.borrow_mut().push(*key);
        self.inner.get_node(key)
    }
}

#[test]
fn a_leaf_pushed_down_by_a_new_sibling_is_read_once() {
    // Two keys under different first nibbles: the root holds both leaves.
    let (a, b, c) = (crowded_key(0, 1), crowded_key(2, 1), crowded_key(0, 2));
    assert_eq!(nibble_at(&a, 0), nibble_at(&c, 0));
    let mut store = MemNodeStore::new();
    commit(
        &mut store,
        None,
        1,
        &inserts(&[(a, vec![1]), (b, vec![2])].into()),
    );
    let recording = RecordingReader {
        inner: &store,
        asked: Default::default(),
    };
    // `c` shares `a`'s first nibble, so `a` moves below a new internal node.
    let batch = StateTree::new(&recording)
        .apply(Some(1), 2, &[(c, Some(vec![3]))])
        .unwrap();
    let leaf_a = NodeKey {
        version: 1,
        path: NibblePath::ROOT.child(nibble_at(&a, 0)),
    };
    let asked = recording.asked.borrow();
    assert_eq!(
        asked.iter().filter(|k| **k == leaf_a).count(),
        1,
        "{asked:?}"
    );
    assert!(batch.stale_nodes.iter().any(|s| s.node_key == leaf_a));
    commit(&mut store, Some(1), 2, &[(c, Some(vec![3]))]);
    let expected: Entries = [(a, vec![1]), (b, vec![2]), (c, vec![3])].into();
    assert_eq!(
        StateTree::new(&store).root(2).unwrap(),
        reference_root(&expected)
    );
}

#[test]
fn every_tampered_byte_breaks_verification() {
    let entries: Entries = (0..200).map(|i| (key(i), vec![i as u8; 12])).collect();
    let mut store = MemNodeStore::new();
    let root = commit(&mut store, None, 1, &inserts(&entries));
    let tree = StateTree::new(&store);
    for (k, claim) in [
        (key(5), Some(entries[&key(5)].as_slice())),
        (key(999), None),
    ] {
        let (_, proof) = tree.get_with_proof(1, &k).unwrap();
        assert_eq!(proof.verify(&root, &k, claim), Ok(()));
        let bytes = proof.to_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80] {
                let mut tampered = bytes.clone();
                tampered[i] ^= flip;
                if let Ok(p) = SparseMerkleProof::from_bytes(&tampered) {
                    assert!(
                        p.verify(&root, &k, claim).is_err(),
                        "byte {i} flip {flip:#x}"
                    );
                }
            }
        }
        for i in 0..32 {
            let mut bad_root = root;
            bad_root.0[i] ^= 1;
            assert!(matches!(
                proof.verify(&bad_root, &k, claim),
                Err(ProofError::RootMismatch { .. })
            ));
            // A membership proof says nothing true about another key's value.
            let mut other_key = k;
            other_key.0[i] ^= 1;
            if claim.is_some() {
                assert!(proof.verify(&root, &other_key, claim).is_err());
            }
        }
        if let Some(value) = claim {
            for i in 0..value.len() {
                let mut bad = value.to_vec();
                bad[i] ^= 1;
                assert!(proof.verify(&root, &k, Some(&bad)).is_err());
            }
        }
    }
}

#[test]
fn proof_decoding_is_bounded_and_canonical() {
    let mut store = MemNodeStore::new();
    let entries: Entries = (0..50).map(|i| (key(i), vec![7; 3])).collect();
    let root = commit(&mut store, None, 1, &inserts(&entries));
    let (_, proof) = StateTree::new(&store).get_with_proof(1, &key(1)).unwrap();

    let mut trailing = proof.to_bytes();
    trailing.push(0);
    assert!(SparseMerkleProof::from_bytes(&trailing).is_err());
    let mut bad_option_tag = proof.to_bytes();
    bad_option_tag[1] = 2;
    assert!(SparseMerkleProof::from_bytes(&bad_option_tag).is_err());
    let mut short_count = proof.to_bytes();
    short_count[66] -= 1; // sibling count one lower than the hashes that follow
    assert!(SparseMerkleProof::from_bytes(&short_count).is_err());

    let oversize = SparseMerkleProof {
        siblings: vec![Hash::ZERO; MAX_PROOF_SIBLINGS + 1],
        ..proof.clone()
    };
    let encoded = codec::encode(&oversize);
    assert!(codec::decode::<SparseMerkleProof>(&encoded).is_err());
    assert_eq!(
        oversize.verify(&root, &key(1), Some(&[7; 3])),
        Err(ProofError::TooManySiblings(MAX_PROOF_SIBLINGS + 1))
    );
    // A huge declared length is refused before any allocation.
    let mut huge = vec![SparseMerkleProof::VERSION, 0];
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(SparseMerkleProof::from_bytes(&huge).is_err());

    let json = serde_json::to_string(&proof).unwrap();
    assert!(json.contains(&quoted_hex_of_first_sibling(&proof)));
    assert_eq!(
        serde_json::from_str::<SparseMerkleProof>(&json).unwrap(),
        proof
    );
    let oversize_json = serde_json::to_string(&oversize).unwrap();
    assert!(serde_json::from_str::<SparseMerkleProof>(&oversize_json).is_err());

    let wrong_version = SparseMerkleProof {
        version: 2,
        ..proof.clone()
    };
    assert_eq!(
        wrong_version.verify(&root, &key(1), Some(&[7; 3])),
        Err(ProofError::UnsupportedVersion(2))
    );
}

/// Proofs serialize hashes as hex strings.
fn quoted_hex_of_first_sibling(proof: &SparseMerkleProof) -> String {
    format!("\"{}\"", proof.siblings[0].to_hex())
}

#[test]
fn a_leaf_off_the_key_path_is_rejected() {
    let mut store = MemNodeStore::new();
    let entries: Entries = (0..50).map(|i| (key(i), vec![7; 3])).collect();
    let root = commit(&mut store, None, 1, &inserts(&entries));
    let (_, proof) = StateTree::new(&store).get_with_proof(1, &key(1)).unwrap();
    // Reusing key 1's membership proof to claim that a key on another path is absent.
    let mut elsewhere = key(1);
    elsewhere.0[0] ^= 0x80;
    assert!(matches!(
        proof.verify(&root, &elsewhere, None),
        Err(ProofError::LeafOffPath { .. })
    ));
}

#[test]
fn apply_rejects_bad_batches() {
    let mut store = MemNodeStore::new();
    commit(&mut store, None, 1, &[(key(1), Some(vec![1]))]);
    let tree = StateTree::new(&store);
    let (a, b) = if key(2) < key(3) {
        (key(2), key(3))
    } else {
        (key(3), key(2))
    };
    assert_eq!(
        tree.apply(Some(1), 2, &[(b, None), (a, None)]),
        Err(TreeError::UnsortedUpdates { index: 1 })
    );
    assert_eq!(
        tree.apply(Some(1), 2, &[(a, None), (a, None)]),
        Err(TreeError::UnsortedUpdates { index: 1 })
    );
    assert_eq!(
        tree.apply(Some(1), 2, &[(a, Some(vec![0; MAX_VALUE_LEN + 1]))]),
        Err(TreeError::ValueTooLarge {
            key: a,
            len: MAX_VALUE_LEN + 1
        })
    );
    assert_eq!(
        tree.apply(Some(1), 1, &[]),
        Err(TreeError::VersionNotIncreasing { base: 1, new: 1 })
    );
    assert_eq!(
        tree.apply(Some(7), 8, &[]),
        Err(TreeError::VersionNotFound(7))
    );
    assert_eq!(tree.root(9), Err(TreeError::VersionNotFound(9)));
}

#[test]
fn node_encodings_round_trip_and_reject_non_canonical_bytes() {
    let mut store = MemNodeStore::new();
    let entries: Entries = (0..100).map(|i| (key(i), vec![i as u8; 5])).collect();
    let batch = StateTree::new(&store)
        .apply(None, 1, &inserts(&entries))
        .unwrap();
    for (node_key, node) in &batch.new_nodes {
        assert_eq!(&Node::from_bytes(&node.to_bytes()).unwrap(), node);
        assert_eq!(
            &NodeKey::from_bytes(&node_key.to_bytes()).unwrap(),
            node_key
        );
        let mut trailing = node.to_bytes();
        trailing.push(0);
        assert!(Node::from_bytes(&trailing).is_err());
        let mut key_trailing = node_key.to_bytes();
        key_trailing.push(0);
        assert!(NodeKey::from_bytes(&key_trailing).is_err());
    }
    store.write(&batch);
    let Node::Internal(root) = store.get_node(&NodeKey::root(1)).unwrap().unwrap() else {
        panic!("100 keys make an internal root");
    };
    let bytes = Node::Internal(root).to_bytes();
    let internal = |existence: u16, leaves: u16, children: usize| {
        let mut b = vec![1, 1];
        b.extend_from_slice(&existence.to_le_bytes());
        b.extend_from_slice(&leaves.to_le_bytes());
        b.extend_from_slice(&vec![0; 40 * children]);
        b
    };
    assert!(Node::from_bytes(&internal(0b11, 0b01, 2)).is_ok());
    let leaf_bit_on_empty_slot = internal(0b11, 0b101, 2);
    let lone_leaf = internal(0b10, 0b10, 1);
    let no_children = internal(0, 0, 0);
    let child_missing = internal(0b111, 0, 2);
    let truncated = &bytes[..bytes.len() - 1];
    for bad in [
        &leaf_bit_on_empty_slot[..],
        &lone_leaf,
        &no_children,
        &child_missing,
        truncated,
        &[1, 9],
        &[2, 0],
        &[1, 0, 0],
    ] {
        assert!(Node::from_bytes(bad).is_err(), "{bad:?}");
    }
    let mut big_leaf = vec![1, 2];
    big_leaf.extend_from_slice(&[0; 32]);
    big_leaf.extend_from_slice(&(MAX_VALUE_LEN as u32 + 1).to_le_bytes());
    big_leaf.extend_from_slice(&vec![0; MAX_VALUE_LEN + 1]);
    assert_eq!(
        Node::from_bytes(&big_leaf),
        Err(NodeCodecError::ValueTooLarge(MAX_VALUE_LEN + 1))
    );
    // Odd-length path with junk in the padding nibble.
    let odd = NodeKey {
        version: 3,
        path: NibblePath::prefix_of(&Hash([0xab; 32]), 3),
    };
    let mut padded = odd.to_bytes();
    assert_eq!(padded, [0, 0, 0, 0, 0, 0, 0, 3, 3, 0xab, 0xa0]);
    *padded.last_mut().unwrap() |= 1;
    assert_eq!(
        NodeKey::from_bytes(&padded),
        Err(NodeCodecError::PathPadding)
    );
    let stale = StaleNode {
        stale_since_version: 9,
        node_key: odd,
    };
    assert_eq!(StaleNode::from_bytes(&stale.to_bytes()).unwrap(), stale);
    // A list of keys is the keys' bytes one after another, read back exactly.
    let keys = [odd, NodeKey::root(7), stale.node_key];
    let list = NodeKey::list_to_bytes(&keys);
    assert_eq!(NodeKey::list_from_bytes(&list).unwrap(), keys);
    assert_eq!(NodeKey::list_from_bytes(&[]).unwrap(), []);
    let truncated = &list[..list.len() - 1];
    assert!(matches!(
        NodeKey::list_from_bytes(truncated),
        Err(NodeCodecError::Length { .. })
    ));
    assert!(matches!(
        NodeKey::from_bytes(&list),
        Err(NodeCodecError::Length { .. })
    ));
}

#[test]
fn key_bytes_sort_by_version_first() {
    let deep = NodeKey {
        version: 1,
        path: NibblePath::prefix_of(&Hash([0xff; 32]), 64),
    };
    let later_root = NodeKey::root(256);
    assert!(deep.to_bytes() < later_root.to_bytes());
    assert!(deep < later_root);
    let a = StaleNode {
        stale_since_version: 2,
        node_key: NodeKey::root(300),
    };
    let b = StaleNode {
        stale_since_version: 3,
        node_key: NodeKey::root(0),
    };
    assert!(a.to_bytes() < b.to_bytes() && a < b);
}

/// A reader serving one replaced node, to play a corrupt store.
struct Tampered<'a> {
    inner: &'a MemNodeStore,
    at: NodeKey,
    node: Node,
}

impl NodeReader for Tampered<'_> {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        if *key == self.at {
            return Ok(Some(self.node.clone()));
        }
        self.inner.get_node(key)
    }
}

#[test]
fn a_corrupt_store_is_an_error_not_a_panic() {
    let entries: Entries = (0..40).map(|i| (key(i), vec![1])).collect();
    let mut store = MemNodeStore::new();
    commit(&mut store, None, 1, &inserts(&entries));
    let Node::Internal(root) = store.get_node(&NodeKey::root(1)).unwrap().unwrap() else {
        panic!("40 keys make an internal root");
    };
    let (nibble, child) = root.children().find(|(_, c)| c.is_leaf).unwrap();
    let at = NodeKey {
        version: child.version,
        path: NibblePath::ROOT.child(nibble),
    };
    let leaf_key = entries.keys().find(|k| nibble_at(k, 0) == nibble).unwrap();
    for node in [Node::Empty, Node::Internal(root.clone())] {
        let tampered = Tampered {
            inner: &store,
            at,
            node,
        };
        let tree = StateTree::new(&tampered);
        assert_eq!(tree.get(1, leaf_key), Err(TreeError::CorruptNode(at)));
        assert_eq!(
            tree.get_with_proof(1, leaf_key).map(|_| ()),
            Err(TreeError::CorruptNode(at))
        );
        assert_eq!(
            tree.apply(Some(1), 2, &[(*leaf_key, None)]).map(|_| ()),
            Err(TreeError::CorruptNode(at))
        );
    }
    // A store holding only version 2's rewritten root, not the children it keeps.
    let mut missing = MemNodeStore::new();
    missing.write(&StateTree::new(&store).apply(Some(1), 2, &[]).unwrap());
    assert_eq!(
        StateTree::new(&missing).get(2, leaf_key),
        Err(TreeError::MissingNode(at))
    );
}

/// What a RocksDB store does: nodes and the stale index as byte maps
/// (column families), one stale entry per version holding its node keys,
/// pruning by iterating the stale keys in byte order.
#[derive(Default)]
struct ByteStore {
    nodes: BTreeMap<Vec<u8>, Vec<u8>>,
    stale: BTreeMap<[u8; 8], Vec<u8>>,
}

impl ByteStore {
    fn write(&mut self, batch: &TreeBatch) {
        for (k, node) in &batch.new_nodes {
            self.nodes.insert(k.to_bytes(), node.to_bytes());
        }
        assert!(batch
            .stale_nodes
            .iter()
            .all(|stale| stale.stale_since_version == batch.version));
        if !batch.stale_nodes.is_empty() {
            let list =
                NodeKey::list_to_bytes(batch.stale_nodes.iter().map(|stale| &stale.node_key));
            self.stale.insert(batch.version.to_be_bytes(), list);
        }
    }

    fn prune(&mut self, oldest_kept_version: u64) {
        while let Some((since, list)) = self.stale.first_key_value() {
            if u64::from_be_bytes(*since) > oldest_kept_version {
                break;
            }
            for node_key in NodeKey::list_from_bytes(list).unwrap() {
                self.nodes.remove(&node_key.to_bytes());
            }
            self.stale.pop_first();
        }
    }
}

impl NodeReader for ByteStore {
    fn get_node(&self, key: &NodeKey) -> Result<Option<Node>, TreeError> {
        self.nodes
            .get(&key.to_bytes())
            .map(|bytes| Node::from_bytes(bytes).map_err(TreeError::from))
            .transpose()
    }
}

#[test]
fn a_byte_encoded_store_matches_the_memory_store() {
    let mut bytes = ByteStore::default();
    let mut memory = MemNodeStore::new();
    let mut current = Entries::new();
    for version in 1..=12u64 {
        let mut updates: Vec<Update> = (0..40u64)
            .map(|i| {
                let k = (version * 37 + i * 11) % 150;
                let value = (k % 5 != 0).then(|| vec![version as u8; (k % 9) as usize]);
                (key(k), value)
            })
            .collect();
        updates.sort_by_key(|update| update.0);
        updates.dedup_by_key(|update| update.0);
        for (k, v) in &updates {
            match v {
                Some(v) => current.insert(*k, v.clone()),
                None => current.remove(k),
            };
        }
        let base = (version > 1).then(|| version - 1);
        let from_bytes = StateTree::new(&bytes)
            .apply(base, version, &updates)
            .unwrap();
        let root = commit(&mut memory, base, version, &updates);
        assert_eq!(from_bytes.root, root);
        bytes.write(&from_bytes);
        bytes.prune(version.saturating_sub(3));
        memory.prune(version.saturating_sub(3));
        assert_eq!(bytes.nodes.len(), memory.node_count());
        let probes: Vec<Hash> = (150..160).map(key).collect();
        check_version(&memory, version, &current, &probes);
        let tree = StateTree::new(&bytes);
        for k in current.keys().chain(&probes) {
            assert_eq!(
                tree.get_with_proof(version, k).unwrap(),
                StateTree::new(&memory).get_with_proof(version, k).unwrap()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A store encodes nodes into reused buffers sized by `encoded_len`, and
    /// writes a batch's keys sorted by `NodeKey`'s order as if by their
    /// bytes (RocksDB's order): both must agree with `to_bytes`.
    #[test]
    fn encoded_lengths_and_key_order_match_the_bytes(
        first in entries_strategy(80),
        second in entries_strategy(40),
    ) {
        let mut store = MemNodeStore::new();
        let one = StateTree::new(&store).apply(None, 1, &inserts(&first)).unwrap();
        store.write(&one);
        let two = StateTree::new(&store).apply(Some(1), 256, &inserts(&second)).unwrap();
        let mut nodes: Vec<&(NodeKey, Node)> = one.new_nodes.iter().chain(&two.new_nodes).collect();
        for (key, node) in &nodes {
            prop_assert_eq!(key.encoded_len(), key.to_bytes().len());
            prop_assert_eq!(node.encoded_len(), node.to_bytes().len());
            let mut out = b"prefix".to_vec();
            node.write_bytes(&mut out);
            prop_assert_eq!(&out[6..], &node.to_bytes()[..]);
        }
        nodes.sort_by_key(|(key, _)| *key);
        let by_key: Vec<Vec<u8>> = nodes.iter().map(|(key, _)| key.to_bytes()).collect();
        let mut by_bytes = by_key.clone();
        by_bytes.sort();
        prop_assert_eq!(by_key, by_bytes);
    }
}
