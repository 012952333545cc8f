//! The write-ahead log: every accepted batch is appended here, and fsynced,
//! before the indexer acknowledges it; on start the records not yet in a
//! committed split are replayed.
//!
//! Segment files `wal/<first seq>.wal` hold records framed as
//! `u32 payload length | u32 CRC32 of payload | payload`. A torn or corrupt
//! record (a crash mid-write, a flipped byte) ends its segment: the bad tail
//! is cut off and counted, never a crash, and every intact record before it
//! is kept. Segments whose records are all in committed splits are deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::IndexerError;

/// Largest payload a record may have.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;
const HEADER_BYTES: usize = 8;

/// One replayed record.
#[derive(Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records: Vec<WalRecord>,
    /// Damaged record tails cut off.
    pub corruptions: u64,
    /// Bytes cut off with them.
    pub bytes_cut: u64,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
}

/// An append-only log of records with sequence numbers.
pub struct WriteAheadLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    active: Option<File>,
    active_len: u64,
    next_seq: u64,
    fsync: bool,
    /// A failed write left bytes that could not be cut off yet: the next
    /// append cuts them first; where it still cannot, it goes to a new
    /// segment (replay cuts the damaged tail of the old one), or fails
    /// while the active segment holds no record yet (a new one would bear
    /// its name, and a record after the garbage would be lost at replay).
    cut_pending: bool,
    /// Faults a test injects into the next appends.
    #[cfg(test)]
    faults: Faults,
}

/// Faults injected by a test: so many appends write half their frame and
/// fail, and so many cuts of such a frame fail.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    torn_writes: u32,
    failed_cuts: u32,
}

