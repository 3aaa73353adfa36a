//! Redaction of raw bytes read back in pieces (a task's full log): the same secrets and the
//! same rule as [`super::Redactor`] — every occurrence, overlapping ones merged into one
//! `[redacted]` — on bytes that need not be UTF-8. The last bytes of a piece that could begin
//! a secret are held back until the next piece, so a secret cut in two is still caught; each
//! output piece says which raw bytes it stands for, so a reader can resume by raw offset.

use memchr::memmem;

use super::{Redactor, REDACTED};

/// One output piece: the raw bytes `[start, end)` of the log, as redacted `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub data: Vec<u8>,
    pub end: u64,
}

/// A streaming redactor over one byte stream.
#[derive(Debug, Clone)]
pub struct ByteRedactor {
    /// Longest first.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
    /// The raw offset of `held`'s first byte.
    held_at: u64,
}

impl ByteRedactor {
    pub fn new(r: &Redactor) -> ByteRedactor {
        ByteRedactor {
            secrets: r.secrets().iter().map(|s| s.as_bytes().to_vec()).collect(),
            held: vec![],
            held_at: 0,
        }
    }

    /// `data`, read at raw `offset`, redacted: nothing while everything is held back, and two
    /// pieces when `data` does not follow the last piece (what was held is redacted alone).
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Vec<Piece> {
        let mut out = vec![];
        if self.held.is_empty() {
            self.held_at = offset;
        } else if offset != self.held_at + self.held.len() as u64 {
            out.extend(self.finish());
            self.held_at = offset;
        }
        self.held.extend_from_slice(data);
        let keep = self.secrets.first().map_or(0, |s| s.len() - 1);
        let cutoff = self.held.len().saturating_sub(keep);
        out.extend(self.take(cutoff));
        out
    }

    /// What is still held back, redacted (the stream ended).
    pub fn finish(&mut self) -> Option<Piece> {
        let all = self.held.len();
        self.take(all)
    }

    /// Redacts and hands out the held bytes before `cutoff` (further when a secret found
    /// before it runs past it).
    fn take(&mut self, cutoff: usize) -> Option<Piece> {
        let spans = spans(&self.secrets, &self.held);
        let mut cut = cutoff;
        for &(s, e) in &spans {
            if s < cutoff {
                cut = cut.max(e);
            }
        }
        if cut == 0 {
            return None;
        }
        let mut data = Vec::with_capacity(cut);
        let mut at = 0;
        for &(s, e) in spans.iter().filter(|(s, _)| *s < cut) {
            data.extend_from_slice(&self.held[at..s]);
            data.extend_from_slice(REDACTED.as_bytes());
            at = e;
        }
        data.extend_from_slice(&self.held[at..cut]);
        let start = self.held_at;
        self.held.drain(..cut);
        self.held_at += cut as u64;
        Some(Piece {
            start,
            data,
            end: self.held_at,
        })
    }
}

/// Every occurrence of any secret in `bytes`, overlapping ones merged: sorted, disjoint.
fn spans(secrets: &[Vec<u8>], bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = vec![];
    for s in secrets {
        let finder = memmem::Finder::new(s);
        let mut from = 0;
        while let Some(i) = finder.find(&bytes[from..]) {
            let start = from + i;
            found.push((start, start + s.len()));
            from = start + 1;
        }
    }
    found.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(found.len());
    for (s, e) in found {
        match merged.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut ByteRedactor, pieces: &[&[u8]]) -> (Vec<u8>, Vec<(u64, u64)>) {
        let (mut out, mut ranges, mut at) = (vec![], vec![], 0u64);
        for p in pieces {
            for piece in r.push(at, p) {
                ranges.push((piece.start, piece.end));
                out.extend(piece.data);
            }
            at += p.len() as u64;
        }
        if let Some(piece) = r.finish() {
            ranges.push((piece.start, piece.end));
            out.extend(piece.data);
        }
        (out, ranges)
    }

    #[test]
    fn a_secret_cut_anywhere_is_caught_and_raw_ranges_tile_the_input() {
        let red = Redactor::new(["s3cr3t-value", "hunter22"]);
        let text = b"a s3cr3t-value b \xff\x00 hunter22 c s3cr3t-valu";
        for cut in 0..text.len() {
            let mut r = ByteRedactor::new(&red);
            let (out, ranges) = all(&mut r, &[&text[..cut], &text[cut..]]);
            assert_eq!(
                out,
                b"a [redacted] b \xff\x00 [redacted] c s3cr3t-valu".to_vec(),
                "cut at {cut}"
            );
            let mut at = 0;
            for (s, e) in ranges {
                assert_eq!(s, at, "pieces follow each other");
                at = e;
            }
            assert_eq!(at, text.len() as u64);
        }
    }

    #[test]
    fn overlapping_secrets_become_one_and_no_secret_passes_through() {
        let red = Redactor::new(["abcdef", "defghi"]);
        let mut r = ByteRedactor::new(&red);
        let (out, _) = all(&mut r, &[b"xxabcdefghiyy"]);
        assert_eq!(out, b"xx[redacted]yy".to_vec());
        let mut r = ByteRedactor::new(&Redactor::new(Vec::<String>::new()));
        let (out, _) = all(&mut r, &[b"plain", b" text"]);
        assert_eq!(out, b"plain text".to_vec());
    }

    #[test]
    fn a_piece_that_does_not_follow_starts_afresh_and_loses_nothing() {
        let mut r = ByteRedactor::new(&Redactor::new(["secret-x"]));
        let mut pieces = r.push(0, b"abc secr");
        pieces.extend(r.push(100, b"zz"));
        pieces.extend(r.finish());
        let got: Vec<(u64, &[u8], u64)> = (pieces.iter())
            .map(|p| (p.start, p.data.as_slice(), p.end))
            .collect();
        assert_eq!(
            got,
            [
                (0, &b"a"[..], 1),
                (1, &b"bc secr"[..], 8),
                (100, &b"zz"[..], 102)
            ]
        );
    }
}
