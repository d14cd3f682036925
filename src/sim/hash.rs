//! Stable hashing for every simulated choice: FNV-1a over the inputs, then a
//! SplitMix64 finalizer. Unlike `std`'s hasher it never changes between Rust
//! versions, so a seed gives the same answers everywhere.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of `bytes`, continuing from `state`.
pub(crate) fn fnv(mut state: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// The SplitMix64 finalizer: spreads every input bit over the output.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash under construction: `Key::new(seed, "purpose").str(..).num(..).finish()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key(u64);

impl Key {
    /// Starts a key for one purpose (a salt) under a seed.
    pub(crate) fn new(seed: u64, purpose: &str) -> Key {
        Key(fnv(fnv(FNV_OFFSET, &seed.to_le_bytes()), purpose.as_bytes()))
    }

    /// Adds a string (length-prefixed, so `("ab","c")` and `("a","bc")` differ).
    pub(crate) fn str(self, value: &str) -> Key {
        Key(fnv(fnv(self.0, &(value.len() as u64).to_le_bytes()), value.as_bytes()))
    }

    /// Adds a number.
    pub(crate) fn num(self, value: u64) -> Key {
        Key(fnv(self.0, &value.to_le_bytes()))
    }

    /// The finished 64-bit hash.
    pub(crate) fn finish(self) -> u64 {
        mix(self.0)
    }

    /// The finished hash as a number in `[0, 1)`.
    pub(crate) fn unit(self) -> f64 {
        unit(self.finish())
    }
}

/// A hash as a number in `[0, 1)`.
pub(crate) fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// `prefix` followed by 24 hex digits from two hashes, e.g. `msg_0123...`.
pub(crate) fn id(prefix: &str, a: u64, b: u64) -> String {
    format!("{prefix}{:016x}{:08x}", a, b >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = Key::new(1, "x").str("ab").str("c").finish();
        let b = Key::new(1, "x").str("a").str("bc").finish();
        assert_ne!(a, b);
        assert_eq!(a, Key::new(1, "x").str("ab").str("c").finish());
        assert_ne!(a, Key::new(2, "x").str("ab").str("c").finish());
        let u = Key::new(0, "u").num(7).unit();
        assert!((0.0..1.0).contains(&u));
        assert_eq!(id("msg_", 1, 2).len(), 4 + 24);
    }
}
