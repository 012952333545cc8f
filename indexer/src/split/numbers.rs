//! The number index of a split: which blocks of [`BLOCK_ROWS`] rows hold
//! each number token, decimal or hexadecimal (see [`is_number_token`]:
//! sizes, ports, octets of addresses, steps, the digits of timestamps and
//! decimals, request and trace ids, hashes, `0x` addresses).
//!
//! Number tokens are almost all of a log's distinct terms and over a third
//! of its tokens; in tantivy each was a term dictionary entry and a
//! posting per row. Here a number is a 32-bit fingerprint and a list of
//! blocks, so a search for a number reads the rows of a few blocks and
//! checks their lines (queries always check: a fingerprint can collide, a
//! block holds other rows). Words and other tokens (`blk`, `k9d3w`,
//! `zq7x`) stay in tantivy, exact. A substring or prefix can only be part
//! of a number token if it is made of hex digits and `x`
//! ([`may_be_in_number`]); only those lose their index prefilter.
//!
//! File layout (`numbers.idx` inside the split's index directory, little
//! endian): the magic `WEFTNUM2`; `block_rows`, `rows`, `keys`,
//! `postings_len` as u32; `keys` sorted fingerprints (u32 each); one u32
//! offset into the postings per [`GROUP_KEYS`] keys, plus the end; then
//! per key a varint count and varint block numbers, delta-coded.

use std::io::Write;
use std::path::Path;

use tantivy::directory::OwnedBytes;

use crate::IndexerError;

/// Rows per block: a block's lines are about one Parquet data page of text.
pub const BLOCK_ROWS: u32 = 256;
/// Name of the number index inside a split's index directory.
pub const FILE_NAME: &str = "numbers.idx";
/// Keys per entry of the offset table.
pub const GROUP_KEYS: usize = 64;
/// Format version, recorded in the split's catalog entry. Version 1 (a
/// development format that held decimal numbers only) is refused.
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"WEFTNUM2";
const HEADER_BYTES: usize = 8 + 4 * 4;

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

/// Byte classes of the scanner, as bits: decimal digits, hex letters,
/// `x`, other ASCII letters; 0 for separators.
const DIGIT: u8 = 1;
const HEX_LETTER: u8 = 2;
const X: u8 = 4;
const LETTER: u8 = 8;
const CLASSES: [u8; 128] = {
    let mut classes = [0; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        classes[b] = if c.is_ascii_digit() {
            DIGIT
        } else if matches!(c, b'a'..=b'f' | b'A'..=b'F') {
            HEX_LETTER
        } else if c == b'x' || c == b'X' {
            X
        } else if c.is_ascii_alphabetic() {
            LETTER
        } else {
            0
        };
        b += 1;
    }
    classes
};

/// Calls `visit` with each number token of `line` (before lowercasing)
/// and its fingerprint, as the `line` tokenizer would cut it
/// (alphanumeric runs shorter than [`super::index::LONG_TOKEN_BYTES`]).
pub fn for_each_number(line: &str, mut visit: impl FnMut(&[u8], u32)) {
    let long = super::index::LONG_TOKEN_BYTES;
    if !line.is_ascii() {
        for run in line.split(|c: char| !c.is_alphanumeric()) {
            if run.len() < long && is_number_token(run) {
                visit(run.as_bytes(), fingerprint(run.as_bytes()));
            }
        }
        return;
    }
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if CLASSES[usize::from(bytes[i])] == 0 {
            i += 1;
            continue;
        }
        // One run: its classes first, hashed only if it is a number.
        let start = i;
        let mut seen = 0;
        while i < bytes.len() {
            let class = CLASSES[usize::from(bytes[i])];
            if class == 0 {
                break;
            }
            seen |= class;
            i += 1;
        }
        if seen & DIGIT == 0 || seen & LETTER != 0 || i - start >= long {
            continue;
        }
        let run = &bytes[start..i];
        if seen & X != 0 && !number_run(run) {
            continue;
        }
        visit(run, fingerprint(run));
    }
}

