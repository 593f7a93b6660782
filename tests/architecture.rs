//! Architecture rules for `src/`, checked by reading the source text (nothing is compiled or run):
//!
//! 1. `src/domain/` is pure: no kube `Api`/`Client`, no spawned tasks, no HTTP, no `async`, no
//!    clock reads, no files, network, processes, environment or threads.
//! 2. No import circles between the crate's modules, and `src/domain/` never depends on
//!    `src/shell/` or on `metrics`.
//! 3. No file under `src/` is longer than 700 lines unless its first 15 lines say why.
//!
//! The scanners are plain functions over `(path, text)`; `scanners_detect_violations` feeds them
//! small samples, so a scanner that stops seeing anything fails instead of passing quietly. They
//! tokenise Rust lightly: comments and string/char literals are skipped, and `use` trees such as
//! `use crate::{a::x, b::{y, z}}` are expanded into full paths. "Non-test code" is the text
//! before the first line that is exactly `#[cfg(test)]` (the `mod tests` at the bottom); a file
//! named `tests.rs` (a module's unit tests in a file of their own) is test code throughout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::Path;

const MAX_LINES: usize = 700;
const SIZE_WAIVER: &str = "longer than 700 lines because";
const CLOCKS: &[&str] = &[
    "Instant",
    "SystemTime",
    "Timestamp",
    "Zoned",
    "Utc",
    "Local",
];

const KUBE: &str = "talking to the API server is I/O: list, watch and patch in src/shell/ and hand \
                    the domain plain objects";
const TASKS: &str =
    "spawning tasks belongs in src/shell/: return a decision and let the shell act on it";
const HTTP: &str = "HTTP belongs in src/shell/: let the domain build the request body as a value";
const ASYNC: &str = "domain code is synchronous: make it a plain fn that the shell calls";
const CLOCK: &str = "reading the clock makes a decision untestable: take `now` as a parameter";
const IO: &str = "files, network, processes, environment and threads belong in src/shell/";

// ---------------------------------------------------------------------------------------------
// The three rules and the self-check.

#[test]
fn domain_is_pure() {
    let src = src_dir();
    let domain = src.join("domain");
    assert!(
        domain.is_dir(),
        "rule 1 (domain purity): {} does not exist. Pure decision code lives in src/domain/ \
         (and I/O in src/shell/); this check refuses to pass when there is nothing to check.",
        domain.display()
    );
    let files = rust_files(&src, &domain);
    assert!(
        !files.is_empty(),
        "rule 1 (domain purity): {} holds no .rs files, so there is nothing to check; this check \
         refuses to pass vacuously.",
        domain.display()
    );
    let findings: Vec<String> = files
        .iter()
        .flat_map(|(rel, text)| purity_findings(&format!("src/{rel}"), text))
        .map(|f| f.to_string())
        .collect();
    assert!(
        findings.is_empty(),
        "rule 1 (domain purity): {} place(s) in src/domain/ do I/O, async work or read the clock. \
         Move that code to src/shell/ and pass its results into the domain as values. Only code \
         below the first `#[cfg(test)]` line and comments are exempt.\n{}\n",
        findings.len(),
        findings.join("\n")
    );
}

#[test]
fn no_import_circles() {
    let src = src_dir();
    let files = rust_files(&src, &src);
    assert!(!files.is_empty(), "no .rs files under {}", src.display());
    let graph = module_graph(&crate_name(), &files);
    let mut problems = circle_report(&graph.edges);
    for e in &graph.outward {
        problems.push(format!(
            "{}:{}: rule 2 (domain never calls outward): `{}` makes `{}` depend on `{}`. The \
             domain must not use src/shell/ or metrics: let the shell call the domain and record \
             metrics from what it returns.",
            e.file, e.line, e.path, e.from, e.to
        ));
    }
    assert!(problems.is_empty(), "{}\n", problems.join("\n"));
}

