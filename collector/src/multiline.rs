//! Joins multi-line records: a Python traceback (with its "During handling
//! of the above exception…" and "The above exception was the direct cause…"
//! chains), a Java stack trace (`at …`, `Caused by:`), a Go panic with its
//! goroutine dumps, and a C++ abort dump become one record per (container
//! stream), so a search hit shows the whole traceback. `[rank0]:` prefixes
//! that torch.distributed adds are looked through.
//!
//! A block is bounded in lines and bytes and is closed by the first line
//! that does not continue it, or when no line came for the timeout. Lines
//! outside blocks pass straight through without being copied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sources::pod_logs::format::Stream;
use crate::sources::pod_logs::path::PodLogPath;
use crate::sources::pod_logs::tailer::LogLine;

/// Limits of the joiner.
#[derive(Clone, Copy, Debug)]
pub struct MultilineLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// A block with no new line for this long is closed.
    pub timeout: Duration,
}

impl Default for MultilineLimits {
    fn default() -> Self {
        Self {
            max_lines: 1000,
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Python,
    /// A Java exception line, waiting to see an `at` frame.
    JavaCandidate,
    Java,
    Go,
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PyState {
    Frames,
    AfterException,
}

struct Block {
    kind: Kind,
    py: PyState,
    meta: Arc<PodLogPath>,
    source_key: Arc<str>,
    position: u64,
    ts: i64,
    stream: Option<Stream>,
    text: Vec<u8>,
    lines: usize,
    truncated: bool,
    updated: Instant,
}

/// At most `max` bytes of the start of `text`, not ending inside a UTF-8
/// character (a cut one would read as U+FFFD).
fn head(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    // Back over continuation bytes (at most three) to the character's start.
    while cut > 0 && max - cut < 3 && text[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if text[cut] & 0xC0 == 0x80 {
        cut = max; // not UTF-8 here: cut where the limit is
    }
    &text[..cut]
}

/// torch.distributed's `[rankN]:` prefix, if the line has one.
fn rank_prefix(line: &[u8]) -> &[u8] {
    if line.starts_with(b"[rank") {
        if let Some(end) = line.iter().position(|b| *b == b']') {
            if line.get(end + 1) == Some(&b':') {
                return &line[..end + 1];
            }
        }
    }
    b""
}

/// Lines that continue an exception message past its first line: CUDA's
/// asynchronous-error advice, NCCL's details, c10's C++ frames.
const MESSAGE_CONTINUATIONS: [&[u8]; 13] = [
    b"CUDA kernel errors might be asynchronously reported",
    b"For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
    b"Compile with `TORCH_USE_CUDA_DSA`",
    b"Last error:",
    b"Exception raised from ",
    b"frame #",
    b"ncclSystemError",
    b"ncclInternalError",
    b"ncclRemoteError",
    b"ncclUnhandledCudaError",
    b"ncclInvalidUsage",
    b"ncclInvalidArgument",
    b"ncclInProgress",
];

/// Strips torch.distributed's `[rankN]:` prefix for matching.
fn content(line: &[u8]) -> &[u8] {
    if line.starts_with(b"[rank") {
        if let Some(end) = line.iter().position(|b| *b == b']') {
            if line.get(end + 1) == Some(&b':') {
                let rest = &line[end + 2..];
                return rest.strip_prefix(b" ").unwrap_or(rest);
            }
        }
    }
    line
}

fn starts(line: &[u8]) -> Option<Kind> {
    let line = content(line);
    // The first byte picks the one or two openings a line can be: most
    // lines are none of them, and had been compared with each.
    let opens = match line.first() {
        Some(b'T') if line.starts_with(b"Traceback (most recent call last):") => Some(Kind::Python),
        Some(b'p') if line.starts_with(b"panic: ") => Some(Kind::Go),
        Some(b'f') if line.starts_with(b"fatal error: ") => Some(Kind::Go),
        Some(b't') if line.starts_with(b"terminate called after throwing an instance of") => Some(Kind::Native),
        Some(b'*') if line.starts_with(b"*** Aborted at") || line.starts_with(b"*** SIG") => Some(Kind::Native),
        Some(b'F') if line.starts_with(b"Fatal Python error:") => Some(Kind::Native),
        _ => None,
    };
    if opens.is_some() {
        return opens;
    }
    if java_exception_line(line) {
        return Some(Kind::JavaCandidate);
    }
    None
}

/// `java.lang.IllegalStateException: boom` or `Exception in thread "main" …`.
fn java_exception_line(line: &[u8]) -> bool {
    let text = line
        .strip_prefix(b"Exception in thread \"")
        .and_then(|t| memchr::memmem::find(t, b"\" ").map(|at| &t[at + 2..]))
        .unwrap_or(line);
    // The head runs to the first `:` (or the end) and holds only class-name
    // bytes: most lines fail at their first space, without a full scan.
    let end = text
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'$' | b'_')))
        .unwrap_or(text.len());
    if end < text.len() && text[end] != b':' {
        return false;
    }
    let head = &text[..end];
    !head.is_empty()
        && head.contains(&b'.')
        && (head.ends_with(b"Exception") || head.ends_with(b"Error") || head.ends_with(b"Throwable"))
        // As before: a line that is not UTF-8 opens no block.
        && std::str::from_utf8(line).is_ok()
}

fn indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ') | Some(b'\t'))
}

