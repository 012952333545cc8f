//! Which of a few bytes and byte pairs a line holds, found in one SIMD pass
//! (SSE2, or AVX2 where the CPU has it): the checks a parser makes before
//! its substring searches, so a line holding none of their markers skips
//! every search (one `memchr` or `memmem` call per marker had cost more
//! than this pass over the line for all of them).

use std::marker::PhantomData;

use crate::fold::fold;

/// A byte, or a byte followed by another, to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Byte(u8),
    Pair(u8, u8),
    /// Two lower-case ASCII letters, either in either case (`ev`: `ev`,
    /// `eV`, `Ev`, `EV`), compared as [`crate::fold`] folds bytes.
    FoldedPair(u8, u8),
}

/// A fixed list of markers, known when the pass is compiled: each search
/// is specialised to its list (the compares are constants, and a byte two
/// markers share is compared once).
pub trait MarkerSet {
    /// At most 8 markers.
    const MARKERS: &'static [Marker];
}

/// What [`held`] found in a text: bit `k` for `S::MARKERS[k]`.
#[derive(Debug)]
pub struct Held<S> {
    bits: u8,
    set: PhantomData<S>,
}

impl<S> Clone for Held<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Held<S> {}

impl<S> PartialEq for Held<S> {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl<S: MarkerSet> Held<S> {
    /// The markers of `S` that `text` holds.
    pub fn of(text: &[u8]) -> Self {
        Self::from_bits(held::<S>(text))
    }

    /// Bit `k` for `S::MARKERS[k]` (all bits: every check runs, as
    /// without the prefilter).
    pub fn from_bits(bits: u8) -> Self {
        Self { bits, set: PhantomData }
    }

    pub fn bits(self) -> u8 {
        self.bits
    }

    /// Whether the text holds any of the markers whose bits `mask` has.
    pub fn any(self, mask: u8) -> bool {
        self.bits & mask != 0
    }
}

/// Bit `k` set where `text` holds `S::MARKERS[k]`.
pub fn held<S: MarkerSet>(text: &[u8]) -> u8 {
    const {
        assert!(S::MARKERS.len() <= 8, "a marker set holds at most 8 markers");
        // A folded pair matches only bytes that fold onto themselves.
        let mut k = 0;
        while k < S::MARKERS.len() {
            if let Marker::FoldedPair(first, second) = S::MARKERS[k] {
                assert!(
                    first | 0x20 == first && second | 0x20 == second,
                    "a folded pair is of lower-case letters"
                );
            }
            k += 1;
        }
    };
    #[cfg(target_arch = "x86_64")]
    {
        if text.len() > 32 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked); the text is longer than
            // one vector (see `held_simd!`).
            return unsafe { held_avx2::<S>(text) };
        }
        if text.len() > 16 {
            // SAFETY: SSE2 is part of x86-64; the text is longer than one
            // vector (see `held_simd!`).
            return unsafe { held_sse2::<S>(text) };
        }
    }
    held_bytewise::<S>(text)
}

/// [`held`] one position at a time: short texts and other CPUs.
fn held_bytewise<S: MarkerSet>(text: &[u8]) -> u8 {
    let mut bits = 0;
    for (k, marker) in S::MARKERS.iter().enumerate() {
        let found = match *marker {
            Marker::Byte(byte) => text.contains(&byte),
            Marker::Pair(first, second) => text.windows(2).any(|w| w[0] == first && w[1] == second),
            Marker::FoldedPair(first, second) => text.windows(2).any(|w| fold(w[0]) == first && fold(w[1]) == second),
        };
        bits |= u8::from(found) << k;
    }
    bits
}

/// Defines a [`held`] for one SIMD width. `text` is longer than `$width`:
/// each step loads `$width` bytes at `at` and at `at + 1` (the second byte
/// of a pair), `at + 1 + $width <= text.len()` by `end`, and the last step
/// overlaps the one before it (holding is the same whichever step finds a
/// marker twice). The last byte is never the first of a loaded pair, so a
/// single-byte marker is checked there on its own.
macro_rules! held_simd {
    ($(#[$attr:meta])* $name:ident, $width:literal, $vector:ident, $zero:ident, $set1:ident, $load:ident, $or:ident, $and:ident, $cmpeq:ident, $movemask:ident) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name<S: MarkerSet>(text: &[u8]) -> u8 {
            use std::arch::x86_64::*;
            let end = text.len() - 1 - $width;
            let base = text.as_ptr();
            let mut found = [$zero(); 8];
            let mut from = 0;
            loop {
                let at = from.min(end);
                // SAFETY: `at + 1 + $width <= text.len()` by `end`.
                let (here, next) = unsafe { ($load(base.add(at) as *const $vector), $load(base.add(at + 1) as *const $vector)) };
                // Unused (and not computed) without a folded marker.
                let case = $set1(0x20);
                let (here_folded, next_folded) = ($or(here, case), $or(next, case));
                for (k, marker) in S::MARKERS.iter().enumerate() {
                    let hit = match *marker {
                        Marker::Byte(byte) => $cmpeq(here, $set1(byte as i8)),
                        Marker::Pair(first, second) => $and($cmpeq(here, $set1(first as i8)), $cmpeq(next, $set1(second as i8))),
                        Marker::FoldedPair(first, second) => {
                            $and($cmpeq(here_folded, $set1(first as i8)), $cmpeq(next_folded, $set1(second as i8)))
                        }
                    };
                    found[k] = $or(found[k], hit);
                }
                if at == end {
                    break;
                }
                from += $width;
            }
            let last = text[text.len() - 1];
            let mut bits = 0;
            for (k, marker) in S::MARKERS.iter().enumerate() {
                let at_end = matches!(*marker, Marker::Byte(byte) if byte == last);
                bits |= u8::from($movemask(found[k]) != 0 || at_end) << k;
            }
            bits
        }
    };
}

