//! Loading: the file and the `PBX_EDGE__*` environment into one tree of
//! values, each with its origin (file and line, or variable), for the
//! schema walk ([`super::check`]).

use super::*;

// Loading: file and environment into one tree of values with origins
// ---------------------------------------------------------------------------

pub(super) fn resolve_path_with(explicit: Option<&Path>, default_path: &Path) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None if default_path.exists() => Some(default_path.to_path_buf()),
        None => None,
    }
}

pub(super) fn load_inner(
    path: Option<&Path>,
    default_path: &Path,
    env: Vec<(String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let root = match resolve_path_with(path, default_path) {
        None => None,
        Some(p) => match read_file(&p) {
            Ok(text) => parse_file(&p, &text, &mut errors),
            Err(e) => {
                return Err(ConfigErrors { errors: vec![e] });
            }
        },
    };
    build(root, env, errors)
}

pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Read {
        path: path.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(err("cannot read: is a directory".into()));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(err(format!(
            "larger than {} KiB; not a config file?",
            MAX_FILE_SIZE >> 10
        )));
    }
    String::from_utf8(buf).map_err(|e| {
        err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) origin: Origin,
    /// The raw text of an environment override, used where a string is expected
    /// but the text happened to parse as another TOML type (`PBX_EDGE__AGENT__ID=1234`).
    pub(super) env_text: Option<String>,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Str(String),
    /// `None`: outside the 64-bit signed range.
    Int(Option<i64>),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Entry>),
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key_origin: Origin,
    pub(super) node: Node,
}

pub(super) type Table = BTreeMap<String, Entry>;

impl Node {
    pub(super) fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    /// "found an integer (5)" — what a wrong-type message says about this value.
    pub(super) fn found(&self) -> String {
        let t = self.type_name();
        match &self.kind {
            Kind::Int(Some(i)) => format!("found {t} ({i})"),
            Kind::Float(x) => format!("found {t} ({})", short_float(*x)),
            Kind::Bool(b) => format!("found {t} ({b})"),
            Kind::Str(s) => format!("found {t} ({})", quote(s)),
            Kind::Datetime(d) => format!("found {t} ({d})"),
            _ => format!("found {t}"),
        }
    }
}

