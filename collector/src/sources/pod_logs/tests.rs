//! Model-based tests of the tailer: random sequences of appends (with CRI
//! `P`/`F` splits on both streams and torn physical lines), kubelet-style
//! rotations, deletions of rotated files, truncations and restarts from the
//! checkpoint, checked against a model of the lines that must come out:
//! every complete line exactly once, in order per stream, capped at the
//! configured size. Some lines are progress bars redrawn with carriage
//! returns (split before a `\r` rather than cut at the cap); a second run
//! flushes every partial at once, where the pieces of each line must put
//! it back together.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::format::Stream;
use super::tailer::{LineSink, LogLine, PodLogTailer, TailerConfig};
use crate::checkpoint::TailerCheckpoint;
use crate::metrics::CollectorMetrics;

#[derive(Debug, Default)]
struct Collected {
    lines: Vec<(Option<Stream>, String, bool, bool)>,
    positions: HashMap<String, u64>,
    /// For each line, whether the tailer said it is UTF-8.
    utf8: Vec<bool>,
}

impl LineSink for Collected {
    fn line(&mut self, line: LogLine<'_>) {
        let last = self.positions.entry(line.source_key.to_string()).or_insert(0);
        assert!(
            line.position > *last || (*last == 0 && line.position == 0),
            "positions must increase per source"
        );
        *last = line.position;
        // A line the tailer calls UTF-8 is taken as text unchecked.
        assert!(!line.utf8 || std::str::from_utf8(line.text).is_ok(), "not UTF-8: {:?}", line.text);
        self.utf8.push(line.utf8);
        self.lines.push((
            line.stream,
            String::from_utf8_lossy(line.text).into_owned(),
            line.truncated,
            line.parse_error,
        ));
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Writes a logical line on a stream as segments of these lengths;
    /// `finish` ends it with `F`, otherwise it stays open (only `P`s).
    Write {
        stderr: bool,
        parts: Vec<usize>,
        finish: bool,
        torn: bool,
        /// Each segment is a redraw (`\r<id>…`) with a further `\r` every
        /// this many bytes; `None` for a plain line.
        redraw: Option<Redraw>,
    },
    Poll,
    Rotate,
    DeleteOldestRotated,
    Truncate,
    Restart,
}

/// How a progress bar's segments are drawn.
#[derive(Clone, Copy, Debug)]
struct Redraw {
    /// A `\r` every this many bytes after the segment's id.
    every: usize,
    /// The segment ends with a `\r` (the runtime cut a piece right after
    /// one; on an `F` piece it is a CRLF's and goes).
    trailing: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let redraw = prop::option::weighted(
        0.3,
        (3usize..60, prop::bool::weighted(0.3)).prop_map(|(every, trailing)| Redraw { every, trailing }),
    );
    prop_oneof![
        6 => (any::<bool>(), prop::collection::vec(0usize..120, 1..4), prop::bool::weighted(0.8), prop::bool::weighted(0.2), redraw)
            .prop_map(|(stderr, parts, finish, torn, redraw)| Op::Write { stderr, parts, finish, torn, redraw }),
        3 => Just(Op::Poll),
        1 => Just(Op::Rotate),
        1 => Just(Op::DeleteOldestRotated),
        1 => Just(Op::Truncate),
        1 => Just(Op::Restart),
    ]
}

struct Harness {
    root: PathBuf,
    dir: PathBuf,
    config: TailerConfig,
    tailer: PodLogTailer,
    sink: Collected,
    /// The pieces that must come out when partials never time out.
    expected: Vec<(Stream, String, bool)>,
    /// Per stream: the open line's text not yet shipped and whether its
    /// head was already shipped at the cap (the rest up to `F` is dropped).
    open_line: HashMap<bool, (String, bool)>,
    /// Every line written, whole, and the open one per stream: what the
    /// pieces must put back together when partials time out at once.
    whole_lines: Vec<(Stream, String)>,
    open_whole: HashMap<bool, String>,
    /// Partials time out at once (every poll flushes them).
    impatient: bool,
    torn_tail: Vec<u8>,
    rotated: Vec<PathBuf>,
    /// A rotated file was deleted before it was read to its end: only the
    /// open descriptor still reaches its data, so a restart now would lose
    /// it for real (as it would for any tailer).
    deleted_unread: bool,
    next_id: usize,
    stamp: u32,
    ts: i64,
}

const MAX_LINE: usize = 200;

impl Harness {
    fn new(root: &Path, read_buffer: usize, per_pass: usize, impatient: bool) -> Self {
        let dir = root.join("ml_train-0_0000-1111").join("main");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("0.log"), b"").unwrap();
        let config = TailerConfig {
            max_line_bytes: MAX_LINE,
            read_buffer_bytes: read_buffer,
            max_bytes_per_pass: per_pass,
            partial_timeout: if impatient { Duration::ZERO } else { Duration::from_secs(3600) },
            max_open_files: 64,
            forced_format: None,
        };
        let mut tailer = PodLogTailer::new(
            root.to_path_buf(),
            "test".into(),
            config.clone(),
            TailerCheckpoint::default(),
            Arc::new(CollectorMetrics::unregistered()),
        );
        tailer.scan().unwrap();
        Self {
            root: root.to_path_buf(),
            dir,
            config,
            tailer,
            sink: Collected::default(),
            expected: Vec::new(),
            open_line: HashMap::new(),
            whole_lines: Vec::new(),
            open_whole: HashMap::new(),
            impatient,
            torn_tail: Vec::new(),
            rotated: Vec::new(),
            deleted_unread: false,
            next_id: 0,
            stamp: 0,
            ts: 1_700_000_000_000_000_000,
        }
    }

