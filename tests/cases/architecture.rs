//! The module map as a test: every `crate::` import in `src/` must point to the same layer or a layer
//! above (leaf → vocabulary → plumbing → stages → workers → ops → surface), the imports must form no
//! cycle, and nothing under `src/testbed/` (the sandbox and test clusters, our oracle) may import product
//! code. The layers are the table in README "Development"; a new top-level module must be placed in it.
//!
//! Test code (`#[cfg(test)]` modules) is exempt: a unit test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of `src/` by layer, lowest number first. A module may import modules of its own
/// layer or a lower-numbered one, never a higher one.
///
/// Metrics are split in two because one top-level module sits in one layer: the registry and its record
/// functions (`metrics`) are a leaf, since capture, dispatch and the destinations record into it; the
/// server and probe (`telemetry`) read the control table and judge the flow as `pgcapi status` does, so
/// they sit with the operations.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaf",
        &[
            "lsn", "units", "platform", "report", "error", "shutdown", "metrics",
        ],
    ),
    ("vocabulary", &["identity", "event", "config"]),
    ("plumbing", &["pg", "db", "source", "decode"]),
    ("stages", &["rules", "outbox", "destinations"]),
    ("workers", &["capture", "dispatch"]),
    ("ops", &["ops", "pipeline", "telemetry", "bench", "demo"]),
    ("surface", &["cli"]),
];

/// The oracle: imports nothing from the product.
const ISOLATED: &str = "testbed";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/dispatch/round.rs` → `dispatch`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The file's code without comments, string contents and `#[cfg(test)]` items.
fn product_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the next item: up to the line that closes its first opening brace, or its `;`.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                let code = next.split("//").next().unwrap_or("");
                depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
                opened |= code.contains('{');
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::X` and `crate::{X, Y::…}` in `code`.
fn crate_edges(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `pgcapi_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                out.insert(first_segment(item.trim()));
            }
        } else {
            out.insert(first_segment(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The folders and files of modules declared `#[cfg(test)] mod name;` somewhere in `files`: unit
/// tests kept in their own file (`foo/tests.rs`) are test code like an inline `mod tests { … }`.
fn test_module_paths(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let stem = file.file_stem().unwrap().to_string_lossy();
        let dir = match stem.as_ref() {
            "mod" | "lib" | "main" => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line != "#[cfg(test)]" {
                continue;
            }
            let Some(item) = lines.find(|l| !l.starts_with("#[")) else {
                break;
            };
            let name = item
                .strip_prefix("pub(crate) ")
                .or_else(|| item.strip_prefix("pub(super) "))
                .unwrap_or(item)
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = name {
                out.push(dir.join(format!("{name}.rs")));
                out.push(dir.join(name));
            }
        }
    }
    out
}

/// Every import edge between top-level modules: `(from, to) → files`.
fn edges(src: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let tests = test_module_paths(&files);
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(src, &file);
        if matches!(from.as_str(), "lib" | "main") || tests.iter().any(|t| file.starts_with(t)) {
            continue;
        }
        let code = product_code(&std::fs::read_to_string(&file).unwrap());
        for to in crate_edges(&code) {
            if to != from {
                let name = file.strip_prefix(src).unwrap().display().to_string();
                out.entry((from.clone(), to)).or_default().push(name);
            }
        }
    }
    out
}

/// Edges that break the rules, one line each.
fn violations(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for ((from, to), files) in edges {
        if from == ISOLATED {
            out.push(format!(
                "{from} → {to} ({}): the testbed imports product code",
                files.join(", ")
            ));
            continue;
        }
        if to == ISOLATED {
            // Only the surface (demo and `pgcapi sandbox`) may start the testbed.
            if layer_of(from).is_some_and(|l| l < LAYERS.len() - 2) {
                out.push(format!(
                    "{from} → {to} ({}): only ops and cli may use the testbed",
                    files.join(", ")
                ));
            }
            continue;
        }
        match (layer_of(from), layer_of(to)) {
            (None, _) => out.push(format!(
                "{from}: not in the layer table (tests/cases/architecture.rs)"
            )),
            (_, None) => out.push(format!(
                "{to}: not in the layer table (tests/cases/architecture.rs)"
            )),
            (Some(a), Some(b)) if b > a => out.push(format!(
                "{from} ({}) → {to} ({}) goes up the layers, in {}",
                LAYERS[a].0,
                LAYERS[b].0,
                files.join(", ")
            )),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A cycle among the modules, if any (depth-first search).
fn cycle(edges: &BTreeMap<(String, String), Vec<String>>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(c) = visit(to, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(c) = visit(node, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn imports_go_down_the_layers_only() {
    let found = violations(&edges(&src()));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn imports_form_no_cycle() {
    assert_eq!(cycle(&edges(&src())), None);
}

#[test]
fn the_checker_catches_an_upward_import_a_testbed_import_and_a_cycle() {
    // GIVEN a tree where identity (vocabulary) imports dispatch (workers), the testbed imports config,
    // and rules and outbox import each other
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("identity/mod.rs", "use crate::dispatch::Dispatcher;\n");
    write(
        "testbed/sandbox/mod.rs",
        "use crate::{testbed::cluster, config::Config};\n",
    );
    write("rules.rs", "use crate::outbox;\n");
    write("outbox.rs", "fn f() { crate::rules::x(); }\n");
    write(
        "capture.rs",
        "// crate::cli is only mentioned\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n",
    );
    write(
        "capture/mod.rs",
        "#[cfg(test)]\n#[allow(dead_code)]\nmod checks;\n",
    );
    write("capture/checks.rs", "use crate::testbed::sandbox;\n");
    write("capture/checks/deeper.rs", "use crate::cli;\n");
    // WHEN checked
    let edges = edges(dir.path());
    let found = violations(&edges);
    // THEN each is named, and comments and test modules (inline or in their own files) are not edges
    assert!(
        found
            .iter()
            .any(|v| v.starts_with("identity (vocabulary) → dispatch (workers)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.starts_with("testbed → config")),
        "{found:?}"
    );
    assert!(cycle(&edges).is_some());
    assert!(
        !edges.keys().any(|(from, _)| from == "capture"),
        "{edges:?}"
    );
}
