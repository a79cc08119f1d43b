//! The README's walkthrough is executable documentation: this test runs its
//! shell blocks, in document order and unmodified, in one bash shell next to a
//! fresh `tollgate serve`, and compares what each block prints with the sample
//! output the README shows after it.
//!
//! The convention, also stated in a comment at the top of the README's
//! walkthrough:
//!
//! - Only what lies between a `<!-- walkthrough: begin -->` line and the next
//!   `<!-- walkthrough: end -->` line counts (several such ranges may follow
//!   one another; they are one script).
//! - Every ```` ```sh ```` block in a range is run, unless the line right
//!   before its fence starts with `<!-- walkthrough: skip` (e.g. `tollgate
//!   serve` itself, which this test starts). Other shell fences (`bash`,
//!   `console`, …) are refused in a range, so nothing a reader runs escapes
//!   the test.
//! - The ```` ```json ```` and ```` ```text ```` blocks right after a run
//!   block (nothing but blank lines between) are its expected output, compared
//!   line by line (blank lines ignored) after replacing ids (`task_…`,
//!   `apr_…`), keys and join tokens (`tgr_…`), JWTs, timestamps, 64-digit hex
//!   and every number by placeholders on both sides. In an expected line `…`
//!   stands for any text; a line of just `…` for any number of lines.
//! - Every block's output must end with a newline (or the reader's prompt
//!   lands on its last line).
//!
//! The script runs under `set -euo pipefail` in a temporary working directory
//! holding the server's `tollgate-data`, with `TOLLGATE_ADDR` pointing at the
//! server (the walkthrough's `TG` defaults to it) and the binary's directory
//! first on `PATH`. `TOLLGATE_WALKTHROUGH_PRINT=1` prints every block's output,
//! to refresh the README's samples after a deliberate change.

use crate::harness::{bin, Server};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- walkthrough: begin -->";
const END: &str = "<!-- walkthrough: end -->";
const SKIP: &str = "<!-- walkthrough: skip";
const MARK: &str = "@@walkthrough-block ";
/// Sections that must hold run blocks; a range that lost one of them would
/// silently test less.
const SECTIONS: [&str; 7] = [
    "## Walkthrough: the reference scenario",
    "### An approver's day",
    "### The agent's side",
    "### Step 5: two distinct approvers, or one denial",
    "## Chain rules (step 6)",
    "## Delegation and the end of the incident (steps 7–9)",
    "## AuthZEN",
];

/// One ```sh block to run, and the output the README shows for it.
struct Block {
    /// 1-based line of its opening fence in README.md.
    line: usize,
    code: Vec<String>,
    expected: Vec<String>,
}

/// The run blocks of the README's walkthrough ranges, and the headings of
/// the sections they are in.
fn extract(readme: &str) -> (Vec<Block>, Vec<String>) {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks: Vec<Block> = Vec::new();
    let mut headings: Vec<String> = Vec::new();
    let mut heading = String::new();
    let mut in_range = false;
    // Whether an output block here would belong to the last run block.
    let mut attach = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            let lang = info.trim();
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                body.push(lines[i].to_string());
                i += 1;
            }
            assert!(i < lines.len(), "README.md:{}: unclosed fence", start + 1);
            i += 1;
            if !in_range {
                continue;
            }
            let skipped = start > 0 && lines[start - 1].trim().starts_with(SKIP);
            match lang {
                "sh" if skipped => attach = false,
                "sh" => {
                    if headings.last() != Some(&heading) {
                        headings.push(heading.clone());
                    }
                    blocks.push(Block {
                        line: start + 1,
                        code: body,
                        expected: Vec::new(),
                    });
                    attach = true;
                }
                "json" | "text" if attach => {
                    if let Some(b) = blocks.last_mut() {
                        b.expected.extend(body);
                    }
                }
                "bash" | "shell" | "console" | "zsh" | "shell-session" => panic!(
                    "README.md:{}: a ```{lang} block in the walkthrough; use ```sh (run) \
                     or mark it with {SKIP} -->",
                    start + 1
                ),
                _ => attach = false,
            }
            continue;
        }
        if trimmed.starts_with('#') {
            heading = trimmed.to_string();
        }
        if trimmed == BEGIN {
            assert!(!in_range, "README.md:{}: nested {BEGIN}", i + 1);
            in_range = true;
        } else if trimmed == END {
            assert!(in_range, "README.md:{}: {END} without a begin", i + 1);
            in_range = false;
            attach = false;
        } else if in_range && !trimmed.is_empty() {
            attach = false;
        }
        i += 1;
    }
    assert!(!in_range, "README.md: {BEGIN} without an end");
    (blocks, headings)
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `2026-11-22T04:45:29Z` (with optional fractional seconds) at `i`: its length.
fn timestamp_at(s: &[char], i: usize) -> Option<usize> {
    const SHAPE: &str = "dddd-dd-ddTdd:dd:dd";
    let fits = SHAPE
        .chars()
        .enumerate()
        .all(|(k, p)| match (p, s.get(i + k)) {
            ('d', Some(c)) => c.is_ascii_digit(),
            (p, Some(c)) => p == *c,
            (_, None) => false,
        });
    if !fits {
        return None;
    }
    let mut j = i + SHAPE.len();
    if s.get(j) == Some(&'.') {
        j += 1;
        while s.get(j).is_some_and(char::is_ascii_digit) {
            j += 1;
        }
    }
    (s.get(j) == Some(&'Z')).then_some(j + 1 - i)
}

