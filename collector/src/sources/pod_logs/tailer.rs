//! The pod-log tailer: follows every kubelet log file under the logs root by
//! identity, reads complete physical lines, parses them (CRI or docker,
//! detected per file), joins partial segments per container stream (also
//! across a rotation), caps joined lines, and hands finished lines to a sink.
//!
//! It is a synchronous state machine driven by [`PodLogTailer::scan`] and
//! [`PodLogTailer::poll`]; the thread, the filesystem watcher and batching
//! live in the module above. Each emitted line carries a *position* in its
//! source file, `end offset × 4` for a line, `end offset × 4 + 1..3` for a
//! partial flushed on its own after the source's last line, and `end offset
//! × 4 − 1` for the first piece of a line of redraws split at the cap at its
//! final segment (a CRI line is tens of bytes: below its own position,
//! above every earlier one); positions rise
//! strictly per source, so the indexer can drop lines it already holds
//! after a restart. A file that reuses a released inode, or is truncated,
//! gets a new generation and with it a new source.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{LogFormat, Segment, Stream};
use super::path::PodLogPath;
use crate::checkpoint::{FileCheckpoint, FileIdentity, Fingerprint, PartialCheckpoint, ReleasedFile, TailerCheckpoint, FINGERPRINT_BYTES};
use crate::metrics::CollectorMetrics;
use weft_model::time::Rfc3339Reader;

/// Tunables of the tailer.
#[derive(Clone, Debug)]
pub struct TailerConfig {
    /// Longest joined line kept; longer lines keep their head and are marked
    /// truncated, except a line of redraws split before a carriage return
    /// (see `redraw_split`).
    pub max_line_bytes: usize,
    /// Size of each read from a file.
    pub read_buffer_bytes: usize,
    /// Most bytes read from one file in one pass, so one busy file cannot
    /// starve the others.
    pub max_bytes_per_pass: usize,
    /// A partial line still unfinished this long after its first segment is
    /// emitted as it stands; the rest of the line follows as another record.
    /// (A line already cut at `max_line_bytes` waits 60 times as long for
    /// its final piece, its rest dropped meanwhile, as a held redraw does.)
    pub partial_timeout: Duration,
    /// Most files held open at once.
    pub max_open_files: usize,
    /// Read every file in this format instead of detecting it per file.
    pub forced_format: Option<ForcedFormat>,
}

/// A format to read files in, whatever their first line looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForcedFormat {
    Cri,
    Docker,
    /// Each line is a message as it is (no runtime framing).
    Plain,
}

impl Default for TailerConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: 1024 * 1024,
            read_buffer_bytes: 256 * 1024,
            max_bytes_per_pass: 4 * 1024 * 1024,
            partial_timeout: Duration::from_secs(5),
            max_open_files: 4096,
            forced_format: None,
        }
    }
}

/// A finished log line, borrowed from the tailer's buffers.
#[derive(Debug)]
pub struct LogLine<'a> {
    /// The file's path parts, shared by all its lines: a sink that keeps
    /// a clone knows the next line is from the same file by `Arc::ptr_eq`
    /// (comparing the texts on every line had cost 2 % of the collector).
    pub meta: &'a Arc<PodLogPath>,
    pub source_key: &'a Arc<str>,
    /// Strictly increasing per source; see the module docs.
    pub position: u64,
    pub ts: i64,
    /// `None` for a line that did not parse.
    pub stream: Option<Stream>,
    pub text: &'a [u8],
    pub truncated: bool,
    pub parse_error: bool,
    /// `text` is known to be UTF-8: the tailer checks each chunk it reads
    /// at once, and text from a chunk that passed, starting and ending at
    /// character boundaries, needs no check of its own (per line, the
    /// check had been 7 % of tail + parse + batch). Set only here: a sink
    /// takes such text unchecked.
    pub(crate) utf8: bool,
}

