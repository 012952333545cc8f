//! The bounded on-disk spool: batches the indexer has not acknowledged yet,
//! one file per batch, delivered in order. Each file is written atomically
//! and carries a CRC32 over its content, so a crash leaves whole files only
//! and a damaged file is detected, set aside and counted instead of being
//! delivered or stalling delivery.
//!
//! File layout: `WEFTSPL2`, u32 header length, header JSON (key, rows,
//! line bytes, checkpoint, metrics body length), u64 body length, body,
//! metrics body, u32 CRC of all before.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_model::batch::WireBody;

use crate::batcher::SealedBatch;
use crate::checkpoint::{write_atomic, TailerCheckpoint};
use crate::metrics::CollectorMetrics;
use crate::CollectorError;

const MAGIC: &[u8; 8] = b"WEFTSPL2";

#[derive(Serialize, Deserialize)]
struct SpoolHeader {
    key: String,
    rows: usize,
    line_bytes: usize,
    checkpoint: TailerCheckpoint,
    /// Bytes of the metric body after the log body (0: none).
    #[serde(default)]
    metrics_bytes: usize,
}

struct SpoolEntry {
    seq: u64,
    path: PathBuf,
    size: u64,
}

/// Batches waiting for the indexer, oldest first.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<SpoolEntry>,
    total_bytes: u64,
    next_seq: u64,
    metrics: Arc<CollectorMetrics>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CollectorError + '_ {
    move |source| CollectorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes a batch as a spool file.
fn encode(batch: &SealedBatch) -> Vec<u8> {
    let header = serde_json::to_vec(&SpoolHeader {
        key: batch.key.clone(),
        rows: batch.rows,
        line_bytes: batch.line_bytes,
        checkpoint: batch.checkpoint.clone(),
        metrics_bytes: batch.metrics_body.as_ref().map(WireBody::len).unwrap_or(0),
    })
    .expect("header serializes");
    let mut out = Vec::with_capacity(header.len() + batch.body.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(batch.body.len() as u64).to_le_bytes());
    batch.body.write_to(&mut out);
    if let Some(metrics) = &batch.metrics_body {
        metrics.write_to(&mut out);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a spool file, checking its CRC and framing.
pub(crate) fn decode(bytes: &[u8]) -> Result<SealedBatch, &'static str> {
    if bytes.len() < MAGIC.len() + 4 + 8 + 4 || &bytes[..8] != MAGIC {
        return Err("bad magic or too short");
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(content) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch");
    }
    let header_len = u32::from_le_bytes(content[8..12].try_into().expect("4 bytes")) as usize;
    let header_end = 12usize
        .checked_add(header_len)
        .filter(|e| *e + 8 <= content.len())
        .ok_or("header length out of range")?;
    let header: SpoolHeader = serde_json::from_slice(&content[12..header_end]).map_err(|_| "header is not valid json")?;
    let body_len = u64::from_le_bytes(content[header_end..header_end + 8].try_into().expect("8 bytes")) as usize;
    let body_end = header_end + 8 + body_len;
    if body_end.checked_add(header.metrics_bytes) != Some(content.len()) {
        return Err("body length mismatch");
    }
    Ok(SealedBatch {
        key: header.key,
        rows: header.rows,
        line_bytes: header.line_bytes,
        checkpoint: header.checkpoint,
        body: content[header_end + 8..body_end].to_vec().into(),
        metrics_body: (header.metrics_bytes > 0).then(|| content[body_end..].to_vec().into()),
        pool: None,
    })
}

impl Spool {
    /// Opens (creating) the spool under `dir`; damaged files are renamed to
    /// `*.corrupt` and counted.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<CollectorMetrics>) -> Result<Self, CollectorError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write that never completed; the batch is still unacknowledged
                // in the files and will be read again.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name.strip_suffix(".batch").and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            found.push(SpoolEntry { seq, path, size });
        }
        found.sort_by_key(|e| e.seq);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            next_seq: found.last().map(|e| e.seq + 1).unwrap_or(0),
            total_bytes: 0,
            entries: VecDeque::new(),
            metrics,
        };
        for entry in found {
            match fs::read(&entry.path).map_err(|_| "unreadable").and_then(|b| decode(&b).map(|_| ())) {
                Ok(()) => {
                    spool.total_bytes += entry.size;
                    spool.entries.push_back(entry);
                }
                Err(reason) => spool.set_aside(&entry.path, reason),
            }
        }
        spool.update_gauges();
        Ok(spool)
    }

    fn set_aside(&self, path: &Path, reason: &str) {
        tracing::error!(path = %path.display(), reason, "spool file is damaged; set aside as .corrupt");
        self.metrics.spool_corrupt.inc();
        let _ = fs::rename(path, path.with_extension("corrupt"));
    }

    fn update_gauges(&self) {
        self.metrics.spool_bytes.set(self.total_bytes as i64);
        self.metrics.spool_batches.set(self.entries.len() as i64);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True while the spool is below its size limit. An empty spool always
    /// takes one batch, however large.
    pub fn has_room(&self) -> bool {
        self.entries.is_empty() || self.total_bytes < self.max_bytes
    }

    /// Appends a batch durably.
    pub fn push(&mut self, batch: &SealedBatch) -> Result<(), CollectorError> {
        let seq = self.next_seq;
        let path = self.dir.join(format!("{seq:016}.batch"));
        let bytes = encode(batch);
        write_atomic(&path, &bytes).map_err(io_err(&path))?;
        self.next_seq += 1;
        self.total_bytes += bytes.len() as u64;
        self.entries.push_back(SpoolEntry {
            seq,
            path,
            size: bytes.len() as u64,
        });
        self.metrics.batches_spooled.inc();
        self.update_gauges();
        Ok(())
    }

    /// Reads the oldest batch. A damaged one is set aside and the next tried.
    pub fn head(&mut self) -> Option<SealedBatch> {
        while let Some(entry) = self.entries.front() {
            match fs::read(&entry.path).map_err(|_| "unreadable").and_then(|b| decode(&b)) {
                Ok(batch) => return Some(batch),
                Err(reason) => {
                    let entry = self.entries.pop_front().expect("front exists");
                    self.total_bytes -= entry.size;
                    self.set_aside(&entry.path, reason);
                    self.update_gauges();
                }
            }
        }
        None
    }

    /// Removes the oldest batch after it was delivered.
    pub fn pop(&mut self) -> Result<(), CollectorError> {
        if let Some(entry) = self.entries.pop_front() {
            self.total_bytes -= entry.size;
            fs::remove_file(&entry.path).map_err(io_err(&entry.path))?;
            self.update_gauges();
        }
        Ok(())
    }

    /// Moves the oldest batch to `rejected_dir` (the indexer refused it
    /// permanently), keeping at most `keep` rejected files.
    pub fn reject_head(&mut self, rejected_dir: &Path, seq: u64, keep: usize) -> Result<(), CollectorError> {
        let Some(entry) = self.entries.pop_front() else {
            return Ok(());
        };
        self.total_bytes -= entry.size;
        fs::create_dir_all(rejected_dir).map_err(io_err(rejected_dir))?;
        let target = rejected_path(rejected_dir, seq);
        fs::rename(&entry.path, &target).map_err(io_err(&entry.path))?;
        prune_rejected(rejected_dir, keep);
        self.update_gauges();
        Ok(())
    }

    /// The tailer state after the newest spooled batch: where tailing
    /// resumes, since everything before it is safe in the spool.
    pub fn last_checkpoint(&self) -> Option<TailerCheckpoint> {
        let entry = self.entries.back()?;
        fs::read(&entry.path)
            .ok()
            .and_then(|b| decode(&b).ok())
            .map(|mut b| std::mem::take(&mut b.checkpoint))
    }
}

