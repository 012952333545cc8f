//! Loki's push API over HTTP, as Promtail, Alloy, Fluent Bit and Vector
//! send it: JSON (plain and gzipped) and snappy-compressed protobuf, each
//! tenant kept apart by `X-Scope-OrgID`, malformed pushes refused with a
//! reason and without losing the next good push.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StreamAdapter {
    #[prost(string, tag = "1")]
    labels: String,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<EntryAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    line: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn lines_for(weft: &Weft, tenant: &str, selector: &str) -> Vec<String> {
    let start = (now_ns() - 3_600_000_000_000).to_string();
    let response = client()
        .get(weft.url("/loki/api/v1/query_range"))
        .header("X-Scope-OrgID", tenant)
        .query(&[("query", selector), ("start", &start), ("limit", "100")])
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    let mut lines: Vec<String> = stream_lines(&body).into_iter().map(|l| l.1).collect();
    lines.sort();
    lines
}

#[test]
fn promtail_style_pushes_land_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("no-pods");
    std::fs::create_dir_all(&logs).unwrap();
    let data = dir.path().join("data");
    let weft = Weft::start(&[
        "standalone",
        "--logs",
        logs.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let push = weft.url("/loki/api/v1/push");
    let ts = now_ns();

    let json = format!(
        r#"{{"streams":[{{"stream":{{"job":"trainer","namespace":"ml"}},"values":[["{ts}","json line one"],["{}","json line two",{{"trace_id":"abc"}}]]}}]}}"#,
        ts + 1
    );
    let response = client()
        .post(&push)
        .header("content-type", "application/json")
        .header("X-Scope-OrgID", "team-a")
        .body(json)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    let gz_json = format!(
        r#"{{"streams":[{{"stream":{{"job":"trainer"}},"values":[["{}","gzipped line"]]}}]}}"#,
        ts + 2
    );
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(gz_json.as_bytes()).unwrap();
    let response = client()
        .post(&push)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("X-Scope-OrgID", "team-a")
        .body(encoder.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    let proto = PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{job="trainer", namespace="ml"}"#.into(),
            entries: vec![EntryAdapter {
                timestamp: Some(Timestamp {
                    seconds: ts / 1_000_000_000,
                    nanos: (ts % 1_000_000_000) as i32 + 3,
                }),
                line: "protobuf line".into(),
            }],
        }],
    };
    let body = snap::raw::Encoder::new().compress_vec(&proto.encode_to_vec()).unwrap();
    let response = client()
        .post(&push)
        .header("content-type", "application/x-protobuf")
        .header("X-Scope-OrgID", "team-b")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    // Malformed pushes: a clear 400, nothing stored, the next push fine.
    let response = client()
        .post(&push)
        .header("content-type", "application/json")
        .body(r#"{"streams":[{"stream":{"job":"x"},"values":[[123,"numeric ts"]]}]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().unwrap().contains("timestamp must be a string"));
    let response = client()
        .post(&push)
        .header("content-type", "application/x-protobuf")
        .body(b"not snappy".to_vec())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = client().post(&push).header("content-type", "text/plain").body("x").send().unwrap();
    assert_eq!(response.status().as_u16(), 415);

    let team_a = wait_for("team-a lines searchable", Duration::from_secs(30), || {
        let lines = lines_for(&weft, "team-a", r#"{job="trainer"}"#);
        (lines.len() == 3).then_some(lines)
    });
    assert_eq!(team_a, vec!["gzipped line", "json line one", "json line two"]);
    let team_b = wait_for("team-b lines searchable", Duration::from_secs(30), || {
        let lines = lines_for(&weft, "team-b", r#"{job="trainer"}"#);
        (!lines.is_empty()).then_some(lines)
    });
    assert_eq!(team_b, vec!["protobuf line"], "tenants do not see each other's lines");
    assert!(lines_for(&weft, "default", r#"{job="trainer"}"#).is_empty());
    weft.terminate();
}