/// A float as a person wrote it: `1e308`, not 309 digits.
pub(super) fn short_float(x: f64) -> String {
    if x.is_finite() && x != 0.0 && !(1e-6..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// Byte offsets of line starts, to turn spans into 1-based line numbers.
pub(super) struct Lines {
    pub(super) starts: Vec<usize>,
}

impl Lines {
    pub(super) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// Parse a config file's text into the tree; syntax errors go into `errors`.
/// What could be recovered is returned even then.
pub(super) fn parse_file(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Option<Node> {
    let lines = Lines::new(text);
    let origin = |span: std::ops::Range<usize>| Origin::File {
        path: path.to_path_buf(),
        line: lines.line(span.start),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        let line = e.span().map(|s| lines.line(s.start)).unwrap_or(1);
        errors.push(ConfigError::Syntax {
            origin: Origin::File {
                path: path.to_path_buf(),
                line,
            },
            key: syntax_key_guess(text, line),
            message: e.message().to_string(),
        });
    }
    let span = doc.span();
    let mut table = convert_table(doc.get_ref(), &origin);
    // After a broken table header the recovered tree puts that table's keys
    // anywhere (an unclosed `[sources.siprec` leaves `max_calls` at the top,
    // "unknown section"): its lines are left out, the syntax error is the
    // one problem reported for them.
    let broken = broken_tables(
        text,
        syntax
            .iter()
            .filter_map(|e| e.span())
            .map(|s| lines.line(s.start)),
    );
    if !broken.is_empty() {
        drop_lines(&mut table, path, &broken);
    }
    Some(Node {
        origin: origin(span.start..span.start),
        env_text: None,
        kind: Kind::Table(table),
    })
}

/// Line ranges (1-based, end exclusive) from each table header with a syntax
/// error on it to the next header line.
pub(super) fn broken_tables(
    text: &str,
    error_lines: impl Iterator<Item = usize>,
) -> Vec<(usize, usize)> {
    let all: Vec<&str> = text.lines().collect();
    let is_header = |l: usize| {
        all.get(l.wrapping_sub(1))
            .is_some_and(|t| t.trim_start().starts_with('['))
    };
    let mut out = Vec::new();
    for line in error_lines {
        if !is_header(line) {
            continue;
        }
        let end = (line + 1..=all.len())
            .find(|l| is_header(*l))
            .unwrap_or(all.len() + 1);
        out.push((line, end));
    }
    out
}

/// Removes every entry whose key is on one of the `lines` ranges of `path`.
pub(super) fn drop_lines(table: &mut Table, path: &Path, lines: &[(usize, usize)]) {
    table.retain(|_, e| match &e.key_origin {
        Origin::File { path: p, line } if p == path => {
            !lines.iter().any(|(a, b)| (*a..*b).contains(line))
        }
        _ => true,
    });
    for e in table.values_mut() {
        if let Kind::Table(t) = &mut e.node.kind {
            drop_lines(t, path, lines);
        }
    }
}

pub(super) fn convert_table(
    t: &DeTable<'_>,
    origin: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Table {
    t.iter()
        .map(|(k, v)| {
            (
                k.get_ref().to_string(),
                Entry {
                    key_origin: origin(k.span()),
                    node: convert_value(v, origin),
                },
            )
        })
        .collect()
}

pub(super) fn convert_value(
    v: &Spanned<DeValue<'_>>,
    origin: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Node {
    let kind = match v.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => Kind::Int(i64::from_str_radix(i.as_str(), i.radix()).ok()),
        DeValue::Float(x) => Kind::Float(x.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(a) => Kind::Array(a.iter().map(|x| convert_value(x, origin)).collect()),
        DeValue::Table(t) => Kind::Table(convert_table(t, origin)),
    };
    Node {
        origin: origin(v.span()),
        env_text: None,
        kind,
    }
}

/// Best guess of the key a syntax error is about: the last `[table]` header
/// before the line plus the key written on the line, else `toml`.
pub(super) fn syntax_key_guess(text: &str, line: usize) -> String {
    let is_key = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"'))
    };
    let clean = |s: &str| -> Vec<String> {
        s.split('.')
            .map(|p| p.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut table: Vec<String> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        let header = t
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .filter(|h| is_key(h));
        if i + 1 == line {
            if let Some(h) = header {
                return clean(h).join(".");
            }
            // A header that is not closed: `[sources.siprec`.
            if let Some(h) = t
                .strip_prefix("[[")
                .or_else(|| t.strip_prefix('['))
                .map(|h| h.trim_end_matches(']').trim())
                .filter(|h| is_key(h))
            {
                return clean(h).join(".");
            }
            if let Some((k, _)) = t.split_once('=') {
                if is_key(k.trim()) {
                    let mut path = table.clone();
                    path.extend(clean(k.trim()));
                    return path.join(".");
                }
            }
            break;
        }
        if let Some(h) = header {
            table = clean(h);
        }
    }
    "toml".into()
}

/// `PBX_EDGE__SOURCES__SIPREC__LISTEN` → `sources.siprec.listen`.
pub(super) fn env_key_path(var: &str) -> String {
    var.strip_prefix(ENV_PREFIX)
        .unwrap_or(var)
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// Put one environment override into the tree.
pub(super) fn apply_env(root: &mut Node, var: &str, text: &str, errors: &mut Vec<ConfigError>) {
    let origin = Origin::Env {
        var: var.to_string(),
    };
    let key = env_key_path(var);
    let err = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        key: key.clone(),
        message,
    };
    let parts: Vec<String> = key.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        errors.push(err(format!(
            "malformed variable name (write {ENV_PREFIX}SECTION__KEY)"
        )));
        return;
    }
    let mut node = match DeValue::parse(text) {
        Ok(v) => convert_value(&v, &|_| origin.clone()),
        Err(_) => Node {
            origin: origin.clone(),
            env_text: None,
            kind: Kind::Str(text.to_string()),
        },
    };
    node.env_text = Some(text.to_string());

    let Some((leaf, dirs)) = parts.split_last() else {
        return;
    };
    let mut cur = root;
    let mut walked = Vec::new();
    for d in dirs {
        walked.push(d.as_str());
        let Kind::Table(t) = &mut cur.kind else {
            return;
        };
        let entry = t.entry(d.clone()).or_insert_with(|| Entry {
            key_origin: origin.clone(),
            node: Node {
                origin: origin.clone(),
                env_text: None,
                kind: Kind::Table(Table::new()),
            },
        });
        if !matches!(entry.node.kind, Kind::Table(_)) {
            errors.push(err(format!(
                "`{}` is not a table (it is set at {})",
                walked.join("."),
                entry.node.origin
            )));
            return;
        }
        cur = &mut entry.node;
    }
    let Kind::Table(t) = &mut cur.kind else {
        return;
    };
    match t.get_mut(leaf) {
        Some(existing) => merge(&mut existing.node, node),
        None => {
            t.insert(
                leaf.clone(),
                Entry {
                    key_origin: origin.clone(),
                    node,
                },
            );
        }
    }
}

/// Override `old` with `new`; tables are merged key by key.
pub(super) fn merge(old: &mut Node, new: Node) {
    if let (Kind::Table(o), Kind::Table(_)) = (&mut old.kind, &new.kind) {
        if let Kind::Table(n) = new.kind {
            for (k, e) in n {
                match o.get_mut(&k) {
                    Some(existing) => merge(&mut existing.node, e.node),
                    None => {
                        o.insert(k, e);
                    }
                }
            }
        }
        return;
    }
    *old = new;
}

/// File tree + environment → checked [`Config`] or every problem.
pub(super) fn build(
    root: Option<Node>,
    mut env: Vec<(String, String)>,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    env.sort();
    let state_dir = env
        .iter()
        .find(|(k, _)| k == "STATE_DIRECTORY")
        .map(|(_, v)| v.as_str());
    let mut cfg = Config::defaults(state_dir);
    let mut root = root.unwrap_or(Node {
        origin: Origin::Default,
        env_text: None,
        kind: Kind::Table(Table::new()),
    });
    for (k, v) in env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
        apply_env(&mut root, k, v, &mut errors);
    }
    // Semantic problems on a line that already has a syntax error are noise.
    let syntax_lines: Vec<Origin> = errors
        .iter()
        .filter(|e| matches!(e, ConfigError::Syntax { .. }))
        .filter_map(|e| e.origin().cloned())
        .collect();
    let mut semantic = Vec::new();
    check(&root, &mut cfg, &mut semantic, &mut Vec::new());
    errors.extend(
        semantic
            .into_iter()
            .filter(|e| e.origin().is_none_or(|o| !syntax_lines.contains(o))),
    );
    if errors.is_empty() {
        Ok(cfg)
    } else {
        // Every problem at once: those that would only stop delivery too.
        errors.append(&mut cfg.delivery_problems);
        errors.sort_by(|a, b| {
            let ka = a.origin().map(Origin::sort_key);
            let kb = b.origin().map(Origin::sort_key);
            ka.cmp(&kb)
        });
        Err(ConfigErrors { errors })
    }
}

// ---------------------------------------------------------------------------
