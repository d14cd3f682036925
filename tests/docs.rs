//! The manual stays true to the code: every link between README.md and
//! docs/ resolves (files and headings), every module of the library is on
//! the architecture's module map, and no module imports one the map places
//! above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::root;

/// README.md and every file of docs/.
fn manual() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other
/// punctuation dropped (letters, digits, `-` and `_` stay).
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code fences).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(slug(line.trim_start_matches('#')));
        }
    }
    found
}

/// Every `[text](target)` of a Markdown file outside code fences and code spans.
fn links(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: a `[x](y)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_link_of_the_manual_resolves() {
    let mut broken = Vec::new();
    for file in manual() {
        let text = std::fs::read_to_string(&file).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
            let target = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            if !target.exists() {
                broken.push(format!("{}: `{link}`: no file {}", file.display(), target.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|e| e == "md")
                && !anchors(&std::fs::read_to_string(&target).unwrap()).contains(anchor)
            {
                broken.push(format!("{}: `{link}`: no heading #{anchor} in {}", file.display(), target.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The modules `src/lib.rs` declares.
fn library_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';').to_owned()).collect()
}

/// The layer table of docs/architecture.md: module → layer number.
fn layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let start = text.find("<!-- layers -->").expect("docs/architecture.md marks its layer table with <!-- layers -->");
    let mut layers = BTreeMap::new();
    for row in text[start..].lines().skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<usize>() else { continue };
        for module in cells[2].split(',') {
            layers.insert(module.trim().trim_matches('`').to_owned(), layer);
        }
    }
    layers
}

#[test]
fn every_module_is_on_the_architecture_map() {
    let layers = layers();
    let missing: Vec<String> = library_modules().into_iter().filter(|m| !layers.contains_key(m)).collect();
    assert!(
        missing.is_empty(),
        "modules of src/lib.rs missing from the layer table of docs/architecture.md: {missing:?}"
    );
    let stale: Vec<&String> = layers.keys().filter(|m| !library_modules().contains(m)).collect();
    assert!(stale.is_empty(), "docs/architecture.md lists modules that do not exist: {stale:?}");
}

#[test]
fn every_diagnostic_code_has_a_row_in_the_cli_manual_with_its_severity() {
    let text = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    let rows: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            Some((cells.next()?, cells.next()?))
        })
        .collect();
    let wrong: Vec<String> = orchestrator::diagnostics::Code::ALL
        .iter()
        .filter_map(|code| {
            let severity = format!("{:?}", code.severity()).to_lowercase();
            match rows.get(code.as_str()) {
                Some(&documented) if documented == severity => None,
                Some(documented) => Some(format!("{} is {severity}, the manual says {documented}", code.as_str())),
                None => Some(format!("{} ({}) has no row", code.as_str(), code.summary())),
            }
        })
        .collect();
    assert!(wrong.is_empty(), "docs/cli.md's table of diagnostic codes: {wrong:#?}");
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/engine/driver.rs` → `engine`).
fn owner(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root().join("src")).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The top-level modules a source file names through `crate::` (in `use`
/// lines and in paths), outside its `#[cfg(test)]` module.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = line.trim().strip_prefix("use crate::{") {
            for item in group.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_one_the_architecture_places_above_it() {
    let layers = layers();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut upward = Vec::new();
    for file in files {
        let Some(module) = owner(&file) else { continue };
        let Some(&own) = layers.get(&module) else { continue };
        for imported in imports(&std::fs::read_to_string(&file).unwrap()) {
            match layers.get(&imported) {
                Some(&layer) if layer > own => upward.push(format!(
                    "{} (`{module}`, layer {own}) imports `{imported}` (layer {layer})",
                    file.strip_prefix(root()).unwrap().display()
                )),
                _ => {}
            }
        }
    }
    assert!(upward.is_empty(), "imports that run upward (see docs/architecture.md):\n{}", upward.join("\n"));
}

#[test]
fn the_checkers_find_what_they_look_for() {
    assert_eq!(slug("Which lane, and when the sync lane takes over"), "which-lane-and-when-the-sync-lane-takes-over");
    assert_eq!(slug("`custom_id`"), "custom_id");
    let text = "See [a](docs/a.md#b) and `[not](a link)`.\n```\n[nor](this)\n```\n";
    assert_eq!(links(text), ["docs/a.md#b"]);
    let code = "use crate::store::Store;\nuse crate::{clock, lanes::SyncLane};\nlet x = crate::engine::until(a, b);\n#[cfg(test)]\nmod tests {\n    use crate::web::x;\n}\n";
    assert_eq!(imports(code).into_iter().collect::<Vec<_>>(), ["clock", "engine", "lanes", "store"]);
}