    fn live(&self) -> PathBuf {
        self.dir.join("0.log")
    }

    fn append(&mut self, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(self.live()).unwrap();
        file.write_all(bytes).unwrap();
    }

    fn finish_torn(&mut self) {
        let tail = std::mem::take(&mut self.torn_tail);
        if !tail.is_empty() {
            self.append(&tail);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write {
                stderr,
                parts,
                finish,
                torn,
                redraw,
            } => {
                self.finish_torn();
                let stream = if *stderr { "stderr" } else { "stdout" };
                let mut bytes = Vec::new();
                let which = if *stderr { Stream::Stderr } else { Stream::Stdout };
                let (text, skipping) = self.open_line.entry(*stderr).or_default();
                let whole = self.open_whole.entry(*stderr).or_default();
                for (i, len) in parts.iter().enumerate() {
                    let id = self.next_id;
                    self.next_id += 1;
                    let mut segment = match redraw {
                        Some(_) => format!("\r<{id}>"),
                        None => format!("<{id}>"),
                    };
                    let head = segment.len();
                    while segment.len() < *len {
                        let at = segment.len() - head + 1;
                        match redraw {
                            Some(r) if at % r.every == 0 => segment.push('\r'),
                            _ => segment.push(char::from(b'a' + (segment.len() % 26) as u8)),
                        }
                    }
                    if redraw.is_some_and(|r| r.trailing) {
                        segment.push('\r');
                    }
                    let last = *finish && i + 1 == parts.len();
                    let tag = if last { "F" } else { "P" };
                    self.ts += 1000;
                    bytes.extend_from_slice(
                        format!("{} {stream} {tag} {segment}\n", weft_model::time::format_rfc3339_nanos(self.ts)).as_bytes(),
                    );
                    // A `\r` before the newline of a final piece is a CRLF's.
                    let segment = if last {
                        segment.strip_suffix('\r').unwrap_or(&segment)
                    } else {
                        &segment
                    };
                    whole.push_str(segment);
                    if *skipping {
                        continue;
                    }
                    text.push_str(segment);
                    if text.len() <= MAX_LINE {
                        continue;
                    }
                    // Over the cap: a line of redraws splits before a `\r`,
                    // at a partial piece or at the final one; any other line
                    // ships its head and drops the rest up to its end.
                    if let Some(cut) = redraw_split(text, MAX_LINE) {
                        self.expected.push((which, text[..cut].to_string(), false));
                        text.drain(..cut);
                    } else {
                        self.expected.push((which, text[..MAX_LINE].to_string(), true));
                        text.clear();
                        *skipping = true;
                    }
                }
                if *finish {
                    let (rest, skipped) = self.open_line.remove(stderr).unwrap_or_default();
                    if !skipped {
                        self.expected.push((which, rest, false));
                    }
                    let whole = self.open_whole.remove(stderr).unwrap_or_default();
                    self.whole_lines.push((which, whole));
                }
                if *torn && bytes.len() > 2 {
                    let cut = bytes.len() - 2;
                    self.torn_tail = bytes.split_off(cut);
                }
                self.append(&bytes);
            }
            Op::Poll => {
                self.tailer.poll(&mut self.sink);
            }
            Op::Rotate => {
                self.finish_torn();
                self.stamp += 1;
                let rotated = self.dir.join(format!("0.log.20261125-{:06}", self.stamp));
                fs::rename(self.live(), &rotated).unwrap();
                fs::write(self.live(), b"").unwrap();
                self.rotated.push(rotated);
                self.tailer.scan().unwrap();
            }
            Op::DeleteOldestRotated => {
                if !self.rotated.is_empty() {
                    let oldest = self.rotated.remove(0);
                    fs::remove_file(oldest).unwrap();
                    self.deleted_unread = true;
                    self.tailer.scan().unwrap();
                }
            }
            Op::Truncate => {
                // Everything written is read first: truncation loses only
                // what was never read, which this model does not allow.
                self.finish_torn();
                self.drain();
                OpenOptions::new().write(true).open(self.live()).unwrap().set_len(0).unwrap();
                self.tailer.poll(&mut self.sink);
            }
            Op::Restart => {
                if self.deleted_unread {
                    self.drain();
                }
                let checkpoint = self.tailer.checkpoint();
                // The checkpoint survives a round trip through its file format.
                let checkpoint: TailerCheckpoint = serde_json::from_slice(&serde_json::to_vec(&checkpoint).unwrap()).unwrap();
                self.tailer = PodLogTailer::new(
                    self.root.clone(),
                    "test".into(),
                    self.config.clone(),
                    checkpoint,
                    Arc::new(CollectorMetrics::unregistered()),
                );
                self.tailer.scan().unwrap();
            }
        }
    }

