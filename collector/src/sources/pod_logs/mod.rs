//! The pod-log source: a thread that follows the kubelet log tree (woken by
//! filesystem events, with a periodic rescan as the fallback), feeds the
//! batch assembler, and hands sealed batches to the shipper over a bounded
//! channel. When the channel is full the thread blocks: tailing pauses
//! instead of buffering without bound.

pub mod format;
pub mod path;
pub mod tailer;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::batcher::{BatchAssembler, SealedBatch};
use crate::metrics::CollectorMetrics;
use tailer::PodLogTailer;

/// What the thread loop needs besides the tailer and assembler.
pub struct TailerLoop {
    pub tailer: PodLogTailer,
    pub assembler: BatchAssembler,
    pub batches: mpsc::Sender<SealedBatch>,
    pub stop: Arc<AtomicBool>,
    /// Filesystem event hints: `true` when files may have appeared or moved.
    pub wake: Receiver<bool>,
    pub poll_interval: Duration,
    pub rescan_interval: Duration,
    pub metrics: Arc<CollectorMetrics>,
}

impl TailerLoop {
    /// Runs until `stop` is set; then seals and hands over the last batch.
    pub fn run(mut self) {
        let mut last_scan: Option<Instant> = None;
        let mut rescan = true;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if rescan || last_scan.is_none_or(|t| t.elapsed() >= self.rescan_interval) {
                if let Err(e) = self.tailer.scan() {
                    tracing::warn!(error = %e, "listing the pod log tree failed");
                }
                last_scan = Some(Instant::now());
                rescan = false;
            }
            let read = self.tailer.poll(&mut self.assembler);
            self.assembler.tick();
            if !self.assembler.is_empty() && (self.assembler.is_due() || stopping) && !self.seal_and_send() {
                return;
            }
            if stopping {
                return;
            }
            if read == 0 {
                let wait = self.assembler.time_left().unwrap_or(self.poll_interval).min(self.poll_interval);
                match self.wake.recv_timeout(wait.max(Duration::from_millis(1))) {
                    Ok(hint) => {
                        rescan |= hint;
                        while let Ok(hint) = self.wake.try_recv() {
                            rescan |= hint;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            }
        }
    }

    /// Seals the open batch and blocks until the shipper takes it. Returns
    /// false when the shipper is gone.
    fn seal_and_send(&mut self) -> bool {
        let batch = match self.assembler.seal(self.tailer.checkpoint()) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "encoding a batch failed");
                return true;
            }
        };
        match self.batches.try_send(batch) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.metrics.backpressure_waits.inc();
                self.batches.blocking_send(batch).is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
