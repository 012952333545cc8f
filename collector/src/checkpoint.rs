//! File checkpoints: for each tailed file its identity (device, inode, birth
//! time, fingerprint of the first bytes), truncation generation and the
//! offset up to which the indexer has acknowledged its lines, plus the
//! pending partial (CRI `P`) line of each container stream.
//!
//! The checkpoint file is replaced atomically (temp file, fsync, rename,
//! fsync of the directory), so a crash leaves either the old or the new one,
//! never a torn file. It only ever holds positions the indexer acknowledged.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CollectorError;

/// Identity of a file: never its path, so renames and inode reuse are told
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// Birth time in nanoseconds where the filesystem reports it (statx),
    /// else 0.
    pub born: i64,
}

/// CRC32 of the first `len` bytes of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub crc: u32,
}

/// Bytes of the file head the fingerprint covers once the file is that long.
pub const FINGERPRINT_BYTES: usize = 256;

/// Where reading of one file stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    pub identity: FileIdentity,
    pub fingerprint: Option<Fingerprint>,
    /// Bumped each time the file is found truncated, so the lines written
    /// after a truncation form a new source for deduplication.
    pub generation: u32,
    /// Bytes consumed: the end of the last complete physical line read.
    pub offset: u64,
    /// The offset is inside an over-long physical line whose head was
    /// already shipped: skip to the next newline.
    #[serde(default)]
    pub skipping: bool,
    /// Last known path, for humans reading the file.
    pub path: PathBuf,
    /// The highest position emitted from the file: a partial flushed after
    /// a restart must go above it (the indexer drops what is not).
    #[serde(default)]
    pub last_position: u64,
}

/// A container stream's joined-so-far partial line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialCheckpoint {
    /// `<pod dir>/<container>/<restart>`.
    pub group: String,
    pub stream: String,
    pub ts: i64,
    pub text: String,
    /// The text's bytes where they are not UTF-8 (a piece the runtime cut
    /// inside a character); `text` then holds them repaired, for reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
    pub truncated: bool,
    /// The head was shipped at the cap; the rest up to the final segment
    /// is dropped.
    #[serde(default)]
    pub skipping: bool,
    /// Source and offset of the last segment joined, used when the partial
    /// is flushed on its own.
    pub source_key: String,
    pub source_offset: u64,
    /// Where the source is no longer open: the highest position emitted
    /// from it, for the same reason as [`FileCheckpoint::last_position`].
    #[serde(default)]
    pub last_position: u64,
}

/// A released (deleted and drained) file: a new file that reuses its
/// inode starts at `next_generation`, so it never shares a source key (and
/// the indexer's watermark) with the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedFile {
    pub dev: u64,
    pub ino: u64,
    pub next_generation: u32,
}

/// Everything needed to resume tailing exactly where acknowledged data ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailerCheckpoint {
    pub files: Vec<FileCheckpoint>,
    pub partials: Vec<PartialCheckpoint>,
    #[serde(default)]
    pub released: Vec<ReleasedFile>,
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// The checkpoint file under the collector's state directory.
pub struct CheckpointStore {
    path: PathBuf,
}

impl CheckpointStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("checkpoints.json"),
        }
    }

    /// Loads the last written checkpoint; an absent file is an empty
    /// checkpoint, an unreadable one is an error naming the file.
    pub fn load(&self) -> Result<TailerCheckpoint, CollectorError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CollectorError::Checkpoint {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TailerCheckpoint::default()),
            Err(e) => Err(CollectorError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    /// [`load`](Self::load), except that a file that is there but does not
    /// parse (a damaged disk; the file is replaced atomically, so not a
    /// torn write) is renamed to `checkpoints.json.unreadable-<ms>` and an
    /// empty checkpoint returned, where a collector refusing to start
    /// would ship nothing from its node. Every file is read again from its
    /// start and the indexer drops by position what it already holds, with
    /// two exceptions the lost checkpoint had told apart: a file truncated
    /// in place since it was first read (kubelet rotates by renaming; a
    /// `copytruncate` does this), or a reused inode on a filesystem without
    /// creation times, comes back as its first generation, and its lines
    /// below that generation's old watermark are taken for ones held; and a
    /// rotated file whose source the indexer forgot (silent for its whole
    /// retention) is stored again.
    pub fn load_or_set_aside(&self) -> Result<(TailerCheckpoint, Option<PathBuf>), CollectorError> {
        match self.load() {
            Err(CollectorError::Checkpoint { path, reason }) => {
                let aside = path.with_file_name(format!("checkpoints.json.unreadable-{}", crate::now_millis()));
                fs::rename(&path, &aside).map_err(|source| CollectorError::Io {
                    path: path.clone(),
                    source,
                })?;
                tracing::error!(path = %path.display(), reason, aside = %aside.display(), "checkpoint unreadable; set aside, reading every file again");
                Ok((TailerCheckpoint::default(), Some(aside)))
            }
            other => other.map(|checkpoint| (checkpoint, None)),
        }
    }

    /// Replaces the checkpoint file atomically.
    pub fn store(&self, checkpoint: &TailerCheckpoint) -> Result<(), CollectorError> {
        let bytes = serde_json::to_vec(checkpoint).expect("checkpoint serializes");
        write_atomic(&self.path, &bytes).map_err(|source| CollectorError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_checkpoint_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        fs::write(dir.path().join("checkpoints.json"), b"{torn").unwrap();
        assert!(matches!(store.load(), Err(CollectorError::Checkpoint { .. })));
        let (checkpoint, aside) = store.load_or_set_aside().unwrap();
        assert_eq!(checkpoint, TailerCheckpoint::default());
        assert_eq!(fs::read(aside.unwrap()).unwrap(), b"{torn", "kept for a look");
        assert_eq!(store.load().unwrap(), TailerCheckpoint::default(), "the next start finds none");
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        assert_eq!(store.load().unwrap(), TailerCheckpoint::default());
        let checkpoint = TailerCheckpoint {
            files: vec![FileCheckpoint {
                identity: FileIdentity { dev: 1, ino: 2, born: 3 },
                fingerprint: Some(Fingerprint { len: 10, crc: 42 }),
                generation: 1,
                offset: 99,
                skipping: false,
                path: "/x/0.log".into(),
                last_position: 396,
            }],
            partials: vec![PartialCheckpoint {
                group: "ns_pod_uid/c/0".into(),
                stream: "stdout".into(),
                ts: 5,
                text: "half a line".into(),
                bytes: Some(b"half a line \xe2\x96".to_vec()),
                truncated: false,
                skipping: false,
                source_key: "k".into(),
                source_offset: 7,
                last_position: 29,
            }],
            released: vec![ReleasedFile {
                dev: 1,
                ino: 3,
                next_generation: 2,
            }],
        };
        store.store(&checkpoint).unwrap();
        assert_eq!(store.load().unwrap(), checkpoint);
        assert!(!dir.path().join(".checkpoints.json.tmp").exists());
        fs::write(dir.path().join("checkpoints.json"), b"{torn").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("checkpoints.json"));
    }
}
