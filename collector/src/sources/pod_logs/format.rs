//! The two kubelet log file formats, detected per file:
//! CRI (`<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <message>`) and docker
//! json-file (`{"log":"…\n","stream":"stdout","time":"…"}`).

use weft_model::time::Rfc3339Reader;

/// A log file's format, decided from its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Cri,
    Docker,
}

/// Which output stream a segment was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn parse(text: &str) -> Option<Stream> {
        match text {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One physical line of a log file, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub ts: i64,
    pub stream: Stream,
    /// False for a `P` segment (or a docker `log` without a trailing newline):
    /// the message continues in the next segment of the same stream.
    pub complete: bool,
    pub message: std::borrow::Cow<'a, [u8]>,
}

/// Why a physical line is not a valid segment.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedLine(pub &'static str);

impl LogFormat {
    /// Guesses the format from a file's first line.
    pub fn detect(first_line: &[u8]) -> LogFormat {
        if first_line.first() == Some(&b'{') {
            LogFormat::Docker
        } else {
            LogFormat::Cri
        }
    }

    /// Parses one physical line (without its `\n`); `timestamps` holds
    /// what the file's last timestamp left for the next one.
    pub fn parse<'a>(self, line: &'a [u8], timestamps: &mut Rfc3339Reader) -> Result<Segment<'a>, MalformedLine> {
        match self {
            LogFormat::Cri => read_cri(line, timestamps),
            LogFormat::Docker => read_docker(line, timestamps),
        }
    }
}

/// Parses a CRI line. Only the first `:`-separated tag is interpreted; a
/// `\r` before the line's end (a CRLF line's) is not part of the message.
pub fn parse_cri(line: &[u8]) -> Result<Segment<'_>, MalformedLine> {
    read_cri(line.strip_suffix(b"\r").unwrap_or(line), &mut Rfc3339Reader::default())
}

/// [`parse_cri`] of one line of a file, with the reader of its timestamps;
/// the line as the tailer passes it (a CRLF's `\r` already gone: a second
/// one is the message's).
pub fn read_cri<'a>(line: &'a [u8], timestamps: &mut Rfc3339Reader) -> Result<Segment<'a>, MalformedLine> {
    // The usual timestamp (nine digits of fraction, UTC: 30 bytes) is
    // tried before the space after it is searched for: text that parses
    // as a timestamp with a `T` holds no space, so where it parses, the search would
    // have ended at byte 30 too (the search was 3 % of tail + parse + batch).
    let usual = match (line.get(10), line.get(30)) {
        // A space between date and time parses too: searched for.
        (Some(b'T' | b't'), Some(b' ')) => timestamps.parse(&line[..30]).map(|ts| (ts, 30)),
        _ => None,
    };
    let (ts, ts_end) = match usual {
        Some(found) => found,
        None => {
            let ts_end = memchr::memchr(b' ', line).ok_or(MalformedLine("cri: missing space after timestamp"))?;
            let ts = timestamps
                .parse(&line[..ts_end])
                .ok_or(MalformedLine("cri: invalid RFC 3339 timestamp"))?;
            (ts, ts_end)
        }
    };
    let (stream, complete, message) = cri_fields(&line[ts_end + 1..])?;
    Ok(Segment {
        ts,
        stream,
        complete,
        message: std::borrow::Cow::Borrowed(message),
    })
}

/// The stream, whether the line is complete, and the message: what follows
/// a CRI line's timestamp.
fn cri_fields(rest: &[u8]) -> Result<(Stream, bool, &[u8]), MalformedLine> {
    // What the runtime writes for every line with a message: `stdout F `
    // (or `stderr`, `P`), read without searching for the spaces.
    if let Some((&[s0, s1, s2, s3, s4, s5, b' ', tag @ (b'F' | b'P'), b' '], message)) = rest.split_first_chunk::<9>() {
        match [s0, s1, s2, s3, s4, s5] {
            [b's', b't', b'd', b'o', b'u', b't'] => return Ok((Stream::Stdout, tag == b'F', message)),
            [b's', b't', b'd', b'e', b'r', b'r'] => return Ok((Stream::Stderr, tag == b'F', message)),
            _ => {}
        }
    }
    cri_fields_searched(rest)
}

