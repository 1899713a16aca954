//! The conventions and the architecture that ARCHITECTURE.md and docs/http-limits.md state,
//! checked against the code:
//!
//! - every Rust file opens with a `//!` doc comment saying what it owns;
//! - crate edges (from `cargo metadata`) follow the layering in ARCHITECTURE.md's code map
//!   ("Crates depend one way, top on bottom: …"); `sluice-testkit` and `sluice-chaos` are
//!   dev-dependencies only;
//! - only `sluice-server` and `sluice-cli` depend on HTTP server crates (axum, hyper, tower),
//!   only `sluice-lake` and `sluice-warehouse` on the Arrow family, and DataFusion and Arrow are
//!   reached through `deltalake`'s re-exports, so the family cannot drift;
//! - `process::exit` appears only in `sluice-cli`: libraries report, the binary exits;
//! - `sluice-server`'s modules have no cycles (edges are the `crate::…` paths in non-test code);
//! - the defaults of the HTTP limits in code equal the table in docs/http-limits.md;
//! - no production function (`crates/*/src/`, outside `#[cfg(test)]` items, `src/tests/` and the
//!   CLI's benchmark drivers) is longer than 100 lines, counted from its `fn` line to its
//!   closing brace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose names carry HTTP server types.
const HTTP_CRATES: &[&str] = &["axum", "hyper", "hyper-util", "tower", "tower-http"];
/// Who may depend on them.
const HTTP_USERS: &[&str] = &["sluice-server", "sluice-cli"];
/// The Arrow family.
const ARROW_CRATES: &[&str] = &[
    "deltalake",
    "datafusion",
    "datafusion-postgres",
    "arrow",
    "parquet",
    "object_store",
];
/// Who may depend on it.
const ARROW_USERS: &[&str] = &["sluice-lake", "sluice-warehouse"];
/// Where the HTTP limit defaults live, per config section of docs/http-limits.md.
const LIMIT_SOURCES: &[(&str, &str)] = &[
    ("listener", "crates/sluice-server/src/listen.rs"),
    ("collector", "crates/sluice-collector/src/config.rs"),
];

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Every problem found, one line each.
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for top in ["crates", "xtask"] {
        collect(&root.join(top), &mut files)?;
    }
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
        problems.extend(file_problems(&rel, &text));
    }
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md"))?;
    let layering = layering(&architecture)?;
    problems.extend(dependency_problems(root, &layering)?);
    problems.extend(server_cycles(&root.join("crates/sluice-server/src"))?);
    let limits = std::fs::read_to_string(root.join("docs/http-limits.md"))?;
    problems.extend(limit_problems(root, &limits)?);
    Ok(problems)
}

fn file_problems(rel: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !text.trim_start().starts_with("//!") {
        out.push(format!("{rel}: does not open with a //! comment"));
    }
    // The needles are split so that this file does not match itself.
    if text.contains(concat!("use ", "datafusion::")) || text.contains(concat!("use ", "arrow::")) {
        out.push(format!(
            "{rel}: use the deltalake::{{datafusion, arrow}} re-exports"
        ));
    }
    let in_cli = rel.starts_with("crates/sluice-cli/") || rel.starts_with("xtask/");
    if !in_cli && code_lines(text).any(|l| l.contains(concat!("process", "::exit"))) {
        out.push(format!(
            "{rel}: only the CLI exits the process; return an error instead"
        ));
    }
    out.extend(long_functions(rel, text));
    out
}

/// The lines of `text` that are code: comments dropped, and nothing from the first
/// `#[cfg(test)]` on (test modules sit at the end of a file).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| l.split("//").next().unwrap_or(""))
}

/// Longest a production function may be, in lines from its `fn` line to its closing brace: a
/// longer one reads as its phases, each a function of its own.
const MAX_FN_LINES: usize = 100;

/// Benchmark drivers (`crates/sluice-cli/src/bench*.rs` and everything in `sluice-bench`),
/// left out of the function length check: each of their functions scripts one measurement from
/// setup to report, and none runs in production.
const BENCH_DRIVERS: [(&str, &str); 2] = [
    ("crates/sluice-cli/src/", "bench"),
    ("crates/sluice-bench/src/", ""),
];