impl Block {
    /// Whether `line` continues the block (and updates the state).
    fn continues(&mut self, raw: &[u8]) -> bool {
        let line = content(raw);
        match self.kind {
            Kind::Python => match self.py {
                PyState::Frames => {
                    if line.is_empty() || indented(line) || line.starts_with(b"Traceback (most recent call last):") {
                        return true;
                    }
                    // The exception line closes the frames.
                    self.py = PyState::AfterException;
                    true
                }
                PyState::AfterException => {
                    if line.is_empty()
                        || line.starts_with(b"During handling of the above exception")
                        || line.starts_with(b"The above exception was the direct cause")
                    {
                        return true;
                    }
                    if line.starts_with(b"Traceback (most recent call last):") {
                        self.py = PyState::Frames;
                        return true;
                    }
                    MESSAGE_CONTINUATIONS.iter().any(|c| line.starts_with(c))
                }
            },
            Kind::JavaCandidate | Kind::Java => {
                let text = std::str::from_utf8(line).unwrap_or("");
                let trimmed = text.trim_start();
                let frame =
                    indented(line) && (trimmed.starts_with("at ") || trimmed.starts_with("... ") || trimmed.starts_with("Suppressed: "));
                if frame || (self.kind == Kind::Java && text.starts_with("Caused by: ")) {
                    self.kind = Kind::Java;
                    return true;
                }
                false
            }
            Kind::Go => {
                let text = std::str::from_utf8(line).unwrap_or("");
                line.is_empty()
                    || indented(line)
                    || text.starts_with("goroutine ")
                    || text.starts_with("[signal ")
                    || text.starts_with("created by ")
                    || text.starts_with("exit status ")
                    || (text.ends_with(')') && text.contains('(') && !text.contains(' '))
            }
            Kind::Native => {
                let text = std::str::from_utf8(line).unwrap_or("");
                line.is_empty()
                    || indented(line)
                    || text.starts_with("*** ")
                    || text.starts_with("@ 0x")
                    || text.starts_with("PC: @")
                    || text.starts_with("Current thread")
                    || text.starts_with("Thread 0x")
                    || text.starts_with("Aborted")
                    || text.starts_with("Extension modules:")
                    || MESSAGE_CONTINUATIONS.iter().any(|c| line.starts_with(c))
            }
        }
    }
}

/// Joins multi-line records per container stream.
pub struct MultilineJoiner {
    limits: MultilineLimits,
    open: HashMap<String, Block, rustc_hash::FxBuildHasher>,
    /// The key of the line being pushed, written in place: while any
    /// block is open every line needs one (a string allocated and hashed
    /// with SipHash per line had been 2 % of the collector's `perf`
    /// samples).
    key: String,
}

/// A block is joined per file, stream and rank: under torchrun the ranks'
/// `[rankN]:` lines interleave in one stream.
///
/// `<pod uid>/<container>/<restart><rank prefix>#<stream>`, appended piece
/// by piece (formatting it with `write!` had been 1 % of the collector's
/// instructions while a block is open).
fn write_key(key: &mut String, meta: &PodLogPath, stream: Option<Stream>, line: &[u8]) {
    key.clear();
    key.push_str(&meta.pod_uid);
    key.push('/');
    key.push_str(&meta.container);
    key.push('/');
    key.push_str(itoa::Buffer::new().format(meta.restart));
    key.push_str(&String::from_utf8_lossy(rank_prefix(line)));
    key.push('#');
    key.push(match stream {
        Some(Stream::Stdout) => 'o',
        Some(Stream::Stderr) => 'e',
        None => '-',
    });
}

