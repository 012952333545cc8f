//! The tantivy side of a split: the schema and the writer. The index has a
//! single segment written in Parquet row order, so a doc id *is* the row
//! number in the split's Parquet file.
//!
//! Fields: `line` (tokenized by `weft_line`: alphanumeric runs, lowercased,
//! runs of [`LONG_TOKEN_BYTES`] or more left out, no positions; number
//! tokens and the split's block words ([`block_words`]) go to the split's
//! block-level number index instead, see [`super::numbers`]; splits
//! written before it hold them here),
//! `flags` (`long_token` on lines that had such a run, so a substring
//! prefilter never misses them), `level` and `ml_event` (raw and fast),
//! `field` (raw `name=value` terms of structured metadata), `ts` (i64, fast
//! only: time ranges are fast-field range scans, a term per nanosecond
//! stamp would be a dictionary entry per row) and `bytes` (line length,
//! fast). Nothing is stored: the row's content is in Parquet; the doc store
//! tantivy always writes (an entry per document) is replaced by an empty
//! one once the index is written.
//!
//! A row's stream is not in the index: rows are sorted by stream, and the
//! catalog entry's `stream_starts` give each stream's run of rows
//! (selectors become row ranges, and a row's stream is found by a binary
//! search). Splits written before that have a `stream` field (the canonical
//! label set per row, raw and fast), still in the schema; splits written
//! before this schema also have a `label` field (raw `name=value` terms per
//! row) and an indexed `ts`; readers ignore the former and range queries
//! read the fast field either way.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use arrow_array::Array;
use tantivy::directory::{Directory, MmapDirectory};
use tantivy::index::SegmentComponent;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::store::{Compressor, StoreWriter, ZstdCompressor};
use tantivy::tokenizer::{TextAnalyzer, Token, TokenStream, Tokenizer};
use tantivy::{Index, IndexSettings, TantivyDocument};
use weft_model::LogBatchView;

use rustc_hash::FxHashMap;

use super::numbers::{fingerprint, is_number_token, may_be_block_word, NumberIndexBuilder, WordSet, BLOCK_ROWS, MAX_BLOCK_WORDS};
use crate::IndexerError;

/// Field handles of the split index schema.
#[derive(Clone, Copy, Debug)]
pub struct LogFields {
    pub line: Field,
    pub flags: Field,
    pub stream: Field,
    pub level: Field,
    pub ml_event: Field,
    pub field: Field,
    pub ts: Field,
    pub bytes: Field,
}

/// Name of the tokenizer of the `line` field.
pub const LINE_TOKENIZER: &str = "weft_line";
/// Alphanumeric runs this long or longer are not indexed as terms.
pub const LONG_TOKEN_BYTES: usize = 256;
/// The `flags` term of lines that had such a run.
pub const LONG_TOKEN_FLAG: &str = "long_token";

/// The `line` analyzer: alphanumeric runs shorter than
/// [`LONG_TOKEN_BYTES`], lowercased, numbers left to the number index.
fn line_analyzer() -> TextAnalyzer {
    TextAnalyzer::from(LineTokenizer::default())
}

/// A word is a block word of a split when at least one in this many of
/// the sampled lines holds it. Its postings would take a bit or more per
/// such line; a page of 1,024 lines holds it some 30 times or more,
/// and is read whole to check a line anyway.
pub const BLOCK_WORD_SHARE: usize = 32;
/// Lines sampled (evenly spaced: every `rows / 2,048`th, so 2,048 to
/// 2,560 of them in a split of 8,192 rows or more) to pick its block words.
const BLOCK_WORD_SAMPLE: usize = 2048;
/// Splits of fewer rows have no block words (their postings are small).
const BLOCK_WORDS_MIN_ROWS: usize = 8 * BLOCK_ROWS as usize;

