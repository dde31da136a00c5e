//! The dependency rule of ARCHITECTURE.md ("The dependency rule"), read off
//! the sources: a top-level module of `src/` imports (`crate::<module>`)
//! only from layers below its own, and the imports among all of them,
//! modules not in the table included, form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, bottom up (ARCHITECTURE.md): a module may import from
/// lower ranks only.
const LAYERS: &[(&str, u8)] = &[
    ("grpc_timeout", 0),
    ("text", 0),
    ("proto", 0),
    ("HashMap", 0),
    ("FixedHashMap", 0),
    ("rt", 1),
    ("error", 2),
    ("resilience", 3),
    ("blob", 3),
    ("bus", 3),
    ("schema", 2),
    ("telemetry", 2),
    ("readiness", 2),
    ("sqlite", 3),
    ("pg", 3),
    ("nats_auth", 2),
    ("nats_kv", 3),
    ("registry", 4),
    ("middleware", 5),
    ("client", 6),
    ("kernel", 7),
    ("services", 8),
    ("node", 9),
    ("cli", 10),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

/// The top-level modules named by `crate::` paths in `code` (comment lines
/// left out: doc links are no imports).
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c, d::{e, f}}`: the first name of each
                // item at depth 0.
                let mut depth = 0;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_alphanumeric() || c == '_') => {
                            let name: String = group[i..]
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            found.insert(name);
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `path` (or `path` itself).
fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("source dir") {
            sources(&entry.expect("dir entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// Which top-level modules each top-level module of `src/` imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("dir entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem == "lib" || stem == "bin" {
            continue;
        }
        let mut files = Vec::new();
        sources(&path, &mut files);
        let deps = graph.entry(stem.to_owned()).or_default();
        for file in files {
            let code = std::fs::read_to_string(&file).expect("source");
            deps.extend(imports(&code).into_iter().filter(|m| m != stem));
        }
    }
    graph
}

#[test]
fn modules_import_only_from_lower_layers() {
    let graph = graph();
    assert!(graph.contains_key("kernel") && graph.contains_key("rt"));
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        let Some(own) = rank(module) else { continue };
        for dep in deps {
            if let Some(theirs) = rank(dep)
                && theirs >= own
            {
                upward.push(format!(
                    "{module} (layer {own}) imports {dep} (layer {theirs})"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
    let kernel = &graph["kernel"];
    for above in ["services", "node", "cli"] {
        assert!(!kernel.contains(above), "the kernel imports {above}");
    }
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = graph();
    // Depth-first search; a module met again while on the path is a cycle.
    fn visit<'a>(
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        module: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            return Some(format!("{} -> {module}", path[at..].join(" -> ")));
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for dep in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(graph, dep, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(&graph, module, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {cycle}");
        }
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_imports() {
    let code = "use crate::{rt, bus::{Event, memory}, kernel::Runtime};\n\
                /// [`crate::services`] is a doc link\n\
                let x = crate::client::pool();";
    let found: Vec<String> = imports(code).into_iter().collect();
    assert_eq!(found, ["bus", "client", "kernel", "rt"]);
}
