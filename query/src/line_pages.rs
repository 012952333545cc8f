//! Reads single lines of a split's `line` column straight from its Parquet
//! data pages: the offset index says which page holds a row, the page is
//! read with one positioned read, decompressed with this thread's zstd
//! context, and its PLAIN values are walked to the row.
//!
//! This is the hit path of a search. Through parquet-rs, every read of a
//! column builds a reader and a codec, and the codec makes a zstd
//! compression context beside the decompression one: the two contexts
//! cost as much as decompressing the page itself, once per split a search
//! touches. The layout weft's indexer writes (a required text column,
//! PLAIN, no dictionary, data pages v1, zstd or none) is read here; a file
//! laid out otherwise says so at open ([`LinePages::new`] gives `None`) or
//! at read ([`PageError::Unsupported`]), and the caller reads it through
//! parquet-rs instead.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;

use parquet::basic::{Compression, Type};
use parquet::file::metadata::ParquetMetaData;

/// Largest page, compressed or not, this reader takes (the indexer writes
/// 64 KiB pages; a bigger one is damage or another writer).
const MAX_PAGE_BYTES: usize = 16 << 20;
/// Deepest struct nesting skipped in a page header.
const MAX_THRIFT_DEPTH: usize = 16;

/// Why lines could not be read here.
#[derive(Debug)]
pub enum PageError {
    /// A layout this reader does not decode (another page version or
    /// encoding): read the rows through parquet-rs.
    Unsupported(String),
    /// The file does not say what its footer promised.
    Damaged(String),
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::Unsupported(why) => write!(f, "line pages: not readable directly: {why}"),
            PageError::Damaged(why) => write!(f, "line pages: {why}"),
        }
    }
}

/// One data page of the column.
#[derive(Clone, Copy, Debug)]
struct Page {
    /// File offset of the page header.
    offset: u64,
    /// Header and body bytes.
    len: usize,
    /// First row of the page, counted over the whole file.
    first_row: u64,
    rows: u64,
    zstd: bool,
}

/// Where every page of a file's `line` column is.
#[derive(Debug)]
pub struct LinePages {
    pages: Vec<Page>,
}

impl LinePages {
    /// The pages of column `name`, or `None` where the file's layout is not
    /// one this reader decodes (or it has no offset index).
    pub fn new(meta: &ParquetMetaData, name: &str) -> Option<Self> {
        let schema = meta.file_metadata().schema_descr();
        let column = (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [name])?;
        let descr = schema.column(column);
        if descr.max_def_level() != 0 || descr.max_rep_level() != 0 || descr.physical_type() != Type::BYTE_ARRAY {
            return None;
        }
        let mut pages = Vec::new();
        let mut first_row_of_group = 0u64;
        for group in 0..meta.num_row_groups() {
            let row_group = meta.row_group(group);
            let chunk = row_group.column(column);
            let zstd = match chunk.compression() {
                Compression::ZSTD(_) => true,
                Compression::UNCOMPRESSED => false,
                _ => return None,
            };
            if chunk.dictionary_page_offset().is_some() {
                return None;
            }
            let group_rows = u64::try_from(row_group.num_rows()).ok()?;
            let page_index = meta.page_index_for_row_group(group);
            let locations = page_index.page_locations(column)?;
            for (i, location) in locations.iter().enumerate() {
                let first = u64::try_from(location.first_row_index).ok()?;
                let next = match locations.get(i + 1) {
                    Some(next) => u64::try_from(next.first_row_index).ok()?,
                    None => group_rows,
                };
                if next <= first {
                    return None;
                }
                pages.push(Page {
                    offset: u64::try_from(location.offset).ok()?,
                    len: usize::try_from(location.compressed_page_size).ok()?,
                    first_row: first_row_of_group.checked_add(first)?,
                    rows: next - first,
                    zstd,
                });
            }
            // Sums of a damaged footer's counts must not wrap: past this
            // check, no row sum in `read` can.
            first_row_of_group = first_row_of_group.checked_add(group_rows)?;
        }
        Some(Self { pages })
    }

    /// The lines of `rows` (ascending, distinct), in that order.
    #[cfg(test)]
    pub fn read(&self, file: &File, rows: &[u32]) -> Result<Vec<String>, PageError> {
        Ok(self.read_if(file, rows, &|_| true)?.into_iter().map(|(_, line)| line).collect())
    }

