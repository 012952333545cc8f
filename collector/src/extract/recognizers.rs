//! The built-in recognizers of training output formats.

use super::MetricKey;
use weft_model::scan::{Held, Marker};

/// Keys that mark a JSON or logfmt line as training output.
const TRAINING_KEYS: [&str; 14] = [
    "loss",
    "step",
    "global_step",
    "iteration",
    "iter",
    "epoch",
    "learning_rate",
    "lr",
    "grad_norm",
    "train_loss",
    "eval_loss",
    "tokens_per_sec",
    "samples_per_second",
    "perplexity",
];

/// Parses a number as training code prints it (`2e-05`, `1.500E-04`,
/// `nan`, `inf`, `-inf`, `1,234`).
pub fn parse_number(text: &str) -> Option<f64> {
    // Most numbers come with nothing to trim: no walk over their ends'
    // characters for Unicode white space.
    let text = match text.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() && *last != b',' => text,
        _ => text.trim().trim_end_matches(','),
    };
    if let Some(value) = plain_decimal(text.as_bytes()) {
        return Some(value);
    }
    if !text.bytes().any(|b| b.is_ascii_digit()) {
        let is = |word: &str| text.eq_ignore_ascii_case(word);
        return if is("nan") || is("+nan") || is("-nan") {
            Some(f64::NAN)
        } else if is("inf") || is("+inf") || is("infinity") {
            Some(f64::INFINITY)
        } else if is("-inf") || is("-infinity") {
            Some(f64::NEG_INFINITY)
        } else {
            None
        };
    }
    text.parse::<f64>().ok().or_else(|| text.replace(',', "").parse::<f64>().ok())
}

/// The value of a plain decimal (`-12`, `0.2183`, `1.42`, `2.0898e-04`:
/// an optional `-`, digits, at most one `.` between digits, at most 15
/// digits, an optional exponent), read without the general float parser
/// (a tenth of the time of a trainer line with metrics had been in it, and
/// a Hugging Face dict line's learning rate is printed with an exponent).
/// The digits make an integer below 2^53 and the power of ten it is
/// scaled by is at most 10^22, so both are exact and the one division or
/// multiplication rounds correctly: the same value `str::parse` gives.
/// `None` for anything else.
fn plain_decimal(text: &[u8]) -> Option<f64> {
    const POWERS: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (mut mantissa, mut digits, mut point) = (0u64, 0, None);
    // One walk over the digits, up to the exponent's `e`.
    let mut at = 0;
    while let Some(&b) = text.get(at) {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return None;
                }
                mantissa = mantissa * 10 + u64::from(b - b'0');
            }
            b'.' if point.is_none() && at > 0 && text.get(at + 1).is_some_and(u8::is_ascii_digit) => point = Some(at),
            b'e' | b'E' => break,
            _ => return None,
        }
        at += 1;
    }
    if digits == 0 {
        return None;
    }
    // The power of ten the digits are scaled by: the exponent less the
    // decimals.
    let mut scale = -(point.map_or(0, |point| at - point - 1) as i32);
    if let Some(exponent) = text.get(at + 1..) {
        let (minus, exponent_digits) = match exponent.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, exponent),
        };
        if exponent_digits.is_empty() || exponent_digits.len() > 3 || !exponent_digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = exponent_digits.iter().fold(0i32, |n, &b| n * 10 + i32::from(b - b'0'));
        scale += if minus { -value } else { value };
    }
    let power = *POWERS.get(scale.unsigned_abs() as usize)?;
    let value = if scale < 0 {
        mantissa as f64 / power
    } else {
        mantissa as f64 * power
    };
    Some(if negative { -value } else { value })
}

/// `Learning Rate` → `learning_rate`, `elapsed time per iteration (ms)` →
/// `elapsed_time_per_iteration_ms`; `lr` → `learning_rate`; `iter`,
/// `iteration`, `global_step`, `steps` → `step`.
pub fn normalize_key(key: &str) -> MetricKey {
    // Most keys are common ones (`loss`, `grad_norm`), normal already: the
    // loop below would copy them unchanged.
    if let Some(known) = known(key) {
        return MetricKey::Borrowed(known);
    }
    // Other normal keys: lower-case words joined by single `_`.
    if is_normal(key.as_bytes()) {
        return MetricKey::Owned(key.to_string());
    }
    let mut out = String::with_capacity(key.len() + 4);
    let mut gap = false;
    let key = key.trim();
    for (at, c) in key.char_indices() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            gap = false;
        } else if c == '/' {
            // `samples/sec` is a rate; `train/loss` a namespace.
            if !out.is_empty() {
                out.push_str(if per_unit_follows(&key[at + 1..]) { "_per_" } else { "_" });
            }
            gap = false;
        } else {
            gap = true;
        }
    }
    // Only a trailing `_` can be left (from a trailing `/`).
    while out.ends_with('_') {
        out.pop();
    }
    match known(&out) {
        Some(known) => MetricKey::Borrowed(known),
        None => MetricKey::Owned(out),
    }
}

/// Units a `/` divides by (`tokens/s`, `samples/sec`, `tflops/gpu`): there
/// it reads "per"; elsewhere (`train/loss`, Lightning's and TensorBoard's
/// namespaces) it separates words.
const PER_UNITS: [&str; 20] = [
    "s",
    "sec",
    "secs",
    "second",
    "seconds",
    "ms",
    "min",
    "h",
    "hour",
    "step",
    "steps",
    "it",
    "iter",
    "iteration",
    "gpu",
    "device",
    "batch",
    "sample",
    "token",
    "epoch",
];

