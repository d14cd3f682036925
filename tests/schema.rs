//! `schemas/job.schema.json`: current, accepting the examples, rejecting unknown fields.

use crate::support::{broken_dir, code, root, run, stdout};

fn committed_schema() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("schemas/job.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn yaml_as_json(path: &std::path::Path) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_committed_schema_is_current() {
    let output = run(&["schema"]);
    assert_eq!(code(&output), 0);
    let committed = std::fs::read_to_string(root().join("schemas/job.schema.json")).unwrap();
    assert!(
        stdout(&output) == committed,
        "schemas/job.schema.json is stale: run `cargo run -- schema > schemas/job.schema.json`"
    );
}

#[test]
fn the_schema_accepts_every_example_manifest() {
    let validator = jsonschema::validator_for(&committed_schema()).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let errors: Vec<String> = validator.iter_errors(&yaml_as_json(&path)).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 7, "expected the example jobs, saw {seen}");
}

#[test]
fn the_schema_rejects_unknown_fields_and_missing_required_ones() {
    let validator = jsonschema::validator_for(&committed_schema()).unwrap();
    for file in ["unknown-field.yaml", "missing-field.yaml", "unknown-tier.yaml"] {
        let manifest = yaml_as_json(&broken_dir().join("jobs").join(file));
        assert!(!validator.is_valid(&manifest), "{file} should be rejected");
    }
}

#[test]
fn example_manifests_point_editors_at_the_schema() {
    for entry in std::fs::read_dir(root().join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let first = std::fs::read_to_string(&path).unwrap().lines().next().unwrap_or_default().to_owned();
            assert_eq!(first, "# yaml-language-server: $schema=../schemas/job.schema.json", "{}", path.display());
        }
    }
}
