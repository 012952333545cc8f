//! Arrow IPC stream messages at the byte level: the walk over a stream's
//! messages (for the sizes a body declares before anything is inflated) and
//! the re-framing that writes an uncompressed stream's record batch and
//! dictionary buffers as zstd frames made with weft's own parameters.
//!
//! Arrow's writer takes a zstd level and nothing more. At level 1 zstd
//! hashes a large input into a table of 2^14 entries (64 KiB, past the L1
//! cache); the wire bodies compress faster with 2^11 (see
//! [`WIRE_ZSTD_HASH_LOG`]), their line text a little smaller too. So
//! arrow encodes the stream uncompressed, its column buffers referenced
//! rather than copied, and [`ZstdFramer`] writes each message again with
//! every buffer compressed by a context of ours. What a reader sees is an
//! ordinary Arrow IPC stream with ZSTD buffer compression, as arrow writes
//! one: each buffer an 8-byte uncompressed length and one zstd frame, or
//! −1 and the raw bytes where the length and frame would be larger.
//!
//! Some columns barely compress: zstd saved 4 % of the log times'
//! nanoseconds on the benchmark corpus (15–19 % of the lines' offsets, in
//! the text and in their files). The framer remembers, for each buffer of
//! at least [`ADAPTIVE_BYTES`] in the messages it writes, whether
//! compressing it last saved an eighth; one that did not is stored as it
//! is in the next [`RAW_STREAK`] messages with that buffer (one per stream
//! in the collector), then tried again. On the 1 GB corpus that is the
//! nanoseconds: 0.8 % fewer instructions, 0.6 % more bytes.
//!
//! A message may hold one buffer several times: the collector's nine
//! per-source dictionary columns share their row keys. A buffer at the
//! address and length of one already written in the message is compressed
//! once and its frame written again.

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
/// Its hash table: 2^11 entries (8 KiB) instead of level 1's 2^14 for
/// large inputs. On the 1 GB benchmark corpus the collector spent 4.8 %
/// less CPU and wrote 2.7 % smaller log bodies, its metric bodies (columns
/// of numbers) 2.5 % larger: 2.3 % fewer bytes in all (BENCHMARKS.md,
/// seventeenth run). zstd caps the table further for small inputs itself.
pub const WIRE_ZSTD_HASH_LOG: u32 = 11;
/// Its shortest match: 6 bytes (level 1's is 7 for large inputs).
pub const WIRE_ZSTD_MIN_MATCH: u32 = 6;

/// Buffers smaller than this are always compressed (their verdicts are not
/// worth keeping: a frame of a few bytes costs little).
const ADAPTIVE_BYTES: usize = 16 << 10;
/// How many messages with a buffer that compressed by less than an eighth
/// store it uncompressed before it is tried again.
pub(crate) const RAW_STREAK: u32 = 15;
/// The most buffers whose verdicts are kept (a bound against schemas that
/// keep changing; forgetting costs one compression each).
const MAX_VERDICTS: usize = 4096;

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
            let body_len = usize::try_from(message.bodyLength()).map_err(|_| bad("body length out of range"))?;
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
    /// The body of the message being written.
    body: Vec<u8>,
    fbb: FlatBufferBuilder<'static>,
    /// For each buffer that did not compress by an eighth, the streams it
    /// is still stored uncompressed for.
    raw_streaks: std::collections::HashMap<BufferSlot, u32>,
    /// zstd frames made so far.
    frames: u64,
}

/// Which buffer of which message a buffer is, from one stream to the next:
/// the dictionary id (`None` for a record batch), how many buffers the
/// message has (the log and metric schemas differ) and its place among
/// them. Two schemas sharing a slot cost at most a compression, never a
/// wrong body: a stored buffer is read like a compressed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BufferSlot {
    dictionary: Option<i64>,
    buffers: usize,
    index: usize,
}

