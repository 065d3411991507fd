//! The crate's top-level modules form a layered graph: no two of them need each other, the
//! maintenance commands see only their own port, and the domain knows no adapter. Read from
//! the source, so that a `use` that breaks a layer fails here and not in a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which top-level modules each top-level module names through `crate::` paths.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let groups = entangled_groups(&module_graph());
    assert!(
        groups.is_empty(),
        "these top-level modules import each other, each group in a circle: {groups:?}"
    );
}

#[test]
fn lifecycle_sees_the_store_only_through_its_port() {
    assert_reaches_none(&module_graph(), "lifecycle", &["config", "store", "app"]);
}

#[test]
fn the_domain_knows_no_adapter() {
    assert_reaches_none(
        &module_graph(),
        "usage",
        &["http", "store", "auth", "lifecycle", "config", "app"],
    );
}

/// The sinks are handed events by whoever delivers them; they know the domain's words at
/// most, and no adapter or wiring, so that they can be merged and tested alone.
#[test]
fn the_sinks_know_no_adapter() {
    assert_reaches_none(
        &module_graph(),
        "notify",
        &[
            "http",
            "store",
            "auth",
            "lifecycle",
            "config",
            "app",
            "server",
        ],
    );
}

/// The graph's reader itself: a comment or a string naming a module is no reference, and a
/// grouped `use` names each of its modules.
#[test]
fn references_are_read_from_code_only() {
    let source = r###"
        use crate::{auth::Verifier, usage::{self, UserId}};
        // use crate::commented;
        /* crate::blocked /* nested crate::deeper */ crate::still_blocked */
        let quoted = "crate::quoted";
        let raw = r##"crate::raw "# crate::raw_too"##;
        let quote = '"'; let lifetime: &'static str = "x"; crate::metrics::registry();
        fn f<'a>(x: &'a str) -> crate::http::Router { crate::server::serve(x) }
    "###;
    let found = referenced_modules(source);
    let expected = ["auth", "http", "metrics", "server", "usage"];
    assert_eq!(
        found,
        expected
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    );
}

/// `module` names none of `forbidden`, nor does any module it names, however far removed.
fn assert_reaches_none(graph: &Graph, module: &str, forbidden: &[&str]) {
    let reached = reachable(graph, module);
    let found: Vec<_> = forbidden
        .iter()
        .filter(|name| reached.contains(**name))
        .collect();
    assert!(
        found.is_empty(),
        "{module} reaches {found:?}; it names {:?}, and through them {reached:?}",
        graph[module]
    );
}

/// Every top-level module of the library (each file and folder of `src/`) with the modules
/// its files name; `src/main.rs` is the binary, which may name them all.
fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut references = BTreeSet::new();
        for file in rust_files(&path) {
            references.extend(referenced_modules(&std::fs::read_to_string(file).unwrap()));
        }
        references.remove(&name);
        graph.insert(name, references);
    }
    assert!(
        graph.contains_key("usage") && graph.contains_key("lifecycle"),
        "{graph:?}"
    );
    graph
}

fn rust_files(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).unwrap() {
            files.extend(rust_files(&entry.unwrap().path()));
        }
        files
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        vec![path.to_owned()]
    } else {
        Vec::new()
    }
}

/// The first segment of every `crate::` path in `source`'s code, grouped imports included.
fn referenced_modules(source: &str) -> BTreeSet<String> {
    let code = code_only(source);
    let mut modules = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_identifier = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_identifier {
            continue;
        }
        let path = rest.trim_start();
        match path.strip_prefix('{') {
            Some(group) => modules.extend(group_heads(group)),
            None => modules.extend(identifier(path)),
        }
    }
    modules
}

/// The first segment of each item of a `{ ... }` group, `group` starting after its brace.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                heads.extend(identifier(&group[at..]).filter(|head| head != "self"));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `source` with its comments and string and character literals blanked out.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut at = 0;
    while at < chars.len() {
        let next = |offset: usize| chars.get(at + offset).copied();
        let skipped_to = match chars[at] {
            '/' if next(1) == Some('/') => end_of_line(&chars, at),
            '/' if next(1) == Some('*') => end_of_block_comment(&chars, at),
            'r' if !follows_identifier(&chars, at) || is_byte_prefix(&chars, at) => {
                end_of_raw_string(&chars, at).unwrap_or(at)
            }
            '"' => end_of_string(&chars, at),
            '\'' if next(1) == Some('\\') => end_of_char(&chars, at + 2),
            '\'' if next(2) == Some('\'') => at + 3,
            _ => at,
        };
        if skipped_to == at {
            code.push(chars[at]);
            at += 1;
        } else {
            code.push(' ');
            at = skipped_to;
        }
    }
    code
}

