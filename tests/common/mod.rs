//! Helpers for end-to-end tests: start the real `weft` binary on port 0,
//! write kubelet-style pod log files, query over HTTP, and wait on
//! conditions with timeouts (never sleep-and-hope).

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `weft` process.
pub struct Weft {
    pub child: Child,
    pub addr: String,
    /// The OTLP receiver's address (standalone and collector).
    pub otlp: Option<String>,
    /// Its log output, when captured.
    pub stderr: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

impl Weft {
    /// Starts `weft <args>` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Weft {
        Self::start_with(args, &[], false)
    }

    /// Starts `weft <args>` with extra environment variables, capturing its
    /// log output when `capture` is set (it is echoed to stderr too).
    pub fn start_with(args: &[&str], envs: &[(&str, &str)], capture: bool) -> Weft {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(with_free_otlp_port(args))
            .env("RUST_LOG", "warn")
            .env("NODE_NAME", "test-node")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if capture { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .expect("weft starts");
        let stderr = child.stderr.take().map(|pipe| {
            let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            log
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (otlp_tx, otlp_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("weft listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                if let Some(addr) = line.strip_prefix("weft otlp listening on ") {
                    let _ = otlp_tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("weft reports its address within 60s");
        let otlp = if args.first() == Some(&"standalone") {
            otlp_rx.recv_timeout(Duration::from_secs(10)).ok()
        } else {
            None
        };
        Weft { child, addr, otlp, stderr }
    }

    /// `weft standalone` on `logs` and `data`, listening on port 0, with a
    /// config file.
    pub fn standalone(logs: &Path, data: &Path, config: &Path) -> Weft {
        Self::start(&standalone_args(logs, data, config).iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `weft <indexer|query> --data DATA --listen 127.0.0.1:0 --config CONFIG`.
    pub fn role(name: &str, data: &Path, config: &Path) -> Weft {
        Self::start(&role_args(name, data, config).iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Starts a role that serves no HTTP (the collector).
    pub fn start_quiet(args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(with_free_otlp_port(args))
            .env("RUST_LOG", "warn")
            .env("NODE_NAME", "test-node")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("weft starts")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tests run many weft processes at once: unless a test says otherwise,
/// the OTLP receiver listens on a free port instead of 4318.
fn with_free_otlp_port(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let role = args.first().copied().unwrap_or("");
    if (role == "standalone" || role == "collector") && !args.contains(&"--otlp-listen") {
        out.push("--otlp-listen".into());
        out.push("127.0.0.1:0".into());
    }
    out
}

/// Sends SIGTERM and waits (up to 30 s) for the process to exit 0.
pub fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "weft exited with {status} after SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "weft did not stop within 30s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn client() -> reqwest::blocking::Client {
    weft_model::tls::install_crypto_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET with query parameters; returns (status, JSON body).
pub fn get_json(url: &str, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = client().get(url).query(params).send().expect("request succeeds");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url} answered non-JSON ({status}): {text}"));
    (status, body)
}

/// All lines of a Loki streams result as (stream label, line) pairs.
pub fn stream_lines(body: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stream in body["data"]["result"].as_array().expect("result array") {
        let name = stream["stream"]["stream"].as_str().unwrap_or("").to_string();
        for value in stream["values"].as_array().expect("values") {
            out.push((name.clone(), value[1].as_str().expect("line").to_string()));
        }
    }
    out
}

/// Writes CRI log files the way containerd and the kubelet do.
pub struct PodLogWriter {
    pub dir: PathBuf,
    rotations: u32,
}

impl PodLogWriter {
    pub fn new(root: &Path, namespace: &str, pod: &str, container: &str) -> Self {
        Self::with_uid(root, namespace, pod, container, "0d1c9a7e-1111-2222-3333-444455556666")
    }

    /// The log directory of pod `uid`.
    pub fn with_uid(root: &Path, namespace: &str, pod: &str, container: &str, uid: &str) -> Self {
        let dir = root.join(format!("{namespace}_{pod}_{uid}")).join(container);
        fs::create_dir_all(&dir).expect("pod dir");
        fs::write(dir.join("0.log"), b"").expect("log file");
        Self { dir, rotations: 0 }
    }

    pub fn live(&self) -> PathBuf {
        self.dir.join("0.log")
    }

    /// Appends raw bytes to the live file.
    pub fn append(&self, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(self.live()).expect("open live file");
        file.write_all(bytes).expect("append");
    }

    /// One CRI line: `<ts> <stream> <tag> <msg>`.
    pub fn cri(stream: &str, tag: &str, message: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let secs = now.as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z {stream} {tag} {message}\n",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60,
            now.subsec_nanos()
        )
    }

    /// kubelet rotation: rename `0.log` to `0.log.<stamp>`, start a new one.
    pub fn rotate(&mut self) -> PathBuf {
        self.rotations += 1;
        let rotated = self.dir.join(format!("0.log.20261125-{:06}", self.rotations));
        fs::rename(self.live(), &rotated).expect("rename");
        fs::write(self.live(), b"").expect("new live file");
        rotated
    }
}

fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + if m <= 2 { 1 } else { 0 }, m, d)
}

/// Numbered lines, alternating streams, every 5th split into `P` segments.
pub fn numbered_lines(range: std::ops::Range<usize>) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut expected = Vec::new();
    for n in range {
        let stream = if n % 2 == 0 { "stdout" } else { "stderr" };
        let line = format!("line-{n:06} payload {}", "x".repeat(n % 17));
        if n % 5 == 0 {
            let (a, rest) = line.split_at(7);
            let (b, c) = rest.split_at(5);
            text.push_str(&PodLogWriter::cri(stream, "P", a));
            text.push_str(&PodLogWriter::cri(stream, "P", b));
            text.push_str(&PodLogWriter::cri(stream, "F", c));
        } else {
            text.push_str(&PodLogWriter::cri(stream, "F", &line));
        }
        expected.push((stream.to_string(), line));
    }
    (text, expected)
}

/// Fetches every line of `selector` over the last hour (forward order).
pub fn all_lines(weft: &Weft, selector: &str) -> Vec<(String, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let start = (now - 3_600_000_000_000).to_string();
    let end = (now + 60_000_000_000).to_string();
    let (status, body) = get_json(
        &weft.url("/loki/api/v1/query_range"),
        &[
            ("query", selector),
            ("start", &start),
            ("end", &end),
            ("limit", "10000"),
            ("direction", "forward"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    stream_lines(&body)
}

/// A free loopback port (for peers that cannot listen on port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Minimal `prometheus.WriteRequest` messages for remote_write tests.
pub mod remote_write {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<Metadata>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metadata {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        #[prost(string, tag = "4")]
        pub help: String,
        #[prost(string, tag = "5")]
        pub unit: String,
    }

    /// One series: labels (name included) and (ms, value) samples.
    pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples.iter().map(|(t, v)| Sample { value: *v, timestamp: *t }).collect(),
        }
    }

    /// POSTs a snappy-compressed WriteRequest; returns the status code.
    pub fn send(url: &str, request: &WriteRequest) -> u16 {
        let body = snap::raw::Encoder::new()
            .compress_vec(&prost::Message::encode_to_vec(request))
            .unwrap();
        super::client()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

/// One request a [`Capture`] server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{} body is not JSON: {e}", self.target))
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Vec<(String, String)> {
        self.target
            .split_once('?')
            .map(|(_, q)| serde_urlencoded::from_str(q).unwrap())
            .unwrap_or_default()
    }
}

/// An HTTP server on 127.0.0.1:0 that records requests and answers each
/// path with a fixed status and body (chat APIs, webhooks).
pub struct Capture {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Capture {
    /// `replies`: (path prefix, status, body); unknown paths get 404.
    pub fn start(replies: &[(&str, u16, &str)]) -> Capture {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let replies: Vec<(String, u16, String)> = replies.iter().map(|(p, s, b)| (p.to_string(), *s, b.to_string())).collect();
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                let replies = replies.clone();
                std::thread::spawn(move || serve_one(stream, &replies, &log));
            }
        });
        Capture { port, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received so far whose path starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path().starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn serve_one(stream: std::net::TcpStream, replies: &[(String, u16, String)], log: &std::sync::Mutex<Vec<Received>>) {
    use std::io::Read;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    log.lock().unwrap().push(Received { method, target, body });
    let (status, reply) = replies
        .iter()
        .find(|(prefix, _, _)| path.starts_with(prefix.as_str()))
        .map(|(_, s, b)| (*s, b.clone()))
        .unwrap_or((404, "not found".into()));
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes());
}

/// The arguments of `weft <indexer|query>` on `data`, port 0, `config`.
pub fn role_args(name: &str, data: &Path, config: &Path) -> Vec<String> {
    [
        name,
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The arguments of `weft standalone` on `logs` and `data`, port 0, `config`.
pub fn standalone_args(logs: &Path, data: &Path, config: &Path) -> Vec<String> {
    let mut args = role_args("standalone", data, config);
    args.splice(1..1, ["--logs".to_string(), logs.to_str().unwrap().to_string()]);
    args
}
