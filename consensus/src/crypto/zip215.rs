//! Ed25519 verification under the ZIP-215 rules, on curve25519-dalek 5.
//!
//! ZIP-215 fixes what an Ed25519 signature check accepts so that single and
//! batch verification agree exactly: point encodings `A` and `R` are accepted
//! whenever they decode (non-canonical `y` included), `s` must be canonical
//! (`s < ℓ`), and the check is the cofactored equation
//! `[8][s]B = [8]R + [8][k]A` with `k = SHA-512(R || A || M) mod ℓ`.
//! These are the rules of `ed25519-consensus` (which the tests use as the
//! oracle); this code runs them on curve25519-dalek 5 (vendored, with batch
//! point decompression added: consensus/vendor/README.md), whose vector
//! backends (AVX2, and AVX-512 IFMA when built with `.cargo/config.toml`'s
//! cfg) are picked at run time by CPU feature detection: batches of 1024
//! verify about 2.3x faster than with `ed25519-consensus` on
//! curve25519-dalek-ng's serial arithmetic with IFMA, 1.7x with AVX2 alone
//! (docs/benchmarks.md, `sig-bench`, sessions 25 and 26).

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha512};

use super::{hasher, Domain, PublicKey, Signature};

/// Why a single signature check failed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The public key does not decode to a curve point.
    MalformedKey,
    /// Anything else: `R` does not decode, `s` is not canonical, or the
    /// equation does not hold.
    BadSignature,
}

/// `k = SHA-512(R || A || M) mod ℓ`, the message `M` given in parts (so a
/// domain prefix need not be copied in front of it).
pub(super) fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(key);
    for part in message {
        h.update(part);
    }
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// The `R` and `s` halves of a signature.
fn halves(sig: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
    for (to, from) in r.iter_mut().chain(s.iter_mut()).zip(sig) {
        *to = *from;
    }
    (r, s)
}

/// The `R` half of a signature.
pub(super) fn r_bytes(sig: &[u8; 64]) -> [u8; 32] {
    halves(sig).0
}

fn canonical_scalar(bytes: [u8; 32]) -> Option<Scalar> {
    Scalar::from_canonical_bytes(bytes).into()
}

/// Checks one signature given its challenge `k` (see [`challenge`]).
pub(super) fn verify_prehashed(key: &[u8; 32], sig: &[u8; 64], k: &Scalar) -> Result<(), Failure> {
    // One point at a time: a pair in vector lanes costs about as much.
    let a = CompressedEdwardsY(*key)
        .decompress()
        .ok_or(Failure::MalformedKey)?;
    let (r_bytes, s_bytes) = halves(sig);
    let s = canonical_scalar(s_bytes).ok_or(Failure::BadSignature)?;
    let r = CompressedEdwardsY(r_bytes)
        .decompress()
        .ok_or(Failure::BadSignature)?;
    // [s]B - [k]A, then the cofactored comparison with R.
    let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(k, &-a, &s);
    if (r_check - r).mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(Failure::BadSignature)
    }
}

/// Checks one signature over the message made of `message`'s parts.
pub(super) fn verify(key: &[u8; 32], sig: &[u8; 64], message: &[&[u8]]) -> Result<(), Failure> {
    verify_prehashed(key, sig, &challenge(&r_bytes(sig), key, message))
}

/// A key and the `(k, signature)` pairs under it.
type KeyGroup<'a> = (&'a [u8; 32], Vec<(&'a Scalar, &'a [u8; 64])>);

