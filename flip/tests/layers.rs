//! The house rules of `flip/src`, read from its imports: a module imports only from the layers
//! below it, and no two modules import each other through any path (`../shared/design/house.md`
//! draws the target). The layers of today's modules are listed in [`LAYERS`].
//!
//! The floor plan does not keep these rules yet everywhere: what breaks them today is listed in
//! [`KNOWN`], as debt to pay off (issue 22). The test fails on any import that breaks them and
//! is not listed, so the debt can only shrink; it also fails on a listed one that is gone, so
//! that the list stays true.
//!
//! `cargo test -p flip --test layers`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `flip/src` and its layer, lowest first. `lib` is the crate root:
/// its own imports are not counted (it declares and re-exports), and an import of it (an item
/// it defines, or a re-export such as `crate::Error`) breaks the rule that nothing imports
/// through the root.
const LAYERS: &[(&str, u8)] = &[
    ("sys", 1),
    ("sync", 1),
    ("percent", 1),
    ("error", 1),
    ("key", 1),
    ("address", 1),
    ("lib", 1),
    ("handoff", 2),
    ("registry", 2),
    ("pidfile", 2),
    ("launch", 2),
    ("notify", 2),
    ("signal", 2),
    ("upgrader", 3),
    ("bootstrap", 4),
    ("server", 4),
    ("systemd", 5),
    ("control", 5),
    ("supervisor", 5),
    ("surroundings", 5),
    ("rt", 6),
    ("adapters", 7),
    ("testing", 7),
    ("fuzz", 7),
];

/// Imports that break the rules today (from, to), each an upward import or an edge of a
/// circle. Issue 22 moves the house so that this list empties.
const KNOWN: &[(&str, &str)] = &[];

/// The top-level module a file of `src` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`, outside comments and test modules:
/// `use crate::x`, `use crate::{x, y::z}`, and paths such as `crate::x::f()`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // A `#[cfg(test)]` module at the end of a file is the file's tests: not part of the house.
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each item (one line's worth).
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or("").trim())
                    .collect()
            } else {
                vec![
                    after
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for name in names {
                if name.is_empty() || name == "self" {
                    continue;
                }
                if !LAYERS.iter().any(|(m, _)| *m == name) {
                    // An item of the root (`crate::lock`, a re-export such as `crate::Error`).
                    out.insert("lib".to_owned());
                } else {
                    out.insert(name.to_owned());
                }
            }
            rest = after;
        }
    }
    out
}

/// The module graph of the crate at `src`: module → the modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut to = imports(&text);
        to.remove(&module);
        // The root declares the modules and re-exports: the facade, not an importer.
        if module == "lib" {
            to.clear();
        }
        g.entry(module).or_default().extend(to);
    }
    g
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Modules that reach each other through imports (the strongly connected components with more
/// than one module), as sets.
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in g.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for m in g.keys() {
        let from_m = reach(m);
        let circle: BTreeSet<String> = from_m
            .iter()
            .filter(|other| *other != m && reach(other).contains(m))
            .cloned()
            .chain(std::iter::once(m.clone()))
            .collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

/// Every import that breaks a rule: up a layer, into a module no layer lists, or along a
/// circle.
fn violations(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let circles = circles(g);
    for (from, tos) in g {
        for to in tos {
            // Nothing imports through the crate root, but the adapters and the testing
            // helpers, which are built on the public API (layer 7) and so name it as users do.
            let up = (to == "lib" && layer(from) != Some(7))
                || match (layer(from), layer(to)) {
                    (Some(a), Some(b)) => b > a,
                    _ => true,
                };
            let circular = circles.iter().any(|c| c.contains(from) && c.contains(to));
            if up || circular {
                out.insert((from.clone(), to.clone()));
            }
        }
    }
    out
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_breaks_the_house_rules_beyond_the_known_debt() {
    let g = graph(&src());
    for module in g.keys() {
        assert!(
            layer(module).is_some(),
            "module {module} has no layer: add it to LAYERS"
        );
    }
    let found = violations(&g);
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(
        new.is_empty(),
        "imports that go up a layer or close a circle: {new:?}\n(a lower layer never imports a higher one; see ../shared/design/house.md)"
    );
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "paid off, remove them from KNOWN: {gone:?}"
    );
}

#[test]
fn the_check_catches_sys_importing_the_bootstrap() {
    // The real graph, with one import more: `sys` takes something of `crate::bootstrap`.
    let mut g = graph(&src());
    let text = "use crate::bootstrap::Stage;\n";
    g.entry("sys".into()).or_default().extend(imports(text));
    let found = violations(&g);
    assert!(found.contains(&("sys".to_owned(), "bootstrap".to_owned())));
    // And from the same words in a file of its own.
    let dir = std::env::temp_dir().join(format!("flip-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sys")).unwrap();
    std::fs::create_dir_all(dir.join("bootstrap")).unwrap();
    std::fs::write(dir.join("sys/mod.rs"), "use crate::bootstrap::Stage;\n").unwrap();
    std::fs::write(dir.join("bootstrap/mod.rs"), "use crate::sys;\n").unwrap();
    let found = violations(&graph(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        found.contains(&("sys".to_owned(), "bootstrap".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&("bootstrap".to_owned(), "sys".to_owned())),
        "a circle: both directions are named: {found:?}"
    );
}

/// Inside `upgrader/`, the two sides of the handoff never import each other: the wire between
/// them is `handoff`, and each owns its own I/O.
#[test]
fn the_two_sides_of_the_handoff_do_not_import_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/upgrader");
    for (file, other) in [
        ("successor.rs", "predecessor"),
        ("predecessor.rs", "successor"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains(&format!("super::{other}")),
                "upgrader/{file} imports {other}: {line}"
            );
        }
    }
}
