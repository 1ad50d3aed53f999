//! The layering rule of `src/` (docs/architecture.md), checked on the source
//! text: every `crate::…` path (and every `super::…` path that leaves its
//! top-level module) of each file outside comments is an import of one
//! top-level module by another; the imports must be allowed by [`ALLOWED`],
//! and the modules must form no cycle. Also: `sys` uses nothing of ours,
//! `config` only `units` and `sys`, a source never another source, and the
//! old flat paths re-exported by `lib.rs` for users outside the crate
//! (`crate::folder`, `crate::cdr`, ...) are not used inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level module of `src/` may use which (besides itself,
/// `pbx-core` and outside crates). `main.rs` and `lib.rs` are the roots
/// and are not checked.
const ALLOWED: &[(&str, &[&str])] = &[
    ("units", &[]),
    ("logmask", &[]),
    ("cli", &[]),
    ("sys", &[]),
    ("spoolfile", &["sys"]),
    ("config", &["spoolfile", "units", "sys"]),
    ("recording", &["spoolfile", "sys"]),
    ("upload", &["config", "logmask", "spoolfile", "sys"]),
    ("spool", &["sys", "upload"]),
    ("status", &["recording", "spool"]),
    ("control", &[]),
    ("health", &["control", "status", "sys"]),
    (
        "stream",
        &["config", "recording", "status", "sys", "upload"],
    ),
    (
        "delivery",
        &["config", "spool", "spoolfile", "status", "sys", "upload"],
    ),
    (
        "sources",
        &[
            "config",
            "control",
            "health",
            "logmask",
            "recording",
            "spool",
            "status",
            "sys",
            "units",
        ],
    ),
    (
        "daemon",
        &[
            "config",
            "control",
            "delivery",
            "health",
            "logmask",
            "recording",
            "sources",
            "spool",
            "status",
            "stream",
            "sys",
            "units",
        ],
    ),
    (
        "commands",
        &[
            "cli",
            "config",
            "delivery",
            "health",
            "recording",
            "sources",
            "spool",
            "spoolfile",
            "status",
            "sys",
            "units",
        ],
    ),
];

/// Paths `lib.rs` keeps for outside users only.
const COMPAT_ALIASES: &[&str] = &[
    "folder",
    "cdr",
    "siprec",
    "sniff",
    "media",
    "rtp_ports",
    "srtp",
    "admission",
    "sip_guard",
    "sip_tls",
    "import",
];

/// One import: from file (relative to `src/`), the module path it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Import {
    file: String,
    /// Absolute module path inside the crate, e.g. `["sources", "folder", "cdr"]`.
    target: Vec<String>,
}

/// The module path of a file: `sources/folder/mod.rs` → `[sources, folder]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// The text without comments (line, block and doc comments) and without
/// the contents of string literals.
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && is_raw_start(&b, i) {
            // r"…", r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // the quote
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_raw_start(b: &[char], i: usize) -> bool {
    let prev_ident = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
    if prev_ident {
        return false;
    }
    let mut j = i + 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

fn ident_at(b: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&b[start..i]).into_owned(), i)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The module paths a `crate::…` (or resolved `super::…`) path starting at
/// `i` (just after `crate::`) names: `a::b::Item` → `[a, b, Item]`, and
/// `{a, b::c}` → each of them (the first two segments are enough to tell
/// modules apart).
fn paths_at(b: &[u8], i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let i = skip_ws(b, i);
    if b.get(i) == Some(&b'{') {
        let mut j = i + 1;
        loop {
            j = skip_ws(b, j);
            match b.get(j) {
                None | Some(b'}') => return,
                Some(b',') => j += 1,
                _ => {
                    let before = j;
                    paths_at(b, j, prefix, out);
                    // skip to the next ',' at this depth
                    let mut depth = 0;
                    while j < b.len() {
                        match b[j] {
                            b'{' => depth += 1,
                            b'}' if depth == 0 => break,
                            b'}' => depth -= 1,
                            b',' if depth == 0 => break,
                            _ => {}
                        }
                        j += 1;
                    }
                    if j == before {
                        return;
                    }
                }
            }
        }
    }
    let (id, j) = ident_at(b, i);
    if id.is_empty() || id == "self" {
        out.push(prefix.to_vec());
        return;
    }
    let mut p = prefix.to_vec();
    p.push(id);
    let k = skip_ws(b, j);
    if b.get(k) == Some(&b':') && b.get(k + 1) == Some(&b':') {
        paths_at(b, k + 2, &p, out);
    } else {
        out.push(p);
    }
}

/// Every import of the file `rel` (relative to `src/`) with text `text`.
fn imports_of(rel: &str, text: &str) -> Vec<Import> {
    let code = strip(text);
    let b = code.as_bytes();
    let here = module_of(rel);
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if word_start && b[i..].starts_with(b"crate::") {
            paths_at(b, i + 7, &[], &mut found);
            i += 7;
        } else if word_start && b[i..].starts_with(b"super::") {
            let mut base = here.clone();
            let mut j = i;
            while b[j..].starts_with(b"super::") {
                base.pop();
                j += 7;
            }
            paths_at(b, j, &base, &mut found);
            i = j;
        } else {
            i += 1;
        }
    }
    found
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|target| Import {
            file: rel.to_string(),
            target,
        })
        .collect()
}

/// The top-level module of a file, and for `sources/` the source too.
fn unit_of(path: &[String]) -> (String, Option<String>) {
    let top = path.first().cloned().unwrap_or_default();
    let source = (top == "sources")
        .then(|| path.get(1).cloned())
        .flatten()
        .filter(|s| !SOURCES_SHARED.contains(&s.as_str()));
    (top, source)
}

