//! Detects the level of a log line from the formats ML jobs and their
//! libraries print: JSON `level`/`severity` fields, logfmt `level=…`, glog
//! (`E1125 22:16:18.123 …`), Python logging (`ERROR:root:…`,
//! `2026-11-25 22:16:18,123 - trainer - WARNING - …`) and bracketed
//! `[INFO]` prefixes. Looks only at the head of the line, so it costs the
//! same for a 10-byte and a 1-MiB line.

use crate::scan::{Held, Marker};
use crate::Level;

/// How far into a line level detection looks.
const HEAD_BYTES: usize = 160;

/// The level of `line`, or `Level::Unknown`.
pub fn detect_level(line: &[u8]) -> Level {
    let head = &line[..line.len().min(HEAD_BYTES)];
    if head.is_empty() {
        return Level::Unknown;
    }
    if let Some(level) = glog_level(head) {
        return level;
    }
    level_after_glog(head, Held::of(head))
}

/// [`detect_level`] of a head that is not glog, given what it holds of
/// [`Markers`] (in tests, all of them: the answer without the prefilter).
fn level_after_glog(head: &[u8], markers: Held<Markers>) -> Level {
    // glog behind a bracketed prefix, as torch.distributed prints:
    // `[rank1]:[E1125 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] …`
    if markers.any(Markers::BRACKET) {
        for at in memchr::memchr_iter(b'[', &head[..head.len().min(48)]) {
            if let Some(level) = glog_level(&head[at + 1..]) {
                return level;
            }
        }
    }
    if markers.any(Markers::KEY_PIECE) && may_hold_level_key(head) {
        if let Some(level) = keyed_level(head) {
            return level;
        }
    }
    word_level(head).unwrap_or(Level::Unknown)
}

/// The bytes and byte pairs the checks below start from, found in one
/// SIMD pass over the head ([`crate::scan`]): one `memchr` per check had
/// cost more, and most heads hold none of the pairs.
#[derive(Debug)]
struct Markers;

impl crate::scan::MarkerSet for Markers {
    const MARKERS: &'static [Marker] = &[Marker::FoldedPair(b'e', b'v'), Marker::FoldedPair(b'l', b'v'), Marker::Byte(b'[')];
}

impl Markers {
    /// `ev` or `lv` in any case: every key of [`keyed_level`] holds `lev`,
    /// `sev` or `lvl`.
    const KEY_PIECE: u8 = 0b11;
    const BRACKET: u8 = 0b100;
}

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

/// Whether `head` may hold a key of [`keyed_level`]: each of them holds
/// `lev`, `sev` or `lvl` (in any case), so a head without those skips the
/// walk over every `:` and `=` (timestamps hold several): level detection
/// took about half the time with it.
fn may_hold_level_key(head: &[u8]) -> bool {
    memchr::memchr2_iter(b'v', b'V', head).any(|at| {
        let before = |n: usize| at.checked_sub(n).map(|i| head[i].to_ascii_lowercase());
        let after = head.get(at + 1).map(u8::to_ascii_lowercase);
        (before(1) == Some(b'e') && matches!(before(2), Some(b'l' | b's'))) || (before(1) == Some(b'l') && after == Some(b'l'))
    })
}

/// JSON (`"level":"error"`) and logfmt (`level=error`) keys.
fn keyed_level(head: &[u8]) -> Option<Level> {
    // Each holds `lev`, `sev` or `lvl`: see `may_hold_level_key`.
    const KEYS: [&[u8]; 6] = [b"level", b"severity", b"lvl", b"levelname", b"loglevel", b"severity_text"];
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
        while key_start > 0 && (head[key_start - 1].is_ascii_alphanumeric() || head[key_start - 1] == b'_' || head[key_start - 1] == b'@') {
            key_start -= 1;
        }
        let key = &head[key_start..key_end];
        let key = key.strip_prefix(b"@").unwrap_or(key);
        if !KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        let mut value_start = sep + 1;
        while value_start < head.len() && (head[value_start] == b' ' || head[value_start] == b'"') {
            value_start += 1;
        }
        let mut value_end = value_start;
        while value_end < head.len() && head[value_end].is_ascii_alphabetic() {
            value_end += 1;
        }
        if let Some(level) = Level::from_word(&head[value_start..value_end]) {
            return Some(level);
        }
    }
    None
}

/// Bit masks over 64 bytes of a head (bit `i` for byte `i`): its ASCII
/// letters, its upper-case letters, and its `[` and `<`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChunkMasks {
    letters: u64,
    upper: u64,
    opening: u64,
}

impl ChunkMasks {
    /// The masks of `head[64 * chunk..]`, up to 64 bytes of it (bytes past
    /// its end count as none of them).
    fn of(head: &[u8], chunk: usize) -> Self {
        let mut padded = [0u8; 64];
        let bytes = &head[64 * chunk..head.len().min(64 * chunk + 64)];
        padded[..bytes.len()].copy_from_slice(bytes);
        #[cfg(target_arch = "x86_64")]
        {
            Self::of_sse2(&padded, bytes.len().div_ceil(16))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::of_bytewise(&padded)
        }
    }