/// Checks signatures together, each `(A, signature, k)` with its challenge
/// `k` (see [`challenge`]): one multiscalar multiplication
/// `[8]([-Σ z_i s_i]B + Σ [z_i]R_i + Σ_A [Σ z_i k_i]A) = 0` with 128-bit
/// `z_i`. Signatures under the same key share one `A` term, so a block of
/// registrations by one organisation's admin pays for that key once.
///
/// Every `A` and `R` is decompressed in one call to the vendored
/// `CompressedEdwardsY::decompress_batch` (consensus/vendor/README.md),
/// whose square roots run eight at a time in vector registers: the
/// decompressions were about 70 % of a batch's cost one at a time.
///
/// The `z_i` come from a ChaCha20 stream seeded with a BLAKE3 hash of every
/// `(A, R, s, k)` (`k` binds the message): deterministic, no ambient
/// randomness, yet unpredictable to whoever chose the signatures.
///
/// True when every signature verifies (a batch with a bad signature passes
/// with probability at most 2^-128 over the `z_i`); false when any fails,
/// or any key or `R` does not decode, or any `s` is not canonical.
pub(super) fn verify_batch(items: &[(PublicKey, Signature, Scalar)]) -> bool {
    // Positions of each distinct key's signatures, keys in first-seen order.
    let mut by_key: HashMap<&[u8; 32], usize> = HashMap::with_capacity(items.len());
    let mut groups: Vec<KeyGroup<'_>> = Vec::new();
    let mut seed = hasher(Domain::BatchSeed);
    for (key, sig, k) in items {
        seed.update(&key.0);
        seed.update(&sig.0);
        seed.update(k.as_bytes());
        let group = *by_key.entry(&key.0).or_insert_with(|| {
            groups.push((&key.0, Vec::with_capacity(1)));
            groups.len() - 1
        });
        if let Some((_, signatures)) = groups.get_mut(group) {
            signatures.push((k, &sig.0));
        }
    }
    let mut rng = ChaCha20Rng::from_seed(*seed.finalize().as_bytes());
    let terms = 1 + groups.len() + items.len();
    // Every point of the equation decompressed at once, in the order the
    // loop below takes them: each key, then the R of each of its signatures.
    let mut encodings = Vec::with_capacity(terms - 1);
    for (key, signatures) in &groups {
        encodings.push(CompressedEdwardsY(**key));
        encodings.extend(
            signatures
                .iter()
                .map(|(_, sig)| CompressedEdwardsY(r_bytes(sig))),
        );
    }
    let mut decompressed = CompressedEdwardsY::decompress_batch(&encodings).into_iter();
    let mut scalars = Vec::with_capacity(terms);
    let mut points = Vec::with_capacity(terms);
    let mut b_coeff = Scalar::ZERO;
    for (_, signatures) in &groups {
        let Some(Some(a)) = decompressed.next() else {
            return false;
        };
        let mut a_coeff = Scalar::ZERO;
        for (k, sig) in signatures {
            let s_bytes = halves(sig).1;
            let (Some(Some(r)), Some(s)) = (decompressed.next(), canonical_scalar(s_bytes)) else {
                return false;
            };
            let mut z = [0u8; 16];
            rng.fill_bytes(&mut z);
            let z = Scalar::from(u128::from_le_bytes(z));
            b_coeff -= z * s;
            a_coeff += z * *k;
            scalars.push(z);
            points.push(r);
        }
        scalars.push(a_coeff);
        points.push(a);
    }
    scalars.push(b_coeff);
    points.push(ED25519_BASEPOINT_POINT);
    debug_assert_eq!(scalars.len(), terms);
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points)
        .mul_by_cofactor()
        .is_identity()
}

/// Differential tests: every verdict must equal `ed25519-consensus`'s (the
/// reference implementation of ZIP-215), single and batch, on the encodings
/// where implementations are known to diverge (small-order and
/// non-canonical points, non-canonical scalars) and on random signatures.
#[cfg(test)]
mod tests {
    use super::*;

    fn oracle(key: &[u8; 32], sig: &[u8; 64], msg: &[u8]) -> Result<(), Failure> {
        let vk = ed25519_consensus::VerificationKey::try_from(*key)
            .map_err(|_| Failure::MalformedKey)?;
        vk.verify(&ed25519_consensus::Signature::from(*sig), msg)
            .map_err(|_| Failure::BadSignature)
    }

