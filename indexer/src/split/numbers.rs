//! The number index of a split: which blocks of [`BLOCK_ROWS`] rows hold
//! each number token, decimal or hexadecimal (see [`is_number_token`]:
//! sizes, ports, octets of addresses, steps, the digits of timestamps and
//! decimals, request and trace ids, hashes, `0x` addresses), and each of
//! the split's *block words*.
//!
//! Block words (version 5) are the words in many of a split's lines
//! (`info`, `task`, `stage`, `executor`: at least one line in
//! [`super::index::BLOCK_WORD_SHARE`] of a sample). A posting per line
//! costs them a bit or more each; a block costs them a few bits per 1,024
//! rows. A line holding one is most of a page anyway, and the page is
//! read whole to check it. The writer picks them from a sample of the
//! split's lines before it indexes any (see
//! [`super::index::block_words`]) and lists them in the file; a query
//! looks a listed word up here, and any other word in tantivy.
//!
//! Number tokens are almost all of a log's distinct terms and over a third
//! of its tokens; in tantivy each was a term dictionary entry and a
//! posting per row. Here a number is a key (bits of its fingerprint) and
//! a list of blocks, so a search for a number reads the rows of a few
//! blocks and checks their lines (queries always check: keys collide, a
//! block holds other rows). Words and other tokens (`blk`, `k9d3w`,
//! `zq7x`) stay in tantivy, exact. A substring or prefix can only be part
//! of a number token if it is made of hex digits and `x`
//! ([`may_be_in_number`]); only those lose their index prefilter.
//!
//! File layout (`numbers.idx` inside the split's index directory, little
//! endian), version 5: the magic `WEFTNUM5`; the fields of version 4's
//! header with `words_bytes` before the CRC-32; `words_bytes` bytes of
//! block words, each a length byte and its lowercase ASCII letters and
//! digits, in increasing order; then version 4's table and bit stream. A
//! block word's key is its fingerprint's, like a number's.
//!
//! Version 4 (`WEFTNUM4`, still read): the magic; `block_rows` (1,024: a
//! Parquet page of lines, which a search decompresses whole anyway),
//! `rows`, `keys`, `stream_bytes`, `key_bits`, `fingerprint_bits` and a
//! CRC-32 as u32. The checksum covers the header before it and
//! everything after it (a flipped bit would otherwise point a number at
//! the wrong blocks, or at none, without an error). Then per
//! [`GROUP_KEYS`] keys their first key and the bit offset of their
//! postings (u32 each); then a bit stream (least significant bit first).
//! A key is the top `fingerprint_bits` bits of a number's fingerprint,
//! mixed ([`key_of`]): seven bits more than the split's distinct
//! fingerprints need, so a
//! number in no line of the split finds a key at most once in 128 lookups
//! (and then reads a block for nothing); a 32-bit key spent 7 bits more
//! per number on gaps for a rate no query needs. Per key: unless it opens
//! its group, the gap from the previous key less one, Rice-coded with
//! `key_bits`; its block count, Elias-gamma coded; a single block in a
//! fixed width (enough bits for the split's last block); more blocks
//! Rice-coded with a parameter from the count and the split's blocks, the
//! first as it is and each next one as its gap from the one before less
//! one. Most numbers (ids, hashes, fractions) sit in one block: such a
//! key takes about 19 bits here, 27 in version 3 and 56 in version 2.
//!
//! Version 3 (`WEFTNUM3`, still read) is version 4 with blocks of 256
//! rows, whole 32-bit fingerprints as keys, no `fingerprint_bits` and a
//! checksum of what follows the header only.
//!
//! Version 2 (`WEFTNUM2`, still read): `block_rows`, `rows`, `keys`,
//! `postings_len` as u32; `keys` sorted fingerprints (u32 each); one u32
//! offset into the postings per [`GROUP_KEYS`] keys, plus the end; then
//! per key a varint count and varint block numbers, delta-coded.

use std::io::Write;
use std::path::Path;

use tantivy::directory::OwnedBytes;

use crate::IndexerError;

/// Rows per block: a Parquet data page of lines holds one or more whole
/// blocks (pages are cut at multiples of 1,024 rows, once past 64 KiB),
/// and a search decompresses the whole page anyway.
pub const BLOCK_ROWS: u32 = 1024;
/// Rows per block in version 3.
const BLOCK_ROWS_V3: u32 = 256;
/// Bits of a key beyond those the split's distinct fingerprints need: a
/// number in no line finds a key at most once in 2^7 lookups.
const SPARE_KEY_BITS: u32 = 7;
/// Name of the number index inside a split's index directory.
pub const FILE_NAME: &str = "numbers.idx";
/// Keys per entry of the offset table.
pub const GROUP_KEYS: usize = 64;
/// Format version written, recorded in the split's catalog entry.
/// Versions 2, 3 and 4 are read as well; version 1 (a development format
/// that held decimal numbers only) is refused.
pub const VERSION: u32 = 5;
const MAGIC: &[u8; 7] = b"WEFTNUM";
const HEADER_BYTES: usize = 8 + 4 * 4;
const HEADER_BYTES_V3: usize = 8 + 6 * 4;
const HEADER_BYTES_V4: usize = 8 + 7 * 4;
const HEADER_BYTES_V5: usize = 8 + 8 * 4;
/// Most block words a split lists (a bit each in a row's word set).
pub const MAX_BLOCK_WORDS: usize = 128;
/// Longest block word, in bytes.
pub const MAX_BLOCK_WORD_BYTES: usize = 64;

/// Which of a split's block words a row holds: bit `i` for the `i`th.
pub type WordSet = u128;

/// True for a word a split may list as a block word: 1 to
/// [`MAX_BLOCK_WORD_BYTES`] lowercase ASCII letters and digits, not a
/// number token.
pub fn may_be_block_word(word: &str) -> bool {
    (1..=MAX_BLOCK_WORD_BYTES).contains(&word.len())
        && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !is_number_token(word)
}

/// True for the tokens this index holds instead of tantivy: ASCII hex
/// digits with at least one decimal digit (`8080`, `3f2a9c01`), optionally
/// after `0x` (`0x7ffd3a`). Case does not matter (tokens are lowercased).
pub fn is_number_token(token: &str) -> bool {
    number_run(token.as_bytes())
}

fn number_run(run: &[u8]) -> bool {
    let digits = match run {
        [b'0', b'x' | b'X', rest @ ..] if !rest.is_empty() => rest,
        _ => run,
    };
    !digits.is_empty() && run.iter().any(u8::is_ascii_digit) && digits.iter().all(u8::is_ascii_hexdigit)
}

/// True when `part` (lowercased), cut off at an edge, may be a piece of a
/// number token: only hex digits and `x`. Such a piece has no exact
/// prefilter in a split with a number index.
pub fn may_be_in_number(part: &str) -> bool {
    part.bytes().all(|b| b.is_ascii_hexdigit() || b == b'x' || b == b'X')
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3)
}

fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// The fingerprint of a number token (FNV-1a over the lowercased bytes,
/// folded to 32 bits; stable across builds and machines).
pub fn fingerprint(token: &[u8]) -> u32 {
    fold(token.iter().fold(FNV_OFFSET, |hash, byte| fnv_step(hash, *byte)))
}

/// Calls `visit` with each number token of `line` (before lowercasing)
/// and its fingerprint, as the `line` tokenizer cuts it (alphanumeric runs
/// shorter than [`super::index::LONG_TOKEN_BYTES`]). The index is built
/// from the tokenizer's own pass; this is the specification that pass is
/// tested against.
#[cfg(test)]
pub fn for_each_number(line: &str, mut visit: impl FnMut(&[u8], u32)) {
    for run in line.split(|c: char| !c.is_alphanumeric()) {
        if run.len() < super::index::LONG_TOKEN_BYTES && is_number_token(run) {
            visit(run.as_bytes(), fingerprint(run.as_bytes()));
        }
    }
}

/// The key of `fingerprint` in a version 4 index of `bits`-bit keys: the
/// top bits of the fingerprint mixed (murmur3's finalizer, one to one).
/// FNV-1a's top bits hardly vary across short tokens: `0` to `127` share
/// 13 values of the top 15.
fn key_of(fingerprint: u32, bits: u32) -> u32 {
    top_bits(mixed(fingerprint), bits)
}

