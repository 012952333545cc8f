//! The catalogue of ML failures weft recognises in log records, in one
//! place: CUDA out-of-memory, NCCL timeouts and errors, GPU Xid errors, NaN
//! or infinite losses, fp16 loss-scale overflows, torch.distributed.elastic
//! child failures and OOM kills. Each has a stable name (`ml_event`), and
//! users add their own patterns through the config.
//!
//! Every pattern is a literal marker checked with one pass of a multi-literal
//! search first, so the common case (a line that is none of these) is cheap.

use std::sync::OnceLock;

use regex::Regex;

/// One recognised failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlEvent {
    /// `cuda_oom`, `nccl_timeout`, …
    pub name: String,
    /// The Xid number of a `gpu_xid`.
    pub xid: Option<u32>,
    /// The line of the record that carries the event (for alert texts).
    pub line: String,
}

/// Names of the built-in events, in priority order.
pub const BUILTIN_EVENTS: [&str; 8] = [
    "cuda_oom",
    "nccl_timeout",
    "nccl_error",
    "gpu_xid",
    "nan_loss",
    "loss_scale_overflow",
    "elastic_child_failed",
    "oom_killed",
];

/// Literals of which every match of a case-sensitive built-in pattern
/// holds at least one (derived by hand from each alternative;
/// `every_sample_passes_the_gate` runs one sample of each through). Where
/// alternatives share a piece, the piece is the anchor (`nccl` for the five
/// `ncclXxx` codes, `tcode: ` for both exit-code alternatives): fewer
/// anchors, and anchors whose first three bytes are rare in logs (`f
/// memory`, not `of memory`; `L WARN`, not the `NCC` every `NCCL INFO`
/// line holds; `upNCCL`, `chdog caught`), cost the SIMD search, which keys
/// on those three bytes, fewer false candidates to check (28 full literals
/// had taken ≈ 60 ns per line of the bench corpus, shorter ones ≈ 43 in a
/// throwaway micro-benchmark; moving the anchors off common openings such
/// as `of `, `Pro`, `ela`, `NCC` saved another 0.4 % of the collector's
/// instructions). Shorter pieces let a few more lines through in general
/// (`libnccl.so`, `BLOOM`): they cost a pattern's time, never a wrong tag.
const CASE_SENSITIVE_ANCHORS: [(&str, u8); 21] = [
    // cuda_oom
    ("fMemory", CUDA_OOM),               // torch.OutOfMemoryError
    ("f memory", CUDA_OOM | OOM_KILLED), // CUDA out of memory, CUDA error: out of memory, Out of memory: Killed process
    ("_ALLOC_FAILED", CUDA_OOM),
    ("yAlloc", CUDA_OOM),           // cudaErrorMemoryAllocation
    ("OOM", CUDA_OOM | OOM_KILLED), // OOM when allocating, OOMKilled
    // nccl_timeout
    ("chdog caught", NCCL_TIMEOUT),
    ("upNCCL", NCCL_TIMEOUT),
    ("L communicator", NCCL_TIMEOUT),
    ("L operation", NCCL_TIMEOUT),
    ("nccl", NCCL_TIMEOUT | NCCL_ERROR), // ncclTimeout; ncclInternalError, ncclSystemError, ncclRemoteError, ncclUnhandledCudaError
    ("rtbeat monitor", NCCL_TIMEOUT),
    // nccl_error
    ("L error in:", NCCL_ERROR),
    ("unhandled system error", NCCL_ERROR),
    ("remote process exited", NCCL_ERROR),
    ("L WARN", NCCL_ERROR),
    // gpu_xid
    ("Xid", GPU_XID),
    // elastic_child_failed
    ("ChildFailedError", ELASTIC_CHILD_FAILED),
    ("c.multiprocessing", ELASTIC_CHILD_FAILED), // torch.distributed.elastic.multiprocessing.errors
    ("tcode: ", ELASTIC_CHILD_FAILED | OOM_KILLED), // failed (exitcode: N); exitcode: -9
    // oom_killed
    ("SIGKILL", OOM_KILLED),
    ("exit code 137", OOM_KILLED),
];

