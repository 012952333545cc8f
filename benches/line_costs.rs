//! What each per-line check of the collector costs, by kind of line: the
//! event gate's pass, level detection, the event classifier and metric
//! extraction, each timed alone over the messages of a CRI pod log. The
//! collector's time is half in its trainer pods' lines, and the whole
//! pipeline (`weft bench-pipeline`) does not say which check a change
//! moved; this does. Under `valgrind --tool=callgrind` its counts per
//! function repeat exactly.
//!
//! `cargo bench --bench line_costs -- FILE [STAGE]` where FILE is a CRI log
//! (e.g. a trainer pod's `0.log` of the `benches/run` corpus) and STAGE one
//! of `gate`, `level`, `events`, `extract` (all where left out).

use std::time::{Duration, Instant};

use weft_collector::extract::MetricExtractor;
use weft_model::events::{EventClassifier, GatePass};
use weft_model::level::detect_level;

/// Lines timed per step: few enough to stay in the L1/L2 caches once read
/// (as the collector's lines are, fresh from its read buffer).
const CHUNK: usize = 500;
/// Passes over the file; the fastest is printed.
const PASSES: usize = 5;

/// One stage's check of a line: what it found, summed so it is kept.
type Check<'a> = dyn Fn(&[u8]) -> usize + 'a;

/// The kinds of lines a trainer pod and its neighbours print.
fn kind(message: &[u8]) -> &'static str {
    let holds = |piece: &[u8]| message.windows(piece.len()).any(|w| w == piece);
    if holds(b"{'") {
        "python dict"
    } else if holds(b"it/s]") || holds(b"s/it]") {
        "progress bar"
    } else if message.starts_with(b"{\"") {
        "json"
    } else {
        "other"
    }
}

/// The message of a CRI line (after `<time> <stream> <tag> `).
fn message(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    fields.next()?;
    fields.next()?;
    fields.next()?;
    fields.next()
}

/// The fastest of [`PASSES`] runs of `check` over `lines`, in ns per line,
/// and the sum of what it returned (events found, samples extracted, …).
fn per_line(lines: &[&[u8]], mut check: impl FnMut(&[u8]) -> usize) -> (f64, usize) {
    let mut best = Duration::MAX;
    let mut found = 0;
    for _ in 0..PASSES {
        let mut spent = Duration::ZERO;
        found = 0;
        for chunk in lines.chunks(CHUNK) {
            // Read the chunk once, untimed, as the tailer would have.
            let warm: usize = chunk.iter().map(|l| l.iter().map(|&b| usize::from(b)).sum::<usize>()).sum();
            std::hint::black_box(warm);
            let started = Instant::now();
            for line in chunk {
                found += check(std::hint::black_box(line));
            }
            spent += started.elapsed();
        }
        best = best.min(spent);
    }
    (best.as_nanos() as f64 / lines.len().max(1) as f64, found)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(path) = args.first() else {
        eprintln!("usage: cargo bench --bench line_costs -- FILE [gate|level|events|extract]");
        std::process::exit(2);
    };
    let only = args.get(1).map(String::as_str);
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let messages: Vec<&[u8]> = data.split(|&b| b == b'\n').filter_map(message).collect();
    let extractor = MetricExtractor::default();
    let classifier = EventClassifier::new(Vec::new());
    let found = std::cell::RefCell::new(Vec::new());
    // What each stage counts, so its work is not optimized away.
    let stages: [(&str, &Check); 4] = [
        ("gate", &|line| usize::from(GatePass::of(line).is_ascii())),
        ("level", &|line| detect_level(line) as usize),
        ("events", &|line| {
            let text = String::from_utf8_lossy(line);
            usize::from(classifier.classify_with_gate(&text, &GatePass::of(text.as_bytes())).is_some())
        }),
        ("extract", &|line| {
            let mut found = found.borrow_mut();
            found.clear();
            extractor.extract(&String::from_utf8_lossy(line), &mut found);
            found.len()
        }),
    ];
    println!("{path}: {} lines", messages.len());
    println!("| kind | lines | stage | ns per line | result sum |");
    println!("|---|---|---|---|---|");
    for name in ["python dict", "progress bar", "json", "other"] {
        let lines: Vec<&[u8]> = messages.iter().copied().filter(|m| kind(m) == name).collect();
        if lines.is_empty() {
            continue;
        }
        for (stage, check) in stages.iter().filter(|(stage, _)| only.is_none_or(|o| o == *stage)) {
            let (spent, found) = per_line(&lines, check);
            println!("| {name} | {} | {stage} | {spent:.1} | {found} |", lines.len());
        }
    }
}