/// murmur3's 32-bit finalizer.
fn mixed(fingerprint: u32) -> u32 {
    let mut h = fingerprint;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The top `bits` (1 to 32) bits of `value`.
fn top_bits(value: u32, bits: u32) -> u32 {
    // A shift of 32 would overflow.
    (u64::from(value) >> (32 - bits)) as u32
}

/// Collects the (fingerprint, block) pairs of a split's rows, in row order.
pub struct NumberIndexBuilder {
    pairs: Vec<u64>,
    block: Vec<u32>,
    /// The block words of the current block's rows.
    block_words: WordSet,
    /// The split's block words (sorted) and their fingerprints.
    words: Vec<String>,
    word_fingerprints: Vec<u32>,
    block_no: u32,
    block_rows: u32,
    rows: u32,
}

impl Default for NumberIndexBuilder {
    fn default() -> Self {
        NumberIndexBuilder {
            pairs: Vec::new(),
            block: Vec::new(),
            block_words: 0,
            words: Vec::new(),
            word_fingerprints: Vec::new(),
            block_no: 0,
            block_rows: BLOCK_ROWS,
            rows: 0,
        }
    }
}

impl NumberIndexBuilder {
    /// A builder that also indexes `words` per block (sorted, distinct,
    /// each [`may_be_block_word`], at most [`MAX_BLOCK_WORDS`]): a row's
    /// [`WordSet`] names them by their place here.
    pub fn with_words(words: Vec<String>) -> Result<Self, IndexerError> {
        let fits =
            words.len() <= MAX_BLOCK_WORDS && words.iter().all(|w| may_be_block_word(w)) && words.windows(2).all(|pair| pair[0] < pair[1]);
        if !fits {
            return Err(IndexerError::Internal(format!(
                "block words must be at most {MAX_BLOCK_WORDS} sorted distinct lowercase ASCII words of 1 to {MAX_BLOCK_WORD_BYTES} bytes, not numbers: {words:?}"
            )));
        }
        Ok(NumberIndexBuilder {
            word_fingerprints: words.iter().map(|w| fingerprint(w.as_bytes())).collect(),
            words,
            ..NumberIndexBuilder::default()
        })
    }

    /// A builder of blocks of `block_rows` rows (what older versions were
    /// written with), for the reader's tests.
    #[cfg(test)]
    fn with_block_rows(block_rows: u32) -> Self {
        NumberIndexBuilder {
            block_rows,
            ..NumberIndexBuilder::default()
        }
    }

    /// Adds row `row` (rows come in increasing order).
    #[cfg(test)]
    pub fn add_line(&mut self, row: u32, line: &str) {
        self.start_row(row);
        let block = &mut self.block;
        for_each_number(line, |_, fingerprint| block.push(fingerprint));
    }

    /// Adds row `row` (rows come in increasing order) whose number tokens
    /// have `fingerprints` (as [`for_each_number`] finds them) and which
    /// holds the block words `words`.
    pub fn add_row(&mut self, row: u32, fingerprints: &[u32], words: WordSet) {
        self.start_row(row);
        self.block.extend_from_slice(fingerprints);
        self.block_words |= words;
    }

    fn start_row(&mut self, row: u32) {
        let block_no = row / self.block_rows;
        if block_no != self.block_no {
            self.close_block();
            self.block_no = block_no;
        }
        self.rows = row + 1;
    }

    fn close_block(&mut self) {
        let mut words = std::mem::take(&mut self.block_words);
        while words != 0 {
            let word = words.trailing_zeros() as usize;
            words &= words - 1;
            // A bit past the list (a caller's error) names no word.
            if let Some(fingerprint) = self.word_fingerprints.get(word) {
                self.block.push(*fingerprint);
            }
        }
        self.block.sort_unstable();
        self.block.dedup();
        let block_no = u64::from(self.block_no);
        self.pairs.extend(self.block.drain(..).map(|fp| (u64::from(fp) << 32) | block_no));
    }

    /// Distinct keys (fingerprints, or what [`NumberIndexBuilder::finish`]
    /// made of them) and their blocks, in key order (the
    /// pairs sorted).
    fn keys(&self) -> impl Iterator<Item = (u32, &[u64])> + '_ {
        self.pairs
            .chunk_by(|a, b| a >> 32 == b >> 32)
            .map(|run| ((run[0] >> 32) as u32, run))
    }

    /// The file's bytes (version 5).
    pub fn finish(self) -> Result<Vec<u8>, IndexerError> {
        self.finish_as(5)
    }

    /// The file's bytes in version 4 (what splits written before version
    /// 5 hold), for the reader's tests.
    #[cfg(test)]
    fn finish_v4(self) -> Vec<u8> {
        assert!(self.words.is_empty(), "version 4 has no block words");
        self.finish_as(4).unwrap()
    }

    /// The file's bytes in version 4 or 5.
    fn finish_as(mut self, version: u8) -> Result<Vec<u8>, IndexerError> {
        self.close_block();
        let block = |pair: u64| pair & u64::from(u32::MAX);
        // Mixed first (one to one, so as many distinct values as
        // fingerprints), sorted once; keys are then their top bits, in the
        // same order.
        for pair in &mut self.pairs {
            *pair = (u64::from(mixed((*pair >> 32) as u32)) << 32) | block(*pair);
        }
        self.pairs.sort_unstable();
        let distinct = self.keys().count() as u64;
        let fingerprint_bits = (bit_width(u32::try_from(distinct).unwrap_or(u32::MAX)) + SPARE_KEY_BITS).min(32);
        for pair in &mut self.pairs {
            *pair = (u64::from(top_bits((*pair >> 32) as u32, fingerprint_bits)) << 32) | block(*pair);
        }
        // Fingerprints that share a key share its blocks, which come in one
        // sorted run per fingerprint.
        for run in self.pairs.chunk_by_mut(|a, b| a >> 32 == b >> 32) {
            if !run.is_sorted() {
                run.sort_unstable();
            }
        }
        self.pairs.dedup();
        self.encode(version, fingerprint_bits)
    }

    /// The file's bytes in version 3 (what splits written before version
    /// 4 hold), for the reader's tests.
    #[cfg(test)]
    fn finish_v3(mut self) -> Vec<u8> {
        assert_eq!(self.block_rows, BLOCK_ROWS_V3);
        self.close_block();
        self.pairs.sort_unstable();
        self.encode(3, 32).unwrap()
    }

    /// The bytes of version 3, 4 or 5 from the sorted (key, block) pairs.
    fn encode(&self, version: u8, fingerprint_bits: u32) -> Result<Vec<u8>, IndexerError> {
        let too_big = || IndexerError::Internal("number index: more than 2^32 bits of postings".into());
        let blocks = self.rows.div_ceil(self.block_rows);
        let block_width = bit_width(blocks.saturating_sub(1));
        let keys = self.keys().count();
        let key_bits = rice_parameter((1u64 << fingerprint_bits) / keys.max(1) as u64);
        let mut table: Vec<u32> = Vec::with_capacity(2 * keys.div_ceil(GROUP_KEYS));
        let mut stream = BitWriter::default();
        let mut previous = 0u32;
        for (n, (key, run)) in self.keys().enumerate() {
            if n % GROUP_KEYS == 0 {
                table.push(key);
                table.push(u32::try_from(stream.bits()).map_err(|_| too_big())?);
            } else {
                stream.rice(key - previous - 1, key_bits);
            }
            previous = key;
            let count = run.len() as u32;
            stream.gamma(count);
            if count == 1 {
                stream.put(run[0] as u32, block_width);
            } else {
                let k = rice_parameter(u64::from(blocks) / u64::from(count));
                let mut next = 0u32;
                for pair in run {
                    let block = *pair as u32;
                    stream.rice(block - next, k);
                    next = block + 1;
                }
            }
        }
        u32::try_from(stream.bits()).map_err(|_| too_big())?;
        let stream = stream.finish();
        let header = header_bytes(version);
        let mut words = Vec::new();
        for word in &self.words {
            words.push(word.len() as u8);
            words.extend_from_slice(word.as_bytes());
        }
        let mut out = Vec::with_capacity(header + words.len() + 4 * table.len() + stream.len());
        out.extend_from_slice(MAGIC);
        out.push(b'0' + version);
        let mut fields = vec![self.block_rows, self.rows, keys as u32, stream.len() as u32, key_bits];
        if version >= 4 {
            fields.push(fingerprint_bits);
        }
        if version >= 5 {
            fields.push(words.len() as u32);
        }
        // The checksum (zero here) is filled in last.
        fields.push(0);
        for n in fields {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&words);
        for n in &table {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&stream);
        let crc = checksum(&out, header, version >= 4);
        out[header - 4..header].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// The file's bytes in version 2 (what splits written before version
    /// 3 hold), for the reader's tests.
    #[cfg(test)]
    fn finish_v2(mut self) -> Vec<u8> {
        self.close_block();
        self.pairs.sort_unstable();
        let mut keys: Vec<u32> = Vec::new();
        let mut offsets: Vec<u32> = Vec::new();
        let mut postings: Vec<u8> = Vec::new();
        for (key, run) in self.keys() {
            if keys.len().is_multiple_of(GROUP_KEYS) {
                offsets.push(postings.len() as u32);
            }
            keys.push(key);
            put_varint(&mut postings, run.len() as u32);
            let mut previous = 0u32;
            for pair in run {
                let block = *pair as u32;
                put_varint(&mut postings, block - previous);
                previous = block;
            }
        }
        offsets.push(postings.len() as u32);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(b'2');
        for n in [self.block_rows, self.rows, keys.len() as u32, postings.len() as u32] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in keys.iter().chain(&offsets) {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&postings);
        out
    }

    /// Writes the file into the index directory `dir`, synced.
    pub fn write_into(self, dir: &Path) -> Result<(), IndexerError> {
        let path = dir.join(FILE_NAME);
        let bytes = self.finish()?;
        let io = |source| IndexerError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        // tantivy synced the directory before this file (and the emptied
        // document store) was in it.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

/// Header bytes of version 3, 4 or 5 (the checksum in its last four).
fn header_bytes(version: u8) -> usize {
    match version {
        3 => HEADER_BYTES_V3,
        4 => HEADER_BYTES_V4,
        _ => HEADER_BYTES_V5,
    }
}

/// The CRC-32 of a version 3, 4 or 5 file of `header` header bytes: of
/// what follows the header, and from version 4 on (`with_header`) of the
/// header's fields before the checksum as well.
fn checksum(bytes: &[u8], header: usize, with_header: bool) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    if with_header {
        crc.update(&bytes[..header - 4]);
    }
    crc.update(&bytes[header..]);
    crc.finalize()
}

/// Bits needed to write `n`.
fn bit_width(n: u32) -> u32 {
    u32::BITS - n.leading_zeros()
}

/// The Rice parameter for gaps of mean `mean` (about log2 of 0.69 × the
/// mean, the best for geometric gaps).
fn rice_parameter(mean: u64) -> u32 {
    (mean.saturating_mul(69) / 100).max(1).ilog2().min(31)
}

fn low_bits(value: u32, width: u32) -> u32 {
    if width >= 32 {
        value
    } else {
        value & ((1 << width) - 1)
    }
}

/// Writes bits least significant first.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    fn bits(&self) -> u64 {
        self.bytes.len() as u64 * 8 + u64::from(self.pending_bits)
    }

    /// The low `width` (at most 32) bits of `value`.
    fn put(&mut self, value: u32, width: u32) {
        self.pending |= u64::from(low_bits(value, width)) << self.pending_bits;
        self.pending_bits += width;
        while self.pending_bits >= 8 {
            self.bytes.push(self.pending as u8);
            self.pending >>= 8;
            self.pending_bits -= 8;
        }
    }

    /// `zeros` zero bits, then a one.
    fn unary(&mut self, mut zeros: u32) {
        while zeros >= 31 {
            self.put(0, 31);
            zeros -= 31;
        }
        self.put(1 << zeros, zeros + 1);
    }

    fn rice(&mut self, value: u32, k: u32) {
        self.unary(value >> k);
        self.put(value, k);
    }

    /// Elias gamma of `value` (at least 1): its width less one in unary,
    /// then its bits below the top one.
    fn gamma(&mut self, value: u32) {
        let width = bit_width(value);
        self.unary(width - 1);
        self.put(value, width - 1);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.pending_bits > 0 {
            self.bytes.push(self.pending as u8);
        }
        self.bytes
    }
}

/// Reads what [`BitWriter`] wrote; `None` past the end.
struct BitReader<'a> {
    bytes: &'a [u8],
    at: u64,
    end: u64,
}

