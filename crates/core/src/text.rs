//! What identifiers sent by callers may contain.
//!
//! Ids (incident, task, agent, resource, action, names) end up in audit
//! entries, CLI output, log lines, web pages and Cedar entity ids. Rather
//! than trust every output to escape them, the edge refuses ids that carry
//! anything but visible text: no control characters (ESC, BEL, CR, LF, NUL,
//! C1), no invisible format characters that reorder or hide text (bidi
//! overrides and isolates, zero-width marks, BOM), at most [`MAX_ID_BYTES`].
//! Free text (intent, reasons, parameters) is not restricted here; every
//! human-readable output escapes it instead.
//!
//! The serde helpers let request structs validate while deserializing, so a
//! bad id is a 400 before any handler code runs.

use serde::{Deserialize, Deserializer};

/// Longest id accepted anywhere.
pub const MAX_ID_BYTES: usize = 256;

/// Whether `c` hides, reorders or controls text rather than showing it:
/// controls, format characters (bidi marks, overrides and isolates,
/// zero-width and invisible operators, BOM, interlinear annotation, tags),
/// variation selectors, fillers that render as nothing, line and paragraph
/// separators, private-use code points and noncharacters. A lookalike id
/// such as `prod-db` plus an invisible tag would read as `prod-db` to an
/// approver while matching no policy written for `prod-db`.
pub fn is_invisible_or_control(c: char) -> bool {
    let u = c as u32;
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}')
        || (0xE000..=0xF8FF).contains(&u)
        || (0xE0000..=0xE0FFF).contains(&u)
        || u >= 0xF0000
        || (0xFDD0..=0xFDEF).contains(&u)
        || (u & 0xFFFE) == 0xFFFE
        || (0x1D173..=0x1D17A).contains(&u)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_BYTES} bytes (got {0})")]
    TooLong(usize),
    #[error("must not contain control or invisible characters (found U+{0:04X} at byte {1})")]
    Character(u32, usize),
    #[error("must not start or end with white space")]
    Padded,
}

/// Check one id. The error names the offending code point, never echoes the id.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.trim().is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| is_invisible_or_control(*c)) {
        return Err(IdError::Character(c as u32, at));
    }
    if id.trim() != id {
        return Err(IdError::Padded);
    }
    Ok(())
}

/// `deserialize_with` for a `String` id.
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_id(&s).map_err(|e| serde::de::Error::custom(format!("id {e}")))?;
    Ok(s)
}

/// `deserialize_with` for an `Option<String>` id (pair with `#[serde(default)]`).
pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    if let Some(s) = &s {
        check_id(s).map_err(|e| serde::de::Error::custom(format!("id {e}")))?;
    }
    Ok(s)
}

/// `deserialize_with` for a list of ids.
pub fn ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for (i, s) in v.iter().enumerate() {
        check_id(s).map_err(|e| serde::de::Error::custom(format!("id #{i} {e}")))?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ids_pass_and_the_rest_is_refused() {
        for ok in [
            "INC-4711",
            "web-1",
            "spiffe://acme.test/agent/x/i-1",
            "Ünïcode ✓",
            "a b",
        ] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
        let cases: [(&str, IdError); 8] = [
            ("", IdError::Empty),
            ("   ", IdError::Empty),
            ("a\u{1b}[2J", IdError::Character(0x1b, 1)),
            ("a\rb", IdError::Character(0x0d, 1)),
            ("a\nb", IdError::Character(0x0a, 1)),
            ("\u{7}", IdError::Character(0x07, 0)),
            ("web\u{202e}1", IdError::Character(0x202e, 3)),
            ("x\u{9b}31m", IdError::Character(0x9b, 1)),
        ];
        for (id, want) in cases {
            assert_eq!(check_id(id), Err(want), "{id:?}");
        }
        assert_eq!(check_id(&"a".repeat(257)), Err(IdError::TooLong(257)));
        for hidden in [
            "prod-db\u{E0062}",
            "x\u{061C}",
            "x\u{FE0F}",
            "x\u{180E}",
            "x\u{3164}",
            "x\u{E000}",
            "x\u{FFFF}",
            "x\u{2066}",
        ] {
            assert!(
                matches!(check_id(hidden), Err(IdError::Character(..))),
                "{hidden:?}"
            );
        }
        assert_eq!(check_id(" web-1"), Err(IdError::Padded));
        assert_eq!(check_id("web-1 "), Err(IdError::Padded));
        assert_eq!(check_id(&"a".repeat(256)), Ok(()));
    }

    #[test]
    fn serde_helpers_refuse_while_deserializing() {
        #[derive(Deserialize, Debug)]
        struct Body {
            #[serde(deserialize_with = "id")]
            a: String,
            #[serde(default, deserialize_with = "opt_id")]
            b: Option<String>,
            #[serde(default, deserialize_with = "ids")]
            c: Vec<String>,
        }
        let ok: Body = serde_json::from_str(r#"{"a": "x", "c": ["y"]}"#).unwrap();
        assert_eq!((ok.a.as_str(), ok.b, ok.c.len()), ("x", None, 1));
        for bad in [
            r#"{"a": "x\u001b"}"#,
            r#"{"a": "x", "b": "\u0007"}"#,
            r#"{"a": "x", "c": ["ok", "a\rb"]}"#,
        ] {
            let e = serde_json::from_str::<Body>(bad).unwrap_err().to_string();
            assert!(e.contains("control or invisible"), "{bad}: {e}");
        }
    }
}