impl std::fmt::Debug for ZstdFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdFramer")
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
            body: Vec::new(),
            fbb: FlatBufferBuilder::new(),
            raw_streaks: std::collections::HashMap::new(),
            frames: 0,
        }
    }

    /// Bytes the working buffer keeps reserved for the next stream.
    pub(crate) fn reserved(&self) -> usize {
        self.body.capacity()
    }

    /// Drops the working buffer (after a stream larger than is worth
    /// keeping room for).
    pub(crate) fn release(&mut self) {
        self.body = Vec::new();
    }

    /// `stream` (an uncompressed IPC stream) with its buffers compressed,
    /// ending with the end-of-stream marker, written into `out`.
    pub(crate) fn frame(&mut self, stream: &Segments<'_>, out: &mut Vec<u8>) -> Result<(), ModelError> {
        // Room for a quarter of the stream (the wire bodies compress 4–9×):
        // written once, not built aside and copied.
        out.clear();
        out.reserve(stream.len / 4 + 4096);
        for walked in messages(stream) {
            let framed = walked?;
            let message = arrow_ipc::root_as_message(&framed.header).map_err(|e| ModelError::Ipc(e.to_string()))?;
            match message.header_type() {
                MessageHeader::RecordBatch | MessageHeader::DictionaryBatch => self.compressed_message(out, &message, stream, &framed)?,
                _ => {
                    let body = stream.get(framed.body_start, framed.body_len).expect("checked by the walk");
                    append_message(out, &framed.header, &body);
                }
            }
        }
        out.extend_from_slice(&CONTINUATION);
        out.extend_from_slice(&0u32.to_le_bytes());
        Ok(())
    }

    /// A record batch or dictionary message with its buffers compressed,
    /// appended to `out`.
    fn compressed_message(
        &mut self,
        out: &mut Vec<u8>,
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
        let mut compressed = Vec::new();
        // The buffers written so far that lie where arrow's encoder handed
        // them out, by address and length, with where their bytes went: the
        // same memory again (the row keys every per-source column shares)
        // is copied from there, not compressed again.
        let mut written: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
        let buffers = batch.buffers().map_or(0, |b| b.len());
        for (index, buffer) in batch.buffers().into_iter().flatten().enumerate() {
            let data = buffer_range(buffer, framed.body_len)
                .and_then(|range| stream.get(framed.body_start + range.start, range.len()))
                .ok_or_else(|| bad("a buffer outside the body"))?;
            let start = self.body.len();
            let at = match &data {
                Cow::Borrowed(borrowed) if !borrowed.is_empty() => Some((borrowed.as_ptr() as usize, borrowed.len())),
                _ => None,
            };
            match at.and_then(|at| written.iter().find(|w| (w.0, w.1) == at)) {
                Some((_, _, earlier)) => self.body.extend_from_within(earlier.clone()),
                None => {
                    let slot = BufferSlot {
                        dictionary: dictionary.map(|d| d.id()),
                        buffers,
                        index,
                    };
                    self.push_buffer(&data, slot)?;
                    if let Some((address, len)) = at {
                        written.push((address, len, start..self.body.len()));
                    }
                }
            }
            compressed.push(arrow_ipc::Buffer::new(start as i64, (self.body.len() - start) as i64));
            self.body.resize(self.body.len().next_multiple_of(ALIGNMENT), 0);
        }

        let fbb = &mut self.fbb;
        fbb.reset();
        let field_nodes: Vec<arrow_ipc::FieldNode> = batch.nodes().map(|n| n.iter().copied().collect()).unwrap_or_default();
        let nodes = fbb.create_vector(&field_nodes);
        let buffers = fbb.create_vector(&compressed);
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
        let union = match dictionary {
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
            m.add_header(union);
            m.finish()
        };
        fbb.finish(root, None);
        append_message(out, self.fbb.finished_data(), &self.body);
        Ok(())
    }

    /// One buffer as arrow writes a compressed one: its uncompressed length
    /// and a zstd frame, or −1 and the bytes where those would be larger or
    /// where the buffer in `slot` did not compress by an eighth lately.
    fn push_buffer(&mut self, data: &[u8], slot: BufferSlot) -> Result<(), ModelError> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() >= ADAPTIVE_BYTES {
            if let Some(streak) = self.raw_streaks.get_mut(&slot) {
                if *streak > 0 {
                    *streak -= 1;
                    self.body.extend_from_slice(&STORED_UNCOMPRESSED.to_le_bytes());
                    self.body.extend_from_slice(data);
                    return Ok(());
                }
            }
        }
        let start = self.body.len();
        self.body.extend_from_slice(&(data.len() as i64).to_le_bytes());
        self.body.reserve(zstd::zstd_safe::compress_bound(data.len()));
        let mut cursor = Cursor::new(&mut self.body);
        cursor.set_position((start + 8) as u64);
        self.compressor
            .compress_to_buffer(data, &mut cursor)
            .map_err(|e| ModelError::Ipc(format!("zstd: {e}")))?;
        self.frames += 1;
        let framed = self.body.len() - start;
        if data.len() >= ADAPTIVE_BYTES {
            if framed > data.len() - data.len() / 8 {
                if self.raw_streaks.len() >= MAX_VERDICTS {
                    self.raw_streaks.clear();
                }
                self.raw_streaks.insert(slot, RAW_STREAK);
            } else {
                self.raw_streaks.remove(&slot);
            }
        }
        if framed > data.len() {
            self.body.truncate(start);
            self.body.extend_from_slice(&STORED_UNCOMPRESSED.to_le_bytes());
            self.body.extend_from_slice(data);
        }
        Ok(())
    }
}

