//! Everything the CLI prints goes through here, because much of it is text
//! an agent wrote (intent, ids, parameters, reasons, the server's error
//! messages quoting them). Printed raw, an ESC sequence could rewrite the
//! operator's screen, a CR could overwrite a line with a forged one, and a
//! bidi override could reverse what a line appears to say.
//!
//! Two layers: [`printable`] escapes a field completely (newlines too, so a
//! field cannot forge a line of its own), and the `println!` family of this
//! crate is redefined in `main.rs` to pass every finished line through
//! [`escape_controls`], which keeps only the line breaks the CLI itself
//! writes. The second layer is the net for any field the first one missed.

use std::borrow::Cow;
use std::io::Write;

/// Whether `c` must never reach a terminal raw: C0 and C1 controls, DEL, and
/// the invisible format characters that reorder or hide text (bidi
/// embeddings, overrides and isolates, zero-width marks, BOM).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}')
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// `s` with every unsafe character, line breaks included, shown as an escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every unsafe character escaped except `\n`, for text whose line
/// structure the CLI made itself.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c != '\n' && is_unsafe(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Write `text` to stdout (or stderr) with controls escaped. A closed pipe
/// (`tollgate audit tail | head`) ends the output quietly, as `println!` would not.
pub fn emit(to_stderr: bool, text: &str) {
    let safe = escape_controls(text);
    let _ = if to_stderr {
        std::io::stderr().lock().write_all(safe.as_bytes())
    } else {
        std::io::stdout().lock().write_all(safe.as_bytes())
    };
}

/// A writer that escapes controls (all but `\n`) in everything written
/// through it, for output built with `write!` (exports, the timeline).
pub struct SafeWriter<W: Write>(pub W);

impl<W: Write> Write for SafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `write!` hands over whole formatted pieces; a piece that is not
        // UTF-8 is shown lossily rather than passed through.
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(escape_controls(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A one-line progress count on stderr while something long runs (a
/// verification of millions of entries), redrawn at most twice a second and
/// cleared at the end. Only on a terminal: piped or logged output stays
/// exactly the result. The text is the CLI's own, never an agent's.
pub struct Progress {
    label: &'static str,
    on_terminal: bool,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Self {
            label,
            on_terminal: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    /// `done` so far.
    pub fn tick(&mut self, done: u64) {
        if !self.on_terminal || self.last.elapsed() < std::time::Duration::from_millis(500) {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}: {done}…", self.label);
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            // Erase the progress line so the result starts clean.
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        let hostile = "ok\x1b[2J\x07\rFORGED\u{202e}txt.exe\u{9b}31m\u{200b}";
        let p = printable(hostile);
        assert!(!p.chars().any(is_unsafe), "{p}");
        assert_eq!(
            p,
            "ok\\u{1b}[2J\\u{7}\\rFORGED\\u{202e}txt.exe\\u{9b}31m\\u{200b}"
        );
        assert_eq!(printable("line\nforged"), "line\\nforged");
        assert_eq!(escape_controls("line\nnext\x1b"), "line\nnext\\u{1b}");
        assert!(matches!(printable("plain text é ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_escapes_what_passes_through() {
        let mut w = SafeWriter(Vec::new());
        writeln!(w, "a\x1b]0;title\x07b").unwrap();
        assert_eq!(String::from_utf8(w.0).unwrap(), "a\\u{1b}]0;title\\u{7}b\n");
    }
}
