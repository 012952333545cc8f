//! Reading splits. The store follows the indexer's catalog file (reloading
//! it when it changes, so a standalone process and a separate `weft query`
//! see commits the same way) and keeps opened splits: the tantivy index
//! (doc id = Parquet row) and the Parquet footer with its page index.
//!
//! Queries resolve a stream selector to the split's matching streams, ask
//! tantivy for the rows (stream, time range, and a token prefilter derived
//! from `|=` filters: words from tantivy's terms, numbers and the split's
//! block words as the row blocks the split's number index names), then
//! read exactly those rows from Parquet, where every filter is applied
//! exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::arrow::ProjectionMask;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::StrColumn;
use tantivy::directory::MmapDirectory;
use tantivy::query::Scorer;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::Directory;
use tantivy::{DocId, DocSet, IndexReader, ReloadPolicy, Score, SegmentReader, Term, TERMINATED};
use weft_indexer::catalog::{Catalog, CatalogState, SplitKind, SplitMeta};
use weft_indexer::split::index::{fields_of, open_index, LogFields, LONG_TOKEN_BYTES, LONG_TOKEN_FLAG};
use weft_indexer::split::numbers::{self, is_number_token, may_be_in_number, NumberIndex};
use weft_model::batch::col;
use weft_model::LabelSet;

use crate::line_pages::{LinePages, PageError};
use crate::logql::ast::{LineFilter, LineFilterOp, Matcher};
use crate::row_ranges::RowRangesQuery;
use crate::QueryError;

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

struct Loaded {
    stamp: Option<FileStamp>,
    catalog: Arc<CatalogState>,
    open: HashMap<String, Arc<OpenSplit>>,
}

/// The splits of a data directory, as its catalog lists them.
pub struct SplitStore {
    data_dir: PathBuf,
    catalog_path: PathBuf,
    loaded: RwLock<Loaded>,
}

fn stamp_of(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    })
}

impl SplitStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            catalog_path: Catalog::path_in(data_dir),
            loaded: RwLock::new(Loaded {
                stamp: None,
                catalog: Arc::new(CatalogState::default()),
                open: HashMap::new(),
            }),
        }
    }

    /// Reloads the catalog if its file changed. Cheap when it did not.
    pub fn refresh(&self) -> Result<(), QueryError> {
        let stamp = stamp_of(&self.catalog_path);
        if self.loaded.read().expect("store lock").stamp == stamp && stamp.is_some() {
            return Ok(());
        }
        let catalog = Catalog::read(&self.catalog_path).map_err(|e| QueryError::Storage(e.to_string()))?;
        let mut loaded = self.loaded.write().expect("store lock");
        let live: std::collections::HashSet<&str> = catalog.splits.iter().map(|s| s.id.as_str()).collect();
        loaded.open.retain(|id, _| live.contains(id.as_str()));
        loaded.catalog = Arc::new(catalog);
        loaded.stamp = stamp;
        Ok(())
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<CatalogState> {
        self.loaded.read().expect("store lock").catalog.clone()
    }

    /// Opened log splits of `tenant` whose event time overlaps `[start, end)`.
    pub fn splits(&self, tenant: &str, start: i64, end: i64) -> Result<Vec<Arc<OpenSplit>>, QueryError> {
        self.refresh()?;
        let catalog = self.catalog();
        let mut out = Vec::new();
        for meta in catalog
            .splits
            .iter()
            .filter(|s| s.kind == SplitKind::Logs && s.tenant == tenant && s.max_ts >= start && s.min_ts < end)
        {
            if let Some(open) = self.loaded.read().expect("store lock").open.get(&meta.id) {
                out.push(open.clone());
                continue;
            }
            let open = Arc::new(OpenSplit::open(&self.data_dir, meta)?);
            self.loaded.write().expect("store lock").open.insert(meta.id.clone(), open.clone());
            out.push(open);
        }
        Ok(out)
    }
}

/// One split, opened for reading.
pub struct OpenSplit {
    pub meta: SplitMeta,
    pub streams: Vec<Arc<LabelSet>>,
    reader: IndexReader,
    pub fields: LogFields,
    parquet_path: PathBuf,
    parquet_meta: ArrowReaderMetadata,
    /// Where the `line` column's pages are, when they can be read without
    /// parquet-rs.
    line_pages: Option<LinePages>,
    /// Set once a page of this split turned out to be laid out otherwise:
    /// its lines are read through parquet-rs from then on.
    pages_unsupported: AtomicBool,
    /// The fast-field columns (opened on first use: opening `ts` reads its
    /// block headers).
    columns: OnceLock<FastColumns>,
    /// The fast fields' dictionaries, by ordinal (read on first use).
    words: OnceLock<FastWords>,
    /// Where number tokens are (splits written before it hold them in
    /// tantivy).
    numbers: Option<NumberIndex>,
}