/// Receives the tailer's lines.
pub trait LineSink {
    fn line(&mut self, line: LogLine<'_>);
    /// True when the sink wants the tailer to stop reading for now.
    fn is_full(&self) -> bool {
        false
    }
}

struct TailedFile {
    identity: FileIdentity,
    fingerprint: Option<Fingerprint>,
    generation: u32,
    path: PathBuf,
    meta: Arc<PodLogPath>,
    group: Arc<str>,
    file: File,
    /// End of the last complete physical line consumed.
    offset: u64,
    /// Bytes of an unfinished physical line (after `offset`).
    carry: Vec<u8>,
    /// Inside an over-long physical line whose head was already emitted.
    skipping: bool,
    format: Option<LogFormat>,
    /// The date and time of day of the last CRI timestamp read.
    timestamps: Rfc3339Reader,
    source_key: Arc<str>,
    /// Highest position emitted from this source (0 before the first).
    last_position: u64,
    at_eof: bool,
    deleted_passes: u32,
    missing_scans: u32,
    /// The addresses of the chunk being consumed that hold whole lines of
    /// valid UTF-8 (empty outside `consume_chunk`, or when the check
    /// failed): text emitted from inside them, starting and ending at
    /// character boundaries, is UTF-8.
    utf8_span: std::ops::Range<usize>,
}

struct Pending {
    ts: i64,
    bytes: Vec<u8>,
    truncated: bool,
    /// The line reached the cap and its head was already emitted: drop the
    /// remaining segments up to the final one.
    skipping: bool,
    meta: Arc<PodLogPath>,
    source: FileIdentity,
    source_key: Arc<str>,
    /// Consumed offset of the source when it was last known (used when the
    /// source is no longer open).
    source_offset: u64,
    /// When the first segment arrived; the partial times out from here.
    started: Instant,
    /// Only the unfinished last redraw of a flushed partial (see
    /// `hold_last_redraw`): it waits [`HELD_TIMEOUTS`] timeouts.
    held: bool,
}

/// How many partial timeouts a held redraw waits for the piece that
/// finishes it: the runtime writes a piece per 16 KiB, which a slow bar
/// (a redraw a second) fills in minutes.
const HELD_TIMEOUTS: u32 = 60;

/// Most released inodes remembered for generation numbering.
const MAX_RELEASED: usize = 4096;

type JoinKey = (Arc<str>, Stream);

/// Follows all pod log files under one root.
pub struct PodLogTailer {
    root: PathBuf,
    collector_id: String,
    config: TailerConfig,
    files: BTreeMap<FileIdentity, TailedFile>,
    order: Vec<FileIdentity>,
    partials: HashMap<JoinKey, Pending>,
    restore: HashMap<(u64, u64), FileCheckpoint>,
    /// Next generation per released inode (oldest first), see [`ReleasedFile`].
    released: Vec<ReleasedFile>,
    /// Last position emitted per source that is no longer open but still
    /// owns pending partials.
    closed_positions: HashMap<Arc<str>, u64>,
    metrics: Arc<CollectorMetrics>,
    read_buf: Vec<u8>,
    now_ns: i64,
    /// When the tail lag was last measured.
    lag_measured_ns: i64,
}

fn group_of(meta: &PodLogPath) -> Arc<str> {
    Arc::from(format!(
        "{}_{}_{}/{}/{}",
        meta.namespace, meta.pod, meta.pod_uid, meta.container, meta.restart
    ))
}

fn meta_of_group(group: &str) -> Option<PodLogPath> {
    let (dir, restart) = group.rsplit_once('/')?;
    PodLogPath::parse(&Path::new(dir).join(format!("{restart}.log")))
}

fn identity_of(meta: &std::fs::Metadata) -> FileIdentity {
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        born,
    }
}

fn fingerprint_of(file: &File, size: u64) -> io::Result<Option<Fingerprint>> {
    let len = (size as usize).min(FINGERPRINT_BYTES);
    if len == 0 {
        return Ok(None);
    }
    let mut head = vec![0u8; len];
    file.read_exact_at(&mut head, 0)?;
    Ok(Some(Fingerprint {
        len: len as u32,
        crc: crc32fast::hash(&head),
    }))
}

fn source_key(collector_id: &str, identity: &FileIdentity, generation: u32) -> Arc<str> {
    Arc::from(format!(
        "{collector_id}/{}:{}:{}/{generation}",
        identity.dev, identity.ino, identity.born
    ))
}

/// Where a joined line over the cap `max` splits, if it is a progress bar
/// redrawn with carriage returns (tqdm through a pipe for a long epoch):
/// just before its last `\r` within the first `max` bytes, so that each
/// piece holds whole redraws (and whole characters: `\r` is ASCII) and the
/// extractor reads a whole last redraw. `None` (the line is cut) where
/// there is no such `\r`, or the rest would still be over the cap.
fn redraw_split(text: &[u8], max: usize) -> Option<usize> {
    let cut = memchr::memrchr(b'\r', &text[..text.len().min(max)])?;
    // Redraws: another `\r` before this one (a stray one is no bar).
    memchr::memrchr(b'\r', &text[..cut])?;
    (text.len() - cut <= max).then_some(cut)
}