/// The functions of a production file (`crates/*/src/`, not `src/tests/` nor a benchmark
/// driver) longer than [`MAX_FN_LINES`], outside `#[cfg(test)]` items.
fn long_functions(rel: &str, text: &str) -> Vec<String> {
    let parts: Vec<&str> = rel.split('/').collect();
    let production = parts.len() > 3 && parts[0] == "crates" && parts[2] == "src";
    let bench = BENCH_DRIVERS.iter().any(|(dir, prefix)| {
        rel.strip_prefix(dir)
            .is_some_and(|f| !f.contains('/') && f.starts_with(prefix))
    });
    if !production || parts[3] == "tests" || bench {
        return Vec::new();
    }
    function_lengths(text)
        .into_iter()
        .filter(|(_, _, lines)| *lines > MAX_FN_LINES)
        .map(|(line, name, lines)| {
            format!(
                "{rel}:{line}: fn {name} is {lines} lines long (at most {MAX_FN_LINES}): split it \
                 into functions named after its phases"
            )
        })
        .collect()
}

/// Every function with a body in `text`, outside `#[cfg(test)]` items: the line its `fn` is on
/// (from 1), its name, and its length in lines up to its closing brace (by brace matching over
/// the code with comments and literals blanked).
fn function_lengths(text: &str) -> Vec<(usize, String, usize)> {
    let code = blank_comments_and_literals(text);
    let bytes = code.as_bytes();
    let line_of = |pos: usize| bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut test_items = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("#[cfg(test)]") {
        let start = from + found;
        from = start + "#[cfg(test)]".len();
        if let Some(open) = item_body(bytes, from) {
            test_items.push(start..=matching_brace(bytes, open));
        }
    }
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("fn ") {
        let pos = from + found;
        from = pos + "fn ".len();
        if (pos > 0 && is_ident(bytes[pos - 1])) || test_items.iter().any(|r| r.contains(&pos)) {
            continue;
        }
        let name: String = code[from..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if let (false, Some(open)) = (name.is_empty(), item_body(bytes, from)) {
            let close = matching_brace(bytes, open);
            out.push((line_of(pos), name, line_of(close) - line_of(pos) + 1));
        }
    }
    out
}

/// Where the body of the item whose head starts at `from` opens: the first `{` outside
/// parentheses and brackets, unless a `;` ends the item first (a declaration).
fn item_body(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match b {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b'{' if depth <= 0 => return Some(i),
            b';' if depth <= 0 => return None,
            _ => {}
        }
    }
    None
}

/// The brace that closes the one at `open` (the last byte when none does).
fn matching_brace(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    bytes.len().saturating_sub(1)
}

/// `text` with its comments and the insides of its string and char literals turned into spaces
/// (newlines kept, so lines still count), leaving only the code's own braces.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match literal_len(&chars, i) {
            0 => {
                out.push(chars[i]);
                i += 1;
            }
            len => {
                let end = (i + len).min(chars.len());
                out.extend(
                    chars[i..end]
                        .iter()
                        .map(|&c| if c == '\n' { c } else { ' ' }),
                );
                i = end;
            }
        }
    }
    out
}

/// The length of the comment or the string, raw string or char literal that starts at `i`; 0
/// when none does (a lifetime is not a literal).
fn literal_len(c: &[char], i: usize) -> usize {
    let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
    let after_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    match (at(0), at(1)) {
        ('/', '/') => c[i..]
            .iter()
            .position(|&ch| ch == '\n')
            .unwrap_or(c.len() - i),
        ('/', '*') => {
            let (mut depth, mut k) = (0, 0);
            while i + k < c.len() {
                match (at(k), at(k + 1)) {
                    ('/', '*') => (depth, k) = (depth + 1, k + 2),
                    ('*', '/') if depth == 1 => return k + 2,
                    ('*', '/') => (depth, k) = (depth - 1, k + 2),
                    _ => k += 1,
                }
            }
            k
        }
        ('"', _) => {
            let mut k = 1;
            while i + k < c.len() && at(k) != '"' {
                k += if at(k) == '\\' { 2 } else { 1 };
            }
            k + 1
        }
        // `'\n'`, `'\''`, `'\u{..}'`: the escaped character is at 2, the closing quote after.
        ('\'', '\\') => c[(i + 3).min(c.len())..]
            .iter()
            .position(|&ch| ch == '\'')
            .map_or(0, |p| p + 4),
        ('\'', _) if at(2) == '\'' => 3,
        ('r', '"' | '#') | ('b', 'r') if !after_ident => raw_string_len(c, i),
        _ => 0,
    }
}

