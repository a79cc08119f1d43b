//! Checks on the crate's own source that keep its architecture true:
//! adapters (`api/`, `mcp/`, `console/`) are leaves that nothing else imports, and no
//! function grows past what a reader can hold.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn crate_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&root)
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            Some((rel, std::fs::read_to_string(&p).ok()?))
        })
        .collect()
}

/// Code only: comments and this file's own needles do not count.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| {
        let t = l.trim_start();
        !(t.starts_with("//") || t.starts_with("///") || t.starts_with("//!"))
    })
}

#[test]
fn nothing_outside_the_adapters_imports_them() {
    let mut offences = Vec::new();
    for (file, text) in crate_sources() {
        let adapter =
            file.starts_with("api/") || file.starts_with("mcp/") || file.starts_with("console/");
        // `lib.rs` wires the adapters to the server; this file names them.
        if adapter || file == "lib.rs" || file == "tidy.rs" {
            continue;
        }
        for (n, line) in code_lines(&text).enumerate() {
            if line.contains("crate::api") || line.contains("crate::mcp") {
                offences.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "only lib.rs may reach into api/ or mcp/:\n{}",
        offences.join("\n")
    );
}

/// The crate's top-level modules (a file or directory under `src/`) and the
/// others each names through `crate::…`.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (file, text) in crate_sources() {
        let top = file
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        // `lib.rs` is the wiring (it names everything); this file names modules as data.
        if top == "lib" || top == "tidy" {
            continue;
        }
        let refs = graph.entry(top.clone()).or_default();
        for line in code_lines(&text) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    refs.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, as the path of modules, if there is one.
fn cycle_through(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    from: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

/// The modules form layers: adapters (`api`, `mcp`) over `service` over
/// `state` and the parts it holds. No module reaches, through any chain of
/// imports, back to itself.
#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_through(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The check itself finds a cycle when there is one.
    let mut looped = graph.clone();
    looped
        .entry("state".into())
        .or_default()
        .insert("service".into());
    assert!(cycle_through(&looped, "service").is_some());
}

/// The kinds of audit events are `tollgate_core::EventKind`s, never string
/// literals: a misspelt kind would be a new, undocumented event. Finds
/// `AuditEvent::new(ts, "…"` (the second argument a literal), across lines.
fn literal_kinds(text: &str) -> Vec<usize> {
    let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    let needle = "AuditEvent::new(";
    let mut from = 0;
    while let Some(i) = code[from..].find(needle) {
        let start = from + i + needle.len();
        let mut depth = 0;
        let mut second = None;
        for (j, c) in code[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    second = Some(start + j + 1);
                    break;
                }
                _ => {}
            }
        }
        if second.is_some_and(|k| code[k..].trim_start().starts_with('"')) {
            found.push(code[..start].matches('\n').count() + 1);
        }
        from = start;
    }
    found
}

#[test]
fn audit_event_kinds_are_typed() {
    let mut offences = Vec::new();
    for (file, text) in crate_sources() {
        if file == "tidy.rs" {
            continue;
        }
        for line in literal_kinds(&text) {
            offences.push(format!("{file}: code line {line}"));
        }
    }
    assert!(
        offences.is_empty(),
        "use tollgate_core::EventKind for audit event kinds:\n{}",
        offences.join("\n")
    );
    assert_eq!(literal_kinds("AuditEvent::new(now(), \"x.y\", a)"), vec![1]);
    assert_eq!(
        literal_kinds("AuditEvent::new(\n  now,\n  \"x\",\n)"),
        vec![1]
    );
    assert!(literal_kinds("AuditEvent::new(now, EventKind::Freeze, \"admin\")").is_empty());
}

/// The length of every `fn` (signature to closing brace), for brace-style
/// `rustfmt` output: the body ends at the first line that is the opening
/// line's indentation followed by `}`.
pub(crate) fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let t = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ");
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{indent}}}");
        if let Some(end) = lines[i..].iter().position(|l| l.trim_end() == close) {
            // A declaration without a body (`fn f();`) ends at its `;`.
            let decl_end = lines[i..]
                .iter()
                .position(|l| l.trim_end().ends_with(';') || l.trim_end().ends_with('{'));
            if decl_end.is_some_and(|d| lines[i + d].trim_end().ends_with(';') && d < end) {
                continue;
            }
            out.push((name, i + 1, end + 1));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_120_lines() {
    let mut long = Vec::new();
    for (file, text) in crate_sources() {
        for (name, line, len) in function_lengths(&text) {
            if len > 120 {
                long.push(format!("{file}:{line}: fn {name} is {len} lines"));
            }
        }
    }
    assert!(long.is_empty(), "split these up:\n{}", long.join("\n"));
}

#[test]
fn function_lengths_are_measured() {
    let text = "fn a() {\n    x();\n}\n\n    pub async fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\n";
    let got = function_lengths(text);
    assert_eq!(got, vec![("a".into(), 1, 3), ("b".into(), 5, 5)]);
}
