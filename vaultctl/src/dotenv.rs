//! `.env` files, as `vaultctl import` reads them and `vaultctl export` writes them.
//!
//! The syntax is the common subset of docker compose, python-dotenv and the shell:
//!
//! - `NAME=VALUE`, one a line; `export NAME=VALUE` is the same; spaces around `=`
//!   are ignored; blank lines and lines starting with `#` are comments.
//! - An unquoted value runs to the end of the line, trimmed; ` #` (a `#` after a
//!   space or tab) starts a comment.
//! - `'…'` is literal: no escapes, may span lines.
//! - `"…"` may span lines and knows the escapes `\n`, `\r`, `\t`, `\"`, `\\` and
//!   `\$`; any other backslash is kept as it is.
//! - Nothing is interpolated: `$OTHER` and `${OTHER}` are text.
//!
//! Errors name the line and never quote the file: a value must not reach a terminal
//! or a log because the line around it was malformed.

use std::fmt;

use zeroize::Zeroizing;

use crate::secret::Secret;

/// One `NAME=VALUE` of a file.
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) value: Secret,
    /// The line the entry starts on (1-based).
    pub(crate) line: usize,
}

/// Why a file is not a `.env` file. Shows the line and the rule, never the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// No `=` after the name.
    NoEquals,
    /// The name breaks the naming rule.
    BadName(vault_proto::names::NameError),
    /// A quote that is never closed.
    Unterminated,
    /// Something other than a comment after a closing quote.
    AfterQuote,
    /// The same name twice (the first line given).
    Repeated { name: String, first: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.problem {
            Problem::NoEquals => f.write_str("expected NAME=VALUE"),
            Problem::BadName(why) => write!(f, "the name {why}"),
            Problem::Unterminated => f.write_str("the quoted value is never closed"),
            Problem::AfterQuote => f.write_str("only a comment may follow a closing quote"),
            Problem::Repeated { name, first } => write!(f, "{name} is set again (first on line {first})"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole file. Entries come in file order; an empty value is an entry
/// with an empty value (vaultd refuses those: the caller decides).
pub(crate) fn parse(text: &[u8]) -> Result<Vec<Entry>, ParseError> {
    let mut p = Parser { text, pos: 0, line: 1 };
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(line) = p.next_statement() {
        let fail = |problem| ParseError { line, problem };
        let name = p.name();
        p.skip_blanks();
        if !p.eat(b'=') {
            return Err(fail(Problem::NoEquals));
        }
        vault_proto::names::validate(&name).map_err(|why| fail(Problem::BadName(why)))?;
        if let Some(first) = entries.iter().find(|e| e.name == name) {
            return Err(fail(Problem::Repeated { name, first: first.line }));
        }
        p.skip_blanks();
        let mut value = p.value().map_err(|problem| ParseError { line, problem })?;
        entries.push(Entry { name, value: Secret::new(std::mem::take(&mut *value)), line });
    }
    Ok(entries)
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn eat(&mut self, want: u8) -> bool {
        let hit = self.peek() == Some(want);
        if hit {
            self.bump();
        }
        hit
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.bump();
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == b'\n' {
                break;
            }
        }
    }

    /// Skips blank lines and comments; returns the line of the next statement, if any.
    fn next_statement(&mut self) -> Option<usize> {
        loop {
            self.skip_blanks();
            match self.peek()? {
                b'\n' => {
                    self.bump();
                }
                b'#' => self.skip_line(),
                _ => return Some(self.line),
            }
        }
    }

    /// The name, after an optional `export `: up to `=` or a blank.
    fn name(&mut self) -> String {
        let rest = &self.text[self.pos..];
        if rest.starts_with(b"export") && matches!(rest.get(6), Some(b' ' | b'\t')) {
            self.pos += 6;
            self.skip_blanks();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| !matches!(c, b'=' | b' ' | b'\t' | b'\r' | b'\n')) {
            self.bump();
        }
        String::from_utf8_lossy(&self.text[start..self.pos]).into_owned()
    }

    fn value(&mut self) -> Result<Zeroizing<Vec<u8>>, Problem> {
        let value = match self.peek() {
            Some(b'\'') => self.quoted(b'\'')?,
            Some(b'"') => self.quoted(b'"')?,
            _ => return Ok(self.unquoted()),
        };
        // Only blanks and a comment may follow the closing quote.
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => {
                self.bump();
            }
            Some(b'#') => self.skip_line(),
            Some(_) => return Err(Problem::AfterQuote),
        }
        Ok(value)
    }

    fn unquoted(&mut self) -> Zeroizing<Vec<u8>> {
        let start = self.pos;
        let mut end = start;
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            let after_blank = self.pos > 0 && matches!(self.text[self.pos - 1], b' ' | b'\t');
            if c == b'#' && after_blank {
                self.skip_line();
                return Zeroizing::new(self.text[start..end].trim_ascii_end().to_vec());
            }
            self.bump();
            end = self.pos;
        }
        self.bump();
        Zeroizing::new(self.text[start..end].trim_ascii_end().to_vec())
    }

    /// A value in `quote`s; the parser is on the opening one.
    fn quoted(&mut self, quote: u8) -> Result<Zeroizing<Vec<u8>>, Problem> {
        self.bump();
        let mut out = Zeroizing::new(Vec::new());
        loop {
            let c = self.bump().ok_or(Problem::Unterminated)?;
            match c {
                _ if c == quote => return Ok(out),
                b'\\' if quote == b'"' => {
                    let e = self.bump().ok_or(Problem::Unterminated)?;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'"' | b'\\' | b'$' => out.push(e),
                        _ => out.extend_from_slice(&[b'\\', e]),
                    }
                }
                _ => out.push(c),
            }
        }
    }
}

