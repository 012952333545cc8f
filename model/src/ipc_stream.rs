//! Arrow IPC stream messages at the byte level: the walk over a stream's
//! messages (for the sizes a body declares before anything is inflated) and
//! the re-framing that writes an uncompressed stream's record batch and
//! dictionary buffers as zstd frames made with weft's own parameters.
//!
//! Arrow's writer takes a zstd level and nothing more. At level 1 zstd
//! hashes into a table of 2^14 entries (64 KiB, past the L1 cache); the
//! wire bodies compress faster, and here a little smaller, with 2^11 (see
//! [`WIRE_ZSTD_HASH_LOG`]). So arrow encodes the stream uncompressed, its
//! column buffers referenced rather than copied, and [`ZstdFramer`] writes
//! each message again with every buffer compressed by a context holding
//! those parameters. What a reader sees is an ordinary Arrow IPC stream
//! with ZSTD buffer compression, as arrow writes one: each buffer an 8-byte
//! uncompressed length and one zstd frame, or −1 and the raw bytes where
//! compression would not shrink them.

use std::borrow::Cow;
use std::io::Cursor;

use arrow_ipc::{
    BodyCompressionBuilder, BodyCompressionMethod, CompressionType, DictionaryBatchBuilder, MessageBuilder, MessageHeader,
    RecordBatchBuilder,
};
use flatbuffers::FlatBufferBuilder;

use crate::ModelError;

/// The zstd level of the wire bodies' buffers.
pub const WIRE_ZSTD_LEVEL: i32 = 1;
/// Its hash table: 2^11 entries (8 KiB) instead of level 1's 2^14. On the
/// 1 GB benchmark corpus the collector spent about 8 % less CPU and wrote
/// 2.7 % smaller bodies (BENCHMARKS.md, seventeenth run).
pub const WIRE_ZSTD_HASH_LOG: u32 = 11;
/// Its shortest match: 6 bytes (level 1's is 7).
pub const WIRE_ZSTD_MIN_MATCH: u32 = 6;

/// Alignment of message headers and buffers, as arrow's writer pads them.
const ALIGNMENT: usize = 64;
/// A compressed buffer's length prefix saying "stored uncompressed".
const STORED_UNCOMPRESSED: i64 = -1;
/// The continuation marker before each message's length.
const CONTINUATION: [u8; 4] = [0xFF; 4];

/// A byte stream held in several parts (arrow's encoder hands one out as a
/// list of buffers), read by absolute position.
pub(crate) struct Segments<'a> {
    parts: Vec<&'a [u8]>,
    /// Where each part starts in the stream.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Segments<'a> {
    pub(crate) fn new(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut segments = Segments {
            parts: Vec::new(),
            starts: Vec::new(),
            len: 0,
        };
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            segments.starts.push(segments.len);
            segments.len += part.len();
            segments.parts.push(part);
        }
        segments
    }

    /// The bytes at `start..start + len`, borrowed where one part holds
    /// them all (a column buffer always is one part); `None` past the end.
    pub(crate) fn get(&self, start: usize, len: usize) -> Option<Cow<'a, [u8]>> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        if len == 0 {
            return Some(Cow::Borrowed(&[]));
        }
        let mut index = self.starts.partition_point(|&s| s <= start) - 1;
        let within = start - self.starts[index];
        if let Some(bytes) = self.parts[index].get(within..within + len) {
            return Some(Cow::Borrowed(bytes));
        }
        let mut joined = Vec::with_capacity(len);
        joined.extend_from_slice(&self.parts[index][within..]);
        while joined.len() < len {
            index += 1;
            let part = self.parts[index];
            joined.extend_from_slice(&part[..part.len().min(len - joined.len())]);
        }
        Some(Cow::Owned(joined))
    }
}

/// One message of a stream: its flatbuffer header and where its body lies.
pub(crate) struct Framed<'a> {
    pub(crate) header: Cow<'a, [u8]>,
    pub(crate) body_start: usize,
    pub(crate) body_len: usize,
}