/// What every source shares (`sources/mod.rs`: the `SourceHandle` trait
/// and helpers; the engine host): not a source itself.
const SOURCES_SHARED: &[&str] = &["mod", "engine_host", "handle"];

/// Everything wrong with a set of files (relative path, text).
fn violations(files: &[(String, String)]) -> Vec<String> {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut bad = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let here = module_of(rel);
        let (top, source) = unit_of(&here);
        if !allowed.contains_key(top.as_str()) {
            bad.push(format!(
                "{rel}: top-level module `{top}` is not in the layering table (tests/layering.rs ALLOWED, docs/architecture.md)"
            ));
            continue;
        }
        for imp in imports_of(rel, text) {
            let (to_top, to_source) = unit_of(&imp.target);
            if COMPAT_ALIASES.contains(&to_top.as_str()) {
                bad.push(format!(
                    "{rel}: uses crate::{} (a path kept for outside users): use its place in the layout",
                    imp.target.join("::")
                ));
                continue;
            }
            if to_top == top {
                if let (Some(a), Some(b)) = (&source, &to_source) {
                    if a != b && a != "mod" {
                        bad.push(format!(
                            "{rel}: source `{a}` uses source `{b}` ({})",
                            imp.target.join("::")
                        ));
                    }
                }
                continue;
            }
            if !allowed.contains_key(to_top.as_str()) {
                // An item of lib.rs itself, or a macro: not a module.
                continue;
            }
            graph.entry(top.clone()).or_default().insert(to_top.clone());
            if !allowed[top.as_str()].contains(to_top.as_str()) {
                bad.push(format!(
                    "{rel}: `{top}` may not use `{to_top}` ({})",
                    imp.target.join("::")
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        bad.push(format!("import cycle: {}", cycle.join(" → ")));
    }
    bad
}

/// A cycle of the graph, if there is one (depth-first search).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn src_follows_the_layering_rule() {
    let files = src_files();
    assert!(files.len() > 40, "{} files under src/", files.len());
    let bad = violations(&files);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_allowed_table_has_no_cycle_and_sys_config_are_leaves() {
    let g: BTreeMap<String, BTreeSet<String>> = ALLOWED
        .iter()
        .map(|(m, d)| (m.to_string(), d.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&g), None);
    assert!(g["sys"].is_empty());
    // How spool files are stored is a leaf above `sys` only: the config
    // loads the spool's keys with it, the recording writer, delivery and
    // upload read and write through it.
    assert!(g["spoolfile"].iter().all(|d| d == "sys"));
    let leaf = |d: &String| d == "units" || d == "sys" || d == "spoolfile";
    assert!(g["config"].iter().all(leaf));
    assert!(g["recording"].iter().all(leaf));
    for (m, deps) in &g {
        assert!(!deps.contains("commands"), "{m} uses commands");
        assert!(!deps.contains("daemon"), "{m} uses daemon");
    }
}

fn one(rel: &str, text: &str) -> Vec<String> {
    violations(&[(rel.to_string(), text.to_string())])
}

#[test]
fn config_using_a_runtime_module_is_refused() {
    let v = one(
        "config/mod.rs",
        "use crate::delivery::UploadWindow;\nuse crate::units::parse_size;\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("`config` may not use `delivery`"), "{v:?}");
    // Grouped, nested and written inline: all seen.
    let v = one(
        "config/check.rs",
        "use crate::{units, sources::folder::cdr::CsvColumns};\nfn f() { crate::spool::now_ms(); }",
    );
    assert_eq!(v.len(), 2, "{v:?}");
}

#[test]
fn sys_using_anything_of_ours_is_refused() {
    let v = one(
        "sys/clock.rs",
        "fn f() -> crate::config::Config { todo!() }",
    );
    assert!(
        v.iter().any(|e| e.contains("`sys` may not use `config`")),
        "{v:?}"
    );
    assert!(one(
        "sys/clock.rs",
        "use pbx_core::Timestamp; use std::time::SystemTime;"
    )
    .is_empty());
}

#[test]
fn a_source_using_another_source_is_refused() {
    let v = one(
        "sources/siprec/mod.rs",
        "use crate::sources::sniff::now;\nuse crate::sources::siprec::media::MediaPort;",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("source `siprec` uses source `sniff`"),
        "{v:?}"
    );
    // super:: leaving the source counts too.
    let v = one(
        "sources/folder/scanner.rs",
        "use super::super::sniff::compile_filter;",
    );
    assert!(v.iter().any(|e| e.contains("uses source `sniff`")), "{v:?}");
    assert!(one("sources/folder/scanner.rs", "use super::cdr::CdrRow;").is_empty());
}

#[test]
fn cycles_are_found_and_comments_and_strings_ignored() {
    let files = vec![
        (
            "spool/mod.rs".to_string(),
            "use crate::status::Status;".to_string(),
        ),
        (
            "status.rs".to_string(),
            "use crate::spool::human_size;".to_string(),
        ),
    ];
    let v = violations(&files);
    assert!(v.iter().any(|e| e.starts_with("import cycle")), "{v:?}");
    let quiet = "//! see [`crate::daemon`]\n/// [`crate::daemon::run`]\n// crate::daemon\n/* crate::daemon */\nconst S: &str = \"crate::daemon\";\nconst R: &str = r#\"crate::daemon\"#;\nfn f<'a>(c: char) -> bool { c == '\"' }\n";
    assert!(
        one("sys/host.rs", quiet).is_empty(),
        "{:?}",
        one("sys/host.rs", quiet)
    );
}

#[test]
fn old_flat_paths_are_for_outside_users_only() {
    let v = one("daemon/mod.rs", "use crate::folder::FolderHandle;");
    assert!(
        v.iter().any(|e| e.contains("kept for outside users")),
        "{v:?}"
    );
}