fn follows_identifier(chars: &[char], at: usize) -> bool {
    at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
}

/// `br"..."`: the `b` stands alone before the `r`.
fn is_byte_prefix(chars: &[char], at: usize) -> bool {
    at > 0 && chars[at - 1] == 'b' && !follows_identifier(chars, at - 1)
}

fn end_of_line(chars: &[char], from: usize) -> usize {
    chars[from..]
        .iter()
        .position(|c| *c == '\n')
        .map_or(chars.len(), |offset| from + offset)
}

fn end_of_block_comment(chars: &[char], from: usize) -> usize {
    let mut depth = 0;
    let mut at = from;
    while at + 1 < chars.len() {
        match (chars[at], chars[at + 1]) {
            ('/', '*') => {
                depth += 1;
                at += 2;
            }
            ('*', '/') => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return at;
                }
            }
            _ => at += 1,
        }
    }
    chars.len()
}

/// `r"..."` or `r#"..."#`: `None` when the `r` starts no raw string.
fn end_of_raw_string(chars: &[char], from: usize) -> Option<usize> {
    let hashes = chars[from + 1..].iter().take_while(|c| **c == '#').count();
    let open = from + 1 + hashes;
    if chars.get(open) != Some(&'"') {
        return None;
    }
    let mut at = open + 1;
    while at < chars.len() {
        let closes = chars[at] == '"'
            && chars[at + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes;
        if closes {
            return Some(at + 1 + hashes);
        }
        at += 1;
    }
    Some(chars.len())
}

fn end_of_string(chars: &[char], from: usize) -> usize {
    let mut at = from + 1;
    while at < chars.len() {
        match chars[at] {
            '\\' => at += 2,
            '"' => return at + 1,
            _ => at += 1,
        }
    }
    chars.len()
}

/// The end of an escaped character literal, `from` at the character after the backslash.
fn end_of_char(chars: &[char], from: usize) -> usize {
    chars[from + 1..]
        .iter()
        .position(|c| *c == '\'')
        .map_or(chars.len(), |offset| from + 1 + offset + 1)
}

/// The groups of modules that all reach each other through their references: each group is
/// a circle, or several sharing modules.
fn entangled_groups(graph: &Graph) -> BTreeSet<BTreeSet<String>> {
    let reach: BTreeMap<&String, BTreeSet<String>> = graph
        .keys()
        .map(|module| (module, reachable(graph, module)))
        .collect();
    graph
        .keys()
        .filter(|module| reach[module].contains(*module))
        .map(|module| {
            reach[module]
                .iter()
                .filter(|other| reach.get(other).is_some_and(|back| back.contains(module)))
                .cloned()
                .collect()
        })
        .collect()
}

/// The modules `from`'s references lead to, one step or more.
fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending: Vec<&str> = vec![from];
    while let Some(module) = pending.pop() {
        for next in graph.get(module).into_iter().flatten() {
            if found.insert(next.clone()) {
                pending.push(next);
            }
        }
    }
    found
}

/// The finder itself, on graphs whose answer is known.
#[test]
fn circles_are_found_and_layers_are_not_circles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph = Graph::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    let group = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect();
    let layered = graph(&[("app", "http"), ("http", "usage"), ("app", "usage")]);
    assert_eq!(entangled_groups(&layered), BTreeSet::new());
    let circular = graph(&[
        ("app", "config"),
        ("config", "lifecycle"),
        ("lifecycle", "store"),
        ("store", "config"),
        ("metrics", "usage"),
        ("usage", "metrics"),
        ("store", "usage"),
    ]);
    assert_eq!(
        entangled_groups(&circular),
        BTreeSet::from([
            group(&["config", "lifecycle", "store"]),
            group(&["metrics", "usage"]),
        ])
    );
}