    fn drain(&mut self) {
        self.deleted_unread = false;
        loop {
            let before = self.sink.lines.len();
            let read = self.tailer.poll(&mut self.sink);
            if read == 0 && before == self.sink.lines.len() {
                // One more pass releases drained deleted files.
                self.tailer.poll(&mut self.sink);
                return;
            }
        }
    }

    fn check(&mut self) {
        self.finish_torn();
        self.drain();
        let got: Vec<(Stream, String, bool)> = self
            .sink
            .lines
            .iter()
            .map(|(stream, text, truncated, parse_error)| {
                assert!(!parse_error, "no line is malformed: {text}");
                (stream.expect("parsed lines have a stream"), text.clone(), *truncated)
            })
            .collect();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let have: Vec<_> = got.iter().filter(|l| l.0 == stream).collect();
            if self.impatient {
                let open = self.open_whole.get(&(stream == Stream::Stderr)).filter(|l| !l.is_empty());
                let lines: Vec<String> = self
                    .whole_lines
                    .iter()
                    .filter(|l| l.0 == stream)
                    .map(|l| l.1.clone())
                    .chain(open.cloned())
                    .collect();
                let pieces: Vec<(String, bool)> = have.iter().map(|l| (l.1.clone(), l.2)).collect();
                assert_put_back_together(&lines, &pieces);
            } else {
                let want: Vec<_> = self.expected.iter().filter(|l| l.0 == stream).collect();
                assert_eq!(have, want, "lines of {stream:?}");
            }
        }
        assert_eq!(self.tailer.open_files(), 1 + self.rotated.len(), "deleted files are released");
        assert_eq!(
            self.tailer.closed_sources_without_partials(),
            0,
            "released sources kept for no partial"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Patient: every complete line exactly once, as the model ships it.
    /// Impatient (every partial flushed at once): the pieces of every line
    /// put it back together.
    #[test]
    fn tailer_delivers_every_line(
        ops in prop::collection::vec(op(), 1..40),
        read_buffer in prop_oneof![Just(1usize), Just(7), Just(64), Just(4096)],
        per_pass in prop_oneof![Just(50usize), Just(1 << 20)],
        impatient in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut harness = Harness::new(dir.path(), read_buffer, per_pass, impatient);
        for op in &ops {
            harness.apply(op);
        }
        harness.check();
    }

    /// A slice of UTF-8 text is found on character boundaries exactly
    /// where it is UTF-8 itself (where `str` says both its ends are
    /// boundaries, or it is empty).
    #[test]
    fn char_boundaries_are_the_strs(
        text in "[a-zé€\u{1F600}\u{10FFFF}\u{80}\u{7FF}\u{800}\u{FFFF}]{0,12}",
        a in 0usize..60,
        b in 0usize..60,
    ) {
        let (a, b) = (a.min(text.len()), b.min(text.len()));
        let (from, to) = (a.min(b), a.max(b));
        let slice = &text.as_bytes()[from..to];
        let on = super::tailer::on_char_boundaries(slice);
        prop_assert_eq!(on, std::str::from_utf8(slice).is_ok(), "{:?} {}..{}", text, from, to);
        prop_assert_eq!(on, from == to || (text.is_char_boundary(from) && text.is_char_boundary(to)));
    }
}

/// The model's rule for a line of redraws over the cap: split before the
/// last `\r` within the cap, where another `\r` comes before it and the
/// rest fits.
fn redraw_split(text: &str, max: usize) -> Option<usize> {
    let cut = text[..text.len().min(max)].rfind('\r')?;
    text[..cut].contains('\r').then_some(cut).filter(|&cut| text.len() - cut <= max)
}

/// The first whole `<id>` in a piece.
fn first_id(piece: &str) -> Option<&str> {
    let open = piece.find('<')?;
    let close = open + piece[open..].find('>')?;
    piece[open + 1..close]
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| &piece[open..=close])
}