fn per_unit_follows(rest: &str) -> bool {
    let word = rest.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or("");
    PER_UNITS.iter().any(|unit| word.eq_ignore_ascii_case(unit))
}

/// Whether `key` is normal: lower-case letters and digits in words joined
/// by single `_`, starting and ending with a letter or digit. One loop over
/// the bytes, where a pass per rule had been.
fn is_normal(key: &[u8]) -> bool {
    if !key.first().is_some_and(u8::is_ascii_alphanumeric) || !key.last().is_some_and(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut previous = 0;
    for &b in key {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => {}
            b'_' if previous != b'_' => {}
            _ => return false,
        }
        previous = b;
    }
    true
}

/// The keys the built-in recognizers find in the output of Hugging Face,
/// Lightning, DeepSpeed, Megatron-LM and Keras, each with the key it is
/// taken as: itself where it is common and normal already, else the key
/// it is an alias of (`lr` → `learning_rate`). Every key here is normal.
const KNOWN_KEYS: [(&str, &str); 30] = [
    ("loss", "loss"),
    ("step", "step"),
    ("epoch", "epoch"),
    ("learning_rate", "learning_rate"),
    ("grad_norm", "grad_norm"),
    ("total_steps", "total_steps"),
    ("iterations_per_second", "iterations_per_second"),
    ("seconds_per_iteration", "seconds_per_iteration"),
    ("train_loss", "train_loss"),
    ("eval_loss", "eval_loss"),
    ("val_loss", "val_loss"),
    ("tokens_per_sec", "tokens_per_sec"),
    ("samples_per_second", "samples_per_second"),
    ("samples_per_sec", "samples_per_sec"),
    ("perplexity", "perplexity"),
    ("accuracy", "accuracy"),
    ("batch", "batch"),
    ("batches", "batches"),
    ("lm_loss", "lm_loss"),
    ("loss_scale", "loss_scale"),
    ("consumed_samples", "consumed_samples"),
    ("skipped", "skipped"),
    ("throughput", "throughput"),
    ("lr", "learning_rate"),
    ("iter", "step"),
    ("iteration", "step"),
    ("global_step", "step"),
    ("steps", "step"),
    ("it_per_s", "iterations_per_second"),
    ("s_per_it", "seconds_per_iteration"),
];

/// The key `key` is taken as, where it is one of [`KNOWN_KEYS`].
fn known(key: &str) -> Option<&'static str> {
    KNOWN_KEYS.iter().find(|(known, _)| *known == key).map(|(_, taken_as)| *taken_as)
}

/// Appends a sample of a key the recognizer names itself, normal already
/// (`step`, `total_steps`): no normalizing, which had been most of the
/// cost of a progress bar's samples.
fn push_known(out: &mut Vec<(MetricKey, f64)>, key: &'static str, value: f64) {
    debug_assert_eq!(normalize_key(key), key, "a known key is normal");
    out.push((MetricKey::Borrowed(key), value));
}

fn push(out: &mut Vec<(MetricKey, f64)>, key: &str, value: f64) {
    let key = normalize_key(key);
    if !key.is_empty() && key.len() <= 64 {
        out.push((key, value));
    }
}

/// Substring finders built once (`str::contains` built a searcher per call,
/// and the recognizers' checks had been a tenth of the collector's time).
fn finder(needle: &'static str) -> memchr::memmem::Finder<'static> {
    memchr::memmem::Finder::new(needle.as_bytes())
}

struct Finders {
    dict_open: memchr::memmem::Finder<'static>,
    iteration: memchr::memmem::Finder<'static>,
    bar: memchr::memmem::Finder<'static>,
    it_per_s: memchr::memmem::Finder<'static>,
    s_per_it: memchr::memmem::Finder<'static>,
    per_step: memchr::memmem::Finder<'static>,
    eta: memchr::memmem::Finder<'static>,
    step: memchr::memmem::Finder<'static>,
    loss_colon: memchr::memmem::Finder<'static>,
    epoch: memchr::memmem::Finder<'static>,
    counter_end: memchr::memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static FINDERS: std::sync::OnceLock<Finders> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| Finders {
        dict_open: finder("{'"),
        iteration: finder("iteration"),
        bar: finder(" | "),
        it_per_s: finder("it/s"),
        s_per_it: finder("s/it"),
        per_step: finder("/step"),
        eta: finder("ETA:"),
        step: finder("step"),
        loss_colon: finder("loss:"),
        epoch: finder("Epoch "),
        counter_end: finder(" ["),
    })
}

/// The marker bytes and byte pairs the recognizers' checks start from,
/// found in one pass over the line ([`weft_model::scan`]): most lines hold
/// none of them and skip every recognizer's substring search (nine
/// `memchr` and `memmem` calls on a log line with a `/` in it).
#[derive(Debug)]
struct Markers;

impl weft_model::scan::MarkerSet for Markers {
    const MARKERS: &'static [Marker] = &[
        Marker::Byte(b'{'),
        Marker::Byte(b'|'),
        Marker::Byte(b'='),
        Marker::Pair(b'/', b's'),
        Marker::Pair(b's', b'/'),
        Marker::Pair(b'A', b':'),
        Marker::Pair(b's', b':'),
        Marker::Pair(b'{', b'\''),
    ];
}