fn normalize_word(w: &str) -> String {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    if w.len() == 64 && hex(w) {
        return "<hex>".into();
    }
    let b = w.as_bytes();
    if b.len() >= 4 && w.starts_with("tg") && b[2].is_ascii_lowercase() && b[3] == b'_' {
        return format!("{}<key>", &w[..4]);
    }
    if let Some((prefix, rest)) = w.split_once('_') {
        if !prefix.is_empty()
            && prefix.chars().all(|c| c.is_ascii_lowercase())
            && rest.len() >= 16
            && hex(rest)
        {
            return format!("{prefix}_<id>");
        }
    }
    let mut out = String::new();
    let mut in_number = false;
    for c in w.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// What is compared: ids, keys, tokens, timestamps, hashes and numbers
/// replaced by placeholders.
fn normalize(line: &str) -> String {
    let s: Vec<char> = line.trim_end().chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < s.len() {
        if let Some(n) = timestamp_at(&s, i) {
            out.push_str("<ts>");
            i += n;
        } else if is_word(s[i]) {
            let start = i;
            while i < s.len() && is_word(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            if word.starts_with("eyJ") {
                while i < s.len() && (is_word(s[i]) || s[i] == '.') {
                    i += 1;
                }
                out.push_str("<jwt>");
            } else {
                out.push_str(&normalize_word(&word));
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// `pattern` (with `…` matching any text) matches all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '…' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '…')
}

/// Expected lines (a line of just `…`: any number of lines) match all of
/// `actual`.
fn lines_match(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e.trim() == "…" => {
            (0..=actual.len()).any(|k| lines_match(rest, &actual[k..]))
        }
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| glob(e, a) && lines_match(rest, more)),
    }
}

fn nonblank(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| normalize(&l))
        .collect()
}

fn script(blocks: &[Block]) -> String {
    let mut s = String::from("set -euo pipefail\nexec 2>&1\n");
    for (n, b) in blocks.iter().enumerate() {
        s.push_str(&format!("printf '{MARK}{n}\\n'\n"));
        for l in &b.code {
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str(&format!("printf '{MARK}end\\n'\n"));
    s
}

/// Each block's output, split at the markers; `Err` names a block whose
/// output did not end with a newline, and that output's last line.
fn split_output(out: &str, blocks: usize) -> Result<Vec<String>, (Option<usize>, String)> {
    let mut chunks = vec![String::new(); blocks];
    let mut current: Option<usize> = None;
    for piece in out.split_inclusive('\n') {
        if let Some(at) = piece.find(MARK) {
            if at > 0 {
                return Err((current, piece[..at].to_string()));
            }
            let id = piece[at + MARK.len()..].trim();
            current = id.parse().ok();
            continue;
        }
        if let Some(n) = current {
            chunks[n].push_str(piece);
        }
    }
    Ok(chunks)
}

fn show(b: &Block) -> String {
    let head: Vec<&str> = b.code.iter().map(String::as_str).take(3).collect();
    format!("README.md:{}:\n    {}", b.line, head.join("\n    "))
}

#[test]
fn walkthrough_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (blocks, headings) = extract(&readme);
    for section in SECTIONS {
        assert!(
            headings.iter().any(|h| h == section),
            "no walkthrough block runs in README.md's {section:?}; blocks run in {headings:?}"
        );
    }
    assert!(blocks.len() >= 25, "only {} blocks", blocks.len());

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&dir.path().join("tollgate-data"), &[]);
    let script_path = dir.path().join("walkthrough.sh");
    std::fs::write(&script_path, script(&blocks)).unwrap();
    let out_path = dir.path().join("walkthrough.out");
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script_path)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("TOLLGATE_ADDR", &server.addr)
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_DATA")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the walkthrough did not finish in 120 s; its output:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap();
    eprintln!(
        "walkthrough: {} blocks ran in {:.1} s",
        blocks.len(),
        started.elapsed().as_secs_f64()
    );

    let chunks = split_output(&out, blocks.len()).unwrap_or_else(|(n, last)| {
        let at = n.map_or("before the first block".into(), |n| show(&blocks[n]));
        panic!(
            "the output of the block at {at}\ndoes not end with a newline: the reader's prompt \
             would sit on its last line, {last:?}"
        )
    });
    if std::env::var_os("TOLLGATE_WALKTHROUGH_PRINT").is_some() {
        for (b, chunk) in blocks.iter().zip(&chunks) {
            eprintln!("=== {}\n{chunk}", show(b));
        }
    }
    if !status.success() || !out.ends_with(&format!("{MARK}end\n")) {
        let failed = out
            .lines()
            .filter_map(|l| l.strip_prefix(MARK))
            .filter_map(|n| n.parse::<usize>().ok())
            .next_back();
        let at = failed.map_or("before the first block".into(), |n| show(&blocks[n]));
        panic!(
            "the walkthrough failed ({status}) in the block at {at}\nits output:\n{}",
            failed.map_or(out.as_str(), |n| chunks[n].as_str())
        );
    }

    let mut drift = Vec::new();
    for (b, chunk) in blocks.iter().zip(&chunks) {
        if b.expected.is_empty() {
            continue;
        }
        let expected = nonblank(b.expected.iter().cloned());
        let actual = nonblank(chunk.lines().map(str::to_string));
        if !lines_match(&expected, &actual) {
            drift.push(format!(
                "{}\n  README shows:\n    {}\n  it printed:\n    {}",
                show(b),
                b.expected.join("\n    "),
                chunk.trim_end().replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "{} block(s) of the walkthrough print something else than README.md shows \
         (compared with ids, keys, timestamps, hashes and numbers ignored):\n\n{}",
        drift.len(),
        drift.join("\n\n")
    );
}

#[test]
fn walkthrough_comparison_ignores_only_what_varies() {
    let e = |s: &str| normalize(s);
    assert_eq!(
        e(
            r#"{"task_id":"task_01a2015be5da7445b36a8f6ede67aee5","expires_at":"2026-11-22T03:50:29Z"}"#
        ),
        r#"{"task_id":"task_<id>","expires_at":"<ts>"}"#
    );
    assert_eq!(e("key:      tgr_MZQp6BSo-x_y"), "key:      tgr_<key>");
    assert_eq!(e(r#""svid":"eyJ0eX.eyJz.c2ln""#), r#""svid":"<jwt>""#);
    assert_eq!(
        e("voted approve: now pending (1/2 approvals)"),
        "voted approve: now pending (N/N approvals)"
    );
    assert!(glob(
        &e(r#"{"join_token":"tgj__O-j…","x":1}"#),
        &e(r#"{"join_token":"tgj_abcdef","x":2}"#)
    ));
    assert!(!glob(
        &e(r#"{"decision":"allow"}"#),
        &e(r#"{"decision":"deny"}"#)
    ));
    let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&l(&["a", "…", "d"]), &l(&["a", "b", "c", "d"])));
    assert!(lines_match(&l(&["a", "…"]), &l(&["a"])));
    assert!(!lines_match(&l(&["a", "d"]), &l(&["a", "b", "d"])));
    assert!(!lines_match(&l(&["a", "b"]), &l(&["a"])));
}