/// Where `buffer` lies in a body of `body_len` bytes; `None` where its
/// offset or length is negative or it ends past the body.
pub(crate) fn buffer_range(buffer: &arrow_ipc::Buffer, body_len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(buffer.offset()).ok()?;
    let end = start.checked_add(usize::try_from(buffer.length()).ok()?)?;
    (end <= body_len).then_some(start..end)
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

    /// A buffer the record batch holds twice (the row keys the per-source
    /// dictionary columns share) is compressed once, its frame written
    /// again; equal keys in other memory are compressed each; both bodies
    /// read back as their batches.
    #[test]
    fn a_buffer_columns_share_is_compressed_once() {
        use arrow_array::types::UInt32Type;
        use arrow_array::{Array, ArrayRef, DictionaryArray, RecordBatch, StringArray, UInt32Array};
        let keys: Vec<u32> = (0..8192u32).map(|i| (i / 7) % 3).collect();
        let column = |keys: UInt32Array, values: [&str; 3]| -> ArrayRef {
            std::sync::Arc::new(
                DictionaryArray::<UInt32Type>::try_new(keys, std::sync::Arc::new(StringArray::from(values.to_vec()))).unwrap(),
            )
        };
        let shared = UInt32Array::from(keys.clone());
        let one = RecordBatch::try_from_iter([
            ("a", column(shared.clone(), ["x", "y", "z"])),
            ("b", column(shared, ["p", "q", "r"])),
        ])
        .unwrap();
        let two = RecordBatch::try_from_iter([
            ("a", column(UInt32Array::from(keys.clone()), ["x", "y", "z"])),
            ("b", column(UInt32Array::from(keys), ["p", "q", "r"])),
        ])
        .unwrap();
        let frame = |batch: &RecordBatch| {
            let mut stream = arrow_ipc::writer::StreamEncoder::try_new(&batch.schema()).unwrap();
            let mut parts = stream.encode(batch).unwrap();
            parts.extend(stream.finish().unwrap());
            let mut framer = ZstdFramer::new();
            let mut out = Vec::new();
            framer.frame(&Segments::new(parts.iter().map(|p| p.as_slice())), &mut out).unwrap();
            let read: Vec<RecordBatch> = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(&out), None)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(read, std::slice::from_ref(batch));
            (framer.frames, out)
        };
        let ((shared_frames, shared_body), (own_frames, own_body)) = (frame(&one), frame(&two));
        assert_eq!(shared_frames + 1, own_frames);
        let keys_written = |body: &[u8]| {
            let found = buffers(body);
            let of_keys: Vec<_> = found.into_iter().filter(|(len, _)| *len == 8192 * 4).collect();
            assert_eq!(of_keys.len(), 2);
            of_keys
        };
        assert_eq!(keys_written(&shared_body), keys_written(&own_body));
        assert!(one.column(0).to_data().buffers()[0].as_ptr() == one.column(1).to_data().buffers()[0].as_ptr());
    }

    /// Each buffer of a body: its length prefix and its bytes.
    fn buffers(body: &[u8]) -> Vec<(i64, Vec<u8>)> {
        let stream = Segments::new([body]);
        let mut out = Vec::new();
        for walked in messages(&stream) {
            let framed = walked.unwrap();
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
        use zstd::stream::raw::CParameter;
        let mut tuned = zstd::bulk::Compressor::new(WIRE_ZSTD_LEVEL).unwrap();
        tuned.set_parameter(CParameter::HashLog(WIRE_ZSTD_HASH_LOG)).unwrap();
        tuned.set_parameter(CParameter::MinMatch(WIRE_ZSTD_MIN_MATCH)).unwrap();
        let lines: Vec<String> = (0..8_000)
            .map(|i| {
                format!(
                    "step {i} loss=0.{:04} lr=3e-4 tokens/s={} host-{}",
                    i % 7919,
                    i * 7 % 100_003,
                    i % 13
                )
            })
            .collect();
        let text: String = lines.concat();
        let found = buffers(&body_of(&lines));
        let (_, frame) = found
            .iter()
            .find(|(len, _)| *len == text.len() as i64)
            .expect("the text buffer, compressed");
        assert_eq!(frame, &tuned.compress(text.as_bytes()).unwrap());
        assert_eq!(zstd::bulk::decompress(frame, text.len()).unwrap(), text.as_bytes());
        // Level 1's own parameters make another frame of this text.
        assert_ne!(frame, &zstd::bulk::compress(text.as_bytes(), WIRE_ZSTD_LEVEL).unwrap());
        // Two rows: a frame's own header outweighs each buffer.
        let found = buffers(&body_of(&lines[..2]));
        let stored = found.iter().filter(|(len, _)| *len == STORED_UNCOMPRESSED).count();
        assert!(stored > 0, "{stored} of {} buffers stored", found.len());
    }

    /// A buffer that compresses by less than an eighth is compressed once,
    /// stored as it is for the next [`RAW_STREAK`] bodies, then tried
    /// again; a text column beside it is compressed in every body, and
    /// arrow's reader reads every body back to the batch.
    #[test]
    fn buffers_that_barely_compress_are_stored_for_a_while() {
        use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
        // Pseudo-random numbers, every tenth run of 16 of them zeros: zstd
        // saves about a tenth.
        let mut state = 0x2545_f491_u32;
        let noisy: Vec<u32> = (0..8192)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if i / 16 % 10 == 0 {
                    0
                } else {
                    state
                }
            })
            .collect();
        let text: Vec<String> = (0..8192).map(|i| format!("step {} loss=0.25", i % 100)).collect();
        let batch = RecordBatch::try_from_iter([
            ("noisy", std::sync::Arc::new(UInt32Array::from(noisy.clone())) as ArrayRef),
            ("text", std::sync::Arc::new(StringArray::from(text)) as ArrayRef),
        ])
        .unwrap();
        let noisy_bytes: Vec<u8> = noisy.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut encoder = crate::batch::IpcEncoder::default();
        let mut stored = Vec::new();
        for _ in 0..RAW_STREAK + 2 {
            let body = encoder.encode(std::slice::from_ref(&batch), Default::default()).unwrap().into_vec();
            let found = buffers(&body);
            let (prefix, bytes) = found
                .iter()
                .find(|(_, b)| b.len() >= noisy_bytes.len() * 3 / 4)
                .expect("the noisy buffer");
            stored.push(*prefix == STORED_UNCOMPRESSED);
            if *prefix == STORED_UNCOMPRESSED {
                assert_eq!(bytes, &noisy_bytes);
            } else {
                assert!(
                    bytes.len() > noisy_bytes.len() * 7 / 8 && bytes.len() < noisy_bytes.len(),
                    "{}",
                    bytes.len()
                );
            }
            // The text's values are compressed.
            let text_len = batch.column(1).to_data().buffers()[1].len() as i64;
            assert!(found.iter().any(|(prefix, _)| *prefix == text_len), "the text compressed");
            let read: Vec<RecordBatch> = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(&body), None)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(read, std::slice::from_ref(&batch));
        }
        let mut want = vec![false];
        want.extend(std::iter::repeat_n(true, RAW_STREAK as usize));
        want.push(false);
        assert_eq!(stored, want);
    }

    /// A stream cut inside a message ends the walk with an error; cut
    /// between messages, it yields fewer of them.
    #[test]
    fn cut_streams_end_in_an_error_or_fewer_messages() {
        let body = body_of(&["a line".to_string(), "another".to_string()]);
        let whole = Segments::new([&body[..]]);
        let ends: Vec<usize> = messages(&whole).map(|m| m.map(|m| m.body_start + m.body_len).unwrap()).collect();
        assert_eq!(ends.len(), 2, "the schema and one batch");
        for cut in 0..body.len() {
            let stream = Segments::new([&body[..cut]]);
            let read: Vec<_> = messages(&stream).collect();
            let complete = ends.iter().filter(|&&end| end <= cut).count();
            assert!(read[..complete].iter().all(Result::is_ok), "at {cut}");
            // Past the last whole message: 0 to 3 bytes read as no length
            // (the end), anything more as a cut message (or a cut end
            // marker).
            let next_start = complete.checked_sub(1).map_or(0, |i| ends[i]);
            let starts_another = cut >= next_start + 4;
            assert_eq!(read.len(), complete + usize::from(starts_another), "at {cut}");
            if starts_another {
                assert!(read[complete].is_err(), "at {cut}");
                assert!(crate::batch::declared_decoded_size(&body[..cut]).is_err(), "at {cut}");
            }
        }
    }

    proptest::proptest! {
        /// A body with bytes overwritten anywhere is refused or decoded,
        /// never a panic, by the size check and the decoder the indexer
        /// runs on what arrives.
        #[test]
        fn corrupted_bodies_do_not_panic(edits in proptest::collection::vec((0..4096usize, proptest::num::u8::ANY), 1..8)) {
            let lines: Vec<String> = (0..50).map(|i| format!("line {i} loss={i}.5")).collect();
            let mut body = body_of(&lines);
            for (at, byte) in edits {
                let len = body.len();
                body[at % len] = byte;
            }
            let _ = crate::batch::declared_decoded_size(&body);
            let _ = crate::batch::decode_ipc(&body, &crate::batch::wire_schema(), 1 << 20, 1 << 30);
        }
    }
}