/// What the streams (see [`OpenSplit::stream_of`]) and the ordinals of
/// the `level` and `ml_event` fast fields stand for.
struct FastWords {
    stream_texts: Vec<String>,
    streams: Vec<Arc<LabelSet>>,
    levels: Vec<String>,
    events: Vec<String>,
}

/// The fast-field columns row reads take: time and the ordinals of
/// `level`, `ml_event` and, in splits written before `stream_starts`,
/// `stream` (read through [`FastWords`]).
struct FastColumns {
    ts: tantivy::columnar::Column<i64>,
    stream: Option<StrColumn>,
    level: Option<StrColumn>,
    event: Option<StrColumn>,
}

/// The ordinal of `doc` in a dictionary column, if it has one.
fn ord(column: &Option<StrColumn>, doc: DocId) -> Option<usize> {
    column.as_ref().and_then(|c| c.term_ords(doc).next()).map(|o| o as usize)
}

fn storage_err(split: &SplitMeta, e: impl std::fmt::Display) -> QueryError {
    QueryError::Storage(format!("split {}: {e}", split.id))
}

/// The text column `name` of a batch read from `split`.
fn string_column<'a>(split: &SplitMeta, batch: &'a RecordBatch, name: &str) -> Result<&'a arrow_array::StringArray, QueryError> {
    batch
        .column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<arrow_array::StringArray>())
        .ok_or_else(|| storage_err(split, format!("column {name} missing or not text")))
}

/// Collects the doc ids of all matches (one segment per split index).
struct DocIds;
struct DocIdsSegment(Vec<DocId>);

impl Collector for DocIds {
    type Fruit = Vec<DocId>;
    type Child = DocIdsSegment;

    fn for_segment(&self, _ord: u32, _segment: &SegmentReader) -> tantivy::Result<DocIdsSegment> {
        Ok(DocIdsSegment(Vec::new()))
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<DocId>>) -> tantivy::Result<Vec<DocId>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for DocIdsSegment {
    type Fruit = Vec<DocId>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        self.0.push(doc);
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        self.0.extend_from_slice(docs);
    }

    fn harvest(self) -> Vec<DocId> {
        self.0
    }
}

/// What the fast path of metric queries reads per row, from tantivy alone.
pub struct FastRow<'a> {
    pub ts: i64,
    pub bytes: u64,
    /// Numbers of (stream, level, ml_event) within the split (the stream's
    /// index or ordinal, the others' dictionary ordinals): equal keys,
    /// equal labels, with no string work per row.
    pub key: (usize, usize, usize),
    pub stream: &'a str,
    pub level: &'a str,
    pub ml_event: &'a str,
}

/// The `line` tokenizer's terms of a filter string, with whether each
/// could be cut off at the left / right edge of the filter. Runs the
/// tokenizer leaves out (too long) give no term.
fn filter_tokens(text: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let mut start = None;
    let push = |out: &mut Vec<(String, bool, bool)>, from: usize, to: usize| {
        if to - from < LONG_TOKEN_BYTES {
            out.push((
                text[from..to].chars().flat_map(char::to_lowercase).collect(),
                from == 0,
                to == text.len(),
            ));
        }
    };
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
        } else if let Some(from) = start.take() {
            push(&mut out, from, i);
        }
    }
    if let Some(from) = start {
        push(&mut out, from, text.len());
    }
    out
}

/// Windows at the ends of streams widened in one [`OpenSplit::top_rows`]
/// before it visits every match instead.
const MAX_WIDENED: usize = 6;

