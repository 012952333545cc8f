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
//! endian), version 3: the magic `WEFTNUM3`; `block_rows`, `rows`, `keys`,
//! `stream_bytes`, `key_bits` and the CRC-32 of everything after the
//! header as u32 (a flipped bit would otherwise point a number at the
//! wrong blocks without an error); per [`GROUP_KEYS`] keys their
//! first fingerprint and the bit offset of their postings (u32 each); then
//! a bit stream (least significant bit first). Per key: unless it opens
//! its group, the gap from the previous fingerprint less one, Rice-coded
//! with `key_bits`; its block count, Elias-gamma coded; a single block in
//! a fixed width (enough bits for the split's last block); more blocks
//! Rice-coded with a parameter from the count and the split's blocks, the
//! first as it is and each next one as its gap from the one before less
//! one. Most numbers (ids, hashes, fractions) sit in one block:
//! such a key takes about 27 bits here, 56 in version 2.
//!
//! Version 2 (`WEFTNUM2`, still read): `block_rows`, `rows`, `keys`,
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
/// Format version written, recorded in the split's catalog entry.
/// Version 2 is read as well; version 1 (a development format that held
/// decimal numbers only) is refused.
pub const VERSION: u32 = 3;
const MAGIC: &[u8; 7] = b"WEFTNUM";
const HEADER_BYTES: usize = 8 + 4 * 4;
const HEADER_BYTES_V3: usize = 8 + 6 * 4;
/// Where version 3's checksum is: the header's last u32.
const CHECKSUM_AT: usize = HEADER_BYTES_V3 - 4;

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
    #[cfg(test)]
    pub fn add_line(&mut self, row: u32, line: &str) {
        self.start_row(row);
        let block = &mut self.block;
        for_each_number(line, |_, fingerprint| block.push(fingerprint));
    }

    /// Adds row `row` (rows come in increasing order) whose number tokens
    /// have `fingerprints` (as [`for_each_number`] finds them).
    pub fn add_fingerprints(&mut self, row: u32, fingerprints: &[u32]) {
        self.start_row(row);
        self.block.extend_from_slice(fingerprints);
    }

    fn start_row(&mut self, row: u32) {
        let block_no = row / BLOCK_ROWS;
        if block_no != self.block_no {
            self.close_block();
            self.block_no = block_no;
        }
        self.rows = row + 1;
    }

    fn close_block(&mut self) {
        self.block.sort_unstable();
        self.block.dedup();
        let block_no = u64::from(self.block_no);
        self.pairs.extend(self.block.drain(..).map(|fp| (u64::from(fp) << 32) | block_no));
    }

    /// Distinct fingerprints and their blocks, in fingerprint order (the
    /// pairs sorted).
    fn keys(&self) -> impl Iterator<Item = (u32, &[u64])> + '_ {
        self.pairs
            .chunk_by(|a, b| a >> 32 == b >> 32)
            .map(|run| ((run[0] >> 32) as u32, run))
    }

    /// The file's bytes (version 3).
    pub fn finish(mut self) -> Result<Vec<u8>, IndexerError> {
        self.close_block();
        self.pairs.sort_unstable();
        let too_big = || IndexerError::Internal("number index: more than 2^32 bits of postings".into());
        let blocks = self.rows.div_ceil(BLOCK_ROWS);
        let block_width = bit_width(blocks.saturating_sub(1));
        let keys = self.keys().count();
        let key_bits = rice_parameter((1u64 << 32) / keys.max(1) as u64);
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
        let mut out = Vec::with_capacity(HEADER_BYTES_V3 + 4 * table.len() + stream.len());
        out.extend_from_slice(MAGIC);
        out.push(b'3');
        // The checksum (zero here) is filled in last.
        for n in [BLOCK_ROWS, self.rows, keys as u32, stream.len() as u32, key_bits, 0] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in &table {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&stream);
        let crc = crc32fast::hash(&out[HEADER_BYTES_V3..]);
        out[CHECKSUM_AT..HEADER_BYTES_V3].copy_from_slice(&crc.to_le_bytes());
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
}