impl MultilineJoiner {
    pub fn new(limits: MultilineLimits) -> Self {
        Self {
            limits,
            open: HashMap::default(),
            key: String::new(),
        }
    }

    /// True while a block is open and could still grow.
    pub fn holds_fresh(&self) -> bool {
        self.open.values().any(|b| b.updated.elapsed() < self.limits.timeout)
    }

    /// True when no block is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Time until the next open block times out.
    pub fn time_left(&self) -> Option<Duration> {
        self.open
            .values()
            .map(|b| self.limits.timeout.saturating_sub(b.updated.elapsed()))
            .min()
    }

    fn emit(block: Block, out: &mut dyn FnMut(LogLine<'_>, bool)) {
        let mut text: &[u8] = &block.text;
        while let Some(stripped) = text.strip_suffix(b"\n") {
            text = stripped;
        }
        out(
            LogLine {
                meta: &block.meta,
                source_key: &block.source_key,
                position: block.position,
                ts: block.ts,
                stream: block.stream,
                text,
                truncated: block.truncated,
                parse_error: false,
                utf8: false,
            },
            block.kind != Kind::JavaCandidate,
        );
    }

    /// Takes one line; finished records (single lines or whole blocks) go
    /// to `out`, with `true` for a joined block.
    pub fn push(&mut self, line: LogLine<'_>, out: &mut dyn FnMut(LogLine<'_>, bool)) {
        if line.parse_error {
            return out(line, false);
        }
        // With no block open (most of the time), a line that starts none
        // goes straight out, without building its key.
        if self.open.is_empty() && starts(line.text).is_none() {
            return out(line, false);
        }
        write_key(&mut self.key, line.meta, line.stream, line.text);
        if let Some(block) = self.open.get_mut(self.key.as_str()) {
            if block.continues(line.text) && block.lines < self.limits.max_lines {
                let max = self.limits.max_bytes;
                if block.text.len() + 1 + line.text.len() > max {
                    block.truncated = true;
                }
                // A full block takes the line (it is part of the record) but
                // none of its bytes, not even the newline.
                if block.text.len() < max {
                    let room = max - block.text.len() - 1;
                    block.text.push(b'\n');
                    block.text.extend_from_slice(head(line.text, room));
                }
                block.lines += 1;
                block.position = line.position;
                if !Arc::ptr_eq(&block.source_key, line.source_key) {
                    block.source_key = line.source_key.clone();
                }
                block.updated = Instant::now();
                return;
            }
            let block = self.open.remove(self.key.as_str()).expect("present");
            Self::emit(block, out);
        }
        match starts(line.text) {
            Some(kind) => {
                let block = Block {
                    kind,
                    py: PyState::Frames,
                    meta: line.meta.clone(),
                    source_key: line.source_key.clone(),
                    position: line.position,
                    ts: line.ts,
                    stream: line.stream,
                    text: head(line.text, self.limits.max_bytes).to_vec(),
                    lines: 1,
                    truncated: line.truncated || line.text.len() > self.limits.max_bytes,
                    updated: Instant::now(),
                };
                self.open.insert(self.key.clone(), block);
            }
            None => out(line, false),
        }
    }