/// Checks that `pieces` (text, truncated) of one stream put `lines` back
/// together in order: each piece at most the cap and where the one before
/// it ended, except after a piece cut at the cap (what follows up to the
/// line's end may be dropped: the rest of a line already shipped at the cap
/// is, unless a timeout flushed the state that drops it); every byte of
/// every line shipped but those.
fn assert_put_back_together(lines: &[String], pieces: &[(String, bool)]) {
    // The line being matched, how far it is shipped, and whether the
    // piece before was cut at the cap.
    let (mut at, mut shipped, mut after_cut) = (0usize, 0usize, false);
    for (index, (piece, truncated)) in pieces.iter().enumerate() {
        assert!(piece.len() <= MAX_LINE, "piece {index} over the cap: {piece:?}");
        if let Some(id) = first_id(piece) {
            let line = lines
                .iter()
                .position(|l| l.contains(id))
                .unwrap_or_else(|| panic!("piece {index} from no line: {piece:?}"));
            if line != at {
                assert_eq!(line, at + 1, "piece {index} skips a line: {piece:?}");
                assert!(
                    shipped == lines[at].len() || after_cut,
                    "line {at} lost {:?}",
                    &lines[at][shipped..]
                );
                (at, shipped, after_cut) = (line, 0, false);
            }
        }
        let line = &lines[at];
        let found = if after_cut {
            line[shipped..].find(piece.as_str())
        } else {
            line[shipped..].starts_with(piece.as_str()).then_some(0)
        };
        let found = found.unwrap_or_else(|| panic!("piece {index} {piece:?} is not the rest of line {at}: {:?}", &line[shipped..]));
        shipped += found + piece.len();
        if *truncated {
            assert_eq!(piece.len(), MAX_LINE, "a cut piece is cut at the cap");
        }
        after_cut = *truncated;
    }
    if let Some(last) = lines.get(at) {
        assert!(shipped == last.len() || after_cut, "line {at} lost {:?}", &last[shipped..]);
    }
    assert!(lines.len() <= at + 1, "lines after {at} never shipped: {:?}", &lines[at + 1..]);
}

/// Writes `content` as the one log file `ns_pod_uid/c/0.log` under `dir`.
fn log_file(dir: &Path, content: impl AsRef<[u8]>) -> PathBuf {
    let container = dir.join("ns_pod_uid").join("c");
    fs::create_dir_all(&container).unwrap();
    let path = container.join("0.log");
    fs::write(&path, content).unwrap();
    path
}