impl PodLogTailer {
    /// A tailer over `root` that resumes from `checkpoint`.
    pub fn new(
        root: PathBuf,
        collector_id: String,
        config: TailerConfig,
        checkpoint: TailerCheckpoint,
        metrics: Arc<CollectorMetrics>,
    ) -> Self {
        let now = Instant::now();
        let mut partials = HashMap::new();
        let mut closed_positions: HashMap<Arc<str>, u64> = HashMap::new();
        for p in checkpoint.partials {
            if p.last_position > 0 {
                let last = closed_positions.entry(Arc::from(p.source_key.as_str())).or_insert(0);
                *last = (*last).max(p.last_position);
            }
            let (Some(meta), Some(stream)) = (meta_of_group(&p.group), Stream::parse(&p.stream)) else {
                continue;
            };
            let source = checkpoint
                .files
                .iter()
                .find(|f| source_key(&collector_id, &f.identity, f.generation).as_ref() == p.source_key)
                .map(|f| f.identity)
                .unwrap_or(FileIdentity { dev: 0, ino: 0, born: 0 });
            partials.insert(
                (Arc::from(p.group.as_str()), stream),
                Pending {
                    ts: p.ts,
                    bytes: p.bytes.unwrap_or_else(|| p.text.into_bytes()),
                    truncated: p.truncated,
                    skipping: p.skipping,
                    meta: Arc::new(meta),
                    source,
                    source_key: Arc::from(p.source_key.as_str()),
                    source_offset: p.source_offset,
                    started: now,
                    held: false,
                },
            );
        }
        let restore = checkpoint
            .files
            .into_iter()
            .map(|f| ((f.identity.dev, f.identity.ino), f))
            .collect();
        Self {
            read_buf: vec![0; config.read_buffer_bytes.max(1)],
            root,
            collector_id,
            config,
            files: BTreeMap::new(),
            order: Vec::new(),
            partials,
            restore,
            released: checkpoint.released,
            closed_positions,
            metrics,
            now_ns: 0,
            lag_measured_ns: 0,
        }
    }

    /// Number of files being followed.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Released sources whose last position is still kept though no
    /// pending partial is theirs.
    #[cfg(test)]
    pub(crate) fn closed_sources_without_partials(&self) -> usize {
        self.closed_positions
            .keys()
            .filter(|key| !self.partials.values().any(|p| p.source_key == **key))
            .count()
    }

    /// Lists `<root>/*/*/<log file>` and starts following files not yet
    /// followed; notices renames of followed files.
    pub fn scan(&mut self) -> io::Result<()> {
        for file in self.files.values_mut() {
            file.missing_scans += 1;
        }
        let pod_dirs = match std::fs::read_dir(&self.root) {
            Ok(dirs) => dirs,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.restore.clear();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for pod_dir in pod_dirs.flatten() {
            let Ok(containers) = std::fs::read_dir(pod_dir.path()) else {
                continue;
            };
            for container in containers.flatten() {
                let Ok(entries) = std::fs::read_dir(container.path()) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if let Some(meta) = PodLogPath::parse(&path) {
                        found.push((path, meta));
                    }
                }
            }
        }
        for (path, meta) in found {
            self.track(path, meta);
        }
        // Checkpointed files that no longer exist cannot be resumed.
        self.restore.clear();
        self.reorder();
        self.metrics.files_open.set(self.files.len() as i64);
        Ok(())
    }

    fn track(&mut self, path: PathBuf, meta: PodLogPath) {
        let Ok(stat) = std::fs::metadata(&path) else {
            return;
        };
        if !stat.is_file() {
            return;
        }
        let identity = identity_of(&stat);
        if let Some(file) = self.files.get_mut(&identity) {
            file.missing_scans = 0;
            if file.path != path {
                if meta.rotated_at.is_some() && file.meta.rotated_at.is_none() {
                    self.metrics.rotations.inc();
                }
                file.path = path;
                file.meta = Arc::new(meta);
            }
            return;
        }
        if self.files.len() >= self.config.max_open_files {
            tracing::warn!(path = %path.display(), limit = self.config.max_open_files, "not following log file: too many open files");
            return;
        }
        let Ok(handle) = File::open(&path) else {
            return;
        };
        // The file may have been replaced between stat and open.
        let Ok(stat) = handle.metadata() else { return };
        let identity = identity_of(&stat);
        if self.files.contains_key(&identity) {
            return;
        }
        let size = stat.len();
        let mut offset = 0;
        let mut skipping = false;
        let mut last_position = 0;
        let mut generation = self
            .released
            .iter()
            .rev()
            .find(|r| r.dev == identity.dev && r.ino == identity.ino)
            .map(|r| r.next_generation)
            .unwrap_or(0);
        if let Some(saved) = self.restore.remove(&(identity.dev, identity.ino)) {
            let born_matches = saved.identity.born == 0 || identity.born == 0 || saved.identity.born == identity.born;
            let head_matches = match saved.fingerprint {
                Some(fp) if size >= fp.len as u64 => {
                    let mut head = vec![0u8; fp.len as usize];
                    handle.read_exact_at(&mut head, 0).is_ok() && crc32fast::hash(&head) == fp.crc
                }
                Some(_) => false,
                None => true,
            };
            if born_matches && head_matches {
                generation = saved.generation;
                if size >= saved.offset {
                    offset = saved.offset;
                    skipping = saved.skipping;
                    last_position = saved.last_position;
                } else {
                    generation += 1;
                    self.metrics.file_truncations.inc();
                }
            } else {
                // A new generation: the old file's watermark must not apply.
                generation = generation.max(saved.generation + 1);
                tracing::info!(path = %path.display(), "inode reused by a new file, reading it from the start");
            }
        }
        let fingerprint = fingerprint_of(&handle, size).unwrap_or(None);
        let group = group_of(&meta);
        tracing::debug!(path = %path.display(), offset, "following log file");
        self.files.insert(
            identity,
            TailedFile {
                identity,
                fingerprint,
                generation,
                path,
                group,
                meta: Arc::new(meta),
                file: handle,
                offset,
                carry: Vec::new(),
                skipping,
                format: None,
                timestamps: Rfc3339Reader::default(),
                source_key: source_key(&self.collector_id, &identity, generation),
                last_position,
                at_eof: false,
                deleted_passes: 0,
                missing_scans: 0,
                utf8_span: 0..0,
            },
        );
    }