    /// The rows of `rows` (ascending, distinct) whose line passes `keep`,
    /// with their lines, in that order. A line that fails is not copied.
    pub fn read_if(&self, file: &File, rows: &[u32], keep: &dyn Fn(&str) -> bool) -> Result<Vec<(u32, String)>, PageError> {
        debug_assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows must be sorted and distinct");
        let mut out = Vec::with_capacity(rows.len());
        let mut rest = rows;
        while let Some(&row) = rest.first() {
            let row = u64::from(row);
            let at = self.pages.partition_point(|p| p.first_row + p.rows <= row);
            let page = self
                .pages
                .get(at)
                .filter(|p| p.first_row <= row)
                .ok_or_else(|| PageError::Damaged(format!("row {row} is in no page of the offset index")))?;
            let end = page.first_row + page.rows;
            let here = rest.partition_point(|&r| u64::from(r) < end);
            let (in_page, after) = rest.split_at(here);
            read_page(file, page, in_page, keep, &mut out)?;
            rest = after;
        }
        Ok(out)
    }
}

thread_local! {
    /// This thread's zstd context and page buffers, kept between the pages
    /// it reads (a search's threads live for the search: one context per
    /// thread and search, where parquet-rs made one per split).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    raw: Vec<u8>,
    plain: Vec<u8>,
}

/// Appends the rows of `rows` (all in `page`) whose line passes `keep`, and
/// their lines, to `out`.
fn read_page(file: &File, page: &Page, rows: &[u32], keep: &dyn Fn(&str) -> bool, out: &mut Vec<(u32, String)>) -> Result<(), PageError> {
    if page.len > MAX_PAGE_BYTES {
        return Err(PageError::Unsupported(format!("a page of {} bytes", page.len)));
    }
    SCRATCH.with(|scratch| {
        let scratch = &mut *scratch.borrow_mut();
        scratch.raw.resize(page.len, 0);
        file.read_exact_at(&mut scratch.raw, page.offset)
            .map_err(|e| PageError::Damaged(format!("reading {} bytes at {}: {e}", page.len, page.offset)))?;
        let header = PageHeader::parse(&scratch.raw)?;
        if header.page_type != DATA_PAGE {
            return Err(PageError::Unsupported(format!("page type {}", header.page_type)));
        }
        if header.encoding != Some(PLAIN) {
            return Err(PageError::Unsupported(format!("encoding {:?}", header.encoding)));
        }
        if header.num_values != Some(page.rows) {
            return Err(PageError::Damaged(format!(
                "the page at {} holds {:?} values, the offset index says {} rows",
                page.offset, header.num_values, page.rows
            )));
        }
        let body = scratch.raw.get(header.len..).unwrap_or_default();
        if body.len() != header.compressed_size {
            return Err(PageError::Damaged(format!(
                "the page at {} has {} body bytes, its header says {}",
                page.offset,
                body.len(),
                header.compressed_size
            )));
        }
        if header.uncompressed_size > MAX_PAGE_BYTES {
            return Err(PageError::Unsupported(format!("a page of {} bytes", header.uncompressed_size)));
        }
        let values: &[u8] = if page.zstd {
            let decompressor = match &mut scratch.decompressor {
                Some(d) => d,
                none => none
                    .insert(zstd::bulk::Decompressor::new().map_err(|e| PageError::Damaged(format!("cannot create a zstd context: {e}")))?),
            };
            scratch.plain.clear();
            scratch.plain.reserve(header.uncompressed_size);
            let n = decompressor
                .decompress_to_buffer(body, &mut scratch.plain)
                .map_err(|e| PageError::Damaged(format!("the page at {} does not decompress: {e}", page.offset)))?;
            if n != header.uncompressed_size {
                return Err(PageError::Damaged(format!(
                    "the page at {} decompressed to {n} bytes, its header says {}",
                    page.offset, header.uncompressed_size
                )));
            }
            &scratch.plain
        } else {
            body
        };
        plain_values(values, page, rows, keep, out)
    })
}

/// Walks the PLAIN byte arrays of `page` (a 4-byte little-endian length,
/// then the bytes) and appends those of `rows` that pass `keep`.
fn plain_values(
    mut values: &[u8],
    page: &Page,
    rows: &[u32],
    keep: &dyn Fn(&str) -> bool,
    out: &mut Vec<(u32, String)>,
) -> Result<(), PageError> {
    let damaged = |what: &str| PageError::Damaged(format!("the page at {}: {what}", page.offset));
    let mut next = page.first_row;
    for &row in rows {
        let row = u64::from(row);
        loop {
            let (len, rest) = values.split_first_chunk::<4>().ok_or_else(|| damaged("values end early"))?;
            let len = u32::from_le_bytes(*len) as usize;
            let value = rest.get(..len).ok_or_else(|| damaged("a value runs past the page"))?;
            values = &rest[len..];
            next += 1;
            if next - 1 == row {
                let line = std::str::from_utf8(value).map_err(|e| damaged(&format!("row {row} is not UTF-8: {e}")))?;
                if keep(line) {
                    out.push((row as u32, line.to_string()));
                }
                break;
            }
        }
    }
    Ok(())
}

