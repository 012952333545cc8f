//! Detects the level of a log line from the formats ML jobs and their
//! libraries print: JSON `level`/`severity` fields, logfmt `level=…`, glog
//! (`E1125 22:16:18.123 …`), Python logging (`ERROR:root:…`,
//! `2026-11-25 22:16:18,123 - trainer - WARNING - …`) and bracketed
//! `[INFO]` prefixes. Looks only at the head of the line, so it costs the
//! same for a 10-byte and a 1-MiB line.

use crate::Level;

/// How far into a line level detection looks.
const HEAD_BYTES: usize = 160;

/// The 64-bit words of a head's [`HeadMasks`].
const CHUNKS: usize = HEAD_BYTES.div_ceil(64);

/// The level of `line`, or `Level::Unknown`.
pub fn detect_level(line: &[u8]) -> Level {
    let head = &line[..line.len().min(HEAD_BYTES)];
    if head.is_empty() {
        return Level::Unknown;
    }
    if let Some(level) = glog_level(head) {
        return level;
    }
    let masks = HeadMasks::of(head);
    level_after_glog(head, &masks, Checks::of(&masks))
}

/// [`detect_level`] of a head that is not glog, given its masks and the
/// checks they leave possible (in tests, all of them: the answer without
/// the prefilter).
fn level_after_glog(head: &[u8], masks: &HeadMasks, checks: Checks) -> Level {
    // glog behind a bracketed prefix, as torch.distributed prints:
    // `[rank1]:[E1125 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] …`
    if checks.bracket {
        let mut brackets = masks.bracket[0] & EARLY_BRACKETS;
        while brackets != 0 {
            let at = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            if let Some(level) = glog_level(&head[at + 1..]) {
                return level;
            }
        }
    }
    if checks.key_pieces != [0; CHUNKS] {
        if let Some(level) = keyed_level(head, &checks.key_pieces) {
            return level;
        }
    }
    word_level(head, masks).unwrap_or(Level::Unknown)
}

/// The `[` a glog prefix may follow: those among the head's first 48 bytes.
const EARLY_BRACKETS: u64 = (1 << 48) - 1;

/// Which of the checks before [`word_level`] a head may pass.
#[derive(Clone, Copy, Debug)]
struct Checks {
    /// A `[` among the first 48 bytes.
    bracket: bool,
    /// Where the head holds `ev` or `lv` in any case (bit `i % 64` of
    /// word `i / 64` for a piece at byte `i`): every key of
    /// [`keyed_level`] holds `lev`, `sev` or `lvl`.
    key_pieces: [u64; CHUNKS],
}

impl Checks {
    fn of(masks: &HeadMasks) -> Self {
        let mut key_pieces = [0; CHUNKS];
        for (chunk, pieces) in key_pieces.iter_mut().enumerate() {
            // A `v` right after an `e` or `l`, also across the words.
            let vee_next = masks.vee[chunk] >> 1 | masks.vee.get(chunk + 1).map_or(0, |next| next << 63);
            *pieces = masks.key_first[chunk] & vee_next;
        }
        Self {
            bracket: masks.bracket[0] & EARLY_BRACKETS != 0,
            key_pieces,
        }
    }

    /// Every check, at every byte: the answer without the prefilter.
    #[cfg(test)]
    const ALL: Self = Self {
        bracket: true,
        key_pieces: [u64::MAX; CHUNKS],
    };
}

/// Bit masks over a head of at most [`HEAD_BYTES`] bytes (bit `i % 64` of
/// word `i / 64` for byte `i`; bytes past its end count as none of them):
/// its ASCII letters, its upper-case letters, its `[` and `<`, its `[`,
/// and the bytes of the pieces [`Checks`] looks for. One SIMD pass over the
/// head makes them all (a marker pass for the checks and one per 64 bytes
/// for the words had been two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HeadMasks {
    letters: [u64; CHUNKS],
    upper: [u64; CHUNKS],
    opening: [u64; CHUNKS],
    bracket: [u64; CHUNKS],
    /// `e`, `E`, `l` or `L`.
    key_first: [u64; CHUNKS],
    /// `v` or `V`.
    vee: [u64; CHUNKS],
}

