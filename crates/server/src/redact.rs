//! Secrets that must never reach a log line, and the writer that cuts them
//! out of everything Tollgate logs.
//!
//! Why a writer and not care at each call site: the MCP SDK logs what
//! upstream servers send (notifications, stream errors, at `debug` whole
//! results), and an upstream can echo the credential Tollgate injected.
//! Scrubbing the finished line catches every path, ours and the SDK's.
//!
//! Invariant: every injected upstream secret and the admin token are
//! registered before the first upstream is started.

use std::io::Write;
use std::sync::RwLock;

/// Longest first, so a secret that contains another is cut whole.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Cut every secret out of `text`, raw or JSON-escaped (a secret inside a
/// string that is itself JSON text). Secrets shorter than 4 characters are
/// not registered: they would cut ordinary words.
pub fn cut(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let escapes = s.chars().any(|c| c == '"' || c == '\\' || c.is_control());
        if !escapes && !out.contains(s.as_str()) {
            continue;
        }
        out = out.replace(s.as_str(), "[redacted]");
        let escaped = serde_json::to_string(s).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        if escaped != s {
            out = out.replace(escaped, "[redacted]");
        }
    }
    out
}

/// Add secrets to what log lines are scrubbed of.
pub fn register(secrets: impl IntoIterator<Item = String>) {
    let Ok(mut all) = SECRETS.write() else {
        return;
    };
    all.extend(secrets.into_iter().filter(|s| s.len() >= 4));
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
}

/// `text` with every registered secret cut out.
pub fn scrub(text: &str) -> String {
    match SECRETS.read() {
        Ok(all) if !all.is_empty() => cut(text, &all),
        Ok(_) => text.to_string(),
        // A poisoned lock is a panic elsewhere; drop the line rather than risk it.
        Err(_) => "[log line withheld: secret list unavailable]\n".into(),
    }
}

/// Standard error with every registered secret cut out. The log formatter
/// hands over each event in one `write`, so no secret spans two calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_cut_from_log_lines() {
        register(["log-secret-4711".to_string(), "ab".to_string()]);
        let line = r#"received notification {"msg": "key=log-secret-4711"} ab"#;
        assert_eq!(
            scrub(line),
            r#"received notification {"msg": "key=[redacted]"} ab"#
        );
        // JSON-escaped forms too.
        let secrets = vec![r#"q"uote"#.to_string()];
        assert_eq!(cut(r#"{"k":"q\"uote"}"#, &secrets), r#"{"k":"[redacted]"}"#);
    }
}