#[test]
fn files_stay_small() {
    let src = src_dir();
    let files = rust_files(&src, &src);
    assert!(!files.is_empty(), "no .rs files under {}", src.display());
    let findings: Vec<String> = files
        .iter()
        .filter_map(|(rel, text)| size_finding(&format!("src/{rel}"), text))
        .collect();
    assert!(findings.is_empty(), "{}\n", findings.join("\n"));
}

#[test]
fn scanners_detect_violations() {
    // Purity: each sample must be flagged with the given text.
    let bad = [
        (
            "pub fn f() { tokio::spawn(async move { 1 }); }",
            "tokio::spawn",
        ),
        ("pub async fn f() {}", "async fn"),
        (
            "fn f() { let h = tokio::task::spawn_blocking(g); }",
            "tokio::task",
        ),
        ("use tokio::{spawn, sync::watch};", "tokio::spawn"),
        ("fn f(x: F) { x.await; }", ".await"),
        ("use kube::Api;", "kube::Api"),
        (
            "use kube::{api::{Api, ListParams}, core::Selector};",
            "kube::api::Api",
        ),
        ("use kube::{Client as K8s};", "kube::Client"),
        (
            "fn f() { let c = kube::client::Client::new(s, ns); }",
            "kube::client::Client",
        ),
        ("fn f(a: &Api<Pod>) {}", "Api<"),
        ("fn f() { let c = Client::try_default(); }", "Client::"),
        ("fn f() { let c = reqwest::Client::new(); }", "reqwest"),
        ("fn f() -> Instant { Instant::now() }", "Instant::now()"),
        (
            "fn f() { let t = jiff::Timestamp::now(); }",
            "Timestamp::now()",
        ),
        (
            "fn f() { let t = std::time::SystemTime::now(); }",
            "SystemTime::now()",
        ),
        ("fn f() { let t = Utc::now(); }", "Utc::now()"),
        ("fn f() { std::fs::read(\"x\"); }", "std::fs"),
        (
            "use std::{collections::HashMap, net::TcpStream};",
            "std::net",
        ),
        (
            "fn f() { let c = std::process::Command::new(\"ls\"); }",
            "std::process",
        ),
    ];
    for (sample, expected) in bad {
        let found = purity_findings("src/domain/fake.rs", sample);
        assert!(
            found.iter().any(|f| f.what.contains(expected)),
            "purity scanner missed `{expected}` in `{sample}`; found {found:?}"
        );
        assert_eq!(found[0].line, 1, "wrong line for `{sample}`: {found:?}");
    }
    let good = "//! Calls `tokio::spawn` and `Client::new()` only in prose.\n\
                use kube::core::Selector;\n\
                use kube::runtime::watcher::Event;\n\
                use kube::api::{ListParams, ObjectMeta};\n\
                use k8s_openapi::api::apps::v1::Deployment;\n\
                use tokio::time::Instant;\n\
                // tokio::spawn in a comment\n\
                /* async fn in a block comment */\n\
                pub fn f<'a>(now: Instant, s: &'a Selector, e: Event<Deployment>) -> &'a str {\n\
                    let _ = (now, e, ' ', '\\'', b'x', r#\"reqwest::get \"quoted\"\"#);\n\
                    let _ = IlertClient::new; let _ = ApiResource::erase::<Deployment>;\n\
                    if let Err(kube::Error::Api(e)) = r { return e.reason; }\n\
                    \"std::fs::read(\\\"x\\\").await\"\n\
                }\n\
                #[cfg(test)]\n\
                mod tests {\n\
                    async fn t() { tokio::spawn(async {}).await.unwrap(); Instant::now(); }\n\
                }\n";
    let found = purity_findings("src/domain/fake.rs", good);
    assert!(
        found.is_empty(),
        "purity scanner flagged allowed code: {found:?}"
    );
    let found = purity_findings(
        "src/domain/fake.rs",
        "\n\nfn f() {\n    tokio::spawn(g);\n}\n",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].line, found[0].file.as_str()),
        (4, "src/domain/fake.rs")
    );

    // Circles: `a` and `b` use each other; `c` only uses `a`; test code and comments do not count.
    let files = sample_files(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::X;\npub struct Y;\n"),
        (
            "b.rs",
            "pub struct X;\nfn f() {\n    let _ = crate::a::Y;\n}\n",
        ),
        (
            "c.rs",
            "use crate::a::Y;\n// crate::c::Z\n#[cfg(test)]\nmod tests { use crate::c::Z; }\n",
        ),
    ]);
    let graph = module_graph("fake", &files);
    assert_eq!(
        cycles(&graph.edges),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
    let report = circle_report(&graph.edges).join("\n");
    assert!(
        report.contains("src/a.rs:1") && report.contains("src/b.rs:3"),
        "{report}"
    );

    // `use` groups, `super::`, a re-export through a declare-only mod.rs, and a child using its
    // parent: d/e -> d/f (super), d/f -> g/h (via g's re-export), g/h -> d/e (group).
    let files = sample_files(&[
        ("lib.rs", "pub mod d;\npub mod g;\n"),
        ("d/mod.rs", "pub mod e;\npub mod f;\npub use e::W;\n"),
        ("d/e.rs", "use super::f::Z;\npub struct W;\n"),
        ("d/f.rs", "use crate::{d::W, g::H};\npub struct Z;\n"),
        ("g/mod.rs", "mod h;\npub use h::*;\n"),
        (
            "g/h.rs",
            "use crate::{x::y, d::{e::{self, W}}};\npub struct H;\n",
        ),
    ]);
    let graph = module_graph("fake", &files);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(cycles(&graph.edges), vec![names(&["d/e", "d/f", "g/h"])]);
    assert!(
        !graph
            .edges
            .iter()
            .any(|e| e.to == "d" || e.to == "g" || e.from == "d")
    );

    // The domain calling outward.
    let files = sample_files(&[
        ("domain/mod.rs", "pub mod x;\n"),
        (
            "domain/x.rs",
            "use crate::shell::send::Y;\nfn f() { crate::metrics::count(); }\n",
        ),
        ("shell/mod.rs", "pub mod send;\n"),
        ("shell/send.rs", "use crate::domain::x;\npub struct Y;\n"),
        ("metrics.rs", "pub fn count() {}\n"),
    ]);
    let graph = module_graph("fake", &files);
    let outward: Vec<(&str, usize)> = graph
        .outward
        .iter()
        .map(|e| (e.to.as_str(), e.line))
        .collect();
    assert_eq!(outward, vec![("shell/send", 1), ("metrics", 2)]);

    // File size.
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    assert!(size_finding("src/big.rs", &long).is_some());
    assert!(size_finding("src/big.rs", &"\n".repeat(MAX_LINES)).is_none());
    let waived = format!("//! This file is Longer than 700 lines because it is generated.\n{long}");
    assert!(size_finding("src/big.rs", &waived).is_none());
    let no_reason = format!("// longer than 700 lines because\n{long}");
    assert!(size_finding("src/big.rs", &no_reason).is_some());
}

