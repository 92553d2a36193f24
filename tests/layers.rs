//! The crate's modules form layers: no two import each other, directly or round a circle (see the layout in
//! `src/lib.rs`). Read from the `crate::` paths in each file's code (comments and test modules left out), as a
//! reviewer would read the `use` lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every module of the library and the modules its code names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    let mut raw = BTreeMap::new();
    for p in paths {
        let m = module_of(&p, &src);
        if m == "main" || m == "lib" || m.starts_with("bin") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let mut named = Vec::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let path: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                named.push(path);
            }
        }
        raw.insert(m, named);
    }
    let modules: BTreeSet<String> = raw.keys().cloned().collect();
    // The longest module a path names (`stream::hub::Hub` → `stream::hub`).
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|c| modules.contains(c))
    };
    raw.into_iter()
        .map(|(m, named)| {
            let deps = named
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|d| *d != m)
                .collect();
            (m, deps)
        })
        .collect()
}

/// A circle of imports starting and ending at `from`, if there is one.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in graph.get(at).into_iter().flatten() {
        if next == from {
            let mut c = path.clone();
            c.push(from.to_string());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = circle(graph, from, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 30, "read {} modules", graph.len());
    assert!(
        graph["source::push"].contains("state"),
        "the reader finds the imports: {:?}",
        graph["source::push"]
    );
    for m in graph.keys() {
        let mut path = vec![m.clone()];
        if let Some(c) = circle(&graph, m, m, &mut path, &mut BTreeSet::new()) {
            panic!("an import circle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_media_path_builds_without_the_http_crates() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src.join("stream"), &mut paths);
    files(&src.join("config"), &mut paths);
    for f in [
        "error.rs",
        "templates.rs",
        "source/pipeline.rs",
        "source/detect.rs",
    ] {
        paths.push(src.join(f));
    }
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains("axum") && !line.contains("hyper"),
                "{}: {line}",
                p.display()
            );
        }
    }
}
