//! `weft standalone --import FILE`: loads samples from a Prometheus text
//! exposition with timestamps (as `promtool tsdb create-blocks-from
//! openmetrics` takes them) into this process' indexer, e.g. the bundled
//! GPU counters that go with the sample pod logs. Samples go in chunks, each
//! committed before the next; a ledger in the data directory records how
//! far each file (by content hash) got, so a restart neither doubles
//! samples nor loses the rest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use weft_model::metric::{MetadataMap, MetricBatchBuilder, META_METRIC_METADATA};

/// Largest file taken.
const MAX_IMPORT_BYTES: u64 = 256 << 20;
/// Samples per ingested batch.
const BATCH_SAMPLES: usize = 50_000;
/// Batches per commit (one split each; bounded pending memory).
const BATCHES_PER_COMMIT: usize = 10;

/// Imports `files` into `indexer` for `tenant`; returns the samples added.
pub fn import_files(indexer: &weft_indexer::Indexer, data: &Path, tenant: &str, files: &[PathBuf]) -> anyhow::Result<usize> {
    let ledger_path = data.join("imported.json");
    // Content hash -> samples imported so far.
    let mut done: BTreeMap<String, usize> = match std::fs::read(&ledger_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", ledger_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", ledger_path.display())),
    };
    let save = |done: &BTreeMap<String, usize>| -> anyhow::Result<()> {
        let tmp = ledger_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(done)?)?;
        std::fs::rename(&tmp, &ledger_path)?;
        Ok(())
    };
    let mut total = 0;
    for file in files {
        let size = std::fs::metadata(file)
            .map_err(|e| anyhow::anyhow!("--import {}: {e}", file.display()))?
            .len();
        if size > MAX_IMPORT_BYTES {
            anyhow::bail!("--import {}: {size} bytes, over the {MAX_IMPORT_BYTES} byte limit", file.display());
        }
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("--import {}: {e}", file.display()))?;
        let digest: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();

        let mut metadata = MetadataMap::new();
        let (samples, errors) = weft_collector::sources::gpu::exposition::parse(&text, &mut metadata);
        if let Some(first) = errors.first() {
            tracing::warn!(file = %file.display(), first = %first, skipped = errors.len(), "lines that are not samples were skipped");
        }
        let now_ms = weft_model::time::now_nanos() / 1_000_000;
        let meta = HashMap::from([(META_METRIC_METADATA.to_string(), serde_json::to_string(&metadata)?)]);
        let from = done.get(&digest).copied().unwrap_or(0);
        if from >= samples.len() {
            tracing::info!(file = %file.display(), "already imported into this data directory; skipped");
            continue;
        }
        let mut added = 0;
        let mut uncommitted = 0;
        let chunks: Vec<_> = samples[from..].chunks(BATCH_SAMPLES).collect();
        for (i, chunk) in chunks.iter().copied().enumerate() {
            let mut builder = MetricBatchBuilder::new();
            for sample in chunk {
                builder.append(&sample.labels.to_string(), sample.ts.unwrap_or(now_ms), sample.value);
            }
            let body = weft_model::batch::encode_ipc(&[builder.finish()], meta.clone())?;
            added += indexer
                .ingest_metrics(tenant, &body, "import")
                .map_err(|e| anyhow::anyhow!("--import {}: {e}", file.display()))?;
            uncommitted += chunk.len();
            if (i + 1) % BATCHES_PER_COMMIT == 0 || i + 1 == chunks.len() {
                // Durable before the ledger moves; also bounds pending memory.
                indexer.commit().map_err(|e| anyhow::anyhow!("--import {}: {e}", file.display()))?;
                *done.entry(digest.clone()).or_insert(0) += uncommitted;
                uncommitted = 0;
                save(&done)?;
            }
        }
        tracing::info!(file = %file.display(), samples = added, "imported");
        total += added;
    }
    Ok(total)
}