/// The built-in events' patterns, one per entry of [`BUILTIN_EVENTS`] and in
/// its order (the first that matches is the event).
const BUILTIN_PATTERNS: [&str; 8] = [
    // cuda_oom
    r"(torch\.(cuda\.)?OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|OOM when allocating tensor)",
    // nccl_timeout
    r"(Watchdog caught collective operation timeout|ProcessGroupNCCL.*[Tt]imeout|NCCL (communicator|operation).*timed? ?out|ncclTimeout|Heartbeat monitor timed out)",
    // nccl_error
    r"(ncclInternalError|ncclSystemError|ncclRemoteError|ncclUnhandledCudaError|NCCL error in:|unhandled system error|remote process exited or there was a network error|NCCL WARN .*(Connection|Net)\w* (closed|reset|refused))",
    // gpu_xid
    r"(NVRM: Xid|Xid \(PCI:|NVML: Xid)",
    // nan_loss
    r#"(?i)((\b|_)loss['"]?\s*[:=]\s*['"]?[-+]?(nan|inf)\b|loss is (nan|inf)|non-finite loss|nan loss detected)"#,
    // loss_scale_overflow
    r"(?i)(gradient overflow\. skipping step|OVERFLOW! Rank|Grad overflow on iteration|skipping step, loss scaler|attempted loss scale)",
    // elastic_child_failed
    r"(ChildFailedError|torch\.distributed\.elastic\.multiprocessing\.errors|failed \(exitcode: -?\d+\) local_rank)",
    // oom_killed
    r"(OOMKilled|Out of memory: Killed process|exitcode: -9\b|Signal 9 \(SIGKILL\) received|exit code 137)",
];

// One bit per built-in event, in `BUILTIN_EVENTS`' order: the events an
// anchor or a gate word makes possible.
const CUDA_OOM: u8 = 1 << 0;
const NCCL_TIMEOUT: u8 = 1 << 1;
const NCCL_ERROR: u8 = 1 << 2;
const GPU_XID: u8 = 1 << 3;
const NAN_LOSS: u8 = 1 << 4;
const LOSS_SCALE_OVERFLOW: u8 = 1 << 5;
const ELASTIC_CHILD_FAILED: u8 = 1 << 6;
const OOM_KILLED: u8 = 1 << 7;

// Every anchor occurrence is found by stepping one byte past each match's
// start (see `Catalogue::candidates`) only if no anchor starts another.
const _: () = {
    let mut i = 0;
    while i < CASE_SENSITIVE_ANCHORS.len() {
        let mut j = 0;
        while j < CASE_SENSITIVE_ANCHORS.len() {
            let (a, b) = (CASE_SENSITIVE_ANCHORS[i].0.as_bytes(), CASE_SENSITIVE_ANCHORS[j].0.as_bytes());
            if i != j && a.len() <= b.len() {
                let mut k = 0;
                while k < a.len() && a[k] == b[k] {
                    k += 1;
                }
                assert!(k < a.len(), "an anchor is a prefix of another");
            }
            j += 1;
        }
        i += 1;
    }
};

/// Searches for the case-sensitive anchors: SIMD (Teddy) where the CPU has
/// it, an Aho-Corasick automaton elsewhere.
enum AnchorSearch {
    Packed(aho_corasick::packed::Searcher),
    Automaton(aho_corasick::AhoCorasick),
}

impl AnchorSearch {
    fn new() -> Self {
        let anchors = CASE_SENSITIVE_ANCHORS.map(|(anchor, _)| anchor);
        match aho_corasick::packed::Searcher::new(anchors) {
            Some(searcher) => AnchorSearch::Packed(searcher),
            None => AnchorSearch::Automaton(aho_corasick::AhoCorasick::new(anchors).expect("literal anchors build")),
        }
    }

    /// The events of every anchor `text` holds (0 for most lines: one
    /// search). Teddy finds the leftmost match; searching again from one
    /// byte past its start finds every other occurrence, as no anchor
    /// starts another.
    fn events(&self, text: &[u8]) -> u8 {
        let mut events = 0;
        match self {
            AnchorSearch::Packed(searcher) => {
                let mut from = 0;
                while let Some(found) = searcher.find_in(text, aho_corasick::Span::from(from..text.len())) {
                    events |= CASE_SENSITIVE_ANCHORS[found.pattern().as_usize()].1;
                    from = found.start() + 1;
                }
            }
            AnchorSearch::Automaton(automaton) => {
                for found in automaton.find_overlapping_iter(text) {
                    events |= CASE_SENSITIVE_ANCHORS[found.pattern().as_usize()].1;
                }
            }
        }
        events
    }
}