impl OpenSplit {
    fn open(data_dir: &Path, meta: &SplitMeta) -> Result<Self, QueryError> {
        let index = open_index(&data_dir.join(&meta.index)).map_err(|e| storage_err(meta, e))?;
        let fields = fields_of(&index.schema()).map_err(|e| storage_err(meta, e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| storage_err(meta, e))?;
        // Read beside tantivy's directory (which expects its own footer on
        // every file it opens).
        let directory = MmapDirectory::open(data_dir.join(&meta.index)).map_err(|e| storage_err(meta, e))?;
        // The catalog entry says whether the split has a number index; a
        // file written by the first development commits (without the
        // entry) is read all the same.
        let numbers = match directory.open_read(Path::new(numbers::FILE_NAME)) {
            Ok(file) => {
                let bytes = file.read_bytes().map_err(|e| storage_err(meta, e))?;
                Some(NumberIndex::open(bytes, meta.rows).map_err(|e| storage_err(meta, e))?)
            }
            Err(tantivy::directory::error::OpenReadError::FileDoesNotExist(_)) if meta.number_index == 0 => None,
            Err(e) => return Err(storage_err(meta, e)),
        };
        // Where streams start: row 0 first, increasing, inside the split.
        let starts = &meta.stream_starts;
        if !starts.is_empty()
            && (starts.len() != meta.streams.len()
                || starts[0] != 0
                || starts.windows(2).any(|w| w[0] >= w[1])
                || starts.last().is_some_and(|&last| u64::from(last) >= meta.rows))
        {
            return Err(storage_err(
                meta,
                format!(
                    "its catalog entry's stream starts ({} of them) do not divide its {} rows among its {} streams",
                    starts.len(),
                    meta.rows,
                    meta.streams.len()
                ),
            ));
        }
        // Doc ids are Parquet rows (and number blocks are ranges of them)
        // only in the one segment the indexer writes.
        let searcher = reader.searcher();
        if searcher.segment_readers().len() > 1 {
            return Err(storage_err(meta, "a split's index must have a single segment"));
        }
        if searcher.num_docs() != meta.rows {
            return Err(storage_err(
                meta,
                format!("its index holds {} rows, its catalog entry says {}", searcher.num_docs(), meta.rows),
            ));
        }
        // Without stream starts, each row's stream must be in the index (a
        // newer split's entry rewritten by an older process has lost them:
        // refused, not read with every row in no stream).
        if starts.is_empty() && meta.rows > 0 {
            let has_streams = searcher
                .segment_readers()
                .first()
                .map(|segment| segment.fast_fields().str("stream"))
                .transpose()
                .map_err(|e| storage_err(meta, e))?
                .flatten()
                .is_some_and(|column| column.num_terms() > 0);
            if !has_streams {
                return Err(storage_err(
                    meta,
                    "its catalog entry has no stream starts and its index no stream per row (an entry of a newer split rewritten by an older process?)",
                ));
            }
        }
        let parquet_path = data_dir.join(&meta.parquet);
        let file = File::open(&parquet_path).map_err(|e| storage_err(meta, e))?;
        let parquet_meta = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        )
        .map_err(|e| storage_err(meta, e))?;
        let line_pages = LinePages::new(parquet_meta.metadata(), col::LINE);
        let streams = meta
            .streams
            .iter()
            .map(|s| Arc::new(LabelSet::parse(s).unwrap_or_default()))
            .collect();
        Ok(Self {
            meta: meta.clone(),
            streams,
            reader,
            fields,
            parquet_path,
            parquet_meta,
            line_pages,
            pages_unsupported: AtomicBool::new(false),
            columns: OnceLock::new(),
            words: OnceLock::new(),
            numbers,
        })
    }

    /// Rows `[start, end)` of stream `i` (index into `streams`), in a split
    /// that records where its streams start.
    fn stream_rows(&self, i: usize) -> (u32, u32) {
        let starts = &self.meta.stream_starts;
        (starts[i], starts.get(i + 1).copied().unwrap_or(self.meta.rows as u32))
    }

    /// The stream of row `doc`: an index into [`FastWords::streams`] (the
    /// split's streams in order, or the ordinals of the `stream` fast
    /// field in splits written before `stream_starts`).
    fn stream_of(&self, columns: &FastColumns, doc: DocId) -> Option<usize> {
        if self.meta.stream_starts.is_empty() {
            ord(&columns.stream, doc)
        } else {
            // The first start is row 0 (checked at open).
            Some(self.meta.stream_starts.partition_point(|&start| start <= doc) - 1)
        }
    }

    /// Whether lines are read straight from their Parquet pages (the
    /// layout the indexer writes) rather than through parquet-rs.
    pub fn reads_lines_from_pages(&self) -> bool {
        self.line_pages.is_some()
    }

    /// Reads lines through parquet-rs from now on, as for a layout the
    /// page reader does not support (for tests of that path).
    #[cfg(test)]
    pub fn read_lines_through_parquet_rs(&self) {
        self.pages_unsupported.store(true, Ordering::Relaxed);
    }

    /// Indices of the split's streams that satisfy every matcher.
    pub fn matching_streams(&self, matchers: &[Matcher]) -> Vec<usize> {
        self.streams
            .iter()
            .enumerate()
            .filter(|(_, labels)| matchers.iter().all(|m| m.matches(labels.get(&m.name).unwrap_or(""))))
            .map(|(i, _)| i)
            .collect()
    }