/// Collects the (fingerprint, block) pairs of a split's rows, in row order.
#[derive(Default)]
pub struct NumberIndexBuilder {
    pairs: Vec<u64>,
    block: Vec<u32>,
    block_no: u32,
    rows: u32,
}

impl NumberIndexBuilder {
    /// Adds row `row` (rows come in increasing order).
    pub fn add_line(&mut self, row: u32, line: &str) {
        let block_no = row / BLOCK_ROWS;
        if block_no != self.block_no {
            self.close_block();
            self.block_no = block_no;
        }
        let block = &mut self.block;
        for_each_number(line, |_, fingerprint| block.push(fingerprint));
        self.rows = row + 1;
    }

    fn close_block(&mut self) {
        self.block.sort_unstable();
        self.block.dedup();
        let block_no = u64::from(self.block_no);
        self.pairs.extend(self.block.drain(..).map(|fp| (u64::from(fp) << 32) | block_no));
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.close_block();
        self.pairs.sort_unstable();
        let mut keys: Vec<u32> = Vec::new();
        let mut offsets: Vec<u32> = Vec::new();
        let mut postings: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < self.pairs.len() {
            let key = (self.pairs[i] >> 32) as u32;
            let end = i + self.pairs[i..].iter().take_while(|p| (**p >> 32) as u32 == key).count();
            if keys.len().is_multiple_of(GROUP_KEYS) {
                offsets.push(postings.len() as u32);
            }
            keys.push(key);
            put_varint(&mut postings, (end - i) as u32);
            let mut previous = 0u32;
            for pair in &self.pairs[i..end] {
                let block = *pair as u32;
                put_varint(&mut postings, block - previous);
                previous = block;
            }
            i = end;
        }
        offsets.push(postings.len() as u32);
        let mut out = Vec::with_capacity(HEADER_BYTES + 4 * (keys.len() + offsets.len()) + postings.len());
        out.extend_from_slice(MAGIC);
        for n in [BLOCK_ROWS, self.rows, keys.len() as u32, postings.len() as u32] {
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
        let io = |source| IndexerError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(io)?;
        file.write_all(&self.finish()).map_err(io)?;
        file.sync_all().map_err(io)?;
        // tantivy synced the directory before this file was in it.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

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
    postings_at: usize,
    postings_len: usize,
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
        if slice.len() < HEADER_BYTES || slice[..7] != MAGIC[..7] {
            return Err(corrupt("not a weft number index (bad magic or shorter than its header)"));
        }
        if slice[7] != MAGIC[7] {
            return Err(corrupt(&format!(
                "format {} is not {VERSION} (a development format; re-index the split)",
                char::from(slice[7])
            )));
        }
        let block_rows = read_u32(slice, 8);
        let indexed_rows = read_u32(slice, 12);
        let keys = read_u32(slice, 16) as usize;
        let postings_len = read_u32(slice, 20) as usize;
        let groups = keys.div_ceil(GROUP_KEYS) + 1;
        let postings_at = keys
            .checked_add(groups)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(HEADER_BYTES));
        if block_rows == 0 || postings_at.and_then(|at| at.checked_add(postings_len)) != Some(slice.len()) {
            return Err(corrupt(&format!(
                "{} bytes do not hold {keys} keys and {postings_len} bytes of postings in blocks of {block_rows} rows",
                slice.len()
            )));
        }
        if u64::from(indexed_rows) != rows {
            return Err(corrupt(&format!("it covers {indexed_rows} rows, the split has {rows}")));
        }
        let keys_sorted = (1..keys).all(|i| read_u32(slice, HEADER_BYTES + 4 * (i - 1)) < read_u32(slice, HEADER_BYTES + 4 * i));
        if !keys_sorted {
            return Err(corrupt("its fingerprints are not in increasing order"));
        }
        let postings_at = postings_at.expect("checked above");
        Ok(NumberIndex {
            bytes,
            block_rows,
            rows: indexed_rows,
            keys,
            postings_at,
            postings_len,
        })
    }