const DATA_PAGE: i32 = 0;
const PLAIN: i32 = 0;

/// What this reader needs of a Parquet `PageHeader` (Thrift compact
/// protocol).
#[derive(Debug, Default, PartialEq)]
struct PageHeader {
    page_type: i32,
    uncompressed_size: usize,
    compressed_size: usize,
    /// Of a v1 data page.
    num_values: Option<u64>,
    encoding: Option<i32>,
    /// Bytes the header took.
    len: usize,
}

impl PageHeader {
    fn parse(bytes: &[u8]) -> Result<Self, PageError> {
        let mut input = Thrift { bytes, at: 0 };
        let mut header = PageHeader {
            page_type: -1,
            ..Default::default()
        };
        let (mut has_type, mut has_sizes) = (false, 0);
        let mut last = 0i16;
        while let Some((id, kind)) = input.field(&mut last)? {
            match (id, kind) {
                (1, I32) => {
                    header.page_type = input.i32()?;
                    has_type = true;
                }
                (2, I32) => {
                    header.uncompressed_size = input.size()?;
                    has_sizes += 1;
                }
                (3, I32) => {
                    header.compressed_size = input.size()?;
                    has_sizes += 1;
                }
                (5, STRUCT) => {
                    let mut last = 0i16;
                    while let Some((id, kind)) = input.field(&mut last)? {
                        match (id, kind) {
                            (1, I32) => header.num_values = Some(input.size()? as u64),
                            (2, I32) => header.encoding = Some(input.i32()?),
                            _ => input.skip(kind, 0)?,
                        }
                    }
                }
                _ => input.skip(kind, 0)?,
            }
        }
        if !has_type || has_sizes != 2 {
            return Err(PageError::Damaged("a page header without its type or sizes".into()));
        }
        header.len = input.at;
        Ok(header)
    }
}

// Thrift compact protocol types.
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

