#!/usr/bin/env bash
# How long a `serve --standby` takes to lead after its leader is killed with
# SIGKILL, five times: from the kill to the standby's `leading:` log line.
# Run from the repository root after `cargo build --release`:
#   bash bench/takeover.sh
# (docs/benchmarks.md has the figures). Needs `bc`; uses port $SIM_PORT.
set -euo pipefail
BIN=$(realpath "${ORCHESTRATOR_BIN:-target/release/orchestrator}")
PORT=${SIM_PORT:-18181}
W=$(mktemp -d); cd "$W"; mkdir -p jobs prompts
for i in $(seq 0 19); do echo "{\"id\":$i,\"text\":\"item $i\"}"; done > items.jsonl
cat > jobs/bulk.yaml <<'Y'
schedule: { cron: '0 6 * * *' }
tier: batch
deadline: 2h
model: claude-haiku-4-5
max_tokens: 64
prompt: { inline: 'Label {{ item.text }}' }
items: { jsonl: items.jsonl }
sink: { jsonl: out/bulk.jsonl }
Y
$BIN sim --listen 127.0.0.1:$PORT >sim.log 2>&1 & SIM=$!
sleep 0.5
export ANTHROPIC_BASE_URL=http://127.0.0.1:$PORT ANTHROPIC_API_KEY=sk-test
for round in 1 2 3 4 5; do
  $BIN serve --listen 127.0.0.1:0 >lead.log 2>&1 & LEAD=$!
  until grep -q "leading:" lead.log; do sleep 0.05; done
  $BIN serve --listen 127.0.0.1:0 --standby >standby.log 2>&1 & STANDBY=$!
  until grep -q "standby:" standby.log; do sleep 0.05; done
  sleep 1
  t0=$(date +%s.%N); kill -9 $LEAD; wait $LEAD 2>/dev/null || true
  until grep -q "leading:" standby.log; do sleep 0.01; done
  t1=$(date +%s.%N)
  echo "round $round: standby leading $(echo "$t1 - $t0" | bc) s after kill -9"
  kill -TERM $STANDBY; wait $STANDBY || true
done
kill $SIM
rm -rf "$W"
