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
    /// Two bytes that fold onto themselves, each either as it is or with
    /// bit 5 clear (`ev`: `ev`, `eV`, `Ev`, `EV`), compared as
    /// [`crate::fold`] folds bytes.
    FoldedPair(u8, u8),
}

/// A fixed list of markers, known when the pass is compiled: each search
/// is specialised to its list (its tables and compares are constants).
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

    /// Bit `k` for `S::MARKERS[k]`.
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
        let mut k = 0;
        while k < S::MARKERS.len() {
            if let Marker::FoldedPair(first, second) = S::MARKERS[k] {
                assert!(
                    fold(first) == first && fold(second) == second,
                    "a folded pair is of bytes that fold onto themselves"
                );
            }
            k += 1;
        }
    };
    #[cfg(target_arch = "x86_64")]
    {
        if text.len() > 32 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked); the text is longer than
            // one vector (see `held_avx2`).
            return unsafe { held_avx2::<S>(text) };
        }
        if text.len() > 16 {
            // SAFETY: SSE2 is part of x86-64; the text is longer than one
            // vector (see `held_sse2`).
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

/// The markers as per-byte classes, looked up by nibble (`pshufb`): bit
/// `k` of a byte's class where it is marker `k`'s byte (a `Byte`) or first
/// byte (a `Pair`), and of the next byte's class where that is a `Pair`'s
/// second byte. Each bit stands for one byte value on each side, or for
/// a folded pair's two (the same but for bit 5, so their high nibbles
/// differ by 2 and their low ones not), so `low[b & 15] & high[b >> 4]`
/// has it exactly for those bytes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct NibbleTables {
    first_low: [u8; 16],
    first_high: [u8; 16],
    second_low: [u8; 16],
    second_high: [u8; 16],
    /// The bits of the `Byte` markers (whatever follows them).
    bytes: u8,
}

#[cfg(target_arch = "x86_64")]
impl NibbleTables {
    const fn of(markers: &[Marker]) -> Self {
        let mut tables = NibbleTables {
            first_low: [0; 16],
            first_high: [0; 16],
            second_low: [0; 16],
            second_high: [0; 16],
            bytes: 0,
        };
        let mut k = 0;
        while k < markers.len() {
            let bit = 1u8 << k;
            // The bytes a marker's first and second byte may be (the same
            // twice where only one).
            let (first, second) = match markers[k] {
                Marker::Byte(byte) => {
                    tables.bytes |= bit;
                    ([byte; 2], None)
                }
                Marker::Pair(first, second) => ([first; 2], Some([second; 2])),
                Marker::FoldedPair(first, second) => ([first, first & !0x20], Some([second, second & !0x20])),
            };
            let mut i = 0;
            while i < 2 {
                tables.first_low[(first[i] & 15) as usize] |= bit;
                tables.first_high[(first[i] >> 4) as usize] |= bit;
                if let Some(second) = second {
                    tables.second_low[(second[i] & 15) as usize] |= bit;
                    tables.second_high[(second[i] >> 4) as usize] |= bit;
                }
                i += 1;
            }
            k += 1;
        }
        tables
    }
}

/// [`held`] 32 positions at a time. Each step loads 32 bytes at `at` and
/// at `at + 1` (the second byte of a pair), classifies both by nibble
/// ([`NibbleTables`]: four shuffles, where comparing each marker's bytes
/// had taken twice the instructions for the extractor's seven), and keeps
/// the bits whose pairs or bytes are complete; `at + 33 <= text.len()` by
/// `end`, and the last step overlaps the one before it. The last byte is
/// never the first of a loaded pair, so a single-byte marker is checked
/// there on its own. `text` is longer than 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn held_avx2<S: MarkerSet>(text: &[u8]) -> u8 {
    use std::arch::x86_64::*;
    let tables = const { NibbleTables::of(S::MARKERS) };
    let table = |t: &[u8; 16]| {
        // SAFETY: 16 bytes read from a 16-byte array.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(t.as_ptr() as *const __m128i) })
    };
    let (first_low, first_high) = (table(&tables.first_low), table(&tables.first_high));
    let (second_low, second_high) = (table(&tables.second_low), table(&tables.second_high));
    let bytes_bits = _mm256_set1_epi8(tables.bytes as i8);
    let nibble = _mm256_set1_epi8(0x0F);
    let classes = |v: __m256i, low: __m256i, high: __m256i| {
        let lows = _mm256_and_si256(v, nibble);
        let highs = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        _mm256_and_si256(_mm256_shuffle_epi8(low, lows), _mm256_shuffle_epi8(high, highs))
    };
    let end = text.len() - 33;
    let base = text.as_ptr();
    let mut found = _mm256_setzero_si256();
    let mut from = 0;
    loop {
        let at = from.min(end);
        // SAFETY: `at + 33 <= text.len()` by `end`.
        let (here, next) = unsafe {
            (
                _mm256_loadu_si256(base.add(at) as *const __m256i),
                _mm256_loadu_si256(base.add(at + 1) as *const __m256i),
            )
        };
        let complete = _mm256_or_si256(classes(next, second_low, second_high), bytes_bits);
        found = _mm256_or_si256(found, _mm256_and_si256(classes(here, first_low, first_high), complete));
        if at == end {
            break;
        }
        from += 32;
    }
    // Every byte's bits, ORed into one byte.
    let mut half = _mm_or_si128(_mm256_castsi256_si128(found), _mm256_extracti128_si256(found, 1));
    half = _mm_or_si128(half, _mm_srli_si128(half, 8));
    half = _mm_or_si128(half, _mm_srli_si128(half, 4));
    half = _mm_or_si128(half, _mm_srli_si128(half, 2));
    half = _mm_or_si128(half, _mm_srli_si128(half, 1));
    _mm_cvtsi128_si32(half) as u8 | last_byte_bits::<S>(text)
}