impl Markers {
    /// `{`: Python dicts and JSON lines.
    const BRACE: u8 = 1;
    /// `|`: Megatron-LM iteration lines.
    const PIPE: u8 = 1 << 1;
    /// `=`: logfmt and `step=`.
    const EQUALS: u8 = 1 << 2;
    /// `/s` or `s/`: `it/s`, `/step`; `s/it`.
    const SLASH_S: u8 = 1 << 3 | 1 << 4;
    /// `A:`: Keras' `ETA:`.
    const ETA_COLON: u8 = 1 << 5;
    /// `s:`: `loss:`, `steps:`.
    const S_COLON: u8 = 1 << 6;
    /// `{'`: a Python dict (a JSON line holds none, and is not searched for
    /// one: the search had been a fifth of a JSON access log's extraction).
    const DICT_OPEN: u8 = 1 << 7;
}

/// Lines longer than this are not read for metrics (but see [`last_redraw`]).
const MAX_LINE: usize = 16 * 1024;

/// What a terminal would show last of a line that a progress bar rewrote
/// with carriage returns: tqdm and Keras writing to a pipe (as under the
/// kubelet: the runtime splits lines at `\n`, and at 16 KiB into pieces the
/// tailer joins back) put every redraw on one line,
/// `\r  2%|▏ | 1/60 [...]\r 10%|█ | 6/60 [...]`, and the bar's state is the
/// last. `line` is trimmed at its end, so the last redraw is not empty.
fn last_redraw(line: &str) -> &str {
    match memchr::memrchr(b'\r', line.as_bytes()) {
        Some(cr) => &line[cr + 1..],
        None => line,
    }
}

/// Runs every built-in recognizer on `line`.
pub fn extract_builtin(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    let mut line = line.trim_end();
    if line.len() > MAX_LINE {
        // A bar redrawn for minutes through a pipe is one long line: its
        // last redraw is read where it is short.
        let last = last_redraw(line);
        if last.len() == line.len() || last.len() > MAX_LINE {
            return;
        }
        line = last;
    }
    let f = finders();
    let bytes = line.as_bytes();
    let markers = Held::<Markers>::of(bytes);
    if markers.any(Markers::BRACE) {
        if markers.any(Markers::DICT_OPEN) {
            if let Some(start) = f.dict_open.find(bytes) {
                python_dict(&line[start..], out);
                return;
            }
        }
        if line.trim_start().starts_with('{') {
            json_line(line.trim_start(), out);
            return;
        }
    }
    if markers.any(Markers::PIPE) && f.iteration.find(bytes).is_some() && f.bar.find(bytes).is_some() {
        megatron(line, out);
        return;
    }
    let slash_s = markers.any(Markers::SLASH_S);
    let bar = slash_s && (f.it_per_s.find(bytes).is_some() || f.s_per_it.find(bytes).is_some());
    let keras_bar =
        !bar && ((slash_s && f.per_step.find(bytes).is_some()) || (markers.any(Markers::ETA_COLON) && f.eta.find(bytes).is_some()));
    if bar || keras_bar {
        // A redrawn line is read as what it shows last, which may be a
        // message written over the bar (`tqdm.write`) rather than the bar.
        let last = last_redraw(line);
        if last.len() < line.len() {
            return extract_builtin(last, out);
        }
        if bar {
            progress_bar(line, out);
        } else {
            keras(line, out);
        }
        return;
    }
    // `step=` or `steps:`, or `loss:`.
    if markers.any(Markers::EQUALS | Markers::S_COLON) {
        let step = f
            .step
            .find_iter(bytes)
            .any(|at| bytes.get(at + 4) == Some(&b'=') || bytes.get(at + 4..at + 6) == Some(b"s:".as_slice()));
        if step || (markers.any(Markers::S_COLON) && f.loss_colon.find(bytes).is_some()) {
            deepspeed(line, out);
            if !out.is_empty() {
                return;
            }
        }
    }
    if markers.any(Markers::EQUALS) {
        logfmt(line, out);
    }
}

/// `text` around its first `byte` (ASCII): what `str::split_once` gives
/// for a one-byte pattern, by a byte loop (its searcher had cost more than
/// the search on a progress bar's short parts).
fn split_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    debug_assert!(byte.is_ascii());
    let at = text.bytes().position(|b| b == byte)?;
    Some((&text[..at], &text[at + 1..]))
}

