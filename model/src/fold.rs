//! Literal searches that ignore ASCII case (the event gate, the
//! training-key check): an ASCII-case-folded copy of a line (every byte
//! with bit 5 set, in a per-thread buffer), so a SIMD search for a
//! lower-case word finds it in any ASCII case without a case-insensitive
//! automaton; and, for a few words, a SIMD search that folds as it reads
//! (SSE2, or AVX2 where the CPU has it) and makes no copy.

/// The most the per-thread copy keeps between lines.
const KEPT_BYTES: usize = 64 << 10;

thread_local! {
    static FOLDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every byte with bit 5 set: ASCII letters of either case become lower
/// case, and equal bytes stay equal, so a text holding a word (in any ASCII
/// case) folds to one holding the lower-case word. Other bytes fold onto
/// punctuation, digits or themselves (`@` onto `` ` ``, control bytes onto
/// digits), never onto letters: a search for a word of letters finds it in
/// the folded text exactly where it is there in some case, and a search
/// for a word with other bytes may find more, never less.
pub fn fold(byte: u8) -> u8 {
    byte | 0x20
}

/// Calls `f` with `text` folded (same length, same positions).
pub fn with_folded<R>(text: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    FOLDED.with_borrow_mut(|folded| {
        folded.clear();
        folded.extend(text.iter().map(|&b| fold(b)));
        let result = f(folded);
        // A long record (up to the line limit) leaves no big copy resident
        // behind it.
        if folded.capacity() > KEPT_BYTES {
            *folded = Vec::with_capacity(KEPT_BYTES);
        }
        result
    })
}

/// Whether `text` holds `word` (lower-case) at `at` in some ASCII case,
/// as the folded text would.
#[inline]
fn holds_at(text: &[u8], at: usize, word: &[u8]) -> bool {
    text.get(at..at + word.len())
        .is_some_and(|window| window.iter().zip(word).all(|(&b, &w)| fold(b) == w))
}

/// Which of `words` the folded `text` holds (bit `i` for `words[i]`): the
/// same answer as a search of the [`with_folded`] copy for each word,
/// without the copy. Each word is lower-case, 1 to 64 bytes long; at most
/// 32 words (a few is what it is for: each is a pass over `text`).
pub fn folded_words(text: &[u8], words: &[&[u8]]) -> u32 {
    assert!(
        words.len() <= 32 && words.iter().all(|w| (1..=64).contains(&w.len())),
        "folded_words takes up to 32 words of 1 to 64 bytes"
    );
    words
        .iter()
        .enumerate()
        .filter(|(_, word)| holds_folded(text, word))
        .fold(0, |bits, (k, _)| bits | 1 << k)
}

/// Whether the folded `text` holds `word` (lower-case, not empty).
fn holds_folded(text: &[u8], word: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if text.len() >= word.len() - 1 + 32 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked); see `holds_folded_simd!`
            // for the length it needs.
            return unsafe { holds_folded_avx2(text, word) };
        }
        if text.len() >= word.len() - 1 + 16 {
            // SAFETY: SSE2 is part of x86-64; see `holds_folded_simd!` for
            // the length it needs.
            return unsafe { holds_folded_sse2(text, word) };
        }
    }
    (0..text.len().saturating_sub(word.len() - 1)).any(|at| holds_at(text, at, word))
}

