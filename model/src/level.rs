//! Detects the level of a log line from the formats ML jobs and their
//! libraries print: JSON `level`/`severity` fields, logfmt `level=…`, glog
//! (`E1125 22:16:18.123 …`), Python logging (`ERROR:root:…`,
//! `2026-11-25 22:16:18,123 - trainer - WARNING - …`) and bracketed
//! `[INFO]` prefixes. Looks only at the head of the line, so it costs the
//! same for a 10-byte and a 1-MiB line.

use crate::scan::Marker;
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
    level_after_glog(head, Markers(crate::scan::held::<Markers>(head)))
}

/// [`detect_level`] of a head that is not glog, given what it holds of
/// [`Markers`] (in tests, all of them: the answer without the prefilter).
fn level_after_glog(head: &[u8], markers: Markers) -> Level {
    // glog behind a bracketed prefix, as torch.distributed prints:
    // `[rank1]:[E1125 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] …`
    if markers.has(Markers::BRACKET) {
        for at in memchr::memchr_iter(b'[', &head[..head.len().min(48)]) {
            if let Some(level) = glog_level(&head[at + 1..]) {
                return level;
            }
        }
    }
    if markers.has(Markers::KEY_PIECE) && may_hold_level_key(head) {
        if let Some(level) = keyed_level(head) {
            return level;
        }
    }
    word_level(head, markers).unwrap_or(Level::Unknown)
}

/// The bytes and byte pairs the checks below start from, found in one
/// SIMD pass over the head ([`crate::scan`]): one `memchr` per check had
/// cost more, and most heads hold none of the pairs.
#[derive(Clone, Copy, Debug)]
struct Markers(u8);

impl crate::scan::MarkerSet for Markers {
    const MARKERS: &'static [Marker] = &[
        Marker::FoldedPair(b'e', b'v'),
        Marker::FoldedPair(b'l', b'v'),
        Marker::Byte(b'['),
        Marker::Byte(b'<'),
    ];
}

impl Markers {
    /// `ev` or `lv` in any case: every key of [`keyed_level`] holds `lev`,
    /// `sev` or `lvl`.
    const KEY_PIECE: u8 = 0b11;
    const BRACKET: u8 = 0b100;
    /// `[` or `<`.
    const OPENING: u8 = 0b1100;

    fn has(self, marker: u8) -> bool {
        self.0 & marker != 0
    }
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

/// Whether `head` may hold a word [`word_level`] takes: one in upper case
/// (it holds an upper-case letter) or one in brackets (a `[` or `<` before
/// a letter). Progress bars, Python dicts and prose hold neither, and skip
/// the walk over their words. The upper-case check has no early exit and
/// ORs bytes, so it compiles to SIMD (an OR of `bool`s did not).
fn may_hold_level_word(head: &[u8], markers: Markers) -> bool {
    let upper = head.iter().fold(0u8, |any, b| any | u8::from(b.wrapping_sub(b'A') < 26)) != 0;
    upper
        || (markers.has(Markers::OPENING)
            && memchr::memchr2_iter(b'[', b'<', head).any(|at| head.get(at + 1).is_some_and(u8::is_ascii_alphabetic)))
}

/// A level word standing alone among the first few words: `ERROR:root:`,
/// `- WARNING -`, `[INFO]`, `INFO `. Single-letter words are not trusted here.
fn word_level(head: &[u8], markers: Markers) -> Option<Level> {
    if !may_hold_level_word(head, markers) {
        return None;
    }
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
        let word = &head[start..pos];
        // Only upper-case words (or bracketed ones) count: "error" inside
        // prose such as "no error found" must not make a line an error.
        let bracketed = start > 0 && matches!(head[start - 1], b'[' | b'<') && matches!(head.get(pos), Some(b']') | Some(b'>'));
        let upper = word.iter().all(u8::is_ascii_uppercase);
        if word.len() < 4 && word != b"ERR" && word != b"WRN" && word != b"INF" && word != b"DBG" {
            continue;
        }
        if !(upper || bracketed) {
            continue;
        }
        let level = match word {
            b"WRN" => Some(Level::Warn),
            b"INF" => Some(Level::Info),
            b"DBG" => Some(Level::Debug),
            _ => Level::from_word(word),
        };
        if level.is_some() {
            return level;
        }
    }
    None
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

    proptest::proptest! {
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
                level_after_glog(head, Markers(u8::MAX))
            };
            proptest::prop_assert_eq!(detect_level(line.as_bytes()), every_check, "{:?}", line);
        }
    }
}