    /// Number of distinct fingerprints.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// True when no number was indexed.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    fn key(&self, i: usize) -> u32 {
        read_u32(self.bytes.as_slice(), HEADER_BYTES + 4 * i)
    }

    /// Blocks that may hold `token`; `None` when the postings cannot be
    /// read (a damaged file: the caller must then consider every row).
    pub fn blocks_of(&self, token: &str) -> Option<Vec<u32>> {
        let key = fingerprint(token.as_bytes());
        let (mut lo, mut hi) = (0usize, self.keys);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == self.keys || self.key(lo) != key {
            return Some(Vec::new());
        }
        let slice = self.bytes.as_slice();
        let offset = read_u32(slice, HEADER_BYTES + 4 * (self.keys + lo / GROUP_KEYS)) as usize;
        let postings = &slice[self.postings_at..self.postings_at + self.postings_len];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(lines: &[&str]) -> NumberIndex {
        let mut builder = NumberIndexBuilder::default();
        for (row, line) in lines.iter().enumerate() {
            builder.add_line(row as u32, line);
        }
        NumberIndex::open(OwnedBytes::new(builder.finish()), lines.len() as u64).unwrap()
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
        let index = index_of(&refs);
        assert_eq!(index.blocks_of("4242"), Some(vec![0, 2]));
        let b = BLOCK_ROWS;
        assert_eq!(index.row_ranges("4242"), Some(vec![(0, b), (2 * b, 3 * b)]));
        // The last block is short; adjacent blocks merge into one range.
        let last = format!("{}", rows - 1);
        assert_eq!(index.row_ranges(&last), Some(vec![(3 * b, rows as u32)]));
        assert_eq!(index.blocks_of("999999999"), Some(Vec::new()));
        // Every number of every row is found in its own block, across the
        // offset table's groups.
        assert!(index.len() > GROUP_KEYS * 4);
        for row in (0..rows).step_by(7).filter(|r| *r != 5 && *r != BLOCK_ROWS as usize * 2 + 1) {
            let blocks = index.blocks_of(&row.to_string()).unwrap();
            assert!(blocks.contains(&(row as u32 / b)), "row {row}: {blocks:?}");
        }
    }

    #[test]
    fn a_damaged_file_is_refused_or_read_as_unknown() {
        assert!(NumberIndex::open(OwnedBytes::new(b"WEFTNUM0".to_vec()), 0).is_err());
        let whole = {
            let mut builder = NumberIndexBuilder::default();
            builder.add_line(0, "port 8080");
            builder.finish()
        };
        let mut cut = whole.clone();
        cut.pop();
        let err = NumberIndex::open(OwnedBytes::new(cut), 1).err().unwrap().to_string();
        assert!(err.contains("number index"), "{err}");
        // The development format, a row count that is not the split's, and
        // keys out of order are refused.
        let mut v1 = whole.clone();
        v1[7] = b'1';
        let err = NumberIndex::open(OwnedBytes::new(v1), 1).err().unwrap().to_string();
        assert!(err.contains("format 1 is not 2"), "{err}");
        let err = NumberIndex::open(OwnedBytes::new(whole.clone()), 2).err().unwrap().to_string();
        assert!(err.contains("covers 1 rows, the split has 2"), "{err}");
        let two_keys = {
            let mut builder = NumberIndexBuilder::default();
            builder.add_line(0, "port 8080 and 9090");
            builder.finish()
        };
        let mut swapped = two_keys.clone();
        swapped.copy_within(HEADER_BYTES..HEADER_BYTES + 4, HEADER_BYTES + 4);
        swapped[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&two_keys[HEADER_BYTES + 4..HEADER_BYTES + 8]);
        let err = NumberIndex::open(OwnedBytes::new(swapped), 1).err().unwrap().to_string();
        assert!(err.contains("not in increasing order"), "{err}");
        // Postings cut short with a header that agrees: the lookup reports
        // that it cannot tell.
        let mut short = whole.clone();
        let postings_len = read_u32(&short, 20);
        short[20..24].copy_from_slice(&(postings_len - 1).to_le_bytes());
        short.pop();
        let index = NumberIndex::open(OwnedBytes::new(short), 1).unwrap();
        assert_eq!(index.blocks_of("8080"), None);
    }
}