/// Defines a [`holds_folded`] for one SIMD width: it checks `$width`
/// start positions at a time by their folded first and last bytes, and
/// verifies each candidate. `text` is at least `word.len() - 1 + $width`
/// bytes long: every load reads `$width` bytes from `at` or `at + offset`,
/// and `at + offset + $width <= text.len()` by `end`. The last block
/// overlaps the one before it rather than leave a tail to check byte by
/// byte.
macro_rules! holds_folded_simd {
    ($(#[$attr:meta])* $name:ident, $width:literal, $vector:ident, $set1:ident, $load:ident, $or:ident, $and:ident, $cmpeq:ident, $movemask:ident) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(text: &[u8], word: &[u8]) -> bool {
            use std::arch::x86_64::*;
            let offset = word.len() - 1;
            let end = text.len() - offset - $width;
            let case = $set1(0x20);
            let first = $set1(word[0] as i8);
            let last = $set1(word[offset] as i8);
            let base = text.as_ptr();
            let mut from = 0;
            loop {
                let at = from.min(end);
                // SAFETY: `at + offset + $width <= text.len()` by `end`.
                let (head, tail) = unsafe {
                    (
                        $or($load(base.add(at) as *const $vector), case),
                        $or($load(base.add(at + offset) as *const $vector), case),
                    )
                };
                let mut candidates = $movemask($and($cmpeq(head, first), $cmpeq(tail, last))) as u32;
                while candidates != 0 {
                    if holds_at(text, at + candidates.trailing_zeros() as usize, word) {
                        return true;
                    }
                    candidates &= candidates - 1;
                }
                if at == end {
                    return false;
                }
                from += $width;
            }
        }
    };
}

holds_folded_simd!(
    /// 16 positions at a time (SSE2, part of x86-64).
    holds_folded_sse2, 16, __m128i, _mm_set1_epi8, _mm_loadu_si128, _mm_or_si128, _mm_and_si128, _mm_cmpeq_epi8, _mm_movemask_epi8
);

holds_folded_simd!(
    /// 32 positions at a time; the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    holds_folded_avx2, 32, __m256i, _mm256_set1_epi8, _mm256_loadu_si256, _mm256_or_si256, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_movemask_epi8
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of searching the folded copy, word by word.
    fn searched(text: &[u8], words: &[&[u8]]) -> u32 {
        with_folded(text, |folded| {
            words
                .iter()
                .enumerate()
                .filter(|(_, w)| memchr::memmem::find(folded, w).is_some())
                .fold(0, |bits, (k, _)| bits | 1 << k)
        })
    }

    #[test]
    fn folded_words_finds_words_in_any_case_at_every_position() {
        let words: [&[u8]; 3] = [b"overflow", b"loss", b"x"];
        for len in 0..80 {
            for at in 0..len {
                for (k, word) in words.iter().enumerate() {
                    if at + word.len() > len {
                        continue;
                    }
                    let mut text = vec![b'-'; len];
                    for (i, &b) in word.iter().enumerate() {
                        text[at + i] = if (at + i) % 2 == 0 { b.to_ascii_uppercase() } else { b };
                    }
                    assert_eq!(folded_words(&text, &words), searched(&text, &words), "{len} {at} {k}");
                    assert_ne!(folded_words(&text, &words) & (1 << k), 0, "{len} {at} {k}");
                }
            }
        }
        // Bytes that fold onto the word's bytes count, as in the copy.
        assert_eq!(folded_words(b"\rNON\rFINITE", &[b"non-finite"]), 1);
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #[test]
        fn folded_words_agrees_with_a_search_of_the_folded_copy(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec!["loss", "LoSs", "overflow", "OVERFLOW", "los", "oss", "overflo", "o", "w", "l", "s", " ", "\r", "é"])
                        .prop_map(|p: &str| p.as_bytes().to_vec()),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..20),
                ],
                0..30,
            )
        ) {
            let text: Vec<u8> = pieces.concat();
            let words: [&[u8]; 2] = [b"overflow", b"loss"];
            proptest::prop_assert_eq!(folded_words(&text, &words), searched(&text, &words));
        }
    }

    #[test]
    fn letters_fold_to_lower_case_and_nothing_folds_onto_a_letter() {
        with_folded(b"LoSs=NaN @[_\x01", |folded| assert_eq!(folded, b"loss=nan `{\x7f!"));
        for byte in 0..=255u8 {
            let folded = fold(byte);
            assert_eq!(folded.is_ascii_alphabetic(), byte.is_ascii_alphabetic(), "{byte:#x}");
            if byte.is_ascii_alphabetic() {
                assert_eq!(folded, byte.to_ascii_lowercase());
            }
        }
    }
}