/// The block words of a split of `view`'s rows, sorted: the words (each
/// [`may_be_block_word`]) held by at least one in [`BLOCK_WORD_SHARE`] of
/// an even sample of its lines; the most common [`MAX_BLOCK_WORDS`] of
/// them. They are picked before any row is indexed, so every row's
/// occurrences of a block word go to the number index, and of any other
/// word to tantivy, whatever the sample missed.
pub fn block_words(view: &LogBatchView<'_>) -> Vec<String> {
    let rows = view.len();
    if rows < BLOCK_WORDS_MIN_ROWS {
        return Vec::new();
    }
    let step = rows / BLOCK_WORD_SAMPLE.min(rows);
    // Per word: sampled lines holding it, and the last of them.
    let mut held: FxHashMap<String, (usize, usize)> = FxHashMap::default();
    let mut sampled = 0;
    for (n, row) in (0..rows).step_by(step).enumerate() {
        sampled += 1;
        for token in line_tokens(view.line.value(row)) {
            if !may_be_block_word(&token) {
                continue;
            }
            let (lines, last) = held.entry(token).or_insert((0, usize::MAX));
            if *last != n {
                *lines += 1;
                *last = n;
            }
        }
    }
    let mut common: Vec<(usize, String)> = held
        .into_iter()
        .filter(|(_, (lines, _))| lines * BLOCK_WORD_SHARE >= sampled)
        .map(|(word, (lines, _))| (lines, word))
        .collect();
    common.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    common.truncate(MAX_BLOCK_WORDS);
    let mut words: Vec<String> = common.into_iter().map(|(_, word)| word).collect();
    words.sort_unstable();
    words
}

/// A split's block words, for the tokenizer: each word's place in the
/// list (its bit in a row's [`WordSet`]).
struct BlockWords {
    places: FxHashMap<String, u8>,
    /// Bit `n` set when some word is `n` bytes long (a token of another
    /// length is not looked up).
    lengths: u128,
}

impl BlockWords {
    fn new(words: &[String]) -> Self {
        BlockWords {
            places: words.iter().zip(0u8..).map(|(w, place)| (w.clone(), place)).collect(),
            lengths: words
                .iter()
                .fold(0, |lengths, w| lengths | 1u128.checked_shl(w.len() as u32).unwrap_or(0)),
        }
    }

    /// The place of `token` (lowercased) among the words.
    fn place(&self, token: &str) -> Option<u8> {
        let len_bit = 1u128.checked_shl(token.len() as u32).unwrap_or(0);
        if self.lengths & len_bit == 0 {
            return None;
        }
        self.places.get(token).copied()
    }
}

/// The `line` tokenizer in one pass over the bytes: what tantivy's
/// `SimpleTokenizer`, `RemoveLongFilter`, `LowerCaser` and a filter of
/// number tokens make of a line, without four stages per token (they
/// were half of the indexer's word indexing). [`line_tokens`] is its
/// specification.
#[derive(Clone, Default)]
pub struct LineTokenizer {
    token: Token,
    /// The split's block words, left to the number index like numbers.
    words: Option<Arc<BlockWords>>,
}

impl LineTokenizer {
    /// The tokenizer of a split whose block words are `words`.
    fn with_words(words: &[String]) -> Self {
        LineTokenizer {
            token: Token::default(),
            words: (!words.is_empty()).then(|| Arc::new(BlockWords::new(words))),
        }
    }
}

/// The token stream of [`LineTokenizer`].
pub struct LineTokenStream<'a> {
    text: &'a str,
    at: usize,
    token: &'a mut Token,
    words: Option<&'a BlockWords>,
}

impl Tokenizer for LineTokenizer {
    type TokenStream<'a> = LineTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> LineTokenStream<'a> {
        self.token.reset();
        NUMBER_SINK.with_borrow_mut(|sink| {
            if let Some(sink) = sink {
                sink.lines += 1;
            }
        });
        LineTokenStream {
            text,
            at: 0,
            token: &mut self.token,
            words: self.words.as_deref(),
        }
    }
}

/// Classes of a byte for the `line` tokenizer (bits).
const ALNUM: u8 = 1;
const HEX: u8 = 2;
const DIGIT: u8 = 4;
const NOT_ASCII: u8 = 8;

/// The class of each byte: ASCII letters and digits are [`ALNUM`] (and
/// [`HEX`], [`DIGIT`]); bytes of non-ASCII characters [`NOT_ASCII`]; other
/// ASCII bytes separate tokens.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = if !byte.is_ascii() {
            NOT_ASCII
        } else if byte.is_ascii_digit() {
            ALNUM | HEX | DIGIT
        } else if byte.is_ascii_hexdigit() {
            ALNUM | HEX
        } else if byte.is_ascii_alphabetic() {
            ALNUM
        } else {
            0
        };
        b += 1;
    }
    table
};

/// The character at byte `at` of `text` and its length, when it is
/// alphanumeric.
fn alphanumeric_at(text: &str, at: usize) -> Option<usize> {
    let b = text.as_bytes()[at];
    if b.is_ascii() {
        return b.is_ascii_alphanumeric().then_some(1);
    }
    let c = text[at..].chars().next()?;
    c.is_alphanumeric().then_some(c.len_utf8())
}

