//! Time parsing and formatting shared by every stage.
//!
//! The hot path (CRI log timestamps) uses a hand-written RFC 3339 parser that
//! does no allocation; the API paths accept the timestamp and duration forms
//! Loki and Prometheus accept (integer nanoseconds, float seconds, RFC 3339,
//! `1m30s`-style durations).

use crate::ModelError;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn two_digits(bytes: &[u8], at: usize) -> Option<u32> {
    let a = bytes.get(at)?.wrapping_sub(b'0');
    let b = bytes.get(at + 1)?.wrapping_sub(b'0');
    if a > 9 || b > 9 {
        return None;
    }
    Some((a * 10 + b) as u32)
}

/// Parses an RFC 3339 timestamp (`2016-10-06T00:17:09.669794202Z`, any
/// fraction length up to nanoseconds, `Z` or a `±hh:mm` offset) into Unix
/// nanoseconds. Returns `None` when the text is not such a timestamp.
pub fn parse_rfc3339_nanos(text: &[u8]) -> Option<i64> {
    with_fraction_and_offset(text, date_time_secs(text)?)
}

/// The Unix seconds of the date and time of day that open `text` (its
/// first 19 bytes, `2016-10-06T00:17:09`), before any offset.
fn date_time_secs(text: &[u8]) -> Option<i64> {
    if text.len() < 20 {
        return None;
    }
    let year = two_digits(text, 0)? as i64 * 100 + two_digits(text, 2)? as i64;
    if text[4] != b'-' || text[7] != b'-' || !(text[10] == b'T' || text[10] == b't' || text[10] == b' ') {
        return None;
    }
    let month = two_digits(text, 5)?;
    let day = two_digits(text, 8)?;
    if text[13] != b':' || text[16] != b':' {
        return None;
    }
    let hour = two_digits(text, 11)?;
    let minute = two_digits(text, 14)?;
    let second = two_digits(text, 17)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + (hour as i64) * 3600 + (minute as i64) * 60 + second as i64)
}