/// The messages of an IPC stream up to its end marker (or its last byte),
/// each checked to lie within the stream; legacy framing (a length without
/// the continuation marker) is read too.
pub(crate) fn messages<'s, 'a>(stream: &'s Segments<'a>) -> impl Iterator<Item = Result<Framed<'a>, ModelError>> + 's {
    let bad = |what: &str| ModelError::Ipc(format!("malformed IPC stream: {what}"));
    let word = move |at: usize| stream.get(at, 4).map(|b| u32::from_le_bytes(b[..4].try_into().expect("4 bytes")));
    let mut pos = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut length = word(pos)?;
        pos += 4;
        if length == 0xFFFF_FFFF {
            let Some(next) = word(pos) else {
                done = true;
                return Some(Err(bad("truncated message length")));
            };
            length = next;
            pos += 4;
        }
        if length == 0 {
            done = true;
            return None;
        }
        let step = || -> Result<Framed<'a>, ModelError> {
            let header_len = length as usize;
            let header = stream.get(pos, header_len).ok_or_else(|| bad("truncated message header"))?;
            let message = arrow_ipc::root_as_message(&header).map_err(|e| bad(&e.to_string()))?;
            let body_len = usize::try_from(message.bodyLength()).map_err(|_| bad("negative body length"))?;
            let body_start = pos + header_len;
            if body_start.checked_add(body_len).is_none_or(|end| end > stream.len) {
                return Err(bad("truncated message body"));
            }
            Ok(Framed {
                header,
                body_start,
                body_len,
            })
        };
        let framed = step();
        match &framed {
            Ok(f) => pos = f.body_start + f.body_len,
            Err(_) => done = true,
        }
        Some(framed)
    })
}

/// Writes IPC streams again with every record batch and dictionary buffer
/// compressed by one zstd context with the wire parameters; keeps that
/// context and its two working buffers from one stream to the next.
pub(crate) struct ZstdFramer {
    compressor: zstd::bulk::Compressor<'static>,
    /// The stream being written.
    out: Vec<u8>,
    /// The body of the message being written.
    body: Vec<u8>,
    fbb: FlatBufferBuilder<'static>,
}

impl std::fmt::Debug for ZstdFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdFramer")
            .field("out_capacity", &self.out.capacity())
            .field("body_capacity", &self.body.capacity())
            .finish_non_exhaustive()
    }
}

impl ZstdFramer {
    pub(crate) fn new() -> Self {
        use zstd::stream::raw::CParameter;
        let mut compressor = zstd::bulk::Compressor::new(WIRE_ZSTD_LEVEL).expect("zstd accepts level 1");
        compressor
            .set_parameter(CParameter::HashLog(WIRE_ZSTD_HASH_LOG))
            .and_then(|()| compressor.set_parameter(CParameter::MinMatch(WIRE_ZSTD_MIN_MATCH)))
            .expect("zstd accepts the wire parameters");
        ZstdFramer {
            compressor,
            out: Vec::new(),
            body: Vec::new(),
            fbb: FlatBufferBuilder::new(),
        }
    }

    /// Bytes the working buffers keep reserved for the next stream.
    pub(crate) fn reserved(&self) -> usize {
        self.out.capacity() + self.body.capacity()
    }

    /// Drops the working buffers (after a stream larger than is worth
    /// keeping room for).
    pub(crate) fn release(&mut self) {
        self.out = Vec::new();
        self.body = Vec::new();
    }

    /// `stream` (an uncompressed IPC stream) with its buffers compressed,
    /// ending with the end-of-stream marker.
    pub(crate) fn frame(&mut self, stream: &Segments<'_>) -> Result<Vec<u8>, ModelError> {
        self.out.clear();
        for framed in messages(stream) {
            let framed = framed?;
            let message = arrow_ipc::root_as_message(&framed.header).map_err(|e| ModelError::Ipc(e.to_string()))?;
            match message.header_type() {
                MessageHeader::RecordBatch | MessageHeader::DictionaryBatch => self.compressed_message(&message, stream, &framed)?,
                _ => {
                    let body = stream.get(framed.body_start, framed.body_len).expect("checked by the walk");
                    append_message(&mut self.out, &framed.header, &body);
                }
            }
        }
        self.out.extend_from_slice(&CONTINUATION);
        self.out.extend_from_slice(&0u32.to_le_bytes());
        Ok(self.out.as_slice().to_vec())
    }