impl TokenStream for LineTokenStream<'_> {
    fn advance(&mut self) -> bool {
        let text = self.text;
        let bytes = text.as_bytes();
        let len = text.len();
        loop {
            // Past the separators: ASCII bytes as they are, other
            // characters decoded.
            let mut start = self.at;
            while start < len {
                let class = BYTE_CLASS[usize::from(bytes[start])];
                if class & ALNUM != 0 {
                    break;
                }
                if class & NOT_ASCII == 0 {
                    start += 1;
                    continue;
                }
                match alphanumeric_at(text, start) {
                    Some(_) => break,
                    // Past a separator (a whole character).
                    None => start += text[start..].chars().next().map_or(1, char::len_utf8),
                }
            }
            if start >= len {
                self.at = len;
                return false;
            }
            // The run of alphanumeric characters, noting on the way what
            // tells a number (ASCII hex digits with a decimal digit).
            let (mut end, mut ascii, mut every, mut some) = (start, true, u8::MAX, 0u8);
            while end < len {
                let class = BYTE_CLASS[usize::from(bytes[end])];
                if class & ALNUM != 0 {
                    every &= class;
                    some |= class;
                    end += 1;
                    continue;
                }
                if class & NOT_ASCII == 0 {
                    break;
                }
                match alphanumeric_at(text, end) {
                    Some(n) => end += n,
                    None => break,
                }
                ascii = false;
            }
            let (hex, digit) = (every & HEX != 0, some & DIGIT != 0);
            self.at = end;
            self.token.position = self.token.position.wrapping_add(1);
            let run = &text[start..end];
            if run.len() >= LONG_TOKEN_BYTES {
                continue;
            }
            // Numbers are cased alike in ASCII, and no other character
            // lowercases to a hex digit or `x`: the test holds before
            // lowercasing. A run with a letter past `f` is a number only
            // as `0x` and hex digits.
            if ascii && digit && (hex || is_number_token(run)) {
                NUMBER_SINK.with_borrow_mut(|sink| {
                    if let Some(sink) = sink {
                        sink.fingerprints.push(fingerprint(run.as_bytes()));
                    }
                });
                continue;
            }
            self.token.offset_from = start;
            self.token.offset_to = end;
            self.token.text.clear();
            if ascii {
                self.token.text.push_str(run);
                self.token.text.make_ascii_lowercase();
            } else {
                // Character by character, like tantivy's LowerCaser.
                self.token.text.extend(run.chars().flat_map(char::to_lowercase));
            }
            // (A block word may come from a non-ASCII run: `\u{212A}`, the
            // Kelvin sign, lowercases to `k`.)
            if let Some(place) = self.words.and_then(|words| words.place(&self.token.text)) {
                NUMBER_SINK.with_borrow_mut(|sink| {
                    if let Some(sink) = sink {
                        sink.words |= 1 << place;
                    }
                });
                continue;
            }
            return true;
        }
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

thread_local! {
    /// Where the `line` tokenizer leaves the fingerprints of the number
    /// tokens it skips, while [`write_index`] writes a split on this
    /// thread: the number index is built from the tokenizer's own pass
    /// instead of a second scan of every line (a twentieth of a commit).
    static NUMBER_SINK: RefCell<Option<NumberSink>> = const { RefCell::new(None) };
}

#[derive(Default)]
struct NumberSink {
    /// Lines tokenized since the sink was last drained.
    lines: u32,
    fingerprints: Vec<u32>,
    /// The block words of the line.
    words: WordSet,
}

/// Installs an empty [`NUMBER_SINK`] on this thread until dropped (then
/// puts back what was there).
struct NumberSinkGuard {
    previous: Option<NumberSink>,
}

impl NumberSinkGuard {
    fn install() -> NumberSinkGuard {
        NumberSinkGuard {
            previous: NUMBER_SINK.replace(Some(NumberSink::default())),
        }
    }

    /// Hands the number fingerprints and the block words of the one line
    /// tokenized since the last call to `add`; an error when tantivy
    /// tokenized some other number of lines on this thread (say, on a
    /// thread of its own).
    fn drain(&self, add: impl FnOnce(&[u32], WordSet)) -> Result<(), IndexerError> {
        NUMBER_SINK.with_borrow_mut(|sink| {
            let Some(sink) = sink.as_mut() else {
                return Err(IndexerError::Internal("the number sink of this thread was removed".into()));
            };
            let lines = std::mem::take(&mut sink.lines);
            if lines != 1 {
                return Err(IndexerError::Internal(format!(
                    "the line tokenizer ran {lines} times for one document on the indexing thread"
                )));
            }
            add(&sink.fingerprints, std::mem::take(&mut sink.words));
            sink.fingerprints.clear();
            Ok(())
        })
    }
}

impl Drop for NumberSinkGuard {
    fn drop(&mut self) {
        NUMBER_SINK.set(self.previous.take());
    }
}

/// Registers the `line` tokenizer on an index (needed to write and to
/// parse queries).
pub fn register_tokenizers(index: &Index) {
    index.tokenizers().register(LINE_TOKENIZER, line_analyzer());
}

/// The terms the `line` tokenizer makes of `text`: alphanumeric runs
/// shorter than [`LONG_TOKEN_BYTES`], lowercased. Queries use it to check
/// phrases on lines (the index keeps no positions).
pub fn line_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|run| !run.is_empty() && run.len() < LONG_TOKEN_BYTES)
        // Character by character, like tantivy's LowerCaser (no
        // final-sigma rule).
        .map(|run| run.chars().flat_map(char::to_lowercase).collect())
}