/// The length of the raw string (`r"…"`, `r#"…"#`, `br"…"`) at `i`; 0 when it is none (`r#` of
/// a raw identifier).
fn raw_string_len(c: &[char], i: usize) -> usize {
    let open = i + if c[i] == 'b' { 2 } else { 1 };
    let hashes = c[open.min(c.len())..]
        .iter()
        .take_while(|&&ch| ch == '#')
        .count();
    if c.get(open + hashes) != Some(&'"') {
        return 0;
    }
    let mut j = open + hashes + 1;
    while j < c.len() {
        let closes =
            c[j] == '"' && c[j + 1..].iter().take_while(|&&ch| ch == '#').count() >= hashes;
        if closes {
            return j + 1 + hashes - i;
        }
        j += 1;
    }
    c.len() - i
}

/// The documented crate graph as "may depend on" pairs (transitively closed), from the line
/// "Crates depend one way, top on bottom: cli → server → {warehouse → lake, …} → journal →
/// event." Names are crate names without `sluice-`.
fn layering(architecture: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    const INTRO: &str = "Crates depend one way, top on bottom:";
    let start = architecture
        .find(INTRO)
        .ok_or_else(|| anyhow::anyhow!("ARCHITECTURE.md: no line {INTRO:?}"))?
        + INTRO.len();
    let rest = &architecture[start..];
    let end = rest
        .find(". ")
        .or_else(|| rest.find(".\n"))
        .ok_or_else(|| anyhow::anyhow!("ARCHITECTURE.md: the layering does not end with '.'"))?;
    let text = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
    let mut edges = BTreeSet::new();
    let (_, _) = chain(&text, &mut edges)?;
    // Transitive closure: a crate may use anything below it.
    loop {
        let more: Vec<(String, String)> = edges
            .iter()
            .flat_map(|(a, b)| {
                edges
                    .iter()
                    .filter(move |(c, _)| c == b)
                    .map(move |(_, d)| (a.clone(), d.clone()))
            })
            .filter(|e| !edges.contains(e))
            .collect();
        if more.is_empty() {
            return Ok(edges);
        }
        edges.extend(more);
    }
}

/// Parses `a → b → {c → d, e} → f`, adding its edges; returns its top and bottom names.
fn chain(
    text: &str,
    edges: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut tops = Vec::new();
    let mut bottoms: Vec<String> = Vec::new();
    for (i, step) in split_top(text, '→').into_iter().enumerate() {
        let step = step.trim();
        let (step_tops, step_bottoms) = match step.strip_prefix('{') {
            Some(inner) => {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow::anyhow!("unbalanced braces in {step:?}"))?;
                let (mut t, mut b) = (Vec::new(), Vec::new());
                for part in split_top(inner, ',') {
                    let (pt, pb) = chain(part, edges)?;
                    t.extend(pt);
                    b.extend(pb);
                }
                (t, b)
            }
            None if !step.is_empty() && step.chars().all(|c| c.is_ascii_lowercase()) => {
                (vec![step.to_string()], vec![step.to_string()])
            }
            None => anyhow::bail!("ARCHITECTURE.md: cannot read crate {step:?} in the layering"),
        };
        for b in &bottoms {
            for t in &step_tops {
                edges.insert((b.clone(), t.clone()));
            }
        }
        if i == 0 {
            tops = step_tops;
        }
        bottoms = step_bottoms;
    }
    Ok((tops, bottoms))
}

/// Splits at `sep` outside braces.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Checks every workspace crate's dependencies (from `cargo metadata`) against the layering
/// and the HTTP and Arrow rules.
fn dependency_problems(
    root: &Path,
    layering: &BTreeSet<(String, String)>,
) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut problems = Vec::new();
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if kind == "build" {
                continue;
            }
            let dev = kind == "dev";
            if let Some(problem) = edge_problem(name, dep_name, dev, layering) {
                problems.push(problem);
            }
        }
    }
    Ok(problems)
}

/// Dev-only crates: test tools that other crates may use only as dev-dependencies.
const TEST_TOOLS: [&str; 2] = ["sluice-testkit", "sluice-chaos"];