fn one_file_tailer(dir: &Path, content: &[u8], max_line: usize) -> (PodLogTailer, Collected, PathBuf) {
    let path = log_file(dir, content);
    let config = TailerConfig {
        max_line_bytes: max_line,
        read_buffer_bytes: 4096,
        ..TailerConfig::default()
    };
    let mut tailer = PodLogTailer::new(
        dir.to_path_buf(),
        "t".into(),
        config,
        TailerCheckpoint::default(),
        Arc::new(CollectorMetrics::unregistered()),
    );
    tailer.scan().unwrap();
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    (tailer, sink, path)
}

#[test]
fn malformed_lines_are_kept_raw_and_the_file_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let content = b"2026-11-25T10:00:00Z stdout F first\nthis is not cri\n2026-11-25T10:00:01Z stdout F \xff\xfe bad utf8\n2026-11-25T10:00:02Z stdout F last\n";
    let (_, sink, _) = one_file_tailer(dir.path(), content, 1024);
    let texts: Vec<_> = sink.lines.iter().map(|l| (l.1.as_str(), l.3)).collect();
    assert_eq!(
        texts,
        vec![
            ("first", false),
            ("this is not cri", true),
            ("\u{fffd}\u{fffd} bad utf8", false),
            ("last", false)
        ]
    );
}

/// Whole lines of a chunk that is UTF-8 come marked so, and the sink
/// checks them no more; a chunk with a bad byte, a line cut at the cap
/// (possibly inside a character) and a line put together from pieces come
/// unmarked, to be checked.
#[test]
fn whole_lines_of_a_utf8_chunk_are_marked_utf8_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let cut = "é".repeat(600);
    let content = format!(
        "2026-11-25T10:00:00Z stdout F température ✓\n\
         2026-11-25T10:00:01Z stdout P first half \n\
         2026-11-25T10:00:01Z stdout F second half\n\
         2026-11-25T10:00:02Z stdout F {cut}\n\
         2026-11-25T10:00:03Z stdout F plain\n"
    );
    let (_, sink, _) = one_file_tailer(dir.path(), content.as_bytes(), 1001);
    let texts: Vec<&str> = sink.lines.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(texts[..2], ["température ✓", "first half second half"]);
    assert_eq!(texts[3], "plain");
    assert!(sink.lines[2].2, "cut at the cap");
    assert_eq!(sink.utf8, [true, false, false, true]);

    let dir = tempfile::tempdir().unwrap();
    let content = b"2026-11-25T10:00:00Z stdout F fine\n2026-11-25T10:00:01Z stdout F \xff bad\n";
    let (_, sink, _) = one_file_tailer(dir.path(), content, 1024);
    assert_eq!(sink.utf8, [false, false], "the chunk holds a bad byte");
}

#[test]
fn a_line_ten_times_the_cap_does_not_stop_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "x".repeat(20_000);
    let content = format!("2026-11-25T10:00:00Z stdout F {huge}\nnot cri and also huge {huge}\n2026-11-25T10:00:01Z stdout F after\n");
    let (_, sink, _) = one_file_tailer(dir.path(), content.as_bytes(), 2000);
    assert_eq!(sink.lines.len(), 3);
    assert_eq!(sink.lines[0].1.len(), 2000);
    assert!(sink.lines[0].2, "marked truncated");
    assert!(sink.lines[1].2 && sink.lines[1].3, "raw huge line truncated and flagged");
    assert_eq!(sink.lines[2].1, "after");
}

#[test]
fn docker_json_files_are_detected_and_partials_joined() {
    let dir = tempfile::tempdir().unwrap();
    let content = concat!(
        r#"{"log":"hello ","stream":"stdout","time":"2026-11-25T10:00:00.1Z"}"#,
        "\n",
        r#"{"log":"err\n","stream":"stderr","time":"2026-11-25T10:00:00.2Z"}"#,
        "\n",
        r#"{"log":"world\n","stream":"stdout","time":"2026-11-25T10:00:00.3Z"}"#,
        "\n",
    );
    let (_, sink, _) = one_file_tailer(dir.path(), content.as_bytes(), 1024);
    let texts: Vec<_> = sink.lines.iter().map(|l| (l.0, l.1.as_str())).collect();
    assert_eq!(texts, vec![(Some(Stream::Stderr), "err"), (Some(Stream::Stdout), "hello world")]);
}