impl HeadMasks {
    fn of(head: &[u8]) -> Self {
        debug_assert!(head.len() <= HEAD_BYTES, "a head of at most {HEAD_BYTES} bytes");
        let mut padded = [0u8; CHUNKS * 64];
        padded[..head.len()].copy_from_slice(head);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked).
                return unsafe { Self::of_avx2(&padded, head.len().div_ceil(32)) };
            }
            // SAFETY: SSE2 is part of x86-64 (no other condition).
            unsafe { Self::of_sse2(&padded, head.len().div_ceil(16)) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::of_bytewise(&padded)
        }
    }

    /// [`Self::of`] one byte at a time: other CPUs, and the tests' reference.
    #[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
    fn of_bytewise(padded: &[u8; CHUNKS * 64]) -> Self {
        let mut masks = Self::default();
        for (i, &b) in padded.iter().enumerate() {
            let (word, bit) = (i / 64, i % 64);
            masks.letters[word] |= u64::from(b.is_ascii_alphabetic()) << bit;
            masks.upper[word] |= u64::from(b.is_ascii_uppercase()) << bit;
            masks.opening[word] |= u64::from(matches!(b, b'[' | b'<')) << bit;
            masks.bracket[word] |= u64::from(b == b'[') << bit;
            masks.key_first[word] |= u64::from(matches!(b, b'e' | b'E' | b'l' | b'L')) << bit;
            masks.vee[word] |= u64::from(matches!(b, b'v' | b'V')) << bit;
        }
        masks
    }
}

