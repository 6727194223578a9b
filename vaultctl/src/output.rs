//! Everything vaultctl writes to stdout: JSON documents, aligned tables, RFC 3339
//! timestamps, and secret values shown as text when they are UTF-8, else base64.
//!
//! Writes go through a locked stdout and return errors instead of panicking as
//! `println!` does, so `vaultctl list | head -1` ends with a message, not a panic.

use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;
use zeroize::Zeroizing;

/// Prints `value` as one line of compact JSON.
pub(crate) fn json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).context("cannot write to stdout")?;
    out.write_all(b"\n").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// Prints lines of text, each followed by a newline.
pub(crate) fn lines<S: AsRef<str>>(lines: &[S]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{}", line.as_ref()).context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")
}

/// Writes `bytes` exactly, with nothing added, so output redirected to a file
/// round-trips binary content.
pub(crate) fn raw(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// Creates a new file for secrets or records at `path`: mode 0600 from the start,
/// and never over an existing file.
pub(crate) fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Prints a table: left-aligned columns two spaces apart, no trailing spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    lines(&table_lines(header, rows))
}

fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let mut widths = vec![0; header.len()];
    for row in &all {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    all.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// A placeholder for an empty field in human output.
pub(crate) fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// A secret value ready to show: the text itself when it is UTF-8, else base64
/// (RFC 4648 standard alphabet, padded). JSON uses the key `value` for the first
/// and `value_base64` for the second, so a script never has to guess which
/// (serialized flattened into the object that carries it).
#[derive(Serialize)]
pub(crate) enum ShownValue<'a> {
    #[serde(rename = "value")]
    Utf8(&'a str),
    #[serde(rename = "value_base64", serialize_with = "as_str")]
    Base64(Zeroizing<String>),
}

fn as_str<S: serde::Serializer>(text: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text)
}

impl<'a> ShownValue<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => ShownValue::Utf8(text),
            Err(_) => ShownValue::Base64(base64(bytes)),
        }
    }

    /// The human output line: `value: TEXT` or `value (base64): B64`.
    pub(crate) fn line(&self) -> Zeroizing<String> {
        let (label, text) = match self {
            ShownValue::Utf8(text) => ("value: ", *text),
            ShownValue::Base64(encoded) => ("value (base64): ", encoded.as_str()),
        };
        // Sized up front so the line holding the secret never reallocates.
        let mut line = Zeroizing::new(String::with_capacity(label.len() + text.len()));
        line.push_str(label);
        line.push_str(text);
        line
    }
}

/// Standard base64 with padding, into a zeroizing string sized up front so it
/// never reallocates and leaves a copy of the value behind.
fn base64(bytes: &[u8]) -> Zeroizing<String> {
    use base64::Engine as _;
    let mut out = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
    out
}

/// A Unix time as RFC 3339 UTC with seconds: `2024-02-29T12:00:00Z`. Times
/// outside years 0000–9999, which RFC 3339 cannot write, print as the number.
pub(crate) fn timestamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return unix.to_string();
    }
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Year, month, day of the proleptic Gregorian calendar for a count of days
/// since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_values_are_text_and_others_base64() {
        let json = |v: &ShownValue<'_>| serde_json::to_string(v).unwrap_or_default();
        let text = ShownValue::new("tok-€\n".as_bytes());
        assert_eq!(json(&text), r#"{"value":"tok-€\n"}"#);
        assert_eq!(text.line().as_str(), "value: tok-€\n");

        let binary = ShownValue::new(b"\xff\x00a");
        assert_eq!(json(&binary), r#"{"value_base64":"/wBh"}"#);
        assert_eq!(binary.line().as_str(), "value (base64): /wBh");

        // A truncated multi-byte sequence is not UTF-8.
        assert_eq!(json(&ShownValue::new(&"€".as_bytes()[..2])), r#"{"value_base64":"4oI="}"#);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_208_000, "2024-02-29T12:00:00Z"),
            (1_735_689_599, "2024-12-31T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-62_167_219_200, "0000-01-01T00:00:00Z"),
            (253_402_300_800, "253402300800"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "-9223372036854775808"),
        ];
        for (unix, want) in cases {
            assert_eq!(timestamp(unix), want, "{unix}");
        }
    }

    #[test]
    fn tables_align_without_trailing_spaces() {
        let rows = vec![
            vec!["telegram".to_owned(), "12".to_owned(), "-".to_owned()],
            vec!["a".to_owned(), "1".to_owned(), "anthropic".to_owned()],
        ];
        assert_eq!(
            table_lines(&["NAME", "VERSION", "PROVIDER"], &rows),
            ["NAME      VERSION  PROVIDER", "telegram  12       -", "a         1        anthropic"]
        );
    }
}