impl BitReader<'_> {
    fn peek(&self, width: u32) -> Option<u32> {
        if width == 0 {
            return Some(0);
        }
        if self.at + u64::from(width) > self.end {
            return None;
        }
        let byte = (self.at / 8) as usize;
        let mut word = [0u8; 8];
        let take = self.bytes.len().saturating_sub(byte).min(8);
        word[..take].copy_from_slice(&self.bytes[byte..byte + take]);
        Some(low_bits((u64::from_le_bytes(word) >> (self.at % 8)) as u32, width))
    }

    fn get(&mut self, width: u32) -> Option<u32> {
        let value = self.peek(width)?;
        self.at += u64::from(width);
        Some(value)
    }

    fn unary(&mut self) -> Option<u32> {
        let mut zeros = 0u32;
        loop {
            let width = (self.end - self.at).min(32) as u32;
            let word = self.peek(width).filter(|_| width > 0)?;
            if word == 0 {
                zeros = zeros.checked_add(width)?;
                self.at += u64::from(width);
                continue;
            }
            let run = word.trailing_zeros();
            self.at += u64::from(run) + 1;
            return zeros.checked_add(run);
        }
    }

    fn rice(&mut self, k: u32) -> Option<u32> {
        let high = u64::from(self.unary()?) << k;
        u32::try_from(high | u64::from(self.get(k)?)).ok()
    }

    fn gamma(&mut self) -> Option<u32> {
        let below = self.unary()?;
        if below >= 32 {
            return None;
        }
        Some((1 << below) | self.get(below)?)
    }
}

#[cfg(test)]
fn put_varint(out: &mut Vec<u8>, mut n: u32) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut n = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

/// A split's number index, opened (usually over a memory map).
pub struct NumberIndex {
    bytes: OwnedBytes,
    block_rows: u32,
    rows: u32,
    keys: usize,
    layout: Layout,
    /// The split's block words (version 5), sorted.
    words: Vec<String>,
}

/// Where the parts of an opened file are, by version.
enum Layout {
    V2 {
        postings_at: usize,
        postings_len: usize,
    },
    /// Versions 3 to 5.
    Bits {
        /// Where the group table starts (after the header, and in version
        /// 5 the block words).
        table_at: usize,
        stream_at: usize,
        stream_bytes: usize,
        key_bits: u32,
        /// Bits of a key: in version 4, the top ones of its fingerprint
        /// mixed (see [`key_of`]); in version 3, the whole fingerprint.
        fingerprint_bits: u32,
        mixed: bool,
    },
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

impl NumberIndex {
    /// Checks the header, the sizes of the tables, the order of the keys,
    /// and that the index covers the split's `rows` rows.
    pub fn open(bytes: OwnedBytes, rows: u64) -> Result<NumberIndex, IndexerError> {
        let corrupt = |what: &str| IndexerError::Corrupt(format!("number index {FILE_NAME}: {what}"));
        let slice = bytes.as_slice();
        if slice.len() < HEADER_BYTES || slice[..7] != MAGIC[..] {
            return Err(corrupt("not a weft number index (bad magic or shorter than its header)"));
        }
        let version = slice[7];
        if !(b'2'..=b'5').contains(&version) {
            return Err(corrupt(&format!(
                "format {} is not 2, 3, 4 or 5 (a development format, or one newer than this reader; re-index the split or upgrade)",
                char::from(version)
            )));
        }
        let block_rows = read_u32(slice, 8);
        let indexed_rows = read_u32(slice, 12);
        let keys = read_u32(slice, 16) as usize;
        let data_len = read_u32(slice, 20) as usize;
        let groups = keys.div_ceil(GROUP_KEYS);
        let sizes = |header: usize, table: Option<usize>| {
            table
                .and_then(|n| n.checked_mul(4))
                .and_then(|n| n.checked_add(header))
                .filter(|at| at.checked_add(data_len) == Some(slice.len()))
        };
        let header = if version == b'2' {
            HEADER_BYTES
        } else {
            header_bytes(version - b'0')
        };
        let (layout, written_block_rows) = if version == b'2' {
            let at = sizes(HEADER_BYTES, keys.checked_add(groups + 1));
            let layout = at.map(|at| Layout::V2 {
                postings_at: at,
                postings_len: data_len,
            });
            (layout, None)
        } else {
            let block_rows = if version == b'3' { BLOCK_ROWS_V3 } else { BLOCK_ROWS };
            let field = |at: usize| if slice.len() >= header { read_u32(slice, at) } else { u32::MAX };
            let key_bits = field(24);
            let fingerprint_bits = if version == b'3' { 32 } else { field(28) };
            let words_bytes = if version >= b'5' { field(32) as usize } else { 0 };
            let table_at = header.checked_add(words_bytes).filter(|at| *at <= slice.len());
            let at = table_at
                .and_then(|table_at| sizes(table_at, Some(2 * groups)))
                .filter(|_| key_bits < 32 && (1..=32).contains(&fingerprint_bits));
            let layout = at.map(|at| Layout::Bits {
                table_at: at - 8 * groups,
                stream_at: at,
                stream_bytes: data_len,
                key_bits,
                fingerprint_bits,
                mixed: version >= b'4',
            });
            (layout, Some(block_rows))
        };
        // Versions 3 and 4 are written with one block size each.
        let block_rows_known = block_rows > 0 && written_block_rows.is_none_or(|rows| rows == block_rows);
        let (Some(layout), true) = (layout, block_rows_known) else {
            return Err(corrupt(&format!(
                "{} bytes do not hold {keys} keys and {data_len} bytes of postings in blocks of {block_rows} rows",
                slice.len()
            )));
        };
        if u64::from(indexed_rows) != rows {
            return Err(corrupt(&format!("it covers {indexed_rows} rows, the split has {rows}")));
        }
        let mut words = Vec::new();
        if let Layout::Bits { table_at, .. } = layout {
            if checksum(slice, header, version >= b'4') != read_u32(slice, header - 4) {
                return Err(corrupt("its checksum does not match its contents"));
            }
            words = read_words(&slice[header..table_at]).ok_or_else(|| {
                corrupt(&format!(
                    "its block words are not at most {MAX_BLOCK_WORDS} sorted distinct lowercase ASCII words of 1 to {MAX_BLOCK_WORD_BYTES} bytes"
                ))
            })?;
        }
        // Version 2 lists every key; versions 3 to 5 the first of each group.
        let (tables_at, listed, stride) = match layout {
            Layout::V2 { .. } => (HEADER_BYTES, keys, 4),
            Layout::Bits { table_at, .. } => (table_at, groups, 8),
        };
        let key_at = |i: usize| read_u32(slice, tables_at + stride * i);
        if !(1..listed).all(|i| key_at(i - 1) < key_at(i)) {
            return Err(corrupt("its keys are not in increasing order"));
        }
        if let Layout::Bits { stream_bytes, .. } = layout {
            let offset = |g: usize| u64::from(read_u32(slice, tables_at + 8 * g + 4));
            let in_order = (0..groups).all(|g| if g == 0 { offset(0) == 0 } else { offset(g - 1) < offset(g) });
            if !in_order || (groups > 0 && offset(groups - 1) >= stream_bytes as u64 * 8) {
                return Err(corrupt("its postings offsets are not in increasing order inside the postings"));
            }
        }
        Ok(NumberIndex {
            bytes,
            block_rows,
            rows: indexed_rows,
            keys,
            layout,
            words,
        })
    }