    /// The tantivy query for rows of `streams` in `[start, end)` that may
    /// pass `filters` (a superset: filters are applied exactly later).
    pub fn query(&self, streams: &[usize], start: i64, end: i64, filters: &[&LineFilter]) -> Box<dyn Query> {
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if streams.len() < self.streams.len() {
            if self.meta.stream_starts.is_empty() {
                let terms = streams.iter().map(|i| Term::from_field_text(f.stream, &self.meta.streams[*i]));
                clauses.push((Occur::Must, Box::new(TermSetQuery::new(terms))));
            } else {
                // Streams are runs of rows.
                let ranges = streams.iter().map(|&i| self.stream_rows(i)).collect();
                clauses.push((Occur::Must, Box::new(RowRangesQuery::new(ranges))));
            }
        }
        if start > self.meta.min_ts || end <= self.meta.max_ts {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_i64(f.ts, start)),
                    Bound::Excluded(Term::from_field_i64(f.ts, end)),
                )),
            ));
        }
        for filter in filters {
            if filter.op != LineFilterOp::Contains || filter.values.len() != 1 {
                continue;
            }
            let mut tokens: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for (token, left_open, right_open) in filter_tokens(&filter.values[0]) {
                // A piece cut off at an edge that may belong to a number
                // token (in the number index, whole tokens only): no
                // constraint. Any other piece is part of a tantivy term or
                // of a block word.
                if self.numbers.is_some() && (left_open || right_open) && may_be_in_number(&token) {
                    continue;
                }
                let query: Box<dyn Query> = match (left_open, right_open) {
                    // A whole token, or one cut off on the right: a word or
                    // number, exactly or as a prefix.
                    (false, right_open) => match self.word(&token, right_open) {
                        (Some(query), _) => query,
                        (None, _) => continue,
                    },
                    (true, false) => {
                        let terms =
                            RegexQuery::from_pattern(&format!(".*{}", regex::escape(&token)), f.line).expect("escaped pattern is valid");
                        self.or_block_words(Box::new(terms), |word| word.ends_with(token.as_str()))
                    }
                    (true, true) => {
                        let terms =
                            RegexQuery::from_pattern(&format!(".*{}.*", regex::escape(&token)), f.line).expect("escaped pattern is valid");
                        self.or_block_words(Box::new(terms), |word| word.contains(token.as_str()))
                    }
                };
                tokens.push((Occur::Must, query));
            }
            if tokens.is_empty() {
                continue;
            }
            // Lines with runs too long to be terms are always candidates.
            let long = TermQuery::new(Term::from_field_text(f.flags, LONG_TOKEN_FLAG), IndexRecordOption::Basic);
            let either: Vec<(Occur, Box<dyn Query>)> = vec![
                (Occur::Should, Box::new(BooleanQuery::new(tokens))),
                (Occur::Should, Box::new(long)),
            ];
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(either))));
        }
        if clauses.is_empty() {
            return Box::new(tantivy::query::AllQuery);
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// Rows whose line may hold the token `token` (lowercased), or a token
    /// starting with it when `prefix`; `None`: any row may. The flag is
    /// true when the rows are exactly those (tantivy's terms), false when
    /// they are a superset to check on the lines (blocks of the number
    /// index: numbers and block words).
    pub fn word(&self, token: &str, prefix: bool) -> (Option<Box<dyn Query>>, bool) {
        let line = self.fields.line;
        let query: Option<Box<dyn Query>> = match &self.numbers {
            // A prefix of hex digits may begin a number token.
            Some(_) if prefix && may_be_in_number(token) => None,
            Some(numbers) if !prefix && (is_number_token(token) || numbers.holds_word(token)) => numbers
                .row_ranges(token)
                .map(|ranges| Box::new(RowRangesQuery::new(ranges)) as Box<dyn Query>),
            _ if prefix => {
                let terms = RegexQuery::from_pattern(&format!("{}.*", regex::escape(token)), line).expect("escaped pattern is valid");
                Some(self.or_block_words(Box::new(terms), |word| word.starts_with(token)))
            }
            _ => Some(Box::new(TermQuery::new(
                Term::from_field_text(line, token),
                IndexRecordOption::Basic,
            ))),
        };
        (query, self.word_is_exact(token, prefix))
    }

    /// True when [`OpenSplit::word`] gives exactly the rows holding
    /// `token` (or a token it begins, when `prefix`), with no check of
    /// their lines needed.
    pub fn word_is_exact(&self, token: &str, prefix: bool) -> bool {
        match &self.numbers {
            None => true,
            Some(numbers) if prefix => !may_be_in_number(token) && !numbers.words().iter().any(|w| w.starts_with(token)),
            Some(numbers) => !is_number_token(token) && !numbers.holds_word(token),
        }
    }

    /// `terms` (a query over tantivy's terms), or the blocks of the
    /// split's block words that `matches` accepts.
    fn or_block_words(&self, terms: Box<dyn Query>, matches: impl Fn(&str) -> bool) -> Box<dyn Query> {
        let Some(numbers) = &self.numbers else {
            return terms;
        };
        let mut either: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for word in numbers.words().iter().filter(|w| matches(w)) {
            either.push(match numbers.row_ranges(word) {
                Some(ranges) => (Occur::Should, Box::new(RowRangesQuery::new(ranges))),
                // A damaged file: any row may hold it.
                None => (Occur::Should, Box::new(tantivy::query::AllQuery)),
            });
        }
        if either.is_empty() {
            return terms;
        }
        either.push((Occur::Should, terms));
        Box::new(BooleanQuery::new(either))
    }

    /// `base`, narrowed to rows tagged with an `ml_event`.
    pub fn with_ml_event(&self, base: Box<dyn Query>) -> Box<dyn Query> {
        let tagged = RegexQuery::from_pattern(".+", self.fields.ml_event).expect("constant pattern is valid");
        Box::new(BooleanQuery::new(vec![(Occur::Must, base), (Occur::Must, Box::new(tagged))]))
    }

    /// Whether any row matches `query`.
    pub fn matches_any(&self, query: &dyn Query) -> Result<bool, QueryError> {
        Ok(self.scorer(query)?.is_some_and(|scorer| scorer.doc() != TERMINATED))
    }

    /// The rows matching `query` in the split's one segment (none when
    /// the index has no segment), unscored.
    fn scorer(&self, query: &dyn Query) -> Result<Option<Box<dyn Scorer>>, QueryError> {
        let searcher = self.reader.searcher();
        let Some(segment) = searcher.segment_readers().first() else {
            return Ok(None);
        };
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .map_err(|e| storage_err(&self.meta, e))?;
        weight.scorer(segment, 1.0).map(Some).map_err(|e| storage_err(&self.meta, e))
    }

    /// Up to `k` matching rows, newest first (`descending`) or oldest first.
    /// Rows of equal time come in row order either way, so that a cursor
    /// paging through them sees the same order on every request.
    pub fn top_rows(&self, query: &dyn Query, k: usize, descending: bool) -> Result<Vec<(i64, u32)>, QueryError> {
        let Some(scorer) = self.scorer(query)? else {
            return Ok(Vec::new());
        };
        // A rare term misses most splits: with no matching row, the time
        // column is not touched.
        let doc = scorer.doc();
        if doc == TERMINATED {
            return Ok(Vec::new());
        }
        let (columns, _) = self.fast_columns()?;
        // The best `k` as a min-heap on (time, newer first or older first;
        // then the lower row): the worst kept one is on top.
        let k = k.max(1);
        let mut best: BinaryHeap<Reverse<(i64, u32)>> = BinaryHeap::with_capacity(k.min(4096) + 1);
        let offer = |best: &mut BinaryHeap<Reverse<(i64, u32)>>, doc: DocId| {
            let ts = columns.ts.first(doc).unwrap_or(0);
            // `!ts` reverses the order of i64 without overflow.
            let key = (if descending { ts } else { !ts }, u32::MAX - doc);
            if best.len() < k {
                best.push(Reverse(key));
            } else if best.peek().is_some_and(|worst| key > worst.0) {
                best.pop();
                best.push(Reverse(key));
            }
        };
        // Every match, where rows are not in runs of streams; else the
        // ends of each stream's run, or every match again where times tie
        // across the edge of a stream's newest `k`.
        let mut every = Some(scorer);
        if !self.meta.stream_starts.is_empty() {
            let scorer = every.take().expect("the scorer is there");
            if !self.stream_ends_offer(query, scorer, k, descending, &columns.ts, &mut |doc| offer(&mut best, doc))? {
                best.clear();
                every = self.scorer(query)?;
            }
        }
        if let Some(mut scorer) = every {
            let mut doc = scorer.doc();
            while doc != TERMINATED {
                offer(&mut best, doc);
                doc = scorer.advance();
            }
        }
        let mut rows: Vec<(i64, u32)> = best
            .into_iter()
            .map(|Reverse((ts, row))| (if descending { ts } else { !ts }, u32::MAX - row))
            .collect();
        rows.sort_unstable_by(|a, b| if descending { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) }.then(a.1.cmp(&b.1)));
        Ok(rows)
    }

    /// Offers `offer` the first `k` matches of each stream (the oldest:
    /// a stream's rows are in time order), or with `descending` its last
    /// `k` (the newest), instead of every match: the rest of a stream is
    /// skipped without reading times. When `scorer` (of `query`) has many
    /// matches, the newest are looked for in a window at the end of each
    /// stream, widened (with a new scorer) while it holds fewer than `k`;
    /// a rare word's few matches are all visited. False when a stream's
    /// newest `k` begin at a time that rows before them may share (ties go
    /// to the lower row, which this did not keep); nothing it offered may
    /// then be used.
    fn stream_ends_offer(
        &self,
        query: &dyn Query,
        mut scorer: Box<dyn Scorer>,
        k: usize,
        descending: bool,
        ts: &tantivy::columnar::Column<i64>,
        offer: &mut impl FnMut(DocId),
    ) -> Result<bool, QueryError> {
        let starts = &self.meta.stream_starts;
        let rows = u32::try_from(self.meta.rows).unwrap_or(u32::MAX);
        let mut windowed = descending && scorer.size_hint() as usize > k.saturating_mul(starts.len()).saturating_mul(4);
        // Windows widened so far: each builds the scorer again (a regex
        // over the term dictionary, say); past a few, every match is
        // visited (a time range that ends before the split leaves the ends
        // of its streams empty).
        let mut widened = 0;
        let mut doc = scorer.doc();
        let mut kept: std::collections::VecDeque<DocId> = std::collections::VecDeque::with_capacity(k.min(4096));
        while doc != TERMINATED {
            // The stream holding `doc`, and its first match.
            let stream = starts.partition_point(|&start| start <= doc).saturating_sub(1);
            let (start, end) = (starts[stream], starts.get(stream + 1).copied().unwrap_or(rows));
            let first = doc;
            let mut window = k;
            // The first row looked at, and the last match pushed out of
            // `kept`.
            let (mut from, mut dropped);
            loop {
                from = if windowed {
                    end.saturating_sub(u32::try_from(window).unwrap_or(u32::MAX)).max(first)
                } else {
                    first
                };
                if doc < from {
                    doc = scorer.seek(from);
                }
                kept.clear();
                dropped = None;
                while doc != TERMINATED && doc < end {
                    if kept.len() == k {
                        if !descending {
                            break;
                        }
                        dropped = kept.pop_front();
                    }
                    kept.push_back(doc);
                    doc = scorer.advance();
                }
                if kept.len() >= k || from == first {
                    break;
                }
                // Fewer than `k` in the window: a wider one, from the
                // start again (a scorer only moves forward).
                widened += 1;
                if widened > MAX_WIDENED {
                    windowed = false;
                }
                window = window.saturating_mul(4);
                scorer = self
                    .scorer(query)?
                    .ok_or_else(|| storage_err(&self.meta, "the index lost its segment"))?;
                doc = scorer.doc();
            }
            if !descending && doc != TERMINATED && doc < end {
                doc = scorer.seek(end);
            }
            if let Some(front) = kept.front() {
                let front_ts = ts.first(*front);
                // Rows before the window are no newer than the row just
                // before it.
                let before = if from > start && from > first { Some(from - 1) } else { None };
                if dropped.or(before).is_some_and(|row| ts.first(row) == front_ts) {
                    return Ok(false);
                }
            }
            // Best first: later offers mostly fall below the worst kept.
            if descending {
                kept.iter().rev().for_each(|doc| offer(*doc));
            } else {
                kept.iter().for_each(|doc| offer(*doc));
            }
        }
        Ok(true)
    }

    /// All matching rows, in row order.
    pub fn all_rows(&self, query: &dyn Query) -> Result<Vec<u32>, QueryError> {
        let searcher = self.reader.searcher();
        let mut docs = searcher.search(query, &DocIds).map_err(|e| storage_err(&self.meta, e))?;
        docs.sort_unstable();
        Ok(docs)
    }

    /// True when at most `limit` rows match (stops counting past it).
    pub fn matches_at_most(&self, query: &dyn Query, limit: usize) -> Result<bool, QueryError> {
        let Some(mut scorer) = self.scorer(query)? else {
            return Ok(true);
        };
        let mut doc = scorer.doc();
        let mut seen = 0usize;
        while doc != TERMINATED {
            seen += 1;
            if seen > limit {
                return Ok(false);
            }
            doc = scorer.advance();
        }
        Ok(true)
    }

    /// Number of matching rows.
    pub fn count(&self, query: &dyn Query) -> Result<usize, QueryError> {
        let searcher = self.reader.searcher();
        searcher
            .search(query, &tantivy::collector::Count)
            .map_err(|e| storage_err(&self.meta, e))
    }

    /// Calls `visit` for every matching row with what the index holds about
    /// it (time, line length, stream, level, ML event), without Parquet.
    /// Without `with_ts` the time is not read (0): an instant query's one
    /// window already holds every row the query matched.
    pub fn scan_fast(&self, query: &dyn Query, with_ts: bool, mut visit: impl FnMut(FastRow<'_>)) -> Result<(), QueryError> {
        let searcher = self.reader.searcher();
        let docs = searcher.search(query, &DocIds).map_err(|e| storage_err(&self.meta, e))?;
        if docs.is_empty() {
            return Ok(());
        }
        let segment = searcher.segment_reader(0);
        let bytes = segment.fast_fields().u64("bytes").map_err(|e| storage_err(&self.meta, e))?;
        let (columns, words) = self.fast_columns()?;
        let word = |column: &Option<StrColumn>, doc: DocId| ord(column, doc).unwrap_or(usize::MAX);
        for doc in docs {
            let stream = self.stream_of(columns, doc).unwrap_or(usize::MAX);
            let level = word(&columns.level, doc);
            let event = word(&columns.event, doc);
            visit(FastRow {
                ts: if with_ts { columns.ts.first(doc).unwrap_or(0) } else { 0 },
                bytes: bytes.first(doc).unwrap_or(0),
                key: (stream, level, event),
                stream: words.stream_texts.get(stream).map(String::as_str).unwrap_or(""),
                level: words.levels.get(level).map(String::as_str).unwrap_or("unknown"),
                ml_event: words.events.get(event).map(String::as_str).unwrap_or(""),
            });
        }
        Ok(())
    }

    /// The fast-field columns of the split's segment and what their
    /// ordinals stand for, both opened once per opened split.
    fn fast_columns(&self) -> Result<(&FastColumns, &FastWords), QueryError> {
        let columns = match self.columns.get() {
            Some(columns) => columns,
            None => {
                let searcher = self.reader.searcher();
                let segment = searcher
                    .segment_readers()
                    .first()
                    .ok_or_else(|| storage_err(&self.meta, "the index has no segment"))?;
                let fast = segment.fast_fields();
                let err = |e: tantivy::TantivyError| storage_err(&self.meta, e);
                let columns = FastColumns {
                    ts: fast.i64("ts").map_err(err)?,
                    stream: fast.str("stream").map_err(err)?,
                    level: fast.str("level").map_err(err)?,
                    event: fast.str("ml_event").map_err(err)?,
                };
                self.columns.get_or_init(|| columns)
            }
        };
        let words = self.words(columns)?;
        Ok((columns, words))
    }

    /// What the streams and the ordinals of the `level` and `ml_event`
    /// fast fields stand for; read once per opened split.
    fn words(&self, columns: &FastColumns) -> Result<&FastWords, QueryError> {
        if let Some(words) = self.words.get() {
            return Ok(words);
        }
        let read = |column: &Option<StrColumn>| -> Result<Vec<String>, QueryError> {
            let mut words = Vec::new();
            if let Some(column) = column {
                for ord in 0..column.num_terms() as u64 {
                    let mut word = String::new();
                    column.ord_to_str(ord, &mut word).map_err(|e| storage_err(&self.meta, e))?;
                    words.push(word);
                }
            }
            Ok(words)
        };
        let (stream_texts, streams) = if self.meta.stream_starts.is_empty() {
            let by_text: HashMap<&str, &Arc<LabelSet>> = self.meta.streams.iter().map(String::as_str).zip(&self.streams).collect();
            let stream_texts = read(&columns.stream)?;
            let streams = stream_texts
                .iter()
                .map(|text| {
                    by_text
                        .get(text.as_str())
                        .map(|s| (*s).clone())
                        .unwrap_or_else(|| Arc::new(LabelSet::parse(text).unwrap_or_default()))
                })
                .collect();
            (stream_texts, streams)
        } else {
            (self.meta.streams.clone(), self.streams.clone())
        };
        let words = FastWords {
            stream_texts,
            streams,
            levels: read(&columns.level)?,
            events: read(&columns.event)?,
        };
        Ok(self.words.get_or_init(|| words))
    }

    /// Reads the given rows (sorted ascending) as [`StoredRow`]s: the line
    /// and the structured metadata from Parquet, and only those two
    /// columns; time, stream, level and ML event from the index's fast
    /// fields. A hit costs a page of one column, not a page of each of the
    /// fourteen (zstd decompression was over half of a rare-term search).
    pub fn stored(&self, rows: &[u32]) -> Result<Vec<StoredRow>, QueryError> {
        Ok(self.stored_if(rows, |_| true)?.into_iter().map(|(_, row)| row).collect())
    }

    /// [`OpenSplit::stored`] of the rows whose line passes `keep`, with
    /// their row numbers: the lines are read first, the rest of a row only
    /// when its line passes. Candidates are often mostly rows that fail an
    /// exact check (a number's block is a page of rows for a hit or two).
    pub fn stored_if(&self, rows: &[u32], keep: impl Fn(&str) -> bool) -> Result<Vec<(u32, StoredRow)>, QueryError> {
        // Lines straight from their pages where the layout allows it. The
        // file is opened per read: an opened split holds no descriptor
        // (thousands of splits stay open).
        let pages = self.line_pages.as_ref().filter(|_| !self.pages_unsupported.load(Ordering::Relaxed));
        let direct = match pages {
            Some(pages) => {
                let file = File::open(&self.parquet_path).map_err(|e| storage_err(&self.meta, e))?;
                match pages.read_if(&file, rows, &keep) {
                    Ok(kept) => Some(kept),
                    Err(PageError::Unsupported(why)) => {
                        tracing::debug!(split = %self.meta.id, %why, "reading lines through parquet-rs");
                        self.pages_unsupported.store(true, Ordering::Relaxed);
                        None
                    }
                    Err(e) => return Err(storage_err(&self.meta, e)),
                }
            }
            None => None,
        };
        // A split without structured metadata has only nulls there: one
        // column (and one codec, whose set-up costs as much as a page) less.
        let with_fields = self.meta.has_fields;
        // Through parquet-rs, the line and the metadata in one read; the
        // metadata of the rows kept, when the lines came from their pages.
        let mut fields: Option<Vec<Option<String>>> = None;
        let kept: Vec<(u32, String)> = match direct {
            Some(kept) => kept,
            None => {
                let columns: &[&str] = if with_fields { &[col::LINE, col::FIELDS] } else { &[col::LINE] };
                let mut lines = Vec::with_capacity(rows.len());
                let mut all_fields: Vec<Option<String>> = Vec::new();
                for batch in self.read_rows(rows, columns)? {
                    lines.extend(
                        string_column(&self.meta, &batch, col::LINE)?
                            .iter()
                            .map(|l| l.unwrap_or_default().to_string()),
                    );
                    // Splits from before structured metadata have no such column.
                    if let Ok(column) = string_column(&self.meta, &batch, col::FIELDS) {
                        all_fields.extend(column.iter().map(|f| f.map(str::to_string)));
                    }
                }
                if lines.len() != rows.len() {
                    return Err(storage_err(
                        &self.meta,
                        format!("asked for {} lines, read {}", rows.len(), lines.len()),
                    ));
                }
                let mut kept_fields = Vec::new();
                let mut kept = Vec::new();
                for (i, (row, line)) in rows.iter().copied().zip(lines).enumerate() {
                    if keep(&line) {
                        kept_fields.push(all_fields.get(i).cloned().flatten());
                        kept.push((row, line));
                    }
                }
                fields = Some(kept_fields);
                kept
            }
        };
        let (kept, lines): (Vec<u32>, Vec<String>) = kept.into_iter().unzip();
        let fields = match fields {
            Some(fields) => fields,
            None => {
                let mut fields = Vec::new();
                if with_fields && !kept.is_empty() {
                    for batch in self.read_rows(&kept, &[col::FIELDS])? {
                        if let Ok(column) = string_column(&self.meta, &batch, col::FIELDS) {
                            fields.extend(column.iter().map(|f| f.map(str::to_string)));
                        }
                    }
                }
                fields
            }
        };
        let (columns, words) = self.fast_columns()?;
        let mut out = Vec::with_capacity(kept.len());
        for (i, (&doc, line)) in kept.iter().zip(lines).enumerate() {
            let mut metadata = weft_model::batch::labels_from_json(fields.get(i).and_then(Option::as_deref));
            let level = ord(&columns.level, doc)
                .and_then(|o| words.levels.get(o))
                .map_or("unknown", String::as_str);
            metadata.insert("detected_level", level);
            if let Some(event) = ord(&columns.event, doc).and_then(|o| words.events.get(o)) {
                metadata.insert("ml_event", event.as_str());
            }
            let stream = self
                .stream_of(columns, doc)
                .and_then(|o| words.streams.get(o))
                .cloned()
                .ok_or_else(|| storage_err(&self.meta, format!("row {doc} has no stream")))?;
            out.push((
                doc,
                StoredRow {
                    ts: columns.ts.first(doc).unwrap_or(0),
                    stream,
                    metadata,
                    line,
                },
            ));
        }
        Ok(out)
    }

    /// Reads `columns` of the given rows (sorted ascending) from Parquet.
    fn read_rows(&self, rows: &[u32], columns: &[&str]) -> Result<Vec<RecordBatch>, QueryError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows must be sorted and distinct");
        let mut ranges = Vec::new();
        let mut start = rows[0] as usize;
        let mut end = start + 1;
        for &row in &rows[1..] {
            let row = row as usize;
            if row == end {
                end += 1;
            } else {
                ranges.push(start..end);
                start = row;
                end = row + 1;
            }
        }
        ranges.push(start..end);
        let total = self.meta.rows as usize;
        let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
        let file = File::open(&self.parquet_path).map_err(|e| storage_err(&self.meta, e))?;
        let mask = ProjectionMask::columns(self.parquet_meta.parquet_schema(), columns.iter().copied());
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.parquet_meta.clone())
            .with_projection(mask)
            .with_row_selection(selection)
            .with_batch_size(8192)
            .build()
            .map_err(|e| storage_err(&self.meta, e))?;
        let mut out = Vec::new();
        for batch in reader {
            out.push(batch.map_err(|e| storage_err(&self.meta, e))?);
        }
        let read: usize = out.iter().map(|b| b.num_rows()).sum();
        if read != rows.len() {
            return Err(storage_err(&self.meta, format!("asked for {} rows, read {read}", rows.len())));
        }
        Ok(out)
    }
}

/// A row read back from a split, with the labels a LogQL pipeline starts
/// from.
#[derive(Clone, Debug)]
pub struct StoredRow {
    pub ts: i64,
    pub stream: Arc<LabelSet>,
    /// Structured metadata: `detected_level`, `ml_event`, and the per-line
    /// fields.
    pub metadata: LabelSet,
    pub line: String,
}

#[cfg(test)]
mod tests {
    use super::filter_tokens;

    #[test]
    fn filter_tokens_know_their_open_edges() {
        assert_eq!(
            filter_tokens("CUDA out of memory"),
            vec![
                ("cuda".into(), true, false),
                ("out".into(), false, false),
                ("of".into(), false, false),
                ("memory".into(), false, true)
            ]
        );
        assert_eq!(filter_tokens(" exact "), vec![("exact".into(), false, false)]);
        assert_eq!(filter_tokens("OutOfMemory"), vec![("outofmemory".into(), true, true)]);
        assert!(filter_tokens("!!").is_empty());
    }
}