    /// [`Self::of`] one byte at a time: other CPUs, and the tests' reference.
    #[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
    fn of_bytewise(padded: &[u8; 64]) -> Self {
        let mut masks = Self::default();
        for (i, &b) in padded.iter().enumerate() {
            masks.letters |= u64::from(b.is_ascii_alphabetic()) << i;
            masks.upper |= u64::from(b.is_ascii_uppercase()) << i;
            masks.opening |= u64::from(matches!(b, b'[' | b'<')) << i;
        }
        masks
    }

    /// 16 bytes at a time (SSE2, part of x86-64), the first `blocks` blocks
    /// of `padded` (the rest are zeros: no letters, no brackets).
    #[cfg(target_arch = "x86_64")]
    fn of_sse2(padded: &[u8; 64], blocks: usize) -> Self {
        use std::arch::x86_64::*;
        let mut masks = Self::default();
        // SAFETY: SSE2 is part of x86-64; each load reads the 16 bytes of
        // one block inside `padded` (at most 4 blocks).
        unsafe {
            let case = _mm_set1_epi8(0x20);
            let (lower_a, upper_a, last) = (_mm_set1_epi8(b'a' as i8), _mm_set1_epi8(b'A' as i8), _mm_set1_epi8(25));
            let (bracket, angle) = (_mm_set1_epi8(b'[' as i8), _mm_set1_epi8(b'<' as i8));
            for block in 0..blocks.min(4) {
                let bytes = _mm_loadu_si128(padded.as_ptr().add(block * 16) as *const __m128i);
                // A letter is at most 25 past `a` once folded, an upper-case
                // one at most 25 past `A` (by an unsigned minimum: SSE2 has
                // no unsigned compare).
                let folded = _mm_sub_epi8(_mm_or_si128(bytes, case), lower_a);
                let letter = _mm_cmpeq_epi8(_mm_min_epu8(folded, last), folded);
                let shifted = _mm_sub_epi8(bytes, upper_a);
                let upper = _mm_cmpeq_epi8(_mm_min_epu8(shifted, last), shifted);
                let opening = _mm_or_si128(_mm_cmpeq_epi8(bytes, bracket), _mm_cmpeq_epi8(bytes, angle));
                let shift = block * 16;
                masks.letters |= u64::from(_mm_movemask_epi8(letter) as u16) << shift;
                masks.upper |= u64::from(_mm_movemask_epi8(upper) as u16) << shift;
                masks.opening |= u64::from(_mm_movemask_epi8(opening) as u16) << shift;
            }
        }
        masks
    }
}

/// A level word standing alone among the first few words: `ERROR:root:`,
/// `- WARNING -`, `[INFO]`, `INFO `. Single-letter words are not trusted
/// here. The words are found from bit masks of the head's letters, 64
/// bytes at a time (one SIMD pass each, the next only when the words so
/// far named no level), and only those that start with an upper-case
/// letter or right after a `[` or `<` are read: a walk over every byte of
/// the head had been most of level detection's time.
fn word_level(head: &[u8]) -> Option<Level> {
    let mut words = 0;
    // Whether the byte before the chunk is a letter, a `[` or `<`.
    let (mut letter_before, mut opening_before) = (0, 0);
    for chunk in 0..head.len().div_ceil(64) {
        let masks = ChunkMasks::of(head, chunk);
        let starts = masks.letters & !(masks.letters << 1 | letter_before);
        // Upper-case words start with an upper-case letter; bracketed ones
        // right after the bracket. Progress bars, Python dicts and prose
        // have neither and read no word.
        let may_count = starts & (masks.upper | masks.opening << 1 | opening_before);
        (letter_before, opening_before) = (masks.letters >> 63, masks.opening >> 63);
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

    /// The SIMD masks are the bytewise ones for every byte value at every
    /// position of chunks of every length.
    #[test]
    fn chunk_masks_of_every_byte_at_every_position() {
        for len in 0..=64 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut head = vec![b'-'; len];
                    head[at] = byte;
                    let mut padded = [0u8; 64];
                    padded[..len].copy_from_slice(&head);
                    assert_eq!(ChunkMasks::of(&head, 0), ChunkMasks::of_bytewise(&padded), "{len} {at} {byte}");
                }
            }
        }
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
            proptest::prop_assert_eq!(word_level(head), word_level_walked(head), "{:?}", line);
        }

        /// The markers only skip checks that could not succeed: the level
        /// is the one found when every check runs.
        #[test]
        fn markers_change_no_level(
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
                level_after_glog(head, Held::from_bits(u8::MAX))
            };
            proptest::prop_assert_eq!(detect_level(line.as_bytes()), every_check, "{:?}", line);
        }
    }
}
