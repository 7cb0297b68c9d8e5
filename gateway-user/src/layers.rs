//! Keeps the layers of `lib.rs` honest: a module may name only the modules
//! below it (`crate::x` paths, read from the sources).
use std::{collections::BTreeSet, fs, path::Path};

/// Lowest first; a layer may use those strictly before it.
const LAYERS: &[&[&str]] = &[
    &["sys", "istio"],
    &["telemetry"],
    &["bpf"],
    &["dataplane"],
    &["proxy"],
    &["control"],
    &["cli"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The first segments of every `crate::` path in `text`, grouped imports
/// (`use crate::{a::b, c}`) included.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at depth-0 commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(head(&item));
        } else {
            found.insert(head(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn head(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        let Some(mine) = rank(&module) else {
            continue;
        };
        checked += 1;
        let text = fs::read_to_string(f).unwrap_or_default();
        for used in crate_paths(&text) {
            let Some(theirs) = rank(&used) else {
                continue;
            };
            if used != module && theirs >= mine {
                wrong.push(format!("{}: uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(
        checked > 30,
        "found only {checked} source files under {}",
        src.display()
    );
    assert!(
        wrong.is_empty(),
        "imports from a layer not below:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn grouped_and_plain_paths_are_both_seen() {
    let found = crate_paths(
        "use crate::{\n    dataplane::{self, Dataplane},\n    istio,\n};\nlet x = crate::sys::f(); // crate::cli",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["dataplane", "istio", "sys"]
    );
}