/// Defines [`HeadMasks::of`] for one SIMD width: the first `blocks`
/// blocks of `padded` (the rest are zeros: none of the bytes). Both are
/// `unsafe` for the AVX2 one's sake (the caller checks the CPU has it);
/// the SSE2 one has no condition (SSE2 is part of x86-64, and the blocks
/// read are bounded inside).
macro_rules! head_masks_simd {
    ($(#[$attr:meta])* $name:ident, $width:literal, $vector:ident, $set1:ident, $load:ident, $or:ident, $sub:ident, $min:ident, $cmpeq:ident, $movemask:ident) => {
        impl HeadMasks {
            $(#[$attr])*
            #[cfg(target_arch = "x86_64")]
            unsafe fn $name(padded: &[u8; CHUNKS * 64], blocks: usize) -> Self {
                use std::arch::x86_64::*;
                let mut masks = Self::default();
                let case = $set1(0x20);
                let (lower_a, upper_a, last) = ($set1(b'a' as i8), $set1(b'A' as i8), $set1(25));
                let (bracket, angle) = ($set1(b'[' as i8), $set1(b'<' as i8));
                let (e, l, v) = ($set1(b'e' as i8), $set1(b'l' as i8), $set1(b'v' as i8));
                for block in 0..blocks.min(CHUNKS * 64 / $width) {
                    // SAFETY: the block lies inside `padded` (by the bound
                    // above).
                    let bytes = unsafe { $load(padded.as_ptr().add(block * $width) as *const $vector) };
                    let folded = $or(bytes, case);
                    // A letter is at most 25 past `a` once folded, an
                    // upper-case one at most 25 past `A` (by an unsigned
                    // minimum: SSE2 and AVX2 have no unsigned compare).
                    let from_a = $sub(folded, lower_a);
                    let letter = $cmpeq($min(from_a, last), from_a);
                    let from_upper_a = $sub(bytes, upper_a);
                    let upper = $cmpeq($min(from_upper_a, last), from_upper_a);
                    let is_bracket = $cmpeq(bytes, bracket);
                    let opening = $or(is_bracket, $cmpeq(bytes, angle));
                    let key_first = $or($cmpeq(folded, e), $cmpeq(folded, l));
                    let vee = $cmpeq(folded, v);
                    let (word, shift) = (block * $width / 64, block * $width % 64);
                    // The movemask's bits, as many as the width, unsigned.
                    let bits = |mask| u64::from($movemask(mask) as u32) << shift;
                    masks.letters[word] |= bits(letter);
                    masks.upper[word] |= bits(upper);
                    masks.opening[word] |= bits(opening);
                    masks.bracket[word] |= bits(is_bracket);
                    masks.key_first[word] |= bits(key_first);
                    masks.vee[word] |= bits(vee);
                }
                masks
            }
        }
    };
}

head_masks_simd!(
    /// 16 bytes at a time (SSE2, part of x86-64).
    of_sse2, 16, __m128i, _mm_set1_epi8, _mm_loadu_si128, _mm_or_si128, _mm_sub_epi8, _mm_min_epu8, _mm_cmpeq_epi8, _mm_movemask_epi8
);
head_masks_simd!(
    /// 32 bytes at a time; the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    of_avx2, 32, __m256i, _mm256_set1_epi8, _mm256_loadu_si256, _mm256_or_si256, _mm256_sub_epi8, _mm256_min_epu8, _mm256_cmpeq_epi8, _mm256_movemask_epi8
);

/// glog / klog: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg`.
fn glog_level(head: &[u8]) -> Option<Level> {
    if head.len() < 14 || !head[1..5].iter().all(u8::is_ascii_digit) || head[5] != b' ' || head[8] != b':' {
        return None;
    }
    match head[0] {
        b'I' => Some(Level::Info),
        b'W' => Some(Level::Warn),
        b'E' => Some(Level::Error),
        b'F' => Some(Level::Critical),
        _ => None,
    }
}

/// The keys [`keyed_level`] reads, in any case; each holds `lev`, `sev`
/// or `lvl`, and so a key piece ([`Checks::key_pieces`]).
const LEVEL_KEYS: [&[u8]; 6] = [b"level", b"severity", b"lvl", b"levelname", b"loglevel", b"severity_text"];

/// Whether `b` may be part of a key (`@timestamp`, `severity_text`).
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'@'
}

/// JSON (`"level":"error"`) and logfmt (`level=error`) keys: the words
/// holding a key piece (`pieces`, bit `i` for a piece at byte `i`) that
/// are followed by `=` or `:` (the key optionally quoted), in order. Only
/// they can be keys of [`LEVEL_KEYS`]: a JSON access log's timestamps and
/// other keys are not looked at (a walk over every `:` and `=` had been
/// most of such a line's level detection).
fn keyed_level(head: &[u8], pieces: &[u64; CHUNKS]) -> Option<Level> {
    // The end of the last word looked at: its other pieces are skipped.
    let mut word_end = 0;
    for (chunk, &bits) in pieces.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let at = 64 * chunk + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if at >= head.len() {
                // Bits past the head (only [`Checks::ALL`] has them).
                return None;
            }
            if at < word_end {
                continue;
            }
            word_end = at + head[at..].iter().take_while(|&&b| is_key_byte(b)).count();
            let word_start = at - head[..at].iter().rev().take_while(|&&b| is_key_byte(b)).count();
            let quote = usize::from(head.get(word_end) == Some(&b'"'));
            if !matches!(head.get(word_end + quote), Some(b'=' | b':')) {
                continue;
            }
            let key = &head[word_start..word_end];
            let key = key.strip_prefix(b"@").unwrap_or(key);
            if !LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                continue;
            }
            if let Some(level) = level_value(head, word_end + quote + 1) {
                return Some(level);
            }
        }
    }
    None
}

/// The level a key's value starting at `at` names (`"error"`, ` warn`).
/// `at` is at most the head's length (right after a separator in it).
fn level_value(head: &[u8], at: usize) -> Option<Level> {
    let value_start = at + head[at..].iter().take_while(|&&b| b == b' ' || b == b'"').count();
    let value_end = value_start + head[value_start..].iter().take_while(|b| b.is_ascii_alphabetic()).count();
    Level::from_word(&head[value_start..value_end])
}