    /// The split's block words, sorted: they are looked up here, not in
    /// tantivy.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// True when `word` (lowercased) is one of the split's block words.
    pub fn holds_word(&self, word: &str) -> bool {
        self.words.binary_search_by(|w| w.as_str().cmp(word)).is_ok()
    }

    /// Rows per block.
    pub fn block_rows(&self) -> u32 {
        self.block_rows
    }

    /// The key of `fingerprint` here.
    fn key(&self, fingerprint: u32) -> u32 {
        match self.layout {
            Layout::Bits {
                fingerprint_bits,
                mixed: true,
                ..
            } => key_of(fingerprint, fingerprint_bits),
            _ => fingerprint,
        }
    }

    /// Number of distinct keys (fingerprints, or their top bits).
    pub fn len(&self) -> usize {
        self.keys
    }

    /// True when no number or block word was indexed.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Blocks that may hold `token`; `None` when the postings cannot be
    /// read (a damaged file: the caller must then consider every row).
    pub fn blocks_of(&self, token: &str) -> Option<Vec<u32>> {
        let key = fingerprint(token.as_bytes());
        match self.layout {
            Layout::V2 { postings_at, postings_len } => self.blocks_v2(key, postings_at, postings_len),
            Layout::Bits {
                table_at,
                stream_at,
                stream_bytes,
                key_bits,
                ..
            } => self.blocks_bits(self.key(key), table_at, stream_at, stream_bytes, key_bits),
        }
    }

    fn blocks_v2(&self, key: u32, postings_at: usize, postings_len: usize) -> Option<Vec<u32>> {
        let slice = self.bytes.as_slice();
        let key_at = |i: usize| read_u32(slice, HEADER_BYTES + 4 * i);
        let lo = partition_point(self.keys, |i| key_at(i) < key);
        if lo == self.keys || key_at(lo) != key {
            return Some(Vec::new());
        }
        let offset = read_u32(slice, HEADER_BYTES + 4 * (self.keys + lo / GROUP_KEYS)) as usize;
        let postings = &slice[postings_at..postings_at + postings_len];
        let mut at = offset;
        for _ in 0..lo % GROUP_KEYS {
            let count = get_varint(postings, &mut at)?;
            for _ in 0..count {
                get_varint(postings, &mut at)?;
            }
        }
        let count = get_varint(postings, &mut at)? as usize;
        let mut blocks = Vec::with_capacity(count.min(postings.len()));
        let mut block = 0u32;
        for i in 0..count {
            let delta = get_varint(postings, &mut at)?;
            // Blocks strictly increase; a repeat means a damaged file.
            if i > 0 && delta == 0 {
                return None;
            }
            block = block.checked_add(delta)?;
            blocks.push(block);
        }
        Some(blocks)
    }

    fn blocks_bits(&self, key: u32, table_at: usize, stream_at: usize, stream_bytes: usize, key_bits: u32) -> Option<Vec<u32>> {
        let slice = self.bytes.as_slice();
        let entry = |g: usize| read_u32(slice, table_at + 8 * g);
        let groups = self.keys.div_ceil(GROUP_KEYS);
        // The group whose first key is the last at or below `key`.
        let Some(group) = partition_point(groups, |g| entry(g) <= key).checked_sub(1) else {
            return Some(Vec::new());
        };
        let mut stream = BitReader {
            bytes: &slice[stream_at..stream_at + stream_bytes],
            at: u64::from(read_u32(slice, table_at + 8 * group + 4)),
            end: stream_bytes as u64 * 8,
        };
        let blocks = self.rows.div_ceil(self.block_rows);
        let block_width = bit_width(blocks.saturating_sub(1));
        let mut current = entry(group);
        for i in 0..(self.keys - group * GROUP_KEYS).min(GROUP_KEYS) {
            if i > 0 {
                current = current.checked_add(stream.rice(key_bits)?)?.checked_add(1)?;
            }
            if current > key {
                break;
            }
            let count = stream.gamma()?;
            // Past a single block, each block takes a bit at least.
            if count > blocks || (count > 1 && u64::from(count) > stream.end - stream.at) {
                return None;
            }
            let found = current == key;
            let mut out = Vec::with_capacity(if found { count as usize } else { 0 });
            if count == 1 {
                out.push(stream.get(block_width)?);
            } else {
                let k = rice_parameter(u64::from(blocks) / u64::from(count));
                let mut next = 0u32;
                for _ in 0..count {
                    let block = next.checked_add(stream.rice(k)?)?;
                    if found {
                        out.push(block);
                    }
                    next = block.checked_add(1)?;
                }
            }
            // Blocks past the split's last mean a damaged file.
            if out.last().is_some_and(|b| *b >= blocks) {
                return None;
            }
            if found {
                return Some(out);
            }
        }
        Some(Vec::new())
    }

