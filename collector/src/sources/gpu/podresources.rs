//! GPU → pod attribution through the kubelet's PodResources gRPC API
//! (`v1.PodResourcesLister/List` on
//! `/var/lib/kubelet/pod-resources/kubelet.sock`), the same source
//! dcgm-exporter uses: each GPU UUID the device plugin handed out maps to
//! the namespace, pod and container holding it.
//!
//! A unary gRPC call is small enough to make directly over HTTP/2 (`h2`):
//! one length-prefixed protobuf message each way, status in the trailers.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;

/// `v1.ListPodResourcesRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// `v1.ListPodResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    #[prost(string, tag = "1")]
    pub resource_name: String,
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
}

/// Who holds a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOwner {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// The gRPC method path.
pub const LIST_PATH: &str = "/v1.PodResourcesLister/List";

/// Frames a message as gRPC does: flag byte, u32 length, bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

async fn call(socket: &Path) -> Result<ListPodResourcesResponse, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let (client, connection) = h2::client::handshake(stream).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{LIST_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut send) = client.send_request(request, false).map_err(|e| format!("gRPC request: {e}"))?;
    send.send_data(grpc_frame(&ListPodResourcesRequest {}.encode_to_vec()).into(), true)
        .map_err(|e| format!("gRPC request: {e}"))?;
    let response = response.await.map_err(|e| format!("gRPC response: {e}"))?;
    let status_in_headers = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("gRPC body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > 64 * 1024 * 1024 {
            return Err("gRPC response larger than 64 MiB".into());
        }
    }
    let trailers = body.trailers().await.map_err(|e| format!("gRPC trailers: {e}"))?;
    let status = trailers.as_ref().and_then(|t| t.get("grpc-status").cloned()).or(status_in_headers);
    match status.as_ref().and_then(|s| s.to_str().ok()) {
        Some("0") => {}
        other => {
            let message = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .and_then(|m| m.to_str().ok())
                .unwrap_or("");
            return Err(format!("gRPC status {}: {message}", other.unwrap_or("missing")));
        }
    }
    if data.len() < 5 || data[0] != 0 {
        return Err("gRPC response is not one uncompressed message".into());
    }
    let len = u32::from_be_bytes(data[1..5].try_into().expect("4 bytes")) as usize;
    let message = data.get(5..5 + len).ok_or("gRPC response shorter than its length prefix")?;
    ListPodResourcesResponse::decode(message).map_err(|e| format!("ListPodResourcesResponse: {e}"))
}

/// Lists which pod holds each device of `resource_prefix` (e.g.
/// `nvidia.com/`), by device id (GPU UUID).
pub async fn device_owners(socket: &Path, resource_prefix: &str) -> Result<HashMap<String, DeviceOwner>, String> {
    let response = tokio::time::timeout(Duration::from_secs(5), call(socket))
        .await
        .map_err(|_| "PodResources List timed out after 5s".to_string())??;
    let mut owners = HashMap::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            for devices in container.devices.iter().filter(|d| d.resource_name.starts_with(resource_prefix)) {
                for id in &devices.device_ids {
                    // The device plugin's time-slicing shares name replicas
                    // `GPU-<uuid>::<n>`; the counters know the bare UUID.
                    let id = id.split_once("::").map_or(id.as_str(), |(uuid, _)| uuid);
                    owners.insert(
                        id.to_string(),
                        DeviceOwner {
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: container.name.clone(),
                        },
                    );
                }
            }
        }
    }
    Ok(owners)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A fake kubelet answering List on a unix socket with `response`.
    pub async fn fake_kubelet(socket: &Path, response: ListPodResourcesResponse) {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let response = response.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        assert_eq!(request.uri().path(), LIST_PATH);
                        let mut body = request.into_body();
                        while let Some(chunk) = body.data().await {
                            let _ = chunk.map(|c| body.flow_control().release_capacity(c.len()));
                        }
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(head, false).unwrap();
                        send.send_data(grpc_frame(&response.encode_to_vec()).into(), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
    }

    pub fn sample_response() -> ListPodResourcesResponse {
        ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "train-llama-0".into(),
                    namespace: "ml".into(),
                    containers: vec![ContainerResources {
                        name: "trainer".into(),
                        devices: vec![
                            ContainerDevices {
                                resource_name: "nvidia.com/gpu".into(),
                                device_ids: vec!["GPU-aaaa".into(), "GPU-bbbb".into()],
                            },
                            ContainerDevices {
                                resource_name: "example.com/nic".into(),
                                device_ids: vec!["nic0".into()],
                            },
                        ],
                    }],
                },
                PodResources {
                    name: "idle-pod".into(),
                    namespace: "default".into(),
                    containers: vec![],
                },
            ],
        }
    }

    #[tokio::test]
    async fn lists_gpu_owners_over_the_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kubelet.sock");
        fake_kubelet(&socket, sample_response()).await;
        let owners = device_owners(&socket, "nvidia.com/").await.unwrap();
        assert_eq!(owners.len(), 2);
        assert_eq!(
            owners["GPU-bbbb"],
            DeviceOwner {
                namespace: "ml".into(),
                pod: "train-llama-0".into(),
                container: "trainer".into()
            }
        );
        assert!(!owners.contains_key("nic0"));
        let missing = device_owners(&dir.path().join("nope.sock"), "nvidia.com/").await.unwrap_err();
        assert!(missing.contains("nope.sock"), "{missing}");
    }
}
