//! The shipper against a real HTTP server on loopback that fails on
//! demand: batches spool in order while it fails, the spool's bound stops
//! the shipper from taking more (the channel fills, so tailing would pause),
//! and once the server answers again every batch arrives in order and the
//! checkpoint moves only to what was acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::{Shipper, ShipperSettings};
use crate::batcher::SealedBatch;
use crate::checkpoint::{CheckpointStore, FileCheckpoint, FileIdentity, TailerCheckpoint};
use crate::metrics::CollectorMetrics;

struct FakeIndexer {
    url: String,
    up: Arc<AtomicBool>,
    /// What it answers while down.
    down_status: Arc<Mutex<&'static str>>,
    received: Arc<Mutex<Vec<String>>>,
    /// The bodies of the accepted requests, in order.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A minimal HTTP/1.1 server: 503 while `up` is false, else 200, recording
/// the idempotency key of each accepted request.
async fn fake_indexer() -> FakeIndexer {
    fake_indexer_failing_with("503 Service Unavailable").await
}

/// Like [`fake_indexer`], failing with `down_status` while down.
async fn fake_indexer_failing_with(down_status: &'static str) -> FakeIndexer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let up = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Vec::new()));
    let down_status = Arc::new(Mutex::new(down_status));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (up2, received2, down_status2, bodies2) = (up.clone(), received.clone(), down_status.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (up, received, down_status, bodies) = (up2.clone(), received2.clone(), down_status2.clone(), bodies2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = header_end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            let key = head
                                .lines()
                                .find_map(|l| l.strip_prefix("x-weft-idempotency-key:"))
                                .unwrap_or("")
                                .trim()
                                .to_string();
                            let ok = up.load(Ordering::SeqCst);
                            if ok {
                                received.lock().unwrap().push(key);
                                bodies.lock().unwrap().push(buf[end + 4..end + 4 + length].to_vec());
                            }
                            let status = if ok { "200 OK" } else { *down_status.lock().unwrap() };
                            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\n{{}}");
                            let _ = socket.write_all(reply.as_bytes()).await;
                            buf.drain(..end + 4 + length);
                            continue;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    FakeIndexer {
        url,
        up,
        down_status,
        received,
        bodies,
    }
}

fn batch(n: u64) -> SealedBatch {
    SealedBatch {
        key: format!("batch-{n:03}"),
        body: vec![n as u8; 1000].into(),
        metrics_body: None,
        rows: 1,
        line_bytes: 10,
        checkpoint: TailerCheckpoint {
            files: vec![FileCheckpoint {
                identity: FileIdentity { dev: 1, ino: 1, born: 0 },
                fingerprint: None,
                generation: 0,
                offset: n,
                skipping: false,
                path: "/x/0.log".into(),
                last_position: 0,
            }],
            partials: Vec::new(),
            released: Vec::new(),
        },
        pool: None,
    }
}

/// Settings that retry fast, for `indexer_url`.
fn fast_retries(indexer_url: &str) -> ShipperSettings {
    ShipperSettings {
        indexer_url: indexer_url.to_string(),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A running shipper: where batches go in, its task, and the shutdown
/// signal (kept, so that it is not dropped).
fn start(
    state: &std::path::Path,
    settings: ShipperSettings,
    metrics: &Arc<CollectorMetrics>,
) -> (mpsc::Sender<SealedBatch>, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let shipper = Shipper::new(state, settings, metrics.clone()).unwrap();
    let (tx, rx) = mpsc::channel(2);
    let (stop_tx, stop_rx) = watch::channel(false);
    (tx, tokio::spawn(shipper.run(rx, stop_rx)), stop_tx)
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spools_in_order_applies_backpressure_and_delivers_when_back() {
    let server = fake_indexer().await;
    let state = tempfile::tempdir().unwrap();
    let metrics = Arc::new(CollectorMetrics::unregistered());
    let settings = ShipperSettings {
        attempts_before_spool: 2,
        // Room for about three 1 KB batches.
        spool_max_bytes: 3000,
        checkpoint_interval: Duration::ZERO,
        ..fast_retries(&server.url)
    };
    let (tx, task, _stop) = start(state.path(), settings, &metrics);

    // While the indexer fails, batches go to the spool until it is full...
    let mut sent = 0;
    loop {
        match tx.try_send(batch(sent)) {
            Ok(()) => sent += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // ...then the shipper stops taking them: the channel stays full.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if tx.try_send(batch(sent)).is_err() {
                    break;
                }
                sent += 1;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 50, "the spool bound must stop the shipper from taking batches");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let spooled = metrics.spool_batches.get();
    assert!(spooled >= 2, "batches waited in the spool ({spooled})");
    assert!(server.received.lock().unwrap().is_empty());
    // Nothing was acknowledged, so no checkpoint moved.
    assert_eq!(CheckpointStore::new(state.path()).load().unwrap(), TailerCheckpoint::default());

    server.up.store(true, Ordering::SeqCst);
    let more = sent + 3;
    for n in sent..more {
        tx.send(batch(n)).await.unwrap();
    }
    wait_until("every batch delivered", || server.received.lock().unwrap().len() as u64 == more).await;
    let keys = server.received.lock().unwrap().clone();
    let expected: Vec<String> = (0..more).map(|n| format!("batch-{n:03}")).collect();
    assert_eq!(keys, expected, "delivered once each, in order");
    drop(tx);
    task.await.unwrap();
    assert_eq!(metrics.spool_batches.get(), 0);
    let checkpoint = CheckpointStore::new(state.path()).load().unwrap();
    assert_eq!(checkpoint.files[0].offset, more - 1, "checkpoint of the last acknowledged batch");
}

/// Regression: a wrong bearer token (401) used to be treated as a permanent
/// refusal, moving every batch to `rejected/` and the checkpoint past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_retried_not_rejected() {
    let server = fake_indexer_failing_with("401 Unauthorized").await;
    let state = tempfile::tempdir().unwrap();
    let metrics = Arc::new(CollectorMetrics::unregistered());
    let settings = ShipperSettings {
        attempts_before_spool: 2,
        ..fast_retries(&server.url)
    };
    let (tx, task, _stop) = start(state.path(), settings, &metrics);
    tx.send(batch(0)).await.unwrap();
    wait_until("the batch waits in the spool", || metrics.spool_batches.get() == 1).await;
    assert_eq!(metrics.batches_rejected.get(), 0);
    server.up.store(true, Ordering::SeqCst);
    wait_until("delivered once the token is fixed", || server.received.lock().unwrap().len() == 1).await;
    drop(tx);
    task.await.unwrap();
}

/// A batch the indexer refuses (413 here: a proxy's body limit) is kept
/// under `rejected/`, fresh or from the spool, named in the order refused
/// and bounded by `keep_rejected`; the checkpoint moves past it and the
/// batches after it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_kept_aside_in_order_and_the_rest_flows() {
    let server = fake_indexer_failing_with("413 Payload Too Large").await;
    let state = tempfile::tempdir().unwrap();
    let metrics = Arc::new(CollectorMetrics::unregistered());
    let settings = ShipperSettings {
        attempts_before_spool: 1,
        keep_rejected: 2,
        checkpoint_interval: Duration::ZERO,
        ..fast_retries(&server.url)
    };
    let (tx, task, _stop) = start(state.path(), settings, &metrics);
    for n in 0..2 {
        tx.send(batch(n)).await.unwrap();
    }
    wait_until("two refused", || metrics.batches_rejected.get() == 2).await;
    // Unreachable for a while: the next batch waits in the spool, then is
    // refused from there.
    *server.down_status.lock().unwrap() = "503 Service Unavailable";
    tx.send(batch(2)).await.unwrap();
    wait_until("the batch waits in the spool", || metrics.spool_batches.get() == 1).await;
    *server.down_status.lock().unwrap() = "413 Payload Too Large";
    wait_until("the spooled batch refused", || metrics.batches_rejected.get() == 3).await;
    server.up.store(true, Ordering::SeqCst);
    tx.send(batch(3)).await.unwrap();
    wait_until("the next batch delivered", || server.received.lock().unwrap().len() == 1).await;
    drop(tx);
    task.await.unwrap();

    let mut kept: Vec<_> = std::fs::read_dir(state.path().join("rejected"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    kept.sort();
    let keys: Vec<String> = kept
        .iter()
        .map(|p| super::spool::decode(&std::fs::read(p).unwrap()).unwrap().key.clone())
        .collect();
    assert_eq!(keys, ["batch-001", "batch-002"], "the newest two, oldest first");
    assert_eq!(server.received.lock().unwrap().clone(), ["batch-003"]);
    let checkpoint = CheckpointStore::new(state.path()).load().unwrap();
    assert_eq!(checkpoint.files[0].offset, 3, "moved past the refused batches");

    // A batch kept under a name from the future (a clock stepped back):
    // the next start names its refusals above it, overwriting nothing.
    let future = state.path().join("rejected").join(format!("{:016}.batch", 1u64 << 60));
    std::fs::rename(&kept[1], &future).unwrap();
    server.up.store(false, Ordering::SeqCst);
    let settings = ShipperSettings {
        keep_rejected: 3,
        ..fast_retries(&server.url)
    };
    let (tx, task, _stop) = start(state.path(), settings, &metrics);
    tx.send(batch(4)).await.unwrap();
    wait_until("refused after the restart", || metrics.batches_rejected.get() == 4).await;
    drop(tx);
    task.await.unwrap();
    let next = state.path().join("rejected").join(format!("{:016}.batch", (1u64 << 60) + 1));
    assert_eq!(super::spool::decode(&std::fs::read(&next).unwrap()).unwrap().key, "batch-004");
    assert_eq!(super::spool::decode(&std::fs::read(&future).unwrap()).unwrap().key, "batch-002");
}

/// A body of several parts (uncompressed: the batch's column buffers) is
/// sent as they lie, byte for byte, with its length; once delivered, its
/// text part (nothing else holding it) is back in the batch's pool for the
/// next batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_parts_is_sent_as_it_lies_and_its_text_goes_back() {
    let server = fake_indexer().await;
    server.up.store(true, Ordering::SeqCst);
    let state = tempfile::tempdir().unwrap();
    let metrics = Arc::new(CollectorMetrics::unregistered());
    let (tx, task, _stop) = start(state.path(), fast_retries(&server.url), &metrics);
    let pool = weft_model::batch::BufferPool::default();
    let mut pooled = batch(1);
    let text: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let at = text.as_ptr();
    let header = vec![0xFF; 64];
    // The fake indexer reads a body by its content-length.
    let sent = [header.clone(), text.clone()].concat();
    pooled.body = [header, text].into_iter().collect();
    pooled.pool = Some(pool.clone());
    tx.send(pooled).await.unwrap();
    wait_until("the text back in the pool", || pool.kept() == 1).await;
    assert_eq!(*server.bodies.lock().unwrap(), [sent]);
    let back = pool.take();
    assert_eq!(back.as_ptr(), at, "the batch's own text buffer");
    drop(tx);
    task.await.unwrap();
}