    /// Row ranges `[start, end)` of the blocks that may hold `token`, in
    /// row order; `None` as for [`NumberIndex::blocks_of`].
    pub fn row_ranges(&self, token: &str) -> Option<Vec<(u32, u32)>> {
        let blocks = self.blocks_of(token)?;
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(blocks.len());
        for block in blocks {
            let start = block.saturating_mul(self.block_rows);
            if start >= self.rows {
                break;
            }
            let end = start.saturating_add(self.block_rows).min(self.rows);
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
        Some(ranges)
    }
}

/// The words of a version 5 words section: length-prefixed, each
/// [`may_be_block_word`], strictly increasing; `None` when it is not that.
fn read_words(mut section: &[u8]) -> Option<Vec<String>> {
    let mut words: Vec<String> = Vec::new();
    while let Some((&len, rest)) = section.split_first() {
        let word = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
        let in_order = words.last().is_none_or(|last| last.as_str() < word);
        if !may_be_block_word(word) || !in_order || words.len() == MAX_BLOCK_WORDS {
            return None;
        }
        words.push(word.to_string());
        section = &rest[usize::from(len)..];
    }
    Some(words)
}

/// The first of `0..len` for which `below` is false (`below` true up to
/// some point, false after).
fn partition_point(len: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder_of(lines: &[&str]) -> NumberIndexBuilder {
        fill(NumberIndexBuilder::default(), lines)
    }

    /// A builder of the blocks versions 2 and 3 were written with.
    fn old_builder_of(lines: &[&str]) -> NumberIndexBuilder {
        fill(NumberIndexBuilder::with_block_rows(BLOCK_ROWS_V3), lines)
    }

    fn fill(mut builder: NumberIndexBuilder, lines: &[&str]) -> NumberIndexBuilder {
        for (row, line) in lines.iter().enumerate() {
            builder.add_line(row as u32, line);
        }
        builder
    }

    /// The index of `lines` in the format written now and in versions 4,
    /// 3 and 2.
    fn indexes_of(lines: &[&str]) -> [NumberIndex; 4] {
        let rows = lines.len() as u64;
        [
            NumberIndex::open(OwnedBytes::new(builder_of(lines).finish().unwrap()), rows).unwrap(),
            NumberIndex::open(OwnedBytes::new(builder_of(lines).finish_v4()), rows).unwrap(),
            NumberIndex::open(OwnedBytes::new(old_builder_of(lines).finish_v3()), rows).unwrap(),
            NumberIndex::open(OwnedBytes::new(old_builder_of(lines).finish_v2()), rows).unwrap(),
        ]
    }

    /// The fingerprints of `line`'s number tokens.
    fn numbers_of(line: &str) -> Vec<u32> {
        let mut numbers = Vec::new();
        for_each_number(line, |_, fingerprint| numbers.push(fingerprint));
        numbers
    }

    /// The key of `fingerprint` in `index`.
    fn key_in(index: &NumberIndex, fingerprint: u32) -> u32 {
        index.key(fingerprint)
    }

    #[test]
    fn numbers_are_cut_like_the_line_tokenizer() {
        let mut seen = Vec::new();
        for_each_number(
            "blk_-1608 to 10.250.19.102:50010 a3F9 9x 2.5e-3 ٣ 12·34 cafe 0x7FFD 0x x0 00x1",
            |t, fp| {
                assert_eq!(fp, fingerprint(t));
                seen.push(String::from_utf8(t.to_vec()).unwrap())
            },
        );
        assert_eq!(
            seen,
            ["1608", "10", "250", "19", "102", "50010", "a3F9", "2", "5e", "3", "12", "34", "0x7FFD"]
        );
        for line in [
            "step 12/40 loss=2.31 lr 3e-4 req=9f86d081884c7d65",
            "Ωmega 12ß34 ١٢ 56 DEADBEEF1",
            "x\u{2028}77\u{a0}88_99",
        ] {
            let mut cut = Vec::new();
            for_each_number(line, |t, fp| {
                assert_eq!(fp, fingerprint(&t.to_ascii_lowercase()));
                cut.push(String::from_utf8(t.to_ascii_lowercase()).unwrap())
            });
            let tokens: Vec<String> = super::super::index::line_tokens(line).filter(|t| is_number_token(t)).collect();
            assert_eq!(cut, tokens, "{line}");
        }
        assert_eq!(fingerprint(b"DEADBEEF1"), fingerprint(b"deadbeef1"));
        // A long run is left out, as the tokenizer leaves it out.
        let long = "7".repeat(super::super::index::LONG_TOKEN_BYTES);
        let mut none = true;
        for_each_number(&long, |_, _| none = false);
        assert!(none);
        assert!(is_number_token("007") && is_number_token("a3") && is_number_token("0x7f"));
        for word in ["cafe", "0x", "x7f", "k9d3w", "٣", ""] {
            assert!(!is_number_token(word), "{word}");
        }
        assert!(may_be_in_number("x7f") && may_be_in_number("dead") && !may_be_in_number("error"));
    }

    #[test]
    fn finds_the_blocks_of_each_number() {
        let rows = BLOCK_ROWS as usize * 3 + 10;
        let lines: Vec<String> = (0..rows)
            .map(|row| match row {
                5 => "request 4242 failed".to_string(),
                r if r == BLOCK_ROWS as usize * 2 + 1 => "retry of 4242".to_string(),
                r => format!("step {r} ok"),
            })
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        for index in indexes_of(&refs) {
            let b = index.block_rows();
            let (first, second) = (5 / b, (BLOCK_ROWS * 2 + 1) / b);
            assert_eq!(index.blocks_of("4242"), Some(vec![first, second]));
            assert_eq!(
                index.row_ranges("4242"),
                Some(vec![(first * b, (first + 1) * b), (second * b, (second + 1) * b)])
            );
            // The last block is short; adjacent blocks merge into one range.
            let last = format!("{}", rows - 1);
            let last_block = (rows as u32 - 1) / b;
            assert_eq!(index.row_ranges(&last), Some(vec![(last_block * b, rows as u32)]));
            let absent = index.blocks_of("999999999").unwrap();
            assert!(absent.is_empty() || matches!(index.layout, Layout::Bits { mixed: true, .. }));
            // Every number of every row is found in its own block, across
            // the offset table's groups.
            assert!(index.len() > GROUP_KEYS * 4);
            for row in (0..rows).step_by(7).filter(|r| *r != 5 && *r != BLOCK_ROWS as usize * 2 + 1) {
                let blocks = index.blocks_of(&row.to_string()).unwrap();
                assert!(blocks.contains(&(row as u32 / b)), "row {row}: {blocks:?}");
            }
        }
    }

    /// Random lines of numbers common and rare: in every format, each
    /// key's blocks are exactly the blocks whose lines hold a number with
    /// that key (a fingerprint, or its top bits); version 3 is much smaller
    /// than version 2 and version 4 than version 3; a number in no line
    /// finds a key at most about once in 2^SPARE_KEY_BITS lookups.
    #[test]
    fn every_format_gives_every_numbers_exact_blocks() {
        for (seed, rows) in [(1, 1), (2, 255), (3, 1025), (4, 40_000), (5, 3_000)] {
            let mut rng = fastrand::Rng::with_seed(seed);
            let lines: Vec<String> = (0..rows)
                .map(|_| {
                    let mut line = format!("step {} loss 0.{}", rng.u32(0..50), rng.u32(0..1000));
                    for _ in 0..rng.usize(0..4) {
                        match rng.u8(0..4) {
                            0 => line.push_str(&format!(" id={:x}", rng.u64(..))),
                            1 => line.push_str(&format!(" port {}", rng.u32(0..65536))),
                            2 => line.push_str(&format!(" rank {}", rng.u32(0..8))),
                            _ => line.push_str(&format!(" 0x{:x}", rng.u32(..))),
                        }
                    }
                    line
                })
                .collect();
            let mut numbers: Vec<(String, u32, u32)> = Vec::new();
            for (row, line) in lines.iter().enumerate() {
                for_each_number(line, |token, fingerprint| {
                    numbers.push((String::from_utf8(token.to_vec()).unwrap(), fingerprint, row as u32))
                });
            }
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let v4 = builder_of(&refs).finish().unwrap();
            let v3 = old_builder_of(&refs).finish_v3();
            let v2 = old_builder_of(&refs).finish_v2();
            if rows >= 3_000 {
                assert!(v3.len() * 3 < v2.len() * 2, "{} bytes against {}", v3.len(), v2.len());
                assert!(v4.len() * 4 < v3.len() * 3, "{} bytes against {}", v4.len(), v3.len());
            }
            for index in indexes_of(&refs) {
                let mut expected: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
                for (_, fingerprint, row) in &numbers {
                    expected
                        .entry(key_in(&index, *fingerprint))
                        .or_default()
                        .push(row / index.block_rows());
                }
                for blocks in expected.values_mut() {
                    blocks.sort_unstable();
                    blocks.dedup();
                }
                assert_eq!(index.len(), expected.len());
                for (token, fingerprint, _) in &numbers {
                    let blocks = &expected[&key_in(&index, *fingerprint)];
                    assert_eq!(index.blocks_of(token).as_ref(), Some(blocks), "{token}");
                }
                // Numbers in no line: nothing, or the blocks of the key
                // they share with one that is.
                let mut found = 0;
                for _ in 0..4_000 {
                    let absent = format!("{}", rng.u64(1 << 40..));
                    let blocks = index.blocks_of(&absent).unwrap();
                    let key = key_in(&index, fingerprint(absent.as_bytes()));
                    assert_eq!(blocks, expected.get(&key).cloned().unwrap_or_default());
                    found += usize::from(!blocks.is_empty());
                }
                assert!(found <= (2 * 4_000) >> SPARE_KEY_BITS, "{found} of 4000 absent numbers found a key");
            }
        }
    }

    /// Block words are listed in the file and found in exactly the blocks
    /// of the rows that hold them, beside the numbers of the same rows.
    #[test]
    fn block_words_are_listed_and_found_in_their_blocks() {
        let words: Vec<String> = ["executor", "info", "stage"].map(String::from).to_vec();
        let mut builder = NumberIndexBuilder::with_words(words.clone()).unwrap();
        let rows = BLOCK_ROWS * 5 + 3;
        let mut expected: [Vec<u32>; 3] = Default::default();
        let mut rng = fastrand::Rng::with_seed(11);
        for row in 0..rows {
            // `executor` (bit 0) in random rows; `info` (bit 1) in blocks 1
            // and 4 only; `stage` (bit 2) in one row.
            let mut set: WordSet = u128::from(rng.bool());
            if [1, 4].contains(&(row / BLOCK_ROWS)) && rng.u8(..) < 8 {
                set |= 1 << 1;
            }
            if row == BLOCK_ROWS * 3 + 7 {
                set |= 1 << 2;
            }
            for (i, blocks) in expected.iter_mut().enumerate() {
                if set & (1 << i) != 0 && blocks.last() != Some(&(row / BLOCK_ROWS)) {
                    blocks.push(row / BLOCK_ROWS);
                }
            }
            builder.add_row(row, &numbers_of(&format!("id {row}")), set);
        }
        let index = NumberIndex::open(OwnedBytes::new(builder.finish().unwrap()), u64::from(rows)).unwrap();
        assert_eq!(index.words(), words.as_slice());
        assert!(index.holds_word("info") && !index.holds_word("inf") && !index.holds_word("warn"));
        for (word, blocks) in ["executor", "info", "stage"].iter().zip(&expected) {
            assert_eq!(index.blocks_of(word).as_ref(), Some(blocks), "{word}");
        }
        assert_eq!(expected[2], [3]);
        assert_eq!(index.row_ranges("stage"), Some(vec![(3 * BLOCK_ROWS, 4 * BLOCK_ROWS)]));
        // The numbers beside them are found as before.
        assert!(index.blocks_of("4242").unwrap().contains(&(4242 / BLOCK_ROWS)));
        // A file of no words lists none, and older formats none either.
        assert!(indexes_of(&["port 8080"]).iter().all(|index| index.words().is_empty()));
        // Lists that cannot be block words are refused.
        for bad in [vec!["b", "a"], vec!["a", "a"], vec!["Info"], vec!["8080"], vec![""], vec!["grüße"]] {
            let bad: Vec<String> = bad.into_iter().map(String::from).collect();
            assert!(NumberIndexBuilder::with_words(bad.clone()).is_err(), "{bad:?}");
        }
        let too_many: Vec<String> = (0..=MAX_BLOCK_WORDS).map(|n| format!("w{n:04}")).collect();
        assert!(NumberIndexBuilder::with_words(too_many).is_err());
        let mut long = vec!["a".repeat(MAX_BLOCK_WORD_BYTES)];
        assert!(NumberIndexBuilder::with_words(long.clone()).is_ok());
        long[0].push('a');
        assert!(NumberIndexBuilder::with_words(long).is_err());
        // A file whose words are out of order is refused.
        let mut two = NumberIndexBuilder::with_words(vec!["ab".into(), "cd".into()]).unwrap();
        two.add_row(0, &[], 0b11);
        let mut swapped = two.finish().unwrap();
        swapped[HEADER_BYTES_V5 + 1] = b'x';
        let err = NumberIndex::open(OwnedBytes::new(resealed(swapped)), 1).err().unwrap().to_string();
        assert!(err.contains("block words are not"), "{err}");
    }

    /// A file that version 3's writer (commit f1fa1e1) wrote for 300 rows:
    /// `request id 4242 failed` at rows 5 and 290, `step {n % 3} port 8080`
    /// on the others.
    const WRITTEN_BY_VERSION_3: &str =
        "574546544e554d33000100002c01000005000000130000001d0000002303da08590f6229000000007aa20800d0990900807e3c19243592d8c1720d";

    #[test]
    fn a_file_written_by_version_3s_writer_is_read_as_before() {
        let hex = WRITTEN_BY_VERSION_3.as_bytes();
        let bytes: Vec<u8> = hex
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect();
        let index = NumberIndex::open(OwnedBytes::new(bytes), 300).unwrap();
        assert_eq!((index.block_rows(), index.len()), (BLOCK_ROWS_V3, 5));
        for number in ["4242", "8080", "0", "1", "2"] {
            assert_eq!(index.blocks_of(number), Some(vec![0, 1]), "{number}");
        }
        assert_eq!(index.row_ranges("4242"), Some(vec![(0, 300)]));
        for absent in ["7", "42", "80", "4243"] {
            assert_eq!(index.blocks_of(absent), Some(Vec::new()), "{absent}");
        }
    }

    #[test]
    fn short_numbers_spread_over_the_keys() {
        // 128 numbers in 2^15 keys: a few share one at most (FNV-1a's top
        // 15 bits alone take 13 values).
        let keys: std::collections::BTreeSet<u32> = (0..128).map(|n| key_of(fingerprint(n.to_string().as_bytes()), 15)).collect();
        assert!(keys.len() >= 124, "{} keys", keys.len());
        assert!(keys.iter().all(|k| *k < 1 << 15));
        // Whole keys are the mixed fingerprint, one to one.
        let whole: std::collections::BTreeSet<u32> = (0..1000u32).map(|n| key_of(n, 32)).collect();
        assert_eq!(whole.len(), 1000);
    }

    #[test]
    fn bits_are_read_back_as_written() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut writer = BitWriter::default();
        let mut written = Vec::new();
        for _ in 0..5_000 {
            let (kind, k) = (rng.u8(0..3), rng.u32(0..32));
            // Rice quotients below 64 (a unary run is a bit per unit).
            let value = match kind {
                1 => rng.u32(0..=(64u64 << k).min(u64::from(u32::MAX)) as u32),
                _ => rng.u32(1..) >> rng.u32(0..32),
            };
            match kind {
                0 => writer.put(value, k),
                1 => writer.rice(value, k),
                _ => writer.gamma(value.max(1)),
            }
            written.push((kind, value, k));
        }
        let bits = writer.bits();
        let bytes = writer.finish();
        let mut reader = BitReader {
            bytes: &bytes,
            at: 0,
            end: bits,
        };
        for (kind, value, k) in written {
            match kind {
                0 => assert_eq!(reader.get(k), Some(low_bits(value, k))),
                1 => assert_eq!(reader.rice(k), Some(value)),
                _ => assert_eq!(reader.gamma(), Some(value.max(1))),
            }
        }
        assert_eq!(reader.at, bits);
        assert_eq!(reader.unary(), None);
        assert_eq!(reader.get(1), None);
    }