/// A tailer over `dir` with `config`, resuming from `checkpoint`, after its
/// first scan.
fn scanned_tailer(dir: &Path, config: TailerConfig, checkpoint: TailerCheckpoint) -> PodLogTailer {
    let mut tailer = PodLogTailer::new(
        dir.to_path_buf(),
        "t".into(),
        config,
        checkpoint,
        Arc::new(CollectorMetrics::unregistered()),
    );
    tailer.scan().unwrap();
    tailer
}

/// [`scanned_tailer`] whose partials time out at once.
fn impatient_tailer(dir: &Path, checkpoint: TailerCheckpoint) -> PodLogTailer {
    let config = TailerConfig {
        partial_timeout: Duration::from_millis(0),
        ..TailerConfig::default()
    };
    scanned_tailer(dir, config, checkpoint)
}

#[test]
fn the_rest_of_a_line_cut_at_the_cap_is_dropped_even_when_written_slowly() {
    let dir = tempfile::tempdir().unwrap();
    let piece = |tag: &str, text: &str| format!("2026-11-25T10:00:00Z stdout {tag} {text}\n");
    let path = log_file(dir.path(), piece("P", &"x".repeat(1500)));
    // Long enough that the held state's 60 timeouts (6 s) outlast the test.
    let timeout = Duration::from_millis(100);
    let config = TailerConfig {
        max_line_bytes: 1024,
        partial_timeout: timeout,
        ..TailerConfig::default()
    };
    let mut tailer = scanned_tailer(dir.path(), config, TailerCheckpoint::default());
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    assert_eq!(sink.lines.len(), 1, "the head, at the cap");
    assert!(sink.lines[0].2, "marked truncated");
    // More than one partial timeout passes before the rest is written.
    std::thread::sleep(timeout * 2);
    tailer.poll(&mut sink);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(format!("{}{}{}", piece("P", "rest"), piece("F", "end"), piece("F", "next line")).as_bytes())
        .unwrap();
    tailer.poll(&mut sink);
    let texts: Vec<&str> = sink.lines[1..].iter().map(|l| l.1.as_str()).collect();
    assert_eq!(texts, ["next line"], "the rest of the cut line is dropped");
}

#[test]
fn a_stale_partial_is_flushed_after_the_timeout_with_a_fresh_position() {
    let dir = tempfile::tempdir().unwrap();
    log_file(
        dir.path(),
        b"2026-11-25T10:00:00Z stdout P half\n2026-11-25T10:00:01Z stderr F other\n",
    );
    let mut tailer = impatient_tailer(dir.path(), TailerCheckpoint::default());
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    let texts: Vec<_> = sink.lines.iter().map(|l| l.1.as_str()).collect();
    // The sink asserts positions increase even though the partial was read
    // before the stderr line.
    assert_eq!(texts, vec!["other", "half"]);
}

#[test]
fn a_stale_partial_of_redraws_is_flushed_up_to_its_last_whole_redraw() {
    // A bar still being drawn: its P pieces time out (here at once) before
    // the line ends; the last piece ends mid-redraw.
    let dir = tempfile::tempdir().unwrap();
    let path = log_file(
        dir.path(),
        "2026-11-25T10:00:00Z stdout P \r 1/9 [00:01, loss=0.5123]\r 2/9 [00:02, loss=0.4501]\r 3/9 [00:0\n",
    );
    let mut tailer = impatient_tailer(dir.path(), TailerCheckpoint::default());
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    let texts: Vec<_> = sink.lines.iter().map(|l| l.1.clone()).collect();
    assert_eq!(texts, vec!["\r 1/9 [00:01, loss=0.5123]\r 2/9 [00:02, loss=0.4501]"]);
    assert_eq!(tailer.checkpoint().partials.len(), 1, "the unfinished redraw waits");
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    use std::io::Write;
    file.write_all(b"2026-11-25T10:00:03Z stdout F 3, loss=0.4012]\n").unwrap();
    tailer.poll(&mut sink);
    assert_eq!(sink.lines.last().unwrap().1, "\r 3/9 [00:03, loss=0.4012]");
    assert!(tailer.checkpoint().partials.is_empty());
}

