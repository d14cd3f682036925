"""The approach the seed documents describe, as a team would write it: the
official `anthropic` SDK and `sqlite3`, one batch of every item, polled until
it ends, its results streamed and inserted row by row. `orchestrator bench
reference` runs it against the same simulator as `orchestrator run` and
compares their CPU time. It prints one JSON line: its CPU seconds, peak RSS
and how many results it stored.

Usage: python3 reference.py ITEMS.jsonl RESULTS.db   (ANTHROPIC_BASE_URL and
ANTHROPIC_API_KEY from the environment)
"""

import json
import resource
import sqlite3
import sys
import time

import anthropic

SYSTEM = "You summarise items for the operations team. Be brief, factual and specific.\n"
POINTS = ["cost", "latency", "risk", "next steps"]


def prompt(item, run_id):
    points = "".join(f"- {point}: what the item says about it, or `none`.\n" for point in POINTS)
    return (
        f"Item `{item['id']}` of run {run_id}\n\nTitle: {item['title']}\n\nBody: {item['body']}\n\n"
        f"Summarise the item in three sentences for the operations team. Then list, one line each:\n{points}"
        "Answer in plain text without headings, and do not repeat the title.\n"
    )


def main(items_path, db_path):
    client = anthropic.Anthropic(max_retries=5)
    run_id = time.strftime("%Y%m%dT%H%M")
    with open(items_path) as f:
        items = [json.loads(line) for line in f if line.strip()]
    requests = [
        {
            "custom_id": f"reference-{n:06}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 1024,
                "temperature": 0,
                "system": SYSTEM,
                "messages": [{"role": "user", "content": prompt(item, run_id)}],
            },
        }
        for n, item in enumerate(items, 1)
    ]
    batch = client.messages.batches.create(requests=requests)
    while batch.processing_status != "ended":
        time.sleep(1)
        batch = client.messages.batches.retrieve(batch.id)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS results (custom_id TEXT PRIMARY KEY, status TEXT, result TEXT)")
    stored = 0
    for result in client.messages.batches.results(batch.id):
        db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
            (result.custom_id, result.result.type, result.result.model_dump_json()),
        )
        stored += 1
        if stored % 5000 == 0:
            db.commit()
    db.commit()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu_secs": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss, "results": stored}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