/// Unix nanoseconds of `text` (at least 20 bytes) given the seconds of its
/// first 19: reads the fraction and the offset that follow them.
fn with_fraction_and_offset(text: &[u8], date_time_secs: i64) -> Option<i64> {
    // The kubelet's layout first: nine digits and `Z`.
    if let [b'.', fraction @ .., last, b'Z' | b'z'] = text.get(19..).unwrap_or_default() {
        if fraction.len() == 8 && last.is_ascii_digit() {
            if let Some(eight) = eight_digits(fraction) {
                let nanos = i64::from(eight) * 10 + i64::from(last - b'0');
                return date_time_secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos);
            }
        }
    }
    let mut pos = 19;
    let mut nanos: i64 = 0;
    if text.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        // A CRI fraction has nine digits: the first eight read at once.
        if let Some(eight) = text.get(pos..pos + 8).and_then(eight_digits) {
            nanos = i64::from(eight);
            pos += 8;
        }
        while pos < text.len() && text[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + (text[pos] - b'0') as i64;
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match text.get(pos) {
        Some(b'Z') | Some(b'z') => {
            pos += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let oh = two_digits(text, pos + 1)? as i64;
            if text.get(pos + 3) != Some(&b':') {
                return None;
            }
            let om = two_digits(text, pos + 4)? as i64;
            let sign = if *sign == b'+' { 1 } else { -1 };
            pos += 6;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    if pos != text.len() {
        return None;
    }
    (date_time_secs - offset_secs).checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

/// The value of eight ASCII digits, read as one 64-bit word (SWAR): `None`
/// unless each byte is `0`–`9`.
fn eight_digits(bytes: &[u8]) -> Option<u32> {
    let word = u64::from_le_bytes(bytes.try_into().ok()?);
    // Each byte `0x30..=0x39`: its high nibble is 3, and adding 6 keeps it 3.
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    if word & HIGH != ZEROS || word.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    // The first digit is the lowest byte: pairs, then fours, then all.
    let digits = word - ZEROS;
    let pairs = digits.wrapping_mul(10).wrapping_add(digits >> 8);
    let fours = (pairs & 0x0000_00FF_0000_00FF)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((pairs >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32)));
    Some((fours >> 32) as u32)
}

/// [`parse_rfc3339_nanos`] for a stream of timestamps, as a log file holds
/// them: the date and time of day of the last one are kept, and a
/// timestamp in the same second reads only its fraction and offset (the
/// CRI timestamp had been about 3 % of the collector's `perf` samples).
#[derive(Clone, Debug, Default)]
pub struct Rfc3339Reader {
    /// The first 19 bytes of the last valid timestamp and their seconds.
    last: Option<([u8; 19], i64)>,
}

impl Rfc3339Reader {
    /// Same result as [`parse_rfc3339_nanos`].
    pub fn parse(&mut self, text: &[u8]) -> Option<i64> {
        if let (Some((head, secs)), Some(first)) = (&self.last, text.first_chunk::<19>()) {
            // Compared as an array: inline, not a call to `memcmp`.
            if text.len() >= 20 && first == head {
                return with_fraction_and_offset(text, *secs);
            }
        }
        let secs = date_time_secs(text)?;
        let parsed = with_fraction_and_offset(text, secs)?;
        let mut head = [0; 19];
        head.copy_from_slice(&text[..19]);
        self.last = Some((head, secs));
        Some(parsed)
    }
}

/// Formats Unix nanoseconds as RFC 3339 with nanoseconds, in UTC.
pub fn format_rfc3339_nanos(ts: i64) -> String {
    let secs = ts.div_euclid(NANOS_PER_SEC);
    let nanos = ts.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The UTC (date `YYYY-MM-DD`, hour) of a Unix-nanosecond timestamp, used for
/// Hive-style partition paths.
pub fn date_hour(ts: i64) -> (String, u32) {
    let secs = ts.div_euclid(NANOS_PER_SEC);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (format!("{y:04}-{m:02}-{d:02}"), (secs.rem_euclid(86_400) / 3600) as u32)
}

/// Current wall-clock time in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Parses a timestamp as Loki's API accepts it: integer Unix nanoseconds
/// (or seconds when it has at most 10 digits), float Unix seconds, or
/// RFC 3339.
pub fn parse_api_timestamp(text: &str) -> Result<i64, ModelError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ModelError::InvalidTimestamp {
            text: text.to_string(),
            reason: "empty",
        });
    }
    // Loki's rule: a value with a '.' is float seconds; an integer of up to
    // 10 digits is seconds, a longer one nanoseconds.
    if text.contains('.') {
        if let Ok(float) = text.parse::<f64>() {
            if float.is_finite() {
                return Ok((float * NANOS_PER_SEC as f64).round() as i64);
            }
            return Err(ModelError::InvalidTimestamp {
                text: text.to_string(),
                reason: "not a finite number",
            });
        }
    }
    if let Ok(int) = text.parse::<i64>() {
        let digits = text.trim_start_matches('-').len();
        return Ok(if digits <= 10 { int.saturating_mul(NANOS_PER_SEC) } else { int });
    }
    parse_rfc3339_nanos(text.as_bytes()).ok_or_else(|| ModelError::InvalidTimestamp {
        text: text.to_string(),
        reason: "expected Unix nanoseconds, float seconds or RFC 3339",
    })
}