// ---------------------------------------------------------------------------------------------
// Reading the tree.

fn src_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn crate_name() -> String {
    env!("CARGO_PKG_NAME").replace('-', "_")
}

/// Every `.rs` file under `dir`, as (path relative to `root` with `/`, text), sorted by path.
fn rust_files(root: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(root, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel.to_string_lossy().replace('\\', "/");
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

fn sample_files(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

/// The text before the first line that is exactly `#[cfg(test)]`; nothing of a `tests.rs`, a
/// module's unit tests in a file of their own (declared `#[cfg(test)] mod tests;` beside the code).
fn non_test_code<'a>(file: &str, text: &'a str) -> &'a str {
    if file.ends_with("/tests.rs") || file == "tests.rs" {
        return "";
    }
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]" {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// A light tokeniser: identifiers, `::`, single punctuation; literals and comments are dropped.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
    Lit,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

fn lex(code: &str) -> Vec<Token> {
    let c: Vec<char> = code.chars().collect();
    let n = c.len();
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < n {
        let ch = c[i];
        let start = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            while i < n && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Lit,
                line: start,
            });
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 3;
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Lit,
                    line,
                });
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push(Token {
                    tok: Tok::Lit,
                    line,
                });
            } else {
                // A lifetime or loop label.
                i += 1;
                while i < n && is_ident(c[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Punct('\''),
                    line,
                });
            }
        } else if ch.is_ascii_digit() {
            while i < n && (is_ident(c[i]) || (c[i] == '.' && at(i + 1).is_ascii_digit())) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Lit,
                line,
            });
        } else if is_ident(ch) {
            let s = i;
            while i < n && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            let next = at(i);
            let raw = matches!(word.as_str(), "r" | "br" | "cr")
                && (next == '"' || (next == '#' && matches!(at(i + 1), '"' | '#')));
            if raw {
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1;
                while i < n {
                    if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Lit,
                    line: start,
                });
            } else if word == "r" && next == '#' {
                i += 1;
                let s = i;
                while i < n && is_ident(c[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(c[s..i].iter().collect()),
                    line,
                });
            } else if !((matches!(word.as_str(), "b" | "c") && next == '"')
                || (word == "b" && next == '\''))
            {
                // (A `b"…"`, `c"…"` or `b'…'` prefix: the literal branches take it from here.)
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token {
            tok: Tok::Ident(s), ..
        }) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&Token>, p: char) -> bool {
    matches!(t, Some(Token { tok: Tok::Punct(q), .. }) if *q == p)
}

