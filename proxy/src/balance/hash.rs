//! The hash behind consistent hashing: XXH64, so that every node, every
//! restart and every release computes the same value for the same key.
//!
//! `std`'s `RandomState` is seeded per process, and `DefaultHasher` promises
//! nothing across Rust releases; a ring or Maglev table built from either
//! would differ between two proxies, and a client would land on a different
//! endpoint depending on which proxy it reached. XXH64 is a published,
//! versioned algorithm (the one Envoy uses for its ring hash), so the values
//! can be checked against reference vectors and reproduced in any language.

/// XXH64 of `input` with `seed`, as specified at
/// <https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md> (the
/// `xxhash-rust` crate; the reference vectors in the tests pin it).
pub(super) fn xxh64(input: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(input, seed)
}

/// SplitMix64's finalizer: a bijective scramble of a 64-bit value.
///
/// Used to derive a fresh, still deterministic, probe from a caller's hash
/// when the first choice is ineligible, and to turn a counter into random
/// bits.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