#[test]
fn a_held_redraw_survives_a_restart_above_what_was_shipped() {
    // The head of a stale bar is shipped, its unfinished redraw held; the
    // collector restarts from the checkpoint and the job never writes again:
    // the held part goes out on its own, at a position above the head's
    // (the indexer drops what is not). Only one stream's part is held: a
    // second would not leave room for both flushes at this offset.
    let dir = tempfile::tempdir().unwrap();
    log_file(
        dir.path(),
        concat!(
            "2026-11-25T10:00:00Z stdout P \r 1/9 [00:01]\r 2/9 [00:02]\r 3/9 [00:0\n",
            "2026-11-25T10:00:00Z stderr P \r 1/5 [00:01]\r 2/5 [00:02]\r 3/5 [00:0\n",
        ),
    );
    let mut sink = Collected::default();
    let mut first = impatient_tailer(dir.path(), TailerCheckpoint::default());
    first.poll(&mut sink);
    let checkpoint = first.checkpoint();
    assert_eq!(checkpoint.partials.len(), 1, "the held part is in the checkpoint");
    drop(first);
    // Same sink: it asserts positions rise per source across the restart.
    let mut second = impatient_tailer(dir.path(), checkpoint);
    second.poll(&mut sink);
    second.poll(&mut sink);
    let mut texts: Vec<_> = sink.lines.iter().map(|l| l.1.clone()).collect();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "\r 1/5 [00:01]\r 2/5 [00:02]\r 3/5 [00:0",
            "\r 1/9 [00:01]\r 2/9 [00:02]",
            "\r 3/9 [00:0"
        ],
        "every byte once"
    );
}

#[test]
fn a_partial_cut_inside_a_character_survives_a_restart() {
    // The runtime cut a piece inside a bar's 3-byte block; the collector
    // restarts before the piece that finishes it.
    let dir = tempfile::tempdir().unwrap();
    let block = "█".as_bytes();
    let mut first = b"2026-11-25T10:00:00Z stdout P 10%|".to_vec();
    first.extend_from_slice(&block[..2]);
    first.push(b'\n');
    let (tailer, mut sink, path) = one_file_tailer(dir.path(), &first, 1024);
    let checkpoint = tailer.checkpoint();
    drop(tailer);
    let mut last = block[2..].to_vec();
    last.splice(0..0, b"2026-11-25T10:00:01Z stdout F ".iter().copied());
    last.extend_from_slice(" | 1/10\n".as_bytes());
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    use std::io::Write;
    file.write_all(&last).unwrap();
    let mut resumed = scanned_tailer(dir.path(), TailerConfig::default(), checkpoint);
    resumed.poll(&mut sink);
    assert_eq!(sink.lines.last().unwrap().1, "10%|█ | 1/10");
}

#[test]
fn a_piece_keeps_the_carriage_returns_of_its_message() {
    let cases = [
        // The runtime cut a piece right after a redraw's `\r`.
        (
            "2026-11-25T10:00:00Z stdout P \r 1/9 [00:01]\r\n2026-11-25T10:00:01Z stdout F  2/9 [00:02]\n",
            "\r 1/9 [00:01]\r 2/9 [00:02]",
        ),
        // A piece ending with two, and a final piece whose message ends with
        // one before a CRLF's: only the CRLF's `\r` goes.
        (
            "2026-11-25T10:00:00Z stdout P \r 1/9\r\r\n2026-11-25T10:00:01Z stdout F  2/9\r\r\n",
            "\r 1/9\r\r 2/9\r",
        ),
    ];
    for (content, line) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (_, sink, _) = one_file_tailer(dir.path(), content.as_bytes(), 1024);
        assert_eq!(sink.lines[0].1, line, "{content:?}");
    }
}