sse2_and_avx2!(held_simd, held_sse2, held_avx2);

#[cfg(test)]
mod tests {
    use super::*;

    struct Test;

    impl MarkerSet for Test {
        const MARKERS: &'static [Marker] = &[
            Marker::Byte(b'{'),
            Marker::Pair(b'/', b's'),
            Marker::Pair(b's', b'/'),
            Marker::Byte(b'='),
            Marker::Pair(b's', b':'),
            Marker::Pair(b'A', b':'),
            Marker::Byte(0xff),
            Marker::Pair(b':', b':'),
        ];
    }

    struct Folded;

    impl MarkerSet for Folded {
        const MARKERS: &'static [Marker] = &[Marker::FoldedPair(b'e', b'v'), Marker::FoldedPair(b'l', b'v'), Marker::Byte(b'[')];
    }

    /// A folded pair in each of its cases, at every position; bytes that
    /// fold onto others (`E` and `e` do, `%` and `\x05` do not match `e`).
    #[test]
    fn folded_pairs_in_every_case_at_every_position() {
        for len in 2..80usize {
            for at in 0..len - 1 {
                for pair in [b"ev", b"eV", b"Ev", b"EV", b"lV", b"Lv"] {
                    let mut text = vec![b'-'; len];
                    text[at..at + 2].copy_from_slice(pair);
                    let want = if pair[0] | 0x20 == b'e' { 1 } else { 2 };
                    assert_eq!(held::<Folded>(&text), want, "{len} {at} {pair:?}");
                    assert_eq!(held_bytewise::<Folded>(&text), want, "{len} {at} {pair:?}");
                }
            }
        }
        assert_eq!(held::<Folded>(&[b'%'; 40]), 0);
        assert_eq!(
            held::<Folded>(b"\x05\x16\x05\x16\x05\x16\x05\x16\x05\x16\x05\x16\x05\x16\x05\x16\x05\x16[x"),
            4
        );
    }

    /// Each implementation that takes `text` agrees with the bytewise one:
    /// SSE2 and AVX2 called directly, since `held` picks one of them by
    /// length and CPU.
    fn every_width_agrees<S: MarkerSet>(text: &[u8]) -> bool {
        let want = held_bytewise::<S>(text);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the lengths `held_simd!` needs; AVX2 where detected.
            if text.len() > 16 && unsafe { held_sse2::<S>(text) } != want {
                return false;
            }
            if text.len() > 32 && std::arch::is_x86_feature_detected!("avx2") && unsafe { held_avx2::<S>(text) } != want {
                return false;
            }
        }
        held::<S>(text) == want
    }

    /// Every marker at every position of texts of every length up to past
    /// two AVX2 steps, alone and beside the others.
    #[test]
    fn every_marker_at_every_position() {
        for len in 0..80usize {
            for (k, marker) in Test::MARKERS.iter().enumerate() {
                let bytes: &[u8] = match marker {
                    Marker::Byte(b) => &[*b],
                    Marker::Pair(a, b) | Marker::FoldedPair(a, b) => &[*a, *b],
                };
                for at in 0..(len + 1).saturating_sub(bytes.len()) {
                    let mut text = vec![b'-'; len];
                    text[at..at + bytes.len()].copy_from_slice(bytes);
                    assert!(every_width_agrees::<Test>(&text), "{len} {at} {k}");
                    assert_ne!(held::<Test>(&text) & (1 << k), 0, "{len} {at} {k}");
                }
            }
            assert_eq!(held::<Test>(&vec![b's'; len]), 0, "{len}");
        }
    }

    proptest::proptest! {
        #[test]
        fn folded_held_agrees_with_a_bytewise_search(
            text in proptest::collection::vec(proptest::sample::select(vec![b'e', b'E', b'v', b'V', b'l', b'L', b'[', 0xff, b'x', b'%', 0x16]), 0..100)
        ) {
            proptest::prop_assert!(every_width_agrees::<Folded>(&text));
        }

        #[test]
        fn held_agrees_with_a_bytewise_search(
            text in proptest::collection::vec(proptest::sample::select(vec![b'{', b'/', b's', b':', b'A', b'=', 0xff, b'x']), 0..100)
        ) {
            proptest::prop_assert!(every_width_agrees::<Test>(&text));
        }
    }
}