fn is_sep(t: Option<&Token>) -> bool {
    matches!(
        t,
        Some(Token {
            tok: Tok::PathSep,
            ..
        })
    )
}

/// The index after the bracket group that opens at `i`.
fn skip_group(toks: &[Token], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i].tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Paths: every `a::b::c` in the code, with `use` trees expanded (`a::{b, c::{d as e}}` gives
// `a::b` and `a::c::d` aliased `e`). Only paths of two or more segments (or globs) are kept.

#[derive(Clone, Debug)]
struct PathRef {
    segs: Vec<String>,
    line: usize,
    alias: Option<String>,
    glob: bool,
}

fn paths(toks: &[Token]) -> Vec<PathRef> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts = ident(toks.get(i)).is_some()
            && (i == 0
                || !is_sep(toks.get(i - 1))
                || (i == 1 || !matches!(toks[i - 2].tok, Tok::Ident(_) | Tok::Punct('>'))));
        if starts {
            i = parse_path(toks, i, &[], &mut out);
        } else {
            i += 1;
        }
    }
    out.retain(|p| p.segs.len() >= 2 || p.glob);
    out
}

fn parse_path(toks: &[Token], start: usize, prefix: &[String], out: &mut Vec<PathRef>) -> usize {
    let mut segs = prefix.to_vec();
    let mut line = toks[start].line;
    let first = ident(toks.get(start)).unwrap_or_default();
    if first != "self" || prefix.is_empty() {
        segs.push(first.to_string());
    }
    let mut i = start + 1;
    while is_sep(toks.get(i)) {
        if let Some(s) = ident(toks.get(i + 1)) {
            segs.push(s.to_string());
            line = toks[i + 1].line;
            i += 2;
        } else if is(toks.get(i + 1), '{') {
            return parse_group(toks, i + 2, &segs, out);
        } else if is(toks.get(i + 1), '*') {
            out.push(PathRef {
                segs,
                line,
                alias: None,
                glob: true,
            });
            return i + 2;
        } else {
            break;
        }
    }
    let mut alias = None;
    if ident(toks.get(i)) == Some("as")
        && let Some(a) = ident(toks.get(i + 1))
    {
        alias = Some(a.to_string());
        i += 2;
    }
    out.push(PathRef {
        segs,
        line,
        alias,
        glob: false,
    });
    i
}