struct Catalogue {
    /// Lines holding none of an event's anchors cannot show it: literal
    /// searches instead of a `RegexSet`'s own prefilter (which with the
    /// case-insensitive `loss` had been the collector's largest cost), and
    /// only the patterns whose anchors a line holds are run on it (the set
    /// of all eight had cost ≈ 3,000 instructions a line that passed).
    anchors: AnchorSearch,
    /// The words the case-insensitive patterns need besides `overflow` and
    /// `loss`, searched for in the folded text.
    nan: memchr::memmem::Finder<'static>,
    inf: memchr::memmem::Finder<'static>,
    /// [`BUILTIN_PATTERNS`], compiled.
    singles: Vec<Regex>,
    xid: Regex,
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| Catalogue {
        anchors: AnchorSearch::new(),
        nan: memchr::memmem::Finder::new(b"nan"),
        inf: memchr::memmem::Finder::new(b"inf"),
        singles: BUILTIN_PATTERNS
            .iter()
            .map(|p| Regex::new(p).expect("built-in pattern compiles"))
            .collect(),
        xid: Regex::new(r"Xid \([^)]*\):? ?(\d+)|Xid:? (\d+)").expect("xid pattern compiles"),
    })
}

/// The case-insensitive words of the gate: `overflow` (bit 0), `loss`
/// (bit 1).
struct GateWords;

/// The event gate's one SIMD pass over a record: which of its
/// case-insensitive words the record holds (without a folded copy; a copy
/// and two searches of it had been ≈ 3 % of the collector's `perf`
/// samples), and whether it is all ASCII.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatePass(crate::fold::FoldedWords);

impl GatePass {
    /// The pass over `text` (the bytes of a record, before or after its
    /// UTF-8 is checked).
    pub fn of(text: &[u8]) -> Self {
        GatePass(crate::fold::folded_words::<GateWords>(text))
    }

    /// Whether every byte of the record is ASCII (and so the record is
    /// UTF-8).
    pub fn is_ascii(&self) -> bool {
        !self.0.non_ascii
    }
}

impl crate::fold::FoldedWordSet for GateWords {
    const WORDS: &'static [&'static [u8]] = &[b"overflow", b"loss"];
}

/// What a line holding `loss` must also hold for `nan_loss` or
/// `loss_scale_overflow` to match: `scale` (bit 0), `non-finite` (bit 1),
/// `nan` (bit 2), `inf` (bit 3).
struct LossWords;

impl crate::fold::FoldedWordSet for LossWords {
    const WORDS: &'static [&'static [u8]] = &[b"scale", b"non-finite", b"nan", b"inf"];
}

impl Catalogue {
    /// The built-in events `text` may show (one bit each, as
    /// [`CUDA_OOM`]…): those of the anchors it holds, and the two
    /// case-insensitive ones where `gate` (its [`GatePass`]) allows.
    fn candidates(&self, text: &[u8], gate: &GatePass) -> u8 {
        let mut events = self.anchors.events(text);
        let found = gate.0;
        // Unicode case folding also matches `ſ` (long s) for `s` and `K`
        // (Kelvin sign) for `k`: a line holding either goes to all the
        // patterns. Where the line is not all ASCII the rarer bytes are
        // looked for: `ſ` is C5 BF, `K` E2 84 AA, and a progress bar's
        // blocks (`█`, E2 96 88) hold many E2 bytes and no 84.
        let folds_onto_a_letter = || {
            memchr::memchr2_iter(0xC5, 0x84, text).any(|at| {
                if text[at] == 0xC5 {
                    text.get(at + 1) == Some(&0xBF)
                } else {
                    at > 0 && text[at - 1] == 0xE2 && text.get(at + 1) == Some(&0xAA)
                }
            })
        };
        if found.non_ascii && folds_onto_a_letter() {
            return u8::MAX;
        }
        // Every `loss_scale_overflow` match holds `overflow`, or `loss` and
        // `scale`; every `nan_loss` match holds `loss` and one of `nan`,
        // `inf`, `non-finite`: in some case (see `loss_may_match`).
        if found.words & 0b01 != 0 {
            events |= LOSS_SCALE_OVERFLOW;
        }
        if found.words & 0b10 != 0 && self.loss_may_match(text) {
            events |= NAN_LOSS | LOSS_SCALE_OVERFLOW;
        }
        events
    }

