//! Literal searches that ignore ASCII case (the event gate, the
//! training-key check): an ASCII-case-folded copy of a line (every byte
//! with bit 5 set, in a per-thread buffer), so a SIMD search for a
//! lower-case word finds it in any ASCII case without a case-insensitive
//! automaton; and, for a fixed set of a few words, one SIMD pass that
//! folds as it reads (SSE2, or AVX2 where the CPU has it), makes no copy,
//! and says whether the text is all ASCII.

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
pub const fn fold(byte: u8) -> u8 {
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

/// A fixed list of lower-case words for [`folded_words`], known when the
/// pass is compiled: the search is specialised to it (each word's compares
/// are constants), as [`crate::scan`]'s marker sets are.
pub trait FoldedWordSet {
    /// 1 to 8 words, each lower-case and 1 to 64 bytes long.
    const WORDS: &'static [&'static [u8]];
}

/// What one pass of [`folded_words`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldedWords {
    /// Bit `i` set where the folded text holds `S::WORDS[i]`.
    pub words: u8,
    /// Whether the text holds a byte that is not ASCII.
    pub non_ascii: bool,
}

/// Which of `S::WORDS` the folded `text` holds (the same answer as a
/// search of the [`with_folded`] copy for each word, without the copy),
/// and whether `text` is all ASCII: one pass over `text` for all of them
/// (the event gate's pass per word and its `memchr` for the bytes of `ſ`
/// and `K` had cost 232 M instructions on a 104 MB sample of pod logs,
/// this pass 131 M).
pub fn folded_words<S: FoldedWordSet>(text: &[u8]) -> FoldedWords {
    const {
        assert!(!S::WORDS.is_empty() && S::WORDS.len() <= 8, "1 to 8 words");
        let mut k = 0;
        while k < S::WORDS.len() {
            assert!(!S::WORDS[k].is_empty() && S::WORDS[k].len() <= 64, "words of 1 to 64 bytes");
            // Only bytes that fold onto themselves can match.
            let mut i = 0;
            while i < S::WORDS[k].len() {
                assert!(
                    fold(S::WORDS[k][i]) == S::WORDS[k][i],
                    "a word's bytes fold onto themselves (lower case)"
                );
                i += 1;
            }
            k += 1;
        }
    };
    #[cfg(target_arch = "x86_64")]
    {
        let longest = S::WORDS.iter().map(|w| w.len()).max().unwrap_or(1);
        if text.len() >= longest - 1 + 32 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked); see `folded_words_simd!`
            // for the length it needs.
            return unsafe { folded_words_avx2::<S>(text) };
        }
        if text.len() >= longest - 1 + 16 {
            // SAFETY: SSE2 is part of x86-64; see `folded_words_simd!` for
            // the length it needs.
            return unsafe { folded_words_sse2::<S>(text) };
        }
    }
    folded_words_bytewise::<S>(text)
}

/// [`folded_words`] one position at a time: short texts and other CPUs.
fn folded_words_bytewise<S: FoldedWordSet>(text: &[u8]) -> FoldedWords {
    let mut words = 0;
    for (k, word) in S::WORDS.iter().enumerate() {
        if (0..text.len().saturating_sub(word.len() - 1)).any(|at| holds_at(text, at, word)) {
            words |= 1 << k;
        }
    }
    FoldedWords {
        words,
        non_ascii: !text.is_ascii(),
    }
}

