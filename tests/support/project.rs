//! Projects written into temporary directories: `jobs/`, `prompts/`, the
//! items of each job, and the daemon configuration.

use std::path::Path;

/// An empty project: `jobs/` and `prompts/` in a fresh temporary directory.
pub fn empty() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("prompts")).unwrap();
    dir
}

/// Writes job `name` into the project: `head` (schedule, tier, deadline and
/// policies) and `extra` around a manifest over `items` items of
/// `<name>.jsonl` (`{"id", "text"}`), Claude Haiku, 64 tokens, an inline
/// prompt and the sink `out/<name>.jsonl`.
pub fn write_job(dir: &Path, name: &str, head: &str, items: usize, extra: &str) {
    let lines: String = (0..items).map(|i| format!("{{\"id\":{i},\"text\":\"item number {i}\"}}\n")).collect();
    std::fs::write(dir.join(format!("{name}.jsonl")), lines).unwrap();
    let manifest = format!(
        "{head}model: claude-haiku-4-5\nmax_tokens: 64\nprompt: {{ inline: 'Label {{{{ item.text }}}}' }}\n\
         items: {{ jsonl: {name}.jsonl }}\nsink: {{ jsonl: out/{name}.jsonl }}\n{extra}"
    );
    std::fs::write(dir.join(format!("jobs/{name}.yaml")), manifest).unwrap();
}

/// Writes the daemon configuration `orchestrator.yaml`.
pub fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("orchestrator.yaml"), text).unwrap();
}