    fn from_hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).expect("32 bytes of hex");
        out
    }

    /// The 8 canonical encodings of the small-order points, the 2
    /// encodings of (0, ±1) with the sign bit set, and the 19 non-canonical
    /// field encodings `y + p` with either sign bit (whether they decode or
    /// not): 48 encodings.
    fn tricky_encodings() -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "0100000000000000000000000000000000000000000000000000000000000080",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ]
        .iter()
        .map(|h| from_hex(h))
        .collect();
        let small_order: Vec<EdwardsPoint> = out[..8]
            .iter()
            .map(|e| {
                CompressedEdwardsY(*e)
                    .decompress()
                    .expect("a small-order encoding decodes")
            })
            .collect();
        assert!(small_order.iter().all(EdwardsPoint::is_small_order));
        for (i, p) in small_order.iter().enumerate() {
            assert!(small_order[..i].iter().all(|q| q != p), "8 distinct points");
        }
        for i in 0..19u8 {
            let mut y = [0xffu8; 32];
            y[0] = 237 + i;
            y[31] = 0x7f;
            out.push(y);
            y[31] |= 0x80;
            out.push(y);
        }
        out
    }

    /// Scalars for `s`: zero, one, ℓ - 1 (canonical) and ℓ, ℓ + 1, 2^256 - 1
    /// (not canonical).
    fn tricky_scalars() -> Vec<[u8; 32]> {
        let l = from_hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let add = |mut x: [u8; 32], d: i16| {
            let mut carry = d;
            for b in x.iter_mut() {
                let v = *b as i16 + carry;
                *b = v.rem_euclid(256) as u8;
                carry = v.div_euclid(256);
            }
            x
        };
        vec![
            [0; 32],
            add([0; 32], 1),
            add(l, -1),
            l,
            add(l, 1),
            [0xff; 32],
        ]
    }

    fn signature(r: &[u8; 32], s: &[u8; 32]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(r);
        sig[32..].copy_from_slice(s);
        sig
    }

    fn batch_verdict(items: &[([u8; 32], [u8; 64], Vec<u8>)]) -> bool {
        let queued: Vec<_> = items
            .iter()
            .map(|(key, sig, msg)| {
                let k = challenge(&r_bytes(sig), key, &[msg]);
                (PublicKey(*key), Signature(*sig), k)
            })
            .collect();
        verify_batch(&queued)
    }

    #[test]
    fn small_order_and_non_canonical_encodings_get_the_reference_verdict() {
        let encodings = tricky_encodings();
        let scalars = tricky_scalars();
        let (mut accepted, mut checked) = (0, 0);
        for key in &encodings {
            for r in &encodings {
                for s in &scalars {
                    let sig = signature(r, s);
                    let msg = b"Zcash";
                    let expected = oracle(key, &sig, msg);
                    assert_eq!(
                        verify(key, &sig, &[msg]),
                        expected,
                        "A {key:02x?} R {r:02x?}"
                    );
                    let item = vec![(*key, sig, msg.to_vec())];
                    assert_eq!(batch_verdict(&item), expected.is_ok());
                    accepted += usize::from(expected.is_ok());
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 48 * 48 * 6);
        // s = 0 with small-order A and R passes the cofactored equation: the
        // rules accept them, and so must we (not a vacuous comparison).
        assert!(accepted >= 14 * 14, "only {accepted} accepted");
    }

    /// Points one at a time, as upstream decompresses them.
    fn one_by_one(encodings: &[CompressedEdwardsY]) -> Vec<Option<EdwardsPoint>> {
        encodings
            .iter()
            .map(CompressedEdwardsY::decompress)
            .collect()
    }

    /// The vendored `decompress_batch` (vector exponentiations, eight
    /// lanes) must agree with `decompress` on every encoding, in every
    /// lane: the tricky encodings at every offset within a chunk, and batch
    /// lengths around the chunk size (a lone point takes the serial path).
    #[test]
    fn batch_decompression_equals_decompressing_one_by_one() {
        let tricky: Vec<CompressedEdwardsY> = tricky_encodings()
            .into_iter()
            .map(CompressedEdwardsY)
            .collect();
        // Both outcomes occur, so neither path is compared vacuously.
        let decodable = one_by_one(&tricky).iter().flatten().count();
        assert!(
            decodable > 0 && decodable < tricky.len(),
            "{decodable} decode"
        );
        for offset in 0..8 {
            let mut batch = vec![CompressedEdwardsY(ED25519_BASEPOINT_POINT.compress().0); offset];
            batch.extend(&tricky);
            assert_eq!(
                CompressedEdwardsY::decompress_batch(&batch),
                one_by_one(&batch)
            );
        }
        let points: Vec<CompressedEdwardsY> = (1..=20u64)
            .map(|i| (ED25519_BASEPOINT_POINT * Scalar::from(i * 7919)).compress())
            .collect();
        for len in 0..=points.len() {
            let batch = &points[..len];
            let decompressed = CompressedEdwardsY::decompress_batch(batch);
            assert_eq!(decompressed, one_by_one(batch));
            assert!(decompressed
                .iter()
                .zip(batch)
                .all(|(p, e)| p.map(|p| p.compress()) == Some(*e)));
        }
    }

    proptest::proptest! {
        /// Random encodings (about half decode) in batches of any length.
        #[test]
        fn batch_decompression_of_arbitrary_bytes_equals_one_by_one(
            encodings in proptest::collection::vec(proptest::array::uniform32(proptest::num::u8::ANY), 0..30),
        ) {
            let batch: Vec<CompressedEdwardsY> = encodings.into_iter().map(CompressedEdwardsY).collect();
            proptest::prop_assert_eq!(CompressedEdwardsY::decompress_batch(&batch), one_by_one(&batch));
        }

        /// Arbitrary bytes: mostly undecodable points and non-canonical
        /// scalars, so the refusal paths must match the reference too; `s`
        /// is sometimes reduced so the equation itself gets checked.
        #[test]
        fn arbitrary_bytes_get_the_reference_verdict(
            key in proptest::array::uniform32(proptest::num::u8::ANY),
            r in proptest::array::uniform32(proptest::num::u8::ANY),
            s in proptest::array::uniform32(proptest::num::u8::ANY),
            reduce in proptest::bool::ANY,
            msg in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let s = if reduce { Scalar::from_bytes_mod_order(s).to_bytes() } else { s };
            let sig = signature(&r, &s);
            let expected = oracle(&key, &sig, &msg);
            let accepted = expected.is_ok();
            proptest::prop_assert_eq!(verify(&key, &sig, &[&msg]), expected);
            proptest::prop_assert_eq!(batch_verdict(&[(key, sig, msg)]), accepted);
        }
    }

    #[test]
    fn random_signatures_and_their_corruptions_get_the_reference_verdict() {
        let mut rng = ChaCha20Rng::seed_from_u64(215);
        let mut items = Vec::new();
        let mut expected_bad = Vec::new();
        for i in 0..300usize {
            // A few keys sign several messages, as an admin key does.
            let key = ed25519_consensus::SigningKey::new(&mut rng);
            let key = if i % 3 == 0 && i > 0 {
                ed25519_consensus::SigningKey::from([i as u8 % 7; 32])
            } else {
                key
            };
            let mut msg = vec![0u8; (rng.next_u32() % 200) as usize];
            rng.fill_bytes(&mut msg);
            let mut pk = key.verification_key().to_bytes();
            let mut sig = key.sign(&msg).to_bytes();
            match i % 6 {
                1 => sig[(rng.next_u32() % 32) as usize] ^= 1 << (rng.next_u32() % 8),
                2 => sig[32 + (rng.next_u32() % 32) as usize] ^= 1 << (rng.next_u32() % 8),
                3 if !msg.is_empty() => msg[0] ^= 0x80,
                4 => pk[(rng.next_u32() % 32) as usize] ^= 1 << (rng.next_u32() % 8),
                _ => {}
            }
            let expected = oracle(&pk, &sig, &msg);
            assert_eq!(verify(&pk, &sig, &[&msg]), expected, "signature {i}");
            if expected.is_err() {
                expected_bad.push(i);
            }
            items.push((pk, sig, msg));
        }
        assert!(expected_bad.len() > 150 && expected_bad.len() < 250);
        let good: Vec<_> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| !expected_bad.contains(i))
            .map(|(_, item)| item.clone())
            .collect();
        assert!(batch_verdict(&good), "a batch of valid signatures verifies");
        assert!(!batch_verdict(&items), "one bad signature fails the batch");
        for &bad in expected_bad.iter().take(20) {
            let mut one_bad = good.clone();
            one_bad.insert(good.len() / 2, items[bad].clone());
            assert!(!batch_verdict(&one_bad), "bad signature {bad}");
        }
    }
}
