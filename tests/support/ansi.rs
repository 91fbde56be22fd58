//! Terminal colour codes out of a log: tracing colours its output even into a file. Shared by
//! the test harness and the benchmark, which both read server logs.

/// `text` without its `ESC [ ... m` sequences.
pub fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the escape sequence.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