/// A level word standing alone among the first few words: `ERROR:root:`,
/// `- WARNING -`, `[INFO]`, `INFO `. Single-letter words are not trusted
/// here. The words are found from the head's masks ([`HeadMasks`]), 64
/// bytes at a time, and only those that start with an upper-case
/// letter or right after a `[` or `<` are read: a walk over every byte of
/// the head had been most of level detection's time.
fn word_level(head: &[u8], masks: &HeadMasks) -> Option<Level> {
    let mut words = 0;
    // Whether the byte before the chunk is a letter, a `[` or `<`.
    let (mut letter_before, mut opening_before) = (0, 0);
    for chunk in 0..head.len().div_ceil(64) {
        let (letters, opening) = (masks.letters[chunk], masks.opening[chunk]);
        let starts = letters & !(letters << 1 | letter_before);
        // Upper-case words start with an upper-case letter; bracketed ones
        // right after the bracket. Progress bars, Python dicts and prose
        // have neither and read no word.
        let may_count = starts & (masks.upper[chunk] | opening << 1 | opening_before);
        (letter_before, opening_before) = (letters >> 63, opening >> 63);
        if may_count == 0 {
            words += starts.count_ones();
            if words >= 12 {
                return None;
            }
            continue;
        }
        let mut bits = starts;
        while bits != 0 {
            let bit = bits & bits.wrapping_neg();
            bits &= bits - 1;
            words += 1;
            if words > 12 {
                return None;
            }
            if may_count & bit == 0 {
                continue;
            }
            let start = 64 * chunk + bit.trailing_zeros() as usize;
            let end = head[start..]
                .iter()
                .position(|b| !b.is_ascii_alphabetic())
                .map_or(head.len(), |n| start + n);
            if let Some(level) = counted_word_level(head, start, end) {
                return Some(level);
            }
        }
    }
    None
}