/// Parses a duration as Prometheus and Loki accept it: `[0-9]+(ms|s|m|h|d|w|y)`
/// compounds such as `1m30s`, or float seconds. Returns nanoseconds.
pub fn parse_duration(text: &str) -> Result<i64, ModelError> {
    let text = text.trim();
    let invalid = |reason| ModelError::InvalidDuration {
        text: text.to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("empty"));
    }
    if let Ok(float) = text.parse::<f64>() {
        if !float.is_finite() || float < 0.0 {
            return Err(invalid("must be a non-negative finite number"));
        }
        return Ok((float * NANOS_PER_SEC as f64).round() as i64);
    }
    let bytes = text.as_bytes();
    let mut total: i64 = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start {
            return Err(invalid("expected a number before each unit"));
        }
        let number: i64 = text[start..pos].parse().map_err(|_| invalid("number too large"))?;
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit_nanos: i64 = match &text[unit_start..pos] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "w" => 7 * 86_400 * NANOS_PER_SEC,
            "y" => 365 * 86_400 * NANOS_PER_SEC,
            "" => return Err(invalid("missing unit (ms, s, m, h, d, w, y)")),
            _ => return Err(invalid("unknown unit (expected ms, s, m, h, d, w, y)")),
        };
        total = number
            .checked_mul(unit_nanos)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| invalid("duration too large"))?;
    }
    Ok(total)
}