    /// Read order: per container stream group, rotated files (oldest stamp
    /// first) before the live file, so a partial line is joined in order.
    fn reorder(&mut self) {
        let mut order: Vec<_> = self
            .files
            .values()
            .map(|f| (f.group.clone(), f.meta.rotated_at.clone().unwrap_or_else(|| "~".into()), f.identity))
            .collect();
        order.sort();
        self.order = order.into_iter().map(|(_, _, id)| id).collect();
    }

    /// One pass over all followed files: reads what is available (bounded
    /// per file), emits finished lines, closes files that were deleted and
    /// fully drained, and emits partials that timed out. Returns bytes read.
    pub fn poll(&mut self, sink: &mut dyn LineSink) -> usize {
        self.now_ns = weft_model::time::now_nanos();
        let mut total = 0;
        let mut blocked_group: Option<Arc<str>> = None;
        let mut closed = Vec::new();
        let order = std::mem::take(&mut self.order);
        for identity in &order {
            if sink.is_full() {
                break;
            }
            let Some(mut file) = self.files.remove(identity) else {
                continue;
            };
            if blocked_group.as_ref().is_some_and(|g| *g == file.group) {
                self.files.insert(*identity, file);
                continue;
            }
            match self.read_file(&mut file, sink) {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(path = %file.path.display(), error = %e, "reading log file failed, will retry")
                }
            }
            if !file.at_eof {
                blocked_group = Some(file.group.clone());
            } else if self.finished(&file) {
                closed.push(*identity);
            }
            self.files.insert(*identity, file);
        }
        self.order = order;
        for identity in closed {
            if let Some(file) = self.files.remove(&identity) {
                tracing::debug!(path = %file.path.display(), "log file deleted and drained, released");
                self.detach_partials_of(&file);
                self.released
                    .retain(|r| !(r.dev == file.identity.dev && r.ino == file.identity.ino));
                self.released.push(ReleasedFile {
                    dev: file.identity.dev,
                    ino: file.identity.ino,
                    next_generation: file.generation + 1,
                });
                if self.released.len() > MAX_RELEASED {
                    self.released.remove(0);
                }
            }
        }
        if self.order.len() != self.files.len() {
            self.reorder();
        }
        self.metrics.files_open.set(self.files.len() as i64);
        if self.now_ns - self.lag_measured_ns >= 1_000_000_000 {
            self.lag_measured_ns = self.now_ns;
            let behind: u64 = self
                .files
                .values()
                .filter_map(|f| f.file.metadata().ok().map(|m| m.len().saturating_sub(f.offset)))
                .sum();
            self.metrics.tail_lag_bytes.set(behind as i64);
        }
        self.flush_stale_partials(sink);
        total
    }

    /// A drained file is released once it was unlinked (or vanished from the
    /// tree) and stayed drained for a further pass.
    fn finished(&self, file: &TailedFile) -> bool {
        let gone = match file.file.metadata() {
            Ok(stat) => stat.nlink() == 0,
            Err(_) => true,
        };
        gone && file.deleted_passes >= 1 || file.missing_scans >= 2 && file.at_eof
    }

    fn read_file(&mut self, file: &mut TailedFile, sink: &mut dyn LineSink) -> io::Result<usize> {
        let stat = file.file.metadata()?;
        let size = stat.len();
        let consumed = file.offset + file.carry.len() as u64;
        // Truncated and written again past our offset between two polls
        // (copytruncate): the head no longer matches its fingerprint.
        let head_changed = size > consumed
            && consumed > 0
            && file.fingerprint.is_some_and(|fp| {
                fp.len as usize == FINGERPRINT_BYTES && fingerprint_of(&file.file, size).ok().flatten().is_some_and(|now| now != fp)
            });
        if size < consumed || head_changed {
            tracing::info!(path = %file.path.display(), size, offset = consumed, "log file truncated, reading from the start");
            self.metrics.file_truncations.inc();
            file.offset = 0;
            file.carry.clear();
            file.skipping = false;
            file.format = None;
            file.generation += 1;
            file.source_key = source_key(&self.collector_id, &file.identity, file.generation);
            file.last_position = 0;
            file.fingerprint = None;
        }
        if file
            .fingerprint
            .is_none_or(|fp| (fp.len as usize) < FINGERPRINT_BYTES && size > fp.len as u64)
        {
            file.fingerprint = fingerprint_of(&file.file, size).unwrap_or(file.fingerprint);
        }
        let mut read = 0usize;
        file.at_eof = false;
        loop {
            if read >= self.config.max_bytes_per_pass || sink.is_full() {
                return Ok(read);
            }
            let pos = file.offset + file.carry.len() as u64;
            let want = self.read_buf.len().min(self.config.max_bytes_per_pass - read);
            let mut buf = std::mem::take(&mut self.read_buf);
            let n = match file.file.read_at(&mut buf[..want], pos) {
                Ok(n) => n,
                Err(e) => {
                    self.read_buf = buf;
                    return Err(e);
                }
            };
            if n == 0 {
                self.read_buf = buf;
                break;
            }
            read += n;
            self.metrics.bytes_read.inc_by(n as u64);
            self.consume_chunk(file, &buf[..n], pos, sink);
            self.read_buf = buf;
        }
        file.at_eof = true;
        let unlinked = stat.nlink() == 0;
        file.deleted_passes = if unlinked && read == 0 { file.deleted_passes + 1 } else { 0 };
        Ok(read)
    }

    /// Splits a chunk read at file position `pos` into physical lines.
    fn consume_chunk(&mut self, file: &mut TailedFile, chunk: &[u8], pos: u64, sink: &mut dyn LineSink) {
        let max_physical = self.config.max_line_bytes + 512;
        // One UTF-8 check of the chunk's whole lines, not one per line.
        if let Some(last) = memchr::memrchr(b'\n', chunk) {
            let lines = &chunk[..=last];
            if simdutf8::basic::from_utf8(lines).is_ok() {
                let at = lines.as_ptr_range();
                file.utf8_span = at.start as usize..at.end as usize;
            }
        }
        self.consume_lines(file, chunk, pos, max_physical, sink);
        file.utf8_span = 0..0;
    }

    /// [`Self::consume_chunk`] once its whole lines are checked.
    fn consume_lines(&mut self, file: &mut TailedFile, chunk: &[u8], pos: u64, max_physical: usize, sink: &mut dyn LineSink) {
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', chunk) {
            let end_offset = pos + newline as u64 + 1;
            if file.skipping {
                file.skipping = false;
            } else if file.carry.is_empty() {
                self.physical_line(file, &chunk[start..newline], end_offset, false, sink);
            } else {
                let mut carry = std::mem::take(&mut file.carry);
                carry.extend_from_slice(&chunk[start..newline]);
                let overlong = carry.len() > max_physical;
                let line = &carry[..carry.len().min(max_physical)];
                self.physical_line(file, line, end_offset, overlong, sink);
                carry.clear();
                file.carry = carry;
            }
            file.offset = end_offset;
            start = newline + 1;
        }
        let rest = &chunk[start..];
        let chunk_end = pos + chunk.len() as u64;
        if file.skipping {
            file.offset = chunk_end;
            return;
        }
        file.carry.extend_from_slice(rest);
        if file.carry.len() > max_physical {
            // A physical line longer than any line we keep: emit its head now
            // and skip to its end, so memory stays bounded and the file goes on.
            let carry = std::mem::take(&mut file.carry);
            self.physical_line(file, &carry[..max_physical], chunk_end, true, sink);
            file.offset = chunk_end;
            file.skipping = true;
        }
    }

    fn physical_line(&mut self, file: &mut TailedFile, line: &[u8], end_offset: u64, overlong: bool, sink: &mut dyn LineSink) {
        let raw = line;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        let forced = self.config.forced_format;
        if forced == Some(ForcedFormat::Plain) {
            let cap = line.len().min(self.config.max_line_bytes);
            emit(
                file,
                sink,
                end_offset * 4,
                self.now_ns,
                None,
                &line[..cap],
                overlong || cap < line.len(),
                false,
            );
            return;
        }
        let format = *file.format.get_or_insert_with(|| match forced {
            Some(ForcedFormat::Cri) => LogFormat::Cri,
            Some(ForcedFormat::Docker) => LogFormat::Docker,
            _ => LogFormat::detect(line),
        });
        let parsed = format.parse(line, &mut file.timestamps).or_else(|err| {
            if forced.is_some() {
                return Err(err);
            }
            let other = if format == LogFormat::Cri {
                LogFormat::Docker
            } else {
                LogFormat::Cri
            };
            other.parse(line, &mut file.timestamps).map_err(|_| err)
        });
        let position = end_offset * 4;
        match parsed {
            Ok(mut segment) => {
                // The runtime cuts a partial (P) piece at a byte count, not at
                // a line's end: a `\r` it ends with is a redraw's, the text's.
                if !segment.complete && raw.len() > line.len() {
                    if let std::borrow::Cow::Borrowed(message) = segment.message {
                        if message.as_ptr_range().end == line.as_ptr_range().end {
                            let start = line.len() - message.len();
                            segment.message = std::borrow::Cow::Borrowed(&raw[start..]);
                        }
                    }
                }
                self.join(file, segment, position, overlong, sink)
            }
            Err(err) => {
                self.metrics.parse_errors.inc();
                tracing::debug!(path = %file.path.display(), offset = end_offset, reason = err.0, "malformed log line kept raw");
                let cap = line.len().min(self.config.max_line_bytes);
                let truncated = overlong || cap < line.len();
                if truncated {
                    self.metrics.truncated_lines.inc();
                }
                emit(file, sink, position, self.now_ns, None, &line[..cap], truncated, true);
            }
        }
    }

    fn join(&mut self, file: &mut TailedFile, segment: Segment<'_>, position: u64, overlong: bool, sink: &mut dyn LineSink) {
        let max = self.config.max_line_bytes;
        if !segment.complete {
            let key = (file.group.clone(), segment.stream);
            let pending = self.partials.entry(key).or_insert_with(|| Pending {
                ts: segment.ts,
                bytes: Vec::new(),
                truncated: false,
                skipping: false,
                meta: file.meta.clone(),
                source: file.identity,
                source_key: file.source_key.clone(),
                source_offset: file.offset,
                started: Instant::now(),
                held: false,
            });
            pending.meta = file.meta.clone();
            pending.source = file.identity;
            pending.source_key = file.source_key.clone();
            pending.source_offset = position / 4;
            pending.held = false;
            if pending.skipping {
                // The cut line's rest is still coming: its wait counts from
                // the last piece, not the first.
                pending.started = Instant::now();
                return;
            }
            let room = max.saturating_sub(pending.bytes.len());
            if segment.message.len() > room && !overlong && !pending.truncated {
                // Over the cap: a line of redraws is split (see `redraw_split`);
                // the rest starts the next piece, stamped with this segment.
                let joined = pending.bytes.len();
                pending.bytes.extend_from_slice(&segment.message);
                if let Some(cut) = redraw_split(&pending.bytes, max) {
                    let rest = pending.bytes.split_off(cut);
                    let head = std::mem::replace(&mut pending.bytes, rest);
                    let ts = std::mem::replace(&mut pending.ts, segment.ts);
                    pending.started = Instant::now();
                    emit(file, sink, position, ts, Some(segment.stream), &head, false, false);
                    return;
                }
                pending.bytes.truncate(joined);
            }
            if segment.message.len() > room || overlong {
                pending.truncated = true;
            }
            let kept = segment.message.len().min(room);
            pending.bytes.extend_from_slice(&segment.message[..kept]);
            if pending.truncated {
                // The cap is reached: ship the head now (memory stays bounded)
                // and drop the rest of the line up to its final segment.
                let head = std::mem::take(&mut pending.bytes);
                let ts = pending.ts;
                pending.skipping = true;
                self.metrics.truncated_lines.inc();
                emit(file, sink, position, ts, Some(segment.stream), &head, true, false);
            }
            return;
        }
        let pending = if self.partials.is_empty() {
            None
        } else {
            self.partials.remove(&(file.group.clone(), segment.stream))
        };
        match pending {
            Some(pending) if pending.skipping => {}
            Some(mut pending) => {
                let room = max.saturating_sub(pending.bytes.len());
                let truncated = pending.truncated || overlong || segment.message.len() > room;
                if truncated && !pending.truncated && !overlong {
                    // Redraws over the cap at the final segment: split there
                    // too. The first piece takes the position just below
                    // the segment's (see the module docs).
                    let joined = pending.bytes.len();
                    pending.bytes.extend_from_slice(&segment.message);
                    if let Some(cut) = redraw_split(&pending.bytes, max) {
                        debug_assert!(position - 1 > file.last_position, "below the segment, above what came before");
                        let (head, rest) = pending.bytes.split_at(cut);
                        emit(file, sink, position - 1, pending.ts, Some(segment.stream), head, false, false);
                        emit(file, sink, position, segment.ts, Some(segment.stream), rest, false, false);
                        return;
                    }
                    pending.bytes.truncate(joined);
                }
                pending.bytes.extend_from_slice(&segment.message[..segment.message.len().min(room)]);
                if truncated {
                    self.metrics.truncated_lines.inc();
                }
                emit(
                    file,
                    sink,
                    position,
                    pending.ts,
                    Some(segment.stream),
                    &pending.bytes,
                    truncated,
                    false,
                );
            }
            None => {
                let cap = segment.message.len().min(max);
                let truncated = overlong || cap < segment.message.len();
                if truncated {
                    self.metrics.truncated_lines.inc();
                }
                emit(
                    file,
                    sink,
                    position,
                    segment.ts,
                    Some(segment.stream),
                    &segment.message[..cap],
                    truncated,
                    false,
                );
            }
        }
    }

    /// Emits a partial on its own, at a position past everything emitted
    /// from its source so far (and below the source's next line).
    fn emit_pending(&mut self, stream: Stream, pending: Pending, sink: &mut dyn LineSink) {
        if pending.skipping {
            return;
        }
        if pending.truncated {
            self.metrics.truncated_lines.inc();
        }
        if let Some(file) = self.files.get_mut(&pending.source) {
            let position = (file.last_position + 1).max(file.offset * 4 + 1);
            debug_assert!(position < (file.offset + 1) * 4, "at most three flushes share an offset");
            emit(
                file,
                sink,
                position,
                pending.ts,
                Some(stream),
                &pending.bytes,
                pending.truncated,
                false,
            );
            return;
        }
        let last = self.closed_positions.get(&pending.source_key).copied().unwrap_or(0);
        let position = (last + 1).max(pending.source_offset * 4 + 1);
        self.closed_positions.insert(pending.source_key.clone(), position);
        sink.line(LogLine {
            meta: &pending.meta,
            source_key: &pending.source_key,
            position,
            ts: pending.ts,
            stream: Some(stream),
            text: &pending.bytes,
            truncated: pending.truncated,
            parse_error: false,
            utf8: false,
        });
    }

    /// Emits partial lines whose first segment is older than the timeout,
    /// in a fixed order so positions come out the same way every time.
    pub fn flush_stale_partials(&mut self, sink: &mut dyn LineSink) {
        if !self.closed_positions.is_empty() {
            // A released source's partial continued by the next file of its
            // stream belongs to that file now.
            let partials = &self.partials;
            self.closed_positions
                .retain(|key, _| partials.values().any(|p| p.source_key == *key));
        }
        if self.partials.is_empty() {
            return;
        }
        let timeout = self.config.partial_timeout;
        let mut stale: Vec<(Arc<str>, JoinKey)> = self
            .partials
            .iter()
            // A held redraw waits longer; so does a line cut at the cap, whose
            // rest is dropped up to its final piece (had the state gone
            // at one timeout, a line written slowly would ship its rest
            // as further lines).
            .filter(|(_, p)| p.started.elapsed() >= if p.held || p.skipping { timeout * HELD_TIMEOUTS } else { timeout })
            .map(|(k, p)| (p.source_key.clone(), k.clone()))
            .collect();
        stale.sort_by(|a, b| (&a.0, &a.1 .0, a.1 .1).cmp(&(&b.0, &b.1 .0, b.1 .1)));
        for (_, key) in stale {
            if let Some(mut pending) = self.partials.remove(&key) {
                let unfinished = self.hold_last_redraw(&mut pending);
                self.emit_pending(key.1, pending, sink);
                if let Some(unfinished) = unfinished {
                    self.partials.insert(key, unfinished);
                }
            }
        }
    }

    /// A stale partial of carriage-return redraws (a progress bar still
    /// being drawn) is flushed up to its last `\r`: its last redraw, cut at
    /// the runtime's 16 KiB boundary, stays pending for the segments that
    /// finish it, so that the flushed piece ends on a whole redraw (a cut
    /// `loss=0.4` of `loss=0.4501` is not read). Only where the file is open
    /// and a flush fits at its offset for the held part and for each other
    /// partial of the file (see the module docs); the held part goes out on
    /// its own after [`HELD_TIMEOUTS`] timeouts, and a restart keeps it (the
    /// checkpoint's `last_position` puts it above what was shipped).
    fn hold_last_redraw(&self, pending: &mut Pending) -> Option<Pending> {
        if pending.skipping || pending.truncated {
            return None;
        }
        // Redraws, split as a line over the cap would be, with something
        // after the last `\r` (a cap one byte short of the text).
        let cut = redraw_split(&pending.bytes, pending.bytes.len().saturating_sub(1))?;
        let file = self.files.get(&pending.source)?;
        // One more flush must fit at this offset for the held part and one
        // for each other partial of the file (its other stream's).
        let others = self.partials.values().filter(|p| p.source == pending.source).count() as u64;
        let next = (file.last_position + 1).max(file.offset * 4 + 1);
        if next + 1 + others >= (file.offset + 1) * 4 {
            return None;
        }
        Some(Pending {
            ts: pending.ts,
            bytes: pending.bytes.split_off(cut),
            truncated: false,
            skipping: false,
            meta: pending.meta.clone(),
            source: pending.source,
            source_key: pending.source_key.clone(),
            source_offset: pending.source_offset,
            started: Instant::now(),
            held: true,
        })
    }

    /// Emits every pending partial now (end of a dry run).
    pub fn flush_all_partials(&mut self, sink: &mut dyn LineSink) {
        let mut keys: Vec<JoinKey> = self.partials.keys().cloned().collect();
        keys.sort();
        for key in keys {
            if let Some(pending) = self.partials.remove(&key) {
                self.emit_pending(key.1, pending, sink);
            }
        }
    }

    /// A released file's partials may still be continued by the next file of
    /// their stream; they keep the released file's final position so that,
    /// if they time out instead, they are emitted past its last line.
    fn detach_partials_of(&mut self, file: &TailedFile) {
        let mut owns = false;
        for pending in self.partials.values_mut().filter(|p| p.source == file.identity) {
            pending.source_offset = file.offset;
            pending.source_key = file.source_key.clone();
            pending.source = FileIdentity { dev: 0, ino: 0, born: 0 };
            owns = true;
        }
        if owns {
            let last = self.closed_positions.entry(file.source_key.clone()).or_insert(0);
            *last = (*last).max(file.last_position);
        }
    }

    /// The state to resume from if everything emitted so far is delivered.
    pub fn checkpoint(&self) -> TailerCheckpoint {
        let files = self
            .files
            .values()
            .map(|f| FileCheckpoint {
                identity: f.identity,
                fingerprint: f.fingerprint,
                generation: f.generation,
                offset: f.offset,
                skipping: f.skipping,
                path: f.path.clone(),
                last_position: f.last_position,
            })
            .collect();
        let partials = self
            .partials
            .iter()
            .map(|((group, stream), p)| PartialCheckpoint {
                group: group.to_string(),
                stream: stream.as_str().to_string(),
                ts: p.ts,
                text: String::from_utf8_lossy(&p.bytes).into_owned(),
                bytes: std::str::from_utf8(&p.bytes).is_err().then(|| p.bytes.clone()),
                truncated: p.truncated,
                skipping: p.skipping,
                source_key: self
                    .files
                    .get(&p.source)
                    .map(|f| f.source_key.to_string())
                    .unwrap_or_else(|| p.source_key.to_string()),
                source_offset: self.files.get(&p.source).map(|f| f.offset).unwrap_or(p.source_offset),
                last_position: match self.files.get(&p.source) {
                    Some(_) => 0,
                    None => self.closed_positions.get(&p.source_key).copied().unwrap_or(0),
                },
            })
            .collect();
        TailerCheckpoint {
            files,
            partials,
            released: self.released.clone(),
        }
    }
}