/// Defines a [`folded_words`] for one SIMD width. Each step loads `$width`
/// bytes at `block` (for the non-ASCII check), and for each word not found
/// yet at `at` and `at + word.len() - 1` (its first and last bytes at
/// `$width` start positions), compares them folded, and verifies each
/// candidate. `text` is at least `longest - 1 + $width` bytes long. A
/// word's `at` stops at its own last block (`ends`), the steps at
/// `text.len() - $width`: each last block overlaps the one before it
/// rather than leave a tail to check byte by byte.
macro_rules! folded_words_simd {
    ($(#[$attr:meta])* $name:ident, $width:literal, $vector:ident, $zero:ident, $set1:ident, $load:ident, $or:ident, $and:ident, $cmpeq:ident, $movemask:ident) => {
        $(#[$attr])*
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name<S: FoldedWordSet>(text: &[u8]) -> FoldedWords {
            use std::arch::x86_64::*;
            let case = $set1(0x20);
            let base = text.as_ptr();
            let last_block = text.len() - $width;
            let mut words = 0u8;
            let mut bytes = $zero();
            // Each word's constants, made once; slots past the set's words
            // are never read.
            let mut firsts = [$zero(); 8];
            let mut lasts = [$zero(); 8];
            let mut ends = [0; 8];
            for (k, word) in S::WORDS.iter().enumerate() {
                firsts[k] = $set1(word[0] as i8);
                lasts[k] = $set1(word[word.len() - 1] as i8);
                // `text.len() >= word.len() - 1 + $width`: the caller's check.
                ends[k] = text.len() - (word.len() - 1) - $width;
            }
            let mut from = 0;
            loop {
                let block = from.min(last_block);
                // SAFETY: `block + $width <= text.len()` by `last_block`.
                let raw = unsafe { $load(base.add(block) as *const $vector) };
                bytes = $or(bytes, raw);
                let folded = $or(raw, case);
                // One step of word `k`, written out for each possible `k`
                // (a loop over the words was not unrolled, and kept their
                // constants in memory).
                macro_rules! step {
                    ($k:literal) => {
                        if $k < S::WORDS.len() && words & 1 << $k == 0 {
                            let word = S::WORDS[$k];
                            let at = block.min(ends[$k]);
                            // SAFETY: `at + word.len() - 1 + $width <= text.len()` by `ends`.
                            let (head, tail) = unsafe {
                                (
                                    if at == block { folded } else { $or($load(base.add(at) as *const $vector), case) },
                                    $or($load(base.add(at + word.len() - 1) as *const $vector), case),
                                )
                            };
                            let mut candidates = $movemask($and($cmpeq(head, firsts[$k]), $cmpeq(tail, lasts[$k]))) as u32;
                            while candidates != 0 {
                                if holds_at(text, at + candidates.trailing_zeros() as usize, word) {
                                    words |= 1 << $k;
                                    break;
                                }
                                candidates &= candidates - 1;
                            }
                        }
                    };
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                step!(4);
                step!(5);
                step!(6);
                step!(7);
                if block == last_block {
                    break;
                }
                from += $width;
            }
            FoldedWords {
                words,
                non_ascii: $movemask(bytes) != 0,
            }
        }
    };
}

sse2_and_avx2!(folded_words_simd, folded_words_sse2, folded_words_avx2);

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of searching the folded copy, word by word.
    fn searched<S: FoldedWordSet>(text: &[u8]) -> FoldedWords {
        let words = with_folded(text, |folded| {
            S::WORDS
                .iter()
                .enumerate()
                .filter(|(_, w)| memchr::memmem::find(folded, w).is_some())
                .fold(0, |bits, (k, _)| bits | 1 << k)
        });
        FoldedWords {
            words,
            non_ascii: !text.is_ascii(),
        }
    }

    /// Each implementation that takes `text` gives what a search of the
    /// folded copy gives: SSE2 and AVX2 called directly, since
    /// `folded_words` picks one of them by length and CPU.
    fn every_width<S: FoldedWordSet>(text: &[u8]) -> FoldedWords {
        let want = searched::<S>(text);
        assert_eq!(folded_words_bytewise::<S>(text), want);
        #[cfg(target_arch = "x86_64")]
        {
            let longest = S::WORDS.iter().map(|w| w.len()).max().unwrap_or(1);
            if text.len() >= longest - 1 + 16 {
                // SAFETY: the length `folded_words_simd!` needs.
                assert_eq!(unsafe { folded_words_sse2::<S>(text) }, want, "SSE2");
            }
            if text.len() >= longest - 1 + 32 && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above; the CPU has AVX2.
                assert_eq!(unsafe { folded_words_avx2::<S>(text) }, want, "AVX2");
            }
        }
        assert_eq!(folded_words::<S>(text), want);
        want
    }

    struct Three;

    impl FoldedWordSet for Three {
        const WORDS: &'static [&'static [u8]] = &[b"overflow", b"loss", b"x"];
    }

    struct Gate;

    impl FoldedWordSet for Gate {
        const WORDS: &'static [&'static [u8]] = &[b"overflow", b"loss"];
    }

    struct NonFinite;

    impl FoldedWordSet for NonFinite {
        const WORDS: &'static [&'static [u8]] = &[b"non-finite"];
    }

    #[test]
    fn folded_words_finds_words_in_any_case_at_every_position() {
        for len in 0..80 {
            for at in 0..len {
                for (k, word) in Three::WORDS.iter().enumerate() {
                    if at + word.len() > len {
                        continue;
                    }
                    let mut text = vec![b'-'; len];
                    for (i, &b) in word.iter().enumerate() {
                        text[at + i] = if (at + i) % 2 == 0 { b.to_ascii_uppercase() } else { b };
                    }
                    assert_ne!(every_width::<Three>(&text).words & (1 << k), 0, "{len} {at} {k}");
                }
            }
        }
        // Bytes that fold onto the word's bytes count, as in the copy.
        assert_eq!(folded_words::<NonFinite>(b"\rNON\rFINITE").words, 1);
    }

    /// A non-ASCII byte at every position, the first and the last
    /// included, of texts of every length up to past two AVX2 blocks.
    #[test]
    fn folded_words_sees_a_non_ascii_byte_at_every_position() {
        for len in 0..80 {
            let ascii = vec![b'x'; len];
            assert!(!every_width::<Gate>(&ascii).non_ascii, "{len}");
            for at in 0..len {
                let mut text = ascii.clone();
                text[at] = 0xC5;
                assert!(every_width::<Gate>(&text).non_ascii, "{len} {at}");
            }
        }
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
            every_width::<Gate>(&text);
            every_width::<Three>(&text);
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
