//! Redaction: secrets (`--env` string leaves, task `env` values) replaced by [`REDACTED`] in what
//! a task prints, before anyone sees it.
//!
//! [`Redactor`] is the set of secrets and replaces them in a whole text; [`LineRedactor`] does
//! the same for one output stream that arrives as lines, a long line in pieces: it holds back
//! the end of an unfinished line (at most the longest secret less one byte) until the rest comes,
//! so a secret cut in two by a piece boundary is still caught. Occurrences that overlap (of one
//! secret or of several) are replaced together by one marker, so no part of either shows.
//!
//! A secret shorter than [`MIN_SECRET`] characters is not redacted (replacing `1` or `yes`
//! everywhere would make output unreadable and hide nothing); a secret of several lines is
//! redacted line by line (output is cut into lines before it is redacted).

use std::borrow::Cow;

use serde_json::Value;

/// What a secret is replaced by.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this many characters are left alone.
pub const MIN_SECRET: usize = 4;

/// The string leaves of a JSON value (`--env`), recursively, in document order.
pub fn string_leaves(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => map.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(v, &mut out);
    out
}

/// The secrets worth redacting among `values`: each line of each value, those of at least
/// [`MIN_SECRET`] characters, without duplicates, longest first.
pub fn secrets<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = values
        .into_iter()
        .flat_map(|v| {
            v.as_ref()
                .lines()
                .filter(|l| l.chars().count() >= MIN_SECRET)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// A factfile's text as the payloads' `factfile` field carries it (standard base64): for the
/// redacted factfile a run shows instead of the templated one.
pub fn factfile_base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Past this many bytes held back, a chain of overlapping occurrences crossing a piece boundary
/// is passed on rather than held further (only a secret that overlaps itself, repeated, makes one).
const MAX_HELD: usize = 64 * 1024;

/// A set of secrets; replaces each occurrence by [`REDACTED`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Longest first (see [`secrets`]).
    secrets: Vec<String>,
}

impl Redactor {
    /// The redactor of `values` (see [`secrets`] for which are kept).
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor {
            secrets: secrets(values),
        }
    }

    /// Nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Bytes of the longest secret.
    fn longest(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    /// Every occurrence of any secret in `text`, overlapping ones merged: sorted, disjoint
    /// `[start, end)` byte ranges (on character boundaries: a secret is valid UTF-8).
    fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        let mut found = vec![];
        for s in &self.secrets {
            let mut from = 0;
            while let Some(i) = text.get(from..).and_then(|rest| rest.find(s.as_str())) {
                let start = from + i;
                found.push((start, start + s.len()));
                // Overlapping occurrences of the same secret too: go on one character later.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
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

    /// `text` with every secret replaced.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e) in spans {
            out.push_str(&text[at..s]);
            out.push_str(REDACTED);
            at = e;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// Splits the text of an unfinished line: what can be passed on now (redacted) and what
    /// must wait for the rest of the line (as it is), because a secret may start in it.
    fn split_open(&self, text: &str) -> (String, String) {
        let mut cut = text.len().saturating_sub(self.longest().saturating_sub(1));
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        // An occurrence across the cut (it ends within the text) waits whole, unless that
        // would hold too much: then it is passed on whole.
        if let Some(&(s, e)) = self.spans(text).iter().find(|&&(s, e)| s < cut && cut < e) {
            cut = if text.len() - s <= MAX_HELD { s } else { e };
        }
        (
            self.redact(&text[..cut]).into_owned(),
            text[cut..].to_string(),
        )
    }
}

/// One output stream's redaction: pieces in, pieces out (`(text, continued)`, as the agent
/// protocol carries them), with the end of an unfinished line held back.
#[derive(Debug, Clone, Default)]
pub struct LineRedactor {
    /// The end of the current line, not passed on yet.
    held: String,
    /// A line is open: its end has not come.
    open: bool,
    /// Something of the open line was passed on (what follows is `continued`).
    started: bool,
}

impl LineRedactor {
    pub fn new() -> LineRedactor {
        LineRedactor::default()
    }

    /// Takes a piece of output: `continued` goes on the line the previous piece began; `ends`:
    /// the line ends with it (as far as the caller knows). Appends to `out` what can be passed
    /// on now. With nothing to redact, the piece is passed on as it came.
    pub fn push(
        &mut self,
        r: &Redactor,
        text: &str,
        continued: bool,
        ends: bool,
        out: &mut Vec<(String, bool)>,
    ) {
        if r.is_empty() && self.held.is_empty() {
            out.push((text.to_string(), continued));
            self.open = !ends;
            return;
        }
        if !continued {
            // A new line: the previous one (if the caller could not tell it had ended) is over.
            self.finish(r, out);
        } else if !self.open {
            // The rest of a line whose start went by before us: what follows is `continued`.
            self.started = true;
        }
        let mut whole = std::mem::take(&mut self.held);
        whole.push_str(text);
        if ends {
            out.push((r.redact(&whole).into_owned(), self.started));
            self.open = false;
            self.started = false;
            return;
        }
        self.open = true;
        let (now, later) = r.split_open(&whole);
        self.held = later;
        if !now.is_empty() {
            out.push((now, self.started));
            self.started = true;
        }
    }

    /// The stream ended (or a new line began): passes on what is held of the open line.
    pub fn finish(&mut self, r: &Redactor, out: &mut Vec<(String, bool)>) {
        if self.open && (!self.held.is_empty() || !self.started) {
            let held = std::mem::take(&mut self.held);
            out.push((r.redact(&held).into_owned(), self.started));
        }
        self.held.clear();
        self.open = false;
        self.started = false;
    }
}

mod bytes;
pub use bytes::{ByteRedactor, Piece};

#[cfg(test)]
mod tests;