/// Whether `text`, a slice of valid UTF-8, starts and ends at character
/// boundaries, and so is valid UTF-8 itself: its first byte is not a
/// continuation byte, and its last character is whole (a text cut at the
/// cap may end inside one).
pub(super) fn on_char_boundaries(text: &[u8]) -> bool {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let (Some(&first), Some(&last)) = (text.first(), text.last()) else {
        return true;
    };
    if is_continuation(first) {
        return false;
    }
    if last < 0x80 {
        return true;
    }
    let from = text.len().saturating_sub(4);
    let Some(lead) = (from..text.len()).rev().find(|&i| !is_continuation(text[i])) else {
        return false;
    };
    let width = match text[lead] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    lead + width == text.len()
}

/// Hands a line to the sink and records its position on its source.
#[allow(clippy::too_many_arguments)]
fn emit(
    file: &mut TailedFile,
    sink: &mut dyn LineSink,
    position: u64,
    ts: i64,
    stream: Option<Stream>,
    text: &[u8],
    truncated: bool,
    parse_error: bool,
) {
    debug_assert!(
        position > file.last_position || file.last_position == 0,
        "positions rise per source"
    );
    file.last_position = position;
    let at = text.as_ptr_range();
    let utf8 = file.utf8_span.start <= at.start as usize && at.end as usize <= file.utf8_span.end && on_char_boundaries(text);
    sink.line(LogLine {
        meta: &file.meta,
        source_key: &file.source_key,
        position,
        ts,
        stream,
        text,
        truncated,
        parse_error,
        utf8,
    });
}