/// True when `line` has an alphanumeric run the tokenizer leaves out.
pub fn has_long_token(line: &str) -> bool {
    if line.len() < LONG_TOKEN_BYTES {
        return false;
    }
    let mut run = 0;
    for c in line.chars() {
        if c.is_alphanumeric() {
            run += c.len_utf8();
            if run >= LONG_TOKEN_BYTES {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// An untokenized, unscored field (like `STRING`, without fieldnorms).
fn keyword(fast: bool) -> TextOptions {
    let options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    if fast {
        options.set_fast("raw")
    } else {
        options
    }
}

/// Block size of the (empty) document store.
const STORE_BLOCK_BYTES: usize = 16 * 1024;

/// The split index schema and its fields.
pub fn log_schema() -> (Schema, LogFields) {
    let mut builder = Schema::builder();
    let fields = LogFields {
        line: builder.add_text_field(
            "line",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(LINE_TOKENIZER)
                    .set_index_option(IndexRecordOption::Basic)
                    // Results are ordered by time, never by BM25: no
                    // per-document length norms (a byte per doc and field).
                    .set_fieldnorms(false),
            ),
        ),
        flags: builder.add_text_field("flags", keyword(false)),
        stream: builder.add_text_field("stream", keyword(true)),
        level: builder.add_text_field("level", keyword(true)),
        ml_event: builder.add_text_field("ml_event", keyword(true)),
        field: builder.add_text_field("field", keyword(false)),
        ts: builder.add_i64_field("ts", FAST),
        bytes: builder.add_u64_field("bytes", FAST),
    };
    (builder.build(), fields)
}

/// Finds the fields of an opened index.
pub fn fields_of(schema: &Schema) -> Result<LogFields, IndexerError> {
    let get = |name: &str| {
        schema
            .get_field(name)
            .map_err(|e| IndexerError::Corrupt(format!("split index field {name}: {e}")))
    };
    Ok(LogFields {
        line: get("line")?,
        flags: get("flags")?,
        stream: get("stream")?,
        level: get("level")?,
        ml_event: get("ml_event")?,
        field: get("field")?,
        ts: get("ts")?,
        bytes: get("bytes")?,
    })
}

fn tantivy_err(e: tantivy::TantivyError) -> IndexerError {
    IndexerError::Internal(format!("tantivy: {e}"))
}

/// Writes the index of `view`'s rows (already in final row order) into the
/// empty directory `path`.
pub fn write_index(path: &Path, view: &LogBatchView<'_>) -> Result<(), IndexerError> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|source| IndexerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    std::fs::create_dir_all(path).map_err(|source| IndexerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (schema, f) = log_schema();
    let directory = MmapDirectory::open(path).map_err(|e| IndexerError::Internal(format!("tantivy directory: {e}")))?;
    let words = block_words(view);
    let mut numbers = NumberIndexBuilder::with_words(words.clone())?;
    let tokenizers = tantivy::tokenizer::TokenizerManager::default();
    tokenizers.register(LINE_TOKENIZER, TextAnalyzer::from(LineTokenizer::with_words(&words)));
    let settings = IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor::default()),
        ..IndexSettings::default()
    };
    let mut writer = Index::builder()
        .schema(schema)
        .settings(settings)
        .tokenizers(tokenizers)
        .single_segment_index_writer::<TantivyDocument>(directory, 64 * 1024 * 1024)
        .map_err(tantivy_err)?;
    // The single-segment writer tokenizes on this thread.
    let sink = NumberSinkGuard::install();
    for row in 0..view.len() {
        let mut doc = TantivyDocument::default();
        let line = view.line.value(row);
        doc.add_text(f.line, line);
        if has_long_token(line) {
            doc.add_text(f.flags, LONG_TOKEN_FLAG);
        }
        doc.add_text(f.level, view.level.value(row));
        if view.ml_event.is_valid(row) {
            doc.add_text(f.ml_event, view.ml_event.value(row));
        }
        if view.fields.is_valid(row) {
            for (name, value) in view.fields(row).iter() {
                doc.add_text(f.field, format!("{name}={value}"));
            }
        }
        doc.add_i64(f.ts, view.ts.value(row));
        doc.add_u64(f.bytes, view.line.value(row).len() as u64);
        writer.add_document(doc).map_err(tantivy_err)?;
        sink.drain(|fingerprints, words| numbers.add_row(row as u32, fingerprints, words))?;
    }
    drop(sink);
    let index = writer.finalize().map_err(tantivy_err)?;
    empty_doc_store(&index)?;
    // After tantivy is done with the directory (its garbage collection
    // removes files it does not know while it writes).
    numbers.write_into(path)
}

/// Replaces the segment's document store with an empty one. No field is
/// stored, yet tantivy writes a store entry per document (a length and a
/// u32 offset, about 2 bytes a row after zstd: a tenth of the index).
/// Nothing in weft reads documents back from a split index (rows come
/// from Parquet and merges re-index Parquet); tantivy opens the store
/// with each searcher, which an empty store satisfies.
fn empty_doc_store(index: &Index) -> Result<(), IndexerError> {
    let metas = index.searchable_segment_metas().map_err(tantivy_err)?;
    let [meta] = metas.as_slice() else {
        return Err(IndexerError::Internal(format!("split index has {} segments, not one", metas.len())));
    };
    let path = meta.relative_path(SegmentComponent::Store);
    let err = |e: &dyn std::fmt::Display| IndexerError::Internal(format!("split index store {}: {e}", path.display()));
    index.directory().delete(&path).map_err(|e| err(&e))?;
    let write = index
        .segment(meta.clone())
        .open_write(SegmentComponent::Store)
        .map_err(|e| err(&e))?;
    StoreWriter::new(write, index.settings().docstore_compression, STORE_BLOCK_BYTES, false)
        .and_then(StoreWriter::close)
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Opens a split index read-only.
pub fn open_index(path: &Path) -> Result<Index, IndexerError> {
    let index = Index::open_in_dir(path).map_err(|e| IndexerError::Corrupt(format!("split index {}: {e}", path.display())))?;
    register_tokenizers(&index);
    Ok(index)
}

#[cfg(test)]
mod tests {
    use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer};

    use super::*;

    /// (text, from, to) of every token `analyzer` makes of `line`.
    fn tokens(analyzer: &mut TextAnalyzer, line: &str) -> Vec<(String, usize, usize)> {
        let mut stream = analyzer.token_stream(line);
        let mut out = Vec::new();
        while let Some(token) = stream.next() {
            out.push((token.text.clone(), token.offset_from, token.offset_to));
        }
        out
    }

    #[test]
    fn block_words_go_to_the_sink_as_bits_and_other_words_to_tantivy() {
        let words: Vec<String> = ["info", "kelvin", "step"].map(String::from).to_vec();
        let mut line = TextAnalyzer::from(LineTokenizer::with_words(&words));
        let sink = NumberSinkGuard::install();
        for (text, kept, bits) in [
            ("INFO step 12 loss", vec!["loss"], 0b101),
            // The Kelvin sign lowercases to an ASCII `k`.
            ("\u{212A}elvin probe", vec!["probe"], 0b010),
            ("informed steps", vec!["informed", "steps"], 0b000),
            ("info info Info", vec![], 0b001),
        ] {
            let got: Vec<String> = tokens(&mut line, text).into_iter().map(|(t, _, _)| t).collect();
            assert_eq!(got, kept, "{text}");
            sink.drain(|numbers, set| {
                assert_eq!(set, bits, "{text}");
                assert_eq!(numbers.len(), usize::from(text.contains("12")));
            })
            .unwrap();
        }
    }

    #[test]
    fn block_words_are_the_words_of_one_sampled_line_in_32() {
        let rows = 20_000usize;
        let mut builder = weft_model::LogBatchBuilder::default();
        for row in 0..rows {
            let mut text = format!("step {row} of {} Grüße", rows);
            if row % 20 == 0 {
                text.push_str(" checkpoint");
            }
            if row % 50 == 0 {
                text.push_str(" rare");
            }
            let record = weft_model::LogRecord {
                ts: row as i64,
                line: text,
                ..Default::default()
            };
            builder.append(&record.as_ref());
        }
        let batch = builder.finish(false);
        let view = LogBatchView::new(&batch).unwrap();
        // One line in 20 makes it, one in 50 does not; numbers and
        // non-ASCII words never do.
        assert_eq!(block_words(&view), ["checkpoint", "of", "step"]);
        let few = batch.slice(0, BLOCK_WORDS_MIN_ROWS - 1);
        assert!(block_words(&LogBatchView::new(&few).unwrap()).is_empty());
    }

    #[test]
    fn the_line_tokenizer_cuts_like_tantivys_filters_and_drops_numbers() {
        // The chain the one-pass tokenizer replaces, numbers dropped after it.
        let mut chain = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(LONG_TOKEN_BYTES))
            .filter(LowerCaser)
            .build();
        let mut line = line_analyzer();
        let mut lines: Vec<String> = [
            "",
            "  ,;: ",
            "GPU 3 Xid 79 at 0x7F a3f9 cafe k9d3w DEADBEEF 0X1f 0x",
            "step=120 loss=0.4312 lr=3.0e-4 tokens/s=51234",
            "Grüße ÄÖÜ straße ΣΑΣ 日本語テキスト 東京2024 ١٢٣ abc١٢٣",
            "\u{212A}elvin İstanbul ǅemal ﬃ e\u{301}te 🙂smile🙂",
            "blk_-1608999687919862906 10.250.19.102:50010 /user/root/rand",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Runs at the long-token limit, in ASCII and in two-byte characters.
        for n in [LONG_TOKEN_BYTES - 2, LONG_TOKEN_BYTES - 1, LONG_TOKEN_BYTES, LONG_TOKEN_BYTES + 1] {
            lines.push(format!("a {} b", "x".repeat(n)));
            lines.push(format!("{} tail", "é".repeat(n / 2)));
            lines.push(format!("{}Z", "7".repeat(n)));
        }
        // Pseudo-random mixes of all of the above.
        let pieces = [
            "a", "F", "e", "Z", "0", "9", "x", "0x", "0X", "é", "Σ", "\u{212A}", "İ", "日", "١", " ", "-", "_", ".", "🙂", "\u{301}",
        ];
        let mut state = 1u64;
        for _ in 0..3000 {
            let mut l = String::new();
            for _ in 0..(state % 40) {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                l.push_str(pieces[(state >> 33) as usize % pieces.len()]);
            }
            lines.push(l);
        }
        let sink = NumberSinkGuard::install();
        for l in &lines {
            let expected: Vec<_> = tokens(&mut chain, l).into_iter().filter(|(t, _, _)| !is_number_token(t)).collect();
            assert_eq!(tokens(&mut line, l), expected, "{l:?}");
            // The numbers it skipped are those the number index takes.
            let mut numbers = Vec::new();
            super::super::numbers::for_each_number(l, |_, fingerprint| numbers.push(fingerprint));
            sink.drain(|skipped, words| {
                assert_eq!(skipped, numbers, "{l:?}");
                assert_eq!(words, 0);
            })
            .unwrap();
            // And the query side's reading of the same line.
            let spec: Vec<String> = line_tokens(l).filter(|t| !is_number_token(t)).collect();
            assert_eq!(expected.into_iter().map(|(t, _, _)| t).collect::<Vec<_>>(), spec, "{l:?}");
        }
        // Two lines between drains: an error, not numbers given to the
        // wrong row.
        tokens(&mut line, "a 1");
        tokens(&mut line, "b 2");
        assert!(sink.drain(|_, _| ()).is_err());
        drop(sink);
        assert!(NUMBER_SINK.with_borrow(Option::is_none));
        assert_eq!(
            tokens(&mut line, "GPU 3 Xid 79 at 0x7F a3f9 cafe k9d3w")
                .into_iter()
                .map(|(t, _, _)| t)
                .collect::<Vec<_>>(),
            ["gpu", "xid", "at", "cafe", "k9d3w"]
        );
    }
}
