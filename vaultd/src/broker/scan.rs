//! Looking for stored values in bytes that arrive in chunks: the exfiltration
//! guard (a request that carries one is stopped before any byte of it leaves)
//! and the redaction of replies (a provider that echoes a key back).
//!
//! A value may be split across chunks, so a scanner holds back the shortest
//! tail of what it has seen that could be the start of a value, and passes on
//! the rest at once. Ordinary traffic rarely ends a chunk that way, so a stream
//! (server-sent events included) is not delayed.

use crate::crypto::SecretBytes;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// The values looked for (each at least the guard's minimum length).
#[derive(Default)]
pub(super) struct Needles {
    values: Vec<SecretBytes>,
}

impl Needles {
    pub(super) fn new(values: impl IntoIterator<Item = SecretBytes>, min_len: usize) -> Needles {
        let mut values: Vec<SecretBytes> = values.into_iter().filter(|v| v.len() >= min_len.max(1)).collect();
        values.sort_by(|a, b| a.expose().cmp(b.expose()));
        values.dedup_by(|a, b| a.expose() == b.expose());
        Needles { values }
    }

    /// The first occurrence of any value in `hay`: where it starts and its length.
    pub(super) fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        self.values
            .iter()
            .filter_map(|v| memchr::memmem::find(hay, v.expose()).map(|at| (at, v.len())))
            .min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)))
    }

    /// Where the shortest tail of `buf` starts that is the beginning of some
    /// value (but not all of it): those bytes cannot be judged yet.
    fn undecided_from(&self, buf: &[u8]) -> usize {
        let mut from = buf.len();
        for v in &self.values {
            let v = v.expose();
            let start = buf.len().saturating_sub(v.len() - 1).min(from);
            let tail = &buf[start..];
            for i in memchr::memchr_iter(v[0], tail) {
                if v.starts_with(&tail[i..]) {
                    from = from.min(start + i);
                    break;
                }
            }
        }
        from
    }
}

/// A value was found where it must not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found;

/// One stream's pass through the needles.
pub(super) struct Scanner {
    needles: Arc<Needles>,
    held: BytesMut,
}

impl Scanner {
    pub(super) fn new(needles: Arc<Needles>) -> Scanner {
        Scanner { needles, held: BytesMut::new() }
    }

    /// The guard: the bytes of `chunk` (and of what was held) that may go on
    /// now, or [`Found`] when a value is in them.
    pub(super) fn pass(&mut self, chunk: Bytes) -> Result<Bytes, Found> {
        let buf = self.join(chunk);
        if self.needles.find(&buf).is_some() {
            return Err(Found);
        }
        Ok(self.hold_tail(buf))
    }

    /// What was held, at the end of the stream.
    pub(super) fn pass_end(&mut self) -> Result<Bytes, Found> {
        let held = self.held.split().freeze();
        match self.needles.find(&held) {
            Some(_) => Err(Found),
            None => Ok(held),
        }
    }

    /// Redaction: `chunk` with every value in it masked (`*` for each byte, so
    /// lengths do not change), less the tail held back.
    pub(super) fn mask(&mut self, chunk: Bytes) -> Bytes {
        let buf = self.join(chunk);
        let buf = self.masked(buf);
        self.hold_tail(buf)
    }

    /// What was held, masked, at the end of the stream.
    pub(super) fn mask_end(&mut self) -> Bytes {
        let held = self.held.split().freeze();
        self.masked(held)
    }

    fn join(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() {
            return chunk;
        }
        self.held.extend_from_slice(&chunk);
        self.held.split().freeze()
    }

    fn masked(&self, buf: Bytes) -> Bytes {
        if self.needles.find(&buf).is_none() {
            return buf;
        }
        let mut out = BytesMut::from(&buf[..]);
        let mut at = 0;
        while let Some((start, len)) = self.needles.find(&out[at..]) {
            out[at + start..at + start + len].fill(b'*');
            at += start + len;
        }
        out.freeze()
    }

    fn hold_tail(&mut self, mut buf: Bytes) -> Bytes {
        let from = self.needles.undecided_from(&buf);
        self.held.extend_from_slice(&buf.split_off(from));
        buf
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn needles(values: &[&str]) -> Arc<Needles> {
        Arc::new(Needles::new(values.iter().map(|v| SecretBytes::new(v.as_bytes().to_vec())), 4))
    }

    #[test]
    fn finds_a_value_split_anywhere_and_passes_nothing_of_it() {
        let value = "sk-live-0123456789";
        let body = format!(r#"{{"messages":[{{"content":"here: {value} bye"}}]}}"#);
        for cut in 0..body.len() {
            let mut s = Scanner::new(needles(&[value, "other-secret"]));
            let mut passed = Vec::new();
            let mut found = false;
            for chunk in [&body[..cut], &body[cut..]] {
                match s.pass(Bytes::copy_from_slice(chunk.as_bytes())) {
                    Ok(out) => passed.extend_from_slice(&out),
                    Err(Found) => {
                        found = true;
                        break;
                    }
                }
            }
            found = found || s.pass_end().is_err();
            assert!(found, "cut at {cut}");
            assert!(!passed.windows(3).any(|w| w == b"sk-"), "a piece of the value passed (cut {cut})");
        }
    }

    #[test]
    fn ordinary_streams_are_not_held() {
        let mut s = Scanner::new(needles(&["sk-live-0123456789"]));
        let out = s.pass(Bytes::from_static(b"data: {\"text\":\"hello\"}\n\n")).unwrap();
        assert_eq!(&out[..], b"data: {\"text\":\"hello\"}\n\n");
        // A tail that could start the value waits for the next chunk.
        assert_eq!(&s.pass(Bytes::from_static(b"abc sk-li")).unwrap()[..], b"abc ");
        assert_eq!(&s.pass(Bytes::from_static(b"ke")).unwrap()[..], b"sk-like");
        assert_eq!(&s.pass_end().unwrap()[..], b"");
    }

    #[test]
    fn masks_values_across_chunks_keeping_lengths() {
        let mut s = Scanner::new(needles(&["sk-live-0123456789"]));
        let mut out = Vec::new();
        for chunk in ["{\"error\":\"bad key sk-live-01", "23456789\", \"again\": \"sk-live-0123456789\"}"] {
            out.extend_from_slice(&s.mask(Bytes::copy_from_slice(chunk.as_bytes())));
        }
        out.extend_from_slice(&s.mask_end());
        let want = "{\"error\":\"bad key ******************\", \"again\": \"******************\"}";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn short_values_are_not_looked_for() {
        let n = needles(&["abc", "abcdefgh"]);
        assert_eq!(n.find(b"xxabcxx"), None);
        assert_eq!(n.find(b"xxabcdefgh"), Some((2, 8)));
    }
}