/// Where `hay` first holds `first` followed by `then`: a short separator
/// in a short text, found by a byte loop (a `memmem` search's setup had
/// cost more than the search, twice per pair of a Python dict).
fn find_separator(hay: &[u8], first: u8, then: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = hay[from..].iter().position(|&b| b == first) {
        let at = from + found;
        if hay[at + 1..].starts_with(then) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// `{'loss': 0.3012, 'grad_norm': 1.2, 'learning_rate': 2e-05, 'epoch': 0.5}`
fn python_dict(text: &str, out: &mut Vec<(MetricKey, f64)>) {
    if !python_dict_as_printed(text, out) {
        python_dict_pairs(text, out);
    }
}

/// [`python_dict_pairs`] of a dict exactly as Python prints one of names
/// and numbers (`'key': number` pairs joined by `, `), read in one walk
/// over its bytes (the general split and trims had been most of a
/// Hugging Face line's cost); `false`, with nothing appended, for any
/// other text. Where it reads a dict, the pairs, keys and number texts are
/// those the general reading finds: the keys and numbers hold no `'`, `,`,
/// `}` or white space, so its splits fall exactly between them.
fn python_dict_as_printed(text: &str, out: &mut Vec<(MetricKey, f64)>) -> bool {
    let bytes = text.as_bytes();
    let before = out.len();
    // Past the `{`.
    let mut at = 1;
    loop {
        if bytes.get(at) != Some(&b'\'') {
            break;
        }
        let key_start = at + 1;
        at = key_start
            + bytes[key_start..]
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_')
                .count();
        if at == key_start || bytes.get(at..at + 3) != Some(b"': ".as_slice()) {
            break;
        }
        let key = &text[key_start..at];
        let value_start = at + 3;
        at = value_start
            + bytes[value_start..]
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
                .count();
        if let Some(value) = parse_number(&text[value_start..at]) {
            push(out, key, value);
        }
        match bytes.get(at) {
            Some(b'}') => return true,
            Some(b',') if bytes.get(at + 1..at + 3) == Some(b" '".as_slice()) => at += 2,
            _ => break,
        }
    }
    out.truncate(before);
    false
}

/// The general reading of [`python_dict`]: pairs split at `, '`, each key
/// up to its `':`, each value trimmed of white space and quotes.
fn python_dict_pairs(text: &str, out: &mut Vec<(MetricKey, f64)>) {
    let end = memchr::memchr(b'}', text.as_bytes()).unwrap_or(text.len());
    // The separators are ASCII: every cut is at a character boundary.
    let mut rest = Some(&text[1..end]);
    while let Some(pairs) = rest {
        let pair = match find_separator(pairs.as_bytes(), b',', b" '") {
            Some(at) => {
                rest = Some(&pairs[at + 3..]);
                &pairs[..at]
            }
            None => {
                rest = None;
                pairs
            }
        };
        let pair = pair.trim_start_matches('\'');
        let Some(at) = find_separator(pair.as_bytes(), b'\'', b":") else {
            continue;
        };
        let (key, value) = (&pair[..at], &pair[at + 2..]);
        if let Some(value) = parse_number(value.trim().trim_matches('\'')) {
            push(out, key, value);
        }
    }
}

/// Pieces of which every training key, as normalized, holds one (ignoring
/// case) — these or [`SHORT_TRAINING_KEY_PIECE`]: `learning_rate`,
/// `global_step`, `tokens_per_sec`, … A JSON line with none of them is not
/// parsed (a key spelled with `\u` escapes is the one thing this misses).
const TRAINING_KEY_PIECES: [&str; 8] = ["loss", "step", "iter", "epoch", "learning", "grad", "sec", "perplexity"];

/// The one training key piece of two bytes (`lr`).
const SHORT_TRAINING_KEY_PIECE: &[u8] = b"lr";

/// Whether `text` holds one of [`TRAINING_KEY_PIECES`] or
/// [`SHORT_TRAINING_KEY_PIECE`], ignoring case: searched for with SIMD in
/// the case-folded line ([`weft_model::fold`]; the pieces are letters, so
/// the folded line holds one exactly where the line holds it in some
/// case), which a case-insensitive automaton was not. `lr` is searched for
/// on its own: with a two-byte piece the multi-piece search keys on the
/// first two bytes of each, and common pairs (`st`, `se`, `it`) sent most
/// JSON lines to its slower check.
fn holds_training_key_piece(text: &[u8]) -> bool {
    // Most JSON and logfmt lines (access logs, app logs) hold none of the
    // pairs: no copy and no search for them (the two had been half of a
    // JSON access log's extraction).
    if Held::<KeyPiecePairs>::of(text).bits() == 0 {
        return false;
    }
    enum Search {
        Packed(aho_corasick::packed::Searcher),
        Automaton(aho_corasick::AhoCorasick),
    }
    static SEARCH: std::sync::OnceLock<(Search, memchr::memmem::Finder<'static>)> = std::sync::OnceLock::new();
    let (search, short) = SEARCH.get_or_init(|| {
        let search = match aho_corasick::packed::Searcher::new(TRAINING_KEY_PIECES) {
            Some(searcher) => Search::Packed(searcher),
            None => Search::Automaton(aho_corasick::AhoCorasick::new(TRAINING_KEY_PIECES).expect("literal pieces build")),
        };
        (search, memchr::memmem::Finder::new(SHORT_TRAINING_KEY_PIECE))
    });
    weft_model::fold::with_folded(text, |folded| {
        let long = match search {
            Search::Packed(searcher) => searcher.find(folded).is_some(),
            Search::Automaton(automaton) => automaton.is_match(folded),
        };
        long || short.find(folded).is_some()
    })
}

/// A pair of letters (in any case) out of each of [`TRAINING_KEY_PIECES`]
/// and [`SHORT_TRAINING_KEY_PIECE`], one marker pass finds: a text that
/// holds none of them holds no piece. The pairs are the pieces' rarer ones
/// (`ss`, not `lo`): a JSON access log holds none of them.
#[derive(Debug)]
struct KeyPiecePairs;

impl weft_model::scan::MarkerSet for KeyPiecePairs {
    const MARKERS: &'static [Marker] = &[
        Marker::FoldedPair(b's', b's'), // loss
        Marker::FoldedPair(b'e', b'p'), // step, epoch
        Marker::FoldedPair(b'i', b't'), // iter
        Marker::FoldedPair(b'r', b'n'), // learning
        Marker::FoldedPair(b'g', b'r'), // grad
        Marker::FoldedPair(b'e', b'c'), // sec
        Marker::FoldedPair(b'x', b'i'), // perplexity
        Marker::FoldedPair(b'l', b'r'), // lr
    ];
}

/// Numeric top-level fields of a JSON object that has a training key.
fn json_line(text: &str, out: &mut Vec<(MetricKey, f64)>) {
    // Parsing every JSON line (access logs, structured app logs) into a
    // value had been a tenth of the collector's time.
    if !holds_training_key_piece(text.as_bytes()) {
        return;
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if !map
        .keys()
        .any(|k| TRAINING_KEYS.contains(&normalize_key(k).as_ref()) || TRAINING_KEYS.contains(&k.as_str()))
    {
        return;
    }
    for (key, value) in &map {
        let number = match value {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "nan" | "inf" | "-inf")
                .then(|| parse_number(s))
                .flatten(),
            _ => None,
        };
        if let Some(number) = number {
            push(out, key, number);
        }
    }
}

/// `key=value` pairs of a line that has a training key.
fn logfmt(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    // Every key that normalizes to a training key holds a training key
    // piece (as for JSON lines): a line without one (a warning that sets
    // an environment variable, a traceback's `x = f(y)`) is not split into
    // tokens, which had cost 5,600 instructions a record.
    if !holds_training_key_piece(line.as_bytes()) {
        return;
    }
    logfmt_pairs(line, out);
}

/// [`logfmt`] without its cheap check.
fn logfmt_pairs(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    let mut found = Vec::new();
    let mut has_training_key = false;
    for token in line.split(|c: char| c.is_whitespace() || c == ',') {
        let Some((key, value)) = split_at_byte(token, b'=') else { continue };
        let key = key.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        if key.is_empty() {
            continue;
        }
        if let Some(value) = parse_number(value.trim_matches(|c| c == '"' || c == '[' || c == ']')) {
            has_training_key |= TRAINING_KEYS.contains(&normalize_key(key).as_ref()) || TRAINING_KEYS.contains(&key);
            found.push((key, value));
        }
    }
    if has_training_key {
        for (key, value) in found {
            push(out, key, value);
        }
    }
}

/// The descriptions of Lightning's bars over loops other than training.
const EVALUATION_BARS: [&str; 4] = ["Validation", "Sanity Checking", "Testing", "Predicting"];

/// tqdm and PyTorch Lightning bars:
/// `Epoch 3:  45%|████▌     | 450/1000 [01:23<01:40,  5.40it/s, loss=0.321, v_num=0]`,
/// and Lightning's rich bar (its default where `rich` is installed), which
/// a pipe receives once, as it stops:
/// `Epoch 1/9  ━━━━━━━━━━ 40/40 0:00:03 • 0:00:00 12.50it/s v_num: 0.000 train_loss: 0.210`.
fn progress_bar(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    let f = finders();
    // A validation, test or prediction bar counts batches of another loop:
    // its counter is not the training step. Lightning names the loop; tqdm
    // draws a nested bar (Hugging Face's evaluation bar, below the training
    // bar) and then moves the cursor back up, `ESC [A`.
    let trimmed = line.trim_start();
    let evaluation = line.ends_with("\x1b[A") || EVALUATION_BARS.iter().any(|loop_name| trimmed.starts_with(loop_name));
    // `Epoch N:` prefix (Lightning).
    if let Some(at) = f.epoch.find(line.as_bytes()) {
        let rest = &line[at + 6..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Some(epoch) = parse_number(&rest[..digits]) {
            push_known(out, "epoch", epoch);
        }
    }
    // `N/M [` counter: the step within the bar.
    let Some(bracket) = f.counter_end.find(line.as_bytes()) else {
        rich_bar(line, evaluation, out);
        return;
    };
    let counter = line[..bracket]
        .rsplit(|c: char| c == '|' || c.is_whitespace())
        .find(|t| t.as_bytes().contains(&b'/'));
    if let Some(counter) = counter.filter(|_| !evaluation) {
        push_counter(counter, out);
    }
    let inside = &line[bracket + 2..memchr::memchr(b']', &line.as_bytes()[bracket..]).map_or(line.len(), |e| bracket + e)];
    for part in inside.split([',']) {
        let part = part.trim();
        if let Some(rate) = part.strip_suffix("it/s") {
            if let Some(rate) = parse_number(rate).filter(|_| !evaluation) {
                push_known(out, "iterations_per_second", rate);
            }
        } else if let Some(seconds) = part.strip_suffix("s/it") {
            if let Some(seconds) = parse_number(seconds).filter(|_| !evaluation) {
                push_known(out, "seconds_per_iteration", seconds);
            }
        } else if let Some((key, value)) = split_at_byte(part, b'=') {
            if key.trim() != "v_num" {
                if let Some(value) = parse_number(value) {
                    push(out, key, value);
                }
            }
        }
    }
}

/// `done/total`, or `done/--` (a loader of unknown length in Lightning's
/// rich bar): the step and, where known, the steps in all.
fn counter(token: &str) -> Option<(f64, Option<f64>)> {
    let (done, total) = split_at_byte(token, b'/')?;
    let done = parse_number(done)?;
    match parse_number(total) {
        Some(total) => Some((done, Some(total))),
        None if total == "--" => Some((done, None)),
        None => None,
    }
}

fn push_counter(token: &str, out: &mut Vec<(MetricKey, f64)>) {
    if let Some((done, total)) = counter(token) {
        push_known(out, "step", done);
        if let Some(total) = total {
            push_known(out, "total_steps", total);
        }
    }
}

/// Lightning's rich bar: description, bar, `done/total`, elapsed • remaining,
/// `N.NNit/s`, then `name: value` pairs.
fn rich_bar(line: &str, evaluation: bool, out: &mut Vec<(MetricKey, f64)>) {
    let Some(rate_end) = finders().it_per_s.find(line.as_bytes()) else {
        return;
    };
    let before = &line[..rate_end];
    let rate_text = before.rsplit(char::is_whitespace).next().unwrap_or(before);
    let Some(rate) = parse_number(rate_text) else { return };
    // Rich's layout: the counter is followed by the elapsed time
    // (`40/40 0:00:03`); the description's `Epoch 1/9` is not.
    let tokens: Vec<&str> = before[..before.len() - rate_text.len()].split_whitespace().collect();
    let Some(at) = tokens.windows(2).rposition(|pair| counter(pair[0]).is_some() && is_clock(pair[1])) else {
        return;
    };
    if !evaluation {
        push_counter(tokens[at], out);
        push_known(out, "iterations_per_second", rate);
    }
    let mut tokens = line[rate_end + 4..].split_whitespace();
    while let Some(token) = tokens.next() {
        let Some(key) = token.strip_suffix(':') else { continue };
        let Some(value) = tokens.next().and_then(parse_number) else {
            continue;
        };
        if key != "v_num" {
            push(out, key, value);
        }
    }
}

/// Rich's time column: `0:00:03`, `12:34:56`, or `-:--:--` before it knows.
fn is_clock(token: &str) -> bool {
    let parts: Vec<&str> = token.split(':').collect();
    parts.len() == 3
        && (parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            || parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b == b'-')))
}

/// Keras: `100/100 [====] - 5s 50ms/step - loss: 0.3012 - accuracy: 0.9123`
fn keras(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    let mut parts = line.split(" - ");
    let Some(first) = parts.next() else { return };
    if let Some(counter) = first
        .split_whitespace()
        .find(|t| t.contains('/') && t.chars().next().is_some_and(|c| c.is_ascii_digit()))
    {
        if let Some((done, total)) = split_at_byte(counter, b'/') {
            if let (Some(done), Some(total)) = (parse_number(done), parse_number(total)) {
                push_known(out, "batch", done);
                push_known(out, "batches", total);
            }
        }
    }
    for part in parts {
        if let Some((key, value)) = part.split_once(": ") {
            if key.trim() != "ETA" {
                if let Some(value) = parse_number(value.split_whitespace().next().unwrap_or("")) {
                    push(out, key, value);
                }
            }
        }
    }
}

/// DeepSpeed: `[Rank 0] step=100, skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]`
/// and `steps: 100 loss: 0.3012 iter time (s): 0.512 samples/sec: 62.5`.
fn deepspeed(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    if let Some(at) = line.find("step=") {
        for token in line[at..].split(", ") {
            let Some((key, value)) = split_at_byte(token, b'=') else { continue };
            let value = value.trim().trim_start_matches('[').split([',', ']']).next().unwrap_or("");
            if let Some(value) = parse_number(value) {
                push(out, key, value);
            }
        }
        return;
    }
    let mut rest = line;
    while let Some(colon) = rest.find(": ") {
        let key_start = rest[..colon]
            .rfind(|c: char| c.is_ascii_digit() || c == ']')
            .map(|i| i + 1)
            .unwrap_or(0);
        let key = rest[key_start..colon].trim();
        let after = &rest[colon + 2..];
        let trimmed = after.trim_start();
        let value = trimmed.split_whitespace().next().unwrap_or("");
        if let Some(number) = parse_number(value) {
            if !key.is_empty() && key.len() < 40 {
                push(out, key, number);
            }
        }
        // `value` starts `after.len() - trimmed.len()` bytes into `after`.
        rest = &after[after.len() - trimmed.len() + value.len()..];
    }
}

/// Megatron-LM: ` iteration 100/ 500000 | consumed samples: 12800 | … | lm loss: 7.012345E+00 |`
fn megatron(line: &str, out: &mut Vec<(MetricKey, f64)>) {
    for field in line.split(" | ") {
        let field = field.trim().trim_end_matches('|').trim();
        if let Some(rest) = field.strip_prefix("iteration") {
            if let Some((done, total)) = split_at_byte(rest, b'/') {
                if let (Some(done), Some(total)) = (parse_number(done), parse_number(total)) {
                    push_known(out, "step", done);
                    push_known(out, "total_steps", total);
                }
            }
            continue;
        }
        if let Some((key, value)) = field.rsplit_once(':') {
            if let Some(value) = parse_number(value) {
                push(out, key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_read_as_the_float_parser_reads_them() {
        for text in [
            "0",
            "-0",
            "12",
            "0.2183",
            "2.3860",
            "1.42",
            "-7.5",
            "007",
            "123456789012345",
            "0.00000000000001",
            "99999.9999999999",
            "1e5",
            "2.0898e-04",
            "1.500E-04",
            "7.012345E+00",
            "-3e22",
            "123456789012345e-22",
            "0.5e-7",
        ] {
            assert_eq!(
                plain_decimal(text.as_bytes()).map(f64::to_bits),
                text.parse::<f64>().ok().map(f64::to_bits),
                "{text}"
            );
        }
        for text in [
            "",
            "-",
            ".5",
            "1.",
            "1.2.3",
            "+5",
            "1e",
            "1e+",
            "1e1000",
            "1e23",
            "1e-23",
            "1.5e-22",
            "1e5e3",
            "e5",
            "1,000",
            "1234567890123456",
            "0.123456789012345",
            "0.000000000000001",
            "nan",
            " 1",
        ] {
            assert_eq!(plain_decimal(text.as_bytes()), None, "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_decimal_agrees_with_the_float_parser(int in 0u64..10_000_000_000_000_000, zeros in 0usize..4, decimals in 0usize..17, negative: bool) {
            let digits = format!("{}{int}", "0".repeat(zeros));
            let text = if decimals == 0 || decimals >= digits.len() {
                digits
            } else {
                format!("{}.{}", &digits[..digits.len() - decimals], &digits[digits.len() - decimals..])
            };
            let text = if negative { format!("-{text}") } else { text };
            if let Some(value) = plain_decimal(text.as_bytes()) {
                proptest::prop_assert_eq!(value.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
            }
            proptest::prop_assert_eq!(parse_number(&text).map(f64::to_bits), text.parse::<f64>().ok().map(f64::to_bits));
        }

        /// With an exponent, and in texts that are not numbers at all
        /// (`1e`, `--5`, `.e3`): whatever the fast path reads, it reads as
        /// the float parser does, and `parse_number` gives what it gives.
        #[test]
        fn exponents_read_as_the_float_parser_reads_them(
            text in "-?[0-9]{0,17}(\\.[0-9]{0,17})?([eE][-+]?[0-9]{0,4})?|[-+0-9.eE]{0,12}",
        ) {
            if let Some(value) = plain_decimal(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(value.to_bits()), text.parse::<f64>().ok().map(f64::to_bits), "{}", text);
            }
            proptest::prop_assert_eq!(parse_number(&text).map(f64::to_bits), text.parse::<f64>().ok().map(f64::to_bits), "{}", text);
        }

        /// Each marker bit is set exactly when the line holds its bytes, at
        /// every position (the first, the last) and in lines of any length.
        #[test]
        fn markers_are_the_bytes_the_line_holds(line in "([{|=/sA:x']|it/s|ETA:|loss:|\\{'|\\PC){0,80}") {
            let holds = |piece: &str| line.contains(piece);
            let want = [
                (Markers::BRACE, holds("{")),
                (Markers::PIPE, holds("|")),
                (Markers::EQUALS, holds("=")),
                (Markers::SLASH_S, holds("/s") || holds("s/")),
                (Markers::ETA_COLON, holds("A:")),
                (Markers::S_COLON, holds("s:")),
                (Markers::DICT_OPEN, holds("{'")),
            ];
            let markers = Held::<Markers>::of(line.as_bytes());
            for (marker, held) in want {
                proptest::prop_assert_eq!(markers.any(marker), held, "marker {} in {:?}", marker, line);
            }
        }
    }

    proptest::proptest! {
        /// The cheap check before splitting a line into `key=value` pairs
        /// never drops a training key's samples.
        #[test]
        fn logfmt_check_drops_no_training_line(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "LR", "lr", "Learning_Rate", "GLOBAL_STEP", "Iter", "iteration", "steps", "tokens/sec", "Samples-Per-Second",
                    "Grad-Norm", "grad_norm", "Perplexity", "Epoch", "eval_loss", "train-loss", "loss", "l_r", "lo", "ss", "sec",
                    "level", "msg", "x", "=", "=0.5", "=3", "=nan", " ", ",", "\"", "é", "/",
                ]),
                0..20,
            )
        ) {
            let line = pieces.concat();
            let (mut checked, mut all) = (Vec::new(), Vec::new());
            logfmt(&line, &mut checked);
            logfmt_pairs(&line, &mut all);
            let bits = |found: Vec<(MetricKey, f64)>| found.into_iter().map(|(k, v)| (k, v.to_bits())).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(checked), bits(all), "{:?}", line);
        }

        #[test]
        fn split_at_byte_is_split_once(text in "[=/a é]{0,12}", byte in proptest::sample::select(vec![b'=', b'/'])) {
            proptest::prop_assert_eq!(split_at_byte(&text, byte), text.split_once(byte as char));
        }

        #[test]
        fn separators_are_found_where_a_substring_search_finds_them(
            hay in proptest::collection::vec(proptest::sample::select(vec![b',', b' ', b'\'', b':', b'x']), 0..40),
            first in proptest::sample::select(vec![b',', b'\'']),
            then in proptest::sample::select(vec![&b" '"[..], b":", b""]),
        ) {
            let needle = [&[first][..], then].concat();
            proptest::prop_assert_eq!(find_separator(&hay, first, then), memchr::memmem::find(&hay, &needle));
        }
    }

    /// A known key is taken as its entry says without the normalizing walk
    /// (which it would pass unchanged: it is normal), and no key is listed
    /// twice.
    #[test]
    fn known_keys_are_normal_and_listed_once() {
        for (at, (key, taken_as)) in KNOWN_KEYS.iter().enumerate() {
            assert!(is_normal(key.as_bytes()) && is_normal(taken_as.as_bytes()), "{key} → {taken_as}");
            assert_eq!(normalize_key(key), *taken_as);
            assert!(KNOWN_KEYS[at + 1..].iter().all(|(other, _)| other != key), "{key} listed twice");
        }
        assert_eq!(normalize_key("Learning Rate"), "learning_rate");
        assert_eq!(normalize_key("GLOBAL_STEP"), "step");
        assert_eq!(normalize_key("eval_runtime"), "eval_runtime");
    }

    /// One of `usual` nine times in ten, else one of `odd`.
    fn piece(usual: &[&'static str], odd: &[&'static str]) -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::prop_oneof![9 => proptest::sample::select(usual.to_vec()), 1 => proptest::sample::select(odd.to_vec())]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        /// Where the one walk reads a dict, it finds what the general
        /// reading finds; where it does not, it appends nothing.
        #[test]
        fn printed_dicts_read_as_the_general_reading_reads_them(
            pairs in proptest::collection::vec(
                (
                    piece(&["loss", "grad_norm", "Learning_Rate", "lr", "epoch_2"], &["x y", "", "'", "é", "a}b", "a,b"]),
                    piece(&["': "], &["':", "' : ", ": ", "'"]),
                    piece(&["0.25", "2e-05", "1.5E+3", "nan", "-inf", "+1", "12"], &["", "1,234", "'nan'", "x", "1 ", "-", "é", "1.2.3"]),
                    piece(&[", '", "}", "}, x"], &[",'", ", ", "'}", " }", "", ","]),
                ),
                1..6,
            )
        ) {
            let text: String =
                std::iter::once("{'".to_string()).chain(pairs.iter().map(|(k, sep, v, join)| format!("{k}{sep}{v}{join}"))).collect();
            let (mut walked, mut general) = (vec![(MetricKey::Borrowed("before"), 1.0)], Vec::new());
            let read = python_dict_as_printed(&text, &mut walked);
            python_dict_pairs(&text, &mut general);
            let bits = |found: &[(MetricKey, f64)]| found.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
            if read {
                proptest::prop_assert_eq!(bits(&walked[1..]), bits(&general), "{:?}", text);
            } else {
                proptest::prop_assert_eq!(walked.len(), 1, "{:?}", text);
            }
        }
    }

    #[test]
    fn printed_dicts_take_the_walk() {
        let mut out = Vec::new();
        assert!(python_dict_as_printed(
            "{'loss': 0.2047, 'grad_norm': 1.3498, 'learning_rate': 2.0898e-04, 'epoch': 3.03}",
            &mut out
        ));
        assert_eq!(out.len(), 4);
        assert!(!python_dict_as_printed("{'loss': 1,234, 'epoch': 3}", &mut out));
        assert_eq!(out.len(), 4);
    }

    /// Each training key piece holds one of the pairs the cheap check looks
    /// for, in every case: a line holding a piece is never refused by it.
    #[test]
    fn every_key_piece_holds_a_checked_pair() {
        for piece in TRAINING_KEY_PIECES.iter().map(|p| p.as_bytes()).chain([SHORT_TRAINING_KEY_PIECE]) {
            for text in [
                piece.to_vec(),
                piece.to_ascii_uppercase(),
                format!("x{}x", String::from_utf8_lossy(piece)).into_bytes(),
            ] {
                assert_ne!(Held::<KeyPiecePairs>::of(&text).bits(), 0, "{:?}", String::from_utf8_lossy(&text));
            }
        }
        let access_log = br#"{"ts":"2026-11-25T09:15:31.421Z","level":"info","msg":"request finished","method":"POST","path":"/v1/embeddings","status":200,"prompt_tokens":3719,"completion_tokens":260,"latency_ms":8393.6,"request_id":"f5762accbf11fbfb","model":"llama-3-8b-instruct"}"#;
        assert_eq!(Held::<KeyPiecePairs>::of(access_log).bits(), 0);
        assert!(!holds_training_key_piece(access_log));
    }

    #[test]
    fn markers_at_the_ends_of_a_line() {
        let of = |text: &[u8]| Held::<Markers>::of(text).bits();
        assert_eq!(of(b""), 0);
        assert_eq!(of(b"="), Markers::EQUALS);
        assert_eq!(of(b"{x"), Markers::BRACE);
        assert_eq!(of(b"x|"), Markers::PIPE);
        assert!(Held::<Markers>::of(b"s/").any(Markers::SLASH_S));
        assert!(Held::<Markers>::of(b"it/s").any(Markers::SLASH_S));
        assert_eq!(of(b"ETA:"), Markers::ETA_COLON);
        assert_eq!(of(b"loss:"), Markers::S_COLON);
        assert_eq!(of(b"{'"), Markers::BRACE | Markers::DICT_OPEN);
        assert_eq!(of(b"{\"'"), Markers::BRACE);
        assert_eq!(of(b"S: a/b"), 0);
    }
}