/// Where the parts of an opened file are, by version.
enum Layout {
    V2 {
        postings_at: usize,
        postings_len: usize,
    },
    V3 {
        stream_at: usize,
        stream_bytes: usize,
        key_bits: u32,
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
        if version != b'2' && version != b'3' {
            return Err(corrupt(&format!(
                "format {} is neither 2 nor 3 (a development format; re-index the split)",
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
        let (tables_at, layout) = if version == b'2' {
            let at = sizes(HEADER_BYTES, keys.checked_add(groups + 1));
            let layout = at.map(|at| Layout::V2 {
                postings_at: at,
                postings_len: data_len,
            });
            (HEADER_BYTES, layout)
        } else {
            let key_bits = if slice.len() >= HEADER_BYTES_V3 {
                read_u32(slice, 24)
            } else {
                u32::MAX
            };
            let at = sizes(HEADER_BYTES_V3, Some(2 * groups)).filter(|_| key_bits < 32);
            let layout = at.map(|at| Layout::V3 {
                stream_at: at,
                stream_bytes: data_len,
                key_bits,
            });
            (HEADER_BYTES_V3, layout)
        };
        // Version 3 is written with this block size only.
        let block_rows_known = block_rows > 0 && (version == b'2' || block_rows == BLOCK_ROWS);
        let (Some(layout), true) = (layout, block_rows_known) else {
            return Err(corrupt(&format!(
                "{} bytes do not hold {keys} keys and {data_len} bytes of postings in blocks of {block_rows} rows",
                slice.len()
            )));
        };
        if u64::from(indexed_rows) != rows {
            return Err(corrupt(&format!("it covers {indexed_rows} rows, the split has {rows}")));
        }
        if matches!(layout, Layout::V3 { .. }) && crc32fast::hash(&slice[HEADER_BYTES_V3..]) != read_u32(slice, CHECKSUM_AT) {
            return Err(corrupt("its checksum does not match its contents"));
        }
        // Version 2 lists every key; version 3 the first of each group.
        let (listed, stride) = match layout {
            Layout::V2 { .. } => (keys, 4),
            Layout::V3 { .. } => (groups, 8),
        };
        let key_at = |i: usize| read_u32(slice, tables_at + stride * i);
        if !(1..listed).all(|i| key_at(i - 1) < key_at(i)) {
            return Err(corrupt("its fingerprints are not in increasing order"));
        }
        if let Layout::V3 { stream_bytes, .. } = layout {
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

    /// Blocks that may hold `token`; `None` when the postings cannot be
    /// read (a damaged file: the caller must then consider every row).
    pub fn blocks_of(&self, token: &str) -> Option<Vec<u32>> {
        let key = fingerprint(token.as_bytes());
        match self.layout {
            Layout::V2 { postings_at, postings_len } => self.blocks_v2(key, postings_at, postings_len),
            Layout::V3 {
                stream_at,
                stream_bytes,
                key_bits,
            } => self.blocks_v3(key, stream_at, stream_bytes, key_bits),
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

    fn blocks_v3(&self, key: u32, stream_at: usize, stream_bytes: usize, key_bits: u32) -> Option<Vec<u32>> {
        let slice = self.bytes.as_slice();
        let entry = |g: usize| read_u32(slice, HEADER_BYTES_V3 + 8 * g);
        let groups = self.keys.div_ceil(GROUP_KEYS);
        // The group whose first fingerprint is the last at or below `key`.
        let Some(group) = partition_point(groups, |g| entry(g) <= key).checked_sub(1) else {
            return Some(Vec::new());
        };
        let mut stream = BitReader {
            bytes: &slice[stream_at..stream_at + stream_bytes],
            at: u64::from(read_u32(slice, HEADER_BYTES_V3 + 8 * group + 4)),
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
        let mut builder = NumberIndexBuilder::default();
        for (row, line) in lines.iter().enumerate() {
            builder.add_line(row as u32, line);
        }
        builder
    }

    /// The index of `lines` in the format written now and in version 2.
    fn indexes_of(lines: &[&str]) -> [NumberIndex; 2] {
        let rows = lines.len() as u64;
        [
            NumberIndex::open(OwnedBytes::new(builder_of(lines).finish().unwrap()), rows).unwrap(),
            NumberIndex::open(OwnedBytes::new(builder_of(lines).finish_v2()), rows).unwrap(),
        ]
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
            assert_eq!(index.blocks_of("4242"), Some(vec![0, 2]));
            let b = BLOCK_ROWS;
            assert_eq!(index.row_ranges("4242"), Some(vec![(0, b), (2 * b, 3 * b)]));
            // The last block is short; adjacent blocks merge into one range.
            let last = format!("{}", rows - 1);
            assert_eq!(index.row_ranges(&last), Some(vec![(3 * b, rows as u32)]));
            assert_eq!(index.blocks_of("999999999"), Some(Vec::new()));
            // Every number of every row is found in its own block, across
            // the offset table's groups.
            assert!(index.len() > GROUP_KEYS * 4);
            for row in (0..rows).step_by(7).filter(|r| *r != 5 && *r != BLOCK_ROWS as usize * 2 + 1) {
                let blocks = index.blocks_of(&row.to_string()).unwrap();
                assert!(blocks.contains(&(row as u32 / b)), "row {row}: {blocks:?}");
            }
        }
    }

    /// Random lines of numbers common and rare: every fingerprint's blocks
    /// in both formats are exactly the blocks whose lines hold a number
    /// with that fingerprint, and version 3 is much smaller.
    #[test]
    fn both_formats_give_every_numbers_exact_blocks() {
        for (seed, rows) in [(1, 1), (2, 255), (3, 257), (4, 40_000), (5, 3_000)] {
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
            let mut expected: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            let mut tokens: std::collections::BTreeMap<u32, String> = Default::default();
            for (row, line) in lines.iter().enumerate() {
                for_each_number(line, |token, key| {
                    let blocks = expected.entry(key).or_default();
                    let block = row as u32 / BLOCK_ROWS;
                    if blocks.last() != Some(&block) {
                        blocks.push(block);
                    }
                    tokens.entry(key).or_insert_with(|| String::from_utf8(token.to_vec()).unwrap());
                });
            }
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let v3 = builder_of(&refs).finish().unwrap();
            let v2 = builder_of(&refs).finish_v2();
            if rows >= 3_000 {
                assert!(v3.len() * 3 < v2.len() * 2, "{} bytes against {}", v3.len(), v2.len());
            }
            for index in indexes_of(&refs) {
                assert_eq!(index.len(), expected.len());
                for (key, blocks) in &expected {
                    assert_eq!(index.blocks_of(&tokens[key]).as_ref(), Some(blocks), "{}", tokens[key]);
                }
                // Numbers in no line: nothing (or a fingerprint's twin).
                for _ in 0..200 {
                    let absent = format!("{}", rng.u64(1 << 40..));
                    let blocks = index.blocks_of(&absent).unwrap();
                    assert!(blocks.is_empty() || expected.contains_key(&fingerprint(absent.as_bytes())));
                }
            }
        }
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

    /// `bytes` with its version 3 checksum made to match again (to reach
    /// the checks behind it).
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes[7] == b'3' {
            let crc = crc32fast::hash(&bytes[HEADER_BYTES_V3..]);
            bytes[CHECKSUM_AT..HEADER_BYTES_V3].copy_from_slice(&crc.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn a_damaged_file_is_refused_or_read_as_unknown() {
        assert!(NumberIndex::open(OwnedBytes::new(b"WEFTNUM0".to_vec()), 0).is_err());
        let one = || builder_of(&["port 8080"]);
        for whole in [one().finish().unwrap(), one().finish_v2()] {
            let mut cut = whole.clone();
            cut.pop();
            let err = NumberIndex::open(OwnedBytes::new(cut), 1).err().unwrap().to_string();
            assert!(err.contains("number index"), "{err}");
            // The development format and a row count that is not the
            // split's are refused.
            let mut v1 = whole.clone();
            v1[7] = b'1';
            let err = NumberIndex::open(OwnedBytes::new(v1), 1).err().unwrap().to_string();
            assert!(err.contains("format 1 is neither 2 nor 3"), "{err}");
            let err = NumberIndex::open(OwnedBytes::new(whole.clone()), 2).err().unwrap().to_string();
            assert!(err.contains("covers 1 rows, the split has 2"), "{err}");
        }
        // Postings cut short with a header that agrees: the lookup of the
        // last key reports that it cannot tell.
        let lines: Vec<String> = (0..300).map(|n| format!("n {n}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let last = (0..300).map(|n| n.to_string()).max_by_key(|t| fingerprint(t.as_bytes())).unwrap();
        for whole in [builder_of(&refs).finish().unwrap(), builder_of(&refs).finish_v2()] {
            let mut short = whole.clone();
            let postings_len = read_u32(&short, 20);
            short[20..24].copy_from_slice(&(postings_len - 1).to_le_bytes());
            short.pop();
            let index = NumberIndex::open(OwnedBytes::new(resealed(short)), 300).unwrap();
            assert_eq!(index.blocks_of(&last), None);
            assert!(index.blocks_of("7").is_some());
        }
        // Keys out of order: in version 2 every key is listed, in version
        // 3 the first of each group.
        let two_keys = builder_of(&["port 8080 and 9090"]).finish_v2();
        let mut swapped = two_keys.clone();
        swapped.copy_within(HEADER_BYTES..HEADER_BYTES + 4, HEADER_BYTES + 4);
        swapped[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&two_keys[HEADER_BYTES + 4..HEADER_BYTES + 8]);
        let err = NumberIndex::open(OwnedBytes::new(swapped), 1).err().unwrap().to_string();
        assert!(err.contains("not in increasing order"), "{err}");
        let line: String = (0..GROUP_KEYS * 2).map(|n| format!(" {n}")).collect();
        let groups = builder_of(&[&line]).finish().unwrap();
        let (first, second) = (HEADER_BYTES_V3, HEADER_BYTES_V3 + 8);
        let mut swapped = groups.clone();
        swapped[first..first + 4].copy_from_slice(&groups[second..second + 4]);
        swapped[second..second + 4].copy_from_slice(&groups[first..first + 4]);
        let err = NumberIndex::open(OwnedBytes::new(resealed(swapped.clone())), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fingerprints are not in increasing order"), "{err}");
        // Unsealed, the same damage fails the checksum first.
        let err = NumberIndex::open(OwnedBytes::new(swapped), 1).err().unwrap().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
        let mut offsets = groups.clone();
        offsets[second + 4..second + 8].copy_from_slice(&0u32.to_le_bytes());
        let err = NumberIndex::open(OwnedBytes::new(resealed(offsets)), 1).err().unwrap().to_string();
        assert!(err.contains("offsets are not in increasing order"), "{err}");
        // A block size other than the one version 3 is written with.
        let mut blocks = groups.clone();
        blocks[8..12].copy_from_slice(&(BLOCK_ROWS * 2).to_le_bytes());
        assert!(NumberIndex::open(OwnedBytes::new(resealed(blocks)), 1).is_err());
        // Any single damaged byte of a version 3 file is refused; with the
        // checksum made to match, it is refused or its lookups answer or
        // say they cannot tell; never a panic.
        let lines: Vec<String> = (0..600)
            .map(|n| format!("step {} id {:x} port {}", n / 3, n * 7919, n % 50))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let whole = builder_of(&refs).finish().unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..3_000 {
            let mut damaged = whole.clone();
            let at = rng.usize(0..damaged.len());
            damaged[at] ^= rng.u8(1..);
            if at >= HEADER_BYTES_V3 {
                assert!(NumberIndex::open(OwnedBytes::new(damaged.clone()), 600).is_err());
            }
            if let Ok(index) = NumberIndex::open(OwnedBytes::new(resealed(damaged)), 600) {
                for token in ["7", "49", "1f", "3d5", "deadbeef"] {
                    let _ = index.row_ranges(token);
                }
            }
        }
    }
}