#[test]
fn inode_reuse_with_the_same_head_is_read_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let line = b"2026-11-25T10:00:00Z stdout F same first line\n";
    let (tailer, sink, path) = one_file_tailer(dir.path(), line, 1024);
    assert_eq!(sink.lines.len(), 1);
    let mut checkpoint = tailer.checkpoint();
    drop(tailer);
    // Recreate the file; pretend it got the same inode (the checkpoint is
    // edited to the new inode) but it was born later.
    fs::remove_file(&path).unwrap();
    fs::write(&path, line).unwrap();
    let stat = fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    checkpoint.files[0].identity.ino = stat.ino();
    checkpoint.files[0].identity.dev = stat.dev();
    checkpoint.files[0].identity.born = 1;
    let mut tailer = scanned_tailer(dir.path(), TailerConfig::default(), checkpoint);
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    assert_eq!(sink.lines.len(), 1, "the new file is read from offset 0");
    let key = sink.positions.keys().next().unwrap();
    assert!(key.ends_with("/1"), "a new generation, so the old watermark does not apply: {key}");
}

#[test]
fn partials_of_both_streams_flushed_together_keep_positions_rising() {
    let dir = tempfile::tempdir().unwrap();
    log_file(
        dir.path(),
        b"2026-11-25T10:00:00Z stderr P err half\n2026-11-25T10:00:01Z stdout P out half\n",
    );
    let mut tailer = impatient_tailer(dir.path(), TailerCheckpoint::default());
    // The sink asserts strictly rising positions per source.
    let mut sink = Collected::default();
    tailer.poll(&mut sink);
    let mut texts: Vec<_> = sink.lines.iter().map(|l| l.1.as_str()).collect();
    texts.sort();
    assert_eq!(texts, vec!["err half", "out half"]);
}

#[test]
fn a_redrawn_bar_over_the_cap_is_split_not_cut() {
    // tqdm through a pipe for a long epoch, read from a backlog: the runtime
    // writes the line in P pieces (16 KiB; here 300 bytes, cutting through
    // the bar's 3-byte blocks), and the line is longer than the cap.
    let dir = tempfile::tempdir().unwrap();
    let redraws: String = (0..=100)
        .map(|step| format!("\r{step:>3}%|{:<10}| {step}/100 [00:01<00:01, 9.50it/s]", "█".repeat(step / 10)))
        .collect();
    let pieces: Vec<&[u8]> = redraws.as_bytes().chunks(300).collect();
    let mut content = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let tag = if i + 1 == pieces.len() { "F" } else { "P" };
        content.extend_from_slice(format!("2026-11-25T10:00:{i:02}Z stdout {tag} ").as_bytes());
        content.extend_from_slice(piece);
        content.push(b'\n');
    }
    content.extend_from_slice(b"2026-11-25T10:01:00Z stdout F next line\n");
    // A cap crossed inside a P piece, and one crossed only at the final F
    // piece (every P piece fits, the F piece does not).
    let at_the_final_piece = 300 * (pieces.len() - 1);
    assert!(redraws.len() > at_the_final_piece);
    for cap in [1000, at_the_final_piece] {
        let sub = dir.path().join(cap.to_string());
        let (_, sink, _) = one_file_tailer(&sub, &content, cap);
        let (split, rest) = sink.lines.split_at(sink.lines.len() - 1);
        assert!(split.len() > 1, "{split:?}");
        assert!(
            split.iter().all(|l| l.1.len() <= cap && !l.2),
            "pieces within the cap, none cut: {split:?}"
        );
        assert!(split.iter().all(|l| l.1.starts_with('\r')), "each piece starts a redraw: {split:?}");
        let joined: String = split.iter().map(|l| l.1.as_str()).collect();
        assert_eq!(joined, redraws, "every redraw kept whole, in order, no character split");
        assert!(split.last().unwrap().1.ends_with("| 100/100 [00:01<00:01, 9.50it/s]"));
        assert_eq!(rest[0].1, "next line");
    }
}

#[test]
fn a_partial_line_over_the_cap_ships_its_head_once_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut content = String::new();
    for i in 0..10 {
        content.push_str(&format!(
            "2026-11-25T10:00:00Z stdout P {}\n",
            char::from(b'a' + i).to_string().repeat(500)
        ));
    }
    content.push_str("2026-11-25T10:00:00Z stdout F end\n2026-11-25T10:00:01Z stdout F next line\n");
    let (tailer, sink, _) = one_file_tailer(dir.path(), content.as_bytes(), 1200);
    let texts: Vec<_> = sink.lines.iter().map(|l| (l.1.len(), l.2)).collect();
    assert_eq!(texts, vec![(1200, true), (9, false)]);
    assert!(tailer.checkpoint().partials.is_empty());
}