#[cfg(test)]
impl Faults {
    fn take_torn_write(&mut self) -> bool {
        let torn = self.torn_writes > 0;
        self.torn_writes = self.torn_writes.saturating_sub(1);
        torn
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexerError + '_ {
    move |source| IndexerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl WriteAheadLog {
    /// Opens the log in `dir`, replaying (and repairing) every segment.
    /// Records with `seq <= committed_seq` are skipped (already in splits).
    pub fn open(dir: &Path, segment_bytes: u64, committed_seq: u64, fsync: bool) -> Result<(Self, ReplayReport), IndexerError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first_seq) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
                segments.push(Segment {
                    first_seq,
                    path: entry.path(),
                });
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        let mut report = ReplayReport::default();
        let mut next_seq = committed_seq + 1;
        for (i, segment) in segments.iter().enumerate() {
            let mut seq = segment.first_seq;
            // A segment left for a new one after a torn frame it could not
            // cut may end with a whole frame whose append failed (its sync
            // did): the next segment's records own those numbers.
            let next_first = segments.get(i + 1).map_or(u64::MAX, |s| s.first_seq);
            let (records_end, file_len) = replay_segment(&segment.path, |payload| {
                if seq > committed_seq && seq < next_first {
                    report.records.push(WalRecord { seq, payload });
                }
                seq += 1;
            })?;
            if records_end < file_len {
                report.corruptions += 1;
                report.bytes_cut += file_len - records_end;
                tracing::warn!(path = %segment.path.display(), at = records_end, cut = file_len - records_end, "damaged WAL tail cut off");
                let file = OpenOptions::new().write(true).open(&segment.path).map_err(io(&segment.path))?;
                file.set_len(records_end).map_err(io(&segment.path))?;
                file.sync_all().map_err(io(&segment.path))?;
            }
            next_seq = next_seq.max(seq);
        }
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            active: None,
            active_len: 0,
            next_seq,
            fsync,
            cut_pending: false,
            #[cfg(test)]
            faults: Faults::default(),
        };
        // Never append after a repaired tail in an old segment: start fresh.
        wal.roll()?;
        Ok((wal, report))
    }

    fn roll(&mut self) -> Result<(), IndexerError> {
        let path = self.dir.join(format!("{:020}.wal", self.next_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        if !self.segments.iter().any(|s| s.path == path) {
            self.segments.push(Segment {
                first_seq: self.next_seq,
                path: path.clone(),
            });
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        }
        self.active = Some(file);
        self.active_len = len;
        Ok(())
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one record durably and returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, IndexerError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(IndexerError::TooLarge(format!(
                "WAL record of {} bytes exceeds {MAX_RECORD_BYTES}",
                payload.len()
            )));
        }
        let mut roll = self.active_len >= self.segment_bytes;
        if self.cut_pending {
            if let Err(source) = self.cut_torn_frame() {
                let active = self.segments.last().expect("an active segment exists after open");
                if active.first_seq == self.next_seq {
                    let path = active.path.clone();
                    return Err(IndexerError::Io { path, source });
                }
                roll = true;
            }
        }
        if roll {
            self.roll()?;
        }
        // Only now: had the roll failed, the torn frame would still be there.
        self.cut_pending = false;
        let path = self.segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = self.active.as_mut().expect("an active segment exists after open");
        let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        #[cfg(test)]
        let torn = self.faults.take_torn_write();
        #[cfg(not(test))]
        let torn = false;
        let written = if torn {
            file.write_all(&frame[..frame.len() / 2])
                .and_then(|()| Err(std::io::Error::other("a torn write injected by a test")))
        } else {
            file.write_all(&frame)
                .and_then(|_| if self.fsync { file.sync_data() } else { Ok(()) })
        };
        if let Err(source) = written {
            // Cut a partial frame so the next append does not follow garbage.
            self.cut_pending = self.cut_torn_frame().is_err();
            return Err(IndexerError::Io { path, source });
        }
        self.active_len += frame.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Cuts the active segment back to its last whole record.
    fn cut_torn_frame(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.failed_cuts > 0 {
            self.faults.failed_cuts -= 1;
            return Err(std::io::Error::other("a failed cut injected by a test"));
        }
        let file = self.active.as_mut().expect("an active segment exists after open");
        file.set_len(self.active_len)
    }

    /// Deletes segments whose records all have `seq <= committed_seq`.
    pub fn remove_committed(&mut self, committed_seq: u64) -> Result<(), IndexerError> {
        while self.segments.len() > 1 && self.segments[1].first_seq <= committed_seq + 1 {
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(io(&segment.path))?;
        }
        if self.segments.len() == 1 && self.next_seq == committed_seq + 1 && self.active_len > 0 {
            // Everything is committed: start a new segment and drop the old.
            let old = self.segments.remove(0);
            self.roll()?;
            fs::remove_file(&old.path).map_err(io(&old.path))?;
        }
        Ok(())
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Reads records from one segment until the end or the first damaged
/// record. Returns (end of the last intact record, file length).
fn replay_segment(path: &Path, mut on_record: impl FnMut(Vec<u8>)) -> Result<(u64, u64), IndexerError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io(path))?;
    let mut pos = 0usize;
    while bytes.len() - pos >= HEADER_BYTES {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD_BYTES || bytes.len() - pos - HEADER_BYTES < len {
            break;
        }
        let payload = &bytes[pos + HEADER_BYTES..pos + HEADER_BYTES + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        on_record(payload.to_vec());
        pos += HEADER_BYTES + len;
    }
    Ok((pos as u64, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_appended_after_a_torn_frame_that_could_not_be_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        // The first append of a fresh segment tears, and so does its cut,
        // once and then again at the next append.
        wal.faults = Faults {
            torn_writes: 1,
            failed_cuts: 2,
        };
        assert!(wal.append(b"torn").is_err());
        let err = wal.append(b"refused while the torn frame is there").unwrap_err();
        assert!(err.to_string().contains("a failed cut injected by a test"), "{err}");
        assert_eq!(wal.append(b"kept").unwrap(), 1);
        assert_eq!(wal.append(b"and kept").unwrap(), 2);
        drop(wal);
        let (_, report) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        let payloads: Vec<&[u8]> = report.records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, [b"kept".as_slice(), b"and kept".as_slice()]);
        assert_eq!(report.corruptions, 0);
    }

    #[test]
    fn a_segment_with_records_and_an_uncut_torn_frame_is_left_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        assert_eq!(wal.append(b"first").unwrap(), 1);
        wal.faults = Faults {
            torn_writes: 1,
            failed_cuts: 2,
        };
        assert!(wal.append(b"torn").is_err());
        // The cut fails again: the next record goes to a new segment.
        assert_eq!(wal.append(b"second").unwrap(), 2);
        drop(wal);
        let (_, report) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        let payloads: Vec<&[u8]> = report.records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, [b"first".as_slice(), b"second".as_slice()]);
        assert_eq!(report.corruptions, 1, "the torn frame, cut at replay");
    }

    #[test]
    fn a_whole_frame_left_behind_a_failed_append_does_not_take_a_number_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        assert_eq!(wal.append(b"first").unwrap(), 1);
        // The failed append's frame stays whole (its sync failed, say), and
        // the next append goes to a new segment numbered from 2.
        let old = wal.segments[0].path.clone();
        let mut frame = 6u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(b"failed").to_le_bytes());
        frame.extend_from_slice(b"failed");
        OpenOptions::new().append(true).open(&old).unwrap().write_all(&frame).unwrap();
        wal.roll().unwrap();
        assert_eq!(wal.append(b"second").unwrap(), 2);
        drop(wal);
        let (_, report) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        let records: Vec<(u64, &[u8])> = report.records.iter().map(|r| (r.seq, r.payload.as_slice())).collect();
        assert_eq!(records, [(1, b"first".as_slice()), (2, b"second".as_slice())]);
    }

    fn payloads() -> Vec<Vec<u8>> {
        (0..4u8).map(|i| vec![i; 10 + i as usize * 7]).collect()
    }

    fn write_all(dir: &Path) -> PathBuf {
        let (mut wal, report) = WriteAheadLog::open(dir, 1 << 20, 0, true).unwrap();
        assert!(report.records.is_empty());
        for p in payloads() {
            wal.append(&p).unwrap();
        }
        dir.join(format!("{:020}.wal", 1))
    }

    #[test]
    fn replays_in_order_and_skips_committed() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path());
        let (_, report) = WriteAheadLog::open(dir.path(), 1 << 20, 0, true).unwrap();
        assert_eq!(report.records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), payloads());
        assert_eq!(report.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let (mut wal, report) = WriteAheadLog::open(dir.path(), 1 << 20, 2, true).unwrap();
        assert_eq!(report.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(wal.append(b"next").unwrap(), 5);
    }

    /// Prometheus' `TestCorruptAndCarryOn`, for every byte of the last record:
    /// truncating there or flipping that byte keeps every intact record,
    /// counts the damage, and appending goes on.
    #[test]
    fn damaged_last_record_at_every_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let segment = write_all(dir.path());
        let original = fs::read(&segment).unwrap();
        let last_len = HEADER_BYTES + payloads().last().unwrap().len();
        let last_start = original.len() - last_len;
        let intact: Vec<Vec<u8>> = payloads()[..3].to_vec();
        for cut in last_start..original.len() {
            for flip in [false, true] {
                let case = tempfile::tempdir().unwrap();
                let path = case.path().join(segment.file_name().unwrap());
                let mut bytes = original.clone();
                if flip {
                    bytes[cut] ^= 0xA5;
                } else {
                    bytes.truncate(cut);
                }
                fs::write(&path, &bytes).unwrap();
                let (mut wal, report) = WriteAheadLog::open(case.path(), 1 << 20, 0, true).unwrap();
                let got: Vec<_> = report.records.iter().map(|r| r.payload.clone()).collect();
                assert_eq!(got, intact, "cut={cut} flip={flip}");
                let damaged = cut != last_start || flip;
                assert_eq!(report.corruptions, damaged as u64, "cut={cut} flip={flip}");
                assert_eq!(fs::metadata(&path).unwrap().len() as usize, last_start, "tail cut off");
                let seq = wal.append(b"after").unwrap();
                assert_eq!(seq, 4);
                drop(wal);
                let (_, again) = WriteAheadLog::open(case.path(), 1 << 20, 0, true).unwrap();
                assert_eq!(again.records.len(), 4);
                assert_eq!(again.records[3].payload, b"after");
                assert_eq!(again.corruptions, 0);
            }
        }
    }

    #[test]
    fn committed_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = WriteAheadLog::open(dir.path(), 32, 0, false).unwrap();
        for p in payloads() {
            wal.append(&p).unwrap();
        }
        let before = fs::read_dir(dir.path()).unwrap().count();
        assert!(before >= 3);
        wal.remove_committed(4).unwrap();
        let (_, report) = WriteAheadLog::open(dir.path(), 32, 4, false).unwrap();
        assert!(report.records.is_empty());
        assert!(fs::read_dir(dir.path()).unwrap().count() <= 2);
    }
}