/// Whether `package` may depend on `dep` (as a dev-dependency when `dev`).
fn edge_problem(
    package: &str,
    dep: &str,
    dev: bool,
    layering: &BTreeSet<(String, String)>,
) -> Option<String> {
    let short = |n: &str| n.strip_prefix("sluice-").map(str::to_string);
    if TEST_TOOLS.contains(&dep) {
        let allowed = dev || TEST_TOOLS.contains(&package);
        return (!allowed).then(|| format!("{package}: {dep} is a dev-dependency only"));
    }
    if !dev && HTTP_CRATES.contains(&dep) && !HTTP_USERS.contains(&package) {
        return Some(format!(
            "{package}: depends on {dep}; HTTP types belong in sluice-server (and the CLI)"
        ));
    }
    if ARROW_CRATES.contains(&dep) && !ARROW_USERS.contains(&package) {
        return Some(format!(
            "{package}: depends on {dep}; the Arrow family belongs in sluice-lake and \
             sluice-warehouse"
        ));
    }
    // A test tool's own edges are outside the layering.
    let (Some(from), Some(to)) = (short(package), short(dep)) else {
        return None;
    };
    if TEST_TOOLS.contains(&package) || layering.contains(&(from.clone(), to.clone())) {
        return None;
    }
    Some(format!(
        "{package}: depends on {dep}, against the layering in ARCHITECTURE.md"
    ))
}

/// Cycles among `sluice-server`'s top-level modules.
fn server_cycles(src: &Path) -> anyhow::Result<Vec<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs"))?;
    let modules: BTreeSet<String> = code_lines(&lib)
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect();
    // `crate::Name` of a re-exported item means the module it comes from.
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    for l in code_lines(&lib) {
        let Some(rest) = l.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            reexports.insert(item.trim().to_string(), module.to_string());
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        collect(&src.join(module), &mut files)?;
        let edges = graph.entry(module.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            for target in crate_paths(&text) {
                let target = if modules.contains(&target) {
                    Some(target)
                } else {
                    reexports.get(&target).cloned()
                };
                if let Some(t) = target.filter(|t| t != module) {
                    edges.insert(t);
                }
            }
        }
    }
    Ok(find_cycle(&graph)
        .map(|c| format!("crates/sluice-server: module cycle {}", c.join(" → ")))
        .into_iter()
        .collect())
}

/// The first segment of every `crate::…` path in the code of `text` (`crate::{a, b::c}` counts
/// `a` and `b`).
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        // `sluice_x::crate::` never happens, but `$crate::` in a macro is not ours either.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(split_top(inner, ',').into_iter().map(|p| ident(p.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A cycle in `graph`, if any, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Compares each row of the limits table whose setting is `<section>.<field>` with the
/// field's value in the section's `Default`.
fn limit_problems(root: &Path, doc: &str) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for row in doc.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(default), Some(setting)) = (cells.get(2), cells.get(3)) else {
            continue;
        };
        let Some((section, field)) = setting.trim_matches('`').split_once('.') else {
            continue;
        };
        let Some((_, file)) = LIMIT_SOURCES.iter().find(|(s, _)| *s == section) else {
            continue;
        };
        let Some(documented) = doc_value(default) else {
            problems.push(format!(
                "docs/http-limits.md: cannot read the default {default:?} of {setting}"
            ));
            continue;
        };
        let source = std::fs::read_to_string(root.join(file))?;
        match code_default(&source, field) {
            Some(v) if v == documented => checked += 1,
            Some(v) => problems.push(format!(
                "docs/http-limits.md: {section}.{field} defaults to {v} in {file}, the table \
                 says {default}"
            )),
            None => problems.push(format!(
                "docs/http-limits.md: no default of {field} found in {file}"
            )),
        }
    }
    if checked == 0 && problems.is_empty() {
        problems.push("docs/http-limits.md: no limit with a setting found".into());
    }
    Ok(problems)
}

/// A documented default in base units (bytes, seconds, a count): "16 MiB", "10 s", "10,000".
fn doc_value(cell: &str) -> Option<u64> {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    let n: u64 = digits.parse().ok()?;
    let unit = cell[cell
        .find(|c: char| !c.is_ascii_digit() && c != ',')
        .unwrap_or(cell.len())..]
        .split_whitespace()
        .next()
        .unwrap_or("");
    Some(match unit {
        "KiB" => n << 10,
        "MiB" => n << 20,
        "GiB" => n << 30,
        _ => n,
    })
}

/// The value of `field: <expr>` inside the first `fn default()` of `source`, in base units:
/// integer literals, `<<`, `*`, and `Duration::from_secs(...)` (as seconds).
fn code_default(source: &str, field: &str) -> Option<u64> {
    let body = &source[source.find("fn default()")?..];
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let expr = line[field.len() + 1..].trim().trim_end_matches(',');
    eval(expr)
}