    /// Closes blocks with no new line for the timeout.
    pub fn flush_expired(&mut self, out: &mut dyn FnMut(LogLine<'_>, bool)) {
        let timeout = self.limits.timeout;
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, b)| b.updated.elapsed() >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(block) = self.open.remove(&key) {
                Self::emit(block, out);
            }
        }
    }

    /// Closes every block (before a batch is sealed, and at the end).
    pub fn flush_all(&mut self, out: &mut dyn FnMut(LogLine<'_>, bool)) {
        let mut blocks: Vec<Block> = self.open.drain().map(|(_, b)| b).collect();
        blocks.sort_by_key(|b| b.position);
        for block in blocks {
            Self::emit(block, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one pod the tests' lines come from.
    fn pod() -> Arc<PodLogPath> {
        Arc::new(PodLogPath {
            namespace: "ml".into(),
            pod: "p-0".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            restart: 0,
            rotated_at: None,
        })
    }

    fn run(lines: &[&str]) -> Vec<(String, bool)> {
        let meta = pod();
        let source_key: Arc<str> = Arc::from("s");
        let mut joiner = MultilineJoiner::new(MultilineLimits::default());
        let mut out = Vec::new();
        for (i, text) in lines.iter().enumerate() {
            let line = LogLine {
                meta: &meta,
                source_key: &source_key,
                position: (i as u64 + 1) * 4,
                ts: i as i64,
                stream: Some(Stream::Stderr),
                text: text.as_bytes(),
                truncated: false,
                parse_error: false,
                utf8: false,
            };
            joiner.push(line, &mut |l, block| {
                out.push((String::from_utf8_lossy(l.text).into_owned(), block))
            });
        }
        joiner.flush_all(&mut |l, block| out.push((String::from_utf8_lossy(l.text).into_owned(), block)));
        out
    }

    #[test]
    fn python_traceback_with_a_chain_is_one_record() {
        let lines = [
            "step 10",
            "Traceback (most recent call last):",
            "  File \"train.py\", line 10, in step",
            "    loss.backward()",
            "torch.OutOfMemoryError: CUDA out of memory.",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"train.py\", line 20, in <module>",
            "RuntimeError: giving up",
            "step 11",
        ];
        let out = run(&lines);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0], ("step 10".into(), false));
        assert!(
            out[1].1 && out[1].0.starts_with("Traceback") && out[1].0.ends_with("RuntimeError: giving up"),
            "{}",
            out[1].0
        );
        assert_eq!(out[1].0.lines().count(), 10);
        assert_eq!(out[2], ("step 11".into(), false));
    }

    #[test]
    fn interleaved_ranks_keep_their_own_tracebacks() {
        let out = run(&[
            "[rank0]: Traceback (most recent call last):",
            "[rank1]: Traceback (most recent call last):",
            "[rank0]:   File \"a.py\", line 1, in <module>",
            "[rank1]:   File \"b.py\", line 2, in <module>",
            "[rank0]: ValueError: zero",
            "[rank1]: KeyError: one",
            "[rank0]: after",
            "[rank1]: after",
        ]);
        let blocks: Vec<&str> = out.iter().filter(|(_, b)| *b).map(|(t, _)| t.as_str()).collect();
        assert_eq!(blocks.len(), 2, "{out:#?}");
        assert!(blocks
            .iter()
            .any(|b| b.contains("a.py") && b.ends_with("ValueError: zero") && !b.contains("b.py")));
        assert!(blocks
            .iter()
            .any(|b| b.contains("b.py") && b.ends_with("KeyError: one") && !b.contains("a.py")));
    }

    #[test]
    fn multi_line_cuda_and_nccl_messages_and_c10_frames_stay_in_the_record() {
        let out = run(&[
            "Traceback (most recent call last):",
            "  File \"train.py\", line 5, in <module>",
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.",
            "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
            "",
            "step 12",
            "terminate called after throwing an instance of 'c10::DistBackendError'",
            "  what():  [PG 0 Rank 1] Process group watchdog thread terminated with exception",
            "Exception raised from checkTimeout at ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:565 (most recent call first):",
            "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x96 (0x7f3c in /usr/lib/libc10.so)",
            "frame #1: <unknown function> + 0x1130 (0x7f3d in /usr/lib/libtorch_cuda.so)",
            "INFO next record",
        ]);
        assert_eq!(out.len(), 4, "{out:#?}");
        assert!(out[0].0.contains("TORCH_USE_CUDA_DSA"));
        assert_eq!(out[1].0, "step 12");
        assert!(
            out[2].0.ends_with("libtorch_cuda.so)") && out[2].0.lines().count() == 5,
            "{}",
            out[2].0
        );
    }

    #[test]
    fn rank_prefixed_tracebacks_join_too() {
        let out = run(&[
            "[rank0]: Traceback (most recent call last):",
            "[rank0]:   File \"x.py\", line 1, in <module>",
            "[rank0]: ValueError: bad",
            "[rank0]: next",
        ]);
        assert_eq!(out.len(), 2);
        assert!(out[0].0.ends_with("ValueError: bad"));
    }

    /// The key is what `format!` writes, for restarts of every width.
    #[test]
    fn keys_read_like_their_format() {
        let mut meta = PodLogPath::parse(std::path::Path::new("/var/log/pods/ml_train-0_0a1b/main/0.log")).expect("a pod log path");
        let mut key = String::from("left over");
        for restart in [0, 7, 10, 99, 12345, u32::MAX] {
            meta.restart = restart;
            for (stream, mark) in [(Some(Stream::Stdout), 'o'), (Some(Stream::Stderr), 'e'), (None, '-')] {
                for (line, rank) in [(&b"[rank3]: x"[..], "[rank3]"), (b"plain", "")] {
                    write_key(&mut key, &meta, stream, line);
                    assert_eq!(key, format!("{}/{}/{restart}{}#{mark}", meta.pod_uid, meta.container, rank));
                }
            }
        }
    }

    /// Every opening is recognised, behind a rank prefix too, and a line
    /// that only starts like one is not.
    #[test]
    fn each_opening_opens_a_block() {
        let openings = [
            ("Traceback (most recent call last):", Kind::Python),
            ("panic: runtime error", Kind::Go),
            ("fatal error: all goroutines are asleep", Kind::Go),
            ("terminate called after throwing an instance of 'c10::Error'", Kind::Native),
            ("*** Aborted at 1700000000 (unix time)", Kind::Native),
            ("*** SIGSEGV (@0x0) received by PID 1", Kind::Native),
            ("Fatal Python error: Segmentation fault", Kind::Native),
            ("java.lang.IllegalStateException: boom", Kind::JavaCandidate),
        ];
        for (line, kind) in openings {
            assert_eq!(starts(line.as_bytes()), Some(kind), "{line}");
            assert_eq!(starts(format!("[rank3]: {line}").as_bytes()), Some(kind), "{line}");
            assert_eq!(starts(&line.as_bytes()[..5]), None, "{line}");
            assert_eq!(starts(format!(" {line}").as_bytes()), None, "{line}");
        }
    }

    #[test]
    fn java_go_and_native_dumps() {
        let java = run(&[
            "java.lang.IllegalStateException: boom",
            "\tat a.B.c(B.java:1)",
            "\t... 3 more",
            "Caused by: java.io.IOException: x",
            "\tat d.E.f(E.java:2)",
            "done",
        ]);
        assert_eq!(java.len(), 2);
        assert_eq!(java[0].0.lines().count(), 5);
        let lonely = run(&["com.example.NotReallyAnError: just a message", "next line"]);
        assert_eq!(
            lonely,
            vec![
                ("com.example.NotReallyAnError: just a message".into(), false),
                ("next line".into(), false)
            ]
        );
        let go = run(&[
            "panic: runtime error: index out of range [5] with length 3",
            "",
            "goroutine 1 [running]:",
            "main.main()",
            "\t/tmp/x.go:8 +0x1d",
            "exit status 2",
            "after",
        ]);
        assert_eq!(go.len(), 2);
        assert_eq!(go[0].0.lines().count(), 6);
        let native = run(&[
            "terminate called after throwing an instance of 'c10::DistBackendError'",
            "  what():  [Rank 1] Watchdog caught collective operation timeout",
            "*** Aborted at 1700000000 (unix time) try \"date -d @1700000000\" if you are using GNU date ***",
            "PC: @     0x7f0000000000 (unknown)",
            "Aborted (core dumped)",
            "after",
        ]);
        assert_eq!(native.len(), 2);
    }

    /// Lines of every kind the joiner reads: openings, frames, messages,
    /// chain lines and plain lines.
    const VOCABULARY: &[&str] = &[
        "step 10 loss 0.5",
        "Traceback (most recent call last):",
        "  File \"train.py\", line 10, in step",
        "    loss.backward()",
        "torch.OutOfMemoryError: CUDA out of memory.",
        "",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
        "java.lang.IllegalStateException: boom",
        "\tat com.example.Train.run(Train.java:10)",
        "Caused by: java.io.IOException: gone",
        "panic: runtime error: index out of range",
        "goroutine 1 [running]:",
        "main.main()",
        "terminate called after throwing an instance of 'c10::Error'",
        "*** Aborted at 1700000000 (unix time) try \"date -d @1700000000\" if you are using GNU date ***",
        "@ 0x7f0000000000 (unknown)",
        "ncclInternalError: Internal check failed.",
        "INFO all good",
        "  File \"/data/训练/train.py\", line 3, in <module>",
        "RuntimeError: échec de l'allocation",
    ];

    /// One pushed line: its stream, its `[rankN]:` prefix, the vocabulary
    /// entry and whether it is padded past the block byte limit.
    #[derive(Clone, Debug)]
    enum JoinOp {
        Line {
            stderr: bool,
            rank: Option<u8>,
            text: usize,
            long: bool,
        },
        /// Blocks time out (the limit is zero: every open block closes).
        Expire,
    }

    fn join_op() -> impl proptest::strategy::Strategy<Value = JoinOp> {
        use proptest::prelude::*;
        prop_oneof![
            12 => (any::<bool>(), proptest::option::weighted(0.3, 0u8..2), 0..VOCABULARY.len(), proptest::bool::weighted(0.1))
                .prop_map(|(stderr, rank, text, long)| JoinOp::Line { stderr, rank, text, long }),
            1 => Just(JoinOp::Expire),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// Per stream and rank, the records are the lines in order, each
        /// line in exactly one record (a record says which by its last
        /// line's position); a record is whole, or marked truncated, within
        /// the byte limit, and a prefix of its lines.
        #[test]
        fn every_line_is_in_one_record_in_order(
            ops in proptest::collection::vec(join_op(), 1..80),
            max_lines in proptest::prop_oneof![proptest::strategy::Just(2usize), proptest::strategy::Just(3), proptest::strategy::Just(1000)],
            max_bytes in proptest::prop_oneof![proptest::strategy::Just(1024usize), proptest::strategy::Just(1 << 20)],
        ) {
            let meta = pod();
            let source_key: Arc<str> = Arc::from("s");
            let limits = MultilineLimits { max_lines, max_bytes, timeout: Duration::ZERO };
            let mut joiner = MultilineJoiner::new(limits);
            // Every line pushed (stream, text), by position / 4 - 1.
            let mut pushed: Vec<(Option<Stream>, String)> = Vec::new();
            let mut records: Vec<(Option<Stream>, u64, String, bool)> = Vec::new();
            let mut collect = |l: LogLine<'_>, _: bool| {
                records.push((l.stream, l.position, String::from_utf8(l.text.to_vec()).unwrap(), l.truncated))
            };
            for op in &ops {
                match op {
                    JoinOp::Line { stderr, rank, text, long } => {
                        let mut line = rank.map(|r| format!("[rank{r}]:")).unwrap_or_default();
                        line.push_str(VOCABULARY[*text]);
                        if *long {
                            line.push_str(&"xé".repeat(500));
                        }
                        let stream = Some(if *stderr { Stream::Stderr } else { Stream::Stdout });
                        pushed.push((stream, line));
                        let line = &pushed.last().unwrap().1;
                        joiner.push(
                            LogLine {
                                meta: &meta,
                                source_key: &source_key,
                                position: pushed.len() as u64 * 4,
                                ts: 0,
                                stream,
                                text: line.as_bytes(),
                                truncated: false,
                                parse_error: false,
                                utf8: false,
                            },
                            &mut collect,
                        );
                    }
                    JoinOp::Expire => joiner.flush_expired(&mut collect),
                }
            }
            joiner.flush_all(&mut collect);
            let group = |stream: Option<Stream>, line: &str| (stream, rank_prefix(line.as_bytes()).to_vec());
            let mut taken = vec![false; pushed.len()];
            let mut last_of_group: HashMap<(Option<Stream>, Vec<u8>), usize> = HashMap::new();
            for (stream, position, text, truncated) in &records {
                let last = *position as usize / 4 - 1;
                let key = group(*stream, &pushed[last].1);
                // The record's lines: those of its group after the group's
                // previous record, up to its last.
                let first = last_of_group.get(&key).map_or(0, |l| l + 1);
                let lines: Vec<usize> = (first..=last).filter(|&i| group(pushed[i].0, &pushed[i].1) == key).collect();
                let joined = lines.iter().map(|&i| pushed[i].1.as_str()).collect::<Vec<_>>().join("\n");
                let joined = joined.trim_end_matches('\n');
                // A line outside a block is as the tailer capped it.
                proptest::prop_assert!(text.len() <= max_bytes || lines.len() == 1 && !text.contains('\n'), "over the limit: {} bytes", text.len());
                if *truncated {
                    proptest::prop_assert!(joined.starts_with(text.as_str()), "{text:?} is not a cut of {joined:?}");
                } else {
                    proptest::prop_assert_eq!(text.as_str(), joined, "lines {:?}", lines);
                }
                for &i in &lines {
                    proptest::prop_assert!(!taken[i], "line {} in two records", i);
                    taken[i] = true;
                }
                last_of_group.insert(key, last);
            }
            let lost: Vec<_> = (0..pushed.len()).filter(|&i| !taken[i]).collect();
            proptest::prop_assert!(lost.is_empty(), "lines in no record: {:?}", lost);
        }
    }

    #[test]
    fn blocks_are_bounded() {
        let mut lines = vec!["Traceback (most recent call last):".to_string()];
        for i in 0..1500 {
            lines.push(format!("  File \"f{i}.py\", line 1"));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let out = run(&refs);
        assert_eq!(out[0].0.lines().count(), 1000);
        assert!(out.len() > 1);
    }
}