    /// `bytes` with its version 3, 4 or 5 checksum made to match again (to
    /// reach the checks behind it).
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        if !(b'3'..=b'5').contains(&bytes[7]) {
            return bytes;
        }
        let header = header_bytes(bytes[7] - b'0');
        let crc = checksum(&bytes, header, bytes[7] >= b'4');
        bytes[header - 4..header].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_damaged_file_is_refused_or_read_as_unknown() {
        assert!(NumberIndex::open(OwnedBytes::new(b"WEFTNUM0".to_vec()), 0).is_err());
        let one = || builder_of(&["port 8080"]);
        let old = || old_builder_of(&["port 8080"]);
        for whole in [one().finish().unwrap(), one().finish_v4(), old().finish_v3(), old().finish_v2()] {
            let mut cut = whole.clone();
            cut.pop();
            let err = NumberIndex::open(OwnedBytes::new(cut), 1).err().unwrap().to_string();
            assert!(err.contains("number index"), "{err}");
            // The development format and a row count that is not the
            // split's are refused.
            let mut v1 = whole.clone();
            v1[7] = b'1';
            let err = NumberIndex::open(OwnedBytes::new(v1), 1).err().unwrap().to_string();
            assert!(err.contains("format 1 is not 2, 3, 4 or 5"), "{err}");
            let err = NumberIndex::open(OwnedBytes::new(whole.clone()), 2).err().unwrap().to_string();
            assert!(err.contains("covers 1 rows, the split has 2"), "{err}");
        }
        // Postings cut short with a header that agrees: the lookup of the
        // last key reports that it cannot tell.
        let lines: Vec<String> = (0..300).map(|n| format!("n {n}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let last_of = |index: &NumberIndex| {
            (0..300)
                .map(|n| n.to_string())
                .max_by_key(|t| key_in(index, fingerprint(t.as_bytes())))
                .unwrap()
        };
        for whole in [
            builder_of(&refs).finish().unwrap(),
            builder_of(&refs).finish_v4(),
            old_builder_of(&refs).finish_v3(),
            old_builder_of(&refs).finish_v2(),
        ] {
            let last = last_of(&NumberIndex::open(OwnedBytes::new(whole.clone()), 300).unwrap());
            let mut short = whole.clone();
            let postings_len = read_u32(&short, 20);
            short[20..24].copy_from_slice(&(postings_len - 1).to_le_bytes());
            short.pop();
            let index = NumberIndex::open(OwnedBytes::new(resealed(short)), 300).unwrap();
            assert_eq!(index.blocks_of(&last), None);
            assert!(index.blocks_of("7").is_some());
        }
        // Keys out of order: in version 2 every key is listed, in versions
        // 3 and 4 the first of each group.
        let two_keys = builder_of(&["port 8080 and 9090"]).finish_v2();
        let mut swapped = two_keys.clone();
        swapped.copy_within(HEADER_BYTES..HEADER_BYTES + 4, HEADER_BYTES + 4);
        swapped[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&two_keys[HEADER_BYTES + 4..HEADER_BYTES + 8]);
        let err = NumberIndex::open(OwnedBytes::new(swapped), 1).err().unwrap().to_string();
        assert!(err.contains("not in increasing order"), "{err}");
        let line: String = (0..GROUP_KEYS * 2).map(|n| format!(" {n}")).collect();
        let groups = builder_of(&[&line]).finish().unwrap();
        let (first, second) = (HEADER_BYTES_V5, HEADER_BYTES_V5 + 8);
        let mut swapped = groups.clone();
        swapped[first..first + 4].copy_from_slice(&groups[second..second + 4]);
        swapped[second..second + 4].copy_from_slice(&groups[first..first + 4]);
        let err = NumberIndex::open(OwnedBytes::new(resealed(swapped.clone())), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("keys are not in increasing order"), "{err}");
        // Unsealed, the same damage fails the checksum first.
        let err = NumberIndex::open(OwnedBytes::new(swapped), 1).err().unwrap().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
        let mut offsets = groups.clone();
        offsets[second + 4..second + 8].copy_from_slice(&0u32.to_le_bytes());
        let err = NumberIndex::open(OwnedBytes::new(resealed(offsets)), 1).err().unwrap().to_string();
        assert!(err.contains("offsets are not in increasing order"), "{err}");
        // A block size other than the one version 5 is written with, and
        // keys of no bits or more than 32.
        let mut blocks = groups.clone();
        blocks[8..12].copy_from_slice(&(BLOCK_ROWS * 2).to_le_bytes());
        assert!(NumberIndex::open(OwnedBytes::new(resealed(blocks)), 1).is_err());
        for bits in [0u32, 33] {
            let mut wide = groups.clone();
            wide[28..32].copy_from_slice(&bits.to_le_bytes());
            assert!(NumberIndex::open(OwnedBytes::new(resealed(wide)), 1).is_err());
        }
        // Any single damaged byte of a version 5 or 4 file, header
        // included, is refused; with the checksum made to match, it is
        // refused or its lookups answer or say they cannot tell; never a
        // panic.
        let lines: Vec<String> = (0..600)
            .map(|n| format!("step {} id {:x} port {}", n / 3, n * 7919, n % 50))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mut rng = fastrand::Rng::with_seed(3);
        // Version 3's checksum leaves its header out.
        let words = || NumberIndexBuilder::with_words(vec!["id".into(), "port".into(), "step".into()]).unwrap();
        let mut with_words = words();
        for (row, line) in refs.iter().enumerate() {
            with_words.add_row(row as u32, &numbers_of(line), if row % 5 == 0 { 0b101 } else { 0b10 });
        }
        for (whole, header_checked) in [
            (with_words.finish().unwrap(), true),
            (builder_of(&refs).finish().unwrap(), true),
            (builder_of(&refs).finish_v4(), true),
            (old_builder_of(&refs).finish_v3(), false),
        ] {
            for _ in 0..3_000 {
                let mut damaged = whole.clone();
                let at = rng.usize(0..damaged.len());
                damaged[at] ^= rng.u8(1..);
                if header_checked || at >= HEADER_BYTES_V3 {
                    assert!(NumberIndex::open(OwnedBytes::new(damaged.clone()), 600).is_err());
                }
                if let Ok(index) = NumberIndex::open(OwnedBytes::new(resealed(damaged)), 600) {
                    assert!(index.words().iter().all(|w| may_be_block_word(w)));
                    for token in ["7", "49", "1f", "3d5", "deadbeef", "port"] {
                        let _ = index.row_ranges(token);
                    }
                }
            }
        }
    }
}