/// Keeps the newest `keep` files of the rejected directory.
pub fn prune_rejected(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    while names.len() > keep {
        let old = names.remove(0);
        tracing::warn!(path = %old.display(), "removing oldest rejected batch (limit reached)");
        let _ = fs::remove_file(old);
    }
}

/// Writes a batch the indexer refused into `dir` for inspection.
pub fn store_rejected(dir: &Path, seq: u64, batch: &SealedBatch, keep: usize) -> Result<(), CollectorError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = rejected_path(dir, seq);
    write_atomic(&path, &encode(batch)).map_err(io_err(&path))?;
    prune_rejected(dir, keep);
    Ok(())
}

/// The highest sequence among the refused batches kept in `dir` (0 for
/// none).
pub fn last_rejected_seq(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".batch")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// A refused batch's file: named by the shipper's rejection sequence
/// (milliseconds at its start, then one up per batch), whether it came
/// from the spool or not, so the oldest sorts first and none overwrites
/// another.
fn rejected_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.batch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> SealedBatch {
        SealedBatch {
            key: format!("k{n}"),
            body: vec![n as u8; 100 + n].into(),
            metrics_body: n.is_multiple_of(2).then(|| vec![7u8; n + 3].into()),
            rows: n,
            line_bytes: n * 10,
            checkpoint: TailerCheckpoint::default(),
            pool: None,
        }
    }

    #[test]
    fn delivers_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(CollectorMetrics::unregistered());
        let mut spool = Spool::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        for n in 0..3 {
            spool.push(&batch(n)).unwrap();
        }
        assert_eq!(spool.head().unwrap().key, "k0");
        spool.pop().unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20, metrics).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.head().unwrap().key, "k1");
        spool.pop().unwrap();
        let head = spool.head().unwrap();
        assert_eq!((&head.body, &head.metrics_body), (&batch(2).body, &batch(2).metrics_body));
    }

    #[test]
    fn bounded_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 300, Arc::new(CollectorMetrics::unregistered())).unwrap();
        assert!(spool.has_room());
        spool.push(&batch(1)).unwrap();
        assert!(spool.has_room());
        spool.push(&batch(2)).unwrap();
        assert!(!spool.has_room());
    }

    #[test]
    fn damaged_files_are_set_aside_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(CollectorMetrics::unregistered());
        let mut spool = Spool::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        spool.push(&batch(1)).unwrap();
        spool.push(&batch(2)).unwrap();
        drop(spool);
        let first = dir.path().join(format!("{:016}.batch", 0));
        let len = fs::metadata(&first).unwrap().len();
        // Every truncation and every flipped byte of the first file is caught.
        let original = fs::read(&first).unwrap();
        for cut in 0..len as usize {
            assert!(decode(&original[..cut]).is_err());
        }
        for at in 0..original.len() {
            let mut bad = original.clone();
            bad[at] ^= 0x55;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        fs::write(&first, &original[..original.len() / 2]).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        assert_eq!(metrics.spool_corrupt.get(), 1);
        assert_eq!(spool.head().unwrap().key, "k2");
    }
}