/// Formats nanoseconds as a Prometheus-style duration (`1h30m`, `15s`, `250ms`).
pub fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = nanos;
    for (unit, size) in [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        out = format!("{nanos}ns");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_timestamps() {
        assert_eq!(parse_rfc3339_nanos(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos(b"2016-10-06T00:17:09.669794202Z"),
            Some(1_475_713_029_669_794_202)
        );
        assert_eq!(parse_rfc3339_nanos(b"2016-10-06T02:17:09.5+02:00"), Some(1_475_713_029_500_000_000));
        assert_eq!(parse_rfc3339_nanos(b"2016-10-06T00:17:09.669794202"), None);
        assert_eq!(parse_rfc3339_nanos(b"2016-13-06T00:17:09Z"), None);
        assert_eq!(parse_rfc3339_nanos(b"garbage garbage garbage"), None);
    }

    #[test]
    fn eight_digits_read_as_a_number() {
        for text in ["00000000", "12345678", "99999999", "66979420", "00000001", "10000000"] {
            assert_eq!(eight_digits(text.as_bytes()), text.parse().ok(), "{text}");
        }
        for text in [
            "1234567",
            "1234567/",
            "123456:8",
            "/2345678",
            "1234567Z",
            "12 45678",
            "\u{0}2345678",
        ] {
            assert_eq!(eight_digits(text.as_bytes()), None, "{text:?}");
        }
        for byte in 0..=255u8 {
            let mut text = *b"12345678";
            text[3] = byte;
            assert_eq!(eight_digits(&text).is_some(), byte.is_ascii_digit(), "{byte:#x}");
        }
    }

    /// The reader keeps the last date and time of day: a stream of
    /// timestamps in one second, across seconds, with offsets, and with
    /// broken tails after a kept head reads as each does on its own.
    #[test]
    fn a_reader_reads_every_timestamp_as_the_parser_does() {
        let stream: &[&[u8]] = &[
            b"2026-11-25T08:00:00.000001000Z",
            b"2026-11-25T08:00:00.999999999Z",
            b"2026-11-25T08:00:00Z",
            b"2026-11-25T08:00:00.5+02:00",
            b"2026-11-25T08:00:00.5-01:30",
            b"2026-11-25T08:00:00.",
            b"2026-11-25T08:00:00.1Zjunk",
            b"2026-11-25T08:00:00",
            b"2026-11-25T08:00:00+0200",
            b"2026-11-25T08:00:01.25Z",
            b"2026-11-25 08:00:01.25Z",
            b"2026-13-25T08:00:01.25Z",
            b"2026-11-25T08:00:01.000000000001Z",
            b"garbage garbage garbage",
            b"2026-11-25T08:00:01.3Z",
            b"2026-11-25T08:00:01.12345678xZ",
            b"2026-11-25T08:00:01.1234567x9Z",
            b"2026-11-25T08:00:01.123456789+",
            b"2026-11-25T08:00:01.123456789z",
            b"2026-11-25T08:00:01-123456789Z",
            b"2026-11-25T08:00:01.12345678Z",
            b"",
        ];
        // The kubelet's layout, read in one step, and near misses.
        for (text, nanos) in [
            (&b"2026-11-25T08:00:01.123456789Z"[..], Some(1_795_593_601_123_456_789)),
            (b"2026-11-25T08:00:01.123456789z", Some(1_795_593_601_123_456_789)),
            (b"2026-11-25T08:00:01.000000000Z", Some(1_795_593_601_000_000_000)),
            (b"2026-11-25T08:00:01.12345678Z", Some(1_795_593_601_123_456_780)),
            (b"2026-11-25T08:00:01.12345678xZ", None),
            (b"2026-11-25T08:00:01.1234567x9Z", None),
            (b"2026-11-25T08:00:01.123456789+", None),
            (b"2026-11-25T08:00:01-123456789Z", None),
            (b"2026-11-25T08:00:01.123456789ZZ", None),
        ] {
            assert_eq!(parse_rfc3339_nanos(text), nanos, "{}", String::from_utf8_lossy(text));
        }
        let mut reader = Rfc3339Reader::default();
        for pass in 0..2 {
            for text in stream {
                assert_eq!(
                    reader.parse(text),
                    parse_rfc3339_nanos(text),
                    "pass {pass}: {}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    proptest::proptest! {
        /// Timestamps of random seconds and fractions, read in turn.
        #[test]
        fn a_reader_agrees_with_the_parser(stamps in proptest::collection::vec((0i64..4_102_444_800, 0u32..1_000_000_000, 0usize..4), 1..40)) {
            let mut reader = Rfc3339Reader::default();
            let mut last = 0;
            for (secs, nanos, same) in stamps {
                // Often the same second as the last one, as in a log file,
                // or a second next to it (one digit apart).
                let secs = match same {
                    0 => secs,
                    1 => last + 1,
                    _ => last,
                };
                last = secs;
                let text = format_rfc3339_nanos(secs * NANOS_PER_SEC + i64::from(nanos));
                proptest::prop_assert_eq!(reader.parse(text.as_bytes()), parse_rfc3339_nanos(text.as_bytes()));
                proptest::prop_assert_eq!(reader.parse(text.as_bytes()), Some(secs * NANOS_PER_SEC + i64::from(nanos)));
            }
        }
    }

    #[test]
    fn formats_round_trip() {
        for ts in [0i64, 1_475_713_029_669_794_202, 1_764_108_978_000_000_001, -1] {
            assert_eq!(parse_rfc3339_nanos(format_rfc3339_nanos(ts).as_bytes()), Some(ts));
        }
        assert_eq!(date_hour(1_764_108_978_000_000_000), ("2025-11-25".to_string(), 22));
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 19_000, 20_417, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn api_timestamps_and_durations() {
        assert_eq!(parse_api_timestamp("4000000000").unwrap(), 4_000_000_000 * NANOS_PER_SEC);
        assert_eq!(parse_api_timestamp("1764108978000000000").unwrap(), 1_764_108_978_000_000_000);
        assert_eq!(parse_api_timestamp("4").unwrap(), 4 * NANOS_PER_SEC);
        assert_eq!(parse_api_timestamp("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_api_timestamp("1970-01-01T00:00:04Z").unwrap(), 4 * NANOS_PER_SEC);
        assert!(parse_api_timestamp("yesterday").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), 90 * NANOS_PER_SEC);
        assert_eq!(parse_duration("250ms").unwrap(), 250_000_000);
        assert_eq!(parse_duration("15").unwrap(), 15 * NANOS_PER_SEC);
        assert_eq!(parse_duration("0.5").unwrap(), 500_000_000);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(format_duration(90 * NANOS_PER_SEC), "1m30s");
    }
}

/// Serde for `std::time::Duration` as a Prometheus-style string (`"1s"`,
/// `"250ms"`, `"7d"`), the form config files use.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(value.as_nanos() as i64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let nanos = super::parse_duration(&text).map_err(serde::de::Error::custom)?;
        Ok(Duration::from_nanos(nanos as u64))
    }
}
