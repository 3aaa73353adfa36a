//! A bounded tail of a task's output: the last N characters, lines joined by `\n`.

/// Keeps at most a small multiple of `max` characters, and yields the last `max`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    buf: String,
    max: usize,
}

impl Tail {
    pub fn new(max: usize) -> Self {
        Tail {
            buf: String::new(),
            max,
        }
    }

    /// Appends one line (without its terminator).
    pub fn push_line(&mut self, line: &str) {
        if self.max == 0 {
            return;
        }
        if !self.buf.is_empty() {
            self.buf.push('\n');
        }
        self.buf.push_str(line);
        self.trim();
    }

    /// Appends a piece of a line: one that is `continued` goes on the line the previous piece
    /// began (a long line passed on in pieces: nothing is added between them); any other
    /// starts a line of its own.
    pub fn push_piece(&mut self, text: &str, continued: bool) {
        if !continued {
            return self.push_line(text);
        }
        if self.max == 0 {
            return;
        }
        self.buf.push_str(text);
        self.trim();
    }

    /// Trims lazily: only when the buffer holds far more than needed, so appends stay O(line).
    fn trim(&mut self) {
        if self.buf.len() > self.max.saturating_mul(4).saturating_add(4096) {
            let keep = last_chars(&self.buf, self.max).len();
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() || self.max == 0
    }

    /// The last `max` characters of everything pushed.
    pub fn as_str(&self) -> &str {
        last_chars(&self.buf, self.max)
    }

    /// The tail as a payload field: `None` when nothing was written.
    pub fn to_field(&self) -> Option<String> {
        self.field().map(str::to_string)
    }

    /// The text as an optional payload field: absent when nothing was written.
    pub fn field(&self) -> Option<&str> {
        (!self.is_empty()).then(|| self.as_str())
    }
}

/// The longest suffix of `s` of at most `n` bytes that starts on a character boundary.
pub fn last_bytes(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The suffix of `s` holding its last `n` characters.
pub fn last_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &s[i..],
        _ if n == 0 => "",
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_bytes_cuts_on_a_character_boundary() {
        assert_eq!(last_bytes("abcdef", 3), "def");
        assert_eq!(last_bytes("ab", 3), "ab");
        // "é" is two bytes: three bytes from the end fall inside it, so the cut moves forward.
        assert_eq!(last_bytes("aéé", 3), "é");
        assert_eq!(last_bytes("aéé", 4), "éé");
        assert_eq!(last_bytes("abc", 0), "");
    }

    #[test]
    fn keeps_last_characters_across_lines() {
        let mut t = Tail::new(8);
        t.push_line("line1");
        t.push_line("line2");
        assert_eq!(t.as_str(), "e1\nline2");
        let mut short = Tail::new(8);
        short.push_line("0123456789abcdefghij");
        assert_eq!(short.as_str(), "cdefghij");
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(last_chars("héllo", 4), "éllo");
        assert_eq!(last_chars("héllo", 0), "");
        let mut t = Tail::new(3);
        for _ in 0..10_000 {
            t.push_line("ééé");
        }
        assert_eq!(t.as_str(), "ééé");
        assert!(t.buf.len() < 4 * 3 + 4096 + 16);
    }

    #[test]
    fn pieces_of_a_line_join_without_a_newline() {
        let mut t = Tail::new(20);
        t.push_piece("first", false);
        t.push_piece("long-", false);
        t.push_piece("line", true);
        t.push_piece("", true);
        t.push_piece("last", false);
        assert_eq!(t.as_str(), "first\nlong-line\nlast");
        // A long line in many pieces keeps only its last characters.
        let mut long = Tail::new(5);
        long.push_piece("x", false);
        for _ in 0..10_000 {
            long.push_piece("abcdef", true);
        }
        assert_eq!(long.as_str(), "bcdef");
        assert!(long.buf.len() < 5 * 4 + 4096 + 16);
    }

    #[test]
    fn empty_tail_is_no_field() {
        assert_eq!(Tail::new(10).to_field(), None);
        assert_eq!(Tail::new(0).to_field(), None);
    }
}
