//! The gateway's tree tells how it works, and keeps telling it: its modules
//! depend on each other without a circle, and the core names no transport,
//! no sidecar and no store backend, so a second transport or backend is an
//! addition around it, never an edit inside it.
//!
//! Read from the sources: each file belongs to its top-level module (the
//! first name under `gateway/src`), and depends on every other top-level
//! module it names as `crate::<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Each top-level module's code (comments left out) and the top-level
/// modules it names.
fn modules() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut modules: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let code: String = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let (text, named) = modules.entry(top.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name != top {
                named.insert(name);
            }
        }
        text.push_str(&code);
    }
    modules
}

#[test]
fn the_gateways_modules_depend_on_each_other_without_a_circle() {
    let modules = modules();
    assert!(modules.len() >= 15, "{:?}", modules.keys());
    // Depth-first, remembering the path: a module met again on the path
    // closes a circle.
    fn visit<'a>(
        module: &'a str,
        modules: &'a BTreeMap<String, (String, BTreeSet<String>)>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!(
                "a circle: {}",
                [&path[at..], &[module]].concat().join(" → ")
            );
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for named in &modules[module].1 {
            if modules.contains_key(named) {
                visit(named, modules, path, done);
            }
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in modules.keys() {
        visit(module, &modules, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_core_names_no_transport_sidecar_or_store_backend() {
    let modules = modules();
    let (code, named) = &modules["core"];
    for outside in ["transport", "http", "store", "server", "affiliates", "cli"] {
        assert!(!named.contains(outside), "the core names crate::{outside}");
    }
    for library in ["quinn", "axum", "redis::", "sled::", "rustls"] {
        assert!(!code.contains(library), "the core uses {library}");
    }
    // And the transports and the sidecar reach the stores only through it
    // (or the domains' types), never a backend.
    for adapter in ["transport", "http"] {
        assert!(
            !modules[adapter].1.contains("store"),
            "{adapter} names a store backend"
        );
    }
}