fn parse_group(toks: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<PathRef>) -> usize {
    while i < toks.len() {
        match &toks[i].tok {
            Tok::Punct('}') => return i + 1,
            Tok::Punct('{') => i = parse_group(toks, i + 1, prefix, out),
            Tok::Punct('*') => {
                out.push(PathRef {
                    segs: prefix.to_vec(),
                    line: toks[i].line,
                    alias: None,
                    glob: true,
                });
                i += 1;
            }
            Tok::Ident(_) => i = parse_path(toks, i, prefix, out),
            _ => i += 1,
        }
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Rule 1: purity.

#[derive(Debug)]
struct Finding {
    file: String,
    line: usize,
    what: String,
    hint: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}` is not allowed in src/domain/: {}",
            self.file, self.line, self.what, self.hint
        )
    }
}

/// What in `text` (a file under `src/domain/`) breaks rule 1, in line order.
fn purity_findings(file: &str, text: &str) -> Vec<Finding> {
    let toks = lex(non_test_code(file, text));
    let mut found: BTreeMap<(usize, String), &'static str> = BTreeMap::new();
    let mut kube_lines = BTreeSet::new();
    for p in paths(&toks) {
        let s: Vec<&str> = p.segs.iter().map(String::as_str).collect();
        let hint = match s.as_slice() {
            // `kube::Api`, `kube::api::Api`, `kube::Client`, `kube::client::Client`; not
            // `kube::Error::Api` (an error variant) or `kube::api::ApiResource` (data).
            ["kube", ..]
                if s.windows(2).any(|w| {
                    matches!(w[0], "kube" | "api" | "client") && matches!(w[1], "Api" | "Client")
                }) =>
            {
                kube_lines.insert(p.line);
                Some(KUBE)
            }
            ["tokio", "spawn" | "task", ..] => Some(TASKS),
            ["tokio", "fs" | "net" | "process" | "signal" | "io", ..] => Some(IO),
            ["std", "fs" | "net" | "process" | "env" | "thread", ..] => Some(IO),
            _ => None,
        };
        if let Some(hint) = hint {
            found.entry((p.line, p.segs.join("::"))).or_insert(hint);
        }
        if let Some(w) = s
            .windows(2)
            .find(|w| CLOCKS.contains(&w[0]) && w[1] == "now")
        {
            found
                .entry((p.line, format!("{}::now()", w[0])))
                .or_insert(CLOCK);
        }
    }
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1);
        let Tok::Ident(word) = &t.tok else {
            if is(Some(t), '.') && ident(next) == Some("await") {
                found.entry((t.line, ".await".into())).or_insert(ASYNC);
            }
            continue;
        };
        let (what, hint) = match word.as_str() {
            "async" if ident(next) == Some("fn") => ("async fn", ASYNC),
            "async" if ident(next) == Some("move") || is(next, '{') || is(next, '|') => {
                ("async block", ASYNC)
            }
            "reqwest" => ("reqwest", HTTP),
            "Api" if is(next, '<') && !kube_lines.contains(&t.line) => ("Api<", KUBE),
            "Api" if is_sep(next) && !kube_lines.contains(&t.line) => ("Api::", KUBE),
            "Client" if is_sep(next) && !kube_lines.contains(&t.line) => ("Client::", KUBE),
            _ => continue,
        };
        found.entry((t.line, what.to_string())).or_insert(hint);
    }
    found
        .into_iter()
        .map(|((line, what), hint)| Finding {
            file: file.to_string(),
            line,
            what,
            hint,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rule 2: the module graph.
//
// A node is a module file under src/, named by its path without `.rs` (`foo/mod.rs` is `foo`;
// `lib.rs` and `main.rs` are `lib` and `main`). A path in a module's non-test code is made
// absolute (`crate::`, the crate's own name, `self::`, `super::` relative to the module, or a bare
// path starting with one of the module's child modules) and resolved to the longest prefix that
// is a module file; when the rest names an item that module re-exports (`pub use x::Y`, or
// `pub use x::*` with `x` defining `pub … Y`), it is followed to where the item lives.
//
// Edges that are ignored, because they are not real dependencies:
// - a module using itself;
// - edges into or out of a file that only declares modules and re-exports (`mod`/`use` items and
//   attributes, like a typical `domain/mod.rs`): such a file holds no code, and re-exports are
//   followed through it instead;
// - a module using its own parent directory module (`domain/rollout` -> `domain`), which is the
//   structure of the tree, not a dependency between peers.

#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
    path: String,
}

struct Graph {
    /// The first place each counted edge occurs, sorted by (from, to).
    edges: Vec<Edge>,
    /// Every place a module under `domain/` uses `shell/…` or `metrics`.
    outward: Vec<Edge>,
}

struct Module {
    name: String,
    segs: Vec<String>,
    file: String,
    toks: Vec<Token>,
    declare_only: bool,
    reexports: Vec<PathRef>,
    pub_items: BTreeSet<String>,
}

fn module_graph(crate_name: &str, files: &[(String, String)]) -> Graph {
    let mods: Vec<Module> = files.iter().map(|(rel, text)| module(rel, text)).collect();
    let by_segs: BTreeMap<Vec<String>, usize> = mods
        .iter()
        .enumerate()
        .filter(|(_, m)| m.name != "main")
        .map(|(i, m)| (m.segs.clone(), i))
        .collect();
    let cx = Resolver {
        crate_name,
        mods: &mods,
        by_segs: &by_segs,
    };
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    let mut outward = Vec::new();
    for (from, m) in mods.iter().enumerate() {
        for p in paths(&m.toks) {
            let Some(abs) = cx.absolute(&m.segs, &p.segs) else {
                continue;
            };
            let Some(to) = cx.resolve(&abs, 0) else {
                continue;
            };
            let target = &mods[to];
            let edge = Edge {
                from: m.name.clone(),
                to: target.name.clone(),
                file: format!("src/{}", m.file),
                line: p.line,
                path: p.segs.join("::"),
            };
            let outer =
                |s: &[String]| matches!(s.first().map(String::as_str), Some("shell" | "metrics"));
            if m.segs.first().map(String::as_str) == Some("domain")
                && (outer(&abs) || outer(&target.segs))
            {
                outward.push(edge);
                continue;
            }
            let ancestor = !target.segs.is_empty()
                && target.segs.len() < m.segs.len()
                && m.segs.starts_with(&target.segs);
            if to == from || target.declare_only || m.declare_only || ancestor {
                continue;
            }
            edges
                .entry((edge.from.clone(), edge.to.clone()))
                .or_insert(edge);
        }
    }
    Graph {
        edges: edges.into_values().collect(),
        outward,
    }
}

fn module(rel: &str, text: &str) -> Module {
    let mut segs: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    let name = segs.join("/");
    if name == "lib" || name == "main" {
        segs.clear();
    }
    let toks = lex(non_test_code(rel, text));
    let mut reexports = Vec::new();
    let mut pub_items = BTreeSet::new();
    for i in 0..toks.len() {
        if ident(toks.get(i)) != Some("pub") {
            continue;
        }
        let mut j = i + 1;
        if is(toks.get(j), '(') {
            j = skip_group(&toks, j);
        }
        while let Some(q) = ident(toks.get(j)) {
            let qualifier = matches!(q, "async" | "unsafe" | "extern")
                || (q == "const"
                    && matches!(
                        ident(toks.get(j + 1)),
                        Some("fn" | "unsafe" | "async" | "extern")
                    ));
            if !qualifier {
                break;
            }
            j += 1;
            if matches!(toks.get(j), Some(Token { tok: Tok::Lit, .. })) {
                j += 1;
            }
        }
        match ident(toks.get(j)) {
            Some("use") if ident(toks.get(j + 1)).is_some() => {
                let mut found = Vec::new();
                parse_path(&toks, j + 1, &[], &mut found);
                for r in found.into_iter().filter(|r| r.segs.len() >= 2 || r.glob) {
                    if !r.glob
                        && let Some(name) = r.alias.as_ref().or(r.segs.last())
                    {
                        pub_items.insert(name.clone());
                    }
                    reexports.push(r);
                }
            }
            Some(
                "struct" | "enum" | "union" | "fn" | "const" | "static" | "type" | "trait" | "mod",
            ) => {
                let k = if ident(toks.get(j + 1)) == Some("mut") {
                    j + 2
                } else {
                    j + 1
                };
                if let Some(name) = ident(toks.get(k)) {
                    pub_items.insert(name.to_string());
                }
            }
            _ => {}
        }
    }
    Module {
        name,
        segs,
        file: rel.to_string(),
        declare_only: declare_only(&toks),
        toks,
        reexports,
        pub_items,
    }
}

/// Whether the file holds nothing but attributes, `mod x;`, `use …;` and `extern crate …;`.
fn declare_only(toks: &[Token]) -> bool {
    let mut i = 0;
    while i < toks.len() {
        if is(toks.get(i), '#') {
            i += 1 + usize::from(is(toks.get(i + 1), '!'));
            if !is(toks.get(i), '[') {
                return false;
            }
            i = skip_group(toks, i);
            continue;
        }
        let mut j = i;
        if ident(toks.get(j)) == Some("pub") {
            j += 1;
            if is(toks.get(j), '(') {
                j = skip_group(toks, j);
            }
        }
        match ident(toks.get(j)) {
            Some("mod") if ident(toks.get(j + 1)).is_some() && is(toks.get(j + 2), ';') => {
                i = j + 3
            }
            Some("use") => {
                while j < toks.len() && !is(toks.get(j), ';') {
                    j += 1;
                }
                i = j + 1;
            }
            Some("extern") if ident(toks.get(j + 1)) == Some("crate") => {
                while j < toks.len() && !is(toks.get(j), ';') {
                    j += 1;
                }
                i = j + 1;
            }
            _ => return false,
        }
    }
    true
}

struct Resolver<'a> {
    crate_name: &'a str,
    mods: &'a [Module],
    by_segs: &'a BTreeMap<Vec<String>, usize>,
}

impl Resolver<'_> {
    /// `path`, as written in the module at `here`, from the crate root; `None` for other crates.
    fn absolute(&self, here: &[String], path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?.as_str();
        if first == "crate" || first == self.crate_name {
            return Some(path[1..].to_vec());
        }
        if first == "self" {
            return Some([here, &path[1..]].concat());
        }
        if first == "super" {
            let mut base = here.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            return Some([base.as_slice(), rest].concat());
        }
        let child = [here, &path[..1]].concat();
        self.by_segs
            .contains_key(&child)
            .then(|| [here, path].concat())
    }

    /// The module an absolute path lands in, following re-exports.
    fn resolve(&self, abs: &[String], depth: usize) -> Option<usize> {
        let k = (0..=abs.len())
            .rev()
            .find(|k| self.by_segs.contains_key(&abs[..*k]))?;
        let target = self.by_segs[&abs[..k]];
        let m = &self.mods[target];
        if let Some(item) = abs.get(k)
            && depth < 8
        {
            for r in m.reexports.iter().filter(|r| !r.glob) {
                if r.alias.as_ref().or(r.segs.last()) == Some(item)
                    && let Some(to) = self.absolute(&m.segs, &r.segs)
                {
                    return self.resolve(&[to.as_slice(), &abs[k + 1..]].concat(), depth + 1);
                }
            }
            for r in m.reexports.iter().filter(|r| r.glob) {
                if let Some(g) = self.absolute(&m.segs, &r.segs)
                    && let Some(&gi) = self.by_segs.get(&g)
                    && self.mods[gi].pub_items.contains(item)
                {
                    return self.resolve(&[g.as_slice(), &abs[k..]].concat(), depth + 1);
                }
            }
        }
        Some(target)
    }
}

/// The strongly connected components with more than one module (Tarjan), each sorted.
fn cycles(edges: &[Edge]) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in edges {
        adj.entry(&e.from).or_default().push(&e.to);
        adj.entry(&e.to).or_default();
    }
    let mut t = Tarjan {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        sccs: Vec::new(),
    };
    for &v in adj.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.sccs.sort();
    t.sccs
}

struct Tarjan<'a> {
    adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
    index: BTreeMap<&'a str, usize>,
    low: BTreeMap<&'a str, usize>,
    stack: Vec<&'a str>,
    sccs: Vec<Vec<String>>,
}

impl<'a> Tarjan<'a> {
    fn visit(&mut self, v: &'a str) {
        let n = self.index.len();
        self.index.insert(v, n);
        self.low.insert(v, n);
        self.stack.push(v);
        let adj = self.adj;
        for &w in adj.get(v).into_iter().flatten() {
            let reach = if !self.index.contains_key(w) {
                self.visit(w);
                self.low[w]
            } else if self.stack.contains(&w) {
                self.index[w]
            } else {
                continue;
            };
            let low = self.low[v].min(reach);
            self.low.insert(v, low);
        }
        if self.low[v] == self.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = self.stack.pop() {
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                self.sccs.push(scc);
            }
        }
    }
}

/// A shortest cycle through the first module of `scc`, as `a -> b -> a`.
fn example_cycle(scc: &[String], edges: &[Edge]) -> String {
    let start = scc[0].as_str();
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for e in edges.iter().filter(|e| e.from == v && scc.contains(&e.to)) {
            if e.to == start {
                let mut back = vec![v];
                let mut cur = v;
                while cur != start {
                    cur = parent[cur];
                    back.push(cur);
                }
                back.reverse();
                back.push(start);
                return back.join(" -> ");
            }
            if !parent.contains_key(e.to.as_str()) {
                parent.insert(&e.to, v);
                queue.push_back(&e.to);
            }
        }
    }
    scc.join(", ")
}

/// One message per circle: its modules, an example cycle, and where each of its edges happens.
fn circle_report(edges: &[Edge]) -> Vec<String> {
    let sccs = cycles(edges);
    sccs.iter()
        .enumerate()
        .map(|(i, scc)| {
            let mut msg = format!(
                "rule 2 (no import circles): circle {} of {} between {} modules: {}\n  e.g. {}\n  \
                 Break it by moving what both sides need into a module neither imports from \
                 (usually down into src/domain/), or by passing a value or closure instead of \
                 importing. The edges inside it:",
                i + 1,
                sccs.len(),
                scc.len(),
                scc.join(", "),
                example_cycle(scc, edges)
            );
            for e in edges
                .iter()
                .filter(|e| scc.contains(&e.from) && scc.contains(&e.to))
            {
                msg.push_str(&format!(
                    "\n    {} -> {}   {}:{}: `{}`",
                    e.from, e.to, e.file, e.line, e.path
                ));
            }
            msg
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rule 3: file size.

fn size_finding(file: &str, text: &str) -> Option<String> {
    let lines = text.lines().count();
    let waived = text.lines().take(15).any(|l| {
        let l = l.trim_start();
        let comment = l.starts_with("//") || l.starts_with("/*") || l.starts_with('*');
        let low = l.to_ascii_lowercase();
        comment
            && low.find(SIZE_WAIVER).is_some_and(|at| {
                low[at + SIZE_WAIVER.len()..]
                    .chars()
                    .any(char::is_alphanumeric)
            })
    });
    (lines > MAX_LINES && !waived).then(|| {
        format!(
            "{file}:{}: rule 3 (file size): {lines} lines, over the {MAX_LINES}-line limit. Split \
             it along its seams (one concern per module; long tests can move to a sibling file), or, \
             if it truly must stay whole, say why in a comment in its first 15 lines: \
             `// This file is longer than 700 lines because <reason>`.",
            MAX_LINES + 1
        )
    })
}