    /// [`Self::candidates`] for a line holding `loss`: whether `nan_loss`
    /// (or, by `scale`, `loss_scale_overflow`) may match it. One holding
    /// `scale` or `non-finite` may; one holding `nan`
    /// or `inf` is checked further in its folded copy (made only then: a
    /// trainer's dict lines all hold `loss`, and copying each had cost as
    /// much as the whole gate).
    fn loss_may_match(&self, text: &[u8]) -> bool {
        match crate::fold::folded_words::<LossWords>(text).words {
            0 => false,
            words if words & 0b11 != 0 => true,
            _ => crate::fold::with_folded(text, |folded| {
                self.value_word(&self.nan, folded, text) || self.value_word(&self.inf, folded, text)
            }),
        }
    }

    /// Whether `nan` or `inf` occurs where `nan_loss` could match it:
    /// before a word boundary (`loss=inf`, not the `INFO` of a logging
    /// prefix) or after `loss is ` (that alternative has no boundary).
    fn value_word(&self, finder: &memchr::memmem::Finder<'_>, folded: &[u8], text: &[u8]) -> bool {
        // Every start, overlapping ones included: in `nanan loss detected`
        // the `nan` that counts starts inside the first one.
        let mut from = 0;
        while let Some(found) = finder.find(&folded[from..]) {
            let at = from + found;
            // A non-ASCII byte may start a word character or not: let it by.
            let boundary = text.get(at + 3).is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
            if boundary || folded[..at].ends_with(b"loss is ") {
                return true;
            }
            from = at + 1;
        }
        false
    }
}

/// A user pattern from the config.
#[derive(Clone, Debug)]
pub struct UserEvent {
    pub name: String,
    pub regex: Regex,
}

/// Recognises ML failures in log records.
#[derive(Clone, Debug, Default)]
pub struct EventClassifier {
    user: Vec<UserEvent>,
}

fn matching_line(text: &str, found: impl Fn(&str) -> bool) -> &str {
    text.lines().find(|l| found(l)).unwrap_or_else(|| text.lines().next().unwrap_or(""))
}

impl EventClassifier {
    /// A classifier with the built-in catalogue and `user` patterns (which
    /// are tried first, so users can refine the catalogue).
    pub fn new(user: Vec<UserEvent>) -> Self {
        Self { user }
    }

    /// The event a record (possibly several joined lines) shows, if any.
    pub fn classify(&self, text: &str) -> Option<MlEvent> {
        self.classify_with_gate(text, &GatePass::of(text.as_bytes()))
    }

