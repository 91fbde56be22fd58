//! What flip's two line protocols (the handoff manifest, the control socket) share: the
//! `header … end` framing, written by [`Lines`], and the percent codec of their values (a
//! character is written as `%XX` for each byte of its UTF-8 form when the protocol says it must
//! be, and as itself otherwise; each protocol says which characters it escapes, and which bytes
//! it takes as they are when reading).

use std::fmt::Write as _;

/// A message of a line protocol: a header line, lines of words, and `end`.
#[derive(Debug)]
pub(crate) struct Lines(String);

impl Lines {
    /// A message that starts with `header`.
    pub(crate) fn new(header: &str) -> Lines {
        Lines(format!("{header}\n"))
    }

    /// Appends one line (its words already escaped as the protocol wants).
    pub(crate) fn line(&mut self, words: std::fmt::Arguments<'_>) -> &mut Lines {
        let _ = writeln!(self.0, "{words}");
        self
    }

    /// The message, `end` appended.
    pub(crate) fn finish(mut self) -> String {
        self.0.push_str("end\n");
        self.0
    }
}

/// `s` with every character for which `escaped` holds written as `%XX` per byte.
pub(crate) fn encode(s: &str, escaped: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if escaped(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text `s` encodes; `None` when a `%` is not followed by two hex digits, when a byte
/// outside an escape is not one `raw` takes, or when the bytes are not UTF-8.
pub(crate) fn decode(s: &str, raw: impl Fn(u8) -> bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if raw(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_its_header_its_lines_and_end() {
        let mut m = Lines::new("hello");
        m.line(format_args!("a {}", 1)).line(format_args!("b"));
        assert_eq!(m.finish(), "hello\na 1\nb\nend\n");
    }

    #[test]
    fn what_is_escaped_comes_back_and_bad_escapes_are_refused() {
        let all = |_: char| true;
        let none = |_: char| false;
        for s in ["", "plain", "a b%c\n\u{7f}\u{85}é"] {
            assert_eq!(decode(&encode(s, all), |_| false).as_deref(), Some(s));
            assert_eq!(
                decode(&encode(s, |c| c == '%'), |_| true).as_deref(),
                Some(s)
            );
        }
        assert_eq!(encode("a%b", |c| c == '%'), "a%25b");
        assert_eq!(encode("é", all), "%C3%A9");
        assert_eq!(encode("x", none), "x");
        for bad in ["%", "%4", "%+1", "%zz", "%FF"] {
            assert_eq!(decode(bad, |_| true), None, "{bad}");
        }
        assert_eq!(decode("a b", |b| b != b' '), None);
    }
}