    /// A record batch or dictionary message with its buffers compressed.
    fn compressed_message(
        &mut self,
        message: &arrow_ipc::Message<'_>,
        stream: &Segments<'_>,
        framed: &Framed<'_>,
    ) -> Result<(), ModelError> {
        let bad = |what: &str| ModelError::Ipc(format!("cannot compress IPC message: {what}"));
        let dictionary = message.header_as_dictionary_batch();
        let batch = match dictionary {
            Some(d) => d.data(),
            None => message.header_as_record_batch(),
        }
        .ok_or_else(|| bad("no record batch in the message"))?;
        if batch.compression().is_some() {
            return Err(bad("its buffers are compressed already"));
        }
        self.body.clear();
        let mut buffers = Vec::new();
        for buffer in batch.buffers().into_iter().flatten() {
            let (offset, length) = (usize::try_from(buffer.offset()), usize::try_from(buffer.length()));
            let (Ok(offset), Ok(length)) = (offset, length) else {
                return Err(bad("a negative buffer offset or length"));
            };
            let data = (offset.checked_add(length))
                .filter(|&end| end <= framed.body_len)
                .and_then(|_| stream.get(framed.body_start + offset, length))
                .ok_or_else(|| bad("a buffer outside the body"))?;
            let start = self.body.len();
            self.push_buffer(&data)?;
            buffers.push(arrow_ipc::Buffer::new(start as i64, (self.body.len() - start) as i64));
            self.body.resize(self.body.len().next_multiple_of(ALIGNMENT), 0);
        }

        let fbb = &mut self.fbb;
        fbb.reset();
        let nodes: Vec<arrow_ipc::FieldNode> = batch.nodes().map(|n| n.iter().copied().collect()).unwrap_or_default();
        let nodes = fbb.create_vector(&nodes);
        let buffers = fbb.create_vector(&buffers);
        let variadic = batch.variadicBufferCounts().map(|counts| {
            let counts: Vec<i64> = counts.iter().collect();
            fbb.create_vector(&counts)
        });
        let compression = {
            let mut c = BodyCompressionBuilder::new(fbb);
            c.add_codec(CompressionType::ZSTD);
            c.add_method(BodyCompressionMethod::BUFFER);
            c.finish()
        };
        let record_batch = {
            let mut b = RecordBatchBuilder::new(fbb);
            b.add_length(batch.length());
            b.add_nodes(nodes);
            b.add_buffers(buffers);
            b.add_compression(compression);
            if let Some(variadic) = variadic {
                b.add_variadicBufferCounts(variadic);
            }
            b.finish()
        };
        let header = match dictionary {
            Some(d) => {
                let mut b = DictionaryBatchBuilder::new(fbb);
                b.add_id(d.id());
                b.add_data(record_batch);
                b.add_isDelta(d.isDelta());
                b.finish().as_union_value()
            }
            None => record_batch.as_union_value(),
        };
        let root = {
            let mut m = MessageBuilder::new(fbb);
            m.add_version(message.version());
            m.add_header_type(message.header_type());
            m.add_bodyLength(self.body.len() as i64);
            m.add_header(header);
            m.finish()
        };
        fbb.finish(root, None);
        let header = self.fbb.finished_data();
        append_message(&mut self.out, header, &self.body);
        Ok(())
    }

    /// One buffer as arrow writes a compressed one: its uncompressed length
    /// and a zstd frame, or −1 and the bytes where the frame is no smaller.
    fn push_buffer(&mut self, data: &[u8]) -> Result<(), ModelError> {
        if data.is_empty() {
            return Ok(());
        }
        let start = self.body.len();
        self.body.extend_from_slice(&(data.len() as i64).to_le_bytes());
        self.body.reserve(zstd::zstd_safe::compress_bound(data.len()));
        let mut cursor = Cursor::new(&mut self.body);
        cursor.set_position((start + 8) as u64);
        self.compressor
            .compress_to_buffer(data, &mut cursor)
            .map_err(|e| ModelError::Ipc(format!("zstd: {e}")))?;
        if self.body.len() - start > data.len() {
            self.body.truncate(start);
            self.body.extend_from_slice(&STORED_UNCOMPRESSED.to_le_bytes());
            self.body.extend_from_slice(data);
        }
        Ok(())
    }
}

