//! The catalog of live splits: what each split holds (time range, row
//! count, stream label sets), the WAL position the splits cover, and the
//! per-source watermarks used to drop lines the indexer already holds. It
//! lives in one JSON file replaced atomically (write new, fsync, rename,
//! fsync directory), so readers see the old or the new catalog, never half.
//!
//! Files of splits removed by merges or retention are kept for a grace
//! period (the graveyard) so queries that loaded the previous catalog can
//! finish reading them.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::IndexerError;

/// What a split holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// Log lines: Parquet plus a tantivy index.
    #[default]
    Logs,
    /// Metric samples: Parquet plus a series index.
    Metrics,
}

/// What one split holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub id: String,
    #[serde(default)]
    pub kind: SplitKind,
    pub tenant: String,
    /// Parquet file, relative to the data directory.
    pub parquet: String,
    /// tantivy index directory (logs) or series index file (metrics),
    /// relative to the data directory.
    pub index: String,
    pub rows: u64,
    pub line_bytes: u64,
    pub parquet_bytes: u64,
    pub index_bytes: u64,
    /// Event-time range, Unix nanoseconds, inclusive.
    pub min_ts: i64,
    pub max_ts: i64,
    /// Ingest-time range, Unix nanoseconds, inclusive.
    pub min_ingest_ts: i64,
    pub max_ingest_ts: i64,
    pub created_at: i64,
    /// How many merges produced this split (0 for a fresh commit).
    pub merges: u32,
    /// Canonical label sets of the streams in the split.
    pub streams: Vec<String>,
    /// Some rows carry structured metadata (`fields`).
    #[serde(default)]
    pub has_fields: bool,
    /// Metric names in a metrics split.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Number of series in a metrics split.
    #[serde(default)]
    pub series: u64,
    /// Rows and line bytes per (stream, level, ML event) of a logs split:
    /// line counts over windows that hold the whole split come from here,
    /// not from the index. Empty in splits written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<RowGroupCount>,
    /// Format version of the logs split's number index (`numbers.idx`
    /// beside its tantivy files); 0: numbers are tantivy terms (written
    /// before the number index). Readers require the file when non-zero.
    #[serde(default)]
    pub number_index: u32,
    /// The first row of each stream of a logs split, in the order of
    /// [`SplitMeta::streams`]: rows are sorted by stream, so stream `i` is
    /// rows `stream_starts[i]..stream_starts[i + 1]` (the last one to
    /// `rows`). Empty in splits written before it, whose index holds each
    /// row's stream as a term and a fast field; newer ones do not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_starts: Vec<u32>,
}

/// The rows of one stream (index into [`SplitMeta::streams`]) with one
/// detected level and one ML event tag (empty: none) in a split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroupCount {
    pub stream: u32,
    pub level: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ml_event: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Highest position delivered from one collector source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub position: u64,
    /// When it last moved, Unix nanoseconds (old entries are forgotten).
    pub updated: i64,
}

/// Files waiting to be deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grave {
    pub paths: Vec<String>,
    /// Unix nanoseconds after which the files are deleted.
    pub delete_after: i64,
}

/// The catalog's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    /// Bumped on every change.
    pub version: u64,
    pub splits: Vec<SplitMeta>,
    /// Highest WAL sequence number whose data is in the splits.
    pub wal_seq: u64,
    pub watermarks: HashMap<String, Watermark>,
    #[serde(default)]
    pub graveyard: Vec<Grave>,
    /// Type, help and unit of metrics, per tenant.
    #[serde(default)]
    pub metadata: BTreeMap<String, weft_model::metric::MetadataMap>,
}

/// The catalog file and its in-memory copy.
pub struct Catalog {
    path: PathBuf,
    state: RwLock<CatalogState>,
}

/// Writes `bytes` to `path` atomically and durably. Once the rename is
/// done the new content is what readers see: a failing directory fsync after
/// it is logged, not reported as a failed write (callers would otherwise
/// undo work the file already points at).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of the directory after replacing a file failed");
    }
    Ok(())
}

impl Catalog {
    /// The catalog file of a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("catalog.json")
    }

    /// Loads the catalog of `data_dir` (empty when there is none yet).
    pub fn open(data_dir: &Path) -> Result<Self, IndexerError> {
        let path = Self::path_in(data_dir);
        let state = Self::read(&path)?;
        Ok(Self {
            path,
            state: RwLock::new(state),
        })
    }

    /// Reads a catalog file without keeping it open.
    pub fn read(path: &Path) -> Result<CatalogState, IndexerError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IndexerError::Corrupt(format!("catalog {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CatalogState::default()),
            Err(source) => Err(IndexerError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> CatalogState {
        self.state.read().expect("catalog lock").clone()
    }

    /// Reads the current state without copying it.
    pub fn with<T>(&self, f: impl FnOnce(&CatalogState) -> T) -> T {
        f(&self.state.read().expect("catalog lock"))
    }

    /// Applies `change` to a copy, writes it atomically, then publishes it.
    /// If writing fails nothing changes.
    pub fn update<T>(&self, change: impl FnOnce(&mut CatalogState) -> T) -> Result<T, IndexerError> {
        let mut guard = self.state.write().expect("catalog lock");
        let mut next = guard.clone();
        let out = change(&mut next);
        next.version += 1;
        let bytes = serde_json::to_vec(&next).expect("catalog serializes");
        write_atomic(&self.path, &bytes).map_err(|source| IndexerError::Io {
            path: self.path.clone(),
            source,
        })?;
        *guard = next;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_persisted_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.snapshot(), CatalogState::default());
        catalog
            .update(|s| {
                s.wal_seq = 7;
                s.watermarks.insert("src".into(), Watermark { position: 9, updated: 1 });
            })
            .unwrap();
        let reopened = Catalog::open(dir.path()).unwrap().snapshot();
        assert_eq!(reopened.wal_seq, 7);
        assert_eq!(reopened.version, 1);
        assert_eq!(reopened.watermarks["src"].position, 9);
        fs::write(Catalog::path_in(dir.path()), b"{").unwrap();
        assert!(Catalog::open(dir.path()).is_err());
    }
}
