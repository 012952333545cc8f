//! GPU counters end to end without a GPU: a fake dcgm-exporter serves
//! counters, a fake kubelet answers PodResources List on a unix socket,
//! and the counters arrive in weft attributed to the pod holding each GPU.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pod_resources: Vec<PodResources>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PodResources {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(message, repeated, tag = "3")]
    containers: Vec<Container>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Container {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    devices: Vec<Devices>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Devices {
    #[prost(string, tag = "1")]
    resource_name: String,
    #[prost(string, repeated, tag = "2")]
    device_ids: Vec<String>,
}

/// A kubelet PodResources endpoint (gRPC over HTTP/2 on a unix socket).
fn fake_kubelet(socket: std::path::PathBuf) {
    let response = ListResponse {
        pod_resources: vec![PodResources {
            name: "train-llama-0".into(),
            namespace: "ml".into(),
            containers: vec![Container {
                name: "trainer".into(),
                devices: vec![Devices {
                    resource_name: "nvidia.com/gpu".into(),
                    // A time-slicing replica name: the counters know the bare UUID.
                    device_ids: vec!["GPU-aaaa::0".into()],
                }],
            }],
        }],
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let response = response.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let mut body = request.into_body();
                        while let Some(chunk) = body.data().await {
                            let _ = chunk.map(|c| body.flow_control().release_capacity(c.len()));
                        }
                        let message = response.encode_to_vec();
                        let mut frame = vec![0u8];
                        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
                        frame.extend_from_slice(&message);
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(head, false).unwrap();
                        send.send_data(frame.into(), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
    });
}

/// A dcgm-exporter serving two GPUs, or only the first once `one_gpu` is set.
fn fake_dcgm_exporter(one_gpu: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let second = if one_gpu.load(std::sync::atomic::Ordering::SeqCst) {
                ""
            } else {
                "DCGM_FI_DEV_GPU_UTIL{gpu=\"1\",UUID=\"GPU-cccc\",device=\"nvidia1\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"n1\"} 0\n"
            };
            let body = format!(
                "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
                DCGM_FI_DEV_GPU_UTIL{{gpu=\"0\",UUID=\"GPU-aaaa\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"n1\"}} 97\n\
                {second}\
                # TYPE DCGM_FI_DEV_FB_USED gauge\n\
                DCGM_FI_DEV_FB_USED{{gpu=\"0\",UUID=\"GPU-aaaa\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"n1\"}} 71234\n"
            );
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

#[test]
fn dcgm_exporter_counters_are_attributed_to_the_pod_holding_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    fake_kubelet(socket.clone());
    let one_gpu = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exporter = fake_dcgm_exporter(one_gpu.clone());
    let config = dir.path().join("weft.yaml");
    std::fs::write(
        &config,
        format!(
            "collector:\n  gpu:\n    nvml: false\n    dcgm_exporter: http://127.0.0.1:{exporter}/metrics\n    interval: 1s\n    pod_resources_socket: {}\n",
            socket.display()
        ),
    )
    .unwrap();
    let logs = dir.path().join("pods");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let weft = Weft::standalone(&logs, &data, &config);
    let result = wait_for("GPU counters in weft", Duration::from_secs(30), || {
        let (_, body) = get_json(&weft.url("/api/v1/query"), &[("query", "DCGM_FI_DEV_GPU_UTIL")]);
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        (result.len() == 2).then_some(result)
    });
    let held = result.iter().find(|s| s["metric"]["UUID"] == "GPU-aaaa").unwrap();
    assert_eq!(held["value"][1], "97");
    for (label, value) in [
        ("namespace", "ml"),
        ("pod", "train-llama-0"),
        ("container", "trainer"),
        ("run", "train-llama"),
        ("rank", "0"),
        ("modelName", "NVIDIA H100 80GB HBM3"),
    ] {
        assert_eq!(held["metric"][label], value, "{held}");
    }
    let idle = result.iter().find(|s| s["metric"]["UUID"] == "GPU-cccc").unwrap();
    assert!(idle["metric"].get("pod").is_none(), "a GPU nobody holds has no pod: {idle}");
    // The question an ML team asks: which pods hold idle GPUs? (none here)
    let (_, body) = get_json(&weft.url("/api/v1/query"), &[("query", "DCGM_FI_DEV_GPU_UTIL{pod!=\"\"} < 5")]);
    assert_eq!(body["data"]["result"], serde_json::json!([]));
    let (_, metadata) = get_json(&weft.url("/api/v1/metadata"), &[("metric", "DCGM_FI_DEV_FB_USED")]);
    assert_eq!(metadata["data"]["DCGM_FI_DEV_FB_USED"][0]["unit"], "mebibytes");
    // A GPU the exporter stops reporting goes stale at once, as after a
    // Prometheus scrape, instead of lingering for the 5-minute lookback.
    one_gpu.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for("the vanished GPU marked stale", Duration::from_secs(30), || {
        let (_, body) = get_json(&weft.url("/api/v1/query"), &[("query", "count(DCGM_FI_DEV_GPU_UTIL)")]);
        (body["data"]["result"][0]["value"][1] == "1").then_some(())
    });
    weft.terminate();
}