/// The bits of the single-byte markers that `text`'s last byte is (the
/// SIMD steps never load it as the first of a pair).
#[cfg(target_arch = "x86_64")]
fn last_byte_bits<S: MarkerSet>(text: &[u8]) -> u8 {
    let last = text[text.len() - 1];
    let mut bits = 0;
    for (k, marker) in S::MARKERS.iter().enumerate() {
        if matches!(*marker, Marker::Byte(byte) if byte == last) {
            bits |= 1 << k;
        }
    }
    bits
}

/// [`held`] 16 positions at a time (SSE2, part of x86-64, has no byte
/// shuffle: each marker's bytes are compared). Each step loads 16 bytes at
/// `at` and at `at + 1` (the second byte of a pair), `at + 17 <=
/// text.len()` by `end`, and the last step overlaps the one before it
/// (holding is the same whichever step finds a marker twice). The last
/// byte is never the first of a loaded pair, so a single-byte marker is
/// checked there on its own. `text` is longer than 16 bytes.
#[cfg(target_arch = "x86_64")]
unsafe fn held_sse2<S: MarkerSet>(text: &[u8]) -> u8 {
    use std::arch::x86_64::*;
    let end = text.len() - 17;
    let base = text.as_ptr();
    let mut found = [_mm_setzero_si128(); 8];
    let mut from = 0;
    loop {
        let at = from.min(end);
        // SAFETY: `at + 17 <= text.len()` by `end`.
        let (here, next) = unsafe {
            (
                _mm_loadu_si128(base.add(at) as *const __m128i),
                _mm_loadu_si128(base.add(at + 1) as *const __m128i),
            )
        };
        // Unused (and not computed) without a folded pair.
        let case = _mm_set1_epi8(0x20);
        let (here_folded, next_folded) = (_mm_or_si128(here, case), _mm_or_si128(next, case));
        for (k, marker) in S::MARKERS.iter().enumerate() {
            let hit = match *marker {
                Marker::Byte(byte) => _mm_cmpeq_epi8(here, _mm_set1_epi8(byte as i8)),
                Marker::Pair(first, second) => _mm_and_si128(
                    _mm_cmpeq_epi8(here, _mm_set1_epi8(first as i8)),
                    _mm_cmpeq_epi8(next, _mm_set1_epi8(second as i8)),
                ),
                Marker::FoldedPair(first, second) => _mm_and_si128(
                    _mm_cmpeq_epi8(here_folded, _mm_set1_epi8(first as i8)),
                    _mm_cmpeq_epi8(next_folded, _mm_set1_epi8(second as i8)),
                ),
            };
            found[k] = _mm_or_si128(found[k], hit);
        }
        if at == end {
            break;
        }
        from += 16;
    }
    let mut bits = 0;
    for (k, found) in found.iter().enumerate().take(S::MARKERS.len()) {
        bits |= u8::from(_mm_movemask_epi8(*found) != 0) << k;
    }
    bits | last_byte_bits::<S>(text)
}

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
        const MARKERS: &'static [Marker] = &[
            Marker::FoldedPair(b'e', b'v'),
            Marker::FoldedPair(b'l', b'v'),
            Marker::Byte(b'['),
            Marker::FoldedPair(b'%', b'x'),
        ];
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
                    assert!(every_width_agrees::<Folded>(&text), "{len} {at} {pair:?}");
                }
            }
        }
        assert_eq!(held::<Folded>(&[b'%'; 40]), 0);
        assert_eq!(held::<Folded>(&[b'\x05', b'X'].repeat(20)), 8);
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
            // SAFETY: the lengths `held_sse2` and `held_avx2` need; AVX2
            // where detected.
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
            text in proptest::collection::vec(
                proptest::sample::select(vec![
                    b'e', b'E', b'v', b'V', b'l', b'L', b'[', 0xff, b'x', b'X', b'%', 0x05, 0x16, b'f', b'F', b'w', b'n', 0xe5, 0x56 ^ 0x80,
                ]),
                0..100,
            )
        ) {
            proptest::prop_assert!(every_width_agrees::<Folded>(&text));
        }

        #[test]
        fn held_agrees_with_a_bytewise_search(
            // The markers' bytes, and bytes sharing a nibble with them.
            text in proptest::collection::vec(
                proptest::sample::select(vec![b'{', b'/', b's', b':', b'A', b'=', 0xff, b'x', b';', b'K', b'+', b'c', b'o', b'?', 0x8f, 0xf0, 0x3a ^ 0x80]),
                0..100,
            )
        ) {
            proptest::prop_assert!(every_width_agrees::<Test>(&text));
        }
    }
}
