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

/// Items of `two_jobs`' `bulk`.
pub const ITEMS: usize = 40;

/// `bulk` (40 items, batch tier, in a batch that ends only when the test
/// moves the simulator's clock) and `triage`, a realtime queue that flushes
/// at three posted items.
pub fn two_jobs() -> tempfile::TempDir {
    let dir = empty();
    let root = dir.path();
    write_job(root, "bulk", "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n", ITEMS, "");
    let triage = "enqueue: { max_items: 3, max_wait: 1d }\ntier: realtime\ndeadline: 1h\nmodel: claude-haiku-4-5\n\
                  max_tokens: 64\nprompt: { inline: 'Triage {{ item.subject }}' }\nsink: { jsonl: out/triage.jsonl }\n";
    std::fs::write(root.join("jobs/triage.yaml"), triage).unwrap();
    write_config(root, "batch: { poll_initial: 1s }\nfallback: { assumed_sync_latency: 1s }\n");
    dir
}

/// Three triage items as JSON Lines, keyed `prefix-N`.
pub fn three_items(prefix: &str) -> String {
    (0..3)
        .map(|n| serde_json::json!({ "item": { "subject": format!("ticket {n}") }, "idempotency_key": format!("{prefix}-{n}") }))
        .map(|entry| format!("{entry}\n"))
        .collect()
}