/// The level the word `head[start..end]` names, where it counts: only
/// upper-case words (or bracketed ones) do, so "error" inside prose such as
/// "no error found" does not make a line an error.
fn counted_word_level(head: &[u8], start: usize, end: usize) -> Option<Level> {
    let word = &head[start..end];
    let bracketed = start > 0 && matches!(head[start - 1], b'[' | b'<') && matches!(head.get(end), Some(b']') | Some(b'>'));
    let upper = word.iter().all(u8::is_ascii_uppercase);
    if word.len() < 4 && word != b"ERR" && word != b"WRN" && word != b"INF" && word != b"DBG" {
        return None;
    }
    if !(upper || bracketed) {
        return None;
    }
    match word {
        b"WRN" => Some(Level::Warn),
        b"INF" => Some(Level::Info),
        b"DBG" => Some(Level::Debug),
        _ => Level::from_word(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_formats() {
        let cases: &[(&str, Level)] = &[
            ("ERROR:root:CUDA out of memory", Level::Error),
            ("2026-11-25 22:16:18,123 - trainer - WARNING - grad norm is large", Level::Warn),
            ("[2026-11-25 22:16:18] [INFO] step 10", Level::Info),
            ("I1125 22:16:18.123456    1 main.go:42] started", Level::Info),
            ("E1125 22:16:18.123456    1 main.go:42] failed", Level::Error),
            (
                "[rank1]:[E1125 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught",
                Level::Error,
            ),
            (r#"{"ts":"x","level":"warn","msg":"slow"}"#, Level::Warn),
            (r#"{"severity":"ERROR","message":"boom"}"#, Level::Error),
            ("ts=2026 level=debug msg=hello", Level::Debug),
            ("time=\"x\" level=info msg=\"y\"", Level::Info),
            ("DEBUG:urllib3:Starting new HTTPS connection", Level::Debug),
            ("CRITICAL:torch:NCCL watchdog", Level::Critical),
            ("{'loss': 0.31, 'learning_rate': 2e-05, 'epoch': 0.5}", Level::Unknown),
            ("no error found in this prose", Level::Unknown),
            ("ts=1 LVL=warn msg=x", Level::Warn),
            ("ts=1 Severity: error", Level::Error),
            ("ts=1 logLevel=debug", Level::Debug),
            (r#"{"@level":"info"}"#, Level::Info),
            ("ts=1 severity_text=fatal", Level::Critical),
            ("ts=1 levelname=warning", Level::Warn),
            ("ts=1 vlevel=x slvl=2 never=error", Level::Unknown),
            ("Traceback (most recent call last):", Level::Unknown),
            (" 49%|████      | 24515/50000 [408:35<9:41:07,  1.42it/s]", Level::Unknown),
            ("12:00 [info] ready", Level::Info),
            ("12:00 <warn> slow", Level::Warn),
            ("12:00 [ info ] ready", Level::Unknown),
            ("12:00 - notice - up", Level::Unknown),
            ("", Level::Unknown),
        ];
        for (line, want) in cases {
            assert_eq!(detect_level(line.as_bytes()), *want, "{line}");
        }
    }

    /// The walk over every byte of the head that [`word_level`] replaced:
    /// the reference its answers are checked against.
    fn word_level_walked(head: &[u8]) -> Option<Level> {
        let mut words = 0;
        let mut pos = 0;
        while pos < head.len() && words < 12 {
            while pos < head.len() && !head[pos].is_ascii_alphabetic() {
                pos += 1;
            }
            let start = pos;
            while pos < head.len() && head[pos].is_ascii_alphabetic() {
                pos += 1;
            }
            if pos == start {
                break;
            }
            words += 1;
            if let Some(level) = counted_word_level(head, start, pos) {
                return Some(level);
            }
        }
        None
    }

    /// The walk over every `:` and `=` of the head that [`keyed_level`]
    /// replaced: the reference its answers are checked against.
    fn keyed_level_walked(head: &[u8]) -> Option<Level> {
        let mut search_from = 0;
        while let Some(found) = memchr::memchr2(b'=', b':', &head[search_from..]) {
            let sep = search_from + found;
            search_from = sep + 1;
            // The key ends just before the separator (optionally quoted).
            let mut key_end = sep;
            if key_end > 0 && head[key_end - 1] == b'"' {
                key_end -= 1;
            }
            let mut key_start = key_end;
            while key_start > 0 && is_key_byte(head[key_start - 1]) {
                key_start -= 1;
            }
            let key = &head[key_start..key_end];
            let key = key.strip_prefix(b"@").unwrap_or(key);
            if LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                if let Some(level) = level_value(head, sep + 1) {
                    return Some(level);
                }
            }
        }
        None
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The words at the key pieces give the level the walk over every
        /// separator gave.
        #[test]
        fn keys_at_pieces_give_the_walked_level(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => (
                        proptest::sample::select(vec![
                            "level", "LEVEL", "Lvl", "sev", "severity", "severity_text", "@loglevel", "levelname", "lev", "x_level", "vl",
                        ]),
                        proptest::sample::select(vec!["", "\"", "\"\""]),
                        proptest::sample::select(vec!["=", ":", " :", "=="]),
                        proptest::sample::select(vec!["", "\"", " ", " \""]),
                        proptest::sample::select(vec!["error", "warn", "INFO", "x", "Debug", ""]),
                    )
                        .prop_map(|(key, quote, sep, before, value)| format!("{key}{quote}{sep}{before}{value}")),
                    2 => proptest::sample::select(vec![
                        "=", ":", "\"", " ", "{", ",", "_", "é", "ev", "2026-11-25T09:15:31.421Z", "ts", "@", "lev", "e", "v",
                    ])
                    .prop_map(str::to_string),
                ],
                0..14,
            )
        ) {
            let line = pieces.concat();
            let head = &line.as_bytes()[..line.len().min(HEAD_BYTES)];
            let pieces = Checks::of(&HeadMasks::of(head)).key_pieces;
            proptest::prop_assert_eq!(keyed_level(head, &pieces), keyed_level_walked(head), "{:?}", line);
        }
    }

    /// The twelfth word counts, the thirteenth not; a word across the
    /// masks' 64-bit words, and one ending the head, read whole.
    #[test]
    fn word_limits_and_mask_boundaries() {
        assert_eq!(detect_level(b"a b c d e f g h i j k INFO x"), Level::Info);
        assert_eq!(detect_level(b"a b c d e f g h i j k l INFO x"), Level::Unknown);
        for at in [0, 1, 60, 62, 63, 64, 120, 126, 127, 128, 150, 154] {
            let line = format!("{}ERROR x", "0".repeat(at));
            assert_eq!(detect_level(line.as_bytes()), Level::Error, "{at}");
            let line = format!("{}[warn]", "0".repeat(at));
            assert_eq!(detect_level(line.as_bytes()), Level::Warn, "{at}");
        }
        // One word across the chunks, not a word starting at byte 64.
        assert_eq!(detect_level(format!("{}xxxxERROR x", "0".repeat(60)).as_bytes()), Level::Unknown);
        assert_eq!(detect_level(format!("{}xxxxERROR x", "0".repeat(124)).as_bytes()), Level::Unknown);
        assert_eq!(
            detect_level(format!("{}ERROR", "0".repeat(HEAD_BYTES - 5)).as_bytes()),
            Level::Error
        );
        assert_eq!(
            detect_level(format!("{}ERROR", "0".repeat(HEAD_BYTES - 4)).as_bytes()),
            Level::Unknown
        );
    }

    /// The SIMD masks (both widths) are the bytewise ones for every byte
    /// value at every position of heads of the lengths at and around each
    /// block's end.
    #[test]
    fn head_masks_of_every_byte_at_every_position() {
        for len in [
            0, 1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 95, 96, 97, 127, 128, 129, 158, 159, 160,
        ] {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut head = vec![b'-'; len];
                    head[at] = byte;
                    let mut padded = [0u8; CHUNKS * 64];
                    padded[..len].copy_from_slice(&head);
                    let want = HeadMasks::of_bytewise(&padded);
                    assert_eq!(HeadMasks::of(&head), want, "{len} {at} {byte}");
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: SSE2 is part of x86-64.
                    assert_eq!(unsafe { HeadMasks::of_sse2(&padded, len.div_ceil(16)) }, want, "{len} {at} {byte}");
                }
            }
        }
    }

    /// A key piece across the masks' words, and at the head's last byte.
    #[test]
    fn key_pieces_across_words() {
        for at in [0, 62, 63, 64, 126, 127, 158] {
            let mut head = vec![b'-'; HEAD_BYTES];
            head[at..at + 2].copy_from_slice(b"eV");
            assert_ne!(Checks::of(&HeadMasks::of(&head)).key_pieces, [0; CHUNKS], "{at}");
            head[at..at + 2].copy_from_slice(b"ex");
            assert_eq!(Checks::of(&HeadMasks::of(&head)).key_pieces, [0; CHUNKS], "{at}");
        }
        assert!(Checks::of(&HeadMasks::of(&[b'-'; 47].iter().chain(b"[").copied().collect::<Vec<_>>())).bracket);
        assert!(!Checks::of(&HeadMasks::of(&[b'-'; 48].iter().chain(b"[").copied().collect::<Vec<_>>())).bracket);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The words read from the masks give the level the byte walk gave.
        #[test]
        fn masked_words_give_the_walked_level(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "ERROR", "error", "WARN", "Warning", "INFO", "INF", "ERR", "DBG", "E", "W", "NCCL", "CUDA", "TRACE",
                    "[", "]", "<", ">", " ", "-", ":", "x", "ab", "Abc", "é", "█", "0", "12:00:00,123", "[info]", "<warn>",
                ]),
                0..40,
            )
        ) {
            let line = pieces.concat();
            let head = &line.as_bytes()[..line.len().min(HEAD_BYTES)];
            proptest::prop_assert_eq!(word_level(head, &HeadMasks::of(head)), word_level_walked(head), "{:?}", line);
        }

        /// The masks' checks only skip those that could not succeed: the
        /// level is the one found when every check runs at every byte.
        #[test]
        fn checks_change_no_level(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "level", "LEVEL", "Lvl", "sev", "severity", "lev", "vl", "=", ":", "\"", " ", "[", "]", "<", ">",
                    "ERROR", "error", "WARN", "Info", "INF", "DBG", "[rank1]:", "E1125 10:22:37.512389 1 x.cpp:1]",
                    "2026-11-25 22:16:18,123", " - ", "x", "é", "█", "v", "V", "E", "l",
                ]),
                0..24,
            )
        ) {
            let line = pieces.concat();
            let head = &line.as_bytes()[..line.len().min(HEAD_BYTES)];
            let every_check = if head.is_empty() || glog_level(head).is_some() {
                detect_level(line.as_bytes())
            } else {
                level_after_glog(head, &HeadMasks::of(head), Checks::ALL)
            };
            proptest::prop_assert_eq!(detect_level(line.as_bytes()), every_check, "{:?}", line);
        }
    }
}