    /// [`Self::classify`] with the record's [`GatePass`] made already
    /// (the collector makes it before checking the record's UTF-8, which
    /// the pass makes needless for an ASCII record). `gate` must be
    /// `GatePass::of(text.as_bytes())`.
    pub fn classify_with_gate(&self, text: &str, gate: &GatePass) -> Option<MlEvent> {
        debug_assert_eq!(*gate, GatePass::of(text.as_bytes()), "the gate pass of this text");
        for event in &self.user {
            if event.regex.is_match(text) {
                let line = matching_line(text, |l| event.regex.is_match(l)).to_string();
                return Some(MlEvent {
                    name: event.name.clone(),
                    xid: None,
                    line,
                });
            }
        }
        let catalogue = catalogue();
        let candidates = catalogue.candidates(text.as_bytes(), gate);
        // The first candidate that matches: the first of all the patterns
        // that match, since a pattern that is no candidate cannot.
        let first = (0..BUILTIN_PATTERNS.len()).find(|&i| candidates & 1 << i != 0 && catalogue.singles[i].is_match(text))?;
        let name = BUILTIN_EVENTS[first];
        let single = &catalogue.singles[first];
        let line = matching_line(text, |l| single.is_match(l)).to_string();
        let xid = if name == "gpu_xid" {
            catalogue
                .xid
                .captures(&line)
                .and_then(|c| c.get(1).or_else(|| c.get(2)))
                .and_then(|m| m.as_str().parse().ok())
        } else {
            None
        };
        Some(MlEvent {
            name: name.to_string(),
            xid,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Option<String> {
        EventClassifier::default().classify(text).map(|e| e.name)
    }

    #[test]
    fn real_format_lines() {
        let cases = [
            ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB", "cuda_oom"),
            ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity)", "cuda_oom"),
            ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", "cuda_oom"),
            ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "cuda_oom"),
            ("[rank1]:[E1125 10:22:37.512389 1 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1523, OpType=ALLREDUCE, NumelIn=262144, NumelOut=262144, Timeout(ms)=600000) ran for 600041 milliseconds before timing out.", "nccl_timeout"),
            ("torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:219, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.19.3", "nccl_error"),
            ("ncclInternalError: Internal check failed.", "nccl_error"),
            ("NCCL WARN Net : Connection closed by remote peer 10.0.0.5<52414>", "nccl_error"),
            ("[12345.678] NVRM: Xid (PCI:0000:3b:00): 79, pid=2341, GPU has fallen off the bus.", "gpu_xid"),
            ("{'loss': nan, 'grad_norm': nan, 'learning_rate': 2e-05, 'epoch': 1.2}", "nan_loss"),
            ("step=1200 loss=inf lr=3e-4", "nan_loss"),
            ("Epoch 3:  45%|████▌     | 450/1000 [01:23<01:40,  5.40it/s, loss=nan]", "nan_loss"),
            ("Epoch 0:  12%|█▏        | 120/1000 [00:30<03:40, 4.00it/s, v_num=3, train_loss=nan]", "nan_loss"),
            ("epoch 2 val_loss: inf", "nan_loss"),
            ("[E1125 10:22:37.1 ProcessGroupNCCL.cpp:1362] [PG 0 Rank 3] Heartbeat monitor timed out! Process will be terminated after dumping debug info.", "nccl_timeout"),
            ("[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768", "loss_scale_overflow"),
            ("Gradient overflow. Skipping step, loss scaler 0 reducing loss scale to 16384.0", "loss_scale_overflow"),
            ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train.py FAILED", "elastic_child_failed"),
            ("E1125 10:12:15.118000 139 torch/distributed/elastic/multiprocessing/api.py:833] failed (exitcode: 1) local_rank: 0 (pid: 48213) of binary: /usr/bin/python3", "elastic_child_failed"),
            ("Out of memory: Killed process 4123 (python3) total-vm:82345678kB", "oom_killed"),
        ];
        for (line, want) in cases {
            assert_eq!(event(line).as_deref(), Some(want), "{line}");
        }
    }

    /// One sample per alternative of every built-in pattern: each must be
    /// the event and pass the anchor gate; everyday lines must not pass it.
    #[test]
    fn every_sample_passes_the_gate() {
        let samples = [
            ("torch.OutOfMemoryError: x", "cuda_oom"),
            ("torch.cuda.OutOfMemoryError: x", "cuda_oom"),
            ("RuntimeError: CUDA out of memory.", "cuda_oom"),
            ("CUDA error: out of memory", "cuda_oom"),
            ("CUBLAS_STATUS_ALLOC_FAILED", "cuda_oom"),
            ("CUDNN_STATUS_ALLOC_FAILED", "cuda_oom"),
            ("cudaErrorMemoryAllocation", "cuda_oom"),
            ("OOM when allocating tensor with shape[8]", "cuda_oom"),
            ("Watchdog caught collective operation timeout: WorkNCCL", "nccl_timeout"),
            ("ProcessGroupNCCL.cpp:1 Timeout(ms)=600000", "nccl_timeout"),
            ("ProcessGroupNCCL: timeout", "nccl_timeout"),
            ("NCCL communicator was aborted: timed out", "nccl_timeout"),
            ("NCCL operation timedout", "nccl_timeout"),
            ("NCCL operation time out", "nccl_timeout"),
            ("ncclTimeout", "nccl_timeout"),
            ("Heartbeat monitor timed out!", "nccl_timeout"),
            ("ncclInternalError", "nccl_error"),
            ("ncclSystemError", "nccl_error"),
            ("ncclRemoteError", "nccl_error"),
            ("ncclUnhandledCudaError", "nccl_error"),
            ("NCCL error in: x.cpp", "nccl_error"),
            ("unhandled system error", "nccl_error"),
            ("remote process exited or there was a network error", "nccl_error"),
            ("NCCL WARN Net : Connection closed by peer", "nccl_error"),
            ("NCCL WARN NET/IB : Netx reset", "nccl_error"),
            ("NVRM: Xid (PCI:0000:3b:00): 79", "gpu_xid"),
            ("Xid (PCI:0000:3b:00): 48", "gpu_xid"),
            ("NVML: Xid 79", "gpu_xid"),
            ("loss: nan", "nan_loss"),
            ("{'LOSS': 'NaN'}", "nan_loss"),
            ("train_loss=-inf", "nan_loss"),
            ("Loss Is NaN", "nan_loss"),
            ("NON-FINITE LOSS", "nan_loss"),
            ("NaN Loss Detected", "nan_loss"),
            ("NaNaN loss detected", "nan_loss"),
            ("GRADIENT OVERFLOW. SKIPPING STEP", "loss_scale_overflow"),
            ("overflow! rank 0", "loss_scale_overflow"),
            ("Grad Overflow On Iteration 5", "loss_scale_overflow"),
            ("Skipping Step, Loss Scaler 0", "loss_scale_overflow"),
            ("attempted LOSS scale: 1", "loss_scale_overflow"),
            ("ChildFailedError", "elastic_child_failed"),
            ("torch.distributed.elastic.multiprocessing.errors", "elastic_child_failed"),
            ("failed (exitcode: -6) local_rank: 0", "elastic_child_failed"),
            ("OOMKilled", "oom_killed"),
            ("Out of memory: Killed process 1", "oom_killed"),
            ("worker exitcode: -9 ", "oom_killed"),
            ("Signal 9 (SIGKILL) received by PID 1", "oom_killed"),
            ("exit code 137", "oom_killed"),
            // Unicode simple case folding of the (?i) patterns.
            ("loſs: nan", "nan_loss"),
            ("attempted loſs ſcale: 1", "loss_scale_overflow"),
            ("s\u{212A}ipping step, loss scaler", "loss_scale_overflow"),
        ];
        for (line, want) in samples {
            assert_eq!(event(line).as_deref(), Some(want), "{line}");
            let bit = 1 << BUILTIN_EVENTS.iter().position(|e| *e == want).unwrap();
            assert!(candidates(line) & bit != 0, "the gate refuses {line:?}");
        }
        for line in [
            "261125 084934 72 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_26 terminating",
            "2026-11-25 08:00:00,009 - datasets.builder - WARN - Saving model checkpoint to /ckpt/checkpoint-0",
            "bert-sft-worker-2:499:414 [2] NCCL INFO Channel 02/0 : 5[2] -> 5[4] via P2P/IPC/read",
            "{'loss': 2.4921, 'grad_norm': 0.8277, 'learning_rate': 3.0000e-04, 'epoch': 0.00}",
            "Epoch 3:  45%|████▌     | 450/1000 [01:23<01:40,  5.40it/s]",
            "\u{2139} note: Ąż \u{2129}",
        ] {
            assert_eq!(candidates(line), 0, "the gate lets {line:?} through");
        }
    }

    /// The candidate events of `line`, through its own gate pass.
    fn candidates(line: &str) -> u8 {
        catalogue().candidates(line.as_bytes(), &GatePass::of(line.as_bytes()))
    }

    /// The events whose patterns match `line`, by a `RegexSet` of all of
    /// them (what the classifier ran on every line that passed the gate).
    fn matching(line: &str) -> u8 {
        static SET: OnceLock<regex::RegexSet> = OnceLock::new();
        let set = SET.get_or_init(|| regex::RegexSet::new(BUILTIN_PATTERNS).unwrap());
        set.matches(line).iter().fold(0, |bits, i| bits | 1 << i)
    }

    /// Pieces of the patterns' alternatives and of the lines around them,
    /// for lines the gate must let through whenever a pattern matches.
    const PIECES: [&str; 56] = [
        "loss",
        "Loss",
        "loss is ",
        "loss: ",
        "loss=",
        "'loss': '",
        "_loss",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "INFO",
        "info",
        "Infinity",
        "nanoseconds",
        "na",
        " loss detected",
        "non-finite",
        "scale",
        "scaler",
        "overflow",
        "OVERFLOW! Rank",
        "gradient overflow. skipping step",
        "attempted loss scale",
        " ",
        "_",
        "=",
        ": ",
        "'",
        "é",
        "\u{1}",
        "@",
        "ſ",
        "K",
        "CUDA out of memory",
        "Xid (PCI:0)",
        "NVRM: Xid",
        "SIGKILL",
        "Signal 9 (SIGKILL) received",
        "exit code 137",
        "lossigkill",
        "OOMKilled",
        "OOM when allocating tensor",
        "ProcessGroupNCCL",
        "NCCL WARN ",
        "Connection closed",
        " timeout",
        "Timeout",
        "ncclTimeout",
        "ncclInternalError",
        "NCCL operation timed out",
        "Watchdog caught collective operation timeout",
        "exitcode: -9 ",
        "failed (exitcode: 1) local_rank",
        "ChildFailedError",
        "torch.cuda.OutOfMemoryError",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_gate_lets_through_every_line_a_pattern_matches(
            pieces in proptest::collection::vec((0..PIECES.len(), proptest::bool::ANY, proptest::collection::vec(proptest::bool::ANY, 40)), 1..6)
        ) {
            // Each piece as written (the case-sensitive patterns) or in
            // mixed case.
            let line: String = pieces
                .iter()
                .flat_map(|(piece, as_written, upper)| {
                    PIECES[*piece].chars().zip(upper.iter().cycle()).map(move |(c, up)| match (as_written, up) {
                        (true, _) => c,
                        (false, true) => c.to_ascii_uppercase(),
                        (false, false) => c.to_ascii_lowercase(),
                    })
                })
                .collect();
            let (matched, allowed) = (matching(&line), candidates(&line));
            proptest::prop_assert!(matched & !allowed == 0, "the gate refuses {:?}: {:08b} of {:08b}", line, matched, allowed);
            // The first pattern that matches is the event.
            let first = (matched != 0).then(|| BUILTIN_EVENTS[matched.trailing_zeros() as usize].to_string());
            proptest::prop_assert_eq!(event(&line), first);
        }
    }

    #[test]
    fn the_gate_reads_nan_and_inf_as_values_only() {
        for line in [
            "2026-11-25 08:00:00,009 - trainer - INFO - step=100 loss=2.3100 lr=3e-4",
            "[INFO] epoch 1 | loss: 0.52 | nanoseconds per token: 12 | infeed ok",
            "LOSS=0.1 SCALING=1 INFORMATION",
        ] {
            assert_eq!(candidates(line), 0, "the gate lets {line:?} through");
            assert_eq!(event(line), None, "{line}");
        }
        for (line, want) in [
            ("INFO loss=NaN", Some("nan_loss")),
            ("loss is info", Some("nan_loss")),
            ("INFO loss: -inf,", Some("nan_loss")),
        ] {
            assert!(candidates(line) & NAN_LOSS != 0, "the gate refuses {line:?}");
            assert_eq!(event(line).as_deref(), want, "{line}");
        }
    }

    #[test]
    fn healthy_lines_are_not_events() {
        for line in [
            "{'loss': 0.3012, 'grad_norm': 1.2, 'learning_rate': 2e-05}",
            "NCCL INFO Bootstrap : Using eth0:10.42.1.17<0>",
            "checking CUDA memory usage: 71 GiB",
            "loss_scale: 65536.0",
            "",
        ] {
            assert_eq!(event(line), None, "{line}");
        }
    }

    #[test]
    fn xid_numbers_and_the_carrying_line() {
        let e = EventClassifier::default()
            .classify("kernel: [1.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=2341, GPU has fallen off the bus.")
            .unwrap();
        assert_eq!(e.xid, Some(79));
        let e = EventClassifier::default()
            .classify("NVRM: Xid (GPU 3 GPU-x): 48, Double Bit ECC Error")
            .unwrap();
        assert_eq!(e.xid, Some(48));
        let e = EventClassifier::default()
            .classify("E1125 10:05:00.000000 1 main.go:250] NVML: Xid 79 reported on GPU 00000000:3B:00.0 (GPU has fallen off the bus)")
            .unwrap();
        assert_eq!(e.xid, Some(79));
        let traceback = "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    step()\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.";
        let e = EventClassifier::default().classify(traceback).unwrap();
        assert_eq!(e.line, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.");
    }

    #[test]
    fn user_patterns_come_first() {
        let user = vec![UserEvent {
            name: "dataloader_hang".into(),
            regex: Regex::new("DataLoader worker .* exited unexpectedly").unwrap(),
        }];
        let classifier = EventClassifier::new(user);
        assert_eq!(
            classifier
                .classify("RuntimeError: DataLoader worker (pid 123) exited unexpectedly")
                .unwrap()
                .name,
            "dataloader_hang"
        );
        assert_eq!(classifier.classify("CUDA out of memory").unwrap().name, "cuda_oom");
    }
}