/// [`cri_fields`] of any line: the fields found by their spaces.
fn cri_fields_searched(rest: &[u8]) -> Result<(Stream, bool, &[u8]), MalformedLine> {
    let stream_end = memchr::memchr(b' ', rest).ok_or(MalformedLine("cri: missing tag field"))?;
    let stream = match &rest[..stream_end] {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(MalformedLine("cri: stream is neither stdout nor stderr")),
    };
    let rest = &rest[stream_end + 1..];
    let (tags, message) = match memchr::memchr(b' ', rest) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        // An empty message: the runtime writes "<ts> stdout F" with no space.
        None => (rest, &rest[rest.len()..]),
    };
    let first_tag = tags.split(|b| *b == b':').next().unwrap_or_default();
    let complete = match first_tag {
        b"F" => true,
        b"P" => false,
        _ => return Err(MalformedLine("cri: tag is neither P nor F")),
    };
    Ok((stream, complete, message))
}

#[derive(serde::Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    stream: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
}

/// Parses a docker json-file line. A `log` without a trailing newline is a
/// partial chunk.
pub fn parse_docker(line: &[u8]) -> Result<Segment<'_>, MalformedLine> {
    read_docker(line, &mut Rfc3339Reader::default())
}

/// [`parse_docker`] of one line of a file, with the reader of its
/// timestamps (as for CRI lines: a time in the same second as the last one
/// reads only its fraction).
pub fn read_docker<'a>(line: &'a [u8], timestamps: &mut Rfc3339Reader) -> Result<Segment<'a>, MalformedLine> {
    let parsed: DockerLine<'_> = serde_json::from_slice(line).map_err(|_| MalformedLine("docker: not a json-file log object"))?;
    let stream = Stream::parse(&parsed.stream).ok_or(MalformedLine("docker: stream is neither stdout nor stderr"))?;
    let ts = timestamps
        .parse(parsed.time.as_bytes())
        .ok_or(MalformedLine("docker: invalid RFC 3339 time"))?;
    let (complete, message) = match parsed.log {
        std::borrow::Cow::Borrowed(text) => match text.strip_suffix('\n') {
            Some(body) => (true, std::borrow::Cow::Borrowed(body.as_bytes())),
            None => (false, std::borrow::Cow::Borrowed(text.as_bytes())),
        },
        std::borrow::Cow::Owned(mut text) => {
            let complete = text.ends_with('\n');
            if complete {
                text.pop();
            }
            (complete, std::borrow::Cow::Owned(text.into_bytes()))
        }
    };
    Ok(Segment {
        ts,
        stream,
        complete,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_lines() {
        let seg = parse_cri(b"2016-10-06T00:17:09.669794202Z stdout P log content 1").unwrap();
        assert_eq!(seg.ts, 1_475_713_029_669_794_202);
        assert_eq!(seg.stream, Stream::Stdout);
        assert!(!seg.complete);
        assert_eq!(&*seg.message, b"log content 1");
        let seg = parse_cri(b"2016-10-06T00:17:09.669794203Z stderr F:x:y  two  spaces ").unwrap();
        assert!(seg.complete);
        assert_eq!(seg.stream, Stream::Stderr);
        assert_eq!(&*seg.message, b" two  spaces ");
        let empty = parse_cri(b"2016-10-06T00:17:09Z stdout F").unwrap();
        assert_eq!(&*empty.message, b"");
    }

    proptest::proptest! {
        /// The fields read without a search are the fields found by their
        /// spaces, for the usual line and every near miss of it.
        #[test]
        fn read_fields_are_the_searched_fields(
            stream in proptest::sample::select(vec!["stdout", "stderr", "stdin", "stdou", "stdoutx", "", "Stdout"]),
            gap in proptest::sample::select(vec![" ", "", "  "]),
            tag in proptest::sample::select(vec!["F", "P", "X", "F:x", "", "FP", "f"]),
            after in proptest::sample::select(vec![" ", "", "  ", "x"]),
            message in "[ a-z\\PC]{0,12}",
        ) {
            let rest = format!("{stream}{gap}{tag}{after}{message}");
            let read = cri_fields(rest.as_bytes());
            let searched = cri_fields_searched(rest.as_bytes());
            proptest::prop_assert_eq!(read.map_err(|e| e.0), searched.map_err(|e| e.0), "{:?}", rest);
        }

        /// A line read through the 30-byte timestamp tried first reads as
        /// the line whose timestamp's end is searched for: timestamps of
        /// every length around 30, with a space, a `t` or a bad byte
        /// where the `T` goes, and fields right after them or not.
        #[test]
        fn the_usual_timestamp_read_first_reads_as_the_searched_one(
            sep in proptest::sample::select(vec!["T", "t", " ", "x"]),
            fraction in proptest::sample::select(vec!["", ".5", ".1234", ".123456789", ".12345678", ".1234567890", ".1 2345678"]),
            zone in proptest::sample::select(vec!["Z", "z", "+02:00", "-00:30", "+05:00", "", "Z ", "ZZ"]),
            rest in proptest::sample::select(vec![" stdout F x", " stderr P  y", "stdout F x", " stdout F", " x", ""]),
            hour in proptest::sample::select(vec!["10", "23", "24"]),
            second in 0u8..62,
            before in 0u8..62,
        ) {
            let line = format!("2026-11-25{sep}{hour}:00:{second:02}{fraction}{zone}{rest}");
            let searched = |line: &[u8]| -> Result<(i64, Stream, bool, Vec<u8>), &'static str> {
                let ts_end = memchr::memchr(b' ', line).ok_or("cri: missing space after timestamp")?;
                let ts = weft_model::time::parse_rfc3339_nanos(&line[..ts_end]).ok_or("cri: invalid RFC 3339 timestamp")?;
                let (stream, complete, message) = cri_fields_searched(&line[ts_end + 1..]).map_err(|e| e.0)?;
                Ok((ts, stream, complete, message.to_vec()))
            };
            // A reader that read another second before: its cache is hit or
            // replaced.
            let mut reader = Rfc3339Reader::default();
            let earlier = format!("2026-11-25T10:00:{before:02}.000000001Z stdout F x");
            let _ = read_cri(earlier.as_bytes(), &mut reader);
            for _ in 0..2 {
                let read = read_cri(line.as_bytes(), &mut reader).map(|s| (s.ts, s.stream, s.complete, s.message.to_vec()));
                proptest::prop_assert_eq!(read.map_err(|e| e.0), searched(line.as_bytes()), "{:?}", line);
            }
        }
    }

    #[test]
    fn rejects_malformed_cri() {
        for bad in [
            &b"hello world"[..],
            b"2016-10-06T00:17:09Z stdin F x",
            b"2016-10-06T00:17:09Z stdout X x",
            b"2016-10-06 stdout F x",
            b"",
        ] {
            assert!(parse_cri(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_docker_lines() {
        let seg = parse_docker(br#"{"log":"content 1\n","stream":"stdout","time":"2016-10-20T18:39:20.57606443Z"}"#).unwrap();
        assert!(seg.complete);
        assert_eq!(&*seg.message, b"content 1");
        let part = parse_docker(br#"{"log":"tab\there","stream":"stderr","time":"2016-10-20T18:39:20.57606443Z"}"#).unwrap();
        assert!(!part.complete);
        assert_eq!(&*part.message, b"tab\there");
        assert!(parse_docker(br#"{"log":"x","stream":"stdout"}"#).is_err());
        assert!(parse_docker(b"{not json").is_err());
        // One file's times read through one reader: the same instants as
        // parsed alone, across seconds and offsets.
        let mut reader = Rfc3339Reader::default();
        for time in [
            "2016-10-20T18:39:20.57606443Z",
            "2016-10-20T18:39:20.9Z",
            "2016-10-20T18:39:21Z",
            "2016-10-20T18:39:21.5+02:00",
            "2016-10-20T18:39:21.25+02:00",
            "2016-10-20T18:39:20.57606443Z",
        ] {
            let line = format!(r#"{{"log":"x\n","stream":"stdout","time":"{time}"}}"#);
            let read = read_docker(line.as_bytes(), &mut reader).unwrap().ts;
            assert_eq!(Some(read), weft_model::time::parse_rfc3339_nanos(time.as_bytes()), "{time}");
        }
    }

    #[test]
    fn detects_format() {
        assert_eq!(LogFormat::detect(b"{\"log\":\"x\"}"), LogFormat::Docker);
        assert_eq!(LogFormat::detect(b"2016-10-06T00:17:09Z stdout F x"), LogFormat::Cri);
    }
}