/// `NAME=VALUE` for a file [`parse`] reads back exactly, or `None` when the value
/// is not text (a `.env` file cannot hold it). Single quotes when the value has
/// none (literal to every dotenv reader), else double quotes with escapes; `$`
/// is escaped so that readers which interpolate keep it as text.
pub(crate) fn line(name: &str, value: &[u8]) -> Option<Zeroizing<String>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut out = Zeroizing::new(String::with_capacity(name.len() + text.len() * 2 + 4));
    out.push_str(name);
    out.push('=');
    if !text.contains('\'') {
        out.push('\'');
        out.push_str(text);
        out.push('\'');
    } else {
        out.push('"');
        for c in text.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '"' | '\\' | '$' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('\n');
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String, usize)> {
        parse(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| (e.name, String::from_utf8(e.value.expose().to_vec()).unwrap(), e.line))
            .collect()
    }

    #[test]
    fn reads_the_common_syntax() {
        let text = "# a comment\n\
            \n\
            PLAIN=abc\n\
            export EXPORTED=def\n\
            SPACED = ghi  \n\
            INLINE=jkl # a comment\n\
            ONLY_COMMENT= # nothing\n\
            HASH=mno#not-a-comment\n\
            SINGLE='p $q \\n r'\n\
            DOUBLE=\"s\\nt\\\"u\\\\v\\$w\"\n\
            MULTI=\"line 1\nline 2\"\n\
            MULTI_SINGLE='a\nb' # after\n\
            \tINDENTED=x\r\n\
            EMPTY=\n\
            LAST=z";
        let want = [
            ("PLAIN", "abc", 3),
            ("EXPORTED", "def", 4),
            ("SPACED", "ghi", 5),
            ("INLINE", "jkl", 6),
            ("ONLY_COMMENT", "", 7),
            ("HASH", "mno#not-a-comment", 8),
            ("SINGLE", "p $q \\n r", 9),
            ("DOUBLE", "s\nt\"u\\v$w", 10),
            ("MULTI", "line 1\nline 2", 11),
            ("MULTI_SINGLE", "a\nb", 13),
            ("INDENTED", "x", 15),
            ("EMPTY", "", 16),
            ("LAST", "z", 17),
        ];
        let got = pairs(text);
        let want: Vec<_> = want.iter().map(|(n, v, l)| ((*n).to_owned(), (*v).to_owned(), *l)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn errors_name_the_line_and_never_the_text() {
        let cases = [
            ("OK=1\nsk-proj-secretvalue\n", 2, "expected NAME=VALUE"),
            ("A='never closed\n", 1, "never closed"),
            ("A=\"x\" sk-secret\n", 1, "only a comment"),
            ("_A=1\n", 1, "must start with"),
            ("A=1\nB=2\nA=3\n", 3, "A is set again (first on line 1)"),
            ("A B=1\n", 1, "expected NAME=VALUE"),
        ];
        for (text, line, want) in cases {
            let err = parse(text.as_bytes()).err().unwrap();
            let message = err.to_string();
            assert_eq!(err.line, line, "{text:?}: {message}");
            assert!(message.contains(want), "{text:?}: {message}");
            assert!(!message.contains("secret") && !message.contains("never closed\n"), "{message}");
        }
    }

    #[test]
    fn written_lines_read_back_exactly() {
        let values = ["plain", "it's", "multi\nline", "tab\tand \"quotes\" and \\ and $HOME", "'", "a'b\nc\r\n", " x "];
        let mut file = String::new();
        for (i, v) in values.iter().enumerate() {
            file.push_str(&line(&format!("K{i}"), v.as_bytes()).unwrap());
        }
        let got = pairs(&file);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(got[i].0, format!("K{i}"));
            assert_eq!(got[i].1, *v, "{file}");
        }
        assert!(line("BIN", b"\xff").is_none());
    }
}