/// A reader of the Thrift compact protocol over a byte slice.
struct Thrift<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Thrift<'_> {
    fn damaged(&self, what: &str) -> PageError {
        PageError::Damaged(format!("page header byte {}: {what}", self.at))
    }

    fn byte(&mut self) -> Result<u8, PageError> {
        let b = *self.bytes.get(self.at).ok_or_else(|| self.damaged("the header ends early"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, PageError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.damaged("a varint longer than 10 bytes"))
    }

    fn zigzag(&mut self) -> Result<i64, PageError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, PageError> {
        let v = self.zigzag()?;
        i32::try_from(v).map_err(|_| self.damaged("an i32 out of range"))
    }

    /// A non-negative i32 (a size or a count).
    fn size(&mut self) -> Result<usize, PageError> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| self.damaged("a negative size"))
    }

    fn advance(&mut self, n: usize) -> Result<(), PageError> {
        if self.bytes.len() - self.at < n {
            return Err(self.damaged("a value runs past the header"));
        }
        self.at += n;
        Ok(())
    }

    /// The next field's id and type within a struct; `None` at its end.
    fn field(&mut self, last: &mut i16) -> Result<Option<(i16, u8)>, PageError> {
        let b = self.byte()?;
        let kind = b & 0x0f;
        if kind == 0 {
            return Ok(None);
        }
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| self.damaged("a field id out of range"))?
        } else {
            last.checked_add(delta).ok_or_else(|| self.damaged("a field id out of range"))?
        };
        *last = id;
        Ok(Some((id, kind)))
    }

    /// Skips one element of a list, set or map: there a boolean takes a
    /// byte of its own.
    fn skip_element(&mut self, kind: u8, depth: usize) -> Result<(), PageError> {
        if kind == TRUE || kind == FALSE {
            self.advance(1)
        } else {
            self.skip(kind, depth)
        }
    }

    /// Skips one value of `kind`.
    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), PageError> {
        if depth > MAX_THRIFT_DEPTH {
            return Err(self.damaged("structs nested too deep"));
        }
        match kind {
            TRUE | FALSE => Ok(()),
            BYTE => self.advance(1),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.advance(8),
            UUID => self.advance(16),
            BINARY => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.damaged("a binary too long"))?;
                self.advance(n)
            }
            LIST | SET => {
                let b = self.byte()?;
                let element = b & 0x0f;
                let n = match b >> 4 {
                    15 => usize::try_from(self.varint()?).map_err(|_| self.damaged("a list too long"))?,
                    n => n as usize,
                };
                for _ in 0..n {
                    self.skip_element(element, depth + 1)?;
                }
                Ok(())
            }
            MAP => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.damaged("a map too long"))?;
                if n == 0 {
                    return Ok(());
                }
                let kinds = self.byte()?;
                for _ in 0..n {
                    self.skip_element(kinds >> 4, depth + 1)?;
                    self.skip_element(kinds & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            STRUCT => {
                let mut last = 0i16;
                while let Some((_, kind)) = self.field(&mut last)? {
                    self.skip(kind, depth + 1)?;
                }
                Ok(())
            }
            other => Err(self.damaged(&format!("unknown type {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::ZstdLevel;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
    use parquet::schema::types::ColumnPath;

    use super::*;

    fn lines(n: usize) -> Vec<String> {
        // Lengths from 0 to a few hundred bytes, some not ASCII.
        (0..n)
            .map(|i| match i % 7 {
                0 => String::new(),
                3 => format!("é{i} Grüße {}", "x".repeat(i % 300)),
                _ => format!("line {i} step={} {}", i * 3, "abc ".repeat(i % 50)),
            })
            .collect()
    }

    fn write(lines: &[String], nullable: bool, props: WriterProperties) -> (tempfile::NamedTempFile, ArrowReaderMetadata) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Utf8, false),
            Field::new("line", DataType::Utf8, nullable),
        ]));
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = ArrowWriter::try_new(file.reopen().unwrap(), schema.clone(), Some(props)).unwrap();
        for chunk in lines.chunks(1000) {
            let ts = StringArray::from_iter_values(chunk.iter().map(|l| l.len().to_string()));
            let line = StringArray::from_iter_values(chunk.iter());
            writer
                .write(&RecordBatch::try_new(schema.clone(), vec![Arc::new(ts), Arc::new(line)]).unwrap())
                .unwrap();
        }
        writer.close().unwrap();
        let meta = ArrowReaderMetadata::load(
            file.as_file(),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .unwrap();
        (file, meta)
    }

    /// What weft's indexer writes for the column, in smaller pages and
    /// row groups so that a few thousand rows cross both.
    fn weft_like() -> parquet::file::properties::WriterPropertiesBuilder {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
            .set_max_row_group_row_count(Some(2500))
            .set_data_page_size_limit(4096)
            .set_write_batch_size(64)
            .set_column_dictionary_enabled(ColumnPath::from("line"), false)
            .set_column_statistics_enabled("line".into(), EnabledStatistics::None)
    }

    fn through_parquet_rs(file: &tempfile::NamedTempFile, meta: &ArrowReaderMetadata, rows: &[u32]) -> Vec<String> {
        let total = meta.metadata().file_metadata().num_rows() as usize;
        let selection = RowSelection::from_consecutive_ranges(rows.iter().map(|&r| r as usize..r as usize + 1), total);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.reopen().unwrap(), meta.clone())
            .with_row_selection(selection)
            .build()
            .unwrap();
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch
                .column_by_name("line")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            out.extend(column.iter().map(|v| v.unwrap().to_string()));
        }
        out
    }

    #[test]
    fn lines_read_from_pages_equal_what_parquet_rs_reads() {
        let written = lines(7000);
        for props in [
            weft_like().build(),
            weft_like().set_compression(Compression::UNCOMPRESSED).build(),
            // Statistics in the page header are skipped.
            weft_like()
                .set_column_statistics_enabled("line".into(), EnabledStatistics::Page)
                .set_write_page_header_statistics(true)
                .build(),
        ] {
            let (file, meta) = write(&written, false, props);
            let pages = LinePages::new(meta.metadata(), "line").expect("the indexer's layout");
            assert!(pages.pages.len() > 10, "rows cross pages: {}", pages.pages.len());
            assert!(meta.metadata().num_row_groups() > 2);
            let mut state = 7u64;
            let mut rows: Vec<u32> = (0..300)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 33) % 7000) as u32
                })
                .chain([0, 1, 2499, 2500, 6999])
                .collect();
            rows.sort_unstable();
            rows.dedup();
            let read = pages.read(file.as_file(), &rows).unwrap();
            assert_eq!(read, through_parquet_rs(&file, &meta, &rows));
            let expected: Vec<&String> = rows.iter().map(|&r| &written[r as usize]).collect();
            assert_eq!(read.iter().collect::<Vec<_>>(), expected);
            // Every row of one page, and a row past the end.
            let all: Vec<u32> = (0..7000).collect();
            assert_eq!(pages.read(file.as_file(), &all).unwrap(), written);
            assert!(matches!(pages.read(file.as_file(), &[7000]), Err(PageError::Damaged(_))));
        }
    }

    #[test]
    fn other_layouts_are_left_to_parquet_rs() {
        let written = lines(3000);
        // A dictionary or a nullable column: refused at open.
        let (_, meta) = write(
            &written,
            false,
            weft_like().set_column_dictionary_enabled(ColumnPath::from("line"), true).build(),
        );
        assert!(LinePages::new(meta.metadata(), "line").is_none());
        let (_, meta) = write(&written, true, weft_like().build());
        assert!(LinePages::new(meta.metadata(), "line").is_none());
        assert!(LinePages::new(meta.metadata(), "no_such_column").is_none());
        // Data pages v2: refused at read.
        let (file, meta) = write(&written, false, weft_like().set_writer_version(WriterVersion::PARQUET_2_0).build());
        let pages = LinePages::new(meta.metadata(), "line").unwrap();
        assert!(matches!(pages.read(file.as_file(), &[5]), Err(PageError::Unsupported(_))));
    }

    #[test]
    fn a_damaged_page_is_an_error() {
        let written = lines(3000);
        let (file, meta) = write(&written, false, weft_like().build());
        let pages = LinePages::new(meta.metadata(), "line").unwrap();
        let page = pages.pages[3];
        let original = {
            let mut bytes = vec![0; page.len];
            file.as_file().read_exact_at(&mut bytes, page.offset).unwrap();
            bytes
        };
        let row = page.first_row as u32;
        // Every single-byte change in the header and the start of the body
        // either reads the same line or is an error; none panics.
        for at in 0..original.len().min(64) {
            for value in [0u8, 0xff, original[at] ^ 0x10] {
                let mut bytes = original.clone();
                bytes[at] = value;
                file.as_file().write_all_at(&bytes, page.offset).unwrap();
                if let Ok(read) = pages.read(file.as_file(), &[row]) {
                    assert_eq!(read.len(), 1);
                }
            }
        }
        // A truncated body.
        let mut bytes = original.clone();
        bytes[page.len - 8..].fill(0);
        file.as_file().write_all_at(&bytes, page.offset).unwrap();
        assert!(pages.read(file.as_file(), &[row + 1]).is_err());
        file.as_file().write_all_at(&original, page.offset).unwrap();
        assert_eq!(pages.read(file.as_file(), &[row]).unwrap()[0], written[row as usize]);
    }

    #[test]
    fn the_thrift_reader_skips_every_type() {
        // A header whose field 4 (crc) and an unknown field 9 (a struct
        // holding a list, a map, a binary, a double and booleans) precede
        // the data page header.
        let mut h = vec![0x15, 0x00]; // 1: i32 type = 0
        h.extend([0x15, 0x80, 0x01]); // 2: i32 uncompressed = 64
        h.extend([0x15, 0x40]); // 3: i32 compressed = 32
        h.extend([0x15, 0x07]); // 4: i32 crc
        h.extend([0x5c]); // 9: struct
        h.extend([0x19, 0x35, 0x02, 0x04, 0x06]); //   1: list<i32> [1, 2, 3]
        h.extend([0x1b, 0x01, 0x85, 0x01, b'k', 0x02]); //   2: map<binary, i32> {k: 1}
        h.extend([0x18, 0x02, b'h', b'i']); //   3: binary "hi"
        h.extend([0x17, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]); //   4: double 1.0
        h.extend([0x11, 0x12]); //   5: true, 6: false
        h.extend([0x19, 0x11, 0x01]); //   7: list<bool> [true]
        h.push(0x00); //   stop
        h.extend([0x0c, 0x0a]); // 5 (absolute id, delta 0): struct data page header
        h.extend([0x15, 0x14]); //   1: num_values = 10
        h.extend([0x15, 0x00]); //   2: encoding PLAIN
        h.push(0x00); //   stop
        h.push(0x00); // stop
        let len = h.len();
        h.extend([0xaa; 4]);
        assert_eq!(
            PageHeader::parse(&h).unwrap(),
            PageHeader {
                page_type: 0,
                uncompressed_size: 64,
                compressed_size: 32,
                num_values: Some(10),
                encoding: Some(0),
                len,
            }
        );
        // Every prefix is an error, not a panic.
        for end in 0..len {
            assert!(PageHeader::parse(&h[..end]).is_err(), "prefix of {end}");
        }
    }
}