fn eval(expr: &str) -> Option<u64> {
    let expr = expr.trim();
    if let Some(inner) = expr
        .strip_prefix("Duration::from_secs(")
        .and_then(|e| e.strip_suffix(')'))
    {
        return eval(inner);
    }
    if let Some((a, b)) = expr.split_once("<<") {
        return Some(eval(a)? << eval(b)?);
    }
    if let Some((a, b)) = expr.split_once('*') {
        return Some(eval(a)? * eval(b)?);
    }
    expr.replace('_', "").parse().ok()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "node_modules")
            {
                continue;
            }
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole tidy pass over this workspace.
    #[test]
    fn tidy() {
        let problems = check(&workspace_root()).unwrap();
        assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
    }

    #[test]
    fn long_functions_are_measured_by_their_braces() {
        // Braces in strings, raw strings, chars and comments do not count; lifetimes and array
        // types do not confuse it.
        let line = "    let s = (\"}{\", r#\"}\"#, '}', '\\'', b'{'); // }\n";
        let body = line.repeat(99);
        let sample = [
            "//! A sample.\n",
            "fn short() {\n",
            "}\n",
            "pub(crate) async fn long<'a>(x: [u8; 2]) -> &'a str {\n",
            &body,
            "}\n",
            "fn declared(x: [u8; 2]);\n",
            "/* fn in_a_comment() { */\n",
            "#[cfg(test)]\n",
            "mod tests {\n",
            "    fn long_test() {\n",
            &body,
            &body,
            "    }\n",
            "}\n",
        ]
        .concat();
        assert_eq!(
            function_lengths(&sample),
            [(2, "short".to_string(), 2), (4, "long".to_string(), 101)]
        );
        assert_eq!(
            long_functions("crates/sluice-x/src/lib.rs", &sample),
            [
                "crates/sluice-x/src/lib.rs:4: fn long is 101 lines long (at most 100): split it \
              into functions named after its phases"
            ]
        );
        let shorter = sample.replacen(line, "", 1);
        assert!(long_functions("crates/sluice-x/src/lib.rs", &shorter).is_empty());
        for elsewhere in [
            "crates/sluice-x/tests/it/main.rs",
            "crates/sluice-x/src/tests/mod.rs",
            "crates/sluice-x/benches/b.rs",
            "crates/sluice-cli/src/bench_sustained.rs",
            "crates/sluice-bench/src/chain.rs",
            "xtask/src/tidy.rs",
        ] {
            assert!(long_functions(elsewhere, &sample).is_empty(), "{elsewhere}");
        }
        assert!(!long_functions("crates/sluice-cli/src/send.rs", &sample).is_empty());
    }

    #[test]
    fn the_layering_notation_reads_groups_and_closes_transitively() {
        let edges =
            layering("Crates depend one way, top on bottom: a → {b → c, d} → e. More.").unwrap();
        for (x, y) in [
            ("a", "b"),
            ("a", "c"),
            ("a", "d"),
            ("b", "c"),
            ("c", "e"),
            ("d", "e"),
            ("a", "e"),
        ] {
            assert!(edges.contains(&(x.to_string(), y.to_string())), "{x} → {y}");
        }
        assert!(!edges.contains(&("b".to_string(), "d".to_string())));
        assert!(!edges.contains(&("e".to_string(), "a".to_string())));
        assert!(edge_problem("sluice-e", "sluice-a", false, &edges).is_some());
        assert!(edge_problem("sluice-a", "sluice-e", false, &edges).is_none());
        assert!(edge_problem("sluice-a", "sluice-testkit", false, &edges).is_some());
        assert!(edge_problem("sluice-a", "sluice-testkit", true, &edges).is_none());
        assert!(edge_problem("sluice-a", "axum", false, &edges).is_some());
    }

    #[test]
    fn module_cycles_are_found_through_paths_and_groups() {
        let paths = crate_paths(
            "use crate::{http::AppState, auth};\nlet x = crate::Settings;\n// crate::comment\n#[cfg(test)]\nuse crate::tests_only;",
        );
        assert_eq!(paths, ["http", "auth", "Settings"]);
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        assert_eq!(find_cycle(&g), None);
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    }

    #[test]
    fn limit_values_read_units_and_expressions() {
        assert_eq!(doc_value("16 MiB"), Some(16 << 20));
        assert_eq!(doc_value("10,000"), Some(10_000));
        assert_eq!(doc_value("30 s from the end of the head"), Some(30));
        assert_eq!(doc_value("—"), None);
        assert_eq!(eval("Duration::from_secs(10)"), Some(10));
        assert_eq!(eval("32 << 10"), Some(32 << 10));
        assert_eq!(eval("5_000_000"), Some(5_000_000));
        assert_eq!(eval("24 * 3600"), Some(86_400));
    }
}
