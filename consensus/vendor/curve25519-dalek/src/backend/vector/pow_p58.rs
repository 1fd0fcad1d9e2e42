// keyreg's addition to curve25519-dalek (consensus/vendor/README.md).

//! The exponentiation `x^((p-5)/8)` of `FieldElement::pow_p58` for the
//! vector backends' `pow_p58_x8`, which `CompressedEdwardsY::decompress_batch`
//! uses.
//!
//! Each backend runs it on two vectors of four field elements side by side
//! (its own `Pair` type, with `pow2k` and `times` looping over the two):
//! two independent chains of squarings keep the multiplier's pipeline fuller
//! than one does (with IFMA, 3.5 times serial speed per point against 2.8
//! with one vector). The chain is a macro, not a generic function, so that
//! it expands inside each backend's `#[target_feature]` code and the field
//! arithmetic inlines into it: through a generic function, or with the two
//! vectors' operations written out instead of looped, the AVX2 version ran
//! at 1.1-1.2 times serial speed instead of 1.6.

/// The addition chain of `FieldElement::pow22501` and `pow_p58`, raising
/// every lane of `$x` to the power (p-5)/8 = 2^252 - 3.
#[rustfmt::skip] // keep alignment of explanatory comments
macro_rules! pow_p58_chain {
    ($x:expr) => {{
        let x = $x;
        //                                 nonzero bits of the exponent
        let t0  = x.pow2k(1);              // 1
        let t1  = t0.pow2k(2);             // 3
        let t2  = x.times(&t1);            // 3,0
        let t3  = t0.times(&t2);           // 3,1,0
        let t4  = t3.pow2k(1);             // 4,2,1
        let t5  = t2.times(&t4);           // 4,3,2,1,0
        let t6  = t5.pow2k(5);             // 9,8,7,6,5
        let t7  = t6.times(&t5);           // 9..0
        let t8  = t7.pow2k(10);            // 19..10
        let t9  = t8.times(&t7);           // 19..0
        let t10 = t9.pow2k(20);            // 39..20
        let t11 = t10.times(&t9);          // 39..0
        let t12 = t11.pow2k(10);           // 49..10
        let t13 = t12.times(&t7);          // 49..0
        let t14 = t13.pow2k(50);           // 99..50
        let t15 = t14.times(&t13);         // 99..0
        let t16 = t15.pow2k(100);          // 199..100
        let t17 = t16.times(&t15);         // 199..0
        let t18 = t17.pow2k(50);           // 249..50
        let t19 = t18.times(&t13);         // 249..0
        let t20 = t19.pow2k(2);            // 251..2
        x.times(&t20)                      // 251..2,0
    }};
}

pub(crate) use pow_p58_chain;