/// A message as arrow frames one: the continuation marker, the header's
/// padded length, the header padded so the body starts aligned, the body.
fn append_message(out: &mut Vec<u8>, header: &[u8], body: &[u8]) {
    let padded = (header.len() + 8).next_multiple_of(ALIGNMENT) - 8;
    out.extend_from_slice(&CONTINUATION);
    out.extend_from_slice(&(padded as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.resize(out.len() + padded - header.len(), 0);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_ipc, LogBatchBuilder};
    use crate::record::LogRecord;

    #[test]
    fn segments_read_within_and_across_parts() {
        let stream = Segments::new([&b"abc"[..], b"", b"defg", b"h"]);
        assert!(matches!(stream.get(3, 4), Some(Cow::Borrowed(b"defg"))));
        assert!(matches!(stream.get(2, 3), Some(Cow::Owned(ref v)) if v == b"cde"));
        assert_eq!(stream.get(0, 8).as_deref(), Some(&b"abcdefgh"[..]));
        assert_eq!(stream.get(8, 0).as_deref(), Some(&b""[..]));
        assert!(stream.get(5, 4).is_none());
        assert!(stream.get(usize::MAX, 2).is_none());
    }

    fn body_of(lines: &[String]) -> Vec<u8> {
        let mut builder = LogBatchBuilder::default();
        for (i, line) in lines.iter().enumerate() {
            let record = LogRecord {
                ts: i as i64,
                line: line.clone(),
                source: Some((0, i as u64)),
                ..Default::default()
            };
            builder.append(&record.as_ref());
        }
        encode_ipc(&[builder.finish(true)], Default::default()).unwrap()
    }

    /// Each buffer of a body: its length prefix and its bytes.
    fn buffers(body: &[u8]) -> Vec<(i64, Vec<u8>)> {
        let stream = Segments::new([body]);
        let mut out = Vec::new();
        for framed in messages(&stream) {
            let framed = framed.unwrap();
            let message = arrow_ipc::root_as_message(&framed.header).unwrap();
            let Some(batch) = message.header_as_record_batch() else { continue };
            for b in batch.buffers().unwrap() {
                let at = framed.body_start + b.offset() as usize;
                let data = &body[at..at + b.length() as usize];
                if !data.is_empty() {
                    out.push((i64::from_le_bytes(data[..8].try_into().unwrap()), data[8..].to_vec()));
                }
            }
        }
        out
    }

    /// Buffers that shrink are zstd frames made with the wire parameters;
    /// ones that would not (a few bytes of validity) are stored as they
    /// are, behind −1.
    #[test]
    fn buffers_are_framed_with_the_wire_parameters_or_stored() {
        let lines: Vec<String> = (0..2_000)
            .map(|i| format!("step {i} loss=0.{i:04} lr=3e-4 tokens/s=51234"))
            .collect();
        let found = buffers(&body_of(&lines));
        let mut compressor = zstd::bulk::Compressor::new(WIRE_ZSTD_LEVEL).unwrap();
        use zstd::stream::raw::CParameter;
        compressor.set_parameter(CParameter::HashLog(WIRE_ZSTD_HASH_LOG)).unwrap();
        compressor.set_parameter(CParameter::MinMatch(WIRE_ZSTD_MIN_MATCH)).unwrap();
        let text: String = lines.concat();
        let (_, frame) = found
            .iter()
            .find(|(len, _)| *len == text.len() as i64)
            .expect("the text buffer, compressed");
        assert_eq!(frame, &compressor.compress(text.as_bytes()).unwrap());
        assert_eq!(zstd::bulk::decompress(frame, text.len()).unwrap(), text.as_bytes());
        // Two rows: a frame's own header outweighs each buffer.
        let found = buffers(&body_of(&lines[..2]));
        let stored = found.iter().filter(|(len, _)| *len == STORED_UNCOMPRESSED).count();
        assert!(stored > 0, "{stored} of {} buffers stored", found.len());
    }

    /// A stream cut anywhere is an error (or, cut between messages, fewer
    /// messages), never a panic.
    #[test]
    fn cut_streams_are_refused_without_panicking() {
        let body = body_of(&["a line".to_string(), "another".to_string()]);
        let whole = messages(&Segments::new([&body[..]])).count();
        for cut in 0..body.len() {
            let stream = Segments::new([&body[..cut]]);
            let read: Vec<_> = messages(&stream).collect();
            assert!(read.iter().filter(|m| m.is_ok()).count() <= whole, "at {cut}");
            assert!(read.iter().rev().skip(1).all(Result::is_ok), "only the last can fail, at {cut}");
            let _ = crate::batch::declared_decoded_size(&body[..cut]);
        }
    }
}
